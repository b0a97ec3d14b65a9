package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"sync"
	"time"

	"github.com/stasisbackup/stasis/internal/index"
	"github.com/stasisbackup/stasis/internal/pack"
	"github.com/stasisbackup/stasis/repo"
	"github.com/stasisbackup/stasis/repo/blob"
)

// fillIndex writes index files naming n synthetic data-blob entries into
// the repository r: random ids (seeded) in ascending order, batchSize
// entries per fake pack, 100 packs per index file (so that merging them
// into the cache appends instead of splitting pages at random). It returns
// a sample of the ids, for lookups. No pack files back them: a backup only
// looks ids up.
func fillIndex(ctx context.Context, r *repo.Repository, n, batchSize int, seed uint64) ([]blob.ID, error) {
	rng := rand.New(rand.NewChaCha8([32]byte{byte(seed), byte(seed >> 8), 's', 'c', 'a', 'l', 'e'}))
	ids := make([]blob.ID, n)
	for i := range ids {
		for j := 0; j < 32; j += 8 {
			v := rng.Uint64()
			for k := 0; k < 8; k++ {
				ids[i][j+k] = byte(v >> (8 * k))
			}
		}
	}
	slices.SortFunc(ids, func(a, b blob.ID) int { return bytes.Compare(a[:], b[:]) })
	var file []index.IndexedPack
	for start := 0; start < n; start += batchSize {
		var entries []pack.Entry
		var off uint64
		for _, id := range ids[start:min(start+batchSize, n)] {
			entries = append(entries, pack.Entry{ID: id, Type: blob.Data, Storage: pack.Zstd, Offset: off, Length: 6000, RawLength: 16384})
			off += 6000
		}
		var packID blob.ID
		for j := 0; j < 32; j += 8 {
			v := rng.Uint64()
			for k := 0; k < 8; k++ {
				packID[j+k] = byte(v >> (8 * k))
			}
		}
		file = append(file, index.IndexedPack{ID: packID, Size: off, Entries: entries})
		if len(file) == 100 || start+batchSize >= n {
			if _, err := r.SaveIndexFile(ctx, file); err != nil {
				return nil, fmt.Errorf("fill index: %w", err)
			}
			file = nil
		}
	}
	sample := make([]blob.ID, 0, 1<<20)
	for i := 0; i < cap(sample); i++ {
		sample = append(sample, ids[rng.IntN(n)])
	}
	return sample, nil
}

// lookupRate times Has for every id in ids with the given number of
// goroutines and returns lookups per second; found counts the hits.
func lookupRate(ix *index.Index, ids []blob.ID, workers int) (rate float64, found int, err error) {
	var mu sync.Mutex
	var wg sync.WaitGroup
	start := time.Now()
	per := (len(ids) + workers - 1) / workers
	for w := 0; w < workers; w++ {
		part := ids[min(w*per, len(ids)):min((w+1)*per, len(ids))]
		wg.Add(1)
		go func() {
			defer wg.Done()
			n := 0
			for _, id := range part {
				ok, e := ix.Has(id)
				if e != nil {
					mu.Lock()
					err = e
					mu.Unlock()
					return
				}
				if ok {
					n++
				}
			}
			mu.Lock()
			found += n
			mu.Unlock()
		}()
	}
	wg.Wait()
	return float64(len(ids)) / time.Since(start).Seconds(), found, err
}

// runScale compares a full backup of the workload into an empty repository
// with the same backup into one whose index holds o.chunks synthetic
// entries, and reports the bbolt lookup rate of the large index.
func runScale(ctx context.Context, o options, stdout io.Writer, log func(string, ...any)) error {
	w, bin, err := readyStasis(ctx, o)
	if err != nil {
		return err
	}
	dir := filepath.Join(o.work, "scale")
	os.RemoveAll(dir)
	tplEmpty, tplBig := filepath.Join(dir, "tpl-empty"), filepath.Join(dir, "tpl-big")
	lookups, err := makeScaleTemplates(ctx, o, bin, dir, tplEmpty, tplBig, log)
	if err != nil {
		return err
	}
	kinds := []scaleKind{{"empty", tplEmpty}, {fmt.Sprintf("%d chunks", o.chunks), tplBig}}
	res, err := scaleBackups(ctx, o, w, bin, dir, kinds, log)
	if err != nil {
		return err
	}
	writeScaleReport(stdout, o, w, kinds, res, lookups)
	return nil
}

