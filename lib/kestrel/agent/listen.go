package agent

import (
	"net"
	"net/netip"
	"os"
	"sync"

	"golang.org/x/sys/unix"
)

// listenBacklog is the API socket's accept queue. The kernel caps it at
// net.core.somaxconn (4096 by default), which net.Listen would read from
// /proc/sys first.
const listenBacklog = unix.SOMAXCONN

// socketListener is the API's IPv4 socket, opened, bound and listening
// through system calls alone: before the workload's exec, only the socket
// needs to exist, so that an early request waits in its backlog. It
// becomes a net.Listener (net.FileListener) on its first Accept, when the
// API begins to serve. net.Listen's way (the resolver's address list, the
// somaxconn read, the poller's registration) would be code translated at
// boot under software emulation, before the workload's start.
type socketListener struct {
	fd   int
	addr *net.TCPAddr

	mu     sync.Mutex
	ln     net.Listener
	closed bool
}

// listenTCP4 opens a listening plain TCP socket on ap.
func listenTCP4(ap netip.AddrPort) (*socketListener, error) {
	// Blocking for now, so that os.NewFile does not register it with the
	// poller only to close it; net.FileListener's copy is non-blocking.
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, unix.IPPROTO_TCP)
	if err != nil {
		return nil, os.NewSyscallError("socket", err)
	}
	fail := func(call string, err error) (*socketListener, error) {
		unix.Close(fd)
		return nil, os.NewSyscallError(call, err)
	}
	// As net.Listen does: a restarted kestrel (kestrel run) can bind again
	// while the old connections linger.
	if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEADDR, 1); err != nil {
		return fail("setsockopt", err)
	}
	if err := unix.Bind(fd, &unix.SockaddrInet4{Port: int(ap.Port()), Addr: ap.Addr().As4()}); err != nil {
		return fail("bind", err)
	}
	if err := unix.Listen(fd, listenBacklog); err != nil {
		return fail("listen", err)
	}
	sa, err := unix.Getsockname(fd)
	if err != nil {
		return fail("getsockname", err)
	}
	in4, ok := sa.(*unix.SockaddrInet4)
	if !ok {
		return fail("getsockname", unix.EAFNOSUPPORT)
	}
	return &socketListener{fd: fd, addr: &net.TCPAddr{IP: net.IP(ap.Addr().AsSlice()), Port: in4.Port}}, nil
}

// listener returns the net.Listener, making it on the first call.
func (l *socketListener) listener() (net.Listener, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.ln != nil {
		return l.ln, nil
	}
	if l.closed {
		return nil, net.ErrClosed
	}
	f := os.NewFile(uintptr(l.fd), "agent API")
	ln, err := net.FileListener(f) // a copy of the descriptor
	f.Close()
	if err != nil {
		l.closed = true
		return nil, err
	}
	l.ln = ln
	return ln, nil
}

// Accept implements net.Listener.
func (l *socketListener) Accept() (net.Conn, error) {
	ln, err := l.listener()
	if err != nil {
		return nil, err
	}
	return ln.Accept()
}

// Close implements net.Listener: connections still in the backlog are
// refused.
func (l *socketListener) Close() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.ln != nil {
		return l.ln.Close()
	}
	if l.closed {
		return net.ErrClosed
	}
	l.closed = true
	return os.NewSyscallError("close", unix.Close(l.fd))
}

// Addr implements net.Listener.
func (l *socketListener) Addr() net.Addr { return l.addr }
