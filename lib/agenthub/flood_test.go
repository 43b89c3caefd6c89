package agenthub_test

// The workload log pipeline at full rate without an emulated CPU: the
// guest's side (kestrel's agent capturing the workload's stdout and stderr
// into lib/kestrel/outlog, and lib/kestrel/access serving it over the agent
// channel) runs in one process of this test binary, the host's side (this
// package's Hub writing lib/workloadlog) in another, and the test reads the
// host's log as `volant-launch logs -f` does. The workload is the
// logflood program the real-VM test TestVMWorkloadLogFlood runs in a guest.
//
// The channel is a unix stream socket the guest process listens on and the
// Hub dials, as it dials QEMU's chardev socket in production: the host's
// end is exactly what it is there. In a guest kestrel's end is the
// virtio-serial port, whose writes block while the host does not take the
// bytes; a socket's writes block the same way once its buffer is full, so
// a stalled host pushes back on kestrel's logs stream just as it does
// through QEMU (where QEMU's own buffers add a little more in flight).

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/volantvm/volant/lib/agentchan"
	"github.com/volantvm/volant/lib/agenthub"
	"github.com/volantvm/volant/lib/kestrel/access"
	"github.com/volantvm/volant/lib/kestrel/agent"
	"github.com/volantvm/volant/lib/kestrel/reaper"
	"github.com/volantvm/volant/lib/manifest"
	"github.com/volantvm/volant/lib/testutil/guesttest"
	"github.com/volantvm/volant/lib/testutil/wait"
	"github.com/volantvm/volant/lib/workloadlog"
)

// The helper processes' environment.
const (
	roleEnv     = "VOLANT_FLOOD_ROLE"     // "guest" or "host"
	channelEnv  = "VOLANT_FLOOD_CHANNEL"  // the channel's socket
	workloadEnv = "VOLANT_FLOOD_WORKLOAD" // the workload's argv, JSON (guest)
	logEnv      = "VOLANT_FLOOD_LOG"      // the workload log (host)
	clientEnv   = "VOLANT_FLOOD_CLIENTS"  // the Hub's client socket (host)
	// VOLANT_FLOOD_CPUPROFILE, when set, is a directory where each helper
	// process writes a CPU profile (guest.pprof, host.pprof) of its run.
	profileEnv = "VOLANT_FLOOD_CPUPROFILE"
)

// floodRotation is the host log's rotation in these runs: files larger than
// the default so that a round of 10 s at 10 MB/s (about 170 MB of JSON)
// rotates a few times, but the test's follower, a second or more behind on
// a loaded machine, is not lapped by the rotation (it would end with
// UNAVAILABLE, having missed entries the pipeline delivered).
var floodRotation = workloadlog.Rotation{MaxBytes: 64 << 20, Files: 8}

func TestMain(m *testing.M) {
	if role := os.Getenv(roleEnv); role != "" {
		run := map[string]func() int{"guest": runGuest, "host": runHost}[role]
		if run == nil {
			fmt.Fprintln(os.Stderr, "unknown role", role)
			os.Exit(2)
		}
		go stopWithParent()
		if dir := os.Getenv(profileEnv); dir != "" {
			f, err := os.Create(filepath.Join(dir, role+".pprof"))
			if err == nil && pprof.StartCPUProfile(f) == nil {
				code := run()
				pprof.StopCPUProfile()
				f.Close()
				os.Exit(code)
			}
		}
		os.Exit(run())
	}
	os.Exit(m.Run())
}

// stopWithParent ends a helper process (as SIGTERM does, so the guest
// process stops its workload) when the test process is gone without
// cleaning up (killed, or panicked at its timeout).
func stopWithParent() {
	parent := os.Getppid()
	for range time.Tick(200 * time.Millisecond) {
		if os.Getppid() != parent {
			syscall.Kill(os.Getpid(), syscall.SIGTERM)
			return
		}
	}
}

// serialConsole stands in for the guest's serial console, kestrel's other
// destination of the workload's output: it takes about 11 KB/s.
type serialConsole struct{}

func (serialConsole) Write(p []byte) (int, error) {
	time.Sleep(time.Duration(len(p)) * time.Second / 11_000)
	return len(p), nil
}