// scaleKind is one of the repositories scale backs up into, copied afresh
// from its template for every backup.
type scaleKind struct{ name, tpl string }

// makeScaleTemplates creates the empty repository tplEmpty and its copy
// tplBig (same config: polynomial, keys), whose index it fills with
// o.chunks synthetic entries. It returns what the filling child printed:
// the fill time and the lookup rates.
func makeScaleTemplates(ctx context.Context, o options, bin, dir, tplEmpty, tplBig string, log func(string, ...any)) (lookups []byte, err error) {
	t := stasisAt(ctx, bin, dir, tplEmpty, tplEmpty+".cache", o.encrypt)
	if err := t.Reset(ctx); err != nil {
		return nil, err
	}
	if err := copyTree(ctx, tplEmpty, tplBig); err != nil {
		return nil, err
	}
	os.MkdirAll(tplBig+".cache", 0o700)
	// Fill and time lookups in a child process: a child's ru_maxrss starts
	// at its parent's peak (Linux copies the hiwater mark at exec), so the
	// harness itself must stay small.
	log("filling %s with %d synthetic index entries (child process)", tplBig, o.chunks)
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	var fillOut bytes.Buffer
	fc := exec.CommandContext(ctx, self, "fill-index", "--work", tplBig, "--chunks", fmt.Sprint(o.chunks), "--seed", fmt.Sprint(o.seed))
	fc.Stdout, fc.Stderr = &fillOut, os.Stderr
	if err := fc.Run(); err != nil {
		return nil, fmt.Errorf("fill index: %w", err)
	}
	log("%s", bytes.TrimSpace(fillOut.Bytes()))
	return fillOut.Bytes(), nil
}

// scaleBackups measures --runs backups of the workload into a fresh copy of
// each kind's repository: kind name → samples.
func scaleBackups(ctx context.Context, o options, w Workload, bin, dir string, kinds []scaleKind, log func(string, ...any)) (map[string][]Sample, error) {
	res := map[string][]Sample{}
	work := filepath.Join(dir, "repo")
	for run := 0; run < o.runs; run++ {
		for _, k := range kinds {
			os.RemoveAll(work)
			os.RemoveAll(work + ".cache")
			for _, d := range []string{"", ".cache"} {
				if err := copyTree(ctx, k.tpl+d, work+d); err != nil {
					return nil, err
				}
			}
			bt := stasisAt(ctx, bin, dir, work, work+".cache", o.encrypt)
			s, err := measure(bt.Backup(ctx, w.Root))
			if err != nil {
				return nil, fmt.Errorf("scale backup into %s repository: %w", k.name, err)
			}
			log("backup into %-16s wall %6.2fs cpu %6.2fs rss %s", k.name, s.Wall.Seconds(), s.CPU.Seconds(), mib(s.MaxRSS))
			res[k.name] = append(res[k.name], s)
		}
	}
	os.RemoveAll(work)
	os.RemoveAll(work + ".cache")
	return res, nil
}

