// Package engine is what stasis does with a repository: back up a set of
// paths into a snapshot, restore a snapshot, list, compare and check. It
// talks to the repository through small interfaces declared here.
package engine

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/restic/chunker"
	"github.com/stasisbackup/stasis/internal/exclude"
	"github.com/stasisbackup/stasis/repo"
	"github.com/stasisbackup/stasis/repo/blob"
	"github.com/stasisbackup/stasis/repo/tree"
	"golang.org/x/sync/errgroup"
)

// BackupRepo is what a backup needs from the repository.
type BackupRepo interface {
	Config() repo.Config
	Hash(data []byte) blob.ID
	HasBlob(id blob.ID) (bool, error)
	HasAllBlobs(ids []blob.ID) (bool, error)
	SaveBlob(ctx context.Context, t blob.Type, id blob.ID, data []byte) (repo.SaveResult, error)
	SaveFrame(ctx context.Context, t blob.Type, blobs []repo.FrameBlob) (repo.FrameResult, error)
	SaveTree(ctx context.Context, t *tree.Tree) (blob.ID, repo.SaveResult, error)
	LoadTree(ctx context.Context, id blob.ID) (*tree.Tree, error)
	Flush(ctx context.Context) error
	Snapshots(ctx context.Context) ([]*repo.Snapshot, []error, error)
	SaveSnapshot(ctx context.Context, sn *repo.Snapshot) (blob.ID, error)
}

var _ BackupRepo = (*repo.Repository)(nil)

// BackupOptions say what to back up and how.
type BackupOptions struct {
	Paths    []string // files or directories; made absolute
	Host     string
	Tags     []string
	Excludes []string // globs matched against the base name and the absolute path
	DBGlobs  []string // base-name globs chunked with the "db" profile; nil: the repository's
	Retries  int      // re-reads of a file that changed while read (default 2; -1 for none)
	Workers  int      // files read at once (default 2)
	Savers   int      // blobs compressed at once (default 2)
	// Substitutes maps an absolute path to a file to read in its place (a
	// staged copy made while the service was quiesced); the snapshot records
	// the original path.
	Substitutes map[string]string
	// SourceRoots maps an absolute directory to the directory to read in
	// its place: the root of a read-only filesystem snapshot of it, made
	// while the service was quiesced. Everything below the key (directory
	// listings, metadata, symlinks, file contents) is read from the value
	// and recorded under the original path; the longest matching key wins.
	// Unlike a Substitutes file, a file read this way carries its own
	// metadata from the snapshot, so an unchanged file is reused from the
	// parent snapshot as usual. Substitutes wins for a file in both.
	SourceRoots map[string]string
	// Quiesce is stored in the snapshot as is.
	Quiesce json.RawMessage
	// QuiesceFunc, when set, is called once after every file has been read
	// and before the snapshot is written; its result is stored instead of
	// Quiesce (the quiesce report is complete only once the service resumed).
	QuiesceFunc func() json.RawMessage
	// Prefetch lists files (absolute paths under Paths) that are read and
	// stored before the tree walk starts; AfterPrefetch, when set, is called
	// once they are all read, on Backup's walking goroutine, before any other
	// file is read. Stop-mode quiescing uses it to read the quiesced files
	// while the service is held still, then resume it, then read the rest.
	// A prefetched file is recorded with the metadata and content it had when
	// it was read, even if it changes or disappears afterwards. Entries that
	// are not regular files, not under Paths or excluded are ignored.
	Prefetch      []string
	AfterPrefetch func()
	// HeldStill, when set (stop, copy and reflink quiescing), reports
	// whether the quiesce selection takes a file. A file it takes that is
	// neither prefetched nor substituted appeared once the service was held
	// still; when such a file, found in its directory's listing, is removed
	// before it is opened (a resumed service's temporary file), it is left
	// out of the snapshot with a warning instead of being recorded
	// unreadable: it was never part of the state held still.
	HeldStill func(path string) bool
	// Progress, when set, is called about every ProgressEvery from one
	// goroutine, and a last time when the backup ends: after a backup that
	// completed, that call's counts are at their totals.
	Progress      func(Progress)
	ProgressEvery time.Duration
	// Now returns the backup's start time (tests inject a clock).
	Now func() time.Time
	// Polynomial overrides the repository's chunker polynomial (tests).
	Polynomial chunker.Pol
	// Stdin, when set, is a stream stored as one more file of the snapshot
	// (see StdinFile); Paths may then be empty.
	Stdin *StdinFile
}

