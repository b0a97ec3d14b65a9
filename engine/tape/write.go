package tape

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"sort"
	"time"

	"github.com/zeebo/blake3"
)

// Member is one payload member to write.
type Member struct {
	// Name is the member's tar name; see ValidName.
	Name string
	// Size is the exact number of bytes Open yields.
	Size int64
	// Open returns the member's bytes. It may be called more than once (a
	// member interrupted by end of media is written again on the next
	// volume) and must yield the same Size bytes each time.
	Open func(ctx context.Context) (io.ReadCloser, error)
	// Time and Needs, when set, are recorded in the catalog as the member's
	// Note. Every name in Needs must be an earlier member of the same
	// WriteSet call or a member of an earlier catalog: the needed members
	// are then on the same or an earlier volume.
	Time  time.Time
	Needs []string
}

// note returns m's catalog note, or ok false when it has none.
func (m Member) note() (Note, bool) {
	if m.Time.IsZero() && len(m.Needs) == 0 {
		return Note{}, false
	}
	n := Note{Name: m.Name, Needs: m.Needs}
	if !m.Time.IsZero() {
		t := m.Time.UTC()
		n.Time = &t
	}
	return n, true
}

// WriteOptions configure WriteSet.
type WriteOptions struct {
	// BlockSize is the size of every write to the device; a multiple of
	// 512. Zero means DefaultBlockSize.
	BlockSize int
	// VolumeSize is the capacity of a volume in bytes; zero means a volume
	// is filled until the device reports end of media.
	VolumeSize int64
	// Label is free text stored in every volume label.
	Label string
	// RepositoryID names the repository the set belongs to.
	RepositoryID string
	// SetID names the set. Empty: taken from the earlier catalogs, or a
	// new random id for a new set.
	SetID string
	// Now is the clock; nil means time.Now.
	Now func() time.Time
	// Progress, if set, is called on WriteSet's goroutine after each member
	// has been passed to the device.
	Progress func(volume int, member string, size int64)
}

// WriteSet writes members, in order, to new volumes of a set on dev and
// returns the catalogs of the volumes it wrote.
//
// earlier holds the catalogs of the set's existing volumes (for an
// incremental append): the new volumes continue their sequence numbers,
// carry copies of them, and must belong to the same set. WriteSet always
// writes at least one volume. A member is never split across volumes; one
// that cannot fit on a volume of its own fails with ErrMemberTooLarge before
// anything is written (when VolumeSize is set) or when end of media is met on
// a volume holding nothing else.
//
// On error, the catalogs of the volumes completed so far are returned with
// it; the volume being written is incomplete.
func WriteSet(ctx context.Context, dev Device, opts WriteOptions, members []Member, earlier []Catalog) ([]Catalog, error) {
	if err := opts.setDefaults(); err != nil {
		return nil, err
	}
	if err := checkMembers(members, earlier); err != nil {
		return nil, err
	}
	prior, next, err := continueSet(&opts, earlier)
	if err != nil {
		return nil, err
	}
	now := opts.Now().UTC().Truncate(time.Second)
	if err := checkFit(&opts, members, next, now); err != nil {
		return nil, err
	}

	queue := members
	var out []Catalog
	for len(out) == 0 || len(queue) > 0 || out[len(out)-1].Truncated {
		seq := next
		next++
		cat, err := writeVolume(ctx, dev, &opts, seq, now, queue, prior)
		if err != nil {
			return out, err
		}
		queue = queue[len(cat.Members):]
		out = append(out, cat)
		prior = append(prior, cat)
	}
	return out, nil
}

