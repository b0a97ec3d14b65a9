package tree

import (
	"encoding/binary"
	"runtime"
	"testing"
)

// allocated returns the bytes fn allocates on the heap.
func allocated(fn func()) uint64 {
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	fn()
	runtime.ReadMemStats(&after)
	return after.TotalAlloc - before.TotalAlloc
}

// maxDecodeAlloc is the heap a decode of n input bytes may take. A decoded
// node is a Node (248 bytes) for at least minNodeSize (18) bytes of input,
// a decoded extent an Extent (48 bytes) for at least 2: about 24 bytes of
// memory per input byte at worst, whatever the input claims; strings copy
// input bytes. The slack covers the error message and the Tree.
func maxDecodeAlloc(n int) uint64 { return 32*uint64(n) + 16<<10 }

// crafted returns tree (or, with list, extent-list) bytes that claim count
// entries and then hold only pad filler bytes.
func crafted(list bool, count uint64, pad int) []byte {
	b := append([]byte(nil), magic...)
	if list {
		b = append([]byte(nil), listMagic...)
	}
	b = append(b, version)
	b = binary.AppendUvarint(b, count)
	return append(b, make([]byte, pad)...)
}

// Issue 11 item 5: a count is checked against the bytes left before
// anything is allocated for it, so a crafted tree claiming many nodes or
// extents costs memory in proportion to its size, not to its claims.
func TestDecodeClaimedCountsAreBounded(t *testing.T) {
	const pad = 256 << 10
	node := []byte{1, 'a', byte(File), 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}
	fileClaim := append(append(crafted(false, 1, 0), node...), binary.AppendUvarint(nil, pad)...)
	fileClaim = append(fileClaim, make([]byte, pad)...)
	for _, c := range []struct {
		name string
		data []byte
		fn   func([]byte) error
	}{
		{"nodes", crafted(false, pad, pad), func(b []byte) error { _, err := Decode(b); return err }},
		{"extents of a file", fileClaim, func(b []byte) error { _, err := Decode(b); return err }},
		{"extent list", crafted(true, pad, pad), func(b []byte) error { _, _, err := DecodeList(b); return err }},
	} {
		var err error
		got := allocated(func() { err = c.fn(c.data) })
		if err == nil {
			t.Errorf("%s: crafted input decoded", c.name)
		}
		if got > maxDecodeAlloc(len(c.data)) {
			t.Errorf("%s: decoding %d bytes that claim %d entries allocated %d bytes, more than %d", c.name, len(c.data), pad, got, maxDecodeAlloc(len(c.data)))
		}
	}
}

// FuzzDecodeBounded checks, for any input, that Decode and DecodeList
// allocate at most maxDecodeAlloc of the input's size.
func FuzzDecodeBounded(f *testing.F) {
	b, _ := sample().Encode()
	f.Add(b)
	f.Add(crafted(false, 1<<40, 64))
	f.Add(crafted(false, 200, 200))
	f.Add(crafted(true, 1<<20, 100))
	f.Add(EncodeList([]Extent{{Hole: true, Length: 1}, {Hole: true}}))
	f.Fuzz(func(t *testing.T, data []byte) {
		if got := allocated(func() { Decode(data) }); got > maxDecodeAlloc(len(data)) {
			t.Fatalf("Decode of %d bytes allocated %d bytes, more than %d", len(data), got, maxDecodeAlloc(len(data)))
		}
		if got := allocated(func() { DecodeList(data) }); got > maxDecodeAlloc(len(data)) {
			t.Fatalf("DecodeList of %d bytes allocated %d bytes, more than %d", len(data), got, maxDecodeAlloc(len(data)))
		}
	})
}
