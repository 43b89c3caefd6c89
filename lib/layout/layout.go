// Package layout is where Volant keeps things on a host: the directory
// layout, the environment variables that move it, and how one Volant
// command finds another. It is the one place these rules are written;
// every command, volantd and the libraries read them from here.
//
//	/var/lib/volant/                 data directory (VOLANT_DATA_DIR)
//	  volant.db                      state database (VOLANT_DB)
//	  secrets.key                    the key that seals VMs' inputs in the database (0600, lib/secretbox)
//	  kernel/                        guest kernel (VOLANT_KERNEL_DIR; not moved with the data directory)
//	  cache/                         built boot images, verified artifacts (VOLANT_CACHE_DIR)
//	  plugins/<name>/                installed plugin artifacts
//	  vms/<name>/                    one VM's lasting files:
//	    spec.json                      the launch spec volantd staged
//	    serial.log                     the guest console
//	    workload.log[.N]               the workload's output per stream (lib/workloadlog)
//	    launch.log                     a detached volant-launch's stdout and stderr, for people
//	    last-error.json                the error the VM's last run ended with, for programs
//	    disks/                         the VM's own copies of writable disks
//	  volumes/<name>.img             volumes: disk images that outlive VMs
//	/run/volant/volantd.sock         volantd's API socket (VOLANT_SOCKET)
//	/run/volant/vms/<name>/          a VM's run directory (VOLANT_RUN_ROOT): sockets, pid file, plan
//	/run/volant/inputs/<name>.json   a VM's inputs in clear (0600, dir 0700), from its start until it
//	                                 is stopped: what volant-launch sends kestrel (beside RunRoot)
//	/run/volant/vm.env               the volant-vm@ units' environment (volantd's jail settings, lib/runner)
//	/var/lib/volant/uids/            per jailed hypervisor's uid in use (lib/vmm/jail):
//	  <uid>                            its lock file
//	  <uid>.json                       what its run changed for it, undone after a crash
//	                                   or a power loss (so not under /run)
//
// Paths in the guest (kestrel's, such as /run/volant/identity.json) are not
// this layout: lib/kestrel keeps them.
//
// VOLANT_STATE_DIR is the name volant-launch used for the data directory
// before this package; it is still read when VOLANT_DATA_DIR is unset.
package layout

import (
	"os"
	"os/exec"
	"path/filepath"
)

// Default locations.
const (
	DefaultDataDir   = "/var/lib/volant"
	DefaultKernelDir = "/var/lib/volant/kernel"
	DefaultRunRoot   = "/run/volant/vms"
	DefaultSocket    = "/run/volant/volantd.sock"
	// DefaultUIDDir is host-wide on purpose: a uid must be unique among
	// all the host's hypervisors, whatever directories their runs use.
	// It is on disk: a record names disks chowned to the uid, which a
	// reboot does not give back.
	DefaultUIDDir = "/var/lib/volant/uids"
	// SystemdEnvFile is what volant-vm@.service's EnvironmentFile= names.
	SystemdEnvFile = "/run/volant/vm.env"
)

// Environment variables.
const (
	EnvDataDir   = "VOLANT_DATA_DIR"
	EnvRunRoot   = "VOLANT_RUN_ROOT"
	EnvCacheDir  = "VOLANT_CACHE_DIR"
	EnvKernelDir = "VOLANT_KERNEL_DIR"
	EnvKestrel   = "VOLANT_KESTREL"
	EnvDB        = "VOLANT_DB"
	EnvSocket    = "VOLANT_SOCKET"
	EnvHost      = "VOLANT_HOST"
	// EnvStateDir is the old name of EnvDataDir, read when EnvDataDir is
	// unset so scripts written for earlier volant-launch builds keep
	// working. Deprecated: set VOLANT_DATA_DIR.
	EnvStateDir = "VOLANT_STATE_DIR"
)

// Names inside the data directory.
const (
	DBName = "volant.db"
	// SecretsKeyName is the key file that seals secrets at rest.
	SecretsKeyName = "secrets.key"
	// InputsName is the directory beside RunRoot for VMs' inputs in clear.
	InputsName    = "inputs"
	KernelName    = "kernel"
	CacheName     = "cache"
	PluginsName   = "plugins"
	VMsName       = "vms"
	SpecName      = "spec.json"
	SerialLogName = "serial.log"
	// WorkloadLogName is the workload's output, collected over the agent channel.
	WorkloadLogName = "workload.log"
	LaunchLogName   = "launch.log"
	LastErrorName   = "last-error.json"
	DisksName       = "disks"
	VolumesName     = "volumes"
)

// Dirs is one host's layout. An empty field means its default: see
// WithDefaults.
type Dirs struct {
	// Data is the data directory (default /var/lib/volant).
	Data string
	// RunRoot holds the VMs' run directories (default /run/volant/vms).
	RunRoot string
	// Cache holds caches (default <Data>/cache).
	Cache string
	// Kernel is the guest kernel directory (default /var/lib/volant/kernel,
	// whatever Data is: the kernel is software installed on the host, not
	// state).
	Kernel string
	// DB is the state database (default <Data>/volant.db).
	DB string
}

