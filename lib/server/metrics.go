package server

import (
	"bytes"
	"context"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/volantvm/volant/lib/api"
	"github.com/volantvm/volant/lib/controller/events"
)

// Metrics, GET /metrics in the Prometheus text format. Everything but the
// request and boot histograms is read when scraped: the VM list from the
// database (kept while the store's generation does not move), each VMM's
// CPU time and resident memory from /proc/<pid>/stat (kept open between
// scrapes, one pread each), every tap's counters from one read of
// /proc/thread-self/net/dev. Guest memory and workload restarts are
// kestrel's last report. Block counters come from the hypervisor (QEMU
// query-blockstats, Cloud Hypervisor vm.counters) through volant-launch;
// those are slower to ask for, so a scrape answers with the last values
// and, when they are older than blockRefresh, asks again in the
// background, one VM at a time so that it takes at most one of the host's
// CPUs from the scrapes (the first scrape of a VM has none): a block
// series is at most blockRefresh plus one refresh old. QEMU 7.2's QMP has
// no network counters: network series always come from the tap, and only
// when the tap is in volantd's own network namespace (they are absent
// otherwise).
//
// Series (per VM labels: vm, plugin, deployment; deployment "" for a VM
// of its own):
//
//	volant_api_request_duration_seconds{route,code}   histogram, route = operationId
//	volant_vm_boot_duration_seconds{plugin}           histogram, create (or start) → running
//	volant_vms{state}                                 gauge, every state
//	volant_reconcile_passes_total, volant_reconcile_errors_total
//	volant_boot_queue_length, volant_boots_in_progress
//	volant_event_log_events                           events retained
//	volant_sse_subscribers                            open GET /api/v1/events streams
//	volant_vm_state{vm,plugin,deployment,state}       1 for the VM's state
//	volant_vm_healthy                                 1 healthy, 0 not (or unknown)
//	volant_vm_vmm_cpu_seconds_total                   the VMM process's user+system time
//	volant_vm_vmm_resident_memory_bytes
//	volant_vm_guest_memory_total_bytes, volant_vm_guest_memory_used_bytes  (MemTotal − MemAvailable)
//	volant_vm_workload_restarts_total
//	volant_vm_network_{receive,transmit}_{bytes,packets}_total  as the guest sees it (its receive is the tap's transmit)
//	volant_vm_block_{read,write}_{bytes,ops}_total{device}
//
// plus the Go runtime's and volantd's own process series (go_*, process_*).
type metrics struct {
	s        *Server
	reg      *prometheus.Registry
	requests *prometheus.HistogramVec
	boots    *prometheus.HistogramVec
	// unauth counts requests refused as UNAUTHORIZED, by reason.
	unauth *prometheus.CounterVec
	sse    atomic.Int64

	stats statFiles // the VMMs' /proc/<pid>/stat

	listMu  sync.Mutex
	listGen uint64
	list    []api.VM // ListVMs at listGen; read only

	blockMu      sync.Mutex
	blockAt      time.Time
	blockBusy    bool
	blockByVM    map[string]map[string]map[string]int64
	blockRefresh time.Duration

	// bootSub is taken when the server is made, so that Run sees the
	// boots that began before it.
	bootSub *events.Subscription
}

// blockRefresh is how old block counters may get before a scrape asks the
// hypervisors again; blockWorkers is how many it asks at once.
const (
	blockRefresh = 10 * time.Second
	blockWorkers = 1
)

var vmLabels = []string{"vm", "plugin", "deployment"}

