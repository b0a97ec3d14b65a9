package repo

// Primitives of check and repair: reading pack headers through the
// repository (so that a sealed header is opened with the repository's key),
// listing the packs, and rebuilding the index files from the packs alone.

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path"
	"sort"

	"github.com/stasisbackup/stasis/internal/index"
	"github.com/stasisbackup/stasis/internal/pack"
	"github.com/stasisbackup/stasis/repo/backend"
	"github.com/stasisbackup/stasis/repo/blob"
	"github.com/zeebo/blake3"
)

// DamagedDir is the directory (relative to the repository) into which repair
// moves objects it takes out of use: packs that cannot be read and snapshot
// files that do not decode. Nothing reads them; inspect or delete them.
const DamagedDir = "damaged"

// ReadPackHeader reads and opens the header of pack id and returns its
// entries and the pack's size. Errors about malformed bytes match
// pack.ErrCorrupt; a missing pack matches fs.ErrNotExist.
func (r *Repository) ReadPackHeader(ctx context.Context, id blob.ID) ([]pack.Entry, int64, error) {
	if err := ctx.Err(); err != nil {
		return nil, 0, err
	}
	name := PackName(id)
	fi, err := r.st.Stat(ctx, name)
	if err != nil {
		return nil, 0, fmt.Errorf("pack %s: %w", id, err)
	}
	entries, err := pack.ReadHeader(objectReaderAt{ctx, r.st, name}, fi.Size, r.headerOpen())
	if err != nil {
		return nil, fi.Size, fmt.Errorf("pack %s: %w", id, err)
	}
	return entries, fi.Size, nil
}

// objectReaderAt reads an object with ranged Gets.
type objectReaderAt struct {
	ctx  context.Context
	st   backend.Storage
	name string
}

func (o objectReaderAt) ReadAt(p []byte, off int64) (int, error) {
	if err := backend.ReadAt(o.ctx, o.st, o.name, p, off); err != nil {
		if errors.Is(err, io.ErrUnexpectedEOF) {
			return 0, io.EOF
		}
		return 0, err
	}
	return len(p), nil
}

// DecodePackHeader parses the header of a pack held in memory (check
// --read-data reads whole packs).
func (r *Repository) DecodePackHeader(data []byte) ([]pack.Entry, error) {
	return pack.ReadHeader(bytes.NewReader(data), int64(len(data)), r.headerOpen())
}

// EachPackFile calls fn for every object under packs/ whose name is a pack
// id (in the right subdirectory), with its size. Other objects are passed
// to bad (may be nil) with their repository-relative name.
func (r *Repository) EachPackFile(ctx context.Context, fn func(id blob.ID, size int64) error, bad func(name string)) error {
	var list []backend.ObjectInfo
	err := r.st.List(ctx, "packs/", func(o backend.ObjectInfo) error { list = append(list, o); return nil })
	if err != nil {
		return fmt.Errorf("list packs of %s: %w", r.loc, err)
	}
	sort.Slice(list, func(i, j int) bool { return list[i].Name < list[j].Name })
	for _, o := range list {
		if err := ctx.Err(); err != nil {
			return err
		}
		id, err := blob.ParseID(path.Base(o.Name))
		if err != nil || PackName(id) != o.Name {
			if bad != nil {
				bad(o.Name)
			}
			continue
		}
		if err := fn(id, o.Size); err != nil {
			return err
		}
	}
	return nil
}

// MoveToDamaged moves a repository object (a pack or snapshot file) into
// damaged/, keeping its base name, so that nothing uses it any more: the
// copy is stored before the original is deleted.
func (r *Repository) MoveToDamaged(ctx context.Context, name string) (string, error) {
	to := path.Join(DamagedDir, path.Base(name))
	if err := r.copyObject(ctx, name, to); err != nil {
		return "", fmt.Errorf("move %s to %s: %w", name, to, err)
	}
	if err := r.st.Delete(ctx, name); err != nil {
		return "", fmt.Errorf("move %s to %s: delete the original: %w", name, to, err)
	}
	if id, err := blob.ParseID(path.Base(name)); err == nil {
		r.packs.forget(id)
	}
	return to, nil
}

// copyObject copies an object through a local temp file.
func (r *Repository) copyObject(ctx context.Context, from, to string) error {
	rc, err := r.st.Get(ctx, from, 0, -1)
	if err != nil {
		return err
	}
	defer rc.Close()
	f, err := r.createTemp()
	if err != nil {
		return err
	}
	n, err := io.Copy(f, rc)
	if err != nil {
		f.Close()
		os.Remove(f.Name())
		return fmt.Errorf("read %s: %w", from, err)
	}
	return r.storeFile(ctx, f, to, n)
}

