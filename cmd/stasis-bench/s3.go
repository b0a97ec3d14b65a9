package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/minio/minio-go/v7"

	"github.com/stasisbackup/stasis/internal/backendtest"
)

// The s3 subcommand: stasis and restic, each on a local directory and on
// S3 (a SeaweedFS started on loopback for the run), through the scenarios
// of s3Scenarios.

// s3Scenarios are the scenarios of the s3 subcommand, in the order they run
// and are reported.
var s3Scenarios = []string{scInitial, scUnchanged, scS3Restore}

// scS3Restore is s3's full restore (into an emptied directory).
const scS3Restore = "full restore"

// s3Bucket is the bucket every S3 repository of a run gets a prefix in.
const s3Bucket = "stasis-bench"

// s3Columns are the figures of s3's tables.
var s3Columns = append(costColumns[:len(costColumns):len(costColumns)],
	column{head: "repository MiB", format: "%.2f", value: func(s Sample) float64 { return float64(s.Size) / (1 << 20) },
		absent: func(_ string, m Sample) bool { return m.Size < 0 }},
)

// s3Backend is where one table's repositories live.
type s3Backend struct {
	name string // "local" or "s3"
	desc string // for the table's heading
}

// s3Run is one run of the s3 subcommand: the server, the tools and every
// sample taken of them.
type s3Run struct {
	o      options
	w      Workload
	base   string // the work directory of the run
	srv    *backendtest.SeaweedServer
	log    func(string, ...any)
	picks  []pick
	notes  []toolNote         // a tool's first setup's
	all    map[string]results // by backend name
	resets int                // S3 repositories made: the prefixes are numbered
}

func runS3(ctx context.Context, o options, stdout io.Writer, log func(string, ...any)) error {
	o.encrypt = true // both tools encrypt: stasis with a password
	picks, missing, err := pickTools(ctx, o, true, log)
	if err != nil {
		return err
	}
	if len(picks) == 0 {
		return fmt.Errorf("no tool to run (s3 runs %s)", andList(toolNames(true)))
	}
	r := &s3Run{o: o, w: o.workload(), base: filepath.Join(o.work, "s3"), log: log, picks: picks, all: map[string]results{}}

	start := time.Now()
	loadBefore := loadAvg()
	total, err := readyWorkload(r.w, start, log)
	if err != nil {
		return err
	}
	weedBin, _, err := backendtest.WeedBinary()
	if err != nil {
		return fmt.Errorf("SeaweedFS: %w", err)
	}
	if r.srv, err = startS3Server(ctx, log); err != nil {
		return err
	}
	// Stopped on every return, an error or a cancelled context (Ctrl-C,
	// SIGTERM: main's context) included. Should the harness die without
	// it, weed gets SIGKILL (Pdeathsig) and the next start removes its
	// directory.
	defer r.srv.Stop()

	if err := os.MkdirAll(r.base, 0o755); err != nil {
		return err
	}
	backends := []s3Backend{
		{"local", fmt.Sprintf("local directory (%s)", disk(r.base))},
		{"s3", fmt.Sprintf("SeaweedFS S3 on loopback (`s3:http://%s/%s/PREFIX`, data on %s)", r.srv.Endpoint, s3Bucket, disk(r.srv.Dir))},
	}
	for _, be := range backends {
		if err := r.measureBackend(ctx, be); err != nil {
			return err
		}
	}
	log("done in %s", time.Since(start).Round(time.Second))
	weed := fmt.Sprintf("%s, `%s`", weedVersion(ctx, weedBin), filepath.Base(weedBin))
	return o.publish(stdout, r.report(total, loadBefore, weed, missing, backends))
}

// startS3Server starts the SeaweedFS of the run, with the bucket s3Bucket.
// The caller stops it.
func startS3Server(ctx context.Context, log func(string, ...any)) (*backendtest.SeaweedServer, error) {
	srv, err := backendtest.StartSeaweed(1)
	if err != nil {
		return nil, err
	}
	log("SeaweedFS S3 on %s (data in %s), ready after %s", srv.Endpoint, srv.Dir, srv.Startup.Round(time.Millisecond))
	if err := srv.Client().MakeBucket(ctx, s3Bucket, minio.MakeBucketOptions{Region: backendtest.SeaweedRegion}); err != nil {
		srv.Stop()
		return nil, fmt.Errorf("SeaweedFS: create bucket %s: %w", s3Bucket, err)
	}
	return srv, nil
}

