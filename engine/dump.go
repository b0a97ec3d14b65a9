package engine

import (
	"archive/tar"
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"path"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/stasisbackup/stasis/repo"
	"github.com/stasisbackup/stasis/repo/blob"
	"github.com/stasisbackup/stasis/repo/tree"
	"golang.org/x/sync/errgroup"
	"golang.org/x/sync/semaphore"
	"golang.org/x/sys/unix"
)

// DumpRepo is what dump needs from the repository.
type DumpRepo interface {
	LoadTree(ctx context.Context, id blob.ID) (*tree.Tree, error)
	LoadBlob(ctx context.Context, id blob.ID, buf []byte) ([]byte, error)
}

var _ DumpRepo = (*repo.Repository)(nil)

// ErrNotInSnapshot is matched when a snapshot has no entry at a path.
var ErrNotInSnapshot = errors.New("not in snapshot")

// ErrNoContent is matched when a file's content is not in the snapshot: it
// was unreadable when it was backed up, or its extent list is damaged.
var ErrNoContent = errors.New("the snapshot holds no content for this file")

// ErrDumpIncomplete is matched when an archive was written whole but some
// entries were left out of it; DumpResult.Problems names each one.
var ErrDumpIncomplete = errors.New("the archive is incomplete")

// ErrDumpInconsistent is matched when a dump was written whole but holds a
// file that was changing while it was backed up (DumpResult.Warnings names
// each; restore reports the same files as not restored cleanly): its
// content may be torn, so the dump is no clean success.
var ErrDumpInconsistent = errors.New("the dump holds files that were changing while they were backed up")

// Lookup returns the node at snapshot path p (absolute, as backed up). The
// root "/" has no node: it returns a directory node whose Subtree is the
// snapshot's root tree. A path the snapshot lacks matches ErrNotInSnapshot.
func Lookup(ctx context.Context, r TreeLoader, sn *repo.Snapshot, p string) (*tree.Node, error) {
	p = path.Clean("/" + p)
	n := &tree.Node{Name: "/", Kind: tree.Dir, Mode: 0o755, Subtree: sn.Tree, MTime: sn.Time.UnixNano()}
	if p == "/" {
		return n, nil
	}
	dir := "/"
	for _, name := range strings.Split(p[1:], "/") {
		if n.Kind != tree.Dir {
			return nil, fmt.Errorf("%s: %w %s: %s is a %s, not a directory", p, ErrNotInSnapshot, sn.ID.Short(), dir, n.Kind)
		}
		t, err := r.LoadTree(ctx, n.Subtree)
		if err != nil {
			return nil, fmt.Errorf("directory %s of snapshot %s: %w", dir, sn.ID.Short(), err)
		}
		child := t.Find(name)
		if child == nil {
			return nil, fmt.Errorf("%s: %w %s (see `stasis ls %s %s`)", p, ErrNotInSnapshot, sn.ID.Short(), sn.ID.Short(), dir)
		}
		n = child
		dir = path.Join(dir, name)
	}
	return n, nil
}

// dumpBytesInFlight bounds the chunk bytes a dump has loaded ahead of the
// writer.
const dumpBytesInFlight = 32 << 20

// DumpFile writes the content of the regular file n (at snapshot path p) to
// w: chunks in order, holes as zeros, exactly n.Size bytes. Every chunk is
// verified (LoadBlob hashes it) before any of its bytes are written; chunks
// are loaded ahead by min(NumCPU, 4) goroutines, at most 32 MiB ahead of w.
// A chunk that cannot be loaded stops the dump with an error naming p and
// the offset: the output is then short, and the caller must treat it as
// failed. A file without stored content matches ErrNoContent. A file that
// was changing while it was backed up is written whole, and the error then
// matches ErrDumpInconsistent.
func DumpFile(ctx context.Context, r DumpRepo, p string, n *tree.Node, w io.Writer) error {
	if n.Kind != tree.File {
		return fmt.Errorf("%s is a %s, not a file", p, n.Kind)
	}
	if err := contentOK(n); err != nil {
		return fmt.Errorf("%s: %w", p, err)
	}
	if err := streamContent(ctx, r, n.Content, w, false); err != nil {
		return fmt.Errorf("%s: %w", p, err)
	}
	if n.Flags&tree.Changed != 0 {
		return fmt.Errorf("%s: %w: it may be inconsistent", p, ErrDumpInconsistent)
	}
	return nil
}

