package volar

import (
	"bufio"
	"bytes"
	"context"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/volantvm/volant/lib/testutil/wait"
)

// syncBuffer is a bytes.Buffer safe for the console's writer goroutine.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// guest is the far end of a console stream: it prints a prompt and
// answers each line with its upper-cased echo, like a shell on a serial
// port would echo and answer. It records everything it received.
func guest(t *testing.T, conn net.Conn) *syncBuffer {
	t.Helper()
	got := &syncBuffer{}
	go func() {
		defer conn.Close()
		io.WriteString(conn, "guest$ ")
		br := bufio.NewReader(io.TeeReader(conn, got))
		for {
			line, err := br.ReadString('\n')
			if err != nil {
				return
			}
			if _, err := io.WriteString(conn, strings.ToUpper(line)+"guest$ "); err != nil {
				return
			}
		}
	}()
	return got
}

func TestConsoleDetachKey(t *testing.T) {
	local, remote := net.Pipe()
	received := guest(t, remote)
	stdin, feed := io.Pipe()
	var stdout, stderr syncBuffer
	done := make(chan error, 1)
	go func() {
		done <- Console(context.Background(), local, stdin, &stdout, &stderr, ConsoleOptions{Name: "web1"})
	}()
	io.WriteString(feed, "echo hi\n")
	waitFor(t, &stdout, "ECHO HI\nguest$ ")
	// Bytes before the detach key still reach the guest; the key and what
	// follows do not.
	io.WriteString(feed, "ls\n\x1dnot sent\n")
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	waitFor(t, received, "echo hi\nls\n")
	if got := received.String(); got != "echo hi\nls\n" {
		t.Errorf("guest received %q", got)
	}
	if !strings.Contains(stderr.String(), "Type ^] to detach") || !strings.Contains(stderr.String(), "Detached from the console of VM web1") {
		t.Errorf("stderr = %q", stderr.String())
	}
}

func TestConsoleOtherEscapeAndNone(t *testing.T) {
	// --escape ^A: ^] passes through to the guest.
	local, remote := net.Pipe()
	received := guest(t, remote)
	var stdout, stderr syncBuffer
	err := Console(context.Background(), local, strings.NewReader("a\x1db\n\x01"), &stdout, &stderr,
		ConsoleOptions{Name: "web1", Escape: 0x01})
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, received, "a\x1db\n")
	if got := received.String(); got != "a\x1db\n" {
		t.Errorf("guest received %q", got)
	}

	// No escape key: stdin's end (then the guest's silence) ends it, and
	// the guest's answer to the last line is not cut off.
	local, remote = net.Pipe()
	received = guest(t, remote)
	stdout = syncBuffer{}
	err = Console(context.Background(), local, strings.NewReader("x\x1d\nlast\n"), &stdout, &stderr,
		ConsoleOptions{Name: "web1", NoEscape: true, Linger: 200 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, received, "x\x1d\nlast\n")
	if got := received.String(); got != "x\x1d\nlast\n" {
		t.Errorf("guest received %q", got)
	}
	if !strings.HasSuffix(stdout.String(), "LAST\nguest$ ") {
		t.Errorf("stdout = %q, want the answer to the last line", stdout.String())
	}
}

func TestConsoleEndsWhenTheVMCloses(t *testing.T) {
	local, remote := net.Pipe()
	stdin, _ := io.Pipe() // a terminal nobody types on
	var stdout, stderr syncBuffer
	done := make(chan error, 1)
	go func() {
		done <- Console(context.Background(), local, stdin, &stdout, &stderr, ConsoleOptions{Name: "web1"})
	}()
	io.WriteString(remote, "reboot: Power down\n")
	remote.Close()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("console did not end when the stream closed")
	}
	if stdout.String() != "reboot: Power down\n" || !strings.Contains(stderr.String(), "console of VM web1 closed") {
		t.Errorf("stdout %q stderr %q", stdout.String(), stderr.String())
	}
}

func TestConsoleEndsWithContext(t *testing.T) {
	local, remote := net.Pipe()
	guest(t, remote)
	stdin, _ := io.Pipe()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	var stdout, stderr syncBuffer
	go func() {
		done <- Console(ctx, local, stdin, &stdout, &stderr, ConsoleOptions{Name: "web1", Quiet: true})
	}()
	waitFor(t, &stdout, "guest$ ")
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("console did not end with its context")
	}
	if stderr.String() != "" {
		t.Errorf("quiet console wrote %q", stderr.String())
	}
	// The stream was closed: the guest side sees it.
	if _, err := remote.Write([]byte("x")); err == nil {
		t.Error("the console stream is still open")
	}
}

func waitFor(t *testing.T, b *syncBuffer, want string) {
	t.Helper()
	if err := wait.For(10*time.Second, func() bool { return strings.Contains(b.String(), want) }); err != nil {
		t.Fatalf("%v waiting for %q; have %q", err, want, b.String())
	}
}
