package mountfs

import (
	"context"
	"fmt"
	"path"
	"sort"
	"strconv"
	"sync"
	"syscall"
	"time"
	"unsafe"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"github.com/stasisbackup/stasis/repo"
	"github.com/stasisbackup/stasis/repo/blob"
	"github.com/stasisbackup/stasis/repo/tree"
	"golang.org/x/sys/unix"
)

// entry is what every node inside a snapshot knows: its tree node as
// stored (a file's Content with its extent lists unexpanded), its path
// in the snapshot and the inode seed of the snapshot's directory.
type entry struct {
	fsys *FS
	sn   *repo.Snapshot
	seed uint64
	path string // absolute, as backed up ("/" for the snapshot's directory)
	meta tree.Node
}

// name says which file of which snapshot, for messages.
func (e *entry) name() string {
	return fmt.Sprintf("snapshot %s: %s", e.sn.ID.Short(), e.path)
}

// childIno is the inode number of node n at path p below a snapshot
// directory with inode number seed. The names of a hard-linked file (its
// stored device and inode) share one.
func childIno(seed uint64, p string, n *tree.Node) uint64 {
	s := strconv.FormatUint(seed, 16)
	if n.Kind != tree.Dir && n.Links > 1 {
		return hashIno(s, "link", strconv.Itoa(int(n.Kind)), strconv.FormatUint(n.Device, 16), strconv.FormatUint(n.Inode, 16))
	}
	return hashIno(s, p)
}

func kindMode(k tree.Kind) uint32 {
	switch k {
	case tree.File:
		return syscall.S_IFREG
	case tree.Dir:
		return syscall.S_IFDIR
	case tree.Symlink:
		return syscall.S_IFLNK
	case tree.FIFO:
		return syscall.S_IFIFO
	case tree.CharDev:
		return syscall.S_IFCHR
	case tree.BlockDev:
		return syscall.S_IFBLK
	case tree.Socket:
		return syscall.S_IFSOCK
	}
	return syscall.S_IFREG
}

// fuseDev encodes a device number as FUSE carries it (the kernel's
// new_encode_dev: 12 bits of major, 20 of minor).
func fuseDev(rdev uint64) uint32 {
	major, minor := unix.Major(rdev), unix.Minor(rdev)
	return (minor & 0xff) | (major&0xfff)<<8 | (minor&^0xff)<<12
}

// snapshotNode is a node inside a snapshot (dirNode, fileNode).
type snapshotNode interface{ snapshotEntry() *entry }

func (e *entry) snapshotEntry() *entry { return e }

// answerLookup fills a lookup's answer for the node with inode number ino:
// its attributes, valid for as long as a snapshot (never changes).
func (e *entry) answerLookup(out *fuse.EntryOut, ino uint64) {
	e.attr(&out.Attr, ino)
	out.SetEntryTimeout(staticTimeout)
	out.SetAttrTimeout(staticTimeout)
}

// getattr answers Getattr of the node with inode number ino.
func (e *entry) getattr(out *fuse.AttrOut, ino uint64) syscall.Errno {
	e.attr(&out.Attr, ino)
	out.SetTimeout(staticTimeout)
	return 0
}

func (e *entry) attr(out *fuse.Attr, ino uint64) {
	n := &e.meta
	out.Ino = ino
	out.Mode = kindMode(n.Kind) | n.Mode&0o7777
	out.Uid, out.Gid = n.UID, n.GID
	out.Nlink = uint32(min(max(n.Links, 1), 1<<32-1))
	out.Size = n.Size
	switch n.Kind {
	case tree.File:
		out.Blocks = (storedBytes(n) + 511) / 512
	case tree.Symlink:
		out.Size = uint64(len(n.LinkTarget))
	case tree.CharDev, tree.BlockDev:
		out.Rdev = fuseDev(n.Rdev)
	}
	mtime, ctime := time.Unix(0, n.MTime), time.Unix(0, n.CTime)
	out.SetTimes(&mtime, &mtime, &ctime) // atimes are not stored
	out.Blksize = 4096
}