// contentOK says why a file node's content cannot be dumped, or nil.
func contentOK(n *tree.Node) error {
	if n.Flags&tree.Unreadable != 0 {
		return fmt.Errorf("%w (it was unreadable when it was backed up: %s)", ErrNoContent, n.Error)
	}
	if n.ContentError != "" {
		return fmt.Errorf("%w (%s)", ErrNoContent, n.ContentError)
	}
	var sum uint64
	for _, e := range n.Content {
		sum += e.Length
	}
	if sum != n.Size {
		return fmt.Errorf("its extents hold %d bytes, its size is %d (damaged tree; run `stasis check`)", sum, n.Size)
	}
	return nil
}

// chunkResult is one chunk loaded ahead, in file order.
type chunkResult struct {
	off  int64
	ext  tree.Extent
	done chan struct{}
	data []byte
	err  error
}

// streamContent writes extents to w in order, holes as zeros unless
// skipHoles, loading chunks ahead on a few goroutines with a bounded number
// of bytes in flight.
func streamContent(ctx context.Context, r DumpRepo, content []tree.Extent, w io.Writer, skipHoles bool) error {
	g, gctx := errgroup.WithContext(ctx)
	nw := min(workers(len(content)), 4)
	jobs := make(chan *chunkResult)
	order := make(chan *chunkResult, 64)
	budget := semaphore.NewWeighted(dumpBytesInFlight)
	weight := func(e tree.Extent) int64 {
		if e.Hole {
			return 0
		}
		return min(int64(e.Length), dumpBytesInFlight)
	}
	g.Go(func() error { // producer: file order, bounded bytes
		defer close(jobs)
		defer close(order)
		var off int64
		for _, e := range content {
			if err := budget.Acquire(gctx, weight(e)); err != nil {
				return err
			}
			c := &chunkResult{off: off, ext: e, done: make(chan struct{})}
			off += int64(e.Length)
			select {
			case order <- c:
			case <-gctx.Done():
				return gctx.Err()
			}
			if e.Hole {
				close(c.done)
				continue
			}
			select {
			case jobs <- c:
			case <-gctx.Done():
				return gctx.Err()
			}
		}
		return nil
	})
	for range nw {
		g.Go(func() (err error) {
			defer recoverTo(&err, "loading chunks to dump")
			for c := range jobs {
				c.data, c.err = r.LoadBlob(gctx, c.ext.ID, nil)
				if c.err == nil && uint64(len(c.data)) != c.ext.Length {
					c.err = fmt.Errorf("chunk %s has %d bytes, tree says %d", c.ext.ID.Short(), len(c.data), c.ext.Length)
				}
				close(c.done)
			}
			return nil
		})
	}
	g.Go(func() error { // writer: file order; an error cancels gctx, which stops the producer
		for c := range order {
			select {
			case <-c.done:
			case <-gctx.Done():
				return gctx.Err()
			}
			if c.err != nil {
				return fmt.Errorf("chunk at offset %d: %w", c.off, c.err)
			}
			var err error
			switch {
			case c.ext.Hole && skipHoles:
			case c.ext.Hole:
				err = writeZeros(w, int64(c.ext.Length))
			default:
				_, err = w.Write(c.data)
			}
			if err != nil {
				return fmt.Errorf("write at offset %d: %w", c.off, err)
			}
			c.data = nil
			budget.Release(weight(c.ext))
		}
		return nil
	})
	return g.Wait()
}

var zeros = make([]byte, 64<<10)

func writeZeros(w io.Writer, n int64) error {
	for n > 0 {
		k := min(n, int64(len(zeros)))
		if _, err := w.Write(zeros[:k]); err != nil {
			return err
		}
		n -= k
	}
	return nil
}

// DumpResult counts what an archive holds and lists what it does not.
type DumpResult struct {
	Entries, Bytes int64
	// Problems are entries left out of the archive: files whose content
	// the snapshot lacks, and sockets (tar cannot hold them; GNU tar leaves
	// them out too). Warnings are entries written with a caveat: files
	// that were changing while they were backed up.
	Problems, Warnings []repo.Problem
}

