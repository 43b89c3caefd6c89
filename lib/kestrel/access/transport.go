package access

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/volantvm/volant/lib/agentchan"
)

// Channels says where to look for the channel.
type Channels struct {
	// Sys and Dev are /sys and /dev (tests point them elsewhere).
	Sys, Dev string
	// Find bounds the search for a channel after Serve starts (virtio
	// ports appear some milliseconds after their driver loads; 10 s if 0).
	Find time.Duration
}

// virtioVsockID is the virtio device ID of vsock (virtio spec 5.10).
const virtioVsockID = "0x0013"

// VsockModule is the guest kernel's virtio vsock transport, which the boot
// image carries and kestrel loads only when HasVsockDevice.
const VsockModule = "vmw_vsock_virtio_transport"

// HasVsockDevice reports whether the guest has a virtio vsock device (sys
// is /sys); the virtio transports must be loaded for it to show.
func HasVsockDevice(sys string) bool { return hasVirtioDevice(sys, virtioVsockID) }

// Serve finds the agent channel and serves it until ctx ends: the virtio
// port named agentchan.PortName (QEMU) — reopened whenever a host session
// ends, since the port outlives it — or a vsock listener on
// agentchan.VsockPort when the guest has a virtio vsock device (Cloud
// Hypervisor), each connection a session. A guest with neither after
// c.Find gets no channel; Serve says so and returns.
func (s *Server) Serve(ctx context.Context, c Channels) error {
	if c.Sys == "" {
		c.Sys = "/sys"
	}
	if c.Dev == "" {
		c.Dev = "/dev"
	}
	if c.Find <= 0 {
		c.Find = 10 * time.Second
	}
	deadline := time.Now().Add(c.Find)
	delay := 20 * time.Millisecond
	for {
		if dev := findPort(c.Sys, c.Dev, agentchan.PortName); dev != "" {
			s.log.Info("agent channel on a virtio-serial port", "device", dev)
			s.servePort(ctx, dev)
			return nil
		}
		if hasVirtioDevice(c.Sys, virtioVsockID) {
			s.log.Info("agent channel on vsock", "port", agentchan.VsockPort)
			return s.serveVsock(ctx, agentchan.VsockPort)
		}
		if time.Now().After(deadline) {
			s.log.Info("no agent channel: the VM has neither a virtio-serial port named " + agentchan.PortName + " nor a vsock device")
			return nil
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(delay):
		}
		delay = min(delay*2, 500*time.Millisecond)
	}
}

// findPort returns the device of the virtio-serial port called name.
func findPort(sys, dev, name string) string {
	ents, _ := os.ReadDir(filepath.Join(sys, "class/virtio-ports"))
	for _, e := range ents {
		b, err := os.ReadFile(filepath.Join(sys, "class/virtio-ports", e.Name(), "name"))
		if err == nil && strings.TrimSpace(string(b)) == name {
			p := filepath.Join(dev, e.Name())
			if _, err := os.Stat(p); err == nil {
				return p
			}
		}
	}
	return ""
}

func hasVirtioDevice(sys, id string) bool {
	ents, _ := os.ReadDir(filepath.Join(sys, "bus/virtio/devices"))
	for _, e := range ents {
		b, err := os.ReadFile(filepath.Join(sys, "bus/virtio/devices", e.Name(), "device"))
		if err == nil && strings.TrimSpace(string(b)) == id {
			return true
		}
	}
	return false
}

// servePort serves host sessions on a virtio-serial port until ctx ends.
// While no host is connected the port reads EOF at once, so an attempt
// that ends without a handshake is retried after a pause.
func (s *Server) servePort(ctx context.Context, dev string) {
	pause := 10 * time.Millisecond
	for ctx.Err() == nil {
		f, err := os.OpenFile(dev, os.O_RDWR, 0)
		if err != nil {
			s.log.Warn("agent channel: opening the port", "device", dev, "err", err)
		} else {
			start := time.Now()
			err = s.ServeConn(ctx, f)
			f.Close()
			if err == nil || time.Since(start) > time.Second {
				pause = 10 * time.Millisecond // a session ran: retry soon
			}
		}
		select {
		case <-ctx.Done():
		case <-time.After(pause):
		}
		pause = min(pause*2, time.Second)
	}
}

// serveVsock accepts host connections on a vsock port until ctx ends.
func (s *Server) serveVsock(ctx context.Context, port uint32) error {
	fd, err := unix.Socket(unix.AF_VSOCK, unix.SOCK_STREAM|unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK, 0)
	if err != nil {
		return fmt.Errorf("agent channel: vsock socket: %w", err)
	}
	if err := unix.Bind(fd, &unix.SockaddrVM{CID: unix.VMADDR_CID_ANY, Port: port}); err != nil {
		unix.Close(fd)
		return fmt.Errorf("agent channel: binding vsock port %d: %w", port, err)
	}
	if err := unix.Listen(fd, 16); err != nil {
		unix.Close(fd)
		return fmt.Errorf("agent channel: listening on vsock port %d: %w", port, err)
	}
	ln := os.NewFile(uintptr(fd), "vsock-listener")
	defer ln.Close()
	stop := context.AfterFunc(ctx, func() { ln.Close() })
	defer stop()
	rc, err := ln.SyscallConn()
	if err != nil {
		return err
	}
	for {
		var nfd int
		var aerr error
		err := rc.Read(func(lfd uintptr) bool {
			nfd, _, aerr = unix.Accept4(int(lfd), unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK)
			return !errors.Is(aerr, unix.EAGAIN)
		})
		if err == nil {
			err = aerr
		}
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			s.log.Warn("agent channel: vsock accept", "err", err)
			time.Sleep(100 * time.Millisecond)
			continue
		}
		conn := os.NewFile(uintptr(nfd), "vsock")
		go func() {
			defer conn.Close()
			s.ServeConn(ctx, conn)
		}()
	}
}
