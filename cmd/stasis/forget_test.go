package main

import (
	"encoding/json"
	"path/filepath"
	"strings"
	"testing"
)

func TestCLIForgetPrintsDecisionsAndRefusesRemovingAll(t *testing.T) {
	setupEnv(t)
	src := sampleTree(t)
	repoDir := filepath.Join(t.TempDir(), "repo")
	mustRun(t, "backup", "--init", "--repo", repoDir, src)
	mustRun(t, "backup", "--repo", repoDir, src)
	mustRun(t, "backup", "--repo", repoDir, src)
	var code int

	code, _, _ = stasis(t, "--repo", repoDir, "forget")
	if code != exitUsage {
		t.Fatalf("forget without a rule: exit %d, want 2", code)
	}
	code, _, errs := stasis(t, "--repo", repoDir, "forget", "--keep-tag", "none-has-it")
	if code != exitUsage || !strings.Contains(errs, "--allow-remove-all") {
		t.Fatalf("forget removing every snapshot: exit %d, %q; want 2 and a refusal", code, errs)
	}
	out := mustRun(t, "--repo", repoDir, "forget", "--keep-last", "1", "--dry-run")
	if strings.Count(out, "  remove ") != 2 || !strings.Contains(out, "keep ") || !strings.Contains(out, "last snapshot") || !strings.Contains(out, "would remove 2 of 3") {
		t.Fatalf("forget --dry-run output:\n%s", out)
	}
	var rep struct {
		Decisions []struct {
			ID      string   `json:"ID"`
			Keep    bool     `json:"Keep"`
			Reasons []string `json:"Reasons"`
		} `json:"decisions"`
		Removed int `json:"removed"`
	}
	if err := json.Unmarshal([]byte(mustRun(t, "--repo", repoDir, "--json", "forget", "--keep-last", "1", "--prune")), &rep); err != nil {
		t.Fatal(err)
	}
	if len(rep.Decisions) != 3 || rep.Removed != 2 || !rep.Decisions[0].Keep {
		t.Fatalf("forget --json: %+v", rep)
	}
	if out := mustRun(t, "--repo", repoDir, "snapshots"); !strings.Contains(out, "1 snapshots") {
		t.Fatalf("after forget:\n%s", out)
	}
	mustRun(t, "--repo", repoDir, "check", "--read-data")
}
