// Package ext4 builds ext4 filesystem images from a directory with
// `mkfs.ext4 -d` (e2fsprogs): no loop mount and no mount privileges, and the
// owners, modes, symlinks, device nodes, hard links and extended attributes
// of the tree are copied as they are.
//
// Sizing: the tree is measured first (data blocks, directory blocks,
// inodes, extended attributes), the filesystem overhead (journal, inode
// tables, bitmaps, superblock backups, reserved GDT blocks) is added for that
// size, and then the requested free space. If mkfs.ext4 still runs out of
// space, or the result has less free space than asked for, the image is made
// again a little larger. This is tighter than making a large image and
// shrinking it with `resize2fs -M`.
//
// Reproducibility: the same tree gives the same bytes. mke2fs runs with a
// configuration of its own (not the host's /etc/mke2fs.conf), a UUID and
// directory hash seed derived from Options.Seed, and E2FSPROGS_FAKE_TIME set
// to Options.Epoch; it adds entries in sorted order. What mke2fs copies from
// the host and no caller controls, the inode change time (ctime) and the
// access time, is normalized afterwards: both are set to the inode's
// modification time, and the inode checksum is recomputed (Normalize).
package ext4

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/volantvm/volant/lib/apierr"
)

const (
	// InodeSize of the images made here (room for nanosecond times and
	// small extended attributes inside the inode).
	InodeSize = 256
	// SmallLimit is the size below which images get 1 KiB blocks, as
	// mke2fs itself chooses for "small" filesystems: a tree of small files
	// wastes less of them. Larger images get 4 KiB blocks.
	SmallLimit = 512 << 20
	// MinAutoBuffer is the least free space an automatically sized image
	// gets.
	MinAutoBuffer = 8 << 20
	// maxAttempts bounds the grow-and-retry loop.
	maxAttempts = 4
)

// mke2fsConf is the configuration mke2fs runs with, so images do not depend
// on the host's /etc/mke2fs.conf. It is Debian 12's ext4 stanza.
const mke2fsConf = `[defaults]
	base_features = sparse_super,large_file,filetype,resize_inode,dir_index,ext_attr
	default_mntopts = acl,user_xattr
	enable_periodic_fsck = 0
	blocksize = 4096
	inode_size = 256
	inode_ratio = 16384

[fs_types]
	ext4 = {
		features = has_journal,extent,huge_file,flex_bg,metadata_csum,64bit,dir_nlink,extra_isize
	}
`

// Options tune an image.
type Options struct {
	// FreeBytes is the free space the image must have beyond its content;
	// 0 means automatic: a tenth of the content, at least MinAutoBuffer.
	FreeBytes int64
	// Label is the volume label (at most 16 bytes).
	Label string
	// Seed derives the filesystem UUID and directory hash seed; equal seeds
	// give equal UUIDs. Use something that identifies the content (an image
	// digest and the build's inputs).
	Seed string
	// BlockSize is 1024 or 4096; 0 picks 1024 for images under
	// SmallLimit and 4096 otherwise.
	BlockSize int
	// Epoch is the time (Unix seconds, > 0) mke2fs stamps into the
	// superblock and new inodes; 0 uses 1.
	Epoch int64
	// Logger receives progress details; nil discards.
	Logger *slog.Logger
}

// Result describes a made image.
type Result struct {
	BlockSize    int    `json:"block_size"`
	SizeBytes    int64  `json:"size_bytes"`
	ContentBytes int64  `json:"content_bytes"`
	FreeBytes    int64  `json:"free_bytes"`
	Inodes       uint32 `json:"inodes"`
	FreeInodes   uint32 `json:"free_inodes"`
	UUID         string `json:"uuid"`
	Attempts     int    `json:"attempts"`
	// NormalizedInodes counts the inodes whose times were normalized.
	NormalizedInodes int `json:"normalized_inodes"`
}

// Usage is what a tree needs, measured by Measure for both block sizes.
type Usage struct {
	// Inodes used by the tree (hard links count once), the root included.
	Inodes int64
	// Files, Dirs, Symlinks, Others count entries by kind.
	Files, Dirs, Symlinks, Others int64

	blocks1k, blocks4k int64
}

// Blocks is the number of bs-sized blocks of file data, directories, long
// symlinks and xattr blocks.
func (u Usage) Blocks(bs int) int64 {
	if bs == 1024 {
		return u.blocks1k
	}
	return u.blocks4k
}

