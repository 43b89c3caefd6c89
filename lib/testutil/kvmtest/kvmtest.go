// Package kvmtest gives a test's processes a KVM that Volant's checks
// accept, the same way on every host: one without /dev/kvm, one whose KVM is
// PVM-only (module kvm_pvm), one with a real KVM, and one whose /dev/kvm is a
// broken stand-in (say a regular file bind-mounted over it).
//
// Tests that run a fake hypervisor needing KVM (the fake Cloud Hypervisor)
// must not depend on the host's /dev/kvm, /sys/module or /proc/modules. Wrap
// returns an argv prefix that runs the command in a mount namespace of its
// own where:
//
//   - /dev is a tmpfs holding the host's /dev: its directories and sockets
//     bound, its device nodes and symlinks copied (no overlay, which would
//     not nest), and /dev/kvm in it is a file served over FUSE by the test
//     process that
//     answers KVM_GET_API_VERSION with 12 and KVM_CHECK_EXTENSION with 0,
//     which is what vmm.KVMUsable asks; it creates no VM, so nothing that
//     actually needs KVM can run on it (fakes only);
//   - /sys/module is an empty tmpfs, so no kvm_pvm is seen.
//
// The host is untouched: every mount lives in that namespace and ends with
// its last process. Wrap needs root, FUSE (/dev/fuse) and util-linux's
// unshare and mount; a test that cannot have them skips, or fails where
// privileged tests are demanded (netnstest.SkipOrFail).
//
// Put the prefix after `ip netns exec NS` (which mounts a fresh /sys), and
// pass the files as the command's ExtraFiles, first: the first becomes fd 3.
package kvmtest

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"syscall"
	"testing"
	"time"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"

	"github.com/volantvm/volant/lib/testutil/netnstest"
)

// KVM ioctls the stand-in answers (linux/kvm.h).
const (
	kvmGetAPIVersion   = 0xAE00 // _IO(KVMIO, 0x00)
	kvmCheckExtension  = 0xAE03 // _IO(KVMIO, 0x03)
	kvmAPIVersion      = 12
	standInFileName    = "kvm"
	fuseRootMode       = "40000"
	wrapperScriptLabel = "kvmtest"
)

// script returns the wrapper, run as `sh -c SCRIPT kvmtest WORKDIR CMD...`
// inside a fresh, private mount namespace (unshare -m). With fuse, fd 3 is
// the FUSE device whose file "kvm" becomes /dev/kvm; without, /dev/kvm is an
// empty regular file (a broken device, for this package's own tests).
func script(fuse bool) string {
	src := `: > "$w/kvm"
kvm="$w/kvm"`
	if fuse {
		src = `mkdir "$w/fuse"
mount -i -t fuse -o fd=3,rootmode=` + fuseRootMode + `,user_id=0,group_id=0 kvmtest "$w/fuse"
exec 3>&-
kvm="$w/fuse/` + standInFileName + `"`
	}
	return `set -eu
w=$1; shift
mount -t tmpfs -o mode=0700 kvmtest "$w"
mkdir "$w/old"
` + src + `
mount --rbind /dev "$w/old"
mount -t tmpfs -o mode=0755 kvmtest /dev
cd "$w/old"
files=
for n in * .[!.]*; do
	if [ "$n" = kvm ] || { [ ! -e "$n" ] && [ ! -L "$n" ]; }; then continue; fi
	if [ -d "$n" ] && [ ! -L "$n" ]; then mkdir "/dev/$n"; mount --rbind "$n" "/dev/$n"
	elif [ -S "$n" ]; then : > "/dev/$n"; mount --bind "$n" "/dev/$n"
	else files="$files $n"; fi
done
# Device nodes and symlinks, copied in one go (mknod on the tmpfs). An
# entry another process removed meanwhile is no loss; the basics must be
# there.
[ -z "$files" ] || cp -a $files /dev/ 2>/dev/null || true
for n in null zero full random urandom tty; do
	if [ -e "$w/old/$n" ] && [ ! -e "/dev/$n" ]; then echo "kvmtest: /dev/$n not copied" >&2; exit 1; fi
done
cd /
: > /dev/kvm
mount --bind "$kvm" /dev/kvm
if [ -d /sys/module ]; then mount -t tmpfs -o mode=0755 kvmtest /sys/module; fi
exec "$@"
`
}

