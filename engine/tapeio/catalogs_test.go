package tapeio

import "testing"

// The names of recorded catalogs, and which names Import and Restore write.
func TestCatalogFileNames(t *testing.T) {
	name, err := catalogFileName("set-1", 7)
	if err != nil || name != "tape/set-1/000007.json" {
		t.Fatalf("catalogFileName = %q, %v", name, err)
	}
	if set, vol, ok := parseCatalogFileName(name); !ok || set != "set-1" || vol != 7 {
		t.Errorf("parseCatalogFileName(%s) = %q, %d, %v", name, set, vol, ok)
	}
	for _, bad := range []struct {
		set string
		vol int
	}{{"", 1}, {"a b", 1}, {"../x", 1}, {"s", 0}} {
		if _, err := catalogFileName(bad.set, bad.vol); err == nil {
			t.Errorf("catalogFileName(%q, %d) succeeded", bad.set, bad.vol)
		}
	}
	for name, want := range map[string]bool{
		"tape/s/000001.json": true, "tape/s/1.json": false, "tape/s/000001": false, "tape/a b/000001.json": false,
		"tape/s/x/000001.json": false, "config": true, "keys/k": true, "locks/x": false, "tape": false,
	} {
		if got := repoFile(name); got != want {
			t.Errorf("repoFile(%q) = %v, want %v", name, got, want)
		}
	}
}
