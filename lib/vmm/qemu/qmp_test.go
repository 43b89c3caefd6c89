package qemu

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"net"
	"path/filepath"
	"testing"
	"time"

	"github.com/volantvm/volant/lib/vmm"
)

// fakeQMP speaks the QMP wire protocol the way QEMU 7.2 does for the
// commands the backend uses: greeting, capabilities negotiation (commands
// before it fail), replies with the request's id, events interleaved, and
// the connection closed on quit.
func fakeQMP(t *testing.T) string {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "qmp.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go serveQMP(c)
		}
	}()
	return sock
}

func serveQMP(c net.Conn) {
	defer c.Close()
	enc := json.NewEncoder(c)
	enc.Encode(map[string]any{"QMP": map[string]any{"version": map[string]any{"qemu": map[string]int{"major": 7, "minor": 2, "micro": 0}}, "capabilities": []string{"oob"}}})
	negotiated := false
	status := "running"
	r := bufio.NewScanner(c)
	for r.Scan() {
		var m struct {
			Execute string          `json:"execute"`
			ID      json.RawMessage `json:"id"`
		}
		if err := json.Unmarshal(r.Bytes(), &m); err != nil {
			enc.Encode(map[string]any{"error": map[string]string{"class": "GenericError", "desc": "JSON parse error"}})
			continue
		}
		reply := func(ret any) { enc.Encode(map[string]any{"return": ret, "id": m.ID}) }
		fail := func(class, desc string) {
			enc.Encode(map[string]any{"error": map[string]string{"class": class, "desc": desc}, "id": m.ID})
		}
		event := func(name string, data any) {
			enc.Encode(map[string]any{"event": name, "data": data, "timestamp": map[string]int64{"seconds": 1, "microseconds": 2}})
		}
		if m.Execute != "qmp_capabilities" && !negotiated {
			fail("CommandNotFound", "Expecting capabilities negotiation with 'qmp_capabilities'")
			continue
		}
		switch m.Execute {
		case "qmp_capabilities":
			negotiated = true
			reply(map[string]any{})
		case "query-status":
			reply(map[string]any{"status": status, "running": status == "running", "singlestep": false})
		case "stop":
			status = "paused"
			event("STOP", map[string]any{})
			reply(map[string]any{})
		case "cont":
			status = "running"
			reply(map[string]any{})
			event("RESUME", map[string]any{})
		case "system_powerdown":
			reply(map[string]any{})
			event("POWERDOWN", map[string]any{})
		case "query-blockstats":
			reply([]any{map[string]any{"device": "disk0", "stats": map[string]int64{"rd_bytes": 512, "wr_bytes": 1024, "rd_operations": 1, "wr_operations": 2}}})
		case "quit":
			reply(map[string]any{})
			event("SHUTDOWN", map[string]any{"guest": false, "reason": "host-qmp-quit"})
			return
		default:
			fail("CommandNotFound", "The command "+m.Execute+" has not been found")
		}
	}
}

func TestQMPProtocol(t *testing.T) {
	sock := fakeQMP(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ctl, err := (&Backend{}).Dial(ctx, sock)
	if err != nil {
		t.Fatal(err)
	}
	defer ctl.Close()
	if st, err := ctl.State(ctx); err != nil || st != vmm.StateRunning {
		t.Fatalf("state %q %v", st, err)
	}
	if err := ctl.Pause(ctx); err != nil {
		t.Fatal(err)
	}
	if st, _ := ctl.State(ctx); st != vmm.StatePaused {
		t.Fatalf("after stop: %q", st)
	}
	ev := <-ctl.(*control).Events()
	if ev.Name != "STOP" || ev.Timestamp.Seconds != 1 {
		t.Fatalf("event %+v", ev)
	}
	if err := ctl.Resume(ctx); err != nil {
		t.Fatal(err)
	}
	c, err := ctl.Counters(ctx)
	if err != nil || c["disk0"]["write_bytes"] != 1024 || c["disk0"]["read_ops"] != 1 {
		t.Fatalf("counters %v %v", c, err)
	}
	var qe *Error
	err = ctl.(*control).q.Execute(ctx, "no-such-command", nil, nil)
	if !errors.As(err, &qe) || qe.Class != "CommandNotFound" || qe.Command != "no-such-command" {
		t.Fatalf("error reply: %v", err)
	}
	if err := ctl.PowerButton(ctx); err != nil {
		t.Fatal(err)
	}
	if err := ctl.Quit(ctx); err != nil {
		t.Fatalf("quit: %v", err)
	}
	<-ctl.(*control).q.Done()
	if _, err := ctl.State(ctx); !errors.Is(err, ErrClosed) {
		t.Fatalf("command after QEMU closed the socket: %v, want ErrClosed", err)
	}
	if err := ctl.Quit(ctx); err != nil {
		t.Fatalf("quit of a gone QEMU must succeed: %v", err)
	}
}

func TestQMPNotAGreeting(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "x.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		c, _ := ln.Accept()
		c.Write([]byte("HTTP/1.1 200 OK\r\n\r\n"))
		time.Sleep(time.Second)
		c.Close()
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := DialQMP(ctx, sock); err == nil {
		t.Fatal("a non-QMP socket was accepted")
	}
}

func TestQMPDialTimesOutOnSilentSocket(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "x.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	// Accepts but never greets, like a QMP socket busy with another client.
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	t0 := time.Now()
	if _, err := DialQMP(ctx, sock); err == nil {
		t.Fatal("dial succeeded without a greeting")
	}
	if d := time.Since(t0); d > 2*time.Second {
		t.Fatalf("dial ignored its deadline: %v", d)
	}
}
