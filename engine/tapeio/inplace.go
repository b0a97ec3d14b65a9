package tapeio

// Restore from volume files without a spool: the needed members are read
// where they are in the volume files.

import (
	"context"
	"fmt"
	"io"
	"os"
	"strings"
	"sync"

	"github.com/stasisbackup/stasis/repo/backend"
)

// inPlace is the storage tape restore reads from when every needed volume
// is a regular file: each needed member, once checked against its catalog
// in the one pass over its volume, is read at its offset in the volume file
// (a tar member's bytes are contiguous); what the restore writes itself
// (the index cache) goes to a scratch directory. Members are read-only.
type inPlace struct {
	scratch *backend.Local

	mu      sync.Mutex
	files   map[string]*os.File // open volume files, by path
	members map[string]memberAt
}

// memberAt is where a member's bytes are.
type memberAt struct {
	f         *os.File
	off, size int64
}

var (
	_ backend.Storage        = (*inPlace)(nil)
	_ backend.ObjectReaderAt = (*inPlace)(nil)
)

func newInPlace(scratchDir string) *inPlace {
	return &inPlace{scratch: backend.NewScratch(scratchDir), files: map[string]*os.File{}, members: map[string]memberAt{}}
}

// add records member name of size bytes at offset off of volume file path.
func (s *inPlace) add(path, name string, off, size int64) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	f := s.files[path]
	if f == nil {
		var err error
		if f, err = os.Open(path); err != nil {
			return fmt.Errorf("open volume %s: %w", path, err)
		}
		s.files[path] = f
	}
	s.members[name] = memberAt{f: f, off: off, size: size}
	return nil
}

// drop forgets member name (found damaged after it was added).
func (s *inPlace) drop(name string) {
	s.mu.Lock()
	delete(s.members, name)
	s.mu.Unlock()
}

func (s *inPlace) member(name string) (memberAt, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	m, ok := s.members[name]
	return m, ok
}

// Close closes the volume files.
func (s *inPlace) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	var first error
	for p, f := range s.files {
		if err := f.Close(); err != nil && first == nil {
			first = fmt.Errorf("close volume %s: %w", p, err)
		}
	}
	s.files = map[string]*os.File{}
	return first
}

// Location implements backend.Storage.
func (s *inPlace) Location() string { return s.scratch.Location() }

// Put implements backend.Storage: new objects go to the scratch directory.
func (s *inPlace) Put(ctx context.Context, name string, r io.ReaderAt, size int64) error {
	if _, ok := s.member(name); ok {
		return fmt.Errorf("put %s: a member of the volumes, read-only", name)
	}
	return s.scratch.Put(ctx, name, r, size)
}

// Get implements backend.Storage.
func (s *inPlace) Get(ctx context.Context, name string, off, length int64) (io.ReadCloser, error) {
	m, ok := s.member(name)
	if !ok {
		return s.scratch.Get(ctx, name, off, length)
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if off < 0 {
		return nil, fmt.Errorf("get %s: negative offset %d", name, off)
	}
	off = min(off, m.size)
	n := m.size - off
	if length >= 0 {
		n = min(n, length)
	}
	return io.NopCloser(io.NewSectionReader(m.f, m.off+off, n)), nil
}

// ReadObjectAt implements backend.ObjectReaderAt: packs are read with
// pread from the volume file.
func (s *inPlace) ReadObjectAt(ctx context.Context, name string, p []byte, off int64) (int, error) {
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	if off < 0 {
		return 0, fmt.Errorf("read %s: negative offset %d", name, off)
	}
	m, ok := s.member(name)
	if !ok {
		f, err := s.scratch.OpenFile(ctx, name)
		if err != nil {
			return 0, err
		}
		defer f.Close()
		return f.ReadAt(p, off)
	}
	if off >= m.size {
		return 0, io.EOF
	}
	q := p[:min(int64(len(p)), m.size-off)]
	n, err := m.f.ReadAt(q, m.off+off)
	if err == nil && n < len(p) {
		err = io.EOF
	}
	return n, err
}

// Stat implements backend.Storage.
func (s *inPlace) Stat(ctx context.Context, name string) (backend.ObjectInfo, error) {
	if m, ok := s.member(name); ok {
		return backend.ObjectInfo{Name: name, Size: m.size}, nil
	}
	return s.scratch.Stat(ctx, name)
}

// List implements backend.Storage.
func (s *inPlace) List(ctx context.Context, prefix string, fn func(backend.ObjectInfo) error) error {
	s.mu.Lock()
	var infos []backend.ObjectInfo
	for name, m := range s.members {
		if strings.HasPrefix(name, prefix) {
			infos = append(infos, backend.ObjectInfo{Name: name, Size: m.size})
		}
	}
	s.mu.Unlock()
	for _, oi := range infos {
		if err := fn(oi); err != nil {
			return err
		}
	}
	return s.scratch.List(ctx, prefix, func(oi backend.ObjectInfo) error {
		if _, ok := s.member(oi.Name); ok {
			return nil
		}
		return fn(oi)
	})
}

// Delete implements backend.Storage.
func (s *inPlace) Delete(ctx context.Context, name string) error {
	if _, ok := s.member(name); ok {
		return fmt.Errorf("delete %s: a member of the volumes, read-only", name)
	}
	return s.scratch.Delete(ctx, name)
}