// Bytes is the content size in bytes with bs-sized blocks.
func (u Usage) Bytes(bs int) int64 { return u.Blocks(bs) * int64(bs) }

func (u *Usage) add(bytes int64) {
	u.blocks1k += blocks(bytes, 1024)
	u.blocks4k += blocks(bytes, 4096)
}

// Measure walks dir (without following symlinks) and adds up what its
// content needs on ext4 with 1 KiB and with 4 KiB blocks.
func Measure(dir string) (Usage, error) {
	var u Usage
	seen := map[[2]uint64]bool{}
	dirBytes := map[string]int64{}
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if p != dir {
			// The entry's record in its parent directory: 8 bytes of header
			// plus the name, padded to 4.
			dirBytes[filepath.Dir(p)] += 8 + int64((len(d.Name())+3)&^3)
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		st, ok := info.Sys().(*syscall.Stat_t)
		if !ok {
			return fmt.Errorf("stat %s: no Unix metadata", p)
		}
		if st.Nlink > 1 && !info.IsDir() {
			key := [2]uint64{st.Dev, st.Ino}
			if seen[key] {
				return nil
			}
			seen[key] = true
		}
		u.Inodes++
		switch {
		case info.Mode().IsRegular():
			u.Files++
			u.add(info.Size())
			// An extent maps at most 32768 blocks and the inode holds
			// four; beyond that extent tree blocks are needed.
			u.blocks1k += extentBlocks(blocks(info.Size(), 1024))
			u.blocks4k += extentBlocks(blocks(info.Size(), 4096))
		case info.IsDir():
			u.Dirs++
			dirBytes[p] += 12 + 12 // "." and ".."
		case info.Mode()&fs.ModeSymlink != 0:
			u.Symlinks++
			// Targets shorter than 60 bytes live in the inode.
			if info.Size() >= 60 {
				u.add(1)
			}
		default:
			u.Others++
		}
		x, err := xattrBytes(p)
		if err != nil {
			return err
		}
		// About 100 bytes fit in a 256-byte inode; more take a block.
		if x > 96 {
			u.add(x)
		}
		return nil
	})
	if err != nil {
		return u, fmt.Errorf("measuring %s: %w", dir, err)
	}
	for _, n := range dirBytes {
		// 12 bytes of each block hold the checksum tail; a directory of
		// more than one block gets an htree index block.
		for _, bs := range []int64{1024, 4096} {
			b := (n + bs - 12 - 1) / (bs - 12)
			if b > 1 {
				b += 1 + b/(bs/8) // index root, and index blocks for huge dirs
			}
			if bs == 1024 {
				u.blocks1k += b
			} else {
				u.blocks4k += b
			}
		}
	}
	return u, nil
}

func blocks(n, bs int64) int64 { return (n + bs - 1) / bs }

// extentBlocks is the extent tree blocks a file of n blocks needs when its
// extents are contiguous runs of at most 32768 blocks.
func extentBlocks(n int64) int64 {
	if n <= 4*32768 {
		return 0
	}
	return 1 + n/(32768*340)
}

// xattrBytes is the on-disk size of p's extended attributes (entry headers,
// names and values, padded).
func xattrBytes(p string) (int64, error) {
	sz, err := unix.Llistxattr(p, nil)
	if err != nil {
		if errors.Is(err, unix.ENOTSUP) || errors.Is(err, unix.EOPNOTSUPP) {
			return 0, nil
		}
		return 0, fmt.Errorf("listing xattrs of %s: %w", p, err)
	}
	if sz == 0 {
		return 0, nil
	}
	buf := make([]byte, sz)
	sz, err = unix.Llistxattr(p, buf)
	if err != nil {
		return 0, fmt.Errorf("listing xattrs of %s: %w", p, err)
	}
	var total int64
	for _, name := range bytes.Split(buf[:sz], []byte{0}) {
		if len(name) == 0 {
			continue
		}
		v, err := unix.Lgetxattr(p, string(name), nil)
		if err != nil {
			continue
		}
		total += 16 + int64((len(name)+3)&^3) + int64((v+3)&^3)
	}
	return total, nil
}

