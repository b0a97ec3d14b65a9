package main

// Concurrency tests: real processes of the built binary started side by
// side against one repository, a local directory and an S3 bucket on
// SeaweedFS. They synchronise on events (a line a process printed, an
// object or a file that appeared), never on sleeps.

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math/rand"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stasisbackup/stasis/internal/backendtest"
	"github.com/stasisbackup/stasis/internal/enginetest"
	"github.com/stasisbackup/stasis/repo"
	"github.com/stasisbackup/stasis/repo/backend"
)

// concPackSize is the pack size of the test repositories: small, so that a
// backup of a few MB writes several packs and a first pack appearing is an
// event in the middle of it.
const concPackSize = 256 << 10

// concTimeout bounds every wait of these tests (a hung process fails the
// test instead of hanging it).
const concTimeout = 2 * time.Minute

// concEnv is one repository (local or S3) and the built binary that the
// processes of a test run against it.
type concEnv struct {
	t    *testing.T
	bin  string
	kind string          // "local" or "s3"
	url  string          // the --repo value
	env  []string        // the processes' environment
	st   backend.Storage // the test's own view of the repository's objects
	dir  string          // scratch space of the test
	n    int             // processes started, for names
}

// forBothRepos runs f as subtests "local" and "s3", each on a fresh,
// initialised repository. The S3 subtest skips when there is no weed binary.
func forBothRepos(t *testing.T, bin string, f func(t *testing.T, e *concEnv)) {
	t.Helper()
	t.Run("local", func(t *testing.T) {
		dir := t.TempDir()
		p := filepath.Join(dir, "repo")
		f(t, newConcEnv(t, bin, "local", p, nil, backend.NewLocal(p), dir))
	})
	t.Run("s3", func(t *testing.T) {
		srv := backendtest.Seaweed(t) // skips with a message when weed is missing
		t.Logf("SeaweedFS at %s (started in %s)", srv.Endpoint, srv.Startup.Round(time.Millisecond))
		tg := srv.NewTarget(t)
		f(t, newConcEnv(t, bin, "s3", tg.URL, tg.Env, tg.Open(t), t.TempDir()))
	})
}

// concBinary builds the binary for a top-level test and stops the SeaweedFS
// server (if a subtest started one) when the test ends.
func concBinary(t *testing.T) string {
	t.Helper()
	if testing.Short() {
		t.Skip("builds the binary and runs many processes")
	}
	bin := buildStasis(t)
	t.Cleanup(backendtest.StopSeaweed)
	return bin
}

func newConcEnv(t *testing.T, bin, kind, url string, extra []string, st backend.Storage, dir string) *concEnv {
	t.Helper()
	env := []string{"STASIS_PASSWORD=" + enginetest.Password, "XDG_CACHE_HOME=" + filepath.Join(dir, "xdg-cache")}
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		if (strings.HasPrefix(k, "STASIS_") && k != "STASIS_STATE_DIR") || strings.HasPrefix(k, "AWS_") || k == "XDG_CACHE_HOME" {
			continue
		}
		env = append(env, kv)
	}
	e := &concEnv{t: t, bin: bin, kind: kind, url: url, env: append(env, extra...), st: st, dir: dir}
	// Init in-process for the cheap key derivation of test repositories
	// (every process then unlocks in milliseconds) and small packs.
	o := enginetest.InitOptions()
	o.PackSize = concPackSize
	r, err := repo.Init(t.Context(), st, o, enginetest.OpenOptionsIn(filepath.Join(dir, "init-cache")))
	if err != nil {
		t.Fatalf("init %s: %v", url, err)
	}
	r.Close()
	return e
}

// cache returns the cache directory of a simulated host.
func (e *concEnv) cache(host string) string { return filepath.Join(e.dir, "cache-"+host) }

// proc is a running process of the binary.
type proc struct {
	t    *testing.T
	name string
	cmd  *exec.Cmd

	mu      sync.Mutex
	stdout  bytes.Buffer
	all     bytes.Buffer // stdout and stderr, as they came
	lines   []string
	changed chan struct{} // closed and replaced when a line arrives or the process exits
	exited  bool
	code    int  // exit code, -1 when killed by a signal
	killed  bool // by SIGKILL
	began   time.Time
	took    time.Duration
	done    chan struct{}
}

