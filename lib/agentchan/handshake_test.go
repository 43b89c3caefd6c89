package agentchan

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"testing/iotest"
	"time"

	"github.com/hashicorp/yamux"
)

// frame is a yamux frame: its 12-byte header and, for a data frame
// (type 0), its payload.
func frame(typ byte, stream uint32, length uint32, payload []byte) []byte {
	h := make([]byte, yamuxHeader)
	h[0], h[1] = 0, typ
	binary.BigEndian.PutUint32(h[4:], stream)
	binary.BigEndian.PutUint32(h[8:], length)
	return append(h, payload...)
}

type closeCounter struct {
	io.Reader
	closed int
}

func (c *closeCounter) Write(p []byte) (int, error) { return len(p), nil }
func (c *closeCounter) Close() error                { c.closed++; return nil }

// The watch passes yamux frames through whole — payloads that hold
// handshake bytes, zeros and newlines, and a window update whose length
// counts no payload — and stops exactly where a handshake line begins
// instead of a frame, however the stream is cut into reads; the session's
// close then leaves the stream open and the rest is there for Accept.
func TestFrameWatchStopsWhereTheHostStartsOver(t *testing.T) {
	payload := []byte("VOLANT-AGENT 1 not-a-handshake\n\x00\x00\x01V")
	frames := bytes.Join([][]byte{
		frame(yamuxData, 1, uint32(len(payload)), payload),
		frame(1, 1, 256<<10, nil), // window update: length is a delta
		frame(2, 0, 7, nil),       // ping
		frame(yamuxData, 3, 0, nil),
	}, nil)
	hello := []byte(magic + " 1 0123abcd\n")
	after := []byte("more bytes after the line")
	stream := bytes.Join([][]byte{frames, hello, after}, nil)
	for name, wrap := range map[string]func(io.Reader) io.Reader{
		"whole":    func(r io.Reader) io.Reader { return r },
		"one byte": iotest.OneByteReader,
		"halves":   iotest.HalfReader,
	} {
		t.Run(name, func(t *testing.T) {
			conn := &closeCounter{Reader: wrap(bytes.NewReader(stream))}
			w := newFrameWatch(conn, conn)
			got, err := io.ReadAll(w)
			if err != errHostRestarted {
				t.Fatalf("reading the session's stream ended with %v, want errHostRestarted", err)
			}
			if !bytes.Equal(got, frames) {
				t.Fatalf("the session read %q, want exactly the frames %q", got, frames)
			}
			if w.Close(); conn.closed != 0 {
				t.Error("closing the ended session closed the stream the next session needs")
			}
			next := (&GuestSession{w: w}).Restarted()
			if next == nil {
				t.Fatal("Restarted = nil after the host started over")
			}
			rest, _ := io.ReadAll(next)
			if want := append(append([]byte{}, hello...), after...); !bytes.Equal(rest, want) {
				t.Errorf("the next session reads %q, want %q", rest, want)
			}
		})
	}

	// A stream that ends between frames is an ordinary end: nothing to
	// restart, and the close closes the stream.
	conn := &closeCounter{Reader: bytes.NewReader(frames)}
	w := newFrameWatch(conn, conn)
	if _, err := io.ReadAll(w); err != nil {
		t.Fatal(err)
	}
	if (&GuestSession{w: w}).Restarted() != nil {
		t.Error("Restarted != nil for a stream that just ended")
	}
	if w.Close(); conn.closed != 1 {
		t.Errorf("the stream was closed %d times, want 1", conn.closed)
	}
}

// connectTo runs Connect against a guest that reads the host's handshake
// line, writes answer(nonce) and serves a yamux session, and checks that
// the session is up with the hello of VM "right".
func connectTo(t *testing.T, answer func(nonce string) string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	host, guest := net.Pipe()
	defer host.Close()
	defer guest.Close()
	go func() {
		line, err := bufio.NewReader(guest).ReadString('\n')
		if err != nil {
			return
		}
		io.WriteString(guest, answer(strings.TrimSpace(strings.TrimPrefix(line, fmt.Sprintf("%s %d ", magic, ProtocolVersion)))))
		yamux.Server(guest, YamuxConfig())
	}()
	sess, err := Connect(ctx, host)
	if err != nil {
		t.Fatalf("Connect: %v", err)
	}
	defer sess.Close()
	if sess.Hello.VM != "right" {
		t.Errorf("hello %+v, want the one answering this host's nonce", sess.Hello)
	}
}

