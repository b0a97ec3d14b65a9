package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func readNotify(t *testing.T, path string) map[string]any {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("the notify command did not run: %v", err)
	}
	var j map[string]any
	if err := json.Unmarshal(b, &j); err != nil {
		t.Fatalf("notify input is not JSON: %v\n%s", err, b)
	}
	return j
}

func TestNotifyCommandOnSuccessAndFailure(t *testing.T) {
	repoDir, src := stdinRepo(t)
	dir := t.TempDir()
	out, env := filepath.Join(dir, "summary.json"), filepath.Join(dir, "env")
	notify := "cat > " + out + "; env > " + env

	// Success: the --json summary plus exit_code; the environment has no secrets.
	code, stdout, errs := stasis(t, "backup", "--repo", repoDir, "--json", "--notify-command", notify, src)
	if code != 0 {
		t.Fatalf("exit %d\n%s", code, errs)
	}
	j := readNotify(t, out)
	lines := strings.Split(strings.TrimSpace(stdout), "\n")
	var summary map[string]any
	json.Unmarshal([]byte(lines[len(lines)-1]), &summary)
	if j["message_type"] != "summary" || j["snapshot_id"] != summary["snapshot_id"] || len(j["snapshot_id"].(string)) != 64 ||
		j["exit_code"].(float64) != 0 || j["error"] != nil || j["files_unchanged"].(float64) != 2 || j["repository"] != repoDir {
		t.Errorf("notify JSON on success: %v\n--json summary: %v", j, summary)
	}
	e, _ := os.ReadFile(env)
	if !strings.Contains(string(e), "STASIS_EXIT_CODE=0\n") || !strings.Contains(string(e), "STASIS_SNAPSHOT_ID="+j["snapshot_id"].(string)) ||
		strings.Contains(string(e), "STASIS_PASSWORD") {
		t.Errorf("notify environment:\n%s", e)
	}

	// Failure: no snapshot; exit_code and the error, which names the dump's stderr.
	os.Remove(out)
	code, _, errs = stasis(t, "backup", "--repo", repoDir, "--notify-command", notify, src,
		"--stdin-from-command", "--", "sh", "-c", "echo 'mysqldump: Got error: 1045' >&2; exit 2")
	if code != exitFatal {
		t.Fatalf("exit %d\n%s", code, errs)
	}
	j = readNotify(t, out)
	if j["exit_code"].(float64) != 1 || !strings.Contains(j["error"].(string), "exited with status 2") ||
		!strings.Contains(j["error"].(string), "mysqldump: Got error: 1045") || j["snapshot_id"] != nil {
		t.Errorf("notify JSON on failure: %v", j)
	}
	if e, _ := os.ReadFile(env); !strings.Contains(string(e), "STASIS_EXIT_CODE=1\n") {
		t.Errorf("notify environment on failure:\n%s", e)
	}
}

// A failing notify command is a warning; the backup's exit code stands.
func TestNotifyCommandFailureIsWarning(t *testing.T) {
	repoDir, src := stdinRepo(t)
	code, _, errs := stasis(t, "backup", "--repo", repoDir, "--notify-command", "echo cannot reach mail server >&2; exit 7", src)
	if code != 0 || !strings.Contains(errs, "warning: notify command") || !strings.Contains(errs, "exited with status 7") ||
		!strings.Contains(errs, "cannot reach mail server") {
		t.Fatalf("exit %d\n%s", code, errs)
	}
	// --hook-timeout bounds it.
	code, _, errs = stasis(t, "backup", "--repo", repoDir, "--hook-timeout", "1s", "--notify-command", "sleep 1000", src)
	if code != 0 || !strings.Contains(errs, "timed out after 1s") {
		t.Fatalf("exit %d\n%s", code, errs)
	}
}