// DumpTar writes the snapshot entry at p and, for a directory, everything
// below it as a PAX tar archive to w. Member names are the snapshot paths
// relative to p's parent (dumping /srv/zoomserv gives zoomserv/,
// zoomserv/X500.db, ...; dumping / gives srv/, srv/zoomserv/, ...). The
// archive holds the stored metadata: mode (with setuid/setgid/sticky),
// uid/gid and user/group names, mtime to the nanosecond (PAX records),
// symlinks, hard links (later names of a (device, inode) are tar hard-link
// members naming the first), FIFOs and devices, names of any bytes (PAX path
// records). A file with holes is a GNU sparse member of format 1.0 (PAX
// records GNU.sparse.*, as `tar --sparse --format=pax` writes them): the
// archive holds only its data, and GNU tar and Go's archive/tar read it
// back with its holes (archive/tar cannot write these members, so
// DumpTar writes them itself).
//
// A chunk that cannot be loaded stops the dump with an error naming the file;
// the archive is then cut short (no end-of-archive marker) and must be
// treated as failed. Files whose content the snapshot lacks are left out
// and listed in Problems, and the error then matches ErrDumpIncomplete
// (after a complete archive of the rest was written); with no such file
// but files that were changing while they were backed up (Warnings), it
// matches ErrDumpInconsistent.
func DumpTar(ctx context.Context, r DumpRepo, sn *repo.Snapshot, p string, w io.Writer) (*DumpResult, error) {
	p = path.Clean("/" + p)
	n, err := Lookup(ctx, r, sn, p)
	if err != nil {
		return nil, err
	}
	d := &tarDumper{r: r, w: w, tw: tar.NewWriter(w), links: map[[2]uint64]string{}, res: &DumpResult{}}
	if p == "/" {
		err = d.dir(ctx, "/", "", n.Subtree)
	} else {
		err = d.entry(ctx, p, path.Base(p), n)
	}
	if err != nil {
		return d.res, err
	}
	if err := d.tw.Close(); err != nil {
		return d.res, fmt.Errorf("finish archive: %w", err)
	}
	if len(d.res.Problems) > 0 {
		return d.res, fmt.Errorf("%w: %d entries left out", ErrDumpIncomplete, len(d.res.Problems))
	}
	if len(d.res.Warnings) > 0 {
		return d.res, fmt.Errorf("%w: %d files may be inconsistent", ErrDumpInconsistent, len(d.res.Warnings))
	}
	return d.res, nil
}

type tarDumper struct {
	r     DumpRepo
	w     io.Writer // under tw: sparse members are written to it directly
	tw    *tar.Writer
	links map[[2]uint64]string // (device, inode) → member name of the first name dumped
	res   *DumpResult
}

// dir writes the entries of tree id (the directory at snapshot path src,
// member name prefix name, "" for the root).
func (d *tarDumper) dir(ctx context.Context, src, name string, id blob.ID) error {
	t, err := d.r.LoadTree(ctx, id)
	if err != nil {
		return fmt.Errorf("directory %s: %w", src, err)
	}
	for i := range t.Nodes {
		if err := ctx.Err(); err != nil {
			return err
		}
		n := &t.Nodes[i]
		if err := d.entry(ctx, path.Join(src, n.Name), path.Join(name, n.Name), n); err != nil {
			return err
		}
	}
	return nil
}

