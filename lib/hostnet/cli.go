package hostnet

import (
	"context"

	"github.com/volantvm/volant/lib/apierr"
	"github.com/volantvm/volant/lib/cli"
	"github.com/volantvm/volant/lib/names"
	"github.com/volantvm/volant/lib/portmap"
)

// Command is the whole of the volant-net command (cmd/volant-net documents
// it): one go-flags struct per verb, each with an Execute that reads the
// request (flags over stdin), calls Host and writes the result.
func Command(ctx context.Context, env *cli.Env) error {
	err := cli.Run(ctx, env, "volant-net", &netCommand{})
	if err != nil && apierr.CodeOf(err) == apierr.PermissionDenied {
		return apierr.From(err).With("hint", "volant-net needs root (CAP_NET_ADMIN in its network namespace)")
	}
	return err
}

type netCommand struct {
	Verbose  bool        `short:"v" long:"verbose" description:"log each change on stderr"`
	Setup    setupCmd    `command:"setup" description:"Create or repair the bridge, address, forwarding and NAT"`
	Check    checkCmd    `command:"check" description:"Compare the host with what setup recorded; exit 5 if anything differs"`
	Teardown teardownCmd `command:"teardown" description:"Remove what setup made"`
	Status   statusCmd   `command:"status" description:"Report the live state of the bridge, NAT and taps"`
	Tap      struct {
		Add  tapAddCmd  `command:"add" description:"Create a VM's tap on the bridge (idempotent)"`
		Del  tapDelCmd  `command:"del" description:"Delete a VM's tap (idempotent)"`
		List tapListCmd `command:"list" description:"List Volant's taps"`
		GC   tapGCCmd   `command:"gc" description:"Delete the taps of VMs not kept"`
		Name tapNameCmd `command:"name" description:"Print the tap name derived for a VM"`
	} `command:"tap" description:"Per-VM tap devices"`
	Port struct {
		Add  portAddCmd  `command:"add" description:"Publish host ports of a VM or deployment (idempotent)"`
		Del  portDelCmd  `command:"del" description:"Unpublish a VM's or deployment's host ports (idempotent)"`
		List portListCmd `command:"list" description:"List published ports"`
		GC   portGCCmd   `command:"gc" description:"Unpublish the ports of owners not kept"`
	} `command:"port" description:"Published ports (host port → guest port, nftables DNAT)"`
	Version cli.VersionCommand `command:"version" description:"Print the build version"`
}

func (o *netCommand) hostFor(env *cli.Env) *Host {
	h := &Host{}
	if o.Verbose {
		h.Log = env.Logger(true)
	}
	return h
}

type bridgeFlag struct {
	Bridge string `long:"bridge" value-name:"NAME" description:"bridge name (default vbr0)"`
}

type netFlags struct {
	bridgeFlag
	CIDR   string `long:"cidr" value-name:"ADDR/LEN" description:"bridge address with prefix length (default 192.168.127.1/24)"`
	NAT    bool   `long:"nat" description:"masquerade traffic from the subnet to other networks"`
	Uplink string `long:"uplink" value-name:"IFACE" description:"masquerade only traffic leaving through IFACE"`
	Adopt  bool   `long:"adopt" description:"manage an existing bridge volant-net did not create"`
}

type setupCmd struct{ netFlags }

func (c *setupCmd) Execute(ctx context.Context, env *cli.Env, o *netCommand) error {
	var cfg Config
	if _, err := cli.ReadRequest(env, &cfg); err != nil {
		return err
	}
	cli.Override(&cfg.Bridge, c.Bridge)
	cli.Override(&cfg.CIDR, c.CIDR)
	cli.Override(&cfg.Uplink, c.Uplink)
	cli.Override(&cfg.NAT, c.NAT)
	cli.Override(&cfg.Adopt, c.Adopt)
	res, err := o.hostFor(env).Setup(ctx, cfg)
	if err != nil {
		return err
	}
	return cli.WriteResult(env, "net.setup", res)
}

type checkCmd struct {
	netFlags
	NoNAT bool `long:"no-nat" description:"expect no NAT, whatever setup recorded"`
}

func (c *checkCmd) Execute(ctx context.Context, env *cli.Env, o *netCommand) error {
	if c.NAT && c.NoNAT {
		return apierr.New(apierr.Usage, "--nat and --no-nat contradict each other")
	}
	var req CheckRequest
	if _, err := cli.ReadRequest(env, &req); err != nil {
		return err
	}
	cli.Override(&req.Bridge, c.Bridge)
	cli.Override(&req.CIDR, c.CIDR)
	cli.Override(&req.Uplink, c.Uplink)
	cli.Override(&req.Adopt, c.Adopt)
	if c.NAT || c.NoNAT {
		req.NAT = &c.NAT
	}
	res, err := o.hostFor(env).CheckRecorded(ctx, req)
	if err != nil {
		return err
	}
	return cli.WriteResult(env, "net.check", res)
}

