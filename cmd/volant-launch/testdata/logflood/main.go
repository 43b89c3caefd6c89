// Command logflood is a test workload. Each time the file named by
// -trigger appears, it reads "RATE SECONDS BYTES" from it (bytes per second
// over both streams; stop after SECONDS or once BYTES are written, 0 for
// no limit), removes it, writes numbered 100-byte lines to stdout and
// stderr (numbered from 0 per round), then prints a summary line on stdout
// and appends it to the file named by -done, /dev/console by default
// ("flood-done round=N stdout=BYTES stderr=BYTES seconds=S"). The
// guest-access tests count what reached the host's workload log against
// the summary.
package main

import (
	"flag"
	"fmt"
	"io"
	"os"
	"sync"
	"sync/atomic"
	"time"
)

// lineLen is the length of every line, its newline included.
const lineLen = 100

func main() {
	trigger := flag.String("trigger", "/tmp/flood", "start a round once this file exists")
	done := flag.String("done", "/dev/console", "append each round's summary to this file")
	flag.Parse()
	for round := 1; ; round++ {
		var rate int
		var seconds float64
		var limit int64
		for {
			b, err := os.ReadFile(*trigger)
			if err == nil {
				if _, err := fmt.Sscan(string(b), &rate, &seconds, &limit); err == nil {
					break
				}
			}
			time.Sleep(20 * time.Millisecond)
		}
		os.Remove(*trigger)
		dur := time.Duration(seconds * float64(time.Second))
		var wg sync.WaitGroup
		var total atomic.Int64
		written := make([]int64, 2)
		t0 := time.Now()
		tags := []string{"out", "err"}
		for i, w := range []io.Writer{os.Stdout, os.Stderr} {
			wg.Add(1)
			go func() {
				defer wg.Done()
				written[i] = flood(w, tags[i], rate/2, t0, dur, limit, &total)
			}()
		}
		wg.Wait()
		summary := fmt.Sprintf("flood-done round=%d stdout=%d stderr=%d seconds=%.3f\n", round, written[0], written[1], time.Since(t0).Seconds())
		os.Stdout.WriteString(summary)
		if c, err := os.OpenFile(*done, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644); err == nil {
			c.WriteString(summary)
			c.Close()
		}
	}
}

// flood writes lines "<tag> <seq> xxx…\n" to w, paced every 10 ms to
// perSecond bytes, until dur has passed since t0 or total (both streams)
// reached limit; it returns the bytes written.
func flood(w io.Writer, tag string, perSecond int, t0 time.Time, dur time.Duration, limit int64, total *atomic.Int64) int64 {
	var n int64
	var seq int
	buf := make([]byte, 0, 64<<10)
	for {
		el := time.Since(t0)
		if (dur > 0 && el >= dur) || (limit > 0 && total.Load() >= limit) {
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
		total.Add(int64(k))
		if err != nil {
			return n
		}
	}
}
