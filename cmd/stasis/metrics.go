package main

import (
	"errors"
	"fmt"
	"io/fs"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"github.com/spf13/cobra"
	"github.com/stasisbackup/stasis/cmd/stasis/internal/profile"
	"github.com/stasisbackup/stasis/engine"
	"github.com/stasisbackup/stasis/engine/quiesce"
	"github.com/stasisbackup/stasis/repo"
)

// backupRun is what one `stasis backup` did, for --metrics-file and
// --notify-command (written after every run, success or failure).
type backupRun struct {
	metricsFile   string // --metrics-file
	notifyCommand string // --notify-command

	start    time.Time
	end      time.Time
	host     string
	profile  string // --profile FILE's base name without .toml
	sn       *repo.Snapshot
	rep      *quiesce.Report // when quiesced
	exitCode int
	err      error
	timeout  time.Duration // of the notify command: --hook-timeout
}

// applyProfile fills in the profile's metrics_file and notify_command where
// the command line did not set them.
func (rec *backupRun) applyProfile(c *cobra.Command, p *profile.Profile) {
	set := c.Flags().Changed
	if !set("metrics-file") && p.MetricsFile != "" {
		rec.metricsFile = p.MetricsFile
	}
	if !set("notify-command") && p.NotifyCommand != "" {
		rec.notifyCommand = p.NotifyCommand
	}
}

func addReportFlags(c *cobra.Command, rec *backupRun) {
	f := c.Flags()
	f.StringVar(&rec.metricsFile, "metrics-file", "", "after the run (success or failure) write Prometheus metrics to FILE atomically, for node_exporter's textfile collector (docs/capture.md)")
	f.StringVar(&rec.notifyCommand, "notify-command", "", "after the run (success or failure) run CMD (with /bin/sh -c) with the JSON summary on its standard input; its failure is a warning")
}

// reportBackup wraps the RunE of backup: after body returned, it writes
// the metrics file and runs the notify command, when they are asked for.
// Neither changes the exit code; their failures are warnings on stderr.
func (a *app) reportBackup(rec *backupRun, body func(*cobra.Command, []string) error) func(*cobra.Command, []string) error {
	return func(c *cobra.Command, args []string) error {
		rec.start = time.Now()
		err := body(c, args)
		if rec.metricsFile == "" && rec.notifyCommand == "" {
			return err
		}
		rec.end, rec.err, rec.exitCode = time.Now(), err, exitOK
		if err == nil {
			// run() reports a lost lock as a failure; so do these.
			if lerr := a.lockLost(); lerr != nil {
				rec.err = lerr
			}
		}
		if rec.err != nil {
			rec.exitCode = exitCode(rec.err)
		}
		if rec.host == "" {
			rec.host, _ = os.Hostname()
		}
		if rec.metricsFile != "" {
			if merr := writeMetrics(rec.metricsFile, rec, a.repoDir); merr != nil {
				fmt.Fprintf(a.stderr, "warning: metrics file: %v\n", merr)
			}
		}
		if rec.notifyCommand != "" {
			a.notify(c, rec)
		}
		return err
	}
}

// Metric names of --metrics-file (docs/capture.md lists them).
const (
	metricLastRun     = "stasis_backup_last_run_timestamp_seconds"
	metricLastSuccess = "stasis_backup_last_success_timestamp_seconds"
)

// metricLabels are the labels of every metric: the repository without
// credentials, the host, and the profile (empty without --profile).
func metricLabels(rec *backupRun, repoLoc string) prometheus.Labels {
	return prometheus.Labels{"repository": redactLocation(repoLoc), "host": rec.host, "profile": rec.profile}
}

