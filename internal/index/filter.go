package index

// The filter: a Bloom filter of the blob ids in the cache file, kept in
// memory outside the Go heap (16 bits per id, sized for an eighth more ids
// than it holds when built: 21 MiB for 10 million chunks, about 0.1% false
// positives: each false positive is a bbolt lookup, which faults up to
// 64 KiB of the file into the process) and in a file beside
// the cache file. Has and Lookup of an id the filter rules out answer
// without touching bbolt's pages, so a backup of new data into a large
// repository does not fault the whole memory-mapped index into its
// resident set. Blob ids are keyed BLAKE3 hashes, uniformly distributed, so
// the filter's bit positions are taken from the id's own bytes.
//
// File (<cache file>.filter): magic "SBLF" | version u8 (1) | k u8 |
// bbolt txid u64 | ids u64 | capacity u64 | words u64 | words × u64.
// The txid is that of the cache file when the filter was written; a filter
// whose txid differs from the file's (a writer died before saving it) is
// not used, and a writable Index rebuilds it.

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"unsafe"

	"github.com/stasisbackup/stasis/repo/blob"
	bolt "go.etcd.io/bbolt"
	"golang.org/x/sys/unix"
)

const (
	filterMagic    = "SBLF"
	filterVersion  = 1
	filterK        = 10
	filterBitsPer  = 16
	filterMinCap   = 1 << 16
	filterHeader   = 4 + 1 + 1 + 8*4
	maxFilterWords = 1 << 31 / 8 // 2 GiB of bits: far beyond any real cache
)

type filter struct {
	words []uint64 // in mem
	mem   []byte   // anonymous mapping outside the Go heap (see allocWords)
	n     uint64   // ids added
	cap   uint64   // ids it was sized for
	dirty bool
}

func newFilter(capacity uint64) *filter {
	capacity = max(capacity, filterMinCap)
	m := capacity * filterBitsPer
	f := &filter{cap: capacity}
	f.allocWords((m + 63) / 64)
	return f
}

// allocWords gives the filter n zero words in an anonymous mapping rather
// than on the Go heap: a heap object of 20 MiB that lives for the whole
// command would raise the garbage collector's heap goal by as much again.
// free (or the process's exit) releases it.
func (f *filter) allocWords(n uint64) {
	mem, err := unix.Mmap(-1, 0, int(n*8), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_ANON|unix.MAP_PRIVATE)
	if err != nil {
		f.words = make([]uint64, n) // fall back to the heap
		return
	}
	f.mem = mem
	f.words = unsafe.Slice((*uint64)(unsafe.Pointer(&mem[0])), n)
}

// bytes views the words as bytes (in host order).
func (f *filter) bytes() []byte {
	return unsafe.Slice((*byte)(unsafe.Pointer(&f.words[0])), len(f.words)*8)
}

// free releases the words' mapping.
func (f *filter) free() {
	if f != nil && f.mem != nil {
		unix.Munmap(f.mem)
		f.mem, f.words = nil, nil
	}
}

func (f *filter) positions(id *blob.ID, fn func(word int, bit uint64) bool) bool {
	m := uint64(len(f.words)) * 64
	h1 := binary.LittleEndian.Uint64(id[0:])
	h2 := binary.LittleEndian.Uint64(id[8:]) | 1
	for j := uint64(0); j < filterK; j++ {
		p := (h1 + j*h2) % m
		if !fn(int(p/64), 1<<(p%64)) {
			return false
		}
	}
	return true
}

func (f *filter) add(id blob.ID) {
	f.positions(&id, func(w int, b uint64) bool { f.words[w] |= b; return true })
	f.n++
	f.dirty = true
}

// mayHave is false only for ids certainly not added.
func (f *filter) mayHave(id blob.ID) bool {
	return f.positions(&id, func(w int, b uint64) bool { return f.words[w]&b != 0 })
}

