package manifest

import (
	"encoding/json"
	"slices"
)

// Labels in which fledge records an image's Entrypoint and Cmd (JSON
// string arrays) when the workload's entrypoint is their concatenation.
const (
	EntrypointLabel = "fledge.entrypoint"
	CmdLabel        = "fledge.cmd"
)

// maxLabel is the longest label value Validate accepts.
const maxLabel = 256

// CommandLabels returns the EntrypointLabel and CmdLabel of an image's
// Entrypoint and Cmd, or nil when either does not fit in a label.
func CommandLabels(entrypoint, cmd []string) map[string]string {
	e, _ := json.Marshal(orEmpty(entrypoint))
	c, _ := json.Marshal(orEmpty(cmd))
	if len(e) > maxLabel || len(c) > maxLabel {
		return nil
	}
	return map[string]string{EntrypointLabel: string(e), CmdLabel: string(c)}
}

func orEmpty(s []string) []string {
	if s == nil {
		return []string{}
	}
	return s
}

// SplitCommand returns the workload's command as Docker's Entrypoint and
// Cmd: the image's, when the labels record them and the entrypoint is still
// their concatenation; else the whole entrypoint and no Cmd.
func (w Workload) SplitCommand(labels map[string]string) (entrypoint, cmd []string) {
	var e, c []string
	if json.Unmarshal([]byte(labels[EntrypointLabel]), &e) == nil &&
		json.Unmarshal([]byte(labels[CmdLabel]), &c) == nil &&
		slices.Equal(append(slices.Clone(e), c...), w.Entrypoint) {
		return e, c
	}
	return slices.Clone(w.Entrypoint), nil
}

// ResolveCommand is the program and arguments a VM runs when its request
// gives command and/or args, with Docker's and Kubernetes' meaning:
// command replaces the Entrypoint (and the Cmd with it), args replace the
// Cmd. With neither, the workload's entrypoint as it is.
func (w Workload) ResolveCommand(labels map[string]string, command, args []string) []string {
	if len(command) == 0 && len(args) == 0 {
		return slices.Clone(w.Entrypoint)
	}
	entry, cmd := w.SplitCommand(labels)
	if len(command) > 0 {
		entry, cmd = command, nil
	}
	if len(args) > 0 {
		cmd = args
	}
	return append(slices.Clone(entry), cmd...)
}
