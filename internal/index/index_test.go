package index

import (
	"math/rand/v2"
	"path/filepath"
	"slices"
	"testing"

	"github.com/stasisbackup/stasis/internal/pack"
	"github.com/stasisbackup/stasis/repo/blob"
)

func entries(seed byte, n int) []pack.Entry {
	var es []pack.Entry
	off := uint64(8)
	for i := 0; i < n; i++ {
		e := pack.Entry{Type: blob.Data, Storage: pack.Zstd, Offset: off, Length: 100 + uint32(i), RawLength: 400}
		e.ID[0], e.ID[1] = seed, byte(i)
		es = append(es, e)
		off += uint64(e.Length)
	}
	return es
}

func TestPackNumbers(t *testing.T) {
	path := filepath.Join(t.TempDir(), "index.db")
	ix, err := Open(path, []byte("repo"), Options{})
	if err != nil {
		t.Fatal(err)
	}
	p1, p2 := blob.ID{1}, blob.ID{2}
	e1, e2 := entries(1, 3), entries(2, 2)
	e2 = append(e2, e1[0]) // a blob in two packs keeps its first location
	if err := ix.AddPack(p1, 1000, e1); err != nil {
		t.Fatal(err)
	}
	if err := ix.AddPack(p2, 2000, e2); err != nil {
		t.Fatal(err)
	}
	loc, ok, err := ix.Lookup(e2[1].ID)
	want := Location{Pack: p2, Type: blob.Data, Storage: pack.Zstd, Offset: e2[1].Offset, Length: e2[1].Length, RawLength: 400}
	if err != nil || !ok || loc != want {
		t.Fatalf("Lookup = %+v %v %v, want %+v", loc, ok, err, want)
	}
	if loc, _, _ := ix.Lookup(e1[0].ID); loc.Pack != p1 {
		t.Errorf("a blob in two packs moved to %s", loc.Pack.Short())
	}
	if info, ok, _ := ix.Pack(p2); !ok || info.Size != 2000 || info.Count != 3 {
		t.Errorf("Pack(p2) = %+v %v", info, ok)
	}
	// Repacking points the blob at the new pack; removing p1 keeps it.
	if err := ix.SetPack(p2, 2000, e2); err != nil {
		t.Fatal(err)
	}
	n, err := ix.RemovePacks(map[blob.ID]bool{p1: true})
	if err != nil || n != 2 {
		t.Fatalf("RemovePacks removed %d blobs (%v), want 2", n, err)
	}
	if loc, ok, _ := ix.Lookup(e1[0].ID); !ok || loc.Pack != p2 {
		t.Errorf("repacked blob: %+v %v", loc, ok)
	}
	if _, ok, _ := ix.Lookup(e1[1].ID); ok {
		t.Error("a blob of the removed pack is still indexed")
	}
	ix.Close()
	// Numbers survive reopening, and new packs do not reuse old numbers.
	ix, err = Open(path, []byte("repo"), Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer ix.Close()
	p3 := blob.ID{3}
	if err := ix.AddPack(p3, 10, entries(3, 1)); err != nil {
		t.Fatal(err)
	}
	count := 0
	ix.EachBlob(func(id blob.ID, l Location) error {
		count++
		if l.Pack != p2 && l.Pack != p3 {
			t.Errorf("blob %s in pack %s", id.Short(), l.Pack.Short())
		}
		return nil
	})
	if count != 4 {
		t.Errorf("%d blobs indexed, want 4", count)
	}
	if _, err := Open(filepath.Join(t.TempDir(), "x.db"), []byte("repo"), Options{}); err != nil {
		t.Fatal(err)
	}
}

// LookupMany gives, for every id, what Lookup gives: blobs of the file in
// several packs, of the read-only overlay, and absent ones.
func TestLookupManyIsLookup(t *testing.T) {
	path := filepath.Join(t.TempDir(), "index.db")
	ix, err := Open(path, []byte("repo"), Options{})
	if err != nil {
		t.Fatal(err)
	}
	for seed := byte(1); seed <= 3; seed++ {
		if err := ix.AddPack(blob.ID{seed}, 1000, entries(seed, 5)); err != nil {
			t.Fatal(err)
		}
	}
	ix.Close()
	ro, err := Open(path, []byte("repo"), Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer ro.Close()
	if err := ro.AddPack(blob.ID{9}, 500, entries(9, 2)); err != nil { // the overlay
		t.Fatal(err)
	}
	var ids []blob.ID
	for _, seed := range []byte{3, 9, 1, 7, 2} { // 7: never indexed
		for _, e := range entries(seed, 2) {
			ids = append(ids, e.ID)
		}
	}
	locs, found, err := ro.LookupMany(ids)
	if err != nil {
		t.Fatal(err)
	}
	for i, id := range ids {
		loc, ok, err := ro.Lookup(id)
		if err != nil || loc != locs[i] || ok != found[i] {
			t.Errorf("blob %s: LookupMany %+v %v, Lookup %+v %v %v", id.Short(), locs[i], found[i], loc, ok, err)
		}
		if want := id[0] != 7; ok != want {
			t.Errorf("blob %s: found %v, want %v", id.Short(), ok, want)
		}
	}
}

// HasAll steps a cursor through the sorted ids: every present set is all
// there, and one absent id anywhere (before, between and after the indexed
// keys, near or far from the previous one) makes it false.
func TestHasAllIsEveryHas(t *testing.T) {
	path := filepath.Join(t.TempDir(), "index.db")
	ix, err := Open(path, []byte("repo"), Options{})
	if err != nil {
		t.Fatal(err)
	}
	var present []blob.ID
	for seed := byte(10); seed < 250; seed += 3 {
		es := entries(seed, 200)
		if err := ix.AddPack(blob.ID{seed}, 100000, es); err != nil {
			t.Fatal(err)
		}
		for _, e := range es {
			present = append(present, e.ID)
		}
	}
	ix.Close()
	ro, err := Open(path, []byte("repo"), Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer ro.Close()
	overlay := entries(252, 3)
	if err := ro.AddPack(blob.ID{252}, 500, overlay); err != nil {
		t.Fatal(err)
	}
	rng := rand.New(rand.NewPCG(1, 2))
	for _, n := range []int{1, 10, 1000, len(present)} {
		ids := append([]blob.ID{overlay[1].ID}, present[:0:0]...)
		for _, i := range rng.Perm(len(present))[:n] {
			ids = append(ids, present[i])
		}
		ids = append(ids, ids[len(ids)/2]) // a duplicate
		if ok, err := ro.HasAll(ids); err != nil || !ok {
			t.Fatalf("HasAll of %d indexed ids = %v, %v", len(ids), ok, err)
		}
		for _, absent := range []blob.ID{{0}, {11, 5}, {13, 199, 1}, {41}, {255, 255}} {
			with := append(slices.Clone(ids), absent)
			rng.Shuffle(len(with), func(i, j int) { with[i], with[j] = with[j], with[i] })
			if has, _ := ro.Has(absent); has {
				t.Fatalf("test id %s is indexed", absent.Short())
			}
			if ok, err := ro.HasAll(with); err != nil || ok {
				t.Errorf("HasAll of %d ids with %s never indexed = %v, %v", len(with), absent.Short(), ok, err)
			}
		}
	}
}

// Hold keeps the first location of a blob and returns the other copies.
func TestHoldReturnsOtherCopies(t *testing.T) {
	ix, err := Open(filepath.Join(t.TempDir(), "index.db"), []byte("repo"), Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer ix.Close()
	a, b := blob.ID{1}, blob.ID{2}
	p1 := []pack.Entry{{ID: a, Offset: 0, Length: 10}, {ID: b, Offset: 10, Length: 10}}
	dups, err := ix.Hold(blob.ID{0xa1}, 100, p1)
	if err != nil || len(dups) != 0 {
		t.Fatalf("first pack: dups %v, %v", dups, err)
	}
	p2 := []pack.Entry{{ID: b, Offset: 0, Length: 10}}
	dups, err = ix.Hold(blob.ID{0xa2}, 100, p2)
	if err != nil || len(dups) != 1 || dups[0].ID != b {
		t.Fatalf("second pack: dups %v, %v; want the copy of %s", dups, err, b.Short())
	}
	if loc, ok, err := ix.Lookup(b); err != nil || !ok || loc.Pack != (blob.ID{0xa1}) {
		t.Errorf("lookup %s: %+v %v %v, want the first pack's copy", b.Short(), loc, ok, err)
	}
}
