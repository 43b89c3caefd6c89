package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/volantvm/volant/lib/api"
	"github.com/volantvm/volant/lib/apierr"
	"github.com/volantvm/volant/lib/cli"
	"github.com/volantvm/volant/lib/cli/clitest"
	"github.com/volantvm/volant/lib/controller"
	"github.com/volantvm/volant/lib/fledge/fledgecmd"
	"github.com/volantvm/volant/lib/hostnet"
	"github.com/volantvm/volant/lib/launch"
	"github.com/volantvm/volant/lib/manifest"
	"github.com/volantvm/volant/lib/portmap"
	"github.com/volantvm/volant/lib/testutil/wait"
)

// fakeFledge is `fledge inspect -- IMAGE` without --resolve, the one call
// volantd makes for `volar run --pull never`: the docker:// reference's
// canonical form, registry, name and tag, with nothing fetched. Anything
// else fails as fledge fails, with its error object on stderr.
func fakeFledge(args []string, stdout, stderr io.Writer) int {
	if len(args) != 3 || args[0] != "inspect" || args[1] != "--" {
		b, _ := json.Marshal(apierr.New(apierr.Unavailable, "the fake fledge answers only `inspect -- IMAGE`, not %q", args))
		fmt.Fprintf(stderr, "%s\n", b)
		return 1
	}
	ref := strings.TrimPrefix(args[2], "docker://")
	registry, repo, _ := strings.Cut(ref, "/")
	name, tag, _ := strings.Cut(path.Base(repo), ":")
	b, err := cli.MarshalResult("fledge.inspect", fledgecmd.ImageInfo{Image: "docker://" + ref, Transport: "docker",
		Registry: registry, Name: name, Tag: tag})
	if err != nil {
		fmt.Fprintln(stderr, err)
		return 1
	}
	fmt.Fprintf(stdout, "%s\n", b)
	return 0
}

// The fake runtime numbers processes in the order of its starts, and a
// deployment starts its replicas in parallel.
var rePID = regexp.MustCompile(`(pid |"pid": |PID: +)\d+`)