// journalBlocks is mke2fs's default journal size for a filesystem of n
// blocks (ext2fs_default_journal_size).
func journalBlocks(n int64) int64 {
	switch {
	case n < 2048:
		return 0
	case n < 32768:
		return 1024
	case n < 256*1024:
		return 4096
	case n < 512*1024:
		return 8192
	case n < 4096*1024:
		return 16384
	case n < 8192*1024:
		return 32768
	case n < 16384*1024:
		return 65536
	case n < 32768*1024:
		return 131072
	}
	return 262144
}

// overheadBlocks estimates the metadata of an n-block filesystem with
// block size bs and the given inode count: per-group bitmaps and inode
// tables, superblock and descriptor backups (sparse_super), reserved GDT
// blocks, the journal, the root directory and lost+found.
func overheadBlocks(n, inodes, bs int64) int64 {
	perGroup := 8 * bs // blocks per group
	groups := (n + perGroup - 1) / perGroup
	descPerBlock := bs / 64
	gdt := (groups + descPerBlock - 1) / descPerBlock
	// Reserved GDT blocks let the filesystem grow 1024-fold (capped).
	rsv := ((min(n*1024, 1<<32)+perGroup-1)/perGroup + descPerBlock - 1) / descPerBlock
	rsv = min(max(rsv-gdt, 0), bs/4)
	backups := int64(0)
	for g := int64(0); g < groups; g++ {
		if hasSuperBackup(g) {
			backups++
		}
	}
	itable := (inodes*InodeSize + bs - 1) / bs
	lostFound := max(16384/bs, 2)
	first := int64(0)
	if bs == 1024 {
		first = 1 // block 0 holds the boot sector
	}
	return first + groups*2 + itable + backups*(1+gdt+rsv) + journalBlocks(n) + 1 /* resize inode */ + lostFound + 1 /* root */
}

func hasSuperBackup(g int64) bool {
	if g <= 1 {
		return true
	}
	for _, b := range []int64{3, 5, 7} {
		p := b
		for p < g {
			p *= b
		}
		if p == g {
			return true
		}
	}
	return false
}

// Plan is the geometry chosen for a tree.
type Plan struct {
	BlockSize int
	Blocks    int64
	Inodes    int64
}

// Bytes is the planned image size.
func (p Plan) Bytes() int64 { return p.Blocks * int64(p.BlockSize) }

// PlanFor sizes an image for u with free bytes of free space, with block
// size bs (0: 1024 when the image stays under SmallLimit, else 4096).
func PlanFor(u Usage, free int64, bs int) Plan {
	if bs == 0 {
		if p := PlanFor(u, free, 1024); p.Bytes() < SmallLimit {
			return p
		}
		return PlanFor(u, free, 4096)
	}
	b := int64(bs)
	inodes := u.Inodes + u.Inodes/10 + 64
	want := u.Blocks(bs) + blocks(free, b)
	n := want
	// The overhead depends on the size; iterate to a fixed point.
	for i := 0; i < 8; i++ {
		next := want + overheadBlocks(n, inodes, b)
		if next <= n {
			break
		}
		n = next
	}
	// Round up to a whole MiB.
	perMiB := (1 << 20) / b
	n = (n + perMiB - 1) / perMiB * perMiB
	return Plan{BlockSize: bs, Blocks: n, Inodes: inodes}
}

// AutoFree is the automatic free space for content of the given size.
func AutoFree(content int64) int64 { return max(content/10, MinAutoBuffer) }

