package outlog

import (
	"strings"
	"testing"
)

func data(recs []Record) string {
	var b strings.Builder
	for _, r := range recs {
		b.WriteString(r.Stream[:3] + ":" + string(r.Data) + " ")
	}
	return b.String()
}

func TestSinceAndGaps(t *testing.T) {
	s := New(10)
	s.Append("stdout", []byte("aaaa"))
	s.Append("stderr", []byte("bbbb"))
	recs, gap, next := s.Since(-1, 1<<20)
	if data(recs) != "std:aaaa std:bbbb " || gap != 0 || next != 8 || recs[1].Stream != "stderr" || recs[1].Seq != 4 {
		t.Fatalf("since -1: %q gap %d next %d", data(recs), gap, next)
	}
	// From the middle of a record.
	recs, _, _ = s.Since(6, 1<<20)
	if len(recs) != 1 || string(recs[0].Data) != "bb" || recs[0].Seq != 6 {
		t.Fatalf("since 6: %+v", recs)
	}
	// Overflow: the oldest record goes; a reader at 0 learns it lost 4 bytes.
	s.Append("stdout", []byte("cccc"))
	recs, gap, next = s.Since(0, 1<<20)
	if gap != 4 || data(recs) != "std:bbbb std:cccc " || next != 12 {
		t.Fatalf("after overflow: %q gap %d next %d", data(recs), gap, next)
	}
	// Caught up: nothing, no gap.
	if recs, gap, next = s.Since(12, 1<<20); len(recs) != 0 || gap != 0 || next != 12 {
		t.Fatalf("caught up: %v %d %d", recs, gap, next)
	}
	// A write larger than the store keeps its tail and counts its head.
	s.Append("stdout", []byte("0123456789ABCDEF"))
	recs, gap, next = s.Since(12, 1<<20)
	if gap != 6 || len(recs) != 1 || string(recs[0].Data) != "6789ABCDEF" || next != 28 {
		t.Fatalf("big write: %q gap %d next %d", data(recs), gap, next)
	}
	// The limit returns at least one record.
	s2 := New(100)
	for i := 0; i < 5; i++ {
		s2.Append("stdout", []byte("xxxxxxxxxx"))
	}
	if recs, _, next := s2.Since(0, 15); len(recs) != 1 || next != 10 {
		t.Fatalf("limit: %d records, next %d", len(recs), next)
	}
}

func TestWaitWakes(t *testing.T) {
	s := New(0)
	w := s.Wait()
	select {
	case <-w:
		t.Fatal("woken before a write")
	default:
	}
	s.Append("stdout", []byte("x"))
	select {
	case <-w:
	default:
		t.Fatal("a write did not wake the waiter")
	}
	s.Close()
	select {
	case <-s.Wait():
	default:
		t.Fatal("Wait after Close blocks")
	}
}
