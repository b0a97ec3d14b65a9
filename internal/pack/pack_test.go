package pack

import (
	"bytes"
	"errors"
	"testing"

	"github.com/stasisbackup/stasis/repo/blob"
	"github.com/zeebo/blake3"
)

func buildPack(t testing.TB, n int) ([]byte, []Entry, blob.ID) {
	var buf bytes.Buffer
	w, err := NewWriter(&buf)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < n; i++ {
		data := bytes.Repeat([]byte{byte(i)}, 10+i)
		id := blob.ID(blake3.Sum256(data))
		if err := w.Add(id, blob.Data, Raw, len(data), data); err != nil {
			t.Fatal(err)
		}
	}
	id, size, err := w.Finish(nil)
	if err != nil {
		t.Fatal(err)
	}
	if size != uint64(buf.Len()) {
		t.Fatalf("Finish size %d, wrote %d", size, buf.Len())
	}
	return buf.Bytes(), w.Entries(), id
}

func TestRoundTrip(t *testing.T) {
	data, want, id := buildPack(t, 5)
	if blob.ID(blake3.Sum256(data)) != id {
		t.Error("pack id is not the BLAKE3 of its bytes")
	}
	got, err := ReadHeader(bytes.NewReader(data), int64(len(data)), nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != len(want) {
		t.Fatalf("%d entries, want %d", len(got), len(want))
	}
	for i := range got {
		if got[i] != want[i] {
			t.Errorf("entry %d: %+v, want %+v", i, got[i], want[i])
		}
		e := got[i]
		if b := data[e.Offset : e.Offset+uint64(e.Length)]; blob.ID(blake3.Sum256(b)) != e.ID {
			t.Errorf("entry %d does not point at its blob", i)
		}
	}
}

func TestDamageIsDetected(t *testing.T) {
	data, _, _ := buildPack(t, 3)
	for name, bad := range map[string][]byte{
		"truncated":      data[:len(data)-5],
		"no magic":       append([]byte("XXXXXXXX"), data[8:]...),
		"flipped header": flip(data, len(data)-TrailerSize-10),
		"empty":          nil,
	} {
		if _, err := ReadHeader(bytes.NewReader(bad), int64(len(bad)), nil); !errors.Is(err, ErrCorrupt) {
			t.Errorf("%s: err = %v, want ErrCorrupt", name, err)
		}
	}
}

func flip(b []byte, i int) []byte {
	c := append([]byte(nil), b...)
	c[i] ^= 0x40
	return c
}

func FuzzReadHeader(f *testing.F) {
	data, _, _ := buildPack(f, 3)
	f.Add(data)
	empty, _, _ := buildPack(f, 0)
	f.Add(empty)
	f.Fuzz(func(t *testing.T, b []byte) {
		entries, err := ReadHeader(bytes.NewReader(b), int64(len(b)), nil)
		if err != nil {
			return
		}
		for _, e := range entries {
			if e.Offset+uint64(e.Length) > uint64(len(b)) {
				t.Fatalf("accepted entry past the end: %+v", e)
			}
		}
	})
}
