package repo

// Lost or damaged compression dictionaries (docs/damage.md).
//
// A data blob compressed with a dictionary names it only by its 32-bit zstd
// id, inside the (sealed) frame: nothing but decoding tells which blobs need
// which dictionary. Every snapshot therefore records the dictionaries the
// repository had when it was saved (Snapshot.Dicts). A dictionary a
// snapshot lists that is missing from dicts/ or cannot be loaded, or a
// dictionary file that cannot be loaded at all, makes the repository
// *degraded* (Degraded):
//
//   - check names the dictionary and every snapshot that needs it (with
//     --read-data also the files, by decoding);
//   - an indexed blob is not trusted for deduplication before it decoded
//     (BlobUsable): a backup stores the data of an undecodable blob anew
//     (ReplaceBlob), so that its snapshot restores;
//   - LoadBlob reads another stored copy of a blob whose indexed copy does
//     not decode (the index keeps the first location it learnt of a blob,
//     which is the undecodable one until `repair index --read-data` drops
//     it);
//   - `repair index --read-data` drops undecodable blobs from the index and
//     moves dictionary files that cannot be loaded to damaged/, and `repair
//     snapshots` marks the files that needed them and records the
//     dictionaries the repaired snapshots need now.

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"path"
	"sort"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/klauspost/compress/zstd"
	"github.com/stasisbackup/stasis/internal/index"
	"github.com/stasisbackup/stasis/repo/blob"
)

// ErrDictionaryMissing is matched (with ErrCorruptBlob) by the error of a
// blob compressed with a dictionary the repository does not have.
var ErrDictionaryMissing = errors.New("its compression dictionary is missing or damaged")

// degradedState is a Repository's view of lost dictionaries.
type degradedState struct {
	mu       sync.Mutex
	known    bool // degraded has been computed
	degraded bool
	state    atomic.Int32 // 0: not computed, 1: healthy, 2: degraded (Degraded's fast path)

	sawMissing atomic.Bool   // a blob named a dictionary the repository lacks
	indexGen   atomic.Uint64 // index files this Repository wrote (see alternates)

	vmu     sync.Mutex
	verdict map[blob.ID]bool           // BlobUsable's answers
	good    map[blob.ID]index.Location // a copy that decodes, where the index's does not
	alt     map[blob.ID][]index.Location
	scanned map[string]bool // index files alternates has read
	scanGen uint64          // indexGen when it last listed them
}

// reset forgets everything learnt (the index was rebuilt).
func (d *degradedState) reset() {
	d.mu.Lock()
	d.known = false
	d.state.Store(0)
	d.mu.Unlock()
	d.vmu.Lock()
	d.verdict, d.good, d.alt, d.scanned = nil, nil, nil, nil
	d.vmu.Unlock()
}

// dictFileID returns the id of a dictionary file name (dicts/<id>).
func dictFileID(name string) string { return strings.TrimPrefix(name, dictDir+"/") }

// DictIDs returns the ids (names under dicts/) of the dictionaries this
// Repository decodes with, sorted.
func (r *Repository) DictIDs() []string {
	c := r.comp.Load()
	ids := make([]string, 0, len(c.files))
	for name := range c.files {
		ids = append(ids, dictFileID(name))
	}
	sort.Strings(ids)
	return ids
}

