package agenthub_test

// A client of the Hub that vanishes in the middle of an exec, a logs
// subscription or a copy (its connection closed without a word, as when
// `volar` or `volant-launch exec` is killed) leaves nothing behind on the
// host: the Hub's goroutines serving it end, and the streams it opened to
// the guest close. The guest is kestrel's agent and access server in a
// process of its own (this test binary in flood_test.go's "guest" role),
// so every goroutine of this process is the host's side.

import (
	"archive/tar"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/volantvm/volant/lib/agentchan"
	"github.com/volantvm/volant/lib/agenthub"
	"github.com/volantvm/volant/lib/testutil/goroutinetest"
	"github.com/volantvm/volant/lib/workloadlog"
)

// hubServing are the frames of the Hub's goroutines that serve one client
// connection: the connection's proxy and each stream's splice to the
// guest. Nothing else in this process runs them.
var hubServing = []string{
	"lib/agenthub.(*Hub).accept.func",
	"lib/agentchan.Proxy",
	"lib/agentchan.splice",
	"lib/agentchan.Pipe",
}

// startGuestProcess runs kestrel's agent (with workload argv) and access
// server in a process of its own, serving the channel at socket.
func startGuestProcess(t *testing.T, socket string, argv []string) {
	t.Helper()
	js, _ := json.Marshal(argv)
	startRole(t, "guest", socket, workloadEnv+"="+string(js))
	waitUntil(t, 30*time.Second, "the guest process's channel socket", func() bool {
		_, err := os.Stat(socket)
		return err == nil
	})
}

// gate is a writer that takes the first bytes, says so, then holds every
// write until it is opened, and fails it then: a client that stopped
// reading.
type gate struct {
	first chan struct{}
	open  chan struct{}
	once  sync.Once
}

func newGate() *gate { return &gate{first: make(chan struct{}), open: make(chan struct{})} }

func (g *gate) Write(p []byte) (int, error) {
	g.once.Do(func() { close(g.first) })
	<-g.open
	return 0, errors.New("the client is gone")
}

// lineWriter says when a line has arrived.
type lineWriter struct {
	mu   sync.Mutex
	b    bytes.Buffer
	line string
	seen chan struct{}
	once sync.Once
}

func (w *lineWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.b.Write(p)
	if strings.Contains(w.b.String(), w.line) {
		w.once.Do(func() { close(w.seen) })
	}
	return len(p), nil
}

