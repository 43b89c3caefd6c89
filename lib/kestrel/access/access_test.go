package access

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/sha256"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/volantvm/volant/lib/agentchan"
	"github.com/volantvm/volant/lib/apierr"
	"github.com/volantvm/volant/lib/kestrel/outlog"
	"github.com/volantvm/volant/lib/kestrel/reaper"
	"github.com/volantvm/volant/lib/testutil/wait"
)

// socketpair returns two connected unix stream sockets, as the two ends
// of the channel's byte stream.
func socketpair(t *testing.T) (host, guest net.Conn) {
	t.Helper()
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	conn := func(fd int) net.Conn {
		f := os.NewFile(uintptr(fd), "sp")
		c, err := net.FileConn(f)
		f.Close()
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	return conn(fds[0]), conn(fds[1])
}

type fixture struct {
	srv  *Server
	sess *agentchan.Session
	out  *outlog.Store
}

// start serves a Server on one end of a socket pair, with stale bytes in
// both directions before the handshake, and connects a host session to
// the other end.
func start(t *testing.T) *fixture {
	t.Helper()
	if _, err := os.Stat("/bin/sh"); err != nil {
		t.Skip("needs /bin/sh")
	}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	r := reaper.New(nil)
	go r.Run(ctx)
	out := outlog.New(1 << 20)
	srv := New(Config{VM: "test", Version: "test", Reaper: r, Output: out,
		WorkloadEnv: func() ([]string, string) {
			return []string{"FROM_WORKLOAD=1", "PATH=/usr/sbin:/usr/bin:/sbin:/bin"}, "/tmp"
		}})
	host, guest := socketpair(t)
	// Leftovers of an earlier session on the byte stream.
	host.Write([]byte("\x00\x01garbage\nVOLANT-AGENT 9 nope\n"))
	guest.Write([]byte("old yamux frames \x02\x03\n"))
	done := make(chan struct{})
	go func() {
		defer close(done)
		srv.ServeConn(ctx, guest)
	}()
	hctx, hcancel := context.WithTimeout(ctx, 10*time.Second)
	defer hcancel()
	sess, err := agentchan.Connect(hctx, host)
	if err != nil {
		t.Fatalf("handshake: %v", err)
	}
	if sess.Hello.Agent != "kestrel" || sess.Hello.VM != "test" || len(sess.Hello.Ops) == 0 {
		t.Fatalf("hello = %+v", sess.Hello)
	}
	t.Cleanup(func() {
		sess.Close()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			t.Error("the server did not end with the session")
		}
	})
	return &fixture{srv: srv, sess: sess, out: out}
}

type buf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *buf) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *buf) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

func TestExecStreamsAndStatus(t *testing.T) {
	f := start(t)
	var stdout, stderr buf
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	exit, err := f.sess.Exec(ctx, agentchan.ExecRequest{
		Argv: []string{"sh", "-c", `echo "out $FROM_WORKLOAD $EXTRA $(pwd)"; echo err >&2; exit 3`},
		Env:  []string{"EXTRA=x y"},
	}, agentchan.ExecIO{Stdout: &stdout, Stderr: &stderr})
	if err != nil {
		t.Fatal(err)
	}
	if exit.Code != 3 || exit.Signal != "" {
		t.Errorf("exit = %+v, want code 3", exit)
	}
	if got := stdout.String(); got != "out 1 x y /tmp\n" {
		t.Errorf("stdout = %q", got)
	}
	if got := stderr.String(); got != "err\n" {
		t.Errorf("stderr = %q", got)
	}
	// Working directory and user.
	stdout = buf{}
	exit, err = f.sess.Exec(ctx, agentchan.ExecRequest{Argv: []string{"sh", "-c", "pwd; id -u; id -g"}, Dir: "/", User: "65534:65533"},
		agentchan.ExecIO{Stdout: &stdout})
	if err != nil || exit.Code != 0 {
		t.Fatalf("exec: %v %+v", err, exit)
	}
	if got := stdout.String(); got != "/\n65534\n65533\n" {
		t.Errorf("pwd/id = %q", got)
	}
}

