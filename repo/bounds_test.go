package repo_test

import (
	"context"
	"errors"
	"math/rand/v2"
	"runtime"
	"strings"
	"testing"

	"github.com/stasisbackup/stasis/repo"
	"github.com/stasisbackup/stasis/repo/blob"
)

// Issue 11 item 5: a blob length near 4 GiB from the (unauthenticated)
// index is refused with an error naming the blob and the pack, before
// anything is allocated for it.
func TestReadBlobAtBoundsIndexLengths(t *testing.T) {
	st, cache := cacheRepo(t)
	r := openIn(t, st, cache)
	defer r.Close()
	ids := saveRandom(t, r, rand.New(rand.NewPCG(1, 2)), 1)
	loc, ok, err := r.Index().Lookup(ids[0])
	if err != nil || !ok {
		t.Fatalf("lookup: %v %v", ok, err)
	}
	for _, c := range []struct {
		name string
		typ  blob.Type
		want string
	}{
		{"data blob", blob.Data, "more than a data blob can have"},
		{"tree blob", blob.Tree, "beyond the end of the pack"},
	} {
		bad := loc
		bad.Type = c.typ
		bad.Length, bad.RawLength = 0xFFFFFFF0, 0xFFFFFFF0
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		_, err := r.ReadBlobAt(context.Background(), ids[0], bad, nil)
		runtime.ReadMemStats(&after)
		if got := after.TotalAlloc - before.TotalAlloc; got > 1<<20 {
			t.Errorf("%s: reading a blob the index says has %d bytes allocated %d bytes", c.name, bad.Length, got)
		}
		if err == nil {
			t.Fatalf("%s: a blob of %d bytes was read", c.name, bad.Length)
		}
		if !errors.Is(err, repo.ErrCorruptBlob) || !strings.Contains(err.Error(), ids[0].String()) || !strings.Contains(err.Error(), loc.Pack.String()) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: error %q does not name the blob and pack and say %q", c.name, err, c.want)
		}
	}
	// The real location still reads.
	if _, err := r.ReadBlobAt(context.Background(), ids[0], loc, nil); err != nil {
		t.Errorf("intact blob: %v", err)
	}
}