// The host finds the guest's hello after bytes of a session the guest
// held before on the same stream, even on the same line (a restored
// guest's old session may write part of a frame before it ends).
func TestConnectFindsTheHelloAfterStaleBytes(t *testing.T) {
	connectTo(t, func(nonce string) string {
		return fmt.Sprintf("old\nlines\n%s %d other-nonce {\"vm\":\"wrong\"}\n\x00\x00\x00\x01stale frame%s %d %s {\"agent\":\"test\",\"vm\":\"right\"}\n",
			magic, ProtocolVersion, magic, ProtocolVersion, nonce)
	})
}

// recorder is a byte stream that reads from Reader and keeps what is
// written to it.
type recorder struct {
	io.Reader
	mu  sync.Mutex
	out bytes.Buffer
}

func (r *recorder) Write(p []byte) (int, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.out.Write(p)
}

func (r *recorder) Close() error { return nil }

func (r *recorder) written() []byte {
	r.mu.Lock()
	defer r.mu.Unlock()
	return bytes.Clone(r.out.Bytes())
}

// A restored guest's old session may have been paused between writing a
// frame's header and its payload. The host that starts over skips what
// the guest sends before the answer to its handshake, but reads all that
// follows as frames of the new session: the old session's payload must
// come before the answer, and nothing of the old session after it.
func TestTheNextSessionAnswersAfterTheOldSessionsLastFrame(t *testing.T) {
	conn := &recorder{Reader: strings.NewReader(magic + " 1 f00d\n")}
	w := newFrameWatch(conn, conn)
	hdr := frame(yamuxData, 2, 5, nil)
	if _, err := w.Write(hdr); err != nil { // paused here, then restored
		t.Fatal(err)
	}
	if _, err := io.ReadAll(w); err != errHostRestarted {
		t.Fatalf("reading the old session's stream ended with %v, want errHostRestarted", err)
	}
	next := (&GuestSession{w: w}).Restarted()
	accepted := make(chan error, 1)
	go func() {
		g, err := Accept(next, Hello{Agent: "test"})
		if err == nil {
			g.Close()
		}
		accepted <- err
	}()
	// The old session's send loop writes the payload when it runs again:
	// here, after the next session's answer had every chance to go first.
	var err error
	answered := false
	select {
	case err = <-accepted:
		answered = true
		t.Logf("the next session answered before the old one's payload (%v)", err)
	case <-time.After(200 * time.Millisecond):
	}
	if _, err := w.Write([]byte("12345")); err != nil {
		t.Errorf("the old session could not finish its frame: %v", err)
	}
	if !answered {
		select {
		case err = <-accepted:
		case <-time.After(20 * time.Second):
			t.Fatal("the next session never answered")
		}
	}
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.Write(frame(yamuxData, 2, 0, nil)); err == nil {
		t.Error("the old session wrote a frame after the next session's answer")
	}
	want := append(append(bytes.Clone(hdr), "12345"...), magic+" 1 f00d "...)
	if got := conn.written(); !bytes.HasPrefix(got, want) || bytes.Count(got, []byte("\n")) != 1 || got[len(got)-1] != '\n' {
		t.Errorf("the host read %q, want the old frame whole, then the answer line alone (%q...)", got, want)
	}
}

// Stale bytes with no newline for longer than the host's read buffer
// (64 KiB) are skipped in pieces; the answer that follows them is found
// also where a piece ends inside it.
func TestConnectFindsAHelloAcrossItsBuffer(t *testing.T) {
	for _, before := range []int{64<<10 - 20, 64<<10 - 1, 64 << 10, 3 << 16} {
		t.Run(fmt.Sprint(before), func(t *testing.T) {
			connectTo(t, func(nonce string) string {
				return fmt.Sprintf("%s%s %d %s {\"agent\":\"test\",\"vm\":\"right\"}\n", make([]byte, before), magic, ProtocolVersion, nonce)
			})
		})
	}
}
