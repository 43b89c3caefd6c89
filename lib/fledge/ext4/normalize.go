package ext4

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"os"
)

// Superblock holds the fields of an ext4 superblock this package reads.
type Superblock struct {
	InodesCount    uint32
	BlocksCount    uint64
	FreeBlocks     uint64
	FreeInodes     uint32
	BlockSize      uint32
	BlocksPerGroup uint32
	InodesPerGroup uint32
	InodeSize      uint16
	DescSize       uint16
	FirstDataBlock uint32
	Incompat       uint32
	RoCompat       uint32
	UUID           [16]byte
	ChecksumSeed   uint32
}

const (
	incompat64bit    = 0x80
	incompatCsumSeed = 0x2000
	roCompatMetaCsum = 0x400
	bgInodeUninit    = 0x1
	sbMagic          = 0xEF53
)

// ReadSuperblock reads the primary superblock of an ext4 image.
func ReadSuperblock(image string) (*Superblock, error) {
	f, err := os.Open(image)
	if err != nil {
		return nil, fmt.Errorf("reading superblock: %w", err)
	}
	defer f.Close()
	return readSuperblock(f)
}

func readSuperblock(r io.ReaderAt) (*Superblock, error) {
	b := make([]byte, 1024)
	if _, err := r.ReadAt(b, 1024); err != nil {
		return nil, fmt.Errorf("reading superblock: %w", err)
	}
	le := binary.LittleEndian
	if le.Uint16(b[0x38:]) != sbMagic {
		return nil, errors.New("reading superblock: not an ext2/3/4 filesystem")
	}
	sb := &Superblock{
		InodesCount:    le.Uint32(b[0x00:]),
		BlocksCount:    uint64(le.Uint32(b[0x04:])),
		FreeBlocks:     uint64(le.Uint32(b[0x0C:])),
		FreeInodes:     le.Uint32(b[0x10:]),
		FirstDataBlock: le.Uint32(b[0x14:]),
		BlockSize:      1024 << le.Uint32(b[0x18:]),
		BlocksPerGroup: le.Uint32(b[0x20:]),
		InodesPerGroup: le.Uint32(b[0x28:]),
		InodeSize:      le.Uint16(b[0x58:]),
		Incompat:       le.Uint32(b[0x60:]),
		RoCompat:       le.Uint32(b[0x64:]),
		DescSize:       32,
		ChecksumSeed:   le.Uint32(b[0x270:]),
	}
	copy(sb.UUID[:], b[0x68:0x78])
	if sb.Incompat&incompat64bit != 0 {
		sb.BlocksCount |= uint64(le.Uint32(b[0x150:])) << 32
		sb.FreeBlocks |= uint64(le.Uint32(b[0x158:])) << 32
		if ds := le.Uint16(b[0xFE:]); ds >= 32 {
			sb.DescSize = ds
		}
	}
	if sb.InodeSize == 0 {
		sb.InodeSize = 128
	}
	return sb, nil
}

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// crc32cRaw is the kernel's crc32c_le: no inversion on entry or exit.
func crc32cRaw(seed uint32, p []byte) uint32 {
	return ^crc32.Update(^seed, castagnoli, p)
}

// Normalize sets the change time and access time of every in-use inode of
// an ext4 image to its modification time (seconds and nanoseconds) and
// recomputes the inode checksum. mke2fs -d copies ctime and atime from the
// source tree, where they record when the tree was written and read, not
// what it holds; after this the image depends only on the tree's content
// and metadata. It returns the number of inodes rewritten.
func Normalize(image string) (int, error) {
	f, err := os.OpenFile(image, os.O_RDWR, 0)
	if err != nil {
		return 0, fmt.Errorf("normalizing inode times: %w", err)
	}
	n, err := normalize(f)
	if err != nil {
		f.Close()
		return n, fmt.Errorf("normalizing inode times of %s: %w", image, err)
	}
	if err := f.Close(); err != nil {
		return n, fmt.Errorf("normalizing inode times of %s: %w", image, err)
	}
	return n, nil
}