// runGuest is kestrel's steady state as lib/kestrel/boot wires it: the agent
// supervises the workload and keeps its output, the access server serves
// the channel, one host session at a time (as on a virtio-serial port).
func runGuest() int {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	var argv []string
	if err := json.Unmarshal([]byte(os.Getenv(workloadEnv)), &argv); err != nil {
		fmt.Fprintln(os.Stderr, "guest: workload:", err)
		return 2
	}
	m := &manifest.Manifest{Name: "flood", Version: "1", Workload: manifest.Workload{Entrypoint: argv, Restart: "no"}}
	r := reaper.New(nil)
	rctx, stopReaper := context.WithCancel(context.Background())
	defer stopReaper()
	go r.Run(rctx)
	a := agent.New(agent.Config{VM: "flood", Plugin: "flood", Boot: "none", Version: "test", Listen: "127.0.0.1:0",
		Console: serialConsole{}, Manifest: m})
	acc := access.New(access.Config{VM: "flood", Version: "test", Reaper: r, Output: a.Output(), WorkloadEnv: a.WorkloadEnv})
	ln, err := net.Listen("unix", os.Getenv(channelEnv))
	if err != nil {
		fmt.Fprintln(os.Stderr, "guest:", err)
		return 1
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			acc.ServeConn(ctx, c)
			c.Close()
		}
	}()
	api, err := a.Listen()
	if err != nil {
		fmt.Fprintln(os.Stderr, "guest:", err)
		return 1
	}
	if err := a.Run(ctx, api, r, nil); err != nil {
		fmt.Fprintln(os.Stderr, "guest:", err)
		return 1
	}
	return 0
}

// runHost is the VM supervisor's part (lib/launch's startAgent): a Hub that
// dials the channel and collects the workload's output into the log.
func runHost() int {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	logs, err := workloadlog.Open(os.Getenv(logEnv), floodRotation)
	if err != nil {
		fmt.Fprintln(os.Stderr, "host:", err)
		return 1
	}
	dial := func(ctx context.Context) (io.ReadWriteCloser, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", os.Getenv(channelEnv))
	}
	hub, err := agenthub.Start(ctx, agenthub.Options{VM: "flood", Dial: dial, Socket: os.Getenv(clientEnv), Logs: logs})
	if err != nil {
		fmt.Fprintln(os.Stderr, "host:", err)
		return 1
	}
	<-ctx.Done()
	hub.Close()
	if err := logs.Close(); err != nil {
		fmt.Fprintln(os.Stderr, "host:", err)
		return 1
	}
	return 0
}

// pipeline is a running guest process, host process and log follower.
type pipeline struct {
	dir, trigger, done, log string
	guest, host             *exec.Cmd
	workload                int // pid
	entries                 chan workloadlog.Entry
	round                   int
}

func startPipeline(t testing.TB) *pipeline {
	t.Helper()
	flood := guesttest.StaticInit(t, "cmd/volant-launch/testdata/logflood")
	dir := t.TempDir()
	p := &pipeline{dir: dir, trigger: filepath.Join(dir, "trigger"), done: filepath.Join(dir, "done"),
		log: filepath.Join(dir, "workload.log"), entries: make(chan workloadlog.Entry, 1<<16)}
	channel := filepath.Join(dir, "channel.sock")
	argv, _ := json.Marshal([]string{flood, "-trigger", p.trigger, "-done", p.done})
	p.guest = startRole(t, "guest", channel, workloadEnv+"="+string(argv))
	t.Cleanup(func() {
		if p.workload > 0 {
			syscall.Kill(p.workload, syscall.SIGKILL) // in case the guest process could not stop it
		}
	})
	waitUntil(t, 30*time.Second, "the guest process's workload", func() bool {
		p.workload = childOf(p.guest.Process.Pid)
		return p.workload > 0
	})
	waitUntil(t, 30*time.Second, "the guest process's channel socket", func() bool {
		_, err := os.Stat(channel)
		return err == nil
	})
	clients := filepath.Join(dir, "clients.sock")
	p.host = startRole(t, "host", channel, logEnv+"="+p.log, clientEnv+"="+clients)
	// The Hub answers a client's logs request once its guest session is up.
	waitUntil(t, 30*time.Second, "the host process's session with the guest", func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		sess, err := agentchan.Dial(ctx, clients)
		if err != nil {
			return false
		}
		defer sess.Close()
		st, err := sess.Call(ctx, agentchan.LogsRequest{Op: agentchan.OpLogs, From: -1}, &agentchan.Reply{})
		if err != nil {
			return false
		}
		st.Abort()
		return true
	})
	ctx, cancel := context.WithCancel(context.Background())
	followed := make(chan struct{})
	go func() {
		defer close(followed)
		defer close(p.entries)
		err := workloadlog.Read(ctx, p.log, workloadlog.ReadOptions{Follow: true, Poll: 20 * time.Millisecond, Files: floodRotation.Files},
			func(e workloadlog.Entry) error {
				select {
				case p.entries <- e:
					return nil
				case <-ctx.Done():
					return ctx.Err()
				}
			})
		if err != nil && !errors.Is(err, context.Canceled) {
			t.Errorf("following the workload log: %v", err)
		}
	}()
	t.Cleanup(func() { cancel(); <-followed })
	return p
}

