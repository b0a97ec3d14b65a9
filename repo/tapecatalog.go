package repo

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"

	"github.com/stasisbackup/stasis/repo/backend"
	"github.com/stasisbackup/stasis/repo/blob"
)

// TapeDir is the repository directory that records tape catalogs:
// tape/<set id>/<volume, six digits>.json holds the catalog of one volume
// of a tape set, byte for byte as it is on the volume (see docs/tape.md).
// The files are derived but precious: they can be read back from the
// volumes, but only by reading the tapes, and they are what an incremental
// export compares with. The repository does not interpret them.
const TapeDir = "tape"

// TapeCatalog is one recorded catalog file.
type TapeCatalog struct {
	SetID  string
	Volume int
	Data   []byte
}

var setIDPattern = regexp.MustCompile(`^[A-Za-z0-9_-]{1,64}$`)

func tapeCatalogName(setID string, volume int) (string, error) {
	if !setIDPattern.MatchString(setID) || volume < 1 {
		return "", fmt.Errorf("tape catalog of set %q volume %d: set ids are 1-64 letters, digits, - or _, volumes count from 1", setID, volume)
	}
	return path.Join(TapeDir, setID, fmt.Sprintf("%06d.json", volume)), nil
}

// SaveTapeCatalog records the catalog of volume of set setID, replacing
// an earlier record of that volume, atomically (temp file, fsync, rename).
func (r *Repository) SaveTapeCatalog(ctx context.Context, setID string, volume int, data []byte) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	name, err := tapeCatalogName(setID, volume)
	if err != nil {
		return err
	}
	if err := r.fs.MkdirAll(path.Dir(name)); err != nil {
		return fmt.Errorf("record tape catalog: create %s: %w", path.Dir(name), err)
	}
	if err := backend.WriteFile(r.fs, name, func(w io.Writer) error { _, err := w.Write(data); return err }); err != nil {
		return fmt.Errorf("record tape catalog %s: %w", name, err)
	}
	return nil
}

// TapeCatalogs returns every recorded tape catalog, ordered by set id and
// volume. Files under tape/ with other names are an error naming them.
func (r *Repository) TapeCatalogs(ctx context.Context) ([]TapeCatalog, error) {
	sets, err := r.fs.ReadDir(TapeDir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("list %s: %w", TapeDir, err)
	}
	var out []TapeCatalog
	for _, s := range sets {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		dir := path.Join(TapeDir, s.Name())
		if !s.IsDir() || !setIDPattern.MatchString(s.Name()) {
			return nil, fmt.Errorf("%s is not a tape set directory; move it out of the repository", dir)
		}
		files, err := r.fs.ReadDir(dir)
		if err != nil {
			return nil, fmt.Errorf("list %s: %w", dir, err)
		}
		for _, f := range files {
			name := path.Join(dir, f.Name())
			vol, err := strconv.Atoi(strings.TrimSuffix(f.Name(), ".json"))
			if want, _ := tapeCatalogName(s.Name(), vol); err != nil || want != name {
				return nil, fmt.Errorf("%s is not a tape catalog file; move it out of the repository", name)
			}
			data, err := backend.ReadFile(r.fs, name)
			if err != nil {
				return nil, fmt.Errorf("read tape catalog %s: %w", name, err)
			}
			out = append(out, TapeCatalog{SetID: s.Name(), Volume: vol, Data: data})
		}
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].SetID != out[j].SetID {
			return out[i].SetID < out[j].SetID
		}
		return out[i].Volume < out[j].Volume
	})
	return out, nil
}

// ValidFileName reports whether name (slash-separated, relative) is a file
// that belongs in a repository directory and is copied to tape: config,
// keys/<id>, dicts/<id>, packs/xx/<id>, snapshots/<id> or a tape catalog. Derived and
// scratch files (index.db, tmp/, locks/, damaged/) are not.
func ValidFileName(name string) bool {
	parts := strings.Split(name, "/")
	hexID := func(s string) bool { _, err := blob.ParseID(s); return err == nil && len(s) == 2*blob.IDSize }
	switch {
	case name == "config":
		return true
	case len(parts) == 2 && parts[0] == keysDir:
		return parts[1] != "" && setIDPattern.MatchString(parts[1])
	case len(parts) == 2 && (parts[0] == "snapshots" || parts[0] == dictDir):
		return hexID(parts[1])
	case len(parts) == 3 && parts[0] == "packs":
		return hexID(parts[2]) && parts[1] == parts[2][:2]
	case len(parts) == 3 && parts[0] == TapeDir:
		vol, err := strconv.Atoi(strings.TrimSuffix(parts[2], ".json"))
		want, werr := tapeCatalogName(parts[1], vol)
		return err == nil && werr == nil && want == name
	}
	return false
}

// ImportFile writes repository file name (see ValidFileName) into the
// repository directory dir, atomically, filled by write; the repository
// need not be open (or complete) yet. `stasis tape import` builds a
// repository this way and then rebuilds its index (ResetIndex, Open,
// RebuildIndex). The directories of a repository are created as needed.
func ImportFile(ctx context.Context, dir, name string, write func(w io.Writer) error) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if !ValidFileName(name) {
		return fmt.Errorf("import %s: not a repository file name", name)
	}
	b := backend.OS{Dir: dir}
	if err := CreateLayout(dir); err != nil {
		return err
	}
	if err := b.MkdirAll(path.Dir(name)); err != nil {
		return fmt.Errorf("import %s: %w", name, err)
	}
	return backend.WriteFile(b, name, write)
}

// CreateLayout creates the directories of a repository in dir (which may
// already hold some): snapshots/, tmp/, locks/ and packs/00 … packs/ff.
// It writes no config.
func CreateLayout(dir string) error {
	if _, err := os.Stat(filepath.Join(dir, "packs", "ff")); err == nil {
		return nil
	}
	b := backend.OS{Dir: dir}
	dirs := []string{"snapshots", "tmp", "locks"}
	for i := 0; i < 256; i++ {
		dirs = append(dirs, fmt.Sprintf("packs/%02x", i))
	}
	for _, d := range dirs {
		if err := b.MkdirAll(d); err != nil {
			return fmt.Errorf("create repository directory %s in %s: %w", d, dir, err)
		}
	}
	return nil
}
