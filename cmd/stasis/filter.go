package main

import (
	"github.com/spf13/pflag"
	"github.com/stasisbackup/stasis/repo"
)

// addFilterFlags registers --host, --tag and --path, which select the
// snapshots that "latest", --at and `snapshots` consider (on a repository
// shared by several hosts, `--host $(hostname) latest` is this host's
// newest snapshot).
func addFilterFlags(f *pflag.FlagSet, filt *repo.SnapshotFilter) {
	f.StringArrayVar(&filt.Hosts, "host", nil, "only snapshots of this host (repeatable: any of them)")
	f.StringArrayVar(&filt.Tags, "tag", nil, "only snapshots with these tags (comma-separated: all of them; repeatable: any set)")
	f.StringArrayVar(&filt.Paths, "path", nil, "only snapshots of exactly these paths (repeatable)")
}
