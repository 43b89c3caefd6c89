package server_test

import (
	"bytes"
	"testing"

	"github.com/volantvm/volant/lib/apierr"
	"github.com/volantvm/volant/lib/server"
)

// TestFilesBodyIsStreamed: PUT .../files carries a tar stream of any size
// to the guest, so the 1 MiB limit (and the buffering) of JSON bodies does
// not apply to it: a body larger than MaxBodyBytes reaches the handler,
// which answers about the VM (here: there is none). JSON routes keep the
// limit.
func TestFilesBodyIsStreamed(t *testing.T) {
	e := newEnv(t)
	big := bytes.Repeat([]byte{0}, 3*server.MaxBodyBytes)
	st, body := e.do("PUT", "/api/v1/vms/nope/files?path=/tmp", "application/x-tar", big)
	e.apiErr(st, body, 404, apierr.NotFound)
	st, body = e.do("POST", "/api/v1/vms", "application/json", append([]byte(`{"name":"a","pad":"`), big...))
	e.apiErr(st, body, 413, apierr.TooLarge)
}
