package repo

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"path"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/stasisbackup/stasis/repo/backend"
	"github.com/stasisbackup/stasis/repo/blob"
	"github.com/zeebo/blake3"
)

const snapshotFormat = "stasis-snapshot"

// Snapshot is a snapshot file: a small JSON document naming the root tree.
type Snapshot struct {
	Format   string          `json:"format"` // always "stasis-snapshot"
	Version  int             `json:"version"`
	Time     time.Time       `json:"time"` // when the backup started
	Tree     blob.ID         `json:"tree"`
	Paths    []string        `json:"paths"` // absolute, cleaned, sorted
	Host     string          `json:"host"`
	Username string          `json:"username,omitempty"`
	Tags     []string        `json:"tags"`
	Parent   *blob.ID        `json:"parent,omitempty"`
	DBGlobs  []string        `json:"db_globs,omitempty"`
	Summary  Summary         `json:"summary"`
	Quiesce  json.RawMessage `json:"quiesce,omitempty"` // what quiescing did, when it ran
	Stdin    *StdinSource    `json:"stdin,omitempty"`   // where the file read from a stream came from
	// Original is set in a snapshot made by `stasis copy`: the id of the
	// snapshot it was copied from (in the source repository), or that
	// snapshot's own Original when it was a copy itself. A copy skips a
	// source snapshot whose original the destination already has.
	Original *blob.ID `json:"original,omitempty"`

	// Dicts are the compression dictionaries (ids of dicts/<id>) the
	// repository had when the snapshot was saved: the snapshot's data blobs
	// need at most these to decode. Set by SaveSnapshot. check reports a
	// snapshot that needs one that is missing or damaged (dictdamage.go).
	Dicts []string `json:"dicts,omitempty"`

	ID blob.ID `json:"-"` // BLAKE3 of the file; set by Save and Load
}

// StdinSource describes the file of a snapshot that was read from a
// stream (`backup --stdin` or `--stdin-from-command`) rather than from the
// filesystem. A snapshot exists only when the stream ended cleanly: for a
// command, exit status 0 in time.
type StdinSource struct {
	Path       string    `json:"path"`                        // the file in the snapshot (absolute)
	Command    []string  `json:"command,omitempty"`           // the program and its arguments; absent for --stdin
	ExitStatus int       `json:"exit_status"`                 // of the command (always 0 in a snapshot)
	Started    time.Time `json:"started"`                     // when the command started (also the file's mtime)
	Duration   float64   `json:"duration_seconds"`            // until its output ended and it exited
	Bytes      int64     `json:"bytes"`                       // the file's size
	InWindow   bool      `json:"in_quiesce_window,omitempty"` // it ran while the service was quiesced
}

// Summary says what a backup did. Problems lists every file that was not
// captured cleanly; a snapshot with problems is incomplete.
type Summary struct {
	FilesNew       int64     `json:"files_new"`
	FilesChanged   int64     `json:"files_changed"`
	FilesUnchanged int64     `json:"files_unchanged"`
	Dirs           int64     `json:"dirs"`
	Others         int64     `json:"others"` // symlinks, devices, fifos, sockets
	TotalBytes     int64     `json:"total_bytes"`
	BytesRead      int64     `json:"bytes_read"`
	BlobsAdded     int64     `json:"blobs_added"`
	BytesAdded     int64     `json:"bytes_added"`  // new data before compression
	StoredAdded    int64     `json:"stored_added"` // bytes added to packs (after dedup and compression)
	Duration       float64   `json:"duration_seconds"`
	Problems       []Problem `json:"problems"`
}

// Problem is a file that was not captured (or restored) cleanly, or, with
// Kind ProblemWarning, something about the run worth saying.
type Problem struct {
	Path  string      `json:"path"`
	Kind  ProblemKind `json:"kind"`
	Error string      `json:"error"`
}

// ProblemKind says what went wrong; it is stored in snapshot files as is.
type ProblemKind string

