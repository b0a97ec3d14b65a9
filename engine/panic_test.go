package engine_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stasisbackup/stasis/engine"
	"github.com/stasisbackup/stasis/engine/quiesce"
	"github.com/stasisbackup/stasis/internal/enginetest"
	"github.com/stasisbackup/stasis/internal/zoomsimtest"
	"github.com/stasisbackup/stasis/repo"
	"github.com/stasisbackup/stasis/repo/blob"
	"github.com/stasisbackup/stasis/repo/tree"
)

// buggyRepo panics in one method, as a bug in a backup goroutine would.
type buggyRepo struct {
	*repo.Repository
	in string
}

func (r *buggyRepo) HasBlob(id blob.ID) (bool, error) {
	if r.in == "HasBlob" {
		panic("injected bug in HasBlob")
	}
	return r.Repository.HasBlob(id)
}

func (r *buggyRepo) SaveBlob(ctx context.Context, t blob.Type, id blob.ID, data []byte) (repo.SaveResult, error) {
	if r.in == "SaveBlob" {
		panic("injected bug in SaveBlob")
	}
	return r.Repository.SaveBlob(ctx, t, id, data)
}

func (r *buggyRepo) SaveFrame(ctx context.Context, t blob.Type, blobs []repo.FrameBlob) (repo.FrameResult, error) {
	if r.in == "SaveFrame" {
		panic("injected bug in SaveFrame")
	}
	return r.Repository.SaveFrame(ctx, t, blobs)
}

func (r *buggyRepo) SaveTree(ctx context.Context, t *tree.Tree) (blob.ID, repo.SaveResult, error) {
	switch r.in {
	case "SaveTree":
		panic("injected bug in SaveTree")
	case "Progress":
		<-ctx.Done() // until the panic in the progress callback cancels the backup
		return blob.ID{}, repo.SaveResult{}, ctx.Err()
	}
	return r.Repository.SaveTree(ctx, t)
}

// A panic in any goroutine of a backup that runs in the quiesced window
// (file workers, savers, tree savers, a large file's parallel chunkers, the
// progress reporter) becomes an error: the process lives on and the resume
// hook runs.
func TestPanicInBackupGoroutineResumes(t *testing.T) {
	bin := zoomsimtest.Build(t)
	svcDir := t.TempDir()
	db := filepath.Join(svcDir, "X500.db")
	svc := zoomsimtest.Start(t, bin, db, "--pages", "64", "--close-on-pause")
	qopts := quiesce.Options{Paths: []string{svcDir},
		Quiesce: fmt.Sprintf("%s pause --db %s", bin, db), Resume: fmt.Sprintf("%s resume --db %s", bin, db),
		HookTimeout: 30 * time.Second, KillGrace: time.Second}

	small := t.TempDir()
	os.WriteFile(filepath.Join(small, "a"), []byte("some data"), 0o644)
	large := t.TempDir()
	os.WriteFile(filepath.Join(large, "one-chunk"), bytes.Repeat([]byte("frame-sized chunk "), (512<<10)/18+1), 0o644)
	// Two data regions 40 MiB apart: chunked by parallel goroutines.
	big := t.TempDir()
	f, _ := os.Create(filepath.Join(big, "sparse.db"))
	f.WriteAt([]byte("first window"), 0)
	f.WriteAt([]byte("second window"), 40<<20)
	f.Close()

	for _, tc := range []struct{ in, dir, where string }{
		{"HasBlob", small, "reading files"},
		{"SaveFrame", small, "saving chunks"}, // a small file's chunk joins the tail frame
		{"SaveBlob", large, "saving chunks"},  // a chunk as large as a frame is saved alone
		{"SaveTree", small, "saving the tree of"},
		{"HasBlob", big, "a parallel part of a file"},
		{"Progress", small, "reporting progress"},
		{"last Progress", small, "reporting progress"}, // the report made when the backup ends
	} {
		t.Run(tc.in+" "+tc.where, func(t *testing.T) {
			r := &buggyRepo{Repository: enginetest.NewRepo(t), in: tc.in}
			opts := engine.BackupOptions{Paths: []string{tc.dir}, Host: "test", Now: clock(day1)}
			if strings.HasSuffix(tc.in, "Progress") {
				opts.ProgressEvery = time.Millisecond
				if tc.in == "last Progress" {
					opts.ProgressEvery = time.Hour
				}
				opts.Progress = func(engine.Progress) { panic("injected bug in the progress callback") }
			}
			var sn *repo.Snapshot
			rep, err := quiesce.Run(context.Background(), qopts, func(ctx context.Context, s *quiesce.Stage) error {
				var err error
				sn, err = engine.Backup(ctx, r, opts)
				return err
			})
			var pe *engine.PanicError
			if sn != nil || !errors.As(err, &pe) || !strings.Contains(err.Error(), tc.where) {
				t.Fatalf("Backup = %v, %v; want no snapshot and a panic error in %q", sn, err, tc.where)
			}
			if len(rep.Hooks) != 2 || !rep.Hooks[1].OK() {
				t.Fatalf("hooks %+v: want quiesce and resume", rep.Hooks)
			}
			if state, _ := svc.State(t); state != "running" {
				t.Fatalf("zoomsim is %s, want running", state)
			}
		})
	}
}
