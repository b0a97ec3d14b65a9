package engine

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sync"

	"github.com/restic/chunker"
	"github.com/stasisbackup/stasis/repo"
	"github.com/stasisbackup/stasis/repo/blob"
	"github.com/stasisbackup/stasis/repo/tree"
)

// fileSaver fills in the content of the regular files the walk finds. A
// file whose metadata matches its node in the parent snapshot (and whose
// blobs the repository still has) keeps the parent's content unread;
// another is read and chunked (chunk.go), its chunks go to the blob saver,
// and when it changed while it was read it is read again, up to retries
// times. A file that cannot be read is recorded as a problem, not an error.
// Further names of a hard-linked file share the first name's content.
//
// submit queues a file and returns its future; the goroutines that call
// run read the queue until close. The counts it adds to are filesNew,
// filesChanged, filesUnchanged, bytesRead, totalBytes, doneFiles and
// doneBytes.
type fileSaver struct {
	sources  sources
	blobs    *blobSaver
	counts   *backupCounts
	problems *problemList
	// onPanic is deferred directly in the goroutines submit starts (backup.recoverCancel).
	onPanic func(where string)

	pol      chunker.Pol
	profiles map[repo.ProfileName]repo.ChunkProfile // "default" and "db"
	dbGlobs  []string                               // base names chunked with "db"
	retries  int                                    // re-reads of a file that changed while read
	// parentCutoff: a parent's file with mtime at or after this (ns) is re-read.
	parentCutoff int64
	// heldStill is BackupOptions.HeldStill (nil: no quiescing).
	heldStill func(path string) bool

	queue chan fileJob
	mu    sync.Mutex
	links map[[2]uint64]*future // first name of each hard-linked file, by device and inode
}

// fileJob is a file waiting in the file saver's queue.
type fileJob struct {
	path, read string
	staged     bool       // read is a Substitutes copy (not a SourceRoots snapshot)
	listed     bool       // found in its directory's listing (not a path given, not prefetched)
	parent     *tree.Node // the file's node in the parent snapshot, or nil
	fut        *future    // holds the node from lstat; the saver fills in the content
}

// submit queues the file at path p (lstat metadata in n; pn its node in
// the parent snapshot or nil) and returns its future. When ctx ends before
// the file is queued, the future is resolved with no content.
func (s *fileSaver) submit(ctx context.Context, p string, n tree.Node, pn *tree.Node) *future {
	return s.submitJob(ctx, p, n, pn, false)
}

// errRemoved marks the failure to open a file (its original path, not a
// staged copy or a snapshot's) that no longer exists.
var errRemoved = errors.New("removed since listed")

// submitListed is submit for a file found in its directory's listing: when
// it is one the quiesce selection takes (heldStill) but was not held still,
// so it appeared after the service was stopped, and it is removed before it
// is opened, it is left out of the snapshot with a warning, not recorded as
// unreadable. Any other file removed before it is opened is unreadable
// (exit 3): it may have been renamed into a directory already walked.
func (s *fileSaver) submitListed(ctx context.Context, p string, n tree.Node, pn *tree.Node) *future {
	return s.submitJob(ctx, p, n, pn, true)
}

func (s *fileSaver) submitJob(ctx context.Context, p string, n tree.Node, pn *tree.Node, listed bool) *future {
	f := newFuture(n)
	if n.Links > 1 && s.linkTo(ctx, p, f) {
		return f
	}
	read, staged := s.sources.file(p)
	select {
	case s.queue <- fileJob{path: p, read: read, staged: staged, listed: listed, parent: pn, fut: f}:
	case <-ctx.Done():
		close(f.done)
	}
	return f
}

