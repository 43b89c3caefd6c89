package kubelet

import (
	"context"
	"fmt"
	"io"
	"sort"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	statsv1alpha1 "k8s.io/kubelet/pkg/apis/stats/v1alpha1"

	"github.com/volantvm/volant/lib/api"
)

// Stats: the kubelet API's /stats/summary and /metrics/resource (what
// metrics-server and `kubectl top` read) come from what volantd measures
// for its per-VM Prometheus series (GET /metrics): the hypervisor
// process's CPU time and resident memory, the guest's memory as kestrel
// reports it, the tap's counters. Per pod (its VM):
//
//   - CPU, of the pod and of its container: the hypervisor process's user
//     and system time (usageCoreNanoSeconds; usageNanoCores is the rate
//     since the previous read of the same VM);
//   - the pod's memory: the hypervisor process's resident memory (what the
//     VM takes from the host: workingSetBytes, usageBytes, rssBytes);
//   - the container's memory: the guest's MemTotal − MemAvailable
//     (workingSetBytes, usageBytes) and MemAvailable (availableBytes),
//     what the workload uses inside its VM;
//   - the pod's network: the guest's eth0, from its tap (rxBytes is what
//     the guest received).
//
// The node's CPU and memory are the sums over its pods' VMs (the host's
// own processes are not counted); its CPU time only grows: a VM that goes
// leaves what it used in it.

// vmSample is what volantd's /metrics says of one VM.
type vmSample struct {
	cpuSeconds            *float64
	rss                   *uint64
	guestTotal, guestUsed *uint64
	netRx, netTx          *uint64 // as the guest sees it
}

// The series read from volantd's /metrics (lib/server/metrics.go).
const (
	seriesCPU        = "volant_vm_vmm_cpu_seconds_total"
	seriesRSS        = "volant_vm_vmm_resident_memory_bytes"
	seriesGuestTotal = "volant_vm_guest_memory_total_bytes"
	seriesGuestUsed  = "volant_vm_guest_memory_used_bytes"
	seriesNetRx      = "volant_vm_network_receive_bytes_total"
	seriesNetTx      = "volant_vm_network_transmit_bytes_total"
)

// parseVMMetrics reads volantd's /metrics into samples by VM name.
func parseVMMetrics(r io.Reader) (map[string]*vmSample, error) {
	var p expfmt.TextParser
	fams, err := p.TextToMetricFamilies(r)
	if err != nil {
		return nil, fmt.Errorf("reading volantd's /metrics: %w", err)
	}
	out := map[string]*vmSample{}
	for name, f := range fams {
		for _, m := range f.GetMetric() {
			vm := ""
			for _, l := range m.GetLabel() {
				if l.GetName() == "vm" {
					vm = l.GetValue()
				}
			}
			if vm == "" {
				continue
			}
			v := value(m)
			if v < 0 {
				continue
			}
			s := out[vm]
			if s == nil {
				s = &vmSample{}
				out[vm] = s
			}
			u := uint64(v)
			switch name {
			case seriesCPU:
				s.cpuSeconds = &v
			case seriesRSS:
				s.rss = &u
			case seriesGuestTotal:
				s.guestTotal = &u
			case seriesGuestUsed:
				s.guestUsed = &u
			case seriesNetRx:
				s.netRx = &u
			case seriesNetTx:
				s.netTx = &u
			}
		}
	}
	return out, nil
}

func value(m *dto.Metric) float64 {
	switch {
	case m.Counter != nil:
		return m.Counter.GetValue()
	case m.Gauge != nil:
		return m.Gauge.GetValue()
	case m.Untyped != nil:
		return m.Untyped.GetValue()
	}
	return -1
}

// statsState is what successive reads remember: each VM's last CPU time
// (for usageNanoCores) and the node's CPU time, which only grows.
type statsState struct {
	start   time.Time
	prev    map[string]cpuPoint // by VM
	nodeCPU uint64              // ns, summed over VMs since start
	node    cpuPoint            // the node's at the last read
}

type cpuPoint struct {
	at time.Time
	ns uint64
}

// rate is the nano-cores between two reads, nil without a previous one
// (or a counter that went back: a VM started again).
func rate(prev cpuPoint, ok bool, now time.Time, ns uint64) *uint64 {
	dt := now.Sub(prev.at)
	if !ok || dt <= 0 || ns < prev.ns {
		return nil
	}
	return ref(uint64(float64(ns-prev.ns) / dt.Seconds()))
}