// setDefaults fills in the zero options and checks the sizes.
func (opts *WriteOptions) setDefaults() error {
	if opts.BlockSize == 0 {
		opts.BlockSize = DefaultBlockSize
	}
	if opts.BlockSize < 0 || opts.BlockSize%TarBlock != 0 {
		return fmt.Errorf("block size %d is not a positive multiple of %d", opts.BlockSize, TarBlock)
	}
	if opts.VolumeSize < 0 {
		return fmt.Errorf("negative volume size %d", opts.VolumeSize)
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	return nil
}

// checkMembers checks the members to write: valid names, each given once,
// with a size and an opener, and needing only earlier members or members of
// the earlier catalogs.
func checkMembers(members []Member, earlier []Catalog) error {
	seen := make(map[string]bool, len(members))
	given := make(map[string]bool, len(members))
	for _, c := range earlier {
		for _, e := range c.Members {
			seen[e.Name] = true
		}
	}
	for _, m := range members {
		for _, d := range m.Needs {
			if !seen[d] {
				return fmt.Errorf("member %q needs %q, which is neither an earlier member nor on an earlier volume: %w", m.Name, d, ErrInvalidName)
			}
		}
		if err := ValidName(m.Name); err != nil {
			return err
		}
		if given[m.Name] {
			return fmt.Errorf("member %q given twice: %w", m.Name, ErrInvalidName)
		}
		seen[m.Name], given[m.Name] = true, true
		if m.Size < 0 || m.Open == nil {
			return fmt.Errorf("member %q: negative size or no Open function", m.Name)
		}
	}
	return nil
}

// continueSet returns the earlier catalogs ordered by volume and the number
// of the next volume, and sets opts.SetID: the earlier catalogs' set, or a
// new random id for a new set. The earlier catalogs must all belong to
// opts.SetID (when it is given) and hold each volume once.
func continueSet(opts *WriteOptions, earlier []Catalog) (prior []Catalog, next int, err error) {
	prior = append([]Catalog(nil), earlier...)
	sort.Slice(prior, func(i, j int) bool { return prior[i].Volume < prior[j].Volume })
	next = 1
	for i, c := range prior {
		if opts.SetID == "" {
			opts.SetID = c.SetID
		}
		if c.SetID != opts.SetID {
			return nil, 0, fmt.Errorf("earlier catalog of volume %d belongs to set %s, not %s: %w", c.Volume, c.SetID, opts.SetID, ErrCorrupt)
		}
		if i > 0 && prior[i-1].Volume == c.Volume {
			return nil, 0, fmt.Errorf("earlier catalogs hold volume %d twice: %w", c.Volume, ErrCorrupt)
		}
		next = c.Volume + 1
	}
	if opts.SetID == "" {
		var b [16]byte
		if _, err := rand.Read(b[:]); err != nil {
			return nil, 0, fmt.Errorf("new set id: %w", err)
		}
		opts.SetID = hex.EncodeToString(b[:])
	}
	return prior, next, nil
}

// checkFit fails with ErrMemberTooLarge, before anything is written, when
// opts.VolumeSize is set and a member does not fit on a volume of its own
// (volume next, written at now, with its label and catalog).
func checkFit(opts *WriteOptions, members []Member, next int, now time.Time) error {
	if opts.VolumeSize <= 0 {
		return nil
	}
	for _, m := range members {
		v := &volWriter{opts: opts, seq: next, now: now}
		need := v.metaFootprint(LabelName, len(encodeJSON(v.label()))) + v.payloadFootprint(m) + v.catalogFootprint(1, v.entrySize(m)) + 2*TarBlock
		if roundUp(need, int64(opts.BlockSize)) > opts.VolumeSize {
			return fmt.Errorf("member %s (%d bytes) needs a volume of at least %d bytes, volume size is %d: %w",
				m.Name, m.Size, roundUp(need, int64(opts.BlockSize)), opts.VolumeSize, ErrMemberTooLarge)
		}
	}
	return nil
}

// writeVolume writes volume seq on dev: copies of the prior catalogs and as
// many of queue as fit. The returned catalog lists the members written, the
// first len(cat.Members) of queue. A volume holding no member although
// queue is not empty (or was cut short) is ErrMemberTooLarge.
func writeVolume(ctx context.Context, dev Device, opts *WriteOptions, seq int, now time.Time, queue []Member, prior []Catalog) (Catalog, error) {
	w, err := dev.OpenWrite(ctx, seq)
	if err != nil {
		return Catalog{}, fmt.Errorf("volume %d: %w", seq, err)
	}
	v := &volWriter{opts: opts, seq: seq, now: now, bw: newBlockWriter(w, opts.BlockSize)}
	cat, err := v.write(ctx, queue, prior)
	cerr := w.Close()
	if err != nil {
		return Catalog{}, err
	}
	if cerr != nil && !v.hitEOM {
		return Catalog{}, fmt.Errorf("close volume %d: %w", seq, cerr)
	}
	if len(cat.Members) == 0 && (len(queue) > 0 || cat.Truncated) {
		what := "the volume label, catalog copies and catalog"
		if len(queue) > 0 {
			what = fmt.Sprintf("member %s (%d bytes)", queue[0].Name, queue[0].Size)
		}
		return Catalog{}, fmt.Errorf("volume %d: end of media before %s fit on a volume holding nothing else: the medium is too small: %w",
			seq, what, ErrMemberTooLarge)
	}
	return cat, nil
}

// span kinds
const (
	kindMeta = iota
	kindPayload
	kindTrailer
)

// span is one tar entry (or the end-of-archive trailer) of a volume.
type span struct {
	kind       int
	name       string
	start, end int64  // stream offsets of the header and after the padding
	hdr        []byte // header blocks
	data       []byte // kindMeta: the data; kindTrailer: the zero blocks
	size       int64
	done       bool // completely passed to the block writer
	entry      Entry
}

// rest returns the bytes of s from stream offset off on; for an interrupted
// payload member the data is replaced by zeros.
func (s *span) rest(off int64) io.Reader {
	var body io.Reader = io.LimitReader(zeros{}, roundUp(s.size, TarBlock))
	if s.kind != kindPayload {
		body = io.MultiReader(bytes.NewReader(s.data), io.LimitReader(zeros{}, roundUp(s.size, TarBlock)-s.size))
	}
	r := io.MultiReader(bytes.NewReader(s.hdr), body)
	io.CopyN(io.Discard, r, off-s.start) // cannot fail: in-memory readers
	return r
}

type zeros struct{}

func (zeros) Read(p []byte) (int, error) { clear(p); return len(p), nil }

func roundUp(n, m int64) int64 { return (n + m - 1) / m * m }

// volWriter writes one volume.
type volWriter struct {
	opts   *WriteOptions
	seq    int
	now    time.Time
	bw     *blockWriter
	spans  []*span
	hitEOM bool
	notes  map[string]Note
}

// withNotes sets cat.Notes from the notes of its members.
func (v *volWriter) withNotes(cat Catalog) Catalog {
	cat.Notes = nil
	for _, e := range cat.Members {
		if n, ok := v.notes[e.Name]; ok {
			cat.Notes = append(cat.Notes, n)
		}
	}
	return cat
}

func (v *volWriter) label() Label {
	return Label{Magic: LabelMagic, FormatVersion: FormatVersion, SetID: v.opts.SetID, Volume: v.seq,
		Label: v.opts.Label, RepositoryID: v.opts.RepositoryID, Time: v.now,
		BlockSize: v.opts.BlockSize, VolumeSize: v.opts.VolumeSize}
}

func (v *volWriter) header(name string, size int64, mode int64) []byte {
	var b bytes.Buffer
	tw := tar.NewWriter(&b)
	err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: name, Size: size, Mode: mode, ModTime: v.now})
	if err != nil {
		panic(fmt.Sprintf("tape: tar header for %q: %v", name, err)) // names and sizes are validated
	}
	return b.Bytes()
}

