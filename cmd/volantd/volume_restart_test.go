package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/volantvm/volant/lib/api"
	"github.com/volantvm/volant/lib/client"
	"github.com/volantvm/volant/lib/testutil/kvmtest"
)

// TestKillDuringVolumeAttachesThenRestart: volantd is killed with SIGKILL
// while 12 VMs are being created, each with a volume of its own
// (read-write) and one shared volume (read-only), and while more volumes
// are being made. After a restart every VM is whole: its volumes are
// recorded and claimed, its hypervisor has the volume disks (by serial),
// no volume is lost or half-made, and none is left in an interrupted state.
func TestKillDuringVolumeAttachesThenRestart(t *testing.T) {
	kvmtest.Require(t)
	h := newFakeHost(t)
	d1 := h.start(t)
	ctx := context.Background()
	if _, err := d1.c.InstallPlugin(ctx, h.manifest, client.InstallOptions{}); err != nil {
		t.Fatal(err)
	}
	const n = 12
	for i := 0; i < n; i++ {
		if _, err := d1.c.CreateVolume(ctx, api.CreateVolumeRequest{Name: fmt.Sprintf("own%02d", i), Size: "16MiB"}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := d1.c.CreateVolume(ctx, api.CreateVolumeRequest{Name: "shared", Size: "16MiB"}); err != nil {
		t.Fatal(err)
	}
	mounts := func(i int) []api.VolumeMount {
		return []api.VolumeMount{{Volume: fmt.Sprintf("own%02d", i), Path: "/data"}, {Volume: "shared", Path: "/shared", ReadOnly: true}}
	}

	var wg sync.WaitGroup
	var mu sync.Mutex
	errs := make([]error, n)
	extra := 0 // volumes created while the creates ran
	stop := make(chan struct{})
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, err := d1.c.CreateVM(ctx, api.CreateVMRequest{Name: fmt.Sprintf("vm%02d", i), Plugin: "app", Volumes: mounts(i)})
			mu.Lock()
			errs[i] = err
			mu.Unlock()
		}()
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		for j := 0; ; j++ {
			select {
			case <-stop:
				return
			default:
			}
			if _, err := d1.c.CreateVolume(ctx, api.CreateVolumeRequest{Name: fmt.Sprintf("more%02d", j), Size: "16MiB"}); err != nil {
				return
			}
			mu.Lock()
			extra++
			mu.Unlock()
		}
	}()
	deadline := time.Now().Add(60 * time.Second)
	for {
		vms, err := d1.c.ListVMs(ctx, api.VMFilter{})
		running := 0
		for _, v := range vms {
			if v.PID != 0 {
				running++
			}
		}
		if err == nil && running >= 3 {
			t.Logf("killing volantd with %d VMs recorded, %d with a hypervisor", len(vms), running)
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no VM came up in 60 s: %+v %v %v", vms, err, errs)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if err := d1.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	close(stop)
	wg.Wait()
	<-d1.done
	failed := 0
	for _, err := range errs {
		if err != nil {
			failed++
		}
	}
	t.Logf("%d of %d creates were cut off by the kill; %d more volumes were made before it", failed, n, extra)
	if failed == 0 {
		t.Fatal("every create finished before the kill; the test proves nothing")
	}

	d2 := h.start(t)
	vms, err := d2.c.ListVMs(ctx, api.VMFilter{})
	if err != nil {
		t.Fatal(err)
	}
	if len(vms) < n-failed {
		t.Fatalf("%d VMs, but %d creates succeeded", len(vms), n-failed)
	}
	for _, v := range vms {
		var i int
		fmt.Sscanf(v.Name, "vm%02d", &i)
		want := mounts(i)
		if v.State != api.VMStarting && v.State != api.VMRunning || v.Step != "" {
			t.Errorf("%s is %s, step %q after the restart (%s)", v.Name, v.State, v.Step, v.Error)
		}
		if len(v.Volumes) != 2 || v.Volumes[0] != want[0] || v.Volumes[1] != want[1] {
			t.Errorf("%s has volumes %+v, want %+v", v.Name, v.Volumes, want)
		}
		// Its hypervisor has both volume disks, found by their serials.
		cmdline, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", v.PID))
		for j, m := range want {
			img := filepath.Join(h.dir, "data", "volumes", m.Volume+".img")
			if !strings.Contains(string(cmdline), "path="+img) || !strings.Contains(string(cmdline), fmt.Sprintf("serial=volant-vol%d", j)) {
				t.Errorf("%s's hypervisor (pid %d) lacks volume %s: %q", v.Name, v.PID, m.Volume, cmdline)
			}
		}
	}
	vols, err := d2.c.ListVolumes(ctx)
	if err != nil {
		t.Fatal(err)
	}
	byName := map[string]api.Volume{}
	for _, v := range vols {
		byName[v.Name] = v
		if v.State != api.VolumeReady {
			t.Errorf("volume %s is %s after the restart", v.Name, v.State)
		}
		if _, err := os.Stat(v.Path); err != nil {
			t.Errorf("volume %s has no image: %v", v.Name, err)
		}
	}
	for i := 0; i < n; i++ {
		name := fmt.Sprintf("own%02d", i)
		v, ok := byName[name]
		if !ok {
			t.Errorf("volume %s was lost", name)
			continue
		}
		holders := 0
		for _, a := range v.Attachments {
			if a.Holding {
				holders++
			}
		}
		if len(v.Attachments) > 1 || holders != len(v.Attachments) {
			t.Errorf("volume %s: attachments %+v", name, v.Attachments)
		}
	}
	if len(byName) < n+1+extra {
		t.Errorf("%d volumes after the restart; %d were made", len(byName), n+1+extra)
	}
	ents, _ := os.ReadDir(filepath.Join(h.dir, "data", "volumes"))
	for _, e := range ents {
		if strings.Contains(e.Name(), ".volant-tmp-") {
			t.Errorf("a half-made image is left: %s", e.Name())
		}
	}
	// The one-writer rule holds across the restart: a VM that would write
	// to a volume held by a live VM is refused.
	if len(vms) > 0 {
		_, err := d2.c.CreateVM(ctx, api.CreateVMRequest{Name: "intruder", Plugin: "app", Volumes: []api.VolumeMount{{Volume: vms[0].Volumes[0].Volume, Path: "/x"}}})
		if err == nil || !strings.Contains(err.Error(), "VOLUME_IN_USE") && !strings.Contains(err.Error(), "held by") {
			t.Errorf("a second writer after the restart: %v", err)
		}
	}
	for _, v := range vms {
		if _, err := d2.c.DeleteVM(ctx, v.Name); err != nil {
			t.Fatalf("delete %s: %v", v.Name, err)
		}
	}
	for _, v := range vols {
		if _, err := d2.c.DeleteVolume(ctx, v.Name); err != nil {
			t.Errorf("delete volume %s: %v", v.Name, err)
		}
	}
}