// floodResult is one round as the host's log showed it, with the
// processes' cost.
type floodResult struct {
	AskedBps    int     `json:"asked_bytes_per_s"`
	Stalled     bool    `json:"host_stalled"`
	Written     int64   `json:"written_bytes"`
	Seconds     float64 `json:"workload_seconds"`
	WrittenMBps float64 `json:"written_mb_per_s"`
	Received    int64   `json:"received_bytes"`
	Lost        int64   `json:"lost_bytes"`
	Gaps        int     `json:"gap_entries"`
	Missing     int     `json:"lines_missing"`
	// Latency from kestrel's capture of a line (its entry's time) to the
	// test's reading it from the host's log (polled every 20 ms), over
	// the round's lines: the median, the 99th percentile and the most.
	LatencyP50S float64 `json:"latency_p50_s"`
	LatencyP99S float64 `json:"latency_p99_s"`
	LatencyMaxS float64 `json:"latency_max_s"`
	// CPU seconds over the round.
	GuestCPU    float64 `json:"guest_cpu_s"`
	HostCPU     float64 `json:"host_cpu_s"`
	WorkloadCPU float64 `json:"workload_cpu_s"`
	// The guest process's resident memory, the most sampled during the
	// round: all of it, and its anonymous part (the heap and stacks,
	// without the test binary's mapped code).
	GuestRSSKiB     int64   `json:"guest_rss_kib"`
	GuestRSSAnonKiB int64   `json:"guest_rss_anon_kib"`
	Load1           float64 `json:"load1"`
}

