// Package cli is the stdio contract every volant-* command follows, in one
// place (the role CNI's skel plays for CNI plugins).
//
// A command reads at most one JSON request on stdin and/or takes flags,
// writes exactly one JSON result object on stdout, and writes nothing else
// there. Human-readable logs go to stderr. On failure it writes one JSON
// error object ({"code","message","details"}, see lib/apierr) as the last
// line of stderr and exits with the code's documented exit status.
//
// Requests: stdin is read when it is a pipe or a regular file (not when it is
// a terminal or /dev/null). The top level is decoded strictly: an unknown
// field is an INVALID_INPUT error naming the field, and so is trailing data.
// A "version" field, when present, must be "1". Requests are limited to
// MaxRequestBytes. Inside a `while read` loop, give each command </dev/null
// so it does not swallow the loop's input.
//
// Results: every result is an object whose first two fields are
// "version":"1" and "kind":"<command>.<verb>" (for example "ipam.lease").
// A command that accepts another command's result (CNI's prevResult idea)
// declares which kinds it takes and under which request field; ReadRequest
// then moves the piped result into that field, so
//
//	volant-ipam lease --vm web1 | volant-net tap add
//
// works without glue. Flags given on the command line override fields of
// the stdin request (Override).
//
// Commands: a command is a struct of go-flags command structs, one per
// verb, each with an Execute method; Run parses the command line and
// executes the verb. It refuses (USAGE) an argument no verb declares and a
// flag that holds one value given twice (CheckRepeated), before anything
// runs. Every command's `version` is VersionCommand, and every `gc` reads
// its keep list with ReadGCRequest (the one rule: the live IDs, required,
// flags replacing stdin).
//
// Streams and the environment are fields of Env, so a whole command run is
// testable in memory: build an Env with buffers and call the command's run.
package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"sort"
	"strings"
	"syscall"

	"golang.org/x/term"

	"github.com/volantvm/volant/lib/apierr"
)

// Version is the version of the request/result format.
const Version = "1"

// MaxRequestBytes bounds what a command reads from stdin.
const MaxRequestBytes = 1 << 20

// Env is everything a command run touches outside its arguments.
type Env struct {
	// Name is the command's name as usage texts spell it ("volant-ipam");
	// Run sets it for the verb it executes.
	Name string
	// Verb is the verb Run executes ("lease", "tap add").
	Verb string
	// Args are the command-line arguments after the program name.
	Args   []string
	Stdin  io.Reader
	Stdout io.Writer
	Stderr io.Writer
	Getenv func(string) string
}

// OSEnv is the Env of the running process.
func OSEnv() *Env {
	return &Env{Args: os.Args[1:], Stdin: os.Stdin, Stdout: os.Stdout, Stderr: os.Stderr, Getenv: os.Getenv}
}

// Env returns the variable's value, or "" when Getenv is unset.
func (e *Env) Env(key string) string {
	if e.Getenv == nil {
		return ""
	}
	return e.Getenv(key)
}

// Logger returns a text logger on stderr; debug level when verbose.
func (e *Env) Logger(verbose bool) *slog.Logger {
	level := slog.LevelInfo
	if verbose {
		level = slog.LevelDebug
	}
	return slog.New(slog.NewTextHandler(e.Stderr, &slog.HandlerOptions{Level: level}))
}

// Main is the whole of a command's main function: it builds a context that is
// canceled on SIGINT/SIGTERM, runs run with the process's Env, reports the
// error per the contract and exits.
func Main(run func(ctx context.Context, env *Env) error) {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	env := OSEnv()
	err := run(ctx, env)
	stop()
	os.Exit(Exit(env, err))
}

// MainKillable is Main without the signal handler, for a command whose
// every run is one short step that a kill at any moment leaves whole or
// undone (volant-ipam: one SQLite transaction). SIGINT and SIGTERM keep
// their default action and end the process at once, as SIGKILL would, so
// run's context is never canceled. os/signal's handler would cost each run
// a thread and two goroutines: on a host where a page fault costs 30 us,
// about 0.7 ms of a 15 ms operation.
func MainKillable(run func(ctx context.Context, env *Env) error) {
	env := OSEnv()
	os.Exit(Exit(env, run(context.Background(), env)))
}

// errHelp marks a run that printed its help text on request.
var errHelp = errors.New("help requested")

// StatusError ends a command with an exit status of its own rather than
// its error code's: a command that streams another program's output (an
// exec in a guest) exits with that program's status. Err, when set, is
// still reported on stderr.
type StatusError struct {
	Status int
	Err    error
}

func (s *StatusError) Error() string {
	if s.Err != nil {
		return s.Err.Error()
	}
	return fmt.Sprintf("exit status %d", s.Status)
}

func (s *StatusError) Unwrap() error { return s.Err }

// Exit reports err on env.Stderr per the contract and returns the exit status.
func Exit(env *Env, err error) int {
	if err == nil || errors.Is(err, errHelp) {
		return 0
	}
	var se *StatusError
	if errors.As(err, &se) {
		if se.Err != nil {
			report(env, se.Err)
		}
		return se.Status
	}
	return report(env, err)
}

func report(env *Env, err error) int {
	e := apierr.From(err)
	b, merr := marshal(e)
	if merr != nil {
		b = []byte(fmt.Sprintf(`{"code":%q,"message":%q}`, e.Code, e.Message))
	}
	fmt.Fprintf(env.Stderr, "%s\n", b)
	return e.Code.ExitCode()
}

// Chainer is implemented by request types that accept the result of another
// command on stdin. Accepts maps a result kind (e.g. "ipam.lease") to the
// JSON name of the request field that receives it.
type Chainer interface {
	Accepts() map[string]string
}

