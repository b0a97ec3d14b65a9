package tape

import (
	"archive/tar"
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"sort"
	"strings"

	"github.com/zeebo/blake3"
)

// ReadOptions configure reading a volume.
type ReadOptions struct {
	// BlockSize is the size of every read from the device; zero means
	// DefaultBlockSize. For a tape drive in fixed-block mode it must be a
	// multiple of the block size the volume was written with.
	BlockSize int
	// Catalog, if set, is a reference catalog of this volume (from the
	// repository, or a copy carried by a later volume). Members are checked
	// against it as well as against the volume's own catalog, and against it
	// alone when the volume's own catalog is missing (a truncated volume).
	// With it, ReadVolume also checks each member as soon as it ends.
	Catalog *Catalog
}

// Volume is what was found on a volume.
type Volume struct {
	Label Label
	// Catalog is the volume's own catalog; nil if the volume ends before
	// it (see Truncated) or it could not be decoded.
	Catalog *Catalog
	// Earlier holds the copies of earlier volumes' catalogs, in order.
	Earlier []Catalog
	// Seen lists the payload members as read: name, size and BLAKE3 of the
	// bytes actually on the volume. A member cut short by truncation is not
	// listed.
	Seen []Entry
	// Truncated is true when the tar stream ends before its end-of-archive
	// marker; TruncatedIn names the member cut short ("" if between members)
	// and TruncatedBy says what ended it.
	Truncated   bool
	TruncatedIn string
	TruncatedBy string
}

// Problem is one bad member (or, with an empty Name, a volume-wide problem).
type Problem struct {
	Name    string
	Problem string
}

func (p Problem) String() string {
	if p.Name == "" {
		return p.Problem
	}
	return p.Name + ": " + p.Problem
}

// Report is the outcome of VerifyVolume or ReadVolume.
type Report struct {
	Volume *Volume
	// Bad lists every member that is missing, differs from a catalog, is
	// not in a catalog, or could not be decoded, in volume order.
	Bad []Problem
	// Good lists the members whose bytes match a catalog, in volume order:
	// the ones an importer may keep. A member the catalog lists as dropped
	// is in neither list.
	Good []Entry
	// EndOfMedia is true when the volume is truncated exactly as its
	// catalog (a copy given in ReadOptions.Catalog) records: it met end of
	// media while being written, and every member of its catalog is intact.
	// Such a truncation is not an error.
	EndOfMedia bool
}

// OK reports whether the volume is complete (or ends as its catalog says)
// and every member matches.
func (r *Report) OK() bool { return len(r.Bad) == 0 && (!r.Volume.Truncated || r.EndOfMedia) }

// Err returns nil if r.OK(), else an error wrapping ErrVerify (and
// ErrTruncated for a truncated volume) that names every bad member.
func (r *Report) Err() error {
	if r.OK() {
		return nil
	}
	v := r.Volume
	var parts []string
	for _, p := range r.Bad {
		parts = append(parts, p.String())
	}
	msg := fmt.Sprintf("volume %d of set %s: %d bad members", v.Label.Volume, v.Label.SetID, len(r.Bad))
	if len(parts) > 0 {
		msg += ": " + strings.Join(parts, "; ")
	}
	if v.Truncated {
		where := "between members"
		if v.TruncatedIn != "" {
			where = "in member " + v.TruncatedIn
		}
		return fmt.Errorf("%s; the volume is truncated %s (%s): %w: %w", msg, where, v.TruncatedBy, ErrVerify, ErrTruncated)
	}
	return fmt.Errorf("%s: %w", msg, ErrVerify)
}

// MemberFunc receives one payload member of a volume; e.BLAKE3 is set only
// when ReadOptions.Catalog lists the member, and members it lists as
// dropped are not passed at all. The reader yields exactly
// e.Size bytes; when a reference checksum is known it returns an error
// matching ErrChecksum instead of io.EOF if the bytes differ. Without one the
// bytes are unverified until ReadVolume returns: a member named in
// Report.Good must then be discarded. What the function leaves unread is
// read and checked anyway. An error other than ErrChecksum or
// io.ErrUnexpectedEOF stops ReadVolume.
type MemberFunc func(e Entry, r io.Reader) error

