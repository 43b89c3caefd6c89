package server

import (
	"math"
	"os"
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

// TestStatReaderAgainstProcfs reads this process's own /proc/<pid>/stat
// both ways: the CPU time may only grow between the reads, the resident
// memory stays within a few MiB.
func TestStatReaderAgainstProcfs(t *testing.T) {
	fs, err := procfs.NewDefaultFS()
	if err != nil {
		t.Fatal(err)
	}
	var r statReader
	for range 3 {
		p, err := fs.Self()
		if err != nil {
			t.Fatal(err)
		}
		before, err := p.Stat()
		if err != nil {
			t.Fatal(err)
		}
		got, err := r.read(os.Getpid())
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
	if _, err := r.read(1 << 30); err == nil {
		t.Error("read a process that cannot exist")
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
