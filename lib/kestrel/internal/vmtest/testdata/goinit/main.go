// goinit is the smallest Go PID 1: it executes /bin/sh /init.sh at once.
// BenchmarkVMBootVsBusybox's "gofloor" variant boots the busybox script
// through it, so that variant costs what starting any Go program as init
// costs (the runtime, its few initialisers, one exec) and nothing that
// kestrel itself does: the floor of a Go init under software emulation.
package main

import (
	"os"
	"syscall"
)

func main() {
	err := syscall.Exec("/bin/sh", []string{"sh", "/init.sh"}, os.Environ())
	os.Stderr.WriteString("goinit: " + err.Error() + "\n")
	os.Exit(1)
}