// Wrap starts a stand-in KVM for one command and returns the argv prefix
// that runs that command with it, and the files the command must inherit
// (ExtraFiles, first). Each command started needs its own Wrap: a FUSE
// connection mounts once.
func Wrap(t testing.TB) (prefix []string, files []*os.File) {
	t.Helper()
	Require(t)
	dev, err := os.OpenFile("/dev/fuse", os.O_RDWR, 0)
	if err != nil {
		netnstest.SkipOrFail(t, "no FUSE for the stand-in /dev/kvm: %v", err)
	}
	// The server gets a descriptor of its own, made before the command
	// starts. The command's Start reads dev's while a short command may
	// already have ended the connection and the server returned: had the
	// server closed dev, that Close raced with Start's read.
	fd, err := unix.Dup(int(dev.Fd()))
	if err != nil {
		dev.Close()
		t.Fatalf("kvmtest: duplicating the FUSE descriptor: %v", err)
	}
	done := make(chan struct{})
	t.Cleanup(func() { close(done); dev.Close() })
	go serve(fd, done)
	work := t.TempDir()
	return []string{"unshare", "-m", "sh", "-c", script(true), wrapperScriptLabel, work}, []*os.File{dev}
}

// serve waits until the wrapper has mounted the connection (go-fuse reads
// the kernel's INIT request at once, and a read before the mount fails),
// then serves it on fd, a duplicate of the command's /dev/fuse that it
// owns. Serve returns once the last process of the namespace has gone
// (the kernel ends the connection with the mount).
func serve(fd int, done <-chan struct{}) {
	for {
		select {
		case <-done:
			unix.Close(fd)
			return
		default:
		}
		// Before the mount the device polls as an error; after it,
		// INIT is waiting to be read.
		fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
		n, err := unix.Poll(fds, 100)
		if err == nil && n == 1 && fds[0].Revents&unix.POLLIN != 0 {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	// "/dev/fd/N" tells go-fuse that another process mounted the
	// connection (the wrapper, with fd=3). go-fuse closes the fd it is
	// given when Serve returns: fd, never the caller's file (with dev's
	// number it closed dev's fd under dev, whose Close then closed
	// whatever had taken the number since: a TempDir cleanup's directory,
	// "unlinkat: bad file descriptor").
	srv, err := fuse.NewServer(fs.NewNodeFS(&dir{}, &fs.Options{}), fmt.Sprintf("/dev/fd/%d", fd),
		&fuse.MountOptions{FsName: wrapperScriptLabel, Name: wrapperScriptLabel})
	if err != nil {
		return // the wrapped command sees a dead /dev/kvm and says so
	}
	srv.Serve()
}

// Require skips (or fails where demanded) unless Wrap can work here.
func Require(t testing.TB) {
	t.Helper()
	netnstest.Require(t, "unshare", "mount", "sh", "awk")
	if _, err := os.Stat("/dev/fuse"); err != nil {
		netnstest.SkipOrFail(t, "no /dev/fuse for the stand-in /dev/kvm: %v", err)
	}
}

// Command is exec.Command for a program run with a stand-in KVM.
func Command(t testing.TB, name string, args ...string) *exec.Cmd {
	t.Helper()
	prefix, files := Wrap(t)
	c := exec.Command(prefix[0], append(append(prefix[1:], name), args...)...)
	c.ExtraFiles = files
	return c
}

// dir is the file system's root: one file, kvm.
type dir struct{ fs.Inode }

var _ fs.NodeOnAdder = (*dir)(nil)

func (d *dir) OnAdd(ctx context.Context) {
	d.AddChild(standInFileName, d.NewPersistentInode(ctx, &kvm{}, fs.StableAttr{Mode: syscall.S_IFREG}), false)
}

// kvm answers the ioctls vmm.KVMUsable asks and nothing else.
type kvm struct{ fs.Inode }

var (
	_ fs.NodeOpener    = (*kvm)(nil)
	_ fs.NodeGetattrer = (*kvm)(nil)
	_ fs.NodeIoctler   = (*kvm)(nil)
)

func (k *kvm) Open(ctx context.Context, flags uint32) (fs.FileHandle, uint32, syscall.Errno) {
	return nil, fuse.FOPEN_DIRECT_IO, 0
}

func (k *kvm) Getattr(ctx context.Context, f fs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	out.Mode = syscall.S_IFREG | 0o600
	return 0
}

func (k *kvm) Ioctl(ctx context.Context, f fs.FileHandle, cmd uint32, arg uint64, in, out []byte) (int32, syscall.Errno) {
	switch cmd {
	case kvmGetAPIVersion:
		return kvmAPIVersion, 0
	case kvmCheckExtension:
		return 0, 0
	}
	return 0, syscall.ENOTTY
}
