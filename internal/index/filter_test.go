package index

import (
	"math/rand/v2"
	"path/filepath"
	"testing"

	"github.com/stasisbackup/stasis/internal/pack"
	"github.com/stasisbackup/stasis/repo/blob"
)

func randomEntries(rng *rand.Rand, n int) []pack.Entry {
	es := make([]pack.Entry, n)
	for i := range es {
		for j := range es[i].ID {
			es[i].ID[j] = byte(rng.Uint32())
		}
		es[i].Type, es[i].Storage, es[i].Offset, es[i].Length, es[i].RawLength = blob.Data, pack.Zstd, uint64(8+100*i), 100, 400
	}
	return es
}

// The filter answers for absent ids without bbolt, never hides a present
// id, survives a reopen read-only, and is not trusted when the cache file
// changed after it was saved.
func TestFilter(t *testing.T) {
	p := filepath.Join(t.TempDir(), "index.db")
	rng := rand.New(rand.NewPCG(1, 1))
	ix, err := Open(p, []byte("repo"), Options{})
	if err != nil {
		t.Fatal(err)
	}
	present := randomEntries(rng, 5000)
	if err := ix.AddFile("index/a", []IndexedPack{{ID: blob.ID{1}, Size: 1 << 20, Entries: present}}); err != nil {
		t.Fatal(err)
	}
	if err := ix.Close(); err != nil {
		t.Fatal(err)
	}
	ro, err := Open(p, []byte("repo"), Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	if ro.filt == nil {
		t.Fatal("read-only open found no filter")
	}
	for _, e := range present {
		if ok, err := ro.Has(e.ID); err != nil || !ok {
			t.Fatalf("present id %s: %v %v", e.ID.Short(), ok, err)
		}
	}
	absent := randomEntries(rng, 20000)
	ruledOut := 0
	for _, e := range absent {
		if _, _, out := ro.probe(e.ID); out {
			ruledOut++
		}
		if ok, _ := ro.Has(e.ID); ok {
			t.Fatalf("absent id %s found", e.ID.Short())
		}
	}
	if ruledOut < len(absent)*98/100 {
		t.Errorf("the filter ruled out %d of %d absent ids, want at least 98%%", ruledOut, len(absent))
	}
	ro.Close()

	// A writer that dies before saving the filter (here: the cache file is
	// changed behind the filter's back) leaves a filter that is not used.
	w, err := Open(p, []byte("repo"), Options{})
	if err != nil {
		t.Fatal(err)
	}
	late := randomEntries(rng, 10)
	w.filt = nil // as if it had never saved
	if err := w.AddPack(blob.ID{2}, 1<<20, late); err != nil {
		t.Fatal(err)
	}
	w.db.Close() // no filter saved
	ro, err = Open(p, []byte("repo"), Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer ro.Close()
	if ro.filt != nil {
		t.Fatal("a filter older than the cache file was used")
	}
	if ok, _ := ro.Has(late[0].ID); !ok {
		t.Fatal("an id added after the filter was saved is not found")
	}
}
