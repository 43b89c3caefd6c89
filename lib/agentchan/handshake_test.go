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
			w := &frameWatch{r: conn, conn: conn}
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
	w := &frameWatch{r: conn, conn: conn}
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

// The host finds the guest's hello after bytes of a session the guest
// held before on the same stream, even on the same line (a restored
// guest's old session may write part of a frame before it ends).
func TestConnectFindsTheHelloAfterStaleBytes(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	host, guest := net.Pipe()
	defer host.Close()
	defer guest.Close()
	go func() {
		line, err := bufio.NewReader(guest).ReadString('\n')
		if err != nil {
			return
		}
		nonce := strings.TrimSpace(strings.TrimPrefix(line, fmt.Sprintf("%s %d ", magic, ProtocolVersion)))
		fmt.Fprintf(guest, "old\nlines\n%s %d other-nonce {\"vm\":\"wrong\"}\n\x00\x00\x00\x01stale frame%s %d %s {\"agent\":\"test\",\"vm\":\"right\"}\n",
			magic, ProtocolVersion, magic, ProtocolVersion, nonce)
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
