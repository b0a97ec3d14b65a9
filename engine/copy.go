package engine

import (
	"context"
	"fmt"
	"path"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/stasisbackup/stasis/repo"
	"github.com/stasisbackup/stasis/repo/blob"
	"github.com/stasisbackup/stasis/repo/tree"
)

// CopySource is what a copy reads from the source repository. LoadBlob
// and LoadTree verify what they return against the source's ids.
type CopySource interface {
	Location() string
	Snapshots(ctx context.Context) ([]*repo.Snapshot, []error, error)
	LoadTree(ctx context.Context, id blob.ID) (*tree.Tree, error)
	LoadBlob(ctx context.Context, id blob.ID, buf []byte) ([]byte, error)
}

// CopyDest is what a copy needs from the destination repository.
type CopyDest interface {
	Location() string
	Hash(data []byte) blob.ID
	HasBlob(id blob.ID) (bool, error)
	SaveFrame(ctx context.Context, t blob.Type, blobs []repo.FrameBlob) (repo.FrameResult, error)
	FrameSize() int
	SaveTree(ctx context.Context, t *tree.Tree) (blob.ID, repo.SaveResult, error)
	LoadTree(ctx context.Context, id blob.ID) (*tree.Tree, error)
	Flush(ctx context.Context) error
	Snapshots(ctx context.Context) ([]*repo.Snapshot, []error, error)
	SaveSnapshot(ctx context.Context, sn *repo.Snapshot) (blob.ID, error)
}

var (
	_ CopySource = (*repo.Repository)(nil)
	_ CopyDest   = (*repo.Repository)(nil)
)

// CopyOptions tune Copy.
type CopyOptions struct {
	// Progress, when set, counts each snapshot as a phase ("snapshot
	// 2/3") whose totals are the files and bytes of the snapshot's summary:
	// files are counted with their sizes as their directories are copied;
	// a directory taken whole from an earlier copy (nothing to read) is
	// counted when the snapshot is done. A skipped snapshot is no phase.
	Progress *Counts
	// OnSnapshot, when set, is called on Copy's goroutine as each snapshot
	// is copied or skipped, in order (the command prints it at once).
	OnSnapshot func(CopiedSnapshot)
	// MapEntries bounds the run's cache of source → destination blob ids
	// (about 100 bytes each); 0 means 1<<18. A blob that fell out of the
	// cache is read and hashed again; nothing is stored twice.
	MapEntries int
}

// CopiedSnapshot is what happened to one source snapshot.
type CopiedSnapshot struct {
	Source *repo.Snapshot // in the source repository
	// Copy is the snapshot in the destination: new, or, when Skipped, the
	// one that already has Source's original.
	Copy        *repo.Snapshot
	Skipped     bool
	BlobsAdded  int64 // data and tree blobs the destination lacked
	BytesAdded  int64 // their plaintext bytes
	StoredAdded int64 // bytes added to packs (after compression and encryption)
	BlobsRead   int64 // blobs read from the source (the rest were known)
}

// CopySourceError is Copy's error when a data blob of file File of
// snapshot Snapshot cannot be read from the source repository (at Source):
// the source is damaged.
type CopySourceError struct {
	Snapshot blob.ID
	File     string
	Source   string
	Err      error
}

func (e *CopySourceError) Error() string {
	return fmt.Sprintf("copy snapshot %s: file %s: %v", e.Snapshot.Short(), e.File, e.Err)
}

func (e *CopySourceError) Unwrap() error { return e.Err }

// CopyResult lists the snapshots Copy dealt with, in the order it did.
type CopyResult struct {
	Snapshots []CopiedSnapshot
}

// Origin returns the snapshot a copy records as its original: sn's own
// Original when sn is a copy itself, else sn's id.
func Origin(sn *repo.Snapshot) blob.ID {
	if sn.Original != nil {
		return *sn.Original
	}
	return sn.ID
}

