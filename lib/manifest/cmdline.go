package manifest

import (
	"github.com/volantvm/volant/lib/apierr"
	"github.com/volantvm/volant/lib/bootargs"
)

// ReservedCmdline is the part of the kernel's command line budget left for
// what the launcher adds around a manifest fragment: console, timer and
// network settings, the VM name and the control-plane address.
const ReservedCmdline = 512

// DefaultFragmentBudget is the default budget of a manifest's cmdline fragment.
const DefaultFragmentBudget = bootargs.MaxCmdline - ReservedCmdline

// BootArgs returns the volant.* arguments this manifest implies: the encoded
// manifest, plugin and runtime names, kestrel's API port when it is not the
// default, and for a rootfs plugin the boot mode and its filesystem.
func (m *Manifest) BootArgs() (bootargs.Args, error) {
	enc, err := m.Encode()
	if err != nil {
		return bootargs.Args{}, err
	}
	return m.BootArgsEncoded(enc), nil
}

// BootArgsEncoded is BootArgs with enc, the manifest's Encode, at hand: for
// a caller that remembers encodings (Encode's compressor allocates most of
// a megabyte, a cost in every VM start).
func (m *Manifest) BootArgsEncoded(enc string) bootargs.Args {
	a := bootargs.Args{Manifest: enc, Plugin: m.Name, Runtime: m.Runtime}
	if p := m.AgentPort(); p != DefaultAgentPort {
		// Kestrel binds its API before it may have fetched the manifest.
		a.AgentPort = p
	}
	if m.Rootfs != nil {
		a.Boot = bootargs.BootRootfs
		a.RootfsFSType = m.Rootfs.FSType
	}
	return a
}

// Cmdline returns the kernel command-line fragment for the manifest, or
// CMDLINE_TOO_LONG when it is longer than budget bytes.
func (m *Manifest) Cmdline(budget int) (string, error) {
	a, err := m.BootArgs()
	if err != nil {
		return "", err
	}
	s := a.String()
	if len(s) > budget {
		return "", apierr.New(apierr.CmdlineTooLong,
			"manifest %s needs %d bytes of kernel command line; the budget is %d (x86 keeps %d bytes, %d are reserved for the launcher)",
			m.Name, len(s), budget, bootargs.MaxCmdline, bootargs.MaxCmdline-budget).
			With("bytes", len(s)).With("budget", budget).
			With("hint", "shorten env values and labels, or let volant-launch pass the manifest inside the initramfs")
	}
	return s, nil
}
