package quiesce

import (
	"fmt"
	"io"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// Freeze is how the quiesced files are held still during capture.
type Freeze string

// Freeze modes (see the package comment).
const (
	FreezeStop    Freeze = "stop"
	FreezeCopy    Freeze = "copy"
	FreezeReflink Freeze = "reflink"
	// FreezeSnapshot: a read-only snapshot of the volume holding the
	// quiesced files (btrfs subvolume) is made while the service is held
	// still; the backup reads the files from it (see snapshot.go).
	FreezeSnapshot Freeze = "snapshot"
)

// ParseFreeze returns the freeze mode named s; "" is stop.
func ParseFreeze(s string) (Freeze, error) {
	switch f := Freeze(s); f {
	case "":
		return FreezeStop, nil
	case FreezeStop, FreezeCopy, FreezeReflink, FreezeSnapshot:
		return f, nil
	}
	return "", fmt.Errorf("freeze mode %q: want stop, copy, reflink or snapshot", s)
}

// OnOpen says what to do when a quiesced file is still open for writing
// after the quiesce hook.
type OnOpen string

// OnOpen policies.
const (
	OnOpenWarn OnOpen = "warn"
	OnOpenFail OnOpen = "fail"
)

// ParseOnOpen returns the on-open policy named s; "" is warn.
func ParseOnOpen(s string) (OnOpen, error) {
	switch o := OnOpen(s); o {
	case "":
		return OnOpenWarn, nil
	case OnOpenWarn, OnOpenFail:
		return o, nil
	}
	return "", fmt.Errorf("on-open policy %q: want warn or fail", s)
}

// Options configure Run. The zero value (plus Paths) runs no hooks, freeze
// stop, on-open warn.
type Options struct {
	Repository   string   // passed to hooks as STASIS_REPO
	Paths        []string // backup paths: STASIS_PATHS, and where quiesced files are looked for
	QuiescePaths []string // globs selecting the quiesced files (see QuiescedFiles); none = all files
	// Excludes are the backup's exclude globs (package exclude): a file the
	// backup leaves out is not quiesced (not staged, not waited for).
	Excludes    []string
	Quiesce     string // shell command run before capture; "" = none
	Resume      string // shell command run after; "" = none
	HookTimeout time.Duration
	KillGrace   time.Duration
	Freeze      Freeze // "" = stop
	// Staging is the directory under which copy and reflink modes create
	// their own temporary directory (created when missing). "" = a private
	// .stasis-staging directory on the data's filesystem (DefaultStaging).
	// For reflink it must be on the same filesystem as the data.
	// Directories left there by runs that died are removed by the next run.
	Staging string
	// SnapshotBackend names the snapshot backend of freeze snapshot
	// ("btrfs", see SnapshotBackends); "" = the first that applies to the
	// quiesced files' filesystem.
	SnapshotBackend string
	// StateDir, when set, is where the resume command is recorded while
	// the service is quiesced (see ResumePending); DefaultStateDir is the
	// CLI's choice.
	StateDir string
	OnOpen   OnOpen    // "" = warn
	Log      io.Writer // hook output and progress lines; nil = discard
}

// Report is what quiescing did; it is stored in the snapshot and shown by
// `stasis snapshots --json` as the "quiesce" object. Slices are never nil,
// so they serialise as [] rather than null.
type Report struct {
	FreezeRequested Freeze        `json:"freeze_requested"`
	Freeze          Freeze        `json:"freeze"` // mode actually used
	Downtime        time.Duration `json:"-"`
	// DowntimeSeconds is from the start of the quiesce hook to the end of the
	// resume hook; 0 when no hooks were given.
	DowntimeSeconds float64      `json:"downtime_seconds"`
	QuiescedFiles   int          `json:"quiesced_files"`
	Hooks           []HookResult `json:"hooks"`
	OpenWriters     []Holder     `json:"open_writers"`
	Warnings        []string     `json:"warnings"`
	// Snapshot says which snapshot backend freeze snapshot used, on which
	// volumes, and how long creating the snapshots took; nil in other modes.
	Snapshot *SnapshotReport `json:"snapshot,omitempty"`
}

func (o Options) hook(p Phase, cmd string) Hook {
	return Hook{Phase: p, Command: cmd, Timeout: o.HookTimeout, Grace: o.KillGrace,
		Repo: o.Repository, Paths: o.Paths}
}

// syncFilesystems writes back every filesystem holding one of files
// (syncfs, once per filesystem) and returns a warning for each that failed.
func syncFilesystems(files []string) []string {
	var warnings []string
	done := map[uint64]bool{}
	for _, f := range files {
		dir := filepath.Dir(f)
		var st unix.Stat_t
		if err := unix.Stat(dir, &st); err != nil || done[st.Dev] {
			continue
		}
		done[st.Dev] = true
		fd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
		if err == nil {
			err = unix.Syncfs(fd)
			unix.Close(fd)
		}
		if err != nil {
			warnings = append(warnings, fmt.Sprintf("sync the filesystem of %s before the quiesce: %v (the downtime may be longer)", dir, err))
		}
	}
	return warnings
}

// changedLists counts the entries of the sorted list now that are not in
// the sorted list before, and those of before that are not in now.
func changedLists(before, now []string) (added, gone int) {
	i, j := 0, 0
	for i < len(before) || j < len(now) {
		switch {
		case j == len(now) || (i < len(before) && before[i] < now[j]):
			gone++
			i++
		case i == len(before) || now[j] < before[i]:
			added++
			j++
		default:
			i++
			j++
		}
	}
	return added, gone
}

// outside returns the files that are not in a run's directory under the
// staging directory dir (a dead run's copies, or a live one's).
func outside(files []string, dir string) []string {
	dir, err := filepath.Abs(dir)
	if err != nil {
		return files
	}
	out := files[:0:0]
	for _, f := range files {
		if abs, err := filepath.Abs(f); err != nil || !strings.HasPrefix(abs, filepath.Join(dir, stagePrefix)) {
			out = append(out, f)
		}
	}
	return out
}

// GlobQuote returns a glob (filepath.Match) that matches exactly p.
func GlobQuote(p string) string {
	var b strings.Builder
	for _, r := range p {
		if strings.ContainsRune(`*?[\`, r) {
			b.WriteByte('\\')
		}
		b.WriteRune(r)
	}
	return b.String()
}
