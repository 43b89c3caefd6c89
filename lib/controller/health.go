package controller

import (
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"time"

	"github.com/volantvm/volant/lib/agentapi"
	"github.com/volantvm/volant/lib/api"
	"github.com/volantvm/volant/lib/apierr"
	"github.com/volantvm/volant/lib/manifest"
)

// HTTPProber asks kestrel for its status on http://<guest ip>:<agent port>/healthz.
type HTTPProber struct {
	// Timeout bounds one probe (default 2 s).
	Timeout time.Duration
	// tr, when set, keeps its connection between probes (forVM).
	tr *http.Transport
}

var probeTransport = &http.Transport{Proxy: nil, DisableKeepAlives: true, DialContext: (&net.Dialer{Timeout: 2 * time.Second}).DialContext}

// forVM returns a prober for one VM's poller that keeps its connection to
// kestrel open between polls, and the function that closes it. A poll on
// an open connection is two packets into the guest instead of a TCP
// handshake, an accept and a close: under software emulation each
// packet and each of kestrel's wake-ups is host CPU, every interval, for
// every idle VM. A connection that broke (the guest restarted, or took
// another address) is dialed again; a guest that stopped answering still
// fails the poll by its timeout.
func (p HTTPProber) forVM() (Prober, func()) {
	tr := &http.Transport{Proxy: nil, MaxIdleConnsPerHost: 1, DialContext: (&net.Dialer{Timeout: 2 * time.Second}).DialContext}
	return HTTPProber{Timeout: p.Timeout, tr: tr}, tr.CloseIdleConnections
}

// Probe implements Prober.
func (p HTTPProber) Probe(ctx context.Context, agent netip.AddrPort) (*agentapi.Status, error) {
	t := p.Timeout
	if t <= 0 {
		t = 2 * time.Second
	}
	ctx, cancel := context.WithTimeout(ctx, t)
	defer cancel()
	u := "http://" + agent.String() + "/healthz"
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, err
	}
	tr := p.tr
	if tr == nil {
		tr = probeTransport
	}
	resp, err := (&http.Client{Transport: tr}).Do(req)
	if err != nil {
		return nil, err
	}
	defer func() {
		io.Copy(io.Discard, io.LimitReader(resp.Body, 4<<10)) // so the connection is kept
		resp.Body.Close()
	}()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET %s: %s", u, resp.Status)
	}
	var st agentapi.Status
	if err := json.NewDecoder(http.MaxBytesReader(nil, resp.Body, 1<<20)).Decode(&st); err != nil {
		return nil, fmt.Errorf("GET %s: %w", u, err)
	}
	return &st, nil
}

// agentPort is kestrel's API port for VMs of a plugin: the manifest's
// network.agent_port, or the default when the plugin cannot be read.
func (c *Controller) agentPort(ctx context.Context, plugin string) uint16 {
	var p pluginRow
	err := c.st.Read(ctx, func(tx *sql.Tx) error {
		var err error
		p, err = getPlugin(ctx, tx, plugin)
		return err
	})
	if err == nil {
		if m, err := manifest.Decode(p.Manifest); err == nil {
			m.Normalize()
			return uint16(m.AgentPort())
		}
	}
	return agentapi.Port
}