// start starts `stasis --repo URL --cache-dir CACHE ARGS...`.
func (e *concEnv) start(cache string, args ...string) *proc {
	e.t.Helper()
	e.n++
	full := append([]string{"--repo", e.url, "--cache-dir", cache}, args...)
	c := exec.Command(e.bin, full...)
	c.Env = e.env
	p := &proc{t: e.t, name: fmt.Sprintf("#%d stasis %s", e.n, strings.Join(args, " ")), cmd: c,
		changed: make(chan struct{}), done: make(chan struct{}), began: time.Now()}
	stdout, err := c.StdoutPipe()
	if err != nil {
		e.t.Fatal(err)
	}
	stderr, err := c.StderrPipe()
	if err != nil {
		e.t.Fatal(err)
	}
	if err := c.Start(); err != nil {
		e.t.Fatalf("start %s: %v", p.name, err)
	}
	var readers sync.WaitGroup
	for _, r := range []struct {
		rd  io.Reader
		out bool
	}{{stdout, true}, {stderr, false}} {
		readers.Add(1)
		go func() {
			defer readers.Done()
			sc := bufio.NewScanner(r.rd)
			sc.Buffer(make([]byte, 64<<10), 16<<20)
			for sc.Scan() {
				p.mu.Lock()
				if r.out {
					p.stdout.Write(sc.Bytes())
					p.stdout.WriteByte('\n')
				}
				p.all.Write(sc.Bytes())
				p.all.WriteByte('\n')
				p.lines = append(p.lines, sc.Text())
				close(p.changed)
				p.changed = make(chan struct{})
				p.mu.Unlock()
			}
		}()
	}
	go func() {
		readers.Wait()
		c.Wait()
		p.mu.Lock()
		p.exited = true
		p.took = time.Since(p.began)
		p.code = c.ProcessState.ExitCode()
		if ws, ok := c.ProcessState.Sys().(syscall.WaitStatus); ok && ws.Signaled() && ws.Signal() == syscall.SIGKILL {
			p.killed = true
		}
		close(p.changed)
		p.changed = make(chan struct{})
		p.mu.Unlock()
		close(p.done)
	}()
	e.t.Cleanup(func() {
		select {
		case <-p.done:
		default:
			c.Process.Kill()
			<-p.done
		}
	})
	return p
}

// output returns what the process printed so far (stdout and stderr).
func (p *proc) output() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.all.String()
}

// Stdout returns what the process printed on stdout so far.
func (p *proc) Stdout() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.stdout.String()
}

// waitLine waits until the process printed a line containing s, and reports
// false if it exited without printing one.
func (p *proc) waitLine(s string) bool {
	p.t.Helper()
	deadline := time.After(concTimeout)
	for {
		p.mu.Lock()
		for _, l := range p.lines {
			if strings.Contains(l, s) {
				p.mu.Unlock()
				return true
			}
		}
		if p.exited {
			p.mu.Unlock()
			return false
		}
		ch := p.changed
		p.mu.Unlock()
		select {
		case <-ch:
		case <-deadline:
			p.t.Fatalf("%s printed no line with %q in %s:\n%s", p.name, s, concTimeout, p.output())
		}
	}
}

// wait waits for the process to exit and returns its exit code (-1 when a
// signal killed it).
func (p *proc) wait() int {
	p.t.Helper()
	select {
	case <-p.done:
	case <-time.After(concTimeout):
		p.cmd.Process.Kill()
		<-p.done
		p.t.Fatalf("%s did not exit in %s:\n%s", p.name, concTimeout, p.output())
	}
	return p.code
}

// mustExit0 waits for the process and fails the test unless it exited 0.
func (p *proc) mustExit0() string {
	p.t.Helper()
	if code := p.wait(); code != 0 {
		p.t.Fatalf("%s: exit %d after %s\n%s", p.name, code, p.took.Round(time.Millisecond), p.output())
	}
	if p.took > 5*time.Second {
		p.t.Logf("%s took %s:\n%s", p.name, p.took.Round(time.Millisecond), p.output())
	}
	return p.Stdout()
}

// running reports whether the process has not exited yet.
func (p *proc) running() bool {
	select {
	case <-p.done:
		return false
	default:
		return true
	}
}

// kill9 SIGKILLs the process and reports whether it was still running (the
// kill, not its own exit, ended it). A process that had exited with an
// error on its own fails the test.
func (p *proc) kill9() bool {
	p.t.Helper()
	p.cmd.Process.Signal(syscall.SIGKILL)
	p.wait()
	if p.killed {
		return true
	}
	if p.code != 0 {
		p.t.Fatalf("%s failed on its own before the kill: exit %d\n%s", p.name, p.code, p.output())
	}
	return false
}

// must runs a command to completion and returns its stdout; a non-zero exit
// fails the test.
func (e *concEnv) must(cache string, args ...string) string {
	e.t.Helper()
	return e.start(cache, args...).mustExit0()
}

// waitFor polls cond (a look at the repository or the file system) until it
// holds; it fails the test after concTimeout, and returns false when p is
// given and exits first.
func (e *concEnv) waitFor(what string, p *proc, cond func() bool) bool {
	e.t.Helper()
	deadline := time.Now().Add(concTimeout)
	for !cond() {
		if p != nil && !p.running() {
			return cond()
		}
		if time.Now().After(deadline) {
			e.t.Fatalf("%s: not after %s", what, concTimeout)
		}
		time.Sleep(time.Millisecond) // a polling interval, not a synchronisation
	}
	return true
}

