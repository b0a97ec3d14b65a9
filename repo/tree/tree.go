// Package tree defines the directory listing stored as a tree blob and its
// deterministic binary encoding. Nodes are sorted by name bytes, so an
// unchanged directory encodes to the same bytes and deduplicates across
// snapshots. Names are arbitrary bytes (not necessarily UTF-8) except that
// they are never empty, ".", "..", and never contain '/' or NUL.
//
// Encoding (integers are unsigned LEB128 varints unless said otherwise;
// "bytes" is a varint length followed by that many bytes):
//
//	tree  = "STTR" version(=1 byte) count node*
//	node  = name:bytes kind:u8 flags:u8 mode uid gid size inode device links rdev
//	        mtime ctime (zig-zag varints, nanoseconds since 1970)
//	        user:bytes group:bytes linktarget:bytes error:bytes
//	        [kind==dir]  subtree:[32]byte
//	        [kind==file] extents:count (tag:u8 [tag==0: id:[32]byte] length)*
package tree

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"sort"

	"github.com/stasisbackup/stasis/repo/blob"
)

// Kind is the type of a directory entry. Values are never reused.
type Kind uint8

// Entry kinds.
const (
	File     Kind = 1
	Dir      Kind = 2
	Symlink  Kind = 3
	FIFO     Kind = 4
	CharDev  Kind = 5
	BlockDev Kind = 6
	Socket   Kind = 7
)

var kindNames = map[Kind]string{File: "file", Dir: "dir", Symlink: "symlink", FIFO: "fifo", CharDev: "chardev", BlockDev: "blockdev", Socket: "socket"}

func (k Kind) String() string {
	if s, ok := kindNames[k]; ok {
		return s
	}
	return fmt.Sprintf("kind(%d)", uint8(k))
}

// Flags mark entries whose capture was not clean.
type Flags uint8

const (
	// Changed: the file kept changing while it was read; the stored content
	// may be inconsistent.
	Changed Flags = 1 << 0
	// Unreadable: the content could not be read (see Node.Error); the entry
	// has metadata only.
	Unreadable Flags = 1 << 1
)

// Extent is a piece of file content: a chunk blob, a hole of zeros that is
// not stored (ID is zero), or (List) an extent-list blob holding the
// extents of Length bytes of the file.
type Extent struct {
	ID     blob.ID
	Length uint64
	Hole   bool
	List   bool
}

// Node is one directory entry.
type Node struct {
	Name       string
	Kind       Kind
	Flags      Flags
	Mode       uint32 // permission bits plus setuid/setgid/sticky (07777)
	UID, GID   uint32
	Size       uint64
	Inode      uint64
	Device     uint64
	Links      uint64
	Rdev       uint64
	MTime      int64 // nanoseconds since the Unix epoch
	CTime      int64 // for change detection; access times are not kept (they would make every tree new)
	User       string
	Group      string
	LinkTarget string
	Error      string
	Subtree    blob.ID  // Dir only
	Content    []Extent // File only

	// Set when a tree is loaded through the repository, never encoded:
	// Lists are the extent-list blobs Content was expanded from, and
	// ContentError says why Content could not be expanded (the file cannot
	// be restored; its metadata is intact).
	Lists        []blob.ID
	ContentError string
}

// Tree is a directory listing, sorted by Name.
type Tree struct {
	Nodes []Node
}

// ErrCorrupt is matched by every decoding error.
var ErrCorrupt = errors.New("corrupt tree")

const version = 1

var magic = []byte("STTR")

// ValidName reports whether name may appear in a tree.
func ValidName(name string) bool {
	return name != "" && name != "." && name != ".." && !bytes.ContainsAny([]byte(name), "/\x00")
}

// Sort orders the nodes by name.
func (t *Tree) Sort() {
	sort.Slice(t.Nodes, func(i, j int) bool { return t.Nodes[i].Name < t.Nodes[j].Name })
}

// Find returns the node with the given name, or nil. t must be sorted.
func (t *Tree) Find(name string) *Node {
	i := sort.Search(len(t.Nodes), func(i int) bool { return t.Nodes[i].Name >= name })
	if i < len(t.Nodes) && t.Nodes[i].Name == name {
		return &t.Nodes[i]
	}
	return nil
}

