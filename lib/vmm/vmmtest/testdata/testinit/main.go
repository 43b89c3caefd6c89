// testinit is the PID 1 of the backend conformance and launch tests before
// (and besides) kestrel: it loads the boot image's modules, configures the
// network from volant.ip/volant.gw, answers HTTP on :8080, and powers off
// cleanly when the ACPI power button is pressed. It is not kestrel; it only
// gives the VMM tests a guest that behaves like one on the outside.
//
// Console lines it prints (tests wait for them):
//
//	TESTINIT: ready vm=<name> ip=<addr>
//	TESTINIT: power button; powering off
package main

import (
	"encoding/binary"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/volantvm/volant/lib/bootargs"
	"github.com/volantvm/volant/lib/bootimage"
	"github.com/volantvm/volant/lib/kmod"
)

func say(format string, a ...any) { fmt.Printf("TESTINIT: "+format+"\n", a...) }

func die(format string, a ...any) {
	say("FATAL "+format, a...)
	poweroff()
}

func poweroff() {
	unix.Sync()
	unix.Reboot(unix.LINUX_REBOOT_CMD_POWER_OFF)
	select {}
}

func main() {
	for _, m := range []struct{ src, dst, fs string }{{"proc", "/proc", "proc"}, {"sysfs", "/sys", "sysfs"}, {"devtmpfs", "/dev", "devtmpfs"}} {
		if err := unix.Mount(m.src, m.dst, m.fs, 0, ""); err != nil && err != unix.EBUSY {
			die("mount %s: %v", m.dst, err)
		}
	}
	var u unix.Utsname
	unix.Uname(&u)
	rel := strings.TrimRight(string(u.Release[:]), "\x00")
	ix, err := kmod.LoadIndex("/lib/modules/" + rel)
	if err != nil {
		die("module index: %v", err)
	}
	steps, err := ix.Resolve(bootimage.DefaultModules...)
	if err != nil {
		die("resolving modules: %v", err)
	}
	if _, err := kmod.Load(ix, steps); err != nil {
		die("loading modules: %v", err)
	}
	go watchPowerButton()

	cmdline, _ := os.ReadFile("/proc/cmdline")
	args, _ := bootargs.Parse(string(cmdline))
	if args.VM != "" {
		unix.Sethostname([]byte(args.VM))
	}
	up("lo")
	if args.IP.IsValid() {
		if err := configure(args); err != nil {
			die("network: %v", err)
		}
	}
	ln, err := net.Listen("tcp", ":8080")
	if err != nil {
		die("listen: %v", err)
	}
	say("ready vm=%s ip=%s", args.VM, args.IP)
	http.HandleFunc("/healthz", func(w http.ResponseWriter, r *http.Request) {
		json.NewEncoder(w).Encode(map[string]string{"status": "ok", "vm": args.VM})
	})
	http.Serve(ln, nil)
}

// configure sets eth0's address and brings it up with ioctls (this init
// stays free of netlink libraries: go mod tidy does not see testdata). It
// sets no default route; tests reach the guest from its own subnet.
func configure(a bootargs.Args) error {
	var err error
	for i := 0; i < 200; i++ {
		if _, err = net.InterfaceByName("eth0"); err == nil {
			break
		}
		time.Sleep(25 * time.Millisecond)
	}
	if err != nil {
		return fmt.Errorf("no eth0: %w", err)
	}
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	set := func(req uint, ip []byte) error {
		ifr, err := unix.NewIfreq("eth0")
		if err != nil {
			return err
		}
		if err := ifr.SetInet4Addr(ip); err != nil {
			return err
		}
		return unix.IoctlIfreq(fd, req, ifr)
	}
	if err := set(unix.SIOCSIFADDR, a.IP.Addr().AsSlice()); err != nil {
		return fmt.Errorf("address: %w", err)
	}
	if err := set(unix.SIOCSIFNETMASK, net.CIDRMask(a.IP.Bits(), 32)); err != nil {
		return fmt.Errorf("netmask: %w", err)
	}
	return up("eth0")
}

func up(name string) error {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	ifr, err := unix.NewIfreq(name)
	if err != nil {
		return err
	}
	if err := unix.IoctlIfreq(fd, unix.SIOCGIFFLAGS, ifr); err != nil {
		return err
	}
	ifr.SetUint16(ifr.Uint16() | unix.IFF_UP)
	return unix.IoctlIfreq(fd, unix.SIOCSIFFLAGS, ifr)
}

// watchPowerButton reads every input device for KEY_POWER presses (the ACPI
// button driver reports the power button through evdev).
func watchPowerButton() {
	seen := map[string]bool{}
	for i := 0; i < 100; i++ {
		devs, _ := filepath.Glob("/dev/input/event*")
		for _, d := range devs {
			if !seen[d] {
				seen[d] = true
				go readEvents(d)
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func readEvents(dev string) {
	f, err := os.Open(dev)
	if err != nil {
		return
	}
	const evKey, keyPower = 1, 116
	buf := make([]byte, 24) // struct input_event on 64-bit: timeval, type, code, value
	for {
		if _, err := f.Read(buf); err != nil {
			return
		}
		typ := binary.LittleEndian.Uint16(buf[16:])
		code := binary.LittleEndian.Uint16(buf[18:])
		val := int32(binary.LittleEndian.Uint32(buf[20:]))
		if typ == evKey && code == keyPower && val == 1 {
			say("power button; powering off")
			poweroff()
		}
	}
}
