// Package goroutinetest counts a test process's goroutines by what they
// run, so a test can tell that the goroutines serving a session (a
// handler, a proxy, a splice) ended, whatever else the process runs.
package goroutinetest

import (
	"runtime"
	"strings"
)

// Count is the number of goroutines with a frame, or a "created by" line,
// that contains one of frames (e.g. "lib/agentchan.Pipe", which also
// matches the goroutines Pipe starts).
func Count(frames ...string) int {
	n := 0
	for _, g := range strings.Split(Stacks(), "\n\n") {
		for _, f := range frames {
			if strings.Contains(g, f) {
				n++
				break
			}
		}
	}
	return n
}

// Stacks is every goroutine's stack, as runtime.Stack writes them.
func Stacks() string {
	buf := make([]byte, 1<<20)
	for {
		n := runtime.Stack(buf, true)
		if n < len(buf) {
			return string(buf[:n])
		}
		buf = make([]byte, 2*len(buf))
	}
}
