// Package pack reads and writes pack files: immutable files that hold a run
// of blobs followed by a header listing them, so that an index can always be
// rebuilt from the packs alone.
//
// Layout (all integers little-endian):
//
//	magic    "STASISP\x01"                      8 bytes (last byte: format version)
//	blob*    stored blob bytes, back to back
//	header   sealed(headerPlain)                 H bytes
//	trailer  H uint32, "STASISH\x01"             12 bytes
//
//	headerPlain = count uint32, count × entry, crc32c(count‖entries) uint32
//	entry       = type u8, storage u8, 0 u16, length u32, rawLength u32,
//	              offset u64, id [32]byte        (52 bytes)
//
// "sealed" is the identity for an unencrypted repository; the repository may
// pass a transform (for example an AEAD) to Finish and ReadHeader.
// A pack is named by the BLAKE3-256 hash of all its bytes.
package pack

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"

	"github.com/stasisbackup/stasis/repo/blob"
	"github.com/zeebo/blake3"
)

// Storage says how a blob's bytes are stored in a pack. Values are never
// reused for a different meaning.
type Storage uint8

const (
	// Raw blobs are stored as they are.
	Raw Storage = 0
	// Zstd blobs are one zstd frame.
	Zstd Storage = 1
)

func (s Storage) String() string {
	switch s {
	case Raw:
		return "raw"
	case Zstd:
		return "zstd"
	}
	return fmt.Sprintf("storage(%d)", uint8(s))
}

// Sizes of the fixed parts of a pack.
const (
	MagicSize   = 8
	EntrySize   = 52
	TrailerSize = 12
	// MaxHeaderSize bounds the header a reader accepts (about 1.3 million blobs).
	MaxHeaderSize = 64 << 20
)

var (
	magic        = [MagicSize]byte{'S', 'T', 'A', 'S', 'I', 'S', 'P', 1}
	trailerMagic = [8]byte{'S', 'T', 'A', 'S', 'I', 'S', 'H', 1}
	crcTable     = crc32.MakeTable(crc32.Castagnoli)
)

// ErrCorrupt is matched (errors.Is) by every error about malformed pack bytes.
var ErrCorrupt = errors.New("corrupt pack")

// Entry describes one blob in a pack.
type Entry struct {
	ID        blob.ID
	Type      blob.Type
	Storage   Storage
	Offset    uint64 // from the start of the pack file
	Length    uint32 // stored bytes
	RawLength uint32 // bytes after decoding
}

// Transform seals or opens a header; nil means identity.
type Transform func([]byte) ([]byte, error)

// Writer appends blobs to a pack being written. It is not safe for concurrent use.
type Writer struct {
	w       io.Writer
	h       *blake3.Hasher
	off     uint64
	entries []Entry
}

// NewWriter writes the pack magic to w and returns a Writer.
func NewWriter(w io.Writer) (*Writer, error) {
	pw := &Writer{w: w, h: blake3.New()}
	if err := pw.write(magic[:]); err != nil {
		return nil, err
	}
	return pw, nil
}

func (w *Writer) write(b []byte) error {
	n, err := w.w.Write(b)
	w.h.Write(b[:n])
	w.off += uint64(n)
	if err == nil && n != len(b) {
		err = io.ErrShortWrite
	}
	return err
}

// Add appends one stored blob.
func (w *Writer) Add(id blob.ID, t blob.Type, s Storage, rawLength int, data []byte) error {
	e := Entry{ID: id, Type: t, Storage: s, Offset: w.off, Length: uint32(len(data)), RawLength: uint32(rawLength)}
	if err := w.write(data); err != nil {
		return fmt.Errorf("write blob %s: %w", id.Short(), err)
	}
	w.entries = append(w.entries, e)
	return nil
}

// Size returns the bytes written so far.
func (w *Writer) Size() uint64 { return w.off }

// Count returns the number of blobs added.
func (w *Writer) Count() int { return len(w.entries) }

// Entries returns the blobs added so far (do not modify).
func (w *Writer) Entries() []Entry { return w.entries }

// Finish writes the header and trailer and returns the pack's id (BLAKE3 of
// all its bytes) and total size. seal may be nil.
func (w *Writer) Finish(seal Transform) (blob.ID, uint64, error) {
	hdr := EncodeHeader(w.entries)
	if seal != nil {
		var err error
		if hdr, err = seal(hdr); err != nil {
			return blob.ID{}, 0, fmt.Errorf("seal pack header: %w", err)
		}
	}
	if len(hdr) > MaxHeaderSize {
		return blob.ID{}, 0, fmt.Errorf("pack header of %d bytes exceeds %d", len(hdr), MaxHeaderSize)
	}
	var tr [TrailerSize]byte
	binary.LittleEndian.PutUint32(tr[:4], uint32(len(hdr)))
	copy(tr[4:], trailerMagic[:])
	if err := w.write(hdr); err != nil {
		return blob.ID{}, 0, fmt.Errorf("write pack header: %w", err)
	}
	if err := w.write(tr[:]); err != nil {
		return blob.ID{}, 0, fmt.Errorf("write pack trailer: %w", err)
	}
	var id blob.ID
	w.h.Sum(id[:0])
	return id, w.off, nil
}

