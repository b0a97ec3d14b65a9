package quiesce

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// btrfs is the snapshot backend for btrfs: a read-only snapshot of the
// subvolume holding the quiesced files (BTRFS_IOC_SNAP_CREATE_V2 with
// BTRFS_SUBVOL_RDONLY), made inside that subvolume, in its snapshot
// directory, and removed with BTRFS_IOC_SNAP_DESTROY. A snapshot of a
// subvolume does not contain the subvolumes nested in it (they appear as
// empty directories), so files of a nested subvolume get a snapshot of their
// own. Creating and removing needs CAP_SYS_ADMIN (root), or for removal
// the mount option user_subvol_rm_allowed.
type btrfs struct{}

var _ SnapshotBackend = btrfs{}

func init() { registerSnapshotBackend(btrfs{}) }

// btrfs ioctl ABI (linux/btrfs.h); golang.org/x/sys/unix has none of it.
const (
	btrfsFirstFreeObjectID = 256 // inode of every subvolume's root directory
	btrfsSubvolRdonly      = 1 << 1
	btrfsPathNameMax       = 4087
	btrfsSubvolNameMax     = 4039
	// _IOW(0x94, 23, struct btrfs_ioctl_vol_args_v2), _IOW(0x94, 15, struct btrfs_ioctl_vol_args); both 4096 bytes.
	btrfsIocSnapCreateV2 = 0x50009417
	btrfsIocSnapDestroy  = 0x5000940f
)

// btrfsVolArgsV2 is struct btrfs_ioctl_vol_args_v2.
type btrfsVolArgsV2 struct {
	Fd      int64
	Transid uint64
	Flags   uint64
	Unused  [4]uint64 // union { size, qgroup_inherit; unused[4] }
	Name    [btrfsSubvolNameMax + 1]byte
}

// btrfsVolArgs is struct btrfs_ioctl_vol_args.
type btrfsVolArgs struct {
	Fd   int64
	Name [btrfsPathNameMax + 1]byte
}

func init() {
	if unsafe.Sizeof(btrfsVolArgsV2{}) != 4096 || unsafe.Sizeof(btrfsVolArgs{}) != 4096 {
		panic("quiesce: btrfs ioctl argument layout")
	}
}

func (btrfs) Name() string { return "btrfs" }

// Detect returns the root of the subvolume holding path: the nearest
// directory at or above it with inode 256 on the same device (every
// subvolume has a device number of its own).
func (btrfs) Detect(path string) (string, error) {
	var fs unix.Statfs_t
	if err := unix.Statfs(path, &fs); err != nil {
		return "", fmt.Errorf("btrfs: %s: %w", path, err)
	}
	if fs.Type != unix.BTRFS_SUPER_MAGIC {
		return "", noBackend("%s is on %s, not btrfs", path, FSName(fs.Type))
	}
	var st syscall.Stat_t
	if err := syscall.Lstat(path, &st); err != nil {
		return "", fmt.Errorf("btrfs: %s: %w", path, err)
	}
	dev := st.Dev
	p := filepath.Clean(path)
	for {
		if st.Ino == btrfsFirstFreeObjectID && st.Mode&syscall.S_IFMT == syscall.S_IFDIR {
			return p, nil
		}
		up := filepath.Dir(p)
		if up == p {
			break
		}
		if err := syscall.Lstat(up, &st); err != nil {
			return "", fmt.Errorf("btrfs: find the subvolume of %s: %w", path, err)
		}
		if st.Dev != dev {
			break // left the subvolume without meeting its root (a bind mount of a directory)
		}
		p = up
	}
	return "", noBackend("%s is on btrfs, but the root of its subvolume is not reachable from it (a bind mount?): back up the path through a mount of the subvolume", path)
}

// Create snapshots the subvolume volume read-only as dest.
func (btrfs) Create(ctx context.Context, volume, dest string) (string, error) {
	name := filepath.Base(dest)
	if len(name) > btrfsSubvolNameMax {
		return "", fmt.Errorf("btrfs: snapshot name %s is too long", name)
	}
	src, err := os.Open(volume)
	if err != nil {
		return "", fmt.Errorf("btrfs: snapshot %s: %w", volume, err)
	}
	defer src.Close()
	dir, err := os.Open(filepath.Dir(dest))
	if err != nil {
		return "", fmt.Errorf("btrfs: snapshot %s: %w", volume, err)
	}
	defer dir.Close()
	args := &btrfsVolArgsV2{Fd: int64(src.Fd()), Flags: btrfsSubvolRdonly}
	copy(args.Name[:], name)
	if _, _, e := unix.Syscall(unix.SYS_IOCTL, dir.Fd(), btrfsIocSnapCreateV2, uintptr(unsafe.Pointer(args))); e != 0 {
		return "", fmt.Errorf("btrfs: snapshot subvolume %s as %s: %w", volume, dest, e)
	}
	return dest, nil
}

// Remove deletes the snapshot dest.
func (btrfs) Remove(ctx context.Context, volume, dest string) error {
	dir, err := os.Open(filepath.Dir(dest))
	if err != nil {
		return fmt.Errorf("btrfs: remove snapshot %s: %w", dest, err)
	}
	defer dir.Close()
	args := &btrfsVolArgs{}
	copy(args.Name[:], filepath.Base(dest))
	if _, _, e := unix.Syscall(unix.SYS_IOCTL, dir.Fd(), btrfsIocSnapDestroy, uintptr(unsafe.Pointer(args))); e != 0 {
		return fmt.Errorf("btrfs: remove snapshot %s: %w", dest, e)
	}
	return nil
}

// FindLeftovers lists the subvolumes in dir whose names are stasis's.
func (btrfs) FindLeftovers(volume, dir string) ([]string, error) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("btrfs: look for leftover snapshots in %s: %w", dir, err)
	}
	var out []string
	for _, e := range ents {
		if !e.IsDir() || !strings.HasPrefix(e.Name(), snapshotPrefix) {
			continue
		}
		p := filepath.Join(dir, e.Name())
		var st syscall.Stat_t
		if syscall.Lstat(p, &st) == nil && st.Ino == btrfsFirstFreeObjectID {
			out = append(out, p)
		}
	}
	return out, nil
}
