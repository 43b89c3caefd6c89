package agent

import (
	"errors"
	"io"
	"net"
	"strconv"
	"testing"

	"golang.org/x/sys/unix"
)

// TestListenBeforeServing: the API's socket takes connections into its
// backlog from Listen on, before anything accepts (an early request is
// answered once the API serves); it is not inherited by the workload;
// closed before serving, it refuses what waited and frees its port.
func TestListenBeforeServing(t *testing.T) {
	for _, addr := range []string{"127.0.0.1:0", "localhost:0"} {
		t.Run(addr, func(t *testing.T) {
			ln, err := New(Config{Listen: addr}).Listen()
			if err != nil {
				t.Fatal(err)
			}
			port := ln.Addr().(*net.TCPAddr).Port
			if port == 0 {
				t.Fatalf("Addr() = %v: no port", ln.Addr())
			}
			early, err := net.Dial("tcp", "127.0.0.1:"+strconv.Itoa(port))
			if err != nil {
				t.Fatalf("connecting before the first Accept: %v", err)
			}
			defer early.Close()
			if _, err := early.Write([]byte("ping")); err != nil {
				t.Fatal(err)
			}
			c, err := ln.Accept()
			if err != nil {
				t.Fatal(err)
			}
			buf := make([]byte, 4)
			if _, err := io.ReadFull(c, buf); err != nil || string(buf) != "ping" {
				t.Fatalf("read %q, %v", buf, err)
			}
			c.Close()
			if err := ln.Close(); err != nil {
				t.Fatal(err)
			}
			if _, err := ln.Accept(); !errors.Is(err, net.ErrClosed) {
				t.Fatalf("Accept after Close: %v, want net.ErrClosed", err)
			}
		})
	}
	t.Run("closed before serving", func(t *testing.T) {
		ln, err := New(Config{Listen: "127.0.0.1:0"}).Listen()
		if err != nil {
			t.Fatal(err)
		}
		addr := ln.Addr().String()
		waiting, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer waiting.Close()
		if err := ln.Close(); err != nil {
			t.Fatal(err)
		}
		if _, err := waiting.Read(make([]byte, 1)); err == nil {
			t.Fatal("a connection in the backlog of a closed listener read data")
		}
		if _, err := ln.Accept(); !errors.Is(err, net.ErrClosed) {
			t.Fatalf("Accept after Close: %v, want net.ErrClosed", err)
		}
		again, err := net.Listen("tcp", addr)
		if err != nil {
			t.Fatalf("the port stayed taken after Close: %v", err)
		}
		again.Close()
	})
	t.Run("close on exec", func(t *testing.T) {
		ln, err := New(Config{Listen: "127.0.0.1:0"}).Listen()
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		sl, ok := ln.(*socketListener)
		if !ok {
			t.Skipf("%T: the standard library's listener", ln)
		}
		flags, err := unix.FcntlInt(uintptr(sl.fd), unix.F_GETFD, 0)
		if err != nil || flags&unix.FD_CLOEXEC == 0 {
			t.Fatalf("F_GETFD = %#x, %v: the workload would inherit the API's socket", flags, err)
		}
	})
}
