package runner

import (
	"context"
	"errors"

	"github.com/volantvm/volant/lib/launch"
	"github.com/volantvm/volant/lib/names"
)

// Foreground runs the VM a spec describes in the calling process until it
// ends (launch.Prepare, then launch.Run; `volant-launch run` is this) and
// records how it ended for LastError: the error in
// <data>/vms/<name>/last-error.json, or no file when the run ended well.
// A run refused because another run of the VM holds its run directory
// records nothing: the record is that run's. A run killed with SIGKILL
// records nothing either, but leaves no stale record: the file is removed
// before the VM starts.
func Foreground(ctx context.Context, s launch.Spec, o launch.Options, ro launch.RunOptions) (*launch.Result, error) {
	name := s.VMName()
	res, err := foreground(ctx, s, o, ro, &name)
	if errors.Is(err, launch.ErrRunning) || !names.Valid(name) {
		return res, err
	}
	if werr := WriteLastError(o, name, err); werr != nil && o.Logger != nil {
		o.Logger.Warn("cannot record how the run ended", "vm", name, "err", werr)
	}
	return res, err
}

func foreground(ctx context.Context, s launch.Spec, o launch.Options, ro launch.RunOptions, name *string) (*launch.Result, error) {
	p, err := launch.Prepare(ctx, s, o)
	if err != nil {
		return nil, err
	}
	*name = p.Name
	// A record of an earlier run is not this run's. (A live run has none:
	// it cleared its own at its start, so clearing here before Run finds
	// the VM taken removes nothing that matters.)
	if err := WriteLastError(o, p.Name, nil); err != nil && o.Logger != nil {
		o.Logger.Warn("cannot clear the last run's error", "vm", p.Name, "err", err)
	}
	return launch.Run(ctx, p, o, ro)
}