// Progress is a backup's running count.
type Progress struct {
	Files, Bytes           int64 // done so far
	TotalFiles, TotalBytes int64 // found by the scanner so far
	ScanDone               bool
	Elapsed                time.Duration
}

// ErrIncomplete is matched by the error Backup returns when it wrote a
// snapshot but some files were unreadable or kept changing; the snapshot's
// Summary.Problems lists them.
var ErrIncomplete = errors.New("snapshot is incomplete")

// ErrPathNotFound is matched when a path to back up does not exist.
var ErrPathNotFound = errors.New("path to back up does not exist")

// backup is one run of Backup: the options, the parent snapshot, and the
// parts of the pipeline wired together.
//
// A backup is a pipeline of parts, as restic's archiver is: the tree
// walker (walk.go) lists the paths from the root down and hands regular
// files to the file saver (filesaver.go), whose workers reuse an unchanged
// file's content from the parent snapshot or read and chunk it (chunk.go);
// the blob saver (blobsaver.go) hashes the chunks, deduplicates them and
// stores the new ones on its own workers; the tree saver (treesaver.go)
// saves each directory's tree once its children are known, bottom-up; the
// progress reporter (progress.go) reads the running counts (backupCounts)
// that all parts add to. The Prefetch files (prefetch.go) and the stdin
// stream (stdin.go) go through the same file and blob savers. Backup
// builds the parts (buildParts), runs them (run) and writes the snapshot
// (writeSnapshot).
type backup struct {
	repo    BackupRepo
	opts    BackupOptions
	dbGlobs []string
	names   *idNames
	start   time.Time
	// cancel ends the backup with a cause: a failed tree save, a panic.
	cancel context.CancelCauseFunc
	verify dedupVerifier // set when the repository is degraded (dictdamage.go)

	snPaths    []string       // the paths the snapshot records: Paths and the stdin file
	parent     *repo.Snapshot // nil for a first backup
	parentRoot *tree.Tree     // parent's root tree; nil when it could not be loaded
	// parentCutoff: a parent's file with mtime at or after this (ns) is re-read.
	parentCutoff int64

	counts   backupCounts
	problems problemList
	walker   *treeWalker
	files    *fileSaver
	blobs    *blobSaver
	trees    *treeSaver
	progress *progressReporter
	stdin    *stdinStream    // nil without one
	group    *errgroup.Group // of the pipeline's goroutines (run)
}

// Backup takes a snapshot of opts.Paths. When some files could not be
// captured cleanly it still writes the snapshot and returns it together
// with an error matching ErrIncomplete.
func Backup(ctx context.Context, r BackupRepo, opts BackupOptions) (*repo.Snapshot, error) {
	var paths []string
	if len(opts.Paths) > 0 || opts.Stdin == nil {
		var err error
		if paths, err = cleanPaths(opts.Paths); err != nil {
			return nil, err
		}
	}
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	b, err := newBackup(ctx, r, withBackupDefaults(opts), paths, cancel)
	if err != nil {
		return nil, err
	}
	rootID, err := b.run(ctx, paths)
	if err != nil {
		return nil, err
	}
	return b.writeSnapshot(ctx, rootID)
}

// withBackupDefaults fills in the defaults of the options left zero.
func withBackupDefaults(opts BackupOptions) BackupOptions {
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.Retries == 0 {
		opts.Retries = 2
	} else if opts.Retries < 0 {
		opts.Retries = 0
	}
	if opts.Workers <= 0 {
		opts.Workers = 2
	}
	if opts.Savers <= 0 {
		opts.Savers = 2
	}
	if opts.ProgressEvery <= 0 {
		opts.ProgressEvery = time.Second
	}
	return opts
}

