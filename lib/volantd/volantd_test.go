package volantd

import (
	"strings"
	"testing"

	"github.com/volantvm/volant/lib/apierr"
)

func TestCheckToken(t *testing.T) {
	for _, tc := range []struct {
		tok string
		ok  bool
	}{
		{"5f0c2e8a9b71d4636e02a1f9c8b3d7e4", true},   // 16 random bytes, hex
		{"5F0C2E8A9B71D4636E02A1F9C8B3D7E4", true},   // the same, upper case
		{"q83vEjRWeJq83vEjRWeJqw==", true},           // 16 bytes, base64
		{"b3nch-7f4e1a9c2d8b6e0f5a3c7d9e1b4f", true}, // letters, digits, punctuation
		{"x", false},   // issue 21: accepted before
		{"tok", false}, // ditto
		{"5f0c2e8a9b71d4636e02a1f9c8b3d7e", false},     // 31 hex digits: 124 bits
		{strings.Repeat("a", 64), false},               // one character
		{strings.Repeat("ab", 40), false},              // two
		{"Zk3vQ9 xLm2Rt7Wp4Ys8Nb6Hd1Jc5Fg0", false},    // a space
		{"Zk3vQ9\x1bxLm2Rt7Wp4Ys8Nb6Hd1Jc5Fg0", false}, // a control character
		{"Zk3vQ9éxLm2Rt7Wp4Ys8Nb6Hd1Jc5Fg0ab", false},  // not ASCII
	} {
		err := CheckToken(tc.tok)
		if (err == nil) != tc.ok {
			t.Errorf("%q: %v", tc.tok, err)
		}
		if err != nil && !apierr.Is(err, apierr.Usage) {
			t.Errorf("%q: code %s", tc.tok, apierr.CodeOf(err))
		}
	}
	t.Log(CheckToken("x"))
}