// measureBackend sets the tools up on backend be and measures each of
// them --runs times through the scenarios.
func (r *s3Run) measureBackend(ctx context.Context, be s3Backend) error {
	res := results{}
	r.all[be.name] = res
	dir := filepath.Join(r.base, be.name)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	var tools []*Tool
	for _, p := range r.picks {
		t := p.tool(ctx, dir, r.o)
		if !slices.ContainsFunc(r.notes, func(n toolNote) bool { return n.name == t.Name }) {
			r.notes = append(r.notes, toolNote{t.Name, t.Version(ctx), t.S3Settings})
		}
		tools = append(tools, t)
	}
	for run := 0; run < r.o.runs; run++ {
		for _, t := range tools {
			if err := r.measureTool(ctx, be, t, res); err != nil {
				return err
			}
		}
	}
	return nil
}

// measureTool takes one run of t on be: a fresh repository, the initial
// backup, the re-backup and the full restore (checked).
func (r *s3Run) measureTool(ctx context.Context, be s3Backend, t *Tool, res results) error {
	size, err := r.reset(ctx, be, t)
	if err != nil {
		return err
	}
	if err := r.measure(be, scInitial, t, t.Backup(ctx, r.w.Root), size, res); err != nil {
		return err
	}
	if err := r.measure(be, scUnchanged, t, t.Backup(ctx, r.w.Root), size, res); err != nil {
		return err
	}
	target := filepath.Join(r.base, "restore-"+t.Name)
	if err := freshTarget(target); err != nil {
		return err
	}
	if err := r.measure(be, scS3Restore, t, t.Restore(ctx, target, ""), nil, res); err != nil {
		return err
	}
	if err := verifyRestore(r.w.Root, filepath.Join(target, r.w.Root), false); err != nil {
		return fmt.Errorf("%s: %s by %s is wrong: %w", be.name, scS3Restore, t.Name, err)
	}
	return os.RemoveAll(target)
}

// reset gives t a fresh, empty repository on be and returns how to take its
// size: du of the directory, or the sum of the object sizes under the
// prefix.
func (r *s3Run) reset(ctx context.Context, be s3Backend, t *Tool) (size func() (int64, error), err error) {
	if be.name == "local" {
		if err := t.Reset(ctx); err != nil {
			return nil, err
		}
		return func() (int64, error) { return diskUsage(t.Repo) }, nil
	}
	r.resets++
	prefix := fmt.Sprintf("%s-%d", t.Name, r.resets)
	tg, err := r.srv.Target(s3Bucket, prefix)
	if err != nil {
		return nil, err
	}
	if err := resetS3(ctx, t, tg); err != nil {
		return nil, err
	}
	return func() (int64, error) { return objectBytes(ctx, r.srv.Client(), s3Bucket, prefix+"/") }, nil
}

// measure runs cmd, scenario sc of t on be, and records its sample with the
// repository's size after it (size; nil for none).
func (r *s3Run) measure(be s3Backend, sc string, t *Tool, cmd *exec.Cmd, size func() (int64, error), res results) error {
	s, err := measureCold(r.o, cmd)
	if err != nil {
		return fmt.Errorf("%s, %s, %s: %w", be.name, sc, t.Name, err)
	}
	s.Size = -1
	repo := "—"
	if size != nil {
		if s.Size, err = size(); err != nil {
			return err
		}
		repo = mib(s.Size)
	}
	r.log("%-5s %-26s %-6s wall %6.2fs cpu %6.2fs rss %7s repo %9s", be.name, sc, t.Name, s.Wall.Seconds(), s.CPU.Seconds(), mib(s.MaxRSS), repo)
	res.add(sc, t.Name, s)
	return nil
}

