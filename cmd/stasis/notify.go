package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"strconv"
	"sync"

	"github.com/spf13/cobra"
	"github.com/stasisbackup/stasis/engine/quiesce"
	"github.com/stasisbackup/stasis/repo"
)

// summaryJSON is the final message of `backup --json` for sn.
func summaryJSON(sn *repo.Snapshot) map[string]any {
	s := sn.Summary
	m := map[string]any{"message_type": "summary", "snapshot_id": sn.ID.String(), "time": sn.Time,
		"files_new": s.FilesNew, "files_changed": s.FilesChanged, "files_unchanged": s.FilesUnchanged,
		"dirs": s.Dirs, "others": s.Others, "total_bytes": s.TotalBytes, "bytes_read": s.BytesRead,
		"bytes_added": s.BytesAdded, "stored_added": s.StoredAdded, "duration_seconds": s.Duration, "problems": s.Problems,
		"quiesce": json.RawMessage(sn.Quiesce)}
	if len(sn.Quiesce) == 0 {
		m["quiesce"] = nil
	}
	if sn.Stdin != nil {
		m["stdin"] = sn.Stdin
	}
	return m
}

// notifyJSON is what --notify-command reads on its standard input: the
// summary message of `backup --json` (when a snapshot was written) plus
// exit_code, error (when the run failed or warned), repository (without
// credentials), host, profile and run_seconds; without a snapshot,
// message_type "summary" and these fields only (and "quiesce" when
// quiescing ran).
func notifyJSON(rec *backupRun, repoLoc string) map[string]any {
	m := map[string]any{"message_type": "summary"}
	if rec.sn != nil {
		m = summaryJSON(rec.sn)
	} else if rec.rep != nil {
		m["quiesce"] = rec.rep
	}
	m["exit_code"] = rec.exitCode
	if rec.err != nil {
		m["error"] = withHints(rec.err).Error()
	}
	m["repository"] = redactLocation(repoLoc)
	m["host"] = rec.host
	if rec.profile != "" {
		m["profile"] = rec.profile
	}
	m["run_seconds"] = rec.end.Sub(rec.start).Seconds()
	return m
}

// notify runs --notify-command with /bin/sh -c, the JSON summary on its
// standard input, and STASIS_EXIT_CODE, STASIS_SNAPSHOT_ID (empty without a
// snapshot) and STASIS_REPO (without credentials) added to stasis's
// environment without its secrets. Its output goes to stderr. It runs even
// when the backup was interrupted, with --hook-timeout (default 5m). Its
// failure is a warning and leaves the exit code alone.
func (a *app) notify(c *cobra.Command, rec *backupRun) {
	data, err := json.Marshal(notifyJSON(rec, a.repoDir))
	if err != nil {
		fmt.Fprintf(a.stderr, "warning: notify command: encode the summary: %v\n", err)
		return
	}
	id := ""
	if rec.sn != nil {
		id = rec.sn.ID.String()
	}
	// The command's stdout and stderr both go to our stderr, copied by two
	// goroutines: one lock keeps their writes apart.
	out := &lockedWriter{w: a.stderr}
	cmd := quiesce.Command{Argv: []string{"/bin/sh", "-c", rec.notifyCommand}, Stdin: bytes.NewReader(append(data, '\n')), Stderr: out,
		Timeout: rec.timeout,
		Env: append(quiesce.Environ(), "STASIS_EXIT_CODE="+strconv.Itoa(rec.exitCode), "STASIS_SNAPSHOT_ID="+id,
			"STASIS_REPO="+redactLocation(a.repoDir))}
	ctx := context.WithoutCancel(c.Context()) // report an interrupted run too
	if _, err := cmd.Run(ctx, out); err != nil {
		fmt.Fprintf(a.stderr, "warning: notify command: %v (the backup's exit code is unchanged)\n", err)
	}
}

// lockedWriter serialises writes from several goroutines to one writer.
type lockedWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}
