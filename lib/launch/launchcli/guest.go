package launchcli

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/volantvm/volant/lib/agentchan"
	"github.com/volantvm/volant/lib/agentchan/agentterm"
	"github.com/volantvm/volant/lib/apierr"
	"github.com/volantvm/volant/lib/cli"
	"github.com/volantvm/volant/lib/launch"
	"github.com/volantvm/volant/lib/workloadlog"
)

// ExitCommandFailed is exec's status (-i or -t) when Volant could not run
// the command at all; 126 and 127 are "not executable" and "not found", as
// in shells.
const (
	ExitCommandFailed     = 125
	ExitCannotExecute     = 126
	ExitCommandNotFound   = 127
	defaultExecMaxOutput  = agentchan.DefaultOutputCap
	guestPathSeparatorMsg = "one of SRC and DST must be a guest path, written :PATH or NAME:PATH"
)

type execCmd struct {
	dirFlags
	Interactive bool          `short:"i" long:"interactive" description:"attach stdin, stream the output, exit with the command's status"`
	TTY         bool          `short:"t" long:"tty" description:"allocate a terminal in the guest (implies streaming)"`
	Env         []string      `short:"e" long:"env" description:"KEY=VALUE added to the workload's environment (repeatable)"`
	Workdir     string        `short:"w" long:"workdir" description:"working directory in the guest"`
	User        string        `short:"u" long:"user" description:"UID[:GID] to run as"`
	Timeout     time.Duration `long:"timeout" description:"give up (and kill the command) after this long"`
	MaxOutput   int           `long:"max-output" description:"bytes of each stream kept in the JSON result (default 1 MiB)"`
	Args        struct {
		Command []string `positional-arg-name:"COMMAND" required:"1"`
	} `positional-args:"yes"`
}

func (c *execCmd) Execute(ctx context.Context, env *cli.Env) error {
	lo := libOptions(env, false)
	dir, err := c.dirFlags.runDir(lo)
	if err != nil {
		return err
	}
	if c.Timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, c.Timeout)
		defer cancel()
	}
	sess, err := launch.DialGuest(ctx, dir)
	if err != nil {
		return err
	}
	defer sess.Close()
	req := agentchan.ExecRequest{Argv: c.Args.Command, Env: c.Env, Dir: c.Workdir, User: c.User, TTY: c.TTY, Stdin: c.Interactive}
	// Without a TTY our signals go to the command (agentterm.Forward).
	var sigs chan os.Signal
	if !c.TTY {
		sigs = make(chan os.Signal, 4)
		signal.Notify(sigs, agentterm.ForwardedSignals...)
		defer signal.Stop(sigs)
	}
	if !c.Interactive && !c.TTY {
		ectx, hooks, stop := agentterm.Forward(ctx, sigs)
		defer stop()
		res, err := sess.RunWith(ectx, req, nil, c.MaxOutput, hooks)
		if err != nil {
			return err
		}
		return cli.WriteResult(env, "launch.exec", res)
	}
	winch := make(chan os.Signal, 1)
	signal.Notify(winch, syscall.SIGWINCH)
	defer signal.Stop(winch)
	exit, err := agentterm.Exec(ctx, sess, req, env.Stdin, env.Stdout, env.Stderr, agentterm.Options{Winch: winch, Signals: sigs})
	if err != nil {
		return streamErr(err)
	}
	if exit.Code != 0 {
		return &cli.StatusError{Status: exit.Code}
	}
	return nil
}

// streamErr gives a streamed exec's failure the shell's statuses: 127 for
// a missing command, 126 for one that cannot run, 125 for the rest (the
// error is on stderr either way).
func streamErr(err error) error {
	status := ExitCommandFailed
	switch apierr.From(err).Details["reason"] {
	case "not_found":
		status = ExitCommandNotFound
	case "not_executable":
		status = ExitCannotExecute
	}
	return &cli.StatusError{Status: status, Err: err}
}

type cpCmd struct {
	dirFlags
	Args struct {
		Src string `positional-arg-name:"SRC" required:"1"`
		Dst string `positional-arg-name:"DST" required:"1"`
	} `positional-args:"yes"`
}

