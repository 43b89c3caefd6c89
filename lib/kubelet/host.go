package kubelet

import (
	"bufio"
	"context"
	"fmt"
	"net/netip"
	"os"
	"runtime"
	"strconv"
	"strings"

	"github.com/volantvm/volant/lib/api"
	"github.com/volantvm/volant/lib/apierr"
)

// Host is what a node offers by default: the host's CPUs and memory, and
// volantd's guest subnet (the podCIDR) with the addresses of its range as
// the pod count.
type Host struct {
	CPU, MemoryMB, Pods int
	Subnet              netip.Prefix
}

// Healther is volantd's /healthz.
type Healther interface {
	Health(ctx context.Context) (*api.Health, error)
}

// HostCapacity reads the host's CPUs and memory and asks volantd for its
// guest pool.
func HostCapacity(ctx context.Context, v Healther) (Host, error) {
	h := Host{CPU: runtime.NumCPU()}
	if mb, err := memTotalMB("/proc/meminfo"); err == nil {
		h.MemoryMB = mb
	}
	st, err := v.Health(ctx)
	if err != nil {
		return h, fmt.Errorf("asking volantd for its guest network: %w", err)
	}
	return h, h.fromNetwork(st.Network)
}

func (h *Host) fromNetwork(n *api.Network) error {
	if n == nil {
		return apierr.New(apierr.NotSupported, "volantd does not say its guest network (GET /healthz has no \"network\"): upgrade volantd")
	}
	var err error
	if h.Subnet, err = netip.ParsePrefix(n.Subnet); err != nil {
		return apierr.New(apierr.InvalidInput, "volantd's subnet %q: %v", n.Subnet, err)
	}
	start, err1 := netip.ParseAddr(n.RangeStart)
	end, err2 := netip.ParseAddr(n.RangeEnd)
	if err1 != nil || err2 != nil || !start.Is4() || !end.Is4() {
		return apierr.New(apierr.InvalidInput, "volantd's range %s-%s", n.RangeStart, n.RangeEnd)
	}
	a, b := start.As4(), end.As4()
	h.Pods = int(uint32(b[0])<<24|uint32(b[1])<<16|uint32(b[2])<<8|uint32(b[3])) -
		int(uint32(a[0])<<24|uint32(a[1])<<16|uint32(a[2])<<8|uint32(a[3])) + 1
	if gw, err := netip.ParseAddr(n.Gateway); err == nil && gw.Compare(start) >= 0 && gw.Compare(end) <= 0 {
		h.Pods--
	}
	return nil
}

func memTotalMB(path string) (int, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), "MemTotal:"); ok {
			kb, err := strconv.Atoi(strings.TrimSuffix(strings.TrimSpace(rest), " kB"))
			if err != nil {
				return 0, err
			}
			return kb >> 10, nil
		}
	}
	return 0, fmt.Errorf("%s: no MemTotal", path)
}
