package volar

import (
	"context"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/volantvm/volant/lib/agentchan"
	"github.com/volantvm/volant/lib/agentchan/agentterm"
	"github.com/volantvm/volant/lib/api"
	"github.com/volantvm/volant/lib/apierr"
	"github.com/volantvm/volant/lib/cli"
)

// Exit statuses of `volar vms exec` besides the command's own: as shells
// and docker exec report them.
const (
	ExitExecFailed    = 125 // Volant could not run the command (the error is printed)
	ExitCannotExecute = 126 // the command exists but cannot be executed
	ExitNotFound      = 127 // no such command in the guest
)

type vmExecCmd struct {
	Interactive bool          `short:"i" long:"interactive" description:"attach stdin"`
	TTY         bool          `short:"t" long:"tty" description:"allocate a terminal in the guest"`
	Env         []string      `short:"e" long:"env" value-name:"KEY=VALUE" description:"add to the workload's environment (repeatable)"`
	Workdir     string        `short:"w" long:"workdir" value-name:"DIR" description:"working directory in the guest"`
	User        string        `short:"u" long:"user" value-name:"UID[:GID]" description:"user to run as (default root)"`
	Timeout     time.Duration `long:"timeout" value-name:"DURATION" description:"kill the command after this long"`
	Args        struct {
		Name    VMName   `positional-arg-name:"NAME" description:"the VM's name"`
		Command []string `positional-arg-name:"COMMAND" description:"the command and its arguments (after --)"`
	} `positional-args:"yes" required:"yes"`
}

func (c *vmExecCmd) run(ctx context.Context, s *Session, env *cli.Env) error {
	if len(c.Args.Command) == 0 {
		return apierr.New(apierr.Usage, "no command given: volar vms exec NAME -- COMMAND [ARGS...]")
	}
	name := string(c.Args.Name)
	if c.Timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, c.Timeout)
		defer cancel()
	}
	if s.Out.Format == JSON {
		return c.runJSON(ctx, s, env, name)
	}
	sess, err := s.Client.GuestSession(ctx, name)
	if err != nil {
		return execFailed(err)
	}
	defer sess.Close()
	winch := make(chan os.Signal, 1)
	signal.Notify(winch, syscall.SIGWINCH)
	defer signal.Stop(winch)
	// Without a TTY our signals go to the command (agentterm.Forward).
	var sigs chan os.Signal
	if !c.TTY {
		sigs = make(chan os.Signal, 4)
		signal.Notify(sigs, agentterm.ForwardedSignals...)
		defer signal.Stop(sigs)
	}
	exit, err := agentterm.Exec(ctx, sess, agentchan.ExecRequest{Argv: c.Args.Command, Env: c.Env, Dir: c.Workdir, User: c.User, TTY: c.TTY, Stdin: c.Interactive},
		env.Stdin, flushWriter{env.Stdout}, flushWriter{env.Stderr}, agentterm.Options{Winch: winch, Signals: sigs})
	if err != nil {
		return execFailed(err)
	}
	if exit.Code != 0 {
		return &cli.StatusError{Status: exit.Code}
	}
	return nil
}

// runJSON runs the command to its end and prints its api.ExecResult. It
// runs over the upgraded connection, as the streamed mode does, rather
// than as a plain JSON request: so the signals volar gets reach the
// command (agentterm.Forward) and its own status comes back.
func (c *vmExecCmd) runJSON(ctx context.Context, s *Session, env *cli.Env, name string) error {
	if c.TTY {
		return apierr.New(apierr.Usage, "-o json runs the command to its end: it has no terminal (drop -t)")
	}
	var stdin []byte
	if c.Interactive {
		b, err := io.ReadAll(io.LimitReader(env.Stdin, MaxJSONStdin+1))
		if err != nil {
			return err
		}
		if len(b) > MaxJSONStdin {
			return execFailed(apierr.New(apierr.TooLarge, "-o json takes at most %d bytes of stdin; stream larger input without -o json", MaxJSONStdin))
		}
		stdin = b
	}
	sess, err := s.Client.GuestSession(ctx, name)
	if err != nil {
		return execFailed(err)
	}
	defer sess.Close()
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, agentterm.ForwardedSignals...)
	defer signal.Stop(sigs)
	ectx, hooks, stop := agentterm.Forward(ctx, sigs)
	defer stop()
	res, err := sess.RunWith(ectx, agentchan.ExecRequest{Argv: c.Args.Command, Env: c.Env, Dir: c.Workdir, User: c.User}, stdin, 0, hooks)
	if err != nil {
		return execFailed(err)
	}
	if err := s.Out.JSONValue(res); err != nil {
		return err
	}
	if res.ExitCode != 0 {
		return &cli.StatusError{Status: res.ExitCode}
	}
	return nil
}

