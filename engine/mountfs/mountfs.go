// Package mountfs serves the snapshots of a stasis repository as a
// read-only FUSE file system (github.com/hanwen/go-fuse/v2/fs):
//
//	snapshots/<time>/<absolute paths as backed up>/...
//	snapshots/latest            symlink to the newest snapshot's directory
//	hosts/<host>/<time>/...     the same snapshots, grouped by host
//	hosts/<host>/latest         symlink to that host's newest snapshot
//	latest                      symlink to snapshots/<newest>
//
// <time> is the snapshot's time in local time, formatted as TimeFormat
// (restic's mount uses the same); snapshots that share a second are told
// apart by their short id ("<time>-<short id>", SnapshotNames). The lists
// are read again from the repository whenever snapshots/, hosts/ or a host
// directory is listed (Repo.Snapshots catches up with snapshots and index
// files written since), so new backups appear without remounting.
//
// # What is loaded when
//
// Nothing of a snapshot is read at mount time. A directory's tree blob is
// loaded when the directory is looked up in or listed, and kept in a
// cache bounded by bytes (Options.TreeCacheBytes); its entries become
// go-fuse inodes only as the kernel looks them up, and go-fuse drops them
// again when the kernel forgets them (memory pressure, or
// /proc/sys/vm/drop_caches). A file's content is read chunk by chunk as
// the kernel asks for byte ranges: the extent-list blobs of a large file
// (docs/format.md) are loaded only for the ranges read, holes read as
// zeros without touching the repository, and decoded chunks are kept in a
// small cache bounded by bytes (Options.ChunkCacheBytes). Every blob goes
// through Repo.LoadBlob, which verifies it against its id; a chunk whose
// length is not the tree's, a list that does not cover the bytes the tree
// says, or a blob that fails verification makes the read fail with EIO and
// is logged with the snapshot, path and blob (Options.Log). Nothing is
// ever written to the repository.
//
// # What the kernel sees
//
// Sizes, permission bits (also setuid/setgid/sticky), owners, mtimes and
// ctimes, device numbers and symlink targets are those stored; atime is
// the mtime (atimes are not stored). The names of a hard-linked file share
// one inode number (and so one inode) and show the stored link count.
// Inode numbers are derived from the snapshot and the path (a hard link:
// from the stored device and inode), so they stay the same while mounted
// and across mounts. st_blocks counts the bytes that are stored, so a
// sparse file shows as sparse (a file with extent lists counts its full
// size until its lists are loaded).
//
// # Contracts
//
// The FS methods are called by go-fuse on its own goroutines, many at
// once; everything here is safe for that. Repo must be safe for concurrent
// use (a *repo.Repository is). Blobs are loaded with the context given to
// New, not the request's: an interrupted request returns EINTR, and the
// load it started finishes and fills the cache for the retry.
package mountfs

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"log"
	"sort"
	"sync"
	"syscall"
	"time"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"github.com/stasisbackup/stasis/repo"
	"github.com/stasisbackup/stasis/repo/blob"
	"github.com/stasisbackup/stasis/repo/tree"
)

// Repo is what the file system needs from the repository.
type Repo interface {
	// LoadBlob reads and verifies a blob (see repo.Repository.LoadBlob).
	LoadBlob(ctx context.Context, id blob.ID, buf []byte) ([]byte, error)
	// Snapshots lists the snapshots, oldest first; bad are the files that
	// could not be read.
	Snapshots(ctx context.Context) (list []*repo.Snapshot, bad []error, err error)
}

var _ Repo = (*repo.Repository)(nil)

// TimeFormat is the layout of the snapshot directory names (in local time).
const TimeFormat = "2006-01-02T15:04:05Z07:00"

