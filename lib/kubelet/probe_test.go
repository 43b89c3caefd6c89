package kubelet

import (
	"context"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/tools/record"

	"github.com/volantvm/volant/lib/agentapi"
)

// probeTarget is what a probe of one kind checks, made healthy or not by
// the test.
type probeTarget struct {
	handler corev1.ProbeHandler
	ports   []corev1.ContainerPort
	healthy func(bool)
	// hits is how many probes reached the target.
	hits func() int
	// fails is in the message of a failed probe.
	fails string
}

// newProbeTarget is an HTTP server (a named port), a TCP listener (a
// port number) on 127.0.0.1, or the fake guest's exec status.
func newProbeTarget(t *testing.T, kind string, f *fakeVolant) probeTarget {
	t.Helper()
	var hits atomic.Int64
	switch kind {
	case "httpGet":
		var sick atomic.Bool
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.URL.Path != "/healthz" || r.Header.Get("X-Probe") != "yes" {
				http.Error(w, "not the probe's request", http.StatusBadRequest)
				return
			}
			hits.Add(1)
			if sick.Load() {
				http.Error(w, "sick", http.StatusInternalServerError)
			}
		}))
		t.Cleanup(srv.Close)
		port := srv.Listener.Addr().(*net.TCPAddr).Port
		return probeTarget{
			handler: corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Path: "/healthz", Port: intstr.FromString("http"),
				HTTPHeaders: []corev1.HTTPHeader{{Name: "X-Probe", Value: "yes"}}}},
			ports:   []corev1.ContainerPort{{Name: "http", ContainerPort: int32(port)}},
			healthy: func(ok bool) { sick.Store(!ok) },
			hits:    func() int { return int(hits.Load()) },
			fails:   "HTTP 500",
		}
	case "tcpSocket":
		// Healthy: a listener accepts; sick: it is closed (connection
		// refused), and opened again on the same port when healthy.
		var mu sync.Mutex
		var l net.Listener
		listen := func(addr string) {
			var err error
			if l, err = net.Listen("tcp", addr); err != nil {
				t.Fatal(err)
			}
			go func(l net.Listener) {
				for {
					c, err := l.Accept()
					if err != nil {
						return
					}
					hits.Add(1)
					c.Close()
				}
			}(l)
		}
		listen("127.0.0.1:0")
		addr := l.Addr().String()
		port := l.Addr().(*net.TCPAddr).Port
		t.Cleanup(func() {
			mu.Lock()
			defer mu.Unlock()
			if l != nil {
				l.Close()
			}
		})
		return probeTarget{
			handler: corev1.ProbeHandler{TCPSocket: &corev1.TCPSocketAction{Port: intstr.FromInt32(int32(port))}},
			healthy: func(ok bool) {
				mu.Lock()
				defer mu.Unlock()
				switch {
				case ok && l == nil:
					listen(addr)
				case !ok && l != nil:
					l.Close()
					l = nil
				}
			},
			hits:  func() int { return int(hits.Load()) },
			fails: "connection refused",
		}
	case "exec":
		argv := []string{"/bin/check", "--quick"}
		return probeTarget{
			handler: corev1.ProbeHandler{Exec: &corev1.ExecAction{Command: argv}},
			healthy: func(ok bool) {
				f.mu.Lock()
				defer f.mu.Unlock()
				f.execCode = 0
				if !ok {
					f.execCode = 1
				}
			},
			hits: func() int {
				f.mu.Lock()
				defer f.mu.Unlock()
				n := 0
				for _, e := range f.execs {
					if strings.Join(e.Argv, " ") == strings.Join(argv, " ") {
						n++
					}
				}
				return n
			},
			fails: "exit status 1",
		}
	}
	t.Fatalf("no probe kind %s", kind)
	return probeTarget{}
}

// waitEvent syncs the provider (the probes see the VM as the last Sync
// left it) until it records an event that starts with prefix and holds
// part.
func waitEvent(t *testing.T, p *Provider, rec *record.FakeRecorder, prefix, part string) {
	t.Helper()
	deadline := time.After(20 * time.Second)
	var seen []string
	for {
		if err := p.Sync(context.Background()); err != nil {
			t.Fatal(err)
		}
		select {
		case got := <-rec.Events:
			if strings.HasPrefix(got, prefix) && strings.Contains(got, part) {
				return
			}
			seen = append(seen, got)
		case <-time.After(50 * time.Millisecond):
		case <-deadline:
			t.Fatalf("no event %q…%q; events: %q", prefix, part, seen)
		}
	}
}

