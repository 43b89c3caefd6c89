package runner

import (
	"os"
	"strconv"

	"github.com/volantvm/volant/lib/launch"
	"github.com/volantvm/volant/lib/layout"
	"github.com/volantvm/volant/lib/vmm/jail"
)

// The variables of the VMM's jail (launch.JailOptions).
const (
	EnvInsecureVMM   = "VOLANT_INSECURE_VMM"    // "1": no jail, the VMM runs as root
	EnvVMMUIDs       = "VOLANT_VMM_UIDS"        // FIRST-LAST: the VMMs' uids
	EnvVMMCgroup     = "VOLANT_VMM_CGROUP"      // parent cgroup, or "unit"
	EnvVMMOverheadMB = "VOLANT_VMM_OVERHEAD_MB" // memory a VMM may use beyond its guest's
)

// Environ is the environment a `volant-launch` process gets for the
// options: the VOLANT_* variables of the options that are set (lib/layout's
// names), plus PATH. OptionsFromEnv reads it back.
func Environ(o launch.Options) []string {
	env := append([]string{"PATH=" + os.Getenv("PATH")}, dirs(o).Environ()...)
	if o.Kestrel != "" {
		env = append(env, layout.EnvKestrel+"="+o.Kestrel)
	}
	j := o.Jail
	if j.Insecure {
		env = append(env, EnvInsecureVMM+"=1")
	}
	if j.UIDs.Count > 0 {
		env = append(env, EnvVMMUIDs+"="+j.UIDs.String())
	}
	if j.Cgroup != "" {
		env = append(env, EnvVMMCgroup+"="+j.Cgroup)
	}
	if j.OverheadMB > 0 {
		env = append(env, EnvVMMOverheadMB+"="+strconv.Itoa(j.OverheadMB))
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
	if getenv != nil {
		o.Jail.Insecure = getenv(EnvInsecureVMM) == "1" || getenv(EnvInsecureVMM) == "true"
		o.Jail.UIDs, _ = jail.ParseRange(getenv(EnvVMMUIDs)) // checked by the door that set it
		o.Jail.Cgroup = getenv(EnvVMMCgroup)
		o.Jail.OverheadMB, _ = strconv.Atoi(getenv(EnvVMMOverheadMB))
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
