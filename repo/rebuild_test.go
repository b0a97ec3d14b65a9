package repo_test

import (
	"context"
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/stasisbackup/stasis/repo"
	"github.com/stasisbackup/stasis/repo/backend"
)

// RebuildIndex's last step, alone: of the index files listed before the
// rebuild, those it did not write are deleted, with the index of an older
// stasis; an index file another client stored meanwhile is kept.
func TestRebuildRemovesOldIndexFiles(t *testing.T) {
	ctx := context.Background()
	st, cache := cacheRepo(t)
	r := openIn(t, st, cache)
	defer r.Close()
	if err := r.WritableIndex(ctx); err != nil {
		t.Fatal(err)
	}
	rng := rand.New(rand.NewPCG(1, 2))
	saveRandom(t, r, rng, 3)
	saveRandom(t, r, rng, 3)
	old, err := r.IndexFiles(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(old) != 2 {
		t.Fatalf("%d index files, want 2: %v", len(old), old)
	}
	saveRandom(t, r, rng, 3) // another client's, stored during the rebuild
	now, err := r.IndexFiles(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var other string
	for _, n := range now {
		if !slices.Contains(old, n) {
			other = n
		}
	}
	if err := backend.PutBytes(ctx, st, "index.db", []byte("legacy")); err != nil {
		t.Fatal(err)
	}

	written := map[string]bool{old[1]: true} // as if the rebuild wrote it
	if err := r.RemoveOldIndexFiles(ctx, old, written); err != nil {
		t.Fatal(err)
	}
	left, err := r.IndexFiles(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{old[1], other}; !slices.Equal(left, want) && !slices.Equal(left, []string{other, old[1]}) {
		t.Errorf("index files left %v, want %v", left, want)
	}
	if ok, err := repo.ObjectExists(ctx, st, "index.db"); err != nil || ok {
		t.Errorf("the legacy index.db is still there (%v)", err)
	}
}
