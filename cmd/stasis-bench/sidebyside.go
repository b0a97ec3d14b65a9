package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"
)

// The run subcommand: stasis and its peers side by side through the
// scenarios, on the work directory's file system.

// Scenario names, in the order they run and are reported.
const (
	scInitial   = "initial backup"
	scUnchanged = "re-backup, nothing changed"
	scDaily     = "daily change, backup"
	scRestore   = "full restore, fresh directory"
	scAfterRm   = "full restore after rm -rf of the last one, 3rd time"
	scSingle    = "single-file restore (X500.db)"
)

var scenarios = []string{scInitial, scUnchanged, scDaily, scRestore, scAfterRm, scSingle}

// restoresAfterRm is how many times the delete-then-restore loop of scAfterRm
// runs before the restore it measures: the pattern of a disaster (the data
// was just deleted, then restored), which on ext4 makes every file creation
// search past the inodes freed a moment ago.
const restoresAfterRm = 3

// sideBySideColumns are the figures of run's table.
var sideBySideColumns = append(costColumns[:len(costColumns):len(costColumns)],
	column{head: "read MiB (rchar)", format: "%.0f", value: func(s Sample) float64 { return float64(s.RChar) / (1 << 20) }},
	column{head: "repo growth MiB", format: "%.2f", value: func(s Sample) float64 { return float64(s.Growth) / (1 << 20) },
		absent: func(sc string, _ Sample) bool { return strings.Contains(sc, "restore") }}, // restores write no repository
)

// sideBySide is one run of the run subcommand: the tools and every sample
// taken of them.
type sideBySide struct {
	o     options
	w     Workload
	tools []*Tool
	notes []toolNote
	res   results
	log   func(string, ...any)
}

func runSideBySide(ctx context.Context, o options, stdout io.Writer, log func(string, ...any)) error {
	picks, missing, err := pickTools(ctx, o, false, log)
	if err != nil {
		return err
	}
	if len(picks) == 0 {
		return fmt.Errorf("no tool to run")
	}
	b := &sideBySide{o: o, w: o.workload(), res: results{}, log: log}
	for _, p := range picks {
		t := p.tool(ctx, o.work, o)
		b.tools = append(b.tools, t)
		b.notes = append(b.notes, toolNote{t.Name, t.Version(ctx), t.Settings})
	}

	start := time.Now()
	loadBefore := loadAvg()
	total, err := readyWorkload(b.w, start, log)
	if err != nil {
		return err
	}
	change, err := b.backups(ctx)
	if err != nil {
		return err
	}
	if err := b.restores(ctx); err != nil {
		return err
	}
	log("done in %s", time.Since(start).Round(time.Second))
	return o.publish(stdout, b.report(total, change, loadBefore, missing))
}

// backups measures the backup scenarios: every tool's initial backup into
// a fresh repository, then the re-backups with nothing changed, then a
// daily change (one per run) and the backups after it. It returns the
// last daily change.
func (b *sideBySide) backups(ctx context.Context) (Change, error) {
	for r := 0; r < b.o.runs; r++ {
		for _, t := range b.tools {
			if err := t.Reset(ctx); err != nil {
				return Change{}, err
			}
			if err := b.measure(scInitial, t, t.Backup(ctx, b.w.Root), true); err != nil {
				return Change{}, err
			}
		}
	}
	for r := 0; r < b.o.runs; r++ {
		for _, t := range b.tools {
			if err := b.measure(scUnchanged, t, t.Backup(ctx, b.w.Root), true); err != nil {
				return Change{}, err
			}
		}
	}
	var change Change
	for r := 0; r < b.o.runs; r++ {
		var err error
		if change, err = b.w.DailyChange(r + 1); err != nil {
			return change, err
		}
		for _, t := range b.tools {
			if err := b.measure(scDaily, t, t.Backup(ctx, b.w.Root), true); err != nil {
				return change, err
			}
		}
	}
	return change, nil
}