// RebuildOptions tune RebuildIndex.
type RebuildOptions struct {
	// ReadData reads every pack whole: a pack whose bytes do not hash to its
	// name has its intact blobs copied to new packs and is moved to damaged/.
	ReadData bool
	// Log, when set, receives one record per damaged pack and per phase.
	Log *slog.Logger
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
	// Dropped (with ReadData) are blobs of intact packs that do not decode,
	// as blobs compressed with a lost dictionary: they are left out of the
	// index, so that `repair snapshots` marks the files that need them and
	// the next backup stores their data again.
	Dropped []DroppedBlob
	// Dicts (with ReadData) are the dictionary files that could not be
	// loaded, moved to damaged/ (their blobs are in Dropped).
	Dicts []string
}

// DroppedBlob is a blob RebuildIndex left out of the index.
type DroppedBlob struct {
	ID, Pack blob.ID
	Problem  string
}

// RebuildIndex replaces the repository's index files by new ones made from
// the pack headers, and rebuilds the cache from them. Packs whose header
// cannot be read, and with ReadData packs whose bytes are damaged, have
// their intact blobs copied to new packs (found through the header, or,
// when the header is lost, through the old index files) and are moved to
// damaged/. The old index files are deleted only after the new ones are
// stored, so a crash leaves a repository in which every pack is still
// indexed (run it again). The caller holds an exclusive lock.
func (r *Repository) RebuildIndex(ctx context.Context, o RebuildOptions) (*RebuildReport, error) {
	log := o.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	// Read no index file: one may be damaged, and all are replaced.
	if err := r.writableIndex(ctx, true); err != nil {
		return nil, fmt.Errorf("rebuild index: %w", err)
	}
	old, err := r.IndexFiles(ctx)
	if err != nil {
		return nil, err
	}
	oldIndex := r.indexOfPacks(ctx, old, log)
	if err := r.idx.Reset(); err != nil {
		return nil, fmt.Errorf("rebuild index: reset the cache: %w", err)
	}
	rep := &RebuildReport{}
	log.Info("reading pack headers")
	w := &indexWriter{r: r, written: map[string]bool{}}
	bad, err := r.indexPackHeaders(ctx, w, o.ReadData, log, rep)
	if err != nil {
		return nil, fmt.Errorf("rebuild index: %w", err)
	}
	// Salvage intact blobs of damaged packs, then take them out of use.
	for i := range bad {
		if err := r.retireDamagedPack(ctx, &bad[i], oldIndex[bad[i].ID], log); err != nil {
			return nil, err
		}
	}
	rep.Damaged = bad
	if o.ReadData {
		// Their blobs are out of the index now.
		if rep.Dicts, err = r.moveDamagedDicts(ctx); err != nil {
			return nil, fmt.Errorf("rebuild index: %w", err)
		}
		for _, m := range rep.Dicts {
			log.Info(m)
		}
	}
	defer r.deg.reset()
	if err := r.removeOldIndexFiles(ctx, old, w.written); err != nil {
		return nil, err
	}
	ids, _, err := r.SnapshotIDs(ctx)
	if err != nil {
		return nil, err
	}
	rep.Snapshots = len(ids)
	return rep, nil
}

// indexWriter stores the packs RebuildIndex indexes in new index files of
// packsPerIndexFile packs each, and records them in the cache.
type indexWriter struct {
	r       *Repository
	batch   []index.IndexedPack
	written map[string]bool // the index files stored
}

// add adds a pack, storing an index file when the batch is full.
func (w *indexWriter) add(ctx context.Context, p index.IndexedPack) error {
	w.batch = append(w.batch, p)
	if len(w.batch) >= packsPerIndexFile {
		return w.flush(ctx)
	}
	return nil
}

// flush stores the packs added since the last index file in a new one.
func (w *indexWriter) flush(ctx context.Context) error {
	if len(w.batch) == 0 {
		return nil
	}
	name, err := w.r.SaveIndexFile(ctx, w.batch)
	if err != nil {
		return err
	}
	if err := w.r.idx.AddFile(name, w.batch); err != nil {
		return fmt.Errorf("record index file %s in the cache: %w", name, err)
	}
	w.written[name] = true
	w.r.markKnown(name)
	w.batch = nil
	return nil
}

