package apierr

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"testing"
)

func TestFromKeepsCodeAndWrappedMessage(t *testing.T) {
	base := New(IPExhausted, "pool 192.168.127.0/24 has no free address").With("pool", "192.168.127.0/24")
	wrapped := fmt.Errorf("leasing ip for web1: %w", base)

	got := From(wrapped)
	if got.Code != IPExhausted {
		t.Fatalf("code = %s, want %s", got.Code, IPExhausted)
	}
	if got.Message != "leasing ip for web1: pool 192.168.127.0/24 has no free address" {
		t.Fatalf("message = %q", got.Message)
	}
	if got.Details["pool"] != "192.168.127.0/24" {
		t.Fatalf("details lost: %v", got.Details)
	}
	if !errors.Is(got, base) {
		t.Fatal("cause not reachable through errors.Is")
	}
}

func TestFromInfersWellKnownCauses(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want Code
	}{
		{context.DeadlineExceeded, Timeout},
		{fmt.Errorf("waiting: %w", context.Canceled), Canceled},
		{fmt.Errorf("open kernel: %w", os.ErrNotExist), NotFound},
		{fmt.Errorf("open /dev/kvm: %w", os.ErrPermission), PermissionDenied},
		{errors.New("boom"), Internal},
	} {
		if got := CodeOf(tc.err); got != tc.want {
			t.Errorf("CodeOf(%v) = %s, want %s", tc.err, got, tc.want)
		}
	}
	if From(nil) != nil || CodeOf(nil) != "" {
		t.Fatal("nil errors have no code")
	}
}

func TestWireForm(t *testing.T) {
	e := Wrap(NotFound, os.ErrNotExist, "plugin nginx").With("plugin", "nginx")
	b, err := json.Marshal(e)
	if err != nil {
		t.Fatal(err)
	}
	want := `{"code":"NOT_FOUND","message":"plugin nginx: file does not exist","details":{"plugin":"nginx"}}`
	if string(b) != want {
		t.Fatalf("got %s\nwant %s", b, want)
	}
}

func TestEveryCodeHasDistinctNonZeroExitAndHTTPStatus(t *testing.T) {
	for _, c := range Codes() {
		if c.ExitCode() <= 0 {
			t.Errorf("%s: exit code %d must be > 0", c, c.ExitCode())
		}
		if s := c.HTTPStatus(); s < 400 || s > 599 {
			t.Errorf("%s: http status %d not an error status", c, s)
		}
	}
	if Code("NO_SUCH").ExitCode() != 1 || Code("NO_SUCH").HTTPStatus() != 500 {
		t.Fatal("unknown codes must map to internal")
	}
}

// apierr spells HTTP statuses as numbers to keep net/http out of the
// commands; they must still be the statuses the comments name.
func TestHTTPStatusesMatchNetHTTP(t *testing.T) {
	want := map[Code]int{
		Internal: http.StatusInternalServerError, Usage: http.StatusBadRequest, InvalidInput: http.StatusBadRequest,
		InvalidManifest: http.StatusUnprocessableEntity, UnsupportedVersion: http.StatusBadRequest,
		CmdlineTooLong: http.StatusUnprocessableEntity, TooLarge: http.StatusRequestEntityTooLarge,
		NotFound: http.StatusNotFound, Conflict: http.StatusConflict, IPExhausted: http.StatusConflict, PortInUse: http.StatusConflict,
		NotSupported: http.StatusNotImplemented, ChecksumMismatch: http.StatusUnprocessableEntity,
		Unavailable: http.StatusServiceUnavailable, PermissionDenied: http.StatusForbidden,
		Unauthorized: http.StatusUnauthorized, Timeout: http.StatusGatewayTimeout, Canceled: 499,
		MethodNotAllowed: http.StatusMethodNotAllowed, DataCorrupt: http.StatusInternalServerError,
		VolumeInUse: http.StatusConflict, NoSpace: http.StatusInsufficientStorage,
		IsolationUnavailable: http.StatusServiceUnavailable,
		SignatureRequired:    http.StatusForbidden, SignatureInvalid: http.StatusUnprocessableEntity,
		SecretMissing: http.StatusUnprocessableEntity,
	}
	for _, c := range Codes() {
		if c.HTTPStatus() != want[c] {
			t.Errorf("%s: HTTP %d, want %d", c, c.HTTPStatus(), want[c])
		}
	}
	if Code("NOPE").HTTPStatus() != http.StatusInternalServerError {
		t.Error("unknown code")
	}
}
