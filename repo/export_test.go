package repo

// SetMaxUnmerged sets the bound of index-file bytes a command keeps in
// memory instead of merging, for a test; the returned func restores it.
func SetMaxUnmerged(n int64) func() {
	old := maxUnmerged
	maxUnmerged = n
	return func() { maxUnmerged = old }
}
