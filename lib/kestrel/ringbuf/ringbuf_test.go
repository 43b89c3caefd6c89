package ringbuf

import (
	"bytes"
	"fmt"
	"testing"
	"time"
)

func TestRing(t *testing.T) {
	for _, tc := range []struct {
		size    int
		writes  []string
		from    int64
		want    string
		next    int64
		missed  int64
		comment string
	}{
		{8, nil, 0, "", 0, 0, "empty"},
		{8, []string{"abc"}, 0, "abc", 3, 0, "partial"},
		{8, []string{"abc", "def"}, 3, "def", 6, 0, "resume"},
		{8, []string{"abcdefgh"}, -1, "abcdefgh", 8, 0, "exactly full"},
		{8, []string{"abcdefgh", "ij"}, 0, "cdefghij", 10, 2, "wrapped, reader missed 2"},
		{8, []string{"abcdef", "ghijkl"}, 5, "fghijkl", 12, 0, "wrapped, reader in window"},
		{4, []string{"0123456789"}, 0, "6789", 10, 6, "single write larger than ring"},
		{4, []string{"ab", "0123456789"}, -1, "6789", 12, 0, "oversized write after data"},
		{8, []string{"abc"}, 9, "", 3, 0, "offset beyond the end"},
	} {
		b := New(tc.size)
		for _, w := range tc.writes {
			if n, err := b.Write([]byte(w)); n != len(w) || err != nil {
				t.Fatalf("%s: write %d %v", tc.comment, n, err)
			}
		}
		data, next, missed := b.ReadFrom(tc.from)
		if string(data) != tc.want || next != tc.next || missed != tc.missed {
			t.Errorf("%s: ReadFrom(%d) = %q, %d, %d; want %q, %d, %d", tc.comment, tc.from, data, next, missed, tc.want, tc.next, tc.missed)
		}
	}
}

func TestRingManyWrapsMatchesTail(t *testing.T) {
	b := New(100)
	var all bytes.Buffer
	for i := 0; i < 1000; i++ {
		s := fmt.Sprintf("line %d\n", i)
		all.WriteString(s)
		b.Write([]byte(s))
	}
	data, next, _ := b.ReadFrom(-1)
	if int(next) != all.Len() || !bytes.Equal(data, all.Bytes()[all.Len()-100:]) {
		t.Fatalf("tail mismatch: %q", data)
	}
}

func TestWaitWakesFollower(t *testing.T) {
	b := New(16)
	w := b.Wait()
	select {
	case <-w:
		t.Fatal("woke before any write")
	default:
	}
	go b.Write([]byte("x"))
	select {
	case <-w:
	case <-time.After(5 * time.Second):
		t.Fatal("write did not wake the follower")
	}
	b.Close()
	select {
	case <-b.Wait():
	default:
		t.Fatal("Wait after Close must not block")
	}
}
