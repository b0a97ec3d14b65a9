package tapeio

// The tape catalogs recorded in a repository: Export records the catalog
// of every volume it writes, Import records those of the set it reads, and
// an incremental export compares with them. The repository stores them
// without interpreting them (repo.Repository.SaveObject).

import (
	"context"
	"encoding/json"
	"fmt"
	"path"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/stasisbackup/stasis/engine/tape"
	"github.com/stasisbackup/stasis/repo"
)

// CatalogDir is the repository directory that records tape catalogs:
// tape/<set id>/<volume, six digits>.json holds the catalog of one volume
// of a tape set, byte for byte as it is on the volume (see docs/tape.md).
// The files are derived but precious: they can be read back from the
// volumes, but only by reading the tapes, and they are what an incremental
// export compares with.
const CatalogDir = "tape"

// maxCatalogFile bounds what is read of one recorded catalog.
const maxCatalogFile = 256 << 20

var setIDPattern = regexp.MustCompile(`^[A-Za-z0-9_-]{1,64}$`)

// catalogFileName returns the name under which the catalog of volume of set
// setID is recorded.
func catalogFileName(setID string, volume int) (string, error) {
	if !setIDPattern.MatchString(setID) || volume < 1 {
		return "", fmt.Errorf("tape catalog of set %q volume %d: set ids are 1-64 letters, digits, - or _, volumes count from 1", setID, volume)
	}
	return path.Join(CatalogDir, setID, fmt.Sprintf("%06d.json", volume)), nil
}

// parseCatalogFileName returns the set and volume of recorded catalog file
// name, or ok false when name is not one.
func parseCatalogFileName(name string) (setID string, volume int, ok bool) {
	parts := strings.Split(name, "/")
	if len(parts) != 3 || parts[0] != CatalogDir || !setIDPattern.MatchString(parts[1]) {
		return "", 0, false
	}
	vol, err := strconv.Atoi(strings.TrimSuffix(parts[2], ".json"))
	if want, _ := catalogFileName(parts[1], vol); err != nil || want != name {
		return "", 0, false
	}
	return parts[1], vol, true
}

// encodeCatalog returns the bytes of a recorded catalog file of c.
func encodeCatalog(c tape.Catalog) ([]byte, error) {
	data, err := json.Marshal(c)
	if err != nil {
		return nil, err
	}
	return append(data, '\n'), nil
}

// recordCatalog records catalog c in the repository, replacing an earlier
// record of its volume, atomically.
func recordCatalog(ctx context.Context, r *repo.Repository, c tape.Catalog) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	data, err := encodeCatalog(c)
	if err != nil {
		return err
	}
	name, err := catalogFileName(c.SetID, c.Volume)
	if err != nil {
		return err
	}
	if err := r.SaveObject(ctx, name, data); err != nil {
		return fmt.Errorf("record tape catalog %s: %w", name, err)
	}
	return nil
}

// catalogFile is one recorded catalog file.
type catalogFile struct {
	SetID  string
	Volume int
	Data   []byte
}

// catalogFiles returns every recorded tape catalog file, ordered by set id
// and volume. Files under CatalogDir with other names are an error naming
// them.
func catalogFiles(ctx context.Context, r *repo.Repository) ([]catalogFile, error) {
	names, err := r.ObjectNames(ctx, CatalogDir)
	if err != nil {
		return nil, fmt.Errorf("list %s: %w", CatalogDir, err)
	}
	var out []catalogFile
	for _, name := range names {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		parts := strings.Split(name, "/")
		if len(parts) != 3 || !setIDPattern.MatchString(parts[1]) {
			return nil, fmt.Errorf("%s is not a tape catalog; move it out of the repository", name)
		}
		setID, vol, ok := parseCatalogFileName(name)
		if !ok {
			return nil, fmt.Errorf("%s is not a tape catalog file; move it out of the repository", name)
		}
		data, err := r.ReadObject(ctx, name, maxCatalogFile)
		if err != nil {
			return nil, fmt.Errorf("read tape catalog %s: %w", name, err)
		}
		out = append(out, catalogFile{SetID: setID, Volume: vol, Data: data})
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].SetID != out[j].SetID {
			return out[i].SetID < out[j].SetID
		}
		return out[i].Volume < out[j].Volume
	})
	return out, nil
}

// RecordedSets returns the catalogs recorded in the repository, by set id,
// ordered by volume. A catalog file that does not decode is an error naming
// it.
func RecordedSets(ctx context.Context, r *repo.Repository) (map[string][]tape.Catalog, error) {
	files, err := catalogFiles(ctx, r)
	if err != nil {
		return nil, err
	}
	sets := map[string][]tape.Catalog{}
	for _, f := range files {
		c, err := tape.DecodeCatalog(f.Data)
		if err != nil {
			return nil, fmt.Errorf("recorded tape catalog of set %s volume %d: %w", f.SetID, f.Volume, err)
		}
		if c.SetID != f.SetID || c.Volume != f.Volume {
			return nil, fmt.Errorf("recorded tape catalog %s/%06d.json holds volume %d of set %s: %w", f.SetID, f.Volume, c.Volume, c.SetID, tape.ErrCorrupt)
		}
		sets[c.SetID] = append(sets[c.SetID], c)
	}
	return sets, nil
}

// CurrentSet returns the id of the set written to last (by catalog time,
// then volume number), or "" when none is recorded.
func CurrentSet(sets map[string][]tape.Catalog) string {
	var best string
	var bestTime time.Time
	for id, cats := range sets {
		for _, c := range cats {
			if best == "" || c.Time.After(bestTime) || (c.Time.Equal(bestTime) && strings.Compare(id, best) > 0) {
				best, bestTime = id, c.Time
			}
		}
	}
	return best
}
