package repo

import (
	"context"
	"fmt"

	"github.com/stasisbackup/stasis/repo/blob"
	"github.com/stasisbackup/stasis/repo/tree"
)

// SaveTree encodes t and stores it as a tree blob.
func (r *Repository) SaveTree(ctx context.Context, t *tree.Tree) (blob.ID, SaveResult, error) {
	data, err := t.Encode()
	if err != nil {
		return blob.ID{}, SaveResult{}, err
	}
	id := r.Hash(data)
	res, err := r.SaveBlob(ctx, blob.Tree, id, data)
	return id, res, err
}

// LoadTree loads and decodes a tree blob.
func (r *Repository) LoadTree(ctx context.Context, id blob.ID) (*tree.Tree, error) {
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