// TestPublishAndRunArgs: -p on vms create, deployments create and run
// reaches volantd (the objects the API returns carry the mappings, the
// host network publishes them, a taken host port is the server's
// PORT_IN_USE, a malformed one a usage error sent nowhere), vms show and
// deployments show print them, and run's arguments after -- (one that
// looks like a flag included) replace the image's Cmd in the workload the
// VM boots.
func TestPublishAndRunArgs(t *testing.T) {
	d := startDaemonWith(t, func(c *controller.Config) { c.Images.Fledge = selfAs(t, "fledge") })
	tr := &transcript{d: d, maskIPs: true}
	for i := 100; i < 110; i++ {
		d.healthy(fmt.Sprintf("192.168.127.%d", i), "")
	}
	// A plugin built from an image: its entrypoint is the image's
	// Entrypoint and Cmd, recorded in its labels.
	const image = "docker://registry.test:5000/web:1"
	mp := d.manifest("web", "1", "")
	var m map[string]any
	data, _ := os.ReadFile(mp)
	if err := json.Unmarshal(data, &m); err != nil {
		t.Fatal(err)
	}
	m["workload"].(map[string]any)["entrypoint"] = []string{"/bin/app", "--default"}
	m["labels"] = manifest.CommandLabels([]string{"/bin/app"}, []string{"--default"})
	m["image"] = image
	data, _ = json.Marshal(m)
	if err := os.WriteFile(mp, data, 0o644); err != nil {
		t.Fatal(err)
	}
	tr.run(0, "plugins", "install", "--manifest", mp)

	// vms create -p, twice, TCP on every address and UDP on one.
	tr.run(0, "vms", "create", "web1", "--plugin", "web", "-p", "8080:80", "--publish", "127.0.0.1:5353:53/udp")
	d.waitVM("web1", api.VMRunning)
	want := []portmap.Mapping{{HostPort: 8080, GuestPort: 80, Protocol: "tcp"}, {HostIP: "127.0.0.1", HostPort: 5353, GuestPort: 53, Protocol: "udp"}}
	vm, err := d.c.VM(d.ctx, "web1")
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(vm.Ports, want) {
		t.Fatalf("web1's ports from the API: %+v, want %+v", vm.Ports, want)
	}
	if set := d.nw.Published()[hostnet.VMPorts("web1")]; !slices.Equal(set.Ports, want) || !slices.Equal(set.Backends, []string{vm.IP}) {
		t.Fatalf("published for web1: %+v, want %+v to %s", set, want, vm.IP)
	}
	tr.all("vms", "show", "web1")
	tr.run(1, "vms", "create", "web2", "--plugin", "web", "-p", "8080:8000") // PORT_IN_USE: web1's
	tr.run(2, "vms", "create", "web2", "--plugin", "web", "-p", "8080")      // USAGE
	tr.run(2, "vms", "create", "web2", "--plugin", "web", "-p", "8080:80/sctp")
	if _, err := d.c.VM(d.ctx, "web2"); !apierr.Is(err, apierr.NotFound) {
		t.Fatalf("a refused create left web2: %v", err)
	}

	// deployments create -p: one host port over the healthy replicas.
	tr.run(0, "deployments", "create", "svc", "--plugin", "web", "--replicas", "2", "-p", "9090:80")
	d.waitDeployment("svc", 2)
	dep, err := d.c.Deployment(d.ctx, "svc")
	if err != nil {
		t.Fatal(err)
	}
	wantDep := []portmap.Mapping{{HostPort: 9090, GuestPort: 80, Protocol: "tcp"}}
	if !slices.Equal(dep.Ports, wantDep) {
		t.Fatalf("svc's ports from the API: %+v", dep)
	}
	wait.Until(t, 20*time.Second, "both replicas behind svc's port", func() bool {
		dep, err := d.c.Deployment(d.ctx, "svc")
		set := d.nw.Published()[hostnet.DeploymentPorts("svc")]
		return err == nil && slices.Equal(dep.Endpoints, []string{"svc-1", "svc-2"}) && len(set.Backends) == 2 && slices.Equal(set.Ports, wantDep)
	})
	tr.run(0, "deployments", "show", "svc")
	tr.run(1, "deployments", "create", "other", "--plugin", "web", "--replicas", "1", "-p", "5353:53/udp") // PORT_IN_USE: web1's
	tr.run(2, "deployments", "create", "other", "--plugin", "web", "--replicas", "1", "-p", "0:80")

	// run -p IMAGE -- ARGS: the plugin built from the image (pull never:
	// volantd fetches nothing), the ports, and ARGS as the image's Cmd.
	args := []string{"--listen", ":80", "-p", "two words"}
	tr.run(0, append([]string{"run", "--name", "r1", "--pull", "never", "-p", "8081:80", image, "--"}, args...)...)
	if vm, err = d.c.VM(d.ctx, "r1"); err != nil {
		t.Fatal(err)
	}
	if vm.State != api.VMRunning || vm.Plugin != "web" || vm.Workload == nil || !slices.Equal(vm.Workload.Args, args) ||
		!slices.Equal(vm.Ports, []portmap.Mapping{{HostPort: 8081, GuestPort: 80, Protocol: "tcp"}}) {
		t.Fatalf("r1 from the API: %+v workload %+v", vm, vm.Workload)
	}
	var spec launch.Spec
	data, err = os.ReadFile(d.ctl.SpecPath("r1"))
	if err == nil {
		err = json.Unmarshal(data, &spec)
	}
	if err != nil {
		t.Fatal(err)
	}
	booted, err := manifest.Parse(spec.Manifest)
	if wantArgv := append([]string{"/bin/app"}, args...); err != nil || !slices.Equal(booted.Workload.Entrypoint, wantArgv) {
		t.Fatalf("r1 boots the workload %+v (%v), want %q", booted, err, wantArgv)
	}
	tr.run(0, "-o", "json", "vms", "show", "r1")
	tr.run(2, "run", "-p", "80", image) // USAGE, before anything is asked of volantd

	tr.run(0, "deployments", "delete", "svc")
	for _, n := range []string{"web1", "r1"} {
		tr.run(0, "-q", "vms", "delete", n)
	}
	wait.Until(t, 20*time.Second, "nothing published once every owner is deleted", func() bool { return len(d.nw.Published()) == 0 })
	clitest.Golden(t, "session-ports", rePID.ReplaceAllString(tr.b.String(), "${1}$$PID"))
}
