package repo

// Index files: the repository's record of which blobs each pack holds. A
// backup writes one after its packs are stored and before its snapshot, so
// that other clients learn of its packs without reading their headers. They
// are immutable, named by the BLAKE3 of their bytes, and sealed in an
// encrypted repository; see docs/format.md.
//
//	magic "SIDX" | version u8 (1 or 2) | packs u32
//	per pack: id [32] | size u64 | blobs u32 |
//	          per blob: id [32] | type u8 | storage u8 | offset u32 | length u32 | rawLength u32
//	                    [version 2] inner u32
//
// Version 2 is written when some blob shares a frame (pack.Storage.Framed).

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path"
	"strings"

	"github.com/stasisbackup/stasis/internal/index"
	"github.com/stasisbackup/stasis/internal/pack"
	"github.com/stasisbackup/stasis/repo/backend"
	"github.com/stasisbackup/stasis/repo/blob"
	"github.com/zeebo/blake3"
)

// IndexDir is the directory of index files.
const IndexDir = "index"

const (
	indexMagic     = "SIDX"
	indexEntrySize = blob.IDSize + 1 + 1 + 4 + 4 + 4 // version 1; version 2 adds inner u32
	indexPackSize  = blob.IDSize + 8 + 4
	// maxIndexFile bounds what is read of one index file.
	maxIndexFile = 256 << 20
	// packsPerIndexFile is how many packs a backup covers with one index
	// file before it writes the next (a crash loses at most that many
	// packs' worth of deduplication, never data), and the size of the files
	// prune writes when it consolidates.
	packsPerIndexFile = 64
	// blobsPerIndexFile is the other bound of a backup's index file: a
	// backup of small chunks (a database) fills one with 65,536 blobs
	// (≈ 4.6 MiB of index file) before 64 packs, so that the entries it
	// keeps in memory until then stay bounded.
	blobsPerIndexFile = 1 << 16
)

var adIndex = []byte("stasis-index")

// ErrCorruptIndexFile is matched by errors of index files that do not
// decode or hash to their names.
var ErrCorruptIndexFile = errors.New("corrupt index file")

// IndexFileName returns the name of index file id.
func IndexFileName(id blob.ID) string { return path.Join(IndexDir, id.String()) }

// indexFileVersion is the version of an index file of packs: 2 when a blob
// of them shares a frame, 1 (readable by every stasis) otherwise.
func indexFileVersion(packs []index.IndexedPack) byte {
	for _, p := range packs {
		for _, e := range p.Entries {
			if e.Storage.Framed() {
				return 2
			}
		}
	}
	return 1
}

func indexEntryBytes(version byte) int {
	if version >= 2 {
		return indexEntrySize + 4
	}
	return indexEntrySize
}

func encodeIndexFile(packs []index.IndexedPack) []byte {
	version := indexFileVersion(packs)
	n := 9
	for _, p := range packs {
		n += indexPackSize + len(p.Entries)*indexEntryBytes(version)
	}
	b := make([]byte, 0, n)
	b = append(b, indexMagic...)
	b = append(b, version)
	b = binary.LittleEndian.AppendUint32(b, uint32(len(packs)))
	for _, p := range packs {
		b = append(b, p.ID[:]...)
		b = binary.LittleEndian.AppendUint64(b, p.Size)
		b = binary.LittleEndian.AppendUint32(b, uint32(len(p.Entries)))
		for _, e := range p.Entries {
			b = append(b, e.ID[:]...)
			b = append(b, byte(e.Type), byte(e.Storage))
			b = binary.LittleEndian.AppendUint32(b, uint32(e.Offset))
			b = binary.LittleEndian.AppendUint32(b, e.Length)
			b = binary.LittleEndian.AppendUint32(b, e.RawLength)
			if version >= 2 {
				b = binary.LittleEndian.AppendUint32(b, e.Inner)
			}
		}
	}
	return b
}