var (
	descVMs          = prometheus.NewDesc("volant_vms", "VMs by state.", []string{"state"}, nil)
	descPasses       = prometheus.NewDesc("volant_reconcile_passes_total", "Passes of the deployment reconciler.", nil, nil)
	descPassErrors   = prometheus.NewDesc("volant_reconcile_errors_total", "Errors the deployment reconciler met (replicas it could not create, delete or replace).", nil, nil)
	descBootQueue    = prometheus.NewDesc("volant_boot_queue_length", "Starts waiting for a boot slot (--max-booting).", nil, nil)
	descBooting      = prometheus.NewDesc("volant_boots_in_progress", "Boot slots taken: VMs started and not yet healthy.", nil, nil)
	descEventLog     = prometheus.NewDesc("volant_event_log_events", "Events retained in the event log.", nil, nil)
	descSSE          = prometheus.NewDesc("volant_sse_subscribers", "Open event streams (GET /api/v1/events).", nil, nil)
	descState        = prometheus.NewDesc("volant_vm_state", "1 for the VM's current state.", append(vmLabels[:3:3], "state"), nil)
	descHealthy      = prometheus.NewDesc("volant_vm_healthy", "1 when the VM's last health verdict is healthy, else 0.", vmLabels, nil)
	descCPU          = prometheus.NewDesc("volant_vm_vmm_cpu_seconds_total", "User and system CPU time of the VM's hypervisor process (/proc/<pid>/stat).", vmLabels, nil)
	descRSS          = prometheus.NewDesc("volant_vm_vmm_resident_memory_bytes", "Resident memory of the VM's hypervisor process (/proc/<pid>/stat).", vmLabels, nil)
	descGuestTotal   = prometheus.NewDesc("volant_vm_guest_memory_total_bytes", "The guest's MemTotal, as kestrel last reported it.", vmLabels, nil)
	descGuestUsed    = prometheus.NewDesc("volant_vm_guest_memory_used_bytes", "The guest's MemTotal − MemAvailable, as kestrel last reported it.", vmLabels, nil)
	descRestarts     = prometheus.NewDesc("volant_vm_workload_restarts_total", "Workload restarts, as kestrel last reported them.", vmLabels, nil)
	descNetRxBytes   = prometheus.NewDesc("volant_vm_network_receive_bytes_total", "Bytes the guest received (its tap's tx_bytes).", vmLabels, nil)
	descNetTxBytes   = prometheus.NewDesc("volant_vm_network_transmit_bytes_total", "Bytes the guest sent (its tap's rx_bytes).", vmLabels, nil)
	descNetRxPackets = prometheus.NewDesc("volant_vm_network_receive_packets_total", "Packets the guest received (its tap's tx_packets).", vmLabels, nil)
	descNetTxPackets = prometheus.NewDesc("volant_vm_network_transmit_packets_total", "Packets the guest sent (its tap's rx_packets).", vmLabels, nil)
	devLabels        = append(vmLabels[:3:3], "device")
	descBlock        = map[string]*prometheus.Desc{
		"read_bytes":  prometheus.NewDesc("volant_vm_block_read_bytes_total", "Bytes read from a disk, by the hypervisor's count.", devLabels, nil),
		"write_bytes": prometheus.NewDesc("volant_vm_block_write_bytes_total", "Bytes written to a disk, by the hypervisor's count.", devLabels, nil),
		"read_ops":    prometheus.NewDesc("volant_vm_block_read_ops_total", "Read operations on a disk, by the hypervisor's count.", devLabels, nil),
		"write_ops":   prometheus.NewDesc("volant_vm_block_write_ops_total", "Write operations on a disk, by the hypervisor's count.", devLabels, nil),
	}
)

