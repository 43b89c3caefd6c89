package access

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"strings"
	"sync"

	"github.com/google/renameio/v2"

	"github.com/volantvm/volant/lib/agentchan"
	"github.com/volantvm/volant/lib/apierr"
)

// Inputs receives a VM's inputs (agentchan.Inputs) over the agent channel
// once per boot: the files are written under Root and the environment is
// kept for the workload. The boot waits for them (Wait) before it starts
// the workload when the kernel command line says volant.inputs=1.
type Inputs struct {
	// Root is where guest paths are written ("" means /).
	Root string
	// SetHostname, when set, is given the first line of an input file
	// /etc/hostname: as an init names the host from that file at boot, the
	// kernel's hostname follows it (a Kubernetes pod's name, where the boot
	// named the host after its VM).
	SetHostname func(name string) error

	once sync.Once
	got  chan struct{}
	mu   sync.Mutex
	env  map[string]string
	err  error
}

// NewInputs returns an Inputs waiting for the host.
func NewInputs(root string) *Inputs { return &Inputs{Root: root, got: make(chan struct{})} }

// State is the handshake's Hello.Inputs: waiting until they arrived.
func (in *Inputs) State() string {
	select {
	case <-in.got:
		return agentchan.InputsReceived
	default:
		return agentchan.InputsWaiting
	}
}

// Wait returns once the inputs were applied (or applying them failed), or
// with ctx's cause.
func (in *Inputs) Wait(ctx context.Context) error {
	select {
	case <-in.got:
		in.mu.Lock()
		defer in.mu.Unlock()
		return in.err
	case <-ctx.Done():
		return context.Cause(ctx)
	}
}

// Env is the inputs' environment (nil before they arrived).
func (in *Inputs) Env() map[string]string {
	in.mu.Lock()
	defer in.mu.Unlock()
	return in.env
}

// apply writes the files and directories and keeps the environment. Only
// the first inputs of a boot count; later ones are answered as applied.
func (in *Inputs) apply(got *agentchan.Inputs) error {
	applied := false
	var err error
	in.once.Do(func() {
		applied = true
		err = in.write(got)
		in.mu.Lock()
		in.env, in.err = got.Env, err
		in.mu.Unlock()
		close(in.got)
	})
	if !applied {
		in.mu.Lock()
		err = in.err
		in.mu.Unlock()
	}
	return err
}

func (in *Inputs) guest(p string) (string, error) {
	if !path.IsAbs(p) || path.Clean(p) != p || p == "/" {
		return "", apierr.New(apierr.InvalidInput, "input path %q must be a clean absolute path", p)
	}
	root := in.Root
	if root == "" {
		root = "/"
	}
	return filepath.Join(root, filepath.FromSlash(p)), nil
}

func (in *Inputs) write(got *agentchan.Inputs) error {
	for _, d := range got.Dirs {
		p, err := in.guest(d)
		if err != nil {
			return err
		}
		if err := os.MkdirAll(p, 0o777); err != nil {
			return fmt.Errorf("making input directory %s: %w", d, err)
		}
	}
	for _, f := range got.Files {
		p, err := in.guest(f.Path)
		if err != nil {
			return err
		}
		mode := os.FileMode(f.Mode & 0o7777)
		if mode == 0 {
			mode = 0o644
		}
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			return fmt.Errorf("making the directory of input file %s: %w", f.Path, err)
		}
		if err := writeInput(p, f.Data, mode); err != nil {
			return fmt.Errorf("writing input file %s: %w", f.Path, err)
		}
		if f.Path == "/etc/hostname" && in.SetHostname != nil {
			name, _, _ := strings.Cut(string(f.Data), "\n")
			if name = strings.TrimSpace(name); name != "" {
				if err := in.SetHostname(name); err != nil {
					return fmt.Errorf("naming the host %q after input file /etc/hostname: %w", name, err)
				}
			}
		}
	}
	return nil
}

// inputs serves the inputs op: the request line, the files' contents, the
// reply once they are written.
func (s *Server) inputs(st *agentchan.Stream, req agentchan.InputsRequest) {
	if s.cfg.Inputs == nil {
		st.WriteLine(agentchan.ErrorReply(apierr.New(apierr.Conflict, "this VM takes no inputs (its kernel command line has no volant.inputs)")))
		return
	}
	got, err := agentchan.ReadInputFiles(st, req)
	if err == nil {
		err = s.cfg.Inputs.apply(got)
	}
	if err != nil {
		s.log.Warn("agent channel: applying the VM's inputs", "err", err)
		if !errors.As(err, new(*apierr.Error)) {
			err = apierr.Wrap(apierr.Internal, err, "applying the inputs")
		}
		st.WriteLine(agentchan.ErrorReply(err))
		return
	}
	s.log.Info("agent channel: inputs applied", "files", len(got.Files), "dirs", len(got.Dirs), "env", len(got.Env))
	st.WriteLine(agentchan.Reply{OK: true})
}

// writeInput replaces path atomically (renameio: a temporary file beside
// it, fsync, rename) with a file of the input's mode, past the umask and
// whatever mode a file there had; a symlink at path is replaced, not
// followed.
func writeInput(path string, data []byte, mode os.FileMode) error {
	f, err := renameio.NewPendingFile(path, renameio.WithTempDir(filepath.Dir(path)), renameio.WithStaticPermissions(mode))
	if err != nil {
		return err
	}
	defer f.Cleanup()
	if _, err := f.Write(data); err != nil {
		return err
	}
	return f.CloseAtomicallyReplace()
}
