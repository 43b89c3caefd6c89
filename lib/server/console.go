package server

import (
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/volantvm/volant/lib/apierr"
)

// consoles tracks which VMs have a client attached: QEMU's console socket
// serves one client at a time, so a second one is refused, not queued.
type consoles struct {
	mu       sync.Mutex
	attached map[string]bool
}

func (c *consoles) take(name string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.attached == nil {
		c.attached = map[string]bool{}
	}
	if c.attached[name] {
		return false
	}
	c.attached[name] = true
	return true
}

func (c *consoles) release(name string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	delete(c.attached, name)
}

func headerHas(h http.Header, key, token string) bool {
	for _, v := range h.Values(key) {
		for _, f := range strings.Split(v, ",") {
			if strings.EqualFold(strings.TrimSpace(f), token) {
				return true
			}
		}
	}
	return false
}

// vmConsole is GET /api/v1/vms/{name}/console: an HTTP/1.1 upgrade
// ("Upgrade: tcp") to a raw byte stream joined to the VM's serial console.
func (s *Server) vmConsole(w http.ResponseWriter, r *http.Request) {
	if !headerHas(r.Header, "Connection", "upgrade") || !headerHas(r.Header, "Upgrade", "tcp") {
		writeError(w, r, apierr.New(apierr.InvalidInput, "the console is a raw stream: send Connection: Upgrade and Upgrade: tcp"))
		return
	}
	name := r.PathValue("name")
	path, err := s.ctl.ConsoleSocket(r.Context(), name)
	if err != nil {
		writeError(w, r, err)
		return
	}
	if !s.consoles.take(name) {
		writeError(w, r, apierr.New(apierr.Conflict, "another client is attached to the console of VM %s", name).With("vm", name))
		return
	}
	defer s.consoles.release(name)
	guest, err := net.DialTimeout("unix", path, 5*time.Second)
	if err != nil {
		writeError(w, r, apierr.Wrap(apierr.Unavailable, err, "connecting to the console of VM "+name))
		return
	}
	defer guest.Close()
	conn, brw, err := http.NewResponseController(w).Hijack()
	if err != nil {
		writeError(w, r, apierr.Wrap(apierr.Internal, err, "taking over the connection"))
		return
	}
	defer conn.Close()
	brw.WriteString("HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: tcp\r\n\r\n")
	if err := brw.Flush(); err != nil {
		return
	}
	done := make(chan struct{}, 2)
	go func() { io.Copy(guest, brw); done <- struct{}{} }()
	go func() { io.Copy(conn, guest); done <- struct{}{} }()
	select {
	case <-done:
	case <-r.Context().Done():
	}
}
