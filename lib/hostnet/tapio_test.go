package hostnet

import (
	"bytes"
	"encoding/binary"
	"net"
	"os"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// tapFile is the test's end of a tap: what a VMM would hold.
type tapFile struct{ *os.File }

// attachTap opens an existing tap in the calling thread's namespace the way
// a VMM does (TUNSETIFF on /dev/net/tun), for raw Ethernet frames.
func attachTap(name string) (*tapFile, error) {
	fd, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	ifr, err := unix.NewIfreq(name)
	if err != nil {
		unix.Close(fd)
		return nil, err
	}
	ifr.SetUint16(unix.IFF_TAP | unix.IFF_NO_PI)
	if err := unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr); err != nil {
		unix.Close(fd)
		return nil, err
	}
	// Non-blocking before os.NewFile, so reads honour deadlines.
	if err := unix.SetNonblock(fd, true); err != nil {
		unix.Close(fd)
		return nil, err
	}
	return &tapFile{os.NewFile(uintptr(fd), name)}, nil
}

type arp struct {
	op       uint16
	sha, tha net.HardwareAddr
	spa, tpa net.IP
}

// arpFrame builds an Ethernet ARP frame; tha nil means a broadcast request.
func arpFrame(op uint16, sha net.HardwareAddr, spa net.IP, tha net.HardwareAddr, tpa net.IP) []byte {
	dst := tha
	if dst == nil {
		dst = net.HardwareAddr{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}
		tha = make(net.HardwareAddr, 6)
	}
	var b bytes.Buffer
	b.Write(dst)
	b.Write(sha)
	binary.Write(&b, binary.BigEndian, uint16(0x0806))
	binary.Write(&b, binary.BigEndian, []uint16{1, 0x0800})
	b.Write([]byte{6, 4})
	binary.Write(&b, binary.BigEndian, op)
	b.Write(sha)
	b.Write(spa.To4())
	b.Write(tha)
	b.Write(tpa.To4())
	for b.Len() < 60 {
		b.WriteByte(0)
	}
	return b.Bytes()
}

func parseARP(f []byte) (arp, bool) {
	if len(f) < 42 || binary.BigEndian.Uint16(f[12:14]) != 0x0806 {
		return arp{}, false
	}
	p := f[14:]
	return arp{
		op:  binary.BigEndian.Uint16(p[6:8]),
		sha: net.HardwareAddr(p[8:14]), spa: net.IP(p[14:18]),
		tha: net.HardwareAddr(p[18:24]), tpa: net.IP(p[24:28]),
	}, true
}

// exchange writes frame into from (again every 250 ms: a port may still be
// coming up) until a frame matching want comes out of to, within 10 s.
func exchange(t *testing.T, from *tapFile, frame []byte, to *tapFile, want func(arp) bool) arp {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	buf := make([]byte, 65536)
	for time.Now().Before(deadline) {
		if _, err := from.Write(frame); err != nil {
			t.Fatalf("writing to %s: %v", from.Name(), err)
		}
		to.SetReadDeadline(time.Now().Add(250 * time.Millisecond))
		for {
			n, err := to.Read(buf)
			if err != nil {
				break // deadline: send again
			}
			if a, ok := parseARP(buf[:n]); ok && want(a) {
				return a
			}
		}
	}
	t.Fatalf("no matching frame came out of %s", to.Name())
	return arp{}
}
