package access

import (
	"bufio"
	"context"
	"io"
	"os"
	"path"
	"time"

	"github.com/volantvm/volant/lib/agentchan"
	"github.com/volantvm/volant/lib/apierr"
	"github.com/volantvm/volant/lib/kestrel/outlog"
)

// guestPath makes a request's path absolute and clean: paths are the
// guest's, resolved in its root (a relative path is relative to /).
func guestPath(p string) (string, error) {
	if p == "" {
		return "", apierr.New(apierr.InvalidInput, "no path given")
	}
	return path.Clean("/" + p), nil
}

// read sends a tar stream of a guest path, then the result line.
func (s *Server) read(st *agentchan.Stream, req agentchan.ReadRequest) {
	p, err := guestPath(req.Path)
	if err != nil {
		st.WriteLine(agentchan.ReadReply{Reply: agentchan.ErrorReply(err)})
		return
	}
	fi, err := os.Stat(p)
	if err != nil {
		st.WriteLine(agentchan.ReadReply{Reply: agentchan.ErrorReply(statErr(p, err))})
		return
	}
	rep := agentchan.ReadReply{Reply: agentchan.Reply{OK: true}, Type: "file", Size: fi.Size()}
	if fi.IsDir() {
		rep.Type, rep.Size = "dir", 0
	}
	if err := st.WriteLine(rep); err != nil {
		return
	}
	// The host sends nothing after its request: its end of stream means
	// it went away, and the copy stops rather than wait for a reader that
	// will not come (its stream would stay open on both sides).
	go func() {
		io.Copy(io.Discard, st)
		st.Conn.SetWriteDeadline(time.Now())
	}()
	w := bufio.NewWriterSize(st.Conn, 64<<10)
	res, err := agentchan.WriteTar(w, p)
	if ferr := w.Flush(); err == nil && ferr != nil {
		return // the stream is gone
	}
	res.Reply = agentchan.ErrorReply(err)
	st.WriteLine(res)
	s.log.Debug("copied out", "path", p, "files", res.Files, "bytes", res.Bytes, "err", err)
}

// write extracts the host's tar stream at a guest path, then sends the
// result line.
func (s *Server) write(st *agentchan.Stream, req agentchan.WriteRequest) {
	p, err := guestPath(req.Path)
	if err != nil {
		st.WriteLine(agentchan.ErrorReply(err))
		return
	}
	dir, rename := p, ""
	if fi, err := os.Stat(p); err != nil || !fi.IsDir() {
		dir, rename = path.Dir(p), path.Base(p)
		if fi, err := os.Stat(dir); err != nil {
			st.WriteLine(agentchan.ErrorReply(statErr(dir, err)))
			return
		} else if !fi.IsDir() {
			st.WriteLine(agentchan.ErrorReply(apierr.New(apierr.InvalidInput, "%s is not a directory", dir).With("path", dir)))
			return
		}
	}
	if err := st.WriteLine(agentchan.Reply{OK: true}); err != nil {
		return
	}
	res, err := agentchan.ExtractTar(bufio.NewReaderSize(st, 64<<10), dir, rename)
	if err == nil {
		// Whatever follows the archive's end is not ours: wait for the
		// host's end of stream so the result is the last word.
		_, _ = io.Copy(io.Discard, st)
	}
	res.Reply = agentchan.ErrorReply(err)
	st.WriteLine(res)
	s.log.Debug("copied in", "path", p, "files", res.Files, "bytes", res.Bytes, "err", err)
}

func statErr(p string, err error) error {
	switch {
	case os.IsNotExist(err):
		return apierr.New(apierr.NotFound, "%s: no such file or directory", p).With("path", p)
	case os.IsPermission(err):
		return apierr.New(apierr.PermissionDenied, "%s: permission denied", p).With("path", p)
	}
	return apierr.Wrap(apierr.Internal, err, p)
}

// logs streams the workload's output from the requested sequence on:
// record lines, each followed by its bytes, and gap records where the
// store dropped output the host had not read. It ends when the stream or
// the store closes.
func (s *Server) logs(ctx context.Context, st *agentchan.Stream, req agentchan.LogsRequest) {
	out := s.cfg.Output
	if out == nil {
		st.WriteLine(agentchan.ErrorReply(apierr.New(apierr.NotSupported, "this agent keeps no workload output")))
		return
	}
	if err := st.WriteLine(agentchan.Reply{OK: true}); err != nil {
		return
	}
	// The host never writes after its request: its end of stream (or
	// the session's) is the subscription's end.
	gone := make(chan struct{})
	go func() {
		io.Copy(io.Discard, st)
		close(gone)
	}()
	w := bufio.NewWriterSize(st.Conn, 64<<10)
	next := req.From
	for {
		wait := out.Wait()
		recs, gap, n := out.Since(next, 256<<10)
		if gap > 0 {
			if agentchan.WriteLine(w, agentchan.LogRecord{Seq: n - sum(recs) - gap, Gap: gap}) != nil {
				return
			}
		}
		for _, r := range recs {
			if agentchan.WriteLine(w, agentchan.LogRecord{Seq: r.Seq, Stream: r.Stream, Time: r.Time.UnixNano(), N: len(r.Data)}) != nil {
				return
			}
			if _, err := w.Write(r.Data); err != nil {
				return
			}
		}
		next = n
		if len(recs) > 0 || gap > 0 {
			continue // more may be there already; flush when caught up
		}
		if w.Flush() != nil {
			return
		}
		if out.Closed() {
			return
		}
		select {
		case <-wait:
		case <-gone:
			return
		case <-ctx.Done():
			return
		}
	}
}

func sum(recs []outlog.Record) int64 {
	var n int64
	for _, r := range recs {
		n += int64(len(r.Data))
	}
	return n
}
