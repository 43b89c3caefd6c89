package kubelet

import (
	"bytes"
	"context"
	"errors"
	"io"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	vkapi "github.com/virtual-kubelet/virtual-kubelet/node/api"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/tools/record"
	utilexec "k8s.io/utils/exec"

	"github.com/volantvm/volant/lib/agentapi"
	"github.com/volantvm/volant/lib/api"
	"github.com/volantvm/volant/lib/testutil/wait"
)

// recorder keeps what the provider notified.
type recorder struct {
	mu   sync.Mutex
	pods []*corev1.Pod
}

func (r *recorder) add(p *corev1.Pod) {
	r.mu.Lock()
	r.pods = append(r.pods, p)
	r.mu.Unlock()
}

func (r *recorder) n() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.pods)
}

func (r *recorder) last() *corev1.Pod {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.pods) == 0 {
		return nil
	}
	return r.pods[len(r.pods)-1]
}

func newTestProvider(t *testing.T, f *fakeVolant) (*Provider, *recorder) {
	t.Helper()
	p := NewProvider(ProviderConfig{Node: "vol1", NodeIP: "10.0.0.1", Volant: f, Interval: time.Hour})
	r := &recorder{}
	p.NotifyPods(context.Background(), r.add)
	return p, r
}

// eventually polls cond (Sync first) until it holds.
func eventually(t *testing.T, p *Provider, what string, cond func() bool) {
	t.Helper()
	wait.Until(t, 20*time.Second, what, func() bool {
		if err := p.Sync(context.Background()); err != nil {
			t.Fatal(err)
		}
		return cond()
	})
}

func phaseOf(p *corev1.Pod) string {
	if p == nil {
		return "<none>"
	}
	s := string(p.Status.Phase)
	if cs := p.Status.ContainerStatuses; len(cs) == 1 {
		switch st := cs[0].State; {
		case st.Waiting != nil:
			s += "/" + st.Waiting.Reason
		case st.Running != nil:
			s += "/running"
		case st.Terminated != nil:
			s += "/" + st.Terminated.Reason + "(" + strconv.Itoa(int(st.Terminated.ExitCode)) + ")"
		}
		if cs[0].Ready {
			s += "/ready"
		}
	}
	return s
}

// TestPodLifecycle: a pod is built, its VM created with the pod's labels,
// its status follows the VM (sent once per change, never when unchanged)
// and its delete removes the VM and reports the container terminated.
func TestPodLifecycle(t *testing.T) {
	ctx := context.Background()
	f := newFake()
	p, r := newTestProvider(t, f)
	pod := testPod("web-1")
	pod.Spec.Containers[0].ImagePullPolicy = corev1.PullAlways
	if err := p.CreatePod(ctx, pod); err != nil {
		t.Fatal(err)
	}
	vm := VMName(pod)
	eventually(t, p, "the VM", func() bool { _, c, _, _ := f.counts(); return c == 1 })
	if f.installs[0].Image != "oci:/images:web" || f.installs[0].Pull != "always" {
		t.Fatalf("install %+v", f.installs[0])
	}
	if c := f.creates[0]; c.Name != vm || c.Labels[LabelPodUID] != string(pod.UID) || c.Plugin != "oci--images-web" {
		t.Fatalf("create %+v", c)
	}
	eventually(t, p, "Pending/ContainerCreating", func() bool { return phaseOf(r.last()) == "Pending/ContainerCreating" })
	got := r.last()
	if got.Status.PodIP != "10.244.1.100" || got.Status.HostIP != "10.0.0.1" || got.Status.ContainerStatuses[0].ContainerID != "volant://"+vm {
		t.Fatalf("status %+v", got.Status)
	}

	f.run(vm, agentapi.WorkloadRunning, 0, nil)
	eventually(t, p, "Running/ready", func() bool { return phaseOf(r.last()) == "Running/running/ready" })
	for _, c := range r.last().Status.Conditions {
		if (c.Type == corev1.PodReady || c.Type == corev1.ContainersReady) && c.Status != corev1.ConditionTrue {
			t.Fatalf("condition %+v", c)
		}
	}
	n := r.n()
	for range 3 {
		p.Sync(ctx)
	}
	if r.n() != n {
		t.Fatalf("an unchanged pod was sent again: %d notifications, then %d", n, r.n())
	}

	// The workload restarts: restarts count, the last exit kept.
	code := 2
	f.run(vm, agentapi.WorkloadRestarting, 1, &code)
	eventually(t, p, "CrashLoopBackOff", func() bool { return phaseOf(r.last()) == "Running/CrashLoopBackOff" })
	cs := r.last().Status.ContainerStatuses[0]
	if cs.RestartCount != 1 || cs.LastTerminationState.Terminated == nil || cs.LastTerminationState.Terminated.ExitCode != 2 {
		t.Fatalf("container status %+v", cs)
	}

	got, err := p.GetPod(ctx, "default", "web-1")
	if err != nil || got.UID != pod.UID {
		t.Fatalf("GetPod: %v %v", got, err)
	}
	if err := p.DeletePod(ctx, pod); err != nil {
		t.Fatal(err)
	}
	if _, _, d, _ := f.counts(); d != 1 {
		t.Fatalf("%d deletes", d)
	}
	if phaseOf(r.last()) != "Succeeded/VMDeleted(0)" {
		t.Fatalf("after delete: %s", phaseOf(r.last()))
	}
	if got, _ := p.GetPod(ctx, "default", "web-1"); got != nil {
		t.Fatal("the pod is still known")
	}
	// Deleting again is fine.
	if err := p.DeletePod(ctx, pod); err != nil {
		t.Fatal(err)
	}
}

