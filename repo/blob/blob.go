// Package blob is the small vocabulary shared by every layer of stasis: the
// 32-byte ID that names blobs, packs and snapshots, and the blob Type.
// It imports nothing else of the project.
package blob

import (
	"encoding/hex"
	"fmt"
)

// IDSize is the length of an ID in bytes (a BLAKE3-256 digest).
const IDSize = 32

// ID names a blob (keyed BLAKE3 of its plaintext), a pack (BLAKE3 of its
// bytes) or a snapshot file (BLAKE3 of its bytes). It is comparable and can be
// used as a map key.
type ID [IDSize]byte

// String returns the lower-case hex form of the id.
func (id ID) String() string { return hex.EncodeToString(id[:]) }

// Short returns the first 8 hex digits, for messages and listings.
func (id ID) Short() string { return hex.EncodeToString(id[:4]) }

// IsZero reports whether id is the zero ID (never a valid content id).
func (id ID) IsZero() bool { return id == ID{} }

// ParseID parses the 64-digit hex form of an ID.
func ParseID(s string) (ID, error) {
	var id ID
	if len(s) != 2*IDSize {
		return id, fmt.Errorf("invalid id %q: want %d hex digits, got %d", s, 2*IDSize, len(s))
	}
	if _, err := hex.Decode(id[:], []byte(s)); err != nil {
		return id, fmt.Errorf("invalid id %q: %w", s, err)
	}
	return id, nil
}

// Type says what a blob holds.
type Type uint8

const (
	// Data is a chunk of file content.
	Data Type = 1
	// Tree is an encoded directory listing.
	Tree Type = 2
)

// String returns "data", "tree" or "type(N)".
func (t Type) String() string {
	switch t {
	case Data:
		return "data"
	case Tree:
		return "tree"
	}
	return fmt.Sprintf("type(%d)", uint8(t))
}

// Valid reports whether t is a known type.
func (t Type) Valid() bool { return t == Data || t == Tree }

// MarshalText encodes the id as hex (used by JSON).
func (id ID) MarshalText() ([]byte, error) { return []byte(id.String()), nil }

// UnmarshalText decodes the hex form.
func (id *ID) UnmarshalText(b []byte) error {
	v, err := ParseID(string(b))
	if err != nil {
		return err
	}
	*id = v
	return nil
}