func (v *volWriter) metaFootprint(name string, size int) int64 {
	return int64(len(v.header(name, int64(size), 0o644))) + roundUp(int64(size), TarBlock)
}

func (v *volWriter) payloadFootprint(m Member) int64 {
	return int64(len(v.header(m.Name, m.Size, 0o600))) + roundUp(m.Size, TarBlock)
}

// entrySize is the JSON size of m's catalog entry.
func (v *volWriter) entrySize(m Member) int {
	b, _ := json.Marshal(Entry{Name: m.Name, Size: m.Size, BLAKE3: string(make([]byte, 64)), Volume: v.seq})
	n := len(b) - 4*64 + 64 // NULs are escaped as \u0000; a real checksum is 64 plain digits
	if note, ok := m.note(); ok {
		nb, _ := json.Marshal(note)
		n += len(nb) + 1 + len(`,"notes":[]`)
	}
	return n
}

// catalogFootprint bounds the tar footprint of a catalog with n members
// whose entries take entryBytes of JSON together.
func (v *volWriter) catalogFootprint(n, entryBytes int) int64 {
	base := len(encodeJSON(v.emptyCatalog()))
	size := base + entryBytes + n
	return v.metaFootprint(CatalogName(v.seq), size)
}

func (v *volWriter) emptyCatalog() Catalog {
	return Catalog{Magic: CatalogMagic, FormatVersion: FormatVersion, SetID: v.opts.SetID, Volume: v.seq,
		RepositoryID: v.opts.RepositoryID, Time: v.now, Members: []Entry{}}
}