// TestAdoptAfterRestart: a new provider (volant-kubelet restarted) lists
// the node's VMs as pods before CreatePod, then adopts the VM carrying a
// pod's UID: no build, no second VM, the same address.
func TestAdoptAfterRestart(t *testing.T) {
	ctx := context.Background()
	f := newFake()
	p1, _ := newTestProvider(t, f)
	pod := testPod("web-1")
	p1.CreatePod(ctx, pod)
	eventually(t, p1, "the VM", func() bool { _, c, _, _ := f.counts(); return c == 1 })
	f.run(VMName(pod), agentapi.WorkloadRunning, 0, nil)

	p2, r2 := newTestProvider(t, f)
	pods, err := p2.GetPods(ctx)
	if err != nil || len(pods) != 1 || pods[0].UID != pod.UID || pods[0].Name != "web-1" || pods[0].Namespace != "default" {
		t.Fatalf("GetPods after a restart: %v %v", pods, err)
	}
	if got, _ := p2.GetPod(ctx, "default", "web-1"); got != nil {
		t.Fatal("GetPod knows a pod CreatePod has not given (virtual-kubelet would not call CreatePod)")
	}
	if err := p2.CreatePod(ctx, pod); err != nil {
		t.Fatal(err)
	}
	eventually(t, p2, "Running", func() bool { return phaseOf(r2.last()) == "Running/running/ready" })
	if i, c, _, _ := f.counts(); i != 1 || c != 1 {
		t.Fatalf("after adoption: %d builds, %d creates", i, c)
	}
	if ip := r2.last().Status.PodIP; ip != "10.244.1.100" {
		t.Fatalf("adopted pod IP %s", ip)
	}
	if pods, _ := p2.GetPods(ctx); len(pods) != 1 {
		t.Fatalf("GetPods lists %d pods", len(pods))
	}
}