func normalize(f *os.File) (int, error) {
	sb, err := readSuperblock(f)
	if err != nil {
		return 0, err
	}
	le := binary.LittleEndian
	bs := int64(sb.BlockSize)
	csum := sb.RoCompat&roCompatMetaCsum != 0
	seed := sb.ChecksumSeed
	if sb.Incompat&incompatCsumSeed == 0 {
		seed = crc32cRaw(^uint32(0), sb.UUID[:])
	}
	groups := (sb.BlocksCount - uint64(sb.FirstDataBlock) + uint64(sb.BlocksPerGroup) - 1) / uint64(sb.BlocksPerGroup)
	gdtOff := (int64(sb.FirstDataBlock) + 1) * bs
	gdt := make([]byte, int64(groups)*int64(sb.DescSize))
	if _, err := f.ReadAt(gdt, gdtOff); err != nil {
		return 0, fmt.Errorf("reading group descriptors: %w", err)
	}
	isz := int64(sb.InodeSize)
	table := make([]byte, int64(sb.InodesPerGroup)*isz)
	bitmap := make([]byte, bs)
	count := 0
	for g := uint64(0); g < groups; g++ {
		d := gdt[int64(g)*int64(sb.DescSize):]
		if le.Uint16(d[0x12:])&bgInodeUninit != 0 {
			continue
		}
		ibm := uint64(le.Uint32(d[0x04:]))
		itab := uint64(le.Uint32(d[0x08:]))
		if sb.DescSize >= 64 {
			ibm |= uint64(le.Uint32(d[0x24:])) << 32
			itab |= uint64(le.Uint32(d[0x28:])) << 32
		}
		if _, err := f.ReadAt(bitmap, int64(ibm)*bs); err != nil {
			return count, fmt.Errorf("reading inode bitmap of group %d: %w", g, err)
		}
		if _, err := f.ReadAt(table, int64(itab)*bs); err != nil {
			return count, fmt.Errorf("reading inode table of group %d: %w", g, err)
		}
		dirty := false
		for i := uint32(0); i < sb.InodesPerGroup; i++ {
			if bitmap[i/8]&(1<<(i%8)) == 0 {
				continue
			}
			ino := table[int64(i)*isz : int64(i+1)*isz]
			if le.Uint16(ino[0x00:]) == 0 && le.Uint16(ino[0x1A:]) == 0 {
				continue // reserved but unused (no mode, no links)
			}
			if !setTimes(ino) {
				continue
			}
			if csum {
				inum := uint32(g)*sb.InodesPerGroup + i + 1
				inodeChecksum(ino, seed, inum)
			}
			dirty = true
			count++
		}
		if dirty {
			if _, err := f.WriteAt(table, int64(itab)*bs); err != nil {
				return count, fmt.Errorf("writing inode table of group %d: %w", g, err)
			}
		}
	}
	return count, nil
}

// Inode field offsets.
const (
	offAtime      = 0x08
	offCtime      = 0x0C
	offMtime      = 0x10
	offGeneration = 0x64
	offCsumLo     = 0x7C
	offExtraIsize = 0x80
	offCsumHi     = 0x82
	offCtimeExtra = 0x84
	offMtimeExtra = 0x88
	offAtimeExtra = 0x8C
)

// setTimes sets ctime and atime to mtime; it reports whether anything
// changed.
func setTimes(ino []byte) bool {
	le := binary.LittleEndian
	changed := false
	set := func(off int, v uint32) {
		if le.Uint32(ino[off:]) != v {
			le.PutUint32(ino[off:], v)
			changed = true
		}
	}
	m := le.Uint32(ino[offMtime:])
	set(offCtime, m)
	set(offAtime, m)
	if len(ino) > 128 {
		extra := int(le.Uint16(ino[offExtraIsize:]))
		has := func(off int) bool { return 128+extra >= off+4 && len(ino) >= off+4 }
		if has(offMtimeExtra) {
			me := le.Uint32(ino[offMtimeExtra:])
			if has(offCtimeExtra) {
				set(offCtimeExtra, me)
			}
			if has(offAtimeExtra) {
				set(offAtimeExtra, me)
			}
		}
	}
	return changed
}

// inodeChecksum recomputes an inode's metadata_csum checksum in place
// (the kernel's ext4_inode_csum_set).
func inodeChecksum(ino []byte, seed, inum uint32) {
	le := binary.LittleEndian
	var w [4]byte
	le.PutUint32(w[:], inum)
	c := crc32cRaw(seed, w[:])
	le.PutUint32(w[:], le.Uint32(ino[offGeneration:]))
	c = crc32cRaw(c, w[:])
	hasHi := false
	if len(ino) > 128 {
		extra := int(le.Uint16(ino[offExtraIsize:]))
		hasHi = 128+extra >= offCsumHi+2
	}
	buf := make([]byte, len(ino))
	copy(buf, ino)
	buf[offCsumLo], buf[offCsumLo+1] = 0, 0
	if hasHi {
		buf[offCsumHi], buf[offCsumHi+1] = 0, 0
	}
	c = crc32cRaw(c, buf)
	le.PutUint16(ino[offCsumLo:], uint16(c))
	if hasHi {
		le.PutUint16(ino[offCsumHi:], uint16(c>>16))
	}
}
