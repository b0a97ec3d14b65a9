package quiesce

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/stasisbackup/stasis/cmd/zoomsim/zdb"
)

// canClone reports whether the filesystem holding dir is one where FICLONE
// is expected to work (XFS, btrfs).
func canClone(t *testing.T, dir string) bool {
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		t.Fatal(err)
	}
	return st.Type == unix.XFS_SUPER_MAGIC || st.Type == unix.BTRFS_SUPER_MAGIC
}

// loopFS makes and mounts an XFS (or else btrfs) image through a loop device
// and returns the mount point; it skips when not root or the tools are missing.
func loopFS(t *testing.T) string {
	if os.Geteuid() != 0 {
		t.Skip("reflink test needs root to mount a loop device")
	}
	var mkfs []string
	var size int64
	switch {
	case lookPath("mkfs.xfs"):
		mkfs, size = []string{"mkfs.xfs", "-q", "-f", "-m", "reflink=1"}, 320<<20
	case lookPath("mkfs.btrfs"):
		mkfs, size = []string{"mkfs.btrfs", "-q", "-f"}, 256<<20
	default:
		t.Skip("reflink test needs mkfs.xfs (Debian xfsprogs) or mkfs.btrfs (btrfs-progs)")
	}
	tmp := t.TempDir()
	img, mnt := filepath.Join(tmp, "fs.img"), filepath.Join(tmp, "mnt")
	os.Mkdir(mnt, 0o755)
	f, err := os.Create(img)
	if err != nil {
		t.Fatal(err)
	}
	f.Truncate(size)
	f.Close()
	if out, err := exec.Command(mkfs[0], append(mkfs[1:], img)...).CombinedOutput(); err != nil {
		t.Skipf("%s failed: %v: %s", mkfs[0], err, out)
	}
	if out, err := exec.Command("mount", "-o", "loop", img, mnt).CombinedOutput(); err != nil {
		t.Skipf("cannot mount a loop device here: %v: %s", err, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command("umount", mnt).CombinedOutput(); err != nil {
			t.Errorf("umount %s: %v: %s", mnt, err, out)
		}
	})
	return mnt
}

func lookPath(name string) bool {
	_, err := exec.LookPath(name)
	return err == nil
}

func TestReflinkOnXFSOrBtrfs(t *testing.T) {
	mnt := loopFS(t)
	data := filepath.Join(mnt, "zoomserv")
	os.Mkdir(data, 0o755)
	e := setup(t, data, "--close-on-pause")
	e.opts.Freeze = FreezeReflink
	e.opts.Staging = mnt // same filesystem: cloning works
	rep, err := Run(context.Background(), e.opts, func(ctx context.Context, s *Stage) error {
		e.wantState(t, "running")
		if s.Freeze != FreezeReflink || s.Path(e.db) == e.db {
			t.Errorf("stage mode %s, db at %s", s.Freeze, s.Path(e.db))
		}
		return zdb.Check(s.Path(e.db))
	})
	if err != nil {
		t.Fatal(err)
	}
	if rep.Freeze != FreezeReflink || len(rep.Warnings) != 0 {
		t.Fatalf("report %+v: want reflink without warnings", rep)
	}
	e.wantState(t, "running")
}

func TestReflinkFallsBackToCopy(t *testing.T) {
	e := setup(t, "", "--close-on-pause")
	if canClone(t, e.dir) {
		t.Skipf("%s is on a filesystem that can clone; the fallback needs ext4 or tmpfs", e.dir)
	}
	e.opts.Freeze = FreezeReflink
	e.opts.Staging = t.TempDir()
	rep, err := Run(context.Background(), e.opts, func(ctx context.Context, s *Stage) error {
		if s.Freeze != FreezeCopy {
			t.Errorf("stage mode %s, want copy", s.Freeze)
		}
		return zdb.Check(s.Path(e.db))
	})
	if err != nil {
		t.Fatal(err)
	}
	if rep.FreezeRequested != FreezeReflink || rep.Freeze != FreezeCopy || len(rep.Warnings) != 1 ||
		!strings.Contains(rep.Warnings[0], "falling back to copy") {
		t.Fatalf("report %+v: want copy with one fallback warning", rep)
	}
	e.wantState(t, "running")
}
