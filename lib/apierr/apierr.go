// Package apierr is Volant's one error vocabulary.
//
// Every front end speaks it: the volant-* commands write an *Error as JSON on
// stderr and exit with Code.ExitCode(); volantd answers with it as the body of
// a 4xx/5xx response whose status is Code.HTTPStatus(); lib/client turns such
// a body back into an *Error. Library code creates an *Error where the cause is
// known (a pool that is exhausted knows it), wraps it on the way up with
// fmt.Errorf("...: %w", err), and the boundary converts it once with From.
//
// Codes, exit statuses and HTTP statuses:
//
//	code                 exit  http  meaning
//	INTERNAL               1   500  a bug or an unexpected failure
//	USAGE                  2   400  bad flags or arguments
//	INVALID_INPUT          3   400  the request is malformed or a value is out of range
//	INVALID_MANIFEST       3   422  a plugin manifest failed validation (details list every problem)
//	UNSUPPORTED_VERSION    3   400  the request's "version" is not one this build speaks
//	CMDLINE_TOO_LONG       3   422  the kernel command line would exceed the kernel's limit
//	TOO_LARGE              3   413  the request body is larger than allowed
//	METHOD_NOT_ALLOWED     3   405  the path exists but not with this method (Allow lists those it has)
//	NOT_FOUND              4   404  the named thing does not exist
//	CONFLICT               5   409  the thing exists, or is in use, or is in the wrong state
//	IP_EXHAUSTED           6   409  no free address is left in the pool
//	PORT_IN_USE            5   409  a host port to publish is taken (a listener on the host, or another mapping)
//	NOT_SUPPORTED          7   501  the backend or host cannot do what was asked
//	CHECKSUM_MISMATCH      8   422  an artifact's sha256 is not the one the manifest names
//	UNAVAILABLE            9   503  a dependency is missing or unreachable (binary, device, daemon)
//	PERMISSION_DENIED     10   403  the caller lacks a privilege (root, CAP_NET_ADMIN, a token)
//	UNAUTHORIZED          10   401  no or a wrong bearer token
//	TIMEOUT               11   504  the operation did not finish in time
//	CANCELED             12   499  the caller canceled (signal, closed connection)
//	DATA_CORRUPT         13   500  the state database is damaged; details say how to recover
//	VOLUME_IN_USE          5   409  a volume is held by another VM (one writer at a time) or in use where it must not be
//	NO_SPACE              14   507  the host's filesystem is full; nothing was left half-made
//	ISOLATION_UNAVAILABLE 9   503  the hypervisor's jail cannot be set up here (see --insecure-vmm)
//	SIGNATURE_REQUIRED   10   403  the plugin has no signature and volantd runs with --require-signed
//	SIGNATURE_INVALID     8   422  a plugin's signature is malformed, by a key not trusted, or does not match its manifest
//	SECRET_MISSING        3   422  the plugin's manifest names secrets the request does not give (details name them)
package apierr

import (
	"context"
	"errors"
	"fmt"
	"os"
)

// Code is a stable, upper-case string naming a class of failure.
type Code string

// The codes. Add new ones to the table in the package comment and to codeInfo.
const (
	Internal           Code = "INTERNAL"
	Usage              Code = "USAGE"
	InvalidInput       Code = "INVALID_INPUT"
	InvalidManifest    Code = "INVALID_MANIFEST"
	UnsupportedVersion Code = "UNSUPPORTED_VERSION"
	CmdlineTooLong     Code = "CMDLINE_TOO_LONG"
	TooLarge           Code = "TOO_LARGE"
	MethodNotAllowed   Code = "METHOD_NOT_ALLOWED"
	NotFound           Code = "NOT_FOUND"
	Conflict           Code = "CONFLICT"
	IPExhausted        Code = "IP_EXHAUSTED"
	PortInUse          Code = "PORT_IN_USE"
	NotSupported       Code = "NOT_SUPPORTED"
	ChecksumMismatch   Code = "CHECKSUM_MISMATCH"
	Unavailable        Code = "UNAVAILABLE"
	PermissionDenied   Code = "PERMISSION_DENIED"
	Unauthorized       Code = "UNAUTHORIZED"
	Timeout            Code = "TIMEOUT"
	Canceled           Code = "CANCELED"
	DataCorrupt        Code = "DATA_CORRUPT"
	VolumeInUse        Code = "VOLUME_IN_USE"
	NoSpace            Code = "NO_SPACE"
	// IsolationUnavailable: the VMM's jail (its own uid, mount namespace,
	// cgroup, seccomp) cannot be set up on this host (lib/vmm/jail).
	IsolationUnavailable Code = "ISOLATION_UNAVAILABLE"
	// SignatureRequired: volantd --require-signed and the plugin is not
	// signed (lib/signing).
	SignatureRequired Code = "SIGNATURE_REQUIRED"
	// SignatureInvalid: a plugin's signature is malformed, made by a key
	// that is not trusted, or does not match the manifest it came with
	// (or, at boot, the manifest stored for it); details.reason says which.
	SignatureInvalid Code = "SIGNATURE_INVALID"
	// SecretMissing: the plugin's manifest names secrets (its "secrets")
	// that the create request's inputs do not give; details.missing_env
	// and details.missing_files name them.
	SecretMissing Code = "SECRET_MISSING"
)