// Options tune the file system. Zero values mean the defaults.
type Options struct {
	// Filter selects the snapshots shown (--host, --tag, --path).
	Filter repo.SnapshotFilter
	// ChunkCacheBytes bounds the decoded chunks kept (default 32 MiB);
	// ListCacheBytes the decoded extent lists (default 4 MiB);
	// TreeCacheBytes the decoded directory trees (default 32 MiB). A
	// value larger than its cache is kept alone in it until the next one
	// is loaded.
	ChunkCacheBytes, ListCacheBytes, TreeCacheBytes int64
	// LookupRefresh is how old the snapshot list may be when a name not in
	// it is looked up in snapshots/ or hosts/ before the list is read
	// again (default 1s). Listing those directories always reads it again.
	LookupRefresh time.Duration
	// Log receives the errors that the kernel can only be told as EIO
	// (a damaged chunk, an unreadable snapshot file); nil: log.Printf.
	Log func(format string, args ...any)
}

// FS is the root of the file system; mount it with Mount.
type FS struct {
	fs.Inode

	repo Repo
	opts Options
	ctx  context.Context

	chunks *lru[blob.ID, []byte]
	lists  *lru[blob.ID, *extentList]
	trees  *lru[blob.ID, *tree.Tree]

	mu        sync.Mutex // serialises refreshes
	cur       *view
	refreshed time.Time
}

var (
	_ fs.NodeLookuper  = (*FS)(nil)
	_ fs.NodeReaddirer = (*FS)(nil)
	_ fs.NodeGetattrer = (*FS)(nil)
)

// New returns the file system of r's snapshots. Blobs are loaded with ctx
// (the command's): once it is done, reads fail.
func New(ctx context.Context, r Repo, opts Options) *FS {
	if opts.ChunkCacheBytes <= 0 {
		opts.ChunkCacheBytes = 32 << 20
	}
	if opts.ListCacheBytes <= 0 {
		opts.ListCacheBytes = 4 << 20
	}
	if opts.TreeCacheBytes <= 0 {
		opts.TreeCacheBytes = 32 << 20
	}
	if opts.LookupRefresh <= 0 {
		opts.LookupRefresh = time.Second
	}
	if opts.Log == nil {
		opts.Log = log.Printf
	}
	return &FS{repo: r, opts: opts, ctx: ctx,
		chunks: newLRU[blob.ID, []byte](opts.ChunkCacheBytes),
		lists:  newLRU[blob.ID, *extentList](opts.ListCacheBytes),
		trees:  newLRU[blob.ID, *tree.Tree](opts.TreeCacheBytes)}
}

// Refresh reads the snapshot list from the repository. The file system
// does this by itself when it is listed; Mount calls it once so that a
// repository that cannot list its snapshots fails the mount.
func (f *FS) Refresh(ctx context.Context) error {
	_, err := f.snapshots(ctx, true)
	return err
}

// view is one reading of the snapshot list. It is never modified.
type view struct {
	list   []*repo.Snapshot // filtered, oldest first
	names  []string         // list[i]'s directory name
	byName map[string]int
	hosts  []string         // sorted
	byHost map[string][]int // indexes into list, oldest first
	bad    int              // snapshot files that could not be read (logged)
}

func newView(list []*repo.Snapshot) *view {
	v := &view{list: list, names: SnapshotNames(list), byName: map[string]int{}, byHost: map[string][]int{}}
	for i, sn := range list {
		v.byName[v.names[i]] = i
		if _, ok := v.byHost[sn.Host]; !ok {
			v.hosts = append(v.hosts, sn.Host)
		}
		v.byHost[sn.Host] = append(v.byHost[sn.Host], i)
	}
	sort.Strings(v.hosts)
	return v
}

// SnapshotNames returns the directory name of each snapshot of list: its
// time (local, TimeFormat), with "-<short id>" appended when several
// snapshots of list have the same time name.
func SnapshotNames(list []*repo.Snapshot) []string {
	names := make([]string, len(list))
	count := map[string]int{}
	for i, sn := range list {
		names[i] = sn.Time.Local().Format(TimeFormat)
		count[names[i]]++
	}
	for i, sn := range list {
		if count[names[i]] > 1 {
			names[i] += "-" + sn.ID.Short()
		}
	}
	return names
}

