package engine_test

import (
	"encoding/json"
	"os"
	"path/filepath"
	"testing"

	"github.com/stasisbackup/stasis/engine"
	"github.com/stasisbackup/stasis/internal/enginetest"
	"github.com/stasisbackup/stasis/repo"
)

// Problem kinds are typed constants with the strings stored in snapshot
// files; only warnings leave a snapshot complete; restore reports its own
// kind.
func TestProblemKinds(t *testing.T) {
	for k, want := range map[repo.ProblemKind]string{repo.ProblemChanged: "changed", repo.ProblemUnreadable: "unreadable",
		repo.ProblemDamaged: "damaged", repo.ProblemWarning: "warning", repo.ProblemUnrestored: "unrestored"} {
		b, _ := json.Marshal(repo.Problem{Kind: k})
		var m map[string]string
		json.Unmarshal(b, &m)
		if m["kind"] != want {
			t.Errorf("kind %q is stored as %q, want %q", k, m["kind"], want)
		}
	}
	ps := []repo.Problem{{Kind: repo.ProblemWarning}, {Kind: repo.ProblemChanged}, {Kind: repo.ProblemUnreadable}, {Kind: repo.ProblemDamaged}}
	if n := engine.IncompleteCount(ps); n != 3 {
		t.Errorf("IncompleteCount = %d, want 3 (all but the warning)", n)
	}

	src := filepath.Join(t.TempDir(), "src")
	os.MkdirAll(src, 0o755)
	os.WriteFile(filepath.Join(src, "a"), []byte("data"), 0o644)
	r := enginetest.NewRepo(t)
	sn := backup(t, r, day1, src)
	res, _ := engine.Restore(ctx, unreadableChunks{r}, sn, engine.RestoreOptions{Target: t.TempDir()})
	if res == nil || len(res.Problems) != 1 || res.Problems[0].Kind != repo.ProblemUnrestored {
		t.Fatalf("restore problems %+v, want one %q", res, repo.ProblemUnrestored)
	}
}
