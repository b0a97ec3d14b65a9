package main

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"path/filepath"
)

// verifyRestore compares the restored tree (or only X500.db) with the source.
func verifyRestore(src, dst string, onlyDB bool) error {
	if onlyDB {
		return sameFile(filepath.Join(src, "X500.db"), filepath.Join(dst, "X500.db"))
	}
	n := 0
	err := filepath.WalkDir(src, func(p string, d os.DirEntry, err error) error {
		if err != nil || !d.Type().IsRegular() {
			return err
		}
		rel, _ := filepath.Rel(src, p)
		n++
		return sameFile(p, filepath.Join(dst, rel))
	})
	if err != nil {
		return err
	}
	m := 0
	filepath.WalkDir(dst, func(p string, d os.DirEntry, err error) error {
		if err == nil && d.Type().IsRegular() {
			m++
		}
		return nil
	})
	if m != n {
		return fmt.Errorf("restored %d files, the source has %d", m, n)
	}
	return nil
}

func sameFile(a, b string) error {
	fa, err := os.Open(a)
	if err != nil {
		return err
	}
	defer fa.Close()
	fb, err := os.Open(b)
	if err != nil {
		return fmt.Errorf("restored file missing: %w", err)
	}
	defer fb.Close()
	ba, bb := make([]byte, 1<<20), make([]byte, 1<<20)
	for off := int64(0); ; {
		na, ea := io.ReadFull(fa, ba)
		nb, _ := io.ReadFull(fb, bb)
		if na != nb || !bytes.Equal(ba[:na], bb[:nb]) {
			return fmt.Errorf("%s differs from %s near offset %d", b, a, off)
		}
		if ea != nil {
			return nil
		}
		off += int64(na)
	}
}