// Copy copies the snapshots snaps of src into dst, oldest first, storing
// only blobs dst lacks. Blob ids are keyed per repository, so every blob
// that is not known yet is read from src (verified), hashed with dst's key
// and saved through dst's SaveBlob (dst's compression, dictionary and
// encryption); trees and extent lists are rewritten bottom-up with the new
// ids (SaveTree). A source subtree already copied in this run is not
// visited again, and one that is unchanged from the source snapshot an
// earlier copy made a destination snapshot from (same host and paths) is
// taken from that copy without reading.
//
// A snapshot whose original (see Origin) dst already has is skipped. A
// copied snapshot keeps time, host, user, tags, paths, db globs, quiesce
// record and summary; Original names the source snapshot, and Parent the
// copy of its parent when that was copied too.
//
// Write ordering is a backup's: every blob of a snapshot is flushed (packs,
// then index files) before its snapshot file is written, so a copy that is
// stopped leaves dst consistent, and the next copy finds the blobs already
// stored and does not store them again. On error the result holds the
// snapshots dealt with before it.
func Copy(ctx context.Context, src CopySource, dst CopyDest, snaps []*repo.Snapshot, opts CopyOptions) (*CopyResult, error) {
	if opts.MapEntries <= 0 {
		opts.MapEntries = 1 << 18
	}
	c := &copier{src: src, dst: dst, opts: opts,
		blobs: newIDMap(opts.MapEntries), trees: newIDMap(opts.MapEntries)}
	snaps = slices.Clone(snaps)
	sort.SliceStable(snaps, func(i, j int) bool { return snaps[i].Time.Before(snaps[j].Time) })

	have, _, err := dst.Snapshots(ctx)
	if err != nil {
		return nil, fmt.Errorf("list snapshots of destination %s: %w", dst.Location(), err)
	}
	srcList, _, err := src.Snapshots(ctx)
	if err != nil {
		return nil, fmt.Errorf("list snapshots of source %s: %w", src.Location(), err)
	}
	c.copies = map[blob.ID]*repo.Snapshot{}
	for _, d := range have {
		if d.Original != nil {
			if old, ok := c.copies[*d.Original]; !ok || d.Time.After(old.Time) {
				c.copies[*d.Original] = d
			}
		}
	}
	c.srcList = srcList
	if dv, ok := dst.(dedupVerifier); ok {
		// In a destination that lost a dictionary an earlier copy's
		// blobs may not decode: map nothing from it, read everything.
		deg, err := dv.Degraded(ctx)
		if err != nil {
			return nil, fmt.Errorf("destination %s: look for lost compression dictionaries: %w", dst.Location(), err)
		}
		c.noHints = deg
	}

	res := &CopyResult{}
	for i, sn := range snaps {
		if err := ctx.Err(); err != nil {
			return res, err
		}
		var cs CopiedSnapshot
		if d, ok := c.copies[Origin(sn)]; ok {
			cs = CopiedSnapshot{Source: sn, Copy: d, Skipped: true}
		} else {
			s := sn.Summary
			files := s.FilesNew + s.FilesChanged + s.FilesUnchanged
			opts.Progress.StartPhase(fmt.Sprintf("snapshot %d/%d", i+1, len(snaps)), files, s.TotalBytes)
			cs, err = c.copySnapshot(ctx, sn)
			if err != nil {
				return res, err
			}
			c.copies[Origin(sn)] = cs.Copy
			opts.Progress.Set(files, s.TotalBytes)
		}
		res.Snapshots = append(res.Snapshots, cs)
		if opts.OnSnapshot != nil {
			opts.OnSnapshot(cs)
		}
	}
	return res, nil
}

type copier struct {
	src  CopySource
	dst  CopyDest
	opts CopyOptions

	blobs, trees *idMap                     // source id → destination id, for this run
	copies       map[blob.ID]*repo.Snapshot // origin → destination snapshot
	srcList      []*repo.Snapshot
	noHints      bool // the destination is degraded (dictdamage.go)

	read, added, addedBytes, stored atomic.Int64
}

