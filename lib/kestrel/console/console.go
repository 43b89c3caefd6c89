// Package console is where kestrel writes: the guest's serial console, which
// the host keeps as the VM's log (`volar vms logs` reads it). Kestrel's own
// lines and the workload's output share it, so writes are serialized and
// kestrel's lines carry a "kestrel: " prefix that tells them apart.
package console

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"time"
	"unicode"
)

// Writer serializes writes to the console so that one write (a log line, a
// chunk of workload output) is never interleaved with another.
type Writer struct {
	mu sync.Mutex
	w  io.Writer
}

// NewWriter wraps w.
func NewWriter(w io.Writer) *Writer { return &Writer{w: w} }

// Write writes p in one piece.
func (c *Writer) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.w.Write(p)
}

// Handler is a slog.Handler that writes one human-readable line per record:
//
//	kestrel: workload started pid=42 argv="/bin/httpd -f"
//	kestrel: WARN health check failed err="connection refused"
//
// Info has no level word; the others name their level. Wall-clock times are
// left out; with a Clock (in a guest: the time since boot) each line starts
// with it in the kernel's own format, "[    2.595503] ", so kestrel's lines
// and the kernel's read as one timeline.
type Handler struct {
	w      io.Writer
	level  slog.Leveler
	clock  func() time.Duration
	prefix string // "kestrel: "
	attrs  string // preformatted " k=v" of WithAttrs
	group  string // "g." of WithGroup
}

// WithClock returns a copy of h that stamps lines with clock().
func (h *Handler) WithClock(clock func() time.Duration) *Handler {
	c := *h
	c.clock = clock
	return &c
}

// NewHandler returns a Handler writing to w at level (nil means Info).
func NewHandler(w io.Writer, level slog.Leveler) *Handler {
	if level == nil {
		level = slog.LevelInfo
	}
	return &Handler{w: w, level: level, prefix: "kestrel: "}
}

// Stamp is the kernel's console timestamp for uptime d: "[%5d.%06d] ",
// seconds and microseconds. It does without fmt: a log line is written
// early in the boot, where every package's first use is code the
// emulator translates.
func Stamp(d time.Duration) string {
	d = max(d, 0)
	sec := strconv.FormatInt(int64(d/time.Second), 10)
	us := strconv.FormatInt(int64(d%time.Second/time.Microsecond), 10)
	b := make([]byte, 0, 16+len(sec))
	b = append(b, '[')
	for i := len(sec); i < 5; i++ {
		b = append(b, ' ')
	}
	b = append(b, sec...)
	b = append(b, '.')
	for i := len(us); i < 6; i++ {
		b = append(b, '0')
	}
	b = append(b, us...)
	return string(append(b, ']', ' '))
}

// Enabled implements slog.Handler.
func (h *Handler) Enabled(_ context.Context, l slog.Level) bool { return l >= h.level.Level() }

// Handle implements slog.Handler.
func (h *Handler) Handle(_ context.Context, r slog.Record) error {
	var b strings.Builder
	if h.clock != nil {
		b.WriteString(Stamp(h.clock()))
	}
	b.WriteString(h.prefix)
	if r.Level != slog.LevelInfo {
		b.WriteString(r.Level.String())
		b.WriteByte(' ')
	}
	b.WriteString(r.Message)
	b.WriteString(h.attrs)
	r.Attrs(func(a slog.Attr) bool {
		appendAttr(&b, h.group, a)
		return true
	})
	b.WriteByte('\n')
	_, err := io.WriteString(h.w, b.String())
	return err
}

// WithAttrs implements slog.Handler.
func (h *Handler) WithAttrs(as []slog.Attr) slog.Handler {
	var b strings.Builder
	for _, a := range as {
		appendAttr(&b, h.group, a)
	}
	c := *h
	c.attrs += b.String()
	return &c
}

// WithGroup implements slog.Handler.
func (h *Handler) WithGroup(name string) slog.Handler {
	if name == "" {
		return h
	}
	c := *h
	c.group += name + "."
	return &c
}

func appendAttr(b *strings.Builder, group string, a slog.Attr) {
	a.Value = a.Value.Resolve()
	if a.Equal(slog.Attr{}) {
		return
	}
	if a.Value.Kind() == slog.KindGroup {
		g := group
		if a.Key != "" {
			g += a.Key + "."
		}
		for _, ga := range a.Value.Group() {
			appendAttr(b, g, ga)
		}
		return
	}
	b.WriteByte(' ')
	b.WriteString(group)
	b.WriteString(a.Key)
	b.WriteByte('=')
	var s string
	switch a.Value.Kind() {
	case slog.KindDuration:
		s = a.Value.Duration().Round(time.Microsecond).String()
	case slog.KindTime:
		s = a.Value.Time().Format(time.RFC3339Nano)
	default:
		s = a.Value.String()
		if err, ok := a.Value.Any().(error); ok {
			s = err.Error()
		}
	}
	b.WriteString(quote(s))
}

func quote(s string) string {
	if s == "" {
		return `""`
	}
	for _, r := range s {
		if unicode.IsSpace(r) || r == '"' || r == '=' || !unicode.IsPrint(r) {
			return strconv.Quote(s)
		}
	}
	return s
}

// Fatalf writes a line that cannot be missed. It is for the last words
// before kestrel powers the guest off.
func Fatalf(w io.Writer, format string, args ...any) {
	// No clock here: the last words must not depend on anything.
	fmt.Fprintf(w, "kestrel: FATAL: %s\n", fmt.Sprintf(format, args...))
}