// linkTo records f as the first name of its hard-linked file, or, when the
// file has a first name in this snapshot already, resolves f with that
// name's content once known and reports true.
func (s *fileSaver) linkTo(ctx context.Context, p string, f *future) bool {
	key := [2]uint64{f.node.Device, f.node.Inode}
	s.mu.Lock()
	first, seen := s.links[key]
	if !seen {
		s.links[key] = f
	}
	s.mu.Unlock()
	if !seen {
		return false
	}
	go func() {
		defer close(f.done)
		defer s.onPanic("linking " + p)
		select {
		case <-first.done:
		case <-ctx.Done():
			return
		}
		f.node.Content, f.node.Size, f.node.Flags, f.node.Error = first.node.Content, first.node.Size, first.node.Flags, first.node.Error
		// The progress scanner counted this name as a file of its size.
		s.counts.doneFiles.Add(1)
		s.counts.doneBytes.Add(int64(f.node.Size))
	}()
	return true
}

// run saves queued files until the queue is closed; a fatal error
// (repository, cancellation) ends it.
func (s *fileSaver) run(ctx context.Context) error {
	// One chunker per worker: its 512 KiB read buffer is reused for every file.
	ck := chunker.NewWithBoundaries(nil, s.pol, repo.ProfileDefault.Min, repo.ProfileDefault.Max)
	for job := range s.queue {
		if err := s.saveFile(ctx, &job, ck); err != nil {
			close(job.fut.done)
			return err
		}
		close(job.fut.done)
	}
	return nil
}

// close says that no more files will be submitted: run returns once the
// queue is empty.
func (s *fileSaver) close() { close(s.queue) }

// saveFile fills job.fut.node with the file's content. Errors returned are
// fatal (repository failures, cancellation); a file that cannot be read is
// recorded as a problem instead.
func (s *fileSaver) saveFile(ctx context.Context, job *fileJob, ck *chunker.Chunker) error {
	n := &job.fut.node
	defer func() {
		s.counts.doneFiles.Add(1)
		s.counts.totalBytes.Add(int64(n.Size))
	}()
	if reused, err := s.reuseParent(ctx, job); err != nil || reused {
		return err
	}
	if job.parent == nil {
		s.counts.filesNew.Add(1)
	} else {
		s.counts.filesChanged.Add(1)
	}
	profile := s.profileFor(job.path)
	for attempt := 0; ; attempt++ {
		changed, err := s.readFile(ctx, job, profile, ck)
		if err != nil {
			if ctx.Err() != nil || isRepoError(err) || isPanic(err) { // a bug is not an unreadable file
				return err
			}
			if errors.Is(err, errRemoved) && job.listed && n.Links <= 1 && s.heldStill != nil && s.heldStill(job.path) {
				// Appeared after the service was held still, and removed
				// since it was listed (the resumed service's temporary file):
				// not part of the state held still.
				job.fut.gone = true
				if job.parent == nil {
					s.counts.filesNew.Add(-1)
				} else {
					s.counts.filesChanged.Add(-1)
				}
				n.Size = 0
				s.problems.add(repo.Problem{Path: job.path, Kind: repo.ProblemWarning, Error: "appeared after the service was held still and was removed before it was read: not in the snapshot"})
				return nil
			}
			n.Flags, n.Error, n.Content, n.Size = tree.Unreadable, err.Error(), nil, 0
			s.problems.add(repo.Problem{Path: job.path, Kind: repo.ProblemUnreadable, Error: err.Error()})
			return nil
		}
		if !changed {
			return nil
		}
		if attempt >= s.retries {
			n.Flags = tree.Changed
			n.Error = fmt.Sprintf("changed while being read (%d attempts)", attempt+1)
			s.problems.add(repo.Problem{Path: job.path, Kind: repo.ProblemChanged, Error: n.Error})
			return nil
		}
	}
}

