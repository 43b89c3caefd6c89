package kmod

import (
	"bytes"
	"compress/gzip"
	"errors"
	"fmt"
	"io"
	"os"

	"golang.org/x/sys/unix"
)

// ErrCompressed is wrapped by Load for a module compressed with xz or zstd:
// the guest carries no decoder for them (lib/bootimage packs modules
// decompressed).
var ErrCompressed = errors.New("compressed module")

// Result is the outcome of loading one module.
type Result struct {
	Step
	Loaded  bool   `json:"loaded"`            // newly loaded
	Present bool   `json:"present,omitempty"` // already loaded (EEXIST)
	Error   string `json:"error,omitempty"`
}

// Load loads the steps in order with finit_module(2), or, for a gzip'd
// module, init_module(2) after decompressing it in user space (the kernel may
// lack CONFIG_MODULE_DECOMPRESS). A module compressed with xz or zstd is an
// error naming it (ErrCompressed).
// A module that is already loaded counts as success. A failed Optional step
// is recorded and skipped; any other failure stops and is returned.
func Load(ix *Index, steps []Step) ([]Result, error) {
	out := make([]Result, 0, len(steps))
	for _, s := range steps {
		r := Result{Step: s}
		err := loadOne(ix, s)
		switch {
		case err == nil:
			r.Loaded = true
		case errors.Is(err, unix.EEXIST):
			r.Present = true
		default:
			r.Error = err.Error()
			out = append(out, r)
			if s.Optional {
				continue
			}
			return out, fmt.Errorf("loading module %s: %w", s.Name, err)
		}
		out = append(out, r)
	}
	return out, nil
}

func loadOne(ix *Index, s Step) error {
	rc, comp, err := ix.Open(s)
	if err != nil {
		return err
	}
	defer rc.Close()
	if comp == "" {
		f := rc.(*os.File)
		return unix.FinitModule(int(f.Fd()), "", 0)
	}
	if comp != "gz" {
		return fmt.Errorf("%w: %s is %s-compressed, and the guest loads only plain or gzip'd modules: build its archive with fledge or volant-launch, which decompress modules", ErrCompressed, s.Path, comp)
	}
	zr, err := gzip.NewReader(rc)
	if err != nil {
		return err
	}
	var buf bytes.Buffer
	if _, err := io.Copy(&buf, zr); err != nil {
		return fmt.Errorf("decompressing: %w", err)
	}
	return unix.InitModule(buf.Bytes(), "")
}
