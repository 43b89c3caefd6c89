// Package workloadlog keeps a VM's workload output on the host: what
// kestrel captured per stream (lib/kestrel/outlog) and the VM's supervisor
// collected over the agent channel, in <data>/vms/<name>/workload.log, so it
// survives guest restarts and volantd restarts.
//
// The file is JSON lines, one entry per line of output (a line longer than
// MaxLine, or a last line without its newline, is split into entries marked
// partial), in the manner of Docker's json-file driver:
//
//	{"time":"2026-12-05T11:00:00.123456789Z","stream":"stdout","log":"hello\n"}
//	{"time":"...","stream":"stderr","log_b64":"AAEC"}            output that is not UTF-8
//	{"time":"...","stream":"stdout","log":"abc","partial":true}   more of the line follows
//	{"time":"...","gap":1048576}                                   output lost in the guest
//	{"time":"...","offset":52428800}                               first line of a file
//
// A gap entry says how many bytes the guest dropped because its buffer
// overflowed while the host was not reading: output is never lost
// silently. The file is rotated past MaxBytes to workload.log.1 … .N-1
// (Files files in all), so a VM's logs take at most MaxBytes×Files.
//
// Every file begins with an offset entry: how many bytes of output (data
// and gaps) the log recorded before it. A follower lapped by the rotation
// (its file removed before it read the next) goes on from the oldest file
// still there and reports what it missed as a gap of exactly the
// difference. Read never returns offset entries.
package workloadlog

import (
	"bufio"
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strconv"
	"sync"
	"time"
	"unicode/utf8"
)

// Defaults of Rotation.
const (
	DefaultMaxBytes = 16 << 20
	DefaultFiles    = 3
	// MaxLine is the longest piece of a line one entry holds.
	MaxLine = 16 << 10
)

// Rotation bounds the files.
type Rotation struct {
	MaxBytes int64 // rotate past this size (DefaultMaxBytes if 0)
	Files    int   // files kept, the live one included (DefaultFiles if 0)
}

func (r Rotation) withDefaults() Rotation {
	if r.MaxBytes <= 0 {
		r.MaxBytes = DefaultMaxBytes
	}
	if r.Files <= 0 {
		r.Files = DefaultFiles
	}
	return r
}

// Entry is one line of the file.
type Entry struct {
	Time    time.Time `json:"time"`
	Stream  string    `json:"stream,omitempty"`
	Log     string    `json:"log,omitempty"`
	LogB64  []byte    `json:"log_b64,omitempty"`
	Partial bool      `json:"partial,omitempty"`
	Gap     int64     `json:"gap,omitempty"`
	// Offset, on a file's first entry, is how many bytes of output
	// (data and gaps) the log held before the file.
	Offset *int64 `json:"offset,omitempty"`
}

// size is how many bytes of output e stands for.
func (e Entry) size() int64 {
	return int64(len(e.Data())) + e.Gap
}

// Data is the entry's output bytes.
func (e Entry) Data() []byte {
	if e.LogB64 != nil {
		return e.LogB64
	}
	return []byte(e.Log)
}

// Writer appends to a workload log. It is safe for concurrent use.
type Writer struct {
	path string
	rot  Rotation

	mu   sync.Mutex
	f    *os.File
	w    *bufio.Writer
	size int64
	hdr  int64 // the size of the offset entry this file began with
	line []byte
	// total is the bytes of output (data and gaps) recorded since the
	// log began: the next file's offset entry.
	total int64
}

// Open opens (creating) the log at path for appending.
func Open(path string, rot Rotation) (*Writer, error) {
	w := &Writer{path: path, rot: rot.withDefaults()}
	// Go on counting from the live file's offset entry.
	if err := scanFile(path, func(e Entry) error {
		if e.Offset != nil {
			w.total = *e.Offset
		} else {
			w.total += e.size()
		}
		return nil
	}); err != nil {
		return nil, err
	}
	if err := w.open(); err != nil {
		return nil, err
	}
	return w, nil
}

func (w *Writer) open() error {
	f, err := os.OpenFile(w.path, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o640)
	if err != nil {
		return fmt.Errorf("workload log: %w", err)
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return fmt.Errorf("workload log: %w", err)
	}
	w.f, w.size, w.hdr = f, st.Size(), 0
	w.w = bufio.NewWriterSize(f, 64<<10)
	if w.size == 0 {
		line := fmt.Appendf(nil, `{"time":"%s","offset":%d}`+"\n", time.Now().UTC().Format(time.RFC3339Nano), w.total)
		n, err := w.w.Write(line)
		w.size, w.hdr = int64(n), int64(n)
		if err != nil {
			return fmt.Errorf("workload log: %w", err)
		}
	}
	return nil
}

