// Command consoleinit is PID 1 of the guest in volar's console test: the
// smallest interactive program on a serial port. It mounts /dev, opens
// /dev/ttyS0 (whose line discipline echoes what is typed, in canonical
// mode, as on any serial console), prints a prompt and answers each line:
//
//	guest$ hello
//	you typed: hello
//	guest$
//
// Control characters are echoed by the line discipline as ^C etc.; the
// program ignores signals, so a Ctrl-C reaching the guest shows up as "^C"
// and a fresh prompt. It never exits (PID 1 must not).
package main

import (
	"bufio"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

func main() {
	os.MkdirAll("/dev", 0o755)
	_ = unix.Mount("devtmpfs", "/dev", "devtmpfs", 0, "")
	signal.Ignore(syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP, syscall.SIGQUIT, syscall.SIGTSTP)
	tty, err := os.OpenFile("/dev/ttyS0", os.O_RDWR, 0)
	if err != nil {
		fmt.Fprintln(os.Stderr, "consoleinit:", err)
		for {
			time.Sleep(time.Hour)
		}
	}
	fmt.Fprint(tty, "\r\nCONSOLEINIT: ready\r\nguest$ ")
	r := bufio.NewReader(tty)
	for {
		line, err := r.ReadString('\n')
		if err != nil {
			time.Sleep(100 * time.Millisecond)
			continue
		}
		line = strings.TrimRight(line, "\r\n")
		if i := strings.LastIndexByte(line, 3); i >= 0 { // after a ^C
			line = line[i+1:]
		}
		if line != "" {
			fmt.Fprintf(tty, "you typed: %s\r\n", line)
		}
		fmt.Fprint(tty, "guest$ ")
	}
}
