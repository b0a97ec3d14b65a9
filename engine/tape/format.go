package tape

import (
	"bytes"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"path"
	"strconv"
	"strings"
	"time"
)

const (
	// FormatVersion is the version of the volume format written by this
	// package. Readers refuse labels and catalogs with other versions.
	FormatVersion = 1
	// LabelMagic identifies a volume label.
	LabelMagic = "stasis-tape-volume"
	// CatalogMagic identifies a catalog.
	CatalogMagic = "stasis-tape-catalog"
	// LabelName is the tar member name of the volume label.
	LabelName = "STASIS-VOLUME.json"
	// DefaultBlockSize is the default record size: 256 KiB, GNU tar's -b 512.
	DefaultBlockSize = 256 << 10
	// TarBlock is the tar format's unit; block sizes are multiples of it.
	TarBlock = 512

	// reservedPrefix starts the names of the label and catalogs; payload
	// members may not use it.
	reservedPrefix = "STASIS-"
	catalogPrefix  = "STASIS-CATALOG-"
	catalogSuffix  = ".json"
	// maxMetaSize bounds how much of a label or catalog member is read.
	maxLabelSize   = 1 << 20
	maxCatalogSize = 256 << 20
)

// Label is the first member of every volume.
type Label struct {
	Magic         string    `json:"magic"`
	FormatVersion int       `json:"format_version"`
	SetID         string    `json:"set_id"`
	Volume        int       `json:"volume"` // sequence number in the set, from 1
	Label         string    `json:"label,omitempty"`
	RepositoryID  string    `json:"repository_id,omitempty"`
	Time          time.Time `json:"time"`
	BlockSize     int       `json:"block_size"`
	VolumeSize    int64     `json:"volume_size,omitempty"` // 0: until end of media
}

// Entry describes one payload member in a catalog.
type Entry struct {
	Name   string `json:"name"`
	Size   int64  `json:"size"`
	BLAKE3 string `json:"blake3"` // lower-case hex of the 32-byte unkeyed BLAKE3 of the member's bytes
	Volume int    `json:"volume"`
}

// Dropped names a member whose writing was interrupted by end of media on
// this volume. It was written whole on the next volume; whatever of it is on
// this volume (possibly zero padding) must be ignored.
type Dropped struct {
	Name   string `json:"name"`
	Size   int64  `json:"size"`
	Reason string `json:"reason"`
}

// Note is what the exporter told about one payload member beyond its bytes
// (see Member.Time and Member.Needs). Readers use notes to plan: which
// members a restore needs, and so which volumes.
type Note struct {
	Name string `json:"name"`
	// Time is the time of what the member holds (a snapshot's time), if given.
	Time *time.Time `json:"time,omitempty"`
	// Needs names the members this one depends on; each is on this volume
	// before it or on an earlier volume of the set.
	Needs []string `json:"needs,omitempty"`
}

// Catalog lists the payload members of one volume. It is the last member
// of its volume and is copied onto every later volume of the set.
type Catalog struct {
	Magic         string    `json:"magic"`
	FormatVersion int       `json:"format_version"`
	SetID         string    `json:"set_id"`
	Volume        int       `json:"volume"`
	RepositoryID  string    `json:"repository_id,omitempty"`
	Time          time.Time `json:"time"`
	// EndsSession is true on the last volume written by one WriteSet call.
	EndsSession bool `json:"ends_session"`
	// Truncated is true when the volume ended at end of media before this
	// catalog was completely written on it: the catalog then exists only as
	// copies on later volumes. It is never true in a catalog read from its
	// own volume.
	Truncated bool      `json:"truncated"`
	Members   []Entry   `json:"members"`
	Dropped   []Dropped `json:"dropped,omitempty"`
	// Notes holds a note for each member written with a time or needs,
	// in member order.
	Notes []Note `json:"notes,omitempty"`
}

// Note returns the note of member name, if the catalog has one.
func (c *Catalog) Note(name string) (Note, bool) {
	for _, n := range c.Notes {
		if n.Name == name {
			return n, true
		}
	}
	return Note{}, false
}

// CatalogName returns the tar member name of the catalog of volume seq.
func CatalogName(seq int) string {
	return fmt.Sprintf("%s%06d%s", catalogPrefix, seq, catalogSuffix)
}

// catalogSeq parses a catalog member name; ok is false for other names.
func catalogSeq(name string) (int, bool) {
	if !strings.HasPrefix(name, catalogPrefix) || !strings.HasSuffix(name, catalogSuffix) {
		return 0, false
	}
	s := strings.TrimSuffix(strings.TrimPrefix(name, catalogPrefix), catalogSuffix)
	n, err := strconv.Atoi(s)
	if err != nil || n < 1 || CatalogName(n) != name {
		return 0, false
	}
	return n, true
}

// ValidName reports whether name may be used for a payload member: a clean,
// relative, slash-separated path without "..", without empty, "." or
// backslash components, and not in the reserved "STASIS-" namespace.
func ValidName(name string) error {
	bad := func(why string) error { return fmt.Errorf("member %q: %s: %w", name, why, ErrInvalidName) }
	switch {
	case name == "" || name == ".":
		return bad("empty")
	case strings.HasPrefix(name, "/"):
		return bad("absolute path")
	case path.Clean(name) != name:
		return bad("not a clean path")
	case strings.ContainsAny(name, "\\\x00"):
		return bad("contains a backslash or NUL")
	case strings.HasPrefix(name, reservedPrefix):
		return bad("reserved for volume metadata")
	}
	for _, c := range strings.Split(name, "/") {
		if c == ".." {
			return bad(`contains ".."`)
		}
	}
	return nil
}

