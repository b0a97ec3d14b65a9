package repo_test

import (
	"bytes"
	"context"
	"slices"
	"testing"

	"github.com/stasisbackup/stasis/internal/enginetest"
	"github.com/stasisbackup/stasis/repo"
)

// SaveObject keeps files of other components under a directory of their
// own, and refuses the repository's own files and directories.
func TestSaveObjectUnderADirectoryOfItsOwn(t *testing.T) {
	ctx := context.Background()
	r := enginetest.NewRepo(t)
	for _, name := range []string{"extra/a/000001.json", "extra/b"} {
		if err := r.SaveObject(ctx, name, []byte(name)); err != nil {
			t.Fatalf("SaveObject(%s): %v", name, err)
		}
	}
	if err := r.SaveObject(ctx, "extra/b", []byte("again")); err != nil {
		t.Fatalf("SaveObject replacing extra/b: %v", err)
	}
	names, err := r.ObjectNames(ctx, "extra")
	if err != nil || !slices.Equal(names, []string{"extra/a/000001.json", "extra/b"}) {
		t.Fatalf("ObjectNames(extra) = %v, %v", names, err)
	}
	if data, err := r.ReadObject(ctx, "extra/b", 100); err != nil || !bytes.Equal(data, []byte("again")) {
		t.Fatalf("ReadObject(extra/b) = %q, %v", data, err)
	}
	if _, err := r.ReadObject(ctx, "extra/b", 2); err == nil {
		t.Error("ReadObject read more than max bytes")
	}
	for _, name := range []string{"config", "top", "packs/ab/x", "snapshots/x", "keys/x", "index/x", "dicts/x", "locks/x", "tmp/x", "damaged/x", "extra/../config", "/extra/x"} {
		if err := r.SaveObject(ctx, name, []byte("x")); err == nil {
			t.Errorf("SaveObject(%s) succeeded", name)
		}
	}
}

// ValidFileName names the repository's own files only.
func TestValidFileName(t *testing.T) {
	id := "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
	for name, want := range map[string]bool{
		"config": true, "keys/k1": true, "snapshots/" + id: true, "index/" + id: true, "dicts/" + id: true,
		"packs/01/" + id: true, "packs/02/" + id: false, "snapshots/x": false, "locks/x": false, "tmp/x": false,
		"tape/set/000001.json": false, "keys/": false,
	} {
		if got := repo.ValidFileName(name); got != want {
			t.Errorf("ValidFileName(%q) = %v, want %v", name, got, want)
		}
	}
}
