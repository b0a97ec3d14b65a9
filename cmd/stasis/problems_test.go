package main

import (
	"testing"

	"github.com/stasisbackup/stasis/repo"
)

// A snapshot whose only problems are warnings (backup exits 0 for it) is
// complete in `snapshots --json`; any other kind makes it incomplete.
func TestSnapshotWithOnlyWarningsIsComplete(t *testing.T) {
	sn := &repo.Snapshot{Summary: repo.Summary{Problems: []repo.Problem{
		{Path: "(parent snapshot 1234abcd)", Kind: repo.ProblemWarning, Error: "cannot load its tree"}}}}
	if !toJSON(sn).Complete {
		t.Error("a snapshot with only a warning is listed as incomplete")
	}
	sn.Summary.Problems = append(sn.Summary.Problems, repo.Problem{Path: "/srv/x", Kind: repo.ProblemChanged})
	if toJSON(sn).Complete {
		t.Error("a snapshot with a changed file is listed as complete")
	}
}
