package kubelet

import (
	"bytes"
	"context"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/common/expfmt"
	statsv1alpha1 "k8s.io/kubelet/pkg/apis/stats/v1alpha1"

	"github.com/volantvm/volant/lib/api"
)

// metricsText is volantd's /metrics (lib/server/metrics.go) for three VMs
// of node vol1: two pods' (one without kestrel's memory report yet) and
// one VM of no pod; a fourth pod VM has no hypervisor running (no CPU).
func metricsText(cpuA float64) string {
	return `# HELP volant_vm_vmm_cpu_seconds_total User and system CPU time of the VM's hypervisor process (/proc/<pid>/stat).
# TYPE volant_vm_vmm_cpu_seconds_total counter
volant_vm_vmm_cpu_seconds_total{deployment="",plugin="web",vm="default-web-a-11111111"} ` + ftoa(cpuA) + `
volant_vm_vmm_cpu_seconds_total{deployment="",plugin="web",vm="default-web-b-22222222"} 0.25
volant_vm_vmm_cpu_seconds_total{deployment="",plugin="web",vm="plain"} 9
# HELP volant_vm_vmm_resident_memory_bytes Resident memory of the VM's hypervisor process (/proc/<pid>/stat).
# TYPE volant_vm_vmm_resident_memory_bytes gauge
volant_vm_vmm_resident_memory_bytes{deployment="",plugin="web",vm="default-web-a-11111111"} 1.572864e+08
volant_vm_vmm_resident_memory_bytes{deployment="",plugin="web",vm="default-web-b-22222222"} 1.048576e+08
volant_vm_vmm_resident_memory_bytes{deployment="",plugin="web",vm="plain"} 9e+08
# HELP volant_vm_guest_memory_total_bytes The guest's MemTotal, as kestrel last reported it.
# TYPE volant_vm_guest_memory_total_bytes gauge
volant_vm_guest_memory_total_bytes{deployment="",plugin="web",vm="default-web-a-11111111"} 1.2e+08
# HELP volant_vm_guest_memory_used_bytes The guest's MemTotal − MemAvailable, as kestrel last reported it.
# TYPE volant_vm_guest_memory_used_bytes gauge
volant_vm_guest_memory_used_bytes{deployment="",plugin="web",vm="default-web-a-11111111"} 3e+07
# HELP volant_vm_network_receive_bytes_total Bytes the guest received (its tap's tx_bytes).
# TYPE volant_vm_network_receive_bytes_total counter
volant_vm_network_receive_bytes_total{deployment="",plugin="web",vm="default-web-a-11111111"} 4096
# HELP volant_vm_network_transmit_bytes_total Bytes the guest sent (its tap's rx_bytes).
# TYPE volant_vm_network_transmit_bytes_total counter
volant_vm_network_transmit_bytes_total{deployment="",plugin="web",vm="default-web-a-11111111"} 1024
# HELP volant_vms VMs by state.
# TYPE volant_vms gauge
volant_vms{state="running"} 3
`
}

func ftoa(f float64) string { return strconv.FormatFloat(f, 'g', -1, 64) }

func podVM(name, pod, uid string, started time.Time) *api.VM {
	return &api.VM{Name: name, State: api.VMRunning, StartedAt: &started, PID: 42,
		Labels: map[string]string{LabelPodUID: uid, LabelPodName: pod, LabelPodNamespace: "default", LabelContainer: "web", LabelNode: "vol1"}}
}

