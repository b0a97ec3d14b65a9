package main

import (
	"bytes"
	"strings"
	"testing"
	"time"
)

// TestComparisonTables pins the markdown of run's and s3's tables.
func TestComparisonTables(t *testing.T) {
	res := results{}
	res.add(scInitial, "stasis", Sample{Wall: 2 * time.Second, CPU: 3 * time.Second, MaxRSS: 100 << 20, RChar: 512 << 20, Growth: 300 << 20, Size: 300 << 20})
	res.add(scInitial, "restic", Sample{Wall: 4 * time.Second, CPU: 6 * time.Second, MaxRSS: 200 << 20, RChar: 1024 << 20, Growth: 400 << 20, Size: 400 << 20})
	res.add(scS3Restore, "stasis", Sample{Wall: time.Second, CPU: time.Second, MaxRSS: 50 << 20, RChar: 300 << 20, Size: -1})
	res.add(scS3Restore, "restic", Sample{Wall: 3 * time.Second, CPU: 2 * time.Second, MaxRSS: 80 << 20, RChar: 600 << 20, Size: -1})
	names := []string{"stasis", "restic", "borg"} // borg: no samples, no rows
	for _, c := range []struct {
		name string
		cols []column
		want string
	}{
		{"run", sideBySideColumns, "| scenario | tool | wall s | CPU s (user+sys) | peak RSS MiB | read MiB (rchar) | repo growth MiB |\n|---|---|---:|---:|---:|---:|---:|\n| initial backup | stasis | 2.00 | 3.00 | 100 | 512 | 300.00 |\n| initial backup | restic | 4.00 (0.50) | 6.00 (0.50) | 200 (0.50) | 1024 (0.50) | 400.00 (0.75) |\n| full restore | stasis | 1.00 | 1.00 | 50 | 300 | — |\n| full restore | restic | 3.00 (0.33) | 2.00 (0.50) | 80 (0.62) | 600 (0.50) | — |\n"},
		{"s3", s3Columns, "| scenario | tool | wall s | CPU s (user+sys) | peak RSS MiB | repository MiB |\n|---|---|---:|---:|---:|---:|\n| initial backup | stasis | 2.00 | 3.00 | 100 | 300.00 |\n| initial backup | restic | 4.00 (0.50) | 6.00 (0.50) | 200 (0.50) | 400.00 (0.75) |\n| full restore | stasis | 1.00 | 1.00 | 50 | — |\n| full restore | restic | 3.00 (0.33) | 2.00 (0.50) | 80 (0.62) | — |\n"},
	} {
		var b bytes.Buffer
		writeComparison(&b, res, []string{scInitial, scUnchanged, scS3Restore}, names, c.cols)
		if b.String() != c.want {
			t.Errorf("%s table:\n%s\nwant:\n%s", c.name, b.String(), c.want)
		}
	}
}

// TestPickToolsNames checks --tools names against the peer table without
// building or looking up anything.
func TestPickToolsNames(t *testing.T) {
	log := func(string, ...any) {}
	for _, c := range []struct {
		s3   bool
		want string
	}{{false, "(stasis, restic, borg, restic-0.18.1, kopia-0.21.1)"}, {true, "(stasis, restic, restic-0.18.1)"}} {
		_, _, err := pickTools(t.Context(), options{tools: "nosuch"}, c.s3, log)
		if err == nil || !strings.Contains(err.Error(), `unknown tool "nosuch" `+c.want) {
			t.Errorf("s3 %v: unknown tool: %v; want the names %s", c.s3, err, c.want)
		}
	}
	picks, missing, err := pickTools(t.Context(), options{tools: "borg"}, true, log)
	if err != nil || len(picks) != 0 || len(missing) != 0 {
		t.Errorf("s3 with borg: %v, %v, %v; want borg left out silently", picks, missing, err)
	}
	if got := andList(toolNames(true)); got != "stasis, restic and restic-0.18.1" {
		t.Errorf("s3 tools %q", got)
	}
}