// storedBytes is the part of a file that is not holes (its full size when
// extent lists hide where the holes are).
func storedBytes(n *tree.Node) uint64 {
	var b uint64
	for _, e := range n.Content {
		if e.List {
			return n.Size
		}
		if !e.Hole {
			b += e.Length
		}
	}
	return b
}

// newChild makes the inode of node n of the directory pe.
func (f *FS) newChild(ctx context.Context, parent *fs.Inode, pe *entry, n *tree.Node, out *fuse.EntryOut) *fs.Inode {
	ce := entry{fsys: f, sn: pe.sn, seed: pe.seed, path: path.Join(pe.path, n.Name), meta: *n}
	ino := childIno(pe.seed, ce.path, n)
	ce.answerLookup(out, ino)
	var node fs.InodeEmbedder
	if n.Kind == tree.Dir {
		node = &dirNode{entry: ce}
	} else {
		node = &fileNode{entry: ce}
	}
	return parent.NewInode(ctx, node, fs.StableAttr{Mode: kindMode(n.Kind), Ino: ino})
}

// dirNode is a directory of a snapshot; its tree blob is loaded when it
// is looked up in or listed.
type dirNode struct {
	fs.Inode
	entry
}

var (
	_ snapshotNode     = (*dirNode)(nil)
	_ fs.NodeLookuper  = (*dirNode)(nil)
	_ fs.NodeReaddirer = (*dirNode)(nil)
	_ fs.NodeGetattrer = (*dirNode)(nil)
)

func (d *dirNode) Getattr(ctx context.Context, fh fs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	return d.getattr(out, d.StableAttr().Ino)
}

func (d *dirNode) Lookup(ctx context.Context, name string, out *fuse.EntryOut) (*fs.Inode, syscall.Errno) {
	// Known already (a listing with READDIRPLUS looks up every entry
	// again): answer from its node instead of making a new one to throw
	// away.
	if ch := d.GetChild(name); ch != nil {
		if sn, ok := ch.Operations().(snapshotNode); ok {
			sn.snapshotEntry().answerLookup(out, ch.StableAttr().Ino)
			return ch, 0
		}
	}
	t, err := d.fsys.tree(ctx, d.meta.Subtree)
	if err != nil {
		return nil, d.fsys.fail(d.name(), err)
	}
	n := t.Find(name)
	if n == nil {
		return nil, syscall.ENOENT
	}
	return d.fsys.newChild(ctx, &d.Inode, &d.entry, n, out), 0
}

func (d *dirNode) Readdir(ctx context.Context) (fs.DirStream, syscall.Errno) {
	t, err := d.fsys.tree(ctx, d.meta.Subtree)
	if err != nil {
		return nil, d.fsys.fail(d.name(), err)
	}
	return &treeStream{t: t, seed: d.seed, dir: d.path}, 0
}

// treeStream lists a loaded tree; it holds the tree only while the
// directory is open.
type treeStream struct {
	t    *tree.Tree
	i    int
	seed uint64
	dir  string
}

func (s *treeStream) HasNext() bool { return s.t != nil && s.i < len(s.t.Nodes) }

func (s *treeStream) Next() (fuse.DirEntry, syscall.Errno) {
	n := &s.t.Nodes[s.i]
	s.i++
	return fuse.DirEntry{Name: n.Name, Mode: kindMode(n.Kind), Ino: childIno(s.seed, path.Join(s.dir, n.Name), n)}, 0
}

func (s *treeStream) Close() { s.t = nil }

// fileNode is a file, symlink, device, fifo or socket of a snapshot.
type fileNode struct {
	fs.Inode
	entry

	offsOnce sync.Once
	offs     []uint64 // offs[i]: where meta.Content[i] starts; one more: the end
}

var (
	_ snapshotNode      = (*fileNode)(nil)
	_ fs.NodeGetattrer  = (*fileNode)(nil)
	_ fs.NodeOpener     = (*fileNode)(nil)
	_ fs.NodeReader     = (*fileNode)(nil)
	_ fs.NodeReadlinker = (*fileNode)(nil)
	_ fs.NodeLseeker    = (*fileNode)(nil)
)

func (n *fileNode) Getattr(ctx context.Context, fh fs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	return n.getattr(out, n.StableAttr().Ino)
}

