package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/volantvm/volant/lib/apierr"
	"github.com/volantvm/volant/lib/buildinfo"
)

// Override sets *dst to flag when the flag was given (is not its zero
// value): flags on the command line win over the stdin request, which wins
// over the environment. A switch can only turn a field on.
func Override[T comparable](dst *T, flag T) {
	var zero T
	if flag != zero {
		*dst = flag
	}
}

// VersionCommand is the `version` verb of every command. It prints
//
//	{"version":"1","kind":"<kind>.version","build":"<version>"}
//
// where kind is the command's name without "volant-" (ipam, net, fledge).
type VersionCommand struct{}

// Execute implements Command.
func (VersionCommand) Execute(_ context.Context, env *Env) error { return WriteVersion(env, nil) }

// WriteVersion writes the result of `version` (see VersionCommand), with the
// fields of extra, a struct or map encoding as a JSON object, after "build".
func WriteVersion(env *Env, extra any) error {
	b, err := marshal(struct {
		Build string `json:"build"`
	}{buildinfo.String()})
	if err != nil {
		return err
	}
	if extra != nil {
		more, err := marshal(extra)
		if err != nil {
			return err
		}
		if len(more) > 2 {
			b = append(append(b[:len(b)-1], ','), more[1:]...)
		}
	}
	return WriteResult(env, strings.TrimPrefix(env.Name, "volant-")+".version", json.RawMessage(b))
}

// GCRequest is the request of every gc verb (volant-ipam gc, volant-net
// tap gc). The rule is CNI's: gc is given the IDs of everything still
// live, Keep, and removes the rest. Keep must be given, even empty: an
// empty list removes everything, and a gc without a list is refused
// (USAGE), so a forgotten argument never removes what is running. On stdin
// the request is the JSON array of live IDs, or an object
// {"keep":[...],"dry_run":true}. --keep flags, when given, replace the
// stdin list (flags override stdin, as everywhere).
type GCRequest struct {
	Keep []string `json:"keep"`
	// DryRun reports what would be removed and removes nothing.
	DryRun bool `json:"dry_run,omitempty"`
}

// ReadGCRequest reads a gc request from stdin (see GCRequest) and applies
// the flags: keep from --keep, dryRun from --dry-run. what names the IDs
// in messages ("VM names"). An entry of the keep
// list is refused by check (for example a name that could not be one of
// the command's IDs: likely a typo, and removing a live thing is worse
// than doing nothing).
func ReadGCRequest(env *Env, what string, keep []string, dryRun bool, check func(string) error) (GCRequest, error) {
	var req GCRequest
	data, err := readStdin(env)
	if err != nil {
		return req, err
	}
	switch {
	case len(data) == 0:
	case data[0] == '[':
		dec := json.NewDecoder(bytes.NewReader(data))
		if err := dec.Decode(&req.Keep); err != nil {
			return req, apierr.Wrap(apierr.InvalidInput, err, "gc: stdin must be a JSON array of "+what)
		}
		if dec.More() {
			return req, apierr.New(apierr.InvalidInput, "gc: trailing data after the JSON array")
		}
	default:
		if err := DecodeRequest(data, &req); err != nil {
			return req, err
		}
		if req.Keep == nil {
			return req, apierr.New(apierr.InvalidInput, `gc request has no "keep" list`).With("field", "keep")
		}
	}
	if len(keep) > 0 {
		req.Keep = keep
	}
	req.DryRun = req.DryRun || dryRun
	if req.Keep == nil {
		return req, apierr.New(apierr.Usage, "gc needs the live %s: --keep NAME (repeated) or a JSON array on stdin; `echo '[]' | %s %s` removes everything", what, env.Name, env.Verb)
	}
	for _, k := range req.Keep {
		if err := check(k); err != nil {
			return req, fmt.Errorf("gc: keep list: %w", err)
		}
	}
	return req, nil
}

// readStdin returns stdin's content without surrounding space, nil when
// stdin carries nothing.
func readStdin(env *Env) ([]byte, error) {
	if !StdinHasInput(env) {
		return nil, nil
	}
	data, err := io.ReadAll(io.LimitReader(env.Stdin, MaxRequestBytes+1))
	if err != nil {
		return nil, apierr.Wrap(apierr.InvalidInput, err, "reading request from stdin")
	}
	if len(data) > MaxRequestBytes {
		return nil, apierr.New(apierr.TooLarge, "request on stdin is larger than %d bytes", MaxRequestBytes).
			With("limit_bytes", MaxRequestBytes)
	}
	return bytes.TrimSpace(data), nil
}

// ReadInput reads a command's input document, what (for messages): file,
// or stdin when file is "" or "-", at most limit bytes (TOO_LARGE beyond).
// No input at all is a USAGE error; a missing file is NOT_FOUND.
func ReadInput(env *Env, what, file string, limit int) ([]byte, error) {
	var r io.Reader
	switch {
	case file != "" && file != "-":
		f, err := os.Open(file)
		if err != nil {
			return nil, fmt.Errorf("reading %s: %w", what, err)
		}
		defer f.Close()
		r = f
	case StdinHasInput(env):
		r = env.Stdin
	default:
		return nil, noInput()
	}
	data, err := io.ReadAll(io.LimitReader(r, int64(limit)+1))
	if err != nil {
		return nil, fmt.Errorf("reading %s: %w", what, err)
	}
	if len(data) > limit {
		return nil, apierr.New(apierr.TooLarge, "input is larger than %d bytes", limit).With("limit_bytes", limit)
	}
	if len(bytes.TrimSpace(data)) == 0 {
		return nil, noInput()
	}
	return data, nil
}

func noInput() error {
	return apierr.New(apierr.Usage, "no input: give a FILE or pipe it on stdin")
}
