package controller

import (
	"context"
	"database/sql"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/volantvm/volant/lib/agentapi"
	"github.com/volantvm/volant/lib/api"
	"github.com/volantvm/volant/lib/apierr"
	"github.com/volantvm/volant/lib/hostnet"
	"github.com/volantvm/volant/lib/portmap"
)

// Published ports. The ports table (lib/store schema v3) says which host
// ports a VM or deployment publishes; the kernel's nftables table
// (lib/hostnet) is made to match it by one function, syncPorts, which
// runs after every change that can move a backend (a VM created or
// deleted, a replica turning healthy or unhealthy, paused, crashed), at
// startup (Reconcile rebuilds the rules after a crash and removes those of
// owners that no longer exist) and every PortResync as a repair.
//
// A VM's ports go to its address whatever its state, as long as it exists
// (like a container's). A deployment's go to its replicas that are running
// and healthy: one that fails its health check leaves the set at once
// (kestrel reports the change) and rejoins when the check passes.

// Ports publishes host ports; *hostnet.Host (the calling thread's network
// namespace) implements it.
type Ports interface {
	SetPorts(ctx context.Context, set hostnet.PortSet) (*hostnet.PortsResult, error)
	DelPorts(ctx context.Context, owner hostnet.PortOwner) (*hostnet.PortsResult, error)
	GCPorts(ctx context.Context, keep []hostnet.PortOwner) (*hostnet.PortsGCResult, error)
	// PortFree checks that no host process uses the mapping's host port.
	PortFree(m portmap.Mapping) error
}

// PortResync is how often the published ports are checked against the
// database even when nothing changed (someone flushed the table).
const PortResync = 30 * time.Second

// portSync is the state of syncPorts.
type portSync struct {
	mu sync.Mutex
	// applied is what the kernel was last made to hold, by owner.
	applied map[hostnet.PortOwner]string
	synced  time.Time

	// routed is, by owner, the backends the kernel was last made to send
	// connections to: a deployment's Endpoints. It has a lock of its own
	// since readers hold a database transaction and syncPorts reads the
	// database under mu.
	routedMu sync.Mutex
	routed   map[hostnet.PortOwner][]string
}

func (p *portSync) setRouted(o hostnet.PortOwner, backends []string) {
	p.routedMu.Lock()
	defer p.routedMu.Unlock()
	if p.routed == nil {
		p.routed = map[hostnet.PortOwner][]string{}
	}
	if backends == nil {
		delete(p.routed, o)
		return
	}
	p.routed[o] = backends
}

func (p *portSync) routes(o hostnet.PortOwner, ip string) bool {
	p.routedMu.Lock()
	defer p.routedMu.Unlock()
	return ip != "" && slices.Contains(p.routed[o], ip)
}

type portRow struct {
	kind, owner string
	m           portmap.Mapping
}

func owner(kind, name string) hostnet.PortOwner {
	if kind == "deployment" {
		return hostnet.DeploymentPorts(name)
	}
	return hostnet.VMPorts(name)
}

func readPortRows(ctx context.Context, q querier, kind, name string) ([]portRow, error) {
	query := `SELECT owner_kind, owner, protocol, host_ip, host_port, guest_port FROM ports`
	var args []any
	if kind != "" {
		query += ` WHERE owner_kind = ? AND owner = ?`
		args = append(args, kind, name)
	}
	rows, err := q.QueryContext(ctx, query+` ORDER BY owner_kind, owner, protocol, host_port, host_ip`, args...)
	if err != nil {
		return nil, fmt.Errorf("reading published ports: %w", err)
	}
	defer rows.Close()
	var out []portRow
	for rows.Next() {
		var r portRow
		if err := rows.Scan(&r.kind, &r.owner, &r.m.Protocol, &r.m.HostIP, &r.m.HostPort, &r.m.GuestPort); err != nil {
			return nil, fmt.Errorf("reading published ports: %w", err)
		}
		out = append(out, r)
	}
	return out, rows.Err()
}

// portsOf returns the mappings of one owner, by (kind, name).
func portsByOwner(rows []portRow) map[[2]string][]portmap.Mapping {
	out := map[[2]string][]portmap.Mapping{}
	for _, r := range rows {
		k := [2]string{r.kind, r.owner}
		out[k] = append(out[k], r.m)
	}
	return out
}

// checkPorts validates a create request's ports and refuses host ports in
// use: by a process on the host, or by another VM or deployment. The
// inserting transaction checks the database again (insertPorts).
func (c *Controller) checkPorts(ctx context.Context, kind, name string, ms []portmap.Mapping, bridged bool) ([]portmap.Mapping, error) {
	if len(ms) == 0 {
		return nil, nil
	}
	if !bridged {
		return nil, apierr.New(apierr.InvalidInput, "%s %s has no network (its plugin's network mode is none): it cannot publish ports", kind, name).
			With("field", "ports")
	}
	ms, err := portmap.ValidateList(ms)
	if err != nil {
		return nil, err
	}
	if err := c.st.Read(ctx, func(tx *sql.Tx) error { return portsTaken(ctx, tx, kind, name, ms) }); err != nil {
		return nil, err
	}
	for _, m := range ms {
		if err := c.cfg.Ports.PortFree(m); err != nil {
			return nil, err
		}
	}
	return ms, nil
}