// restores measures the full restore into a directory never used before,
// the full restore in the delete-then-restore loop, and the single-file
// restore of the latest snapshot, and checks what the last run of each
// restored.
func (b *sideBySide) restores(ctx context.Context) error {
	var used []string // the fresh directories, removed at the end
	defer func() {
		for _, d := range used {
			os.RemoveAll(d)
		}
	}()
	for r := 0; r < b.o.runs; r++ {
		for _, t := range b.tools {
			target := filepath.Join(b.o.work, fmt.Sprintf("restore-%s-fresh-%d", t.Name, r))
			used = append(used, target)
			if err := b.restore(ctx, scRestore, t, target, "", r == b.o.runs-1); err != nil {
				return err
			}
		}
	}
	for r := 0; r < b.o.runs; r++ {
		for _, t := range b.tools {
			for i := 1; i <= restoresAfterRm; i++ {
				sc := scAfterRm
				if i < restoresAfterRm {
					sc = "" // the loop's earlier restores are not measured
				}
				if err := b.restore(ctx, sc, t, b.restoreTarget(t), "", r == b.o.runs-1 && sc != ""); err != nil {
					return err
				}
			}
		}
	}
	for r := 0; r < b.o.runs; r++ {
		for _, t := range b.tools {
			if err := b.restore(ctx, scSingle, t, b.restoreTarget(t), b.w.DBPath(), r == b.o.runs-1); err != nil {
				return err
			}
		}
	}
	for _, t := range b.tools {
		os.RemoveAll(b.restoreTarget(t))
	}
	return nil
}

// restore empties target (rm -rf, sync), restores t's latest snapshot (or
// only the file only) into it as scenario sc ("": not measured), and with
// check compares the result with the source.
func (b *sideBySide) restore(ctx context.Context, sc string, t *Tool, target, only string, check bool) error {
	if err := freshTarget(target); err != nil {
		return err
	}
	cmd := t.Restore(ctx, target, only)
	if sc == "" {
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("%s: restore: %w\n%s", t.Name, err, tail(string(out), 2000))
		}
	} else if err := b.measure(sc, t, cmd, false); err != nil {
		return err
	}
	if check {
		if err := verifyRestore(b.w.Root, filepath.Join(target, b.w.Root), only != ""); err != nil {
			return fmt.Errorf("%s by %s is wrong: %w", sc, t.Name, err)
		}
	}
	return nil
}

// restoreTarget is the directory t restores into.
func (b *sideBySide) restoreTarget(t *Tool) string {
	return filepath.Join(b.o.work, "restore-"+t.Name)
}

// measure runs cmd, scenario sc of t, and records its sample; growth: the
// command writes to the repository, whose growth is part of the sample.
func (b *sideBySide) measure(sc string, t *Tool, cmd *exec.Cmd, growth bool) error {
	var before int64
	if growth {
		var err error
		if before, err = diskUsage(t.Repo); err != nil {
			return err
		}
	}
	s, err := measureCold(b.o, cmd)
	if err != nil {
		return fmt.Errorf("%s, %s: %w", sc, t.Name, err)
	}
	if growth {
		after, err := diskUsage(t.Repo)
		if err != nil {
			return err
		}
		s.Growth = after - before
	}
	b.log("%-30s %-6s wall %6.2fs cpu %6.2fs rss %7s read %9s growth %9s", sc, t.Name, s.Wall.Seconds(), s.CPU.Seconds(), mib(s.MaxRSS), mib(s.RChar), mib(s.Growth))
	b.res.add(sc, t.Name, s)
	return nil
}

// report is the markdown report of the run: the setting, then one table.
func (b *sideBySide) report(total int64, change Change, loadBefore string, missing []string) []byte {
	var rep bytes.Buffer
	writeHeader(&rep, b.o)
	fmt.Fprintf(&rep, "%s ", b.w.describe(total))
	fmt.Fprintf(&rep, "Daily change: %d page writes in %d runs of 1-16 pages, %d pages appended, %s of log, %d new files.\n\n",
		change.PagesRewritten, change.Runs, change.PagesAppended, mib(change.LogAppended), change.FilesAdded)
	rep.WriteString(pageCacheNote(b.o, loadBefore))
	writeToolNotes(&rep, b.notes, missing)
	fmt.Fprintf(&rep, "\n%s\n\n", harnessRSS())
	var names []string
	for _, t := range b.tools {
		names = append(names, t.Name)
	}
	writeComparison(&rep, b.res, scenarios, names, sideBySideColumns)
	fmt.Fprintln(&rep, "\nIn parentheses: stasis ÷ peer (below 1: stasis is faster, smaller or reads less).")
	return rep.Bytes()
}
