package agentchan

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"time"

	"github.com/hashicorp/yamux"

	"github.com/volantvm/volant/lib/apierr"
)

// ProtocolVersion is the handshake's version.
const ProtocolVersion = 1

// PortName is the virtio-serial port the guest serves on (QEMU).
const PortName = "org.volant.agent"

// VsockPort is the vsock port kestrel listens on (Cloud Hypervisor).
const VsockPort = 1024

// UpgradeProtocol is the HTTP Upgrade token volantd's exec route switches
// to: the connection then carries a yamux session with this package's
// stream layout.
const UpgradeProtocol = "volant-agent/1"

// MaxLine bounds a request, reply or control line.
const MaxLine = 1 << 20

// HangupGrace is how long a process whose client went away has between
// SIGHUP and SIGKILL.
const HangupGrace = 2 * time.Second

// The operations.
const (
	OpExec   = "exec"
	OpAttach = "attach"
	OpRead   = "read"
	OpWrite  = "write"
	OpLogs   = "logs"
	OpInputs = "inputs"
)

// Hello is the guest's part of the handshake.
type Hello struct {
	Agent   string   `json:"agent"`   // "kestrel"
	Version string   `json:"version"` // the agent's build
	VM      string   `json:"vm,omitempty"`
	BootID  string   `json:"boot_id,omitempty"` // changes with every guest boot
	Ops     []string `json:"ops"`
	// Inputs is InputsWaiting while kestrel holds the workload until the
	// host sends the VM's inputs (InputsRequest), InputsReceived once it
	// has them, "" when the VM has none.
	Inputs string `json:"inputs,omitempty"`
}

// Hello.Inputs values.
const (
	InputsWaiting  = "waiting"
	InputsReceived = "received"
)

// Request is what every request line has.
type Request struct {
	Op string `json:"op"`
}

// Reply is what every reply line may carry. A reply with Error ends the
// stream.
type Reply struct {
	OK    bool          `json:"ok,omitempty"`
	Error *apierr.Error `json:"error,omitempty"`
}

// ExecRequest starts a process in the guest.
type ExecRequest struct {
	Op string `json:"op"` // "exec"
	// ID names the exec so its attach streams find it: 32 hex digits.
	ID   string   `json:"id"`
	Argv []string `json:"argv"`
	// Env is added to the workload's environment (KEY=VALUE; later wins).
	Env []string `json:"env,omitempty"`
	// Dir is the working directory ("" = the workload's, else /).
	Dir string `json:"dir,omitempty"`
	// User is "uid[:gid]" ("" = root).
	User string `json:"user,omitempty"`
	// TTY allocates a pseudo-terminal: stdin and stdout are the terminal,
	// there is no stderr stream.
	TTY bool `json:"tty,omitempty"`
	// Stdin says an attach stream for fd 0 follows; without it the
	// process reads /dev/null.
	Stdin bool `json:"stdin,omitempty"`
	// Size is the terminal's initial size (TTY only).
	Size *Size `json:"size,omitempty"`
}

// Size is a terminal's size.
type Size struct {
	Rows uint16 `json:"rows"`
	Cols uint16 `json:"cols"`
}

// ExecReply answers an ExecRequest once the process runs.
type ExecReply struct {
	Reply
	PID int `json:"pid,omitempty"`
}

// AttachRequest connects a standard stream (FD 0, 1 or 2) to exec ID.
type AttachRequest struct {
	Op string `json:"op"` // "attach"
	ID string `json:"id"`
	FD int    `json:"fd"`
}

// Control is a line on an exec's control stream after its reply: Resize
// and Signal from the host, Exit from the guest.
type Control struct {
	Resize *Size       `json:"resize,omitempty"`
	Signal string      `json:"signal,omitempty"` // "TERM", "SIGINT", "9", ...
	Exit   *ExitStatus `json:"exit,omitempty"`
}

// ExitStatus is how a process ended. Code is its exit status, or 128 plus
// the signal's number when a signal ended it (as shells report it).
type ExitStatus struct {
	Code   int    `json:"code"`
	Signal string `json:"signal,omitempty"` // e.g. "SIGKILL"
}

// ReadRequest asks for a tar stream of a guest path (a file, or a
// directory and everything under it). The archive's entries are named from
// the path's last element, as `tar -C dir(path) -c base(path)` would.
type ReadRequest struct {
	Op   string `json:"op"` // "read"
	Path string `json:"path"`
}

// ReadReply answers a ReadRequest before the tar stream.
type ReadReply struct {
	Reply
	Type string `json:"type,omitempty"` // "file", "dir", "symlink"
	Size int64  `json:"size,omitempty"` // of a file
}

// WriteRequest sends a tar stream into the guest. When Path is an existing
// directory the archive is extracted into it; otherwise Path's parent must
// be a directory, the archive must have one top-level entry, and that
// entry is written as Path (a rename, as `cp file newname` does).
type WriteRequest struct {
	Op   string `json:"op"` // "write"
	Path string `json:"path"`
}

// CopyResult ends a read or write stream.
type CopyResult struct {
	Reply
	Files int   `json:"files,omitempty"`
	Bytes int64 `json:"bytes,omitempty"`
	// Skipped counts entries not copied (device nodes, FIFOs, sockets).
	Skipped int `json:"skipped,omitempty"`
}