func (d *tarDumper) entry(ctx context.Context, src, name string, n *tree.Node) error {
	hdr := &tar.Header{
		Name:    name,
		Mode:    int64(n.Mode & 0o7777),
		Uid:     int(n.UID),
		Gid:     int(n.GID),
		Uname:   n.User,
		Gname:   n.Group,
		ModTime: time.Unix(0, n.MTime),
		Format:  tar.FormatPAX,
	}
	switch n.Kind {
	case tree.Dir:
		hdr.Typeflag = tar.TypeDir
		hdr.Name += "/"
	case tree.File:
		if err := contentOK(n); err != nil {
			d.res.Problems = append(d.res.Problems, repo.Problem{Path: src, Kind: repo.ProblemUnrestored, Error: err.Error()})
			return nil
		}
		key := [2]uint64{n.Device, n.Inode}
		if n.Links > 1 {
			if first, ok := d.links[key]; ok {
				hdr.Typeflag, hdr.Linkname = tar.TypeLink, first
				return d.header(src, hdr)
			}
		}
		hdr.Typeflag, hdr.Size = tar.TypeReg, int64(n.Size)
		if hasHoles(n.Content) {
			if err := d.sparse(ctx, src, hdr, n.Content); err != nil {
				return err
			}
		} else {
			if err := d.header(src, hdr); err != nil {
				return err
			}
			if err := streamContent(ctx, d.r, n.Content, d.tw, false); err != nil {
				return fmt.Errorf("%s: %w", src, err)
			}
		}
		if n.Links > 1 {
			d.links[key] = name
		}
		if n.Flags&tree.Changed != 0 {
			d.res.Warnings = append(d.res.Warnings, repo.Problem{Path: src, Kind: repo.ProblemWarning,
				Error: "it was changing while it was backed up: its content may be inconsistent"})
		}
		d.res.Bytes += int64(n.Size)
		return nil
	case tree.Symlink:
		hdr.Typeflag, hdr.Linkname = tar.TypeSymlink, n.LinkTarget
	case tree.FIFO:
		hdr.Typeflag = tar.TypeFifo
	case tree.CharDev, tree.BlockDev:
		hdr.Typeflag = tar.TypeChar
		if n.Kind == tree.BlockDev {
			hdr.Typeflag = tar.TypeBlock
		}
		hdr.Devmajor, hdr.Devminor = int64(unix.Major(n.Rdev)), int64(unix.Minor(n.Rdev))
	case tree.Socket:
		d.res.Problems = append(d.res.Problems, repo.Problem{Path: src, Kind: repo.ProblemUnrestored, Error: "socket left out (tar cannot hold sockets)"})
		return nil
	default:
		return fmt.Errorf("%s: unknown entry kind %s", src, n.Kind)
	}
	if err := d.header(src, hdr); err != nil {
		return err
	}
	if n.Kind == tree.Dir {
		if n.Flags&tree.Unreadable != 0 {
			d.res.Problems = append(d.res.Problems, repo.Problem{Path: src, Kind: repo.ProblemUnrestored,
				Error: "directory was unreadable when it was backed up: " + n.Error})
		}
		return d.dir(ctx, src, name, n.Subtree)
	}
	return nil
}

func (d *tarDumper) header(src string, hdr *tar.Header) error {
	if err := d.tw.WriteHeader(hdr); err != nil {
		return fmt.Errorf("%s: tar header: %w", src, err)
	}
	d.res.Entries++
	return nil
}

func hasHoles(es []tree.Extent) bool {
	for _, e := range es {
		if e.Hole {
			return true
		}
	}
	return false
}

