package main

import (
	"bytes"
	"context"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestManPagesAreCurrent regenerates the man pages and compares them with
// docs/man, so the committed pages never describe another command set.
func TestManPagesAreCurrent(t *testing.T) {
	dir := t.TempDir()
	// Flag defaults come from STASIS_* variables (TestMain sets some): the
	// pages are made without them, as `go run` in a clean shell makes them.
	for _, kv := range os.Environ() {
		if k, _, _ := strings.Cut(kv, "="); strings.HasPrefix(k, "STASIS_") {
			t.Setenv(k, "")
		}
	}
	var stderr bytes.Buffer
	if code := run(context.Background(), []string{"gen-man", dir}, bytes.NewReader(nil), io.Discard, &stderr); code != 0 {
		t.Fatalf("gen-man: exit %d: %s", code, stderr.String())
	}
	committed, _ := filepath.Glob("../../docs/man/*.1")
	fresh, _ := filepath.Glob(filepath.Join(dir, "*.1"))
	if len(fresh) < 10 {
		t.Fatalf("only %d man pages generated", len(fresh))
	}
	if len(committed) != len(fresh) {
		t.Errorf("docs/man has %d pages, the commands make %d: run `go run ./cmd/stasis gen-man docs/man`", len(committed), len(fresh))
	}
	for _, f := range fresh {
		want, _ := os.ReadFile(f)
		got, err := os.ReadFile(filepath.Join("../../docs/man", filepath.Base(f)))
		if err != nil || !bytes.Equal(got, want) {
			t.Errorf("docs/man/%s is stale or missing: run `go run ./cmd/stasis gen-man docs/man`", filepath.Base(f))
		}
	}
}