func (f *filter) full() bool { return f.n > f.cap }

func filterPath(dbPath string) string { return dbPath + ".filter" }

// loadFilter reads the filter file of the cache file; it returns nil (no
// filter) when it is missing, malformed, or written for another state
// (txid) of the cache file.
func loadFilter(dbPath string, txid uint64) *filter {
	fh, err := os.Open(filterPath(dbPath))
	if err != nil {
		return nil
	}
	defer fh.Close()
	r := bufio.NewReader(fh)
	var h [filterHeader]byte
	if _, err := io.ReadFull(r, h[:]); err != nil || string(h[:4]) != filterMagic || h[4] != filterVersion || h[5] != filterK {
		return nil
	}
	if binary.LittleEndian.Uint64(h[6:]) != txid {
		return nil
	}
	f := &filter{n: binary.LittleEndian.Uint64(h[14:]), cap: binary.LittleEndian.Uint64(h[22:])}
	words := binary.LittleEndian.Uint64(h[30:])
	if words == 0 || words > maxFilterWords {
		return nil
	}
	if fi, err := fh.Stat(); err != nil || uint64(fi.Size()) != filterHeader+8*words {
		return nil
	}
	f.allocWords(words)
	if _, err := io.ReadFull(r, f.bytes()); err != nil {
		f.free()
		return nil
	}
	if binary.NativeEndian.Uint16([]byte{1, 0}) != 1 { // the file is little-endian
		for i, w := range f.words {
			f.words[i] = binary.LittleEndian.Uint64(binary.NativeEndian.AppendUint64(nil, w))
		}
	}
	return f
}

// save writes the filter for cache state txid (temp file and rename; a
// crash leaves the old file, whose txid then no longer matches).
func (f *filter) save(dbPath string, txid uint64) error {
	p := filterPath(dbPath)
	tmp, err := os.CreateTemp(pathDir(p), ".filter-*")
	if err != nil {
		return err
	}
	w := bufio.NewWriterSize(tmp, 1<<20)
	var h [filterHeader]byte
	copy(h[:], filterMagic)
	h[4], h[5] = filterVersion, filterK
	binary.LittleEndian.PutUint64(h[6:], txid)
	binary.LittleEndian.PutUint64(h[14:], f.n)
	binary.LittleEndian.PutUint64(h[22:], f.cap)
	binary.LittleEndian.PutUint64(h[30:], uint64(len(f.words)))
	w.Write(h[:])
	if binary.NativeEndian.Uint16([]byte{1, 0}) == 1 {
		_, err = w.Write(f.bytes())
	} else {
		err = binary.Write(w, binary.LittleEndian, f.words)
	}
	if err == nil {
		err = w.Flush()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp.Name(), p)
	}
	if err != nil {
		os.Remove(tmp.Name())
		return fmt.Errorf("save index filter %s: %w", p, err)
	}
	f.dirty = false
	return nil
}

func pathDir(p string) string {
	for i := len(p) - 1; i >= 0; i-- {
		if p[i] == '/' {
			return p[:i]
		}
	}
	return "."
}

// buildFilter makes a filter of every blob id in the cache file (one pass
// over the blobs bucket: it reads the whole file, so only a writer that
// found no valid filter does it).
func buildFilter(db *bolt.DB) (*filter, error) {
	var f *filter
	err := db.View(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketBlobs)
		n := uint64(b.Stats().KeyN)
		f = newFilter(n + n/8)
		return b.ForEach(func(k, _ []byte) error {
			if len(k) != blob.IDSize {
				return errors.New("index: blob key of the wrong length")
			}
			f.add(blob.ID(k))
			return nil
		})
	})
	return f, err
}

// txID returns the id of the cache file's last committed transaction.
func txID(db *bolt.DB) (uint64, error) {
	var id uint64
	err := db.View(func(tx *bolt.Tx) error { id = uint64(tx.ID()); return nil })
	return id, err
}
