package repo

import (
	"context"
	"fmt"

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
// Content), so every other entry stays usable.
func (r *Repository) LoadTree(ctx context.Context, id blob.ID) (*tree.Tree, error) {
	t, err := r.LoadTreeLists(ctx, id)
	if err != nil {
		return nil, err
	}
	for i := range t.Nodes {
		n := &t.Nodes[i]
		if n.Kind != tree.File || !hasList(n.Content) {
			continue
		}
		// A list holds at most 64 extents when stasis wrote it; the hint is
		// capped so that a crafted tree naming many lists cannot make this
		// allocate before a single list was read (the lists' real extents
		// grow it).
		flat := make([]tree.Extent, 0, min(len(n.Content)*64, 1<<16))
		for _, e := range n.Content {
			if !e.List {
				flat = append(flat, e)
				continue
			}
			n.Lists = append(n.Lists, e.ID)
			if n.ContentError != "" {
				continue
			}
			ext, err := r.loadList(ctx, e)
			if err != nil {
				n.ContentError = err.Error()
				continue
			}
			flat = append(flat, ext...)
		}
		n.Content = flat
		if n.ContentError != "" {
			n.Content = nil
		}
	}
	return t, nil
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
	ext, total, err := tree.DecodeList(data)
	if err != nil {
		return nil, fmt.Errorf("extent list %s: %w", e.ID.Short(), err)
	}
	if total != e.Length {
		return nil, fmt.Errorf("extent list %s: %w: covers %d bytes, the tree says %d", e.ID.Short(), ErrCorruptBlob, total, e.Length)
	}
	return ext, nil
}