// codeInfo holds a code's exit status and HTTP status. The HTTP statuses
// are written as numbers rather than net/http's constants so that the
// volant-* commands, which run once per operation from shells, do not link
// net/http (and crypto/tls with it) only for these constants: that cut
// ~2 MB and ~25% of the start-up CPU of volant-ipam (bench/ipam).
// apierr_test.go checks the numbers against net/http.
type codeInfo struct {
	exit int
	http int
}

var codes = map[Code]codeInfo{
	Internal:             {1, 500},  // Internal Server Error
	Usage:                {2, 400},  // Bad Request
	InvalidInput:         {3, 400},  // Bad Request
	InvalidManifest:      {3, 422},  // Unprocessable Entity
	UnsupportedVersion:   {3, 400},  // Bad Request
	CmdlineTooLong:       {3, 422},  // Unprocessable Entity
	TooLarge:             {3, 413},  // Content Too Large
	MethodNotAllowed:     {3, 405},  // Method Not Allowed
	NotFound:             {4, 404},  // Not Found
	Conflict:             {5, 409},  // Conflict
	IPExhausted:          {6, 409},  // Conflict
	PortInUse:            {5, 409},  // Conflict
	NotSupported:         {7, 501},  // Not Implemented
	ChecksumMismatch:     {8, 422},  // Unprocessable Entity
	Unavailable:          {9, 503},  // Service Unavailable
	PermissionDenied:     {10, 403}, // Forbidden
	Unauthorized:         {10, 401}, // Unauthorized
	Timeout:              {11, 504}, // Gateway Timeout
	Canceled:             {12, 499}, // nginx's Client Closed Request
	DataCorrupt:          {13, 500}, // Internal Server Error
	VolumeInUse:          {5, 409},  // Conflict
	NoSpace:              {14, 507}, // Insufficient Storage
	IsolationUnavailable: {9, 503},  // Service Unavailable
	SignatureRequired:    {10, 403}, // Forbidden
	SignatureInvalid:     {8, 422},  // Unprocessable Entity
	SecretMissing:        {3, 422},  // Unprocessable Entity
}

// Codes returns every known code, for documentation and tests.
func Codes() []Code {
	out := make([]Code, 0, len(codes))
	for c := range codes {
		out = append(out, c)
	}
	return out
}

// ExitCode is the process exit status a command uses for this code.
func (c Code) ExitCode() int {
	if i, ok := codes[c]; ok {
		return i.exit
	}
	return 1
}

// HTTPStatus is the status volantd answers with for this code.
func (c Code) HTTPStatus() int {
	if i, ok := codes[c]; ok {
		return i.http
	}
	return 500
}

// Error is the wire form of a failure: {"code","message","details"}.
type Error struct {
	Code    Code           `json:"code"`
	Message string         `json:"message"`
	Details map[string]any `json:"details,omitempty"`
	// Err is the underlying cause, kept for errors.Is/As; never serialized.
	Err error `json:"-"`
}

func (e *Error) Error() string {
	if e.Err != nil && e.Message == "" {
		return e.Err.Error()
	}
	return e.Message
}

func (e *Error) Unwrap() error { return e.Err }

// With returns e with one more detail set; it mutates and returns e so a
// constructor can be chained: apierr.New(...).With("vm", name).
func (e *Error) With(key string, value any) *Error {
	if e.Details == nil {
		e.Details = map[string]any{}
	}
	e.Details[key] = value
	return e
}

// New makes an *Error with a formatted message.
func New(code Code, format string, args ...any) *Error {
	return &Error{Code: code, Message: fmt.Sprintf(format, args...)}
}

// Wrap makes an *Error whose cause is err; the message is msg + ": " + err.
func Wrap(code Code, err error, msg string) *Error {
	m := msg
	if err != nil {
		m = msg + ": " + err.Error()
	}
	return &Error{Code: code, Message: m, Err: err}
}

// CodeOf returns the code of the first *Error in err's chain, or a code
// inferred from well-known causes (context cancellation, missing files,
// permissions), or Internal; "" for a nil error.
func CodeOf(err error) Code {
	if err == nil {
		return ""
	}
	return From(err).Code
}

// Is reports whether err carries the given code.
func Is(err error, code Code) bool {
	var e *Error
	return errors.As(err, &e) && e.Code == code
}

// From converts any error to an *Error once, at a boundary. The message is the
// full wrapped text (err.Error()), so the context added on the way up is kept;
// code and details come from the innermost *Error if there is one.
func From(err error) *Error {
	if err == nil {
		return nil
	}
	var e *Error
	if errors.As(err, &e) {
		if e == err {
			return e
		}
		return &Error{Code: e.Code, Message: err.Error(), Details: e.Details, Err: err}
	}
	code := Internal
	switch {
	case errors.Is(err, context.DeadlineExceeded):
		code = Timeout
	case errors.Is(err, context.Canceled):
		code = Canceled
	case errors.Is(err, os.ErrNotExist):
		code = NotFound
	case errors.Is(err, os.ErrPermission):
		code = PermissionDenied
	}
	return &Error{Code: code, Message: err.Error(), Err: err}
}