// sparse writes a regular file with holes as a GNU sparse 1.0 member:
//
//	PAX header  GNU.sparse.major=1 GNU.sparse.minor=0 GNU.sparse.name=NAME
//	            GNU.sparse.realsize=SIZE size=STORED mtime uid gid uname gname
//	ustar header named GNUSparseFile.0/BASE, size STORED
//	data        the map ("N\n" then "offset\nlength\n" per data segment),
//	            zero-padded to a 512-byte block, then the segments' bytes
//
// where STORED is the padded map plus the data. These are written to the
// writer under tw, between tw's members (tw.Flush ends the previous one).
func (d *tarDumper) sparse(ctx context.Context, src string, hdr *tar.Header, content []tree.Extent) error {
	type segment struct{ off, length int64 }
	var segs []segment
	var off, data int64
	for _, e := range content {
		if !e.Hole {
			if k := len(segs); k > 0 && segs[k-1].off+segs[k-1].length == off {
				segs[k-1].length += int64(e.Length)
			} else {
				segs = append(segs, segment{off, int64(e.Length)})
			}
			data += int64(e.Length)
		}
		off += int64(e.Length)
	}
	if k := len(segs); k == 0 || segs[k-1].off+segs[k-1].length < hdr.Size {
		segs = append(segs, segment{hdr.Size, 0}) // the file ends in a hole: GNU tar's marker of its size
	}
	spmap := strconv.AppendInt(nil, int64(len(segs)), 10)
	spmap = append(spmap, '\n')
	for _, s := range segs {
		spmap = strconv.AppendInt(spmap, s.off, 10)
		spmap = append(spmap, '\n')
		spmap = strconv.AppendInt(spmap, s.length, 10)
		spmap = append(spmap, '\n')
	}
	spmap = append(spmap, make([]byte, blockPad(int64(len(spmap))))...)
	stored := int64(len(spmap)) + data

	recs := map[string]string{
		"GNU.sparse.major":    "1",
		"GNU.sparse.minor":    "0",
		"GNU.sparse.name":     hdr.Name,
		"GNU.sparse.realsize": strconv.FormatInt(hdr.Size, 10),
		"size":                strconv.FormatInt(stored, 10),
		"mtime":               paxTime(hdr.ModTime),
		"uid":                 strconv.Itoa(hdr.Uid),
		"gid":                 strconv.Itoa(hdr.Gid),
	}
	if hdr.Uname != "" {
		recs["uname"] = hdr.Uname
	}
	if hdr.Gname != "" {
		recs["gname"] = hdr.Gname
	}
	var pax []byte
	for _, k := range slices.Sorted(maps.Keys(recs)) {
		if strings.ContainsRune(recs[k], 0) {
			return fmt.Errorf("%s: a NUL byte in its %s", src, k)
		}
		pax = append(pax, paxRecord(k, recs[k])...)
	}
	if err := d.tw.Flush(); err != nil {
		return fmt.Errorf("%s: %w", src, err)
	}
	base := path.Base(hdr.Name)
	var short []byte // an ASCII stand-in name for readers that know no sparse members
	for i := 0; i < len(base) && len(short) < 80; i++ {
		if c := base[i]; c > ' ' && c < 0x7f {
			short = append(short, c)
		}
	}
	var blocks []byte
	blocks = append(blocks, ustarHeader("././@PaxHeader", 'x', 0o644, 0, 0, int64(len(pax)), 0)...)
	blocks = append(blocks, pax...)
	blocks = append(blocks, make([]byte, blockPad(int64(len(pax))))...)
	blocks = append(blocks, ustarHeader("GNUSparseFile.0/"+string(short), '0', hdr.Mode, hdr.Uid, hdr.Gid, stored, hdr.ModTime.Unix())...)
	blocks = append(blocks, spmap...)
	if _, err := d.w.Write(blocks); err != nil {
		return fmt.Errorf("%s: write: %w", src, err)
	}
	if err := streamContent(ctx, d.r, content, d.w, true); err != nil {
		return fmt.Errorf("%s: %w", src, err)
	}
	if _, err := d.w.Write(make([]byte, blockPad(data))); err != nil {
		return fmt.Errorf("%s: write: %w", src, err)
	}
	d.res.Entries++
	return nil
}

func blockPad(n int64) int64 { return -n & 511 }

// paxRecord formats one PAX extended header record: "LEN KEY=VALUE\n",
// where LEN counts the whole record, itself included.
func paxRecord(k, v string) string {
	size := len(k) + len(v) + 3
	size += len(strconv.Itoa(size))
	rec := strconv.Itoa(size) + " " + k + "=" + v + "\n"
	if len(rec) != size { // LEN gained a digit
		rec = strconv.Itoa(len(rec)) + " " + k + "=" + v + "\n"
	}
	return rec
}

// paxTime formats t as PAX does: seconds, and a fraction when there is one.
func paxTime(t time.Time) string {
	secs, nsecs := t.Unix(), t.Nanosecond()
	if nsecs == 0 {
		return strconv.FormatInt(secs, 10)
	}
	sign := ""
	if secs < 0 {
		sign, secs, nsecs = "-", -(secs + 1), 1e9-nsecs
	}
	return strings.TrimRight(fmt.Sprintf("%s%d.%09d", sign, secs, nsecs), "0")
}

// ustarHeader returns a 512-byte ustar header block. Numbers that do not
// fit their octal fields are written as 0: the PAX records before it hold
// them.
func ustarHeader(name string, flag byte, mode int64, uid, gid int, size, mtime int64) []byte {
	b := make([]byte, 512)
	octal := func(field []byte, v int64) {
		s := strconv.FormatInt(v, 8)
		if v < 0 || len(s) > len(field)-1 {
			s = "0"
		}
		copy(field, fmt.Sprintf("%0*s", len(field)-1, s))
	}
	copy(b[0:100], name)
	octal(b[100:108], mode)
	octal(b[108:116], int64(uid))
	octal(b[116:124], int64(gid))
	octal(b[124:136], size)
	octal(b[136:148], mtime)
	b[156] = flag
	copy(b[257:263], "ustar\x00")
	copy(b[263:265], "00")
	copy(b[148:156], "        ")
	var sum int64
	for _, c := range b {
		sum += int64(c)
	}
	copy(b[148:156], fmt.Sprintf("%06o\x00 ", sum))
	return b
}
