package tree

import (
	"errors"
	"reflect"
	"testing"

	"github.com/stasisbackup/stasis/repo/blob"
)

func sample() *Tree {
	return &Tree{Nodes: []Node{
		{Name: "z-file", Kind: File, Mode: 0o644, UID: 1, GID: 2, Size: 15, MTime: 1700000000123456789, CTime: -5, User: "u", Group: "g",
			Content: []Extent{{ID: blob.ID{1}, Length: 5}, {Hole: true, Length: 10}}},
		{Name: "a dir", Kind: Dir, Mode: 0o755, Subtree: blob.ID{9}},
		{Name: "bad-\xff-utf8\nnewline", Kind: Symlink, LinkTarget: "/x"},
		{Name: "dev", Kind: CharDev, Rdev: 259},
		{Name: "changed", Kind: File, Flags: Changed, Size: 0, Error: "changed while being read"},
	}}
}

func TestEncodeDecode(t *testing.T) {
	tr := sample()
	b, err := tr.Encode()
	if err != nil {
		t.Fatal(err)
	}
	got, err := Decode(b)
	if err != nil {
		t.Fatal(err)
	}
	for i := range got.Nodes {
		if len(got.Nodes[i].Content) == 0 {
			got.Nodes[i].Content = nil
		}
	}
	if !reflect.DeepEqual(got, tr) {
		t.Errorf("round trip:\n%+v\n%+v", got, tr)
	}
	// Deterministic: the same listing in another order encodes the same.
	rev := sample()
	for i, j := 0, len(rev.Nodes)-1; i < j; i, j = i+1, j-1 {
		rev.Nodes[i], rev.Nodes[j] = rev.Nodes[j], rev.Nodes[i]
	}
	b2, _ := rev.Encode()
	if string(b) != string(b2) {
		t.Error("encoding depends on node order")
	}
	if n := got.Find("dev"); n == nil || n.Rdev != 259 {
		t.Errorf("Find(dev) = %+v", n)
	}
}

func TestRejects(t *testing.T) {
	for _, name := range []string{"", ".", "..", "a/b", "nul\x00"} {
		if _, err := (&Tree{Nodes: []Node{{Name: name, Kind: File}}}).Encode(); err == nil {
			t.Errorf("name %q accepted", name)
		}
	}
	if _, err := (&Tree{Nodes: []Node{{Name: "x", Kind: File}, {Name: "x", Kind: File}}}).Encode(); err == nil {
		t.Error("duplicate names accepted")
	}
	b, _ := sample().Encode()
	for i := 0; i < len(b); i++ {
		if _, err := Decode(b[:i]); !errors.Is(err, ErrCorrupt) {
			t.Fatalf("truncated at %d: err = %v", i, err)
		}
	}
}

func FuzzDecode(f *testing.F) {
	b, _ := sample().Encode()
	f.Add(b)
	empty, _ := (&Tree{}).Encode()
	f.Add(empty)
	f.Fuzz(func(t *testing.T, data []byte) {
		tr, err := Decode(data)
		if err != nil {
			return
		}
		// Whatever decodes has valid names and re-encodes stably.
		again, err := tr.Encode()
		if err != nil {
			t.Fatalf("decoded tree does not encode: %v", err)
		}
		tr2, err := Decode(again)
		if err != nil {
			t.Fatalf("re-encoded tree does not decode: %v", err)
		}
		third, _ := tr2.Encode()
		if string(third) != string(again) {
			t.Fatalf("encoding is not stable")
		}
	})
}

func TestExtentLists(t *testing.T) {
	var content []Extent
	for i := 0; i < 1000; i++ {
		e := Extent{Length: uint64(4096 + i)}
		e.ID[0], e.ID[1] = byte(i*37), byte(i)
		if i%100 == 50 {
			e = Extent{Hole: true, Length: 1 << 20}
		}
		content = append(content, e)
	}
	if SplitExtents(content[:ListMinFile]) != nil {
		t.Error("a small file was split")
	}
	lists := SplitExtents(content)
	var joined []Extent
	for _, l := range lists {
		if len(l) > listMax || (len(l) < listMin && &l[0] != &lists[len(lists)-1][0]) {
			t.Errorf("list of %d extents", len(l))
		}
		got, total, err := DecodeList(EncodeList(l))
		if err != nil {
			t.Fatal(err)
		}
		var want uint64
		for _, e := range l {
			want += e.Length
		}
		if total != want {
			t.Errorf("list covers %d bytes, want %d", total, want)
		}
		joined = append(joined, got...)
	}
	if !reflect.DeepEqual(joined, content) {
		t.Error("lists do not join back to the content")
	}
	// Content-defined: dropping the first extent leaves later cuts in place.
	again := SplitExtents(content[1:])
	if len(lists[len(lists)-1]) != len(again[len(again)-1]) {
		t.Error("cuts moved after a change at the start")
	}
	// Lists never nest.
	nested := EncodeList([]Extent{{ID: blob.ID{1}, Length: 5, List: true}})
	if _, _, err := DecodeList(nested); !errors.Is(err, ErrCorrupt) {
		t.Errorf("a list inside a list decoded: %v", err)
	}
}

func FuzzDecodeList(f *testing.F) {
	f.Add(EncodeList([]Extent{{ID: blob.ID{1}, Length: 5}, {Hole: true, Length: 9}}))
	f.Add(EncodeList(nil))
	f.Fuzz(func(t *testing.T, data []byte) {
		ext, total, err := DecodeList(data)
		if err != nil {
			return
		}
		var sum uint64
		for _, e := range ext {
			if e.List {
				t.Fatal("decoded a nested list")
			}
			sum += e.Length
		}
		if sum != total {
			t.Fatalf("total %d, extents sum to %d", total, sum)
		}
	})
}
