// Package exclude decides which paths a backup leaves out: the one matcher
// of --exclude globs, shared by the backup's tree walk (engine) and by the
// choice of the files a quiesce holds still (engine/quiesce), so that the
// two never disagree about a file.
package exclude

import (
	"errors"
	"fmt"
	"path/filepath"
)

// ErrBadGlob is matched by Check's error.
var ErrBadGlob = errors.New("bad glob")

// Match reports whether the absolute path p is excluded by one of globs
// (filepath.Match patterns): a glob matches p's base name or the whole path.
// A directory that matches is left out with everything below it; Match
// itself looks only at p.
func Match(globs []string, p string) bool {
	base := filepath.Base(p)
	for _, g := range globs {
		if ok, _ := filepath.Match(g, base); ok {
			return true
		}
		if ok, _ := filepath.Match(g, p); ok {
			return true
		}
	}
	return false
}

// Check returns an error naming the first malformed glob of globs.
func Check(globs []string) error {
	for _, g := range globs {
		if _, err := filepath.Match(g, ""); err != nil {
			return fmt.Errorf("%w %q: %v", ErrBadGlob, g, err)
		}
	}
	return nil
}
