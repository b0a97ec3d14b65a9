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
	"syscall"
	"time"
)

// Scenario names, in the order they run and are reported.
const (
	scInitial   = "initial backup"
	scUnchanged = "re-backup, nothing changed"
	scDaily     = "daily change, backup"
	scRestore   = "full restore"
	scSingle    = "single-file restore (X500.db)"
)

var scenarios = []string{scInitial, scUnchanged, scDaily, scRestore, scSingle}

// results holds every sample: scenario → tool → runs.
type results map[string]map[string][]Sample

func (r results) add(sc, tool string, s Sample) {
	if r[sc] == nil {
		r[sc] = map[string][]Sample{}
	}
	r[sc][tool] = append(r[sc][tool], s)
}

func runSideBySide(ctx context.Context, o options, stdout io.Writer, log func(string, ...any)) error {
	w := o.workload()
	var tools []*Tool
	var missing []string
	for _, name := range strings.Split(o.tools, ",") {
		switch strings.TrimSpace(name) {
		case "stasis":
			bin, err := buildStasis(ctx, o)
			if err != nil {
				return err
			}
			tools = append(tools, newStasis(ctx, bin, o.work, o.encrypt))
		case "restic":
			if bin, err := exec.LookPath("restic"); err != nil {
				missing = append(missing, "restic (not on PATH: `apt-get install restic`)")
			} else {
				tools = append(tools, newRestic(bin, o.work))
			}
		case "borg":
			if bin, err := exec.LookPath("borg"); err != nil {
				missing = append(missing, "borg (not on PATH: `apt-get install borgbackup`)")
			} else {
				tools = append(tools, newBorg(bin, o.work, o.borgComp))
			}
		default:
			return fmt.Errorf("--tools: unknown tool %q (stasis, restic, borg)", name)
		}
	}
	for _, m := range missing {
		log("peer missing, continuing without it: %s", m)
	}
	if len(tools) == 0 {
		return fmt.Errorf("no tool to run")
	}
	versions := map[string]string{}
	for _, t := range tools {
		switch t.Name {
		case "stasis":
			versions[t.Name] = t.Version(ctx, "version")
		case "restic":
			versions[t.Name] = t.Version(ctx, "version")
		case "borg":
			versions[t.Name] = t.Version(ctx, "--version")
		}
	}

	start := time.Now()
	loadBefore := loadAvg()
	total, err := readyWorkload(w, start, log)
	if err != nil {
		return err
	}

	res := results{}
	measureOne := func(sc string, t *Tool, cmd *exec.Cmd, repoGrowth bool) error {
		var before int64
		if repoGrowth {
			var err error
			if before, err = diskUsage(t.Repo); err != nil {
				return err
			}
		}
		if o.cold {
			if err := dropCaches(); err != nil {
				return err
			}
		}
		s, err := measure(cmd)
		if err != nil {
			return fmt.Errorf("%s, %s: %w", sc, t.Name, err)
		}
		if repoGrowth {
			after, err := diskUsage(t.Repo)
			if err != nil {
				return err
			}
			s.Growth = after - before
		}
		log("%-30s %-6s wall %6.2fs cpu %6.2fs rss %7s read %9s growth %9s", sc, t.Name, s.Wall.Seconds(), s.CPU.Seconds(), mib(s.MaxRSS), mib(s.RChar), mib(s.Growth))
		res.add(sc, t.Name, s)
		return nil
	}

	for r := 0; r < o.runs; r++ {
		for _, t := range tools {
			if err := t.Reset(ctx); err != nil {
				return err
			}
			if err := measureOne(scInitial, t, t.Backup(ctx, w.Root), true); err != nil {
				return err
			}
		}
	}
	for r := 0; r < o.runs; r++ {
		for _, t := range tools {
			if err := measureOne(scUnchanged, t, t.Backup(ctx, w.Root), true); err != nil {
				return err
			}
		}
	}
	var change Change
	for r := 0; r < o.runs; r++ {
		if change, err = w.DailyChange(r + 1); err != nil {
			return err
		}
		for _, t := range tools {
			if err := measureOne(scDaily, t, t.Backup(ctx, w.Root), true); err != nil {
				return err
			}
		}
	}
	for _, sc := range []string{scRestore, scSingle} {
		only := ""
		if sc == scSingle {
			only = w.DBPath()
		}
		for r := 0; r < o.runs; r++ {
			for _, t := range tools {
				target := filepath.Join(o.work, "restore-"+t.Name)
				if err := os.RemoveAll(target); err != nil {
					return err
				}
				if err := os.MkdirAll(target, 0o755); err != nil {
					return err
				}
				// Let the file system finish deleting the previous restore
				// (journal, discard) before the clock starts, so that no tool
				// pays for another's cleanup.
				syscall.Sync()
				if err := measureOne(sc, t, t.Restore(ctx, target, only), false); err != nil {
					return err
				}
				if r == o.runs-1 {
					if err := verifyRestore(w.Root, filepath.Join(target, w.Root), only != ""); err != nil {
						return fmt.Errorf("%s by %s is wrong: %w", sc, t.Name, err)
					}
				}
			}
		}
	}
	for _, t := range tools {
		os.RemoveAll(filepath.Join(o.work, "restore-"+t.Name))
	}
	log("done in %s", time.Since(start).Round(time.Second))

	var rep bytes.Buffer
	fmt.Fprintf(&rep, "Command: `%s`\n\n", commandLine())
	fmt.Fprintf(&rep, "Machine: %s; work directory on %s. Go %s.\n\n", machine(), disk(o.work), strings.TrimPrefix(runtimeVersion(), "go"))
	fmt.Fprintf(&rep, "Workload (seed %d): X500.db %s (%d pages of 4 KiB), transaction log %s, %d small LDIF/config files; %s in all. ",
		w.Seed, mib(w.DBSize), w.pages(), mib(w.LogSize), w.Files, mib(total))
	fmt.Fprintf(&rep, "Daily change: %d page writes in %d runs of 1-16 pages, %d pages appended, %s of log, %d new files.\n\n",
		change.PagesRewritten, change.Runs, change.PagesAppended, mib(change.LogAppended), change.FilesAdded)
	cache := "warm (the tree was read once before the first run; the repositories were just written)"
	if o.cold {
		cache = "cold (`echo 3 > /proc/sys/vm/drop_caches` before every measured command)"
	}
	fmt.Fprintf(&rep, "Page cache: %s. Median of %d runs per figure. Load average (1, 5, 15 min) before: %s; after: %s "+
		"(above the number of CPUs, other processes competed for them: wall times are inflated, CPU times much less so).\n\n",
		cache, o.runs, loadBefore, loadAvg())
	for _, t := range tools {
		fmt.Fprintf(&rep, "- %s (%s): %s\n", t.Name, versions[t.Name], t.Settings)
	}
	for _, m := range missing {
		fmt.Fprintf(&rep, "- missing, not run: %s\n", m)
	}
	fmt.Fprintf(&rep, "\nPeak RSS of the harness itself: %s (a child's ru_maxrss starts at its parent's peak on Linux, so no figure below can be smaller).\n\n", mib(selfPeakRSS()))
	writeTable(&rep, res, tools)
	stdout.Write(rep.Bytes())
	if o.out != "" {
		if err := os.WriteFile(o.out, rep.Bytes(), 0o644); err != nil {
			return fmt.Errorf("write report: %w", err)
		}
	}
	return nil
}