// copySnapshot copies one snapshot's trees and blobs, flushes, and writes
// the destination snapshot.
func (c *copier) copySnapshot(ctx context.Context, sn *repo.Snapshot) (CopiedSnapshot, error) {
	read0, added0, addedBytes0, stored0 := c.read.Load(), c.added.Load(), c.addedBytes.Load(), c.stored.Load()
	h := c.hint(ctx, sn)
	root, err := c.copyTree(ctx, sn, "/", sn.Tree, h)
	if err != nil {
		return CopiedSnapshot{}, err
	}
	if err := c.dst.Flush(ctx); err != nil {
		return CopiedSnapshot{}, fmt.Errorf("copy snapshot %s: flush destination %s: %w", sn.ID.Short(), c.dst.Location(), err)
	}
	orig := Origin(sn)
	cp := *sn
	cp.ID, cp.Dicts = blob.ID{}, nil // set by SaveSnapshot
	cp.Tree, cp.Original, cp.Parent = root, &orig, nil
	if sn.Parent != nil {
		if p, ok := c.copies[c.originOf(*sn.Parent)]; ok {
			cp.Parent = &p.ID
		}
	}
	if _, err := c.dst.SaveSnapshot(ctx, &cp); err != nil {
		return CopiedSnapshot{}, fmt.Errorf("copy snapshot %s: %w", sn.ID.Short(), err)
	}
	return CopiedSnapshot{Source: sn, Copy: &cp, BlobsRead: c.read.Load() - read0, BlobsAdded: c.added.Load() - added0,
		BytesAdded: c.addedBytes.Load() - addedBytes0, StoredAdded: c.stored.Load() - stored0}, nil
}

// originOf returns the origin of the source snapshot id (its Original when
// it is a copy), or id when the source does not list it.
func (c *copier) originOf(id blob.ID) blob.ID {
	for _, s := range c.srcList {
		if s.ID == id {
			return Origin(s)
		}
	}
	return id
}

// treeHint pairs a source tree with the destination tree an earlier copy
// made of it (the same directory in a snapshot copied before): a subtree
// or file found unchanged in it needs no reading.
type treeHint struct {
	src, dst blob.ID
}

// hint finds, for sn, the newest source snapshot of the same host and
// paths, taken before sn, whose copy the destination has. A copy whose
// problems differ from its source's was changed since (`repair snapshots`
// marked damaged files in it): it is no hint.
func (c *copier) hint(ctx context.Context, sn *repo.Snapshot) *treeHint {
	if c.noHints {
		return nil
	}
	want := strings.Join(sn.Paths, "\x00")
	var best *repo.Snapshot
	for _, s := range c.srcList {
		if s.ID == sn.ID || s.Host != sn.Host || strings.Join(s.Paths, "\x00") != want || s.Time.After(sn.Time) {
			continue
		}
		d, ok := c.copies[Origin(s)]
		if ok && slices.Equal(d.Summary.Problems, s.Summary.Problems) && (best == nil || s.Time.After(best.Time)) {
			best = s
		}
	}
	if best == nil {
		return nil
	}
	return &treeHint{src: best.Tree, dst: c.copies[Origin(best)].Tree}
}

// copyTree copies the source tree id (directory dir of snapshot sn) and
// everything below it and returns the destination tree's id.
func (c *copier) copyTree(ctx context.Context, sn *repo.Snapshot, dir string, id blob.ID, h *treeHint) (blob.ID, error) {
	if err := ctx.Err(); err != nil {
		return blob.ID{}, err
	}
	if d, ok := c.trees.get(id); ok {
		return d, nil
	}
	if d, ok, err := c.hintedCopy(id, h); err != nil || ok {
		return d, err
	}
	t, err := c.src.LoadTree(ctx, id)
	if err != nil {
		return blob.ID{}, fmt.Errorf("copy snapshot %s: directory %s: %w", sn.ID.Short(), dir, err)
	}
	hs, hd := c.loadHint(ctx, h)
	owner, want, err := c.copyNodes(ctx, sn, dir, t, hs, hd)
	if err != nil {
		return blob.ID{}, err
	}
	if err := c.copyBlobs(ctx, sn, owner, want); err != nil {
		return blob.ID{}, err
	}
	files, bytes, err := c.mapContent(ctx, sn, dir, t)
	if err != nil {
		return blob.ID{}, err
	}
	d, res, err := c.dst.SaveTree(ctx, t)
	if err != nil {
		return blob.ID{}, fmt.Errorf("copy snapshot %s: save tree of %s to %s: %w", sn.ID.Short(), dir, c.dst.Location(), err)
	}
	if res.Added {
		c.added.Add(1)
	}
	c.stored.Add(int64(res.Stored))
	c.trees.put(id, d)
	c.opts.Progress.Add(files, bytes)
	return d, nil
}

