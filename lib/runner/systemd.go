package runner

import (
	"os"
	"strings"

	"github.com/volantvm/volant/lib/launch"
	"github.com/volantvm/volant/lib/layout"
)

// SystemdRunning reports whether systemd is the init system (sd_booted(3):
// /run/systemd/system exists).
func SystemdRunning() bool {
	st, err := os.Stat("/run/systemd/system")
	return err == nil && st.IsDir()
}

// UnitName is the systemd unit that runs VM name
// (contrib/systemd/volant-vm@.service).
func UnitName(name string) string { return "volant-vm@" + name + ".service" }

// SystemdEnvFile is the environment file volant-vm@.service reads
// (EnvironmentFile=-/run/volant/vm.env).
const SystemdEnvFile = layout.SystemdEnvFile

// SystemdEnviron is what SystemdEnvFile holds for o: the jail's variables
// that are set (Environ's), except VOLANT_VMM_CGROUP, which the unit sets
// to "unit" itself (a file's variables override the unit's).
func SystemdEnviron(o launch.Options) []string {
	j := o.Jail
	j.Cgroup = ""
	var env []string
	for _, kv := range Environ(launch.Options{Jail: j}) {
		if k, _, _ := strings.Cut(kv, "="); strings.HasPrefix(k, "VOLANT_") && k != layout.EnvKestrel {
			env = append(env, kv)
		}
	}
	return env
}
