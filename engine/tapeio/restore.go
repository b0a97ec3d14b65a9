package tapeio

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/stasisbackup/stasis/engine"
	"github.com/stasisbackup/stasis/engine/tape"
	"github.com/stasisbackup/stasis/repo"
	"github.com/stasisbackup/stasis/repo/backend"
)

// RestoreOptions tune Restore.
type RestoreOptions struct {
	Read ReadOptions
	// Snapshot is "latest", a snapshot id or a unique prefix of one;
	// ignored when At is set.
	Snapshot string
	// At picks the newest snapshot taken at or before it.
	At time.Time
	// Open opens the spool (it needs the password of an encrypted
	// repository).
	Open repo.OpenOptions
	// SpoolDir is where the needed packs are kept while restoring (a new
	// temporary directory below it, removed at the end); "" is os.TempDir.
	// When every needed volume is a regular file, the packs are read in
	// place instead and the spool holds only the index cache.
	SpoolDir string
	// Spool copies the needed members into the spool even when the
	// volumes are regular files (volumes on a tape device always are).
	Spool bool
	// Restore says where and what to restore.
	Restore engine.RestoreOptions
	// Log, when set, receives one record per volume read and one when the
	// restore starts; nil logs nothing.
	Log *slog.Logger
}

// RestoreResult says what Restore did.
type RestoreResult struct {
	*engine.RestoreResult
	SnapshotID   string
	SnapshotTime time.Time
	// VolumesRead lists the volumes read for data; VolumesNeeded those
	// holding members the snapshot needs; MissingVolumes those of them
	// that were not given.
	VolumesRead, VolumesNeeded, MissingVolumes []int
	// Members and Bytes count the members spooled.
	Members int
	Bytes   int64
	// Bad lists needed members that were damaged, truncated or missing.
	Bad []tape.Problem
}

// errEnough stops reading a volume once every needed member of it was read.
var errEnough = errors.New("every needed member was read")

// Restore restores one snapshot straight from the volume files paths
// (given in any order), without a repository.
//
// It reads the start of every volume given (label and catalog copies) and,
// for the last volume of a set, the catalog at its end; from the catalogs
// and their notes it picks the snapshot and learns which packs it needs and
// on which volumes they are. Then it reads only those volumes, in order,
// once each, stopping a volume after its last needed member, and keeps the
// needed members (packs, the snapshot file, config and key files) in a
// temporary spool directory laid out like a repository, whose index it
// holds in memory, read from the packs' headers; engine.Restore restores
// from it, verifying every chunk. A damaged or missing member costs only
// the files whose data is in it: every other file is restored, and the
// result names the rest.
func Restore(ctx context.Context, paths []string, o RestoreOptions) (*RestoreResult, error) {
	log := o.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	set, err := openSet(ctx, paths, o.Read)
	if err != nil {
		return nil, fmt.Errorf("tape restore: %w", err)
	}
	snapEntry, note, err := pickSnapshot(set.index, set.known, o)
	if err != nil {
		return nil, fmt.Errorf("tape restore: %w", err)
	}
	res := &RestoreResult{SnapshotID: strings.TrimPrefix(snapEntry.Name, "snapshots/")}
	if note.Time != nil {
		res.SnapshotTime = *note.Time
	}
	plan := planRestore(set, snapEntry, note, res)

	spool, err := os.MkdirTemp(o.SpoolDir, "stasis-tape-restore-")
	if err != nil {
		return res, fmt.Errorf("tape restore: create the spool directory: %w", err)
	}
	defer os.RemoveAll(spool)
	var st repo.Storage
	var keep keeper
	if !o.Spool && regularFiles(set, res.VolumesNeeded) {
		ip := newInPlace(filepath.Join(spool, "repo"))
		defer ip.Close()
		st, keep = ip, inPlaceKeeper{ip}
	} else {
		sc := backend.NewScratch(filepath.Join(spool, "repo")) // removed at the end: no fsyncs
		st, keep = sc, spoolKeeper{sc}
	}
	for _, seq := range res.VolumesNeeded {
		if v := set.bySeq[seq]; v != nil {
			if err := spoolVolume(ctx, keep, v, set.known, plan, o.Read, log, res); err != nil {
				return res, err
			}
		}
	}
	sort.Slice(res.Bad, func(i, j int) bool { return res.Bad[i].Name < res.Bad[j].Name })
	for _, name := range []string{"config", snapEntry.Name} {
		if ok, err := repo.ObjectExists(ctx, st, name); err != nil || !ok {
			return res, fmt.Errorf("tape restore: %s of snapshot %s could not be read from the volumes: %s", name, res.SnapshotID, problems(res.Bad))
		}
	}
	return res, restoreFromSpool(ctx, st, spool, o, log, res)
}