// writeScaleReport prints scale's report: the setting, the table of
// backups and the lookup rates.
func writeScaleReport(stdout io.Writer, o options, w Workload, kinds []scaleKind, res map[string][]Sample, lookups []byte) {
	fmt.Fprintf(stdout, "Command: `%s`\n\nMachine: %s. Workload: as above (X500.db %s, %d files, seed %d). Page cache warm; median of %d runs.\n\n",
		commandLine(), machine(), mib(w.DBSize), w.Files, w.Seed, o.runs)
	fmt.Fprintf(stdout, "The large repository is the empty one (same config) with index files naming %d synthetic data-blob entries "+
		"(random 32-byte ids in id order, 1,000 per fake pack, 100 packs per index file, in a child process) and a client cache "+
		"built from them (cache index.db %s, plus its filter). No pack files back them: the backup only looks them up.\n\n", o.chunks, mib(cacheIndexSize(kinds[1].tpl)))
	fmt.Fprintln(stdout, "| repository | cache index.db MiB | backup wall s | CPU s | peak RSS MiB | RSS vs empty |")
	fmt.Fprintln(stdout, "|---|---:|---:|---:|---:|---:|")
	base := median(res[kinds[0].name])
	for _, k := range kinds {
		m := median(res[k.name])
		fmt.Fprintf(stdout, "| %s | %.1f | %.2f | %.2f | %.0f | %+.0f%% |\n", k.name, float64(cacheIndexSize(k.tpl))/(1<<20),
			m.Wall.Seconds(), m.CPU.Seconds(), float64(m.MaxRSS)/(1<<20), 100*(float64(m.MaxRSS)/float64(base.MaxRSS)-1))
	}
	fmt.Fprintf(stdout, "\nbbolt lookup rate of the large index (index.Has, one read transaction per lookup, 1,048,576 lookups):\n\n%s", lookups)
}

// cacheIndexSize is the size of the cache's index.db of the repository
// repo (its cache in repo.cache), 0 when there is none.
func cacheIndexSize(repo string) int64 {
	m, _ := filepath.Glob(filepath.Join(repo+".cache", "*", "index.db"))
	if len(m) == 0 {
		return 0
	}
	st, err := os.Stat(m[0])
	if err != nil {
		return 0
	}
	return st.Size()
}

// copyTree copies the repository (or cache) from to to, with `cp -a`.
func copyTree(ctx context.Context, from, to string) error {
	if out, err := exec.CommandContext(ctx, "cp", "-a", from, to).CombinedOutput(); err != nil {
		return fmt.Errorf("copy repository: %w: %s", err, out)
	}
	return nil
}

// runFillIndex is the hidden fill-index command: it fills the index of the
// repository o.work with o.chunks synthetic entries and prints the fill
// time and a table of lookup rates.
func runFillIndex(ctx context.Context, o options, stdout io.Writer) error {
	r, err := openRepoCache(ctx, o.work, o.work+".cache")
	if err != nil {
		return err
	}
	start := time.Now()
	hits, err := fillIndex(ctx, r, o.chunks, 1000, uint64(o.seed))
	if err != nil {
		r.Close()
		return err
	}
	written := time.Since(start)
	// Merge the new index files into the cache (as the next command would)
	// and save its filter.
	if err := r.WritableIndex(ctx); err != nil {
		r.Close()
		return err
	}
	if err := r.Close(); err != nil {
		return err
	}
	if r, err = openRepoCache(ctx, o.work, o.work+".cache"); err != nil {
		return err
	}
	defer r.Close()
	fill := time.Since(start)
	misses := make([]blob.ID, len(hits))
	mr := rand.New(rand.NewPCG(uint64(o.seed), 99))
	for i := range misses {
		for j := range misses[i] {
			misses[i][j] = byte(mr.Uint32())
		}
	}
	fmt.Fprintf(stdout, "index files written in %s, cache built in %s more: %d blobs\n\n", written.Round(time.Second), (fill - written).Round(time.Second), o.chunks)
	fmt.Fprintln(stdout, "| ids | goroutines | lookups/s | found |")
	fmt.Fprintln(stdout, "|---|---:|---:|---:|")
	for _, c := range []struct {
		what string
		ids  []blob.ID
	}{{"present ids", hits}, {"absent ids", misses}} {
		for _, workers := range []int{1, runtime.NumCPU()} {
			rate, found, err := lookupRate(r.Index(), c.ids, workers)
			if err != nil {
				return err
			}
			fmt.Fprintf(stdout, "| %s | %d | %.0f | %d |\n", c.what, workers, rate, found)
		}
	}
	return nil
}
