// Package pack reads and writes pack files: immutable files that hold a run
// of blobs followed by a header listing them, so that an index can always be
// rebuilt from the packs alone.
//
// Layout (all integers little-endian):
//
//	magic    "STASISP" version u8                8 bytes (version 1 or 2)
//	frame*   stored frames, back to back
//	header   sealed(headerPlain)                 H bytes
//	trailer  H uint32, "STASISH\x01"             12 bytes
//
//	headerPlain = count uint32, count × entry, crc32c(count‖entries) uint32
//	entry v1    = type u8, storage u8, 0 u16, length u32, rawLength u32,
//	              offset u64, id [32]byte        (52 bytes)
//	entry v2    = entry v1 fields, then inner u32 (56 bytes)
//
// A frame is one stored unit (compressed and sealed as a whole). With
// storage Raw or Zstd it holds exactly one blob; with FrameRaw or FrameZstd
// it holds the plaintexts of one or more blobs back to back, and every entry
// of the frame gives the frame's offset and stored length, its own raw
// length and where its plaintext starts in the frame's (inner). Version 1
// packs have single-blob frames only.
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
	// FrameRaw entries share a frame of several blobs stored as they are.
	FrameRaw Storage = 2
	// FrameZstd entries share one zstd frame of several blobs.
	FrameZstd Storage = 3
)

// Framed reports whether entries of this storage share a multi-blob frame.
func (s Storage) Framed() bool { return s == FrameRaw || s == FrameZstd }

// Compressed reports whether the frame is zstd.
func (s Storage) Compressed() bool { return s == Zstd || s == FrameZstd }

// Valid reports whether s is a known storage code.
func (s Storage) Valid() bool { return s <= FrameZstd }

func (s Storage) String() string {
	switch s {
	case Raw:
		return "raw"
	case Zstd:
		return "zstd"
	case FrameRaw:
		return "frame-raw"
	case FrameZstd:
		return "frame-zstd"
	}
	return fmt.Sprintf("storage(%d)", uint8(s))
}

// Sizes of the fixed parts of a pack.
const (
	MagicSize   = 8
	EntrySize   = 52 // version 1
	EntrySizeV2 = 56
	TrailerSize = 12
	// MaxHeaderSize bounds the header a reader accepts (about 1.3 million blobs).
	MaxHeaderSize = 64 << 20
)

var (
	magicV1      = [MagicSize]byte{'S', 'T', 'A', 'S', 'I', 'S', 'P', 1}
	magicV2      = [MagicSize]byte{'S', 'T', 'A', 'S', 'I', 'S', 'P', 2}
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
	Offset    uint64 // of the blob's frame, from the start of the pack file
	Length    uint32 // stored bytes of the frame
	RawLength uint32 // the blob's bytes after decoding
	Inner     uint32 // where the blob starts in the decoded frame (0 unless Framed)
}

// SameFrame reports whether e and o are stored in the same frame.
func (e Entry) SameFrame(o Entry) bool { return e.Offset == o.Offset && e.Length == o.Length }

// Transform seals or opens a header; nil means identity.
type Transform func([]byte) ([]byte, error)

// Writer appends blobs to a pack being written. It is not safe for concurrent use.
type Writer struct {
	w       io.Writer
	h       *blake3.Hasher
	version int
	off     uint64
	entries []Entry
}