// snapshots returns the current view, reading the list again when force is
// set or the view is older than maxAge. A failed reading keeps the previous
// view (and is logged) if there is one.
func (f *FS) snapshots(ctx context.Context, force bool) (*view, error) {
	return f.snapshotsAged(ctx, force, 0)
}

func (f *FS) snapshotsAged(ctx context.Context, force bool, maxAge time.Duration) (*view, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.cur != nil && !force && (maxAge == 0 || time.Since(f.refreshed) < maxAge) {
		return f.cur, nil
	}
	list, bad, err := f.repo.Snapshots(f.ctx)
	if err != nil {
		if f.cur != nil {
			f.opts.Log("mount: list snapshots: %v (showing the list read at %s)", err, f.refreshed.Format(time.TimeOnly))
			return f.cur, nil
		}
		return nil, fmt.Errorf("list snapshots: %w", err)
	}
	if len(bad) > 0 && (f.cur == nil || len(bad) != f.cur.bad) {
		for _, e := range bad {
			f.opts.Log("mount: snapshot not shown: %v (run `stasis check`)", e)
		}
	}
	v := newView(repo.FilterSnapshots(list, f.opts.Filter))
	v.bad = len(bad)
	f.cur, f.refreshed = v, time.Now()
	return v, nil
}

// lookupView is the view for a lookup of name: read again when name is
// not in the current one and that is older than LookupRefresh.
func (f *FS) lookupView(ctx context.Context, has func(*view) bool) (*view, error) {
	v, err := f.snapshots(ctx, false)
	if err != nil || has(v) {
		return v, err
	}
	return f.snapshotsAged(ctx, false, f.opts.LookupRefresh)
}

// Inode numbers of the fixed directories; derived ones are above them.
const (
	inoSnapshots = 2 + iota
	inoHosts
	inoLatest
	inoSnapshotsLatest
	firstDerivedIno = 16
)

// hashIno derives a stable inode number from parts, below 2^63 (go-fuse's
// automatic numbers start there) and above the fixed ones.
func hashIno(parts ...string) uint64 {
	h := fnv.New64a()
	for _, p := range parts {
		h.Write([]byte(p))
		h.Write([]byte{0})
	}
	ino := h.Sum64() &^ (1 << 63)
	if ino < firstDerivedIno {
		ino += firstDerivedIno
	}
	return ino
}

// Short timeouts for the entries that change (snapshot lists, latest);
// long ones inside snapshots, which never change.
const (
	dynamicTimeout = time.Second
	staticTimeout  = time.Hour
)

func dirAttr(out *fuse.Attr, ino uint64, mtime time.Time) {
	out.Ino = ino
	out.Mode = syscall.S_IFDIR | 0o555
	out.Nlink = 2
	out.SetTimes(&mtime, &mtime, &mtime)
	out.Blksize = 4096
}

func linkAttr(out *fuse.Attr, ino uint64, target string, mtime time.Time) {
	out.Ino = ino
	out.Mode = syscall.S_IFLNK | 0o777
	out.Nlink = 1
	out.Size = uint64(len(target))
	out.SetTimes(&mtime, &mtime, &mtime)
	out.Blksize = 4096
}

func (v *view) newest() time.Time {
	if len(v.list) == 0 {
		return time.Unix(0, 0)
	}
	return v.list[len(v.list)-1].Time
}

// Getattr of the root.
func (f *FS) Getattr(ctx context.Context, fh fs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	return f.viewAttr(ctx, out, func(v *view) { dirAttr(&out.Attr, 1, v.newest()) })
}

// viewAttr answers Getattr of a node whose attributes come from the list
// of snapshots (fill sets them): valid for a short while, as snapshots come
// and go.
func (f *FS) viewAttr(ctx context.Context, out *fuse.AttrOut, fill func(v *view)) syscall.Errno {
	v, err := f.snapshots(ctx, false)
	if err != nil {
		return f.fail("list snapshots", err)
	}
	fill(v)
	out.SetTimeout(dynamicTimeout)
	return 0
}

