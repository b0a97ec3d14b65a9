package backendtest_test

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/stasisbackup/stasis/internal/backendtest"
	"github.com/stasisbackup/stasis/repo/backend"
	"github.com/stasisbackup/stasis/repo/backend/s3"
)

func TestMain(m *testing.M) { backendtest.Main(m) }

func TestWeedBinary(t *testing.T) {
	cache := t.TempDir()
	t.Setenv(backendtest.EnvWeed, "")
	t.Setenv(backendtest.EnvCICache, cache)
	if _, _, err := backendtest.WeedBinary(); err == nil || !strings.Contains(err.Error(), ".ci/build-seaweedfs") {
		t.Errorf("no binary: %v, want an error saying how to build it", err)
	}
	write := func(name string, mode os.FileMode, age time.Duration) string {
		p := filepath.Join(cache, name)
		if err := os.WriteFile(p, []byte("#!/bin/sh\n"), mode); err != nil {
			t.Fatal(err)
		}
		when := time.Now().Add(-age)
		if err := os.Chtimes(p, when, when); err != nil {
			t.Fatal(err)
		}
		return p
	}
	old := write("weed-v1", 0o755, 2*time.Hour)
	write("weed-v2.tmp", 0o755, 0)                    // a build in progress
	write("weed-v3", 0o644, 0)                        // not executable
	os.Mkdir(filepath.Join(cache, "weed-dir"), 0o755) // not a file
	if got, explicit, err := backendtest.WeedBinary(); err != nil || got != old || explicit {
		t.Errorf("WeedBinary = %q, %v, %v; want %q from the cache", got, explicit, err, old)
	}
	newer := write("weed-v4", 0o755, time.Hour)
	if got, _, err := backendtest.WeedBinary(); err != nil || got != newer {
		t.Errorf("WeedBinary = %q, %v; want the newest, %q", got, err, newer)
	}
	t.Setenv(backendtest.EnvWeed, old)
	if got, explicit, err := backendtest.WeedBinary(); err != nil || got != old || !explicit {
		t.Errorf("with %s set: %q, %v, %v; want %q", backendtest.EnvWeed, got, explicit, err, old)
	}
	t.Setenv(backendtest.EnvWeed, filepath.Join(cache, "weed-v3"))
	if _, explicit, err := backendtest.WeedBinary(); err == nil || !explicit {
		t.Errorf("with %s naming a file that is not executable: %v, want an error", backendtest.EnvWeed, err)
	}
}

// TestSeaweedTargets: targets are fresh and separate, and their URL and
// environment open the same storage as their Config.
func TestSeaweedTargets(t *testing.T) {
	srv := backendtest.Seaweed(t)
	t.Logf("SeaweedFS at %s started in %v", srv.Endpoint, srv.Startup)
	a, ta := backendtest.NewS3(t)
	b, _ := backendtest.NewS3(t)
	if err := backend.PutBytes(t.Context(), a, "config", []byte("a")); err != nil {
		t.Fatal(err)
	}
	if names, err := backend.ListNames(t.Context(), b, ""); err != nil || len(names) != 0 {
		t.Errorf("a second target sees %q, %v", names, err)
	}
	if !strings.HasPrefix(ta.URL, "s3:http://"+srv.Endpoint+"/"+backendtest.SeaweedBucket+"/") {
		t.Errorf("target URL %q", ta.URL)
	}
	for _, want := range []string{s3.EnvAccessKeyID, s3.EnvSecretAccessKey, s3.EnvRegion} {
		if !slices.ContainsFunc(ta.Env, func(kv string) bool { return strings.HasPrefix(kv, want+"=") }) {
			t.Errorf("target Env %q lacks %s", ta.Env, want)
		}
	}
	ta.Setenv(t)
	cfg, err := s3.Parse(ta.URL)
	if err != nil {
		t.Fatal(err)
	}
	st, err := s3.Open(t.Context(), cfg)
	if err != nil {
		t.Fatalf("open %s with the target's environment: %v", ta.URL, err)
	}
	if got, err := backend.ReadAll(t.Context(), st, "config", 10); err != nil || string(got) != "a" {
		t.Errorf("through the URL: %q, %v", got, err)
	}
	if srv2 := backendtest.Seaweed(t); srv2 != srv {
		t.Error("a second Seaweed started another server")
	}
}