// Offsetter is implemented by the reader a MemberFunc receives: Offset is
// where the member's bytes start in the volume (a volume file holds them
// there, contiguous, as in any tar archive).
type Offsetter interface {
	Offset() int64
}

// Offset implements Offsetter.
func (h *hashReader) Offset() int64 { return h.off }

// ReadLabel reads the label, the first member of a volume.
func ReadLabel(ctx context.Context, r io.Reader, opts ReadOptions) (Label, error) {
	_, l, err := openVolume(ctx, r, opts)
	return l, err
}

// ListVolume reads a whole volume and returns its label, catalogs and
// members, from the volume alone. A truncated volume is not an error: see
// Volume.Truncated.
func ListVolume(ctx context.Context, r io.Reader, opts ReadOptions) (*Volume, error) {
	v, _, err := scan(ctx, r, opts, nil)
	return v, err
}

// VerifyVolume reads a whole volume and checks every member's size and
// BLAKE3 against the volume's own catalog (and opts.Catalog if set). The
// report names every bad member; the error is report.Err() or a failure to
// read the volume at all (then the report is nil).
func VerifyVolume(ctx context.Context, r io.Reader, opts ReadOptions) (*Report, error) {
	return ReadVolume(ctx, r, opts, nil)
}

// ReadVolume streams a volume in one pass, calling fn (if not nil) for each
// payload member in volume order on the calling goroutine, then verifies
// like VerifyVolume.
func ReadVolume(ctx context.Context, r io.Reader, opts ReadOptions, fn MemberFunc) (*Report, error) {
	v, problems, err := scan(ctx, r, opts, fn)
	if err != nil {
		return nil, err
	}
	rep := &Report{Volume: v, Bad: append(problems, check(v, opts.Catalog)...)}
	rep.Good = good(v, opts.Catalog, rep.Bad)
	rep.EndOfMedia = v.Truncated && v.Catalog == nil && opts.Catalog != nil && opts.Catalog.Truncated && len(rep.Bad) == 0
	return rep, rep.Err()
}

func openVolume(ctx context.Context, r io.Reader, opts ReadOptions) (*tar.Reader, Label, error) {
	tr, _, l, err := openVolumeAt(ctx, r, opts)
	return tr, l, err
}

// openVolumeAt is openVolume that also returns the block reader below the
// tar reader, whose offset is that of the next byte of the volume.
func openVolumeAt(ctx context.Context, r io.Reader, opts ReadOptions) (*tar.Reader, *blockReader, Label, error) {
	if err := ctx.Err(); err != nil {
		return nil, nil, Label{}, err
	}
	bs := opts.BlockSize
	if bs == 0 {
		bs = DefaultBlockSize
	}
	if bs < 0 {
		return nil, nil, Label{}, fmt.Errorf("negative block size %d", bs)
	}
	br := newBlockReader(r, bs)
	tr := tar.NewReader(br)
	hdr, err := tr.Next()
	if err == io.EOF {
		return nil, nil, Label{}, fmt.Errorf("empty volume (no tar members): %w", ErrNotVolume)
	}
	if err != nil {
		return nil, nil, Label{}, fmt.Errorf("read first tar header: %v: %w", err, ErrNotVolume)
	}
	if hdr.Name != LabelName {
		return nil, nil, Label{}, fmt.Errorf("first member is %q, not %s: %w", hdr.Name, LabelName, ErrNotVolume)
	}
	data, err := readAll(tr, maxLabelSize)
	if err != nil {
		return nil, nil, Label{}, fmt.Errorf("read %s: %v: %w", LabelName, err, ErrNotVolume)
	}
	l, err := DecodeLabel(data)
	return tr, br, l, err
}

func readAll(r io.Reader, limit int64) ([]byte, error) {
	data, err := io.ReadAll(io.LimitReader(r, limit+1))
	if err == nil && int64(len(data)) > limit {
		err = fmt.Errorf("larger than %d bytes", limit)
	}
	return data, err
}

