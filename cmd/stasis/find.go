package main

import (
	"context"
	"encoding/json"
	"fmt"
	"sort"
	"time"

	"github.com/spf13/cobra"
	"github.com/stasisbackup/stasis/engine"
	"github.com/stasisbackup/stasis/repo"
)

func init() { register((*app).findCommand) }

type findHitJSON struct {
	Path  string    `json:"path"`
	Type  string    `json:"type"`
	Size  uint64    `json:"size"`
	MTime time.Time `json:"mtime"`
	Mode  uint32    `json:"mode"`
}

type findJSON struct {
	Snapshot string         `json:"snapshot"`
	Time     time.Time      `json:"time"`
	Host     string         `json:"host"`
	Hits     []findHitJSON  `json:"hits"`
	Problems []repo.Problem `json:"problems,omitempty"`
}

// findFlags are the flags of `stasis find`.
type findFlags struct {
	refs   []string // --snapshot
	newest int
	opts   engine.FindOptions
	filt   repo.SnapshotFilter
}

func (a *app) findCommand() *cobra.Command {
	var ff findFlags
	c := &cobra.Command{
		Use:   "find PATTERN... [--snapshot ID]... [--newest N]",
		Short: "Find which snapshots hold entries matching glob patterns",
		Long: `Search snapshots for entries whose names match any PATTERN, and list each
snapshot that has some (short id, time, host) with every hit's type, size,
mtime and path. --json gives one JSON array of
{snapshot, time, host, hits: [{path, type, size, mtime, mode}]}.

Patterns are globs as Go's path.Match has them (* ? [a-z] and \ to escape;
* does not cross '/'). A pattern without '/' is matched against the base
name of each entry. A pattern with '/' that starts with '/' is matched
against the whole path as backed up; one that does not is matched against
the path's last components (as many as the pattern has):

  stasis find X500.db                          # any entry named X500.db
  stasis find '*.ldif' --newest 7              # in the 7 newest snapshots
  stasis find 'ldif/*.ldif'                    # .ldif files directly in a directory ldif
  stasis find '/srv/*/X500.db' --host zoom1    # whole paths, one host's snapshots
  stasis find -i 'readme*' --snapshot 1a2b3c4d --snapshot latest

All snapshots are searched unless --snapshot (repeatable; an id, a short id
or latest) names some; --host, --tag and --path narrow which snapshots all
are, and which one latest is; --newest N keeps the N newest of them. A directory that is the same in several
snapshots is read and searched once.`,
		Args: func(c *cobra.Command, args []string) error {
			if len(args) == 0 {
				return usagef("find: give at least one PATTERN")
			}
			if err := engine.ValidatePatterns(args); err != nil {
				return usagef("find: %v", err)
			}
			if ff.newest < 0 {
				return usagef("find: --newest %d: give a positive number", ff.newest)
			}
			return nil
		},
		RunE: a.runWithRepo(func(c *cobra.Command, args []string, r *repo.Repository) error {
			return a.runFind(c.Context(), r, &ff, args)
		}),
	}
	f := c.Flags()
	f.StringArrayVar(&ff.refs, "snapshot", nil, "search only this snapshot: an id, a short id or latest (repeatable)")
	f.IntVar(&ff.newest, "newest", 0, "search only the N newest of the selected snapshots")
	f.BoolVarP(&ff.opts.IgnoreCase, "ignore-case", "i", false, "match names and patterns without regard to case")
	addFilterFlags(f, &ff.filt)
	return c
}

// runFind is `stasis find`: it searches the snapshots ff selects in r for
// patterns and prints the hits.
func (a *app) runFind(ctx context.Context, r *repo.Repository, ff *findFlags, patterns []string) error {
	snaps, err := a.findSelection(ctx, r, ff)
	if err != nil {
		return err
	}
	opts := ff.opts
	opts.Patterns = patterns
	p := findPrinter{a: a}
	if a.json {
		fmt.Fprint(a.stdout, "[")
	}
	err = engine.Find(ctx, r, snaps, opts, p.print)
	if a.json {
		fmt.Fprint(a.stdout, "\n]\n")
	}
	if err != nil {
		return err
	}
	if p.hits == 0 && !a.json {
		fmt.Fprintf(a.stderr, "no entry matches in %d snapshots\n", len(snaps))
	}
	if p.problems > 0 {
		return fmt.Errorf("find: %d directories could not be searched, hits in them are missing (run `stasis check`)", p.problems)
	}
	return nil
}

// findSelection returns the snapshots find searches, oldest first: those
// --snapshot names (each once), else all that --host, --tag and --path
// select (warning of unreadable ones); the --newest N of them.
func (a *app) findSelection(ctx context.Context, r *repo.Repository, ff *findFlags) ([]*repo.Snapshot, error) {
	var snaps []*repo.Snapshot
	if len(ff.refs) > 0 {
		var err error
		if snaps, err = findSnapshots(ctx, r, ff.refs, ff.filt); err != nil {
			return nil, err
		}
		sort.SliceStable(snaps, func(i, j int) bool { return snaps[i].Time.Before(snaps[j].Time) })
	} else {
		list, bad, err := r.Snapshots(ctx)
		if err != nil {
			return nil, err
		}
		for _, e := range bad {
			fmt.Fprintf(a.stderr, "warning: %v (not searched; run `stasis check`)\n", e)
		}
		snaps = repo.FilterSnapshots(list, ff.filt)
	}
	if ff.newest > 0 && len(snaps) > ff.newest {
		snaps = snaps[len(snaps)-ff.newest:]
	}
	return snaps, nil
}

// findPrinter prints find's results as they come: a snapshot with its hits
// (on stdout) and the directories that could not be searched (on stderr),
// or with --json one element of a JSON array.
type findPrinter struct {
	a                     *app
	hits, problems, found int // found: snapshots printed
}

// print is engine.Find's callback.
func (p *findPrinter) print(res *engine.FindResult) error {
	if len(res.Hits) == 0 && len(res.Problems) == 0 {
		return nil
	}
	a := p.a
	p.hits += len(res.Hits)
	p.problems += len(res.Problems)
	sn := res.Snapshot
	if a.json {
		doc := findJSON{Snapshot: sn.ID.String(), Time: sn.Time, Host: sn.Host, Hits: []findHitJSON{}, Problems: res.Problems}
		for _, h := range res.Hits {
			doc.Hits = append(doc.Hits, findHitJSON{Path: h.Path, Type: h.Kind.String(), Size: h.Size, MTime: time.Unix(0, h.MTime), Mode: h.Mode})
		}
		b, err := json.Marshal(doc)
		if err != nil {
			return err
		}
		if p.found > 0 {
			fmt.Fprint(a.stdout, ",")
		}
		fmt.Fprintf(a.stdout, "\n%s", b)
	} else {
		if p.found > 0 {
			fmt.Fprintln(a.stdout)
		}
		fmt.Fprintf(a.stdout, "snapshot %s of %s on %s\n", sn.ID.Short(), sn.Time.Local().Format("2006-01-02 15:04:05"), sn.Host)
		for _, h := range res.Hits {
			fmt.Fprintf(a.stdout, "  %-8s %12d  %s  %s\n", h.Kind, h.Size, time.Unix(0, h.MTime).Local().Format("2006-01-02 15:04:05"), quotePath(h.Path))
		}
		printProblems(a.stderr, fmt.Sprintf("directories of snapshot %s could not be searched", sn.ID.Short()), res.Problems)
	}
	p.found++
	return nil
}
