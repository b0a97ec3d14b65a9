package zdb

import (
	"fmt"
	"math/rand"
	"os"
	"slices"
)

// DB is a database file open for transactions. It is not safe for
// concurrent use: one goroutine runs transactions.
type DB struct {
	path string
	f    *os.File
	h    Header
	buf  []byte
}

// Open opens the database at path for reading and writing and verifies its
// header and size. It does not check every page (use Check for that).
func Open(path string) (*DB, error) {
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return nil, fmt.Errorf("open database %s: %w", path, err)
	}
	buf := make([]byte, PageSize)
	if _, err := f.ReadAt(buf, 0); err != nil {
		f.Close()
		return nil, fmt.Errorf("open database %s: read header: %w", path, err)
	}
	h, err := DecodeHeader(buf)
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("open database %s: %w (recreate it with zoomsim init)", path, err)
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("open database %s: %w", path, err)
	}
	if want := int64(h.Pages+1) * PageSize; st.Size() != want {
		f.Close()
		return nil, fmt.Errorf("open database %s: size %d, header says %d: %w", path, st.Size(), want, ErrCorrupt)
	}
	return &DB{path: path, f: f, h: h, buf: make([]byte, PageSize)}, nil
}

// Header returns the database header.
func (d *DB) Header() Header { return d.h }

// Tx is what one transaction did.
type Tx struct {
	ID     uint64
	Pages  []int   // page numbers written, in write order
	Deltas []int64 // amount added to each page (sums to zero)
}

// Transact runs transaction id: it picks 2..8 distinct pages spread over the
// file, reads and verifies each, moves amounts between them so the sum is
// unchanged, and writes each page back in place with its own pwrite. Between
// those writes the file on disk is torn. It does not fsync; call Sync.
func (d *DB) Transact(rng *rand.Rand, id uint64) (Tx, error) {
	k := 2 + rng.Intn(7)
	if k > d.h.Pages {
		k = d.h.Pages
	}
	// One page from each of k equal segments: spread over the file.
	pages := make([]int, 0, k)
	seg := d.h.Pages / k
	for i := 0; i < k; i++ {
		pages = append(pages, 1+i*seg+rng.Intn(seg))
	}
	rng.Shuffle(len(pages), func(i, j int) { pages[i], pages[j] = pages[j], pages[i] })
	deltas := make([]int64, k)
	var sum int64
	for i := 0; i < k-1; i++ {
		deltas[i] = rng.Int63n(2001) - 1000
		sum += deltas[i]
	}
	deltas[k-1] = -sum
	for i, n := range pages {
		off := int64(n) * PageSize
		if _, err := d.f.ReadAt(d.buf, off); err != nil {
			return Tx{}, fmt.Errorf("tx %d: read %s page %d: %w", id, d.path, n, err)
		}
		p, err := DecodePage(d.buf, n)
		if err != nil {
			return Tx{}, fmt.Errorf("tx %d: %s page %d: %w: %w", id, d.path, n, err, ErrCorrupt)
		}
		p.TxID = id
		p.Balance += deltas[i]
		EncodePage(d.buf, p)
		if _, err := d.f.WriteAt(d.buf, off); err != nil {
			return Tx{}, fmt.Errorf("tx %d: write %s page %d: %w", id, d.path, n, err)
		}
	}
	return Tx{ID: id, Pages: slices.Clone(pages), Deltas: deltas}, nil
}

// Sync flushes the file to stable storage.
func (d *DB) Sync() error {
	if err := d.f.Sync(); err != nil {
		return fmt.Errorf("sync %s: %w", d.path, err)
	}
	return nil
}

// Close closes the file.
func (d *DB) Close() error {
	if err := d.f.Close(); err != nil {
		return fmt.Errorf("close %s: %w", d.path, err)
	}
	return nil
}
