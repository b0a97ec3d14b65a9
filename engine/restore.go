package engine

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"unsafe"

	"github.com/stasisbackup/stasis/repo"
	"github.com/stasisbackup/stasis/repo/blob"
	"github.com/stasisbackup/stasis/repo/tree"
	"golang.org/x/sync/errgroup"
	"golang.org/x/sys/unix"
)

// RestoreRepo is what a restore needs from the repository.
type RestoreRepo interface {
	LoadTree(ctx context.Context, id blob.ID) (*tree.Tree, error)
	LoadBlob(ctx context.Context, id blob.ID, buf []byte) ([]byte, error)
	LookupBlobs(ctx context.Context, ids []blob.ID) ([]repo.Location, []bool, error)
	LoadBlobAt(ctx context.Context, id blob.ID, loc repo.Location, buf []byte) ([]byte, error)
}

var _ RestoreRepo = (*repo.Repository)(nil)

// RestoreOptions say where and what to restore.
type RestoreOptions struct {
	Target    string   // directory to restore into; backed-up paths are recreated below it
	Includes  []string // snapshot paths (absolute, as backed up) to restore; none: everything
	Overwrite bool     // allow a non-empty target; existing files are replaced
	Workers   int      // files written at once (default 4)
	// Progress, when set, counts restored files (hard links included) and
	// their bytes as chunks are written; at the end it holds Files and
	// Bytes of the result. Its totals are the snapshot's (sn.Summary) when
	// the whole snapshot is restored, unknown with Includes.
	Progress *Counts
}

// RestoreResult counts what was restored and lists what was not.
type RestoreResult struct {
	Files, Dirs, Others, Bytes int64
	Problems                   []repo.Problem
}

// ErrRestoreIncomplete is matched when some files could not be restored;
// RestoreResult.Problems names each one.
var ErrRestoreIncomplete = errors.New("restore is incomplete")

// ErrTargetNotEmpty is matched when the target has files and Overwrite is false.
var ErrTargetNotEmpty = errors.New("target directory is not empty")

type restorer struct {
	repo     RestoreRepo
	opts     RestoreOptions
	target   string
	includes []string
	isRoot   bool

	mu       sync.Mutex
	problems []repo.Problem
	dirs     []dirMeta
	links    map[[2]uint64]string // (device, inode) → restored path of the first name
	pending  []linkJob
	// written holds the target paths whose content this restore wrote; a
	// hard link is made only to one of them, never to a file that was at
	// the path before (--overwrite) when the first name failed.
	written map[string]bool
	// dirLocks serialise the creation of files in one directory. The
	// kernel holds a directory's lock while it allocates an inode (slow on
	// ext4 right after a deletion, see walk); workers waiting for it in the
	// kernel spin on the CPU (rwsem_spin_on_owner), here they sleep.
	dirLocks map[string]*sync.Mutex

	files, ndirs, others, bytes, selected atomic.Int64
}

type dirMeta struct {
	path string
	node tree.Node
}

type linkJob struct {
	path, first string
	node        tree.Node
}

type restoreJob struct {
	path, src string
	node      tree.Node
}

