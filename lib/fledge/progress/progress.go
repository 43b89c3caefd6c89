// Package progress reports the progress of long build steps (fetching and
// unpacking layers, writing archives) to a person watching stderr: a
// progress bar on a terminal (Bar), plain lines otherwise (Lines), or
// nothing (Discard). Libraries take a Reporter; the command picks one.
package progress

import (
	"fmt"
	"io"
	"sync"
	"time"

	"github.com/schollz/progressbar/v3"
)

// Reporter starts steps.
type Reporter interface {
	// Step begins a step; total is its size in bytes, or -1 when unknown.
	Step(name string, total int64) Step
}

// Step is one running step.
type Step interface {
	// Add records n more bytes done.
	Add(n int64)
	// Done ends the step; err is nil on success.
	Done(err error)
}

// Discard reports nothing.
var Discard Reporter = discard{}

type discard struct{}

func (discard) Step(string, int64) Step { return discardStep{} }

type discardStep struct{}

func (discardStep) Add(int64)  {}
func (discardStep) Done(error) {}

// Or returns r, or Discard when r is nil.
func Or(r Reporter) Reporter {
	if r == nil {
		return Discard
	}
	return r
}

// Reader counts what is read from r into s.
func Reader(r io.Reader, s Step) io.Reader { return &reader{r: r, s: s} }

type reader struct {
	r io.Reader
	s Step
}

func (c *reader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	if n > 0 {
		c.s.Add(int64(n))
	}
	return n, err
}

// Lines writes one line when a step starts and one when it ends, for logs
// and pipes:
//
//	fledge: fetch layer 1/3 sha256:1a2b3c4d5e6f (12.3 MiB)
//	fledge: fetch layer 1/3 sha256:1a2b3c4d5e6f done: 12.3 MiB in 0.8s
func Lines(w io.Writer) Reporter { return &lines{w: w} }

type lines struct {
	mu sync.Mutex
	w  io.Writer
}

func (l *lines) Step(name string, total int64) Step {
	l.mu.Lock()
	defer l.mu.Unlock()
	if total >= 0 {
		fmt.Fprintf(l.w, "fledge: %s (%s)\n", name, Bytes(total))
	} else {
		fmt.Fprintf(l.w, "fledge: %s\n", name)
	}
	return &lineStep{l: l, name: name, start: time.Now()}
}

type lineStep struct {
	l     *lines
	name  string
	start time.Time
	n     int64
}

func (s *lineStep) Add(n int64) { s.n += n }

func (s *lineStep) Done(err error) {
	s.l.mu.Lock()
	defer s.l.mu.Unlock()
	d := time.Since(s.start).Seconds()
	if err != nil {
		fmt.Fprintf(s.l.w, "fledge: %s failed after %.1fs: %v\n", s.name, d, err)
		return
	}
	if s.n > 0 {
		fmt.Fprintf(s.l.w, "fledge: %s done: %s in %.1fs\n", s.name, Bytes(s.n), d)
	} else {
		fmt.Fprintf(s.l.w, "fledge: %s done in %.1fs\n", s.name, d)
	}
}

// Bar draws a progress bar per step on w, a terminal.
func Bar(w io.Writer) Reporter { return &bar{w: w} }

type bar struct{ w io.Writer }

func (b *bar) Step(name string, total int64) Step {
	pb := progressbar.NewOptions64(total,
		progressbar.OptionSetWriter(b.w),
		progressbar.OptionSetDescription(name),
		progressbar.OptionShowBytes(true),
		progressbar.OptionUseIECUnits(true),
		progressbar.OptionSetWidth(30),
		progressbar.OptionThrottle(100*time.Millisecond),
		progressbar.OptionShowElapsedTimeOnFinish(),
		progressbar.OptionSetPredictTime(total > 0),
		progressbar.OptionOnCompletion(func() { fmt.Fprintln(b.w) }),
	)
	return &barStep{pb: pb, w: b.w, name: name}
}

type barStep struct {
	pb   *progressbar.ProgressBar
	w    io.Writer
	name string
}

func (s *barStep) Add(n int64) { _ = s.pb.Add64(n) }

func (s *barStep) Done(err error) {
	if err != nil {
		_ = s.pb.Exit()
		fmt.Fprintf(s.w, "\nfledge: %s failed: %v\n", s.name, err)
		return
	}
	_ = s.pb.Finish()
}

// Bytes formats n with binary units.
func Bytes(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}
