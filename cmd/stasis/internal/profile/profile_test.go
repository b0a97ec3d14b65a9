package profile

import (
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"
)

func write(t *testing.T, s string) string {
	p := filepath.Join(t.TempDir(), "p.toml")
	if err := os.WriteFile(p, []byte(s), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestLoadFull(t *testing.T) {
	p, err := Load(write(t, `
repository = "/backup/stasis"
paths = ["/srv/zoomserv"]
excludes = ["*.tmp"]
db_glob = ["*.db"]
host = "dir1"
tags = ["daily"]
quiesce = "systemctl stop zoomit"
resume = "systemctl start zoomit"
hook_timeout = "2m"
freeze = "reflink"
staging = "/srv/.stasis-staging"
quiesce_paths = ["X500.db", "X500.log"]
on_open = "fail"
retries = 3
`))
	if err != nil {
		t.Fatal(err)
	}
	if p.Repository != "/backup/stasis" || p.Paths[0] != "/srv/zoomserv" || p.HookTimeout.Duration != 2*time.Minute ||
		p.Freeze != "reflink" || p.Retries == nil || *p.Retries != 3 || len(p.QuiescePaths) != 2 || p.OnOpen != "fail" ||
		p.Host != "dir1" || p.Tags[0] != "daily" || p.DBGlob[0] != "*.db" || p.Excludes[0] != "*.tmp" || p.Staging == "" {
		t.Fatalf("profile %+v", p)
	}
}

func TestLoadErrors(t *testing.T) {
	base := "repository = \"/r\"\npaths = [\"/p\"]\n"
	cases := map[string]string{
		base + "freez = \"stop\"\n":         "unknown key freez",
		base + "[quiesce_opts]\nx = 1\n":    "unknown key quiesce_opts",
		base + "freeze = \"freeze-dry\"\n":  "key freeze",
		base + "on_open = \"ignore\"\n":     "key on_open",
		base + "retries = -1\n":             "key retries",
		base + "hook_timeout = \"soon\"\n":  "hook_timeout",
		base + "retries = \"3\"\n":          "retries",
		"paths = [\"/p\"]\n":                "key repository: missing",
		"repository = \"/r\"\n":             "key paths: missing",
		base + "resume = \"start\"\n":       "resume: set without quiesce",
		base + "paths = [\"/q\"]\n":         "", // TOML duplicate key: a parse error
		base + "stdin_filename = \"x\"\n":   "stdin_filename: set without stdin_command",
		base + "stdin_in_window = true\n":   "stdin_in_window: set without stdin_command",
		base + "stdin_command = \"dump\"\n": "stdin_command", // a list, not a string
	}
	for src, want := range cases {
		path := write(t, src)
		_, err := Load(path)
		if err == nil || !strings.Contains(err.Error(), want) || !strings.Contains(err.Error(), path) {
			t.Errorf("Load(%q) = %v; want an error naming %s and %q", src, err, path, want)
		}
	}
	if _, err := Load(filepath.Join(t.TempDir(), "missing.toml")); err == nil {
		t.Error("missing file accepted")
	}
}

func TestLoadStdinAndReports(t *testing.T) {
	p, err := Load(write(t, `
repository = "/backup/stasis"
stdin_command = ["slapcat", "-n", "1"]
stdin_filename = "/dumps/ldap.ldif"
metrics_file = "/var/lib/node_exporter/textfile/stasis-ldap.prom"
notify_command = "curl -fsS https://hc-ping.com/uuid/$STASIS_EXIT_CODE"
`))
	if err != nil {
		t.Fatal(err) // paths may be left out with a stdin_command
	}
	if strings.Join(p.StdinCommand, " ") != "slapcat -n 1" || p.StdinFilename != "/dumps/ldap.ldif" || p.StdinInWindow ||
		!strings.HasSuffix(p.MetricsFile, ".prom") || !strings.Contains(p.NotifyCommand, "STASIS_EXIT_CODE") {
		t.Fatalf("profile %+v", p)
	}
}

func TestShippedExample(t *testing.T) {
	_, file, _, _ := runtime.Caller(0)
	p, err := Load(filepath.Join(filepath.Dir(file), "..", "..", "..", "..", "docs", "examples", "zoomserv.toml"))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(p.Quiesce, "zoomit") || !strings.Contains(p.Resume, "zoomit") {
		t.Fatalf("example does not stop/start the zoomit unit: %+v", p)
	}
}