// summary maps volantd's VMs and their samples to the kubelet's stats
// summary. vms are the node's VMs; only those of a pod (LabelPodUID) with
// a running hypervisor (a CPU sample) are in it.
func (s *statsState) summary(now time.Time, node string, vms []api.VM, samples map[string]*vmSample) *statsv1alpha1.Summary {
	if s.prev == nil {
		s.prev = map[string]cpuPoint{}
	}
	if s.start.IsZero() {
		s.start = now
	}
	t := metav1.NewTime(now)
	out := &statsv1alpha1.Summary{Pods: []statsv1alpha1.PodStats{}}
	var rss uint64
	seen := map[string]bool{}
	sort.Slice(vms, func(i, j int) bool { return vms[i].Name < vms[j].Name })
	for _, v := range vms {
		uid := v.Labels[LabelPodUID]
		smp := samples[v.Name]
		if uid == "" || smp == nil || smp.cpuSeconds == nil {
			continue
		}
		seen[v.Name] = true
		ns := uint64(*smp.cpuSeconds * 1e9)
		prev, ok := s.prev[v.Name]
		// The node's CPU time grows by what each VM used since the last
		// read (all of it for a VM seen first).
		if ok && ns >= prev.ns {
			s.nodeCPU += ns - prev.ns
		} else {
			s.nodeCPU += ns
		}
		cpu := &statsv1alpha1.CPUStats{Time: t, UsageCoreNanoSeconds: ref(ns), UsageNanoCores: rate(prev, ok, now, ns)}
		s.prev[v.Name] = cpuPoint{now, ns}
		start := metav1.NewTime(v.CreatedAt)
		if v.StartedAt != nil {
			start = metav1.NewTime(*v.StartedAt)
		}
		c := statsv1alpha1.ContainerStats{Name: v.Labels[LabelContainer], StartTime: start, CPU: cpu}
		if smp.guestTotal != nil && smp.guestUsed != nil {
			u := *smp.guestUsed
			c.Memory = &statsv1alpha1.MemoryStats{Time: t, WorkingSetBytes: ref(u), UsageBytes: ref(u),
				AvailableBytes: ref(*smp.guestTotal - min(u, *smp.guestTotal))}
		}
		ps := statsv1alpha1.PodStats{
			PodRef:     statsv1alpha1.PodReference{Name: v.Labels[LabelPodName], Namespace: v.Labels[LabelPodNamespace], UID: uid},
			StartTime:  start,
			Containers: []statsv1alpha1.ContainerStats{c},
			CPU:        ref(*cpu),
		}
		if smp.rss != nil {
			r := *smp.rss
			ps.Memory = &statsv1alpha1.MemoryStats{Time: t, WorkingSetBytes: ref(r), UsageBytes: ref(r), RSSBytes: ref(r)}
			rss += r
		}
		if smp.netRx != nil && smp.netTx != nil {
			i := statsv1alpha1.InterfaceStats{Name: "eth0", RxBytes: ref(*smp.netRx), TxBytes: ref(*smp.netTx)}
			ps.Network = &statsv1alpha1.NetworkStats{Time: t, InterfaceStats: i, Interfaces: []statsv1alpha1.InterfaceStats{i}}
		}
		out.Pods = append(out.Pods, ps)
	}
	for n := range s.prev {
		if !seen[n] {
			delete(s.prev, n)
		}
	}
	hadNode := !s.node.at.IsZero()
	out.Node = statsv1alpha1.NodeStats{
		NodeName:  node,
		StartTime: metav1.NewTime(s.start),
		CPU:       &statsv1alpha1.CPUStats{Time: t, UsageCoreNanoSeconds: ref(s.nodeCPU), UsageNanoCores: rate(s.node, hadNode, now, s.nodeCPU)},
		Memory:    &statsv1alpha1.MemoryStats{Time: t, WorkingSetBytes: ref(rss), UsageBytes: ref(rss), RSSBytes: ref(rss)},
	}
	s.node = cpuPoint{now, s.nodeCPU}
	return out
}

// readStats asks volantd for the node's VMs and their series and maps
// them (summary).
func (p *Provider) readStats(ctx context.Context) (*statsv1alpha1.Summary, error) {
	vms, err := p.cfg.Volant.ListVMs(ctx, api.VMFilter{Label: LabelNode + "=" + p.cfg.Node})
	if err != nil {
		return nil, fmt.Errorf("listing the node's VMs: %w", err)
	}
	rc, err := p.cfg.Volant.Metrics(ctx)
	if err != nil {
		return nil, fmt.Errorf("reading volantd's /metrics: %w", err)
	}
	defer rc.Close()
	samples, err := parseVMMetrics(rc)
	if err != nil {
		return nil, err
	}
	p.statsMu.Lock()
	defer p.statsMu.Unlock()
	return p.stats.summary(p.now(), p.cfg.Node, vms, samples), nil
}

// GetStatsSummary is the kubelet API's /stats/summary: each pod's VM's
// CPU, memory and network, the node's as their sums.
func (p *Provider) GetStatsSummary(ctx context.Context) (*statsv1alpha1.Summary, error) {
	return p.readStats(ctx)
}

