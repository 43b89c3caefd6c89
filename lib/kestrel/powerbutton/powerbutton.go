// Package powerbutton turns the ACPI power button into a shutdown request.
//
// QEMU's system_powerdown (and Cloud Hypervisor's power-button API) raise an
// ACPI power-button event. Debian's kernel reports it only when the button
// driver is loaded, and as a key press (KEY_POWER) on an input device that
// user space reads through evdev; without init reading it, nothing happens.
// Watch finds every input device that has KEY_POWER and calls press when it
// is pressed.
package powerbutton

import (
	"context"
	"encoding/binary"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// Linux input constants (include/uapi/linux/input-event-codes.h).
const (
	evKey    = 0x01
	keyPower = 116
)

// eventSize is sizeof(struct input_event) on 64-bit Linux: a 16-byte
// timeval, then type u16, code u16, value s32.
const eventSize = 24

// HasKeyPower reports whether an evdev "capabilities/key" bitmap (hex words,
// most significant first, as sysfs prints it) has KEY_POWER.
func HasKeyPower(caps string) bool {
	words := strings.Fields(caps)
	if len(words) == 0 {
		return false
	}
	// Each word is one unsigned long (64 bits here); sysfs drops leading
	// zero words and prints each word without padding, so bit n is bit
	// n%64 of the (n/64+1)-th word from the right.
	bit := false
	for i, w := range words {
		v, err := strconv.ParseUint(w, 16, 64)
		if err != nil {
			return false
		}
		if len(words)-1-i == keyPower/64 {
			bit = v&(1<<(keyPower%64)) != 0
		}
	}
	return bit
}

// IsPress reports whether one input_event is a KEY_POWER press.
func IsPress(ev []byte) bool {
	if len(ev) < eventSize {
		return false
	}
	typ := binary.LittleEndian.Uint16(ev[16:])
	code := binary.LittleEndian.Uint16(ev[18:])
	value := int32(binary.LittleEndian.Uint32(ev[20:]))
	return typ == evKey && code == keyPower && value == 1
}

// Devices lists /dev/input/eventN nodes whose device has KEY_POWER.
func Devices(sysRoot, devRoot string) []string {
	matches, _ := filepath.Glob(filepath.Join(sysRoot, "class/input/event*"))
	var out []string
	for _, m := range matches {
		caps, err := os.ReadFile(filepath.Join(m, "device/capabilities/key"))
		if err != nil || !HasKeyPower(string(caps)) {
			continue
		}
		out = append(out, filepath.Join(devRoot, "input", filepath.Base(m)))
	}
	return out
}

// Watch looks for power-button devices for up to wait (drivers bind
// asynchronously after their modules load), then calls press once per
// press until ctx is done. It returns an error when no device turned up.
func Watch(ctx context.Context, wait time.Duration, log *slog.Logger, press func()) error {
	deadline := time.Now().Add(wait)
	var devs []string
	for {
		devs = Devices("/sys", "/dev")
		if len(devs) > 0 || time.Now().After(deadline) {
			break
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
	if len(devs) == 0 {
		return fmt.Errorf("no input device with a power key appeared within %s (are the button and evdev modules loaded?)", wait)
	}
	for _, d := range devs {
		f, err := os.Open(d)
		if err != nil {
			log.Warn("cannot open power button device", "dev", d, "err", err)
			continue
		}
		log.Debug("watching power button", "dev", d)
		go func() {
			<-ctx.Done()
			f.Close()
		}()
		go func() {
			buf := make([]byte, eventSize*16)
			for {
				n, err := f.Read(buf)
				if err != nil {
					return
				}
				for i := 0; i+eventSize <= n; i += eventSize {
					if IsPress(buf[i : i+eventSize]) {
						press()
					}
				}
			}
		}()
	}
	return nil
}
