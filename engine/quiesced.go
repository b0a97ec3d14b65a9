package engine

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/stasisbackup/stasis/engine/quiesce"
	"github.com/stasisbackup/stasis/internal/exclude"
	"github.com/stasisbackup/stasis/repo"
)

// QuiescedBackup holds a live service still as q says (quiesce.Run: the
// quiesce hook, the freeze mode, the resume hook) around one Backup of opts,
// so that the files held still are captured at the quiesce point and the
// rest of the tree while the service runs again. q.Paths and q.Excludes are
// set from opts. The snapshot's "quiesce" object is the returned Report.
//
//   - stop: the quiesced files are read first (Prefetch) while the service
//     is held still, the resume hook runs (AfterPrefetch), and the rest of
//     the tree is read with the service running.
//   - copy, reflink: the quiesced files are staged, the service resumes, and
//     the backup reads the staged files under their original names
//     (Substitutes).
//   - snapshot: a read-only snapshot of the volume holding the quiesced
//     files is made, the service resumes, and the backup reads the tree
//     below each snapshotted volume from the snapshot under the original
//     names (SourceRoots).
//
// When a snapshot was written, sn is not nil and err may match
// ErrIncomplete and/or quiesce.ErrResumeFailed; when sn is nil, err says why
// nothing was written (the resume hook ran in every case where the quiesce
// hook was started).
func QuiescedBackup(ctx context.Context, r *repo.Repository, q quiesce.Options, opts BackupOptions) (rep quiesce.Report, sn *repo.Snapshot, err error) {
	if len(opts.Paths) > 0 { // none: a stdin dump alone
		if opts.Paths, err = cleanPaths(opts.Paths); err != nil {
			return rep, nil, err
		}
	}
	// What the backup would reject in the window is rejected now, before
	// the service is stopped.
	if err := exclude.Check(append(append([]string{}, opts.Excludes...), opts.DBGlobs...)); err != nil {
		return rep, nil, fmt.Errorf("backup: %w", err) // matches exclude.ErrBadGlob
	}
	q.Paths, q.Excludes = opts.Paths, opts.Excludes
	var berr error
	rep, qerr := quiesce.Run(ctx, q, func(ctx context.Context, s *quiesce.Stage) error {
		sn, berr = Backup(ctx, r, captureOptions(opts, s))
		if sn == nil {
			return berr
		}
		return nil
	})
	if sn == nil {
		return rep, nil, qerr
	}
	return rep, sn, errors.Join(berr, qerr)
}

// captureOptions returns opts set to read what stage s holds still.
func captureOptions(opts BackupOptions, s *quiesce.Stage) BackupOptions {
	opts.QuiesceFunc = func() json.RawMessage {
		b, err := json.Marshal(s.Report())
		if err != nil {
			panic(err) // a Report always marshals
		}
		return b
	}
	switch s.Freeze {
	case quiesce.FreezeStop:
		opts.Prefetch = s.Files
		opts.AfterPrefetch = func() { _ = s.Resume() } // a failure is in the Report and Run's error
		opts.HeldStill = s.HeldStill
	case quiesce.FreezeSnapshot:
		// The whole tree below each snapshotted volume, not only the
		// quiesced files, is read from the snapshot.
		opts.SourceRoots = s.Roots()
		opts.Excludes = append(append([]string{}, opts.Excludes...), s.Excludes...)
	default:
		opts.HeldStill = s.HeldStill
		opts.Substitutes = make(map[string]string, len(s.Files))
		for _, f := range s.Files {
			opts.Substitutes[f] = s.Path(f)
		}
		// The copies (this run's and other runs') are not data to back up.
		opts.Excludes = append(append([]string{}, opts.Excludes...), s.Excludes...)
	}
	return opts
}
