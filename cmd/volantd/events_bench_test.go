package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/volantvm/volant/lib/api"
	"github.com/volantvm/volant/lib/client"
	"github.com/volantvm/volant/lib/testutil/netnstest"
)

// BenchmarkEventFanout measures volantd's event stream under load: S
// subscribers (default 1000) each read GET /api/v1/events on volantd's unix
// socket while a deployment of the fake Cloud Hypervisor's plugin scales
// from 0 to N replicas (default 200: real volant-launch supervisors and
// taps in a private namespace, as BenchmarkDaemonScale). Every subscriber
// must receive every event of the scale-up (one that is dropped for
// falling behind resumes with Last-Event-ID, as clients do; resumptions
// are counted). The figure is each delivery's lag: its arrival at the
// subscriber minus the event's timestamp (taken in the transaction that
// wrote it, so the lag includes the commit). Side by side, in one run: the
// same scale-up watched by one subscriber. bench/volantd-events/run.sh
// runs it and writes $VOLANT_BENCH_OUT. It asserts nothing about speed.
func BenchmarkEventFanout(b *testing.B) {
	netnstest.Require(b, "sh", "mount")
	n, subs := 200, 1000
	if v, err := strconv.Atoi(os.Getenv("VOLANT_BENCH_VMS")); err == nil && v > 0 {
		n = v
	}
	if v, err := strconv.Atoi(os.Getenv("VOLANT_BENCH_SUBSCRIBERS")); err == nil && v > 0 {
		subs = v
	}
	h := newFakeHost(b)
	h.bin = realBins(b)
	d := h.start(b, "--subnet", "192.168.124.0/22")
	ctx := context.Background()
	if _, err := d.c.InstallPlugin(ctx, h.manifest, client.InstallOptions{}); err != nil {
		b.Fatal(err)
	}
	if _, err := d.c.CreateDeployment(ctx, api.CreateDeploymentRequest{Name: "fan", Plugin: "app", Replicas: 0}); err != nil {
		b.Fatal(err)
	}
	phases := []int{1, subs}
	results := map[string]any{}
	var p99s []float64
	for _, s := range phases {
		r := fanoutPhase(b, d, n, s)
		results[fmt.Sprintf("subscribers_%d", s)] = r
		p99s = append(p99s, r["lag_p99_ms"].(float64))
		fmt.Fprintf(os.Stderr, "%d subscribers: %v events each, lag p50 %v ms, p99 %v ms, max %v ms, %v resumptions\n",
			s, r["events"], r["lag_p50_ms"], r["lag_p99_ms"], r["lag_max_ms"], r["resumptions"])
	}
	res := map[string]any{
		"benchmark":   "volantd-events",
		"date":        time.Now().UTC().Format(time.RFC3339),
		"vms":         n,
		"subscribers": subs,
		"phases":      results,
		"ratio_lag_p99": func() float64 {
			if p99s[0] == 0 {
				return 0
			}
			return round2(p99s[1] / p99s[0])
		}(),
		"method":       "deployment scaled 0 -> N (fake Cloud Hypervisor), every event of the scale-up read by every subscriber on volantd's unix socket; lag = arrival - event timestamp; phases: 1 subscriber, then S",
		"host_loadavg": loadavg(),
		"host_cpus":    runtime.NumCPU(),
	}
	js, _ := json.MarshalIndent(res, "", "  ")
	fmt.Printf("%s\n", js)
	if p := os.Getenv("VOLANT_BENCH_OUT"); p != "" {
		os.MkdirAll(filepath.Dir(p), 0o755)
		if err := os.WriteFile(p, append(js, '\n'), 0o644); err != nil {
			b.Fatal(err)
		}
	}
}

