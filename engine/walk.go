package engine

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/stasisbackup/stasis/repo"
	"github.com/stasisbackup/stasis/repo/blob"
	"github.com/stasisbackup/stasis/repo/tree"
)

// treeLoader is what the tree walker needs from the repository: the
// parent snapshot's trees.
type treeLoader interface {
	LoadTree(ctx context.Context, id blob.ID) (*tree.Tree, error)
}

// treeWalker walks the paths to back up from the root down, on one
// goroutine, and builds the snapshot's tree as futures: it lists each
// directory, stats its entries, skips the excluded, hands regular files to
// the file saver and each directory's children to the tree saver, and
// follows the parent snapshot's tree alongside, so that the file saver can
// compare a file with its previous version. Directories above the paths
// are recorded with only the entries that lead to them; so is the way to
// the stdin file, whose directories need not exist here.
//
// An entry that cannot be read is recorded as a problem; the walk fails
// only when ctx ends or a path given leads through something that is not
// a directory. The counts it adds to are dirs and others.
type treeWalker struct {
	repo     treeLoader
	sources  sources
	excluded func(p string) bool
	names    *idNames
	files    *fileSaver
	trees    *treeSaver
	counts   *backupCounts
	problems *problemList
	// prefetched: futures of Prefetch files by path, read before the walk;
	// the walk takes them as they are.
	prefetched map[string]*future
	stdin      *stdinStream // nil without a stdin file
}

// sources say where to read the paths of a backup (BackupOptions.SourceRoots
// and Substitutes).
type sources struct {
	roots       map[string]string
	substitutes map[string]string
}

// read returns where to read the absolute path p: below a SourceRoots key,
// the same place below its value; else p.
func (s sources) read(p string) string {
	best := ""
	for root := range s.roots {
		if len(root) > len(best) && (p == root || root == "/" || strings.HasPrefix(p, root+"/")) {
			best = root
		}
	}
	if best == "" {
		return p
	}
	return filepath.Join(s.roots[best], strings.TrimPrefix(p, best))
}

// file returns where to read the content of the regular file p, and
// whether that is a staged copy (Substitutes) rather than p or its
// SourceRoots stand-in.
func (s sources) file(p string) (read string, staged bool) {
	if sub, ok := s.substitutes[p]; ok {
		return sub, true
	}
	return s.read(p), false
}

// pathTrie holds the selected paths: a node with selected=true is backed up
// whole; other nodes are the directories leading to selected ones. A node
// with stdin set is the stdin file (stdin.go).
type pathTrie struct {
	selected bool
	children map[string]*pathTrie
	stdin    *future
}

// newPathTrie returns the trie of paths (absolute, clean).
func newPathTrie(paths []string) *pathTrie {
	root := &pathTrie{children: map[string]*pathTrie{}}
	for _, p := range paths {
		n := root
		if p != "/" {
			n = root.add(p)
		}
		n.selected = true
	}
	return root
}

// add returns the node of absolute path p, adding the nodes on the way.
func (t *pathTrie) add(p string) *pathTrie {
	n := t
	for _, c := range strings.Split(strings.TrimPrefix(p, "/"), "/") {
		if n.children[c] == nil {
			n.children[c] = &pathTrie{children: map[string]*pathTrie{}}
		}
		n = n.children[c]
	}
	return n
}

// walk walks paths (absolute, clean, none inside another) and the stdin
// file, and returns the future of the root directory. parentRoot is the
// parent snapshot's root tree, or nil.
func (w *treeWalker) walk(ctx context.Context, paths []string, parentRoot *tree.Tree) (*future, error) {
	root := newPathTrie(paths)
	if w.stdin != nil {
		root.add(w.stdin.path).stdin = w.stdin.fut
	}
	if root.selected {
		fi, err := os.Lstat(w.sources.read("/"))
		if err != nil {
			return nil, err
		}
		return w.walkDir(ctx, "/", nodeFromInfo("/", fi, w.names), parentRoot, nil)
	}
	return w.walkDir(ctx, "/", tree.Node{Kind: tree.Dir, Name: "/"}, parentRoot, root)
}

// walkDir scans a directory and returns a future for its node. Subdirectories
// are walked recursively in this goroutine; files go to the file saver; the
// directory's tree is saved by the tree saver once its children are known.
// only, when set, restricts the children to the trie's (a directory on the
// way to a selected path).
func (w *treeWalker) walkDir(ctx context.Context, dir string, node tree.Node, parent *tree.Tree, only *pathTrie) (*future, error) {
	var names []string
	var readErr error
	if only != nil {
		for name := range only.children {
			names = append(names, name)
		}
		sort.Strings(names)
	} else {
		names, readErr = readDirNames(w.sources.read(dir))
		w.counts.dirs.Add(1)
	}
	var kids []*future
	for _, name := range names {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		var pn *tree.Node
		if parent != nil {
			pn = parent.Find(name)
		}
		f, err := w.walkEntry(ctx, dir, name, pn, only)
		if err != nil {
			return nil, err
		}
		if f != nil {
			kids = append(kids, f)
		}
	}
	if readErr != nil {
		node.Flags, node.Error = tree.Unreadable, readErr.Error()
		w.problems.add(repo.Problem{Path: dir, Kind: repo.ProblemUnreadable, Error: readErr.Error()})
	}
	return w.trees.save(ctx, dir, node, kids), nil
}