// Problem kinds. Every kind but ProblemWarning makes a snapshot incomplete
// (exit 3 from backup). ProblemUnrestored is only in restore results, never
// in a snapshot.
const (
	// ProblemChanged: the file kept changing while it was read, also on
	// every retry; its content in the snapshot may be inconsistent.
	ProblemChanged ProblemKind = "changed"
	// ProblemUnreadable: the file, directory or symlink could not be read
	// at backup time; no content was stored for it.
	ProblemUnreadable ProblemKind = "unreadable"
	// ProblemDamaged: `repair snapshots` found the file's data lost from the
	// repository and marked it (tree.Unreadable) in the repaired snapshot.
	ProblemDamaged ProblemKind = "damaged"
	// ProblemWarning: not about a file's content (e.g. the parent snapshot
	// could not be read, so every file was read again); the snapshot is
	// complete.
	ProblemWarning ProblemKind = "warning"
	// ProblemUnrestored: restore could not write the entry, or wrote it
	// but it was inconsistent at backup time (RestoreResult.Problems).
	ProblemUnrestored ProblemKind = "unrestored"
)

// EncodeSnapshot returns the file bytes of sn.
func EncodeSnapshot(sn *Snapshot) ([]byte, error) {
	sn.Format, sn.Version = snapshotFormat, FormatVersion
	if sn.Tags == nil {
		sn.Tags = []string{}
	}
	if sn.Summary.Problems == nil {
		sn.Summary.Problems = []Problem{}
	}
	b, err := json.MarshalIndent(sn, "", "  ")
	if err != nil {
		return nil, err
	}
	return append(b, '\n'), nil
}

// DecodeSnapshot parses the bytes of a snapshot file of an unencrypted
// repository and checks that they hash to id. For any repository use
// Repository.DecodeSnapshotFile.
func DecodeSnapshot(id blob.ID, data []byte) (*Snapshot, error) {
	if got := blob.ID(blake3.Sum256(data)); got != id {
		return nil, fmt.Errorf("snapshot %s: %w: content hashes to %s", id.Short(), ErrCorruptSnapshot, got.Short())
	}
	return parseSnapshot(id, data)
}

// DecodeSnapshotFile checks that the bytes of snapshot file id hash to id,
// opens them in an encrypted repository, and parses them. Damage gives an
// error matching ErrCorruptSnapshot.
func (r *Repository) DecodeSnapshotFile(id blob.ID, data []byte) (*Snapshot, error) {
	if r.mk == nil {
		return DecodeSnapshot(id, data)
	}
	if got := blob.ID(blake3.Sum256(data)); got != id {
		return nil, fmt.Errorf("snapshot %s: %w: content hashes to %s", id.Short(), ErrCorruptSnapshot, got.Short())
	}
	plain, err := r.mk.Open(nil, data, adSnapshot)
	if err != nil {
		return nil, fmt.Errorf("snapshot %s: %w: %v", id.Short(), ErrCorruptSnapshot, err)
	}
	return parseSnapshot(id, plain)
}

// maxSnapshotSize bounds the snapshot JSON parseSnapshot accepts.
const maxSnapshotSize = 256 << 20

func parseSnapshot(id blob.ID, data []byte) (*Snapshot, error) {
	if len(data) > maxSnapshotSize {
		return nil, fmt.Errorf("snapshot %s: %w: %d bytes", id.Short(), ErrCorruptSnapshot, len(data))
	}
	var sn Snapshot
	if err := json.Unmarshal(data, &sn); err != nil {
		return nil, fmt.Errorf("snapshot %s: %w: %v", id.Short(), ErrCorruptSnapshot, err)
	}
	if sn.Format != snapshotFormat {
		return nil, fmt.Errorf("snapshot %s: %w: format %q", id.Short(), ErrCorruptSnapshot, sn.Format)
	}
	if sn.Version != FormatVersion {
		return nil, fmt.Errorf("snapshot %s: %w %d", id.Short(), ErrVersion, sn.Version)
	}
	if sn.Tree.IsZero() {
		return nil, fmt.Errorf("snapshot %s: %w: no tree", id.Short(), ErrCorruptSnapshot)
	}
	sn.ID = id
	return &sn, nil
}

// SnapshotName returns the repository-relative file name of a snapshot.
func SnapshotName(id blob.ID) string { return path.Join("snapshots", id.String()) }