// writeMetrics writes rec as Prometheus text to path, atomically (a
// temporary file in the same directory, renamed over path, mode 0644).
// The last success time is this run's end when it exited 0, else the value
// the previous file holds for the same labels (0: never).
func writeMetrics(path string, rec *backupRun, repoLoc string) error {
	labels := metricLabels(rec, repoLoc)
	lastSuccess, perr := previousSuccess(path, labels)
	if rec.exitCode == exitOK {
		lastSuccess = float64(rec.end.UnixNano()) / 1e9
	}
	reg := prometheus.NewRegistry()
	gauge := func(name, help string, v float64) {
		g := prometheus.NewGauge(prometheus.GaugeOpts{Name: name, Help: help, ConstLabels: labels})
		g.Set(v)
		reg.MustRegister(g)
	}
	gauge(metricLastRun, "When the last stasis backup run ended (success or failure), Unix time.", float64(rec.end.UnixNano())/1e9)
	gauge(metricLastSuccess, "When the last stasis backup run that exited 0 ended, Unix time; 0: never (as far as this file knows).", lastSuccess)
	gauge("stasis_backup_exit_code", "Exit code of the last run: 0 ok, 1 error (no snapshot), 3 snapshot with problems or an empty stdin stream, see stasis help.", float64(rec.exitCode))
	gauge("stasis_backup_duration_seconds", "Wall-clock duration of the last run.", rec.end.Sub(rec.start).Seconds())
	var downtime float64
	if rec.rep != nil {
		downtime = rec.rep.DowntimeSeconds
	}
	gauge("stasis_backup_downtime_seconds", "How long the service was quiesced in the last run (quiesce hook start to resume hook end); 0 without hooks.", downtime)
	var s repo.Summary
	var warnings int
	if rec.sn != nil {
		s = rec.sn.Summary
		warnings = len(s.Problems) - engine.IncompleteCount(s.Problems)
	}
	if rec.rep != nil {
		warnings += len(rec.rep.Warnings)
	}
	written := 0.0
	if rec.sn != nil {
		written = 1
	}
	gauge("stasis_backup_snapshot_written", "1 when the last run wrote a snapshot, else 0.", written)
	gauge("stasis_backup_bytes_added", "New data the last run added to the repository, before compression.", float64(s.BytesAdded))
	gauge("stasis_backup_stored_bytes_added", "Bytes the last run added to pack files, after dedup and compression.", float64(s.StoredAdded))
	gauge("stasis_backup_files_processed", "Files in the last run's snapshot (new, changed and unchanged).", float64(s.FilesNew+s.FilesChanged+s.FilesUnchanged))
	gauge("stasis_backup_files_with_problems", "Files the last run could not capture cleanly (unreadable, changed while read).", float64(engine.IncompleteCount(s.Problems)))
	gauge("stasis_backup_warnings", "Warnings of the last run (problems of kind warning, quiesce warnings).", float64(warnings))
	if rec.sn != nil && rec.sn.Stdin != nil {
		gauge("stasis_backup_stdin_bytes", "Size of the file the last run read from its stdin stream (a dump); watch it for a sudden drop.", float64(rec.sn.Stdin.Bytes))
	}
	if err := prometheus.WriteToTextfile(path, reg); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if perr != nil {
		return fmt.Errorf("previous %s (last success time reset to 0): %w", path, perr)
	}
	return nil
}

// previousSuccess reads the last success time for labels from the metrics
// file at path: 0 when the file does not exist or holds none for them.
func previousSuccess(path string, labels prometheus.Labels) (float64, error) {
	f, err := os.Open(path)
	if errors.Is(err, fs.ErrNotExist) {
		return 0, nil
	}
	if err != nil {
		return 0, err
	}
	defer f.Close()
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(f)
	if err != nil {
		return 0, fmt.Errorf("parse: %w", err)
	}
	fam := fams[metricLastSuccess]
	if fam == nil {
		return 0, nil
	}
	for _, m := range fam.GetMetric() {
		got := map[string]string{}
		for _, lp := range m.GetLabel() {
			got[lp.GetName()] = lp.GetValue()
		}
		same := len(got) == len(labels)
		for k, v := range labels {
			if got[k] != v {
				same = false
			}
		}
		if same && m.GetGauge() != nil {
			return m.GetGauge().GetValue(), nil
		}
	}
	return 0, nil
}

// redactLocation returns a repository location without credentials: the
// user info and query of an s3: URL are dropped, a directory is made
// absolute.
func redactLocation(loc string) string {
	if rest, ok := strings.CutPrefix(loc, "s3:"); ok {
		u, err := url.Parse(rest)
		if err != nil {
			return "s3:(unparsable URL)"
		}
		u.User, u.RawQuery, u.Fragment = nil, "", ""
		return "s3:" + u.String()
	}
	if loc == "" {
		return ""
	}
	if abs, err := filepath.Abs(loc); err == nil {
		return abs
	}
	return loc
}

// profileName is the profile label: the base name of --profile without
// .toml.
func profileName(path string) string {
	if path == "" {
		return ""
	}
	return strings.TrimSuffix(filepath.Base(path), ".toml")
}
