// Command logflood is a test workload: once the file named by -trigger
// exists, it writes numbered fixed-size lines to stdout and stderr at a
// combined rate for a while, then prints a summary line on stdout
// ("flood-done stdout=BYTES stderr=BYTES seconds=S") and sleeps. The
// guest-access tests count what reached the host's workload log against
// the summary.
package main

import (
	"flag"
	"fmt"
	"io"
	"os"
	"sync"
	"time"
)

// lineLen is the length of every line, its newline included.
const lineLen = 100

func main() {
	rate := flag.Int("rate", 10_000_000, "bytes per second, both streams together")
	seconds := flag.Float64("seconds", 10, "how long to write")
	trigger := flag.String("trigger", "/tmp/flood", "start once this file exists")
	flag.Parse()
	for {
		if _, err := os.Stat(*trigger); err == nil {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	dur := time.Duration(*seconds * float64(time.Second))
	var wg sync.WaitGroup
	written := make([]int64, 2)
	t0 := time.Now()
	tags := []string{"out", "err"}
	for i, w := range []io.Writer{os.Stdout, os.Stderr} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			written[i] = flood(w, tags[i], *rate/2, t0, dur)
		}()
	}
	wg.Wait()
	fmt.Printf("flood-done stdout=%d stderr=%d seconds=%.3f\n", written[0], written[1], time.Since(t0).Seconds())
	select {}
}

// flood writes lines "<tag> <seq> xxx…\n" to w, paced every 10 ms to
// perSecond bytes, until dur has passed since t0; it returns the bytes
// written.
func flood(w io.Writer, tag string, perSecond int, t0 time.Time, dur time.Duration) int64 {
	var n int64
	var seq int
	buf := make([]byte, 0, 64<<10)
	for {
		el := time.Since(t0)
		if el >= dur {
			return n
		}
		due := int64(float64(perSecond) * el.Seconds())
		buf = buf[:0]
		for n+int64(len(buf)) < due && len(buf) < cap(buf)-lineLen {
			l := fmt.Appendf(buf, "%s %09d ", tag, seq)
			for len(l)-len(buf) < lineLen-1 {
				l = append(l, 'x')
			}
			buf = append(l, '\n')
			seq++
		}
		if len(buf) == 0 {
			time.Sleep(10 * time.Millisecond)
			continue
		}
		k, err := w.Write(buf)
		n += int64(k)
		if err != nil {
			return n
		}
	}
}
