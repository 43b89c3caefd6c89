// Package access is kestrel's side of the host-only agent channel
// (lib/agentchan, docs/guest-access.md): it finds the channel (QEMU's
// virtio-serial port or a vsock listener on Cloud Hypervisor), answers the
// host's handshake and serves its streams: commands run in the guest (exec,
// with or without a terminal), files copied in and out as tar streams, and
// the workload's output per stream (from lib/kestrel/outlog).
//
// Nothing here listens on the guest network: the channel is a device only
// the host's side of the hypervisor reaches.
package access

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/volantvm/volant/lib/agentchan"
	"github.com/volantvm/volant/lib/apierr"
	"github.com/volantvm/volant/lib/kestrel/outlog"
	"github.com/volantvm/volant/lib/kestrel/reaper"
)

// Config is one server.
type Config struct {
	VM, Version string
	// Reaper starts and reaps the processes of execs (kestrel's, which
	// also reaps the workload).
	Reaper *reaper.Reaper
	// Output is the workload's output store (nil: the logs op fails).
	Output *outlog.Store
	// WorkloadEnv returns the workload's environment and working
	// directory, which execs start from (nil: PATH and HOME only, in /).
	WorkloadEnv func() (env []string, dir string)
	// AttachWait bounds how long an exec waits for its streams, and an
	// attached stream for its exec (60 s if 0). The host opens them all
	// at once, but with 100 execs opened together into a busy one-vCPU
	// guest, the last streams arrived more than 10 s after their exec.
	AttachWait time.Duration
	// Identity applies the identity op (a restored guest becoming another
	// VM); nil answers it NOT_SUPPORTED.
	Identity func(ctx context.Context, req agentchan.IdentityRequest) (agentchan.IdentityReply, error)
	// NetworkUp is called when the host ended the stream of an identity
	// op that succeeded: it let the VM's network out, and the guest can
	// report as the VM it now is (nil: nothing to do).
	NetworkUp func()
	// Inputs receives the VM's inputs (nil: the VM has none, and the
	// inputs op is refused).
	Inputs *Inputs
	Log    *slog.Logger
}

// Server serves the agent channel. Create it with New.
type Server struct {
	cfg   Config
	log   *slog.Logger
	hello agentchan.Hello

	mu      sync.Mutex
	pending map[string]*execState // by exec ID
	running int
}

// New returns a server.
func New(cfg Config) *Server {
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	if cfg.AttachWait <= 0 {
		cfg.AttachWait = time.Minute
	}
	if cfg.WorkloadEnv == nil {
		cfg.WorkloadEnv = func() ([]string, string) { return nil, "" }
	}
	h := agentchan.Hello{Agent: "kestrel", Version: cfg.Version, VM: cfg.VM, Ops: append(agentchan.ClientOps(), agentchan.OpInputs)}
	if cfg.Identity != nil {
		h.Ops = append(h.Ops, agentchan.OpIdentity)
	}
	if b, err := os.ReadFile("/proc/sys/kernel/random/boot_id"); err == nil {
		h.BootID = strings.TrimSpace(string(b))
	}
	return &Server{cfg: cfg, log: cfg.Log, hello: h, pending: map[string]*execState{}}
}

// Running is the number of exec'd processes still running.
func (s *Server) Running() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.running
}

// ServeConn serves host sessions on conn: the handshake, then streams
// until the byte stream ends. A host that starts over on the same stream
// (agentchan.Accept: a guest restored from a snapshot still holds the
// saved VM's session when the new host's handshake arrives) gets its new
// session at once. It returns the error that ended it (io.EOF when the
// stream ended before a handshake).
func (s *Server) ServeConn(ctx context.Context, conn io.ReadWriteCloser) error {
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()
	rw := conn
	for {
		s.mu.Lock()
		hello := s.hello
		s.mu.Unlock()
		if s.cfg.Inputs != nil {
			hello.Inputs = s.cfg.Inputs.State()
		}
		mux, err := agentchan.Accept(rw, hello)
		if err != nil {
			conn.Close()
			return err
		}
		s.log.Info("agent channel: host connected")
		stopMux := context.AfterFunc(ctx, func() { mux.Close() })
		served := make(chan struct{})
		go func() {
			defer close(served)
			agentchan.Serve(mux.Session, func(st *agentchan.Stream) { s.handle(ctx, st) })
		}()
		<-mux.CloseChan()
		stopMux()
		if next := mux.Restarted(); next != nil {
			// The old session's streams were closed with it; what
			// still runs for them ends on its own.
			s.log.Info("agent channel: the host started a new session")
			rw = next
			continue
		}
		<-served
		// Said on the console: a guest whose channel is wedged has no
		// other way to tell.
		s.log.Info("agent channel: host session ended", "err", mux.ReadErr())
		return nil
	}
}