func TestExecStdin(t *testing.T) {
	f := start(t)
	var stdout buf
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	data := bytes.Repeat([]byte("0123456789abcdef"), 64<<10) // 1 MiB, more than any window
	exit, err := f.sess.Exec(ctx, agentchan.ExecRequest{Argv: []string{"sha256sum"}, Stdin: true},
		agentchan.ExecIO{Stdin: bytes.NewReader(data), Stdout: &stdout})
	if err != nil || exit.Code != 0 {
		t.Fatalf("exec: %v %+v", err, exit)
	}
	sum := sha256.Sum256(data)
	if !strings.HasPrefix(stdout.String(), hexs(sum[:])) {
		t.Errorf("sha256sum of stdin = %q, want %x", stdout.String(), sum)
	}
}

func hexs(b []byte) string {
	const digits = "0123456789abcdef"
	var s strings.Builder
	for _, c := range b {
		s.WriteByte(digits[c>>4])
		s.WriteByte(digits[c&15])
	}
	return s.String()
}

// A command that never reads its stdin still ends, and the client is not
// stuck on the stdin it is still sending.
func TestExecIgnoresStdin(t *testing.T) {
	f := start(t)
	pr, pw := io.Pipe()
	defer pw.Close()
	go func() {
		chunk := make([]byte, 64<<10)
		for {
			if _, err := pw.Write(chunk); err != nil {
				return
			}
		}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	var stdout buf
	exit, err := f.sess.Exec(ctx, agentchan.ExecRequest{Argv: []string{"sh", "-c", "sleep 0.3; echo done"}, Stdin: true},
		agentchan.ExecIO{Stdin: pr, Stdout: &stdout})
	if err != nil || exit.Code != 0 || stdout.String() != "done\n" {
		t.Fatalf("exec: %v %+v %q", err, exit, stdout.String())
	}
}

func TestExecErrors(t *testing.T) {
	f := start(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	_, err := f.sess.Exec(ctx, agentchan.ExecRequest{Argv: []string{"no-such-command-here"}}, agentchan.ExecIO{})
	if !apierr.Is(err, apierr.NotFound) || apierr.From(err).Details["reason"] != "not_found" {
		t.Errorf("missing command: %v, want NOT_FOUND reason not_found", err)
	}
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "data"), []byte("not a program"), 0o644)
	_, err = f.sess.Exec(ctx, agentchan.ExecRequest{Argv: []string{filepath.Join(dir, "data")}}, agentchan.ExecIO{})
	if !apierr.Is(err, apierr.PermissionDenied) {
		t.Errorf("not executable: %v, want PERMISSION_DENIED", err)
	}
	_, err = f.sess.Exec(ctx, agentchan.ExecRequest{Argv: []string{"true"}, Dir: "/no/such/dir"}, agentchan.ExecIO{})
	if !apierr.Is(err, apierr.NotFound) {
		t.Errorf("missing workdir: %v, want NOT_FOUND", err)
	}
	_, err = f.sess.Exec(ctx, agentchan.ExecRequest{Argv: []string{"true"}, User: "root"}, agentchan.ExecIO{})
	if !apierr.Is(err, apierr.InvalidInput) {
		t.Errorf("bad user: %v, want INVALID_INPUT", err)
	}
	if n := f.srv.Running(); n != 0 {
		t.Errorf("%d execs still running", n)
	}
}