// Encode returns the canonical encoding. It sorts t and fails on invalid or
// duplicate names.
func (t *Tree) Encode() ([]byte, error) {
	t.Sort()
	b := append([]byte(nil), magic...)
	b = append(b, version)
	b = binary.AppendUvarint(b, uint64(len(t.Nodes)))
	for i := range t.Nodes {
		n := &t.Nodes[i]
		if !ValidName(n.Name) {
			return nil, fmt.Errorf("encode tree: invalid name %q", n.Name)
		}
		if i > 0 && t.Nodes[i-1].Name == n.Name {
			return nil, fmt.Errorf("encode tree: duplicate name %q", n.Name)
		}
		b = appendBytes(b, n.Name)
		b = append(b, byte(n.Kind), byte(n.Flags))
		for _, v := range []uint64{uint64(n.Mode), uint64(n.UID), uint64(n.GID), n.Size, n.Inode, n.Device, n.Links, n.Rdev} {
			b = binary.AppendUvarint(b, v)
		}
		for _, v := range []int64{n.MTime, n.CTime} {
			b = binary.AppendVarint(b, v)
		}
		for _, s := range []string{n.User, n.Group, n.LinkTarget, n.Error} {
			b = appendBytes(b, s)
		}
		switch n.Kind {
		case Dir:
			b = append(b, n.Subtree[:]...)
		case File:
			b = appendExtents(b, n.Content)
		}
	}
	return b, nil
}

func appendBytes(b []byte, s string) []byte {
	b = binary.AppendUvarint(b, uint64(len(s)))
	return append(b, s...)
}

type decoder struct {
	b   []byte
	err error
}

func (d *decoder) fail(format string, args ...any) {
	if d.err == nil {
		d.err = fmt.Errorf("%w: "+format, append([]any{ErrCorrupt}, args...)...)
	}
}

func (d *decoder) uvarint() uint64 {
	if d.err != nil {
		return 0
	}
	v, n := binary.Uvarint(d.b)
	if n <= 0 {
		d.fail("bad varint")
		return 0
	}
	d.b = d.b[n:]
	return v
}

func (d *decoder) varint() int64 {
	if d.err != nil {
		return 0
	}
	v, n := binary.Varint(d.b)
	if n <= 0 {
		d.fail("bad varint")
		return 0
	}
	d.b = d.b[n:]
	return v
}

func (d *decoder) u32() uint32 {
	v := d.uvarint()
	if v > 1<<32-1 {
		d.fail("value %d out of range", v)
	}
	return uint32(v)
}

func (d *decoder) take(n uint64) []byte {
	if d.err != nil {
		return nil
	}
	if n > uint64(len(d.b)) {
		d.fail("length %d exceeds the %d bytes left", n, len(d.b))
		return nil
	}
	v := d.b[:n]
	d.b = d.b[n:]
	return v
}

func (d *decoder) str() string { return string(d.take(d.uvarint())) }

func (d *decoder) id() (id blob.ID) {
	copy(id[:], d.take(blob.IDSize))
	return id
}

// The smallest encodings, by which Decode checks claimed counts: a node
// with a one-byte name, every varint one byte and every string empty (2
// name, 2 kind and flags, 8 + 2 varints, 4 string lengths); an extent that
// is a hole with a one-byte length.
const (
	minNodeSize   = 18
	minExtentSize = 2
)

// Decode parses an encoded tree. It never panics on bad input, and it
// allocates in proportion to the input's size, whatever counts it claims.
func Decode(data []byte) (*Tree, error) {
	if len(data) < len(magic)+1 || !bytes.Equal(data[:len(magic)], magic) {
		return nil, fmt.Errorf("%w: bad magic", ErrCorrupt)
	}
	if v := data[len(magic)]; v != version {
		return nil, fmt.Errorf("%w: unknown tree version %d (a newer stasis wrote it?)", ErrCorrupt, v)
	}
	d := &decoder{b: data[len(magic)+1:]}
	count := d.uvarint()
	if d.err != nil {
		return nil, d.err
	}
	// Nothing is allocated for a claimed count before the bytes left could
	// hold that many nodes: memory follows the input's size, not its claims.
	if count > uint64(len(d.b))/minNodeSize {
		return nil, fmt.Errorf("%w: %d nodes cannot fit in %d bytes", ErrCorrupt, count, len(d.b))
	}
	t := &Tree{Nodes: make([]Node, 0, count)}
	for i := uint64(0); i < count && d.err == nil; i++ {
		var n Node
		n.Name = d.str()
		kf := d.take(2)
		if d.err != nil {
			break
		}
		n.Kind, n.Flags = Kind(kf[0]), Flags(kf[1])
		if _, ok := kindNames[n.Kind]; !ok {
			d.fail("node %q has unknown kind %d", n.Name, kf[0])
		}
		if !ValidName(n.Name) {
			d.fail("invalid name %q", n.Name)
		}
		if len(t.Nodes) > 0 && t.Nodes[len(t.Nodes)-1].Name >= n.Name {
			d.fail("names not sorted or duplicate at %q", n.Name)
		}
		n.Mode, n.UID, n.GID = d.u32(), d.u32(), d.u32()
		n.Size, n.Inode, n.Device, n.Links, n.Rdev = d.uvarint(), d.uvarint(), d.uvarint(), d.uvarint(), d.uvarint()
		n.MTime, n.CTime = d.varint(), d.varint()
		n.User, n.Group, n.LinkTarget, n.Error = d.str(), d.str(), d.str(), d.str()
		switch n.Kind {
		case Dir:
			n.Subtree = d.id()
		case File:
			var total uint64
			n.Content, total = d.extents(true)
			if d.err == nil && total != n.Size && n.Flags&Unreadable == 0 {
				d.fail("file %q has size %d but extents sum to %d", n.Name, n.Size, total)
			}
		}
		t.Nodes = append(t.Nodes, n)
	}
	if d.err == nil && len(d.b) != 0 {
		d.fail("%d trailing bytes", len(d.b))
	}
	if d.err != nil {
		return nil, d.err
	}
	return t, nil
}

