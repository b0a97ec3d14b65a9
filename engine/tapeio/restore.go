package tapeio

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/stasisbackup/stasis/engine"
	"github.com/stasisbackup/stasis/engine/tape"
	"github.com/stasisbackup/stasis/repo"
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
	SpoolDir string
	// Restore says where and what to restore.
	Restore engine.RestoreOptions
	// Log, when set, receives one line per volume read.
	Log io.Writer
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
// builds from the spooled packs; engine.Restore restores from it, verifying
// every chunk. A damaged or missing member costs only the files whose data
// is in it: every other file is restored, and the result names the rest.
func Restore(ctx context.Context, paths []string, o RestoreOptions) (*RestoreResult, error) {
	logf := func(format string, args ...any) {
		if o.Log != nil {
			fmt.Fprintf(o.Log, format+"\n", args...)
		}
	}
	vols, err := openHeads(ctx, paths, o.Read)
	if err != nil {
		return nil, fmt.Errorf("tape restore: %w", err)
	}
	known := catalogs(ctx, vols)
	heads := make([]*tape.Volume, len(vols))
	bySeq := map[int]*VolumeFile{}
	for i, v := range vols {
		heads[i] = v.Head
		bySeq[v.Head.Label.Volume] = v
	}
	set, err := tape.MergeCatalogs(heads...)
	if err != nil {
		return nil, fmt.Errorf("tape restore: %w", err)
	}
	snapEntry, note, err := pickSnapshot(set, known, o)
	if err != nil {
		return nil, fmt.Errorf("tape restore: %w", err)
	}
	res := &RestoreResult{SnapshotID: strings.TrimPrefix(snapEntry.Name, "snapshots/")}
	if note.Time != nil {
		res.SnapshotTime = *note.Time
	}

	// What is needed, and where: the latest copy of each name.
	where := map[string]tape.Entry{}
	for _, e := range set.Members {
		where[e.Name] = e
	}
	need := map[string]int{} // name → volume
	wanted := append([]string{snapEntry.Name, "config"}, note.Needs...)
	for _, e := range set.Members {
		if strings.HasPrefix(e.Name, "keys/") || strings.HasPrefix(e.Name, "dicts/") {
			wanted = append(wanted, e.Name)
		}
	}
	perVolume := map[int]int{}
	for _, name := range wanted {
		e, ok := where[name]
		if !ok {
			res.Bad = append(res.Bad, tape.Problem{Name: name, Problem: "on no volume of the set"})
			continue
		}
		need[name] = e.Volume
		perVolume[e.Volume]++
	}
	for seq := range perVolume {
		res.VolumesNeeded = append(res.VolumesNeeded, seq)
		if bySeq[seq] == nil {
			res.MissingVolumes = append(res.MissingVolumes, seq)
		}
	}
	sort.Ints(res.VolumesNeeded)
	sort.Ints(res.MissingVolumes)
	for _, seq := range res.MissingVolumes {
		for name, v := range need {
			if v == seq {
				res.Bad = append(res.Bad, tape.Problem{Name: name, Problem: fmt.Sprintf("on volume %d, which was not given", seq)})
			}
		}
	}

	spool, err := os.MkdirTemp(o.SpoolDir, "stasis-tape-restore-")
	if err != nil {
		return res, fmt.Errorf("tape restore: create the spool directory: %w", err)
	}
	defer os.RemoveAll(spool)
	st, err := repo.OpenStorage(ctx, filepath.Join(spool, "repo"))
	if err != nil {
		return res, fmt.Errorf("tape restore: %w", err)
	}
	for _, seq := range res.VolumesNeeded {
		v := bySeq[seq]
		if v == nil {
			continue
		}
		var ref *tape.Catalog
		if c, ok := known[seq]; ok {
			ref = &c
		}
		logf("reading volume %d (%s): %d members needed", seq, v.Path, perVolume[seq])
		left := perVolume[seq]
		got := map[string]bool{}
		rep, err := readVolume(ctx, v, o.Read, ref, func(e tape.Entry, r io.Reader) error {
			if need[e.Name] != seq || got[e.Name] {
				return nil
			}
			var n int64
			err := importFile(ctx, st, e.Name, func(w io.Writer) error {
				var err error
				n, err = io.Copy(w, r)
				return err
			})
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
			return res, fmt.Errorf("tape restore: volume %d (%s): %w", seq, v.Path, err)
		}
		res.VolumesRead = append(res.VolumesRead, seq)
		bad := map[string]string{}
		if rep != nil {
			for _, p := range rep.Bad {
				bad[p.Name] = p.Problem
			}
		}
		for name, vs := range need {
			if vs == seq && !got[name] {
				why := bad[name]
				if why == "" {
					why = "not found intact on the volume"
				}
				res.Bad = append(res.Bad, tape.Problem{Name: name, Problem: fmt.Sprintf("volume %d: %s", seq, why)})
			}
		}
	}
	sort.Slice(res.Bad, func(i, j int) bool { return res.Bad[i].Name < res.Bad[j].Name })
	for _, name := range []string{"config", snapEntry.Name} {
		if ok, err := repo.ObjectExists(ctx, st, name); err != nil || !ok {
			return res, fmt.Errorf("tape restore: %s of snapshot %s could not be read from the volumes: %s", name, res.SnapshotID, problems(res.Bad))
		}
	}

	oo := o.Open
	oo.Exclusive = true                         // the spool is this command's alone
	oo.CacheDir = filepath.Join(spool, "cache") // not the cache of the repository the tapes came from
	r, err := repo.Open(ctx, st, oo)
	if err != nil {
		return res, fmt.Errorf("tape restore: open the spooled repository files: %w", err)
	}
	defer r.Close()
	if _, err := r.RebuildIndex(ctx, repo.RebuildOptions{}); err != nil {
		return res, fmt.Errorf("tape restore: index the spooled packs: %w", err)
	}
	sn, err := r.FindSnapshot(ctx, res.SnapshotID, repo.SnapshotFilter{})
	if err != nil {
		return res, fmt.Errorf("tape restore: %w", err)
	}
	logf("restoring snapshot %s to %s", sn.ID.Short(), o.Restore.Target)
	res.RestoreResult, err = engine.Restore(ctx, r, sn, o.Restore)
	if err == nil && len(res.Bad) > 0 {
		err = fmt.Errorf("tape restore: %d needed members were damaged or missing (%s): %w", len(res.Bad), problems(res.Bad), engine.ErrRestoreIncomplete)
	}
	return res, err
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

// pickSnapshot finds the snapshot member asked for, with its note.
func pickSnapshot(set *tape.SetIndex, known map[int]tape.Catalog, o RestoreOptions) (tape.Entry, tape.Note, error) {
	type cand struct {
		e tape.Entry
		n tape.Note
	}
	var cands []cand
	for _, e := range set.Members {
		if !strings.HasPrefix(e.Name, "snapshots/") {
			continue
		}
		c := known[e.Volume]
		n, _ := c.Note(e.Name)
		cands = append(cands, cand{e, n})
	}
	if len(cands) == 0 {
		return tape.Entry{}, tape.Note{}, fmt.Errorf("no snapshot is listed in the catalogs of the volumes given; give the last volume of the set")
	}
	if o.At.IsZero() && o.Snapshot != "latest" {
		var match []cand
		for _, c := range cands {
			if strings.HasPrefix(strings.TrimPrefix(c.e.Name, "snapshots/"), o.Snapshot) {
				match = append(match, c)
			}
		}
		switch {
		case o.Snapshot == "" || len(match) == 0:
			return tape.Entry{}, tape.Note{}, fmt.Errorf("snapshot %q: %w on the volumes given", o.Snapshot, repo.ErrSnapshotNotFound)
		case len(match) > 1:
			return tape.Entry{}, tape.Note{}, fmt.Errorf("snapshot %q is ambiguous (%d snapshots match); give more digits", o.Snapshot, len(match))
		}
		return match[0].e, match[0].n, nil
	}
	var best *cand
	for i, c := range cands {
		if c.n.Time == nil {
			return tape.Entry{}, tape.Note{}, fmt.Errorf("the catalog has no time for %s: give the snapshot id", c.e.Name)
		}
		if !o.At.IsZero() && c.n.Time.After(o.At) {
			continue
		}
		if best == nil || !c.n.Time.Before(*best.n.Time) {
			best = &cands[i]
		}
	}
	if best == nil {
		return tape.Entry{}, tape.Note{}, fmt.Errorf("no snapshot at or before %s on the volumes given: %w", o.At.Format(time.RFC3339), repo.ErrSnapshotNotFound)
	}
	return best.e, best.n, nil
}
