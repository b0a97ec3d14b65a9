package main

import (
	"fmt"
	"io"
	"math"
	"sync"
	"time"

	"github.com/schollz/progressbar/v3"
	"github.com/stasisbackup/stasis/engine"
	"github.com/stasisbackup/stasis/repo"
)

// How often the terminal line is redrawn, over how long its rate is
// measured, and how often a --json status line is written (the last one is
// always written, when the command ends).
const (
	progressRedraw    = 200 * time.Millisecond
	rateWindow        = 10 * time.Second
	progressJSONEvery = time.Second
)

type sample struct {
	t     time.Time
	bytes int64
}

// reporter shows the progress of one long command (backup, restore, check
// --read-data, prune, tape export/import/verify/restore, copy) from the
// engine.Counts the engine updates atomically; a ticker reads them. It
// shows
//
//   - on a terminal (stderr, without --json) one line: the counts, the
//     rate over the last rateWindow and, when a total is known, the time
//     left and a bar drawn by github.com/schollz/progressbar, which redraws
//     in place and shrinks the bar to the terminal's width (a spinner while
//     no total is known). The rate and the time left are ours, not the
//     library's: it computes its rate from its own increments since the bar
//     was made, which spikes when a bar starts at a count that is not zero
//     (a total backup's scan found part way, a new phase of prune);
//   - with --json, status lines for scripts, at most one a second and one
//     when the command ends: {"message_type":"status","command":...,
//     "files_done","bytes_done","total_files","total_bytes" (0: not known),
//     "seconds_elapsed", and when a total is known "percent_done" (a
//     fraction from 0 to 1, as restic's) and "seconds_remaining"; "phase"
//     for prune};
//   - otherwise nothing (a nil *reporter; its methods do nothing and Counts
//     is nil, which the engine does not count into).
//
// A command starts one with a.startProgress, passes Counts() to the engine
// options, writes its log lines through logWriter (so they do not run into
// the bar) and calls done before it prints its result:
//
//	rep := a.startProgress("copy", "files", a.stdout)
//	opts.Progress = rep.Counts()
//	res, err := engine.Copy(ctx, ..., opts)
//	rep.done()
type reporter struct {
	command, unit string            // "restore", "files"
	phaseUnits    map[string]string // what files are in a phase, where not unit
	counts        engine.Counts
	start         time.Time

	mu       sync.Mutex // the terminal line, and log lines written around it
	term     io.Writer  // the terminal, or nil
	bar      *progressbar.ProgressBar
	barKnown bool     // bar is a bar (a total is known), not a spinner
	samples  []sample // the bytes done over the last rateWindow
	phase    string   // of the samples
	drawn    bool     // something is on the line
	note     string   // shown after the counts (tape: the volume)

	status     io.Writer // --json: status lines, or nil
	lastStatus time.Time

	stop, stopped chan struct{}
	finished      bool
}

// startProgress returns the reporter for command (nil on a non-terminal
// without --json) and starts its ticker. unit names what Counts' files are
// (files, packs, members). --json status lines go to status: stdout where
// the command's --json output is JSON lines with a message_type (backup,
// restore, tape export and restore, copy), stderr where it is one JSON
// document or lines without one (check, prune, forget --prune, tape verify
// and import), so that what scripts parse today stays parseable.
func (a *app) startProgress(command, unit string, status io.Writer) *reporter {
	var r *reporter
	switch {
	case a.json:
		r = newReporter(command, unit, nil, status)
	case isTerminal(a.stderr):
		r = newReporter(command, unit, a.stderr, nil)
	default:
		return nil
	}
	r.run()
	return r
}

// newReporter returns a reporter drawing on term and writing status lines
// to status (either may be nil); run starts its ticker (tests call tick).
func newReporter(command, unit string, term, status io.Writer) *reporter {
	r := &reporter{command: command, unit: unit, start: time.Now(), term: term, status: status}
	r.lastStatus = r.start
	return r
}

