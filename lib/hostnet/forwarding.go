package hostnet

import (
	"fmt"
	"os"
	"strings"
)

// ipForwardPath is per network namespace: it shows the namespace of the
// thread that opens it.
const ipForwardPath = "/proc/sys/net/ipv4/ip_forward"

func readForwarding() (bool, error) {
	b, err := os.ReadFile(ipForwardPath)
	if err != nil {
		return false, fmt.Errorf("reading %s: %w", ipForwardPath, err)
	}
	return strings.TrimSpace(string(b)) != "0", nil
}

func writeForwarding(on bool) error {
	v := "0\n"
	if on {
		v = "1\n"
	}
	f, err := os.OpenFile(ipForwardPath, os.O_WRONLY, 0)
	if err != nil {
		return fmt.Errorf("setting %s: %w", ipForwardPath, err)
	}
	_, err = f.WriteString(v)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("setting %s to %s: %w", ipForwardPath, strings.TrimSpace(v), err)
	}
	return nil
}
