// Package backendtest holds test helpers for backend.Storage: one
// conformance suite every implementation runs ([RunConformance]), a
// fault-injecting wrapper ([Faulty]) for tests of what the repository does
// when storage fails, and a SeaweedFS server for tests against real S3
// ([Seaweed], [NewS3]). It is imported only by tests.
//
// # SeaweedFS
//
// Seaweed starts one SeaweedFS server (master, volume server, filer and
// S3 gateway in one `weed server` process, on free loopback ports, with an
// authenticated S3 identity) the first time a test of the binary asks for
// it, and every later caller in the binary shares it; every test gets a
// fresh key prefix (NewTarget, NewS3) or bucket (NewBucket) in it. Starting
// takes about 10s (SeaweedFS's filer waits some seconds for peers before
// it takes writes). The weed binary is $STASIS_WEED, or else the newest one
// `bash .ci/build-seaweedfs` built; without one the tests skip (with
// $STASIS_WEED set they fail). A test binary that uses the server should
// stop it when its tests are done, with a TestMain that calls Main:
//
//	func TestMain(m *testing.M) { backendtest.Main(m) }
//
// Without that, the server dies with the test binary anyway (it is started
// with a parent-death signal), but its data directory in os.TempDir() and
// its sockets in /tmp are left behind until the next start of a server,
// which removes those of test binaries that are gone.
package backendtest

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/stasisbackup/stasis/repo/backend"
)

// RunConformance runs the conformance suite of backend.Storage: every
// subtest calls open for a new, empty storage (and owns it: open should
// register its cleanup with the subtest's t).
func RunConformance(t *testing.T, open func(t *testing.T) backend.Storage) {
	t.Helper()
	for _, tc := range []struct {
		name string
		fn   func(t *testing.T, s backend.Storage)
	}{
		{"PutGet", testPutGet},
		{"GetRanges", testGetRanges},
		{"OverwriteIdentical", testOverwrite},
		{"Stat", testStat},
		{"List", testList},
		{"ListStopsOnError", testListStops},
		{"ListDuringPut", testListDuringPut},
		{"Delete", testDelete},
		{"Missing", testMissing},
		{"NotAnObject", testNotAnObject},
		{"InvalidNames", testInvalidNames},
		{"ConcurrentPuts", testConcurrentPuts},
		{"Large", testLarge},
		{"PutReaderError", testPutReaderError},
		{"ReadAllBound", testReadAllBound},
		{"Cancelled", testCancelled},
	} {
		t.Run(tc.name, func(t *testing.T) { tc.fn(t, open(t)) })
	}
}

// Data returns n pseudo-random bytes determined by seed.
func Data(seed uint64, n int) []byte {
	r := rand.New(rand.NewChaCha8([32]byte{byte(seed), byte(seed >> 8), byte(seed >> 16), byte(seed >> 24), byte(seed >> 32)}))
	b := make([]byte, n)
	for i := 0; i+8 <= n; i += 8 {
		v := r.Uint64()
		for j := range 8 {
			b[i+j] = byte(v >> (8 * j))
		}
	}
	for i := n &^ 7; i < n; i++ {
		b[i] = byte(r.Uint32())
	}
	return b
}

func mustPut(t testing.TB, s backend.Storage, name string, data []byte) {
	t.Helper()
	if err := backend.PutBytes(t.Context(), s, name, data); err != nil {
		t.Fatalf("put %s: %v", name, err)
	}
}

func mustGet(t testing.TB, s backend.Storage, name string, off, length int64) []byte {
	t.Helper()
	rc, err := s.Get(t.Context(), name, off, length)
	if err != nil {
		t.Fatalf("get %s [%d, +%d): %v", name, off, length, err)
	}
	defer rc.Close()
	b, err := io.ReadAll(rc)
	if err != nil {
		t.Fatalf("read %s [%d, +%d): %v", name, off, length, err)
	}
	return b
}

func mustNames(t testing.TB, s backend.Storage, prefix string) []string {
	t.Helper()
	names, err := backend.ListNames(t.Context(), s, prefix)
	if err != nil {
		t.Fatalf("list %q: %v", prefix, err)
	}
	return names
}

func wantNotExist(t testing.TB, what string, err error) {
	t.Helper()
	if !errors.Is(err, backend.ErrNotExist) {
		t.Errorf("%s: got error %v, want one matching ErrNotExist", what, err)
	}
}