// LogsRequest subscribes to the workload's output from sequence From (the
// byte offset across both streams since the guest booted; negative = the
// oldest the guest still holds).
type LogsRequest struct {
	Op   string `json:"op"` // "logs"
	From int64  `json:"from"`
}

// LogRecord heads one piece of workload output: N bytes of Stream's output
// follow the line. A record with Gap > 0 carries no data: Gap bytes from
// Seq on were lost (the guest's buffer overflowed while the host was not
// reading), and output continues at Seq+Gap.
type LogRecord struct {
	Seq    int64  `json:"seq"`
	Stream string `json:"s,omitempty"` // "stdout" or "stderr"
	Time   int64  `json:"t,omitempty"` // unix nanoseconds
	N      int    `json:"n,omitempty"`
	Gap    int64  `json:"gap,omitempty"`
}

// The workload's streams.
const (
	Stdout = "stdout"
	Stderr = "stderr"
)

// YamuxConfig is the session configuration both sides use: no keepalive
// pings (an idle VM must stay idle; a dead peer shows as the byte stream's
// end), nothing logged.
func YamuxConfig() *yamux.Config {
	c := yamux.DefaultConfig()
	c.EnableKeepAlive = false
	c.LogOutput = io.Discard
	c.StreamOpenTimeout = 30 * time.Second
	c.StreamCloseTimeout = time.Minute
	c.ConnectionWriteTimeout = 30 * time.Second
	return c
}

// KeepAlive is how often the host pings the guest over a direct session
// (Connect): a guest whose agent ended its session without the byte stream
// ending (a virtio-serial port outlives its sessions) is noticed within
// about KeepAlive plus the write timeout, and the host reconnects. One
// wake-up of an idle guest a minute costs nothing measurable.
const KeepAlive = time.Minute

// Stream is a yamux stream with a buffered reader for its JSON lines; read
// the bytes after them through Stream too.
type Stream struct {
	net.Conn
	r *bufio.Reader
}

// NewStream wraps c.
func NewStream(c net.Conn) *Stream { return &Stream{Conn: c, r: bufio.NewReaderSize(c, 4096)} }

// Read reads what follows the lines read so far.
func (s *Stream) Read(p []byte) (int, error) { return s.r.Read(p) }

// Buffered is the number of bytes read from the stream but not yet
// consumed.
func (s *Stream) Buffered() int { return s.r.Buffered() }

// CloseWrite ends this side's writing (a yamux half close): the peer reads
// EOF, and this side can still read.
func (s *Stream) CloseWrite() error { return s.Conn.Close() }

// Abort closes the stream and ends pending reads and writes at once (a
// plain Close is a half close that leaves reads waiting for the peer).
func (s *Stream) Abort() {
	s.Conn.SetDeadline(time.Now())
	s.Conn.Close()
}

// WriteLine writes v as one line of JSON.
func (s *Stream) WriteLine(v any) error { return WriteLine(s.Conn, v) }

// ReadLine reads one line of JSON into v. Unknown fields are ignored: a
// newer peer may send more.
func (s *Stream) ReadLine(v any) error {
	line, err := ReadLine(s.r)
	if err != nil {
		return err
	}
	if err := json.Unmarshal(line, v); err != nil {
		return apierr.Wrap(apierr.InvalidInput, err, "agent channel: malformed line")
	}
	return nil
}

// WriteLine writes v as one line of JSON to w.
func WriteLine(w io.Writer, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	_, err = w.Write(append(b, '\n'))
	return err
}

// ReadLine reads one line (without its newline), at most MaxLine bytes.
func ReadLine(r *bufio.Reader) ([]byte, error) {
	var line []byte
	for {
		part, err := r.ReadSlice('\n')
		line = append(line, part...)
		if len(line) > MaxLine {
			return nil, apierr.New(apierr.TooLarge, "agent channel: a line is longer than %d bytes", MaxLine)
		}
		switch {
		case err == nil:
			return bytes.TrimSuffix(line, []byte{'\n'}), nil
		case errors.Is(err, bufio.ErrBufferFull):
			continue
		case errors.Is(err, io.EOF) && len(line) > 0:
			return nil, io.ErrUnexpectedEOF
		default:
			return nil, err
		}
	}
}

// Err returns the reply's error, or nil.
func (r Reply) Err() error {
	if r.Error != nil {
		return r.Error
	}
	return nil
}

// ErrorReply is the reply line for err.
func ErrorReply(err error) Reply {
	if err == nil {
		return Reply{OK: true}
	}
	return Reply{Error: apierr.From(err)}
}

// lost is the error a client sees when the channel ends under it.
func lost(what string, err error) error {
	if err == nil || errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
		return apierr.New(apierr.Unavailable, "the connection to the guest ended %s (the VM stopped or rebooted, or its agent went away)", what)
	}
	if ae := (*apierr.Error)(nil); errors.As(err, &ae) {
		return err
	}
	return apierr.Wrap(apierr.Unavailable, err, fmt.Sprintf("the connection to the guest failed %s", what))
}