type teardownCmd struct {
	bridgeFlag
	Force bool `long:"force" description:"also delete Volant taps still attached"`
}

func (c *teardownCmd) Execute(ctx context.Context, env *cli.Env, o *netCommand) error {
	var cfg TeardownConfig
	if _, err := cli.ReadRequest(env, &cfg); err != nil {
		return err
	}
	cli.Override(&cfg.Bridge, c.Bridge)
	cli.Override(&cfg.Force, c.Force)
	res, err := o.hostFor(env).Teardown(ctx, cfg)
	if err != nil {
		return err
	}
	return cli.WriteResult(env, "net.teardown", res)
}

type statusCmd struct{ bridgeFlag }

func (c *statusCmd) Execute(ctx context.Context, env *cli.Env, o *netCommand) error {
	var req bridgeFlag
	if _, err := cli.ReadRequest(env, &req); err != nil {
		return err
	}
	cli.Override(&req.Bridge, c.Bridge)
	res, err := o.hostFor(env).Status(ctx, req.Bridge)
	if err != nil {
		return err
	}
	return cli.WriteResult(env, "net.status", res)
}

type tapAddCmd struct {
	Name   string `long:"name" value-name:"TAP" description:"tap name (default derived from --vm)"`
	VM     string `long:"vm" value-name:"VM" description:"the VM the tap belongs to"`
	Bridge string `long:"bridge" value-name:"NAME" description:"bridge to attach to (default vbr0)"`
	MAC    string `long:"mac" value-name:"MAC" description:"the guest NIC's MAC"`
	IP     string `long:"ip" value-name:"IP" description:"the guest's IPv4 address (permanent neighbour entry)"`
	Owner  string `long:"owner" value-name:"USER|UID" description:"user who may open the tap"`
	Group  string `long:"group" value-name:"GROUP|GID" description:"group that may open the tap"`
	MTU    int    `long:"mtu" value-name:"N" description:"tap MTU"`
	Queues int    `long:"queues" value-name:"N" description:"queues; N > 1 makes a multi-queue tap"`
}

func (c *tapAddCmd) Execute(ctx context.Context, env *cli.Env, o *netCommand) error {
	var req TapAddRequest
	if _, err := cli.ReadRequest(env, &req); err != nil {
		return err
	}
	cfg := req.Config()
	cli.Override(&cfg.Name, c.Name)
	cli.Override(&cfg.VM, c.VM)
	cli.Override(&cfg.Bridge, c.Bridge)
	cli.Override(&cfg.MAC, c.MAC)
	cli.Override(&cfg.IP, c.IP)
	cli.Override(&cfg.MTU, c.MTU)
	cli.Override(&cfg.Queues, c.Queues)
	var err error
	if c.Owner != "" {
		if cfg.Owner, err = LookupOwner(c.Owner); err != nil {
			return err
		}
	}
	if c.Group != "" {
		if cfg.Group, err = LookupGroup(c.Group); err != nil {
			return err
		}
	}
	res, err := o.hostFor(env).AddTap(ctx, cfg)
	if err != nil {
		return err
	}
	return cli.WriteResult(env, "net.tap", TapAddResult{TapResult: *res, Lease: req.Lease})
}

type tapDelCmd struct {
	Name  string `long:"name" value-name:"TAP" description:"tap name"`
	VM    string `long:"vm" value-name:"VM" description:"delete the tap derived from this VM name"`
	Force bool   `long:"force" description:"delete even while a process has it open"`
}

func (c *tapDelCmd) Execute(ctx context.Context, env *cli.Env, o *netCommand) error {
	var req TapDelRequest
	if _, err := cli.ReadRequest(env, &req); err != nil {
		return err
	}
	ref := req.Ref()
	cli.Override(&ref.Name, c.Name)
	cli.Override(&ref.VM, c.VM)
	cli.Override(&ref.Force, c.Force)
	res, err := o.hostFor(env).DelTap(ctx, ref)
	if err != nil {
		return err
	}
	return cli.WriteResult(env, "net.tap-del", res)
}

type tapListCmd struct{}

func (tapListCmd) Execute(ctx context.Context, env *cli.Env, o *netCommand) error {
	taps, err := o.hostFor(env).ListTaps(ctx)
	if err != nil {
		return err
	}
	return cli.WriteResult(env, "net.tap-list", struct {
		Taps []Tap `json:"taps"`
	}{taps})
}

type tapGCCmd struct {
	Keep   []string `long:"keep" value-name:"VM" description:"a live VM whose tap stays (repeat)"`
	DryRun bool     `long:"dry-run" description:"report what would be deleted; change nothing"`
}

