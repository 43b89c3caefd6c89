package volar

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/jessevdk/go-flags"

	"github.com/volantvm/volant/lib/api"
	"github.com/volantvm/volant/lib/apierr"
	"github.com/volantvm/volant/lib/cli"
	"github.com/volantvm/volant/lib/client"
)

// Shell completion works the way go-flags does it: the shell runs
//
//	GO_FLAGS_COMPLETION=1 volar <the words typed so far>
//
// and volar prints one candidate per line instead of running the command
// (GO_FLAGS_COMPLETION=verbose adds "  # description"). Commands and
// options come from the flag definitions; VM, plugin and deployment names
// come from volantd (VOLANT_HOST/VOLANT_TOKEN or the default socket), asked
// with a short timeout and silently skipped when it does not answer.
//
// The variable is read from the process environment by go-flags itself:
// completion is a feature of the running binary, not of an in-memory Env.

// EnvCompletion is the variable that switches volar into completion mode.
const EnvCompletion = "GO_FLAGS_COMPLETION"

// completionTimeout bounds the name lookup: a shell waits for it.
const completionTimeout = 500 * time.Millisecond

// ErrCompleted is returned after completion candidates were printed.
var ErrCompleted = errors.New("completion printed")

// VMName is a positional VM name that completes from volantd's VMs.
type VMName string

// PluginName is a plugin name that completes from volantd's plugins.
type PluginName string

// DeploymentName is a deployment name that completes from volantd's
// deployments.
type DeploymentName string

// VolumeName is a volume name that completes from volantd's volumes.
type VolumeName string

// Complete implements flags.Completer.
func (VolumeName) Complete(match string) []flags.Completion { return completeNames("volume", match) }

// Complete implements flags.Completer.
func (VMName) Complete(match string) []flags.Completion { return completeNames("vm", match) }

// Complete implements flags.Completer.
func (PluginName) Complete(match string) []flags.Completion { return completeNames("plugin", match) }

// Complete implements flags.Completer.
func (DeploymentName) Complete(match string) []flags.Completion {
	return completeNames("deployment", match)
}

// completeNames asks the daemon of the process environment for names.
func completeNames(kind, prefix string) []flags.Completion {
	t := ResolveTarget("", "", os.Getenv)
	c, err := t.Client(completionTimeout, "completion")
	if err != nil {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), completionTimeout)
	defer cancel()
	names, _ := Names(ctx, c, kind)
	var out []flags.Completion
	for _, n := range names {
		if strings.HasPrefix(n, prefix) {
			out = append(out, flags.Completion{Item: n})
		}
	}
	return out
}

// Names lists the names of one kind of object: vm, plugin, deployment or volume.
func Names(ctx context.Context, c *client.Client, kind string) ([]string, error) {
	var out []string
	switch kind {
	case "vm":
		vms, err := c.ListVMs(ctx, api.VMFilter{})
		for _, v := range vms {
			out = append(out, v.Name)
		}
		return out, err
	case "plugin":
		ps, err := c.ListPlugins(ctx)
		for _, p := range ps {
			out = append(out, p.Name)
		}
		return out, err
	case "deployment":
		ds, err := c.ListDeployments(ctx)
		for _, d := range ds {
			out = append(out, d.Name)
		}
		return out, err
	case "volume":
		vs, err := c.ListVolumes(ctx)
		for _, v := range vs {
			out = append(out, v.Name)
		}
		return out, err
	}
	return nil, fmt.Errorf("no names of kind %q", kind)
}

