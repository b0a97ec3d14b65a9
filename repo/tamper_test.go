package repo_test

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"github.com/stasisbackup/stasis/internal/enginetest"
	"github.com/stasisbackup/stasis/repo"
)

// listTree returns every file below dir with its size and mode, to see
// that nothing was written.
func listTree(t *testing.T, dir string) []string {
	t.Helper()
	var out []string
	filepath.Walk(dir, func(p string, fi os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		out = append(out, fmt.Sprintf("%s %v %d %v", rel, fi.Mode(), fi.Size(), fi.ModTime()))
		return nil
	})
	sort.Strings(out)
	return out
}

// Issue 11 item 6: rewriting an encrypted repository's config as
// unencrypted (with a plain id key of the attacker's choosing) must not make
// stasis open it, and so write plaintext into it: key files exist, so the
// config was tampered with or damaged.
func TestConfigClaimingNoEncryptionIsRefused(t *testing.T) {
	dir := initEncrypted(t)
	data, err := os.ReadFile(filepath.Join(dir, "config"))
	if err != nil {
		t.Fatal(err)
	}
	var cfg map[string]any
	if err := json.Unmarshal(data, &cfg); err != nil {
		t.Fatal(err)
	}
	cfg["encrypted"] = false
	delete(cfg, "secrets")
	cfg["chunker_polynomial"] = strings.TrimPrefix(enginetest.Polynomial.String(), "0x")
	cfg["id_key"] = hex.EncodeToString([]byte("attacker-chosen-id-key-012345678"))
	data, _ = json.MarshalIndent(cfg, "", "  ")
	os.Chmod(filepath.Join(dir, "config"), 0o600)
	if err := os.WriteFile(filepath.Join(dir, "config"), data, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := repo.DecodeConfig(data); err != nil {
		t.Fatalf("the forged config is not even a valid unencrypted config: %v", err)
	}
	before := listTree(t, dir)
	cache := t.TempDir()
	for _, o := range []repo.OpenOptions{
		{CacheDir: cache, Password: password(enginetest.Password)},
		{CacheDir: cache},
	} {
		r, err := repo.Open(context.Background(), enginetest.Local(dir), o)
		if err == nil {
			r.Close()
			t.Fatalf("open (password given: %v) of a repository whose config was switched to unencrypted succeeded", o.Password != nil)
		}
		for _, want := range []string{"not encrypted", "key files", "tampered", "restore", "config"} {
			if !strings.Contains(err.Error(), want) {
				t.Errorf("open (password given: %v): %q does not say %q", o.Password != nil, err, want)
			}
		}
	}
	if after := listTree(t, dir); strings.Join(after, "\n") != strings.Join(before, "\n") {
		t.Errorf("the refused opens wrote into the repository:\nbefore %v\nafter  %v", before, after)
	}
	if ents, _ := os.ReadDir(cache); len(ents) != 0 {
		t.Errorf("the refused opens made a cache: %v", ents)
	}
}
