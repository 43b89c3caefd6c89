package controller_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/netip"
	"path/filepath"
	"testing"
	"time"

	"github.com/volantvm/volant/lib/api"
	"github.com/volantvm/volant/lib/controller"
	"github.com/volantvm/volant/lib/controller/controllertest"
	"github.com/volantvm/volant/lib/ipam"
	"github.com/volantvm/volant/lib/store"
)

// BenchmarkListVMs200 is the controller's part of GET /api/v1/vms with 200
// healthy VMs (fake runtime and prober, real SQLite): the list read and
// its JSON encoding. It asserts nothing about speed; bench/volantd-scale
// measures the whole request against a static server.
func BenchmarkListVMs200(b *testing.B) {
	ctx := context.Background()
	dir := b.TempDir()
	st, err := store.Open(ctx, filepath.Join(dir, "volant.db"), store.Options{})
	if err != nil {
		b.Fatal(err)
	}
	defer st.Close()
	pr := controllertest.NewProber()
	c, err := controller.New(controller.Config{Store: st, DataDir: dir, InputsDir: filepath.Join(dir, "run-inputs"), Runtime: controllertest.NewRuntime(),
		Network: controllertest.NewNetwork(), Prober: pr, MaxBooting: -1, HealthInterval: time.Hour, Pool: mustPool(b)})
	if err != nil {
		b.Fatal(err)
	}
	if _, err := c.Reconcile(ctx); err != nil {
		b.Fatal(err)
	}
	rctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { c.Run(rctx); close(done) }()
	defer func() { cancel(); <-done }()
	f := &fixture{dir: dir, st: st, ctx: ctx}
	f.pluginB(b, c, "web")
	for i := 0; i < 200; i++ {
		v, err := c.CreateVM(ctx, api.CreateVMRequest{Name: fmt.Sprintf("s%03d", i), Plugin: "web"})
		if err != nil {
			b.Fatal(err)
		}
		h := controllertest.Healthy(v.Name)
		pr.Set(netip.MustParseAddr(v.IP), &h)
		if err := c.Report(ctx, v.Name, h, netip.Addr{}); err != nil {
			b.Fatal(err)
		}
	}
	b.ResetTimer()
	for b.Loop() {
		vms, err := c.ListVMs(ctx, api.VMFilter{})
		if err != nil || len(vms) != 200 {
			b.Fatal(len(vms), err)
		}
		if err := json.NewEncoder(io.Discard).Encode(api.VMList{VMs: vms}); err != nil {
			b.Fatal(err)
		}
	}
}

func mustPool(b *testing.B) ipam.Pool {
	p, err := ipam.PoolConfig{Subnet: "192.168.124.0/22"}.Pool()
	if err != nil {
		b.Fatal(err)
	}
	return p
}

func (f *fixture) pluginB(b *testing.B, c *controller.Controller, name string) {
	art, sum := localArtifact(f.dir, name+".img", name)
	m := fmt.Sprintf(`{"name":%q,"version":"1","initramfs":{"url":%q,"checksum":"sha256:%s"},"workload":{"entrypoint":["/a"]}}`, name, art, sum)
	if _, err := c.InstallPlugin(f.ctx, []byte(m), false); err != nil {
		b.Fatal(err)
	}
}