// walkEntry returns the future of the entry name of directory dir (nil:
// not part of the snapshot); pn is its node in the parent snapshot, only
// the directory's trie as in walkDir.
func (w *treeWalker) walkEntry(ctx context.Context, dir, name string, pn *tree.Node, only *pathTrie) (*future, error) {
	p := filepath.Join(dir, name)
	if f := w.prefetched[p]; f != nil {
		return f, nil // read already, whatever it is now
	}
	var sub *pathTrie
	if only != nil {
		sub = only.children[name]
		if sub.stdin != nil {
			return sub.stdin, nil
		}
		if sub.selected {
			sub = nil
		}
	} else if w.excluded(p) {
		return nil, nil
	}
	fi, err := os.Lstat(w.sources.read(p))
	if err != nil {
		return w.missing(ctx, p, name, sub, only != nil, err)
	}
	n := nodeFromInfo(name, fi, w.names)
	switch {
	case n.Kind == tree.Dir:
		return w.walkDir(ctx, p, n, w.parentTree(ctx, pn), sub)
	case sub != nil:
		// A path leading to a selected path is not a directory any more.
		return nil, fmt.Errorf("%s is not a directory", p)
	case n.Kind == tree.File && only == nil:
		return w.files.submitListed(ctx, p, n, pn), nil
	case n.Kind == tree.File:
		return w.files.submit(ctx, p, n, pn), nil
	case n.Kind == tree.Symlink:
		target, err := os.Readlink(w.sources.read(p))
		if err != nil {
			n.Flags, n.Error = tree.Unreadable, err.Error()
			w.problems.add(repo.Problem{Path: p, Kind: repo.ProblemUnreadable, Error: err.Error()})
		}
		n.LinkTarget = target
	}
	w.counts.others.Add(1)
	return resolved(n), nil
}

// missing returns the future of entry p (base name name) that lstat
// failed on with err: nil when it was listed and removed since; a virtual
// directory on the way to the stdin file; else an unreadable file (a
// problem). inTrie says p is a path given or on the way to one (it was not
// listed but taken from the trie); sub is its trie node when it is on the
// way.
func (w *treeWalker) missing(ctx context.Context, p, name string, sub *pathTrie, inTrie bool, err error) (*future, error) {
	if errors.Is(err, fs.ErrNotExist) && !inTrie {
		return nil, nil // removed since readdir: it is not part of this snapshot
	}
	if errors.Is(err, fs.ErrNotExist) && sub != nil && w.stdin != nil && strings.HasPrefix(w.stdin.path, p+"/") {
		// Only on the way to the stdin file (existing paths cannot be below it).
		return w.walkDir(ctx, p, w.stdin.virtualDir(name), nil, sub)
	}
	w.problems.add(repo.Problem{Path: p, Kind: repo.ProblemUnreadable, Error: err.Error()})
	return resolved(tree.Node{Name: name, Kind: tree.File, Flags: tree.Unreadable, Error: err.Error()}), nil
}

// parentTree loads the tree of a directory's node in the parent snapshot;
// nil when there is none or it cannot be loaded (then everything below is
// read again; data is still deduplicated).
func (w *treeWalker) parentTree(ctx context.Context, pn *tree.Node) *tree.Tree {
	if pn == nil || pn.Kind != tree.Dir {
		return nil
	}
	t, err := w.repo.LoadTree(ctx, pn.Subtree)
	if err != nil {
		return nil
	}
	return t
}

// parentNode finds the node of absolute path p in the parent snapshot's
// root tree, or nil.
func (w *treeWalker) parentNode(ctx context.Context, root *tree.Tree, p string) *tree.Node {
	t := root
	parts := strings.Split(strings.TrimPrefix(p, "/"), "/")
	for i, c := range parts {
		if t == nil {
			return nil
		}
		n := t.Find(c)
		if n == nil || i == len(parts)-1 {
			return n
		}
		if n.Kind != tree.Dir {
			return nil
		}
		var err error
		if t, err = w.repo.LoadTree(ctx, n.Subtree); err != nil {
			return nil
		}
	}
	return nil
}

// readDirNames returns the names in directory dir, sorted.
func readDirNames(dir string) ([]string, error) {
	d, err := os.Open(dir)
	if err != nil {
		return nil, err
	}
	defer d.Close()
	names, err := d.Readdirnames(-1)
	sort.Strings(names)
	return names, err
}