// Restore writes the snapshot's files below opts.Target. Every chunk is
// verified (LoadBlob hashes it) before it is written; each file is written
// under a temporary name and renamed when complete; metadata is applied after
// content, and to directories after their contents. Files that cannot be
// restored are listed and the error matches ErrRestoreIncomplete.
func Restore(ctx context.Context, r RestoreRepo, sn *repo.Snapshot, opts RestoreOptions) (*RestoreResult, error) {
	if opts.Target == "" {
		return nil, errors.New("restore: no target directory given")
	}
	target, err := filepath.Abs(opts.Target)
	if err != nil {
		return nil, err
	}
	if err := prepareTarget(target, opts.Overwrite); err != nil {
		return nil, err
	}
	if opts.Workers <= 0 {
		opts.Workers = 4
	}
	rs := &restorer{repo: r, opts: opts, target: target, isRoot: os.Geteuid() == 0, links: map[[2]uint64]string{},
		written: map[string]bool{}, dirLocks: map[string]*sync.Mutex{}}
	for _, inc := range opts.Includes {
		rs.includes = append(rs.includes, filepath.Clean("/"+inc))
	}
	if len(rs.includes) == 0 {
		s := sn.Summary
		opts.Progress.SetTotals(s.FilesNew+s.FilesChanged+s.FilesUnchanged, s.TotalBytes)
	}
	root, err := r.LoadTree(ctx, sn.Tree)
	if err != nil {
		return nil, fmt.Errorf("snapshot %s: %w", sn.ID.Short(), err)
	}
	jobs := make(chan restoreJob, 2*opts.Workers)
	g, gctx := errgroup.WithContext(ctx)
	for i := 0; i < opts.Workers; i++ {
		g.Go(func() error {
			buf := make([]byte, 0, 1<<20)
			for j := range jobs {
				buf = rs.restoreFile(gctx, j, buf)
			}
			return nil
		})
	}
	g.Go(func() error {
		defer close(jobs)
		return rs.walk(gctx, "/", root, jobs)
	})
	if err := g.Wait(); err != nil {
		return nil, err
	}
	if len(rs.includes) > 0 && rs.selected.Load() == 0 {
		return nil, fmt.Errorf("restore: nothing in snapshot %s matches %s (see `stasis ls %s`)", sn.ID.Short(), strings.Join(opts.Includes, ", "), sn.ID.Short())
	}
	for _, l := range rs.pending {
		rs.restoreLink(l)
	}
	// Directory metadata last, deepest first, so writing inside them is done.
	sort.Slice(rs.dirs, func(i, j int) bool { return len(rs.dirs[i].path) > len(rs.dirs[j].path) })
	for _, d := range rs.dirs {
		if err := rs.applyMeta(d.path, &d.node); err != nil {
			rs.problem(d.path, err)
		}
	}
	res := &RestoreResult{Files: rs.files.Load(), Dirs: rs.ndirs.Load(), Others: rs.others.Load(), Bytes: rs.bytes.Load(), Problems: rs.problems}
	sort.Slice(res.Problems, func(i, j int) bool { return res.Problems[i].Path < res.Problems[j].Path })
	if len(res.Problems) > 0 {
		return res, fmt.Errorf("%w: %d files could not be restored", ErrRestoreIncomplete, len(res.Problems))
	}
	return res, nil
}

func prepareTarget(target string, overwrite bool) error {
	ents, err := os.ReadDir(target)
	if errors.Is(err, fs.ErrNotExist) {
		return os.MkdirAll(target, 0o700)
	}
	if err != nil {
		return fmt.Errorf("restore target %s: %w", target, err)
	}
	if len(ents) > 0 && !overwrite {
		return fmt.Errorf("%s: %w", target, ErrTargetNotEmpty)
	}
	return nil
}

func (rs *restorer) problem(path string, err error) {
	rs.mu.Lock()
	rs.problems = append(rs.problems, repo.Problem{Path: path, Kind: repo.ProblemUnrestored, Error: err.Error()})
	rs.mu.Unlock()
}

// wanted tells whether a snapshot path is selected (inside an include) and
// whether it leads to one (an ancestor of an include).
func (rs *restorer) wanted(p string) (selected, leads bool) {
	if len(rs.includes) == 0 {
		return true, true
	}
	for _, inc := range rs.includes {
		if p == inc || inc == "/" || strings.HasPrefix(p, inc+"/") {
			return true, true
		}
		if strings.HasPrefix(inc, p+"/") || p == "/" {
			leads = true
		}
	}
	return false, leads
}

// dirTree is a directory made by makeDirs and the tree of its entries.
type dirTree struct {
	src    string     // its snapshot path
	tree   blob.ID    // zero for the root, whose tree restore holds
	loaded *tree.Tree // the tree, kept from makeDirs within treeCacheNodes; nil: load it again
}

// treeCacheNodes bounds the entries of the trees makeDirs keeps for the
// second pass, so a directory's tree is loaded (and verified) once, not
// twice, unless the snapshot has more entries than this.
const treeCacheNodes = 1 << 20

// walk restores the entries below dir (tree t) in two passes: every
// directory first (makeDirs), then the files and other entries of each
// directory in the same order (restoreEntries), files through jobs. On
// ext4 a tree whose directories are made while their files are created
// degrades after a deletion (each new inode scans past the inodes freed in
// the last minute, the directories land beside them); made first, the
// directories spread, and a restore right after `rm -rf` of the last one
// is as fast as into a fresh directory (docs/benchmarks.md).
func (rs *restorer) walk(ctx context.Context, dir string, t *tree.Tree, jobs chan<- restoreJob) error {
	dirs := []dirTree{{src: dir}}
	cached := 0
	if err := rs.makeDirs(ctx, dir, t, &dirs, &cached); err != nil {
		return err
	}
	for _, d := range dirs {
		sub := t
		if d.loaded != nil {
			sub = d.loaded
		} else if !d.tree.IsZero() {
			var err error
			if sub, err = rs.repo.LoadTree(ctx, d.tree); err != nil {
				rs.problem(d.src, fmt.Errorf("directory contents cannot be restored: %w", err))
				continue
			}
		}
		if err := rs.restoreEntries(ctx, d.src, sub, jobs); err != nil {
			return err
		}
	}
	return nil
}

