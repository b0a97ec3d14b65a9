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
