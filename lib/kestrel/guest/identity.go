package guest

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// The random driver's ioctls (include/uapi/linux/random.h).
const (
	rndAddEntropy  = 0x40085203 // RNDADDENTROPY: struct rand_pool_info
	rndReseedCRNG  = 0x5207     // RNDRESEEDCRNG
	maxEntropySeed = 512
)

// AddEntropy mixes seed into the kernel's random pool, credits it as
// entropy (the host's crypto/rand made it), and forces the kernel's
// generator to reseed from the pool now, so what /dev/urandom and
// getrandom(2) return next no longer follows from the state the guest
// had before (a snapshot's, which other guests share).
func (m *Machine) AddEntropy(seed []byte) error {
	m.check()
	if len(seed) == 0 || len(seed) > maxEntropySeed {
		return fmt.Errorf("a seed of %d bytes; want 1 to %d", len(seed), maxEntropySeed)
	}
	f, err := os.OpenFile("/dev/urandom", os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	// struct rand_pool_info { int entropy_count; int buf_size; __u32 buf[]; }
	info := make([]byte, 8, 8+len(seed))
	binary.NativeEndian.PutUint32(info[0:4], uint32(len(seed)*8))
	binary.NativeEndian.PutUint32(info[4:8], uint32(len(seed)))
	info = append(info, seed...)
	if err := ioctlPtr(f.Fd(), rndAddEntropy, info); err != nil {
		return fmt.Errorf("RNDADDENTROPY: %w", err)
	}
	if _, _, errno := unix.Syscall(unix.SYS_IOCTL, f.Fd(), rndReseedCRNG, 0); errno != 0 && !errors.Is(errno, unix.EINVAL) {
		// Kernels before 4.17 have no RNDRESEEDCRNG; the credit above
		// reseeds them soon enough.
		return fmt.Errorf("RNDRESEEDCRNG: %w", errno)
	}
	return nil
}

// SetClock sets the wall clock (CLOCK_REALTIME).
func (m *Machine) SetClock(t time.Time) error {
	m.check()
	ts := unix.NsecToTimespec(t.UnixNano())
	return unix.ClockSettime(unix.CLOCK_REALTIME, &ts)
}

func ioctlPtr(fd uintptr, req uint, arg []byte) error {
	if _, _, errno := unix.Syscall(unix.SYS_IOCTL, fd, uintptr(req), uintptr(unsafe.Pointer(&arg[0]))); errno != 0 {
		return errno
	}
	return nil
}
