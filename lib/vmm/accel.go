package vmm

import (
	"errors"
	"fmt"
	"io/fs"
	"os"

	"golang.org/x/sys/unix"
)

// KVMUsable reports whether /dev/kvm can run a stock guest kernel, reading
// the host through root (os.DirFS("/") in production, a fake tree in tests).
//
// A host whose KVM is PVM (the kvm_pvm module, "Pagetable-based VM") runs
// only guest kernels built as PVM guests: a stock kernel hangs after the
// real-mode setup. Such a host reports false with the reason, and AccelAuto
// falls back to TCG. The device must also open and answer its API version.
//
// Why no boot probe: a tiny real-mode guest under -accel kvm would pass on
// a PVM host (the stock kernel's real-mode setup runs there too; it hangs
// later, in the protected/long-mode kernel), so a faithful probe would have
// to boot a stock kernel: seconds per check. The module is the precise
// signal for the one known "KVM present but unusable" case; --accel tcg
// overrides anything this gets wrong.
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
	if err := kvmAnswers(root); err != nil {
		return false, err.Error()
	}
	return true, ""
}

// kvmAPIVersion is KVM_GET_API_VERSION's answer on every kernel since 2.6.22.
const (
	kvmAPIVersion    = 12
	kvmGetAPIVersion = 0xAE00 // _IO(KVMIO, 0x00)
)

// kvmAnswers opens the KVM device and asks its API version
// (KVM_GET_API_VERSION): it catches a device this process may not use and a
// KVM that does not answer, in microseconds and without creating a VM. On a
// root that is not the real file system (a test's fstest.MapFS) there is no
// device to ask, and it succeeds.
func kvmAnswers(root fs.FS) error {
	f, err := root.Open("dev/kvm")
	if err != nil {
		return fmt.Errorf("cannot open /dev/kvm: %w", err)
	}
	defer f.Close()
	osf, ok := f.(*os.File)
	if !ok {
		return nil
	}
	v, err := unix.IoctlRetInt(int(osf.Fd()), kvmGetAPIVersion)
	if err != nil {
		return fmt.Errorf("/dev/kvm does not answer KVM_GET_API_VERSION: %w", err)
	}
	if v != kvmAPIVersion {
		return fmt.Errorf("/dev/kvm speaks KVM API %d, not %d", v, kvmAPIVersion)
	}
	return nil
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
