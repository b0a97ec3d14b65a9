package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"time"
)

// The run subcommand: stasis and its peers side by side through the
// scenarios, on the work directory's file system.

// Scenario names, in the order they run and are reported.
const (
	scInitial   = "initial backup"
	scUnchanged = "re-backup, nothing changed"
	scDaily     = "daily change, backup"
	scRestore   = "full restore"
	scSingle    = "single-file restore (X500.db)"
)

var scenarios = []string{scInitial, scUnchanged, scDaily, scRestore, scSingle}

// sideBySideColumns are the figures of run's table.
var sideBySideColumns = append(costColumns[:len(costColumns):len(costColumns)],
	column{head: "read MiB (rchar)", format: "%.0f", value: func(s Sample) float64 { return float64(s.RChar) / (1 << 20) }},
	column{head: "repo growth MiB", format: "%.2f", value: func(s Sample) float64 { return float64(s.Growth) / (1 << 20) },
		absent: func(sc string, _ Sample) bool { return sc == scRestore || sc == scSingle }},
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

// restores measures the full and the single-file restore of the latest
// snapshot, each into an empty directory, and checks what the last run
// restored.
func (b *sideBySide) restores(ctx context.Context) error {
	for _, sc := range []string{scRestore, scSingle} {
		only := ""
		if sc == scSingle {
			only = b.w.DBPath()
		}
		for r := 0; r < b.o.runs; r++ {
			for _, t := range b.tools {
				target := b.restoreTarget(t)
				if err := freshTarget(target); err != nil {
					return err
				}
				if err := b.measure(sc, t, t.Restore(ctx, target, only), false); err != nil {
					return err
				}
				if r == b.o.runs-1 {
					if err := verifyRestore(b.w.Root, filepath.Join(target, b.w.Root), only != ""); err != nil {
						return fmt.Errorf("%s by %s is wrong: %w", sc, t.Name, err)
					}
				}
			}
		}
	}
	for _, t := range b.tools {
		os.RemoveAll(b.restoreTarget(t))
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
