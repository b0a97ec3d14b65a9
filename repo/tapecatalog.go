package repo

import (
	"context"
	"fmt"
	"io"
	"os"
	"path"
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
	if err := backend.PutBytes(ctx, r.st, name, data); err != nil {
		return fmt.Errorf("record tape catalog %s: %w", name, err)
	}
	return nil
}

// TapeCatalogs returns every recorded tape catalog, ordered by set id and
// volume. Files under tape/ with other names are an error naming them.
func (r *Repository) TapeCatalogs(ctx context.Context) ([]TapeCatalog, error) {
	names, err := backend.ListNames(ctx, r.st, TapeDir+"/")
	if err != nil {
		return nil, fmt.Errorf("list %s: %w", TapeDir, err)
	}
	var out []TapeCatalog
	for _, name := range names {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		parts := strings.Split(name, "/")
		if len(parts) != 3 || !setIDPattern.MatchString(parts[1]) {
			return nil, fmt.Errorf("%s is not a tape catalog; move it out of the repository", name)
		}
		vol, err := strconv.Atoi(strings.TrimSuffix(parts[2], ".json"))
		if want, _ := tapeCatalogName(parts[1], vol); err != nil || want != name {
			return nil, fmt.Errorf("%s is not a tape catalog file; move it out of the repository", name)
		}
		data, err := backend.ReadAll(ctx, r.st, name, maxTapeCatalog)
		if err != nil {
			return nil, fmt.Errorf("read tape catalog %s: %w", name, err)
		}
		out = append(out, TapeCatalog{SetID: parts[1], Volume: vol, Data: data})
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].SetID != out[j].SetID {
			return out[i].SetID < out[j].SetID
		}
		return out[i].Volume < out[j].Volume
	})
	return out, nil
}

// maxTapeCatalog bounds what is read of one tape catalog.
const maxTapeCatalog = 256 << 20

// ValidFileName reports whether name (slash-separated, relative) is a file
// that belongs in a repository directory and is copied to tape: config,
// keys/<id>, dicts/<id>, packs/xx/<id>, index/<id>, snapshots/<id> or a
// tape catalog. Scratch files (tmp/, locks/, damaged/) are not.
func ValidFileName(name string) bool {
	parts := strings.Split(name, "/")
	hexID := func(s string) bool { _, err := blob.ParseID(s); return err == nil && len(s) == 2*blob.IDSize }
	switch {
	case name == "config":
		return true
	case len(parts) == 2 && parts[0] == keysDir:
		return parts[1] != "" && setIDPattern.MatchString(parts[1])
	case len(parts) == 2 && (parts[0] == "snapshots" || parts[0] == dictDir || parts[0] == IndexDir):
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

// ImportFile stores repository object name (see ValidFileName) in st,
// filled by write (through a local temp file); the repository need not be
// open (or complete) yet. `stasis tape import` builds a repository this way,
// then opens it and rebuilds its index (RebuildIndex).
func ImportFile(ctx context.Context, st backend.Storage, name string, write func(w io.Writer) error) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if !ValidFileName(name) {
		return fmt.Errorf("import %s: not a repository file name", name)
	}
	var f *os.File
	var err error
	if fa, ok := st.(backend.FileAdopter); ok {
		f, err = fa.CreateTemp()
	} else {
		f, err = os.CreateTemp("", "stasis-import-*")
	}
	if err != nil {
		return fmt.Errorf("import %s: %w", name, err)
	}
	if err := write(f); err != nil {
		f.Close()
		os.Remove(f.Name())
		return fmt.Errorf("import %s: %w", name, err)
	}
	if fa, ok := st.(backend.FileAdopter); ok {
		return fa.Adopt(ctx, f, name)
	}
	defer func() { f.Close(); os.Remove(f.Name()) }()
	fi, err := f.Stat()
	if err != nil {
		return fmt.Errorf("import %s: %w", name, err)
	}
	return st.Put(ctx, name, f, fi.Size())
}
