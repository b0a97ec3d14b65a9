package repo_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stasisbackup/stasis/internal/enginetest"
	"github.com/stasisbackup/stasis/internal/pack"
	"github.com/stasisbackup/stasis/repo"
	"github.com/stasisbackup/stasis/repo/blob"
	"github.com/stasisbackup/stasis/repo/crypto"
)

func password(pw string) func(context.Context) ([]byte, error) {
	return func(context.Context) ([]byte, error) { return []byte(pw), nil }
}

// initEncrypted makes an encrypted repository with enginetest's settings and
// closes it; it returns the directory.
func initEncrypted(t *testing.T) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "repo")
	r, err := repo.Init(context.Background(), enginetest.Local(dir), enginetest.InitOptions(), repo.OpenOptions{})
	if err != nil {
		t.Fatalf("init: %v", err)
	}
	if !r.Encrypted() || r.KeyID() == "" || r.Config().IDKey != "" {
		t.Fatalf("new repository: encrypted %v, key %q, id_key %q in Config", r.Encrypted(), r.KeyID(), r.Config().IDKey)
	}
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	return dir
}

func openWith(t *testing.T, dir, pw string) (*repo.Repository, error) {
	t.Helper()
	r, err := repo.Open(context.Background(), enginetest.Local(dir), repo.OpenOptions{Password: password(pw)})
	if err == nil {
		t.Cleanup(func() { r.Close() })
	}
	return r, err
}

func mustOpen(t *testing.T, dir, pw string) *repo.Repository {
	t.Helper()
	r, err := openWith(t, dir, pw)
	if err != nil {
		t.Fatalf("open %s with %q: %v", dir, pw, err)
	}
	return r
}

func TestEncryptedConfigShowsNoSecret(t *testing.T) {
	dir := initEncrypted(t)
	data, err := os.ReadFile(filepath.Join(dir, "config"))
	if err != nil {
		t.Fatal(err)
	}
	var fields map[string]any
	if err := json.Unmarshal(data, &fields); err != nil {
		t.Fatal(err)
	}
	for _, secret := range []string{"chunker_polynomial", "id_key"} {
		if _, ok := fields[secret]; ok {
			t.Errorf("config shows %s in the clear:\n%s", secret, data)
		}
	}
	if fields["encrypted"] != true {
		t.Errorf("config does not say encrypted: %s", data)
	}
	pol := strings.TrimPrefix(enginetest.Polynomial.String(), "0x")
	if bytes.Contains(data, []byte(pol)) || bytes.Contains(data, enginetest.IDKey) {
		t.Errorf("config contains the polynomial or id key:\n%s", data)
	}
	keys, err := os.ReadDir(filepath.Join(dir, "keys"))
	if err != nil || len(keys) != 1 {
		t.Fatalf("keys/: %v, %d files, want 1", err, len(keys))
	}

	r := mustOpen(t, dir, enginetest.Password)
	if got := r.Config().Polynomial(); got != enginetest.Polynomial {
		t.Errorf("opened polynomial %v, want %v", got, enginetest.Polynomial)
	}
	if r.Config().IDKey != "" || r.Config().Secrets == nil {
		t.Errorf("Config() of an encrypted repository: id_key %q, secrets %d bytes", r.Config().IDKey, len(r.Config().Secrets))
	}
	if r.KeyID() != keys[0].Name() {
		t.Errorf("KeyID %q, key file %q", r.KeyID(), keys[0].Name())
	}
}

func TestOpenWrongAndMissingPassword(t *testing.T) {
	dir := initEncrypted(t)
	_, err := openWith(t, dir, "not the password")
	if !errors.Is(err, crypto.ErrWrongPassword) {
		t.Fatalf("wrong password: %v, want ErrWrongPassword", err)
	}
	if want := "wrong password for repository " + dir + " (no key file matched)"; !strings.Contains(err.Error(), want) {
		t.Errorf("wrong password: %q does not contain %q", err, want)
	}
	_, err = repo.Open(context.Background(), enginetest.Local(dir), repo.OpenOptions{})
	if !errors.Is(err, crypto.ErrNoPassword) {
		t.Fatalf("no password: %v, want ErrNoPassword", err)
	}
	// Where a password can come from is the CLI's to say
	// (cmd/stasis TestNoPasswordNamesTheSources).
	// The password source failing is reported as such.
	_, err = repo.Open(context.Background(), enginetest.Local(dir), repo.OpenOptions{Password: func(context.Context) ([]byte, error) {
		return nil, errors.New("vault sealed")
	}})
	if err == nil || !strings.Contains(err.Error(), "vault sealed") {
		t.Errorf("failing source: %v", err)
	}
}

func TestInitRefusesNoPassword(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "repo")
	o := enginetest.InitOptions()
	o.Password = nil
	if _, err := repo.Init(context.Background(), enginetest.Local(dir), o, repo.OpenOptions{}); !errors.Is(err, crypto.ErrNoPassword) {
		t.Fatalf("init without password: %v, want ErrNoPassword", err)
	}
	if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("init without password left %s behind: %v", dir, err)
	}
}

