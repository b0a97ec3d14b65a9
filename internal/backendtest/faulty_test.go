package backendtest_test

import (
	"bytes"
	"errors"
	"io"
	"slices"
	"sync"
	"testing"

	"github.com/stasisbackup/stasis/internal/backendtest"
	"github.com/stasisbackup/stasis/repo/backend"
)

func TestFaultyConformance(t *testing.T) {
	backendtest.RunConformance(t, func(t *testing.T) backend.Storage {
		return backendtest.NewFaulty(backend.NewLocal(t.TempDir()))
	})
}

func newFaulty(t *testing.T) (*backendtest.Faulty, *backend.Local) {
	l := backend.NewLocal(t.TempDir())
	return backendtest.NewFaulty(l), l
}

func put(t *testing.T, s backend.Storage, name string, data []byte) error {
	t.Helper()
	return backend.PutBytes(t.Context(), s, name, data)
}

func exists(t *testing.T, s backend.Storage, name string) bool {
	t.Helper()
	_, err := s.Stat(t.Context(), name)
	if err != nil && !errors.Is(err, backend.ErrNotExist) {
		t.Fatalf("stat %s: %v", name, err)
	}
	return err == nil
}

func TestFaultySkipTimesPattern(t *testing.T) {
	f, l := newFaulty(t)
	f.Inject(backendtest.Fault{Op: backendtest.OpPut, Name: "packs/*/*", Skip: 2, Times: 2})
	var results []bool
	for _, n := range []string{"packs/aa/1", "config", "packs/aa/2", "packs/aa/3", "packs/aa/4", "packs/aa/5"} {
		err := put(t, f, n, []byte(n))
		if err != nil && !errors.Is(err, backendtest.ErrInjected) {
			t.Fatalf("put %s: %v, want ErrInjected or nil", n, err)
		}
		results = append(results, err == nil)
	}
	// config does not match; packs 1, 2 are skipped; 3, 4 fail; 5 passes.
	if want := []bool{true, true, true, false, false, true}; !slices.Equal(results, want) {
		t.Errorf("put successes %v, want %v", results, want)
	}
	if f.Hits() != 2 {
		t.Errorf("Hits %d, want 2", f.Hits())
	}
	if f.Calls(backendtest.OpPut) != 6 {
		t.Errorf("Calls(put) %d, want 6", f.Calls(backendtest.OpPut))
	}
	for _, n := range []string{"packs/aa/3", "packs/aa/4"} {
		if exists(t, l, n) {
			t.Errorf("a failed put created %s", n)
		}
	}
	for _, n := range []string{"packs/aa/1", "packs/aa/2", "packs/aa/5", "config"} {
		if !exists(t, l, n) {
			t.Errorf("put of %s did not reach the storage", n)
		}
	}
}

func TestFaultyEveryOp(t *testing.T) {
	custom := errors.New("custom")
	for _, op := range []backendtest.Op{backendtest.OpPut, backendtest.OpGet, backendtest.OpStat, backendtest.OpList, backendtest.OpDelete} {
		t.Run(string(op), func(t *testing.T) {
			f, l := newFaulty(t)
			if err := put(t, l, "index/a", []byte("a")); err != nil {
				t.Fatal(err)
			}
			name := "index/a"
			if op == backendtest.OpList {
				name = "index/"
			}
			f.Inject(backendtest.Fault{Op: op, Name: name, Times: 1, Err: custom})
			call := func() error {
				switch op {
				case backendtest.OpPut:
					return put(t, f, "index/a", []byte("a"))
				case backendtest.OpGet:
					_, err := backend.ReadAll(t.Context(), f, "index/a", 10)
					return err
				case backendtest.OpStat:
					_, err := f.Stat(t.Context(), "index/a")
					return err
				case backendtest.OpList:
					_, err := backend.ListNames(t.Context(), f, "index/")
					return err
				default:
					return f.Delete(t.Context(), "index/a")
				}
			}
			if err := call(); !errors.Is(err, custom) {
				t.Errorf("first %s: %v, want the injected error", op, err)
			}
			if op == backendtest.OpDelete && !exists(t, l, "index/a") {
				t.Error("a failed delete removed the object")
			}
			if err := call(); err != nil {
				t.Errorf("second %s (Times: 1): %v", op, err)
			}
			if f.Hits() != 1 {
				t.Errorf("Hits %d, want 1", f.Hits())
			}
		})
	}
}