// FromEnv reads the layout from the environment; unset variables leave
// their fields empty (defaults apply later). getenv is os.Getenv or a
// command's Env.Getenv; nil reads nothing.
func FromEnv(getenv func(string) string) Dirs {
	if getenv == nil {
		return Dirs{}
	}
	d := Dirs{
		Data:    getenv(EnvDataDir),
		RunRoot: getenv(EnvRunRoot),
		Cache:   getenv(EnvCacheDir),
		Kernel:  getenv(EnvKernelDir),
		DB:      getenv(EnvDB),
	}
	if d.Data == "" {
		d.Data = getenv(EnvStateDir)
	}
	return d
}

// Environ is the inverse of FromEnv: KEY=value words for the fields that
// are set, for a child process's environment.
func (d Dirs) Environ() []string {
	var env []string
	add := func(k, v string) {
		if v != "" {
			env = append(env, k+"="+v)
		}
	}
	add(EnvDataDir, d.Data)
	add(EnvRunRoot, d.RunRoot)
	add(EnvCacheDir, d.Cache)
	add(EnvKernelDir, d.Kernel)
	add(EnvDB, d.DB)
	return env
}

// WithDefaults fills the empty fields.
func (d Dirs) WithDefaults() Dirs {
	if d.Data == "" {
		d.Data = DefaultDataDir
	}
	if d.RunRoot == "" {
		d.RunRoot = DefaultRunRoot
	}
	if d.Cache == "" {
		d.Cache = filepath.Join(d.Data, CacheName)
	}
	if d.Kernel == "" {
		d.Kernel = DefaultKernelDir
	}
	if d.DB == "" {
		d.DB = filepath.Join(d.Data, DBName)
	}
	return d
}

// The paths below apply the defaults of empty fields.

// VMDir is <Data>/vms/<name>: a VM's lasting files.
func (d Dirs) VMDir(name string) string {
	return filepath.Join(d.WithDefaults().Data, VMsName, name)
}

// VMFile is a file in VMDir (SpecName, SerialLogName, LaunchLogName,
// LastErrorName, DisksName).
func (d Dirs) VMFile(name, file string) string { return filepath.Join(d.VMDir(name), file) }

// PluginDir is <Data>/plugins/<name>.
func (d Dirs) PluginDir(name string) string {
	return filepath.Join(d.WithDefaults().Data, PluginsName, name)
}

// VolumeImage is <Data>/volumes/<name>.img: a volume's disk image.
func (d Dirs) VolumeImage(name string) string {
	return filepath.Join(d.WithDefaults().Data, VolumesName, name+".img")
}

// RunDir is <RunRoot>/<name>: a VM's run directory.
func (d Dirs) RunDir(name string) string { return filepath.Join(d.WithDefaults().RunRoot, name) }

// InputsDir is <RunRoot>/../inputs: VMs' inputs in clear while they run,
// on the same tmpfs as their run directories but apart from them (a run
// clears its run directory as it starts, and a restarted run reads its
// inputs again).
func (d Dirs) InputsDir() string {
	return filepath.Join(filepath.Dir(d.WithDefaults().RunRoot), InputsName)
}

// SecretsKey is <Data>/secrets.key.
func (d Dirs) SecretsKey() string { return filepath.Join(d.WithDefaults().Data, SecretsKeyName) }

// Sibling returns the Volant binary called name that sits in the same
// directory as the running executable (symlinks to it resolved), or "" when
// there is none. Commands are installed side by side (make build fills
// bin/), so this is how one finds the others, and how volantd finds
// volant-launch and kestrel.
func Sibling(name string) string {
	exe, err := os.Executable()
	if err != nil {
		return ""
	}
	if real, err := filepath.EvalSymlinks(exe); err == nil {
		exe = real
	}
	p := filepath.Join(filepath.Dir(exe), name)
	st, err := os.Stat(p)
	if err != nil || !st.Mode().IsRegular() || st.Mode()&0o111 == 0 {
		return ""
	}
	return p
}

// FindBinary returns the absolute path of a Volant binary: explicit when
// given (a path, or a name looked up on PATH), else the Sibling called
// name, else name on PATH. The error says where it looked (an
// exec.ErrNotFound or the explicit path's error); callers wrap it with
// their own hint.
func FindBinary(name, explicit string) (string, error) {
	if explicit != "" {
		p, err := exec.LookPath(explicit)
		if err != nil {
			return "", err
		}
		return filepath.Abs(p)
	}
	if p := Sibling(name); p != "" {
		return p, nil
	}
	p, err := exec.LookPath(name)
	if err != nil {
		return "", err
	}
	return filepath.Abs(p)
}
