package engine

import (
	"io/fs"
	"os/user"
	"strconv"
	"sync"
	"syscall"

	"github.com/stasisbackup/stasis/repo/tree"
)

// nodeFromInfo builds a tree node (metadata only) from an lstat result.
func nodeFromInfo(name string, fi fs.FileInfo, names *idNames) tree.Node {
	n := tree.Node{Name: name}
	switch m := fi.Mode(); {
	case m.IsRegular():
		n.Kind = tree.File
	case m.IsDir():
		n.Kind = tree.Dir
	case m&fs.ModeSymlink != 0:
		n.Kind = tree.Symlink
	case m&fs.ModeNamedPipe != 0:
		n.Kind = tree.FIFO
	case m&fs.ModeSocket != 0:
		n.Kind = tree.Socket
	case m&fs.ModeCharDevice != 0:
		n.Kind = tree.CharDev
	case m&fs.ModeDevice != 0:
		n.Kind = tree.BlockDev
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		n.Mode = uint32(fi.Mode().Perm())
		n.MTime = fi.ModTime().UnixNano()
		return n
	}
	n.Mode = st.Mode & 0o7777
	n.UID, n.GID = st.Uid, st.Gid
	n.Inode, n.Device, n.Links, n.Rdev = st.Ino, uint64(st.Dev), uint64(st.Nlink), uint64(st.Rdev)
	n.MTime = st.Mtim.Sec*1e9 + st.Mtim.Nsec
	n.CTime = st.Ctim.Sec*1e9 + st.Ctim.Nsec
	if n.Kind == tree.File {
		n.Size = uint64(st.Size)
	}
	if names != nil {
		n.User, n.Group = names.user(st.Uid), names.group(st.Gid)
	}
	return n
}

// sameFile reports whether two stats of a regular file show the same
// content version: size, mtime and ctime.
func sameFile(a, b *tree.Node) bool {
	return a.Size == b.Size && a.MTime == b.MTime && a.CTime == b.CTime
}

// idNames caches uid/gid → name lookups.
type idNames struct {
	mu     sync.Mutex
	users  map[uint32]string
	groups map[uint32]string
}

// newIDNames returns an empty cache.
func newIDNames() *idNames {
	return &idNames{users: map[uint32]string{}, groups: map[uint32]string{}}
}

// user returns the name of user id, or "" when it has none here.
func (c *idNames) user(id uint32) string {
	c.mu.Lock()
	defer c.mu.Unlock()
	if s, ok := c.users[id]; ok {
		return s
	}
	s := ""
	if u, err := user.LookupId(strconv.Itoa(int(id))); err == nil {
		s = u.Username
	}
	c.users[id] = s
	return s
}

// group returns the name of group id, or "" when it has none here.
func (c *idNames) group(id uint32) string {
	c.mu.Lock()
	defer c.mu.Unlock()
	if s, ok := c.groups[id]; ok {
		return s
	}
	s := ""
	if g, err := user.LookupGroupId(strconv.Itoa(int(id))); err == nil {
		s = g.Name
	}
	c.groups[id] = s
	return s
}