// TestRefusedAndFailedPods: a pod the provider cannot run fails with the
// reason and makes nothing; a failing build is retried and reported; an
// exited workload ends the pod by its exit code; a VM deleted behind the
// provider's back fails the pod.
func TestRefusedAndFailedPods(t *testing.T) {
	ctx := context.Background()
	f := newFake()
	p, r := newTestProvider(t, f)
	two := testPod("two")
	two.Spec.Containers = append(two.Spec.Containers, corev1.Container{Name: "side", Image: "x"})
	p.CreatePod(ctx, two)
	eventually(t, p, "the refusal", func() bool { return r.last() != nil })
	if st := r.last().Status; st.Phase != corev1.PodFailed || st.Reason != ReasonUnsupported || !strings.Contains(st.Message, "one app container") {
		t.Fatalf("refused pod status %+v", st)
	}
	if i, c, _, _ := f.counts(); i+c != 0 {
		t.Fatal("a refused pod built or created something")
	}

	f.buildErr = errors.New("registry unreachable")
	bad := testPod("bad")
	bad.UID = "11111111-0000-0000-0000-000000000000"
	p.CreatePod(ctx, bad)
	eventually(t, p, "the build error", func() bool {
		return r.last().Name == "bad" && phaseOf(r.last()) == "Pending/"+ReasonStartError
	})
	if msg := r.last().Status.ContainerStatuses[0].State.Waiting.Message; !strings.Contains(msg, "registry unreachable") {
		t.Fatalf("message %q", msg)
	}
	p.DeletePod(ctx, bad)

	f.buildErr = nil
	for _, tc := range []struct {
		policy corev1.RestartPolicy
		code   int
		want   string
	}{
		{corev1.RestartPolicyNever, 0, "Succeeded/Completed(0)"},
		{corev1.RestartPolicyNever, 3, "Failed/Error(3)"},
	} {
		pod := testPod("job-" + strconv.Itoa(tc.code))
		pod.UID = types.UID("2222222" + strconv.Itoa(tc.code) + "-0000-0000-0000-000000000000")
		pod.Spec.RestartPolicy = tc.policy
		p.CreatePod(ctx, pod)
		eventually(t, p, "the VM of "+pod.Name, func() bool { _, err := p.vmOf("default", pod.Name, ""); return err == nil })
		code := tc.code
		f.run(VMName(pod), agentapi.WorkloadExited, 0, &code)
		eventually(t, p, tc.want, func() bool { return r.last().Name == pod.Name && phaseOf(r.last()) == tc.want })
	}

	gone := testPod("gone")
	gone.UID = "33333333-0000-0000-0000-000000000000"
	p.CreatePod(ctx, gone)
	eventually(t, p, "the VM of gone", func() bool { return phaseOf(r.last()) == "Pending/ContainerCreating" && r.last().Name == "gone" })
	f.DeleteVM(ctx, VMName(gone))
	eventually(t, p, "VMGone", func() bool { return phaseOf(r.last()) == "Failed/VMGone(137)" })

	crash := testPod("crash")
	crash.UID = "44444444-0000-0000-0000-000000000000"
	p.CreatePod(ctx, crash)
	eventually(t, p, "the VM of crash", func() bool { return r.last().Name == "crash" && r.last().Status.PodIP != "" })
	f.run(VMName(crash), agentapi.WorkloadRunning, 0, nil)
	eventually(t, p, "crash running", func() bool { return r.last().Name == "crash" && phaseOf(r.last()) == "Running/running/ready" })
	// A crashed VM is started again (restartPolicy Always), once per
	// CrashRestartDelay, and counts as a restart.
	f.set(VMName(crash), api.VMCrashed, "qemu exited")
	eventually(t, p, "the crashed VM started again", func() bool { f.mu.Lock(); defer f.mu.Unlock(); return len(f.starts) == 1 })
	eventually(t, p, "a restart counted", func() bool {
		return r.last().Name == "crash" && r.last().Status.ContainerStatuses[0].RestartCount == 1 && r.last().Status.Phase == corev1.PodRunning
	})
	f.set(VMName(crash), api.VMCrashed, "qemu exited again")
	p.Sync(ctx)
	if f.mu.Lock(); len(f.starts) != 1 {
		t.Fatalf("started again within CrashRestartDelay: %v", f.starts)
	}
	f.mu.Unlock()
	f.set(VMName(crash), api.VMFailed, "qemu: could not start")
	eventually(t, p, "VMFailed", func() bool { return phaseOf(r.last()) == "Failed/VMFailed(1)" })

	never := testPod("never")
	never.UID = "55555555-0000-0000-0000-000000000000"
	never.Spec.RestartPolicy = corev1.RestartPolicyNever
	p.CreatePod(ctx, never)
	eventually(t, p, "the VM of never", func() bool { return r.last().Name == "never" && r.last().Status.PodIP != "" })
	f.set(VMName(never), api.VMCrashed, "qemu exited")
	eventually(t, p, "Failed/VMCrashed", func() bool { return r.last().Name == "never" && phaseOf(r.last()) == "Failed/VMCrashed(137)" })
	if f.mu.Lock(); len(f.starts) != 1 {
		t.Fatalf("a crashed VM of restartPolicy Never was started: %v", f.starts)
	}
	f.mu.Unlock()
}