func (r *reporter) run() {
	r.stop, r.stopped = make(chan struct{}), make(chan struct{})
	go func() {
		defer close(r.stopped)
		t := time.NewTicker(progressRedraw)
		defer t.Stop()
		for {
			select {
			case <-r.stop:
				return
			case now := <-t.C:
				r.tick(now)
			}
		}
	}()
}

// Counts returns the counts for the engine to update (nil for a nil
// reporter).
func (r *reporter) Counts() *engine.Counts {
	if r == nil {
		return nil
	}
	return &r.counts
}

// setNote shows s after the counts on the terminal ("volume 2").
func (r *reporter) setNote(s string) {
	if r == nil {
		return
	}
	r.mu.Lock()
	r.note = s
	r.mu.Unlock()
}

// setPhaseUnits says what files are in the phases named (where they are
// not the reporter's unit).
func (r *reporter) setPhaseUnits(m map[string]string) {
	if r == nil {
		return
	}
	r.mu.Lock()
	r.phaseUnits = m
	r.mu.Unlock()
}

// backup feeds Backup's progress callback into the counts; the totals are
// taken once the scan is done (before, they only grow).
func (r *reporter) backup(p engine.Progress) {
	r.counts.Set(p.Files, p.Bytes)
	if p.ScanDone {
		r.counts.SetTotals(p.TotalFiles, p.TotalBytes)
	}
}

// doneBackup ends a backup's progress at the snapshot's counts (Backup's
// callback runs on a ticker, so its last call may be short of the end).
func (r *reporter) doneBackup(sn *repo.Snapshot) {
	if r != nil && sn != nil {
		s := sn.Summary
		files := s.FilesNew + s.FilesChanged + s.FilesUnchanged
		r.counts.Set(files, s.TotalBytes)
		r.counts.SetTotals(files, s.TotalBytes)
	}
	r.done()
}

