package quiesce

import (
	"bytes"
	"context"
	"math/rand"
	"os"
	"path/filepath"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

// dataRegions lists the [start, end) data regions of p (SEEK_DATA/SEEK_HOLE).
func dataRegions(t *testing.T, p string) [][2]int64 {
	t.Helper()
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	fi, _ := f.Stat()
	var out [][2]int64
	for off := int64(0); off < fi.Size(); {
		start, err := unix.Seek(int(f.Fd()), off, unix.SEEK_DATA)
		if err != nil {
			break
		}
		end, err := unix.Seek(int(f.Fd()), start, unix.SEEK_HOLE)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, [2]int64{start, end})
		off = end
	}
	return out
}

func allocated(t *testing.T, p string) int64 {
	t.Helper()
	var st syscall.Stat_t
	if err := syscall.Stat(p, &st); err != nil {
		t.Fatal(err)
	}
	return st.Blocks * 512
}

// Copy mode copies only the data extents of a preallocated (sparse)
// database: a 4 GiB file holding 6 MiB gives a 4 GiB copy that allocates
// about 6 MiB, with the same bytes, and its holes stay holes.
func TestCopyModeIsSparseAware(t *testing.T) {
	dir := t.TempDir()
	db := filepath.Join(dir, "data.mdb")
	const size = 4 << 30
	f, err := os.Create(db)
	if err != nil {
		t.Fatal(err)
	}
	rng := rand.New(rand.NewSource(10))
	var want int64
	for _, off := range []int64{0, 1<<30 + 12288, size - 2<<20} {
		b := make([]byte, 2<<20)
		rng.Read(b)
		if _, err := f.WriteAt(b, off); err != nil {
			t.Fatal(err)
		}
		want += int64(len(b))
	}
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	f.Close()
	if a := allocated(t, db); a > 2*want {
		t.Skipf("%s allocates %d bytes for %d written: its filesystem keeps no holes", dir, a, want)
	}
	srcRegions := dataRegions(t, db)
	opts := Options{Paths: []string{dir}, Freeze: FreezeCopy, Staging: t.TempDir()}
	_, err = Run(context.Background(), opts, func(ctx context.Context, s *Stage) error {
		staged := s.Path(db)
		fi, err := os.Stat(staged)
		if err != nil || staged == db {
			t.Fatalf("staged copy %s: %v", staged, err)
		}
		if fi.Size() != size {
			t.Errorf("staged copy is %d bytes, want %d", fi.Size(), int64(size))
		}
		if a := allocated(t, staged); a > want+want/2 {
			t.Errorf("staged copy allocates %d bytes (st_blocks), want about the %d bytes of data: holes were copied as zeros", a, want)
		}
		got := dataRegions(t, staged)
		if len(got) != len(srcRegions) {
			t.Fatalf("staged copy has data regions %v, the original %v", got, srcRegions)
		}
		a, _ := os.Open(db)
		defer a.Close()
		b, _ := os.Open(staged)
		defer b.Close()
		for i, r := range srcRegions {
			if got[i] != r {
				t.Errorf("data region %d of the copy is %v, of the original %v", i, got[i], r)
				continue
			}
			x, y := make([]byte, r[1]-r[0]), make([]byte, r[1]-r[0])
			a.ReadAt(x, r[0])
			b.ReadAt(y, r[0])
			if !bytes.Equal(x, y) {
				t.Errorf("data region %v differs in the copy", r)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}
