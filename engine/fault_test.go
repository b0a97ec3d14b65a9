package engine_test

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stasisbackup/stasis/engine"
	"github.com/stasisbackup/stasis/repo"
	"github.com/stasisbackup/stasis/repo/backend"
)

// TestStorageFaults backs up through a file system that fails in one way
// each time: the backup fails with an error naming what failed, the earlier
// snapshot stays restorable, check finds no damage, and the next backup
// (without faults) succeeds.
func TestStorageFaults(t *testing.T) {
	cases := []struct {
		name  string
		fault backend.Fault
		want  string // in the error
	}{
		{"write error", backend.Fault{Op: backend.OpWrite, Name: "tmp/pack-*", Skip: 30 << 10, Err: syscall.EIO}, "input/output error"},
		{"ENOSPC mid-pack", backend.Fault{Op: backend.OpWrite, Name: "tmp/pack-*", Skip: 100 << 10, Err: syscall.ENOSPC}, "no space left on device"},
		{"short write", backend.Fault{Op: backend.OpWrite, Name: "tmp/pack-*", Skip: 20 << 10, Short: true}, "short write"},
		{"fsync failure", backend.Fault{Op: backend.OpSync, Name: "tmp/pack-*", Skip: 1, Err: syscall.EIO}, "fsync"},
		{"failed rename of a pack", backend.Fault{Op: backend.OpRename, Name: "packs/*/*", Skip: 1, Err: syscall.EXDEV}, "rename pack"},
		{"failed rename of the snapshot", backend.Fault{Op: backend.OpRename, Name: "snapshots/*", Err: syscall.EIO}, "rename snapshots/"},
		{"snapshot fsync failure", backend.Fault{Op: backend.OpSync, Name: "tmp/write-*", Err: syscall.EIO}, "fsync snapshots/"},
	}
	for i, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			f := newFixture(t, int64(100+i))
			f.mutate()
			first, want := f.backup()
			f.mutate()
			f.mutate()

			f.r.Close()
			f.r = nil
			faulty := backend.NewFaulty(backend.OS{Dir: f.dir})
			faulty.Inject(c.fault)
			o := f.opts
			o.FS = faulty
			r, err := repo.Open(ctx, f.dir, o)
			if err != nil {
				t.Fatal(err)
			}
			f.r = r
			f.now = f.now.Add(time.Hour)
			now := f.now
			_, err = engine.Backup(ctx, r, engine.BackupOptions{Paths: []string{f.src}, Host: "h", Now: func() time.Time { return now }})
			if faulty.Hits() == 0 {
				t.Fatalf("the fault was never injected (backup: %v)", err)
			}
			if err == nil {
				t.Fatal("backup succeeded although storage failed")
			}
			if !strings.Contains(err.Error(), c.want) {
				t.Errorf("error %q does not say %q", err, c.want)
			}
			list, _, _ := r.Snapshots(ctx)
			if len(list) != 1 || list[0].ID != first.ID {
				t.Fatalf("after the failed backup the repository lists %d snapshots, want only the first", len(list))
			}
			faulty.Reset()
			f.reopen()
			rep, err := engine.Check(ctx, f.r, engine.CheckOptions{ReadData: true})
			if err != nil || !rep.OK() {
				t.Fatalf("check after the fault: %v %v", err, rep.Errors)
			}
			f.verify(first.ID, want)
			sn, want2 := f.backup()
			f.verify(sn.ID, want2)
			if _, err := engine.Prune(ctx, f.r, engine.PruneOptions{}); err != nil {
				t.Fatalf("prune after the fault: %v", err)
			}
			rep, _ = engine.Check(ctx, f.r, engine.CheckOptions{})
			if len(rep.Warnings) > 0 {
				t.Errorf("leftovers after prune: %v", rep.Warnings)
			}
		})
	}
}

func TestFaultyWrapper(t *testing.T) {
	dir := t.TempDir()
	os.Mkdir(filepath.Join(dir, "tmp"), 0o700)
	fs := backend.NewFaulty(backend.OS{Dir: dir})
	fs.Inject(backend.Fault{Op: backend.OpWrite, Skip: 10, Err: syscall.ENOSPC})
	f, err := fs.CreateTemp("tmp", "x-*")
	if err != nil {
		t.Fatal(err)
	}
	n, err := f.Write(make([]byte, 8))
	if n != 8 || err != nil {
		t.Fatalf("first write: %d, %v", n, err)
	}
	n, err = f.Write(make([]byte, 8))
	if n != 2 || !errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("write over the limit: %d, %v; want 2, ENOSPC", n, err)
	}
	f.Close()
	data, _ := os.ReadFile(filepath.Join(dir, f.Name()))
	if len(data) != 10 {
		t.Fatalf("file holds %d bytes, want 10", len(data))
	}
	fs.Inject(backend.Fault{Op: backend.OpRename, Name: "b", Times: 1})
	if err := fs.Rename(f.Name(), "b"); !errors.Is(err, backend.ErrInjected) {
		t.Fatalf("rename: %v, want ErrInjected", err)
	}
	if err := fs.Rename(f.Name(), "b"); err != nil {
		t.Fatalf("second rename (Times 1): %v", err)
	}
	if fs.Hits() != 2 {
		t.Fatalf("%d hits, want 2", fs.Hits())
	}
}
