package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// readMetrics parses a --metrics-file with the Prometheus text parser and
// returns each metric's value; every metric must carry labels.
func readMetrics(t *testing.T, path string, labels map[string]string) map[string]float64 {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(f)
	if err != nil {
		t.Fatalf("parse %s: %v", path, err)
	}
	out := map[string]float64{}
	for name, fam := range fams {
		if fam.GetType() != dto.MetricType_GAUGE || len(fam.GetMetric()) != 1 || fam.GetHelp() == "" {
			t.Errorf("%s: type %v, %d samples, help %q", name, fam.GetType(), len(fam.GetMetric()), fam.GetHelp())
			continue
		}
		m := fam.GetMetric()[0]
		got := map[string]string{}
		for _, lp := range m.GetLabel() {
			got[lp.GetName()] = lp.GetValue()
		}
		for k, v := range labels {
			if got[k] != v {
				t.Errorf("%s: label %s=%q, want %q", name, k, got[k], v)
			}
		}
		out[name] = m.GetGauge().GetValue()
	}
	return out
}

func TestMetricsFileAfterSuccessAndFailure(t *testing.T) {
	repoDir, src := stdinRepo(t)
	dir := t.TempDir()
	mf := filepath.Join(dir, "stasis.prom")
	dump := filepath.Join(dir, "dump.sql")
	os.WriteFile(dump, []byte(strings.Repeat("INSERT INTO t VALUES (1);\n", 1000)), 0o644)
	labels := map[string]string{"repository": repoDir, "host": "db1", "profile": ""}

	mustRun(t, "backup", "--repo", repoDir, "--host", "db1", "--metrics-file", mf, src, "--stdin-from-command", "--", "/bin/cat", dump)
	m1 := readMetrics(t, mf, labels)
	if m1[metricLastRun] <= 0 || m1[metricLastSuccess] != m1[metricLastRun] || m1["stasis_backup_exit_code"] != 0 ||
		m1["stasis_backup_files_processed"] != 3 || m1["stasis_backup_bytes_added"] <= 0 || m1["stasis_backup_stdin_bytes"] != 26000 ||
		m1["stasis_backup_snapshot_written"] != 1 || m1["stasis_backup_duration_seconds"] <= 0 {
		t.Fatalf("after success: %v", m1)
	}
	for _, name := range []string{"stasis_backup_downtime_seconds", "stasis_backup_files_with_problems", "stasis_backup_warnings", "stasis_backup_stored_bytes_added"} {
		if _, ok := m1[name]; !ok {
			t.Errorf("no %s", name)
		}
	}
	if fi, err := os.Stat(mf); err != nil || fi.Mode().Perm() != 0o644 {
		t.Errorf("metrics file mode: %v %v (node_exporter must read it)", fi, err)
	}

	code, _, errs := stasis(t, "backup", "--repo", repoDir, "--host", "db1", "--metrics-file", mf, src, "--stdin-from-command", "--", "sh", "-c", "exit 2")
	if code != exitFatal {
		t.Fatalf("failing dump: exit %d\n%s", code, errs)
	}
	m2 := readMetrics(t, mf, labels)
	if m2["stasis_backup_exit_code"] != 1 || m2[metricLastSuccess] != m1[metricLastSuccess] || m2[metricLastRun] < m1[metricLastRun] ||
		m2["stasis_backup_snapshot_written"] != 0 || m2["stasis_backup_bytes_added"] != 0 {
		t.Fatalf("after failure: %v (before: %v)", m2, m1)
	}
	if _, ok := m2["stasis_backup_stdin_bytes"]; ok {
		t.Error("a failed dump has a stdin size")
	}
	// Written atomically: nothing but the file is left in its directory.
	ents, _ := os.ReadDir(dir)
	for _, e := range ents {
		if e.Name() != "stasis.prom" && e.Name() != "dump.sql" {
			t.Errorf("left in the metrics directory: %s", e.Name())
		}
	}
}

// A profile carries the stdin dump, the metrics file and the notify
// command; the profile's name is a label.
func TestMetricsAndNotifyFromProfile(t *testing.T) {
	repoDir, _ := stdinRepo(t)
	dir := t.TempDir()
	dump, mf, out := filepath.Join(dir, "x.ldif"), filepath.Join(dir, "ldap.prom"), filepath.Join(dir, "notify.json")
	os.WriteFile(dump, []byte("dn: o=x\n"), 0o644)
	prof := filepath.Join(dir, "ldap.toml")
	os.WriteFile(prof, []byte(`repository = "`+repoDir+`"
host = "dir1"
stdin_command = ["/bin/cat", "`+dump+`"]
stdin_filename = "/dumps/ldap.ldif"
metrics_file = "`+mf+`"
notify_command = "cat > `+out+`"
`), 0o600)
	mustRun(t, "backup", "--profile", prof)
	m := readMetrics(t, mf, map[string]string{"repository": repoDir, "host": "dir1", "profile": "ldap"})
	if m["stasis_backup_exit_code"] != 0 || m["stasis_backup_stdin_bytes"] != 8 {
		t.Errorf("metrics %v", m)
	}
	var j map[string]any
	b, _ := os.ReadFile(out)
	if err := json.Unmarshal(b, &j); err != nil || j["profile"] != "ldap" || j["stdin"].(map[string]any)["path"] != "/dumps/ldap.ldif" {
		t.Errorf("notify JSON %s: %v", b, err)
	}
}

func TestRedactLocation(t *testing.T) {
	for in, want := range map[string]string{
		"s3:https://AKIAXXX:secretkey@s3.example.com/backups/zoom?X-Amz-Security-Token=tok": "s3:https://s3.example.com/backups/zoom",
		"s3:http://localhost:9000/bucket/prefix":                                            "s3:http://localhost:9000/bucket/prefix",
		"/backup/stasis":                                                                    "/backup/stasis",
	} {
		if got := redactLocation(in); got != want {
			t.Errorf("redactLocation(%q) = %q, want %q", in, got, want)
		}
	}
}
