package tapeio

// What a tape restore reads: the snapshot asked for, the members it needs
// and the volumes they are on, from the catalogs alone.

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/stasisbackup/stasis/engine/tape"
	"github.com/stasisbackup/stasis/repo"
)

// volumeSet is the volumes given for a restore, by their heads.
type volumeSet struct {
	index *tape.SetIndex       // the members of the set, from the catalogs known
	known map[int]tape.Catalog // the best known catalog of every volume (catalogs)
	bySeq map[int]*VolumeFile  // the volumes given, by number
}

// openSet reads the heads of the volume files paths and merges what their
// catalogs say.
func openSet(ctx context.Context, paths []string, o ReadOptions) (*volumeSet, error) {
	vols, err := openHeads(ctx, paths, o)
	if err != nil {
		return nil, err
	}
	s := &volumeSet{known: catalogs(ctx, vols), bySeq: map[int]*VolumeFile{}}
	heads := make([]*tape.Volume, len(vols))
	for i, v := range vols {
		heads[i] = v.Head
		s.bySeq[v.Head.Label.Volume] = v
	}
	if s.index, err = tape.MergeCatalogs(heads...); err != nil {
		return nil, err
	}
	return s, nil
}

// restorePlan says which members a restore reads, and from where.
type restorePlan struct {
	need      map[string]int // member name → the volume of its latest copy
	perVolume map[int]int    // volume → the number of needed members on it
}

// planRestore lists the members snapshot snapEntry (with note) needs: the
// snapshot file, config, the packs of its note, every key file and
// compression dictionary, each from the volume of its latest copy. It sets
// res.VolumesNeeded and res.MissingVolumes and adds to res.Bad the members
// on no volume or on volumes not given.
func planRestore(set *volumeSet, snapEntry tape.Entry, note tape.Note, res *RestoreResult) restorePlan {
	where := map[string]tape.Entry{}
	for _, e := range set.index.Members {
		where[e.Name] = e
	}
	p := restorePlan{need: map[string]int{}, perVolume: map[int]int{}}
	wanted := append([]string{snapEntry.Name, "config"}, note.Needs...)
	for _, e := range set.index.Members {
		if strings.HasPrefix(e.Name, "keys/") || strings.HasPrefix(e.Name, "dicts/") {
			wanted = append(wanted, e.Name)
		}
	}
	for _, name := range wanted {
		e, ok := where[name]
		if !ok {
			res.Bad = append(res.Bad, tape.Problem{Name: name, Problem: "on no volume of the set"})
			continue
		}
		p.need[name] = e.Volume
		p.perVolume[e.Volume]++
	}
	for seq := range p.perVolume {
		res.VolumesNeeded = append(res.VolumesNeeded, seq)
		if set.bySeq[seq] == nil {
			res.MissingVolumes = append(res.MissingVolumes, seq)
		}
	}
	sort.Ints(res.VolumesNeeded)
	sort.Ints(res.MissingVolumes)
	for _, seq := range res.MissingVolumes {
		for name, v := range p.need {
			if v == seq {
				res.Bad = append(res.Bad, tape.Problem{Name: name, Problem: fmt.Sprintf("on volume %d, which was not given", seq)})
			}
		}
	}
	return p
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