// StdinHasInput reports whether env.Stdin may carry a request: false for a
// terminal or a character device such as /dev/null, true for pipes, files and
// in-memory readers.
func StdinHasInput(env *Env) bool {
	if env.Stdin == nil {
		return false
	}
	f, ok := env.Stdin.(*os.File)
	if !ok {
		return true
	}
	st, err := f.Stat()
	if err != nil {
		return false
	}
	return st.Mode()&os.ModeCharDevice == 0
}

// ReadRequest reads one JSON request from stdin into req. It reports false
// (and leaves req alone) when stdin carries nothing.
func ReadRequest(env *Env, req any) (bool, error) {
	data, err := readStdin(env)
	if err != nil || len(data) == 0 {
		return false, err
	}
	if err := DecodeRequest(data, req); err != nil {
		return false, err
	}
	return true, nil
}

// DecodeRequest decodes one request object strictly into req, applying the
// version check and the result-chaining rules described in the package
// comment.
func DecodeRequest(data []byte, req any) error {
	var top map[string]json.RawMessage
	if err := json.Unmarshal(data, &top); err != nil || top == nil {
		return apierr.New(apierr.InvalidInput, "request is not a JSON object: %s", jsonErr(err)).
			With("hint", "send one JSON object on stdin, or use flags")
	}
	if err := checkVersion(top); err != nil {
		return err
	}
	delete(top, "version")
	if raw, ok := top["kind"]; ok {
		var kind string
		if err := json.Unmarshal(raw, &kind); err != nil {
			return apierr.New(apierr.InvalidInput, `"kind" must be a string`)
		}
		field, err := chainField(req, kind)
		if err != nil {
			return err
		}
		delete(top, "kind")
		inner, _ := json.Marshal(top)
		top = map[string]json.RawMessage{field: inner}
	}
	body, _ := json.Marshal(top)
	return decodeStrict(body, req)
}

func checkVersion(top map[string]json.RawMessage) error {
	raw, ok := top["version"]
	if !ok {
		return nil
	}
	var v string
	if err := json.Unmarshal(raw, &v); err != nil || v != Version {
		return apierr.New(apierr.UnsupportedVersion, "request version %s is not supported; this build speaks %q", string(raw), Version).
			With("supported", []string{Version})
	}
	return nil
}

func chainField(req any, kind string) (string, error) {
	c, ok := req.(Chainer)
	if !ok {
		return "", apierr.New(apierr.InvalidInput, "this command does not accept the output of another command (got kind %q)", kind)
	}
	accepts := c.Accepts()
	field, ok := accepts[kind]
	if !ok {
		kinds := make([]string, 0, len(accepts))
		for k := range accepts {
			kinds = append(kinds, k)
		}
		sort.Strings(kinds)
		return "", apierr.New(apierr.InvalidInput, "this command does not accept results of kind %q; it accepts %s", kind, strings.Join(kinds, ", ")).
			With("accepts", kinds)
	}
	return field, nil
}

// decodeStrict decodes exactly one value, rejecting unknown fields and
// trailing data, and turns decoder errors into INVALID_INPUT with the field.
func decodeStrict(data []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		e := apierr.New(apierr.InvalidInput, "invalid request: %s", jsonErr(err))
		if f, ok := strings.CutPrefix(err.Error(), "json: unknown field "); ok {
			e.With("field", strings.Trim(f, `"`))
		}
		var te *json.UnmarshalTypeError
		if errors.As(err, &te) && te.Field != "" {
			e.With("field", te.Field)
		}
		e.Err = err
		return e
	}
	if dec.More() {
		return apierr.New(apierr.InvalidInput, "invalid request: trailing data after the JSON object")
	}
	return nil
}

func jsonErr(err error) string {
	if err == nil {
		return "null"
	}
	var te *json.UnmarshalTypeError
	if errors.As(err, &te) && te.Field != "" {
		return fmt.Sprintf("field %q must be %s, not %s", te.Field, te.Type, te.Value)
	}
	return strings.TrimPrefix(err.Error(), "json: ")
}

// WriteResult writes v as the command's one result, with "version" and
// "kind" as its first fields. v must encode as a JSON object. Output is
// indented when stdout is a terminal and one line otherwise.
func WriteResult(env *Env, kind string, v any) error {
	b, err := MarshalResult(kind, v)
	if err != nil {
		return err
	}
	if isTerminal(env.Stdout) {
		var buf bytes.Buffer
		if json.Indent(&buf, b, "", "  ") == nil {
			b = buf.Bytes()
		}
	}
	_, err = fmt.Fprintf(env.Stdout, "%s\n", b)
	return err
}

// MarshalResult encodes v with the version/kind header.
func MarshalResult(kind string, v any) ([]byte, error) {
	body, err := marshal(v)
	if err != nil {
		return nil, fmt.Errorf("encoding result: %w", err)
	}
	if len(body) < 2 || body[0] != '{' {
		return nil, fmt.Errorf("encoding result: %T is not a JSON object", v)
	}
	head := fmt.Sprintf(`{"version":%q,"kind":%q`, Version, kind)
	rest := body[1:]
	if len(rest) > 1 { // not "}"
		head += ","
	}
	return append([]byte(head), rest...), nil
}

// marshal is json.Marshal without HTML escaping: results are read by shells
// and people, not embedded in web pages, and "<hex>" should stay readable.
func marshal(v any) ([]byte, error) {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		return nil, err
	}
	return bytes.TrimRight(buf.Bytes(), "\n"), nil
}

func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	return ok && term.IsTerminal(int(f.Fd()))
}
