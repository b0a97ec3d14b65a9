package engine_test

import (
	"errors"
	"math/rand"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stasisbackup/stasis/internal/backendtest"
	"github.com/stasisbackup/stasis/repo/backend"

	"github.com/stasisbackup/stasis/engine"
	"github.com/stasisbackup/stasis/internal/enginetest"
	"github.com/stasisbackup/stasis/repo"
	"github.com/stasisbackup/stasis/repo/tree"
)

// A flipped byte in a pack is found by check --read-data, which names the
// file; restore writes every other file, names the damaged one, and never
// writes garbage.
func TestFlippedByteIsNamedByCheckAndRestore(t *testing.T) {
	src := filepath.Join(t.TempDir(), "src")
	os.MkdirAll(src, 0o755)
	os.WriteFile(filepath.Join(src, "a.ldif"), []byte("dn: cn=alice,o=Zoomserv\n"), 0o644)
	dir := t.TempDir() + "/repo"
	r, err := repo.Init(ctx, enginetest.Local(dir), enginetest.InitOptions(), repo.OpenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	backup(t, r, day1, src)
	os.WriteFile(filepath.Join(src, "b.ldif"), []byte("dn: cn=bob,o=Zoomserv\nmail: bob@example.org\n"), 0o644)
	sn := backup(t, r, day1.Add(1), src)

	var bNode tree.Node
	engine.Walk(ctx, r, sn, filepath.Join(src, "b.ldif"), func(_ string, n *tree.Node) error { bNode = *n; return nil })
	loc, ok, err := r.Index().Lookup(bNode.Content[0].ID)
	if err != nil || !ok {
		t.Fatalf("lookup b's chunk: %v %v", ok, err)
	}
	packFile := filepath.Join(dir, repo.PackName(loc.Pack))
	data, _ := os.ReadFile(packFile)
	data[loc.Offset+uint64(loc.Length)/2] ^= 0x01
	os.Chmod(packFile, 0o644)
	if err := os.WriteFile(packFile, data, 0o644); err != nil {
		t.Fatal(err)
	}

	rep, err := engine.Check(ctx, r, engine.CheckOptions{ReadData: true})
	if err != nil {
		t.Fatal(err)
	}
	all := strings.Join(rep.Errors, "\n")
	if rep.OK() || !strings.Contains(all, filepath.Join(src, "b.ldif")) || !strings.Contains(all, loc.Pack.String()) {
		t.Errorf("check does not name the damaged file and pack:\n%s", all)
	}
	if strings.Contains(all, "a.ldif") {
		t.Errorf("check blames the undamaged file:\n%s", all)
	}
	if rep, _ := engine.Check(ctx, r, engine.CheckOptions{}); !rep.OK() {
		t.Errorf("structure-only check reports damage it cannot see: %v", rep.Errors)
	}

	target := t.TempDir()
	res, err := engine.Restore(ctx, r, sn, engine.RestoreOptions{Target: target})
	if !errors.Is(err, engine.ErrRestoreIncomplete) {
		t.Fatalf("restore of a damaged snapshot: err = %v", err)
	}
	if len(res.Problems) != 1 || res.Problems[0].Path != filepath.Join(src, "b.ldif") || !strings.Contains(res.Problems[0].Error, "corrupt") {
		t.Errorf("problems = %+v", res.Problems)
	}
	if b, _ := os.ReadFile(filepath.Join(target, src, "a.ldif")); !strings.Contains(string(b), "alice") {
		t.Error("undamaged file not restored")
	}
	if _, err := os.Stat(filepath.Join(target, src, "b.ldif")); err == nil {
		t.Error("damaged file restored with garbage")
	}
	ents, _ := os.ReadDir(filepath.Join(target, src))
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), ".stasis-restore") {
			t.Errorf("temp file %s left behind", e.Name())
		}
	}
}

