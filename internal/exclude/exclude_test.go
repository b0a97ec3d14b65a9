package exclude

import "testing"

func TestMatch(t *testing.T) {
	globs := []string{"postmaster.pid", "/srv/db/pg_stat_tmp", "*.tmp"}
	for p, want := range map[string]bool{
		"/srv/db/postmaster.pid":     true,  // base name
		"/srv/db/pg_stat_tmp":        true,  // whole path
		"/srv/other/pg_stat_tmp":     false, // a path glob does not match a base name elsewhere
		"/srv/db/base/1/x.tmp":       true,
		"/srv/db/postmaster.pid.old": false,
		"/srv/db/PG_VERSION":         false,
	} {
		if got := Match(globs, p); got != want {
			t.Errorf("Match(%q) = %v, want %v", p, got, want)
		}
	}
	if Match(nil, "/x") {
		t.Error("no globs excluded a path")
	}
}

func TestCheck(t *testing.T) {
	if err := Check([]string{"*.db", "/a/[b]"}); err != nil {
		t.Fatal(err)
	}
	if err := Check([]string{"ok", "[unclosed"}); err == nil {
		t.Fatal("a malformed glob passed")
	}
}
