package engine

import "sync/atomic"

// Counts are the running counts of a long operation (restore, check
// --read-data, prune, tape export and import, copy) for a progress display.
//
// The operation adds to them as it goes, per item (a file, a pack, a tape
// member) or per chunk, each time with a few atomic adds and never under a
// lock, and sets the totals as soon as they are cheap to know. Any goroutine
// may read them at any time with Load, typically a ticker that prints
// progress; the four numbers are not read as one atomic unit, which a
// display does not need. A nil *Counts counts nothing, so operations call
// its methods unconditionally.
//
// What a "file" is depends on the operation and is said in its options: a
// restored file, a pack, a tape member. Operations with several steps
// (prune) name each with StartPhase, which also resets the counts of the
// step before.
type Counts struct {
	files, bytes           atomic.Int64
	totalFiles, totalBytes atomic.Int64
	phase                  atomic.Pointer[string]
}

// CountsValue is what Load returns.
type CountsValue struct {
	Files, Bytes           int64  // done so far
	TotalFiles, TotalBytes int64  // zero while not known
	Phase                  string // "" for an operation of one step
}

// Add counts files and bytes as done.
func (c *Counts) Add(files, bytes int64) {
	if c == nil {
		return
	}
	if files != 0 {
		c.files.Add(files)
	}
	if bytes != 0 {
		c.bytes.Add(bytes)
	}
}

// SetTotals records how many files and bytes the operation (or its
// current phase) will do; zero means not known.
func (c *Counts) SetTotals(files, bytes int64) {
	if c == nil {
		return
	}
	c.totalFiles.Store(files)
	c.totalBytes.Store(bytes)
}

// Set replaces the counts of done files and bytes (for an operation that
// keeps its own running totals, such as Backup's Progress callback).
func (c *Counts) Set(files, bytes int64) {
	if c == nil {
		return
	}
	c.files.Store(files)
	c.bytes.Store(bytes)
}

// StartPhase starts step name of the operation with the totals given
// (zero: not known) and nothing done yet.
func (c *Counts) StartPhase(name string, totalFiles, totalBytes int64) {
	if c == nil {
		return
	}
	c.phase.Store(&name)
	c.files.Store(0)
	c.bytes.Store(0)
	c.SetTotals(totalFiles, totalBytes)
}

// Load returns the current counts; a nil *Counts returns zeros.
func (c *Counts) Load() CountsValue {
	if c == nil {
		return CountsValue{}
	}
	v := CountsValue{Files: c.files.Load(), Bytes: c.bytes.Load(), TotalFiles: c.totalFiles.Load(), TotalBytes: c.totalBytes.Load()}
	if p := c.phase.Load(); p != nil {
		v.Phase = *p
	}
	return v
}
