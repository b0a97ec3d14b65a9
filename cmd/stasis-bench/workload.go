package main

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math/rand"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/stasisbackup/stasis/cmd/zoomsim/zdb"
)

// Workload describes the generated Zoomserv-like tree. Everything in it is a
// function of its fields: the same Workload gives the same bytes.
type Workload struct {
	Root    string // the tree: Root/X500.db, Root/log/tx.log, Root/ldif/..., Root/conf/...
	DBSize  int64  // bytes of X500.db (rounded down to whole pages, header included)
	LogSize int64  // bytes of log/tx.log
	Files   int    // small LDIF/config files
	Seed    int64
}

// DBPath is the database file of the workload.
func (w Workload) DBPath() string { return filepath.Join(w.Root, "X500.db") }

// LogPath is the transaction log of the workload.
func (w Workload) LogPath() string { return filepath.Join(w.Root, "log", "tx.log") }

func (w Workload) pages() int { return int(w.DBSize/zdb.PageSize) - 1 }

// stamp names the parameters a tree was generated with; a tree whose stamp
// matches is reused instead of generated again. A daily change removes it.
func (w Workload) stamp() string {
	return fmt.Sprintf("stasis-bench workload v1 db=%d log=%d files=%d seed=%d\n", w.DBSize, w.LogSize, w.Files, w.Seed)
}

func (w Workload) stampPath() string {
	return filepath.Join(filepath.Dir(w.Root), ".stamp-"+filepath.Base(w.Root))
}

// Generate writes the workload tree, replacing whatever Root held, unless a
// tree with the same parameters is already there (reused reports that).
func (w Workload) Generate() (reused bool, err error) {
	if b, err := os.ReadFile(w.stampPath()); err == nil && string(b) == w.stamp() {
		return true, nil
	}
	if w.pages() < 2 {
		return false, fmt.Errorf("workload: --db-size %d is too small: want at least %d bytes", w.DBSize, 3*zdb.PageSize)
	}
	os.Remove(w.stampPath())
	if err := os.RemoveAll(w.Root); err != nil {
		return false, fmt.Errorf("workload: clear %s: %w", w.Root, err)
	}
	for _, d := range []string{"log", "ldif", "conf"} {
		if err := os.MkdirAll(filepath.Join(w.Root, d), 0o755); err != nil {
			return false, fmt.Errorf("workload: %w", err)
		}
	}
	if err := zdb.Create(w.DBPath(), w.pages(), w.Seed); err != nil {
		return false, fmt.Errorf("workload: %w", err)
	}
	rng := rand.New(rand.NewSource(w.Seed + 1))
	if err := appendLog(w.LogPath(), rng, 0, w.LogSize); err != nil {
		return false, err
	}
	for i := 0; i < w.Files; i++ {
		if err := writeSmallFile(w.Root, rng, fmt.Sprintf("%05d", i), i); err != nil {
			return false, err
		}
	}
	return false, os.WriteFile(w.stampPath(), []byte(w.stamp()), 0o644)
}

// writeSmallFile writes one small file: nineteen in twenty are LDIF entries
// (ldif/dNN/entry-NAME.ldif, 500 to a directory), the rest config files.
func writeSmallFile(root string, rng *rand.Rand, name string, i int) error {
	var sb strings.Builder
	var p string
	if i%20 == 19 {
		p = filepath.Join(root, "conf", fmt.Sprintf("c%02d", i%7), "zoomserv-"+name+".conf")
		fmt.Fprintf(&sb, "# Zoomserv configuration fragment %s\n[server]\n", name)
		for n := 4 + rng.Intn(60); n > 0; n-- {
			fmt.Fprintf(&sb, "option_%d = %d # %s\n", rng.Intn(500), rng.Intn(1<<20), units[rng.Intn(len(units))])
		}
	} else {
		p = filepath.Join(root, "ldif", fmt.Sprintf("d%02d", i/500), "entry-"+name+".ldif")
		for n := 1 + rng.Intn(20); n > 0; n-- {
			g, s := given[rng.Intn(len(given))], family[rng.Intn(len(family))]
			fmt.Fprintf(&sb, "dn: uid=%s%d,ou=%s,o=Zoomserv\nobjectClass: inetOrgPerson\ncn: %s %s\nuid: %s%d\nmail: %s.%s@zoomserv.example\ntelephoneNumber: +44 20 7946 %04d\n\n",
				strings.ToLower(g), rng.Intn(100000), units[rng.Intn(len(units))], g, s, strings.ToLower(g), rng.Intn(1000),
				strings.ToLower(g), strings.ToLower(s), rng.Intn(10000))
		}
	}
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		return fmt.Errorf("workload: %w", err)
	}
	if err := os.WriteFile(p, []byte(sb.String()), 0o644); err != nil {
		return fmt.Errorf("workload: %w", err)
	}
	return nil
}

