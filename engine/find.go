package engine

import (
	"context"
	"fmt"
	"path"
	"strings"
	"unicode"
	"unicode/utf8"

	"github.com/stasisbackup/stasis/repo"
	"github.com/stasisbackup/stasis/repo/blob"
	"github.com/stasisbackup/stasis/repo/tree"
)

// FindOptions say what find looks for.
//
// A pattern is a path.Match glob (*, ?, [...], \ escapes). A pattern without
// '/' is matched against each entry's base name. A pattern with '/' is
// matched against the whole path when it starts with '/'
// ("/srv/*/X500.db"), and otherwise against as many trailing components of
// the path as it has ("ldif/*.ldif" matches /srv/zoomserv/ldif/people.ldif).
// An entry is a hit when any pattern matches.
type FindOptions struct {
	Patterns   []string
	IgnoreCase bool // Unicode simple case folding of names and patterns
}

// FindHit is one matching entry.
type FindHit struct {
	Path  string // absolute snapshot path
	Kind  tree.Kind
	Size  uint64
	MTime int64 // nanoseconds since the Unix epoch
	Mode  uint32
}

// FindResult is what find found in one snapshot: hits in depth-first name
// order, and directories it could not search (with why), which make the
// result incomplete.
type FindResult struct {
	Snapshot *repo.Snapshot
	Hits     []FindHit
	Problems []repo.Problem
}

// ValidatePatterns returns an error naming the first malformed pattern.
func ValidatePatterns(patterns []string) error {
	if len(patterns) == 0 {
		return fmt.Errorf("no pattern given")
	}
	for _, p := range patterns {
		if p == "" {
			return fmt.Errorf("empty pattern")
		}
		if _, err := path.Match(p, ""); err != nil {
			return fmt.Errorf("pattern %q: %w", p, err)
		}
	}
	return nil
}

// Find searches the snapshots one after the other and calls fn with each
// one's result as soon as it is complete (fn is called on Find's goroutine,
// in the order of snaps; an error from fn stops Find and is returned).
//
// Trees are loaded one at a time, never a whole snapshot at once. A
// directory tree already searched (by tree id; with '/' patterns, by tree id
// at the same path) is not loaded or searched again: its hits are reused, so
// the unchanged parts shared by a series of daily snapshots are read once.
// The memory this takes is one small record per distinct directory plus the
// hits. A tree that cannot be loaded is a problem of the snapshots that hold
// it (FindResult.Problems), not an error of Find.
func Find(ctx context.Context, r TreeLoader, snaps []*repo.Snapshot, opts FindOptions, fn func(*FindResult) error) error {
	if err := ValidatePatterns(opts.Patterns); err != nil {
		return err
	}
	f := &finder{r: r, memo: map[memoKey]*dirHits{}, ignoreCase: opts.IgnoreCase}
	for _, p := range opts.Patterns {
		if opts.IgnoreCase {
			p = foldCase(p)
		}
		switch {
		case strings.HasPrefix(p, "/"):
			f.whole = append(f.whole, path.Clean(p))
		case strings.Contains(p, "/"):
			p = strings.TrimSuffix(p, "/")
			f.tail = append(f.tail, tailPattern{p, strings.Count(p, "/") + 1})
		default:
			f.base = append(f.base, p)
		}
	}
	f.pathDependent = len(f.whole)+len(f.tail) > 0
	for _, sn := range snaps {
		dh, err := f.search(ctx, "/", sn.Tree)
		if err != nil {
			return err
		}
		res := &FindResult{Snapshot: sn}
		dh.collect("/", res)
		if err := fn(res); err != nil {
			return err
		}
	}
	return nil
}

type tailPattern struct {
	pattern    string
	components int
}

type memoKey struct {
	id  blob.ID
	dir string // "" unless a pattern depends on the path
}

// dirHits is what one directory tree holds that matches: the matching
// entries and the subdirectories that hold matches, in name order. Entries
// of neither kind are not kept.
type dirHits struct {
	items []hitItem
	err   error // the tree could not be loaded
}

type hitItem struct {
	name string
	hit  *FindHit // Path is unset: collect puts the directory in front
	sub  *dirHits // nil unless it has hits or problems
}

func (d *dirHits) empty() bool { return d.err == nil && len(d.items) == 0 }

func (d *dirHits) collect(dir string, res *FindResult) {
	if d.err != nil {
		res.Problems = append(res.Problems, repo.Problem{Path: dir, Kind: repo.ProblemDamaged, Error: "directory not searched: " + d.err.Error()})
		return
	}
	for _, it := range d.items {
		p := path.Join(dir, it.name)
		if it.hit != nil {
			h := *it.hit
			h.Path = p
			res.Hits = append(res.Hits, h)
		}
		if it.sub != nil {
			it.sub.collect(p, res)
		}
	}
}

type finder struct {
	r             TreeLoader
	memo          map[memoKey]*dirHits
	base, whole   []string
	tail          []tailPattern
	ignoreCase    bool
	pathDependent bool
}

// noHits is shared by every directory without hits.
var noHits = &dirHits{}

func (f *finder) search(ctx context.Context, dir string, id blob.ID) (*dirHits, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	key := memoKey{id: id}
	if f.pathDependent {
		key.dir = dir
	}
	if dh, ok := f.memo[key]; ok {
		return dh, nil
	}
	dh := &dirHits{}
	t, err := f.r.LoadTree(ctx, id)
	if err != nil {
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		dh.err = err
		f.memo[key] = dh
		return dh, nil
	}
	for i := range t.Nodes {
		n := &t.Nodes[i]
		p := path.Join(dir, n.Name)
		var it hitItem
		if f.match(p, n.Name) {
			it.hit = &FindHit{Kind: n.Kind, Size: n.Size, MTime: n.MTime, Mode: n.Mode}
		}
		if n.Kind == tree.Dir {
			sub, err := f.search(ctx, p, n.Subtree)
			if err != nil {
				return nil, err
			}
			if !sub.empty() {
				it.sub = sub
			}
		}
		if it.hit != nil || it.sub != nil {
			it.name = n.Name
			dh.items = append(dh.items, it)
		}
	}
	if dh.empty() {
		dh = noHits
	}
	f.memo[key] = dh
	return dh, nil
}

func (f *finder) match(p, name string) bool {
	if f.ignoreCase {
		p, name = foldCase(p), foldCase(name)
	}
	for _, pat := range f.base {
		if ok, _ := path.Match(pat, name); ok {
			return true
		}
	}
	for _, pat := range f.whole {
		if ok, _ := path.Match(pat, p); ok {
			return true
		}
	}
	for _, pat := range f.tail {
		if ok, _ := path.Match(pat.pattern, lastComponents(p, pat.components)); ok {
			return true
		}
	}
	return false
}

// lastComponents returns the last n components of the absolute path p (all
// of them, without the leading '/', when p has fewer).
func lastComponents(p string, n int) string {
	i := len(p)
	for ; n > 0 && i > 0; n-- {
		i = strings.LastIndexByte(p[:i], '/')
		if i < 0 {
			return p
		}
	}
	return p[i+1:]
}

// foldCase lower-cases the valid UTF-8 of s and keeps every other byte as
// it is (strings.ToLower would turn invalid bytes into U+FFFD).
func foldCase(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); {
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			b.WriteByte(s[i])
		} else {
			b.WriteRune(unicode.ToLower(r))
		}
		i += size
	}
	return b.String()
}