// objects returns the names and total size of the repository's objects
// under prefix.
func (e *concEnv) objects(prefix string) (names []string, size int64) {
	e.t.Helper()
	err := e.st.List(context.Background(), prefix, func(o backend.ObjectInfo) error {
		names = append(names, o.Name)
		size += o.Size
		return nil
	})
	if err != nil {
		e.t.Fatalf("list %s: %v", prefix, err)
	}
	slices.Sort(names)
	return names, size
}

// snapshotList returns `snapshots --json` (with extra filter flags).
func (e *concEnv) snapshotList(cache string, args ...string) []snapshotJSON {
	e.t.Helper()
	var list []snapshotJSON
	out := e.must(cache, append([]string{"snapshots", "--json"}, args...)...)
	if err := json.Unmarshal([]byte(out), &list); err != nil {
		e.t.Fatalf("snapshots --json: %v\n%s", err, out)
	}
	return list
}

// restoreEquals restores snapshot (an id, or "latest" with filter flags) and
// fails unless the restored tree of src has exactly the files and hashes of
// want.
func (e *concEnv) restoreEquals(cache, src string, want map[string]string, args ...string) {
	e.t.Helper()
	target := filepath.Join(e.dir, fmt.Sprintf("restore-%d", e.n+1))
	e.must(cache, append([]string{"restore", "--target", target}, args...)...)
	sameHashes(e.t, fmt.Sprintf("restore %v", args), enginetest.FileHashes(e.t, filepath.Join(target, src)), want)
}

func sameHashes(t *testing.T, what string, got, want map[string]string) {
	t.Helper()
	if len(want) == 0 {
		t.Fatalf("%s: empty model", what)
	}
	for p, h := range want {
		if got[p] != h {
			t.Errorf("%s: %s differs or is missing", what, p)
		}
	}
	for p := range got {
		if _, ok := want[p]; !ok {
			t.Errorf("%s: %s restored, not in the source", what, p)
		}
	}
	if t.Failed() {
		t.FailNow()
	}
}

