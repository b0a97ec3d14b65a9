package engine

import (
	"context"
	"os"
	"path/filepath"
	"strings"
)

// prefetch reads opts.Prefetch before the walk and then calls
// opts.AfterPrefetch (see BackupOptions); with an InWindow stdin stream it
// also reads the stream before AfterPrefetch. The walk then takes the
// prefetched files as they were read.
func (b *backup) prefetch(ctx context.Context, paths []string) error {
	if b.opts.Stdin != nil && b.opts.Stdin.InWindow {
		b.startStdin(ctx)
	}
	if len(b.opts.Prefetch) == 0 && b.opts.AfterPrefetch == nil {
		return nil
	}
	prefetched := map[string]*future{}
	b.walker.prefetched = prefetched
	var futs []*future
	for _, p := range b.opts.Prefetch {
		p = filepath.Clean(p)
		if prefetched[p] != nil {
			continue
		}
		if f := b.prefetchFile(ctx, paths, p); f != nil {
			prefetched[p] = f
			futs = append(futs, f)
		}
	}
	for _, f := range futs {
		select {
		case <-f.done:
		case <-ctx.Done():
			return context.Cause(ctx)
		}
	}
	if b.opts.Stdin != nil && b.opts.Stdin.InWindow {
		if err := b.waitStdin(ctx); err != nil {
			return err
		}
	}
	if err := ctx.Err(); err != nil {
		return context.Cause(ctx)
	}
	if b.opts.AfterPrefetch != nil {
		b.opts.AfterPrefetch()
	}
	return nil
}

// prefetchFile submits the file at p (clean, absolute) to the file saver
// and returns its future; nil when p is not under paths, excluded (or
// below an excluded directory) or not a regular file: the walk finds it,
// or not, as usual.
func (b *backup) prefetchFile(ctx context.Context, paths []string, p string) *future {
	root := containing(paths, p)
	if root == "" {
		return nil
	}
	for q := p; q != root; q = filepath.Dir(q) {
		if b.excluded(q) {
			return nil
		}
	}
	fi, err := os.Lstat(b.walker.sources.read(p))
	if err != nil || !fi.Mode().IsRegular() {
		return nil
	}
	return b.files.submit(ctx, p, nodeFromInfo(filepath.Base(p), fi, b.names), b.walker.parentNode(ctx, b.parentRoot, p))
}

// containing returns the path of paths that is p or holds p, or "".
func containing(paths []string, p string) string {
	for _, root := range paths {
		if p == root || root == "/" || strings.HasPrefix(p, root+"/") {
			return root
		}
	}
	return ""
}