// guestPath splits ":PATH" or "NAME:PATH"; a local path with a colon can
// be written "./a:b".
func guestPath(s string) (string, bool) {
	if strings.HasPrefix(s, ".") || strings.HasPrefix(s, "/") {
		return "", false
	}
	_, p, ok := strings.Cut(s, ":")
	return p, ok
}

type cpResult struct {
	Direction string `json:"direction"` // "in" (to the guest) or "out"
	agentchan.CopyResult
}

func (c *cpCmd) Execute(ctx context.Context, env *cli.Env) error {
	lo := libOptions(env, false)
	dir, err := c.dirFlags.runDir(lo)
	if err != nil {
		return err
	}
	src, srcGuest := guestPath(c.Args.Src)
	dst, dstGuest := guestPath(c.Args.Dst)
	if srcGuest == dstGuest {
		return apierr.New(apierr.Usage, guestPathSeparatorMsg)
	}
	sess, err := launch.DialGuest(ctx, dir)
	if err != nil {
		return err
	}
	defer sess.Close()
	var res agentchan.CopyResult
	direction := "out"
	if srcGuest {
		if c.Args.Dst == "-" {
			return apierr.New(apierr.Usage, "volant-launch cp writes only its JSON result on stdout; copy to a path")
		}
		res, err = sess.CopyFrom(ctx, src, c.Args.Dst, nil)
	} else {
		direction = "in"
		res, err = sess.CopyTo(ctx, c.Args.Src, dst, env.Stdin)
	}
	if err != nil {
		return err
	}
	res.Reply = agentchan.Reply{}
	return cli.WriteResult(env, "launch.cp", cpResult{Direction: direction, CopyResult: res})
}

type logsCmd struct {
	dirFlags
	Follow     bool   `short:"f" long:"follow" description:"keep printing new output until interrupted"`
	Since      string `long:"since" description:"only output from this time on (RFC 3339, or a duration like 10m)"`
	Tail       int    `long:"tail" description:"only the last N lines"`
	Timestamps bool   `long:"timestamps" description:"prefix each line with the time kestrel read it"`
	Stream     string `long:"stream" choice:"stdout" choice:"stderr" description:"one stream only"`
	JSON       bool   `long:"json" description:"print the log's entries as JSON lines instead of the output"`
}

func (c *logsCmd) Execute(ctx context.Context, env *cli.Env) error {
	lo := libOptions(env, false)
	path := ""
	switch {
	case c.Name != "" && c.Dir == "":
		if !launch.ValidName(c.Name) {
			return apierr.New(apierr.InvalidInput, "VM name %q is not valid", c.Name)
		}
		path = launch.WorkloadLogPath(lo, c.Name)
	default:
		dir, err := c.dirFlags.runDir(lo)
		if err != nil {
			return err
		}
		var plan launch.Plan
		b, err := os.ReadFile(filepath.Join(dir, launch.PlanFileName))
		if err != nil || json.Unmarshal(b, &plan) != nil || plan.Agent == nil {
			return apierr.New(apierr.NotFound, "no running VM with an agent channel in %s: give --name to read a stopped VM's logs", dir).With("run_dir", dir)
		}
		path = plan.Agent.WorkloadLog
	}
	since, err := workloadlog.ParseSince(c.Since, time.Now())
	if err != nil {
		return err
	}
	if _, err := os.Stat(path); errors.Is(err, os.ErrNotExist) && !c.Follow {
		return apierr.New(apierr.NotFound, "no workload log at %s", path).With("path", path)
	}
	return workloadlog.Read(ctx, path, workloadlog.ReadOptions{Since: since, Tail: c.Tail, Stream: c.Stream, Follow: c.Follow},
		printer(env.Stdout, c.Timestamps, c.JSON))
}

// printer writes entries as text (workloadlog.Printer) or as JSON lines.
func printer(w io.Writer, timestamps, asJSON bool) func(workloadlog.Entry) error {
	if !asJSON {
		return workloadlog.Printer(w, timestamps)
	}
	return func(e workloadlog.Entry) error {
		b, err := json.Marshal(e)
		if err != nil {
			return err
		}
		_, err = w.Write(append(b, '\n'))
		return err
	}
}
