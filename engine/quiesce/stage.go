package quiesce

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/stasisbackup/stasis/internal/exclude"
	"golang.org/x/sys/unix"
)

// Stage is what capture is given: which files were quiesced and where to read
// each one. Its methods are safe for concurrent use.
type Stage struct {
	// Freeze is the mode in effect: stop, copy, reflink (never reflink
	// when the fallback to copy happened), or snapshot.
	Freeze Freeze
	// Files are the quiesced files, cleaned, sorted, as found by walking
	// Options.Paths.
	Files []string
	// StagingDir is the staging directory (Options.Staging, or the default
	// one) in copy and reflink modes, "" in stop mode.
	StagingDir string
	// Excludes are globs (absolute paths, for filepath.Match) of the
	// staging directories of this and other runs (copy, reflink), or of the
	// snapshot directories (snapshot): copies, not data, which a backup
	// whose paths contain them must exclude.
	Excludes []string

	staged map[string]string
	roots  map[string]string
	globs  []string // Options.QuiescePaths: which files are held still (none: all)
	resume func() error
	report func() Report
}

// HeldStill reports whether the quiesce selection (Options.QuiescePaths,
// every file when there are none) takes regular file p: a file it takes that
// is not in Files appeared after the files to hold still were listed, once
// the service was stopped (it belongs to the resumed service, not to the
// state held still).
func (s *Stage) HeldStill(p string) bool {
	return len(s.globs) == 0 || matchAny(p, s.globs)
}

// Report returns a copy of the Report so far. Once the service has resumed
// (after Resume in stop mode, always in copy and reflink modes) it holds the
// downtime and every hook result; a backup stores it in the snapshot. Only
// the removal of the staging directory, after capture, may add a warning.
func (s *Stage) Report() Report {
	if s.report == nil {
		return Report{Hooks: []HookResult{}, OpenWriters: []Holder{}, Warnings: []string{}}
	}
	return s.report()
}

// Path returns where to read the file named orig: its staged copy in copy and
// reflink modes, its place in the snapshot in snapshot mode (for every path
// below a snapshotted volume, quiesced or not), orig itself otherwise (stop
// mode, or a file not quiesced). Record orig, not the returned path, in the
// snapshot.
func (s *Stage) Path(orig string) string {
	orig = filepath.Clean(orig)
	if p, ok := s.staged[orig]; ok {
		return p
	}
	best := ""
	for root := range s.roots {
		if len(root) > len(best) && (orig == root || strings.HasPrefix(orig, root+"/")) {
			best = root
		}
	}
	if best != "" {
		return filepath.Join(s.roots[best], strings.TrimPrefix(orig, best))
	}
	return orig
}

// Roots maps, in snapshot mode, each snapshotted directory to the directory
// to read in its place (engine BackupOptions.SourceRoots): the backup reads
// the whole tree below it, listings and metadata included, from the
// snapshot. Nil in other modes.
func (s *Stage) Roots() map[string]string {
	if len(s.roots) == 0 {
		return nil
	}
	m := make(map[string]string, len(s.roots))
	for k, v := range s.roots {
		m[k] = v
	}
	return m
}

// Quiesced reports whether orig is one of the quiesced files.
func (s *Stage) Quiesced(orig string) bool {
	i := sort.SearchStrings(s.Files, filepath.Clean(orig))
	return i < len(s.Files) && s.Files[i] == filepath.Clean(orig)
}

// Resume ends the quiesced window early in stop mode: capture calls it once
// it has read every file in Files, and Run does not resume again. It runs
// the resume hook and returns its error (also reported by Run). In copy and
// reflink modes the service was resumed before capture and Resume does
// nothing; repeated calls return the first call's result.
func (s *Stage) Resume() error {
	if s.resume == nil {
		return nil
	}
	return s.resume()
}