func newMetrics(s *Server) *metrics {
	m := &metrics{s: s, reg: prometheus.NewRegistry(), blockRefresh: blockRefresh,
		blockByVM: map[string]map[string]map[string]int64{}}
	if s.ctl != nil { // nil: only the OpenAPI document is wanted
		m.bootSub = s.ctl.Events().Subscribe(1024)
	}
	m.requests = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name: "volant_api_request_duration_seconds", Help: "API request duration by route (operationId) and HTTP status; streams count until they end.",
		Buckets: []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60},
	}, []string{"route", "code"})
	m.boots = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name: "volant_vm_boot_duration_seconds", Help: "From a VM's create (or start) to its first passed health check.",
		Buckets: []float64{.5, 1, 2, 3, 5, 7.5, 10, 15, 20, 30, 45, 60, 90, 120, 180, 300},
	}, []string{"plugin"})
	m.unauth = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "volant_api_unauthorized_total", Help: "Requests refused as UNAUTHORIZED, by reason (missing, malformed, unknown, expired, revoked, token_in_query).",
	}, []string{"reason"})
	m.reg.MustRegister(m.requests, m.boots, m.unauth, m, collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// refused counts a request refused as UNAUTHORIZED.
func (m *metrics) refused(reason any) {
	r, _ := reason.(string)
	m.unauth.WithLabelValues(r).Inc()
}

// Describe sends nothing: the per-VM series change with the VMs, so the
// collector is unchecked.
func (m *metrics) Describe(chan<- *prometheus.Desc) {}

// Collect reads the daemon's and every VM's series.
func (m *metrics) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	counter := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, v, labels...)
	}
	st := m.s.ctl.Stats()
	counter(descPasses, float64(st.ReconcilePasses))
	counter(descPassErrors, float64(st.ReconcileErrors))
	gauge(descBootQueue, float64(st.BootQueue))
	gauge(descBooting, float64(st.Booting))
	gauge(descSSE, float64(m.sse.Load()))
	if n, err := m.eventLogSize(ctx); err == nil {
		gauge(descEventLog, float64(n))
	}

	vms, err := m.vms(ctx)
	if err != nil {
		ch <- prometheus.NewInvalidMetric(descVMs, err)
		return
	}
	byState := map[api.VMState]int{}
	for _, s := range api.VMStates() {
		byState[s] = 0
	}
	block := m.blockCounters(vms)
	var taps map[string]netDevCounters // read once, when a VM has a tap
	m.stats.begin()
	defer m.stats.end()
	l := make([]string, 4)
	for i := range vms {
		v := &vms[i]
		byState[v.State]++
		l = append(l[:0], v.Name, v.Plugin, v.Deployment)
		gauge(descState, 1, append(l, string(v.State))...)
		healthy := 0.0
		if v.Health == "healthy" {
			healthy = 1
		}
		gauge(descHealthy, healthy, l...)
		if v.PID > 0 {
			if s, err := m.stats.stat(v.PID); err == nil {
				counter(descCPU, s.cpuSeconds, l...)
				gauge(descRSS, float64(s.rssBytes), l...)
			}
		}
		if a := v.Agent; a != nil {
			counter(descRestarts, float64(a.Workload.Restarts), l...)
			if mem := a.Memory; mem != nil && mem.GuestTotalKiB > 0 {
				gauge(descGuestTotal, float64(mem.GuestTotalKiB)*1024, l...)
				gauge(descGuestUsed, float64(mem.GuestTotalKiB-mem.GuestAvailableKiB)*1024, l...)
			}
		}
		if v.Tap != "" && v.PID > 0 {
			if taps == nil {
				taps = readNetDev()
			}
			if st, ok := taps[v.Tap]; ok {
				tapCounters(ch, st, l)
			}
		}
		for dev, cs := range block[v.Name] {
			for k, d := range descBlock {
				if n, ok := cs[k]; ok {
					counter(d, float64(n), append(l, dev)...)
				}
			}
		}
	}
	for s, n := range byState {
		gauge(descVMs, float64(n), string(s))
	}
}

// vms is ListVMs, read again only when the store has committed since the
// last read (nothing a scrape shows of a VM's row can change without a
// commit). Callers must not change the slice.
func (m *metrics) vms(ctx context.Context) ([]api.VM, error) {
	gen := m.s.ctl.Generation()
	m.listMu.Lock()
	if m.list != nil && m.listGen == gen {
		defer m.listMu.Unlock()
		return m.list, nil
	}
	m.listMu.Unlock()
	vms, err := m.s.ctl.ListVMs(ctx, api.VMFilter{})
	if err != nil {
		return nil, err
	}
	m.listMu.Lock()
	m.list, m.listGen = vms, gen // gen was read before: at worst read again
	m.listMu.Unlock()
	return vms, nil
}

func (m *metrics) eventLogSize(ctx context.Context) (int64, error) {
	log := m.s.ctl.Events()
	first, err := log.First(ctx)
	if err != nil {
		return 0, err
	}
	last, err := log.Last(ctx)
	if err != nil || first == 0 {
		return 0, err
	}
	return last - first + 1, nil
}

// netDevCounters are a link's counters as the host sees them.
type netDevCounters struct {
	rxBytes, rxPackets, txBytes, txPackets uint64
}

// readNetDev reads the counters of every link in the calling thread's
// network namespace, by name, from /proc/thread-self/net/dev: one read
// for all taps. (Four sysfs files per tap took most of a scrape with 200
// VMs; a netlink dump of the links, which carries every attribute of
// every link, cost 5-6 ms of the scrape's CPU.)
func readNetDev() map[string]netDevCounters {
	b, err := os.ReadFile("/proc/thread-self/net/dev")
	if err != nil {
		return map[string]netDevCounters{}
	}
	return parseNetDev(b)
}

// parseNetDev parses /proc/net/dev: two header lines, then per link
// "name: rx_bytes rx_packets errs drop fifo frame compressed multicast
// tx_bytes tx_packets …". A link's name cannot hold ':' or spaces.
func parseNetDev(b []byte) map[string]netDevCounters {
	out := map[string]netDevCounters{}
	for line := range bytes.SplitSeq(b, []byte("\n")) {
		name, rest, ok := bytes.Cut(line, []byte(":"))
		if !ok {
			continue // a header line
		}
		var f [10]uint64
		n := 0
		for field := range bytes.FieldsSeq(rest) {
			if n == len(f) {
				break
			}
			v, err := strconv.ParseUint(string(field), 10, 64)
			if err != nil {
				break
			}
			f[n] = v
			n++
		}
		if n == len(f) {
			out[string(bytes.TrimSpace(name))] = netDevCounters{rxBytes: f[0], rxPackets: f[1], txBytes: f[8], txPackets: f[9]}
		}
	}
	return out
}