// hintedCopy returns the destination tree an earlier copy made of source
// tree id, when h says id is unchanged since that copy's snapshot and the
// destination still holds it.
func (c *copier) hintedCopy(id blob.ID, h *treeHint) (blob.ID, bool, error) {
	if h == nil || h.src != id {
		return blob.ID{}, false, nil
	}
	ok, err := c.dst.HasBlob(h.dst)
	if err != nil {
		return blob.ID{}, false, fmt.Errorf("look up tree %s in destination %s: %w", h.dst.Short(), c.dst.Location(), err)
	}
	if ok {
		c.trees.put(id, h.dst)
	}
	return h.dst, ok, nil
}

// loadHint loads the hint's source and destination trees; both are nil
// when there is no hint or either cannot be read (which only costs
// reading).
func (c *copier) loadHint(ctx context.Context, h *treeHint) (hs, hd *tree.Tree) {
	if h == nil {
		return nil, nil
	}
	hs, err := c.src.LoadTree(ctx, h.src)
	if err != nil {
		return nil, nil
	}
	if hd, err = c.dst.LoadTree(ctx, h.dst); err != nil {
		return nil, nil
	}
	return hs, hd
}

// subHint returns the hint for subdirectory name of a directory whose hint
// trees are hs and hd (nil when there is none, or name is no directory in
// both).
func subHint(hs, hd *tree.Tree, name string) *treeHint {
	if hs == nil {
		return nil
	}
	if a, b := hs.Find(name), hd.Find(name); a != nil && b != nil && a.Kind == tree.Dir && b.Kind == tree.Dir {
		return &treeHint{src: a.Subtree, dst: b.Subtree}
	}
	return nil
}

// copyNodes copies the subdirectories of t (directory dir) into the
// destination, setting their new subtree ids in t, and returns the data
// blobs of t's files that are still to be copied (want, each once) with a
// file that holds each (owner, for messages). Blob mappings of files found
// in the hint trees hs and hd are learnt first.
func (c *copier) copyNodes(ctx context.Context, sn *repo.Snapshot, dir string, t *tree.Tree, hs, hd *tree.Tree) (owner map[blob.ID]string, want []blob.ID, err error) {
	owner = map[blob.ID]string{}
	for i := range t.Nodes {
		n := &t.Nodes[i]
		p := path.Join(dir, n.Name)
		switch n.Kind {
		case tree.Dir:
			if n.Subtree, err = c.copyTree(ctx, sn, p, n.Subtree, subHint(hs, hd, n.Name)); err != nil {
				return nil, nil, err
			}
		case tree.File:
			if n.ContentError != "" {
				return nil, nil, fmt.Errorf("copy snapshot %s: file %s: its content cannot be read from the source: %s (run `stasis check` on %s)",
					sn.ID.Short(), p, n.ContentError, c.src.Location())
			}
			if hs != nil {
				c.learn(n, hs.Find(n.Name), hd.Find(n.Name))
			}
			for _, e := range n.Content {
				if e.Hole || owner[e.ID] != "" {
					continue
				}
				if _, ok := c.blobs.get(e.ID); !ok {
					owner[e.ID] = p
					want = append(want, e.ID)
				}
			}
		}
	}
	return owner, want, nil
}

// mapContent replaces the source ids of the file extents of t (directory
// dir) by the destination's, copying again a blob that fell out of the
// cache of mappings, and drops the source's extent-list ids (SaveTree
// writes the destination's lists). It returns the files of t and their
// bytes.
func (c *copier) mapContent(ctx context.Context, sn *repo.Snapshot, dir string, t *tree.Tree) (files, bytes int64, err error) {
	for i := range t.Nodes {
		n := &t.Nodes[i]
		if n.Kind == tree.File {
			files++
			bytes += int64(n.Size)
		}
		for j := range n.Content {
			e := &n.Content[j]
			if e.Hole {
				continue
			}
			d, ok := c.blobs.get(e.ID)
			if !ok {
				// Evicted from a full cache since it was copied: map it again.
				if err := c.copyBlobs(ctx, sn, map[blob.ID]string{e.ID: path.Join(dir, n.Name)}, []blob.ID{e.ID}); err != nil {
					return 0, 0, err
				}
				d, _ = c.blobs.get(e.ID)
			}
			e.ID = d
		}
		n.Lists = nil
	}
	return files, bytes, nil
}

