package chtest

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"sync/atomic"

	"github.com/volantvm/volant/lib/agentchan"
	"github.com/volantvm/volant/lib/kestrel/access"
	"github.com/volantvm/volant/lib/kestrel/outlog"
	"github.com/volantvm/volant/lib/kestrel/reaper"
)

// serveVsock plays Cloud Hypervisor's hybrid vsock host socket (as
// Firecracker's, which CH follows): a host connection writes
// "CONNECT <port>\n"; when the guest listens on that port CH answers
// "OK <host port>\n" and the connection is the guest's, else it closes the
// connection. The fake guest listens on agentchan.VsockPort with kestrel's
// own agent-channel server (lib/kestrel/access), running commands on this
// host as the fake's children, unless FAKE_CH_GUEST=noagent. Its workload
// "writes" one line to stdout and one to stderr, so the logs stream has
// something to carry.
func serveVsock(path string) error {
	os.Remove(path)
	ln, err := net.Listen("unix", path)
	if err != nil {
		return fmt.Errorf("vsock socket: %w", err)
	}
	var srv *access.Server
	if os.Getenv("FAKE_CH_GUEST") != "noagent" {
		r := reaper.New(nil)
		go r.Run(context.Background())
		out := outlog.New(0)
		out.Append(agentchan.Stdout, []byte("fake guest workload: stdout\n"))
		out.Append(agentchan.Stderr, []byte("fake guest workload: stderr\n"))
		srv = access.New(access.Config{VM: "fake-ch", Version: "fake", Reaper: r, Output: out})
	}
	var hostPort atomic.Uint32
	hostPort.Store(1 << 30)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				r := bufio.NewReader(c)
				line, err := r.ReadString('\n')
				f := strings.Fields(line)
				if err != nil || len(f) != 2 || f[0] != "CONNECT" {
					c.Close()
					return
				}
				port, err := strconv.ParseUint(f[1], 10, 32)
				if err != nil || port != agentchan.VsockPort || srv == nil {
					c.Close() // nobody listens on that port in the guest
					return
				}
				fmt.Fprintf(c, "OK %d\n", hostPort.Add(1))
				srv.ServeConn(context.Background(), &bufferedConn{Conn: c, r: r})
			}()
		}
	}()
	return nil
}

type bufferedConn struct {
	net.Conn
	r *bufio.Reader
}

func (b *bufferedConn) Read(p []byte) (int, error) { return b.r.Read(p) }