func testPutGet(t *testing.T, s backend.Storage) {
	data := Data(1, 1000)
	mustPut(t, s, "config", data)
	if got := mustGet(t, s, "config", 0, -1); !bytes.Equal(got, data) {
		t.Errorf("get config: %d bytes, want the %d put", len(got), len(data))
	}
	got, err := backend.ReadAll(t.Context(), s, "config", 1<<20)
	if err != nil || !bytes.Equal(got, data) {
		t.Errorf("ReadAll config: %d bytes, %v; want the %d put", len(got), err, len(data))
	}
	mustPut(t, s, "keys/empty", nil)
	if got := mustGet(t, s, "keys/empty", 0, -1); len(got) != 0 {
		t.Errorf("get of an empty object: %d bytes", len(got))
	}
	if fi, err := s.Stat(t.Context(), "keys/empty"); err != nil || fi.Size != 0 {
		t.Errorf("stat of an empty object: %+v, %v", fi, err)
	}
	if s.Location() == "" {
		t.Error("empty Location")
	}
}

func testGetRanges(t *testing.T, s backend.Storage) {
	data := Data(2, 1000)
	mustPut(t, s, "packs/ab/range", data)
	for _, c := range []struct {
		off, length int64
		want        []byte
	}{
		{0, 10, data[:10]},                 // start
		{500, 100, data[500:600]},          // middle
		{999, 1, data[999:]},               // last byte
		{0, 1000, data},                    // exactly all
		{500, -1, data[500:]},              // to the end
		{990, 100, data[990:]},             // past the end: short
		{0, 5000, data},                    // past the end from the start
		{1000, 10, nil},                    // at the end
		{1000, -1, nil},                    // at the end, to the end
		{1500, 10, nil},                    // beyond the end
		{10, 0, nil},                       // zero length
		{0, 0, nil},                        // zero length at the start
		{1 << 40, 1, nil},                  // far beyond
		{1, 1<<63 - 1, data[1:]},           // huge length
		{0, -1, data},                      // whole
		{123, 456, data[123 : 123+456]},    // odd
		{1000 - 8, 8, data[1000-8 : 1000]}, // tail exactly
	} {
		got := mustGet(t, s, "packs/ab/range", c.off, c.length)
		if !bytes.Equal(got, c.want) {
			t.Errorf("get [%d, +%d): %d bytes, want %d (or different content)", c.off, c.length, len(got), len(c.want))
		}
	}
	if rc, err := s.Get(t.Context(), "packs/ab/range", -1, 10); err == nil {
		rc.Close()
		t.Error("get at offset -1 succeeded")
	}
	p := make([]byte, 20)
	if err := backend.ReadAt(t.Context(), s, "packs/ab/range", p, 500); err != nil || !bytes.Equal(p, data[500:520]) {
		t.Errorf("ReadAt 500: %v", err)
	}
	if err := backend.ReadAt(t.Context(), s, "packs/ab/range", p, 990); !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Errorf("ReadAt past the end: %v, want io.ErrUnexpectedEOF", err)
	}
}

func testOverwrite(t *testing.T, s backend.Storage) {
	data := Data(3, 4096)
	mustPut(t, s, "packs/ab/same", data)
	mustPut(t, s, "packs/ab/same", data)
	if got := mustGet(t, s, "packs/ab/same", 0, -1); !bytes.Equal(got, data) {
		t.Errorf("after overwriting with identical bytes: %d bytes differ from the %d put", len(got), len(data))
	}
	if names := mustNames(t, s, ""); !slices.Equal(names, []string{"packs/ab/same"}) {
		t.Errorf("list after overwrite: %q", names)
	}
}

func testStat(t *testing.T, s backend.Storage) {
	mustPut(t, s, "snapshots/a", Data(4, 321))
	a, err := s.Stat(t.Context(), "snapshots/a")
	if err != nil {
		t.Fatal(err)
	}
	if a.Name != "snapshots/a" || a.Size != 321 {
		t.Errorf("stat: %+v, want name snapshots/a and size 321", a)
	}
	// The storage's clock need not be this machine's, but a ModTime more
	// than a day off is garbage.
	if d := time.Since(a.ModTime); d > 24*time.Hour || d < -24*time.Hour {
		t.Errorf("stat: ModTime %v is %v from now", a.ModTime, d)
	}
	mustPut(t, s, "snapshots/b", Data(5, 1))
	b, err := s.Stat(t.Context(), "snapshots/b")
	if err != nil {
		t.Fatal(err)
	}
	if b.ModTime.Before(a.ModTime) {
		t.Errorf("ModTime of a later put %v is before the earlier one's %v", b.ModTime, a.ModTime)
	}
	if b.Size != 1 {
		t.Errorf("stat b: size %d, want 1", b.Size)
	}
}