// makeDirs makes the directories below dir (tree t) that are selected or
// lead to a selected path, depth first, and appends each whose tree loads
// to dirs, with the tree itself while *cached (entries kept so far) stays
// within treeCacheNodes.
func (rs *restorer) makeDirs(ctx context.Context, dir string, t *tree.Tree, dirs *[]dirTree, cached *int) error {
	for _, n := range t.Nodes {
		if err := ctx.Err(); err != nil {
			return err
		}
		if n.Kind != tree.Dir {
			continue
		}
		src := filepath.Join(dir, n.Name)
		selected, leads := rs.wanted(src)
		if !selected && !leads {
			continue
		}
		if selected {
			rs.selected.Add(1)
		}
		dst := filepath.Join(rs.target, src)
		if err := rs.mkdir(dst); err != nil {
			rs.problem(src, err)
			continue
		}
		rs.mu.Lock()
		rs.dirs = append(rs.dirs, dirMeta{dst, n})
		rs.mu.Unlock()
		rs.ndirs.Add(1)
		if n.Flags&tree.Unreadable != 0 {
			rs.problem(src, fmt.Errorf("directory was unreadable at backup time: %s", n.Error))
		}
		sub, err := rs.repo.LoadTree(ctx, n.Subtree)
		if err != nil {
			rs.problem(src, fmt.Errorf("directory contents cannot be restored: %w", err))
			continue
		}
		d := dirTree{src: src, tree: n.Subtree}
		if *cached+len(sub.Nodes) <= treeCacheNodes {
			d.loaded = sub
			*cached += len(sub.Nodes)
		}
		*dirs = append(*dirs, d)
		if err := rs.makeDirs(ctx, src, sub, dirs, cached); err != nil {
			return err
		}
	}
	return nil
}

// restoreEntries restores the entries of directory dir (tree t) other than
// directories: files through jobs, hard links later (rs.pending), the rest
// at once.
func (rs *restorer) restoreEntries(ctx context.Context, dir string, t *tree.Tree, jobs chan<- restoreJob) error {
	for _, n := range t.Nodes {
		if err := ctx.Err(); err != nil {
			return err
		}
		if n.Kind == tree.Dir {
			continue
		}
		src := filepath.Join(dir, n.Name)
		if selected, _ := rs.wanted(src); !selected {
			continue
		}
		rs.selected.Add(1)
		dst := filepath.Join(rs.target, src)
		switch n.Kind {
		case tree.File:
			if n.Flags&tree.Unreadable != 0 {
				rs.problem(src, fmt.Errorf("file was unreadable at backup time: %s", n.Error))
				continue
			}
			if n.ContentError != "" {
				rs.problem(src, fmt.Errorf("cannot be restored: %s", n.ContentError))
				continue
			}
			if n.Links > 1 {
				key := [2]uint64{n.Device, n.Inode}
				rs.mu.Lock()
				first, seen := rs.links[key]
				if !seen {
					rs.links[key] = dst
				} else {
					rs.pending = append(rs.pending, linkJob{path: dst, first: first, node: n})
				}
				rs.mu.Unlock()
				if seen {
					continue
				}
			}
			select {
			case jobs <- restoreJob{path: dst, src: src, node: n}:
			case <-ctx.Done():
				return ctx.Err()
			}
		default:
			if err := rs.restoreSpecial(dst, &n); err != nil {
				rs.problem(src, err)
				continue
			}
			rs.others.Add(1)
		}
	}
	return nil
}

func (rs *restorer) mkdir(p string) error {
	err := unix.Mkdir(p, 0o700)
	if err == nil {
		return nil
	}
	if !errors.Is(err, unix.EEXIST) && !errors.Is(err, unix.ENOENT) {
		return &fs.PathError{Op: "mkdir", Path: p, Err: err}
	}
	fi, err := os.Lstat(p)
	if err == nil && fi.IsDir() {
		return nil
	}
	if err == nil {
		if err := os.Remove(p); err != nil {
			return err
		}
	}
	return os.MkdirAll(p, 0o700)
}