var (
	given  = []string{"Ada", "Boris", "Clara", "Dario", "Emma", "Felix", "Gina", "Hugo", "Iris", "Jan", "Kira", "Leo"}
	family = []string{"Adler", "Brown", "Conti", "Dahl", "Engel", "Ferrari", "Gray", "Hansen", "Ito", "Jovanovic"}
	units  = []string{"Sales", "Engineering", "Support", "Finance", "Legal", "Operations", "Research"}
)

// appendLog appends n bytes of transaction log lines (semi-compressible
// text) to path, numbering transactions from first.
func appendLog(path string, rng *rand.Rand, first uint64, n int64) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		return fmt.Errorf("workload: open log %s: %w", path, err)
	}
	bw := bufio.NewWriterSize(f, 1<<20)
	var line []byte
	for tx := first; n > 0; tx++ {
		line = fmt.Appendf(line[:0], "%d tx=%d op=%s dn=uid=%s%d,ou=%s,o=Zoomserv pages=%d,%d delta=%d crc=%08x\n",
			1_790_000_000+int64(tx), tx, ops[rng.Intn(len(ops))], strings.ToLower(given[rng.Intn(len(given))]), rng.Intn(100000),
			units[rng.Intn(len(units))], rng.Intn(1<<18), rng.Intn(1<<18), rng.Intn(2001)-1000, rng.Uint32())
		if int64(len(line)) > n {
			line = line[:n]
		}
		bw.Write(line)
		n -= int64(len(line))
	}
	if err := bw.Flush(); err != nil {
		f.Close()
		return fmt.Errorf("workload: write log %s: %w", path, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("workload: write log %s: %w", path, err)
	}
	return nil
}

var ops = []string{"modify", "modify", "modify", "add", "delete", "modrdn"}

// Change is what one daily change did.
type Change struct {
	PagesRewritten int // page writes in runs (a page hit by two runs counts twice)
	Runs           int
	PagesAppended  int
	LogAppended    int64
	FilesAdded     int
}

// DailyChange applies day's change to the tree: 1% of the database pages
// rewritten in place in runs of 1..16 adjacent pages (new transaction id,
// balance and record text; the balances still sum to the total), 64 pages
// appended, 1 MiB appended to the log and 50 new small files. It is
// deterministic for (Seed, day) and the database stays consistent
// (zdb.Check passes).
func (w Workload) DailyChange(day int) (Change, error) {
	os.Remove(w.stampPath())
	rng := rand.New(rand.NewSource(w.Seed*7919 + int64(day)))
	var c Change
	if err := w.changeDB(day, rng, &c); err != nil {
		return c, err
	}
	if err := appendLog(w.LogPath(), rng, uint64(day)<<32, 1<<20); err != nil {
		return c, err
	}
	c.LogAppended = 1 << 20
	for i := 0; i < 50; i++ {
		if err := writeSmallFile(w.Root, rng, fmt.Sprintf("day%03d-%02d", day, i), i); err != nil {
			return c, err
		}
	}
	c.FilesAdded = 50
	return c, nil
}

// changeDB is the database's part of day's change, counted in c.
func (w Workload) changeDB(day int, rng *rand.Rand, c *Change) error {
	f, err := os.OpenFile(w.DBPath(), os.O_RDWR, 0)
	if err != nil {
		return fmt.Errorf("daily change: %w", err)
	}
	defer f.Close()
	db := dbFile{f: f, path: w.DBPath(), buf: make([]byte, zdb.PageSize)}
	if _, err := f.ReadAt(db.buf, 0); err != nil {
		return fmt.Errorf("daily change: read header of %s: %w", db.path, err)
	}
	h, err := zdb.DecodeHeader(db.buf)
	if err != nil {
		return fmt.Errorf("daily change: %s: %w", db.path, err)
	}
	last, sum, err := w.rewriteRuns(db, h, day, rng, c)
	if err != nil {
		return err
	}
	// Give the last page written the opposite of the sum of all deltas.
	p, err := db.read(last)
	if err != nil {
		return err
	}
	p.Balance -= sum
	if err := db.write(p); err != nil {
		return err
	}
	if err := w.appendPages(db, &h, 64); err != nil {
		return err
	}
	c.PagesAppended = 64
	if err := f.Close(); err != nil {
		return fmt.Errorf("daily change: %s: %w", db.path, err)
	}
	return nil
}

// rewriteRuns rewrites 1% of the pages of the database (h its header) in
// runs of 1..16 adjacent pages: a new transaction id, balance and record
// text. It returns the last page written and the sum of the changes to the
// balances.
func (w Workload) rewriteRuns(db dbFile, h zdb.Header, day int, rng *rand.Rand, c *Change) (last int, sum int64, err error) {
	txID := uint64(day) << 32
	last = -1
	var sb strings.Builder
	target := max(1, h.Pages/100)
	for c.PagesRewritten < target {
		run := min(1+rng.Intn(16), target-c.PagesRewritten, h.Pages)
		start := 1 + rng.Intn(h.Pages-run+1)
		for n := start; n < start+run; n++ {
			p, err := db.read(n)
			if err != nil {
				return last, sum, err
			}
			txID++
			d := rng.Int63n(2001) - 1000
			sum += d
			p.TxID, p.Balance = txID, p.Balance+d
			sb.Reset()
			zdb.Records(&sb, w.Seed+int64(day)*1_000_033+int64(c.PagesRewritten), n)
			p.Body = []byte(sb.String())
			if err := db.write(p); err != nil {
				return last, sum, err
			}
			last = n
			c.PagesRewritten++
		}
		c.Runs++
	}
	return last, sum, nil
}