// Parse parses env.Args into opts (go-flags, with subcommands) and returns
// the active command path ("vms create") and the leftover arguments.
// --help prints the help of the command it follows on stdout and returns
// ErrHelp; in completion mode the candidates are printed on stdout and
// ErrCompleted is returned. Other parse errors are USAGE errors whose hint
// names the right --help, and so is a flag that holds one value given
// twice (cli.CheckRepeated).
func Parse(env *cli.Env, name string, opts any) (string, []string, error) {
	p := flags.NewParser(opts, flags.HelpFlag|flags.PassDoubleDash)
	p.Name = name
	completed := false
	p.CompletionHandler = func(items []flags.Completion) {
		completed = true
		verbose := os.Getenv(EnvCompletion) == "verbose"
		width := 0
		for _, it := range items {
			width = max(width, len(it.Item))
		}
		for _, it := range items {
			if verbose && len(items) > 1 && it.Description != "" {
				fmt.Fprintf(env.Stdout, "%-*s  # %s\n", width, it.Item, it.Description)
			} else {
				fmt.Fprintln(env.Stdout, it.Item)
			}
		}
	}
	rest, err := p.ParseArgs(env.Args)
	if completed {
		return "", nil, ErrCompleted
	}
	var path []string
	for c := p.Active; c != nil; c = c.Active {
		path = append(path, c.Name)
	}
	cmd := strings.Join(path, " ")
	if err != nil {
		var fe *flags.Error
		if errors.As(err, &fe) && fe.Type == flags.ErrHelp {
			fmt.Fprintln(env.Stdout, fe.Message)
			return cmd, nil, ErrHelp
		}
		hint := "run " + strings.TrimSpace(name+" "+cmd) + " --help"
		if errors.As(err, &fe) && fe.Type == flags.ErrCommandRequired && cmd == "" {
			hint = "run " + name + " --help for the commands"
		}
		return cmd, nil, apierr.Wrap(apierr.Usage, err, strings.TrimSpace(name+" "+cmd)).With("hint", hint)
	}
	if err := cli.CheckRepeated(p, env.Args); err != nil {
		return cmd, nil, err
	}
	return cmd, rest, nil
}

// CompletionScript returns the completion script for shell (bash or zsh)
// that completes prog through GO_FLAGS_COMPLETION. Install it with
//
//	volar completion bash > /etc/bash_completion.d/volar
//	volar completion zsh > "${fpath[1]}/_volar"
//
// or for one session: source <(volar completion bash).
func CompletionScript(shell, prog string) (string, error) {
	switch shell {
	case "bash":
		return strings.ReplaceAll(bashScript, "@PROG@", prog), nil
	case "zsh":
		return strings.ReplaceAll(zshScript, "@PROG@", prog), nil
	}
	return "", apierr.New(apierr.Usage, "no completion for shell %q: use bash or zsh", shell)
}

// bashScript hands the words up to the cursor to volar. Files are
// completed by volar itself for --manifest and --config; "-o default"
// falls back to bash's own file completion when volar offers nothing.
const bashScript = `# bash completion for @PROG@ (generated by "@PROG@ completion bash")
_@PROG@_complete() {
    local IFS=$'\n'
    local cur=${COMP_WORDS[COMP_CWORD]}
    COMPREPLY=($(GO_FLAGS_COMPLETION=1 "${COMP_WORDS[0]}" "${COMP_WORDS[@]:1:$COMP_CWORD}" 2>/dev/null))
    # A lone directory candidate: keep completing inside it.
    if [[ ${#COMPREPLY[@]} -eq 1 && ${COMPREPLY[0]} == */ ]]; then
        compopt -o nospace 2>/dev/null
    fi
    return 0
}
complete -o default -F _@PROG@_complete @PROG@
`

// zshScript asks for descriptions (GO_FLAGS_COMPLETION=verbose) and feeds
// "item:description" pairs to _describe.
const zshScript = `#compdef @PROG@
# zsh completion for @PROG@ (generated by "@PROG@ completion zsh")
_@PROG@() {
    local -a lines candidates
    local line item desc
    lines=("${(@f)$(GO_FLAGS_COMPLETION=verbose "${words[1]}" "${(@)words[2,CURRENT]}" 2>/dev/null)}")
    for line in "${lines[@]}"; do
        [[ -z $line ]] && continue
        if [[ $line == *"  # "* ]]; then
            item=${line%%  \# *}
            item=${item// /}
            desc=${line#*  \# }
        else
            item=$line
            desc=
        fi
        candidates+=("${item//:/\\:}:${desc}")
    done
    if (( ${#candidates} )); then
        _describe -t volar '@PROG@' candidates
    else
        _files
    fi
}
# Autoloaded from $fpath the file is the function's body; sourced, it
# registers the function.
if [[ ${zsh_eval_context[-1]} == loadautofunc ]]; then
    _@PROG@ "$@"
else
    compdef _@PROG@ @PROG@
fi
`