// learn takes the blob mapping of file n from an earlier copy of it: a is
// the file in the hint's source tree, b in the destination tree made of
// it. A copy keeps a file's extents one for one, so where a and b have
// the same extent structure, a's ids map to b's at the same positions.
// Only ids the destination holds are taken.
func (c *copier) learn(n, a, b *tree.Node) {
	if a == nil || b == nil || a.Kind != tree.File || b.Kind != tree.File || a.ContentError != "" || b.ContentError != "" ||
		len(a.Content) != len(b.Content) || len(a.Content) == 0 {
		return
	}
	for i := range a.Content {
		x, y := a.Content[i], b.Content[i]
		if x.Hole != y.Hole || x.Length != y.Length {
			return
		}
	}
	// Only what n uses (a file's unchanged chunks).
	use := make(map[blob.ID]bool, len(n.Content))
	for _, e := range n.Content {
		if !e.Hole {
			use[e.ID] = true
		}
	}
	for i, x := range a.Content {
		if x.Hole || !use[x.ID] {
			continue
		}
		if _, ok := c.blobs.get(x.ID); ok {
			continue
		}
		if ok, err := c.dst.HasBlob(b.Content[i].ID); err == nil && ok {
			c.blobs.put(x.ID, b.Content[i].ID)
		}
	}
}

// copyBlobs reads the data blobs ids from the source, hashes them with the
// destination's key and saves those the destination lacks, on a fixed
// number of goroutines, each taking runs of copyRun consecutive ids (of
// one directory's files, in order) and saving them in frames of the
// destination's frame size. owner names a file of each, for messages.
func (c *copier) copyBlobs(ctx context.Context, sn *repo.Snapshot, owner map[blob.ID]string, ids []blob.ID) error {
	runs := (len(ids) + copyRun - 1) / copyRun
	return parallel(ctx, runs, func(ctx context.Context, _, k int) error {
		var frame []repo.FrameBlob
		var src []blob.ID
		size := 0
		save := func() error {
			err := c.saveFrame(ctx, sn, owner, src, frame)
			frame, src, size = nil, nil, 0
			return err
		}
		for _, id := range ids[k*copyRun : min((k+1)*copyRun, len(ids))] {
			data, err := c.src.LoadBlob(ctx, id, nil)
			if err != nil {
				return &CopySourceError{Snapshot: sn.ID, File: owner[id], Source: c.src.Location(), Err: err}
			}
			c.read.Add(1)
			frame = append(frame, repo.FrameBlob{ID: c.dst.Hash(data), Data: data})
			src = append(src, id)
			if size += len(data); size >= c.dst.FrameSize() {
				if err := save(); err != nil {
					return err
				}
			}
		}
		return save()
	})
}

// copyRun is how many consecutive chunks one copy goroutine takes at once.
const copyRun = 64

// saveFrame saves the copied chunks frame (of the source chunks src) to
// the destination and records their destination ids.
func (c *copier) saveFrame(ctx context.Context, sn *repo.Snapshot, owner map[blob.ID]string, src []blob.ID, frame []repo.FrameBlob) error {
	if len(frame) == 0 {
		return nil
	}
	res, err := c.dst.SaveFrame(ctx, blob.Data, frame)
	if err != nil {
		return fmt.Errorf("copy snapshot %s: file %s: save chunk %s to %s: %w", sn.ID.Short(), owner[src[0]], frame[0].ID.Short(), c.dst.Location(), err)
	}
	c.added.Add(int64(res.Added))
	c.addedBytes.Add(res.AddedBytes)
	c.stored.Add(int64(res.Stored))
	for i, id := range src {
		c.blobs.put(id, frame[i].ID)
	}
	return nil
}

// idMap is a bounded, concurrency-safe map of source to destination blob
// ids: when full, an arbitrary entry makes room for a new one.
type idMap struct {
	mu  sync.Mutex
	m   map[blob.ID]blob.ID
	max int
}

func newIDMap(max int) *idMap { return &idMap{m: map[blob.ID]blob.ID{}, max: max} }

func (m *idMap) get(id blob.ID) (blob.ID, bool) {
	m.mu.Lock()
	d, ok := m.m[id]
	m.mu.Unlock()
	return d, ok
}

func (m *idMap) put(id, d blob.ID) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if _, ok := m.m[id]; !ok && len(m.m) >= m.max {
		for k := range m.m {
			delete(m.m, k)
			break
		}
	}
	m.m[id] = d
}