// TestStatsSummary maps volantd's per-VM series to the kubelet's summary:
// per pod, the hypervisor's CPU time (and its rate between two reads), its
// resident memory as the pod's, the guest's memory as the container's,
// the tap as eth0; VMs of no pod and VMs not running left out; the node
// the sum, its CPU time never going back when a VM goes.
func TestStatsSummary(t *testing.T) {
	f := newFake()
	started := time.Date(2026, 12, 5, 12, 0, 0, 0, time.UTC)
	f.vms["default-web-a-11111111"] = podVM("default-web-a-11111111", "web-a", "11111111-aaaa", started)
	f.vms["default-web-b-22222222"] = podVM("default-web-b-22222222", "web-b", "22222222-bbbb", started)
	f.vms["default-web-c-33333333"] = podVM("default-web-c-33333333", "web-c", "33333333-cccc", started)
	f.vms["default-web-c-33333333"].State, f.vms["default-web-c-33333333"].PID = api.VMStopped, 0
	f.vms["plain"] = &api.VM{Name: "plain", State: api.VMRunning, Labels: map[string]string{LabelNode: "vol1"}}
	f.metrics = metricsText(1.5)
	p, _ := newTestProvider(t, f)
	now := time.Date(2026, 12, 5, 12, 10, 0, 0, time.UTC)
	p.now = func() time.Time { return now }

	s, err := p.GetStatsSummary(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if s.Node.NodeName != "vol1" || len(s.Pods) != 2 {
		t.Fatalf("node %q, %d pods: %+v", s.Node.NodeName, len(s.Pods), s.Pods)
	}
	a, b := s.Pods[0], s.Pods[1]
	if a.PodRef != (statsv1alpha1.PodReference{Name: "web-a", Namespace: "default", UID: "11111111-aaaa"}) || b.PodRef.Name != "web-b" {
		t.Fatalf("pod refs %+v %+v", a.PodRef, b.PodRef)
	}
	if !a.StartTime.Time.Equal(started) || len(a.Containers) != 1 || a.Containers[0].Name != "web" {
		t.Fatalf("pod a: start %v, containers %+v", a.StartTime, a.Containers)
	}
	eq := func(what string, got *uint64, want uint64) {
		t.Helper()
		if got == nil || *got != want {
			t.Errorf("%s = %v, want %d", what, deref(got), want)
		}
	}
	eq("a cpu ns", a.CPU.UsageCoreNanoSeconds, 1.5e9)
	eq("a container cpu ns", a.Containers[0].CPU.UsageCoreNanoSeconds, 1.5e9)
	if a.CPU.UsageNanoCores != nil {
		t.Errorf("nano cores on a first read: %d", *a.CPU.UsageNanoCores)
	}
	eq("a pod working set (hypervisor RSS)", a.Memory.WorkingSetBytes, 157286400)
	eq("a container working set (guest used)", a.Containers[0].Memory.WorkingSetBytes, 30e6)
	eq("a container available", a.Containers[0].Memory.AvailableBytes, 90e6)
	eq("a rx", a.Network.RxBytes, 4096)
	eq("a tx", a.Network.TxBytes, 1024)
	if a.Network.Name != "eth0" {
		t.Errorf("interface %q", a.Network.Name)
	}
	if b.Containers[0].Memory != nil || b.Network != nil {
		t.Errorf("pod b has guest memory or network without series: %+v %+v", b.Containers[0].Memory, b.Network)
	}
	eq("node cpu ns", s.Node.CPU.UsageCoreNanoSeconds, 1.75e9)
	eq("node working set", s.Node.Memory.WorkingSetBytes, 157286400+104857600)

	// 10 s later a used 2 more seconds: 0.2 cores.
	now = now.Add(10 * time.Second)
	f.metrics = metricsText(3.5)
	s, err = p.GetStatsSummary(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	eq("a nano cores", s.Pods[0].CPU.UsageNanoCores, 2e8)
	eq("b nano cores", s.Pods[1].CPU.UsageNanoCores, 0)
	eq("node cpu ns", s.Node.CPU.UsageCoreNanoSeconds, 3.75e9)
	eq("node nano cores", s.Node.CPU.UsageNanoCores, 2e8)

	// a's VM goes: the node keeps what it used.
	delete(f.vms, "default-web-a-11111111")
	now = now.Add(10 * time.Second)
	if s, err = p.GetStatsSummary(context.Background()); err != nil {
		t.Fatal(err)
	}
	if len(s.Pods) != 1 || s.Pods[0].PodRef.Name != "web-b" {
		t.Fatalf("pods after a's VM went: %+v", s.Pods)
	}
	eq("node cpu ns after a VM went", s.Node.CPU.UsageCoreNanoSeconds, 3.75e9)
	eq("node working set after a VM went", s.Node.Memory.WorkingSetBytes, 104857600)
}

// TestMetricsResource: /metrics/resource carries the summary's figures
// as the kubelet's series, with timestamps, in the text format.
func TestMetricsResource(t *testing.T) {
	f := newFake()
	started := time.Date(2026, 12, 5, 12, 0, 0, 0, time.UTC)
	f.vms["default-web-a-11111111"] = podVM("default-web-a-11111111", "web-a", "11111111-aaaa", started)
	f.metrics = metricsText(1.5)
	p, _ := newTestProvider(t, f)
	fams, err := p.GetMetricsResource(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	enc := expfmt.NewEncoder(&buf, expfmt.NewFormat(expfmt.TypeTextPlain))
	for _, mf := range fams {
		if err := enc.Encode(mf); err != nil {
			t.Fatal(err)
		}
	}
	out := buf.String()
	for _, want := range []string{
		`container_cpu_usage_seconds_total{container="web",namespace="default",pod="web-a"} 1.5 `,
		`container_memory_working_set_bytes{container="web",namespace="default",pod="web-a"} 3e+07 `,
		`pod_memory_working_set_bytes{namespace="default",pod="web-a"} 1.572864e+08 `,
		`node_cpu_usage_seconds_total 1.5 `,
		`container_start_time_seconds{container="web",namespace="default",pod="web-a"} 1.796472e+09 `,
		"scrape_error 0\n",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("no %q in\n%s", want, out)
		}
	}
}

func deref(p *uint64) any {
	if p == nil {
		return nil
	}
	return *p
}