// pollHealth polls kestrel's /healthz until the run ends: every second
// while the VM starts, every HealthInterval once it runs.
func (c *Controller) pollHealth(ctx context.Context, name string, ended <-chan struct{}) {
	prober := c.cfg.Prober
	if hp, ok := prober.(HTTPProber); ok {
		var done func()
		prober, done = hp.forVM()
		defer done()
	}
	failures := 0
	hasCheck := map[string]bool{}
	port := uint16(0) // kestrel's port, from the VM's plugin manifest
	for {
		v, err := c.readVM(ctx, name)
		if err != nil {
			if apierr.Is(err, apierr.NotFound) || ctx.Err() != nil {
				return
			}
			c.log.Warn("health poll: reading the VM", "vm", name, "err", err)
		}
		wait := c.cfg.HealthInterval
		if err == nil && v.State == api.VMPaused {
			failures = 0 // a paused guest cannot answer; it starts afresh
		}
		if err == nil && v.State == api.VMStarting {
			wait = time.Second
		}
		if err == nil && v.IP != "" && (v.State == api.VMStarting || v.State == api.VMRunning) {
			ip, perr := netip.ParseAddr(v.IP)
			if port == 0 {
				port = c.agentPort(ctx, v.pluginRef())
			}
			if perr == nil {
				st, perr := prober.Probe(ctx, netip.AddrPortFrom(ip, port))
				if ctx.Err() != nil {
					return
				}
				if perr == nil {
					failures = 0
					c.applyStatus(ctx, name, st, hasCheck)
				} else {
					failures++
					if failures >= 3 && v.State == api.VMRunning {
						c.markUnreachable(ctx, name, perr)
					}
				}
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-ended:
			return
		case <-time.After(wait):
		}
	}
}

// Report records a status report kestrel posted for VM name. from is the
// sender's address when the report came through the agent listener (it
// must be the VM's own address); the zero Addr skips that check.
func (c *Controller) Report(ctx context.Context, name string, st agentapi.Status, from netip.Addr) error {
	if err := checkName("VM name", name); err != nil {
		return err
	}
	if st.VM != "" && st.VM != name {
		return apierr.New(apierr.InvalidInput, "report for VM %s names VM %s", name, st.VM).With("vm", name)
	}
	v, err := c.readVM(ctx, name)
	if from.IsValid() && (apierr.Is(err, apierr.NotFound) || (err == nil && v.IP != from.Unmap().String())) {
		// On the agent endpoint any guest may ask: a VM that is not the
		// caller's and one that does not exist get the same answer, so
		// that no guest learns other VMs' names or addresses.
		return apierr.New(apierr.PermissionDenied, "a report for VM %s is accepted here only from that VM's own address", name).
			With("vm", name)
	}
	if err != nil {
		return err
	}
	c.applyStatus(ctx, name, &st, nil)
	return nil
}

// verdict turns kestrel's status into health. A failing check, or a
// workload that failed or exited, is unhealthy. Otherwise a plugin with a
// health check is healthy once the check passes; one without is healthy
// while its workload runs.
func verdict(st *agentapi.Status, hasCheck bool) agentapi.HealthState {
	switch {
	case st.Health.State == agentapi.HealthUnhealthy,
		st.Workload.State == agentapi.WorkloadFailed, st.Workload.State == agentapi.WorkloadExited:
		return agentapi.HealthUnhealthy
	case hasCheck && st.Health.State == agentapi.HealthHealthy:
		return agentapi.HealthHealthy
	case !hasCheck && st.Workload.State == agentapi.WorkloadRunning:
		return agentapi.HealthHealthy
	}
	return agentapi.HealthUnknown
}

func (c *Controller) pluginHasCheck(ctx context.Context, plugin string, cache map[string]bool) bool {
	if cache != nil {
		if v, ok := cache[plugin]; ok {
			return v
		}
	}
	var has bool
	_ = c.st.Read(ctx, func(tx *sql.Tx) error {
		p, err := getPlugin(ctx, tx, plugin)
		if err != nil {
			return err
		}
		var m struct {
			HealthCheck json.RawMessage `json:"health_check"`
		}
		if json.Unmarshal(p.Manifest, &m) == nil {
			has = len(m.HealthCheck) > 0 && string(m.HealthCheck) != "null"
		}
		return nil
	})
	if cache != nil {
		cache[plugin] = has
	}
	return has
}

// agentRefresh is how often an unchanged agent status is rewritten.
const agentRefresh = 30 * time.Second

// applyStatus moves the VM's state and health by kestrel's status.
func (c *Controller) applyStatus(ctx context.Context, name string, st *agentapi.Status, cache map[string]bool) {
	v0, err := c.readVM(ctx, name)
	if err != nil {
		return
	}
	hc := c.pluginHasCheck(ctx, v0.pluginRef(), cache)
	h := verdict(st, hc)
	now := time.Now().UTC().Truncate(time.Millisecond)
	v, err := c.updateVM(ctx, name, func(tx *sql.Tx, v *vmRow) error {
		if v.State != api.VMStarting && v.State != api.VMRunning {
			return errSkip
		}
		changed := false
		switch h {
		case agentapi.HealthHealthy:
			if v.State == api.VMStarting || v.Health != string(agentapi.HealthHealthy) {
				v.State, v.Health, v.Error, changed = api.VMRunning, string(h), "", true
				if err := appendVMEvent(ctx, tx, api.EventVMHealthy, v, vmEvent{Health: "passed", IP: v.IP}); err != nil {
					return err
				}
			}
		case agentapi.HealthUnhealthy:
			if v.Health != string(h) {
				why := st.Health.LastError
				if why == "" && st.Workload.Error != "" {
					why = st.Workload.Error
				}
				if why == "" {
					why = fmt.Sprintf("workload %s", st.Workload.State)
				}
				v.Health, v.Error, changed = string(h), why, true
				if err := appendVMEvent(ctx, tx, api.EventVMUnhealthy, v, vmEvent{Error: why}); err != nil {
					return err
				}
			}
		default:
			if v.Health == "" {
				v.Health, changed = string(agentapi.HealthUnknown), true
			}
		}
		if !changed && v.Agent != nil && v.AgentAt != nil && now.Sub(*v.AgentAt) < agentRefresh &&
			v.Agent.Workload.State == st.Workload.State && v.Agent.Health.State == st.Health.State &&
			v.Agent.Workload.Restarts == st.Workload.Restarts {
			return errSkip
		}
		cp := *st
		v.Agent, v.AgentAt = &cp, &now
		return nil
	})
	if err != nil {
		if !apierr.Is(err, apierr.NotFound) {
			c.log.Warn("recording a health report", "vm", name, "err", err)
		}
		return
	}
	if v.State == api.VMRunning {
		c.boots.Release(name) // booted: the next start may go
		if v0.State != api.VMRunning {
			c.log.Debug("boot slot: released", "vm", name, "waiting", c.boots.Waiting())
		}
		if v0.State != api.VMRunning {
			c.settleRestore(ctx, name)
		}
	}
	if v.Deployment != "" && (v.State != v0.State || v.Health != v0.Health) {
		c.kickDeployments()
	}
}

// markUnreachable records that kestrel has stopped answering a running VM.
func (c *Controller) markUnreachable(ctx context.Context, name string, cause error) {
	why := "kestrel does not answer: " + cause.Error()
	v, err := c.updateVM(ctx, name, func(tx *sql.Tx, v *vmRow) error {
		if v.State != api.VMRunning || v.Health == string(agentapi.HealthUnhealthy) {
			return errSkip
		}
		v.Health, v.Error = string(agentapi.HealthUnhealthy), why
		return appendVMEvent(ctx, tx, api.EventVMUnhealthy, v, vmEvent{Error: why})
	})
	if err == nil && v.Deployment != "" {
		c.kickDeployments()
	}
}