// The compression dictionary is made from the first data blobs, used for
// every later one, survives reopening, and a damaged dictionary file is
// named by check while restore names the files it cannot decode.
func TestCompressionDictionary(t *testing.T) {
	src := filepath.Join(t.TempDir(), "src")
	os.MkdirAll(src, 0o755)
	rng := rand.New(rand.NewSource(5))
	writePages(t, filepath.Join(src, "X500.db"), 1024, rng) // 4 MiB of records
	os.WriteFile(filepath.Join(src, "tiny.conf"), []byte("port 389\n"), 0o644)
	dir := t.TempDir() + "/repo"
	r, err := repo.Init(ctx, enginetest.Local(dir), enginetest.InitOptionsV1(), repo.OpenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	sn := backup(t, r, day1, src)
	dicts, _ := r.DictNames(ctx)
	if len(dicts) != 1 {
		t.Fatalf("dictionaries after a 4 MiB database: %v", dicts)
	}
	r.Close()
	if r, err = repo.Open(ctx, enginetest.Local(dir), enginetest.OpenOptions()); err != nil {
		t.Fatal(err)
	}
	target := t.TempDir()
	restore(t, r, sn, engine.RestoreOptions{Target: target})
	compareTrees(t, src, filepath.Join(target, src))
	if rep, _ := engine.Check(ctx, r, engine.CheckOptions{ReadData: true}); !rep.OK() {
		t.Fatalf("check: %v", rep.Errors)
	}
	r.Close()

	// Damage the dictionary: the repository still opens, check names the
	// file, restore writes what does not need it and names the rest.
	p := filepath.Join(dir, dicts[0])
	data, _ := os.ReadFile(p)
	data[len(data)/2] ^= 1
	os.Chmod(p, 0o600)
	os.WriteFile(p, data, 0o600)
	if r, err = repo.Open(ctx, enginetest.Local(dir), enginetest.OpenOptions()); err != nil {
		t.Fatalf("open with a damaged dictionary: %v", err)
	}
	defer r.Close()
	rep, err := engine.Check(ctx, r, engine.CheckOptions{ReadData: true})
	if err != nil {
		t.Fatal(err)
	}
	all := strings.Join(rep.Errors, "\n")
	if !strings.Contains(all, dicts[0]) || !strings.Contains(all, filepath.Join(src, "X500.db")) {
		t.Errorf("check does not name the dictionary and the file:\n%s", all)
	}
	res, err := engine.Restore(ctx, r, sn, engine.RestoreOptions{Target: t.TempDir()})
	if !errors.Is(err, engine.ErrRestoreIncomplete) || len(res.Problems) != 1 || res.Problems[0].Path != filepath.Join(src, "X500.db") {
		t.Errorf("restore with a damaged dictionary: %v %+v", err, res)
	}
}

// A dictionary that cannot be written (here: its upload fails, as on a full
// disk) fails the backup with a message naming it; nothing half-written is
// referenced and the next backup succeeds.
func TestDictionaryWriteFailure(t *testing.T) {
	src := filepath.Join(t.TempDir(), "src")
	os.MkdirAll(src, 0o755)
	writePages(t, filepath.Join(src, "X500.db"), 1024, rand.New(rand.NewSource(9)))
	dir := t.TempDir() + "/repo"
	r, err := repo.Init(ctx, enginetest.Local(dir), enginetest.InitOptionsV1(), repo.OpenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	r.Close()
	faulty := backendtest.NewFaulty(backend.NewLocal(dir))
	faulty.Inject(backendtest.Fault{Op: backendtest.OpPut, Name: "dicts/*", Err: syscall.ENOSPC})
	if r, err = repo.Open(ctx, faulty, enginetest.OpenOptions()); err != nil {
		t.Fatal(err)
	}
	_, err = engine.Backup(ctx, r, engine.BackupOptions{Paths: []string{src}, Now: clock(day1)})
	if err == nil || !strings.Contains(err.Error(), "compression dictionary") || !strings.Contains(err.Error(), "no space left") {
		t.Fatalf("backup with an unwritable dictionary: %v", err)
	}
	r.Close()
	if r, err = repo.Open(ctx, enginetest.Local(dir), enginetest.OpenOptions()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { enginetest.CheckAndClose(t, r) })
	sn := backup(t, r, day1.Add(time.Hour), src)
	restore(t, r, sn, engine.RestoreOptions{})
}