// Write appends output of stream read at t, one entry per line.
func (w *Writer) Write(stream string, t time.Time, data []byte) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	for len(data) > 0 {
		n := len(data)
		partial := true
		for i, c := range data {
			if c == '\n' {
				n, partial = i+1, false
				break
			}
		}
		if n > MaxLine {
			n, partial = MaxLine, true
		}
		if err := w.append(Entry{Time: t, Stream: stream, Partial: partial}, data[:n]); err != nil {
			return err
		}
		data = data[n:]
	}
	return nil
}

// Gap records that n bytes of output were lost at t.
func (w *Writer) Gap(t time.Time, n int64) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.append(Entry{Time: t, Gap: n}, nil)
}

func (w *Writer) append(e Entry, data []byte) error {
	if w.f == nil {
		return errors.New("workload log: closed")
	}
	line := w.line[:0]
	line = append(line, `{"time":"`...)
	line = e.Time.UTC().AppendFormat(line, time.RFC3339Nano)
	line = append(line, '"')
	if e.Stream != "" {
		line = append(line, `,"stream":`...)
		line = strconv.AppendQuote(line, e.Stream)
	}
	if data != nil {
		if utf8.Valid(data) {
			line = append(line, `,"log":`...)
			line = appendJSONString(line, data)
		} else {
			line = append(line, `,"log_b64":"`...)
			line = base64.StdEncoding.AppendEncode(line, data)
			line = append(line, '"')
		}
	}
	if e.Partial {
		line = append(line, `,"partial":true`...)
	}
	if e.Gap > 0 {
		line = append(line, `,"gap":`...)
		line = strconv.AppendInt(line, e.Gap, 10)
	}
	line = append(line, "}\n"...)
	w.line = line
	if w.size > w.hdr && w.size+int64(len(line)) > w.rot.MaxBytes {
		if err := w.rotate(); err != nil {
			return err
		}
	}
	n, err := w.w.Write(line)
	w.size += int64(n)
	if err != nil {
		return fmt.Errorf("workload log: %w", err)
	}
	w.total += int64(len(data)) + e.Gap
	return nil
}

// appendJSONString appends s, valid UTF-8, as encoding/json writes it as
// a string. Output is mostly printable ASCII ending in a newline: that is
// copied as is (about a quarter of the supervisor's CPU went to
// json.Marshal's reflection and allocation per line); anything else is
// left to encoding/json.
func appendJSONString(dst, s []byte) []byte {
	for _, c := range s {
		if (c < 0x20 && c != '\n') || c >= 0x7f || c == '"' || c == '\\' || c == '<' || c == '>' || c == '&' {
			b, _ := json.Marshal(string(s))
			return append(dst, b...)
		}
	}
	dst = append(dst, '"')
	for {
		i := bytes.IndexByte(s, '\n')
		if i < 0 {
			break
		}
		dst = append(append(dst, s[:i]...), `\n`...)
		s = s[i+1:]
	}
	return append(append(dst, s...), '"')
}

// Flush hands buffered entries to the file.
func (w *Writer) Flush() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.w == nil {
		return nil
	}
	return w.w.Flush()
}

func (w *Writer) rotate() error {
	if err := w.w.Flush(); err != nil {
		return fmt.Errorf("workload log: %w", err)
	}
	w.f.Close()
	w.f = nil
	os.Remove(w.path + "." + strconv.Itoa(w.rot.Files-1))
	for i := w.rot.Files - 2; i >= 1; i-- {
		os.Rename(w.path+"."+strconv.Itoa(i), w.path+"."+strconv.Itoa(i+1))
	}
	if w.rot.Files > 1 {
		if err := os.Rename(w.path, w.path+".1"); err != nil {
			return fmt.Errorf("workload log: rotating: %w", err)
		}
	} else if err := os.Truncate(w.path, 0); err != nil {
		return fmt.Errorf("workload log: rotating: %w", err)
	}
	return w.open()
}

// Close flushes and closes the file.
func (w *Writer) Close() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.f == nil {
		return nil
	}
	err := w.w.Flush()
	if cerr := w.f.Close(); err == nil {
		err = cerr
	}
	w.f = nil
	return err
}