// TestExecProbe: an exec readiness probe runs its command in the guest
// (the guest-access exec), a non-zero status keeps the pod unready and
// records an Unhealthy event on it, and status 0 makes it ready; a failing
// exec liveness probe restarts the VM, with its own Unhealthy events.
func TestExecProbe(t *testing.T) {
	ctx := context.Background()
	f := newFake()
	f.execCode = 1
	rec := record.NewFakeRecorder(1000)
	p := NewProvider(ProviderConfig{Node: "vol1", NodeIP: "10.0.0.1", Volant: f, Interval: time.Hour, Events: rec})
	r := &recorder{}
	p.NotifyPods(ctx, r.add)
	pod := testPod("execprobed")
	c := &pod.Spec.Containers[0]
	c.ReadinessProbe = &corev1.Probe{ProbeHandler: corev1.ProbeHandler{Exec: &corev1.ExecAction{Command: []string{"cat", "/tmp/ready"}}},
		PeriodSeconds: 1, FailureThreshold: 1}
	if err := p.CreatePod(ctx, pod); err != nil {
		t.Fatal(err)
	}
	defer p.DeletePod(ctx, pod)
	eventually(t, p, "the VM", func() bool { _, err := p.vmOf("default", "execprobed", ""); return err == nil })
	vm := VMName(pod)
	f.run(vm, agentapi.WorkloadRunning, 0, nil)
	unhealthy := func(kind string) {
		t.Helper()
		waitEvent(t, p, rec, "Warning Unhealthy "+kind+" probe failed: exit status 1", "")
	}
	unhealthy("Readiness")
	eventually(t, p, "Running, not ready", func() bool { return phaseOf(r.last()) == "Running/running" })
	f.mu.Lock()
	if len(f.execs) == 0 || strings.Join(f.execs[0].Argv, " ") != "cat /tmp/ready" || f.execs[0].TTY || f.execs[0].Stdin {
		t.Errorf("the probe's exec requests: %+v", f.execs)
	}
	f.execCode = 0
	f.mu.Unlock()
	eventually(t, p, "ready", func() bool { return phaseOf(r.last()) == "Running/running/ready" })

	// Liveness by exec: status 1 twice restarts the VM.
	live := testPod("execlive")
	live.UID = "execlive-uid"
	live.Spec.Containers[0].LivenessProbe = &corev1.Probe{ProbeHandler: corev1.ProbeHandler{Exec: &corev1.ExecAction{Command: []string{"true"}}},
		PeriodSeconds: 1, FailureThreshold: 2}
	if err := p.CreatePod(ctx, live); err != nil {
		t.Fatal(err)
	}
	defer p.DeletePod(ctx, live)
	eventually(t, p, "the second VM", func() bool { _, err := p.vmOf("default", "execlive", ""); return err == nil })
	f.run(VMName(live), agentapi.WorkloadRunning, 0, nil)
	// Two passing probes: no restart.
	eventually(t, p, "two passing liveness probes", func() bool {
		f.mu.Lock()
		defer f.mu.Unlock()
		n := 0
		for _, e := range f.execs {
			if strings.Join(e.Argv, " ") == "true" {
				n++
			}
		}
		return n >= 2
	})
	if _, _, _, n := f.counts(); n != 0 {
		t.Fatalf("%d restarts while the exec liveness probe passes", n)
	}
	f.mu.Lock()
	f.execCode = 1
	f.mu.Unlock()
	unhealthy("Liveness")
	eventually(t, p, "a liveness restart", func() bool { _, _, _, n := f.counts(); return n >= 1 })
	f.mu.Lock()
	restarted := slices.Contains(f.restarts, VMName(live)) && !slices.Contains(f.restarts, vm)
	f.mu.Unlock()
	if !restarted {
		t.Errorf("restarts %v, want %s only (the readiness probe never restarts)", f.restarts, VMName(live))
	}
}

// fakeAttach is virtual-kubelet's AttachIO over buffers.
type fakeAttach struct {
	in          io.Reader
	out, errOut *closeBuf
	tty         bool
}

type closeBuf struct {
	bytes.Buffer
	closed bool
}

func (c *closeBuf) Close() error { c.closed = true; return nil }