// newBackup checks the options, finds the parent snapshot and builds the
// parts of the pipeline; cancel cancels ctx with a cause.
func newBackup(ctx context.Context, r BackupRepo, opts BackupOptions, paths []string, cancel context.CancelCauseFunc) (*backup, error) {
	cfg := r.Config()
	b := &backup{repo: r, opts: opts, dbGlobs: opts.DBGlobs, names: newIDNames(), start: opts.Now(), cancel: cancel, snPaths: paths}
	if b.dbGlobs == nil {
		b.dbGlobs = cfg.DBGlobs
	}
	for _, g := range append(append([]string{}, b.dbGlobs...), opts.Excludes...) {
		if _, err := filepath.Match(g, ""); err != nil {
			return nil, fmt.Errorf("bad glob %q: %w", g, err)
		}
	}
	if opts.Stdin != nil {
		p, err := StdinPath(opts.Stdin.Path, paths)
		if err != nil {
			return nil, err
		}
		b.stdin = newStdinStream(opts.Stdin, p, b.names, b.start)
		b.snPaths = withStdin(paths, p)
	}
	if err := b.loadParent(ctx); err != nil {
		return nil, err
	}
	pol := cfg.Polynomial()
	if opts.Polynomial != 0 {
		pol = opts.Polynomial
	}
	b.buildParts(pol, cfg.Profiles)
	return b, nil
}

// loadParent finds the parent snapshot and loads its root tree, and sees
// whether the repository is degraded (dictdamage.go).
func (b *backup) loadParent(ctx context.Context) error {
	parent, err := b.findParent(ctx, b.snPaths)
	if err != nil {
		return err
	}
	if err := b.checkDegraded(ctx); err != nil {
		return err
	}
	if parent == nil {
		return nil
	}
	b.parentCutoff = parent.Time.Truncate(time.Second).UnixNano()
	root, err := b.repo.LoadTree(ctx, parent.Tree)
	if err != nil {
		// A damaged parent only costs re-reading; say so and go on.
		b.addProblem(repo.Problem{Path: "(parent snapshot " + parent.ID.Short() + ")", Kind: repo.ProblemWarning, Error: err.Error()})
		return nil
	}
	b.parent, b.parentRoot = parent, root
	return nil
}

// frameSize is the size of the frames the backup gathers new chunks into:
// the repository's in version 2, 0 (a frame per chunk) in version 1.
func frameSize(cfg repo.Config) int {
	if cfg.Version < 2 {
		return 0
	}
	return int(cfg.FrameSize)
}

// buildParts builds the parts of the pipeline (see backup) and wires them
// together.
func (b *backup) buildParts(pol chunker.Pol, profiles map[repo.ProfileName]repo.ChunkProfile) {
	b.blobs = newBlobSaver(b.repo, &b.counts, 2*b.opts.Savers, frameSize(b.repo.Config()))
	b.blobs.usable = b.usable
	if b.verify != nil {
		b.blobs.replace = b.verify.ReplaceBlob
	}
	src := sources{roots: b.opts.SourceRoots, substitutes: b.opts.Substitutes}
	b.files = &fileSaver{sources: src, blobs: b.blobs, counts: &b.counts, problems: &b.problems, onPanic: b.recoverCancel,
		pol: pol, profiles: profiles, dbGlobs: b.dbGlobs, retries: b.opts.Retries, parentCutoff: b.parentCutoff,
		heldStill: b.opts.HeldStill, queue: make(chan fileJob, 4*b.opts.Workers), links: map[[2]uint64]*future{}}
	b.trees = &treeSaver{repo: b.repo, counts: &b.counts, fail: b.cancel, onPanic: b.recoverCancel}
	b.walker = &treeWalker{repo: b.repo, sources: src, excluded: b.excluded, names: b.names,
		files: b.files, trees: b.trees, counts: &b.counts, problems: &b.problems, stdin: b.stdin}
	b.progress = &progressReporter{report: b.opts.Progress, every: b.opts.ProgressEvery, counts: &b.counts,
		start: b.start, excluded: b.excluded, onPanic: b.recoverCancel}
}

