package repo

import "context"

// SetMaxUnmerged sets the bound of index-file bytes a command keeps in
// memory instead of merging, for a test; the returned func restores it.
func SetMaxUnmerged(n int64) func() {
	old := maxUnmerged
	maxUnmerged = n
	return func() { maxUnmerged = old }
}

// RemoveOldIndexFiles is RebuildIndex's step removeOldIndexFiles.
func (r *Repository) RemoveOldIndexFiles(ctx context.Context, old []string, written map[string]bool) error {
	return r.removeOldIndexFiles(ctx, old, written)
}