// restoreFile writes one file. A new path is written in place; a path
// that already holds something (--overwrite) gets a temporary file beside
// it, renamed over it when complete, so the old file stays until the new one
// is whole. Owner, mode and times are set on the open descriptor. A chunk
// that is missing or fails verification leaves no file behind and is
// reported.
func (rs *restorer) restoreFile(ctx context.Context, j restoreJob, buf []byte) []byte {
	// A file of one chunk (most small files) has it loaded before the
	// file is made: decoding overlaps the creation of files by others.
	var one []byte
	if c := j.node.Content; len(c) == 1 && !c[0].Hole {
		var err error
		if one, err = rs.loadChunk(ctx, c[0], 0, buf); err != nil {
			rs.problem(j.src, err)
			return buf
		}
		buf = one
	}
	lock := rs.dirLock(filepath.Dir(j.path))
	lock.Lock()
	fd, name, err := createFile(j.path)
	lock.Unlock()
	if err != nil {
		rs.problem(j.src, err)
		return buf
	}
	// covered counts the content written so far for progress; a file that
	// fails takes its bytes back out, so that at the end progress equals
	// the result.
	var covered atomic.Int64
	fail := func(err error) {
		if fd >= 0 {
			unix.Close(fd)
		}
		os.Remove(name)
		rs.opts.Progress.Add(0, -covered.Load())
		rs.problem(j.src, err)
	}
	if one != nil {
		err = pwriteAll(fd, one, 0)
		if err != nil {
			err = fmt.Errorf("write %s: %w", name, err)
		} else {
			covered.Add(int64(len(one)))
			rs.opts.Progress.Add(0, int64(len(one)))
		}
	} else {
		buf, err = rs.writeContent(ctx, fd, name, j.node.Content, buf, &covered)
	}
	if err != nil {
		fail(err)
		return buf
	}
	if needsTruncate(j.node.Content, j.node.Size) {
		if err := unix.Ftruncate(fd, int64(j.node.Size)); err != nil {
			fail(fmt.Errorf("truncate %s: %w", name, err))
			return buf
		}
	}
	if err := rs.applyMetaFd(fd, name, &j.node); err != nil {
		fail(err)
		return buf
	}
	err = unix.Close(fd)
	fd = -1
	if err != nil {
		fail(fmt.Errorf("close %s: %w", name, err))
		return buf
	}
	if name != j.path {
		if err := os.Rename(name, j.path); err != nil {
			fail(err)
			return buf
		}
	}
	rs.mu.Lock()
	rs.written[j.path] = true
	rs.mu.Unlock()
	if j.node.Flags&tree.Changed != 0 {
		rs.problem(j.src, fmt.Errorf("restored, but it was changing while backed up: it may be inconsistent"))
	}
	rs.files.Add(1)
	rs.bytes.Add(int64(j.node.Size))
	rs.opts.Progress.Add(1, int64(j.node.Size)-covered.Load()) // a size the extents do not cover (none, normally)
	return buf
}

// needsTruncate tells whether a new file written with content does not end
// at size by itself: it ends in a hole, or the extents do not add up to size.
func needsTruncate(content []tree.Extent, size uint64) bool {
	if len(content) == 0 {
		return size > 0
	}
	var end uint64
	for _, e := range content {
		end += e.Length
	}
	return end != size || content[len(content)-1].Hole
}

// createFile opens a new file at p for writing and returns its descriptor
// and name. When p already exists (--overwrite) it opens a temporary file
// in the same directory instead, whose name it returns. The descriptor is a
// plain one (no poller, no os.File): a small file costs one openat.
func createFile(p string) (fd int, name string, err error) {
	const flags = unix.O_WRONLY | unix.O_CREAT | unix.O_EXCL | unix.O_NOFOLLOW | unix.O_CLOEXEC
	fd, err = unix.Open(p, flags, 0o600)
	if err == nil {
		return fd, p, nil
	}
	if !errors.Is(err, unix.EEXIST) {
		return -1, "", fmt.Errorf("create %s: %w", p, err)
	}
	f, err := os.CreateTemp(filepath.Dir(p), ".stasis-restore-*")
	if err != nil {
		return -1, "", err
	}
	// The descriptor is taken over from f; f must not close it.
	fd, err = unix.Dup(int(f.Fd()))
	f.Close()
	if err != nil {
		os.Remove(f.Name())
		return -1, "", fmt.Errorf("dup %s: %w", f.Name(), err)
	}
	unix.CloseOnExec(fd)
	return fd, f.Name(), nil
}

