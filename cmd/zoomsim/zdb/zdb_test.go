package zdb

import (
	"bytes"
	"errors"
	"math/rand"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestCreateCheck(t *testing.T) {
	p := filepath.Join(t.TempDir(), "X500.db")
	if err := Create(p, 64, 7); err != nil {
		t.Fatal(err)
	}
	st, err := Scan(p)
	if err != nil {
		t.Fatalf("fresh database fails check: %v", err)
	}
	if st.Pages != 64 || st.Seed != 7 || st.MaxTxID != 0 {
		t.Fatalf("stats %+v, want 64 pages, seed 7, tx 0", st)
	}
	fi, _ := os.Stat(p)
	if fi.Size() != 65*PageSize {
		t.Fatalf("size %d, want %d", fi.Size(), 65*PageSize)
	}
	b, _ := os.ReadFile(p)
	if !bytes.Contains(b, []byte(",o=Zoomserv\n")) || !bytes.Contains(b, []byte("telephoneNumber: ")) {
		t.Fatal("pages carry no directory records")
	}
}

func TestCreateDeterministic(t *testing.T) {
	dir := t.TempDir()
	a, b, c := filepath.Join(dir, "a"), filepath.Join(dir, "b"), filepath.Join(dir, "c")
	for _, x := range []struct {
		p    string
		seed int64
	}{{a, 1}, {b, 1}, {c, 2}} {
		if err := Create(x.p, 32, x.seed); err != nil {
			t.Fatal(err)
		}
	}
	ba, _ := os.ReadFile(a)
	bb, _ := os.ReadFile(b)
	bc, _ := os.ReadFile(c)
	if !bytes.Equal(ba, bb) {
		t.Fatal("same seed gave different files")
	}
	if bytes.Equal(ba, bc) {
		t.Fatal("different seeds gave the same file")
	}
}

func TestFlippedByteNamesPage(t *testing.T) {
	p := filepath.Join(t.TempDir(), "X500.db")
	if err := Create(p, 16, 1); err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(p)
	b[5*PageSize+100] ^= 0x01
	if err := os.WriteFile(p, b, 0o644); err != nil {
		t.Fatal(err)
	}
	err := Check(p)
	var pe *PageError
	if !errors.As(err, &pe) || pe.Page != 5 || !errors.Is(err, ErrCorrupt) {
		t.Fatalf("Check = %v, want a PageError for page 5", err)
	}
	if !strings.Contains(err.Error(), "page 5: checksum mismatch") {
		t.Fatalf("message %q does not name page 5 and the reason", err)
	}
}

func TestHeaderAndTruncation(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "X500.db")
	if err := Create(p, 8, 1); err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(p)
	trunc := filepath.Join(dir, "trunc")
	os.WriteFile(trunc, b[:len(b)-PageSize], 0o644)
	var pe *PageError
	if err := Check(trunc); !errors.As(err, &pe) || pe.Page != 8 {
		t.Fatalf("truncated: %v, want page 8", err)
	}
	bad := filepath.Join(dir, "bad")
	b[0] = 'X'
	os.WriteFile(bad, b, 0o644)
	if err := Check(bad); !errors.As(err, &pe) || pe.Page != 0 {
		t.Fatalf("bad magic: %v, want page 0", err)
	}
}

// A transaction interrupted after its first page write leaves a file whose
// checksums all hold but whose sum is broken: the torn state Check reports.
func TestTornTransaction(t *testing.T) {
	p := filepath.Join(t.TempDir(), "X500.db")
	if err := Create(p, 32, 1); err != nil {
		t.Fatal(err)
	}
	orig, _ := os.ReadFile(p)
	db, err := Open(p)
	if err != nil {
		t.Fatal(err)
	}
	rng := rand.New(rand.NewSource(3))
	var tx Tx
	for {
		tx, err = db.Transact(rng, 1)
		if err != nil {
			t.Fatal(err)
		}
		if tx.Deltas[0] != 0 {
			break
		}
	}
	db.Close()
	if err := Check(p); err != nil {
		t.Fatalf("after a whole transaction: %v", err)
	}
	// Put back every page but the first one written: a copy torn mid-transaction.
	after, _ := os.ReadFile(p)
	torn := append([]byte(nil), orig...)
	first := tx.Pages[0]
	copy(torn[first*PageSize:(first+1)*PageSize], after[first*PageSize:])
	os.WriteFile(p, torn, 0o644)
	var pe *PageError
	if err := Check(p); !errors.As(err, &pe) || pe.Page != -1 || !strings.Contains(err.Error(), "torn") {
		t.Fatalf("torn copy: %v, want a broken sum", err)
	}
}

func FuzzCheckReader(f *testing.F) {
	p := filepath.Join(f.TempDir(), "X500.db")
	if err := Create(p, 2, 1); err != nil {
		f.Fatal(err)
	}
	b, _ := os.ReadFile(p)
	f.Add(b)
	f.Add(b[:PageSize])
	f.Fuzz(func(t *testing.T, data []byte) {
		_, _ = ScanReader("fuzz", bytes.NewReader(data))
	})
}
