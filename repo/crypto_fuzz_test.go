package repo_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/stasisbackup/stasis/internal/enginetest"
	"github.com/stasisbackup/stasis/internal/pack"
	"github.com/stasisbackup/stasis/repo"
	"github.com/stasisbackup/stasis/repo/blob"
	"github.com/zeebo/blake3"
)

// fuzzRepo is an encrypted repository holding one saved blob; it returns
// the repository, the blob's id and its sealed pack bytes, and the pack.
func fuzzRepo(f *testing.F) (*repo.Repository, blob.ID, []byte, []byte) {
	f.Helper()
	ctx := context.Background()
	dir := filepath.Join(f.TempDir(), "repo")
	r, err := repo.Init(ctx, enginetest.Local(dir), enginetest.InitOptions(), repo.OpenOptions{})
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { r.Close() })
	data := []byte("a chunk to fuzz the sealed-blob decoder with, a chunk to fuzz")
	id := r.Hash(data)
	if _, err := r.SaveBlob(ctx, blob.Data, id, data); err != nil {
		f.Fatal(err)
	}
	if err := r.Flush(ctx); err != nil {
		f.Fatal(err)
	}
	loc, _, err := r.Index().Lookup(id)
	if err != nil {
		f.Fatal(err)
	}
	p, err := os.ReadFile(filepath.Join(dir, repo.PackName(loc.Pack)))
	if err != nil {
		f.Fatal(err)
	}
	return r, id, p[loc.Offset : loc.Offset+uint64(loc.Length)], p
}

// FuzzDecodeSealedBlob: any bytes but the sealed blob itself fail with
// ErrCorruptBlob (never a panic, never data).
func FuzzDecodeSealedBlob(f *testing.F) {
	r, id, sealed, _ := fuzzRepo(f)
	f.Add(sealed, uint8(pack.Raw), uint16(61))
	f.Add(sealed[:len(sealed)-1], uint8(pack.Zstd), uint16(61))
	f.Add([]byte{}, uint8(pack.Raw), uint16(0))
	f.Fuzz(func(t *testing.T, data []byte, storage uint8, rawLen uint16) {
		plain, err := r.DecodeBlob(id, blob.Data, pack.Storage(storage), int(rawLen), data, nil)
		if err != nil {
			if !errors.Is(err, repo.ErrCorruptBlob) {
				t.Fatalf("error %v does not match ErrCorruptBlob", err)
			}
			if plain != nil {
				t.Fatal("data returned with an error")
			}
			return
		}
		if r.Hash(plain) != id {
			t.Fatal("accepted a blob that does not hash to its id")
		}
	})
}

// FuzzDecodeSealedPackHeader: a modified pack never yields a header unless
// it still authenticates; errors match pack.ErrCorrupt.
func FuzzDecodeSealedPackHeader(f *testing.F) {
	r, _, _, p := fuzzRepo(f)
	f.Add(p)
	f.Add(p[:len(p)-1])
	f.Fuzz(func(t *testing.T, data []byte) {
		entries, err := r.DecodePackHeader(data)
		if err != nil {
			if !errors.Is(err, pack.ErrCorrupt) {
				t.Fatalf("error %v does not match pack.ErrCorrupt", err)
			}
			return
		}
		for _, e := range entries {
			if e.Offset+uint64(e.Length) > uint64(len(data)) {
				t.Fatalf("entry %+v outside a pack of %d bytes", e, len(data))
			}
		}
	})
}

// FuzzDecodeSealedSnapshot: snapshot file bytes decode only when they hash
// to their name and authenticate.
func FuzzDecodeSealedSnapshot(f *testing.F) {
	r, _, _, _ := fuzzRepo(f)
	id, err := r.SaveSnapshot(context.Background(), &repo.Snapshot{Tree: blob.ID{1}, Paths: []string{"/srv"}, Host: "h"})
	if err != nil {
		f.Fatal(err)
	}
	good, err := os.ReadFile(filepath.Join(r.Location(), repo.SnapshotName(id)))
	if err != nil {
		f.Fatal(err)
	}
	f.Add(good)
	f.Add([]byte(`{"format":"stasis-snapshot","version":1,"tree":"01"}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		sn, err := r.DecodeSnapshotFile(blob.ID(blake3.Sum256(data)), data)
		if err != nil {
			if !errors.Is(err, repo.ErrCorruptSnapshot) && !errors.Is(err, repo.ErrVersion) {
				t.Fatalf("error %v matches neither ErrCorruptSnapshot nor ErrVersion", err)
			}
			return
		}
		if sn.Tree.IsZero() {
			t.Fatal("accepted a snapshot without a tree")
		}
	})
}

// FuzzDecodeEncryptedConfig: an accepted encrypted config never shows a
// secret in the clear and always carries sealed secrets.
func FuzzDecodeEncryptedConfig(f *testing.F) {
	r, _, _, _ := fuzzRepo(f)
	good, err := os.ReadFile(filepath.Join(r.Location(), "config"))
	if err != nil {
		f.Fatal(err)
	}
	f.Add(good)
	f.Add([]byte(`{"format":"stasis-config","version":1,"encrypted":true}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := repo.DecodeConfig(data)
		if err != nil || !c.Encrypted {
			return
		}
		if c.ChunkerPolynomial != "" || c.IDKey != "" || len(c.Secrets) == 0 {
			t.Fatalf("encrypted config accepted with secrets in the clear or none sealed: %+v", c)
		}
	})
}