// scan reads a volume; problems are undecodable metadata and odd members.
func scan(ctx context.Context, r io.Reader, opts ReadOptions, fn MemberFunc) (*Volume, []Problem, error) {
	tr, br, l, err := openVolumeAt(ctx, r, opts)
	if err != nil {
		return nil, nil, err
	}
	sc := &scanner{tr: tr, br: br, l: l, v: &Volume{Label: l}, fn: fn, ref: map[string]Entry{}, dropped: map[string]bool{}, buf: make([]byte, 64<<10)}
	if c := opts.Catalog; c != nil {
		for _, d := range c.Dropped {
			sc.dropped[d.Name] = true
		}
		if c.SetID != l.SetID || c.Volume != l.Volume {
			return nil, nil, fmt.Errorf("reference catalog is of volume %d of set %s, the volume is %d of set %s",
				c.Volume, c.SetID, l.Volume, l.SetID)
		}
		for _, e := range c.Members {
			sc.ref[e.Name] = e
		}
	}
	for {
		if err := ctx.Err(); err != nil {
			return nil, nil, err
		}
		hdr, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			if !errors.Is(err, io.ErrUnexpectedEOF) && !errors.Is(err, tar.ErrHeader) {
				return nil, nil, fmt.Errorf("volume %d: read tar header: %w", l.Volume, err)
			}
			sc.truncate("", err)
			break
		}
		var end bool
		if seq, ok := catalogSeq(hdr.Name); ok {
			end = sc.catalog(hdr.Name, seq)
		} else if end, err = sc.payload(hdr); err != nil {
			return nil, nil, err
		}
		if end {
			break
		}
	}
	return sc.v, sc.problems, nil
}

// scanner is the state of scan, reading the members of one volume.
type scanner struct {
	tr       *tar.Reader
	br       *blockReader // below tr: its offset is where a member's data starts after tr.Next
	l        Label
	v        *Volume
	fn       MemberFunc
	ref      map[string]Entry // the members of the reference catalog
	dropped  map[string]bool  // the members it lists as dropped
	problems []Problem
	buf      []byte
}

// truncate records that the volume ends early, in member in, by err.
func (sc *scanner) truncate(in string, err error) {
	sc.v.Truncated, sc.v.TruncatedIn, sc.v.TruncatedBy = true, in, err.Error()
}

// catalog reads catalog member name, of volume seq: the volume's own or a
// copy of an earlier one. It reports end when the volume is truncated in it.
func (sc *scanner) catalog(name string, seq int) (end bool) {
	l := sc.l
	data, err := readAll(sc.tr, maxCatalogSize)
	if errors.Is(err, io.ErrUnexpectedEOF) {
		sc.truncate(name, err)
		return true
	}
	var c Catalog
	if err == nil {
		c, err = DecodeCatalog(data)
	}
	switch {
	case err != nil:
		sc.problems = append(sc.problems, Problem{name, fmt.Sprintf("cannot decode: %v", err)})
	case c.SetID != l.SetID || c.Volume != seq || seq > l.Volume:
		sc.problems = append(sc.problems, Problem{name, fmt.Sprintf("catalog of volume %d of set %s on volume %d of set %s",
			c.Volume, c.SetID, l.Volume, l.SetID)})
	case seq == l.Volume:
		sc.v.Catalog = &c
	default:
		sc.v.Earlier = append(sc.v.Earlier, c)
	}
	return false
}

// payload passes payload member hdr to fn (unless the reference catalog
// lists it as dropped), reads what fn left and records what was seen. It
// reports end when the volume is truncated in it; the error is one of fn's
// that stops the scan, or a failure to read.
func (sc *scanner) payload(hdr *tar.Header) (end bool, err error) {
	name, vol := hdr.Name, sc.l.Volume
	if err := ValidName(name); err != nil || hdr.Typeflag != tar.TypeReg {
		sc.problems = append(sc.problems, Problem{name, fmt.Sprintf("not a payload member (type %q, %v); skipped", hdr.Typeflag, err)})
		return false, nil
	}
	hr := &hashReader{r: sc.tr, h: blake3.New(), size: hdr.Size, name: name, off: sc.br.off}
	e := Entry{Name: name, Size: hdr.Size, Volume: vol}
	if re, ok := sc.ref[name]; ok {
		hr.want = &re
		e.BLAKE3 = re.BLAKE3
	}
	if sc.fn != nil && !sc.dropped[name] {
		if err := sc.fn(e, hr); err != nil && !errors.Is(err, ErrChecksum) && !errors.Is(err, io.ErrUnexpectedEOF) {
			return false, fmt.Errorf("volume %d: member %s: %w", vol, name, err)
		}
	}
	for hr.err == nil {
		hr.Read(sc.buf)
	}
	if errors.Is(hr.err, io.ErrUnexpectedEOF) {
		sc.truncate(name, hr.err)
		return true, nil
	}
	if hr.err != io.EOF && !errors.Is(hr.err, ErrChecksum) {
		return false, fmt.Errorf("volume %d: read member %s: %w", vol, name, hr.err)
	}
	e.Size, e.BLAKE3 = hr.n, hex.EncodeToString(hr.h.Sum(nil))
	sc.v.Seen = append(sc.v.Seen, e)
	return false, nil
}