// indexPackHeaders reads the header of every pack file (with readData the
// whole pack, verifyPack) and indexes the pack through w. It returns the
// packs that cannot be indexed as they are: a header that does not decode,
// or with readData bytes that do not hash to the pack's name. Blobs of
// intact packs that do not decode are left out (rep.Dropped).
func (r *Repository) indexPackHeaders(ctx context.Context, w *indexWriter, readData bool, log *slog.Logger, rep *RebuildReport) ([]DamagedPack, error) {
	var bad []DamagedPack
	err := r.EachPackFile(ctx, func(id blob.ID, size int64) error {
		entries, d, err := r.readHeaderOrDamaged(ctx, id)
		if err != nil {
			return err
		} else if d != nil {
			bad = append(bad, *d)
			return nil
		}
		if readData {
			d, ok, dropped, err := r.verifyPack(ctx, id, entries)
			if err != nil {
				return err
			} else if !ok {
				bad = append(bad, d)
				return nil
			}
			if len(dropped) > 0 {
				entries = keepDecodable(entries, dropped)
				rep.Dropped = append(rep.Dropped, dropped...)
				log.Info(fmt.Sprintf("pack %s: %d blobs do not decode (first: %s): left out of the index", id, len(dropped), dropped[0].Problem),
					"pack", id.String(), "dropped", len(dropped))
			}
		}
		rep.Packs++
		rep.Blobs += len(entries)
		return w.add(ctx, index.IndexedPack{ID: id, Size: uint64(size), Entries: entries})
	}, nil)
	if err == nil {
		err = w.flush(ctx)
	}
	return bad, err
}

// retireDamagedPack salvages the intact blobs of damaged pack d (found
// through its header or known, the entries of an old index file) into new
// packs, stores them, and moves the pack to damaged/, filling in d.
func (r *Repository) retireDamagedPack(ctx context.Context, d *DamagedPack, known []pack.Entry, log *slog.Logger) error {
	saved, lost, err := r.salvage(ctx, d.ID, known)
	if err != nil {
		return err
	}
	d.Salvaged = saved
	if lost >= 0 {
		d.Lost = lost
	}
	if err := r.Flush(ctx); err != nil {
		return fmt.Errorf("rebuild index: %w", err)
	}
	to, err := r.MoveToDamaged(ctx, PackName(d.ID))
	if err != nil {
		return err
	}
	d.MovedTo = to
	lostMsg := "the number lost is unknown (no header and no old index entry)"
	if d.Lost >= 0 {
		lostMsg = fmt.Sprintf("%d lost", d.Lost)
	}
	log.Info(fmt.Sprintf("pack %s: %s: moved to %s (%d blobs salvaged, %s)", d.ID, d.Problem, to, d.Salvaged, lostMsg),
		"pack", d.ID.String(), "moved_to", to, "salvaged", d.Salvaged, "lost", d.Lost)
	return nil
}

// removeOldIndexFiles deletes the index files of old that RebuildIndex did
// not write (written) from the repository and the cache, and the index of
// an older stasis. Index files that other clients stored meanwhile (listed
// now, not in old) are kept.
func (r *Repository) removeOldIndexFiles(ctx context.Context, old []string, written map[string]bool) error {
	now, err := r.IndexFiles(ctx)
	if err != nil {
		return err
	}
	isNew := map[string]bool{}
	for _, n := range now {
		isNew[n] = true
	}
	for _, n := range old {
		isNew[n] = false
	}
	for n := range written {
		isNew[n] = true
	}
	var gone []string
	for _, n := range old {
		if isNew[n] {
			continue
		}
		if err := r.st.Delete(ctx, n); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("rebuild index: delete old index file %s: %w", n, err)
		}
		gone = append(gone, n)
	}
	if err := r.idx.RemoveFiles(gone); err != nil {
		return err
	}
	// The index of an older stasis in the repository is replaced now.
	for _, n := range []string{legacyIndex, legacyIndex + ".old"} {
		if err := r.st.Delete(ctx, n); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("rebuild index: remove the old %s: %w", n, err)
		}
	}
	return nil
}