// NewWriter writes the magic of a pack of the given format version (1 or
// 2; only version 2 holds multi-blob frames) to w and returns a Writer.
func NewWriter(w io.Writer, version int) (*Writer, error) {
	m := magicV2
	switch version {
	case 1:
		m = magicV1
	case 2:
	default:
		return nil, fmt.Errorf("pack format version %d: want 1 or 2", version)
	}
	pw := &Writer{w: w, h: blake3.New(), version: version}
	if err := pw.write(m[:]); err != nil {
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

// Add appends one stored blob: a frame of one blob (storage Raw or Zstd).
func (w *Writer) Add(id blob.ID, t blob.Type, s Storage, rawLength int, data []byte) error {
	if s.Framed() {
		return fmt.Errorf("blob %s: storage %s needs AddFrame", id.Short(), s)
	}
	return w.AddFrame(t, s, []blob.ID{id}, []uint32{uint32(rawLength)}, data)
}

// AddFrame appends one stored frame holding the blobs ids, whose plaintexts
// of rawLengths bytes lie back to back in the frame's plaintext. Storage
// FrameRaw or FrameZstd needs a version 2 pack; Raw and Zstd hold one blob.
func (w *Writer) AddFrame(t blob.Type, s Storage, ids []blob.ID, rawLengths []uint32, data []byte) error {
	switch {
	case len(ids) == 0 || len(ids) != len(rawLengths):
		return fmt.Errorf("frame of %d ids and %d lengths", len(ids), len(rawLengths))
	case s.Framed() && w.version < 2:
		return fmt.Errorf("blob %s: a version %d pack holds no %s frame", ids[0].Short(), w.version, s)
	case !s.Framed() && len(ids) != 1:
		return fmt.Errorf("blob %s: storage %s holds one blob, not %d", ids[0].Short(), s, len(ids))
	}
	off := w.off
	if err := w.write(data); err != nil {
		return fmt.Errorf("write frame of blob %s: %w", ids[0].Short(), err)
	}
	var inner uint32
	for i, id := range ids {
		w.entries = append(w.entries, Entry{ID: id, Type: t, Storage: s, Offset: off, Length: uint32(len(data)), RawLength: rawLengths[i], Inner: inner})
		inner += rawLengths[i]
	}
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
	hdr := EncodeHeader(w.entries, w.version)
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

// EncodeHeader returns the plain header encoding of entries for a pack of
// the given format version.
func EncodeHeader(entries []Entry, version int) []byte {
	size := entrySize(version)
	b := make([]byte, 4, 4+len(entries)*size+4)
	binary.LittleEndian.PutUint32(b, uint32(len(entries)))
	var e [EntrySizeV2]byte
	for _, en := range entries {
		e[0] = byte(en.Type)
		e[1] = byte(en.Storage)
		e[2], e[3] = 0, 0
		binary.LittleEndian.PutUint32(e[4:], en.Length)
		binary.LittleEndian.PutUint32(e[8:], en.RawLength)
		binary.LittleEndian.PutUint64(e[12:], en.Offset)
		copy(e[20:], en.ID[:])
		binary.LittleEndian.PutUint32(e[52:], en.Inner)
		b = append(b, e[:size]...)
	}
	return binary.LittleEndian.AppendUint32(b, crc32.Checksum(b, crcTable))
}

func entrySize(version int) int {
	if version >= 2 {
		return EntrySizeV2
	}
	return EntrySize
}

// DecodeHeader parses a plain header of a pack of the given format version.
// headerStart is the offset at which the header begins in the pack; every
// frame must lie in [MagicSize, headerStart), frames back to back, and the
// blobs of a frame must tile its plaintext from 0 in order.
func DecodeHeader(b []byte, headerStart uint64, version int) ([]Entry, error) {
	size := uint64(entrySize(version))
	if len(b) < 8 {
		return nil, fmt.Errorf("%w: header of %d bytes is too short", ErrCorrupt, len(b))
	}
	n := binary.LittleEndian.Uint32(b)
	if uint64(len(b)) != 8+uint64(n)*size {
		return nil, fmt.Errorf("%w: header holds %d bytes, %d entries need %d", ErrCorrupt, len(b), n, 8+uint64(n)*size)
	}
	body, sum := b[:len(b)-4], binary.LittleEndian.Uint32(b[len(b)-4:])
	if crc32.Checksum(body, crcTable) != sum {
		return nil, fmt.Errorf("%w: header checksum mismatch", ErrCorrupt)
	}
	entries := make([]Entry, n)
	next := uint64(MagicSize)
	var prev Entry
	for i := range entries {
		e := body[4+uint64(i)*size : 4+uint64(i+1)*size]
		en := Entry{
			Type:      blob.Type(e[0]),
			Storage:   Storage(e[1]),
			Length:    binary.LittleEndian.Uint32(e[4:]),
			RawLength: binary.LittleEndian.Uint32(e[8:]),
			Offset:    binary.LittleEndian.Uint64(e[12:]),
		}
		copy(en.ID[:], e[20:])
		if version >= 2 {
			en.Inner = binary.LittleEndian.Uint32(e[52:])
		}
		if err := checkEntry(i, en, prev, next, headerStart, version); err != nil {
			return nil, err
		}
		next = en.Offset + uint64(en.Length)
		entries[i] = en
		prev = en
	}
	if next != headerStart {
		return nil, fmt.Errorf("%w: %d bytes between the last blob and the header", ErrCorrupt, headerStart-next)
	}
	return entries, nil
}

// checkEntry checks entry i against the one before it (prev, unless i is
// 0) and the offset the next frame must start at.
func checkEntry(i int, en, prev Entry, next, headerStart uint64, version int) error {
	inFrame := i > 0 && prev.Storage.Framed() && en.Storage.Framed() && en.Offset == prev.Offset
	switch {
	case !en.Type.Valid():
		return fmt.Errorf("%w: entry %d has unknown blob type %d", ErrCorrupt, i, en.Type)
	case !en.Storage.Valid():
		return fmt.Errorf("%w: entry %d has unknown storage %d", ErrCorrupt, i, en.Storage)
	case en.Storage.Framed() && version < 2:
		return fmt.Errorf("%w: entry %d has storage %s in a version %d pack", ErrCorrupt, i, en.Storage, version)
	case inFrame && (en.Length != prev.Length || en.Storage != prev.Storage || en.Type != prev.Type):
		return fmt.Errorf("%w: entry %d disagrees with the other blobs of its frame", ErrCorrupt, i)
	case inFrame && uint64(en.Inner) != uint64(prev.Inner)+uint64(prev.RawLength):
		return fmt.Errorf("%w: entry %d starts at %d in its frame, expected %d", ErrCorrupt, i, en.Inner, uint64(prev.Inner)+uint64(prev.RawLength))
	case !inFrame && en.Offset != next:
		return fmt.Errorf("%w: entry %d at offset %d, expected %d", ErrCorrupt, i, en.Offset, next)
	case !inFrame && en.Inner != 0:
		return fmt.Errorf("%w: entry %d starts a frame at %d, not 0", ErrCorrupt, i, en.Inner)
	case en.Offset+uint64(en.Length) > headerStart:
		return fmt.Errorf("%w: entry %d runs past the header", ErrCorrupt, i)
	case en.Storage == Raw && en.Length < en.RawLength:
		// An encrypted repository adds the AEAD overhead to Length;
		// the repository checks the exact length when it opens a blob.
		return fmt.Errorf("%w: raw entry %d has length %d, less than its raw length %d", ErrCorrupt, i, en.Length, en.RawLength)
	}
	return nil
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
	version := 0
	switch m {
	case magicV1:
		version = 1
	case magicV2:
		version = 2
	default:
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
	return DecodeHeader(hdr, uint64(start), version)
}