// QuiescedFiles walks paths (files or directories, symlinks not followed) and
// returns the regular files matching any of globs, cleaned and sorted. A glob
// without a slash matches the base name (X500.*), one with a slash matches
// the absolute path (/srv/zoomserv/*.db). No globs means every file. Files
// the backup leaves out (excludes, see package exclude: a matching file, or
// anything below a matching directory) are not quiesced, and an entry that
// disappears while it is walked (a live service removed it) is not listed.
func QuiescedFiles(paths, globs, excludes []string) ([]string, error) {
	for _, g := range globs {
		if _, err := filepath.Match(g, ""); err != nil {
			return nil, fmt.Errorf("quiesce path glob %q: %w", g, err)
		}
	}
	if err := exclude.Check(excludes); err != nil {
		return nil, fmt.Errorf("exclude: %w", err)
	}
	seen := map[string]bool{}
	var out []string
	for _, root := range paths {
		root = filepath.Clean(root)
		err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
			if err != nil {
				if p != root && errors.Is(err, fs.ErrNotExist) {
					return nil // removed by the service since its directory was read
				}
				return fmt.Errorf("find quiesced files: %w", err)
			}
			if p != root && exclude.Match(excludes, p) {
				if d.IsDir() {
					return fs.SkipDir
				}
				return nil
			}
			if !d.Type().IsRegular() || seen[p] {
				return nil
			}
			if len(globs) > 0 && !matchAny(p, globs) {
				return nil
			}
			seen[p] = true
			out = append(out, p)
			return nil
		})
		if err != nil {
			return nil, err
		}
	}
	sort.Strings(out)
	return out, nil
}

func matchAny(p string, globs []string) bool {
	abs, err := filepath.Abs(p)
	if err != nil {
		abs = p
	}
	for _, g := range globs {
		subject := filepath.Base(p)
		if strings.Contains(g, "/") {
			subject = abs
		}
		if ok, _ := filepath.Match(g, subject); ok {
			return true
		}
	}
	return false
}

// stageFiles copies (or clones) files into dir. It returns the mapping, the
// mode used, and warnings for a reflink that fell back to copy.
func stageFiles(ctx context.Context, files []string, dir string, mode Freeze) (map[string]string, Freeze, []string, error) {
	staged := make(map[string]string, len(files))
	var warnings []string
	for i, src := range files {
		if err := ctx.Err(); err != nil {
			return nil, mode, warnings, err
		}
		sub := filepath.Join(dir, strconv.Itoa(i))
		if err := os.Mkdir(sub, 0o700); err != nil {
			return nil, mode, warnings, fmt.Errorf("staging %s: %w", src, err)
		}
		dst := filepath.Join(sub, filepath.Base(src))
		if err := stageFile(ctx, src, dst, mode == FreezeReflink); err != nil {
			var ce *cloneError
			if !errors.As(err, &ce) {
				return nil, mode, warnings, err
			}
			warnings = append(warnings, fmt.Sprintf("freeze reflink: %v; falling back to copy for the remaining files (use XFS or btrfs, with --staging on the same filesystem as the data)", ce))
			mode = FreezeCopy
			if err := stageFile(ctx, src, dst, false); err != nil {
				return nil, mode, warnings, err
			}
		}
		staged[src] = dst
	}
	return staged, mode, warnings, nil
}

// cloneError is a FICLONE the filesystem refused; the caller falls back.
type cloneError struct {
	src, dst string
	err      error
}

func (e *cloneError) Error() string {
	return fmt.Sprintf("cannot clone %s to %s: %v", e.src, e.dst, e.err)
}

// stageFile copies src to a new file dst keeping mode, times and holes
// (only data extents are copied: copyData); with reflink it clones instead and returns a *cloneError when the filesystem
// refuses (dst is removed then).
func stageFile(ctx context.Context, src, dst string, reflink bool) error {
	in, err := os.Open(src)
	if err != nil {
		return fmt.Errorf("stage %s: %w", src, err)
	}
	defer in.Close()
	fi, err := in.Stat()
	if err != nil {
		return fmt.Errorf("stage %s: %w", src, err)
	}
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return fmt.Errorf("stage %s: create copy: %w (check --staging)", src, err)
	}
	if reflink {
		if cerr := unix.IoctlFileClone(int(out.Fd()), int(in.Fd())); cerr != nil {
			out.Close()
			os.Remove(dst)
			return &cloneError{src: src, dst: dst, err: cerr}
		}
	} else if err := copyData(ctx, in, out, fi.Size()); err != nil {
		out.Close()
		return fmt.Errorf("stage %s: copy to %s: %w", src, dst, err)
	}
	if err := out.Close(); err != nil {
		return fmt.Errorf("stage %s: close copy %s: %w", src, dst, err)
	}
	if err := os.Chmod(dst, fi.Mode()&(fs.ModePerm|fs.ModeSetuid|fs.ModeSetgid|fs.ModeSticky)); err != nil {
		return fmt.Errorf("stage %s: %w", src, err)
	}
	atime := fi.ModTime()
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		atime = time.Unix(st.Atim.Sec, st.Atim.Nsec)
	}
	if err := os.Chtimes(dst, atime, fi.ModTime()); err != nil {
		return fmt.Errorf("stage %s: %w", src, err)
	}
	return nil
}