func TestFaultyOtherNamesPass(t *testing.T) {
	f, _ := newFaulty(t)
	f.Inject(backendtest.Fault{Op: backendtest.OpGet, Name: "snapshots/*"})
	if err := put(t, f, "snapshots/s", []byte("s")); err != nil {
		t.Fatal(err)
	}
	if err := put(t, f, "config", []byte("c")); err != nil {
		t.Fatal(err)
	}
	if _, err := backend.ReadAll(t.Context(), f, "config", 10); err != nil {
		t.Errorf("get of a name the fault does not match: %v", err)
	}
	for range 3 { // Times 0: every call
		if _, err := backend.ReadAll(t.Context(), f, "snapshots/s", 10); !errors.Is(err, backendtest.ErrInjected) {
			t.Errorf("get snapshots/s: %v, want ErrInjected", err)
		}
	}
	f.Reset()
	if _, err := backend.ReadAll(t.Context(), f, "snapshots/s", 10); err != nil {
		t.Errorf("get after Reset: %v", err)
	}
}

// countingReader records how far it was read.
type countingReader struct {
	data []byte
	mu   sync.Mutex
	max  int64
}

func (c *countingReader) ReadAt(p []byte, off int64) (int, error) {
	c.mu.Lock()
	c.max = max(c.max, off+int64(len(p)))
	c.mu.Unlock()
	if off >= int64(len(c.data)) {
		return 0, io.EOF
	}
	n := copy(p, c.data[off:])
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

func TestFaultyTornPut(t *testing.T) {
	f, l := newFaulty(t)
	f.Inject(backendtest.Fault{Op: backendtest.OpPut, Name: "packs/*/*", Torn: true, Times: 1})
	data := backendtest.Data(1, 1<<20)
	r := &countingReader{data: data}
	err := f.Put(t.Context(), "packs/ab/torn", r, int64(len(data)))
	if !errors.Is(err, backendtest.ErrInjected) {
		t.Fatalf("torn put: %v, want ErrInjected", err)
	}
	if r.max == 0 || r.max > int64(len(data))/2+64<<10 {
		t.Errorf("torn put read up to byte %d of %d, want about half", r.max, len(data))
	}
	if exists(t, l, "packs/ab/torn") {
		t.Error("a torn put created the object")
	}
	if names, err := backend.ListNames(t.Context(), l, ""); err != nil || len(names) != 0 {
		t.Errorf("after a torn put: %q, %v", names, err)
	}
	if err := f.Put(t.Context(), "packs/ab/torn", r, int64(len(data))); err != nil {
		t.Fatalf("retried put: %v", err)
	}
	got, err := backend.ReadAll(t.Context(), l, "packs/ab/torn", 2<<20)
	if err != nil || !bytes.Equal(got, data) {
		t.Errorf("retried put: %d bytes, %v", len(got), err)
	}
}

func TestFaultyTornGet(t *testing.T) {
	f, l := newFaulty(t)
	data := backendtest.Data(2, 1000)
	if err := put(t, l, "index/i", data); err != nil {
		t.Fatal(err)
	}
	f.Inject(backendtest.Fault{Op: backendtest.OpGet, Torn: true, Times: 1})
	rc, err := f.Get(t.Context(), "index/i", 0, -1)
	if err != nil {
		t.Fatalf("torn get: %v, want the error from reading", err)
	}
	got, err := io.ReadAll(rc)
	rc.Close()
	if !errors.Is(err, backendtest.ErrInjected) {
		t.Errorf("reading a torn get: %v, want ErrInjected", err)
	}
	if !bytes.Equal(got, data[:500]) {
		t.Errorf("torn get gave %d bytes, want the first 500", len(got))
	}
	if got, err := backend.ReadAll(t.Context(), f, "index/i", 1000); err != nil || !bytes.Equal(got, data) {
		t.Errorf("get after the torn one: %d bytes, %v", len(got), err)
	}
}

func TestFaultyCommitted(t *testing.T) {
	f, l := newFaulty(t)
	f.Inject(backendtest.Fault{Op: backendtest.OpPut, Name: "index/*", Committed: true, Times: 1})
	f.Inject(backendtest.Fault{Op: backendtest.OpDelete, Name: "index/*", Committed: true, Times: 1})
	if err := put(t, f, "index/i", []byte("i")); !errors.Is(err, backendtest.ErrInjected) {
		t.Errorf("committed put: %v, want ErrInjected", err)
	}
	if !exists(t, l, "index/i") {
		t.Error("a committed put did not create the object")
	}
	if err := f.Delete(t.Context(), "index/i"); !errors.Is(err, backendtest.ErrInjected) {
		t.Errorf("committed delete: %v, want ErrInjected", err)
	}
	if exists(t, l, "index/i") {
		t.Error("a committed delete did not remove the object")
	}
}

func TestFaultyAfterPutCrash(t *testing.T) {
	f, l := newFaulty(t)
	var hooked []string
	f.AfterPut("packs/*/*", 1, func(name string) {
		hooked = append(hooked, name)
		f.Crash()
	})
	for _, n := range []string{"packs/aa/1", "index/1"} {
		if err := put(t, f, n, []byte(n)); err != nil {
			t.Fatalf("put %s before the crash: %v", n, err)
		}
	}
	if err := put(t, f, "packs/aa/2", []byte("2")); !errors.Is(err, backendtest.ErrCrashed) {
		t.Errorf("the put whose hook crashed: %v, want ErrCrashed", err)
	}
	if !slices.Equal(hooked, []string{"packs/aa/2"}) {
		t.Errorf("hook ran for %q, want only the second pack", hooked)
	}
	if !exists(t, l, "packs/aa/2") {
		t.Error("the put before the crash is not durable")
	}
	if err := put(t, f, "index/2", []byte("2")); !errors.Is(err, backendtest.ErrCrashed) || !errors.Is(err, backendtest.ErrInjected) {
		t.Errorf("put after the crash: %v, want ErrCrashed", err)
	}
	if _, err := f.Stat(t.Context(), "packs/aa/1"); !errors.Is(err, backendtest.ErrCrashed) {
		t.Errorf("stat after the crash: %v, want ErrCrashed", err)
	}
	if exists(t, l, "index/2") {
		t.Error("a put after the crash reached the storage")
	}
	if !f.Crashed() {
		t.Error("Crashed is false after Crash")
	}
	f.Reset()
	if err := put(t, f, "index/2", []byte("2")); err != nil {
		t.Errorf("put after Reset: %v", err)
	}
	if len(hooked) != 1 {
		t.Errorf("the hook ran %d times, want once", len(hooked))
	}
}

func TestFaultyConcurrent(t *testing.T) {
	f, _ := newFaulty(t)
	f.Inject(backendtest.Fault{Op: backendtest.OpPut, Times: 10})
	var wg sync.WaitGroup
	var mu sync.Mutex
	failed := 0
	for i := range 40 {
		wg.Go(func() {
			err := put(t, f, "packs/aa/"+string(rune('a'+i%26))+string(rune('a'+i/26)), []byte{byte(i)})
			if err != nil {
				mu.Lock()
				failed++
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	if failed != 10 || f.Hits() != 10 {
		t.Errorf("%d puts failed, Hits %d; want exactly 10 (Times: 10)", failed, f.Hits())
	}
}