func (a fakeAttach) Stdin() io.Reader              { return a.in }
func (a fakeAttach) Stdout() io.WriteCloser        { return a.out }
func (a fakeAttach) Stderr() io.WriteCloser        { return a.errOut }
func (a fakeAttach) TTY() bool                     { return a.tty }
func (a fakeAttach) Resize() <-chan vkapi.TermSize { return nil }

// TestLogsAndExec: kubectl logs reads the workload's stream with the
// options given; kubectl exec runs in the guest and passes the exit status
// on as the kubelet does (an ExitError).
func TestLogsAndExec(t *testing.T) {
	ctx := context.Background()
	f := newFake()
	f.logs = "line 1\nline 2\n"
	p, _ := newTestProvider(t, f)
	pod := testPod("web")
	p.CreatePod(ctx, pod)
	if _, err := p.GetContainerLogs(ctx, "default", "other", "web", vkapi.ContainerLogOpts{}); err == nil {
		t.Fatal("logs of a pod not on the node")
	}
	eventually(t, p, "the VM", func() bool { _, err := p.vmOf("default", "web", ""); return err == nil })
	rc, err := p.GetContainerLogs(ctx, "default", "web", "web", vkapi.ContainerLogOpts{Follow: true, Tail: 5, Timestamps: true, LimitBytes: 6})
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(rc)
	rc.Close()
	if string(b) != "line 1" {
		t.Fatalf("logs %q", b)
	}
	if o := f.logOpts[0]; !o.Follow || o.Tail != 5 || !o.Timestamps || o.Stream != api.LogWorkload {
		t.Fatalf("log options %+v", o)
	}
	if _, err := p.GetContainerLogs(ctx, "default", "web", "nope", vkapi.ContainerLogOpts{}); err == nil {
		t.Fatal("logs of a container the pod does not have")
	}

	f.execOut, f.execCode = "web-host\n", 3
	a := fakeAttach{in: strings.NewReader("stdin!"), out: &closeBuf{}, errOut: &closeBuf{}}
	err = p.RunInContainer(ctx, "default", "web", "web", []string{"cat", "/etc/hostname"}, a)
	var ee utilexec.ExitError
	if !errors.As(err, &ee) || ee.ExitStatus() != 3 || !ee.Exited() {
		t.Fatalf("exec error %v", err)
	}
	if a.out.String() != "web-host\nstdin!" || !a.out.closed {
		t.Fatalf("exec stdout %q closed %v", a.out.String(), a.out.closed)
	}
	if r := f.execs[0]; strings.Join(r.Argv, " ") != "cat /etc/hostname" || !r.Stdin || r.TTY {
		t.Fatalf("exec request %+v", r)
	}
	f.execCode = 0
	if err := p.RunInContainer(ctx, "default", "web", "", []string{"true"}, fakeAttach{out: &closeBuf{}, errOut: &closeBuf{}, tty: true}); err != nil {
		t.Fatal(err)
	}
	if r := f.execs[1]; r.Stdin || !r.TTY {
		t.Fatalf("tty exec request %+v", r)
	}
}

// TestNoVMBeforeTheNetwork: a pod's image is built at once, but its VM is
// created only once volantd's subnet is the node's podCIDR.
func TestNoVMBeforeTheNetwork(t *testing.T) {
	f := newFake()
	ready := make(chan struct{})
	p := NewProvider(ProviderConfig{Node: "vol1", NodeIP: "10.0.0.1", Volant: f, Interval: time.Hour, NetworkReady: ready})
	p.NotifyPods(context.Background(), (&recorder{}).add)
	if err := p.CreatePod(context.Background(), testPod("web-1")); err != nil {
		t.Fatal(err)
	}
	eventually(t, p, "the image build", func() bool { i, _, _, _ := f.counts(); return i == 1 })
	time.Sleep(200 * time.Millisecond)
	if _, c, _, _ := f.counts(); c != 0 {
		t.Fatalf("%d VMs created before the network was ready", c)
	}
	close(ready)
	eventually(t, p, "the VM", func() bool { _, c, _, _ := f.counts(); return c == 1 })
}