// Make builds image from dir. An existing image is truncated and written in
// place, not replaced: a caller holding it open (a renameio pending file)
// still holds the image.
func Make(ctx context.Context, dir, image string, o Options) (*Result, error) {
	log := o.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	mkfs, err := findMkfs()
	if err != nil {
		return nil, err
	}
	u, err := Measure(dir)
	if err != nil {
		return nil, err
	}
	free := o.FreeBytes
	if free <= 0 {
		free = AutoFree(u.Bytes(4096))
	}
	if o.BlockSize != 0 && o.BlockSize != 1024 && o.BlockSize != 4096 {
		return nil, fmt.Errorf("ext4: block size %d is not 1024 or 4096", o.BlockSize)
	}
	plan := PlanFor(u, free, o.BlockSize)
	bs := int64(plan.BlockSize)
	epoch := o.Epoch
	if epoch <= 0 {
		epoch = 1
	}
	uuid := uuidFrom(o.Seed, "uuid")
	hashSeed := uuidFrom(o.Seed, "hash_seed")

	conf, err := os.CreateTemp("", "fledge-mke2fs-*.conf")
	if err != nil {
		return nil, fmt.Errorf("writing mke2fs configuration: %w", err)
	}
	defer os.Remove(conf.Name())
	if _, err := conf.WriteString(mke2fsConf); err != nil {
		conf.Close()
		return nil, fmt.Errorf("writing mke2fs configuration: %w", err)
	}
	if err := conf.Close(); err != nil {
		return nil, fmt.Errorf("writing mke2fs configuration: %w", err)
	}

	res := &Result{BlockSize: plan.BlockSize, ContentBytes: u.Bytes(plan.BlockSize), UUID: uuid}
	for attempt := 1; ; attempt++ {
		res.Attempts = attempt
		log.Debug("mkfs.ext4", "attempt", attempt, "block_size", bs, "blocks", plan.Blocks, "inodes", plan.Inodes, "content_blocks", u.Blocks(plan.BlockSize))
		if err := os.Truncate(image, 0); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("truncating %s: %w", image, err)
		}
		args := []string{
			"-q", "-F", "-t", "ext4", "-b", strconv.Itoa(plan.BlockSize), "-I", strconv.Itoa(InodeSize),
			"-N", strconv.FormatInt(plan.Inodes, 10), "-m", "0",
			"-U", uuid, "-E", "hash_seed=" + hashSeed + ",root_owner=0:0",
			"-d", dir,
		}
		if o.Label != "" {
			args = append(args, "-L", o.Label)
		}
		args = append(args, image, strconv.FormatInt(plan.Bytes()/1024, 10)+"k")
		cmd := exec.CommandContext(ctx, mkfs, args...)
		cmd.Env = append(os.Environ(), "MKE2FS_CONFIG="+conf.Name(), "E2FSPROGS_FAKE_TIME="+strconv.FormatInt(epoch, 10))
		out, err := cmd.CombinedOutput()
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		if err != nil {
			msg := strings.TrimSpace(string(out))
			if noSpace(msg) && attempt < maxAttempts {
				plan.Blocks += plan.Blocks/8 + (1<<20)/bs
				plan.Inodes += plan.Inodes / 8
				continue
			}
			return nil, fmt.Errorf("mkfs.ext4 %s: %w: %s", image, err, msg)
		}
		sb, err := ReadSuperblock(image)
		if err != nil {
			return nil, err
		}
		if int64(sb.FreeBlocks)*bs < free*9/10 && attempt < maxAttempts {
			// Our estimate was short: grow by what is missing.
			plan.Blocks += blocks(free-int64(sb.FreeBlocks)*bs, bs) + (1<<20)/bs
			continue
		}
		n, err := Normalize(image)
		if err != nil {
			return nil, err
		}
		res.NormalizedInodes = n
		res.SizeBytes = int64(sb.BlocksCount) * bs
		res.FreeBytes = int64(sb.FreeBlocks) * bs
		res.Inodes = sb.InodesCount
		res.FreeInodes = sb.FreeInodes
		return res, nil
	}
}

func noSpace(msg string) bool {
	m := strings.ToLower(msg)
	return strings.Contains(m, "could not allocate") || strings.Contains(m, "no space left") ||
		strings.Contains(m, "no free space") || strings.Contains(m, "inodes") && strings.Contains(m, "allocat")
}

// uuidFrom derives a version-4-shaped UUID from seed and purpose.
func uuidFrom(seed, purpose string) string {
	h := sha256.Sum256([]byte("fledge-ext4\x00" + purpose + "\x00" + seed))
	h[6] = h[6]&0x0f | 0x40
	h[8] = h[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", h[0:4], h[4:6], h[6:8], h[8:10], h[10:16])
}

// findMkfs finds mkfs.ext4, also in the sbin directories a non-root PATH
// may lack.
func findMkfs() (string, error) {
	if p, err := exec.LookPath("mkfs.ext4"); err == nil {
		return p, nil
	}
	for _, p := range []string{"/usr/sbin/mkfs.ext4", "/sbin/mkfs.ext4"} {
		if _, err := os.Stat(p); err == nil {
			return p, nil
		}
	}
	return "", apierr.New(apierr.Unavailable, "mkfs.ext4 not found").
		With("hint", "install e2fsprogs (apt-get install e2fsprogs)")
}
