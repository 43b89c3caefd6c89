// Package qemu is the QEMU backend of lib/vmm: qemu-system-x86_64 with the
// microvm machine (virtio-mmio devices) by default or pc (virtio-pci) on
// request, KVM where it can run a stock kernel and TCG where it cannot.
package qemu

import (
	"fmt"
	"strconv"
	"strings"

	"github.com/volantvm/volant/lib/apierr"
	"github.com/volantvm/volant/lib/vmm"
)

// DefaultBinary is the QEMU system emulator Volant runs.
const DefaultBinary = "qemu-system-x86_64"

// Machine types.
const (
	MachineMicrovm = "microvm"
	MachinePC      = "pc"
)

// Sandbox is the value of -sandbox on every QEMU command line. QEMU runs
// unprivileged already (lib/vmm/jail), so elevateprivileges=deny costs
// nothing; QEMU's own -runas would need set*id after this filter is on.
const Sandbox = "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny"

// AgentPortName is the virtio-serial port name kestrel looks for (the
// guest's /dev/vportNpM whose sysfs name is this; agentchan.PortName).
const AgentPortName = "org.volant.agent"

// TCGCacheMiB is the translation cache's size under TCG (see Argv).
const TCGCacheMiB = 64

// Argv builds the QEMU command line for cfg. It is pure: nothing is opened
// or started, and equal configs give equal argv. binary is argv[0].
//
// Choices, measured on Debian's kernel (see docs/architecture.md):
//   - microvm keeps its ACPI on: Debian's kernel finds virtio-mmio devices
//     only through ACPI, and ACPI carries the power button;
//   - pit/pic/rtc on: with -nodefaults and none of them the kernel can stall
//     calibrating the TSC;
//   - under TCG the CPU is qemu64,+arat (without ARAT an idle guest never
//     goes tickless and burns ~10x more host CPU) and the translation
//     cache (tb-size) is 64 MiB: a boot to a Go workload translates ~57 MB
//     of host code, so a 16 MiB cache was flushed six times per boot and
//     every hot path translated again (3.7 s of QEMU CPU per kestrel boot
//     against 3.1 s with 64 MiB, and 3.25 s with 32 MiB and two flushes);
//     the price is the cache's pages, ~40 MiB more private memory per VM.
//     Under KVM the CPU is the host's.
func Argv(binary string, cfg vmm.Config) ([]string, error) {
	if err := validate(cfg); err != nil {
		return nil, err
	}
	machine := cfg.Machine
	if machine == "" {
		machine = MachineMicrovm
	}
	a := []string{binary,
		"-name", "guest=" + esc(cfg.Name) + ",debug-threads=on",
		"-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
		// Its seccomp filter: no obsolete system calls, no set*id, no
		// fork or exec, no scheduler or resource changes.
		"-sandbox", Sandbox,
	}
	switch machine {
	case MachineMicrovm:
		a = append(a, "-M", "microvm,pit=on,pic=on,rtc=on,isa-serial=on")
	case MachinePC:
		a = append(a, "-M", "pc")
	}
	switch cfg.Accel {
	case vmm.AccelKVM:
		a = append(a, "-accel", "kvm", "-cpu", "host")
	case vmm.AccelTCG:
		a = append(a, "-accel", "tcg,tb-size="+strconv.Itoa(TCGCacheMiB), "-cpu", "qemu64,+arat")
	}
	a = append(a,
		"-m", strconv.Itoa(cfg.MemoryMB),
		"-smp", strconv.Itoa(cfg.CPUs),
		"-kernel", cfg.Kernel,
		"-append", cfg.Cmdline,
	)
	if cfg.Initramfs != "" {
		a = append(a, "-initrd", cfg.Initramfs)
	}
	a = append(a, "-qmp", "unix:"+esc(cfg.APISocket)+",server=on,wait=off")

	switch {
	case cfg.Serial.Socket != "":
		opt := "socket,id=serial0,path=" + esc(cfg.Serial.Socket) + ",server=on,wait=off"
		if cfg.Serial.LogFile != "" {
			opt += ",logfile=" + esc(cfg.Serial.LogFile) + ",logappend=on"
		}
		a = append(a, "-chardev", opt, "-serial", "chardev:serial0")
	case cfg.Serial.LogFile != "":
		a = append(a, "-chardev", "file,id=serial0,path="+esc(cfg.Serial.LogFile)+",append=on", "-serial", "chardev:serial0")
	default:
		a = append(a, "-serial", "null")
	}

	dev := func(mmio, pci string) string {
		if machine == MachinePC {
			return pci
		}
		return mmio
	}
	for i, d := range cfg.Disks {
		id := "disk" + strconv.Itoa(i)
		format := d.Format
		if format == "" {
			format = "raw"
		}
		drive := "id=" + id + ",file=" + esc(d.Path) + ",format=" + format + ",if=none,discard=unmap"
		if d.ReadOnly {
			drive += ",readonly=on"
		}
		device := dev("virtio-blk-device", "virtio-blk-pci") + ",drive=" + id
		if d.Serial != "" {
			device += ",serial=" + d.Serial
		}
		a = append(a, "-drive", drive, "-device", device)
	}
	for i, n := range cfg.Nets {
		id := "net" + strconv.Itoa(i)
		d := dev("virtio-net-device", "virtio-net-pci,romfile=") + ",netdev=" + id + ",mac=" + n.MAC
		a = append(a, "-netdev", "tap,id="+id+",ifname="+esc(n.Tap)+",script=no,downscript=no", "-device", d)
	}
	if cfg.RestoreFrom != "" {
		a = append(a, "-incoming", "defer")
	}
	if cfg.AgentSocket != "" {
		a = append(a,
			"-device", dev("virtio-serial-device", "virtio-serial-pci"),
			"-chardev", "socket,id=agent0,path="+esc(cfg.AgentSocket)+",server=on,wait=off",
			"-device", "virtserialport,chardev=agent0,name="+AgentPortName,
		)
	}
	return a, nil
}

// esc escapes a value inside a QEMU option string, where ',' separates
// options and ',,' is a literal comma.
func esc(s string) string { return strings.ReplaceAll(s, ",", ",,") }

func validate(cfg vmm.Config) error {
	probs := cfg.Problems(255)
	bad := func(format string, args ...any) { probs = append(probs, fmt.Sprintf(format, args...)) }
	switch cfg.Machine {
	case "", MachineMicrovm, MachinePC:
	default:
		bad("machine must be microvm or pc, got %q", cfg.Machine)
	}
	switch cfg.Accel {
	case vmm.AccelKVM, vmm.AccelTCG:
	default:
		bad("accel must be resolved to kvm or tcg before building argv, got %q", cfg.Accel)
	}
	if len(probs) > 0 {
		return apierr.New(apierr.InvalidInput, "qemu: invalid VM config: %s", strings.Join(probs, "; ")).
			With("problems", probs)
	}
	return nil
}
