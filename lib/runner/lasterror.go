package runner

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/google/renameio/v2"

	"github.com/volantvm/volant/lib/apierr"
	"github.com/volantvm/volant/lib/launch"
	"github.com/volantvm/volant/lib/layout"
)

// LastErrorPath is the file holding the error a VM's last run ended with:
// <data>/vms/<name>/last-error.json.
func LastErrorPath(o launch.Options, name string) string {
	return dirs(o).VMFile(name, layout.LastErrorName)
}

// lastError is the file's content.
type lastError struct {
	At    time.Time     `json:"at"`
	Error *apierr.Error `json:"error"`
}

// WriteLastError records how a VM's run ended: err as the wire error
// object (apierr.From), or, for a nil err, no file at all. The file is
// replaced atomically (temp file, fsync, rename), so a reader sees the
// old record or the new one, never a part.
func WriteLastError(o launch.Options, name string, err error) error {
	p := LastErrorPath(o, name)
	if err == nil {
		if rerr := os.Remove(p); rerr != nil && !errors.Is(rerr, os.ErrNotExist) {
			return fmt.Errorf("clearing the last error of %s: %w", name, rerr)
		}
		return nil
	}
	b, merr := json.Marshal(lastError{At: time.Now().UTC(), Error: apierr.From(err)})
	if merr != nil {
		return fmt.Errorf("encoding the last error of %s: %w", name, merr)
	}
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		return fmt.Errorf("recording the last error of %s: %w", name, err)
	}
	if err := renameio.WriteFile(p, append(b, '\n'), 0o640); err != nil {
		return fmt.Errorf("recording the last error of %s: %w", name, err)
	}
	return nil
}

// ReadLastError returns the error a VM's last run recorded (an
// *apierr.Error with its code and details), or nil.
func ReadLastError(o launch.Options, name string) error {
	b, err := os.ReadFile(LastErrorPath(o, name))
	if err != nil {
		return nil
	}
	var le lastError
	if json.Unmarshal(b, &le) != nil || le.Error == nil || le.Error.Code == "" {
		return nil
	}
	return le.Error
}