// GetMetricsResource is the kubelet API's /metrics/resource (what
// metrics-server reads): the summary's CPU time and working sets as the
// kubelet's resource series.
func (p *Provider) GetMetricsResource(ctx context.Context) ([]*dto.MetricFamily, error) {
	s, err := p.readStats(ctx)
	if err != nil {
		return nil, err
	}
	return resourceMetrics(s), nil
}

// resourceMetrics are the kubelet's /metrics/resource series of a summary.
func resourceMetrics(s *statsv1alpha1.Summary) []*dto.MetricFamily {
	fam := func(name, help string, typ dto.MetricType) *dto.MetricFamily {
		return &dto.MetricFamily{Name: ref(name), Help: ref(help), Type: typ.Enum()}
	}
	lbl := func(kv ...string) []*dto.LabelPair {
		var out []*dto.LabelPair
		for i := 0; i+1 < len(kv); i += 2 {
			out = append(out, &dto.LabelPair{Name: ref(kv[i]), Value: ref(kv[i+1])})
		}
		return out
	}
	add := func(f *dto.MetricFamily, at metav1.Time, v float64, labels []*dto.LabelPair) {
		m := &dto.Metric{Label: labels, TimestampMs: ref(at.UnixMilli())}
		if f.GetType() == dto.MetricType_COUNTER {
			m.Counter = &dto.Counter{Value: ref(v)}
		} else {
			m.Gauge = &dto.Gauge{Value: ref(v)}
		}
		f.Metric = append(f.Metric, m)
	}
	nodeCPU := fam("node_cpu_usage_seconds_total", "Cumulative cpu time consumed by the node's pods' VMs in core-seconds", dto.MetricType_COUNTER)
	nodeMem := fam("node_memory_working_set_bytes", "Resident memory of the node's pods' VMs' hypervisors in bytes", dto.MetricType_GAUGE)
	podCPU := fam("pod_cpu_usage_seconds_total", "Cumulative cpu time consumed by the pod's VM in core-seconds", dto.MetricType_COUNTER)
	podMem := fam("pod_memory_working_set_bytes", "Resident memory of the pod's VM's hypervisor in bytes", dto.MetricType_GAUGE)
	ctrCPU := fam("container_cpu_usage_seconds_total", "Cumulative cpu time consumed by the container's VM in core-seconds", dto.MetricType_COUNTER)
	ctrMem := fam("container_memory_working_set_bytes", "Memory the guest uses (MemTotal - MemAvailable) in bytes", dto.MetricType_GAUGE)
	ctrStart := fam("container_start_time_seconds", "Start time of the container's VM since unix epoch in seconds", dto.MetricType_GAUGE)
	scrapeErr := fam("scrape_error", "1 if there was an error while getting container metrics, 0 otherwise", dto.MetricType_GAUGE)
	n := s.Node
	if c := n.CPU; c != nil && c.UsageCoreNanoSeconds != nil {
		add(nodeCPU, c.Time, float64(*c.UsageCoreNanoSeconds)/1e9, nil)
	}
	if m := n.Memory; m != nil && m.WorkingSetBytes != nil {
		add(nodeMem, m.Time, float64(*m.WorkingSetBytes), nil)
	}
	for _, p := range s.Pods {
		pl := func(kv ...string) []*dto.LabelPair {
			return lbl(append(kv, "namespace", p.PodRef.Namespace, "pod", p.PodRef.Name)...)
		}
		if c := p.CPU; c != nil && c.UsageCoreNanoSeconds != nil {
			add(podCPU, c.Time, float64(*c.UsageCoreNanoSeconds)/1e9, pl())
		}
		if m := p.Memory; m != nil && m.WorkingSetBytes != nil {
			add(podMem, m.Time, float64(*m.WorkingSetBytes), pl())
		}
		for _, c := range p.Containers {
			if u := c.CPU; u != nil && u.UsageCoreNanoSeconds != nil {
				add(ctrCPU, u.Time, float64(*u.UsageCoreNanoSeconds)/1e9, pl("container", c.Name))
			}
			if m := c.Memory; m != nil && m.WorkingSetBytes != nil {
				add(ctrMem, m.Time, float64(*m.WorkingSetBytes), pl("container", c.Name))
			}
			add(ctrStart, c.StartTime, float64(c.StartTime.Unix()), pl("container", c.Name))
		}
	}
	scrapeErr.Metric = []*dto.Metric{{Gauge: &dto.Gauge{Value: ref(0.0)}}}
	return []*dto.MetricFamily{nodeCPU, nodeMem, podCPU, podMem, ctrCPU, ctrMem, ctrStart, scrapeErr}
}

func ref[T any](v T) *T { return &v }
