package volar

import (
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/volantvm/volant/lib/apierr"
	"github.com/volantvm/volant/lib/cli"
	"github.com/volantvm/volant/lib/client"
)

// Exit statuses of volar. They differ from the volant-* commands' (one per
// error code): a person at a shell wants to know whose fault it was.
const (
	ExitOK          = 0
	ExitError       = 1 // volantd (or the host, for setup) refused or failed; its code is printed
	ExitUsage       = 2 // bad flags or arguments: nothing was sent
	ExitUnreachable = 3 // volantd could not be reached
	// ExitInterrupted is a command interrupted by SIGINT or SIGTERM
	// (128 + SIGINT, as shells report it). Following commands (events,
	// logs --follow) end with 0 instead: ending them is how they are used.
	ExitInterrupted = 130
)

// Target is the volantd a command talks to, and how it was chosen: the
// unreachable-daemon message says where volar looked and why there.
type Target struct {
	Addr   string // as given: unix:///path, /path, http(s)://host:port
	Source string // "--host", "VOLANT_HOST" or "default"
	Token  string
	// CAFile: PEM certificates an https daemon must chain to
	// ($VOLANT_CA_FILE; default the system's roots).
	CAFile string
}

// ResolveTarget picks the daemon address: --host, else $VOLANT_HOST, else
// the default socket; the token: --token, else $VOLANT_TOKEN.
func ResolveTarget(flagHost, flagToken string, getenv func(string) string) Target {
	t := Target{Addr: flagHost, Source: "--host", Token: flagToken}
	if t.Addr == "" {
		t.Addr, t.Source = getenv(client.EnvHost), client.EnvHost
	}
	if t.Addr == "" {
		t.Addr, t.Source = client.DefaultSocket, "default"
	}
	if t.Token == "" {
		t.Token = getenv(client.EnvToken)
	}
	t.CAFile = getenv(client.EnvCAFile)
	return t
}

// Client returns a client for t. An address of the wrong shape is a usage
// error.
func (t Target) Client(timeout time.Duration, version string) (*client.Client, error) {
	c, err := client.New(t.Addr, client.Options{Token: t.Token, CAFile: t.CAFile, Timeout: timeout, UserAgent: "volar/" + version})
	if err != nil {
		e := apierr.From(err)
		return nil, &apierr.Error{Code: apierr.Usage, Message: e.Message + " (from " + t.Source + ")", Details: e.Details, Err: err}
	}
	return c, nil
}

// Unreachable reports whether err means volantd could not be reached at all
// (as opposed to volantd answering with an error, which carries the HTTP
// status lib/client records; an UNAVAILABLE *answer* is volantd's own).
func Unreachable(err error) bool {
	var e *apierr.Error
	if !errors.As(err, &e) || e.Code != apierr.Unavailable {
		return false
	}
	_, answered := e.Details["http_status"]
	return !answered
}

// Report writes err on w the way volar shows errors and returns the exit
// status:
//
//	volar: NOT_FOUND: no VM named web1
//	  hint: ...
//
// With asJSON the error object itself ({"code","message","details"}) is the
// one line written instead, for scripts using -o json. An unreachable
// daemon gets a message naming where volar looked and how to start
// volantd. t may be nil for commands that do not talk to volantd.
func Report(w io.Writer, err error, t *Target, asJSON bool) int {
	if err == nil || errors.Is(err, ErrHelp) {
		return ExitOK
	}
	// A command's own status (exec passes on the guest command's): the
	// error, if any, is still reported.
	var se *cli.StatusError
	if errors.As(err, &se) {
		if se.Err != nil {
			Report(w, se.Err, t, asJSON)
		}
		return se.Status
	}
	e := apierr.From(err)
	status := ExitError
	switch {
	case e.Code == apierr.Usage:
		status = ExitUsage
	case e.Code == apierr.Canceled:
		status = ExitInterrupted
	case t != nil && Unreachable(err):
		status = ExitUnreachable
		e = unreachableError(e, *t)
	case e.Code == apierr.Unauthorized:
		// The daemon's hint speaks HTTP; say it in volar's words.
		details := map[string]any{}
		for k, v := range e.Details {
			details[k] = v
		}
		details["hint"] = "give a token with --token or VOLANT_TOKEN: volantd's own (--token-file) or one `volar tokens create` made"
		e = &apierr.Error{Code: e.Code, Message: e.Message, Details: details, Err: e.Err}
	}
	if asJSON {
		b, merr := marshalCompact(e)
		if merr != nil {
			b = []byte(fmt.Sprintf(`{"code":%q,"message":%q}`, e.Code, e.Message))
		}
		fmt.Fprintf(w, "%s\n", b)
		return status
	}
	fmt.Fprintf(w, "volar: %s: %s\n", e.Code, e.Message)
	for _, line := range detailLines(e) {
		fmt.Fprintf(w, "  %s\n", line)
	}
	return status
}

// unreachableError rewrites a transport failure into the message a person
// needs: where volar looked, why there, what the socket said, how to start
// the daemon.
func unreachableError(e *apierr.Error, t Target) *apierr.Error {
	cause := "no answer"
	if e.Err != nil {
		cause = rootCause(e.Err)
	}
	where := t.Addr
	if t.Source != "default" {
		where += " (from " + t.Source + ")"
	} else {
		where += " (the default; set --host or VOLANT_HOST for another)"
	}
	start := "start it with `volantd` (as root), or `systemctl start volantd.socket` where its units are installed"
	switch {
	case strings.Contains(cause, "permission denied"):
		start = "volantd's socket is mode 0660: run volar as root or as a member of the socket's group"
	case !strings.HasPrefix(t.Addr, "/") && !strings.HasPrefix(t.Addr, "unix://"):
		start = "check that volantd runs there with --listen and that the address is right"
	}
	return &apierr.Error{
		Code:    apierr.Unavailable,
		Message: "cannot reach volantd at " + where + ": " + cause,
		Details: map[string]any{"addr": t.Addr, "source": t.Source, "hint": start},
		Err:     e,
	}
}

// rootCause is the innermost error's text, which is the one a person can
// act on ("connect: no such file or directory").
func rootCause(err error) string {
	for {
		next := errors.Unwrap(err)
		if next == nil {
			return err.Error()
		}
		// Keep syscall-level context such as "dial unix /path: connect: ...".
		if s := err.Error(); strings.Contains(s, "dial ") && !strings.Contains(next.Error(), "dial ") {
			if i := strings.Index(s, "dial "); i >= 0 {
				return s[i:]
			}
		}
		err = next
	}
}

// detailLines renders the details a person needs: the problems of an
// invalid manifest, one per line, and the hint; the rest is in -o json.
func detailLines(e *apierr.Error) []string {
	var out []string
	if errs, ok := e.Details["errors"].([]any); ok && len(errs) > 1 {
		for _, p := range errs {
			if p, ok := p.(map[string]any); ok {
				field, _ := p["field"].(string)
				msg, _ := p["message"].(string)
				if field != "" {
					msg = field + ": " + msg
				}
				out = append(out, "- "+msg)
			}
		}
	}
	if h, ok := e.Details["hint"].(string); ok && h != "" {
		out = append(out, "hint: "+h)
	}
	return out
}
