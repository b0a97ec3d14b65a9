package repo

// Primitives of check and repair: reading pack headers through the
// repository (so that a sealed header is opened with the repository's key),
// listing the packs on disk, and rebuilding index.db from the packs and
// snapshot files alone.

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strings"

	"github.com/stasisbackup/stasis/repo/backend"
	"github.com/stasisbackup/stasis/repo/blob"
	"github.com/stasisbackup/stasis/repo/index"
	"github.com/stasisbackup/stasis/repo/pack"
	"github.com/zeebo/blake3"
	"golang.org/x/sys/unix"
)

// DamagedDir is the directory (relative to the repository) into which repair
// moves files it takes out of use: packs that cannot be read and snapshot
// files that do not decode. Nothing reads them; inspect or delete them.
const DamagedDir = "damaged"

// ReadPackHeader reads and opens the header of pack id and returns its
// entries and the pack's size. Errors about malformed bytes match
// pack.ErrCorrupt; a missing pack matches fs.ErrNotExist.
func (r *Repository) ReadPackHeader(ctx context.Context, id blob.ID) ([]pack.Entry, int64, error) {
	if err := ctx.Err(); err != nil {
		return nil, 0, err
	}
	f, err := r.fs.Open(PackName(id))
	if err != nil {
		return nil, 0, fmt.Errorf("open pack %s: %w", id, err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, 0, fmt.Errorf("stat pack %s: %w", id, err)
	}
	entries, err := pack.ReadHeader(f, fi.Size(), r.headerOpen())
	if err != nil {
		return nil, fi.Size(), fmt.Errorf("pack %s: %w", id, err)
	}
	return entries, fi.Size(), nil
}

// DecodePackHeader parses the header of a pack held in memory (check
// --read-data reads whole packs).
func (r *Repository) DecodePackHeader(data []byte) ([]pack.Entry, error) {
	return pack.ReadHeader(bytesAt(data), int64(len(data)), r.headerOpen())
}

type bytesAt []byte

func (b bytesAt) ReadAt(p []byte, off int64) (int, error) {
	if off >= int64(len(b)) {
		return 0, io.EOF
	}
	n := copy(p, b[off:])
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

// EachPackFile calls fn for every file under packs/ whose name is a pack id
// (in the right subdirectory), with its size. Other files are passed to bad
// (may be nil) with their repository-relative name.
func (r *Repository) EachPackFile(ctx context.Context, fn func(id blob.ID, size int64) error, bad func(name string)) error {
	dirs, err := r.fs.ReadDir("packs")
	if err != nil {
		return fmt.Errorf("list packs of %s: %w", r.dir, err)
	}
	for _, d := range dirs {
		sub := path.Join("packs", d.Name())
		ents, err := r.fs.ReadDir(sub)
		if err != nil {
			return fmt.Errorf("list %s: %w", sub, err)
		}
		for _, e := range ents {
			if err := ctx.Err(); err != nil {
				return err
			}
			id, err := blob.ParseID(e.Name())
			if err != nil || !strings.HasPrefix(e.Name(), d.Name()) {
				if bad != nil {
					bad(path.Join(sub, e.Name()))
				}
				continue
			}
			fi, err := e.Info()
			if errors.Is(err, fs.ErrNotExist) {
				continue
			}
			if err != nil {
				return fmt.Errorf("stat %s: %w", PackName(id), err)
			}
			if err := fn(id, fi.Size()); err != nil {
				return err
			}
		}
	}
	return nil
}

// MoveToDamaged moves a repository file (a pack or snapshot file) into
// damaged/, keeping its base name, so that nothing uses it any more.
func (r *Repository) MoveToDamaged(name string) (string, error) {
	if err := r.fs.MkdirAll(DamagedDir); err != nil {
		return "", fmt.Errorf("create %s/%s: %w", r.dir, DamagedDir, err)
	}
	to := path.Join(DamagedDir, path.Base(name))
	if err := r.fs.Rename(name, to); err != nil {
		return "", fmt.Errorf("move %s to %s: %w", name, to, err)
	}
	if err := r.fs.SyncDir(path.Dir(name)); err != nil {
		return "", fmt.Errorf("fsync directory of %s: %w", name, err)
	}
	return to, nil
}

// RebuildOptions tune RebuildIndex.
type RebuildOptions struct {
	// ReadData reads every pack whole: a pack whose bytes do not hash to its
	// name has its intact blobs copied to new packs and is moved to damaged/.
	ReadData bool
	// Log, when set, receives one line per damaged pack and per phase.
	Log io.Writer
}

// DamagedPack is a pack that RebuildIndex could not use as it was.
type DamagedPack struct {
	ID       blob.ID
	Problem  string
	Salvaged int    // intact blobs copied to new packs
	Lost     int    // blobs that could not be read (-1: unknown, the header is unreadable)
	MovedTo  string // where the file went
}

// RebuildReport says what RebuildIndex found.
type RebuildReport struct {
	Packs, Blobs, Snapshots int
	Damaged                 []DamagedPack
}

// ResetIndex prepares rebuilding index.db of the repository in dir without
// reading it (it may be missing, truncated or corrupt): it renames index.db
// to index.db.old, so that Open creates an empty index; RebuildIndex then
// fills it and removes index.db.old. If index.db.old exists already (an
// interrupted rebuild), the partial index.db is removed instead. It fails
// with index.ErrBusy while another process has index.db open. The caller
// must hold an exclusive repository lock.
func ResetIndex(dir string) error {
	if _, err := os.Stat(filepath.Join(dir, "config")); errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("%s: %w", dir, ErrNoRepository)
	}
	p := filepath.Join(dir, "index.db")
	old := p + ".old"
	if err := indexBusy(p); err != nil {
		return err
	}
	if _, err := os.Stat(p); errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if _, err := os.Stat(old); err == nil {
		if err := os.Remove(p); err != nil {
			return fmt.Errorf("remove partial %s: %w", p, err)
		}
		return nil
	}
	if err := os.Rename(p, old); err != nil {
		return fmt.Errorf("move %s aside: %w", p, err)
	}
	return nil
}

// RebuildIndex adds every pack on disk to the index from its header (the
// snapshot records were synchronised by Open), moves packs whose header
// cannot be read to damaged/, and, with ReadData, salvages packs whose
// bytes are damaged. Call it on a repository opened right after ResetIndex;
// on an existing index it only adds what is missing. It removes
// index.db.old when done. A crash leaves a partial index: run it again.
func (r *Repository) RebuildIndex(ctx context.Context, o RebuildOptions) (*RebuildReport, error) {
	logf := func(format string, args ...any) {
		if o.Log != nil {
			fmt.Fprintf(o.Log, format+"\n", args...)
		}
	}
	rep := &RebuildReport{}
	logf("reading pack headers")
	var bad []DamagedPack
	err := r.EachPackFile(ctx, func(id blob.ID, size int64) error {
		entries, _, err := r.ReadPackHeader(ctx, id)
		if err != nil {
			if errors.Is(err, pack.ErrCorrupt) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF) {
				bad = append(bad, DamagedPack{ID: id, Problem: err.Error(), Lost: -1})
				return nil
			}
			return err
		}
		if o.ReadData {
			if d, ok, err := r.verifyPack(ctx, id, entries); err != nil {
				return err
			} else if !ok {
				bad = append(bad, d)
				return nil
			}
		}
		if err := r.idx.AddPack(id, uint64(size), entries); err != nil {
			return fmt.Errorf("index pack %s: %w", id, err)
		}
		rep.Packs++
		rep.Blobs += len(entries)
		return nil
	}, nil)
	if err != nil {
		return nil, fmt.Errorf("rebuild index: %w", err)
	}
	// Salvage intact blobs of packs that fail verification, then take the
	// damaged files out of use.
	for i := range bad {
		d := &bad[i]
		if _, err := r.idx.RemovePacks(map[blob.ID]bool{d.ID: true}); err != nil {
			return nil, err
		}
		if d.Lost != -1 {
			n, err := r.salvage(ctx, d.ID)
			if err != nil {
				return nil, err
			}
			d.Salvaged = n
		}
		if err := r.Flush(ctx); err != nil {
			return nil, fmt.Errorf("rebuild index: %w", err)
		}
		to, err := r.MoveToDamaged(PackName(d.ID))
		if err != nil {
			return nil, err
		}
		d.MovedTo = to
		logf("pack %s: %s: moved to %s (%d blobs salvaged)", d.ID, d.Problem, to, d.Salvaged)
	}
	rep.Damaged = bad
	if err := r.idx.EachSnapshot(func(blob.ID, []byte) error { rep.Snapshots++; return nil }); err != nil {
		return nil, err
	}
	old := filepath.Join(r.dir, "index.db.old")
	if err := os.Remove(old); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("remove %s: %w", old, err)
	}
	return rep, nil
}

