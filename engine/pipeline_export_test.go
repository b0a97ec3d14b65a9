package engine

import (
	"context"
	"os"
	"path/filepath"

	"github.com/stasisbackup/stasis/repo"
	"github.com/stasisbackup/stasis/repo/blob"
	"github.com/stasisbackup/stasis/repo/tree"
	"golang.org/x/sync/errgroup"
)

// This file exports the parts of the backup pipeline to the tests of
// package engine_test, so that each part can be tested alone with a real
// repository of internal/enginetest (a test inside package engine cannot
// import enginetest: it imports engine).

// Future is a node that becomes known later (treesaver.go).
type Future = future

// NewFuture returns a future of n that is not done yet.
func NewFuture(n tree.Node) *Future { return newFuture(n) }

// ResolvedFuture returns a future of n that is done.
func ResolvedFuture(n tree.Node) *Future { return resolved(n) }

// Resolve sets the node of a pending future and marks it done.
func (f *future) Resolve(n tree.Node) {
	f.node = n
	close(f.done)
}

// Done reports whether the future is done.
func (f *future) Done() bool {
	select {
	case <-f.done:
		return true
	default:
		return false
	}
}

// Wait returns the future's node once it is done, or ctx's error.
func (f *future) Wait(ctx context.Context) (tree.Node, error) {
	select {
	case <-f.done:
		return f.node, nil
	case <-ctx.Done():
		return tree.Node{}, ctx.Err()
	}
}

// Parts are the parts of one backup of r, wired as Backup wires them but
// not running: a test starts the goroutines of the part it tests. There is
// no parent snapshot; ParentCutoff sets the file saver's.
type Parts struct {
	b            *backup
	ctx          context.Context
	files, blobs errgroup.Group // goroutines of the file saver, the blob saver
}

// NewParts builds the parts of a backup of r with opts (defaults filled in
// as Backup does). A tree save that fails cancels ctx (see Cause).
func NewParts(ctx context.Context, r BackupRepo, opts BackupOptions) *Parts {
	opts = withBackupDefaults(opts)
	ctx, cancel := context.WithCancelCause(ctx)
	b := &backup{repo: r, opts: opts, dbGlobs: opts.DBGlobs, names: newIDNames(), start: opts.Now(), cancel: cancel}
	cfg := r.Config()
	if b.dbGlobs == nil {
		b.dbGlobs = cfg.DBGlobs
	}
	pol := cfg.Polynomial()
	if opts.Polynomial != 0 {
		pol = opts.Polynomial
	}
	b.buildParts(pol, cfg.Profiles)
	return &Parts{b: b, ctx: ctx}
}

// Context is the context the parts' goroutines run with.
func (p *Parts) Context() context.Context { return p.ctx }

// Cause is why the parts' context ended (a failed tree save), or nil.
func (p *Parts) Cause() error { return context.Cause(p.ctx) }

// SetParentCutoff sets the time from which a parent's file is re-read.
func (p *Parts) SetParentCutoff(ns int64) { p.b.files.parentCutoff = ns }

// RunBlobSavers starts n blob saver goroutines.
func (p *Parts) RunBlobSavers(n int) {
	for range n {
		p.blobs.Go(func() error { return p.b.blobs.run(p.ctx) })
	}
}

// RunFileWorkers starts n file saver goroutines.
func (p *Parts) RunFileWorkers(n int) {
	for range n {
		p.files.Go(func() error { return p.b.files.run(p.ctx) })
	}
}

// SaveChunk hands a copy of data to the blob saver.
func (p *Parts) SaveChunk(ctx context.Context, data []byte) (blob.ID, error) {
	buf := p.b.blobs.buffer()
	*buf = append((*buf)[:0], data...)
	return p.b.blobs.save(ctx, *buf, buf)
}

// SubmitFile lstats path and submits it to the file saver, as the walk
// does; parent is its node in a parent snapshot, or nil.
func (p *Parts) SubmitFile(ctx context.Context, path string, parent *tree.Node) (*Future, error) {
	fi, err := os.Lstat(path)
	if err != nil {
		return nil, err
	}
	return p.b.files.submit(ctx, path, nodeFromInfo(filepath.Base(path), fi, p.b.names), parent), nil
}

// SubmitNode submits a file whose lstat result is n (the file may be gone
// since) to the file saver.
func (p *Parts) SubmitNode(ctx context.Context, path string, n tree.Node) *Future {
	return p.b.files.submit(ctx, path, n, nil)
}

// SubmitListed is SubmitNode for a file found in its directory's listing.
func (p *Parts) SubmitListed(ctx context.Context, path string, n tree.Node) *Future {
	return p.b.files.submitListed(ctx, path, n, nil)
}

// Gone reports whether the future's entry was left out of the snapshot.
func (f *future) Gone() bool { return f.gone }

// SaveTree hands a directory to the tree saver.
func (p *Parts) SaveTree(ctx context.Context, dir string, node tree.Node, kids []*Future) *Future {
	return p.b.trees.save(ctx, dir, node, kids)
}

// Close closes the queues of the file saver and then of the blob saver,
// waits for the goroutines started and for the tree saves, and returns
// the first error of a goroutine.
func (p *Parts) Close() error {
	p.b.files.close()
	ferr := p.files.Wait()
	p.b.blobs.close(p.ctx)
	berr := p.blobs.Wait()
	p.b.trees.wait()
	if ferr != nil {
		return ferr
	}
	return berr
}

// Summary returns the running counts as a snapshot records them.
func (p *Parts) Summary() repo.Summary { return p.b.counts.summary() }

// Progress returns the running counts as BackupOptions.Progress gets them.
func (p *Parts) Progress() Progress { return p.b.counts.progress(0) }

// Problems returns the problems recorded so far, sorted by path.
func (p *Parts) Problems() []repo.Problem { return p.b.problems.sorted() }

// Scan runs the progress scanner over paths to its end.
func (p *Parts) Scan(ctx context.Context, paths []string) { p.b.progress.scan(ctx, paths) }

// Tick runs the progress ticker until ctx ends.
func (p *Parts) Tick(ctx context.Context) { p.b.progress.tick(ctx) }

// CountNewFile counts a new file of size bytes read, as the file saver does.
func (p *Parts) CountNewFile(size int64) {
	p.b.counts.filesNew.Add(1)
	p.b.counts.doneFiles.Add(1)
	p.b.counts.bytesRead.Add(size)
	p.b.counts.doneBytes.Add(size)
	p.b.counts.totalBytes.Add(size)
}

// SourceFor returns where the backup of opts reads path p, and whether it
// reads a staged copy (Substitutes).
func SourceFor(opts BackupOptions, p string) (read string, staged bool) {
	return sources{roots: opts.SourceRoots, substitutes: opts.Substitutes}.file(p)
}

// Span is a piece of a file as the chunker splits it (chunk.go).
type Span struct {
	Start, End int64
	Hole       bool
}

// ChunkWindow is the span of a file chunked on its own.
const ChunkWindow = chunkWindow

// FileSpans returns the spans of the first size bytes of f.
func FileSpans(f *os.File, size int64) []Span {
	var out []Span
	for _, s := range fileSpans(f, size) {
		out = append(out, Span{s.start, s.end, s.hole})
	}
	return out
}

// Walk runs the tree walker over paths (absolute, clean) with no parent
// snapshot; the file and blob savers must be running.
func (p *Parts) Walk(ctx context.Context, paths []string) (*Future, error) {
	return p.b.walker.walk(ctx, paths, nil)
}
