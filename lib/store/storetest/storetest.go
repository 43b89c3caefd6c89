// Package storetest damages real SQLite database files, for tests of
// what Volant does with a database that a disk, a crash or a careless
// copy has broken. It reads the file's b-tree itself (no dbstat), so it
// works with any SQLite build.
package storetest

import (
	"database/sql/driver"
	"encoding/binary"
	"io"
	"os"
	"testing"

	"github.com/mattn/go-sqlite3"
)

// TablePages returns the page numbers of table's b-tree leaves, in key
// order. The database must be closed (everything checkpointed into the
// file).
func TablePages(t testing.TB, path, table string) []int {
	t.Helper()
	c, err := (&sqlite3.SQLiteDriver{}).Open("file:" + path + "?mode=ro")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	rows, err := c.(*sqlite3.SQLiteConn).Query("SELECT rootpage FROM sqlite_master WHERE type = 'table' AND name = ?", []driver.Value{table})
	if err != nil {
		t.Fatal(err)
	}
	v := make([]driver.Value, 1)
	if err := rows.Next(v); err != nil {
		t.Fatalf("no table %s in %s: %v", table, path, err)
	}
	rows.Close()
	root := int(v[0].(int64))
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	size := int(binary.BigEndian.Uint16(data[16:18]))
	if size == 1 {
		size = 65536
	}
	var leaves []int
	var walk func(page int)
	walk = func(page int) {
		off := (page - 1) * size
		h := off
		if page == 1 {
			h += 100
		}
		switch data[h] {
		case 0x0d: // table leaf
			leaves = append(leaves, page)
		case 0x05: // table interior: cells of (left child, key), then the right-most child
			n := int(binary.BigEndian.Uint16(data[h+3 : h+5]))
			for i := 0; i < n; i++ {
				cell := off + int(binary.BigEndian.Uint16(data[h+12+2*i:h+14+2*i]))
				walk(int(binary.BigEndian.Uint32(data[cell : cell+4])))
			}
			walk(int(binary.BigEndian.Uint32(data[h+8 : h+12])))
		default:
			t.Fatalf("%s: page %d of table %s has type %#x", path, page, table, data[h])
		}
	}
	walk(root)
	return leaves
}

// Garble overwrites page n of the database file with bytes no b-tree page
// has.
func Garble(t testing.TB, path string, page int) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	hdr := make([]byte, 18)
	if _, err := io.ReadFull(f, hdr); err != nil {
		t.Fatal(err)
	}
	size := int(binary.BigEndian.Uint16(hdr[16:18]))
	if size == 1 {
		size = 65536
	}
	junk := make([]byte, size)
	for i := range junk {
		junk[i] = byte(0xA5 ^ i)
	}
	if _, err := f.WriteAt(junk, int64(page-1)*int64(size)); err != nil {
		t.Fatal(err)
	}
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
}