// flood runs one logflood round: rate bytes/s over both streams for
// seconds, or until limit bytes (0: no limit). With stall the host process
// is stopped (SIGSTOP) before the round starts and continued when the
// workload has written everything. It accounts for every byte: what
// arrived in the log plus what gap entries count equals what the workload
// wrote; each line arrives whole, exactly once, in order per stream, and
// lines are missing only where a gap entry is.
func (p *pipeline) flood(t testing.TB, rate int, seconds float64, limit int64, stall bool) floodResult {
	t.Helper()
	p.round++
	round := p.round
	res := floodResult{AskedBps: rate, Stalled: stall, Load1: load1()}
	cpu0 := [3]float64{cpuSeconds(p.guest.Process.Pid), cpuSeconds(p.host.Process.Pid), cpuSeconds(p.workload)}
	if stall {
		p.host.Process.Signal(syscall.SIGSTOP)
	}
	tmp := p.trigger + ".tmp"
	if err := os.WriteFile(tmp, fmt.Appendf(nil, "%d %g %d\n", rate, seconds, limit), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, p.trigger); err != nil {
		t.Fatal(err)
	}
	var rss, anon atomic.Int64
	sampled := make(chan struct{})
	stopSampling := make(chan struct{})
	go func() {
		defer close(sampled)
		marker := fmt.Appendf(nil, "flood-done round=%d ", round)
		wrote := false
		tick := time.NewTicker(50 * time.Millisecond)
		defer tick.Stop()
		for {
			all, a := rssKiB(p.guest.Process.Pid)
			rss.Store(max(rss.Load(), all))
			anon.Store(max(anon.Load(), a))
			if !wrote {
				if b, _ := os.ReadFile(p.done); bytes.Contains(b, marker) {
					wrote = true
					if stall {
						p.host.Process.Signal(syscall.SIGCONT)
					}
				}
			}
			select {
			case <-stopSampling:
				return
			case <-tick.C:
			}
		}
	}()
	defer func() {
		close(stopSampling)
		<-sampled
		if stall {
			p.host.Process.Signal(syscall.SIGCONT)
		}
	}()

	type streamCount struct {
		bytes    int64
		next     int  // the next line number expected
		missing  int  // lines skipped over a gap
		afterGap bool // a gap entry came since this stream's last whole line
		pending  []byte
	}
	counts := map[string]*streamCount{agentchan.Stdout: {}, agentchan.Stderr: {}}
	tags := map[string]string{agentchan.Stdout: "out ", agentchan.Stderr: "err "}
	var summaryLen int64
	var latencies []float64
	received := func() int64 { return counts[agentchan.Stdout].bytes + counts[agentchan.Stderr].bytes - summaryLen }
	idle := time.NewTimer(time.Minute)
	defer idle.Stop()
	for summaryLen == 0 || received()+res.Lost < res.Written {
		var e workloadlog.Entry
		var ok bool
		select {
		case e, ok = <-p.entries:
		case <-idle.C:
			t.Fatalf("round %d: no log entry for a minute (received %d, lost %d of %d)", round, received(), res.Lost, res.Written)
		}
		if !ok {
			t.Fatalf("round %d: the log's follower ended", round)
		}
		idle.Reset(time.Minute)
		if !e.Time.IsZero() {
			latencies = append(latencies, time.Since(e.Time).Seconds())
		}
		if e.Gap > 0 {
			res.Lost += e.Gap
			res.Gaps++
			// Both streams share the guest's store: either may have lost
			// lines, and a line cut by the gap is whole on neither side.
			for _, c := range counts {
				c.afterGap, c.pending = true, nil
			}
			continue
		}
		c := counts[e.Stream]
		if c == nil {
			t.Fatalf("round %d: an entry of stream %q", round, e.Stream)
		}
		d := e.Data()
		c.bytes += int64(len(d))
		if e.Partial {
			c.pending = append(c.pending, d...)
			continue
		}
		line := d
		if len(c.pending) > 0 {
			line = append(c.pending, d...)
			c.pending = nil
		}
		if bytes.HasPrefix(line, []byte("flood-done ")) {
			var n int
			var out, errs int64
			if _, err := fmt.Sscanf(string(line), "flood-done round=%d stdout=%d stderr=%d seconds=%g\n", &n, &out, &errs, &res.Seconds); err != nil || n != round {
				t.Fatalf("round %d: summary %q: %v", round, line, err)
			}
			res.Written, summaryLen = out+errs, int64(len(line))
			continue
		}
		seq, ok := floodLine(line, tags[e.Stream])
		if !ok {
			if c.afterGap {
				continue // the tail of a line whose head was dropped
			}
			t.Fatalf("round %d: a %s line arrived damaged: %q", round, e.Stream, line)
		}
		switch {
		case seq == c.next:
		case seq > c.next && c.afterGap:
			c.missing += seq - c.next
		default:
			t.Fatalf("round %d: %s: line %d after line %d with no gap entry between (duplicated or reordered)", round, e.Stream, seq, c.next-1)
		}
		c.next, c.afterGap = seq+1, false
	}
	res.Received = received()
	for _, c := range counts {
		res.Missing += c.missing
	}
	if len(latencies) > 0 {
		slices.Sort(latencies)
		res.LatencyP50S = latencies[len(latencies)/2]
		res.LatencyP99S = latencies[len(latencies)*99/100]
		res.LatencyMaxS = latencies[len(latencies)-1]
	}
	if res.Seconds > 0 {
		res.WrittenMBps = float64(res.Written) / res.Seconds / 1e6
	}
	res.GuestCPU = cpuSeconds(p.guest.Process.Pid) - cpu0[0]
	res.HostCPU = cpuSeconds(p.host.Process.Pid) - cpu0[1]
	res.WorkloadCPU = cpuSeconds(p.workload) - cpu0[2]
	res.GuestRSSKiB, res.GuestRSSAnonKiB = rss.Load(), anon.Load()
	if res.Received+res.Lost != res.Written {
		t.Errorf("round %d: received %d + lost %d (counted) != written %d", round, res.Received, res.Lost, res.Written)
	}
	// A gap may cut a line of each stream at each of its ends: such a line
	// is missing, though only part of it was lost.
	if int64(res.Missing-4*res.Gaps)*100 > res.Lost {
		t.Errorf("round %d: %d lines missing, more than the %d gaps' %d bytes hold", round, res.Missing, res.Gaps, res.Lost)
	}
	return res
}