// TestPodEvents: the image build, the VM's create, a failed build and a
// failing readiness probe are events on the pod.
func TestPodEvents(t *testing.T) {
	f := newFake()
	rec := record.NewFakeRecorder(100)
	p := NewProvider(ProviderConfig{Node: "vol1", NodeIP: "10.0.0.1", Volant: f, Interval: time.Hour, Events: rec})
	p.NotifyPods(context.Background(), (&recorder{}).add)
	if err := p.CreatePod(context.Background(), testPod("web-1")); err != nil {
		t.Fatal(err)
	}
	eventually(t, p, "the VM", func() bool { _, c, _, _ := f.counts(); return c == 1 })
	want := []string{"Normal Building building a plugin from image oci:/images:web",
		"Normal Built plugin oci--images-web built from image oci:/images:web",
		"Normal Created VM " + VMName(testPod("web-1")) + " created, address 10.244.1.100; booting"}
	for _, w := range want {
		select {
		case got := <-rec.Events:
			if got != w {
				t.Fatalf("event %q, want %q", got, w)
			}
		case <-time.After(time.Minute):
			t.Fatalf("no event %q", w)
		}
	}
	// The workload runs: Started, once; again after a restart in the guest.
	vm := VMName(testPod("web-1"))
	nextEvent := func() string {
		t.Helper()
		if err := p.Sync(context.Background()); err != nil {
			t.Fatal(err)
		}
		select {
		case got := <-rec.Events:
			return got
		default:
			return ""
		}
	}
	startedEv := "Normal Started the workload of VM " + vm + " is running"
	f.run(vm, agentapi.WorkloadRunning, 0, nil)
	if got := nextEvent(); got != startedEv {
		t.Fatalf("event %q, want %q", got, startedEv)
	}
	if got := nextEvent(); got != "" {
		t.Fatalf("a second event while the workload runs on: %q", got)
	}
	f.run(vm, agentapi.WorkloadRestarting, 1, nil)
	if got := nextEvent(); got != "" {
		t.Fatalf("event %q while the workload restarts", got)
	}
	f.run(vm, agentapi.WorkloadRunning, 1, nil)
	if got := nextEvent(); got != startedEv {
		t.Fatalf("after a restart: event %q, want %q", got, startedEv)
	}
	f.mu.Lock()
	f.buildErr = errors.New("no such image")
	f.mu.Unlock()
	pod2 := testPod("web-2")
	pod2.UID = "another-uid"
	if err := p.CreatePod(context.Background(), pod2); err != nil {
		t.Fatal(err)
	}
	deadline := time.After(time.Minute)
	for {
		select {
		case got := <-rec.Events:
			if strings.HasPrefix(got, "Warning BuildFailed building a plugin from image oci:/images:web: no such image") {
				return
			}
		case <-deadline:
			t.Fatal("no BuildFailed event")
		}
	}
}

// TestAdoptedNoStarted: a restarted provider adopting a VM whose workload
// runs records no second Started event; one that starts later does.
func TestAdoptedNoStarted(t *testing.T) {
	f := newFake()
	pod := testPod("web-1")
	if _, err := f.CreateVM(context.Background(), api.CreateVMRequest{Name: VMName(pod),
		Labels: map[string]string{LabelPodUID: string(pod.UID), LabelNode: "vol1"}}); err != nil {
		t.Fatal(err)
	}
	f.run(VMName(pod), agentapi.WorkloadRunning, 0, nil)
	rec := record.NewFakeRecorder(100)
	p := NewProvider(ProviderConfig{Node: "vol1", NodeIP: "10.0.0.1", Volant: f, Interval: time.Hour, Events: rec})
	p.NotifyPods(context.Background(), (&recorder{}).add)
	if err := p.CreatePod(context.Background(), pod); err != nil {
		t.Fatal(err)
	}
	for range 2 {
		if err := p.Sync(context.Background()); err != nil {
			t.Fatal(err)
		}
	}
	select {
	case ev := <-rec.Events:
		t.Fatalf("event %q for an adopted running VM", ev)
	default:
	}
	f.run(VMName(pod), agentapi.WorkloadRestarting, 1, nil)
	_ = p.Sync(context.Background())
	f.run(VMName(pod), agentapi.WorkloadRunning, 1, nil)
	_ = p.Sync(context.Background())
	select {
	case ev := <-rec.Events:
		if !strings.HasPrefix(ev, "Normal Started ") {
			t.Fatalf("event %q", ev)
		}
	default:
		t.Fatal("no Started event after the adopted VM's workload restarted")
	}
}