// hashReader hashes a member as it is read and checks it at its end.
type hashReader struct {
	r    io.Reader
	off  int64
	h    hash.Hash
	name string
	size int64
	n    int64
	want *Entry
	err  error
}

func (h *hashReader) Read(p []byte) (int, error) {
	if h.err != nil {
		return 0, h.err
	}
	n, err := h.r.Read(p)
	h.h.Write(p[:n])
	h.n += int64(n)
	if err == io.EOF && h.want != nil {
		if sum := hex.EncodeToString(h.h.Sum(nil)); h.n != h.want.Size || sum != h.want.BLAKE3 {
			err = fmt.Errorf("member %s: %d bytes with BLAKE3 %s, catalog says %d bytes with %s: %w",
				h.name, h.n, sum, h.want.Size, h.want.BLAKE3, ErrChecksum)
		}
	}
	if err == io.EOF && h.n < h.size {
		err = io.ErrUnexpectedEOF
	}
	h.err = err
	return n, err
}

// good returns the seen members that match a catalog and are not bad.
func good(v *Volume, ref *Catalog, bad []Problem) []Entry {
	isBad := make(map[string]bool, len(bad))
	for _, p := range bad {
		isBad[p.Name] = true
	}
	want := map[string]Entry{}
	for _, c := range []*Catalog{v.Catalog, ref} {
		if c != nil {
			for _, e := range c.Members {
				want[e.Name] = e
			}
		}
	}
	var out []Entry
	for _, e := range v.Seen {
		if w, ok := want[e.Name]; ok && !isBad[e.Name] && w.Size == e.Size && w.BLAKE3 == e.BLAKE3 {
			out = append(out, e)
		}
	}
	return out
}

// check compares what was seen with the volume's own catalog and ref.
func check(v *Volume, ref *Catalog) []Problem {
	var cats []*Catalog
	if v.Catalog != nil {
		cats = append(cats, v.Catalog)
	}
	if ref != nil {
		cats = append(cats, ref)
	}
	seen := make(map[string]Entry, len(v.Seen))
	for _, e := range v.Seen {
		seen[e.Name] = e
	}
	var bad []Problem
	if len(cats) == 0 {
		return []Problem{{"", fmt.Sprintf("volume %d has no catalog (it ends before it) and no reference catalog was given: members cannot be checked; give the catalog copy carried by volume %d",
			v.Label.Volume, v.Label.Volume+1)}}
	}
	reported := map[string]bool{}
	listed := map[string]bool{}
	for _, c := range cats {
		for _, d := range c.Dropped {
			listed[d.Name] = true
		}
		for _, want := range c.Members {
			listed[want.Name] = true
			got, ok := seen[want.Name]
			var p string
			switch {
			case !ok && v.Truncated:
				p = "missing: the volume is truncated before its end"
			case !ok:
				p = "in the catalog but not on the volume"
			case got.Size != want.Size:
				p = fmt.Sprintf("%d bytes on the volume, catalog says %d", got.Size, want.Size)
			case got.BLAKE3 != want.BLAKE3:
				p = fmt.Sprintf("BLAKE3 %s on the volume, catalog says %s", got.BLAKE3, want.BLAKE3)
			default:
				continue
			}
			if !reported[want.Name] {
				reported[want.Name] = true
				bad = append(bad, Problem{want.Name, p})
			}
		}
	}
	for _, e := range v.Seen {
		if !listed[e.Name] {
			bad = append(bad, Problem{e.Name, "on the volume but not in its catalog"})
		}
	}
	order := make(map[string]int, len(v.Seen))
	for i, e := range v.Seen {
		order[e.Name] = i
	}
	sort.SliceStable(bad, func(i, j int) bool { return rank(order, bad[i].Name) < rank(order, bad[j].Name) })
	return bad
}