// decodeIndexFile parses the plaintext of an index file. Every count is
// checked against the bytes that remain before anything is allocated.
func decodeIndexFile(b []byte) ([]index.IndexedPack, error) {
	if len(b) < 9 || string(b[:4]) != indexMagic {
		return nil, fmt.Errorf("%w: bad magic", ErrCorruptIndexFile)
	}
	version := b[4]
	if version != 1 && version != 2 {
		return nil, fmt.Errorf("%w: index file version %d", ErrVersion, version)
	}
	entrySize := uint64(indexEntryBytes(version))
	n := binary.LittleEndian.Uint32(b[5:])
	b = b[9:]
	if uint64(n)*indexPackSize > uint64(len(b)) {
		return nil, fmt.Errorf("%w: %d packs claimed in %d bytes", ErrCorruptIndexFile, n, len(b))
	}
	packs := make([]index.IndexedPack, 0, n)
	for i := uint32(0); i < n; i++ {
		if len(b) < indexPackSize {
			return nil, fmt.Errorf("%w: truncated at pack %d", ErrCorruptIndexFile, i)
		}
		var p index.IndexedPack
		copy(p.ID[:], b)
		p.Size = binary.LittleEndian.Uint64(b[32:])
		cnt := binary.LittleEndian.Uint32(b[40:])
		b = b[indexPackSize:]
		if uint64(cnt)*entrySize > uint64(len(b)) {
			return nil, fmt.Errorf("%w: pack %s claims %d blobs in %d bytes", ErrCorruptIndexFile, p.ID.Short(), cnt, len(b))
		}
		p.Entries = make([]pack.Entry, cnt)
		for j := range p.Entries {
			e := &p.Entries[j]
			copy(e.ID[:], b)
			e.Type, e.Storage = blob.Type(b[32]), pack.Storage(b[33])
			e.Offset = uint64(binary.LittleEndian.Uint32(b[34:]))
			e.Length = binary.LittleEndian.Uint32(b[38:])
			e.RawLength = binary.LittleEndian.Uint32(b[42:])
			if version >= 2 {
				e.Inner = binary.LittleEndian.Uint32(b[46:])
			}
			if e.Offset+uint64(e.Length) > p.Size {
				return nil, fmt.Errorf("%w: blob %s lies beyond the end of pack %s", ErrCorruptIndexFile, e.ID.Short(), p.ID.Short())
			}
			if !e.Storage.Valid() || (!e.Storage.Framed() && e.Inner != 0) {
				return nil, fmt.Errorf("%w: blob %s of pack %s has storage %s at %d in its frame", ErrCorruptIndexFile, e.ID.Short(), p.ID.Short(), e.Storage, e.Inner)
			}
			b = b[entrySize:]
		}
		packs = append(packs, p)
	}
	if len(b) != 0 {
		return nil, fmt.Errorf("%w: %d bytes after the last pack", ErrCorruptIndexFile, len(b))
	}
	return packs, nil
}

// SaveIndexFile writes an index file for packs and returns its name.
func (r *Repository) SaveIndexFile(ctx context.Context, packs []index.IndexedPack) (string, error) {
	data := encodeIndexFile(packs)
	if r.mk != nil {
		data = r.mk.Seal(nil, data, adIndex)
	}
	name := IndexFileName(blob.ID(blake3.Sum256(data)))
	if err := backend.PutBytes(ctx, r.st, name, data); err != nil {
		return "", fmt.Errorf("write index file %s: %w", name, err)
	}
	r.deg.indexGen.Add(1)
	return name, nil
}

// LoadIndexFile reads an index file from the repository (never from the
// cache's copies), verifies and decodes it.
func (r *Repository) LoadIndexFile(ctx context.Context, name string) ([]index.IndexedPack, error) {
	return r.loadIndexFile(ctx, name, false)
}

// loadIndexFile is LoadIndexFile; with viaCache it reads the cache's copy
// when there is an intact one, and keeps a copy of what it downloads, for
// the index files a command holds in memory unmerged.
func (r *Repository) loadIndexFile(ctx context.Context, name string, viaCache bool) ([]index.IndexedPack, error) {
	id, err := blob.ParseID(strings.TrimPrefix(name, IndexDir+"/"))
	if err != nil || IndexFileName(id) != name {
		return nil, fmt.Errorf("%s: not an index file name", name)
	}
	var data []byte
	if viaCache {
		data = r.indexCopy(name, id)
	}
	if data == nil {
		if data, err = backend.ReadAll(ctx, r.st, name, maxIndexFile); err != nil {
			return nil, fmt.Errorf("read index file %s: %w", name, err)
		}
		if blob.ID(blake3.Sum256(data)) != id {
			return nil, fmt.Errorf("index file %s: %w: content does not match its name", name, ErrCorruptIndexFile)
		}
		if viaCache {
			r.keepIndexCopy(name, data)
		}
	}
	if r.mk != nil {
		if data, err = r.mk.Open(nil, data, adIndex); err != nil {
			return nil, fmt.Errorf("index file %s: %w: %v", name, ErrCorruptIndexFile, err)
		}
	}
	packs, err := decodeIndexFile(data)
	if err != nil {
		return nil, fmt.Errorf("index file %s: %w", name, err)
	}
	return packs, nil
}

