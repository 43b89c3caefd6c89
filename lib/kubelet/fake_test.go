package kubelet

import (
	"archive/tar"
	"bytes"
	"context"
	"fmt"
	"io"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/volantvm/volant/lib/agentapi"
	"github.com/volantvm/volant/lib/agentchan"
	"github.com/volantvm/volant/lib/api"
	"github.com/volantvm/volant/lib/apierr"
)

// fakeVolant is an in-memory volantd: plugins built from images, VMs with
// labels, and whatever state a test sets.
type fakeVolant struct {
	mu       sync.Mutex
	vms      map[string]*api.VM
	creates  []api.CreateVMRequest
	installs []api.InstallImageRequest
	deletes  []string
	restarts []string
	starts   []string
	nextIP   int
	buildErr error
	logs     string
	logOpts  []api.LogOptions
	execs    []agentchan.ExecRequest
	execOut  string
	execCode int
	subnet   string
	metrics  string   // GET /metrics
	writes   []string // WriteFiles: "vm:dir/name=data"
	// guests, when set, is where WriteFiles extracts its archives, as
	// kestrel does (agentchan.ExtractTar): guests/<vm>/<path>.
	guests string
	netErr error
	// logStream, when set, is the workload's log stream (else logs).
	logStream func(ctx context.Context) io.ReadCloser
}

func newFake() *fakeVolant { return &fakeVolant{vms: map[string]*api.VM{}, nextIP: 100} }

func (f *fakeVolant) InstallImage(_ context.Context, req api.InstallImageRequest) (*api.Plugin, bool, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.installs = append(f.installs, req)
	if f.buildErr != nil {
		return nil, false, f.buildErr
	}
	name := strings.NewReplacer(":", "-", "/", "-", ".", "-").Replace(req.Image)
	return &api.Plugin{Name: name}, true, nil
}

func (f *fakeVolant) SetNetwork(_ context.Context, subnet string) (*api.Network, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.netErr != nil {
		return nil, f.netErr
	}
	f.subnet = subnet
	p := netip.MustParsePrefix(subnet).Addr().As4()
	at := func(last byte) string { return netip.AddrFrom4([4]byte{p[0], p[1], p[2], last}).String() }
	return &api.Network{Subnet: subnet, Gateway: at(1), RangeStart: at(100), RangeEnd: at(254)}, nil
}

func (f *fakeVolant) CreateVM(_ context.Context, req api.CreateVMRequest) (*api.VM, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, ok := f.vms[req.Name]; ok {
		return nil, apierr.New(apierr.Conflict, "VM %s exists", req.Name)
	}
	f.creates = append(f.creates, req)
	v := &api.VM{Name: req.Name, Plugin: req.Plugin, State: api.VMStarting, Labels: req.Labels,
		IP: fmt.Sprintf("10.244.1.%d", f.nextIP), Resources: api.Resources{CPUCores: req.CPUCores, MemoryMB: req.MemoryMB}}
	f.nextIP++
	f.vms[req.Name] = v
	c := *v
	return &c, nil
}

func (f *fakeVolant) ListVMs(_ context.Context, fl api.VMFilter) ([]api.VM, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := []api.VM{}
	for _, v := range f.vms {
		if fl.Label != "" {
			k, val, _ := strings.Cut(fl.Label, "=")
			if v.Labels[k] != val {
				continue
			}
		}
		out = append(out, *v)
	}
	return out, nil
}

func (f *fakeVolant) DeleteVM(_ context.Context, name string) (*api.VM, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	v, ok := f.vms[name]
	if !ok {
		return nil, apierr.New(apierr.NotFound, "no VM %s", name)
	}
	delete(f.vms, name)
	f.deletes = append(f.deletes, name)
	v.State = api.VMDeleted
	return v, nil
}

func (f *fakeVolant) StartVM(_ context.Context, name string) (*api.VM, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	v, ok := f.vms[name]
	if !ok {
		return nil, apierr.New(apierr.NotFound, "no VM %s", name)
	}
	f.starts = append(f.starts, name)
	v.State = api.VMStarting
	v.Agent = nil
	c := *v
	return &c, nil
}

func (f *fakeVolant) RestartVM(_ context.Context, name string) (*api.VM, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	v, ok := f.vms[name]
	if !ok {
		return nil, apierr.New(apierr.NotFound, "no VM %s", name)
	}
	f.restarts = append(f.restarts, name)
	v.State = api.VMStarting
	v.Agent = nil
	c := *v
	return &c, nil
}

func (f *fakeVolant) VMLogs(ctx context.Context, name string, o api.LogOptions) (io.ReadCloser, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.logOpts = append(f.logOpts, o)
	if f.logStream != nil {
		return f.logStream(ctx), nil
	}
	return io.NopCloser(strings.NewReader(f.logs)), nil
}

func (f *fakeVolant) Exec(_ context.Context, vm string, req agentchan.ExecRequest, eio agentchan.ExecIO) (*agentchan.ExitStatus, error) {
	f.mu.Lock()
	f.execs = append(f.execs, req)
	out, code := f.execOut, f.execCode
	f.mu.Unlock()
	if eio.Stdin != nil {
		b, _ := io.ReadAll(eio.Stdin)
		out += string(b)
	}
	io.WriteString(eio.Stdout, out)
	return &agentchan.ExitStatus{Code: code}, nil
}

func (f *fakeVolant) Metrics(context.Context) (io.ReadCloser, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return io.NopCloser(strings.NewReader(f.metrics)), nil
}

func (f *fakeVolant) WriteFiles(_ context.Context, vm, dir string, r io.Reader) (*api.CopyResult, error) {
	b, err := io.ReadAll(r)
	if err != nil {
		return nil, err
	}
	if f.guests != "" {
		d := filepath.Join(f.guests, vm, dir)
		if err := os.MkdirAll(d, 0o755); err != nil {
			return nil, err
		}
		if _, err := agentchan.ExtractTar(bytes.NewReader(b), d, ""); err != nil {
			return nil, err
		}
	}
	tr := tar.NewReader(bytes.NewReader(b))
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return nil, err
		}
		b, _ := io.ReadAll(tr)
		f.mu.Lock()
		f.writes = append(f.writes, fmt.Sprintf("%s:%s/%s=%s@%o", vm, dir, h.Name, b, h.Mode))
		f.mu.Unlock()
	}
	return &api.CopyResult{}, nil
}

// run marks a VM running with its workload in state ws.
func (f *fakeVolant) run(name string, ws agentapi.WorkloadState, restarts int, exit *int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	v := f.vms[name]
	started := time.Date(2026, 12, 5, 12, 0, 0, 0, time.UTC)
	v.State, v.StartedAt = api.VMRunning, &started
	v.Agent = &agentapi.Status{Workload: agentapi.WorkloadStatus{State: ws, Restarts: restarts, ExitCode: exit, StartedAt: &started}}
}

func (f *fakeVolant) set(name string, st api.VMState, msg string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.vms[name].State, f.vms[name].Error = st, msg
}

func (f *fakeVolant) counts() (installs, creates, deletes, restarts int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.installs), len(f.creates), len(f.deletes), len(f.restarts)
}