// Lookup in the root: snapshots, hosts, latest.
func (f *FS) Lookup(ctx context.Context, name string, out *fuse.EntryOut) (*fs.Inode, syscall.Errno) {
	v, err := f.snapshots(ctx, false)
	if err != nil {
		return nil, f.fail("list snapshots", err)
	}
	out.SetEntryTimeout(dynamicTimeout)
	out.SetAttrTimeout(dynamicTimeout)
	switch name {
	case "snapshots":
		dirAttr(&out.Attr, inoSnapshots, v.newest())
		return f.NewInode(ctx, &snapshotsDir{fsys: f}, fs.StableAttr{Mode: syscall.S_IFDIR, Ino: inoSnapshots}), 0
	case "hosts":
		dirAttr(&out.Attr, inoHosts, v.newest())
		return f.NewInode(ctx, &hostsDir{fsys: f}, fs.StableAttr{Mode: syscall.S_IFDIR, Ino: inoHosts}), 0
	case "latest":
		if len(v.list) == 0 {
			return nil, syscall.ENOENT
		}
		l := &latestLink{fsys: f, prefix: "snapshots/"}
		linkAttr(&out.Attr, inoLatest, l.target(v), v.newest())
		return f.NewInode(ctx, l, fs.StableAttr{Mode: syscall.S_IFLNK, Ino: inoLatest}), 0
	}
	return nil, syscall.ENOENT
}

// Readdir of the root.
func (f *FS) Readdir(ctx context.Context) (fs.DirStream, syscall.Errno) {
	v, err := f.snapshots(ctx, true)
	if err != nil {
		return nil, f.fail("list snapshots", err)
	}
	ents := []fuse.DirEntry{{Name: "hosts", Mode: syscall.S_IFDIR, Ino: inoHosts}}
	if len(v.list) > 0 {
		ents = append(ents, fuse.DirEntry{Name: "latest", Mode: syscall.S_IFLNK, Ino: inoLatest})
	}
	ents = append(ents, fuse.DirEntry{Name: "snapshots", Mode: syscall.S_IFDIR, Ino: inoSnapshots})
	return fs.NewListDirStream(ents), 0
}

// fail logs err (the kernel is told only EIO) and returns the errno for
// it: EINTR when a context ended.
func (f *FS) fail(what string, err error) syscall.Errno {
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return syscall.EINTR
	}
	hint := ""
	if errors.Is(err, repo.ErrCorruptBlob) || errors.Is(err, repo.ErrBlobNotFound) || errors.Is(err, tree.ErrCorrupt) {
		hint = " (the repository is damaged: run `stasis check`, see docs/damage.md)"
	}
	f.opts.Log("mount: %s: %v%s", what, err, hint)
	return syscall.EIO
}

// snapshotsDir is snapshots/: one directory per snapshot, and latest.
type snapshotsDir struct {
	fs.Inode
	fsys *FS
}

var (
	_ fs.NodeLookuper  = (*snapshotsDir)(nil)
	_ fs.NodeReaddirer = (*snapshotsDir)(nil)
	_ fs.NodeGetattrer = (*snapshotsDir)(nil)
)

func (d *snapshotsDir) Getattr(ctx context.Context, fh fs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	return d.fsys.viewAttr(ctx, out, func(v *view) { dirAttr(&out.Attr, inoSnapshots, v.newest()) })
}

func (d *snapshotsDir) Lookup(ctx context.Context, name string, out *fuse.EntryOut) (*fs.Inode, syscall.Errno) {
	v, err := d.fsys.lookupView(ctx, func(v *view) bool { _, ok := v.byName[name]; return ok })
	if err != nil {
		return nil, d.fsys.fail("list snapshots", err)
	}
	return d.fsys.lookupSnapshot(ctx, &d.Inode, v, name, "snapshots", nil, out)
}

func (d *snapshotsDir) Readdir(ctx context.Context) (fs.DirStream, syscall.Errno) {
	v, err := d.fsys.snapshots(ctx, true)
	if err != nil {
		return nil, d.fsys.fail("list snapshots", err)
	}
	all := make([]int, len(v.list))
	for i := range all {
		all[i] = i
	}
	return snapshotEntries(v, all, "snapshots"), 0
}