// fanoutPhase scales deployment "fan" from 0 to n with s subscribers
// reading the stream, then back to 0, and returns the phase's figures.
func fanoutPhase(b *testing.B, d *volantdProc, n, s int) map[string]any {
	ctx := context.Background()
	hl, err := d.c.Health(ctx)
	if err != nil {
		b.Fatal(err)
	}
	from := hl.LastEventID
	sctx, stop := context.WithCancel(ctx)
	defer stop()
	subsc := make([]*subscriber, s)
	var connected sync.WaitGroup
	for i := range subsc {
		subsc[i] = &subscriber{sock: d.sock, last: from}
		connected.Add(1)
		go subsc[i].run(sctx, &connected)
	}
	connected.Wait()
	t0 := time.Now()
	if _, err := d.c.ScaleDeployment(ctx, "fan", n); err != nil {
		b.Fatal(err)
	}
	waitTracked(b, d, n)
	scaled := time.Since(t0)
	if hl, err = d.c.Health(ctx); err != nil {
		b.Fatal(err)
	}
	end := hl.LastEventID
	for deadline := time.Now().Add(5 * time.Minute); ; time.Sleep(100 * time.Millisecond) {
		behind := 0
		for _, sb := range subsc {
			if sb.lastID() < end {
				behind++
			}
		}
		if behind == 0 {
			break
		}
		if time.Now().After(deadline) {
			b.Fatalf("%d of %d subscribers did not receive events up to %d", behind, s, end)
		}
	}
	stop()
	var lags []float64
	resumed, missing := 0, 0
	for _, sb := range subsc {
		sb.mu.Lock()
		for id := from + 1; id <= end; id++ {
			if _, ok := sb.seen[id]; !ok {
				missing++
			}
		}
		for id, l := range sb.seen {
			if id <= end {
				lags = append(lags, l)
			}
		}
		resumed += sb.resumed
		sb.mu.Unlock()
	}
	if missing > 0 {
		b.Fatalf("%d deliveries missing (events %d-%d, %d subscribers)", missing, from+1, end, s)
	}
	sort.Float64s(lags)
	pct := func(p float64) float64 { return round2(lags[int(p*float64(len(lags)-1))]) }
	r := map[string]any{
		"subscribers": s, "events": end - from, "deliveries": len(lags), "resumptions": resumed,
		"scale_up_seconds": round2(scaled.Seconds()),
		"lag_p50_ms":       pct(0.50), "lag_p90_ms": pct(0.90), "lag_p99_ms": pct(0.99), "lag_max_ms": round2(lags[len(lags)-1]),
	}
	// Back to zero for the next phase.
	if _, err := d.c.ScaleDeployment(ctx, "fan", 0); err != nil {
		b.Fatal(err)
	}
	for deadline := time.Now().Add(5 * time.Minute); ; time.Sleep(500 * time.Millisecond) {
		vms, err := d.c.ListVMs(ctx, api.VMFilter{})
		if err == nil && len(vms) == 0 {
			break
		}
		if time.Now().After(deadline) {
			b.Fatalf("scale-down left %d VMs: %v", len(vms), err)
		}
	}
	return r
}

// subscriber reads the event stream, resuming with Last-Event-ID when the
// daemon drops it, and records each event's lag in milliseconds by id.
type subscriber struct {
	sock string

	mu      sync.Mutex
	last    int64
	seen    map[int64]float64
	resumed int
}

func (s *subscriber) lastID() int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.last
}

func (s *subscriber) run(ctx context.Context, connected *sync.WaitGroup) {
	s.seen = map[int64]float64{}
	hc := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", s.sock)
	}}}
	first := true
	for ctx.Err() == nil {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://volantd/api/v1/events", nil)
		req.Header.Set("Last-Event-ID", strconv.FormatInt(s.lastID(), 10))
		resp, err := hc.Do(req)
		if err != nil {
			if first {
				connected.Done()
				first = false
			}
			time.Sleep(50 * time.Millisecond)
			continue
		}
		if first {
			connected.Done()
			first = false
		}
		s.read(resp)
		resp.Body.Close()
		if ctx.Err() == nil {
			s.mu.Lock()
			s.resumed++
			s.mu.Unlock()
		}
	}
}

var tsKey = []byte(`"timestamp":"`)

// read consumes one response: "id: N" lines, then the event's data line,
// whose timestamp is cut out without decoding the whole event.
func (s *subscriber) read(resp *http.Response) {
	br := bufio.NewReaderSize(resp.Body, 64<<10)
	var id int64
	for {
		line, err := br.ReadSlice('\n')
		if err != nil {
			return
		}
		now := time.Now()
		switch {
		case bytes.HasPrefix(line, []byte("id: ")):
			id, _ = strconv.ParseInt(string(bytes.TrimSpace(line[4:])), 10, 64)
		case bytes.HasPrefix(line, []byte("data: ")) && id > 0:
			i := bytes.Index(line, tsKey)
			if i < 0 {
				continue
			}
			rest := line[i+len(tsKey):]
			j := bytes.IndexByte(rest, '"')
			if j < 0 {
				continue
			}
			ts, err := time.Parse(time.RFC3339Nano, string(rest[:j]))
			if err != nil {
				continue
			}
			s.mu.Lock()
			s.seen[id] = float64(now.Sub(ts).Microseconds()) / 1000
			if id > s.last {
				s.last = id
			}
			s.mu.Unlock()
		}
	}
}
