package repo

import (
	"encoding/binary"
	"runtime"
	"testing"

	"github.com/stasisbackup/stasis/internal/index"
	"github.com/stasisbackup/stasis/internal/pack"
	"github.com/stasisbackup/stasis/repo/blob"
)

// heapAllocated returns the bytes fn allocates on the heap.
func heapAllocated(fn func()) uint64 {
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	fn()
	runtime.ReadMemStats(&after)
	return after.TotalAlloc - before.TotalAlloc
}

// maxIndexDecodeAlloc is the heap a decode of an n-byte index file may
// take: an IndexedPack (64 bytes) per 44 input bytes at least, a
// pack.Entry (56 bytes) per 46, so under 2 bytes per input byte whatever
// the file claims; the slack covers an error message.
func maxIndexDecodeAlloc(n int) uint64 { return 4*uint64(n) + 16<<10 }

// craftedIndex returns index file plaintext that claims packs packs (the
// first of them claiming blobs blobs) and then holds pad zero bytes.
func craftedIndex(packs, blobs uint32, pad int) []byte {
	b := append([]byte(indexMagic), 1)
	b = binary.LittleEndian.AppendUint32(b, packs)
	b = append(b, make([]byte, blob.IDSize)...)
	b = binary.LittleEndian.AppendUint64(b, 1<<40)
	b = binary.LittleEndian.AppendUint32(b, blobs)
	return append(b, make([]byte, pad)...)
}

// Index files are not authenticated in an unencrypted repository (and a
// buggy writer may have sealed anything): claimed counts must not drive
// allocation (issue 11 item 5).
func TestDecodeIndexFileClaimsAreBounded(t *testing.T) {
	for _, data := range [][]byte{
		craftedIndex(1<<32-1, 0, 1<<16),
		craftedIndex(1, 1<<32-1, 1<<16),
		craftedIndex(1<<16, 1<<16, 1<<16),
	} {
		var err error
		got := heapAllocated(func() { _, err = decodeIndexFile(data) })
		if err == nil {
			t.Errorf("crafted index file of %d bytes decoded", len(data))
		}
		if got > maxIndexDecodeAlloc(len(data)) {
			t.Errorf("decoding a crafted index file of %d bytes allocated %d bytes", len(data), got)
		}
	}
}

// FuzzDecodeIndexFile: any input decodes or fails without panicking,
// within maxIndexDecodeAlloc, and what decodes encodes back to the input.
func FuzzDecodeIndexFile(f *testing.F) {
	f.Add(encodeIndexFile([]index.IndexedPack{{ID: blob.ID{1}, Size: 1000, Entries: []pack.Entry{
		{ID: blob.ID{2}, Type: blob.Data, Storage: pack.Zstd, Offset: 8, Length: 100, RawLength: 300},
		{ID: blob.ID{3}, Type: blob.Data, Storage: pack.Raw, Offset: 108, Length: 50, RawLength: 50},
	}}}))
	f.Add(encodeIndexFile(nil))
	f.Add(craftedIndex(1<<32-1, 0, 64))
	f.Add(craftedIndex(1, 1<<31, 200))
	f.Fuzz(func(t *testing.T, data []byte) {
		var packs []index.IndexedPack
		var err error
		if got := heapAllocated(func() { packs, err = decodeIndexFile(data) }); got > maxIndexDecodeAlloc(len(data)) {
			t.Fatalf("decoding %d bytes allocated %d bytes, more than %d", len(data), got, maxIndexDecodeAlloc(len(data)))
		}
		if err != nil {
			return
		}
		if again := encodeIndexFile(packs); string(again) != string(data) {
			t.Fatalf("decoded index file does not encode back to its bytes")
		}
	})
}
