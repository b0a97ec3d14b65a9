// Package engine is what stasis does with a repository: back up a set of
// paths into a snapshot, restore a snapshot, list, compare and check. It
// talks to the repository through small interfaces declared here.
package engine

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/restic/chunker"
	"github.com/stasisbackup/stasis/repo"
	"github.com/stasisbackup/stasis/repo/blob"
	"github.com/stasisbackup/stasis/repo/tree"
	"golang.org/x/sync/errgroup"
	"golang.org/x/sys/unix"
)

// BackupRepo is what a backup needs from the repository.
type BackupRepo interface {
	Config() repo.Config
	Hash(data []byte) blob.ID
	HasBlob(id blob.ID) (bool, error)
	HasAllBlobs(ids []blob.ID) (bool, error)
	SaveBlob(ctx context.Context, t blob.Type, id blob.ID, data []byte) (repo.SaveResult, error)
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
	// Progress, when set, is called about every ProgressEvery from one goroutine.
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

type backup struct {
	repo     BackupRepo
	opts     BackupOptions
	pol      chunker.Pol
	profiles map[repo.ProfileName]repo.ChunkProfile
	dbGlobs  []string
	names    *idNames
	start    time.Time
	cancel   context.CancelCauseFunc
	verify   dedupVerifier // set when the repository is degraded (dictdamage.go)
	// treeSavers counts the goroutines that save directory trees.
	treeSavers sync.WaitGroup
	// parentCutoff: a parent's file with mtime at or after this (ns) is re-read.
	parentCutoff int64

	jobs   chan fileJob
	blobs  chan saveJob
	chunkB sync.Pool

	mu       sync.Mutex
	problems []repo.Problem
	links    map[[2]uint64]*future
	// prefetched: futures of Prefetch files by path; written before the walk.
	prefetched map[string]*future

	// The stdin stream (stdin.go); stdinFut is nil without one.
	group        *errgroup.Group
	parentRoot   *tree.Tree
	stdinPath    string
	stdinFut     *future
	stdinStarted bool
	stdinWG      sync.WaitGroup
	stdinSource  *repo.StdinSource

	filesNew, filesChanged, filesUnchanged, dirs, others  atomic.Int64
	totalBytes, bytesRead, blobsAdded, bytesAdded, stored atomic.Int64
	doneFiles, doneBytes, scanFiles, scanBytes            atomic.Int64
	scanDone                                              atomic.Bool
}

// future is a node that becomes known later.
type future struct {
	done chan struct{}
	node tree.Node
}

func resolved(n tree.Node) *future {
	f := &future{done: make(chan struct{}), node: n}
	close(f.done)
	return f
}

type fileJob struct {
	path, read string
	staged     bool // read is a Substitutes copy (not a SourceRoots snapshot)
	node       tree.Node
	parent     *tree.Node
	fut        *future
}

type saveJob struct {
	id      blob.ID
	data    []byte
	buf     *[]byte
	replace bool // the indexed copy does not decode (dictdamage.go)
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
	cfg := r.Config()
	b := &backup{repo: r, opts: opts, pol: cfg.Polynomial(), profiles: cfg.Profiles, dbGlobs: opts.DBGlobs,
		names: newIDNames(), start: opts.Now(), links: map[[2]uint64]*future{}}
	if opts.Polynomial != 0 {
		b.pol = opts.Polynomial
	}
	if b.dbGlobs == nil {
		b.dbGlobs = cfg.DBGlobs
	}
	for _, g := range append(append([]string{}, b.dbGlobs...), opts.Excludes...) {
		if _, err := filepath.Match(g, ""); err != nil {
			return nil, fmt.Errorf("bad glob %q: %w", g, err)
		}
	}
	var err error
	snPaths := paths
	if opts.Stdin != nil {
		if b.stdinPath, err = StdinPath(opts.Stdin.Path, paths); err != nil {
			return nil, err
		}
		snPaths = withStdin(paths, b.stdinPath)
		b.stdinFut = &future{done: make(chan struct{})}
	}
	parent, err := b.findParent(ctx, snPaths)
	if err != nil {
		return nil, err
	}
	if err := b.checkDegraded(ctx); err != nil {
		return nil, err
	}
	var parentRoot *tree.Tree
	if parent != nil {
		b.parentCutoff = parent.Time.Truncate(time.Second).UnixNano()
		if parentRoot, err = r.LoadTree(ctx, parent.Tree); err != nil {
			// A damaged parent only costs re-reading; say so and go on.
			b.addProblem(repo.Problem{Path: "(parent snapshot " + parent.ID.Short() + ")", Kind: repo.ProblemWarning, Error: err.Error()})
			parent, parentRoot = nil, nil
		}
	}
	b.parentRoot = parentRoot

	b.jobs = make(chan fileJob, 4*opts.Workers)
	b.blobs = make(chan saveJob, 2*opts.Savers)
	b.chunkB.New = func() any { s := make([]byte, 0, 64<<10); return &s } // grows to the chunk size in use

	ctx, b.cancel = context.WithCancelCause(ctx)
	defer b.cancel(nil)
	g, gctx := errgroup.WithContext(ctx)
	b.group = g
	var workers, savers sync.WaitGroup
	for i := 0; i < opts.Savers; i++ {
		savers.Add(1)
		g.Go(func() (err error) {
			defer savers.Done()
			defer recoverTo(&err, "saving chunks")
			return b.saver(gctx)
		})
	}
	for i := 0; i < opts.Workers; i++ {
		workers.Add(1)
		g.Go(func() (err error) {
			defer workers.Done()
			defer recoverTo(&err, "reading files")
			return b.fileWorker(gctx)
		})
	}
	stopProgress := b.startProgress(gctx, paths)

	var rootID blob.ID
	g.Go(func() (err error) {
		defer func() {
			close(b.jobs)
			workers.Wait()
			b.stdinWG.Wait()
			close(b.blobs)
			savers.Wait()
		}()
		defer recoverTo(&err, "walking the tree")
		if err := b.prefetch(gctx, paths, parentRoot); err != nil {
			return err
		}
		b.startStdin(gctx) // after the quiesce window unless it was read in it
		root, err := b.walkRoot(gctx, paths, parentRoot)
		if err != nil {
			return err
		}
		<-root.done
		if root.node.Subtree.IsZero() {
			if err := context.Cause(gctx); err != nil {
				return err
			}
			return errors.New("backup: root tree was not saved")
		}
		rootID = root.node.Subtree
		return nil
	})
	err = g.Wait()
	// Directory trees are saved by goroutines outside the group; after a
	// failure they stop at ctx, or finish a save in progress: wait, so that
	// nothing writes to the repository after Backup returns.
	b.treeSavers.Wait()
	stopProgress()
	if cause := context.Cause(ctx); err == nil || ((isRepoError(cause) || isPanic(cause)) && !errors.Is(cause, context.Canceled)) {
		// A failed tree save cancels ctx with its cause; the workers then
		// return "context canceled", which must not hide the cause.
		err = cause
	}
	if err != nil {
		return nil, err
	}
	if opts.Stdin != nil && b.stdinSource == nil {
		return nil, fmt.Errorf("backup: the stdin stream of %s was not read to its end", b.stdinPath) // never a snapshot without it
	}
	if err := r.Flush(ctx); err != nil {
		return nil, err
	}
	sort.Slice(b.problems, func(i, j int) bool { return b.problems[i].Path < b.problems[j].Path })
	sn := &repo.Snapshot{
		Time: b.start, Tree: rootID, Paths: snPaths, Host: opts.Host, Tags: opts.Tags,
		DBGlobs: b.dbGlobs, Quiesce: opts.Quiesce, Stdin: b.stdinSource,
		Summary: repo.Summary{
			FilesNew: b.filesNew.Load(), FilesChanged: b.filesChanged.Load(), FilesUnchanged: b.filesUnchanged.Load(),
			Dirs: b.dirs.Load(), Others: b.others.Load(), TotalBytes: b.totalBytes.Load(), BytesRead: b.bytesRead.Load(),
			BlobsAdded: b.blobsAdded.Load(), BytesAdded: b.bytesAdded.Load(), StoredAdded: b.stored.Load(),
			Duration: time.Since(b.start).Seconds(), Problems: b.problems,
		},
	}
	if opts.QuiesceFunc != nil {
		sn.Quiesce = opts.QuiesceFunc()
	}
	if u := os.Getenv("USER"); u != "" {
		sn.Username = u
	}
	if parent != nil {
		sn.Parent = &parent.ID
	}
	if _, err := r.SaveSnapshot(ctx, sn); err != nil {
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

func (b *backup) addProblem(p repo.Problem) {
	b.mu.Lock()
	b.problems = append(b.problems, p)
	b.mu.Unlock()
}

// pathTrie holds the selected paths: a node with selected=true is backed up
// whole; other nodes are the directories leading to selected ones. A node
// with stdin set is the stdin file (stdin.go).
type pathTrie struct {
	selected bool
	children map[string]*pathTrie
	stdin    *future
}

func (b *backup) walkRoot(ctx context.Context, paths []string, parentRoot *tree.Tree) (*future, error) {
	root := &pathTrie{children: map[string]*pathTrie{}}
	for _, p := range paths {
		n := root
		if p == "/" {
			n.selected = true
			continue
		}
		for _, c := range strings.Split(strings.TrimPrefix(p, "/"), "/") {
			if n.children[c] == nil {
				n.children[c] = &pathTrie{children: map[string]*pathTrie{}}
			}
			n = n.children[c]
		}
		n.selected = true
	}
	if b.stdinFut != nil {
		b.addStdin(root)
	}
	if root.selected {
		fi, err := os.Lstat(b.source("/"))
		if err != nil {
			return nil, err
		}
		return b.walkDir(ctx, "/", nodeFromInfo("/", fi, b.names), parentRoot, nil)
	}
	return b.walkDir(ctx, "/", tree.Node{Kind: tree.Dir, Name: "/"}, parentRoot, root)
}

// walkDir scans a directory and returns a future for its node. Subdirectories
// are walked recursively in this goroutine; files go to the workers; the
// directory's tree is saved by a goroutine that waits for its children.
// only, when set, restricts the children to the trie's (a directory on the
// way to a selected path).
func (b *backup) walkDir(ctx context.Context, dir string, node tree.Node, parent *tree.Tree, only *pathTrie) (*future, error) {
	var names []string
	var readErr error
	if only != nil {
		for name := range only.children {
			names = append(names, name)
		}
		sort.Strings(names)
	} else {
		names, readErr = readDirNames(b.source(dir))
		b.dirs.Add(1)
	}
	var kids []*future
	for _, name := range names {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		p := filepath.Join(dir, name)
		if f := b.prefetched[p]; f != nil {
			kids = append(kids, f) // read already, whatever it is now
			continue
		}
		var sub *pathTrie
		if only != nil {
			sub = only.children[name]
			if sub.stdin != nil {
				kids = append(kids, sub.stdin)
				continue
			}
			if sub.selected {
				sub = nil
			}
		} else if b.excluded(p) {
			continue
		}
		fi, err := os.Lstat(b.source(p))
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) && only == nil {
				continue // removed since readdir: it is not part of this snapshot
			}
			if errors.Is(err, fs.ErrNotExist) && sub != nil && b.stdinFut != nil && strings.HasPrefix(b.stdinPath, p+"/") {
				// Only on the way to the stdin file (existing paths cannot be below it).
				f, err := b.walkDir(ctx, p, b.virtualDir(name), nil, sub)
				if err != nil {
					return nil, err
				}
				kids = append(kids, f)
				continue
			}
			b.addProblem(repo.Problem{Path: p, Kind: repo.ProblemUnreadable, Error: err.Error()})
			kids = append(kids, resolved(tree.Node{Name: name, Kind: tree.File, Flags: tree.Unreadable, Error: err.Error()}))
			continue
		}
		n := nodeFromInfo(name, fi, b.names)
		var pn *tree.Node
		if parent != nil {
			pn = parent.Find(name)
		}
		switch {
		case n.Kind == tree.Dir:
			var pt *tree.Tree
			if pn != nil && pn.Kind == tree.Dir {
				if pt, err = b.repo.LoadTree(ctx, pn.Subtree); err != nil {
					pt = nil // re-read everything below; data is still deduplicated
				}
			}
			f, err := b.walkDir(ctx, p, n, pt, sub)
			if err != nil {
				return nil, err
			}
			kids = append(kids, f)
		case sub != nil:
			// A path leading to a selected path is not a directory any more.
			return nil, fmt.Errorf("%s is not a directory", p)
		case n.Kind == tree.File:
			kids = append(kids, b.submitFile(ctx, p, n, pn))
		case n.Kind == tree.Symlink:
			target, err := os.Readlink(b.source(p))
			if err != nil {
				n.Flags, n.Error = tree.Unreadable, err.Error()
				b.addProblem(repo.Problem{Path: p, Kind: repo.ProblemUnreadable, Error: err.Error()})
			}
			n.LinkTarget = target
			b.others.Add(1)
			kids = append(kids, resolved(n))
		default:
			b.others.Add(1)
			kids = append(kids, resolved(n))
		}
	}
	if readErr != nil {
		node.Flags, node.Error = tree.Unreadable, readErr.Error()
		b.addProblem(repo.Problem{Path: dir, Kind: repo.ProblemUnreadable, Error: readErr.Error()})
	}
	f := &future{done: make(chan struct{}), node: node}
	b.treeSavers.Add(1)
	go func() {
		defer b.treeSavers.Done()
		defer close(f.done)
		defer b.recoverCancel("saving the tree of " + dir)
		t := &tree.Tree{Nodes: make([]tree.Node, 0, len(kids))}
		for _, k := range kids {
			select {
			case <-k.done:
			case <-ctx.Done():
				return
			}
			t.Nodes = append(t.Nodes, k.node)
		}
		id, res, err := b.repo.SaveTree(ctx, t)
		if err != nil {
			b.cancel(repoError{fmt.Errorf("save tree of %s: %w", dir, err)})
			return
		}
		if res.Added {
			b.stored.Add(int64(res.Stored))
		}
		f.node.Subtree = id
	}()
	return f, nil
}

// prefetch reads opts.Prefetch before the walk and then calls
// opts.AfterPrefetch (see BackupOptions).
func (b *backup) prefetch(ctx context.Context, paths []string, parentRoot *tree.Tree) error {
	if b.opts.Stdin != nil && b.opts.Stdin.InWindow {
		b.startStdin(ctx)
	}
	if len(b.opts.Prefetch) == 0 && b.opts.AfterPrefetch == nil {
		return nil
	}
	b.prefetched = map[string]*future{}
	var futs []*future
	for _, p := range b.opts.Prefetch {
		p = filepath.Clean(p)
		root := containing(paths, p)
		if root == "" || b.prefetched[p] != nil {
			continue
		}
		excluded := false
		for q := p; q != root && !excluded; q = filepath.Dir(q) {
			excluded = b.excluded(q)
		}
		fi, err := os.Lstat(b.source(p))
		if excluded || err != nil || !fi.Mode().IsRegular() {
			continue // the walk finds it, or not, as usual
		}
		f := b.submitFile(ctx, p, nodeFromInfo(filepath.Base(p), fi, b.names), b.parentNode(ctx, parentRoot, p))
		b.prefetched[p] = f
		futs = append(futs, f)
	}
	for _, f := range futs {
		select {
		case <-f.done:
		case <-ctx.Done():
			return context.Cause(ctx)
		}
	}
	if b.opts.Stdin != nil && b.opts.Stdin.InWindow {
		if err := b.waitStdin(ctx); err != nil {
			return err
		}
	}
	if err := ctx.Err(); err != nil {
		return context.Cause(ctx)
	}
	if b.opts.AfterPrefetch != nil {
		b.opts.AfterPrefetch()
	}
	return nil
}

// containing returns the path of paths that is p or holds p, or "".
func containing(paths []string, p string) string {
	for _, root := range paths {
		if p == root || root == "/" || strings.HasPrefix(p, root+"/") {
			return root
		}
	}
	return ""
}

// parentNode finds the node of absolute path p in the parent snapshot's
// root tree, or nil.
func (b *backup) parentNode(ctx context.Context, root *tree.Tree, p string) *tree.Node {
	t := root
	parts := strings.Split(strings.TrimPrefix(p, "/"), "/")
	for i, c := range parts {
		if t == nil {
			return nil
		}
		n := t.Find(c)
		if n == nil || i == len(parts)-1 {
			return n
		}
		if n.Kind != tree.Dir {
			return nil
		}
		var err error
		if t, err = b.repo.LoadTree(ctx, n.Subtree); err != nil {
			return nil
		}
	}
	return nil
}

// source returns where to read the absolute path p: below a SourceRoots
// key, the same place below its value; else p.
func (b *backup) source(p string) string {
	best := ""
	for root := range b.opts.SourceRoots {
		if len(root) > len(best) && (p == root || root == "/" || strings.HasPrefix(p, root+"/")) {
			best = root
		}
	}
	if best == "" {
		return p
	}
	return filepath.Join(b.opts.SourceRoots[best], strings.TrimPrefix(p, best))
}

func readDirNames(dir string) ([]string, error) {
	d, err := os.Open(dir)
	if err != nil {
		return nil, err
	}
	defer d.Close()
	names, err := d.Readdirnames(-1)
	sort.Strings(names)
	return names, err
}

func (b *backup) excluded(p string) bool {
	base := filepath.Base(p)
	for _, g := range b.opts.Excludes {
		if ok, _ := filepath.Match(g, base); ok {
			return true
		}
		if ok, _ := filepath.Match(g, p); ok {
			return true
		}
	}
	return false
}

func (b *backup) submitFile(ctx context.Context, p string, n tree.Node, pn *tree.Node) *future {
	f := &future{done: make(chan struct{}), node: n}
	if n.Links > 1 {
		key := [2]uint64{n.Device, n.Inode}
		b.mu.Lock()
		first, seen := b.links[key]
		if !seen {
			b.links[key] = f
		}
		b.mu.Unlock()
		if seen {
			// Another name of a file already in this snapshot: same content.
			go func() {
				defer close(f.done)
				defer b.recoverCancel("linking " + p)
				select {
				case <-first.done:
				case <-ctx.Done():
					return
				}
				f.node.Content, f.node.Size, f.node.Flags, f.node.Error = first.node.Content, first.node.Size, first.node.Flags, first.node.Error
			}()
			return f
		}
	}
	read, staged := b.source(p), false
	if s, ok := b.opts.Substitutes[p]; ok {
		read, staged = s, true
	}
	select {
	case b.jobs <- fileJob{path: p, read: read, staged: staged, node: n, parent: pn, fut: f}:
	case <-ctx.Done():
		close(f.done)
	}
	return f
}

func (b *backup) fileWorker(ctx context.Context) error {
	// One chunker per worker: its 512 KiB read buffer is reused for every file.
	ck := chunker.NewWithBoundaries(nil, b.pol, repo.ProfileDefault.Min, repo.ProfileDefault.Max)
	for job := range b.jobs {
		if err := b.saveFile(ctx, &job, ck); err != nil {
			close(job.fut.done)
			return err
		}
		close(job.fut.done)
	}
	return nil
}

// saveFile fills job.fut.node with the file's content. Errors returned are
// fatal (repository failures, cancellation); a file that cannot be read is
// recorded as a problem instead.
func (b *backup) saveFile(ctx context.Context, job *fileJob, ck *chunker.Chunker) error {
	n := &job.fut.node
	pn := job.parent
	defer func() {
		b.doneFiles.Add(1)
		b.totalBytes.Add(int64(n.Size))
	}()
	if pn != nil && pn.Kind == tree.File && pn.Flags == 0 && pn.ContentError == "" && !job.staged &&
		pn.Size == n.Size && pn.MTime == n.MTime && pn.CTime == n.CTime && pn.Inode == n.Inode &&
		pn.MTime < b.parentCutoff {
		ids := make([]blob.ID, 0, len(pn.Content))
		for _, e := range pn.Content {
			if !e.Hole {
				ids = append(ids, e.ID)
			}
		}
		ok, err := b.repo.HasAllBlobs(ids)
		if err == nil && ok {
			ok, err = b.usable(ctx, ids...)
		}
		if err != nil {
			return fmt.Errorf("look up blobs of %s: %w", job.path, err)
		}
		if ok {
			n.Content = pn.Content
			b.filesUnchanged.Add(1)
			b.doneBytes.Add(int64(n.Size))
			return nil
		}
	}
	if pn == nil {
		b.filesNew.Add(1)
	} else {
		b.filesChanged.Add(1)
	}
	profile := b.profileFor(job.path)
	for attempt := 0; ; attempt++ {
		changed, err := b.readFile(ctx, job, profile, ck)
		if err != nil {
			if ctx.Err() != nil || isRepoError(err) || isPanic(err) { // a bug is not an unreadable file
				return err
			}
			n.Flags, n.Error, n.Content, n.Size = tree.Unreadable, err.Error(), nil, 0
			b.addProblem(repo.Problem{Path: job.path, Kind: repo.ProblemUnreadable, Error: err.Error()})
			return nil
		}
		if !changed {
			return nil
		}
		if attempt >= b.opts.Retries {
			n.Flags = tree.Changed
			n.Error = fmt.Sprintf("changed while being read (%d attempts)", attempt+1)
			b.addProblem(repo.Problem{Path: job.path, Kind: repo.ProblemChanged, Error: n.Error})
			return nil
		}
	}
}

// repoError marks failures of the repository (as opposed to the source).
type repoError struct{ err error }

func (e repoError) Error() string { return e.err.Error() }
func (e repoError) Unwrap() error { return e.err }

func isRepoError(err error) bool { var r repoError; return errors.As(err, &r) }

// readFile reads, chunks and saves one file and reports whether it changed
// while it was read (size, mtime or ctime differ before and after).
func (b *backup) readFile(ctx context.Context, job *fileJob, profile repo.ChunkProfile, ck *chunker.Chunker) (changed bool, err error) {
	n := &job.fut.node
	f, err := os.Open(job.read)
	if err != nil {
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
	content, read, err := b.chunkFile(ctx, f, int64(bn.Size), profile, ck)
	b.bytesRead.Add(read)
	if err != nil {
		return false, err
	}
	after, err := f.Stat()
	if err != nil {
		return false, err
	}
	an := nodeFromInfo(n.Name, after, nil)
	n.Content = content
	var total uint64
	for _, e := range content {
		total += e.Length
	}
	n.Size = total
	return !sameFile(&bn, &an) || total != bn.Size, nil
}

// chunkWindow is the span of a file that is chunked independently of the
// rest: chunk boundaries are forced at multiples of it (from the start of
// the file), so several goroutines can chunk one large file at once. A
// database updated in place keeps its boundaries from day to day, and a
// forced cut every 32 MiB costs at most one extra chunk per window.
const chunkWindow = 32 << 20

// span is a piece of a file: a hole, or data to chunk.
type span struct {
	start, end int64
	hole       bool
}

// chunkFile splits the data regions of f (holes are skipped via
// SEEK_DATA/SEEK_HOLE) into content-defined chunks, window by window (see
// chunkWindow), and hands new chunks to the savers. A file of several
// windows is chunked by several goroutines, ck serving the first.
func (b *backup) chunkFile(ctx context.Context, f *os.File, size int64, profile repo.ChunkProfile, ck *chunker.Chunker) ([]tree.Extent, int64, error) {
	var spans []span
	for off := int64(0); off < size; {
		start, end := dataRegion(f, off, size)
		if start > off {
			spans = append(spans, span{off, start, true})
		}
		if start >= size {
			break
		}
		for s := start; s < end; {
			e := min(end, (s/chunkWindow+1)*chunkWindow)
			spans = append(spans, span{s, e, false})
			s = e
		}
		off = end
	}
	parts := make([][]tree.Extent, len(spans))
	reads := make([]int64, len(spans))
	var data []int
	for i, sp := range spans {
		if sp.hole {
			parts[i] = []tree.Extent{{Hole: true, Length: uint64(sp.end - sp.start)}}
		} else {
			data = append(data, i)
		}
	}
	var err error
	if len(data) <= 1 {
		for _, i := range data {
			if parts[i], reads[i], err = b.chunkSpan(ctx, f, spans[i], profile, ck); err != nil {
				return nil, reads[i], err
			}
		}
	} else {
		chunkers := make([]*chunker.Chunker, workers(len(data)))
		chunkers[0] = ck
		for w := 1; w < len(chunkers); w++ {
			chunkers[w] = chunker.NewWithBoundaries(nil, b.pol, profile.Min, profile.Max)
		}
		err = parallel(ctx, len(data), func(ctx context.Context, w, k int) error {
			i := data[k]
			var err error
			parts[i], reads[i], err = b.chunkSpan(ctx, f, spans[i], profile, chunkers[w])
			return err
		})
	}
	var content []tree.Extent
	var read int64
	for i := range spans {
		content = append(content, parts[i]...)
		read += reads[i]
	}
	return content, read, err
}

// chunkSpan chunks one data span. A span that reads short (the file shrank
// while it was read) ends early; the caller sees the change in the total.
func (b *backup) chunkSpan(ctx context.Context, f *os.File, sp span, profile repo.ChunkProfile, ck *chunker.Chunker) ([]tree.Extent, int64, error) {
	return b.chunkReader(ctx, io.NewSectionReader(f, sp.start, sp.end-sp.start), profile, ck)
}

// chunkReader chunks rd to its end (a file's span, or a stream) and hands
// new chunks to the savers.
func (b *backup) chunkReader(ctx context.Context, rd io.Reader, profile repo.ChunkProfile, ck *chunker.Chunker) ([]tree.Extent, int64, error) {
	var content []tree.Extent
	var read int64
	ck.ResetWithBoundaries(rd, b.pol, profile.Min, profile.Max)
	ck.SetAverageBits(profile.AvgBits)
	for {
		bufp := b.chunkB.Get().(*[]byte)
		c, err := ck.Next((*bufp)[:0])
		if err == io.EOF {
			b.chunkB.Put(bufp)
			return content, read, nil
		}
		if err != nil {
			b.chunkB.Put(bufp)
			return nil, read, err
		}
		*bufp = c.Data[:0]
		read += int64(c.Length)
		b.doneBytes.Add(int64(c.Length))
		id := b.repo.Hash(c.Data)
		content = append(content, tree.Extent{ID: id, Length: uint64(c.Length)})
		has, err := b.repo.HasBlob(id)
		replace := false
		if err == nil && has {
			has, err = b.usable(ctx, id)
			replace = !has
		}
		if err != nil {
			b.chunkB.Put(bufp)
			return nil, read, repoError{fmt.Errorf("look up chunk %s: %w", id.Short(), err)}
		}
		if has {
			b.chunkB.Put(bufp)
			continue
		}
		select {
		case b.blobs <- saveJob{id: id, data: c.Data, buf: bufp, replace: replace}:
		case <-ctx.Done():
			return nil, read, ctx.Err()
		}
	}
}

// dataRegion returns the next data region [start, end) at or after off,
// using SEEK_DATA/SEEK_HOLE; start == size means only a hole is left. On
// file systems without hole support the whole rest is one region.
func dataRegion(f *os.File, off, size int64) (int64, int64) {
	fd := int(f.Fd())
	start, err := unix.Seek(fd, off, unix.SEEK_DATA)
	if err != nil {
		if errors.Is(err, unix.ENXIO) {
			return size, size
		}
		return off, size
	}
	if start > size {
		return size, size
	}
	end, err := unix.Seek(fd, start, unix.SEEK_HOLE)
	if err != nil || end > size {
		end = size
	}
	return start, end
}

func (b *backup) saver(ctx context.Context) error {
	for job := range b.blobs {
		var res repo.SaveResult
		var err error
		if job.replace {
			res, err = b.verify.ReplaceBlob(ctx, blob.Data, job.id, job.data)
		} else {
			res, err = b.repo.SaveBlob(ctx, blob.Data, job.id, job.data)
		}
		b.chunkB.Put(job.buf)
		if err != nil {
			return repoError{fmt.Errorf("save chunk %s: %w", job.id.Short(), err)}
		}
		if res.Added {
			b.blobsAdded.Add(1)
			b.bytesAdded.Add(int64(len(job.data)))
			b.stored.Add(int64(res.Stored))
		}
	}
	return nil
}

// startProgress runs a scanner that counts what is to be backed up and a
// ticker that reports progress; the returned function stops both.
func (b *backup) startProgress(ctx context.Context, paths []string) func() {
	if b.opts.Progress == nil {
		return func() {}
	}
	ctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Add(2)
	go func() {
		defer wg.Done()
		defer b.recoverCancel("counting files for progress")
		for _, p := range paths {
			filepath.WalkDir(p, func(path string, d fs.DirEntry, err error) error {
				if ctx.Err() != nil {
					return ctx.Err()
				}
				if path != p && b.excluded(path) { // as the backup's walk does
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
						b.scanFiles.Add(1)
						b.scanBytes.Add(fi.Size())
					}
				}
				return nil
			})
		}
		b.scanDone.Store(true)
	}()
	go func() {
		defer wg.Done()
		defer b.recoverCancel("reporting progress")
		t := time.NewTicker(b.opts.ProgressEvery)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				b.opts.Progress(b.progress())
			}
		}
	}()
	return func() { cancel(); wg.Wait() }
}

func (b *backup) progress() Progress {
	return Progress{Files: b.doneFiles.Load(), Bytes: b.doneBytes.Load(), TotalFiles: b.scanFiles.Load(),
		TotalBytes: b.scanBytes.Load(), ScanDone: b.scanDone.Load(), Elapsed: time.Since(b.start)}
}