// reuseParent gives the file the content of its node in the parent
// snapshot, and reports true, when that node was captured cleanly, its
// metadata matches, its mtime is safely older than the parent snapshot
// and the repository still has (usable) all its blobs.
func (s *fileSaver) reuseParent(ctx context.Context, job *fileJob) (bool, error) {
	n, pn := &job.fut.node, job.parent
	if pn == nil || pn.Kind != tree.File || pn.Flags != 0 || pn.ContentError != "" || job.staged ||
		pn.Size != n.Size || pn.MTime != n.MTime || pn.CTime != n.CTime || pn.Inode != n.Inode ||
		pn.MTime >= s.parentCutoff {
		return false, nil
	}
	ids := make([]blob.ID, 0, len(pn.Content))
	for _, e := range pn.Content {
		if !e.Hole {
			ids = append(ids, e.ID)
		}
	}
	ok, err := s.blobs.haveAll(ctx, ids)
	if err != nil {
		return false, fmt.Errorf("look up blobs of %s: %w", job.path, err)
	}
	if !ok {
		return false, nil
	}
	n.Content = pn.Content
	s.counts.filesUnchanged.Add(1)
	s.counts.doneBytes.Add(int64(n.Size))
	return true, nil
}

// readFile reads, chunks and saves one file and reports whether it changed
// while it was read (size, mtime or ctime differ before and after).
func (s *fileSaver) readFile(ctx context.Context, job *fileJob, profile repo.ChunkProfile, ck *chunker.Chunker) (changed bool, err error) {
	n := &job.fut.node
	f, err := os.Open(job.read)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) && job.read == job.path {
			return false, fmt.Errorf("%w: %w", errRemoved, err)
		}
		return false, err
	}
	defer f.Close()
	before, err := f.Stat()
	if err != nil {
		return false, err
	}
	if !before.Mode().IsRegular() {
		return false, fmt.Errorf("%s is no longer a regular file", job.read)
	}
	bn := nodeFromInfo(n.Name, before, nil)
	if !job.staged {
		n.Size, n.MTime, n.CTime, n.Mode, n.UID, n.GID, n.Inode = bn.Size, bn.MTime, bn.CTime, bn.Mode, bn.UID, bn.GID, bn.Inode
	} else {
		// A staged copy (Substitutes) carries the original's mtime as of
		// staging; the original may have been written since. Record the
		// staged mtime so that the next backup sees such a write and
		// re-reads the original instead of reusing this older content.
		n.MTime = bn.MTime
	}
	var guide *parentChunks
	if job.parent != nil && job.parent.Kind == tree.File {
		guide = newParentChunks(job.parent.Content, int(profile.Max))
	}
	content, read, err := s.chunkFile(ctx, f, int64(bn.Size), profile, ck, guide)
	s.counts.bytesRead.Add(read)
	if err != nil {
		return false, err
	}
	after, err := f.Stat()
	if err != nil {
		return false, err
	}
	an := nodeFromInfo(n.Name, after, nil)
	n.Content = content
	n.Size = contentSize(content)
	return !sameFile(&bn, &an) || n.Size != bn.Size, nil
}

// readStream chunks a stream to its end, with the chunk profile of the
// file at path, and returns its content. The bytes read are counted; the
// stream's file is counted by the caller (the stdin stream, stdin.go).
func (s *fileSaver) readStream(ctx context.Context, path string, rd io.Reader) ([]tree.Extent, error) {
	profile := s.profileFor(path)
	ck := chunker.NewWithBoundaries(nil, s.pol, profile.Min, profile.Max)
	content, read, err := s.chunkReader(ctx, rd, profile, ck)
	s.counts.bytesRead.Add(read)
	return content, err
}

// profileFor returns the chunk profile of the file at path: "db" when its
// base name matches a db glob, else "default".
func (s *fileSaver) profileFor(path string) repo.ChunkProfile {
	base := filepath.Base(path)
	for _, g := range s.dbGlobs {
		if ok, _ := filepath.Match(g, base); ok {
			return s.profiles[repo.ProfileNameDB]
		}
	}
	return s.profiles[repo.ProfileNameDefault]
}

// contentSize returns the length of a file of extents.
func contentSize(content []tree.Extent) (total uint64) {
	for _, e := range content {
		total += e.Length
	}
	return total
}