// indexBusy fails with index.ErrBusy when another process has index.db open
// (bbolt holds a flock on it).
func indexBusy(p string) error {
	f, err := os.OpenFile(p, os.O_RDWR, 0)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("open %s: %w", p, err)
	}
	defer f.Close()
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		if errors.Is(err, unix.EWOULDBLOCK) {
			return fmt.Errorf("%s: %w", p, index.ErrBusy)
		}
		return fmt.Errorf("lock %s: %w", p, err)
	}
	return unix.Flock(int(f.Fd()), unix.LOCK_UN)
}

// verifyPack reads a whole pack and checks its hash and every blob. ok is
// false when anything is wrong; d then counts the blobs that fail.
func (r *Repository) verifyPack(ctx context.Context, id blob.ID, entries []pack.Entry) (d DamagedPack, ok bool, err error) {
	data, err := backend.ReadFile(r.fs, PackName(id))
	if err != nil {
		return d, false, fmt.Errorf("read pack %s: %w", id, err)
	}
	if blob.ID(blake3.Sum256(data)) == id {
		return d, true, nil
	}
	d = DamagedPack{ID: id, Problem: "content does not match its name (bit rot)"}
	for _, e := range entries {
		if _, err := r.DecodeBlob(e.ID, e.Type, e.Storage, int(e.RawLength), data[e.Offset:e.Offset+uint64(e.Length)], nil); err != nil {
			d.Lost++
		}
	}
	return d, false, ctx.Err()
}

