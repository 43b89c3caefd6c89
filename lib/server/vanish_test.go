package server_test

import (
	"archive/tar"
	"bufio"
	"bytes"
	"context"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/yamux"

	"github.com/volantvm/volant/lib/agentchan"
	"github.com/volantvm/volant/lib/api"
	"github.com/volantvm/volant/lib/controller"
	"github.com/volantvm/volant/lib/controller/controllertest"
	"github.com/volantvm/volant/lib/launch"
	"github.com/volantvm/volant/lib/server"
	"github.com/volantvm/volant/lib/testutil/goroutinetest"
	"github.com/volantvm/volant/lib/testutil/wait"
)

// runDirRuntime is the in-memory runtime with a run directory for every
// VM, where the supervisor's guest socket is.
type runDirRuntime struct {
	*controllertest.Runtime
	dir string
}

func (r runDirRuntime) Inspect(ctx context.Context, name string) (*launch.Status, error) {
	st, err := r.Runtime.Inspect(ctx, name)
	if err == nil {
		st.RunDir = filepath.Join(r.dir, name)
	}
	return st, err
}

// stubbornSupervisor serves a VM's guest socket as a supervisor does (the
// stream layout of lib/agentchan), for a guest that never gives up on its
// own: it answers every exec, attach, read and write, then streams output
// or takes input for as long as its peer keeps the stream open, and keeps
// an exec's streams open until the session ends.
type stubbornSupervisor struct {
	sessions atomic.Int64 // open sessions from volantd
	received atomic.Int64 // bytes of copies in
}

func (s *stubbornSupervisor) serve(t *testing.T, socket string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(socket), 0o700); err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("unix", socket)
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mux, err := yamux.Server(c, agentchan.YamuxConfig())
			if err != nil {
				c.Close()
				continue
			}
			s.sessions.Add(1)
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer s.sessions.Add(-1)
				defer mux.Close()
				agentchan.Serve(mux, s.stream)
			}()
		}
	}()
}

func (s *stubbornSupervisor) stream(st *agentchan.Stream) {
	var req struct {
		agentchan.Request
		FD int `json:"fd"`
	}
	if st.ReadLine(&req) != nil {
		return
	}
	// Its end of an exec's streams stays open whatever the peer does,
	// until the session ends.
	holdOn := func() {
		io.Copy(io.Discard, st)
		<-st.Conn.(*yamux.Stream).Session().CloseChan()
	}
	switch req.Op {
	case agentchan.OpExec:
		st.WriteLine(agentchan.ExecReply{Reply: agentchan.Reply{OK: true}, PID: 4242})
		holdOn()
	case agentchan.OpAttach:
		st.WriteLine(agentchan.Reply{OK: true})
		if req.FD == 1 {
			io.WriteString(st.Conn, "ready\n")
		}
		holdOn()
	case agentchan.OpRead:
		st.WriteLine(agentchan.ReadReply{Reply: agentchan.Reply{OK: true}, Type: "file", Size: 1 << 40})
		tw := tar.NewWriter(st.Conn)
		tw.WriteHeader(&tar.Header{Name: "endless", Typeflag: tar.TypeReg, Mode: 0o644, Size: 1 << 40})
		zeros := make([]byte, 64<<10)
		for {
			if _, err := tw.Write(zeros); err != nil {
				return
			}
		}
	case agentchan.OpWrite:
		st.WriteLine(agentchan.Reply{OK: true})
		buf := make([]byte, 64<<10)
		for {
			n, err := st.Read(buf)
			s.received.Add(int64(n))
			if err != nil {
				return
			}
		}
	default:
		st.WriteLine(agentchan.Reply{OK: true})
		io.Copy(io.Discard, st)
	}
}

// volantdServing are the frames of volantd's goroutines that serve a
// client's exec, copy or logs: the route handlers, the exec route's proxy
// and the log followers under them.
var volantdServing = []string{
	"lib/server.(*Server).vmExec",
	"lib/server.(*Server).vmFiles",
	"lib/server.(*Server).vmLogs",
	"lib/agentchan.Proxy",
	"lib/agentchan.splice",
	"lib/agentchan.Pipe",
	"lib/controller.(*Controller).WorkloadLogs",
	"lib/controller.(*Controller).Logs",
}