// snapshotDicts returns what SaveSnapshot records in Snapshot.Dicts: the
// dictionaries this Repository decodes with, and those another client
// stored since it opened (a backup may have deduplicated against their
// blobs), but none known to be damaged.
func (r *Repository) snapshotDicts(ctx context.Context) []string {
	c := r.comp.Load()
	set := map[string]bool{}
	for name := range c.files {
		set[dictFileID(name)] = true
	}
	if names, err := r.DictNames(ctx); err == nil {
		for _, name := range names {
			if _, bad := c.bad[name]; !bad {
				set[dictFileID(name)] = true
			}
		}
	}
	if len(set) == 0 {
		return nil
	}
	ids := make([]string, 0, len(set))
	for id := range set {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	return ids
}

// dictStatus says whether dictionary file id loaded ("" then), or why not.
// A dictionary this Repository has not seen (another client made it after
// this one opened) is loaded first.
func (r *Repository) dictStatus(id string) string {
	name := path.Join(dictDir, id)
	for try := 0; ; try++ {
		c := r.comp.Load()
		if _, ok := c.files[name]; ok {
			return ""
		}
		if why, ok := c.bad[name]; ok {
			return "which is damaged (" + why + ")"
		}
		if try > 0 || !r.reloadDicts(c) {
			return "which is missing (" + name + " is gone)"
		}
	}
}

// SnapshotDictProblems returns one message per compression dictionary that
// snapshot sn needs (Snapshot.Dicts) and that is missing or damaged: data
// blobs compressed with it cannot be decoded, so the files whose chunks
// they are cannot be restored. A snapshot written before stasis recorded
// its dictionaries lists none.
func (r *Repository) SnapshotDictProblems(sn *Snapshot) []string {
	var out []string
	for _, id := range sn.Dicts {
		if why := r.dictStatus(id); why != "" {
			out = append(out, fmt.Sprintf("snapshot %s needs compression dictionary %s, %s: the files whose chunks were compressed with it cannot be restored "+
				"(`stasis check --read-data` names them); restore %s from a copy or tape, or run `stasis repair index --read-data` and then `stasis repair snapshots --forget` "+
				"(the next backup stores their data again)", sn.ID.Short(), id, why, path.Join(dictDir, id)))
		}
	}
	return out
}

// SnapshotLostDicts returns the compression dictionaries snapshot sn needs
// that are missing or damaged, each as "<id>, which is missing (…)".
func (r *Repository) SnapshotLostDicts(sn *Snapshot) []string {
	var out []string
	for _, id := range sn.Dicts {
		if why := r.dictStatus(id); why != "" {
			out = append(out, id+", "+why)
		}
	}
	return out
}

// Degraded reports whether a compression dictionary that a snapshot needs
// is missing or damaged, or a dictionary file cannot be loaded, or a blob
// named a dictionary the repository does not have. Computed once per
// Repository (it lists the snapshots), except that a blob naming a missing
// dictionary makes it degraded at once.
func (r *Repository) Degraded(ctx context.Context) (bool, error) {
	if r.deg.sawMissing.Load() {
		return true, nil
	}
	switch r.deg.state.Load() {
	case 1:
		return false, nil
	case 2:
		return true, nil
	}
	r.deg.mu.Lock()
	defer r.deg.mu.Unlock()
	if r.deg.known {
		return r.deg.degraded, nil
	}
	deg := len(r.comp.Load().bad) > 0
	if !deg {
		snaps, _, err := r.Snapshots(ctx)
		if err != nil {
			return false, err
		}
		for _, sn := range snaps {
			if len(r.SnapshotDictProblems(sn)) > 0 {
				deg = true
				break
			}
		}
	}
	r.deg.known, r.deg.degraded = true, deg
	if deg {
		r.deg.state.Store(2)
	} else {
		r.deg.state.Store(1)
	}
	return deg, nil
}

// isDamage reports whether a blob read failed because of what is stored
// (as opposed to a failing storage or a cancelled context).
func isDamage(err error) bool {
	return errors.Is(err, ErrCorruptBlob) || errors.Is(err, fs.ErrNotExist) ||
		errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF)
}

// BlobUsable reports whether an indexed blob may be deduplicated against:
// always true without reading anything unless the repository is Degraded;
// then only when the blob (its indexed copy, or another stored copy)
// decodes. False for a blob that is not indexed. Answers are remembered.
//
// SaveBlob and HasBlob should consult it for a blob they find indexed; a
// caller that gets false stores the data with ReplaceBlob.
func (r *Repository) BlobUsable(ctx context.Context, id blob.ID) (bool, error) {
	deg, err := r.Degraded(ctx)
	if err != nil || !deg {
		return err == nil, err
	}
	r.mu.Lock()
	_, pending := r.pending[id]
	r.mu.Unlock()
	if pending {
		return true, nil // this process is storing it
	}
	r.deg.vmu.Lock()
	v, ok := r.deg.verdict[id]
	r.deg.vmu.Unlock()
	if ok {
		return v, nil
	}
	loc, ok, err := r.LookupBlob(ctx, id)
	if err != nil || !ok {
		return false, err
	}
	_, err = r.ReadBlobAt(ctx, id, loc, nil)
	if err != nil && isDamage(err) {
		_, err = r.loadOtherCopy(ctx, id, loc, nil, err)
	}
	if err != nil && !isDamage(err) {
		return false, err
	}
	r.setVerdict(id, err == nil)
	return err == nil, nil
}

func (r *Repository) setVerdict(id blob.ID, ok bool) {
	r.deg.vmu.Lock()
	if r.deg.verdict == nil {
		r.deg.verdict = map[blob.ID]bool{}
	}
	r.deg.verdict[id] = ok
	r.deg.vmu.Unlock()
}

// ReplaceBlob stores data under id (which must be r.Hash(data)) although a
// blob with that id is indexed: the caller found the indexed copy unusable
// (BlobUsable false). The index keeps its first location; LoadBlob finds
// the new copy when that one does not decode, and `repair index
// --read-data` drops the undecodable one. Nothing is stored when this
// process is storing id already.
func (r *Repository) ReplaceBlob(ctx context.Context, t blob.Type, id blob.ID, data []byte) (SaveResult, error) {
	if err := ctx.Err(); err != nil {
		return SaveResult{}, err
	}
	if !r.claimPending(id) {
		return SaveResult{}, nil // another goroutine is saving it
	}
	res, err := r.storeBlob(ctx, t, id, data)
	if err == nil {
		r.setVerdict(id, true)
	}
	return res, err
}

