// modinit is a throwaway PID 1 for bootimage's real-VM test: it loads the
// boot image's modules with lib/kmod, reports them on the console and powers
// off. It is not kestrel; it proves the image alone.
package main

import (
	"encoding/json"
	"fmt"
	"os"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/volantvm/volant/lib/bootimage"
	"github.com/volantvm/volant/lib/kmod"
)

func main() {
	defer func() {
		unix.Sync()
		unix.Reboot(unix.LINUX_REBOOT_CMD_POWER_OFF)
	}()
	for _, m := range []struct{ src, dst, fs string }{{"proc", "/proc", "proc"}, {"sysfs", "/sys", "sysfs"}, {"devtmpfs", "/dev", "devtmpfs"}} {
		if err := unix.Mount(m.src, m.dst, m.fs, 0, ""); err != nil {
			fmt.Println("MODINIT-FAIL mount", m.dst, err)
			return
		}
	}
	var u unix.Utsname
	unix.Uname(&u)
	rel := strings.TrimRight(string(u.Release[:]), "\x00")
	ix, err := kmod.LoadIndex("/lib/modules/" + rel)
	if err != nil {
		fmt.Println("MODINIT-FAIL index", err)
		return
	}
	steps, err := ix.Resolve(bootimage.DefaultModules...)
	if err != nil {
		fmt.Println("MODINIT-FAIL resolve", err)
		return
	}
	res, err := kmod.Load(ix, steps)
	b, _ := json.Marshal(res)
	fmt.Println("MODINIT-RESULTS", string(b))
	if err != nil {
		fmt.Println("MODINIT-FAIL load", err)
		return
	}
	nets, _ := os.ReadDir("/sys/class/net")
	var names []string
	for _, n := range nets {
		names = append(names, n.Name())
	}
	fmt.Printf("MODINIT-OK net=%s\n", strings.Join(names, ","))
}