// report is the markdown report of the run: the setting, then a table per
// backend. weed describes the SeaweedFS binary.
func (r *s3Run) report(total int64, loadBefore, weed string, missing []string, backends []s3Backend) []byte {
	var rep bytes.Buffer
	writeHeader(&rep, r.o)
	fmt.Fprintf(&rep, "%s\n\n", r.w.describe(total))
	fmt.Fprintf(&rep, "Every run of a tool starts from a fresh, empty repository (local: a new directory; S3: a new prefix in bucket %s) and an empty client cache, "+
		"then takes the initial backup, the re-backup with nothing changed and the full restore (into an empty directory, checked against the tree). ", s3Bucket)
	rep.WriteString(pageCacheNote(r.o, loadBefore))
	writeToolNotes(&rep, r.notes, missing)
	fmt.Fprintf(&rep, "- SeaweedFS (%s): `weed server` with master, one volume server, filer and S3 gateway in one process on 127.0.0.1, started for this run and stopped after it; "+
		"the tools get AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY and AWS_REGION=%s. Its CPU time and memory are not in the figures (it is not a child of the measured command).\n",
		weed, backendtest.SeaweedRegion)
	for _, p := range peers {
		if !p.s3 {
			fmt.Fprintf(&rep, "- %s is not compared here: the harness runs it on local directories only.\n", p.name)
		}
	}
	fmt.Fprintf(&rep, "\nRepository size: local, du of the repository directory (allocated blocks, directories included: restic's 256 data/ subdirectories "+
		"alone take about 1 MiB on ext4, which shows on a small workload); S3, the sum of the object sizes under the prefix (ListObjects). "+
		"The client caches are not counted. Both tools keep their caches between the commands of a run: the re-backup and the restore read them.\n\n")
	fmt.Fprintf(&rep, "%s\n", harnessRSS())
	var names []string
	for _, p := range r.picks {
		names = append(names, p.name)
	}
	for _, be := range backends {
		fmt.Fprintf(&rep, "\n### %s\n\n", be.desc)
		writeComparison(&rep, r.all[be.name], s3Scenarios, names, s3Columns)
		fmt.Fprintln(&rep, "\nIn parentheses: stasis ÷ restic (below 1: stasis is faster or smaller). Repository: its size after the command.")
	}
	return rep.Bytes()
}

// andList joins names as "a, b and c".
func andList(names []string) string {
	if len(names) < 2 {
		return strings.Join(names, "")
	}
	return strings.Join(names[:len(names)-1], ", ") + " and " + names[len(names)-1]
}

// resetS3 points t at the (fresh, empty) S3 target tg, empties its caches
// and creates the repository there (not measured): Tool.Reset for a
// repository that is not a directory.
func resetS3(ctx context.Context, t *Tool, tg backendtest.S3Target) error {
	t.Repo = tg.URL
	// The repository variable the tool already has (STASIS_REPO or
	// RESTIC_REPOSITORY) now names the target; the AWS_* ones are replaced.
	env := slices.Clone(tg.Env)
	for _, kv := range t.Env {
		k, _, _ := strings.Cut(kv, "=")
		switch {
		case k == "STASIS_REPO" || k == "RESTIC_REPOSITORY":
			env = append(env, k+"="+tg.URL)
		case !strings.HasPrefix(k, "AWS_"):
			env = append(env, kv)
		}
	}
	t.Env = env
	return t.initFresh(ctx)
}

// objectBytes is the sum of the sizes of the objects of bucket under prefix.
func objectBytes(ctx context.Context, c *minio.Client, bucket, prefix string) (int64, error) {
	var n int64
	for obj := range c.ListObjects(ctx, bucket, minio.ListObjectsOptions{Prefix: prefix, Recursive: true}) {
		if obj.Err != nil {
			return 0, fmt.Errorf("list %s/%s: %w", bucket, prefix, obj.Err)
		}
		n += obj.Size
	}
	return n, nil
}

func weedVersion(ctx context.Context, bin string) string {
	out, err := exec.CommandContext(ctx, bin, "version").Output()
	if err != nil {
		return "unknown (" + err.Error() + ")"
	}
	return strings.TrimSpace(strings.SplitN(string(out), "\n", 2)[0])
}