// portsTaken fails with PORT_IN_USE when another owner publishes a host
// port that overlaps one of ms.
func portsTaken(ctx context.Context, q querier, kind, name string, ms []portmap.Mapping) error {
	for _, m := range ms {
		rows, err := q.QueryContext(ctx, `SELECT owner_kind, owner, protocol, host_ip, host_port, guest_port FROM ports WHERE protocol = ? AND host_port = ?`,
			m.Protocol, m.HostPort)
		if err != nil {
			return fmt.Errorf("checking published ports: %w", err)
		}
		var clash *portRow
		for rows.Next() {
			var r portRow
			if err := rows.Scan(&r.kind, &r.owner, &r.m.Protocol, &r.m.HostIP, &r.m.HostPort, &r.m.GuestPort); err != nil {
				rows.Close()
				return err
			}
			if (r.kind != kind || r.owner != name) && portmap.Overlaps(r.m, m) {
				clash = &r
			}
		}
		rows.Close()
		if clash != nil {
			return apierr.New(apierr.PortInUse, "host port %s is in use: %s %s publishes %s", m, clash.kind, clash.owner, clash.m).
				With("port", m.String()).With("owner_kind", clash.kind).With("owner", clash.owner)
		}
	}
	return nil
}

// insertPorts records an owner's ports in tx, checking again that no
// other owner took them meanwhile.
func insertPorts(ctx context.Context, tx *sql.Tx, kind, name string, ms []portmap.Mapping) error {
	if len(ms) == 0 {
		return nil
	}
	if err := portsTaken(ctx, tx, kind, name, ms); err != nil {
		return err
	}
	for _, m := range ms {
		if _, err := tx.ExecContext(ctx, `INSERT INTO ports (owner_kind, owner, protocol, host_ip, host_port, guest_port) VALUES (?, ?, ?, ?, ?, ?)`,
			kind, name, m.Protocol, m.HostIP, m.HostPort, m.GuestPort); err != nil {
			return fmt.Errorf("recording published port %s of %s %s: %w", m, kind, name, err)
		}
	}
	return nil
}

// replaceVMPorts and ports of a deployment are changed only by creating
// and deleting them (and by deployment updates, which call setOwnerPorts).
func setOwnerPorts(ctx context.Context, tx *sql.Tx, kind, name string, ms []portmap.Mapping) error {
	if _, err := tx.ExecContext(ctx, `DELETE FROM ports WHERE owner_kind = ? AND owner = ?`, kind, name); err != nil {
		return fmt.Errorf("replacing published ports of %s %s: %w", kind, name, err)
	}
	return insertPorts(ctx, tx, kind, name, ms)
}

// isEndpoint says whether a replica takes a deployment's connections.
func isEndpoint(v vmRow) bool {
	return v.IP != "" && v.State == api.VMRunning && v.Health == string(agentapi.HealthHealthy) && v.Desired == desireRunning
}

// desiredPorts is what the kernel should hold: every owner's set.
func (c *Controller) desiredPorts(ctx context.Context) (map[hostnet.PortOwner]hostnet.PortSet, error) {
	out := map[hostnet.PortOwner]hostnet.PortSet{}
	err := c.st.Read(ctx, func(tx *sql.Tx) error {
		rows, err := readPortRows(ctx, tx, "", "")
		if err != nil || len(rows) == 0 {
			return err
		}
		for k, ms := range portsByOwner(rows) {
			set := hostnet.PortSet{Owner: owner(k[0], k[1]), Bridge: c.cfg.Bridge, Ports: ms, Backends: []string{}}
			if k[0] == "vm" {
				v, err := getVM(ctx, tx, k[1])
				if err == nil && v.IP != "" {
					set.Backends = []string{v.IP}
				}
			} else {
				vms, err := listVMs(ctx, tx, api.VMFilter{Deployment: k[1]})
				if err != nil {
					return err
				}
				slices.SortFunc(vms, func(a, b vmRow) int { return replicaIndex(k[1], a.Name) - replicaIndex(k[1], b.Name) })
				for _, v := range vms {
					if isEndpoint(v) {
						set.Backends = append(set.Backends, v.IP)
					}
				}
			}
			out[set.Owner] = set
		}
		return nil
	})
	return out, err
}

func setKey(s hostnet.PortSet) string {
	return strings.Join(portmap.Strings(s.Ports), ",") + "|" + strings.Join(s.Backends, ",") + "|" + s.Bridge
}

