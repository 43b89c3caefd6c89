package ipam

import (
	"context"

	"github.com/volantvm/volant/lib/cli"
	"github.com/volantvm/volant/lib/layout"
	"github.com/volantvm/volant/lib/names"
	"github.com/volantvm/volant/lib/store"
)

// Command is the whole of the volant-ipam command (cmd/volant-ipam
// documents it): one go-flags struct per verb, each with an Execute that
// reads the request (flags over stdin over the environment), opens the
// database once the request is valid, and writes the result.
func Command(ctx context.Context, env *cli.Env) error {
	return cli.Run(ctx, env, "volant-ipam", &ipamCommand{})
}

type ipamCommand struct {
	DB      string     `long:"db" value-name:"PATH" description:"database file (default $VOLANT_DB, else /var/lib/volant/volant.db)"`
	Lease   leaseCmd   `command:"lease" description:"Lease an address to a VM (or return the one it holds)"`
	Release releaseCmd `command:"release" description:"Free a VM's address; succeeds when there is none"`
	Show    showCmd    `command:"show" description:"Print a VM's lease (NOT_FOUND when none)"`
	List    listCmd    `command:"list" description:"Print every lease"`
	GC      gcCmd      `command:"gc" description:"Free the leases of every VM not named live"`
	Version versionCmd `command:"version" description:"Print the build version"`
}

// open opens the database (--db, else the layout's) once the request is
// known to be valid, so a bad request never creates or changes anything.
func (o *ipamCommand) open(ctx context.Context, env *cli.Env) (*store.Store, error) {
	dirs := layout.FromEnv(env.Env)
	cli.Override(&dirs.DB, o.DB)
	return store.Open(ctx, dirs.WithDefaults().DB, store.Options{})
}

type leaseCmd struct {
	VM         string `long:"vm" value-name:"NAME" description:"VM name"`
	Subnet     string `long:"subnet" value-name:"CIDR" description:"pool subnet (default 192.168.127.0/24, env VOLANT_SUBNET)"`
	Gateway    string `long:"gateway" value-name:"IP" description:"gateway (default the subnet's first address, env VOLANT_GATEWAY)"`
	RangeStart string `long:"range-start" value-name:"IP" description:"first leasable address (default network+100, env VOLANT_RANGE_START)"`
	RangeEnd   string `long:"range-end" value-name:"IP" description:"last leasable address (default the last host address, env VOLANT_RANGE_END)"`
}

func (c *leaseCmd) Execute(ctx context.Context, env *cli.Env, o *ipamCommand) error {
	req := LeaseRequest{PoolConfig: PoolFromEnv(env.Env)}
	if _, err := cli.ReadRequest(env, &req); err != nil {
		return err
	}
	cli.Override(&req.VM, c.VM)
	cli.Override(&req.Subnet, c.Subnet)
	cli.Override(&req.Gateway, c.Gateway)
	cli.Override(&req.RangeStart, c.RangeStart)
	cli.Override(&req.RangeEnd, c.RangeEnd)
	pool, err := req.Resolve()
	if err != nil {
		return err
	}
	st, err := o.open(ctx, env)
	if err != nil {
		return err
	}
	defer st.Close()
	l, err := Acquire(ctx, st, pool, req.VM)
	if err != nil {
		return err
	}
	return cli.WriteResult(env, Kind, l)
}

type vmFlag struct {
	VM string `long:"vm" value-name:"NAME" description:"VM name"`
}

// name is the VM named by --vm, else by the stdin request or piped lease.
func (f vmFlag) name(env *cli.Env) (string, error) {
	var req VMRequest
	if _, err := cli.ReadRequest(env, &req); err != nil {
		return "", err
	}
	if f.VM != "" {
		req = VMRequest{VM: f.VM}
	}
	return req.Name(env.Verb)
}

type releaseCmd struct{ vmFlag }

type releaseResult struct {
	VM       string `json:"vm"`
	Released bool   `json:"released"`
	Lease    *Lease `json:"lease,omitempty"`
}

func (c *releaseCmd) Execute(ctx context.Context, env *cli.Env, o *ipamCommand) error {
	vm, err := c.name(env)
	if err != nil {
		return err
	}
	st, err := o.open(ctx, env)
	if err != nil {
		return err
	}
	defer st.Close()
	l, err := Release(ctx, st, vm)
	if err != nil {
		return err
	}
	return cli.WriteResult(env, "ipam.release", releaseResult{VM: vm, Released: l != nil, Lease: l})
}

type showCmd struct{ vmFlag }

func (c *showCmd) Execute(ctx context.Context, env *cli.Env, o *ipamCommand) error {
	vm, err := c.name(env)
	if err != nil {
		return err
	}
	st, err := o.open(ctx, env)
	if err != nil {
		return err
	}
	defer st.Close()
	l, err := Get(ctx, st, vm)
	if err != nil {
		return err
	}
	return cli.WriteResult(env, Kind, l)
}

type listCmd struct{}

type listResult struct {
	Leases []Lease `json:"leases"`
}

func (listCmd) Execute(ctx context.Context, env *cli.Env, o *ipamCommand) error {
	st, err := o.open(ctx, env)
	if err != nil {
		return err
	}
	defer st.Close()
	ls, err := List(ctx, st)
	if err != nil {
		return err
	}
	return cli.WriteResult(env, "ipam.list", listResult{Leases: ls})
}

type gcCmd struct {
	Keep   []string `long:"keep" value-name:"NAME" description:"a live VM whose lease stays (repeat the flag)"`
	DryRun bool     `long:"dry-run" description:"report what would be freed; change nothing"`
}

func (c *gcCmd) Execute(ctx context.Context, env *cli.Env, o *ipamCommand) error {
	req, err := cli.ReadGCRequest(env, "VM names", c.Keep, c.DryRun, func(k string) error { return names.Check("VM name", k) })
	if err != nil {
		return err
	}
	st, err := o.open(ctx, env)
	if err != nil {
		return err
	}
	defer st.Close()
	res, err := GC(ctx, st, req.Keep, req.DryRun)
	if err != nil {
		return err
	}
	return cli.WriteResult(env, "ipam.gc", res)
}

type versionCmd struct{}

func (versionCmd) Execute(_ context.Context, env *cli.Env) error {
	return cli.WriteVersion(env, struct {
		SchemaVersion int `json:"schema_version"`
	}{store.LatestSchemaVersion()})
}
