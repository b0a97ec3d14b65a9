// Package enginetest has helpers for tests that need a real repository:
// deterministic settings (fixed chunker polynomial, id key and password,
// encrypted with cheap KDF parameters) and a full
// `check --read-data` when the test ends, as bbolt's MustCreateDB does.
package enginetest

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/restic/chunker"
	"github.com/stasisbackup/stasis/engine"
	"github.com/stasisbackup/stasis/repo"
	"github.com/stasisbackup/stasis/repo/backend"
	"github.com/stasisbackup/stasis/repo/crypto"
)

// Polynomial is the fixed chunker polynomial of test repositories (restic's).
const Polynomial = chunker.Pol(0x3DA3358B4DC173)

// IDKey is the fixed BLAKE3 id key of test repositories.
var IDKey = []byte("stasis-test-id-key-0123456789abc")

// Password is the password of test repositories.
const Password = "stasis-test-password"

// InitOptions returns deterministic settings of an encrypted repository
// with Password and the cheap crypto.TestKDFParams.
func InitOptions() repo.InitOptions {
	return repo.InitOptions{Polynomial: Polynomial, IDKey: IDKey, Password: []byte(Password), KDF: crypto.TestKDFParams}
}

// InitOptionsV1 is InitOptions for a version 1 repository: one blob per
// frame, and a compression dictionary once enough data is stored (the
// dictionary tests need one).
func InitOptionsV1() repo.InitOptions {
	o := InitOptions()
	o.Version = 1
	return o
}

// OpenOptions returns options that open a test repository with Password
// (and the default cache directory).
func OpenOptions() repo.OpenOptions {
	return repo.OpenOptions{Password: func(context.Context) ([]byte, error) { return []byte(Password), nil }}
}

// OpenOptionsIn is OpenOptions with the cache in cacheDir.
func OpenOptionsIn(cacheDir string) repo.OpenOptions {
	o := OpenOptions()
	o.CacheDir = cacheDir
	return o
}

// Local returns the storage of a local repository directory.
func Local(dir string) repo.Storage { return backend.NewLocal(dir) }

// NewRepo creates a repository in a temporary directory. When the test ends
// the repository is closed and checked with ReadData; damage fails the test.
func NewRepo(t testing.TB) *repo.Repository {
	t.Helper()
	return newRepo(t, InitOptions())
}

// NewRepoV1 is NewRepo for a version 1 repository (InitOptionsV1).
func NewRepoV1(t testing.TB) *repo.Repository {
	t.Helper()
	return newRepo(t, InitOptionsV1())
}

func newRepo(t testing.TB, o repo.InitOptions) *repo.Repository {
	t.Helper()
	dir := t.TempDir()
	r, err := repo.Init(context.Background(), backend.NewLocal(dir+"/repo"), o, OpenOptionsIn(dir+"/cache"))
	if err != nil {
		t.Fatalf("init repository: %v", err)
	}
	t.Cleanup(func() { CheckAndClose(t, r) })
	return r
}

// CheckAndClose runs a full check on r, reports any damage, and closes it.
func CheckAndClose(t testing.TB, r *repo.Repository) {
	t.Helper()
	defer r.Close()
	rep, err := engine.Check(context.Background(), r, engine.CheckOptions{ReadData: true})
	if err != nil {
		t.Errorf("check %s: %v", r.Location(), err)
		return
	}
	if !rep.OK() {
		t.Errorf("check %s found damage:\n%s", r.Location(), strings.Join(rep.Errors, "\n"))
	}
}

// FileHashes returns relative path → SHA-256 (hex) of every regular file
// below dir, to compare a restored tree with its source.
func FileHashes(t testing.TB, dir string) map[string]string {
	t.Helper()
	out := map[string]string{}
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || !d.Type().IsRegular() {
			return err
		}
		data, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		sum := sha256.Sum256(data)
		rel, _ := filepath.Rel(dir, p)
		out[rel] = hex.EncodeToString(sum[:])
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}