// Extent tags in the encoding. Values are never reused.
const (
	tagChunk = 0
	tagHole  = 1
	tagList  = 2 // an extent-list blob (only in trees, never inside a list)
)

func appendExtents(b []byte, content []Extent) []byte {
	b = binary.AppendUvarint(b, uint64(len(content)))
	for _, e := range content {
		switch {
		case e.Hole:
			b = append(b, tagHole)
		case e.List:
			b = append(b, tagList)
			b = append(b, e.ID[:]...)
		default:
			b = append(b, tagChunk)
			b = append(b, e.ID[:]...)
		}
		b = binary.AppendUvarint(b, e.Length)
	}
	return b
}

func (d *decoder) extents(lists bool) ([]Extent, uint64) {
	ne := d.uvarint()
	if d.err != nil {
		return nil, 0
	}
	if ne > uint64(len(d.b))/minExtentSize {
		d.fail("%d extents cannot fit in %d bytes", ne, len(d.b))
		return nil, 0
	}
	var total uint64
	content := make([]Extent, 0, ne)
	for j := uint64(0); j < ne && d.err == nil; j++ {
		var e Extent
		switch tag := d.take(1); {
		case tag == nil:
		case tag[0] == tagChunk:
			e.ID = d.id()
		case tag[0] == tagHole:
			e.Hole = true
		case tag[0] == tagList && lists:
			e.ID, e.List = d.id(), true
		default:
			d.fail("unknown extent tag %d", tag[0])
		}
		e.Length = d.uvarint()
		if total+e.Length < total {
			d.fail("extent lengths overflow")
		}
		total += e.Length
		content = append(content, e)
	}
	return content, total
}

// Extent lists: a large file's extents are stored in extent-list blobs
// (tree type), cut where an extent's id says so, so that an unchanged stretch
// of a big file gives the same list blob every day and only the lists around
// changed chunks are new. Encoding of a list blob:
//
//	list = "STEL" version(=1 byte) extents   (tags 0 and 1 only)
var listMagic = []byte("STEL")

// Thresholds of SplitExtents.
const (
	ListMinFile = 32 // files with more extents than this use lists
	listMin     = 4  // extents per list, at least (but the last)
	listMax     = 64 // and at most
)

// SplitExtents cuts content into extent lists: after an extent whose id's
// first byte is a multiple of 16 (a content-defined cut, about every 20
// extents), with at least listMin and at most listMax extents per list. It
// returns nil when content is small enough to stay in the tree.
func SplitExtents(content []Extent) [][]Extent {
	if len(content) <= ListMinFile {
		return nil
	}
	var lists [][]Extent
	start := 0
	for i, e := range content {
		n := i + 1 - start
		if n >= listMax || (n >= listMin && e.ID[0]%16 == 0) {
			lists = append(lists, content[start:i+1])
			start = i + 1
		}
	}
	if start < len(content) {
		lists = append(lists, content[start:])
	}
	return lists
}

// EncodeList returns the list-blob encoding of extents (chunks and holes).
func EncodeList(extents []Extent) []byte {
	b := append([]byte(nil), listMagic...)
	b = append(b, version)
	return appendExtents(b, extents)
}

// DecodeList parses a list blob and returns its extents and the bytes they
// cover. It never panics on bad input.
func DecodeList(data []byte) ([]Extent, uint64, error) {
	if len(data) < len(listMagic)+1 || !bytes.Equal(data[:len(listMagic)], listMagic) {
		return nil, 0, fmt.Errorf("%w: extent list: bad magic", ErrCorrupt)
	}
	if v := data[len(listMagic)]; v != version {
		return nil, 0, fmt.Errorf("%w: unknown extent list version %d", ErrCorrupt, v)
	}
	d := &decoder{b: data[len(listMagic)+1:]}
	ext, total := d.extents(false)
	if d.err == nil && len(d.b) != 0 {
		d.fail("%d trailing bytes in extent list", len(d.b))
	}
	if d.err != nil {
		return nil, 0, d.err
	}
	return ext, total, nil
}