// EncodeHeader returns the plain header encoding of entries.
func EncodeHeader(entries []Entry) []byte {
	b := make([]byte, 4, 4+len(entries)*EntrySize+4)
	binary.LittleEndian.PutUint32(b, uint32(len(entries)))
	var e [EntrySize]byte
	for _, en := range entries {
		e[0] = byte(en.Type)
		e[1] = byte(en.Storage)
		e[2], e[3] = 0, 0
		binary.LittleEndian.PutUint32(e[4:], en.Length)
		binary.LittleEndian.PutUint32(e[8:], en.RawLength)
		binary.LittleEndian.PutUint64(e[12:], en.Offset)
		copy(e[20:], en.ID[:])
		b = append(b, e[:]...)
	}
	return binary.LittleEndian.AppendUint32(b, crc32.Checksum(b, crcTable))
}

// DecodeHeader parses a plain header. headerStart is the offset at which the
// header begins in the pack; every blob must lie in [MagicSize, headerStart).
func DecodeHeader(b []byte, headerStart uint64) ([]Entry, error) {
	if len(b) < 8 {
		return nil, fmt.Errorf("%w: header of %d bytes is too short", ErrCorrupt, len(b))
	}
	n := binary.LittleEndian.Uint32(b)
	if uint64(len(b)) != 8+uint64(n)*EntrySize {
		return nil, fmt.Errorf("%w: header holds %d bytes, %d entries need %d", ErrCorrupt, len(b), n, 8+uint64(n)*EntrySize)
	}
	body, sum := b[:len(b)-4], binary.LittleEndian.Uint32(b[len(b)-4:])
	if crc32.Checksum(body, crcTable) != sum {
		return nil, fmt.Errorf("%w: header checksum mismatch", ErrCorrupt)
	}
	entries := make([]Entry, n)
	next := uint64(MagicSize)
	for i := range entries {
		e := body[4+i*EntrySize : 4+(i+1)*EntrySize]
		en := Entry{
			Type:      blob.Type(e[0]),
			Storage:   Storage(e[1]),
			Length:    binary.LittleEndian.Uint32(e[4:]),
			RawLength: binary.LittleEndian.Uint32(e[8:]),
			Offset:    binary.LittleEndian.Uint64(e[12:]),
		}
		copy(en.ID[:], e[20:])
		switch {
		case !en.Type.Valid():
			return nil, fmt.Errorf("%w: entry %d has unknown blob type %d", ErrCorrupt, i, e[0])
		case en.Storage != Raw && en.Storage != Zstd:
			return nil, fmt.Errorf("%w: entry %d has unknown storage %d", ErrCorrupt, i, e[1])
		case en.Offset != next:
			return nil, fmt.Errorf("%w: entry %d at offset %d, expected %d", ErrCorrupt, i, en.Offset, next)
		case en.Offset+uint64(en.Length) > headerStart:
			return nil, fmt.Errorf("%w: entry %d runs past the header", ErrCorrupt, i)
		case en.Storage == Raw && en.Length < en.RawLength:
			// An encrypted repository adds the AEAD overhead to Length;
			// the repository checks the exact length when it opens a blob.
			return nil, fmt.Errorf("%w: raw entry %d has length %d, less than its raw length %d", ErrCorrupt, i, en.Length, en.RawLength)
		}
		next = en.Offset + uint64(en.Length)
		entries[i] = en
	}
	if next != headerStart {
		return nil, fmt.Errorf("%w: %d bytes between the last blob and the header", ErrCorrupt, headerStart-next)
	}
	return entries, nil
}

// ReadHeader reads the header of a pack of the given size. open may be nil.
func ReadHeader(r io.ReaderAt, size int64, open Transform) ([]Entry, error) {
	if size < MagicSize+TrailerSize+8 {
		return nil, fmt.Errorf("%w: %d bytes is too small for a pack", ErrCorrupt, size)
	}
	var m [MagicSize]byte
	if _, err := r.ReadAt(m[:], 0); err != nil {
		return nil, fmt.Errorf("read pack magic: %w", err)
	}
	if m != magic {
		return nil, fmt.Errorf("%w: bad magic %q (not a stasis pack, or a newer format)", ErrCorrupt, m[:])
	}
	var tr [TrailerSize]byte
	if _, err := r.ReadAt(tr[:], size-TrailerSize); err != nil {
		return nil, fmt.Errorf("read pack trailer: %w", err)
	}
	if [8]byte(tr[4:]) != trailerMagic {
		return nil, fmt.Errorf("%w: bad trailer (truncated or overwritten pack)", ErrCorrupt)
	}
	hlen := int64(binary.LittleEndian.Uint32(tr[:4]))
	if hlen > MaxHeaderSize || hlen > size-MagicSize-TrailerSize {
		return nil, fmt.Errorf("%w: header length %d does not fit a pack of %d bytes", ErrCorrupt, hlen, size)
	}
	start := size - TrailerSize - hlen
	hdr := make([]byte, hlen)
	if _, err := r.ReadAt(hdr, start); err != nil {
		return nil, fmt.Errorf("read pack header: %w", err)
	}
	if open != nil {
		var err error
		if hdr, err = open(hdr); err != nil {
			return nil, fmt.Errorf("%w: open header: %v", ErrCorrupt, err)
		}
	}
	return DecodeHeader(hdr, uint64(start))
}