// SaveSnapshot writes the snapshot file atomically and indexes it. Call
// Flush first: the snapshot must only name blobs that are durable.
func (r *Repository) SaveSnapshot(ctx context.Context, sn *Snapshot) (blob.ID, error) {
	sn.Dicts = r.snapshotDicts(ctx)
	data, err := EncodeSnapshot(sn)
	if err != nil {
		return blob.ID{}, err
	}
	if r.mk != nil {
		data = r.mk.Seal(nil, data, adSnapshot)
	}
	id := blob.ID(blake3.Sum256(data))
	if err := r.writeIndex(ctx, true); err != nil {
		return blob.ID{}, fmt.Errorf("save snapshot: %w", err)
	}
	if err := backend.PutBytes(ctx, r.st, SnapshotName(id), data); err != nil {
		return blob.ID{}, fmt.Errorf("save snapshot: %w", err)
	}
	r.cacheSnapshot(id, data)
	sn.ID = id
	return id, nil
}

// PutSnapshotFile stores the bytes of a snapshot file as they are (repair
// and tape import use it); they must hash to id.
func (r *Repository) PutSnapshotFile(ctx context.Context, id blob.ID, data []byte) error {
	if blob.ID(blake3.Sum256(data)) != id {
		return fmt.Errorf("snapshot %s: %w: content does not match its name", id.Short(), ErrCorruptSnapshot)
	}
	if err := backend.PutBytes(ctx, r.st, SnapshotName(id), data); err != nil {
		return fmt.Errorf("write snapshot %s: %w", id.Short(), err)
	}
	r.cacheSnapshot(id, data)
	return nil
}

// SnapshotIDs lists the snapshot files of the repository. Names under
// snapshots/ that are not snapshot ids are returned in other (check
// reports them).
func (r *Repository) SnapshotIDs(ctx context.Context) (ids []blob.ID, other []string, err error) {
	names, err := backend.ListNames(ctx, r.st, "snapshots/")
	if err != nil {
		return nil, nil, fmt.Errorf("list snapshots of %s: %w", r.loc, err)
	}
	for _, n := range names {
		id, err := blob.ParseID(strings.TrimPrefix(n, "snapshots/"))
		if err != nil || SnapshotName(id) != n {
			other = append(other, n)
			continue
		}
		ids = append(ids, id)
	}
	return ids, other, nil
}

// ReadSnapshotFile returns the bytes of snapshot file id, from the cache
// when it holds them (the name is their hash, so a cached copy is checked
// by the decoder like a fresh one).
func (r *Repository) ReadSnapshotFile(ctx context.Context, id blob.ID) ([]byte, error) {
	if data := r.cachedSnapshot(id); data != nil && blob.ID(blake3.Sum256(data)) == id {
		return data, nil
	}
	data, err := backend.ReadAll(ctx, r.st, SnapshotName(id), maxSnapshotFile)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("snapshot %s: %w", id.Short(), ErrSnapshotNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("read snapshot %s: %w", id.Short(), err)
	}
	if blob.ID(blake3.Sum256(data)) == id {
		r.cacheSnapshot(id, data)
	}
	return data, nil
}

// maxSnapshotFile bounds what is read of a snapshot file.
const maxSnapshotFile = maxSnapshotSize + 1<<10

// LoadSnapshot reads a snapshot file.
func (r *Repository) LoadSnapshot(ctx context.Context, id blob.ID) (*Snapshot, error) {
	data, err := r.ReadSnapshotFile(ctx, id)
	if err != nil {
		return nil, err
	}
	return r.DecodeSnapshotFile(id, data)
}

// Snapshots returns every snapshot, oldest first. Files that cannot be read
// or decoded are returned as errors in bad (never skipped).
func (r *Repository) Snapshots(ctx context.Context) (list []*Snapshot, bad []error, err error) {
	ids, _, err := r.SnapshotIDs(ctx)
	if err != nil {
		return nil, nil, err
	}
	// Every snapshot listed now had its index files stored before it: take
	// in those written since the view was built, so its blobs are found.
	if err := r.catchUp(ctx); err != nil {
		return nil, nil, err
	}
	current := make(map[blob.ID]bool, len(ids))
	for _, id := range ids {
		current[id] = true
		sn, err := r.LoadSnapshot(ctx, id)
		if errors.Is(err, ErrSnapshotNotFound) {
			continue // removed since it was listed (forget)
		}
		if err != nil {
			if ctx.Err() != nil {
				return nil, nil, ctx.Err()
			}
			bad = append(bad, err)
			continue
		}
		list = append(list, sn)
	}
	r.uncacheSnapshots(current)
	sort.SliceStable(list, func(i, j int) bool {
		if !list[i].Time.Equal(list[j].Time) {
			return list[i].Time.Before(list[j].Time)
		}
		return list[i].ID.String() < list[j].ID.String()
	})
	return list, bad, nil
}