// bigFileSegment is the amount of a large file's content one goroutine
// restores at a time: a large file (a database) is written by several
// goroutines at once, each to its own range, so it does not bound a restore
// to one core.
const bigFileSegment = 8 << 20

// segmentsPerWindow is how many segments of a large file are planned
// together (planWindow): their chunks' locations are held at once (≈60
// bytes per chunk: 2 MiB for 256 MiB of a database in 8 KiB chunks). On
// the benchmark database after eleven days of changes, a window of 256 MiB
// decodes 2,344 frames, one of 1 GiB 2,310 for 10 MiB more memory; the
// file has 2,294 (docs/benchmarks.md).
const segmentsPerWindow = 32

// contentSegment is a range of a file's extents restored by one goroutine.
type contentSegment struct {
	off     int64
	extents []tree.Extent
	locs    []*repo.Location // of extents (planWindow; nil: located when written)
	done    []bool           // extents already written from a shared frame
}

// writeContent writes extents (holes skipped) to f, verifying every chunk,
// and adds the length of each extent done to covered and to the progress
// counts.
//
// A large file is written in segments by several goroutines, a window of
// segments at a time. The chunks of a frame that several segments of the
// window use (a day's changed pages of a database are spread over the whole
// file, and gathered in a few frames) are written first, frame by frame, so
// that such a frame is decoded once, not once for every stretch of the file
// that uses it (with many days of changes, a frame cache of any useful
// size decoded the file's frames twice over).
func (rs *restorer) writeContent(ctx context.Context, fd int, name string, content []tree.Extent, buf []byte, covered *atomic.Int64) ([]byte, error) {
	var segs []contentSegment
	var off, segBytes int64
	start := 0
	for i, e := range content {
		if segBytes >= bigFileSegment {
			segs = append(segs, contentSegment{off: off - segBytes, extents: content[start:i]})
			start, segBytes = i, 0
		}
		off += int64(e.Length)
		segBytes += int64(e.Length)
	}
	segs = append(segs, contentSegment{off: off - segBytes, extents: content[start:]})
	done := func(n int64) {
		covered.Add(n)
		rs.opts.Progress.Add(0, n)
	}
	if len(segs) == 1 {
		return rs.writeSegment(ctx, fd, name, &segs[0], buf, done)
	}
	if err := preallocate(fd, content); err != nil {
		return buf, fmt.Errorf("allocate %s: %w", name, err)
	}
	bufs := make([][]byte, runtime.NumCPU()) // one per goroutine of parallel
	for w := 0; w < len(segs); w += segmentsPerWindow {
		win := segs[w:min(len(segs), w+segmentsPerWindow)]
		shared, err := rs.planWindow(ctx, win)
		if err != nil {
			return buf, err
		}
		if testHookSharedFrames != nil {
			testHookSharedFrames(len(shared))
		}
		err = parallel(ctx, len(shared), func(ctx context.Context, w, i int) error {
			var err error
			bufs[w], err = rs.writeChunks(ctx, fd, name, shared[i], bufs[w], done)
			return err
		})
		if err != nil {
			return buf, err
		}
		err = parallel(ctx, len(win), func(ctx context.Context, w, i int) error {
			var err error
			bufs[w], err = rs.writeSegment(ctx, fd, name, &win[i], bufs[w], done)
			win[i].locs, win[i].done = nil, nil
			return err
		})
		if err != nil {
			return buf, err
		}
	}
	return buf, nil
}

// testHookSharedFrames, when set (tests), is told how many shared frames
// each window of a large file has.
var testHookSharedFrames func(n int)

// placedChunk is a chunk of a file, where it goes and where it is stored.
type placedChunk struct {
	off int64
	e   tree.Extent
	loc *repo.Location
}

// sharedFrame names a frame of chunks (a pack and the frame's place in it).
type sharedFrame struct {
	pack   blob.ID
	offset uint64
	length uint32
}