// IndexFiles lists the names of the index files, sorted.
func (r *Repository) IndexFiles(ctx context.Context) ([]string, error) {
	names, err := backend.ListNames(ctx, r.st, IndexDir+"/")
	if err != nil {
		return nil, fmt.Errorf("list index files of %s: %w", r.loc, err)
	}
	return names, nil
}

// unsavedIndex collects the packs this process stored that no index file
// names yet.
type unsavedIndex struct {
	packs []index.IndexedPack
	blobs int // entries in packs
}

// writeIndex writes an index file for the packs stored since the last one,
// if any. The packer calls it after every pack (it writes one once
// packsPerIndexFile packs or blobsPerIndexFile blobs wait), and Flush at
// its end.
func (r *Repository) writeIndex(ctx context.Context, all bool) error {
	r.unsavedMu.Lock()
	defer r.unsavedMu.Unlock()
	if len(r.unsaved.packs) == 0 || (!all && len(r.unsaved.packs) < packsPerIndexFile && r.unsaved.blobs < blobsPerIndexFile) {
		return nil
	}
	name, err := r.SaveIndexFile(ctx, r.unsaved.packs)
	if err != nil {
		return err
	}
	r.markKnown(name)
	r.unsaved.packs, r.unsaved.blobs = nil, 0
	if !r.idx.ReadOnly() {
		if err := r.idx.AddFile(name, nil); err != nil {
			return fmt.Errorf("record index file %s in the cache: %w", name, err)
		}
		if err := r.cleanIfSaved(); err != nil {
			return err
		}
	}
	return nil
}

// indexCopy returns the cache's copy of index file name when it is intact.
func (r *Repository) indexCopy(name string, id blob.ID) []byte {
	if r.cacheDir == "" {
		return nil
	}
	p := r.indexCopyPath(name)
	if fi, err := os.Stat(p); err != nil || fi.Size() > maxIndexFile {
		return nil
	}
	data, err := os.ReadFile(p)
	if err != nil || blob.ID(blake3.Sum256(data)) != id {
		return nil
	}
	return data
}

// keepIndexCopy stores a copy of an index file in the cache; a failure
// only costs a read from the repository later.
func (r *Repository) keepIndexCopy(name string, data []byte) {
	writeCacheFile(r.indexCopyPath(name), data)
}

// cleanIfSaved clears the cache's dirty mark once every pack this process
// added to the cache is named by an index file: the packer adds a pack to
// the cache and to r.unsaved under unsavedMu, which the caller holds.
func (r *Repository) cleanIfSaved() error {
	if len(r.unsaved.packs) > 0 {
		return nil
	}
	if err := r.idx.ClearDirty(); err != nil {
		return fmt.Errorf("update the index cache: %w", err)
	}
	return nil
}

// legacyIndex is the bbolt index that repositories written before index
// files kept in their directory.
const legacyIndex = "index.db"

// ErrLegacyIndex is matched when a repository still has the index.db of an
// older stasis and no index files: its packs are named by no index file
// until `repair index` writes them.
var ErrLegacyIndex = errors.New("the repository was written by an older stasis (index.db, no index files)")

// refuseLegacyIndex fails with ErrLegacyIndex for such a repository: opened
// as it is, its snapshots' blobs would be found nowhere and a backup would
// store everything again.
func refuseLegacyIndex(ctx context.Context, st backend.Storage) error {
	if _, err := st.Stat(ctx, legacyIndex); err != nil {
		return nil
	}
	return fmt.Errorf("%s: %w: run `stasis repair index` once; it writes the index files from the pack headers and removes index.db", st.Location(), ErrLegacyIndex)
}