// FindSnapshot resolves "latest" (the newest snapshot that passes f), a
// full id, or a unique id prefix (ids are explicit: f does not apply).
func (r *Repository) FindSnapshot(ctx context.Context, ref string, f SnapshotFilter) (*Snapshot, error) {
	list, _, err := r.Snapshots(ctx)
	if err != nil {
		return nil, err
	}
	if ref == "latest" {
		sel := FilterSnapshots(list, f)
		if len(sel) == 0 {
			if !f.Empty() {
				return nil, fmt.Errorf("latest: %w: no snapshot of %s", ErrSnapshotNotFound, f)
			}
			return nil, fmt.Errorf("latest: %w: the repository has no snapshots", ErrSnapshotNotFound)
		}
		return sel[len(sel)-1], nil
	}
	var found *Snapshot
	for _, sn := range list {
		if strings.HasPrefix(sn.ID.String(), strings.ToLower(ref)) {
			if found != nil {
				return nil, fmt.Errorf("snapshot %q is ambiguous (give more digits)", ref)
			}
			found = sn
		}
	}
	if found == nil || ref == "" {
		return nil, fmt.Errorf("snapshot %q: %w (list them with `stasis snapshots`)", ref, ErrSnapshotNotFound)
	}
	return found, nil
}

// SnapshotFilter selects snapshots by host, tag and path, as restic's
// --host, --tag and --path do: a snapshot matches when it has one of Hosts
// (any host when empty), every tag of one of Tags (each entry a
// comma-separated set; any tags when empty), and exactly the paths Paths
// (any when empty).
type SnapshotFilter struct {
	Hosts []string
	Tags  []string
	Paths []string
}

// Empty reports whether the filter selects every snapshot.
func (f SnapshotFilter) Empty() bool {
	return len(f.Hosts) == 0 && len(f.Tags) == 0 && len(f.Paths) == 0
}

// Match reports whether sn passes the filter.
func (f SnapshotFilter) Match(sn *Snapshot) bool {
	if len(f.Hosts) > 0 && !slices.Contains(f.Hosts, sn.Host) {
		return false
	}
	if len(f.Tags) > 0 {
		ok := false
		for _, set := range f.Tags {
			all := true
			for _, t := range strings.Split(set, ",") {
				if t != "" && !slices.Contains(sn.Tags, t) {
					all = false
					break
				}
			}
			if all {
				ok = true
				break
			}
		}
		if !ok {
			return false
		}
	}
	if len(f.Paths) > 0 {
		want := slices.Clone(f.Paths)
		for i, p := range want {
			want[i] = path.Clean(p)
		}
		slices.Sort(want)
		if !slices.Equal(want, sn.Paths) {
			return false
		}
	}
	return true
}

// String describes the filter for messages ("" when empty).
func (f SnapshotFilter) String() string {
	var parts []string
	if len(f.Hosts) > 0 {
		parts = append(parts, "host "+strings.Join(f.Hosts, " or "))
	}
	if len(f.Tags) > 0 {
		parts = append(parts, "tags "+strings.Join(f.Tags, " or "))
	}
	if len(f.Paths) > 0 {
		parts = append(parts, "paths "+strings.Join(f.Paths, " "))
	}
	return strings.Join(parts, ", ")
}

// FilterSnapshots returns the snapshots of list that pass f, in order.
func FilterSnapshots(list []*Snapshot, f SnapshotFilter) []*Snapshot {
	if f.Empty() {
		return list
	}
	var out []*Snapshot
	for _, sn := range list {
		if f.Match(sn) {
			out = append(out, sn)
		}
	}
	return out
}
