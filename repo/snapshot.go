package repo

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"path"
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

	ID blob.ID `json:"-"` // BLAKE3 of the file; set by Save and Load
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

// Problem is a file that was not captured cleanly.
type Problem struct {
	Path  string `json:"path"`
	Kind  string `json:"kind"` // "changed" or "unreadable"
	Error string `json:"error"`
}

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
	data, err := EncodeSnapshot(sn)
	if err != nil {
		return blob.ID{}, err
	}
	if r.mk != nil {
		data = r.mk.Seal(nil, data, adSnapshot)
	}
	id := blob.ID(blake3.Sum256(data))
	if err := backend.WriteFile(r.fs, SnapshotName(id), func(w io.Writer) error { _, err := w.Write(data); return err }); err != nil {
		return blob.ID{}, fmt.Errorf("save snapshot: %w", err)
	}
	if err := r.idx.PutSnapshot(id, data); err != nil {
		return blob.ID{}, fmt.Errorf("index snapshot %s: %w", id.Short(), err)
	}
	sn.ID = id
	return id, nil
}

// syncSnapshots makes the index's snapshot records match snapshots/: a
// crash between writing a snapshot file and indexing it, or a deleted file,
// is repaired here.
func (r *Repository) syncSnapshots() error {
	ents, err := r.fs.ReadDir("snapshots")
	if err != nil {
		return fmt.Errorf("list snapshots of %s: %w", r.dir, err)
	}
	onDisk := map[blob.ID]bool{}
	for _, e := range ents {
		id, err := blob.ParseID(e.Name())
		if err != nil {
			continue // not ours; check reports it
		}
		onDisk[id] = true
	}
	var stale []blob.ID
	err = r.idx.EachSnapshot(func(id blob.ID, _ []byte) error {
		if !onDisk[id] {
			stale = append(stale, id)
		}
		delete(onDisk, id)
		return nil
	})
	if err != nil {
		return err
	}
	for _, id := range stale {
		if err := r.idx.DeleteSnapshot(id); err != nil {
			return err
		}
	}
	for id := range onDisk {
		data, err := backend.ReadFile(r.fs, SnapshotName(id))
		if err != nil {
			return fmt.Errorf("read snapshot %s: %w", id, err)
		}
		if err := r.idx.PutSnapshot(id, data); err != nil {
			return err
		}
	}
	return nil
}

// LoadSnapshot reads a snapshot file.
func (r *Repository) LoadSnapshot(ctx context.Context, id blob.ID) (*Snapshot, error) {
	data, err := backend.ReadFile(r.fs, SnapshotName(id))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("snapshot %s: %w", id.Short(), ErrSnapshotNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("read snapshot %s: %w", id.Short(), err)
	}
	return r.DecodeSnapshotFile(id, data)
}

// Snapshots returns every snapshot, oldest first, read from the index.
// Records that fail to decode are returned as errors in bad (never skipped).
func (r *Repository) Snapshots(ctx context.Context) (list []*Snapshot, bad []error, err error) {
	err = r.idx.EachSnapshot(func(id blob.ID, data []byte) error {
		sn, err := r.DecodeSnapshotFile(id, data)
		if err != nil {
			bad = append(bad, err)
			return nil
		}
		list = append(list, sn)
		return nil
	})
	sort.SliceStable(list, func(i, j int) bool {
		if !list[i].Time.Equal(list[j].Time) {
			return list[i].Time.Before(list[j].Time)
		}
		return list[i].ID.String() < list[j].ID.String()
	})
	return list, bad, err
}

// FindSnapshot resolves "latest", a full id, or a unique id prefix.
func (r *Repository) FindSnapshot(ctx context.Context, ref string) (*Snapshot, error) {
	list, _, err := r.Snapshots(ctx)
	if err != nil {
		return nil, err
	}
	if ref == "latest" {
		if len(list) == 0 {
			return nil, fmt.Errorf("latest: %w: the repository has no snapshots", ErrSnapshotNotFound)
		}
		return list[len(list)-1], nil
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
