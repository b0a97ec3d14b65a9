package engine

import (
	"context"
	"io/fs"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/stasisbackup/stasis/repo"
)

// backupCounts are the running counts of one backup: what the snapshot's
// Summary records and what BackupOptions.Progress reports. The parts of the
// backup add to them with atomic adds as they go, never under a lock:
//
//   - the tree walker: dirs, others (symlinks, devices, sockets, FIFOs);
//   - the file saver: filesNew, filesChanged, filesUnchanged, bytesRead,
//     totalBytes, doneFiles, doneBytes (also for the stdin stream);
//   - the blob saver: blobsAdded, bytesAdded, stored;
//   - the tree saver: stored;
//   - the progress scanner: scanFiles, scanBytes, scanDone.
//
// Any goroutine may read them at any time; summary and progress read each
// counter on its own, not all as one atomic unit.
type backupCounts struct {
	filesNew, filesChanged, filesUnchanged, dirs, others  atomic.Int64
	totalBytes, bytesRead, blobsAdded, bytesAdded, stored atomic.Int64
	doneFiles, doneBytes, scanFiles, scanBytes            atomic.Int64
	scanDone                                              atomic.Bool
}

// summary returns the counts of a finished backup as a snapshot records
// them; the caller adds the Duration and the Problems.
func (c *backupCounts) summary() repo.Summary {
	return repo.Summary{
		FilesNew: c.filesNew.Load(), FilesChanged: c.filesChanged.Load(), FilesUnchanged: c.filesUnchanged.Load(),
		Dirs: c.dirs.Load(), Others: c.others.Load(), TotalBytes: c.totalBytes.Load(), BytesRead: c.bytesRead.Load(),
		BlobsAdded: c.blobsAdded.Load(), BytesAdded: c.bytesAdded.Load(), StoredAdded: c.stored.Load(),
	}
}

// progress returns the running counts for BackupOptions.Progress.
func (c *backupCounts) progress(elapsed time.Duration) Progress {
	return Progress{Files: c.doneFiles.Load(), Bytes: c.doneBytes.Load(), TotalFiles: c.scanFiles.Load(),
		TotalBytes: c.scanBytes.Load(), ScanDone: c.scanDone.Load(), Elapsed: elapsed}
}

// progressReporter calls BackupOptions.Progress while a backup runs. It
// owns two goroutines: a scanner that walks the paths to back up ahead of
// the backup and counts what is to be read (the totals), and a ticker that
// calls report every period with the counts so far.
type progressReporter struct {
	report   func(Progress) // nil: no reporting, no scan
	every    time.Duration
	counts   *backupCounts
	start    time.Time           // of the backup, for Progress.Elapsed
	excluded func(p string) bool // as the backup's walk excludes
	// onPanic is deferred directly in both goroutines: it turns a panic
	// into the cause that cancels the backup (backup.recoverCancel).
	onPanic func(where string)
}

// run starts the scanner and the ticker; the returned function stops both,
// waits for them and reports a last time, so that the last report is the
// end whatever the ticker's timing. After a backup that completed, that
// report's totals are what the backup did (a scan cut short when the
// backup ended first has counted less). Without a report function it does
// nothing.
func (p *progressReporter) run(ctx context.Context, paths []string) (stop func(completed bool)) {
	if p.report == nil {
		return func(bool) {}
	}
	ctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Add(2)
	go func() {
		defer wg.Done()
		defer p.onPanic("counting files for progress")
		p.scan(ctx, paths)
	}()
	go func() {
		defer wg.Done()
		defer p.onPanic("reporting progress")
		p.tick(ctx)
	}()
	return func(completed bool) {
		cancel()
		wg.Wait()
		last := p.counts.progress(time.Since(p.start))
		if completed {
			last.TotalFiles, last.TotalBytes, last.ScanDone = last.Files, last.Bytes, true
		}
		func() {
			defer p.onPanic("reporting progress")
			p.report(last)
		}()
	}
}

// scan counts the regular files below paths and their sizes, skipping
// what is excluded, then sets scanDone (also when ctx ends it early).
func (p *progressReporter) scan(ctx context.Context, paths []string) {
	for _, root := range paths {
		filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			if path != root && p.excluded(path) { // as the backup's walk does
				if d != nil && d.IsDir() {
					return filepath.SkipDir
				}
				return nil
			}
			if err != nil || d.IsDir() {
				return nil
			}
			if d.Type().IsRegular() {
				if fi, err := d.Info(); err == nil {
					p.counts.scanFiles.Add(1)
					p.counts.scanBytes.Add(fi.Size())
				}
			}
			return nil
		})
	}
	p.counts.scanDone.Store(true)
}

// tick calls report every period until ctx ends.
func (p *progressReporter) tick(ctx context.Context) {
	t := time.NewTicker(p.every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			p.report(p.counts.progress(time.Since(p.start)))
		}
	}
}