func (c *tapGCCmd) Execute(ctx context.Context, env *cli.Env, o *netCommand) error {
	req, err := cli.ReadGCRequest(env, "VM names", c.Keep, c.DryRun, ValidKeep)
	if err != nil {
		return err
	}
	gc := o.hostFor(env).GCTaps
	if req.DryRun {
		gc = o.hostFor(env).GCTapsDryRun
	}
	res, err := gc(ctx, req.Keep)
	if err != nil {
		return err
	}
	return cli.WriteResult(env, "net.tap-gc", res)
}

type tapNameCmd struct {
	Args struct {
		VM string `positional-arg-name:"VM" required:"yes"`
	} `positional-args:"yes"`
}

func (c *tapNameCmd) Execute(_ context.Context, env *cli.Env) error {
	vm := c.Args.VM
	if err := names.Check("VM name", vm); err != nil {
		return err
	}
	return cli.WriteResult(env, "net.tap-name", struct {
		VM  string `json:"vm"`
		Tap string `json:"tap"`
	}{vm, TapName(vm)})
}

type portOwnerFlags struct {
	VM         string `long:"vm" value-name:"VM" description:"the VM whose ports these are"`
	Deployment string `long:"deployment" value-name:"NAME" description:"the deployment whose ports these are"`
}

type portAddCmd struct {
	portOwnerFlags
	Publish []string `short:"p" long:"publish" value-name:"[HOSTIP:]HOSTPORT:GUESTPORT[/tcp|udp]" description:"port to publish (repeatable)"`
	Backend []string `long:"backend" value-name:"IP" description:"guest address to forward to (repeatable; replaces the owner's)"`
	Bridge  string   `long:"bridge" value-name:"NAME" description:"the guests' bridge (default vbr0)"`
}

func (c *portAddCmd) Execute(ctx context.Context, env *cli.Env, o *netCommand) error {
	var req PortAddRequest
	if _, err := cli.ReadRequest(env, &req); err != nil {
		return err
	}
	cli.Override(&req.VM, c.VM)
	cli.Override(&req.Deployment, c.Deployment)
	cli.Override(&req.Bridge, c.Bridge)
	if len(c.Backend) > 0 {
		req.Backends = c.Backend
	}
	if len(c.Publish) > 0 {
		ms, err := portmap.ParseAll(c.Publish)
		if err != nil {
			return err
		}
		req.Ports = ms
	}
	res, err := o.hostFor(env).AddPorts(ctx, req)
	if err != nil {
		return err
	}
	return cli.WriteResult(env, "net.ports", res)
}

type portDelCmd struct {
	portOwnerFlags
	Publish []string `short:"p" long:"publish" value-name:"SPEC" description:"port to unpublish (repeatable; default all of the owner's)"`
}

func (c *portDelCmd) Execute(ctx context.Context, env *cli.Env, o *netCommand) error {
	var req PortDelRequest
	if _, err := cli.ReadRequest(env, &req); err != nil {
		return err
	}
	cli.Override(&req.VM, c.VM)
	cli.Override(&req.Deployment, c.Deployment)
	if len(c.Publish) > 0 {
		ms, err := portmap.ParseAll(c.Publish)
		if err != nil {
			return err
		}
		req.Ports = ms
	}
	res, err := o.hostFor(env).RemovePorts(ctx, req)
	if err != nil {
		return err
	}
	return cli.WriteResult(env, "net.ports", res)
}

type portListCmd struct{}

func (portListCmd) Execute(ctx context.Context, env *cli.Env, o *netCommand) error {
	ps, err := o.hostFor(env).ListPorts(ctx)
	if err != nil {
		return err
	}
	return cli.WriteResult(env, "net.port-list", struct {
		Ports []PublishedPort `json:"ports"`
	}{ps})
}

type portGCCmd struct {
	Keep   []string `long:"keep" value-name:"vm:NAME|dep:NAME" description:"an owner whose ports stay (repeat)"`
	DryRun bool     `long:"dry-run" description:"report what would be removed; change nothing"`
}

func (c *portGCCmd) Execute(ctx context.Context, env *cli.Env, o *netCommand) error {
	req, err := cli.ReadGCRequest(env, "port owners", c.Keep, c.DryRun, ValidPortKeep)
	if err != nil {
		return err
	}
	keep := make([]PortOwner, len(req.Keep))
	for i, k := range req.Keep {
		keep[i] = PortOwner(k)
	}
	h := o.hostFor(env)
	if req.DryRun {
		res, err := h.GCPortsDryRun(ctx, keep)
		if err != nil {
			return err
		}
		return cli.WriteResult(env, "net.port-gc", struct {
			*PortsGCResult
			DryRun bool `json:"dry_run"`
		}{res, true})
	}
	res, err := h.GCPorts(ctx, keep)
	if err != nil {
		return err
	}
	return cli.WriteResult(env, "net.port-gc", res)
}