// snapshotEntries lists the snapshots idx of v (oldest first), then latest.
func snapshotEntries(v *view, idx []int, viewName string) fs.DirStream {
	ents := make([]fuse.DirEntry, 0, len(idx)+1)
	for _, i := range idx {
		ents = append(ents, fuse.DirEntry{Name: v.names[i], Mode: syscall.S_IFDIR, Ino: snapshotSeed(viewName, v.list[i])})
	}
	if len(idx) > 0 {
		ents = append(ents, fuse.DirEntry{Name: "latest", Mode: syscall.S_IFLNK, Ino: latestIno(viewName)})
	}
	return fs.NewListDirStream(ents)
}

func latestIno(viewName string) uint64 {
	if viewName == "snapshots" {
		return inoSnapshotsLatest
	}
	return hashIno("latest", viewName)
}

// snapshotSeed is the inode number of a snapshot's directory in a view
// (snapshots, or hosts/<host>) and the seed of the numbers below it. The
// views get different numbers: the kernel allows a directory inode only
// one name.
func snapshotSeed(viewName string, sn *repo.Snapshot) uint64 {
	return hashIno(viewName, sn.ID.String())
}

// lookupSnapshot resolves name in a list of snapshots: a snapshot
// directory, or latest (of host, when host is set).
func (f *FS) lookupSnapshot(ctx context.Context, parent *fs.Inode, v *view, name, viewName string, host *string, out *fuse.EntryOut) (*fs.Inode, syscall.Errno) {
	out.SetEntryTimeout(dynamicTimeout)
	out.SetAttrTimeout(dynamicTimeout)
	if name == "latest" {
		l := &latestLink{fsys: f, host: host}
		t := l.target(v)
		if t == "" {
			return nil, syscall.ENOENT
		}
		linkAttr(&out.Attr, latestIno(viewName), t, v.newest())
		return parent.NewInode(ctx, l, fs.StableAttr{Mode: syscall.S_IFLNK, Ino: latestIno(viewName)}), 0
	}
	i, ok := v.byName[name]
	if !ok || (host != nil && v.list[i].Host != *host) {
		return nil, syscall.ENOENT
	}
	sn := v.list[i]
	ino := snapshotSeed(viewName, sn)
	meta := tree.Node{Kind: tree.Dir, Mode: 0o555, Links: 2, MTime: sn.Time.UnixNano(), CTime: sn.Time.UnixNano(), Subtree: sn.Tree}
	d := &dirNode{entry: entry{fsys: f, sn: sn, seed: ino, path: "/", meta: meta}}
	d.answerLookup(out, ino)
	return parent.NewInode(ctx, d, fs.StableAttr{Mode: syscall.S_IFDIR, Ino: ino}), 0
}

// latestLink is a symlink to the newest snapshot's directory (of one host
// when host is set); prefix is prepended to the name (snapshots/ for the
// root's).
type latestLink struct {
	fs.Inode
	fsys   *FS
	prefix string
	host   *string
}

var (
	_ fs.NodeReadlinker = (*latestLink)(nil)
	_ fs.NodeGetattrer  = (*latestLink)(nil)
)

// target is "" when there is no snapshot to point to.
func (l *latestLink) target(v *view) string {
	if l.host != nil {
		idx := v.byHost[*l.host]
		if len(idx) == 0 {
			return ""
		}
		return v.names[idx[len(idx)-1]]
	}
	if len(v.list) == 0 {
		return ""
	}
	return l.prefix + v.names[len(v.list)-1]
}

func (l *latestLink) Readlink(ctx context.Context) ([]byte, syscall.Errno) {
	v, err := l.fsys.snapshots(ctx, false)
	if err != nil {
		return nil, l.fsys.fail("list snapshots", err)
	}
	t := l.target(v)
	if t == "" {
		return nil, syscall.ENOENT
	}
	return []byte(t), 0
}