func rank(order map[string]int, name string) int {
	if i, ok := order[name]; ok {
		return i
	}
	return len(order)
}

// SetIndex is what a collection of volumes tells about their set.
type SetIndex struct {
	SetID string
	// Have lists the volumes given, Missing the volumes 1..Highest that
	// were not given. Highest is the highest volume known from the volumes
	// or the catalog copies they carry.
	Have, Missing []int
	Highest       int
	// EndsSession is true when the catalog of volume Highest says a write
	// session ended with it. If false, later volumes of the set may exist.
	// A later incremental append can add volumes in either case; only the
	// repository's record knows.
	EndsSession bool
	// Catalogs holds the best known catalog of each volume, by number.
	Catalogs map[int]Catalog
	// Members lists every payload member of the set in volume order; a
	// name written again on a later volume is listed once, at its latest.
	Members []Entry
	// Unverified lists volumes given whose catalog is known nowhere (they
	// were truncated and the next volume was not given): their members
	// come from what was read and carry checksums computed from the
	// volume, not from a catalog.
	Unverified []int
}

// MissingMembers returns the members that are on volumes not given.
func (s *SetIndex) MissingMembers() []Entry {
	missing := make(map[int]bool, len(s.Missing))
	for _, m := range s.Missing {
		missing[m] = true
	}
	var out []Entry
	for _, e := range s.Members {
		if missing[e.Volume] {
			out = append(out, e)
		}
	}
	return out
}

// MergeCatalogs combines what some volumes of one set tell (their own
// catalogs and the copies of earlier ones), in any order, and says which
// volumes are missing. Volumes of different sets are an error.
func MergeCatalogs(vols ...*Volume) (*SetIndex, error) {
	if len(vols) == 0 {
		return nil, errors.New("merge catalogs: no volumes given")
	}
	s := &SetIndex{SetID: vols[0].Label.SetID, Catalogs: map[int]Catalog{}}
	have := map[int]*Volume{}
	for _, v := range vols {
		if v.Label.SetID != s.SetID {
			return nil, fmt.Errorf("volume %d belongs to set %s, volume %d to set %s: give volumes of one set",
				v.Label.Volume, v.Label.SetID, vols[0].Label.Volume, s.SetID)
		}
		if _, dup := have[v.Label.Volume]; !dup {
			have[v.Label.Volume] = v
			s.Have = append(s.Have, v.Label.Volume)
		}
		if v.Catalog != nil {
			s.Catalogs[v.Catalog.Volume] = *v.Catalog
		}
		s.Highest = max(s.Highest, v.Label.Volume)
	}
	sort.Ints(s.Have)
	for _, v := range vols {
		for _, c := range v.Earlier {
			if _, ok := s.Catalogs[c.Volume]; !ok {
				s.Catalogs[c.Volume] = c
			}
			s.Highest = max(s.Highest, c.Volume)
		}
	}
	if c, ok := s.Catalogs[s.Highest]; ok {
		s.EndsSession = c.EndsSession
	}
	latest := map[string]int{}
	for seq := 1; seq <= s.Highest; seq++ {
		v, ok := have[seq]
		if !ok {
			s.Missing = append(s.Missing, seq)
		}
		entries := s.Catalogs[seq].Members
		if _, known := s.Catalogs[seq]; !known && ok {
			entries = v.Seen
			s.Unverified = append(s.Unverified, seq)
		}
		for _, e := range entries {
			if i, dup := latest[e.Name]; dup {
				s.Members[i].Name = "" // superseded
			}
			latest[e.Name] = len(s.Members)
			s.Members = append(s.Members, e)
		}
	}
	kept := s.Members[:0]
	for _, e := range s.Members {
		if e.Name != "" {
			kept = append(kept, e)
		}
	}
	s.Members = kept
	return s, nil
}