// indexOfPacks reads the old index files into a map from pack to its
// entries, for salvaging packs whose header is lost. Unreadable index
// files are logged and skipped (the packs' own headers are the truth; this
// is only a second source).
func (r *Repository) indexOfPacks(ctx context.Context, names []string, log *slog.Logger) map[blob.ID][]pack.Entry {
	m := map[blob.ID][]pack.Entry{}
	for _, n := range names {
		packs, err := r.LoadIndexFile(ctx, n)
		if err != nil {
			log.Info(fmt.Sprintf("old %v: not used for salvage", err), "index_file", n)
			continue
		}
		for _, p := range packs {
			m[p.ID] = p.Entries
		}
	}
	return m
}

// maxPackFile bounds what is read of one pack (the largest pack_size is
// 1 GiB; a pack exceeds it only by its header).
const maxPackFile = 1<<30 + pack.MaxHeaderSize + 1<<20

// verifyPack reads a whole pack and checks its hash and every blob. ok is
// false when anything is wrong; d then counts the blobs that fail.
//
// A pack whose bytes are intact may still hold blobs that do not decode:
// compressed with a dictionary that is lost, or written wrong. They are
// returned in dropped (ok stays true): the index must not name them.
func (r *Repository) verifyPack(ctx context.Context, id blob.ID, entries []pack.Entry) (d DamagedPack, ok bool, dropped []DroppedBlob, err error) {
	data, err := backend.ReadAll(ctx, r.st, PackName(id), maxPackFile)
	if err != nil {
		return d, false, nil, fmt.Errorf("read pack %s: %w", id, err)
	}
	if blob.ID(blake3.Sum256(data)) == id {
		var buf []byte
		dec := r.NewBlobDecoder()
		for _, e := range entries {
			out, err := dec.Decode(id, e, data[e.Offset:e.Offset+uint64(e.Length)], buf)
			if err != nil {
				dropped = append(dropped, DroppedBlob{ID: e.ID, Pack: id, Problem: err.Error()})
				continue
			}
			buf = out
		}
		return d, true, dropped, ctx.Err()
	}
	d = DamagedPack{ID: id, Problem: "content does not match its name (bit rot)"}
	dec := r.NewBlobDecoder()
	for _, e := range entries {
		if _, err := dec.Decode(id, e, data[e.Offset:e.Offset+uint64(e.Length)], nil); err != nil {
			d.Lost++
		}
	}
	return d, false, nil, ctx.Err()
}

// keepDecodable returns entries without the dropped ones.
func keepDecodable(entries []pack.Entry, dropped []DroppedBlob) []pack.Entry {
	drop := make(map[blob.ID]bool, len(dropped))
	for _, d := range dropped {
		drop[d.ID] = true
	}
	var keep []pack.Entry
	for _, e := range entries {
		if !drop[e.ID] {
			keep = append(keep, e)
		}
	}
	return keep
}

// salvage copies the intact blobs of a damaged pack (not indexed) into new
// packs. It finds them through the pack's header or, when that is lost,
// through known (the entries an old index file recorded for the pack); a
// blob is intact when its bytes are there and decode to its id. It returns
// how many blobs it saved and how many it could not (-1: unknown, neither
// a header nor an old index entry).
func (r *Repository) salvage(ctx context.Context, id blob.ID, known []pack.Entry) (saved, lost int, err error) {
	entries, _, herr := r.ReadPackHeader(ctx, id)
	if herr != nil {
		entries = known
	}
	if entries == nil {
		return 0, -1, nil
	}
	var buf []byte
	for _, e := range entries {
		if has, err := r.HasBlob(e.ID); err != nil {
			return saved, lost, err
		} else if has {
			continue
		}
		loc := index.LocationOf(id, e)
		buf, err = r.ReadBlobAt(ctx, e.ID, loc, buf)
		if err != nil {
			if ctx.Err() != nil {
				return saved, lost, ctx.Err()
			}
			lost++
			continue
		}
		r.mu.Lock()
		r.pending[e.ID] = struct{}{}
		r.mu.Unlock()
		if _, err := r.storeBlob(ctx, e.Type, e.ID, buf); err != nil {
			return saved, lost, fmt.Errorf("salvage blob %s of pack %s: %w", e.ID.Short(), id.Short(), err)
		}
		saved++
	}
	return saved, lost, nil
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
		if loc.Offset != e.Offset || loc.Length != e.Length || loc.RawLength != e.RawLength || loc.Type != e.Type || loc.Storage != e.Storage || loc.Inner != e.Inner {
			out = append(out, fmt.Sprintf("pack %s: index entry of blob %s disagrees with the pack header (run `stasis repair index`)", id.Short(), e.ID))
		}
	}
	return out, nil
}