// appendPages appends n pages with zero balance to the database, then
// writes the header h with the new count.
func (w Workload) appendPages(db dbFile, h *zdb.Header, n int) error {
	var sb strings.Builder
	for i := 1; i <= n; i++ {
		sb.Reset()
		zdb.Records(&sb, w.Seed, h.Pages+i)
		if err := db.put(zdb.Page{Number: h.Pages + i, Body: []byte(sb.String())}); err != nil {
			return fmt.Errorf("daily change: append to %s: %w", db.path, err)
		}
	}
	h.Pages += n
	zdb.EncodeHeader(db.buf, *h)
	if _, err := db.f.WriteAt(db.buf, 0); err != nil {
		return fmt.Errorf("daily change: write header of %s: %w", db.path, err)
	}
	return nil
}

// dbFile is the database file of a daily change, read and written a page
// at a time through buf.
type dbFile struct {
	f    *os.File
	path string
	buf  []byte
}

// read reads and decodes page n.
func (db dbFile) read(n int) (zdb.Page, error) {
	p, err := readPage(db.f, db.buf, n)
	if err != nil {
		return p, fmt.Errorf("daily change: %s: %w", db.path, err)
	}
	return p, nil
}

// write encodes and writes page p in its place.
func (db dbFile) write(p zdb.Page) error {
	if err := db.put(p); err != nil {
		return fmt.Errorf("daily change: write %s page %d: %w", db.path, p.Number, err)
	}
	return nil
}

// put is write with the error unwrapped.
func (db dbFile) put(p zdb.Page) error {
	zdb.EncodePage(db.buf, p)
	_, err := db.f.WriteAt(db.buf, int64(p.Number)*zdb.PageSize)
	return err
}

func readPage(f *os.File, buf []byte, n int) (zdb.Page, error) {
	if _, err := f.ReadAt(buf, int64(n)*zdb.PageSize); err != nil && err != io.EOF {
		return zdb.Page{}, fmt.Errorf("read page %d: %w", n, err)
	}
	p, err := zdb.DecodePage(buf, n)
	if err != nil {
		return p, fmt.Errorf("page %d: %w", n, err)
	}
	return p, nil
}

// warm reads every file below root once, so that a warm-cache run starts
// with the tree in the page cache. It returns the bytes read.
func warm(root string) (int64, error) {
	var total int64
	buf := make([]byte, 1<<20)
	err := filepath.WalkDir(root, func(p string, d os.DirEntry, err error) error {
		if err != nil || !d.Type().IsRegular() {
			return err
		}
		f, err := os.Open(p)
		if err != nil {
			return err
		}
		defer f.Close()
		n, err := io.CopyBuffer(io.Discard, f, buf)
		total += n
		return err
	})
	return total, err
}

// readyWorkload generates the workload (or reuses it) and reads it once so
// that every tool meets the same warm page cache; it returns its size.
func readyWorkload(w Workload, start time.Time, log func(string, ...any)) (int64, error) {
	log("generating workload in %s (X500.db %s, log %s, %d files, seed %d)", w.Root, mib(w.DBSize), mib(w.LogSize), w.Files, w.Seed)
	reused, err := w.Generate()
	if err != nil {
		return 0, err
	}
	if reused {
		log("workload reused (same parameters)")
	}
	total, err := warm(w.Root)
	if err != nil {
		return 0, fmt.Errorf("read workload: %w", err)
	}
	log("workload: %s in %d files, ready after %s", mib(total), w.Files+2, time.Since(start).Round(time.Second))
	return total, nil
}

// runChange applies day o.day's change to the workload as it is (changes
// accumulate, as on the days of run), generating it first if it is missing.
func runChange(o options, stdout io.Writer) error {
	w := o.workload()
	if _, err := os.Stat(w.DBPath()); errors.Is(err, fs.ErrNotExist) {
		if _, err := w.Generate(); err != nil {
			return err
		}
	} else if err != nil {
		return err
	}
	c, err := w.DailyChange(o.day)
	if err != nil {
		return fmt.Errorf("day %d's change: %w", o.day, err)
	}
	fmt.Fprintf(stdout, "%s: day %d: %d page writes in %d runs, %d pages appended, %d bytes of log, %d new files\n",
		w.Root, o.day, c.PagesRewritten, c.Runs, c.PagesAppended, c.LogAppended, c.FilesAdded)
	return nil
}