// syncPorts makes the kernel hold the desired published ports, changing
// only the owners whose set changed since the last pass (with full, every
// owner's is measured and repaired); gc also removes the rules of owners
// that do not exist (startup reconciliation, like the taps).
func (c *Controller) syncPorts(ctx context.Context, full, gc bool) error {
	c.ports.mu.Lock()
	defer c.ports.mu.Unlock()
	want, err := c.desiredPorts(ctx)
	if err != nil {
		return err
	}
	if c.ports.applied == nil {
		c.ports.applied = map[hostnet.PortOwner]string{}
	}
	if len(want) == 0 && len(c.ports.applied) == 0 {
		// Nothing published: ask the kernel only to remove leftovers, and
		// say nothing when it has no nftables.
		if gc {
			if res, err := c.cfg.Ports.GCPorts(ctx, nil); err != nil {
				c.log.Debug("published ports: removing leftovers", "err", err)
			} else if len(res.Removed) > 0 {
				c.log.Info("published ports: removed the rules of owners that do not exist", "rules", len(res.Removed))
			}
		}
		c.ports.synced = time.Now()
		return nil
	}
	var errs []string
	for o, set := range want {
		key := setKey(set)
		if !full && c.ports.applied[o] == key {
			continue
		}
		if _, err := c.cfg.Ports.SetPorts(ctx, set); err != nil {
			errs = append(errs, fmt.Sprintf("%s: %v", o, err))
			delete(c.ports.applied, o)
			continue
		}
		c.ports.applied[o] = key
		c.ports.setRouted(o, slices.Clone(set.Backends))
	}
	for o := range c.ports.applied {
		if _, ok := want[o]; ok {
			continue
		}
		if _, err := c.cfg.Ports.DelPorts(ctx, o); err != nil {
			errs = append(errs, fmt.Sprintf("%s: %v", o, err))
			continue
		}
		delete(c.ports.applied, o)
		c.ports.setRouted(o, nil)
	}
	if gc {
		keep := make([]hostnet.PortOwner, 0, len(want))
		for o := range want {
			keep = append(keep, o)
		}
		if res, err := c.cfg.Ports.GCPorts(ctx, keep); err != nil {
			errs = append(errs, "removing the ports of owners that do not exist: "+err.Error())
		} else if len(res.Removed) > 0 {
			c.log.Info("published ports: removed the rules of owners that do not exist", "rules", len(res.Removed))
		}
	}
	if full {
		c.ports.synced = time.Now()
	}
	if len(errs) > 0 {
		return fmt.Errorf("publishing ports: %s", strings.Join(errs, "; "))
	}
	return nil
}

// runPorts keeps the published ports in line with every change.
func (c *Controller) runPorts(ctx context.Context) {
	for {
		ch := c.changes()
		c.ports.mu.Lock()
		full := time.Since(c.ports.synced) >= PortResync
		c.ports.mu.Unlock()
		if err := c.syncPorts(ctx, full, false); err != nil && ctx.Err() == nil {
			c.log.Warn("published ports", "err", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-ch:
		case <-time.After(PortResync):
		}
	}
}

// publishNow brings the published ports in line before an answer, so a
// create or delete returns with its rules made or gone.
func (c *Controller) publishNow(ctx context.Context) {
	if err := c.syncPorts(ctx, false, false); err != nil {
		c.log.Warn("published ports", "err", err)
	}
}

// attachPorts fills the Ports of VMs from the ports table.
func attachVMPorts(ctx context.Context, q querier, vms []api.VM) error {
	if len(vms) == 0 {
		return nil
	}
	var rows []portRow
	var err error
	if len(vms) == 1 {
		rows, err = readPortRows(ctx, q, "vm", vms[0].Name)
	} else {
		rows, err = readPortRows(ctx, q, "", "")
	}
	if err != nil {
		return err
	}
	by := portsByOwner(rows)
	for i := range vms {
		vms[i].Ports = by[[2]string{"vm", vms[i].Name}]
	}
	return nil
}

// deploymentPorts fills a deployment's Ports and Endpoints: the replicas
// the kernel's rules send connections to, which follow the database's
// running and healthy replicas once syncPorts has written them.
func (c *Controller) deploymentPorts(ctx context.Context, q querier, d *api.Deployment, vms []vmRow) error {
	rows, err := readPortRows(ctx, q, "deployment", d.Name)
	if err != nil {
		return err
	}
	d.Ports = portsByOwner(rows)[[2]string{"deployment", d.Name}]
	if len(d.Ports) == 0 {
		return nil
	}
	d.Endpoints = []string{}
	o := hostnet.DeploymentPorts(d.Name)
	for _, v := range vms {
		if c.ports.routes(o, v.IP) {
			d.Endpoints = append(d.Endpoints, v.Name)
		}
	}
	return nil
}