// tapCounters sends a tap's counters, turned to the guest's view: what
// the tap transmits the guest receives.
func tapCounters(ch chan<- prometheus.Metric, st netDevCounters, l []string) {
	for _, c := range []struct {
		n uint64
		d *prometheus.Desc
	}{{st.txBytes, descNetRxBytes}, {st.rxBytes, descNetTxBytes}, {st.txPackets, descNetRxPackets}, {st.rxPackets, descNetTxPackets}} {
		ch <- prometheus.MustNewConstMetric(c.d, prometheus.CounterValue, float64(c.n), l...)
	}
}

// blockCounters returns the last block counters read for vms and, when
// they are older than blockRefresh, reads them again in the background.
func (m *metrics) blockCounters(vms []api.VM) map[string]map[string]map[string]int64 {
	m.blockMu.Lock()
	defer m.blockMu.Unlock()
	if !m.blockBusy && time.Since(m.blockAt) > m.blockRefresh {
		var names []string
		for _, v := range vms {
			if v.PID > 0 && (v.State == api.VMRunning || v.State == api.VMStarting || v.State == api.VMPaused) {
				names = append(names, v.Name)
			}
		}
		m.blockBusy = true
		go m.refreshBlock(names)
	}
	return m.blockByVM
}

func (m *metrics) refreshBlock(names []string) {
	out := map[string]map[string]map[string]int64{}
	var mu sync.Mutex
	sem := make(chan struct{}, blockWorkers)
	var wg sync.WaitGroup
	for _, n := range names {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer func() { <-sem; wg.Done() }()
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			defer cancel()
			rep, err := m.s.ctl.VMCounters(ctx, n)
			if err != nil {
				return
			}
			devs := map[string]map[string]int64{}
			for dev, cs := range rep.Counters {
				if strings.HasPrefix(dev, "tap:") {
					continue // the tap's own counters are read at scrape
				}
				for k := range descBlock {
					if _, ok := cs[k]; ok {
						devs[dev] = cs
						break
					}
				}
			}
			mu.Lock()
			out[n] = devs
			mu.Unlock()
		}()
	}
	wg.Wait()
	m.blockMu.Lock()
	m.blockByVM, m.blockAt, m.blockBusy = out, time.Now(), false
	m.blockMu.Unlock()
}

// instrument times a route's requests.
func (m *metrics) instrument(route string, h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		t0 := time.Now()
		sw := &statusWriter{ResponseWriter: w}
		h.ServeHTTP(sw, r)
		code := sw.status
		if code == 0 {
			code = http.StatusOK
		}
		m.requests.WithLabelValues(route, strconv.Itoa(code)).Observe(time.Since(t0).Seconds())
	})
}

// followBoots observes boot durations from the event log until ctx ends:
// from vm.created (or vm.started when no create is pending) to the next
// vm.healthy of the same VM.
func (m *metrics) followBoots(ctx context.Context) {
	sub := m.bootSub
	if sub == nil {
		return
	}
	defer func() { sub.Cancel() }()
	type pending struct {
		at     time.Time
		plugin string
	}
	since := map[string]pending{}
	for {
		select {
		case <-ctx.Done():
			return
		case e, ok := <-sub.C:
			if !ok {
				// Dropped for falling behind: boots in flight are lost
				// to the histogram; take a new subscription.
				sub = m.s.ctl.Events().Subscribe(1024)
				clear(since)
				continue
			}
			switch e.Type {
			case api.EventVMCreated, api.EventVMStarted:
				if _, ok := since[e.ResourceID]; ok && e.Type == api.EventVMStarted {
					continue
				}
				var plugin string
				if v, err := m.s.ctl.VM(ctx, e.ResourceID); err == nil {
					plugin = v.Plugin
				}
				since[e.ResourceID] = pending{e.Timestamp, plugin}
			case api.EventVMHealthy:
				if p, ok := since[e.ResourceID]; ok {
					m.boots.WithLabelValues(p.plugin).Observe(e.Timestamp.Sub(p.at).Seconds())
					delete(since, e.ResourceID)
				}
			case api.EventVMStopped, api.EventVMCrashed, api.EventVMFailed, api.EventVMDeleted:
				delete(since, e.ResourceID)
			}
		}
	}
}

// metricsHandler serves the registry.
func (m *metrics) handler() http.Handler {
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{ErrorHandling: promhttp.ContinueOnError})
}
