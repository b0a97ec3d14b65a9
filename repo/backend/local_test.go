package backend_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"testing"

	"github.com/stasisbackup/stasis/internal/backendtest"
	"github.com/stasisbackup/stasis/repo/backend"
)

func TestLocalConformance(t *testing.T) {
	backendtest.RunConformance(t, func(t *testing.T) backend.Storage {
		return backend.NewLocal(t.TempDir())
	})
}

// TestScratchConformance: a scratch directory (no fsyncs) keeps every other
// promise of the contract.
func TestScratchConformance(t *testing.T) {
	backendtest.RunConformance(t, func(t *testing.T) backend.Storage {
		return backend.NewScratch(t.TempDir())
	})
}

// errSource is a data source that breaks after some bytes.
type errSource struct {
	data []byte
	at   int64
}

var errBroken = errors.New("the source broke")

func (e *errSource) ReadAt(p []byte, off int64) (int, error) {
	if off+int64(len(p)) <= e.at {
		return copy(p, e.data[off:]), nil
	}
	n := 0
	if off < e.at {
		n = copy(p, e.data[off:e.at])
	}
	return n, errBroken
}

// TestLocalPutInterrupted: a Put whose data source fails leaves no object
// and no temp file, on disk or listed.
func TestLocalPutInterrupted(t *testing.T) {
	dir := t.TempDir()
	l := backend.NewLocal(dir)
	if err := backend.PutBytes(t.Context(), l, "config", []byte("c")); err != nil {
		t.Fatal(err)
	}
	for _, at := range []int64{0, 1, 100 << 10} {
		src := &errSource{data: backendtest.Data(uint64(at), 1<<20), at: at}
		err := l.Put(t.Context(), "packs/ab/abcd", src, 1<<20)
		if !errors.Is(err, errBroken) {
			t.Fatalf("put from a source failing at %d: %v, want the source's error", at, err)
		}
	}
	if _, err := l.Stat(t.Context(), "packs/ab/abcd"); !errors.Is(err, backend.ErrNotExist) {
		t.Errorf("stat after the failed puts: %v, want ErrNotExist", err)
	}
	if _, err := os.Stat(filepath.Join(dir, "packs", "ab", "abcd")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the failed put left a file: %v", err)
	}
	names, err := backend.ListNames(t.Context(), l, "")
	if err != nil {
		t.Fatal(err)
	}
	if len(names) != 1 || names[0] != "config" {
		t.Errorf("list after the failed puts: %q, want [config]", names)
	}
	tmp, err := os.ReadDir(filepath.Join(dir, backend.TempDir))
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range tmp {
		t.Errorf("the failed put left the temp file %s", e.Name())
	}
}

// A reader shorter than the size given to Put stores nothing; a directory
// is not an object.
func TestLocalShortReaderAndDirectories(t *testing.T) {
	ctx := context.Background()
	s := backend.NewLocal(t.TempDir())
	err := s.Put(ctx, "packs/ab/short", bytes.NewReader([]byte("abc")), 10)
	if !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Fatalf("put from a short reader: %v, want io.ErrUnexpectedEOF", err)
	}
	if _, err := s.Stat(ctx, "packs/ab/short"); !errors.Is(err, backend.ErrNotExist) {
		t.Fatalf("stat after a failed put: %v, want ErrNotExist", err)
	}
	if _, err := s.Stat(ctx, "packs/ab"); !errors.Is(err, backend.ErrNotExist) {
		t.Fatalf("stat of a directory: %v, want ErrNotExist", err)
	}
	if _, err := s.Get(ctx, "packs", 0, -1); !errors.Is(err, backend.ErrNotExist) {
		t.Fatalf("get of a directory: %v, want ErrNotExist", err)
	}
}