func (s *Server) handle(ctx context.Context, st *agentchan.Stream) {
	line, err := readRequest(st)
	if err != nil {
		return
	}
	var req agentchan.Request
	if err := unmarshal(line, &req); err != nil {
		st.WriteLine(agentchan.ErrorReply(err))
		return
	}
	switch req.Op {
	case agentchan.OpExec:
		var r agentchan.ExecRequest
		if err := unmarshal(line, &r); err != nil {
			st.WriteLine(agentchan.ErrorReply(err))
			return
		}
		s.exec(ctx, st, r)
	case agentchan.OpAttach:
		var r agentchan.AttachRequest
		if err := unmarshal(line, &r); err != nil {
			st.WriteLine(agentchan.ErrorReply(err))
			return
		}
		s.attach(ctx, st, r)
	case agentchan.OpRead:
		var r agentchan.ReadRequest
		if err := unmarshal(line, &r); err != nil {
			st.WriteLine(agentchan.ErrorReply(err))
			return
		}
		s.read(st, r)
	case agentchan.OpWrite:
		var r agentchan.WriteRequest
		if err := unmarshal(line, &r); err != nil {
			st.WriteLine(agentchan.ErrorReply(err))
			return
		}
		s.write(st, r)
	case agentchan.OpLogs:
		var r agentchan.LogsRequest
		if err := unmarshal(line, &r); err != nil {
			st.WriteLine(agentchan.ErrorReply(err))
			return
		}
		s.logs(ctx, st, r)
	case agentchan.OpIdentity:
		if s.cfg.Identity == nil {
			st.WriteLine(agentchan.ErrorReply(apierr.New(apierr.NotSupported, "this kestrel cannot take a new identity")))
			return
		}
		var r agentchan.IdentityRequest
		if err := unmarshal(line, &r); err != nil {
			st.WriteLine(agentchan.ErrorReply(err))
			return
		}
		rep, err := s.cfg.Identity(ctx, r)
		if err != nil {
			st.WriteLine(agentchan.ErrorReply(err))
			return
		}
		rep.Reply = agentchan.Reply{OK: true}
		s.mu.Lock()
		s.hello.VM = r.VM
		s.mu.Unlock()
		if st.WriteLine(rep) != nil {
			return
		}
		// The host ends the stream once the VM's tap is up (or the
		// session ends).
		io.Copy(io.Discard, st)
		if s.cfg.NetworkUp != nil {
			s.cfg.NetworkUp()
		}
	case agentchan.OpInputs:
		var r agentchan.InputsRequest
		if err := unmarshal(line, &r); err != nil {
			st.WriteLine(agentchan.ErrorReply(err))
			return
		}
		s.inputs(st, r)
	default:
		st.WriteLine(agentchan.ErrorReply(apierr.New(apierr.NotSupported, "this kestrel (%s) does not know the %q operation", s.cfg.Version, req.Op).With("op", req.Op)))
	}
}

func readRequest(st *agentchan.Stream) ([]byte, error) {
	var raw rawLine
	if err := st.ReadLine(&raw); err != nil {
		return nil, err
	}
	return raw, nil
}

type rawLine []byte

func (r *rawLine) UnmarshalJSON(b []byte) error {
	*r = append((*r)[:0], b...)
	return nil
}

func unmarshal(line []byte, v any) error {
	if err := json.Unmarshal(line, v); err != nil {
		return apierr.Wrap(apierr.InvalidInput, err, "malformed request")
	}
	return nil
}
