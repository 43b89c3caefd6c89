package agenthub_test

import (
	"archive/tar"
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/volantvm/volant/lib/agentchan"
	"github.com/volantvm/volant/lib/agenthub"
)

// copyIn streams a tar of one file of size zero bytes into the guest's
// dir through the supervisor's socket (volant-launch cp), counting the
// bytes sent; the result arrives on the returned channel.
func copyIn(ctx context.Context, t *testing.T, socket, dir string, size int64, sent *atomic.Int64) <-chan error {
	t.Helper()
	sess, err := agentchan.Dial(ctx, socket)
	if err != nil {
		t.Fatal(err)
	}
	pr, pw := io.Pipe()
	go func() {
		tw := tar.NewWriter(pw)
		if err := tw.WriteHeader(&tar.Header{Name: "zeros", Mode: 0o600, Size: size, Typeflag: tar.TypeReg}); err != nil {
			pw.CloseWithError(err)
			return
		}
		buf := make([]byte, 32<<10)
		for left := size; left > 0; {
			n, err := tw.Write(buf[:min(left, int64(len(buf)))])
			sent.Add(int64(n))
			left -= int64(n)
			if err != nil {
				pw.CloseWithError(err)
				return
			}
		}
		pw.CloseWithError(tw.Close())
	}()
	done := make(chan error, 1)
	go func() {
		defer sess.Close()
		res, err := sess.WriteTar(ctx, dir, pr)
		pr.CloseWithError(io.ErrClosedPipe)
		if err == nil && res.Bytes != size {
			err = fmt.Errorf("the guest wrote %d bytes of %d", res.Bytes, size)
		}
		done <- err
	}()
	return done
}

// snapshotPause is what lib/launch.Snapshot does to the agent channel
// before it pauses the VM (the supervisor's quiesce op), then the pause,
// at the worst moment the model can find. It returns the function that
// ends the quiesce (after the VM was saved and resumed) and whether the
// pause left the guest with a frame of the host's half read.
func snapshotPause(ctx context.Context, t *testing.T, socket string, port *serialPort) (release func(), midFrame bool) {
	t.Helper()
	sess, err := agentchan.Dial(ctx, socket)
	if err != nil {
		t.Fatal(err)
	}
	var rep agentchan.QuiesceReply
	st, err := sess.Call(ctx, agentchan.Request{Op: agentchan.OpQuiesce}, &rep)
	switch {
	case err != nil:
		t.Logf("quiesce: %v", err)
	case !rep.Quiet:
		t.Logf("quiesce: not quiet after %d ms: %s", rep.WaitedMS, rep.Detail)
	default:
		t.Logf("quiesce: quiet after %d ms", rep.WaitedMS)
	}
	midFrame = port.pause(300 * time.Millisecond)
	return func() {
		if st != nil {
			st.Conn.Close()
		}
		sess.Close()
	}, midFrame
}

// A VM is snapshotted while the host streams a copy into it (more than
// the guest has taken in, as in TestVMSnapshotMidFrame), and its pause
// comes at the worst moment the model of the virtio-serial port finds: as
// soon as the guest has read a data frame's header but not its payload.
// Without the quiesce that is what happens, and the VM restored from the
// snapshot reads its new host's handshake as that payload: it never
// answers it, and only Redial, 15 s later in a restore, frees it. With the
// supervisor holding the channel still first, the pause finds the guest
// between frames, the restored guest answers its new host's first
// handshake, and the source, resumed and released, finishes its copy.
func TestSnapshotDoesNotCutAFrame(t *testing.T) {
	for _, restore := range []bool{true, false} {
		name := map[bool]string{true: "restored clone", false: "resumed source"}[restore]
		t.Run(name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			// Not t.TempDir: the restored guest's old session may still
			// be writing its file until the guest stops (removed after).
			into, err := os.MkdirTemp("", "quiesce-test-")
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { os.RemoveAll(into) })
			port := startSerialGuest(ctx, t)

			dir := t.TempDir()
			socket := filepath.Join(dir, "src.sock")
			src, err := agenthub.Start(ctx, agenthub.Options{VM: "saved", Dial: port.dial, Socket: socket})
			if err != nil {
				t.Fatal(err)
			}
			defer src.Close()
			const size = 8 << 20
			var sent atomic.Int64
			copied := copyIn(ctx, t, socket, into, size, &sent)
			for sent.Load() < 512<<10 {
				select {
				case err := <-copied:
					t.Fatalf("the copy ended before the snapshot: %v", err)
				case <-time.After(5 * time.Millisecond):
				}
			}

			release, midFrame := snapshotPause(ctx, t, socket, port)
			if midFrame {
				t.Errorf("the VM was paused with a frame of the host's half read (%d of %d bytes sent)", sent.Load(), size)
			}
			if !restore {
				port.resume()
				release()
				if err := <-copied; err != nil {
					t.Fatalf("the copy after the snapshot: %v", err)
				}
				return
			}
			// The clone's guest: the source's supervisor is gone (it
			// runs on with the source VM), without the guest seeing it go.
			port.restore()
			src.Close()
			release()

			clone, err := agenthub.Start(ctx, agenthub.Options{VM: "clone", Dial: port.dial,
				Socket: filepath.Join(dir, "clone.sock"), GuestWait: time.Minute})
			if err != nil {
				t.Fatal(err)
			}
			defer clone.Close()
			clone.Wake()
			sctx, scancel := context.WithTimeout(ctx, 10*time.Second)
			sess, err := clone.Session(sctx)
			scancel()
			if err != nil {
				t.Fatalf("the restored guest did not answer its new host's first handshake (it would wait for a redial): %v", err)
			}
			if sess.Hello.VM != "saved" {
				t.Errorf("hello %+v", sess.Hello)
			}
		})
	}
}
