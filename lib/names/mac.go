package names

import (
	"crypto/sha256"
	"encoding/hex"
	"strconv"
)

// MAC is the one rule for a VM's NIC address, which volant-ipam stores
// with the lease and volant-launch uses when no lease gives one: 02
// followed by the first five bytes of sha256(vm) for attempt 0, of
// sha256(vm + "/" + attempt) for later attempts. 02 marks a locally
// administered unicast address, so it cannot clash with a vendor's (QEMU's
// default 52:54:00:... included). In shell:
//
//	printf %s web1 | sha256sum | sed -E 's/^(..)(..)(..)(..)(..).*/02:\1:\2:\3:\4:\5/'
//
// The same VM gets the same MAC on every host and after every restart.
// volant-ipam uses a later attempt only when another lease already holds
// the address (see lib/ipam).
func MAC(vm string, attempt int) string {
	in := vm
	if attempt > 0 {
		in += "/" + strconv.Itoa(attempt)
	}
	h := sha256.Sum256([]byte(in))
	b := make([]byte, 0, 17)
	b = append(b, "02"...)
	for _, x := range h[:5] {
		b = append(b, ':')
		b = hex.AppendEncode(b, []byte{x})
	}
	return string(b)
}
