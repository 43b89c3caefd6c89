package runner

import (
	"os"

	"github.com/volantvm/volant/lib/launch"
	"github.com/volantvm/volant/lib/layout"
)

// Environ is the environment a `volant-launch` process gets for the
// options: the VOLANT_* variables of the options that are set (lib/layout's
// names), plus PATH. OptionsFromEnv reads it back.
func Environ(o launch.Options) []string {
	env := append([]string{"PATH=" + os.Getenv("PATH")}, dirs(o).Environ()...)
	if o.Kestrel != "" {
		env = append(env, layout.EnvKestrel+"="+o.Kestrel)
	}
	return env
}

// OptionsFromEnv is the inverse of Environ: lib/launch's options from a
// process's environment (getenv is os.Getenv or a command's). VOLANT_KESTREL
// unset means the kestrel next to the running binary, if there is one; the
// old VOLANT_STATE_DIR still names the data directory (lib/layout).
func OptionsFromEnv(getenv func(string) string) launch.Options {
	d := layout.FromEnv(getenv)
	o := launch.Options{KernelDir: d.Kernel, RunRoot: d.RunRoot, StateDir: d.Data, CacheDir: d.Cache}
	if getenv != nil {
		o.Kestrel = getenv(layout.EnvKestrel)
	}
	if o.Kestrel == "" {
		o.Kestrel = layout.Sibling("kestrel")
	}
	return o
}

func dirs(o launch.Options) layout.Dirs {
	return layout.Dirs{Data: o.StateDir, RunRoot: o.RunRoot, Cache: o.CacheDir, Kernel: o.KernelDir}
}

// LaunchLogPath is where a detached `volant-launch run` of a VM writes its
// stdout and stderr: <data>/vms/<name>/launch.log. It is for people;
// programs read LastError.
func LaunchLogPath(o launch.Options, name string) string {
	return dirs(o).VMFile(name, layout.LaunchLogName)
}