// run runs the pipeline: the blob savers and file workers in an errgroup,
// the walk on one more of its goroutines, the progress reporter alongside.
// It returns the id of the snapshot's root tree, or the error that ended
// the backup. When it returns, nothing of the backup writes to the
// repository any more.
func (b *backup) run(ctx context.Context, paths []string) (blob.ID, error) {
	g, gctx := errgroup.WithContext(ctx)
	b.group = g
	savers := goWorkers(g, b.opts.Savers, "saving chunks", func() error { return b.blobs.run(gctx) })
	workers := goWorkers(g, b.opts.Workers, "reading files", func() error { return b.files.run(gctx) })
	stopProgress := b.progress.run(gctx, paths)
	var rootID blob.ID
	g.Go(func() (err error) {
		defer func() {
			b.files.close()
			workers.Wait()
			b.stdin.wait()
			b.blobs.close(gctx)
			savers.Wait()
		}()
		defer recoverTo(&err, "walking the tree")
		rootID, err = b.walk(gctx, paths)
		return err
	})
	err := g.Wait()
	// Directory trees are saved by goroutines outside the group; after a
	// failure they stop at ctx, or finish a save in progress: wait, so that
	// nothing writes to the repository after Backup returns.
	b.trees.wait()
	stopProgress(err == nil && context.Cause(ctx) == nil)
	if cause := context.Cause(ctx); err == nil || ((isRepoError(cause) || isPanic(cause)) && !errors.Is(cause, context.Canceled)) {
		// A failed tree save cancels ctx with its cause; the workers then
		// return "context canceled", which must not hide the cause.
		err = cause
	}
	return rootID, err
}

// goWorkers runs fn on n goroutines of g, each turning a panic into an
// error in where, and returns a group that counts them.
func goWorkers(g *errgroup.Group, n int, where string, fn func() error) *sync.WaitGroup {
	var running sync.WaitGroup
	for i := 0; i < n; i++ {
		running.Add(1)
		g.Go(func() (err error) {
			defer running.Done()
			defer recoverTo(&err, where)
			return fn()
		})
	}
	return &running
}

// walk reads the Prefetch files and starts the stdin stream, walks the
// paths and waits for the root tree to be saved; it returns its id.
func (b *backup) walk(ctx context.Context, paths []string) (blob.ID, error) {
	if err := b.prefetch(ctx, paths); err != nil {
		return blob.ID{}, err
	}
	b.startStdin(ctx) // after the quiesce window unless it was read in it
	root, err := b.walker.walk(ctx, paths, b.parentRoot)
	if err != nil {
		return blob.ID{}, err
	}
	<-root.done
	if root.node.Subtree.IsZero() {
		if err := context.Cause(ctx); err != nil {
			return blob.ID{}, err
		}
		return blob.ID{}, errors.New("backup: root tree was not saved")
	}
	return root.node.Subtree, nil
}

// writeSnapshot flushes the repository and writes the snapshot of root
// tree rootID. The error it returns with the snapshot matches
// ErrIncomplete or ErrStdinEmpty.
func (b *backup) writeSnapshot(ctx context.Context, rootID blob.ID) (*repo.Snapshot, error) {
	var stdinSource *repo.StdinSource
	if b.stdin != nil {
		if stdinSource = b.stdin.source; stdinSource == nil {
			return nil, fmt.Errorf("backup: the stdin stream of %s was not read to its end", b.stdin.path) // never a snapshot without it
		}
	}
	if err := b.blobs.unstored(); err != nil {
		return nil, err
	}
	if err := b.repo.Flush(ctx); err != nil {
		return nil, err
	}
	problems := b.problems.sorted()
	summary := b.counts.summary()
	summary.Duration, summary.Problems = time.Since(b.start).Seconds(), problems
	sn := &repo.Snapshot{
		Time: b.start, Tree: rootID, Paths: b.snPaths, Host: b.opts.Host, Tags: b.opts.Tags,
		DBGlobs: b.dbGlobs, Quiesce: b.opts.Quiesce, Stdin: stdinSource, Summary: summary,
	}
	if b.opts.QuiesceFunc != nil {
		sn.Quiesce = b.opts.QuiesceFunc()
	}
	if u := os.Getenv("USER"); u != "" {
		sn.Username = u
	}
	if b.parent != nil {
		sn.Parent = &b.parent.ID
	}
	if _, err := b.repo.SaveSnapshot(ctx, sn); err != nil {
		return nil, err
	}
	var errs []error
	if n := IncompleteCount(sn.Summary.Problems); n > 0 {
		errs = append(errs, fmt.Errorf("%w: %d files were not captured cleanly", ErrIncomplete, n))
	}
	if sn.Stdin != nil && sn.Stdin.Bytes == 0 {
		errs = append(errs, fmt.Errorf("%w: %s is an empty file", ErrStdinEmpty, sn.Stdin.Path))
	}
	return sn, errors.Join(errs...)
}