// salvage copies the intact blobs of a damaged pack (not indexed) into new
// packs and returns how many it copied.
func (r *Repository) salvage(ctx context.Context, id blob.ID) (int, error) {
	entries, _, err := r.ReadPackHeader(ctx, id)
	if err != nil {
		return 0, nil
	}
	n := 0
	var buf []byte
	for _, e := range entries {
		loc := index.Location{Pack: id, Type: e.Type, Storage: e.Storage, Offset: e.Offset, Length: e.Length, RawLength: e.RawLength}
		if has, err := r.HasBlob(e.ID); err != nil {
			return n, err
		} else if has {
			continue
		}
		buf, err = r.ReadBlobAt(ctx, e.ID, loc, buf)
		if err != nil {
			continue
		}
		r.mu.Lock()
		r.pending[e.ID] = struct{}{}
		r.mu.Unlock()
		if _, err := r.storeBlob(ctx, e.Type, e.ID, buf); err != nil {
			return n, fmt.Errorf("salvage blob %s of pack %s: %w", e.ID.Short(), id.Short(), err)
		}
		n++
	}
	return n, nil
}

// CheckIndexEntries compares the index with the header of pack id and
// returns one message per disagreement (a blob indexed in this pack at
// another place, or with other lengths or type).
func (r *Repository) CheckIndexEntries(ctx context.Context, id blob.ID, entries []pack.Entry) ([]string, error) {
	var out []string
	for _, e := range entries {
		loc, ok, err := r.idx.Lookup(e.ID)
		if err != nil {
			return out, err
		}
		if !ok || loc.Pack != id {
			continue
		}
		if loc.Offset != e.Offset || loc.Length != e.Length || loc.RawLength != e.RawLength || loc.Type != e.Type || loc.Storage != e.Storage {
			out = append(out, fmt.Sprintf("pack %s: index entry of blob %s disagrees with the pack header (run `stasis repair index`)", id.Short(), e.ID))
		}
	}
	return out, nil
}