func TestExecTTY(t *testing.T) {
	f := start(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	var stdout buf
	pr, pw := io.Pipe()
	ctl := make(chan agentchan.Control, 1)
	done := make(chan struct{})
	var exit *agentchan.ExitStatus
	var err error
	go func() {
		defer close(done)
		exit, err = f.sess.Exec(ctx, agentchan.ExecRequest{
			Argv: []string{"sh", "-c", `tty; stty size; echo "term=$TERM"; read line; echo "got $line"; stty size; exit 5`},
			TTY:  true, Stdin: true, Size: &agentchan.Size{Rows: 24, Cols: 80},
		}, agentchan.ExecIO{Stdin: pr, Stdout: &stdout, Control: ctl})
	}()
	waitFor(t, &stdout, "term=xterm")
	ctl <- agentchan.Control{Resize: &agentchan.Size{Rows: 50, Cols: 132}}
	time.Sleep(100 * time.Millisecond)
	pw.Write([]byte("hello\n"))
	<-done
	if err != nil || exit.Code != 5 {
		t.Fatalf("exec: %v %+v\n%s", err, exit, stdout.String())
	}
	out := stdout.String()
	for _, want := range []string{"/dev/pts/", "24 80\r\n", "got hello\r\n", "50 132\r\n"} {
		if !strings.Contains(out, want) {
			t.Errorf("terminal output lacks %q:\n%q", want, out)
		}
	}
}

func waitFor(t *testing.T, b *buf, s string) {
	t.Helper()
	if err := wait.For(10*time.Second, func() bool { return strings.Contains(b.String(), s) }); err != nil {
		t.Fatalf("output never showed %q (%v): %q", s, err, b.String())
	}
}

func TestExecSignal(t *testing.T) {
	f := start(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	ctl := make(chan agentchan.Control, 1)
	exit, err := f.sess.Exec(ctx, agentchan.ExecRequest{Argv: []string{"sleep", "100"}},
		agentchan.ExecIO{Control: ctl, Started: func(int) { ctl <- agentchan.Control{Signal: "TERM"} }})
	if err != nil {
		t.Fatal(err)
	}
	if exit.Code != 128+15 || exit.Signal != "SIGTERM" {
		t.Errorf("exit = %+v, want 143 SIGTERM", exit)
	}
}

// A client that goes away leaves nothing running: the command and what
// it started in the background get SIGHUP, then SIGKILL.
func TestExecClientGone(t *testing.T) {
	f := start(t)
	ctx, cancel := context.WithCancel(context.Background())
	var stdout buf
	pid := make(chan int, 1)
	done := make(chan error, 1)
	go func() {
		_, err := f.sess.Exec(ctx, agentchan.ExecRequest{Argv: []string{"sh", "-c", `trap "" HUP; sleep 1000 & echo "child $!"; wait`}},
			agentchan.ExecIO{Stdout: &stdout, Started: func(p int) { pid <- p }})
		done <- err
	}()
	leader := <-pid
	waitFor(t, &stdout, "child ")
	child, _ := strconv.Atoi(strings.TrimSpace(strings.TrimPrefix(stdout.String(), "child ")))
	cancel()
	if err := <-done; !apierr.Is(err, apierr.Canceled) {
		t.Errorf("canceled exec returned %v, want CANCELED", err)
	}
	deadline := time.Now().Add(agentchan.HangupGrace + 5*time.Second)
	for _, p := range []int{leader, child} {
		for alive(p) {
			if time.Now().After(deadline) {
				t.Fatalf("pid %d still runs after its client left", p)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	for f.srv.Running() != 0 {
		if time.Now().After(deadline) {
			t.Fatal("the exec is still counted as running")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// alive reports a process that exists and is not a zombie.
func alive(pid int) bool {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return false
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	return i > 0 && i+2 < len(s) && s[i+2] != 'Z'
}

func TestConcurrentExecs(t *testing.T) {
	f := start(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	const n = 50
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var out buf
			exit, err := f.sess.Exec(ctx, agentchan.ExecRequest{Argv: []string{"echo", strconv.Itoa(i)}}, agentchan.ExecIO{Stdout: &out})
			if err == nil && (exit.Code != 0 || out.String() != strconv.Itoa(i)+"\n") {
				err = io.ErrUnexpectedEOF
			}
			errs <- err
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	// Streams close once both sides said so: give the last ones a moment.
	deadline := time.Now().Add(5 * time.Second)
	for f.sess.Streams() != 0 {
		if time.Now().After(deadline) {
			t.Fatalf("%d streams left open", f.sess.Streams())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestCopyBothWays(t *testing.T) {
	f := start(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	src := t.TempDir()
	os.MkdirAll(filepath.Join(src, "tree/sub"), 0o750)
	big := bytes.Repeat([]byte("volant"), 1<<20)
	os.WriteFile(filepath.Join(src, "tree/big"), big, 0o640)
	os.WriteFile(filepath.Join(src, "tree/sub/x.sh"), []byte("#!/bin/sh\n"), 0o755)
	os.Symlink("sub/x.sh", filepath.Join(src, "tree/link"))
	os.Link(filepath.Join(src, "tree/big"), filepath.Join(src, "tree/hard"))

	guest := t.TempDir() // the "guest's" side: same machine here
	res, err := f.sess.CopyTo(ctx, filepath.Join(src, "tree"), guest+"/", nil)
	if err != nil {
		t.Fatal(err)
	}
	if res.Files != 6 || res.Bytes != int64(len(big))+10 {
		t.Errorf("copy in: %+v", res)
	}
	checkTree(t, filepath.Join(guest, "tree"), big)

	// Out again, under a new name.
	back := t.TempDir()
	if _, err := f.sess.CopyFrom(ctx, filepath.Join(guest, "tree"), filepath.Join(back, "copy"), nil); err != nil {
		t.Fatal(err)
	}
	checkTree(t, filepath.Join(back, "copy"), big)

	// A single file, renamed on the way in.
	if _, err := f.sess.CopyTo(ctx, filepath.Join(src, "tree/sub/x.sh"), filepath.Join(guest, "renamed.sh"), nil); err != nil {
		t.Fatal(err)
	}
	if st, err := os.Stat(filepath.Join(guest, "renamed.sh")); err != nil || st.Mode().Perm() != 0o755 {
		t.Errorf("renamed file: %v %v", st, err)
	}

	// Errors.
	if _, err := f.sess.CopyFrom(ctx, "/no/such/path", back, nil); !apierr.Is(err, apierr.NotFound) {
		t.Errorf("missing guest path: %v, want NOT_FOUND", err)
	}
	if _, err := f.sess.CopyTo(ctx, filepath.Join(src, "tree"), "/no/such/dir/x", nil); !apierr.Is(err, apierr.NotFound) {
		t.Errorf("missing guest directory: %v, want NOT_FOUND", err)
	}
}

func checkTree(t *testing.T, dir string, big []byte) {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, "big"))
	if err != nil || !bytes.Equal(b, big) {
		t.Errorf("%s/big: %d bytes, %v", dir, len(b), err)
	}
	if st, _ := os.Stat(filepath.Join(dir, "big")); st == nil || st.Mode().Perm() != 0o640 {
		t.Errorf("%s/big mode: %v", dir, st)
	}
	if st, _ := os.Stat(filepath.Join(dir, "sub")); st == nil || st.Mode().Perm() != 0o750 {
		t.Errorf("%s/sub mode: %v", dir, st)
	}
	if l, err := os.Readlink(filepath.Join(dir, "link")); err != nil || l != "sub/x.sh" {
		t.Errorf("%s/link: %q %v", dir, l, err)
	}
	a, _ := os.Stat(filepath.Join(dir, "big"))
	h, _ := os.Stat(filepath.Join(dir, "hard"))
	if a == nil || h == nil || !os.SameFile(a, h) {
		t.Errorf("%s/hard is not a hard link of big", dir)
	}
}

// Archives that try to leave the destination are refused, and nothing is
// written outside it.
func TestCopyRefusesEscapes(t *testing.T) {
	f := start(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	outside := t.TempDir()
	cases := map[string][]*tar.Header{
		"dotdot":   {{Name: "../escaped", Typeflag: tar.TypeReg, Mode: 0o644, Size: 1}},
		"absolute": {{Name: "/escaped", Typeflag: tar.TypeReg, Mode: 0o644, Size: 1}},
		"symlink": {
			{Name: "d", Typeflag: tar.TypeSymlink, Linkname: outside},
			{Name: "d/escaped", Typeflag: tar.TypeReg, Mode: 0o644, Size: 1},
		},
		"hardlink": {{Name: "h", Typeflag: tar.TypeLink, Linkname: "../../etc/passwd"}},
	}
	for name, hs := range cases {
		t.Run(name, func(t *testing.T) {
			var b bytes.Buffer
			tw := tar.NewWriter(&b)
			for _, h := range hs {
				tw.WriteHeader(h)
				if h.Size > 0 {
					tw.Write([]byte("x"))
				}
			}
			tw.Close()
			dest := t.TempDir()
			_, err := f.sess.WriteTar(ctx, dest, &b)
			if !apierr.Is(err, apierr.InvalidInput) {
				t.Errorf("got %v, want INVALID_INPUT", err)
			}
			if _, err := os.Stat(filepath.Join(outside, "escaped")); err == nil {
				t.Error("a file was written outside the destination")
			}
			if _, err := os.Stat(filepath.Join(filepath.Dir(dest), "escaped")); err == nil {
				t.Error("a file was written beside the destination")
			}
		})
	}
	// The host side refuses the same when extracting.
	var b bytes.Buffer
	tw := tar.NewWriter(&b)
	tw.WriteHeader(&tar.Header{Name: "../up", Typeflag: tar.TypeReg, Mode: 0o644})
	tw.Close()
	if _, err := agentchan.ExtractTar(&b, t.TempDir(), ""); !apierr.Is(err, apierr.InvalidInput) {
		t.Errorf("host extraction of ../up: %v", err)
	}
}

// A failure early in a big upload answers at once, and the host stops
// sending instead of hanging on a full window.
func TestCopyEarlyFailure(t *testing.T) {
	f := start(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	pr, pw := io.Pipe()
	go func() {
		tw := tar.NewWriter(pw)
		tw.WriteHeader(&tar.Header{Name: "../bad", Typeflag: tar.TypeReg, Mode: 0o644, Size: 1 << 30})
		tw.Write(make([]byte, 1<<20)) // blocks once the guest stops reading
		pw.Close()
	}()
	_, err := f.sess.WriteTar(ctx, t.TempDir(), pr)
	if !apierr.Is(err, apierr.InvalidInput) {
		t.Fatalf("got %v, want INVALID_INPUT", err)
	}
}

func TestLogs(t *testing.T) {
	f := start(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	f.out.Append("stdout", []byte("one\n"))
	f.out.Append("stderr", []byte("two\n"))
	st, err := f.sess.Call(ctx, agentchan.LogsRequest{Op: agentchan.OpLogs, From: -1}, &agentchan.Reply{})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Conn.Close()
	read := func() (agentchan.LogRecord, string) {
		var r agentchan.LogRecord
		if err := st.ReadLine(&r); err != nil {
			t.Fatal(err)
		}
		data := make([]byte, r.N)
		if _, err := io.ReadFull(st, data); err != nil {
			t.Fatal(err)
		}
		return r, string(data)
	}
	if r, d := read(); r.Stream != "stdout" || d != "one\n" || r.Seq != 0 || r.Time == 0 {
		t.Errorf("first record %+v %q", r, d)
	}
	if r, d := read(); r.Stream != "stderr" || d != "two\n" || r.Seq != 4 {
		t.Errorf("second record %+v %q", r, d)
	}
	// Followed: new output arrives as it is written.
	f.out.Append("stdout", []byte("three\n"))
	if r, d := read(); d != "three\n" || r.Seq != 8 {
		t.Errorf("followed record %+v %q", r, d)
	}
}
