package tapeio

// Repository files written from the members of volumes, by Import and by
// Restore (into its spool).

import (
	"context"
	"fmt"
	"io"

	"github.com/stasisbackup/stasis/repo"
)

// repoFile reports whether name is a file that belongs in a repository
// directory, which Import and Restore write: one of the repository's own
// (repo.ValidFileName) or a recorded tape catalog.
func repoFile(name string) bool {
	_, _, isCatalog := parseCatalogFileName(name)
	return repo.ValidFileName(name) || isCatalog
}

// importFile stores repository file name in st, filled by write; a name
// that is not a repository file (repoFile) is an error.
func importFile(ctx context.Context, st repo.Storage, name string, write func(w io.Writer) error) error {
	if !repoFile(name) {
		return fmt.Errorf("import %s: not a repository file name", name)
	}
	return repo.ImportFile(ctx, st, name, write)
}

// importMember stores member name, read from r, in st as a repository file
// and returns its size.
func importMember(ctx context.Context, st repo.Storage, name string, r io.Reader) (int64, error) {
	var n int64
	err := importFile(ctx, st, name, func(w io.Writer) error {
		var err error
		n, err = io.Copy(w, r)
		return err
	})
	return n, err
}