// planWindow locates the chunks of the segments in win and returns, for
// each frame the window comes back to (its chunks are used in two or more
// runs apart, or in two segments), that frame's chunks in file order,
// marking them done in their segments. The frames are in the order the file
// first uses them. Which frames those are depends on how the backups stored
// the file: a day's changed chunks of a backup's span of the file share a few
// frames, and the runs of the first backup's frames are broken where they
// changed.
func (rs *restorer) planWindow(ctx context.Context, win []contentSegment) ([][]placedChunk, error) {
	type use struct {
		chunks []placedChunk
		runs   int
	}
	uses := map[sharedFrame]*use{}
	var order []sharedFrame
	for si := range win {
		s := &win[si]
		locs, err := rs.locate(ctx, s.extents)
		if err != nil {
			return nil, err
		}
		s.locs = locs
		off := s.off
		var prev *use // the frame of the segment's last chunk
		for j, e := range s.extents {
			if l := locs[j]; l != nil && l.Storage.Framed() {
				k := sharedFrame{l.Pack, l.Offset, l.Length}
				u := uses[k]
				if u == nil {
					u = &use{}
					uses[k] = u
					order = append(order, k)
				}
				if u != prev {
					u.runs++
					prev = u
				}
				u.chunks = append(u.chunks, placedChunk{off, e, l})
			}
			off += int64(e.Length)
		}
	}
	var shared [][]placedChunk
	for _, k := range order {
		if u := uses[k]; u.runs >= 2 {
			shared = append(shared, u.chunks)
		}
	}
	if len(shared) == 0 {
		return nil, nil
	}
	for si := range win {
		s := &win[si]
		s.done = make([]bool, len(s.extents))
		for j, l := range s.locs {
			s.done[j] = l != nil && l.Storage.Framed() && uses[sharedFrame{l.Pack, l.Offset, l.Length}].runs >= 2
		}
	}
	return shared, nil
}

// writeChunks writes the chunks of one frame to their places in the file,
// those that follow each other in the file with one pwrite.
func (rs *restorer) writeChunks(ctx context.Context, fd int, name string, chunks []placedChunk, buf []byte, done func(int64)) ([]byte, error) {
	w := runWriter{fd: fd, name: name, buf: buf[:0], done: done}
	if cap(w.buf) < restoreWriteSize {
		w.buf = make([]byte, 0, restoreWriteSize)
	}
	for _, c := range chunks {
		if len(w.buf) == 0 || w.end() != c.off {
			if err := w.flush(); err != nil {
				return w.buf, err
			}
			w.off = c.off
		}
		if err := w.reserve(int(c.e.Length)); err != nil {
			return w.buf, err
		}
		data, err := rs.loadChunkAt(ctx, c.e, c.loc, c.off, w.buf[len(w.buf):len(w.buf)])
		if err != nil {
			return w.buf, err
		}
		w.add(data)
	}
	return w.buf, w.flush()
}

// writeSegment writes the extents of s that are not done, gathering
// consecutive chunks into one pwrite.
func (rs *restorer) writeSegment(ctx context.Context, fd int, name string, s *contentSegment, buf []byte, done func(int64)) ([]byte, error) {
	w := runWriter{fd: fd, name: name, off: s.off, buf: buf[:0], done: done}
	if cap(w.buf) < restoreWriteSize {
		w.buf = make([]byte, 0, restoreWriteSize)
	}
	locs := s.locs
	if locs == nil {
		var err error
		if locs, err = rs.locate(ctx, s.extents); err != nil {
			return w.buf, err
		}
	}
	for i, e := range s.extents {
		if e.Hole || (s.done != nil && s.done[i]) {
			if err := w.skip(int64(e.Length), e.Hole); err != nil {
				return w.buf, err
			}
			continue
		}
		if err := w.reserve(int(e.Length)); err != nil {
			return w.buf, err
		}
		data, err := rs.loadChunkAt(ctx, e, locs[i], w.end(), w.buf[len(w.buf):len(w.buf)])
		if err != nil {
			return w.buf, err
		}
		w.add(data)
	}
	return w.buf, w.flush()
}

// preallocate allocates the data (not the holes) of a large file before
// its parts are written at once: ext4 then maps each page written to a
// block it already has instead of reserving one per page (a third of the
// kernel's time in a restore of a 1 GiB database), and a full disk shows
// before any content is decoded. A filesystem without fallocate is written
// as it is.
func preallocate(fd int, content []tree.Extent) error {
	var off, run int64
	for i, e := range content {
		if !e.Hole {
			run += int64(e.Length)
		}
		if (e.Hole || i == len(content)-1) && run > 0 {
			start := off - run
			if !e.Hole {
				start += int64(e.Length)
			}
			err := unix.Fallocate(fd, 0, start, run)
			if errors.Is(err, unix.EOPNOTSUPP) || errors.Is(err, unix.ENOSYS) {
				return nil
			}
			if err != nil {
				return err
			}
			run = 0
		}
		off += int64(e.Length)
	}
	return nil
}

