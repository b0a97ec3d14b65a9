package engine_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stasisbackup/stasis/engine"
	"github.com/stasisbackup/stasis/internal/enginetest"
	"github.com/stasisbackup/stasis/repo"
	"github.com/stasisbackup/stasis/repo/blob"
	"github.com/stasisbackup/stasis/repo/tree"
)

// The progress scanner counts what the backup will read: excluded files and
// trees are neither counted nor walked.
func TestProgressTotalsHonourExcludes(t *testing.T) {
	src := t.TempDir()
	os.WriteFile(filepath.Join(src, "kept"), make([]byte, 1000), 0o644)
	os.WriteFile(filepath.Join(src, "scratch.tmp"), make([]byte, 5000), 0o644)
	os.MkdirAll(filepath.Join(src, "sub", "cache"), 0o755)
	os.WriteFile(filepath.Join(src, "sub", "kept2"), make([]byte, 500), 0o644)
	for i := 0; i < 20; i++ {
		os.WriteFile(filepath.Join(src, "sub", "cache", fmt.Sprint(i)), make([]byte, 10000), 0o644)
	}
	r := &scanWaitRepo{Repository: enginetest.NewRepo(t), scanned: make(chan struct{})}
	var last engine.Progress
	var once bool
	_, err := engine.Backup(ctx, r, engine.BackupOptions{Paths: []string{src}, Now: clock(day1),
		Excludes: []string{"*.tmp", "cache"}, ProgressEvery: time.Millisecond,
		Progress: func(p engine.Progress) {
			if p.ScanDone && !once {
				once, last = true, p
				close(r.scanned)
			}
		}})
	if err != nil {
		t.Fatal(err)
	}
	if last.TotalFiles != 2 || last.TotalBytes != 1500 {
		t.Errorf("progress totals %d files, %d bytes; want the 2 files, 1500 bytes not excluded", last.TotalFiles, last.TotalBytes)
	}
}

// scanWaitRepo holds the backup's tree saves until the progress scan is
// done, so that its totals are seen whatever the timing.
type scanWaitRepo struct {
	*repo.Repository
	scanned chan struct{}
}

func (r *scanWaitRepo) SaveTree(ctx context.Context, t *tree.Tree) (blob.ID, repo.SaveResult, error) {
	select {
	case <-r.scanned:
	case <-ctx.Done():
		return blob.ID{}, repo.SaveResult{}, ctx.Err()
	}
	return r.Repository.SaveTree(ctx, t)
}

// Every name of a hard-linked file counts as done, as the scanner counts
// it: the last report reaches the totals. The ticker's period is longer
// than the backup, so the last report is the one made when it ends.
func TestProgressReachesTotalsWithHardLinks(t *testing.T) {
	src := t.TempDir()
	os.WriteFile(filepath.Join(src, "a"), make([]byte, 3000), 0o644)
	os.Link(filepath.Join(src, "a"), filepath.Join(src, "b"))
	os.Link(filepath.Join(src, "a"), filepath.Join(src, "c"))
	os.WriteFile(filepath.Join(src, "d"), make([]byte, 700), 0o644)
	var last engine.Progress
	_, err := engine.Backup(ctx, enginetest.NewRepo(t), engine.BackupOptions{Paths: []string{src}, Now: clock(day1),
		ProgressEvery: time.Hour, Progress: func(p engine.Progress) { last = p }})
	if err != nil {
		t.Fatal(err)
	}
	if !last.ScanDone || last.TotalFiles != 4 || last.TotalBytes != 9700 || last.Files != last.TotalFiles || last.Bytes != last.TotalBytes {
		t.Errorf("last progress %+v; want 4 of 4 files, 9700 of 9700 bytes", last)
	}
}