// TestHandlersLetGoOfVanishedClients: a client whose connection to
// volantd closes in the middle of an interactive exec, a copy out, a copy
// in or a followed log (killed, or its network gone) leaves nothing in
// volantd: the handler and every goroutine it started end, and its
// session with the VM's supervisor closes, even with a supervisor (and
// guest) that would go on forever.
func TestHandlersLetGoOfVanishedClients(t *testing.T) {
	runs := t.TempDir()
	e := newEnv(t, func(cfg *controller.Config, _ *server.Options) {
		cfg.Runtime = runDirRuntime{Runtime: cfg.Runtime.(*controllertest.Runtime), dir: runs}
	})
	e.install("web")
	if _, err := e.c.CreateVM(e.ctx, api.CreateVMRequest{Name: "web1", Plugin: "web"}); err != nil {
		t.Fatal(err)
	}
	sup := &stubbornSupervisor{}
	sup.serve(t, launch.GuestSocket(filepath.Join(runs, "web1")))
	writeWorkloadLog(t, e.ctl.WorkloadLog("web1"), sinceLine{time.Now(), "stdout", "workload line\n"})
	if err := os.WriteFile(e.ctl.SerialLog("web1"), []byte("console line\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if n := goroutinetest.Count(volantdServing...); n != 0 {
		t.Fatalf("%d goroutines serve clients before any came", n)
	}

	// request sends a raw HTTP request on a connection of its own and
	// reads the answer's head.
	request := func(t *testing.T, head string) (net.Conn, *bufio.Reader, string) {
		t.Helper()
		conn, err := net.Dial("tcp", e.ts.Listener.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { conn.Close() })
		if _, err := io.WriteString(conn, head+"Host: volantd\r\n\r\n"); err != nil {
			t.Fatal(err)
		}
		conn.SetReadDeadline(time.Now().Add(30 * time.Second))
		br := bufio.NewReader(conn)
		var resp strings.Builder
		for !strings.HasSuffix(resp.String(), "\r\n\r\n") {
			b, err := br.ReadByte()
			if err != nil {
				t.Fatalf("reading the answer to %q: %v (so far %q)", head, err, resp.String())
			}
			resp.WriteByte(b)
		}
		conn.SetReadDeadline(time.Time{})
		return conn, br, resp.String()
	}
	// vanish closes conn once volantd serves it and checks that volantd
	// lets go of everything it held for it.
	vanish := func(t *testing.T, conn net.Conn, supervised bool) {
		t.Helper()
		serving, sessions := goroutinetest.Count(volantdServing...), sup.sessions.Load()
		if serving == 0 || supervised && sessions == 0 {
			t.Fatalf("under way: %d goroutines serve the client, %d sessions with the supervisor: the test sees nothing to let go of", serving, sessions)
		}
		conn.Close() // the client vanishes
		wait.Until(t, 15*time.Second, "volantd to let the vanished client go", func() bool {
			return goroutinetest.Count(volantdServing...) == 0 && sup.sessions.Load() == 0
		})
		t.Logf("was served by %d goroutines and %d sessions with the supervisor; all gone", serving, sessions)
	}

	t.Run("exec", func(t *testing.T) {
		conn, br, head := request(t, "POST /api/v1/vms/web1/exec HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: "+agentchan.UpgradeProtocol+"\r\nContent-Length: 0\r\n")
		if !strings.HasPrefix(head, "HTTP/1.1 101") {
			t.Fatalf("upgrade: %q", head)
		}
		sess, err := agentchan.Client(&bufferedConn{Conn: conn, r: br})
		if err != nil {
			t.Fatal(err)
		}
		out := &bytes.Buffer{}
		var mu sync.Mutex
		done := make(chan error, 1)
		go func() {
			_, err := sess.Exec(e.ctx, agentchan.ExecRequest{Argv: []string{"/bin/sleep", "1001"}},
				agentchan.ExecIO{Stdout: writerFunc(func(p []byte) (int, error) { mu.Lock(); defer mu.Unlock(); return out.Write(p) })})
			done <- err
		}()
		wait.Until(t, 30*time.Second, "the exec's first output", func() bool {
			mu.Lock()
			defer mu.Unlock()
			return out.String() == "ready\n"
		})
		vanish(t, conn, true)
		select {
		case err := <-done:
			t.Logf("the client's exec ended: %v", err)
		case <-time.After(30 * time.Second):
			t.Fatal("the client's exec did not end with its connection")
		}
	})

	t.Run("copy-out", func(t *testing.T) {
		conn, br, head := request(t, "GET /api/v1/vms/web1/files?path=/endless HTTP/1.1\r\n")
		if !strings.HasPrefix(head, "HTTP/1.1 200") {
			t.Fatalf("files: %q", head)
		}
		if _, err := io.ReadFull(br, make([]byte, 1<<20)); err != nil { // then it stops reading
			t.Fatal(err)
		}
		vanish(t, conn, true)
	})

	t.Run("copy-in", func(t *testing.T) {
		// The body is sent in part and never finished: no answer comes
		// before the client vanishes.
		conn, err := net.Dial("tcp", e.ts.Listener.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { conn.Close() })
		var tb bytes.Buffer
		tb.WriteString("PUT /api/v1/vms/web1/files?path=/tmp HTTP/1.1\r\nHost: volantd\r\nContent-Type: application/x-tar\r\nContent-Length: 1073741824\r\n\r\n")
		tw := tar.NewWriter(&tb)
		tw.WriteHeader(&tar.Header{Name: "big", Typeflag: tar.TypeReg, Mode: 0o644, Size: 1 << 30})
		tb.Write(make([]byte, 1<<20))
		if _, err := conn.Write(tb.Bytes()); err != nil {
			t.Fatal(err)
		}
		wait.Until(t, 30*time.Second, "the supervisor to receive the first MiB", func() bool { return sup.received.Load() >= 1<<20 })
		vanish(t, conn, true)
	})

	for _, stream := range []string{api.LogWorkload, api.LogConsole} {
		t.Run("logs-follow-"+stream, func(t *testing.T) {
			conn, br, head := request(t, "GET /api/v1/vms/web1/logs?follow=1&stream="+stream+" HTTP/1.1\r\n")
			if !strings.HasPrefix(head, "HTTP/1.1 200") {
				t.Fatalf("logs: %q", head)
			}
			if line, err := readChunkedLine(br); err != nil || !strings.HasSuffix(line, " line\n") {
				t.Fatalf("the first line: %q %v", line, err)
			}
			vanish(t, conn, false)
		})
	}
}

// bufferedConn reads a connection through the reader that read the
// answer's head.
type bufferedConn struct {
	net.Conn
	r *bufio.Reader
}

func (b *bufferedConn) Read(p []byte) (int, error) { return b.r.Read(p) }

type writerFunc func([]byte) (int, error)

func (f writerFunc) Write(p []byte) (int, error) { return f(p) }

// readChunkedLine reads a chunked body's first chunk.
func readChunkedLine(br *bufio.Reader) (string, error) {
	if _, err := br.ReadString('\n'); err != nil { // the chunk's size
		return "", err
	}
	return br.ReadString('\n')
}
