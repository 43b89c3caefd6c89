package cloudhypervisor

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// serveOnce answers one connection on a new unix socket with answer (raw
// HTTP) after reading the request's head, which it sends on got.
func serveOnce(t *testing.T, answer string) (socket string, got <-chan string) {
	t.Helper()
	socket = filepath.Join(t.TempDir(), "api.sock")
	l, err := net.Listen("unix", socket)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	ch := make(chan string, 1)
	go func() {
		c, err := l.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		br := bufio.NewReader(c)
		var head strings.Builder
		for {
			line, err := br.ReadString('\n')
			head.WriteString(line)
			if err != nil || line == "\r\n" {
				break
			}
		}
		ch <- head.String()
		io.WriteString(c, answer)
	}()
	return socket, ch
}

// The client's own HTTP/1.1: the request line and headers CH's API
// expects, and the answers a server may send (by Content-Length, chunked,
// up to the close), errors with their status and body, and a VMM that
// hangs up before answering.
func TestClientHTTP(t *testing.T) {
	ctx := context.Background()

	sock, got := serveOnce(t, "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 35\r\n\r\n{\"version\":\"v53.0\",\"pid\":4242}     ")
	p, err := NewClient(sock).Ping(ctx)
	if err != nil || p.Version != "v53.0" || p.Pid != 4242 {
		t.Fatalf("ping: %+v %v", p, err)
	}
	if h := <-got; !strings.HasPrefix(h, "GET /api/v1/vmm.ping HTTP/1.1\r\n") || !strings.Contains(h, "Host: localhost\r\n") || !strings.Contains(h, "Accept: application/json\r\n") {
		t.Errorf("request head %q", h)
	}

	sock, got = serveOnce(t, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n7\r\n{\"state\r\nf\r\n\":\"Running\",\"co\r\nb\r\nnfig\":null}\r\n0\r\n\r\n")
	info, err := NewClient(sock).Info(ctx)
	if err != nil || info.State != "Running" {
		t.Fatalf("chunked info: %+v %v", info, err)
	}
	<-got

	sock, got = serveOnce(t, "HTTP/1.1 204 No Content\r\n\r\n")
	if err := NewClient(sock).Restore(ctx, RestoreConfig{SourceURL: "file:///s"}); err != nil {
		t.Fatalf("restore: %v", err)
	}
	if h := <-got; !strings.HasPrefix(h, "PUT /api/v1/vm.restore HTTP/1.1\r\n") || !strings.Contains(h, "Content-Type: application/json\r\n") || !strings.Contains(h, "Content-Length: 26\r\n") {
		t.Errorf("request head %q", h)
	}

	sock, _ = serveOnce(t, "HTTP/1.1 500 Internal Server Error\r\nContent-Length: 13\r\n\r\nVM not booted")
	err = NewClient(sock).PowerButton(ctx)
	var ae *APIError
	if !errors.As(err, &ae) || ae.Status != 500 || ae.Body != "VM not booted" || ae.Op != "vm.power-button" {
		t.Fatalf("an error answer: %v", err)
	}

	sock, _ = serveOnce(t, "HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\n{\"state\":")
	if _, err := NewClient(sock).Info(ctx); err == nil || !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Fatalf("a cut answer: %v, want an unexpected EOF", err)
	}

	// A VMM that exits on vmm.shutdown hangs up before it answers.
	sock, _ = serveOnce(t, "")
	if err := NewClient(sock).ShutdownVMM(ctx); err != nil {
		t.Fatalf("shutdown answered by a hang-up: %v", err)
	}

	// A server that never answers: the context's deadline ends the wait.
	sock = filepath.Join(t.TempDir(), "mute.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go func() {
		c, err := l.Accept()
		if err == nil {
			defer c.Close()
			time.Sleep(5 * time.Second)
		}
	}()
	tctx, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
	defer cancel()
	if _, err := NewClient(sock).Ping(tctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("a mute server: %v, want the deadline", err)
	}
}
