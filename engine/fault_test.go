package engine_test

import (
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stasisbackup/stasis/engine"
	"github.com/stasisbackup/stasis/internal/backendtest"
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
		fault backendtest.Fault
		want  string // in the error
	}{
		{"pack upload error", backendtest.Fault{Op: backendtest.OpPut, Name: "packs/*/*", Err: syscall.EIO}, "input/output error"},
		{"ENOSPC on the second pack", backendtest.Fault{Op: backendtest.OpPut, Name: "packs/*/*", Skip: 1, Err: syscall.ENOSPC}, "no space left on device"},
		{"torn pack upload", backendtest.Fault{Op: backendtest.OpPut, Name: "packs/*/*", Skip: 1, Torn: true}, "injected fault"},
		{"pack stored but the reply lost", backendtest.Fault{Op: backendtest.OpPut, Name: "packs/*/*", Committed: true}, "injected fault"},
		{"index file upload error", backendtest.Fault{Op: backendtest.OpPut, Name: "index/*", Err: syscall.EIO}, "write index file"},
		{"snapshot upload error", backendtest.Fault{Op: backendtest.OpPut, Name: "snapshots/*", Err: syscall.EIO}, "save snapshot"},
		{"torn snapshot upload", backendtest.Fault{Op: backendtest.OpPut, Name: "snapshots/*", Torn: true}, "save snapshot"},
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
			faulty := backendtest.NewFaulty(backend.NewLocal(f.dir))
			faulty.Inject(c.fault)
			r, err := repo.Open(ctx, faulty, f.opts)
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