// writeTable prints one markdown table; a peer's cell shows its figure and,
// in parentheses, stasis ÷ peer.
func writeTable(w io.Writer, res results, tools []*Tool) {
	fmt.Fprintln(w, "| scenario | tool | wall s | CPU s (user+sys) | peak RSS MiB | read MiB (rchar) | repo growth MiB |")
	fmt.Fprintln(w, "|---|---|---:|---:|---:|---:|---:|")
	for _, sc := range scenarios {
		base, haveBase := res[sc]["stasis"]
		var b Sample
		if haveBase {
			b = median(base)
		}
		for _, t := range tools {
			ss, ok := res[sc][t.Name]
			if !ok {
				continue
			}
			m := median(ss)
			cell := func(v, bv float64, format string) string {
				s := fmt.Sprintf(format, v)
				if haveBase && t.Name != "stasis" && v > 0 {
					s += fmt.Sprintf(" (%.2f)", bv/v)
				}
				return s
			}
			growth := "—"
			if sc != scRestore && sc != scSingle {
				growth = cell(float64(m.Growth)/(1<<20), float64(b.Growth)/(1<<20), "%.2f")
			}
			fmt.Fprintf(w, "| %s | %s | %s | %s | %s | %s | %s |\n", sc, t.Name,
				cell(m.Wall.Seconds(), b.Wall.Seconds(), "%.2f"),
				cell(m.CPU.Seconds(), b.CPU.Seconds(), "%.2f"),
				cell(float64(m.MaxRSS)/(1<<20), float64(b.MaxRSS)/(1<<20), "%.0f"),
				cell(float64(m.RChar)/(1<<20), float64(b.RChar)/(1<<20), "%.0f"),
				growth)
		}
	}
	fmt.Fprintln(w, "\nIn parentheses: stasis ÷ peer (below 1: stasis is faster, smaller or reads less).")
}