func (r floodResult) String() string {
	return fmt.Sprintf("asked %.1f MB/s: the workload wrote %.1f MB in %.2f s (%.2f MB/s); the host's log received %.1f MB, %d gap entries for %.1f MB, %d lines missing; latency p50 %.3f s, p99 %.3f s, max %.3f s; CPU s guest %.2f host %.2f workload %.2f; guest RSS %.1f MiB (%.1f MiB anonymous); load %.1f",
		float64(r.AskedBps)/1e6, float64(r.Written)/1e6, r.Seconds, r.WrittenMBps, float64(r.Received)/1e6, r.Gaps, float64(r.Lost)/1e6,
		r.Missing, r.LatencyP50S, r.LatencyP99S, r.LatencyMaxS, r.GuestCPU, r.HostCPU, r.WorkloadCPU, float64(r.GuestRSSKiB)/1024, float64(r.GuestRSSAnonKiB)/1024, r.Load1)
}

// floodLine checks a logflood line, "<tag><9 digits> " then x's to 100
// bytes with the newline, and returns its number.
func floodLine(line []byte, tag string) (int, bool) {
	if len(line) != 100 || !bytes.HasPrefix(line, []byte(tag)) || line[len(tag)+9] != ' ' || line[99] != '\n' {
		return 0, false
	}
	n, err := strconv.Atoi(string(line[len(tag) : len(tag)+9]))
	if err != nil {
		return 0, false
	}
	for _, c := range line[len(tag)+10 : 99] {
		if c != 'x' {
			return 0, false
		}
	}
	return n, true
}

// TestLogPipelineFlood is the issue's "no loss at 10 MB/s of workload output
// for 10 s", measured on the real pipeline without an emulated guest CPU
// (TestVMWorkloadLogFlood's guest cannot produce 10 MB/s under TCG).
// Round 1 asks for 10 MB/s for 10 s ($VOLANT_TEST_FLOOD_RATE bytes/s) over
// both streams with the host reading: every line must arrive, exactly
// once, in order, with no gap entry (in one of up to three tries: see
// below). Round 2 writes 24 MiB with the host
// process stopped (SIGSTOP, as the VM test stops the supervisor), so the
// guest's 4 MiB store overflows: the loss must be counted exactly by gap
// entries.
func TestLogPipelineFlood(t *testing.T) {
	rate := 10_000_000
	if v, err := strconv.Atoi(os.Getenv("VOLANT_TEST_FLOOD_RATE")); err == nil && v > 0 {
		rate = v
	}
	p := startPipeline(t)
	// Every round accounts for every byte (flood fails on a silent drop).
	// A gap with the host reading means the host's side fell more than the
	// store's 4 MiB behind: what a pipeline too slow for 10 MB/s does, and
	// also what a host process starved of CPU for a second or two on a
	// loaded machine does (seen twice at load averages of 15-18 on two
	// shared cores). So a round that lost output is run again, up to three
	// rounds: a pipeline that cannot carry the rate loses in all three.
	var r floodResult
	for try := 1; ; try++ {
		r = p.flood(t, rate, 10, 0, false)
		t.Logf("round 1, try %d: %s", try, r)
		if r.Gaps == 0 && r.Missing == 0 {
			break
		}
		if try == 3 {
			t.Errorf("round 1: output was lost with the host reading in %d tries; the last: %d gap entries for %d bytes, %d lines missing", try, r.Gaps, r.Lost, r.Missing)
			break
		}
	}
	if r.WrittenMBps < 0.9*float64(rate)/1e6 {
		t.Logf("round 1: the workload reached only %.2f of the %.2f MB/s asked (a loaded machine): the figure proves less than asked", r.WrittenMBps, float64(rate)/1e6)
	}

	r = p.flood(t, rate, 0, 24<<20, true)
	t.Logf("round 2 (host stopped): %s", r)
	// What the host got is what the store held plus what was in flight.
	if r.Gaps == 0 || r.Received > 8<<20 {
		t.Errorf("round 2: %d of %d bytes lost in %d gap entries: the guest's 4 MiB store should have overflowed", r.Lost, r.Written, r.Gaps)
	}
	if r.Missing == 0 {
		t.Error("round 2: no lines missing although bytes were lost")
	}
}