func encodeJSON(v any) []byte {
	b, err := json.Marshal(v)
	if err != nil {
		panic(fmt.Sprintf("tape: encode %T: %v", v, err)) // only plain data types: cannot fail
	}
	return append(b, '\n')
}

func decodeStrict(data []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(data))
	if err := dec.Decode(v); err != nil {
		return err
	}
	if dec.More() {
		return fmt.Errorf("trailing data after JSON object")
	}
	return nil
}

// DecodeLabel decodes and validates a label member's bytes.
func DecodeLabel(data []byte) (Label, error) {
	var l Label
	if err := decodeStrict(data, &l); err != nil {
		return Label{}, fmt.Errorf("decode %s: %v: %w", LabelName, err, ErrNotVolume)
	}
	if l.Magic != LabelMagic {
		return Label{}, fmt.Errorf("decode %s: magic %q, want %q: %w", LabelName, l.Magic, LabelMagic, ErrNotVolume)
	}
	if l.FormatVersion != FormatVersion {
		return Label{}, fmt.Errorf("decode %s: format version %d, this stasis reads %d (use a newer stasis): %w",
			LabelName, l.FormatVersion, FormatVersion, ErrFormatVersion)
	}
	if err := checkSetVolume(l.SetID, l.Volume); err != nil {
		return Label{}, fmt.Errorf("decode %s: %w", LabelName, err)
	}
	if l.BlockSize <= 0 || l.BlockSize%TarBlock != 0 {
		return Label{}, fmt.Errorf("decode %s: block size %d is not a positive multiple of %d: %w", LabelName, l.BlockSize, TarBlock, ErrCorrupt)
	}
	if l.VolumeSize < 0 {
		return Label{}, fmt.Errorf("decode %s: negative volume size: %w", LabelName, ErrCorrupt)
	}
	return l, nil
}

// DecodeCatalog decodes and validates a catalog member's bytes.
func DecodeCatalog(data []byte) (Catalog, error) {
	var c Catalog
	if err := decodeStrict(data, &c); err != nil {
		return Catalog{}, fmt.Errorf("decode catalog: %v: %w", err, ErrCorrupt)
	}
	if c.Magic != CatalogMagic {
		return Catalog{}, fmt.Errorf("decode catalog: magic %q, want %q: %w", c.Magic, CatalogMagic, ErrCorrupt)
	}
	if c.FormatVersion != FormatVersion {
		return Catalog{}, fmt.Errorf("decode catalog of volume %d: format version %d, this stasis reads %d (use a newer stasis): %w",
			c.Volume, c.FormatVersion, FormatVersion, ErrFormatVersion)
	}
	if err := c.validate(); err != nil {
		return Catalog{}, fmt.Errorf("decode catalog of volume %d: %w", c.Volume, err)
	}
	return c, nil
}

func checkSetVolume(setID string, vol int) error {
	if setID == "" {
		return fmt.Errorf("empty set id: %w", ErrCorrupt)
	}
	if vol < 1 {
		return fmt.Errorf("volume number %d < 1: %w", vol, ErrCorrupt)
	}
	return nil
}

func (c *Catalog) validate() error {
	if err := checkSetVolume(c.SetID, c.Volume); err != nil {
		return err
	}
	seen := make(map[string]bool, len(c.Members))
	for _, e := range c.Members {
		if err := ValidName(e.Name); err != nil {
			return fmt.Errorf("%v: %w", err, ErrCorrupt)
		}
		if seen[e.Name] {
			return fmt.Errorf("member %q listed twice: %w", e.Name, ErrCorrupt)
		}
		seen[e.Name] = true
		if e.Size < 0 {
			return fmt.Errorf("member %q: negative size: %w", e.Name, ErrCorrupt)
		}
		if b, err := hex.DecodeString(e.BLAKE3); err != nil || len(b) != 32 || strings.ToLower(e.BLAKE3) != e.BLAKE3 {
			return fmt.Errorf("member %q: checksum %q is not 64 lower-case hex digits: %w", e.Name, e.BLAKE3, ErrCorrupt)
		}
		if e.Volume != c.Volume {
			return fmt.Errorf("member %q: volume %d in catalog of volume %d: %w", e.Name, e.Volume, c.Volume, ErrCorrupt)
		}
	}
	for _, d := range c.Dropped {
		if err := ValidName(d.Name); err != nil {
			return fmt.Errorf("dropped %v: %w", err, ErrCorrupt)
		}
	}
	noted := make(map[string]bool, len(c.Notes))
	for _, n := range c.Notes {
		if !seen[n.Name] || noted[n.Name] {
			return fmt.Errorf("note for %q: not a member, or noted twice: %w", n.Name, ErrCorrupt)
		}
		noted[n.Name] = true
		for _, d := range n.Needs {
			if err := ValidName(d); err != nil {
				return fmt.Errorf("note for %q needs %v: %w", n.Name, err, ErrCorrupt)
			}
		}
	}
	return nil
}