func (v *volWriter) metaSpan(name string, data []byte) *span {
	return &span{kind: kindMeta, name: name, hdr: v.header(name, int64(len(data)), 0o644), data: data, size: int64(len(data))}
}

// put passes a whole metadata or trailer span to the block writer.
func (v *volWriter) put(s *span) error {
	s.start = v.bw.pos
	s.end = s.start + int64(len(s.hdr)) + roundUp(s.size, TarBlock)
	v.spans = append(v.spans, s)
	if _, err := io.Copy(v.bw, s.rest(s.start)); err != nil {
		return err
	}
	s.done = true
	return nil
}

// write writes the volume: label, copies of prior catalogs, as many of
// queue as fit, and the catalog. The returned catalog lists the members that
// reached the device; queue[len(cat.Members):] remain to be written.
func (v *volWriter) write(ctx context.Context, queue []Member, prior []Catalog) (Catalog, error) {
	cat := v.emptyCatalog()
	if err := v.put(v.metaSpan(LabelName, encodeJSON(v.label()))); err != nil {
		return cat, v.fail(err, "the volume label")
	}
	for _, c := range prior {
		if err := v.put(v.metaSpan(CatalogName(c.Volume), encodeJSON(c))); err != nil {
			return cat, v.fail(err, "the copy of the catalog of volume "+fmt.Sprint(c.Volume))
		}
	}
	entryBytes := 0
	for _, m := range queue {
		if v.opts.VolumeSize > 0 {
			es := v.entrySize(m)
			need := v.bw.pos + v.payloadFootprint(m) + v.catalogFootprint(len(cat.Members)+1, entryBytes+es) + 2*TarBlock
			if roundUp(need, int64(v.opts.BlockSize)) > v.opts.VolumeSize {
				if len(cat.Members) == 0 {
					return cat, fmt.Errorf("volume %d: member %s (%d bytes) does not fit after %d copies of earlier catalogs (volume size %d): %w",
						v.seq, m.Name, m.Size, len(prior), v.opts.VolumeSize, ErrMemberTooLarge)
				}
				break
			}
			entryBytes += es
		}
		e, err := v.payload(ctx, m)
		if err != nil {
			if v.bw.err != nil && isEndOfMedia(v.bw.err) {
				return v.endOfMedia(cat), nil
			}
			return cat, err
		}
		cat.Members = append(cat.Members, e)
		if n, ok := m.note(); ok {
			if v.notes == nil {
				v.notes = map[string]Note{}
			}
			v.notes[m.Name] = n
		}
		if v.opts.Progress != nil {
			v.opts.Progress(v.seq, m.Name, m.Size)
		}
	}
	cat.EndsSession = len(cat.Members) == len(queue)
	cat = v.withNotes(cat)
	if err := v.put(v.metaSpan(CatalogName(v.seq), encodeJSON(cat))); err != nil {
		return v.checkEOM(cat, err, "its catalog")
	}
	if err := v.put(&span{kind: kindTrailer, size: 2 * TarBlock, data: make([]byte, 2*TarBlock)}); err != nil {
		return v.checkEOM(cat, err, "the end-of-archive marker")
	}
	if err := v.bw.flush(); err != nil {
		return v.checkEOM(cat, err, "the last block")
	}
	return cat, nil
}

func (v *volWriter) fail(err error, what string) error {
	if isEndOfMedia(err) {
		return fmt.Errorf("volume %d: end of media while writing %s: the medium is too small for a volume: %v: %w", v.seq, what, err, ErrMemberTooLarge)
	}
	return fmt.Errorf("volume %d: write %s: %w", v.seq, what, err)
}

func (v *volWriter) checkEOM(cat Catalog, err error, what string) (Catalog, error) {
	if !isEndOfMedia(err) {
		return cat, fmt.Errorf("volume %d: write %s: %w", v.seq, what, err)
	}
	return v.endOfMedia(cat), nil
}

