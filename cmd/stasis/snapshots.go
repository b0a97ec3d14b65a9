package main

import (
	"encoding/json"
	"fmt"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"github.com/stasisbackup/stasis/engine"
	"github.com/stasisbackup/stasis/repo"
)

// snapshotJSON is the --json form of a snapshot, for scripts.
type snapshotJSON struct {
	ID       string       `json:"id"`
	ShortID  string       `json:"short_id"`
	Time     time.Time    `json:"time"`
	Host     string       `json:"host"`
	Username string       `json:"username,omitempty"`
	Paths    []string     `json:"paths"`
	Tags     []string     `json:"tags"`
	Tree     string       `json:"tree"`
	Parent   string       `json:"parent,omitempty"`
	Original string       `json:"original,omitempty"` // the snapshot it was copied from (stasis copy)
	Summary  repo.Summary `json:"summary"`
	Complete bool         `json:"complete"`
	Quiesce  any          `json:"quiesce,omitempty"`
	// Stdin: the file read from a stream, and its command (backup --stdin-from-command).
	Stdin *repo.StdinSource `json:"stdin,omitempty"`
}

func toJSON(sn *repo.Snapshot) snapshotJSON {
	j := snapshotJSON{ID: sn.ID.String(), ShortID: sn.ID.Short(), Time: sn.Time, Host: sn.Host, Username: sn.Username,
		Paths: sn.Paths, Tags: sn.Tags, Tree: sn.Tree.String(), Summary: sn.Summary, Complete: engine.IncompleteCount(sn.Summary.Problems) == 0}
	if sn.Parent != nil {
		j.Parent = sn.Parent.String()
	}
	if sn.Original != nil {
		j.Original = sn.Original.String()
	}
	if len(sn.Quiesce) > 0 {
		j.Quiesce = sn.Quiesce
	}
	j.Stdin = sn.Stdin
	if j.Tags == nil {
		j.Tags = []string{}
	}
	return j
}

func (a *app) snapshotsCommand() *cobra.Command {
	var filt repo.SnapshotFilter
	c := &cobra.Command{
		Use:   "snapshots [--host H] [--tag T] [--path P]",
		Short: "List snapshots, oldest first",
		Args:  exactArgs(0, "no arguments"),
		RunE: a.runWithRepo(func(c *cobra.Command, args []string, r *repo.Repository) error {
			list, bad, err := r.Snapshots(c.Context())
			if err != nil {
				return err
			}
			list = repo.FilterSnapshots(list, filt)
			for _, e := range bad {
				fmt.Fprintf(a.stderr, "warning: %v (run `stasis check`)\n", e)
			}
			if a.json {
				out := make([]snapshotJSON, 0, len(list))
				for _, sn := range list {
					out = append(out, toJSON(sn))
				}
				return writeJSON(a.stdout, out)
			}
			tw := tabwriter.NewWriter(a.stdout, 0, 0, 2, ' ', 0)
			fmt.Fprintln(tw, "ID\tTime\tHost\tTags\tFiles\tSize\tQuiesce\tPaths\t")
			for _, sn := range list {
				s := sn.Summary
				flag := ""
				if n := engine.IncompleteCount(s.Problems); n > 0 {
					flag = fmt.Sprintf(" (incomplete: %d)", n)
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\t%s\t%s\t%s%s\t\n", sn.ID.Short(), sn.Time.Local().Format("2006-01-02 15:04:05"), sn.Host,
					strings.Join(sn.Tags, ","), s.FilesNew+s.FilesChanged+s.FilesUnchanged, humanBytes(s.TotalBytes), quiesceCell(sn), strings.Join(sn.Paths, " "), flag)
			}
			tw.Flush()
			fmt.Fprintf(a.stdout, "%d snapshots\n", len(list))
			return nil
		}),
	}
	addFilterFlags(c.Flags(), &filt)
	return c
}

// quiesceCell summarises a snapshot's quiesce record: mode and downtime,
// with the number of warnings; "-" when the backup was not quiesced.
func quiesceCell(sn *repo.Snapshot) string {
	if len(sn.Quiesce) == 0 {
		return "-"
	}
	var q struct {
		Freeze   string   `json:"freeze"`
		Downtime float64  `json:"downtime_seconds"`
		Warnings []string `json:"warnings"`
	}
	if err := json.Unmarshal(sn.Quiesce, &q); err != nil {
		return "?"
	}
	cell := fmt.Sprintf("%s %s", q.Freeze, humanDuration(time.Duration(q.Downtime*float64(time.Second))))
	if n := len(q.Warnings); n > 0 {
		cell += fmt.Sprintf(" (%d warnings)", n)
	}
	return cell
}
