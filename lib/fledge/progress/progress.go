// Package progress reports the progress of long build steps (fetching and
// unpacking layers, writing archives): to a person watching stderr, as a
// progress bar on a terminal (lib/fledge/progress/bar) or plain lines
// (Lines); to a program that runs fledge, as JSON lines (JSON, read back
// with Replayer); or nothing (Discard). Libraries take a Reporter; the
// command picks one. The package links only the standard library, so a
// program that runs fledge (volantd, through lib/fledge/fledgecmd) reads
// its progress without linking fledge.
package progress

import (
	"encoding/json"
	"fmt"
	"io"
	"sync"
	"sync/atomic"
	"time"
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

// EventKind is the kind of every Event.
const EventKind = "fledge.progress"

// Event is one line JSON writes: a step began (Done false; TotalBytes
// its size when known) or ended (Done true; Bytes done, DurationMS, and
// Error when it failed).
type Event struct {
	Version    string `json:"version"`
	Kind       string `json:"kind"`
	Step       string `json:"step"`
	TotalBytes *int64 `json:"total_bytes,omitempty"`
	Done       bool   `json:"done,omitempty"`
	Bytes      int64  `json:"bytes,omitempty"`
	DurationMS int64  `json:"duration_ms,omitempty"`
	Error      string `json:"error,omitempty"`
}

// JSON writes an Event line when a step starts and one when it ends, for
// a program reading fledge's stderr (`fledge build --progress json`):
//
//	{"version":"1","kind":"fledge.progress","step":"fetch layer 1/3 sha256:1a2b3c4d5e6f","total_bytes":12902400}
//	{"version":"1","kind":"fledge.progress","step":"fetch layer 1/3 sha256:1a2b3c4d5e6f","done":true,"bytes":12902400,"duration_ms":812}
func JSON(w io.Writer) Reporter { return &jsonLines{w: w} }

type jsonLines struct {
	mu sync.Mutex
	w  io.Writer
}

func (j *jsonLines) write(ev Event) {
	ev.Version, ev.Kind = "1", EventKind
	b, err := json.Marshal(ev)
	if err != nil {
		return
	}
	j.mu.Lock()
	defer j.mu.Unlock()
	j.w.Write(append(b, '\n'))
}

func (j *jsonLines) Step(name string, total int64) Step {
	ev := Event{Step: name}
	if total >= 0 {
		ev.TotalBytes = &total
	}
	j.write(ev)
	return &jsonStep{j: j, name: name, start: time.Now()}
}

type jsonStep struct {
	j     *jsonLines
	name  string
	start time.Time
	n     atomic.Int64
}

func (s *jsonStep) Add(n int64) { s.n.Add(n) }

func (s *jsonStep) Done(err error) {
	ev := Event{Step: s.name, Done: true, Bytes: s.n.Load(), DurationMS: time.Since(s.start).Milliseconds()}
	if err != nil {
		ev.Error = err.Error()
	}
	s.j.write(ev)
}

// Replayer turns the Events of another process back into calls of a
// Reporter: a started step begins a Step, an ended one adds its bytes and
// ends it.
type Replayer struct {
	r     Reporter
	mu    sync.Mutex
	steps map[string]Step
}

// NewReplayer replays into r (nil: Discard).
func NewReplayer(r Reporter) *Replayer {
	return &Replayer{r: Or(r), steps: map[string]Step{}}
}

// Replay applies ev.
func (p *Replayer) Replay(ev Event) {
	p.mu.Lock()
	defer p.mu.Unlock()
	s, ok := p.steps[ev.Step]
	if !ev.Done {
		total := int64(-1)
		if ev.TotalBytes != nil {
			total = *ev.TotalBytes
		}
		p.steps[ev.Step] = p.r.Step(ev.Step, total)
		return
	}
	if !ok {
		s = p.r.Step(ev.Step, -1)
	}
	delete(p.steps, ev.Step)
	if ev.Bytes > 0 {
		s.Add(ev.Bytes)
	}
	var err error
	if ev.Error != "" {
		err = stepError(ev.Error)
	}
	s.Done(err)
}

// stepError is a step's error as another process reported it.
type stepError string

func (e stepError) Error() string { return string(e) }
