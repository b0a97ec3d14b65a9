package quiesce

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/stasisbackup/stasis/cmd/zoomsim/zdb"
	"github.com/stasisbackup/stasis/internal/loopfs"
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

func TestReflinkOnXFSOrBtrfs(t *testing.T) {
	mnt := loopfs.Reflink(t, "reflink test", 256<<20)
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

// Copy mode makes a copy even where the kernel could clone: staged on the
// data's own XFS or btrfs, the copy shares no extent with the database
// (a clone would make the service's later writes copy-on-write, and the
// database would fragment as with reflink mode).
func TestCopyModeSharesNoExtentOnReflinkFilesystems(t *testing.T) {
	mnt := loopfs.Reflink(t, "copy on a reflink filesystem test", 256<<20)
	if _, err := exec.LookPath("filefrag"); err != nil {
		t.Skip("needs filefrag (Debian package e2fsprogs)")
	}
	data := filepath.Join(mnt, "svc")
	os.Mkdir(data, 0o755)
	db := filepath.Join(data, "pages.db")
	page := bytes.Repeat([]byte{0x5a}, 1<<20)
	if err := os.WriteFile(db, bytes.Repeat(page, 16), 0o644); err != nil {
		t.Fatal(err)
	}
	exec.Command("sync").Run()
	var flags string
	_, err := Run(context.Background(), Options{Paths: []string{data}, Freeze: FreezeCopy, Staging: filepath.Join(mnt, "staging")},
		func(ctx context.Context, s *Stage) error {
			out, err := exec.Command("filefrag", "-v", s.Path(db)).CombinedOutput()
			flags = string(out)
			return err
		})
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(flags, "shared") {
		t.Errorf("the staged copy shares extents with the database:\n%s", flags)
	}
}