// listNames are the objects of the listing tests, with distinct sizes.
var listNames = []string{
	"config",
	"index/i1",
	"keys/k1",
	"packs/a0/a001",
	"packs/ab/ab01",
	"packs/ab/ab02",
	"packs/cd/cd01",
	"snapshots.bak/s0",
	"snapshots/s1",
	"snapshots/s2",
}

func putListNames(t *testing.T, s backend.Storage) map[string]int64 {
	sizes := map[string]int64{}
	for i, n := range listNames {
		mustPut(t, s, n, Data(uint64(100+i), 10+i))
		sizes[n] = int64(10 + i)
	}
	return sizes
}

func testList(t *testing.T, s backend.Storage) {
	if names := mustNames(t, s, ""); len(names) != 0 {
		t.Errorf("list of an empty storage: %q", names)
	}
	sizes := putListNames(t, s)
	for _, c := range []struct {
		prefix string
		want   []string
	}{
		{"", listNames},
		{"packs/", []string{"packs/a0/a001", "packs/ab/ab01", "packs/ab/ab02", "packs/cd/cd01"}},
		{"packs/a", []string{"packs/a0/a001", "packs/ab/ab01", "packs/ab/ab02"}},
		{"packs/ab/", []string{"packs/ab/ab01", "packs/ab/ab02"}},
		{"packs/ab/ab01", []string{"packs/ab/ab01"}},
		{"snapshots/", []string{"snapshots/s1", "snapshots/s2"}},
		{"snapshots", []string{"snapshots.bak/s0", "snapshots/s1", "snapshots/s2"}},
		{"c", []string{"config"}},
		{"nothing/", nil},
		{"packs/zz", nil},
	} {
		if got := mustNames(t, s, c.prefix); !slices.Equal(got, c.want) {
			t.Errorf("list %q: %q, want %q", c.prefix, got, c.want)
		}
	}
	err := s.List(t.Context(), "", func(o backend.ObjectInfo) error {
		if o.Size != sizes[o.Name] {
			t.Errorf("list: %s has size %d, want %d", o.Name, o.Size, sizes[o.Name])
		}
		if o.ModTime.IsZero() {
			t.Errorf("list: %s has no ModTime", o.Name)
		}
		return nil
	})
	if err != nil {
		t.Error(err)
	}
}

func testListStops(t *testing.T, s backend.Storage) {
	putListNames(t, s)
	stop := errors.New("stop here")
	calls := 0
	err := s.List(t.Context(), "", func(backend.ObjectInfo) error { calls++; return stop })
	if !errors.Is(err, stop) {
		t.Errorf("list whose fn fails: %v, want the fn's error", err)
	}
	if calls != 1 {
		t.Errorf("list went on after fn failed: %d calls", calls)
	}
}

// blockingReader delivers the first half of data and then waits for
// release, so that a Put is in progress while the test looks.
type blockingReader struct {
	data    []byte
	reached chan struct{}
	release chan struct{}
	once    sync.Once
}