// IncompleteCount returns how many of ps make a snapshot incomplete: all
// but warnings (see repo.ProblemKind).
func IncompleteCount(ps []repo.Problem) (n int) {
	for _, p := range ps {
		if p.Kind != repo.ProblemWarning {
			n++
		}
	}
	return n
}

// cleanPaths makes paths absolute and clean, checks they exist, sorts them
// and drops paths inside another given path.
func cleanPaths(in []string) ([]string, error) {
	if len(in) == 0 {
		return nil, errors.New("no paths to back up")
	}
	var out []string
	for _, p := range in {
		abs, err := filepath.Abs(p)
		if err != nil {
			return nil, fmt.Errorf("path %q: %w", p, err)
		}
		if _, err := os.Lstat(abs); err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return nil, fmt.Errorf("%s: %w (check the spelling, or remove it from the command)", p, ErrPathNotFound)
			}
			return nil, fmt.Errorf("path %s: %w", p, err)
		}
		out = append(out, abs)
	}
	sort.Strings(out)
	kept := out[:0]
	for _, p := range out {
		if len(kept) > 0 {
			last := kept[len(kept)-1]
			if p == last || last == "/" || strings.HasPrefix(p, last+"/") {
				continue
			}
		}
		kept = append(kept, p)
	}
	return kept, nil
}

// findParent returns the last snapshot of the repository's list with the
// same host and paths, taken no later than this backup; nil when none is.
func (b *backup) findParent(ctx context.Context, paths []string) (*repo.Snapshot, error) {
	list, _, err := b.repo.Snapshots(ctx)
	if err != nil {
		return nil, err
	}
	want := strings.Join(paths, "\x00")
	for i := len(list) - 1; i >= 0; i-- {
		sn := list[i]
		if sn.Host == b.opts.Host && strings.Join(sn.Paths, "\x00") == want && !sn.Time.After(b.start) {
			return sn, nil
		}
	}
	return nil, nil
}

// addProblem records a problem of the snapshot.
func (b *backup) addProblem(p repo.Problem) { b.problems.add(p) }

// problemList collects the problems of a backup from any goroutine.
type problemList struct {
	mu   sync.Mutex
	list []repo.Problem
}

// add records p.
func (l *problemList) add(p repo.Problem) {
	l.mu.Lock()
	l.list = append(l.list, p)
	l.mu.Unlock()
}

// sorted returns the problems sorted by path.
func (l *problemList) sorted() []repo.Problem {
	l.mu.Lock()
	defer l.mu.Unlock()
	sort.Slice(l.list, func(i, j int) bool { return l.list[i].Path < l.list[j].Path })
	return l.list
}

// repoError marks failures of the repository (as opposed to the source).
type repoError struct{ err error }

func (e repoError) Error() string { return e.err.Error() }
func (e repoError) Unwrap() error { return e.err }

// isRepoError reports whether err is, or wraps, a repoError.
func isRepoError(err error) bool { var r repoError; return errors.As(err, &r) }

// excluded reports whether the absolute path p matches one of the
// Excludes globs, by its base name or as a whole (package exclude: the
// quiesce's choice of files to hold still uses the same matcher).
func (b *backup) excluded(p string) bool { return exclude.Match(b.opts.Excludes, p) }