// keeper keeps the needed members of volumes as they are read: copied into
// the spool, or recorded where they are in a volume file.
type keeper interface {
	// keep keeps member e of volume v, read from r, and returns its size.
	keep(ctx context.Context, v *VolumeFile, e tape.Entry, r io.Reader) (int64, error)
	// drop forgets a member kept before the volume's check found it bad.
	drop(ctx context.Context, name string)
}

// spoolKeeper copies members into the spool.
type spoolKeeper struct{ st repo.Storage }

func (k spoolKeeper) keep(ctx context.Context, v *VolumeFile, e tape.Entry, r io.Reader) (int64, error) {
	return importMember(ctx, k.st, e.Name, r)
}

func (k spoolKeeper) drop(ctx context.Context, name string) { k.st.Delete(ctx, name) }

// inPlaceKeeper reads each member through (so that it is checked against
// its catalog) and records where it is in the volume file.
type inPlaceKeeper struct{ ip *inPlace }

func (k inPlaceKeeper) keep(ctx context.Context, v *VolumeFile, e tape.Entry, r io.Reader) (int64, error) {
	if !repoFile(e.Name) {
		return 0, fmt.Errorf("import %s: not a repository file name", e.Name)
	}
	at, ok := r.(tape.Offsetter)
	if !ok {
		return 0, fmt.Errorf("member %s: its offset in %s is not known", e.Name, v.Path)
	}
	off := at.Offset()
	n, err := io.Copy(io.Discard, r)
	if err != nil {
		return n, err
	}
	return n, k.ip.add(v.Path, e.Name, off, n)
}

func (k inPlaceKeeper) drop(ctx context.Context, name string) { k.ip.drop(name) }

// regularFiles reports whether every needed volume given is a regular
// file, whose members can be read in place.
func regularFiles(set *volumeSet, needed []int) bool {
	for _, seq := range needed {
		v := set.bySeq[seq]
		if v == nil {
			continue
		}
		fi, err := os.Stat(v.Path)
		if err != nil || !fi.Mode().IsRegular() {
			return false
		}
	}
	return true
}

