// Package quiesce brings a live service to a still, consistent state for as
// short a time as possible while a backup captures its files, and reports
// exactly what happened. It does not read or store file contents itself: the
// backup passes a capture function to Run.
//
// # Hooks
//
// The quiesce and resume hooks are shell commands (/bin/sh -c) run in their
// own process group with a timeout; a hook that times out, or whose context
// is cancelled, gets SIGTERM on its whole group and SIGKILL after a grace.
// Combined output goes to Options.Log. Hooks see STASIS_REPO, STASIS_PATHS
// (newline-separated) and STASIS_PHASE (quiesce|resume), and the caller's
// environment without its secrets: never the repository password or where it
// comes from, nor cloud credentials (SecretEnv, IsSecretEnv).
//
// # Resume exactly once
//
// Everything that can fail early (options, staging directory and its free
// space, the pending-resume record) is checked before the quiesce hook runs.
// Once Run has started the quiesce hook, the resume hook runs exactly once
// before Run returns — after success, after a failed or killed quiesce hook,
// after a failed capture, an open-writer failure, a panic in capture, and
// after ctx is cancelled (Ctrl-C and SIGTERM reach the CLI as cancellation):
// resume runs on a context detached from ctx, bounded only by its timeout.
// A process that dies in the window cannot resume: with Options.StateDir,
// Run records the resume command there first, and ResumePending runs the
// records of dead runs (see pending.go).
//
// # Freeze modes
//
//   - stop: capture runs while the service is quiesced. Capture may end the
//     window early with Stage.Resume once it has read Stage.Files (the
//     quiesced files); the rest of the tree is then read while the service runs.
//   - copy: the quiesced files are copied (mode, mtime and holes kept: only
//     data extents are copied) into a fresh directory under Options.Staging
//     (by default a private directory on the data's filesystem,
//     DefaultStaging), the service is resumed, and capture reads the copies
//     through Stage.Path while recording the original names. The run's
//     directory is removed before Run returns; those of runs that died are
//     removed by the next run that stages there.
//   - reflink: as copy, but files are cloned with FICLONE (XFS, btrfs), so the
//     window lasts milliseconds whatever the size. Where the filesystem refuses
//     (ext4, tmpfs, or a staging directory on another filesystem) it falls
//     back to copy, and the Report says so in Freeze and Warnings.
//   - snapshot: a read-only snapshot of each volume holding quiesced files
//     (a btrfs subvolume; SnapshotBackend, snapshot.go, btrfs.go) and of the
//     volumes nested in it under the backup paths is made, the service is
//     resumed, and capture reads the whole tree below each volume from the
//     snapshot (Stage.Roots, Stage.Path), listings and metadata included,
//     recording the original names. The window lasts as long as creating
//     the snapshots, whatever the size or fragmentation of the files. Where
//     no backend applies, Run fails with ErrNoSnapshotBackend before the
//     quiesce hook. The snapshots live in VOLUME/.stasis-snapshots (0700)
//     beside a lock file each run holds while it lives; they are removed
//     before Run returns, on every path, and those of runs that died
//     (SIGKILL, power cut) are removed by the next snapshot run on the
//     volume, which warns about each.
//
// # Open-file detection
//
// After the quiesce hook, Run lists processes holding a quiesced file open
// for writing (OpenWriters, from /proc). With OnOpen warn each becomes a
// warning naming file, pid and command; with OnOpen fail Run returns
// ErrOpenWriters before capture (resume still runs).
package quiesce

import "errors"

// Errors Run and RunHook wrap; match with errors.Is.
var (
	// ErrQuiesceFailed: the quiesce hook failed, timed out or was cancelled;
	// nothing was captured. The resume hook ran.
	ErrQuiesceFailed = errors.New("quiesce hook failed")
	// ErrResumeFailed: the resume hook failed or timed out. The service may
	// still be stopped: a user must look at it. Capture may have succeeded.
	ErrResumeFailed = errors.New("resume hook failed: the service may still be quiesced, check it")
	// ErrOpenWriters: with OnOpen fail, a process still held a quiesced file
	// open for writing after the quiesce hook; nothing was captured.
	ErrOpenWriters = errors.New("quiesced files still open for writing")
	// ErrHookTimeout: a hook ran longer than its timeout and was killed.
	ErrHookTimeout = errors.New("hook timed out")
)
