package pack

import (
	"bytes"
	"errors"
	"testing"

	"github.com/stasisbackup/stasis/repo/blob"
	"github.com/zeebo/blake3"
)

func buildPack(t testing.TB, n int) ([]byte, []Entry, blob.ID) {
	return buildPackVersion(t, n, 1)
}

func buildPackVersion(t testing.TB, n, version int) ([]byte, []Entry, blob.ID) {
	var buf bytes.Buffer
	w, err := NewWriter(&buf, version)
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
	for _, v := range []int{1, 2} {
		data, want, id := buildPackVersion(t, 5, v)
		checkRoundTrip(t, data, want, id)
	}
}

func checkRoundTrip(t *testing.T, data []byte, want []Entry, id blob.ID) {
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

// buildFramedPack writes a version 2 pack of a single blob, a frame of
// three blobs and another single blob; it returns the bytes and the
// plaintext of each blob.
func buildFramedPack(t *testing.T) ([]byte, [][]byte) {
	var buf bytes.Buffer
	w, err := NewWriter(&buf, 2)
	if err != nil {
		t.Fatal(err)
	}
	plain := [][]byte{[]byte("alone"), []byte("first "), []byte("second "), []byte("third"), []byte("last")}
	ids := make([]blob.ID, len(plain))
	for i, p := range plain {
		ids[i] = blob.ID(blake3.Sum256(p))
	}
	must := func(err error) {
		if err != nil {
			t.Fatal(err)
		}
	}
	must(w.Add(ids[0], blob.Data, Raw, len(plain[0]), plain[0]))
	frame := bytes.Join(plain[1:4], nil)
	must(w.AddFrame(blob.Data, FrameRaw, ids[1:4], []uint32{6, 7, 5}, frame))
	must(w.Add(ids[4], blob.Data, Raw, len(plain[4]), plain[4]))
	if _, _, err := w.Finish(nil); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes(), plain
}

func TestFramesRoundTrip(t *testing.T) {
	data, plain := buildFramedPack(t)
	got, err := ReadHeader(bytes.NewReader(data), int64(len(data)), nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != len(plain) {
		t.Fatalf("%d entries, want %d", len(got), len(plain))
	}
	for i, e := range got {
		frame := data[e.Offset : e.Offset+uint64(e.Length)]
		b := frame[e.Inner : e.Inner+e.RawLength]
		if !bytes.Equal(b, plain[i]) || e.ID != blob.ID(blake3.Sum256(b)) {
			t.Errorf("entry %d (%+v) gives %q, want %q", i, e, b, plain[i])
		}
	}
	if !got[1].SameFrame(got[3]) || got[0].SameFrame(got[1]) || got[3].SameFrame(got[4]) {
		t.Errorf("frames not told apart: %+v", got)
	}
}

func TestFramesNeedVersion2(t *testing.T) {
	w, err := NewWriter(new(bytes.Buffer), 1)
	if err != nil {
		t.Fatal(err)
	}
	if err := w.AddFrame(blob.Data, FrameZstd, []blob.ID{{1}, {2}}, []uint32{1, 1}, []byte("xy")); err == nil {
		t.Error("a version 1 pack took a frame of several blobs")
	}
	if err := w.AddFrame(blob.Data, Raw, []blob.ID{{1}, {2}}, []uint32{1, 1}, []byte("xy")); err == nil {
		t.Error("storage raw took two blobs")
	}
}

// TestFrameDamageIsDetected rewrites entries of a framed pack's header
// (with a valid checksum) so that they no longer describe one frame.
func TestFrameDamageIsDetected(t *testing.T) {
	data, _ := buildFramedPack(t)
	entries, err := ReadHeader(bytes.NewReader(data), int64(len(data)), nil)
	if err != nil {
		t.Fatal(err)
	}
	start := uint64(len(data) - TrailerSize - (8 + len(entries)*EntrySizeV2))
	for name, edit := range map[string]func(e []Entry){
		"inner gap":            func(e []Entry) { e[2].Inner++ },
		"inner at frame start": func(e []Entry) { e[1].Inner = 3 },
		"length disagrees":     func(e []Entry) { e[2].Length-- },
		"storage disagrees":    func(e []Entry) { e[2].Storage = FrameZstd },
		"unknown storage":      func(e []Entry) { e[2].Storage = 9 },
	} {
		e := append([]Entry(nil), entries...)
		edit(e)
		if _, err := DecodeHeader(EncodeHeader(e, 2), start, 2); !errors.Is(err, ErrCorrupt) {
			t.Errorf("%s: err = %v, want ErrCorrupt", name, err)
		}
		if _, err := DecodeHeader(EncodeHeader(entries, 1), uint64(len(data)), 1); !errors.Is(err, ErrCorrupt) {
			t.Errorf("frames in a version 1 header: err = %v, want ErrCorrupt", err)
		}
	}
}