// extentOffsets returns where each extent of the file starts (offsets),
// computed on first use.
func (n *fileNode) extentOffsets() []uint64 {
	n.offsOnce.Do(func() { n.offs = offsets(n.meta.Content) })
	return n.offs
}

func (n *fileNode) Readlink(ctx context.Context) ([]byte, syscall.Errno) {
	if n.meta.Kind != tree.Symlink {
		return nil, syscall.EINVAL
	}
	return []byte(n.meta.LinkTarget), 0
}

// Open refuses writing and a file stasis could not read at backup time.
// The kernel may keep what it read in its page cache: snapshots never
// change.
func (n *fileNode) Open(ctx context.Context, flags uint32) (fs.FileHandle, uint32, syscall.Errno) {
	if flags&syscall.O_ACCMODE != syscall.O_RDONLY || flags&syscall.O_TRUNC != 0 {
		return nil, 0, syscall.EROFS
	}
	if n.meta.Kind != tree.File {
		return nil, 0, syscall.EINVAL
	}
	if n.meta.Flags&tree.Unreadable != 0 {
		n.fsys.opts.Log("mount: %s: the file was unreadable at backup time, it has no content: %s", n.name(), n.meta.Error)
		return nil, 0, syscall.EIO
	}
	return nil, fuse.FOPEN_KEEP_CACHE, 0
}

func (n *fileNode) Read(ctx context.Context, fh fs.FileHandle, dest []byte, off int64) (fuse.ReadResult, syscall.Errno) {
	size := n.meta.Size
	if off < 0 {
		return nil, syscall.EINVAL
	}
	if uint64(off) >= size {
		return fuse.ReadResultData(nil), 0
	}
	dest = dest[:min(uint64(len(dest)), size-uint64(off))]
	if err := n.fsys.readAt(ctx, n.meta.Content, n.extentOffsets(), dest, uint64(off)); err != nil {
		return nil, n.fsys.fail(n.name(), err)
	}
	return fuse.ReadResultData(dest), 0
}

// Lseek answers SEEK_DATA and SEEK_HOLE from the stored holes, so that
// cp and tar copy a sparse file sparse (the extent lists of the range
// searched are loaded; no chunk is).
func (n *fileNode) Lseek(ctx context.Context, fh fs.FileHandle, off uint64, whence uint32) (uint64, syscall.Errno) {
	if whence != unix.SEEK_DATA && whence != unix.SEEK_HOLE {
		return 0, syscall.EINVAL
	}
	if off >= n.meta.Size {
		return 0, syscall.ENXIO
	}
	pos, found, err := n.fsys.seek(ctx, n.meta.Content, n.extentOffsets(), off, whence == unix.SEEK_DATA)
	switch {
	case err != nil:
		return 0, n.fsys.fail(n.name(), err)
	case found:
		return pos, 0
	case whence == unix.SEEK_DATA:
		return 0, syscall.ENXIO
	}
	return n.meta.Size, 0 // the hole at the end of every file
}

// seek returns the first offset at or after off that is data (data set)
// or a hole in the file made of ext (starting at offs).
func (f *FS) seek(ctx context.Context, ext []tree.Extent, offs []uint64, off uint64, data bool) (uint64, bool, error) {
	for i := sort.Search(len(ext), func(i int) bool { return offs[i+1] > off }); i < len(ext); i++ {
		e, from := ext[i], max(off, offs[i])
		switch {
		case e.Length == 0:
		case e.Hole:
			if !data {
				return from, true, nil
			}
		case e.List:
			l, err := f.list(ctx, e)
			if err != nil {
				return 0, false, err
			}
			pos, found, err := f.seek(ctx, l.ext, l.offs, from-offs[i], data)
			if err != nil || found {
				return offs[i] + pos, found, err
			}
		default:
			if data {
				return from, true, nil
			}
		}
	}
	return 0, false, nil
}

// offsets returns where each extent starts, and the end.
func offsets(ext []tree.Extent) []uint64 {
	offs := make([]uint64, len(ext)+1)
	for i, e := range ext {
		offs[i+1] = offs[i] + e.Length
	}
	return offs
}

