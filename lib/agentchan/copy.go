package agentchan

import (
	"archive/tar"
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/volantvm/volant/lib/apierr"
)

// ReadTar asks the guest for a tar stream of guestPath and copies the
// archive, exactly, to w. It returns the guest's description of the path
// and its result; a result with an error (a file that could not be read
// midway: the archive holds zeros in its place) is returned as the error.
func (s *Session) ReadTar(ctx context.Context, guestPath string, w io.Writer) (ReadReply, CopyResult, error) {
	var rep ReadReply
	st, err := s.Call(ctx, ReadRequest{Op: OpRead, Path: guestPath}, &rep)
	if err != nil {
		return rep, CopyResult{}, err
	}
	defer st.Conn.Close()
	stop := context.AfterFunc(ctx, st.Abort)
	defer stop()
	// Read the archive through a tar reader so the result line after it
	// is not copied to w; the reader consumes exactly the archive.
	tr := tar.NewReader(io.TeeReader(st, w))
	for {
		_, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err == nil {
			_, err = io.Copy(io.Discard, tr)
		}
		if err != nil {
			if ctx.Err() != nil {
				return rep, CopyResult{}, apierr.From(context.Cause(ctx))
			}
			return rep, CopyResult{}, lost("in the middle of the archive", err)
		}
	}
	var res CopyResult
	if err := st.ReadLine(&res); err != nil {
		return rep, res, lost("before the copy's result", err)
	}
	return rep, res, res.Err()
}

// WriteTar sends the tar stream r to the guest, to be extracted at
// guestPath (see WriteRequest), and returns the guest's result.
func (s *Session) WriteTar(ctx context.Context, guestPath string, r io.Reader) (CopyResult, error) {
	var rep Reply
	st, err := s.Call(ctx, WriteRequest{Op: OpWrite, Path: guestPath}, &rep)
	if err != nil {
		return CopyResult{}, err
	}
	defer st.Conn.Close()
	stop := context.AfterFunc(ctx, st.Abort)
	defer stop()
	// The guest answers early when extraction fails: read its result
	// while sending, and stop sending then.
	type result struct {
		res CopyResult
		err error
	}
	done := make(chan result, 1)
	go func() {
		var res CopyResult
		err := st.ReadLine(&res)
		if err != nil || res.Error != nil {
			// The guest stopped reading: stop sending.
			st.Conn.SetWriteDeadline(time.Now())
		}
		done <- result{res, err}
	}()
	_, werr := io.Copy(st.Conn, r)
	if werr == nil {
		st.CloseWrite()
	}
	got := <-done
	if ctx.Err() != nil {
		return CopyResult{}, apierr.From(context.Cause(ctx))
	}
	if got.err != nil {
		return got.res, lost("before the copy's result", got.err)
	}
	if err := got.res.Err(); err != nil {
		return got.res, err
	}
	if werr != nil {
		return got.res, apierr.Wrap(apierr.Internal, werr, "sending the archive")
	}
	return got.res, nil
}

// CopyFrom copies guestPath out of the guest to hostDest, as cp does: into
// hostDest when it is a directory, else as hostDest (whose parent must
// exist). hostDest "-" writes the tar stream itself to stdout.
func (s *Session) CopyFrom(ctx context.Context, guestPath, hostDest string, stdout io.Writer) (CopyResult, error) {
	if hostDest == "-" {
		_, res, err := s.ReadTar(ctx, guestPath, stdout)
		return res, err
	}
	return ExtractAt(hostDest, func(w io.Writer) (CopyResult, error) {
		_, res, err := s.ReadTar(ctx, guestPath, w)
		return res, err
	})
}

// ExtractAt extracts the tar stream that produce writes at hostDest, as cp
// does: into hostDest when it is a directory, else as hostDest (whose
// parent must exist; the archive must then have one top-level entry). It
// returns produce's result, or the first error of either side.
func ExtractAt(hostDest string, produce func(w io.Writer) (CopyResult, error)) (CopyResult, error) {
	dir, rename, err := destination(hostDest)
	if err != nil {
		return CopyResult{}, err
	}
	pr, pw := io.Pipe()
	type result struct {
		res CopyResult
		err error
	}
	done := make(chan result, 1)
	go func() {
		res, err := ExtractTar(pr, dir, rename)
		if err != nil {
			pr.CloseWithError(err) // stops the producer
		} else {
			io.Copy(io.Discard, pr) // the archive's padding
		}
		done <- result{res, err}
	}()
	res, perr := produce(pw)
	pw.CloseWithError(perr)
	x := <-done
	if perr != nil && (x.err == nil || errors.Is(x.err, perr)) {
		return res, perr // extraction only saw the producer's failure
	}
	if x.err != nil {
		return x.res, x.err
	}
	return res, nil
}

// CopyTo copies hostSrc (a file or directory) into the guest at guestDest,
// as cp does. hostSrc "-" sends the tar stream read from stdin.
func (s *Session) CopyTo(ctx context.Context, hostSrc, guestDest string, stdin io.Reader) (CopyResult, error) {
	if hostSrc == "-" {
		return s.WriteTar(ctx, guestDest, stdin)
	}
	if _, err := os.Stat(hostSrc); err != nil {
		return CopyResult{}, pathErr(hostSrc, err)
	}
	pr, pw := io.Pipe()
	var local CopyResult
	var lerr error
	go func() {
		local, lerr = WriteTar(pw, hostSrc)
		pw.CloseWithError(lerr)
	}()
	res, err := s.WriteTar(ctx, guestDest, pr)
	pr.CloseWithError(errors.New("copy ended"))
	if err != nil {
		return res, err
	}
	if lerr != nil {
		return local, lerr
	}
	return res, nil
}

// destination splits a host destination: an existing directory is
// extracted into; otherwise its parent must exist and the archive's one
// top-level entry is renamed to its last element.
func destination(p string) (dir, rename string, err error) {
	if st, err := os.Stat(p); err == nil && st.IsDir() {
		return p, "", nil
	}
	if strings.HasSuffix(p, "/") {
		return "", "", apierr.New(apierr.NotFound, "%s: no such directory", p).With("path", p)
	}
	parent := filepath.Dir(p)
	st, err := os.Stat(parent)
	if err != nil || !st.IsDir() {
		return "", "", apierr.New(apierr.NotFound, "%s: no such directory", parent).With("path", parent)
	}
	return parent, filepath.Base(p), nil
}