// loadOtherCopy is LoadBlob's way out when the indexed copy of blob id (at
// loc) failed with damage err: in a degraded repository it reads another
// stored copy (one a backup stored with ReplaceBlob). It returns err when
// there is none that decodes.
func (r *Repository) loadOtherCopy(ctx context.Context, id blob.ID, loc index.Location, buf []byte, err error) ([]byte, error) {
	if deg, derr := r.Degraded(ctx); derr != nil || !deg {
		return nil, err
	}
	r.deg.vmu.Lock()
	good, ok := r.deg.good[id]
	r.deg.vmu.Unlock()
	cands := r.alternates(ctx, id)
	if ok {
		cands = append([]index.Location{good}, cands...)
	}
	for _, c := range cands {
		if c == loc {
			continue
		}
		data, rerr := r.ReadBlobAt(ctx, id, c, buf)
		if rerr == nil {
			r.deg.vmu.Lock()
			if r.deg.good == nil {
				r.deg.good = map[blob.ID]index.Location{}
			}
			r.deg.good[id] = c
			r.deg.vmu.Unlock()
			return data, nil
		}
		if !isDamage(rerr) {
			return nil, rerr
		}
	}
	return nil, err
}

// OtherCopies returns the packs of the stored copies of blob id other than
// the one the index names, in a degraded repository (a lost dictionary:
// a later backup stored a copy that decodes, ReplaceBlob); in a healthy
// one nil. Tape export lists them in a snapshot's needs, so that a tape
// restore has the copy that decodes.
func (r *Repository) OtherCopies(ctx context.Context, id blob.ID) ([]blob.ID, error) {
	if deg, err := r.Degraded(ctx); err != nil || !deg {
		return nil, err
	}
	var packs []blob.ID
	for _, l := range r.alternates(ctx, id) {
		packs = append(packs, l.Pack)
	}
	return packs, nil
}

// alternates returns the stored copies of blob id other than the one the
// index names: from the index files (read once, then again after this
// Repository wrote more) and from this process's packs not yet in an index
// file. Only a degraded repository needs them; reading every index file
// costs what rebuilding the cache does, once.
func (r *Repository) alternates(ctx context.Context, id blob.ID) []index.Location {
	r.deg.vmu.Lock()
	if gen := r.deg.indexGen.Load(); r.deg.scanned == nil || gen != r.deg.scanGen {
		r.scanAlternates(ctx)
		r.deg.scanGen = gen
	}
	out := append([]index.Location(nil), r.deg.alt[id]...)
	r.deg.vmu.Unlock()
	r.unsavedMu.Lock()
	for _, p := range r.unsaved.packs {
		for _, e := range p.Entries {
			if e.ID == id {
				out = append(out, index.LocationOf(p.ID, e))
			}
		}
	}
	r.unsavedMu.Unlock()
	return out
}

// scanAlternates reads the index files not read yet and keeps every entry
// whose location is not the one the index holds. r.deg.vmu is held.
func (r *Repository) scanAlternates(ctx context.Context) {
	if r.deg.scanned == nil {
		r.deg.scanned = map[string]bool{}
	}
	if r.deg.alt == nil {
		r.deg.alt = map[blob.ID][]index.Location{}
	}
	names, err := r.IndexFiles(ctx)
	if err != nil {
		return
	}
	for _, n := range names {
		if r.deg.scanned[n] || ctx.Err() != nil {
			continue
		}
		packs, err := r.LoadIndexFile(ctx, n)
		if err != nil {
			continue // check names it
		}
		r.deg.scanned[n] = true
		for _, p := range packs {
			for _, e := range p.Entries {
				if loc, ok, err := r.idx.Lookup(e.ID); err == nil && ok && loc.Pack == p.ID && loc.Offset == e.Offset {
					continue
				}
				r.deg.alt[e.ID] = append(r.deg.alt[e.ID], index.LocationOf(p.ID, e))
			}
		}
	}
}

// decompressError is the error of a zstd frame that did not decode: one
// that names a dictionary c does not have says so (and makes the
// repository degraded).
func (r *Repository) decompressError(c *compressor, id blob.ID, frame []byte, err error) error {
	var h zstd.Header
	if h.Decode(frame) == nil && h.DictionaryID != 0 {
		if _, ok := c.ids[h.DictionaryID]; !ok {
			r.deg.sawMissing.Store(true)
			return fmt.Errorf("blob %s: %w: it was compressed with compression dictionary %d, which the repository does not have: %w (see `stasis check`)",
				id, ErrCorruptBlob, h.DictionaryID, ErrDictionaryMissing)
		}
	}
	return fmt.Errorf("blob %s: %w: decompress: %v", id, ErrCorruptBlob, err)
}

// moveDamagedDicts moves the dictionary files that cannot be loaded to
// damaged/ (repair, once the blobs that need them are out of the index)
// and returns what it moved.
func (r *Repository) moveDamagedDicts(ctx context.Context) ([]string, error) {
	c := r.comp.Load()
	names := make([]string, 0, len(c.bad))
	for name := range c.bad {
		names = append(names, name)
	}
	sort.Strings(names)
	var moved []string
	for _, name := range names {
		if _, err := r.st.Stat(ctx, name); errors.Is(err, fs.ErrNotExist) {
			continue
		}
		to, err := r.MoveToDamaged(ctx, name)
		if err != nil {
			return moved, err
		}
		moved = append(moved, fmt.Sprintf("compression dictionary %s: %s; moved to %s", name, c.bad[name], to))
	}
	return moved, nil
}
