// Package bar draws build progress (lib/fledge/progress) as progress bars
// on a terminal. It is apart from package progress so that what reads
// fledge's progress without drawing it does not link the bar's library.
package bar

import (
	"fmt"
	"io"
	"time"

	"github.com/schollz/progressbar/v3"

	"github.com/volantvm/volant/lib/fledge/progress"
)

// New draws a progress bar per step on w, a terminal.
func New(w io.Writer) progress.Reporter { return &bar{w: w} }

type bar struct{ w io.Writer }

func (b *bar) Step(name string, total int64) progress.Step {
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
