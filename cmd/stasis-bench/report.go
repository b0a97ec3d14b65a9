package main

import (
	"fmt"
	"io"
	"os"
	"strings"
)

// The parts of a markdown report that run and s3 share.

// results holds every sample of one table: scenario → tool → runs.
type results map[string]map[string][]Sample

func (r results) add(sc, tool string, s Sample) {
	if r[sc] == nil {
		r[sc] = map[string][]Sample{}
	}
	r[sc][tool] = append(r[sc][tool], s)
}

// writeHeader prints the command line and the machine.
func writeHeader(w io.Writer, o options) {
	fmt.Fprintf(w, "Command: `%s`\n\n", commandLine())
	fmt.Fprintf(w, "Machine: %s; work directory on %s. Go %s.\n\n", machine(), disk(o.work), strings.TrimPrefix(runtimeVersion(), "go"))
}

// describe is the sentence on the workload, total bytes in all.
func (w Workload) describe(total int64) string {
	return fmt.Sprintf("Workload (seed %d): X500.db %s (%d pages of 4 KiB), transaction log %s, %d small LDIF/config files; %s in all.",
		w.Seed, mib(w.DBSize), w.pages(), mib(w.LogSize), w.Files, mib(total))
}

// pageCacheNote is the paragraph on the page cache, the runs and the load
// average (before the runs, and now).
func pageCacheNote(o options, loadBefore string) string {
	cache := "warm (the tree was read once before the first run; the repositories were just written)"
	if o.cold {
		cache = "cold (`echo 3 > /proc/sys/vm/drop_caches` before every measured command)"
	}
	return fmt.Sprintf("Page cache: %s. Median of %d runs per figure. Load average (1, 5, 15 min) before: %s; after: %s "+
		"(above the number of CPUs, other processes competed for them: wall times are inflated, CPU times much less so).\n\n",
		cache, o.runs, loadBefore, loadAvg())
}

// toolNote is a tool's line in the notes.
type toolNote struct{ name, version, settings string }

// writeToolNotes prints a line per tool run and per peer missing.
func writeToolNotes(w io.Writer, notes []toolNote, missing []string) {
	for _, n := range notes {
		fmt.Fprintf(w, "- %s (%s): %s\n", n.name, n.version, n.settings)
	}
	for _, m := range missing {
		fmt.Fprintf(w, "- missing, not run: %s\n", m)
	}
}

// harnessRSS is the sentence on the harness's own peak RSS.
func harnessRSS() string {
	return fmt.Sprintf("Peak RSS of the harness itself: %s (a child's ru_maxrss starts at its parent's peak on Linux, so no figure below can be smaller).", mib(selfPeakRSS()))
}

// publish writes the report to stdout and, with --out, to that file.
func (o options) publish(stdout io.Writer, rep []byte) error {
	stdout.Write(rep)
	if o.out != "" {
		if err := os.WriteFile(o.out, rep, 0o644); err != nil {
			return fmt.Errorf("write report: %w", err)
		}
	}
	return nil
}

// column is one figure of a comparison table.
type column struct {
	head   string               // its heading
	format string               // of the figure
	value  func(Sample) float64 // the figure of a median
	// absent, when set, says the cell of a row is "—".
	absent func(sc string, m Sample) bool
}

// costColumns are the figures of every comparison table: time and memory.
var costColumns = []column{
	{head: "wall s", format: "%.2f", value: func(s Sample) float64 { return s.Wall.Seconds() }},
	{head: "CPU s (user+sys)", format: "%.2f", value: func(s Sample) float64 { return s.CPU.Seconds() }},
	{head: "peak RSS MiB", format: "%.0f", value: func(s Sample) float64 { return float64(s.MaxRSS) / (1 << 20) }},
}

// writeComparison prints one markdown table: a row per scenario and tool
// (in the order of scs and names; none for a tool without samples) with the
// median of every column. A peer's cell shows its figure and, in
// parentheses, stasis ÷ peer.
func writeComparison(w io.Writer, res results, scs, names []string, cols []column) {
	heads := []string{"scenario", "tool"}
	for _, c := range cols {
		heads = append(heads, c.head)
	}
	fmt.Fprintf(w, "| %s |\n", strings.Join(heads, " | "))
	fmt.Fprintf(w, "|---|---|%s\n", strings.Repeat("---:|", len(cols)))
	for _, sc := range scs {
		base, haveBase := res[sc]["stasis"]
		var b Sample
		if haveBase {
			b = median(base)
		}
		for _, name := range names {
			ss, ok := res[sc][name]
			if !ok {
				continue
			}
			m := median(ss)
			cells := []string{sc, name}
			for _, c := range cols {
				cell := "—"
				if c.absent == nil || !c.absent(sc, m) {
					cell = ratioCell(c.value(m), c.value(b), c.format, haveBase && name != "stasis")
				}
				cells = append(cells, cell)
			}
			fmt.Fprintf(w, "| %s |\n", strings.Join(cells, " | "))
		}
	}
}

// ratioCell formats v and, with ratio and v > 0, base ÷ v in parentheses.
func ratioCell(v, base float64, format string, ratio bool) string {
	s := fmt.Sprintf(format, v)
	if ratio && v > 0 {
		s += fmt.Sprintf(" (%.2f)", base/v)
	}
	return s
}

func mib(n int64) string { return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20)) }

func commandLine() string {
	return "stasis-bench " + strings.Join(os.Args[1:], " ")
}
