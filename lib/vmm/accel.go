package vmm

import (
	"errors"
	"io/fs"
)

// KVMUsable reports whether /dev/kvm can run a stock guest kernel, reading
// the host through root (os.DirFS("/") in production, a fake tree in tests).
//
// A host whose KVM is PVM (the kvm_pvm module, "Pagetable-based VM") runs
// only guest kernels built as PVM guests: a stock kernel hangs after the
// real-mode setup. Such a host reports false with the reason, and AccelAuto
// falls back to TCG.
func KVMUsable(root fs.FS) (bool, string) {
	if _, err := fs.Stat(root, "dev/kvm"); err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return false, "no /dev/kvm on this host"
		}
		return false, "cannot use /dev/kvm: " + err.Error()
	}
	if _, err := fs.Stat(root, "sys/module/kvm_pvm"); err == nil {
		return false, "this host's KVM is PVM (module kvm_pvm), which runs only PVM-built guest kernels; a stock kernel hangs under it"
	}
	return true, ""
}

// ResolveAccel turns AccelAuto into KVM or TCG for a backend that can
// emulate (tcgOK), and checks an explicit request. It returns the choice and,
// when it fell back or refused, why.
func ResolveAccel(want Accel, root fs.FS, tcgOK bool) (Accel, string, error) {
	ok, why := KVMUsable(root)
	switch want {
	case AccelKVM:
		if !ok {
			return "", why, errors.New("KVM requested but unusable: " + why)
		}
		return AccelKVM, "", nil
	case AccelTCG:
		if !tcgOK {
			return "", "", errors.New("TCG software emulation is not available with this backend")
		}
		return AccelTCG, "", nil
	case AccelAuto, "":
		if ok {
			return AccelKVM, "", nil
		}
		if !tcgOK {
			return "", why, errors.New("KVM is unusable and this backend cannot emulate: " + why)
		}
		return AccelTCG, why + "; falling back to TCG software emulation (slower)", nil
	}
	return "", "", errors.New("unknown accel " + string(want) + " (want auto, kvm or tcg)")
}