// writeFiles writes incompressible files of the given sizes below dir, from
// a fixed seed per file name (the same name and seed give the same bytes).
func writeFiles(t *testing.T, dir string, seed int64, files map[string]int) {
	t.Helper()
	names := make([]string, 0, len(files))
	for n := range files {
		names = append(names, n)
	}
	slices.Sort(names)
	for i, n := range names {
		b := make([]byte, files[n])
		rand.New(rand.NewSource(seed*1000 + int64(i))).Read(b)
		p := filepath.Join(dir, n)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// sharedSize is the size of the large file both hosts' trees have.
const sharedSize = 2 << 20

// writeShared writes that file, identical for both hosts.
func writeShared(t *testing.T, dir string) {
	t.Helper()
	writeFiles(t, dir, 99, map[string]int{"common/shared.img": sharedSize})
}

// TestConcurrent runs the scenarios of several processes on one repository,
// each for a local and an S3 repository (one binary and one SeaweedFS
// server for all of them).
func TestConcurrent(t *testing.T) {
	bin := concBinary(t)
	t.Run("mixed", func(t *testing.T) { forBothRepos(t, bin, concMixed) })
	t.Run("backup-during-check", func(t *testing.T) { forBothRepos(t, bin, concBackupDuringCheck) })
	t.Run("check-while-backup-commits", func(t *testing.T) { forBothRepos(t, bin, concCheckWhileBackupCommits) })
	t.Run("latest-while-backup-commits", func(t *testing.T) { forBothRepos(t, bin, concLatestWhileBackupCommits) })
	t.Run("kill9", func(t *testing.T) { forBothRepos(t, bin, concKill9) })
	t.Run("prune-during-backup", func(t *testing.T) { forBothRepos(t, bin, concPruneDuringBackup) })
	t.Run("cache-deleted-or-corrupt", func(t *testing.T) { forBothRepos(t, bin, concCacheDeletedOrCorrupt) })
	t.Run("cache-pages-damaged", func(t *testing.T) { forBothRepos(t, bin, concCachePagesDamaged) })
}

// concMixed: two backups of different trees with different --host (each
// with its own cache directory, as two hosts), a restore of an earlier
// snapshot, check --read-data and a tape export, all started at once.
func concMixed(t *testing.T, e *concEnv) {
	srcA := filepath.Join(e.dir, "hostA", "srv")
	srcB := filepath.Join(e.dir, "hostB", "srv")
	writeFiles(t, srcA, 1, map[string]int{"a1": 512 << 10, "a2": 768 << 10, "sub/a3": 256 << 10})
	cacheA, cacheB := e.cache("A"), e.cache("B")
	e.must(cacheA, "backup", "--host", "A", "--tag", "v0", srcA)
	wantA0 := enginetest.FileHashes(t, srcA)
	earlier := e.snapshotList(cacheA)
	if len(earlier) != 1 {
		t.Fatalf("%d snapshots after the first backup", len(earlier))
	}

	// New data: A changes a2 and gets the shared file, B has its own files
	// and the same shared file.
	writeFiles(t, srcA, 2, map[string]int{"a2": 768 << 10})
	writeShared(t, srcA)
	writeFiles(t, srcB, 3, map[string]int{"b1": 512 << 10, "sub/b2": 300 << 10})
	writeShared(t, srcB)
	wantA, wantB := enginetest.FileHashes(t, srcA), enginetest.FileHashes(t, srcB)
	uniqueNew := int64(768<<10 + 512<<10 + 300<<10)
	_, before := e.objects("packs/")
	statsBefore := e.stats(cacheA)

	tapes := filepath.Join(e.dir, "tapes")
	os.MkdirAll(tapes, 0o755)
	target := filepath.Join(e.dir, "restore-earlier")
	procs := []*proc{
		e.start(cacheA, "backup", "--host", "A", "--tag", "v1", srcA),
		e.start(cacheB, "backup", "--host", "B", "--tag", "v1", srcB),
		e.start(cacheA, "restore", earlier[0].ID, "--target", target),
		e.start(cacheA, "check", "--read-data"),
		e.start(cacheB, "tape", "export", "--device", filepath.Join(tapes, "vol-%03d.tar"), "--label", "concurrent"),
	}
	for _, p := range procs {
		p.mustExit0()
	}
	if out := procs[3].Stdout(); !strings.Contains(out, "no errors") {
		t.Errorf("check --read-data beside the backups:\n%s", procs[3].output())
	}
	sameHashes(t, "restore of the earlier snapshot beside the backups", enginetest.FileHashes(t, filepath.Join(target, srcA)), wantA0)

	// Both hosts' snapshots are listed, the host filter works, and latest
	// --host B is B's tree.
	all := e.snapshotList(cacheA)
	hosts := map[string]int{}
	for _, sn := range all {
		hosts[sn.Host]++
	}
	if len(all) != 3 || hosts["A"] != 2 || hosts["B"] != 1 {
		t.Fatalf("snapshots after the concurrent backups: %d, by host %v; want A:2 B:1", len(all), hosts)
	}
	onlyA := e.snapshotList(cacheB, "--host", "A")
	if len(onlyA) != 2 {
		t.Errorf("snapshots --host A: %d snapshots, want 2", len(onlyA))
	}
	for _, sn := range onlyA {
		if sn.Host != "A" {
			t.Errorf("snapshots --host A lists a snapshot of host %q", sn.Host)
		}
	}
	e.restoreEquals(cacheA, srcB, wantB, "latest", "--host", "B")
	e.restoreEquals(cacheB, srcA, wantA, "latest", "--host", "A")

	// The volumes written beside the backups verify against the catalogs
	// recorded in the repository.
	vols, _ := filepath.Glob(filepath.Join(tapes, "vol-*.tar"))
	if len(vols) == 0 {
		t.Fatalf("tape export wrote no volume:\n%s", procs[4].output())
	}
	e.must(cacheB, append([]string{"tape", "verify"}, deviceArgs(vols)...)...)

	// The shared file is stored once: by content in the index (unique
	// bytes), and by pack bytes once prune removed what two backups that
	// ran at the same time could not know of each other (docs/storage.md:
	// both may store a new chunk; the index keeps one, prune drops the
	// other).
	statsAfter := e.stats(cacheA)
	_, after := e.objects("packs/")
	growth := after - before
	t.Logf("%s: packs grew by %d bytes for %d new unique and %d shared bytes (unique_bytes grew by %d)",
		e.kind, growth, uniqueNew, sharedSize, statsAfter.UniqueBytes-statsBefore.UniqueBytes)
	if d := statsAfter.UniqueBytes - statsBefore.UniqueBytes; d < uniqueNew+sharedSize || d > uniqueNew+sharedSize+sharedSize/8 {
		t.Errorf("unique_bytes grew by %d, want about %d (the shared file once)", d, uniqueNew+sharedSize)
	}
	if growth < uniqueNew+sharedSize {
		t.Errorf("packs grew by %d bytes, less than the new data (%d)", growth, uniqueNew+sharedSize)
	}
	if growth > uniqueNew+sharedSize+sharedSize/4 {
		t.Logf("%s: the shared file is stored twice by the two concurrent backups (packs grew by %d); prune should remove the copy", e.kind, growth)
	}
	e.must(cacheA, "prune")
	_, pruned := e.objects("packs/")
	if g := pruned - before; g > uniqueNew+sharedSize+sharedSize/4 || g < uniqueNew+sharedSize {
		t.Errorf("after prune, packs hold %d bytes more than before the concurrent backups; want about %d (the shared file once)", g, uniqueNew+sharedSize)
	}
	// Everything still restores after prune, and check agrees.
	e.restoreEquals(cacheB, srcA, wantA0, earlier[0].ID)
	e.restoreEquals(cacheB, srcB, wantB, "latest", "--host", "B")
	if out := e.must(cacheB, "check", "--read-data"); !strings.Contains(out, "no errors") {
		t.Errorf("check after prune:\n%s", out)
	}
}

// stats returns `stats --json`.
func (e *concEnv) stats(cache string) (st struct {
	UniqueBytes int64 `json:"unique_bytes"`
	StoredBytes int64 `json:"stored_bytes"`
	Packs       int64 `json:"packs"`
}) {
	e.t.Helper()
	out := e.must(cache, "stats", "--json")
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		e.t.Fatalf("stats --json: %v\n%s", err, out)
	}
	return st
}

// checkHeld starts check --read-data with the given cache, stops it
// (SIGSTOP) once it reads packs, runs a backup of src to completion with
// cache, and lets the check go on. It returns both processes, exited.
func (e *concEnv) checkHeld(checkCache, cache, tag, src string) (check, b *proc) {
	e.t.Helper()
	check = e.start(checkCache, "check", "--read-data")
	if !check.waitLine("reading all packs") {
		e.t.Fatalf("check ended before reading packs:\n%s", check.output())
	}
	check.cmd.Process.Signal(syscall.SIGSTOP)
	b = e.start(cache, "backup", "--tag", tag, src)
	b.wait()
	check.cmd.Process.Signal(syscall.SIGCONT)
	check.wait()
	return check, b
}

// concBackupDuringCheck: a backup started while check --read-data runs
// (held still with SIGSTOP once it reads packs, so that the backup runs
// entirely inside it) succeeds with a new snapshot, with the check's cache
// directory and with another one. It formerly waited for the cache file and
// exited 12 "wrong password".
func concBackupDuringCheck(t *testing.T, e *concEnv) {
	src := filepath.Join(e.dir, "src")
	writeFiles(t, src, 10, map[string]int{"x": 1 << 20, "y/z": 512 << 10})
	cache := e.cache("A")
	e.must(cache, "backup", src)
	models := map[string]map[string]string{}
	for i, checkCache := range []string{cache, e.cache("checker")} {
		writeFiles(t, src, int64(11+i), map[string]int{"new": 300 << 10})
		tag := fmt.Sprintf("during-check-%d", i)
		models[tag] = enginetest.FileHashes(t, src)
		_, b := e.checkHeld(checkCache, cache, tag, src)
		if b.code != 0 || !strings.Contains(b.Stdout(), "snapshot ") {
			t.Fatalf("backup while check --read-data runs (check's cache dir the backup's: %v): exit %d\n%s", checkCache == cache, b.code, b.output())
		}
	}
	list := e.snapshotList(cache)
	if len(list) != 3 {
		t.Fatalf("%d snapshots, want 3", len(list))
	}
	for _, sn := range list[1:] {
		e.restoreEquals(e.cache("other"), src, models[sn.Tags[0]], sn.ID)
	}
}

// concCheckWhileBackupCommits: check --read-data reports no damage when a
// backup commits a snapshot while it runs (the snapshot's blobs are in an
// index file newer than the check's view of the index).
func concCheckWhileBackupCommits(t *testing.T, e *concEnv) {
	src := filepath.Join(e.dir, "src")
	writeFiles(t, src, 10, map[string]int{"x": 1 << 20, "y/z": 512 << 10})
	cache := e.cache("A")
	e.must(cache, "backup", src)
	writeFiles(t, src, 11, map[string]int{"new": 300 << 10})
	check, b := e.checkHeld(e.cache("checker"), cache, "during-check", src)
	if b.code != 0 {
		t.Fatalf("backup: exit %d\n%s", b.code, b.output())
	}
	if check.code != 0 || !strings.Contains(check.Stdout(), "no errors") {
		t.Errorf("check --read-data while a backup committed a snapshot: exit %d, want 0 and no errors (the repository is whole):\n%s", check.code, check.output())
	}
	if out := e.must(e.cache("checker"), "check", "--read-data"); !strings.Contains(out, "no errors") {
		t.Fatalf("check afterwards:\n%s", out)
	}
}

// concLatestWhileBackupCommits: restore latest, ls latest and tape export,
// whose listing of snapshots/ is held (S3 only: by a proxy in front of
// SeaweedFS) until a backup has committed a new snapshot, still succeed.
// Their view of the index was taken before the backup wrote its index file.
func concLatestWhileBackupCommits(t *testing.T, e *concEnv) {
	if e.kind != "s3" {
		t.Skip("holding a command between opening the repository and listing snapshots needs the S3 proxy")
	}
	src := filepath.Join(e.dir, "src")
	cache := e.cache("A")
	models := map[string]map[string]string{} // short id → hashes
	backup := func(seed int64) {
		t.Helper()
		writeFiles(t, src, seed, map[string]int{fmt.Sprintf("f%d", seed): 200 << 10, "common": 100<<10 + int(seed)})
		e.must(cache, "backup", "--tag", fmt.Sprint(seed), src)
		list := e.snapshotList(cache)
		models[list[len(list)-1].ShortID] = enginetest.FileHashes(t, src)
	}
	backup(40)
	px := newHoldingProxy(t, e.url)
	viaProxy := *e
	viaProxy.url = px.url
	for i, args := range [][]string{
		{"restore", "latest", "--target", filepath.Join(e.dir, "held-restore")},
		{"ls", "latest"},
		{"tape", "export", "--device", filepath.Join(e.dir, "held-tape-%03d.tar")},
	} {
		px.arm()
		p := viaProxy.start(e.cache(fmt.Sprintf("held-%d", i)), args...)
		select {
		case <-px.held:
		case <-p.done:
			t.Fatalf("%s exited before listing snapshots: exit %d\n%s", p.name, p.code, p.output())
		case <-time.After(concTimeout):
			t.Fatalf("%s did not list snapshots", p.name)
		}
		backup(int64(41 + i))
		px.release()
		if code := p.wait(); code != 0 {
			t.Errorf("%s, held while a backup committed: exit %d\n%s", p.name, code, p.output())
			continue
		}
		if args[0] == "restore" {
			var id string
			fmt.Sscanf(p.Stdout(), "restored snapshot %s", &id)
			want, ok := models[id]
			if !ok {
				t.Fatalf("restore restored snapshot %q:\n%s", id, p.output())
			}
			sameHashes(t, "held restore latest", enginetest.FileHashes(t, filepath.Join(args[3], src)), want)
		}
	}
}

// concKill9: kill -9 of a backup, a restore, a check --read-data and a tape
// export in the middle (at an event: the backup's first pack, the restore's
// first file, check's "reading all packs", the first bytes of the volume).
// Afterwards every snapshot restores, check --read-data passes, and a
// backup and prune succeed at once (the dead process's lock is stale).
func concKill9(t *testing.T, e *concEnv) {
	src := filepath.Join(e.dir, "src")
	rng := rand.New(rand.NewSource(7))
	cache := e.cache("A")
	model := map[string]map[string]string{} // tag → hashes
	step := 0
	mutate := func() {
		step++
		files := map[string]int{}
		for i := 0; i < 4; i++ {
			files[fmt.Sprintf("d%d/f%d", rng.Intn(3), rng.Intn(6))] = 128<<10 + rng.Intn(512<<10)
		}
		writeFiles(t, src, int64(100+step), files)
	}
	backup := func(tag string) {
		e.must(cache, "backup", "--tag", tag, src)
		model[tag] = enginetest.FileHashes(t, src)
	}
	mutate()
	mutate()
	backup("base")

	// After each kill: the dead process's lock is still there, and an
	// exclusive command without --retry-lock (prune --dry-run) removes it at
	// once as stale; check --read-data passes (a killed backup's packs in
	// no index file are only warnings); a backup and prune succeed.
	var dead *proc
	after := func(what string) {
		t.Helper()
		if dead.killed {
			if !e.hasLockOf(dead) {
				t.Fatalf("no lock of the killed %s (pid %d) left in locks/", what, dead.cmd.Process.Pid)
			}
			p := e.start(cache, "prune", "--dry-run")
			p.mustExit0()
			if want := fmt.Sprintf("process %d on this host is gone", dead.cmd.Process.Pid); !strings.Contains(p.output(), want) {
				t.Errorf("prune after killing %s does not say it removed the stale lock (%q):\n%s", what, want, p.output())
			}
		}
		out := e.must(cache, "check", "--read-data")
		if !strings.Contains(out, "no errors") {
			t.Fatalf("check --read-data after killing %s:\n%s", what, out)
		}
		mutate()
		backup("after-" + what)
		e.must(cache, "prune")
	}
	kills := 0
	killed := func(what string, p *proc) {
		t.Helper()
		dead = p
		if p.kill9() {
			kills++
			t.Logf("%s: killed %s in the middle", e.kind, what)
		} else {
			t.Logf("%s: %s finished before the kill", e.kind, what)
		}
	}

	// A backup, killed when its first new pack is stored.
	mutate()
	mutate()
	packs0, _ := e.objects("packs/")
	want := enginetest.FileHashes(t, src)
	p := e.start(cache, "backup", "--tag", "killed", src)
	e.waitFor("a new pack", p, func() bool { n, _ := e.objects("packs/"); return len(n) > len(packs0) })
	killed("backup", p)
	if !p.killed {
		model["killed"] = want
	}
	after("backup")

	// A restore, killed when its first file exists.
	target := filepath.Join(e.dir, "killed-restore")
	p = e.start(cache, "restore", "latest", "--target", target)
	e.waitFor("a restored file", p, func() bool {
		found := false
		filepath.WalkDir(target, func(_ string, d os.DirEntry, err error) error {
			if err == nil && d.Type().IsRegular() {
				found = true
				return filepath.SkipAll
			}
			return nil
		})
		return found
	})
	killed("restore", p)
	after("restore")

	// check --read-data, killed while it reads packs.
	p = e.start(cache, "check", "--read-data")
	if !p.waitLine("reading all packs") {
		t.Fatalf("check ended before reading packs: exit %d\n%s", p.wait(), p.output())
	}
	killed("check", p)
	after("check")

	// A tape export, killed when its volume has its first bytes.
	vol := filepath.Join(e.dir, "tapes", "vol-%03d.tar")
	os.MkdirAll(filepath.Dir(vol), 0o755)
	p = e.start(cache, "tape", "export", "--device", vol, "--block-size", "64K")
	e.waitFor("tape volume bytes", p, func() bool {
		fi, err := os.Stat(fmt.Sprintf(vol, 1))
		return err == nil && fi.Size() > 0
	})
	killed("tape export", p)
	after("tape export")

	if kills < 3 {
		t.Errorf("only %d of 4 commands were killed in the middle; the test proves little", kills)
	}
	// Every snapshot restores byte for byte (each with a cache of its own
	// and a fresh one: the cache makes no difference).
	list := e.snapshotList(cache)
	for _, sn := range list {
		w, ok := model[sn.Tags[0]]
		if !ok {
			t.Fatalf("snapshot %s has tag %v, which no backup of the test had", sn.ShortID, sn.Tags)
		}
		e.restoreEquals(cache, src, w, sn.ID)
	}
	if len(list) < 5 {
		t.Errorf("%d snapshots at the end, want at least 5", len(list))
	}
	if names, _ := e.objects("locks/"); len(names) != 0 {
		t.Errorf("locks left at the end: %v", names)
	}
}

// hasLockOf reports whether locks/ holds a lock object of process p.
func (e *concEnv) hasLockOf(p *proc) bool {
	e.t.Helper()
	names, _ := e.objects("locks/")
	for _, n := range names {
		data, err := backend.ReadAll(context.Background(), e.st, n, 64<<10)
		if err != nil {
			continue
		}
		var info struct {
			PID int `json:"pid"`
		}
		if json.Unmarshal(data, &info) == nil && info.PID == p.cmd.Process.Pid {
			return true
		}
	}
	return false
}

// concPruneDuringBackup: prune while a backup runs exits 11 naming the
// backup; with --retry-lock 2m it waits and runs once the backup ended. The
// backup is held in the middle (its lock taken) by a quiesce hook that
// blocks on a FIFO until the test opens it.
func concPruneDuringBackup(t *testing.T, e *concEnv) {
	src := filepath.Join(e.dir, "src")
	writeFiles(t, src, 20, map[string]int{"a": 512 << 10, "b/c": 256 << 10})
	cache := e.cache("A")
	e.must(cache, "backup", src)
	writeFiles(t, src, 21, map[string]int{"a": 512 << 10})
	want := enginetest.FileHashes(t, src)
	gate := filepath.Join(e.dir, "gate")
	if err := syscall.Mkfifo(gate, 0o600); err != nil {
		t.Fatal(err)
	}
	b := e.start(cache, "backup", "--tag", "held", "--quiesce", "echo held-in-quiesce; cat "+gate+" >/dev/null", src)
	if !b.waitLine("held-in-quiesce") {
		t.Fatalf("backup ended before its quiesce hook:\n%s", b.output())
	}
	p := e.start(e.cache("pruner"), "prune")
	if code := p.wait(); code != exitLocked || !strings.Contains(p.output(), "stasis backup") || !strings.Contains(p.output(), fmt.Sprintf("pid %d", b.cmd.Process.Pid)) {
		t.Fatalf("prune while a backup runs: exit %d, want 11 naming the backup (pid %d):\n%s", code, b.cmd.Process.Pid, p.output())
	}
	p = e.start(e.cache("pruner"), "--retry-lock", "2m", "prune")
	if !p.waitLine("waiting up to 2m") {
		t.Fatalf("prune --retry-lock 2m did not wait for the backup: exit %d\n%s", p.code, p.output())
	}
	if !b.running() {
		t.Fatalf("the backup ended while held:\n%s", b.output())
	}
	// Release the hook; the backup finishes, then prune runs.
	f, err := os.OpenFile(gate, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.Close()
	b.mustExit0()
	if out := p.mustExit0(); !strings.Contains(out, "live blobs") {
		t.Errorf("prune output:\n%s", p.output())
	}
	list := e.snapshotList(cache)
	if len(list) != 2 || list[1].Tags[0] != "held" {
		t.Fatalf("snapshots after backup and prune: %+v", list)
	}
	e.restoreEquals(e.cache("other"), src, want, "latest")
	if out := e.must(cache, "check", "--read-data"); !strings.Contains(out, "no errors") {
		t.Errorf("check:\n%s", out)
	}
}

// concCacheDeletedOrCorrupt: deleting the cache directory between commands,
// and corrupting the cache file (its meta pages, or its length), changes
// nothing in what snapshots, restore and check report.
func concCacheDeletedOrCorrupt(t *testing.T, e *concEnv) { concCache(t, e, false) }

// concCachePagesDamaged: the same with the cache file's pages after its two
// meta pages (freelist, buckets) overwritten, which bbolt.Open does not
// detect by checksum.
func concCachePagesDamaged(t *testing.T, e *concEnv) { concCache(t, e, true) }

func concCache(t *testing.T, e *concEnv, pagesDamaged bool) {
	src := filepath.Join(e.dir, "src")
	writeFiles(t, src, 30, map[string]int{"a": 700 << 10, "b/c": 300 << 10})
	cache := e.cache("A")
	e.must(cache, "backup", "--tag", "one", src)
	want1 := enginetest.FileHashes(t, src)
	writeFiles(t, src, 31, map[string]int{"b/c": 400 << 10, "d": 100 << 10})
	e.must(cache, "backup", "--tag", "two", src)
	want2 := enginetest.FileHashes(t, src)

	type result struct {
		snaps string
		check string
	}
	observe := func(what string) result {
		t.Helper()
		list := e.snapshotList(cache)
		if len(list) != 2 {
			t.Fatalf("%s: %d snapshots", what, len(list))
		}
		e.restoreEquals(cache, src, want1, list[0].ID)
		e.restoreEquals(cache, src, want2, "latest")
		b, _ := json.Marshal(list)
		out := e.must(cache, "check", "--read-data")
		if !strings.Contains(out, "no errors") {
			t.Fatalf("%s: check:\n%s", what, out)
		}
		return result{string(b), out}
	}
	withCache := observe("with the cache")
	dbs, _ := filepath.Glob(filepath.Join(cache, "*", "index.db"))
	if len(dbs) != 1 {
		t.Fatalf("cache files: %v", dbs)
	}
	db := dbs[0]

	overwrite := func(seed int64, from, to int) {
		data, err := os.ReadFile(db)
		if err != nil {
			t.Fatal(err)
		}
		rand.New(rand.NewSource(seed)).Read(data[min(from, len(data)):min(to, len(data))])
		if err := os.WriteFile(db, data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	type step struct {
		name string
		do   func()
	}
	steps := []step{
		{"cache directory deleted", func() { os.RemoveAll(cache) }},
		{"cache file's meta pages overwritten", func() { overwrite(5, 0, 8<<10) }},
		{"cache file truncated", func() { os.Truncate(db, 4096) }},
		{"cache file emptied", func() { os.Truncate(db, 0) }},
	}
	if pagesDamaged {
		steps = []step{{"cache file's pages after the meta pages overwritten", func() { overwrite(6, 8<<10, 1<<30) }}}
	}
	for _, s := range steps {
		s.do()
		got := observe(s.name)
		if got != withCache {
			t.Errorf("%s: results differ from those with the cache:\n%+v\nwith the cache:\n%+v", s.name, got, withCache)
		}
	}
	// A backup with a deleted cache still deduplicates against the
	// repository (it merges the index files anew).
	os.RemoveAll(cache)
	_, before := e.objects("packs/")
	e.must(cache, "backup", "--tag", "three", src)
	if _, after := e.objects("packs/"); after-before > 64<<10 {
		t.Errorf("a backup of an unchanged tree with a deleted cache added %d pack bytes", after-before)
	}
}

// holdingProxy is a reverse proxy in front of the S3 endpoint of a
// repository URL. Once armed, it holds the first request that lists
// snapshots/ (signalling held) until release.
type holdingProxy struct {
	url  string // the repository URL through the proxy
	held chan struct{}

	mu      sync.Mutex
	armed   bool
	waiting chan struct{}
}

func newHoldingProxy(t *testing.T, repoURL string) *holdingProxy {
	t.Helper()
	u, err := url.Parse(strings.TrimPrefix(repoURL, "s3:"))
	if err != nil {
		t.Fatal(err)
	}
	px := &holdingProxy{}
	rp := httputil.NewSingleHostReverseProxy(&url.URL{Scheme: u.Scheme, Host: u.Host})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodGet && strings.HasSuffix(r.URL.Query().Get("prefix"), "/snapshots/") {
			px.mu.Lock()
			var wait chan struct{}
			if px.armed {
				px.armed = false
				wait = px.waiting
				close(px.held)
			}
			px.mu.Unlock()
			if wait != nil {
				select {
				case <-wait:
				case <-r.Context().Done():
				}
			}
		}
		rp.ServeHTTP(w, r)
	}))
	t.Cleanup(func() {
		px.release()
		srv.Close()
	})
	// The client signs the Host it connects to (the proxy's), and the
	// proxy forwards that Host: the signature holds.
	px.url = "s3:" + srv.URL + u.Path
	return px
}

// arm makes the proxy hold the next listing of snapshots/.
func (px *holdingProxy) arm() {
	px.mu.Lock()
	defer px.mu.Unlock()
	px.armed = true
	px.held = make(chan struct{})
	px.waiting = make(chan struct{})
}

// release lets a held request go on.
func (px *holdingProxy) release() {
	px.mu.Lock()
	defer px.mu.Unlock()
	if px.waiting != nil {
		select {
		case <-px.waiting:
		default:
			close(px.waiting)
		}
	}
}