// BenchmarkLogPipelineFlood measures what TestLogPipelineFlood checks:
// $VOLANT_BENCH_N rounds (5) of $VOLANT_BENCH_RATE bytes/s (10 MB/s) for
// 10 s with the host reading, then one round of 24 MiB with the host
// stopped. It prints every round and the medians, and writes them as JSON
// to $VOLANT_BENCH_OUT when set. Run it with -benchtime 1x
// (bench/logs/run.sh).
func BenchmarkLogPipelineFlood(b *testing.B) {
	n, rate := 5, 10_000_000
	if v, err := strconv.Atoi(os.Getenv("VOLANT_BENCH_N")); err == nil && v > 0 {
		n = v
	}
	if v, err := strconv.Atoi(os.Getenv("VOLANT_BENCH_RATE")); err == nil && v > 0 {
		rate = v
	}
	for b.Loop() {
		p := startPipeline(b)
		var rounds []floodResult
		for i := range n {
			r := p.flood(b, rate, 10, 0, false)
			fmt.Printf("round %d: %s\n", i+1, r)
			rounds = append(rounds, r)
		}
		stalled := p.flood(b, rate, 0, 24<<20, true)
		fmt.Printf("host stopped: %s\n", stalled)
		med := func(f func(floodResult) float64) float64 {
			v := make([]float64, len(rounds))
			for i, r := range rounds {
				v[i] = f(r)
			}
			slices.Sort(v)
			if len(v)%2 == 1 {
				return v[len(v)/2]
			}
			return (v[len(v)/2-1] + v[len(v)/2]) / 2
		}
		gaps := 0
		for _, r := range rounds {
			gaps += r.Gaps
		}
		maxAnon := int64(0)
		for _, r := range rounds {
			maxAnon = max(maxAnon, r.GuestRSSAnonKiB)
		}
		summary := struct {
			AskedMBps       float64       `json:"asked_mb_per_s"`
			Rounds          []floodResult `json:"rounds"`
			Stalled         floodResult   `json:"host_stalled"`
			Gaps            int           `json:"gap_entries_while_reading"`
			WrittenMBps     float64       `json:"median_written_mb_per_s"`
			LatencyP99S     float64       `json:"median_latency_p99_s"`
			LatencyMaxS     float64       `json:"median_latency_max_s"`
			GuestCPUShare   float64       `json:"median_guest_cpu_per_s"`
			HostCPUShare    float64       `json:"median_host_cpu_per_s"`
			WorkloadCPU     float64       `json:"median_workload_cpu_per_s"`
			GuestRSSAnonKiB int64         `json:"max_guest_rss_anon_kib"`
			Load1           float64       `json:"median_load1"`
		}{
			AskedMBps: float64(rate) / 1e6, Rounds: rounds, Stalled: stalled, Gaps: gaps,
			WrittenMBps:     med(func(r floodResult) float64 { return r.WrittenMBps }),
			LatencyP99S:     med(func(r floodResult) float64 { return r.LatencyP99S }),
			LatencyMaxS:     med(func(r floodResult) float64 { return r.LatencyMaxS }),
			GuestCPUShare:   med(func(r floodResult) float64 { return r.GuestCPU / r.Seconds }),
			HostCPUShare:    med(func(r floodResult) float64 { return r.HostCPU / r.Seconds }),
			WorkloadCPU:     med(func(r floodResult) float64 { return r.WorkloadCPU / r.Seconds }),
			GuestRSSAnonKiB: maxAnon,
			Load1:           med(func(r floodResult) float64 { return r.Load1 }),
		}
		fmt.Printf("median of %d rounds at %.1f MB/s asked: written %.2f MB/s, %d gap entries, latency p99 %.3f s (max %.3f s); CPU per second of flood: guest %.2f, host %.2f, workload %.2f; guest process's anonymous RSS at most %.1f MiB; load average %.1f\n",
			n, summary.AskedMBps, summary.WrittenMBps, gaps, summary.LatencyP99S, summary.LatencyMaxS,
			summary.GuestCPUShare, summary.HostCPUShare, summary.WorkloadCPU, float64(maxAnon)/1024, summary.Load1)
		fmt.Printf("host stopped: %.1f MB written, %.1f MB received, %.1f MB counted lost in %d gap entries (received + lost = written: %v)\n",
			float64(stalled.Written)/1e6, float64(stalled.Received)/1e6, float64(stalled.Lost)/1e6, stalled.Gaps, stalled.Received+stalled.Lost == stalled.Written)
		if out := os.Getenv("VOLANT_BENCH_OUT"); out != "" {
			js, _ := json.MarshalIndent(summary, "", "  ")
			if err := os.WriteFile(out, append(js, '\n'), 0o644); err != nil {
				b.Fatal(err)
			}
		}
	}
}