// payload writes member m, hashing it on the way.
func (v *volWriter) payload(ctx context.Context, m Member) (Entry, error) {
	rc, err := m.Open(ctx)
	if err != nil {
		return Entry{}, fmt.Errorf("volume %d: open member %s: %w", v.seq, m.Name, err)
	}
	defer rc.Close()
	s := &span{kind: kindPayload, name: m.Name, start: v.bw.pos, hdr: v.header(m.Name, m.Size, 0o600), size: m.Size}
	s.end = s.start + int64(len(s.hdr)) + roundUp(m.Size, TarBlock)
	v.spans = append(v.spans, s)
	if _, err := v.bw.Write(s.hdr); err != nil {
		return Entry{}, fmt.Errorf("volume %d: write member %s: %w", v.seq, m.Name, err)
	}
	h := blake3.New()
	total, rerr, werr := v.bw.readFrom(ctxReader{ctx, rc}, m.Size, func(p []byte) { h.Write(p) })
	if werr != nil {
		return Entry{}, fmt.Errorf("volume %d: write member %s: %w", v.seq, m.Name, werr)
	}
	if rerr != nil {
		return Entry{}, fmt.Errorf("volume %d: read member %s: %w", v.seq, m.Name, rerr)
	}
	var probe [1]byte
	if n, _ := io.ReadFull(rc, probe[:]); n > 0 && total == m.Size {
		return Entry{}, fmt.Errorf("volume %d: member %s: source is longer than its size %d", v.seq, m.Name, m.Size)
	}
	if total != m.Size {
		return Entry{}, fmt.Errorf("volume %d: member %s: source has %d bytes, its size is %d", v.seq, m.Name, total, m.Size)
	}
	if _, err := v.bw.Write(make([]byte, roundUp(m.Size, TarBlock)-m.Size)); err != nil {
		return Entry{}, fmt.Errorf("volume %d: write member %s: %w", v.seq, m.Name, err)
	}
	s.done = true
	s.entry = Entry{Name: m.Name, Size: m.Size, BLAKE3: hex.EncodeToString(h.Sum(nil)), Volume: v.seq}
	return s.entry, nil
}

// ctxReader fails reads once its context is done, so that a long member
// copy stops on cancellation.
type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (c ctxReader) Read(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.r.Read(p)
}

// endOfMedia handles the device's end-of-media report while the last span
// was being written. If the device takes the pending block again, the
// volume is closed cleanly: the interrupted span is completed (a payload
// member with zeros, and listed as dropped), followed by the catalog and the
// end-of-archive marker. The returned catalog lists exactly the payload
// members that reached the device; if it did not reach the device itself, it
// is marked Truncated.
func (v *volWriter) endOfMedia(cat Catalog) Catalog {
	v.hitEOM = true
	cur := v.spans[len(v.spans)-1]
	members := func() []Entry {
		es := []Entry{}
		for _, s := range v.spans {
			if s.kind == kindPayload && s.done && s.end <= v.bw.onDevice {
				es = append(es, s.entry)
			}
		}
		return es
	}
	closed := false
	if v.bw.resume() {
		_, err := io.Copy(v.bw, cur.rest(v.bw.pos))
		cur.done = cur.done || cur.kind != kindPayload
		if err == nil && cur.kind == kindPayload {
			cat.Members = members()
			cat = v.withNotes(cat)
			cat.Dropped = []Dropped{{Name: cur.name, Size: cur.size,
				Reason: fmt.Sprintf("end of media on volume %d; written whole on volume %d; the bytes here are zeros", v.seq, v.seq+1)}}
			cat.EndsSession = false
			err = v.put(v.metaSpan(CatalogName(v.seq), encodeJSON(cat)))
		}
		if err == nil && cur.kind != kindTrailer {
			err = v.put(&span{kind: kindTrailer, size: 2 * TarBlock, data: make([]byte, 2*TarBlock)})
		}
		if err == nil {
			err = v.bw.flush()
		}
		closed = err == nil
	}
	if closed {
		return cat
	}
	cat.Members = members()
	cat.Dropped = nil
	for _, s := range v.spans {
		if s.kind == kindPayload && (!s.done || s.end > v.bw.onDevice) {
			cat.Dropped = append(cat.Dropped, Dropped{Name: s.name, Size: s.size,
				Reason: fmt.Sprintf("end of media on volume %d; written whole on volume %d", v.seq, v.seq+1)})
		}
	}
	cat.EndsSession = false
	cat.Truncated = true
	return v.withNotes(cat)
}