// MaxJSONStdin bounds the stdin `volar vms exec -i -o json` reads before
// the command starts (it is sent whole).
const MaxJSONStdin = 1 << 20

type vmCpCmd struct {
	Args struct {
		Src string `positional-arg-name:"SRC" description:"NAME:PATH in a VM, or a local path (- for a tar stream on stdin)"`
		Dst string `positional-arg-name:"DST" description:"NAME:PATH in a VM, or a local path (- for a tar stream on stdout)"`
	} `positional-args:"yes" required:"yes"`
}

// splitVMPath reads NAME:PATH; a local path starts with . or / (so
// ./a:b is local).
func splitVMPath(s string) (vm, path string, ok bool) {
	if strings.HasPrefix(s, ".") || strings.HasPrefix(s, "/") || s == "-" {
		return "", "", false
	}
	vm, path, ok = strings.Cut(s, ":")
	return vm, path, ok && vm != ""
}

func (c *vmCpCmd) run(ctx context.Context, s *Session, env *cli.Env) error {
	srcVM, srcPath, srcIn := splitVMPath(c.Args.Src)
	dstVM, dstPath, dstIn := splitVMPath(c.Args.Dst)
	if srcIn == dstIn {
		return apierr.New(apierr.Usage, "one of SRC and DST must be NAME:PATH in a VM, the other a local path").
			With("hint", "volar vms cp web:/etc/hosts ./hosts, or volar vms cp ./dir web:/srv/")
	}
	var res agentchan.CopyResult
	var err error
	if srcIn {
		produce := func(w io.Writer) (agentchan.CopyResult, error) {
			return agentchan.CopyResult{}, s.Client.ReadFiles(ctx, srcVM, srcPath, w)
		}
		if c.Args.Dst == "-" {
			_, err = produce(env.Stdout)
			return err
		}
		res, err = agentchan.ExtractAt(c.Args.Dst, produce)
		if err != nil {
			return err
		}
		return s.Out.Copied(api.CopyResult{Files: res.Files, Bytes: res.Bytes, Skipped: res.Skipped}, c.Args.Src, c.Args.Dst)
	}
	var body io.Reader = env.Stdin
	if c.Args.Src != "-" {
		if _, err := os.Stat(c.Args.Src); err != nil {
			return apierr.New(apierr.NotFound, "%s: no such file or directory", c.Args.Src).With("path", c.Args.Src)
		}
		pr, pw := io.Pipe()
		go func() {
			_, err := agentchan.WriteTar(pw, c.Args.Src)
			pw.CloseWithError(err)
		}()
		defer pr.Close()
		body = pr
	}
	cr, err := s.Client.WriteFiles(ctx, dstVM, dstPath, body)
	if err != nil {
		return err
	}
	return s.Out.Copied(*cr, c.Args.Src, c.Args.Dst)
}

// execFailed gives an exec that did not run the shell's statuses: 127 for
// a missing command, 126 for one that cannot be executed, 125 for the rest
// (the error is printed either way). Usage errors keep theirs.
func execFailed(err error) error {
	e := apierr.From(err)
	status := ExitExecFailed
	switch {
	case e.Code == apierr.Usage:
		return err
	case e.Details["reason"] == "not_found":
		status = ExitNotFound
	case e.Details["reason"] == "not_executable":
		status = ExitCannotExecute
	}
	return &cli.StatusError{Status: status, Err: err}
}