// verifyRestore compares the restored tree (or only X500.db) with the source.
func verifyRestore(src, dst string, onlyDB bool) error {
	if onlyDB {
		return sameFile(filepath.Join(src, "X500.db"), filepath.Join(dst, "X500.db"))
	}
	n := 0
	err := filepath.WalkDir(src, func(p string, d os.DirEntry, err error) error {
		if err != nil || !d.Type().IsRegular() {
			return err
		}
		rel, _ := filepath.Rel(src, p)
		n++
		return sameFile(p, filepath.Join(dst, rel))
	})
	if err != nil {
		return err
	}
	m := 0
	filepath.WalkDir(dst, func(p string, d os.DirEntry, err error) error {
		if err == nil && d.Type().IsRegular() {
			m++
		}
		return nil
	})
	if m != n {
		return fmt.Errorf("restored %d files, the source has %d", m, n)
	}
	return nil
}

func sameFile(a, b string) error {
	fa, err := os.Open(a)
	if err != nil {
		return err
	}
	defer fa.Close()
	fb, err := os.Open(b)
	if err != nil {
		return fmt.Errorf("restored file missing: %w", err)
	}
	defer fb.Close()
	ba, bb := make([]byte, 1<<20), make([]byte, 1<<20)
	for off := int64(0); ; {
		na, ea := io.ReadFull(fa, ba)
		nb, _ := io.ReadFull(fb, bb)
		if na != nb || !bytes.Equal(ba[:na], bb[:nb]) {
			return fmt.Errorf("%s differs from %s near offset %d", b, a, off)
		}
		if ea != nil {
			return nil
		}
		off += int64(na)
	}
}

func mib(n int64) string { return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20)) }

func commandLine() string {
	return "stasis-bench " + strings.Join(os.Args[1:], " ")
}

// readyWorkload generates the workload (or reuses it) and reads it once so
// that every tool meets the same warm page cache; it returns its size.
func readyWorkload(w Workload, start time.Time, log func(string, ...any)) (int64, error) {
	log("generating workload in %s (X500.db %s, log %s, %d files, seed %d)", w.Root, mib(w.DBSize), mib(w.LogSize), w.Files, w.Seed)
	reused, err := w.Generate()
	if err != nil {
		return 0, err
	}
	if reused {
		log("workload reused (same parameters)")
	}
	total, err := warm(w.Root)
	if err != nil {
		return 0, fmt.Errorf("read workload: %w", err)
	}
	log("workload: %s in %d files, ready after %s", mib(total), w.Files+2, time.Since(start).Round(time.Second))
	return total, nil
}
