// Package cloudhypervisor is the Cloud Hypervisor backend of lib/vmm: the
// cloud-hypervisor command line (v53 syntax) and a client of its REST API
// over the unix socket given by --api-socket.
//
// The command line follows cloud-hypervisor --help: options take
// comma-separated key=value lists parsed by CH's option_parser, where a
// double quote toggles quoting (commas inside quotes are kept) and square
// brackets nest. Values containing a comma are therefore quoted; values
// containing '"', '[' or ']' cannot be expressed and are refused.
//
// Cloud Hypervisor needs KVM (or MSHV): it has no software emulation, one
// machine type, and no way to log the serial port to a file and serve it on
// a socket at once.
package cloudhypervisor

import (
	"fmt"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/volantvm/volant/lib/apierr"
	"github.com/volantvm/volant/lib/vmm"
)

// DefaultBinary is the Cloud Hypervisor executable.
const DefaultBinary = "cloud-hypervisor"

// Name is the backend's name.
const Name = "cloud-hypervisor"

// Argv builds the cloud-hypervisor command line for cfg. It is pure: nothing
// is opened or started, and equal configs give equal argv. binary is argv[0].
//
// Cloud Hypervisor exits when the guest powers off (no --no-shutdown), so
// the VMM process lives exactly as long as the VM, as with QEMU -no-reboot.
func Argv(binary string, cfg vmm.Config) ([]string, error) {
	if err := unsupported(cfg); err != nil {
		return nil, err
	}
	if err := validate(cfg); err != nil {
		return nil, err
	}
	if cfg.RestoreFrom != "" {
		// The VM comes from the snapshot (Control.Restore); the VMM starts
		// without one.
		return []string{binary, "--api-socket", "path=" + val(cfg.APISocket)}, nil
	}
	a := []string{binary,
		"--api-socket", "path=" + val(cfg.APISocket),
		"--cpus", "boot=" + strconv.Itoa(cfg.CPUs),
		"--memory", "size=" + strconv.Itoa(cfg.MemoryMB) + "M",
		"--kernel", cfg.Kernel,
	}
	if cfg.Initramfs != "" {
		a = append(a, "--initramfs", cfg.Initramfs)
	}
	a = append(a, "--cmdline", cfg.Cmdline)
	for i, d := range cfg.Disks {
		opt := "path=" + val(d.Path)
		if d.ReadOnly {
			opt += ",readonly=on"
		}
		if d.Format == "qcow2" {
			// A qcow2 disk may be an overlay on a backing file (a VM made
			// from a snapshot): CH opens backing files only when told.
			opt += ",image_type=qcow2,backing_files=on"
		}
		if d.Serial != "" {
			opt += ",serial=" + d.Serial
		}
		opt += ",id=disk" + strconv.Itoa(i)
		a = append(a, "--disk", opt)
	}
	for i, n := range cfg.Nets {
		a = append(a, "--net", "tap="+val(n.Tap)+",mac="+n.MAC+",id=net"+strconv.Itoa(i))
	}
	switch {
	case cfg.Serial.Socket != "":
		a = append(a, "--serial", "socket="+val(cfg.Serial.Socket))
	case cfg.Serial.LogFile != "":
		a = append(a, "--serial", "file="+val(cfg.Serial.LogFile))
	default:
		a = append(a, "--serial", "null")
	}
	a = append(a, "--console", "off")
	if cfg.AgentSocket != "" {
		// Hybrid vsock: the host reaches the guest's ports through this
		// unix socket (CONNECT <port>), which CH creates.
		a = append(a, "--vsock", "cid="+strconv.Itoa(vmm.AgentVsockCID)+",socket="+val(cfg.AgentSocket))
	}
	// CH's own confinement, inside the jail of lib/vmm/jail: its seccomp
	// filters (the default, said aloud), and Landlock limited to the files
	// of its config (CH adds those itself) plus the directory where it
	// creates its sockets.
	a = append(a, "--seccomp", "true", "--landlock")
	if dir := socketDir(cfg); dir != "" {
		a = append(a, "--landlock-rules", "path="+val(dir)+",access=rw")
	}
	return a, nil
}

// socketDir is the directory of the sockets CH creates (they share one:
// the VMM's directory of its run directory), or "" when they do not.
func socketDir(cfg vmm.Config) string {
	dir := filepath.Dir(cfg.APISocket)
	for _, s := range []string{cfg.Serial.Socket, cfg.AgentSocket} {
		if s != "" && filepath.Dir(s) != dir {
			return ""
		}
	}
	return dir
}

// val quotes a value for CH's option parser when it holds a comma.
func val(s string) string {
	if strings.ContainsRune(s, ',') {
		return `"` + s + `"`
	}
	return s
}

// unsupported reports, before anything else, what this backend cannot do.
func unsupported(cfg vmm.Config) error {
	switch {
	case cfg.Accel == vmm.AccelTCG:
		return vmm.NotSupported(Name, "TCG software emulation (Cloud Hypervisor needs KVM; use the qemu backend)")
	case cfg.Machine != "":
		return vmm.NotSupported(Name, fmt.Sprintf("machine type %q (Cloud Hypervisor has one machine type)", cfg.Machine))
	case cfg.Serial.Socket != "" && cfg.Serial.LogFile != "":
		return vmm.NotSupported(Name, "a serial console that is both logged to a file and served on a socket")
	}
	return nil
}

func validate(cfg vmm.Config) error {
	probs := cfg.Problems(254)
	bad := func(format string, args ...any) { probs = append(probs, fmt.Sprintf(format, args...)) }
	if cfg.Accel != vmm.AccelKVM {
		bad("accel must be resolved to kvm before building argv, got %q", cfg.Accel)
	}
	inexpressible := func(field, v string) {
		if strings.ContainsAny(v, `"[]`) {
			bad("%s %q contains '\"', '[' or ']', which Cloud Hypervisor's option syntax cannot carry", field, v)
		}
	}
	inexpressible("api_socket", cfg.APISocket)
	inexpressible("serial.log_file", cfg.Serial.LogFile)
	inexpressible("serial.socket", cfg.Serial.Socket)
	inexpressible("agent_socket", cfg.AgentSocket)
	for i, d := range cfg.Disks {
		inexpressible(fmt.Sprintf("disks[%d].path", i), d.Path)
	}
	for i, n := range cfg.Nets {
		inexpressible(fmt.Sprintf("nets[%d].tap", i), n.Tap)
	}
	if len(probs) > 0 {
		return apierr.New(apierr.InvalidInput, "cloud-hypervisor: invalid VM config: %s", strings.Join(probs, "; ")).
			With("problems", probs)
	}
	return nil
}