// done stops the ticker, clears the terminal line and writes the last
// status line. It may be called more than once.
func (r *reporter) done() {
	if r == nil {
		return
	}
	r.mu.Lock()
	if r.finished {
		r.mu.Unlock()
		return
	}
	r.finished = true
	r.mu.Unlock()
	if r.stop != nil {
		close(r.stop)
		<-r.stopped
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.clearLine()
	if r.status != nil {
		r.writeStatus(r.counts.Load(), time.Now())
	}
}

// logWriter returns w, or for a reporter drawing on a terminal a writer
// that clears the line before it writes to w (the next tick redraws it).
func (r *reporter) logWriter(w io.Writer) io.Writer {
	if r == nil || r.term == nil || w == nil {
		return w
	}
	return logLines{r, w}
}

type logLines struct {
	r *reporter
	w io.Writer
}

func (l logLines) Write(p []byte) (int, error) {
	l.r.mu.Lock()
	defer l.r.mu.Unlock()
	l.r.clearLine()
	return l.w.Write(p)
}

func (r *reporter) tick(now time.Time) {
	v := r.counts.Load()
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.finished {
		return
	}
	if r.term != nil {
		r.draw(v, now)
	}
	if r.status != nil && now.Sub(r.lastStatus) >= progressJSONEvery {
		r.writeStatus(v, now)
	}
}

// clearLine erases what draw put on the terminal; r.mu is held.
func (r *reporter) clearLine() {
	if r.drawn {
		fmt.Fprint(r.term, "\r\033[K")
		r.drawn = false
	}
}

// draw shows v on the terminal; r.mu is held.
func (r *reporter) draw(v engine.CountsValue, now time.Time) {
	f, known := fractionDone(v)
	if r.bar == nil || known != r.barKnown {
		r.bar, r.barKnown = newBar(r.term, known), known
	}
	if known {
		r.bar.Set64(min(int64(f*barMax), barMax-1)) // a bar at its max stops drawing; done ends it
	}
	r.bar.Describe(r.describe(v, r.rate(v, now)))
	r.drawn = true
}

// rate returns the bytes per second over the last rateWindow, 0 while not
// known; a new phase starts anew. r.mu is held.
func (r *reporter) rate(v engine.CountsValue, now time.Time) float64 {
	if n := len(r.samples); v.Phase != r.phase || n > 0 && v.Bytes < r.samples[n-1].bytes {
		r.samples, r.phase = r.samples[:0], v.Phase
	}
	if len(r.samples) == 0 && v.Phase == "" {
		r.samples = append(r.samples, sample{r.start, 0})
	}
	r.samples = append(r.samples, sample{now, v.Bytes})
	for len(r.samples) > 2 && now.Sub(r.samples[1].t) >= rateWindow {
		r.samples = r.samples[1:]
	}
	first := r.samples[0]
	if dt := now.Sub(first.t).Seconds(); dt >= 0.5 {
		return float64(v.Bytes-first.bytes) / dt
	}
	return 0
}

// describe is the text of the line: "restore: 2/6 files, 54.0 MiB/120.0
// MiB, 91.0 MiB/s, ETA 1s".
func (r *reporter) describe(v engine.CountsValue, rate float64) string {
	s := r.command
	if v.Phase != "" {
		s += " " + v.Phase
	}
	s += fmt.Sprintf(": %d", v.Files)
	if v.TotalFiles > 0 {
		s += fmt.Sprintf("/%d", v.TotalFiles)
	}
	if u := r.phaseUnits[v.Phase]; u != "" {
		s += " " + u
	} else {
		s += " " + r.unit
	}
	if v.Bytes > 0 || v.TotalBytes > 0 {
		s += ", " + humanBytes(v.Bytes)
		if v.TotalBytes > 0 {
			s += "/" + humanBytes(v.TotalBytes)
		}
	}
	if rate > 0 {
		s += ", " + humanBytes(int64(rate)) + "/s"
		if v.TotalBytes > v.Bytes {
			s += ", ETA " + time.Duration(float64(v.TotalBytes-v.Bytes)/rate*float64(time.Second)).Round(time.Second).String()
		}
	}
	if r.note != "" {
		s += ", " + r.note
	}
	return s + " "
}

// barMax is the bar's scale: a tenth of a percent.
const barMax = 1000

// newBar is a bar of the share done on w, or a spinner while no total is
// known. It is drawn only when the reporter sets it (no spinner goroutine),
// so it never races the reporter's log lines.
func newBar(w io.Writer, known bool) *progressbar.ProgressBar {
	max := int64(barMax)
	if !known {
		max = -1
	}
	return progressbar.NewOptions64(max,
		progressbar.OptionSetWriter(w),
		progressbar.OptionSetWidth(30), // shrunk to fit the terminal's width
		progressbar.OptionUseANSICodes(true),
		progressbar.OptionSetPredictTime(false),
		progressbar.OptionSetElapsedTime(false),
		progressbar.OptionSetSpinnerChangeInterval(0),
	)
}

// writeStatus writes a --json status line of v; r.mu is held.
func (r *reporter) writeStatus(v engine.CountsValue, now time.Time) {
	r.lastStatus = now
	elapsed := now.Sub(r.start).Seconds()
	m := map[string]any{"message_type": "status", "command": r.command, "files_done": v.Files, "bytes_done": v.Bytes,
		"total_files": v.TotalFiles, "total_bytes": v.TotalBytes, "seconds_elapsed": elapsed}
	if v.Phase != "" {
		m["phase"] = v.Phase
	}
	if f, ok := fractionDone(v); ok {
		m["percent_done"] = f
		if f > 0 {
			m["seconds_remaining"] = int64(math.Round(elapsed * (1 - f) / f))
		}
	}
	writeJSONLine(r.status, m)
}

// fractionDone is the share of v done, by bytes when their total is known,
// else by files; false when neither total is known.
func fractionDone(v engine.CountsValue) (float64, bool) {
	var f float64
	switch {
	case v.TotalBytes > 0:
		f = float64(v.Bytes) / float64(v.TotalBytes)
	case v.TotalFiles > 0:
		f = float64(v.Files) / float64(v.TotalFiles)
	default:
		return 0, false
	}
	return min(max(f, 0), 1), true
}
