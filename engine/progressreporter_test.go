package engine_test

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stasisbackup/stasis/engine"
	"github.com/stasisbackup/stasis/internal/enginetest"
)

// The scanner totals the regular files below the paths, skipping excluded
// files and directories as the walk does, and then says it is done.
func TestProgressScannerTotals(t *testing.T) {
	src := t.TempDir()
	os.MkdirAll(filepath.Join(src, "cache"), 0o755)
	os.MkdirAll(filepath.Join(src, "sub"), 0o755)
	os.WriteFile(filepath.Join(src, "a"), make([]byte, 100), 0o644)
	os.WriteFile(filepath.Join(src, "sub", "b"), make([]byte, 20), 0o644)
	os.WriteFile(filepath.Join(src, "sub", "c.tmp"), make([]byte, 5000), 0o644)
	os.WriteFile(filepath.Join(src, "cache", "d"), make([]byte, 5000), 0o644)
	os.Symlink("a", filepath.Join(src, "link"))

	p := engine.NewParts(ctx, enginetest.NewRepo(t), engine.BackupOptions{Excludes: []string{"*.tmp", "cache"}})
	if got := p.Progress(); got.ScanDone {
		t.Fatal("scan done before it ran")
	}
	p.Scan(ctx, []string{src})
	if got := p.Progress(); got.TotalFiles != 2 || got.TotalBytes != 120 || !got.ScanDone {
		t.Errorf("scan totals %+v; want 2 files, 120 bytes, done", got)
	}
}

// The ticker reports the running counts every period until it is stopped.
func TestProgressTickerReports(t *testing.T) {
	reports := make(chan engine.Progress, 100)
	p := engine.NewParts(ctx, enginetest.NewRepo(t), engine.BackupOptions{ProgressEvery: time.Millisecond,
		Now: clock(time.Now()), Progress: func(pr engine.Progress) {
			select {
			case reports <- pr:
			default:
			}
		}})
	p.CountNewFile(4096)
	tctx, stop := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { defer close(done); p.Tick(tctx) }()
	select {
	case got := <-reports:
		if got.Files != 1 || got.Bytes != 4096 || got.Elapsed <= 0 {
			t.Errorf("report %+v; want 1 file, 4096 bytes, some time elapsed", got)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no report within 10s of a 1ms ticker")
	}
	stop()
	<-done
	if s := p.Summary(); s.FilesNew != 1 || s.BytesRead != 4096 || s.TotalBytes != 4096 {
		t.Errorf("summary %+v; want the file counted", s)
	}
}