func TestClientVanishesHostLetsGo(t *testing.T) {
	dir := t.TempDir()
	channel := filepath.Join(dir, "channel.sock")
	startGuestProcess(t, channel, []string{"/bin/sh", "-c", "echo workload up; exec sleep 100000"})
	logPath := filepath.Join(dir, "workload.log")
	logs, err := workloadlog.Open(logPath, workloadlog.Rotation{})
	if err != nil {
		t.Fatal(err)
	}
	defer logs.Close()
	clients := filepath.Join(dir, "clients.sock")
	dial := func(ctx context.Context) (io.ReadWriteCloser, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", channel)
	}
	h, err := agenthub.Start(context.Background(), agenthub.Options{VM: "vanish", Dial: dial, Socket: clients, Logs: logs, GuestWait: 30 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	guest, err := h.Session(ctx)
	if err != nil {
		t.Fatal(err)
	}
	// The Hub's own stream (the workload's output) is up once the
	// workload's first line is in the log.
	waitUntil(t, 30*time.Second, "the workload's first line in the host's log", func() bool {
		b, _ := os.ReadFile(logPath)
		return bytes.Contains(b, []byte("workload up"))
	})
	baseStreams := guest.Streams()
	if n := goroutinetest.Count(hubServing...); n != 0 {
		t.Fatalf("%d goroutines serve clients before any came", n)
	}

	// vanish runs one client: op starts an operation on the client's
	// session and returns once it is under way (the hub's streams to the
	// guest are open); then the client's connection is closed under it,
	// and release lets the client's own call end.
	vanish := func(t *testing.T, op func(ctx context.Context, s *agentchan.Session) (release func(), result <-chan error)) {
		conn, err := net.Dial("unix", clients)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		s, err := agentchan.Client(conn)
		if err != nil {
			t.Fatal(err)
		}
		release, result := op(ctx, s)
		serving, streams := goroutinetest.Count(hubServing...), guest.Streams()
		if serving == 0 || streams <= baseStreams {
			t.Fatalf("under way: %d goroutines serve the client, %d streams to the guest (%d before): the test sees no session", serving, streams, baseStreams)
		}
		conn.Close() // the client vanishes
		release()
		select {
		case err := <-result:
			t.Logf("the client's call ended: %v", err)
		case <-time.After(30 * time.Second):
			t.Fatal("the client's own call did not end once its connection was closed")
		}
		// Within the guest's hang-up grace and a margin for a loaded
		// machine; yamux's own timer for a stream half closed by one side
		// only (agentchan.YamuxConfig's StreamCloseTimeout) is longer.
		bound := agentchan.HangupGrace + 8*time.Second
		waitUntil(t, bound, "the host to let the vanished client's session go", func() bool {
			return goroutinetest.Count(hubServing...) == 0 && guest.Streams() == baseStreams
		})
		t.Logf("was served by %d goroutines and %d streams to the guest (%d before); all gone", serving, streams, baseStreams)
	}

	t.Run("exec", func(t *testing.T) {
		var pid int
		vanish(t, func(ctx context.Context, s *agentchan.Session) (func(), <-chan error) {
			out := &lineWriter{line: "ready\n", seen: make(chan struct{})}
			started := make(chan int, 1)
			res := make(chan error, 1)
			go func() {
				_, err := s.Exec(ctx, agentchan.ExecRequest{Argv: []string{"/bin/sh", "-c", "echo ready; exec sleep 1001"}},
					agentchan.ExecIO{Stdout: out, Started: func(p int) { started <- p }})
				res <- err
			}()
			select {
			case <-out.seen:
			case err := <-res:
				t.Fatalf("exec ended before it ran: %v", err)
			case <-ctx.Done():
				t.Fatal("the exec did not start")
			}
			pid = <-started
			return func() {}, res
		})
		// And the guest hung its process up (its side, for the record).
		waitUntil(t, 10*time.Second, fmt.Sprintf("the exec's process %d to end", pid), func() bool {
			b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
			return err != nil || !bytes.Contains(b, []byte("1001"))
		})
	})

	t.Run("logs", func(t *testing.T) {
		vanish(t, func(ctx context.Context, s *agentchan.Session) (func(), <-chan error) {
			st, err := s.Call(ctx, agentchan.LogsRequest{Op: agentchan.OpLogs, From: -1}, &agentchan.Reply{})
			if err != nil {
				t.Fatal(err)
			}
			var rec agentchan.LogRecord
			if err := st.ReadLine(&rec); err != nil || rec.N == 0 {
				t.Fatalf("first record %+v %v", rec, err)
			}
			res := make(chan error, 1)
			go func() { // follows until the stream ends
				_, err := io.Copy(io.Discard, st)
				res <- err
			}()
			return func() {}, res
		})
	})

	t.Run("copy-out", func(t *testing.T) {
		big := filepath.Join(dir, "big")
		if err := os.WriteFile(big, []byte("start"), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Truncate(big, 256<<20); err != nil { // more than every window on the way
			t.Fatal(err)
		}
		vanish(t, func(ctx context.Context, s *agentchan.Session) (func(), <-chan error) {
			g := newGate()
			res := make(chan error, 1)
			go func() {
				_, _, err := s.ReadTar(ctx, big, g)
				res <- err
			}()
			select {
			case <-g.first:
			case err := <-res:
				t.Fatalf("the copy ended before it started: %v", err)
			}
			return func() { close(g.open) }, res
		})
	})

	t.Run("copy-in", func(t *testing.T) {
		into := filepath.Join(dir, "in")
		if err := os.Mkdir(into, 0o755); err != nil {
			t.Fatal(err)
		}
		vanish(t, func(ctx context.Context, s *agentchan.Session) (func(), <-chan error) {
			pr, pw := io.Pipe()
			res := make(chan error, 1)
			go func() {
				_, err := s.WriteTar(ctx, into, pr)
				res <- err
			}()
			tw := tar.NewWriter(pw)
			go func() {
				tw.WriteHeader(&tar.Header{Name: "part", Typeflag: tar.TypeReg, Mode: 0o644, Size: 256 << 20})
				tw.Write(make([]byte, 1<<20)) // then nothing more: the client stalls
			}()
			waitUntil(t, 30*time.Second, "the guest to write the file", func() bool {
				tmp, _ := filepath.Glob(filepath.Join(into, ".part.volant-tmp-*"))
				if len(tmp) != 1 {
					return false
				}
				st, err := os.Stat(tmp[0])
				return err == nil && st.Size() > 0
			})
			return func() { pw.CloseWithError(errors.New("the client is gone")) }, res
		})
		// The guest removed what it had written of the file.
		waitUntil(t, 10*time.Second, "the partial file to go", func() bool {
			ents, _ := os.ReadDir(into)
			return len(ents) == 0
		})
	})
}
