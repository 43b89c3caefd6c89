package kmod

import (
	"bytes"
	"compress/gzip"
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/klauspost/compress/zstd"
	"github.com/ulikunitz/xz"
	"golang.org/x/sys/unix"
)

// Result is the outcome of loading one module.
type Result struct {
	Step
	Loaded  bool   `json:"loaded"`            // newly loaded
	Present bool   `json:"present,omitempty"` // already loaded (EEXIST)
	Error   string `json:"error,omitempty"`
}

// Load loads the steps in order with finit_module(2), or init_module(2) after
// decompressing in user space (the kernel may lack CONFIG_MODULE_DECOMPRESS).
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
	var r io.Reader
	switch comp {
	case "gz":
		zr, err := gzip.NewReader(rc)
		if err != nil {
			return err
		}
		r = zr
	case "xz":
		xr, err := xz.NewReader(rc)
		if err != nil {
			return err
		}
		r = xr
	case "zst":
		zr, err := zstd.NewReader(rc)
		if err != nil {
			return err
		}
		defer zr.Close()
		r = zr
	}
	var buf bytes.Buffer
	if _, err := io.Copy(&buf, r); err != nil {
		return fmt.Errorf("decompressing: %w", err)
	}
	return unix.InitModule(buf.Bytes(), "")
}