func TestInsecureRepositoryKeepsPlainLayout(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "repo")
	o := enginetest.InitOptions()
	o.Password, o.InsecureNoPassword = nil, true
	r, err := repo.Init(context.Background(), enginetest.Local(dir), o, repo.OpenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if r.Encrypted() {
		t.Error("insecure repository says it is encrypted")
	}
	r.Close()
	if _, err := os.Stat(filepath.Join(dir, "keys")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("insecure repository has keys/: %v", err)
	}
	data, _ := os.ReadFile(filepath.Join(dir, "config"))
	c, err := repo.DecodeConfig(data)
	if err != nil || c.Encrypted || c.Polynomial() != enginetest.Polynomial {
		t.Fatalf("plain config: %+v, %v", c, err)
	}
	r, err = repo.Open(context.Background(), enginetest.Local(dir), repo.OpenOptions{}) // no password needed
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if _, err := r.Keys(context.Background()); err == nil {
		t.Error("Keys of an unencrypted repository did not fail")
	}
	if _, err := r.AddKey(context.Background(), []byte("pw"), crypto.TestKDFParams); err == nil {
		t.Error("AddKey to an unencrypted repository did not fail")
	}
}

func TestSameIDsEncryptedAndPlain(t *testing.T) {
	enc := mustOpen(t, initEncrypted(t), enginetest.Password)
	o := enginetest.InitOptions()
	o.InsecureNoPassword = true
	plain, err := repo.Init(context.Background(), enginetest.Local(filepath.Join(t.TempDir(), "plain")), o, repo.OpenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer plain.Close()
	data := []byte("the same chunk in two repositories")
	if enc.Hash(data) != plain.Hash(data) {
		t.Error("the id key of an encrypted repository differs from InitOptions.IDKey")
	}
}

func TestKeyAddRemovePasswd(t *testing.T) {
	ctx := context.Background()
	dir := initEncrypted(t)
	r := mustOpen(t, dir, enginetest.Password)
	first := r.KeyID()

	// The only key cannot be removed, whoever asks.
	if _, err := r.RemoveKey(ctx, first); err == nil || !strings.Contains(err.Error(), "last key") {
		t.Fatalf("removing the last key: %v", err)
	}
	second, err := r.AddKey(ctx, []byte("second password"), crypto.TestKDFParams)
	if err != nil {
		t.Fatal(err)
	}
	keys, err := r.Keys(ctx)
	if err != nil || len(keys) != 2 {
		t.Fatalf("Keys: %v, %d keys", err, len(keys))
	}
	for _, k := range keys {
		if k.Current != (k.ID == first) {
			t.Errorf("key %s: Current %v", k.ID[:8], k.Current)
		}
	}
	// The key in use cannot be removed through its own password.
	if _, err := r.RemoveKey(ctx, first[:10]); err == nil || !strings.Contains(err.Error(), "in use") {
		t.Fatalf("removing the key in use: %v", err)
	}
	if _, err := r.RemoveKey(ctx, "ffff-no-such"); err == nil {
		t.Error("removing an unknown key did not fail")
	}
	r.Close()

	// The second password opens the same repository and can remove the first.
	r2 := mustOpen(t, dir, "second password")
	if r2.KeyID() != second {
		t.Errorf("second password opened key %s, want %s", r2.KeyID(), second)
	}
	if removed, err := r2.RemoveKey(ctx, first[:8]); err != nil || removed != first {
		t.Fatalf("remove first key: %q, %v", removed, err)
	}
	r2.Close()
	if _, err := openWith(t, dir, enginetest.Password); !errors.Is(err, crypto.ErrWrongPassword) {
		t.Fatalf("removed key still opens: %v", err)
	}

	// passwd: the new password works, the old one no longer does.
	r3 := mustOpen(t, dir, "second password")
	third, err := r3.ChangePassword(ctx, []byte("third password"), crypto.TestKDFParams)
	if err != nil {
		t.Fatal(err)
	}
	if r3.KeyID() != third {
		t.Errorf("after passwd KeyID %s, want %s", r3.KeyID(), third)
	}
	r3.Close()
	if _, err := openWith(t, dir, "second password"); !errors.Is(err, crypto.ErrWrongPassword) {
		t.Fatalf("old password after passwd: %v", err)
	}
	mustOpen(t, dir, "third password")
	if ents, _ := os.ReadDir(filepath.Join(dir, "keys")); len(ents) != 1 || ents[0].Name() != third {
		t.Errorf("keys/ after passwd: %v", ents)
	}
}

func TestKeyFileDamageNamed(t *testing.T) {
	dir := initEncrypted(t)
	ents, _ := os.ReadDir(filepath.Join(dir, "keys"))
	name := filepath.Join(dir, "keys", ents[0].Name())
	if err := os.WriteFile(name, []byte("{not json"), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err := openWith(t, dir, enginetest.Password)
	if !errors.Is(err, crypto.ErrWrongPassword) || !strings.Contains(err.Error(), ents[0].Name()) {
		t.Fatalf("damaged key file: %v; want a wrong-password error naming %s", err, ents[0].Name())
	}
	os.Remove(name)
	if _, err = openWith(t, dir, enginetest.Password); err == nil || !strings.Contains(err.Error(), "no key files") {
		t.Fatalf("no key files: %v", err)
	}
}

// TestTamperedBlobIsCorrupt flips one bit of a sealed blob and of a sealed
// pack header, and moves a blob's ciphertext under another type.
func TestTamperedBlobIsCorrupt(t *testing.T) {
	ctx := context.Background()
	dir := initEncrypted(t)
	r := mustOpen(t, dir, enginetest.Password)
	data := bytes.Repeat([]byte("tamper me "), 1000)
	id := r.Hash(data)
	if _, err := r.SaveBlob(ctx, blob.Data, id, data); err != nil {
		t.Fatal(err)
	}
	if err := r.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	loc, ok, err := r.Index().Lookup(id)
	if err != nil || !ok {
		t.Fatalf("lookup: %v %v", ok, err)
	}
	if got, err := r.LoadBlob(ctx, id, nil); err != nil || !bytes.Equal(got, data) {
		t.Fatalf("load intact blob: %v", err)
	}
	if loc.Storage != pack.Zstd || int(loc.Length) < crypto.Overhead {
		t.Errorf("location %+v: want zstd and at least the AEAD overhead", loc)
	}
	packData, err := os.ReadFile(filepath.Join(dir, repo.PackName(loc.Pack)))
	if err != nil {
		t.Fatal(err)
	}
	stored := packData[loc.Offset : loc.Offset+uint64(loc.Length)]
	if _, err := r.DecodeBlob(id, blob.Tree, loc.Storage, int(loc.RawLength), stored, nil); !errors.Is(err, repo.ErrCorruptBlob) {
		t.Errorf("blob opened as another type: %v, want ErrCorruptBlob", err)
	}
	entries, err := r.DecodePackHeader(packData)
	if err != nil || len(entries) != 1 || entries[0].ID != id {
		t.Fatalf("sealed header: %v, %+v", err, entries)
	}
	hdrAt := len(packData) - pack.TrailerSize - 1 // last byte of the sealed header (its tag)
	packData[hdrAt] ^= 1
	if _, err := r.DecodePackHeader(packData); !errors.Is(err, pack.ErrCorrupt) {
		t.Errorf("flipped header bit: %v, want pack.ErrCorrupt", err)
	}
	packData[hdrAt] ^= 1

	flip := loc.Offset + crypto.NonceSize + 3 // inside the ciphertext
	packData[flip] ^= 0x40
	if err := os.WriteFile(filepath.Join(dir, repo.PackName(loc.Pack)), packData, 0o600); err != nil {
		t.Fatal(err)
	}
	r.Close()
	r = mustOpen(t, dir, enginetest.Password)
	got, err := r.LoadBlob(ctx, id, nil)
	if !errors.Is(err, repo.ErrCorruptBlob) || got != nil {
		t.Fatalf("flipped ciphertext bit: %d bytes, %v; want ErrCorruptBlob and no data", len(got), err)
	}
	if !strings.Contains(err.Error(), id.String()) {
		t.Errorf("error %q does not name blob %s", err, id)
	}
}

func TestSnapshotFileSealed(t *testing.T) {
	ctx := context.Background()
	dir := initEncrypted(t)
	r := mustOpen(t, dir, enginetest.Password)
	sn := &repo.Snapshot{Tree: blob.ID{7}, Paths: []string{"/srv/secret-host-path"}, Host: "secret-host", Tags: []string{"secret-tag"}}
	id, err := r.SaveSnapshot(ctx, sn)
	if err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(filepath.Join(dir, repo.SnapshotName(id)))
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(data, []byte("secret")) || bytes.Contains(data, []byte("stasis-snapshot")) {
		t.Errorf("snapshot file shows plaintext: %q", data)
	}
	if _, err := repo.DecodeSnapshot(id, data); err == nil {
		t.Error("plain DecodeSnapshot accepted a sealed snapshot file")
	}
	got, err := r.LoadSnapshot(ctx, id)
	if err != nil || got.Host != "secret-host" || got.ID != id {
		t.Fatalf("LoadSnapshot: %+v, %v", got, err)
	}
	list, bad, err := r.Snapshots(ctx) // from the index copy
	if err != nil || len(bad) != 0 || len(list) != 1 || list[0].Host != "secret-host" {
		t.Fatalf("Snapshots: %v, bad %v, %d", err, bad, len(list))
	}
	// Another repository's key does not open it.
	other := mustOpen(t, initEncrypted(t), enginetest.Password)
	if _, err := other.DecodeSnapshotFile(id, data); !errors.Is(err, repo.ErrCorruptSnapshot) {
		t.Errorf("snapshot opened with another repository's key: %v", err)
	}
}