// readAt fills dest with the content at off of the file made of ext
// (which start at offs): holes as zeros, chunks from the chunk cache,
// extent lists expanded from the list cache.
func (f *FS) readAt(ctx context.Context, ext []tree.Extent, offs []uint64, dest []byte, off uint64) error {
	i := sort.Search(len(ext), func(i int) bool { return offs[i+1] > off })
	for len(dest) > 0 {
		if i >= len(ext) {
			return fmt.Errorf("%w: the extents end at %d, before the file's size", repo.ErrCorruptBlob, offs[len(ext)])
		}
		e := ext[i]
		within := off - offs[i]
		n := min(uint64(len(dest)), e.Length-within)
		switch {
		case e.Hole:
			clear(dest[:n])
		case e.List:
			l, err := f.list(ctx, e)
			if err != nil {
				return err
			}
			if err := f.readAt(ctx, l.ext, l.offs, dest[:n], within); err != nil {
				return fmt.Errorf("extent list %s at offset %d: %w", e.ID.Short(), offs[i], err)
			}
		default:
			data, err := f.chunk(ctx, e)
			if err != nil {
				return fmt.Errorf("chunk at offset %d: %w", offs[i], err)
			}
			copy(dest[:n], data[within:within+n])
		}
		dest, off = dest[n:], off+n
		i++
	}
	return nil
}

// chunk returns the decoded, verified chunk e (LoadBlob hashes it); it
// must not be modified.
func (f *FS) chunk(ctx context.Context, e tree.Extent) ([]byte, error) {
	return f.chunks.get(ctx, e.ID, func() ([]byte, int64, error) {
		data, err := f.repo.LoadBlob(f.ctx, e.ID, nil)
		if err != nil {
			return nil, 0, err
		}
		if uint64(len(data)) != e.Length {
			return nil, 0, fmt.Errorf("chunk %s: %w: %d bytes, the tree says %d", e.ID.Short(), repo.ErrCorruptBlob, len(data), e.Length)
		}
		return data, int64(cap(data)), nil
	})
}

// extentList is a decoded extent-list blob.
type extentList struct {
	ext  []tree.Extent
	offs []uint64
}

func (f *FS) list(ctx context.Context, e tree.Extent) (*extentList, error) {
	return f.lists.get(ctx, e.ID, func() (*extentList, int64, error) {
		data, err := f.repo.LoadBlob(f.ctx, e.ID, nil)
		if err != nil {
			return nil, 0, fmt.Errorf("extent list %s: %w", e.ID.Short(), err)
		}
		ext, total, err := tree.DecodeList(data)
		if err != nil {
			return nil, 0, fmt.Errorf("extent list %s: %w", e.ID.Short(), err)
		}
		if total != e.Length {
			return nil, 0, fmt.Errorf("extent list %s: %w: covers %d bytes, the tree says %d", e.ID.Short(), repo.ErrCorruptBlob, total, e.Length)
		}
		l := &extentList{ext: ext, offs: offsets(ext)}
		return l, int64(cap(ext))*int64(unsafe.Sizeof(tree.Extent{})) + int64(len(l.offs))*8 + 64, nil
	})
}

// tree returns the decoded tree blob id. Its files' extent lists stay
// unexpanded (they are read with the ranges of the file that need them).
func (f *FS) tree(ctx context.Context, id blob.ID) (*tree.Tree, error) {
	return f.trees.get(ctx, id, func() (*tree.Tree, int64, error) {
		data, err := f.repo.LoadBlob(f.ctx, id, nil)
		if err != nil {
			return nil, 0, fmt.Errorf("load tree %s: %w", id.Short(), err)
		}
		t, err := tree.Decode(data)
		if err != nil {
			return nil, 0, fmt.Errorf("tree %s: %w", id.Short(), err)
		}
		return t, treeWeight(t), nil
	})
}

// treeWeight estimates the bytes a decoded tree holds.
func treeWeight(t *tree.Tree) int64 {
	w := int64(unsafe.Sizeof(tree.Tree{}))
	for i := range t.Nodes {
		n := &t.Nodes[i]
		w += int64(unsafe.Sizeof(*n)) + int64(len(n.Name)+len(n.User)+len(n.Group)+len(n.LinkTarget)+len(n.Error)) +
			int64(cap(n.Content))*int64(unsafe.Sizeof(tree.Extent{}))
	}
	return w
}
