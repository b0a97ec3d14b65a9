package repo

import (
	"context"
	"fmt"
	"runtime"
	"sync"
	"sync/atomic"

	"github.com/stasisbackup/stasis/repo/blob"
	"github.com/stasisbackup/stasis/repo/tree"
)

// SaveTree stores t as a tree blob. The extents of a large file are first
// stored as extent-list blobs (tree.SplitExtents; tree type, deduplicated
// like any blob) and the tree refers to them, so that a daily snapshot of a
// big database file stores only the lists around changed chunks. t itself is
// not modified. The result's Stored counts the lists too.
func (r *Repository) SaveTree(ctx context.Context, t *tree.Tree) (blob.ID, SaveResult, error) {
	var stored int
	enc := &tree.Tree{Nodes: make([]tree.Node, len(t.Nodes))}
	for i, n := range t.Nodes {
		if n.Kind == tree.File {
			if lists := tree.SplitExtents(n.Content); lists != nil {
				content := make([]tree.Extent, 0, len(lists))
				for _, l := range lists {
					data := tree.EncodeList(l)
					id := r.Hash(data)
					res, err := r.SaveBlob(ctx, blob.Tree, id, data)
					if err != nil {
						return blob.ID{}, SaveResult{}, fmt.Errorf("save extent list of %q: %w", n.Name, err)
					}
					stored += res.Stored
					var length uint64
					for _, e := range l {
						length += e.Length
					}
					content = append(content, tree.Extent{ID: id, Length: length, List: true})
				}
				n.Content = content
			}
		}
		n.Lists, n.ContentError = nil, ""
		enc.Nodes[i] = n
	}
	data, err := enc.Encode()
	if err != nil {
		return blob.ID{}, SaveResult{}, err
	}
	id := r.Hash(data)
	res, err := r.SaveBlob(ctx, blob.Tree, id, data)
	res.Stored += stored
	return id, res, err
}

// LoadTree loads and decodes a tree blob and expands the extent lists of
// its files: Node.Content is always the flat list of chunks and holes, and
// Node.Lists names the list blobs it came from. A list that cannot be read
// does not fail the directory: that file gets Node.ContentError (and no
// Content), so every other entry stays usable. The lists (thousands for a
// large database file) are looked up in one index transaction and read on
// several goroutines.
func (r *Repository) LoadTree(ctx context.Context, id blob.ID) (*tree.Tree, error) {
	t, err := r.LoadTreeLists(ctx, id)
	if err != nil {
		return nil, err
	}
	var lists []tree.Extent
	for _, n := range t.Nodes {
		if n.Kind == tree.File {
			for _, e := range n.Content {
				if e.List {
					lists = append(lists, e)
				}
			}
		}
	}
	if len(lists) == 0 {
		return t, nil
	}
	extents, errs := r.loadLists(ctx, lists)
	next := 0 // the index in lists of the node's first list
	for i := range t.Nodes {
		n := &t.Nodes[i]
		if n.Kind != tree.File || !hasList(n.Content) {
			continue
		}
		size := 0
		for _, e := range n.Content {
			if !e.List {
				size++
				continue
			}
			n.Lists = append(n.Lists, e.ID)
			if err := errs[next]; err != nil && n.ContentError == "" {
				n.ContentError = err.Error()
			}
			size += len(extents[next])
			next++
		}
		if n.ContentError != "" {
			n.Content = nil
			continue
		}
		// Sized from the lists as read, so a crafted tree naming many
		// lists cannot make this allocate more than they hold.
		flat := make([]tree.Extent, 0, size)
		k := next - len(n.Lists)
		for _, e := range n.Content {
			if !e.List {
				flat = append(flat, e)
				continue
			}
			flat = append(flat, extents[k]...)
			k++
		}
		n.Content = flat
	}
	return t, nil
}

// loadLists reads and decodes extent lists: their extents, or for each
// one that cannot be read its error.
func (r *Repository) loadLists(ctx context.Context, lists []tree.Extent) ([][]tree.Extent, []error) {
	extents, errs := make([][]tree.Extent, len(lists)), make([]error, len(lists))
	ids := make([]blob.ID, len(lists))
	for i, e := range lists {
		ids[i] = e.ID
	}
	locs, found, err := r.LookupBlobs(ctx, ids)
	if err != nil {
		found = make([]bool, len(lists)) // each is looked up again, and fails on its own
	}
	load := func(i int) {
		if found[i] {
			extents[i], errs[i] = r.loadListAt(ctx, lists[i], locs[i])
		} else {
			extents[i], errs[i] = r.loadList(ctx, lists[i])
		}
	}
	workers := min(runtime.NumCPU(), 4, (len(lists)+15)/16)
	if workers <= 1 {
		for i := range lists {
			load(i)
		}
		return extents, errs
	}
	var next atomic.Int64
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			for i := int(next.Add(1) - 1); i < len(lists); i = int(next.Add(1) - 1) {
				load(i)
			}
		})
	}
	wg.Wait()
	return extents, errs
}

// LoadTreeLists is LoadTree without expanding the extent lists: a file's
// Content names its list blobs (Extent.List) as the tree stores them.
func (r *Repository) LoadTreeLists(ctx context.Context, id blob.ID) (*tree.Tree, error) {
	data, err := r.LoadBlob(ctx, id, nil)
	if err != nil {
		return nil, fmt.Errorf("load tree %s: %w", id.Short(), err)
	}
	t, err := tree.Decode(data)
	if err != nil {
		return nil, fmt.Errorf("tree %s: %w", id.Short(), err)
	}
	return t, nil
}

func hasList(content []tree.Extent) bool {
	for _, e := range content {
		if e.List {
			return true
		}
	}
	return false
}

func (r *Repository) loadList(ctx context.Context, e tree.Extent) ([]tree.Extent, error) {
	data, err := r.LoadBlob(ctx, e.ID, nil)
	if err != nil {
		return nil, fmt.Errorf("extent list %s: %w", e.ID.Short(), err)
	}
	return decodeList(e, data)
}

// loadListAt is loadList for a list whose location was looked up.
func (r *Repository) loadListAt(ctx context.Context, e tree.Extent, loc Location) ([]tree.Extent, error) {
	data, err := r.LoadBlobAt(ctx, e.ID, loc, nil)
	if err != nil {
		return nil, fmt.Errorf("extent list %s: %w", e.ID.Short(), err)
	}
	return decodeList(e, data)
}

// decodeList decodes list blob e, read as data.
func decodeList(e tree.Extent, data []byte) ([]tree.Extent, error) {
	ext, total, err := tree.DecodeList(data)
	if err != nil {
		return nil, fmt.Errorf("extent list %s: %w", e.ID.Short(), err)
	}
	if total != e.Length {
		return nil, fmt.Errorf("extent list %s: %w: covers %d bytes, the tree says %d", e.ID.Short(), ErrCorruptBlob, total, e.Length)
	}
	return ext, nil
}