// restoreWriteSize is how much of a file's consecutive content a restore
// gathers before one pwrite: one system call (and one take of the inode's
// lock, which the writers of a large file share) per MiB, not per chunk.
const restoreWriteSize = 1 << 20

// runWriter gathers consecutive chunks of a file in buf, the content at
// off, and writes them with one pwrite when buf is full, at a hole and at
// the end. done is told how many bytes each write (or hole) covered.
type runWriter struct {
	fd   int
	name string
	off  int64
	buf  []byte
	done func(n int64)
}

// end is the file offset just past the gathered bytes.
func (w *runWriter) end() int64 { return w.off + int64(len(w.buf)) }

// reserve makes room for n more bytes in buf, writing what is gathered
// first when they do not fit.
func (w *runWriter) reserve(n int) error {
	if len(w.buf)+n <= cap(w.buf) {
		return nil
	}
	if err := w.flush(); err != nil {
		return err
	}
	if n > cap(w.buf) {
		w.buf = make([]byte, 0, n)
	}
	return nil
}

// add appends data, which a loader may already have put in place at the
// end of buf (in the room reserve made).
func (w *runWriter) add(data []byte) {
	n := len(w.buf)
	if len(data) > 0 && &w.buf[n : n+1][0] == &data[0] {
		w.buf = w.buf[:n+len(data)]
		return
	}
	w.buf = append(w.buf, data...)
}

// skip writes what is gathered and moves past n bytes: a hole (counted
// as done) or content written already (counted when it was).
func (w *runWriter) skip(n int64, hole bool) error {
	if err := w.flush(); err != nil {
		return err
	}
	w.off += n
	if hole {
		w.done(n)
	}
	return nil
}

// flush writes the gathered bytes.
func (w *runWriter) flush() error {
	if len(w.buf) == 0 {
		return nil
	}
	if err := pwriteAll(w.fd, w.buf, w.off); err != nil {
		return fmt.Errorf("write %s: %w", w.name, err)
	}
	w.off += int64(len(w.buf))
	w.done(int64(len(w.buf)))
	w.buf = w.buf[:0]
	return nil
}

// locate looks up the chunks of extents in one read of the index; an
// extent whose chunk is not found (or a hole) gets nil, and loadChunkAt
// loads it by id (and names what is missing).
func (rs *restorer) locate(ctx context.Context, extents []tree.Extent) ([]*repo.Location, error) {
	ids := make([]blob.ID, 0, len(extents))
	for _, e := range extents {
		if !e.Hole {
			ids = append(ids, e.ID)
		}
	}
	found, ok, err := rs.repo.LookupBlobs(ctx, ids)
	if err != nil {
		return nil, fmt.Errorf("look up chunks: %w", err)
	}
	locs := make([]*repo.Location, len(extents))
	j := 0
	for i, e := range extents {
		if e.Hole {
			continue
		}
		if ok[j] {
			locs[i] = &found[j]
		}
		j++
	}
	return locs, nil
}

// loadChunkAt is loadChunk for a chunk at loc (nil: look it up).
func (rs *restorer) loadChunkAt(ctx context.Context, e tree.Extent, loc *repo.Location, off int64, buf []byte) ([]byte, error) {
	if loc == nil {
		return rs.loadChunk(ctx, e, off, buf)
	}
	data, err := rs.repo.LoadBlobAt(ctx, e.ID, *loc, buf)
	return rs.checkChunk(e, off, data, err)
}

// loadChunk loads (and so verifies) extent e at offset off into buf and
// checks its length.
func (rs *restorer) loadChunk(ctx context.Context, e tree.Extent, off int64, buf []byte) ([]byte, error) {
	data, err := rs.repo.LoadBlob(ctx, e.ID, buf)
	return rs.checkChunk(e, off, data, err)
}

// checkChunk checks what loading extent e at offset off gave.
func (rs *restorer) checkChunk(e tree.Extent, off int64, data []byte, err error) ([]byte, error) {
	if err != nil {
		return nil, fmt.Errorf("chunk at offset %d: %w", off, err)
	}
	if uint64(len(data)) != e.Length {
		return nil, fmt.Errorf("chunk %s at offset %d has %d bytes, tree says %d", e.ID.Short(), off, len(data), e.Length)
	}
	return data, nil
}

// dirLock is the lock that serialises creating files in directory dir.
func (rs *restorer) dirLock(dir string) *sync.Mutex {
	rs.mu.Lock()
	defer rs.mu.Unlock()
	l := rs.dirLocks[dir]
	if l == nil {
		l = &sync.Mutex{}
		rs.dirLocks[dir] = l
	}
	return l
}