func (l *latestLink) Getattr(ctx context.Context, fh fs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	return l.fsys.viewAttr(ctx, out, func(v *view) { linkAttr(&out.Attr, l.StableAttr().Ino, l.target(v), v.newest()) })
}

// hostsDir is hosts/: one directory per host.
type hostsDir struct {
	fs.Inode
	fsys *FS
}

var (
	_ fs.NodeLookuper  = (*hostsDir)(nil)
	_ fs.NodeReaddirer = (*hostsDir)(nil)
	_ fs.NodeGetattrer = (*hostsDir)(nil)
)

func (d *hostsDir) Getattr(ctx context.Context, fh fs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	return d.fsys.viewAttr(ctx, out, func(v *view) { dirAttr(&out.Attr, inoHosts, v.newest()) })
}

func hostIno(host string) uint64 { return hashIno("host", host) }

func (d *hostsDir) Lookup(ctx context.Context, name string, out *fuse.EntryOut) (*fs.Inode, syscall.Errno) {
	v, err := d.fsys.lookupView(ctx, func(v *view) bool { _, ok := v.byHost[name]; return ok })
	if err != nil {
		return nil, d.fsys.fail("list snapshots", err)
	}
	idx, ok := v.byHost[name]
	if !ok || !tree.ValidName(name) {
		return nil, syscall.ENOENT
	}
	out.SetEntryTimeout(dynamicTimeout)
	out.SetAttrTimeout(dynamicTimeout)
	dirAttr(&out.Attr, hostIno(name), v.list[idx[len(idx)-1]].Time)
	return d.NewInode(ctx, &hostDir{fsys: d.fsys, host: name}, fs.StableAttr{Mode: syscall.S_IFDIR, Ino: hostIno(name)}), 0
}

func (d *hostsDir) Readdir(ctx context.Context) (fs.DirStream, syscall.Errno) {
	v, err := d.fsys.snapshots(ctx, true)
	if err != nil {
		return nil, d.fsys.fail("list snapshots", err)
	}
	var ents []fuse.DirEntry
	for _, h := range v.hosts {
		if tree.ValidName(h) { // a host name with a slash cannot be a directory name
			ents = append(ents, fuse.DirEntry{Name: h, Mode: syscall.S_IFDIR, Ino: hostIno(h)})
		}
	}
	return fs.NewListDirStream(ents), 0
}

// hostDir is hosts/<host>: that host's snapshots, and latest.
type hostDir struct {
	fs.Inode
	fsys *FS
	host string
}

var (
	_ fs.NodeLookuper  = (*hostDir)(nil)
	_ fs.NodeReaddirer = (*hostDir)(nil)
	_ fs.NodeGetattrer = (*hostDir)(nil)
)

func (d *hostDir) viewName() string { return "hosts/" + d.host }

func (d *hostDir) Getattr(ctx context.Context, fh fs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	return d.fsys.viewAttr(ctx, out, func(v *view) {
		mtime := time.Unix(0, 0)
		if idx := v.byHost[d.host]; len(idx) > 0 {
			mtime = v.list[idx[len(idx)-1]].Time
		}
		dirAttr(&out.Attr, hostIno(d.host), mtime)
	})
}

func (d *hostDir) Lookup(ctx context.Context, name string, out *fuse.EntryOut) (*fs.Inode, syscall.Errno) {
	v, err := d.fsys.lookupView(ctx, func(v *view) bool {
		i, ok := v.byName[name]
		return ok && v.list[i].Host == d.host
	})
	if err != nil {
		return nil, d.fsys.fail("list snapshots", err)
	}
	return d.fsys.lookupSnapshot(ctx, &d.Inode, v, name, d.viewName(), &d.host, out)
}

func (d *hostDir) Readdir(ctx context.Context) (fs.DirStream, syscall.Errno) {
	v, err := d.fsys.snapshots(ctx, true)
	if err != nil {
		return nil, d.fsys.fail("list snapshots", err)
	}
	return snapshotEntries(v, v.byHost[d.host], d.viewName()), 0
}
