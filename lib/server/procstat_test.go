package server

import (
	"math"
	"os"
	"os/exec"
	"testing"

	"github.com/prometheus/procfs"
	"github.com/vishvananda/netlink"
)

func TestParseProcStat(t *testing.T) {
	ps := float64(os.Getpagesize())
	for _, c := range []struct {
		name, line string
		cpu, rss   float64
		bad        bool
	}{
		{name: "plain",
			line: "4242 (cloud-hypervis) S 1 4242 4242 0 -1 4194560 1234 0 0 0 250 50 0 0 20 0 3 0 123456 123456789 2048 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0\n",
			cpu:  3, rss: 2048 * ps},
		{name: "a name with spaces and parentheses",
			line: "7 (a) b) (c) R 1 7 7 0 -1 0 0 0 0 0 1 2 0 0 20 0 1 0 5 100 10 0\n",
			cpu:  0.03, rss: 10 * ps},
		{name: "truncated before rss", line: "7 (x) R 1 7 7 0 -1 0 0 0 0 0 1 2 0 0 20 0 1 0 5 100\n", bad: true},
		{name: "no name", line: "7 x R 1", bad: true},
		{name: "not a number", line: "7 (x) R 1 7 7 0 -1 0 0 0 0 0 x 2 0 0 20 0 1 0 5 100 10 0\n", bad: true},
		{name: "empty", line: "", bad: true},
	} {
		got, err := parseProcStat([]byte(c.line))
		if c.bad {
			if err == nil {
				t.Errorf("%s: parsed %+v, want an error", c.name, got)
			}
			continue
		}
		if err != nil || math.Abs(got.cpuSeconds-c.cpu) > 1e-9 || float64(got.rssBytes) != c.rss {
			t.Errorf("%s: %+v %v, want cpu %v rss %v", c.name, got, err, c.cpu, c.rss)
		}
	}
}

// TestStatFilesAgainstProcfs reads this process's own /proc/<pid>/stat
// both ways, through the same open file three times: the CPU time may
// only grow between the reads, the resident memory stays within a few MiB.
func TestStatFilesAgainstProcfs(t *testing.T) {
	fs, err := procfs.NewDefaultFS()
	if err != nil {
		t.Fatal(err)
	}
	var s statFiles
	for range 3 {
		p, err := fs.Self()
		if err != nil {
			t.Fatal(err)
		}
		before, err := p.Stat()
		if err != nil {
			t.Fatal(err)
		}
		s.begin()
		got, err := s.stat(os.Getpid())
		s.end()
		if err != nil {
			t.Fatal(err)
		}
		after, _ := p.Stat()
		if got.cpuSeconds < before.CPUTime() || got.cpuSeconds > after.CPUTime() {
			t.Errorf("cpu %v, procfs %v then %v", got.cpuSeconds, before.CPUTime(), after.CPUTime())
		}
		if d := math.Abs(float64(got.rssBytes) - float64(before.ResidentMemory())); d > 8<<20 {
			t.Errorf("rss %d, procfs %d", got.rssBytes, before.ResidentMemory())
		}
	}
	if n := s.open(); n != 1 {
		t.Errorf("%d stat files open, want 1", n)
	}
}

// TestStatFilesLifetime: a process's stat file stays open between scrapes
// while the process runs, fails and is closed once it has exited (its pid
// may be someone else's by then), and is closed when a scrape no longer
// asks for it.
func TestStatFilesLifetime(t *testing.T) {
	var s statFiles
	start := func() *exec.Cmd {
		c := exec.Command("sleep", "60")
		if err := c.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Process.Kill(); c.Wait() })
		return c
	}
	a, b := start(), start()
	scrape := func(pids ...int) (errs []error) {
		s.begin()
		defer s.end()
		for _, p := range pids {
			_, err := s.stat(p)
			errs = append(errs, err)
		}
		return errs
	}
	if errs := scrape(a.Process.Pid, b.Process.Pid); errs[0] != nil || errs[1] != nil || s.open() != 2 {
		t.Fatalf("first scrape: %v, %d open", errs, s.open())
	}
	a.Process.Kill()
	a.Wait() // reaped: the open file's process is gone
	if errs := scrape(a.Process.Pid, b.Process.Pid); errs[0] == nil || errs[1] != nil || s.open() != 1 {
		t.Fatalf("after a's exit: %v, %d open (want a's read to fail and its file closed)", errs, s.open())
	}
	if scrape(); s.open() != 0 {
		t.Fatalf("a scrape without b left %d files open", s.open())
	}
}

func TestParseNetDev(t *testing.T) {
	in := `Inter-|   Receive                                                |  Transmit
 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed
    lo: 1234567      89    0    0    0     0          0         0  1234567      89    0    0    0     0       0          0
vt-s001:     100       2    0    0    0     0          0         0 18446744073709551615 7    0    0    0     0       0          0
  vbr0: 1 2 3
`
	got := parseNetDev([]byte(in))
	want := map[string]netDevCounters{
		"lo":      {rxBytes: 1234567, rxPackets: 89, txBytes: 1234567, txPackets: 89},
		"vt-s001": {rxBytes: 100, rxPackets: 2, txBytes: 18446744073709551615, txPackets: 7},
	}
	if len(got) != len(want) {
		t.Errorf("parsed %v, want %v (a short line is no link)", got, want)
	}
	for n, w := range want {
		if got[n] != w {
			t.Errorf("%s: %+v, want %+v", n, got[n], w)
		}
	}
}

// TestNetDevAgainstNetlink reads the loopback's counters from
// /proc/thread-self/net/dev between two netlink reads of the same link:
// each counter lies between the two.
func TestNetDevAgainstNetlink(t *testing.T) {
	before, err := netlink.LinkByName("lo")
	if err != nil {
		t.Fatal(err)
	}
	got, ok := readNetDev()["lo"]
	after, err := netlink.LinkByName("lo")
	if !ok || err != nil {
		t.Fatalf("lo in /proc/thread-self/net/dev: %v; netlink: %v", ok, err)
	}
	b, a := before.Attrs().Statistics, after.Attrs().Statistics
	for _, c := range []struct {
		name         string
		v, low, high uint64
	}{
		{"rx_bytes", got.rxBytes, b.RxBytes, a.RxBytes}, {"rx_packets", got.rxPackets, b.RxPackets, a.RxPackets},
		{"tx_bytes", got.txBytes, b.TxBytes, a.TxBytes}, {"tx_packets", got.txPackets, b.TxPackets, a.TxPackets},
	} {
		if c.v < c.low || c.v > c.high {
			t.Errorf("%s %d, netlink %d then %d", c.name, c.v, c.low, c.high)
		}
	}
}