func waitUntil(t testing.TB, d time.Duration, what string, cond func() bool) {
	t.Helper()
	wait.Until(t, d, what, cond)
}

// childOf returns a child process of pid (0 if none).
func childOf(pid int) int {
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		c, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if f := statFields(c); len(f) > 1 && f[1] == strconv.Itoa(pid) {
			return c
		}
	}
	return 0
}

// statFields are /proc/pid/stat's fields after the command's name: state
// is [0], ppid [1], utime [11], stime [12].
func statFields(pid int) []string {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return nil
	}
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return nil
	}
	return strings.Fields(string(b[i+1:]))
}

// cpuSeconds is the user and system time pid used so far.
func cpuSeconds(pid int) float64 {
	f := statFields(pid)
	if len(f) < 13 {
		return math.NaN()
	}
	u, _ := strconv.ParseFloat(f[11], 64)
	s, _ := strconv.ParseFloat(f[12], 64)
	return (u + s) / 100 // USER_HZ
}

// rssKiB is pid's resident memory and its anonymous part.
func rssKiB(pid int) (all, anon int64) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		return 0, 0
	}
	for line := range strings.Lines(string(b)) {
		k, v, _ := strings.Cut(line, ":")
		fs := strings.Fields(v)
		if len(fs) == 0 {
			continue
		}
		n, _ := strconv.ParseInt(fs[0], 10, 64)
		switch k {
		case "VmRSS":
			all = n
		case "RssAnon":
			anon = n
		}
	}
	return all, anon
}

func load1() float64 {
	b, _ := os.ReadFile("/proc/loadavg")
	f := strings.Fields(string(b))
	if len(f) == 0 {
		return 0
	}
	v, _ := strconv.ParseFloat(f[0], 64)
	return v
}

// startRole runs this test binary again as the process of role ("guest":
// kestrel's agent and access server; "host": the hub) on the channel
// socket, with env added; the test's cleanup stops it (continuing it
// first, if a test stopped it) and logs what it wrote to stderr.
func startRole(t testing.TB, role, channel string, env ...string) *exec.Cmd {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), append(env, roleEnv+"="+role, channelEnv+"="+channel)...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGCONT)
		cmd.Process.Signal(syscall.SIGTERM)
		waited := make(chan struct{})
		go func() { cmd.Wait(); close(waited) }()
		select {
		case <-waited:
		case <-time.After(20 * time.Second):
			cmd.Process.Kill()
			<-waited
		}
		if s := strings.TrimSpace(stderr.String()); s != "" {
			t.Logf("%s process said: %s", role, s)
		}
	})
	return cmd
}
