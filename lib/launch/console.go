package launch

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"sync"
	"time"
)

// consoleRelay gives a VMM that can serve its serial port on a socket but
// not also log it (Cloud Hypervisor's --serial socket=) what QEMU's chardev
// does by itself: the guest's output is appended to the serial log, and one
// client at a time can attach to the console socket, see the output and
// type. It lives in `volant-launch run`, which the VMM never outlives.
type consoleRelay struct {
	ln  net.Listener
	log *os.File
	lg  *slog.Logger

	mu     sync.Mutex
	vmm    net.Conn
	client net.Conn
	done   chan struct{}
	pumped chan struct{} // closed when the VMM side is finished
}

// startConsoleRelay listens on consoleSock and connects to the VMM's serial
// socket (retrying while the VMM creates it, until ctx ends).
func startConsoleRelay(ctx context.Context, vmmSock, consoleSock, logPath string, lg *slog.Logger) (*consoleRelay, error) {
	f, err := os.OpenFile(logPath, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o640)
	if err != nil {
		return nil, fmt.Errorf("serial log: %w", err)
	}
	os.Remove(consoleSock)
	ln, err := net.Listen("unix", consoleSock)
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("console socket: %w", err)
	}
	r := &consoleRelay{ln: ln, log: f, lg: lg, done: make(chan struct{}), pumped: make(chan struct{})}
	go r.accept()
	go r.connect(ctx, vmmSock)
	return r, nil
}

func (r *consoleRelay) connect(ctx context.Context, sock string) {
	defer close(r.pumped)
	var d net.Dialer
	for {
		c, err := d.DialContext(ctx, "unix", sock)
		if err == nil {
			r.mu.Lock()
			r.vmm = c
			r.mu.Unlock()
			r.pump(c)
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-r.done:
			return
		case <-time.After(5 * time.Millisecond):
		}
	}
}

// pump copies the guest's output to the log and the attached client.
func (r *consoleRelay) pump(vmm net.Conn) {
	buf := make([]byte, 32<<10)
	for {
		n, err := vmm.Read(buf)
		if n > 0 {
			r.log.Write(buf[:n])
			r.mu.Lock()
			c := r.client
			r.mu.Unlock()
			if c != nil {
				c.SetWriteDeadline(time.Now().Add(time.Second))
				if _, werr := c.Write(buf[:n]); werr != nil {
					r.detach(c)
				}
			}
		}
		if err != nil {
			if !errors.Is(err, io.EOF) && !errors.Is(err, net.ErrClosed) {
				r.lg.Debug("console relay: VMM side closed", "err", err)
			}
			return
		}
	}
}

func (r *consoleRelay) accept() {
	for {
		c, err := r.ln.Accept()
		if err != nil {
			return
		}
		r.mu.Lock()
		busy := r.client != nil
		if !busy {
			r.client = c
		}
		r.mu.Unlock()
		if busy {
			c.Write([]byte("volant: the console is already attached elsewhere\r\n"))
			c.Close()
			continue
		}
		go r.input(c)
	}
}

// input forwards what the attached client types to the guest.
func (r *consoleRelay) input(c net.Conn) {
	buf := make([]byte, 4096)
	for {
		n, err := c.Read(buf)
		if n > 0 {
			r.mu.Lock()
			vmm := r.vmm
			r.mu.Unlock()
			if vmm != nil {
				vmm.Write(buf[:n])
			}
		}
		if err != nil {
			r.detach(c)
			return
		}
	}
}

func (r *consoleRelay) detach(c net.Conn) {
	r.mu.Lock()
	if r.client == c {
		r.client = nil
	}
	r.mu.Unlock()
	c.Close()
}

// Close stops the relay: it lets the VMM side drain (the VMM has exited, so
// its socket reports EOF soon), then closes every connection and the log.
func (r *consoleRelay) Close() {
	close(r.done)
	r.ln.Close()
	select {
	case <-r.pumped:
	case <-time.After(time.Second):
	}
	r.mu.Lock()
	if r.vmm != nil {
		r.vmm.Close()
	}
	if r.client != nil {
		r.client.Close()
	}
	r.mu.Unlock()
	<-r.pumped
	r.log.Close()
}