// pwriteAll writes all of data at off.
func pwriteAll(fd int, data []byte, off int64) error {
	for len(data) > 0 {
		n, err := unix.Pwrite(fd, data, off)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return err
		}
		if n == 0 {
			return io.ErrShortWrite
		}
		data, off = data[n:], off+int64(n)
	}
	return nil
}

func (rs *restorer) restoreLink(l linkJob) {
	src := strings.TrimPrefix(l.path, rs.target)
	rs.mu.Lock()
	written := rs.written[l.first]
	rs.mu.Unlock()
	if !written {
		// Whatever is at l.first (nothing, or an older file kept there by
		// --overwrite) is not this snapshot's content.
		rs.problem(src, fmt.Errorf("hard link to %s: the first name was not restored", strings.TrimPrefix(l.first, rs.target)))
		return
	}
	os.Remove(l.path)
	if err := os.Link(l.first, l.path); err != nil {
		rs.problem(src, err)
		return
	}
	rs.files.Add(1)
	rs.opts.Progress.Add(1, 0)
}

func (rs *restorer) restoreSpecial(p string, n *tree.Node) error {
	if fi, err := os.Lstat(p); err == nil {
		if fi.IsDir() {
			if err := os.RemoveAll(p); err != nil {
				return err
			}
		} else if err := os.Remove(p); err != nil {
			return err
		}
	}
	var err error
	switch n.Kind {
	case tree.Symlink:
		err = os.Symlink(n.LinkTarget, p)
	case tree.FIFO:
		err = unix.Mkfifo(p, 0o600)
	case tree.CharDev:
		err = unix.Mknod(p, unix.S_IFCHR|0o600, int(n.Rdev))
	case tree.BlockDev:
		err = unix.Mknod(p, unix.S_IFBLK|0o600, int(n.Rdev))
	case tree.Socket:
		err = unix.Mknod(p, unix.S_IFSOCK|0o600, 0)
	default:
		err = fmt.Errorf("unknown entry kind %s", n.Kind)
	}
	if err != nil {
		if errors.Is(err, unix.EPERM) && !rs.isRoot {
			return fmt.Errorf("create %s: %w (creating device nodes needs root)", n.Kind, err)
		}
		return fmt.Errorf("create %s: %w", n.Kind, err)
	}
	return rs.applyMeta(p, n)
}

// applyMetaFd is applyMeta on the open file fd (named name in errors).
func (rs *restorer) applyMetaFd(fd int, name string, n *tree.Node) error {
	if rs.isRoot {
		if err := unix.Fchown(fd, int(n.UID), int(n.GID)); err != nil {
			return fmt.Errorf("chown %s: %w", name, err)
		}
	}
	if err := unix.Fchmod(fd, n.Mode&0o7777); err != nil {
		return fmt.Errorf("chmod %s: %w", name, err)
	}
	if err := futimens(fd, unix.NsecToTimespec(n.MTime)); err != nil {
		return fmt.Errorf("set times of %s: %w", name, err)
	}
	return nil
}

// futimens sets the access and modification times of fd to t
// (utimensat(fd, NULL, ...), which x/sys/unix does not offer).
func futimens(fd int, t unix.Timespec) error {
	ts := [2]unix.Timespec{t, t}
	for {
		_, _, errno := unix.Syscall6(unix.SYS_UTIMENSAT, uintptr(fd), 0, uintptr(unsafe.Pointer(&ts[0])), 0, 0, 0)
		if errno == unix.EINTR {
			continue
		}
		if errno != 0 {
			return errno
		}
		return nil
	}
}

// applyMeta sets owner (when root), mode and times, in that order (chown
// clears setuid bits).
func (rs *restorer) applyMeta(p string, n *tree.Node) error {
	if rs.isRoot {
		if err := os.Lchown(p, int(n.UID), int(n.GID)); err != nil {
			return fmt.Errorf("chown %s: %w", p, err)
		}
	}
	if n.Kind != tree.Symlink {
		if err := unix.Chmod(p, n.Mode&0o7777); err != nil {
			return fmt.Errorf("chmod %s: %w", p, err)
		}
	}
	ts := []unix.Timespec{unix.NsecToTimespec(n.MTime), unix.NsecToTimespec(n.MTime)} // atime := mtime
	if err := unix.UtimesNanoAt(unix.AT_FDCWD, p, ts, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return fmt.Errorf("set times of %s: %w", p, err)
	}
	return nil
}