// TestProbeKinds: each kind of probe (httpGet, against the pod IP and a
// named port, with its headers; tcpSocket; exec in the guest), as the
// kubelet runs it. Readiness: passing, the pod is Ready; failing, it is
// not, an Unhealthy event says why, and nothing restarts; passing again,
// Ready again. Liveness: passing, nothing restarts and no event; failing
// failureThreshold times in a row, an Unhealthy event, the VM restarted
// once and the restart counted in the container's status.
func TestProbeKinds(t *testing.T) {
	for _, kind := range []string{"httpGet", "tcpSocket", "exec"} {
		t.Run(kind+"/readiness", func(t *testing.T) {
			t.Parallel()
			p, f, rec, r, pod, target := probedPod(t, kind, false)
			vm := VMName(pod)
			eventually(t, p, "Ready", func() bool { return phaseOf(r.last()) == "Running/running/ready" })

			target.healthy(false)
			waitEvent(t, p, rec, "Warning Unhealthy Readiness probe failed: ", target.fails)
			eventually(t, p, "not Ready", func() bool { return phaseOf(r.last()) == "Running/running" })
			target.healthy(true)
			eventually(t, p, "Ready again", func() bool { return phaseOf(r.last()) == "Running/running/ready" })
			if _, _, _, n := f.counts(); n != 0 || r.last().Status.ContainerStatuses[0].RestartCount != 0 {
				t.Fatalf("a failing readiness probe restarted VM %s: %v", vm, f.restarts)
			}
		})
		t.Run(kind+"/liveness", func(t *testing.T) {
			t.Parallel()
			p, f, rec, r, pod, target := probedPod(t, kind, true)
			vm := VMName(pod)
			eventually(t, p, "three passing probes", func() bool { return target.hits() >= 3 })
			if _, _, _, n := f.counts(); n != 0 {
				t.Fatalf("%d restarts while the liveness probe passes", n)
			}
			for len(rec.Events) > 0 {
				if ev := <-rec.Events; strings.Contains(ev, "Unhealthy") {
					t.Fatalf("event %q while the liveness probe passes", ev)
				}
			}

			target.healthy(false)
			waitEvent(t, p, rec, "Warning Unhealthy Liveness probe failed: ", target.fails)
			eventually(t, p, "the VM restarted", func() bool { _, _, _, n := f.counts(); return n >= 1 })
			target.healthy(true)
			f.run(vm, agentapi.WorkloadRunning, 0, nil)
			eventually(t, p, "running again, the restart counted", func() bool {
				return phaseOf(r.last()) == "Running/running/ready" && r.last().Status.ContainerStatuses[0].RestartCount == 1
			})
			f.mu.Lock()
			defer f.mu.Unlock()
			if strings.Join(f.restarts, ",") != vm {
				t.Fatalf("restarts %v, want %s once", f.restarts, vm)
			}
		})
	}
}

// probedPod runs a pod whose container has one probe of kind (readiness,
// or liveness failing after 2), every second, its target healthy; the
// VM, at 127.0.0.1, runs its workload.
func probedPod(t *testing.T, kind string, liveness bool) (*Provider, *fakeVolant, *record.FakeRecorder, *recorder, *corev1.Pod, probeTarget) {
	t.Helper()
	ctx := context.Background()
	f := newFake()
	target := newProbeTarget(t, kind, f)
	rec := record.NewFakeRecorder(1000)
	p := NewProvider(ProviderConfig{Node: "vol1", NodeIP: "10.0.0.1", Volant: f, Interval: time.Hour, Events: rec})
	r := &recorder{}
	p.NotifyPods(ctx, r.add)
	pod := testPod("probed-" + strconv.FormatBool(liveness))
	c := &pod.Spec.Containers[0]
	c.Ports = target.ports
	pr := &corev1.Probe{ProbeHandler: target.handler, PeriodSeconds: 1, FailureThreshold: 1}
	if liveness {
		pr.FailureThreshold = 2
		c.LivenessProbe = pr
	} else {
		c.ReadinessProbe = pr
	}
	if err := p.CreatePod(ctx, pod); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.DeletePod(ctx, pod) })
	eventually(t, p, "the VM", func() bool { _, err := p.vmOf(pod.Namespace, pod.Name, ""); return err == nil })
	vm := VMName(pod)
	f.mu.Lock()
	f.vms[vm].IP = "127.0.0.1"
	f.mu.Unlock()
	f.run(vm, agentapi.WorkloadRunning, 0, nil)
	return p, f, rec, r, pod, target
}