// spoolVolume reads volume v once, keeping the members the plan needs from
// it, and stops after the last of them when its catalog is known. It
// counts what it kept in res and adds to res.Bad the needed members it
// did not find intact; the error is for a volume that cannot be read.
func spoolVolume(ctx context.Context, keep keeper, v *VolumeFile, known map[int]tape.Catalog, plan restorePlan, o ReadOptions, log *slog.Logger, res *RestoreResult) error {
	seq := v.Head.Label.Volume
	var ref *tape.Catalog
	if c, ok := known[seq]; ok {
		ref = &c
	}
	log.Info(fmt.Sprintf("reading volume %d (%s): %d members needed", seq, v.Path, plan.perVolume[seq]),
		"volume", seq, "path", v.Path, "members", plan.perVolume[seq])
	left := plan.perVolume[seq]
	got := map[string]bool{}
	rep, err := readVolume(ctx, v, o, ref, func(e tape.Entry, r io.Reader) error {
		if plan.need[e.Name] != seq || got[e.Name] {
			return nil
		}
		n, err := keep.keep(ctx, v, e, r)
		if err != nil {
			return err // ErrChecksum, ErrUnexpectedEOF: reported below
		}
		got[e.Name] = true
		res.Members++
		res.Bytes += n
		if left--; left == 0 && ref != nil {
			return errEnough
		}
		return nil
	})
	if rep == nil && !errors.Is(err, errEnough) {
		return fmt.Errorf("tape restore: volume %d (%s): %w", seq, v.Path, err)
	}
	res.VolumesRead = append(res.VolumesRead, seq)
	bad := map[string]string{}
	if rep != nil {
		for _, p := range rep.Bad {
			bad[p.Name] = p.Problem
		}
	}
	for name := range bad {
		if got[name] {
			keep.drop(ctx, name)
			got[name] = false
		}
	}
	for name, vs := range plan.need {
		if vs == seq && !got[name] {
			why := bad[name]
			if why == "" {
				why = "not found intact on the volume"
			}
			res.Bad = append(res.Bad, tape.Problem{Name: name, Problem: fmt.Sprintf("volume %d: %s", seq, why)})
		}
	}
	return nil
}

// restoreFromSpool opens the spooled repository files in st (the spool
// directory's repo), indexes the spooled packs for this command
// (indexSpool) and restores the snapshot res names, setting
// res.RestoreResult.
func restoreFromSpool(ctx context.Context, st repo.Storage, spool string, o RestoreOptions, log *slog.Logger, res *RestoreResult) error {
	oo := o.Open
	oo.Exclusive = true                         // the spool is this command's alone
	oo.CacheDir = filepath.Join(spool, "cache") // not the cache of the repository the tapes came from
	r, err := repo.Open(ctx, st, oo)
	if err != nil {
		return fmt.Errorf("tape restore: open the spooled repository files: %w", err)
	}
	defer r.Close()
	if err := indexSpool(ctx, r, res); err != nil {
		return err
	}
	sn, err := r.FindSnapshot(ctx, res.SnapshotID, repo.SnapshotFilter{})
	if err != nil {
		return fmt.Errorf("tape restore: %w", err)
	}
	log.Info(fmt.Sprintf("restoring snapshot %s to %s", sn.ID.Short(), o.Restore.Target), "snapshot", sn.ID.String(), "target", o.Restore.Target)
	res.RestoreResult, err = engine.Restore(ctx, r, sn, o.Restore)
	if err == nil && len(res.Bad) > 0 {
		err = fmt.Errorf("tape restore: %d needed members were damaged or missing (%s): %w", len(res.Bad), problems(res.Bad), engine.ErrRestoreIncomplete)
	}
	return err
}

// maxBlobsInMemory bounds the blobs of a spool indexed in memory (at most
// about 64 MiB; 8 GiB of data in 16 KiB chunks); the packs past it are
// indexed into the spool's cache file.
var maxBlobsInMemory = 1 << 19

// indexSpool indexes the spool's packs for this command only (it lives for
// this command: index files and a cache file were a third of the time
// before the restore could start). Packs whose header cannot be read are
// added to res.Bad.
func indexSpool(ctx context.Context, r *repo.Repository, res *RestoreResult) error {
	_, _, damaged, err := r.IndexPacksForCommand(ctx, maxBlobsInMemory)
	if err != nil {
		return fmt.Errorf("tape restore: index the spooled packs: %w", err)
	}
	for _, d := range damaged {
		res.Bad = append(res.Bad, tape.Problem{Name: repo.PackName(d.ID), Problem: "its header cannot be read: " + d.Problem})
	}
	sort.Slice(res.Bad, func(i, j int) bool { return res.Bad[i].Name < res.Bad[j].Name })
	return nil
}

func problems(ps []tape.Problem) string {
	var s []string
	for _, p := range ps {
		s = append(s, p.String())
	}
	if len(s) == 0 {
		return "no damaged members known"
	}
	return strings.Join(s, "; ")
}