func (b *blockingReader) ReadAt(p []byte, off int64) (int, error) {
	half := int64(len(b.data) / 2)
	if off+int64(len(p)) > half {
		b.once.Do(func() { close(b.reached) })
		<-b.release
	}
	if off >= int64(len(b.data)) {
		return 0, io.EOF
	}
	n := copy(p, b.data[off:])
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

func testListDuringPut(t *testing.T, s backend.Storage) {
	mustPut(t, s, "config", Data(6, 10))
	data := Data(7, 1<<20)
	br := &blockingReader{data: data, reached: make(chan struct{}), release: make(chan struct{})}
	done := make(chan error, 1)
	go func() { done <- s.Put(t.Context(), "packs/ab/inflight", br, int64(len(data))) }()
	select {
	case <-br.reached:
	case err := <-done:
		t.Fatalf("put finished before reading half of its data: %v", err)
	case <-time.After(30 * time.Second):
		close(br.release)
		t.Fatal("put did not read half of its data in 30s")
	}
	names := mustNames(t, s, "")
	_, statErr := s.Stat(t.Context(), "packs/ab/inflight")
	close(br.release)
	if err := <-done; err != nil {
		t.Fatalf("put: %v", err)
	}
	if !slices.Equal(names, []string{"config"}) {
		t.Errorf("list during a put: %q, want only config (no temp files, no partial object)", names)
	}
	wantNotExist(t, "stat of an object being put", statErr)
	if names := mustNames(t, s, ""); !slices.Equal(names, []string{"config", "packs/ab/inflight"}) {
		t.Errorf("list after the put: %q", names)
	}
	if got := mustGet(t, s, "packs/ab/inflight", 0, -1); !bytes.Equal(got, data) {
		t.Errorf("object put while listing: %d bytes differ from the %d put", len(got), len(data))
	}
}

func testDelete(t *testing.T, s backend.Storage) {
	mustPut(t, s, "locks/l1", Data(8, 100))
	mustPut(t, s, "locks/l2", Data(9, 100))
	if err := s.Delete(t.Context(), "locks/l1"); err != nil {
		t.Fatalf("delete: %v", err)
	}
	_, err := s.Stat(t.Context(), "locks/l1")
	wantNotExist(t, "stat after delete", err)
	rc, err := s.Get(t.Context(), "locks/l1", 0, -1)
	if err == nil {
		rc.Close()
	}
	wantNotExist(t, "get after delete", err)
	if names := mustNames(t, s, ""); !slices.Equal(names, []string{"locks/l2"}) {
		t.Errorf("list after delete: %q, want [locks/l2]", names)
	}
	wantNotExist(t, "second delete", s.Delete(t.Context(), "locks/l1"))
	wantNotExist(t, "delete of a name never put", s.Delete(t.Context(), "locks/never"))
	wantNotExist(t, "delete in a missing directory", s.Delete(t.Context(), "nodir/x/y"))
	if got := mustGet(t, s, "locks/l2", 0, -1); !bytes.Equal(got, Data(9, 100)) {
		t.Error("delete of l1 changed l2")
	}
}

func testMissing(t *testing.T, s backend.Storage) {
	mustPut(t, s, "packs/ab/there", Data(10, 10))
	for _, name := range []string{"packs/ab/none", "packs/zz/none", "config"} {
		_, err := s.Stat(t.Context(), name)
		wantNotExist(t, "stat "+name, err)
		for _, r := range [][2]int64{{0, -1}, {5, 10}, {0, 0}} {
			rc, err := s.Get(t.Context(), name, r[0], r[1])
			if err == nil {
				rc.Close()
			}
			wantNotExist(t, fmt.Sprintf("get %s [%d, +%d)", name, r[0], r[1]), err)
		}
		_, err = backend.ReadAll(t.Context(), s, name, 100)
		wantNotExist(t, "ReadAll "+name, err)
	}
}

// testNotAnObject: a name that is a "directory" of other names is not an
// object.
func testNotAnObject(t *testing.T, s backend.Storage) {
	mustPut(t, s, "packs/ab/ab01", Data(11, 10))
	if fi, err := s.Stat(t.Context(), "packs/ab"); err == nil {
		t.Errorf("stat of a prefix of names succeeded: %+v", fi)
	}
	rc, err := s.Get(t.Context(), "packs/ab", 0, -1)
	if err == nil {
		_, err = io.ReadAll(rc)
		rc.Close()
	}
	if err == nil {
		t.Error("get of a prefix of names succeeded")
	}
}

func testInvalidNames(t *testing.T, s backend.Storage) {
	bad := []string{"", "/config", "a/../b", "a//b", "./a", "a/", "..", ".", "a/.", `a\b`, "tmp/../config"}
	ctx := t.Context()
	for _, name := range bad {
		if backend.ValidName(name) {
			t.Errorf("ValidName(%q) = true", name)
		}
		if err := backend.PutBytes(ctx, s, name, []byte("x")); err == nil {
			t.Errorf("put %q succeeded", name)
		}
		if rc, err := s.Get(ctx, name, 0, -1); err == nil {
			rc.Close()
			t.Errorf("get %q succeeded", name)
		}
		if _, err := s.Stat(ctx, name); err == nil {
			t.Errorf("stat %q succeeded", name)
		}
		if err := s.Delete(ctx, name); err == nil {
			t.Errorf("delete %q succeeded", name)
		}
	}
	if names := mustNames(t, s, ""); len(names) != 0 {
		t.Errorf("puts of invalid names created %q", names)
	}
}

func testConcurrentPuts(t *testing.T, s backend.Storage) {
	const workers, each = 8, 4
	var wg sync.WaitGroup
	errs := make(chan error, workers*each)
	for w := range workers {
		wg.Go(func() {
			for i := range each {
				name := fmt.Sprintf("packs/%02x/obj%d", w, i)
				if err := backend.PutBytes(t.Context(), s, name, Data(uint64(1000+w*each+i), 64<<10+w*each+i)); err != nil {
					errs <- err
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	names := mustNames(t, s, "packs/")
	if len(names) != workers*each {
		t.Errorf("list after %d concurrent puts: %d names", workers*each, len(names))
	}
	for w := range workers {
		for i := range each {
			name := fmt.Sprintf("packs/%02x/obj%d", w, i)
			if got := mustGet(t, s, name, 0, -1); !bytes.Equal(got, Data(uint64(1000+w*each+i), 64<<10+w*each+i)) {
				t.Errorf("%s: %d bytes, not the ones put", name, len(got))
			}
		}
	}
}

// LargeSize is the size of the suite's large object: more than two parts of
// an S3 multipart upload.
const LargeSize = 20 << 20

func testLarge(t *testing.T, s backend.Storage) {
	data := Data(12, LargeSize)
	mustPut(t, s, "packs/ff/large", data)
	fi, err := s.Stat(t.Context(), "packs/ff/large")
	if err != nil || fi.Size != LargeSize {
		t.Fatalf("stat of the large object: %+v, %v", fi, err)
	}
	if got := mustGet(t, s, "packs/ff/large", 0, -1); sha256.Sum256(got) != sha256.Sum256(data) {
		t.Errorf("large object: %d bytes, not the %d put", len(got), len(data))
	}
	for _, r := range [][2]int64{{8<<20 - 100, 200}, {16<<20 - 1, 2}, {LargeSize - 10, 100}, {12345, 8 << 20}} {
		end := min(r[0]+r[1], LargeSize)
		if got := mustGet(t, s, "packs/ff/large", r[0], r[1]); !bytes.Equal(got, data[r[0]:end]) {
			t.Errorf("large object [%d, +%d): %d bytes, not the %d put", r[0], r[1], len(got), end-r[0])
		}
	}
}

// failingReader returns err at and after offset at.
type failingReader struct {
	data []byte
	at   int64
	err  error
}

func (f *failingReader) ReadAt(p []byte, off int64) (int, error) {
	if off+int64(len(p)) <= f.at {
		return copy(p, f.data[off:]), nil
	}
	n := 0
	if off < f.at {
		n = copy(p, f.data[off:f.at])
	}
	return n, f.err
}

func testPutReaderError(t *testing.T, s backend.Storage) {
	broken := errors.New("the source broke")
	for _, c := range []struct {
		name string
		size int
		at   int64
	}{
		{"packs/ab/small", 1000, 500},
		{"packs/ab/first", 1000, 0},
		{"packs/ab/multipart", 17 << 20, 9 << 20},
	} {
		r := &failingReader{data: Data(13, c.size), at: c.at, err: broken}
		err := s.Put(t.Context(), c.name, r, int64(c.size))
		if !errors.Is(err, broken) {
			t.Errorf("put %s from a reader failing at %d: %v, want the reader's error", c.name, c.at, err)
		}
		_, err = s.Stat(t.Context(), c.name)
		wantNotExist(t, "stat after a failed put", err)
	}
	if names := mustNames(t, s, ""); len(names) != 0 {
		t.Errorf("failed puts left %q", names)
	}
}

func testReadAllBound(t *testing.T, s backend.Storage) {
	data := Data(14, 100)
	mustPut(t, s, "index/i", data)
	if _, err := backend.ReadAll(t.Context(), s, "index/i", 99); !errors.Is(err, backend.ErrTooLarge) {
		t.Errorf("ReadAll of 100 bytes with bound 99: %v, want ErrTooLarge", err)
	}
	if got, err := backend.ReadAll(t.Context(), s, "index/i", 100); err != nil || !bytes.Equal(got, data) {
		t.Errorf("ReadAll of 100 bytes with bound 100: %d bytes, %v", len(got), err)
	}
}

func testCancelled(t *testing.T, s backend.Storage) {
	mustPut(t, s, "config", Data(15, 100))
	mustPut(t, s, "packs/ab/x", Data(16, 100))
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	if err := backend.PutBytes(ctx, s, "packs/ab/new", Data(17, 100)); err == nil {
		t.Error("put with a cancelled context succeeded")
	}
	_, err := s.Stat(t.Context(), "packs/ab/new")
	wantNotExist(t, "stat after a put with a cancelled context", err)
	if rc, err := s.Get(ctx, "config", 0, -1); err == nil {
		_, err = io.ReadAll(rc)
		rc.Close()
		if err == nil {
			t.Error("get with a cancelled context succeeded")
		}
	}
	if err := s.List(ctx, "", func(backend.ObjectInfo) error { return nil }); err == nil {
		t.Error("list with a cancelled context succeeded")
	}
	if err := s.Delete(ctx, "packs/ab/x"); err == nil {
		t.Error("delete with a cancelled context succeeded")
	}
	if _, err := s.Stat(t.Context(), "packs/ab/x"); err != nil {
		t.Errorf("a delete with a cancelled context removed the object: %v", err)
	}
}
