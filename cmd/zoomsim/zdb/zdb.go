// Package zdb is the on-disk format of zoomsim's X500.db: a page-structured
// database file with a checkable invariant. It is used by the zoomsim command,
// by tests and by benchmarks that need a realistic file written in place.
//
// # Format (version 1, all integers little-endian, page size 4096)
//
// Page 0 is the header:
//
//	0   8  magic "ZOOMSIM\x00"
//	8   4  format version (1)
//	12  4  page size (4096)
//	16  4  number of data pages N
//	20  4  reserved (0)
//	24  8  seed the file was created with
//	32  8  total: the sum of all balances (constant for the file's life)
//	4092 4 CRC32C (Castagnoli) of bytes 0..4091
//
// Pages 1..N are data pages:
//
//	0   4  magic "ZPG1"
//	4   4  page number (1..N)
//	8   8  id of the last transaction that wrote the page (0 = never)
//	16  8  balance (int64)
//	24  2  length L of the record text
//	26  L  directory records, LDIF-like text (deterministic from seed and page)
//	...    zero padding
//	4092 4 CRC32C of bytes 0..4091
//
// Invariant: every checksum holds and the balances sum to the header's total.
// A transaction moves amounts between pages; a copy of the file taken in the
// middle of one shows a sum different from the total (a torn copy).
package zdb

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"math/rand"
	"os"
	"strings"
)

// Format constants.
const (
	PageSize = 4096
	Version  = 1

	// BodyOffset is where the record text starts in a data page.
	BodyOffset = 26
	// MaxBody is the largest record text a data page holds.
	MaxBody = PageSize - 4 - BodyOffset
)

var (
	headerMagic = [8]byte{'Z', 'O', 'O', 'M', 'S', 'I', 'M', 0}
	pageMagic   = [4]byte{'Z', 'P', 'G', '1'}
	castagnoli  = crc32.MakeTable(crc32.Castagnoli)
)

// ErrCorrupt is wrapped by every error Check and the page decoders return
// for a file that is not consistent. Match with errors.Is.
var ErrCorrupt = errors.New("zoomsim database is not consistent")

// PageError names the first bad page found and why. Page 0 is the header;
// -1 means the file as a whole (for example a wrong size or a broken sum).
type PageError struct {
	Path   string
	Page   int
	Reason string
}

// Error implements error.
func (e *PageError) Error() string {
	if e.Page < 0 {
		return fmt.Sprintf("%s: %s", e.Path, e.Reason)
	}
	return fmt.Sprintf("%s: page %d: %s", e.Path, e.Page, e.Reason)
}

// Unwrap returns ErrCorrupt.
func (e *PageError) Unwrap() error { return ErrCorrupt }

// Header is the decoded header page.
type Header struct {
	Pages int   // number of data pages
	Seed  int64 // seed the file was created with
	Total int64 // sum of all balances
}

// Page is a decoded data page.
type Page struct {
	Number  int
	TxID    uint64
	Balance int64
	Body    []byte // record text; aliases the buffer it was decoded from
}

// EncodeHeader fills buf (PageSize bytes) with h, checksum included.
func EncodeHeader(buf []byte, h Header) {
	clear(buf[:PageSize])
	copy(buf[0:8], headerMagic[:])
	binary.LittleEndian.PutUint32(buf[8:], Version)
	binary.LittleEndian.PutUint32(buf[12:], PageSize)
	binary.LittleEndian.PutUint32(buf[16:], uint32(h.Pages))
	binary.LittleEndian.PutUint64(buf[24:], uint64(h.Seed))
	binary.LittleEndian.PutUint64(buf[32:], uint64(h.Total))
	seal(buf)
}

// DecodeHeader parses and verifies a header page.
func DecodeHeader(buf []byte) (Header, error) {
	if len(buf) < PageSize {
		return Header{}, fmt.Errorf("header is %d bytes, want %d", len(buf), PageSize)
	}
	if [8]byte(buf[0:8]) != headerMagic {
		return Header{}, errors.New("bad magic: not a zoomsim database")
	}
	if err := verify(buf); err != nil {
		return Header{}, err
	}
	if v := binary.LittleEndian.Uint32(buf[8:]); v != Version {
		return Header{}, fmt.Errorf("format version %d, this zoomsim reads only %d", v, Version)
	}
	if ps := binary.LittleEndian.Uint32(buf[12:]); ps != PageSize {
		return Header{}, fmt.Errorf("page size %d, want %d", ps, PageSize)
	}
	return Header{
		Pages: int(binary.LittleEndian.Uint32(buf[16:])),
		Seed:  int64(binary.LittleEndian.Uint64(buf[24:])),
		Total: int64(binary.LittleEndian.Uint64(buf[32:])),
	}, nil
}

// EncodePage fills buf (PageSize bytes) with p, checksum included.
// p.Body must not be longer than MaxBody.
func EncodePage(buf []byte, p Page) {
	body := p.Body
	if len(body) > MaxBody {
		body = body[:MaxBody]
	}
	// Copy the body first: it may alias buf.
	copy(buf[BodyOffset:], body)
	clear(buf[BodyOffset+len(body) : PageSize])
	copy(buf[0:4], pageMagic[:])
	binary.LittleEndian.PutUint32(buf[4:], uint32(p.Number))
	binary.LittleEndian.PutUint64(buf[8:], p.TxID)
	binary.LittleEndian.PutUint64(buf[16:], uint64(p.Balance))
	binary.LittleEndian.PutUint16(buf[24:], uint16(len(body)))
	seal(buf)
}

// DecodePage parses and verifies data page number want from buf.
func DecodePage(buf []byte, want int) (Page, error) {
	if len(buf) < PageSize {
		return Page{}, fmt.Errorf("page is %d bytes, want %d", len(buf), PageSize)
	}
	if [4]byte(buf[0:4]) != pageMagic {
		return Page{}, errors.New("bad page magic")
	}
	if err := verify(buf); err != nil {
		return Page{}, err
	}
	n := int(binary.LittleEndian.Uint32(buf[4:]))
	if n != want {
		return Page{}, fmt.Errorf("page records number %d (misplaced write)", n)
	}
	l := int(binary.LittleEndian.Uint16(buf[24:]))
	if l > MaxBody {
		return Page{}, fmt.Errorf("record length %d exceeds %d", l, MaxBody)
	}
	return Page{
		Number:  n,
		TxID:    binary.LittleEndian.Uint64(buf[8:]),
		Balance: int64(binary.LittleEndian.Uint64(buf[16:])),
		Body:    buf[BodyOffset : BodyOffset+l],
	}, nil
}

func seal(buf []byte) {
	binary.LittleEndian.PutUint32(buf[PageSize-4:], crc32.Checksum(buf[:PageSize-4], castagnoli))
}

func verify(buf []byte) error {
	stored := binary.LittleEndian.Uint32(buf[PageSize-4:])
	if got := crc32.Checksum(buf[:PageSize-4], castagnoli); got != stored {
		return fmt.Errorf("checksum mismatch (stored %08x, computed %08x)", stored, got)
	}
	return nil
}

// Create writes a new database of pages data pages at path, deterministic for
// a given seed (same arguments, same bytes). An existing file is replaced. The
// file is written to path+".tmp", fsynced and renamed into place.
func Create(path string, pages int, seed int64) error {
	if pages < 2 || pages > 1<<24 {
		return fmt.Errorf("create %s: %d pages: want 2..%d", path, pages, 1<<24)
	}
	tmp := path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return fmt.Errorf("create %s: %w", path, err)
	}
	defer os.Remove(tmp) // no-op once renamed
	if err := write(f, pages, seed); err != nil {
		f.Close()
		return fmt.Errorf("create %s: %w", path, err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("create %s: sync: %w", path, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("create %s: %w", path, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("create %s: %w", path, err)
	}
	return nil
}

func write(f *os.File, pages int, seed int64) error {
	rng := rand.New(rand.NewSource(seed))
	balances := make([]int64, pages)
	var total int64
	for i := range balances {
		balances[i] = rng.Int63n(1_000_000)
		total += balances[i]
	}
	w := bufio.NewWriterSize(f, 1<<20)
	buf := make([]byte, PageSize)
	EncodeHeader(buf, Header{Pages: pages, Seed: seed, Total: total})
	if _, err := w.Write(buf); err != nil {
		return err
	}
	var sb strings.Builder
	for i := 1; i <= pages; i++ {
		sb.Reset()
		Records(&sb, seed, i)
		EncodePage(buf, Page{Number: i, Balance: balances[i-1], Body: []byte(sb.String())})
		if _, err := w.Write(buf); err != nil {
			return err
		}
	}
	return w.Flush()
}

var (
	givenNames = []string{"Alice", "Bruno", "Chiara", "Dmitri", "Elena", "Farid", "Greta", "Hiro",
		"Ines", "Jonas", "Keiko", "Luca", "Mona", "Nils", "Olga", "Pavel", "Quinn", "Rosa", "Sven", "Tara"}
	surnames = []string{"Smith", "Rossi", "Novak", "Tanaka", "Schmidt", "Dubois", "Silva", "Kowalski",
		"Jensen", "Moreau", "Berg", "Costa", "Fischer", "Ivanova", "Larsen", "Meyer"}
	units = []string{"Sales", "Engineering", "Support", "Finance", "Legal", "Operations", "Research"}
)

// Records appends the deterministic directory records of data page page of a
// database created with seed to sb, as many as fit in MaxBody bytes.
func Records(sb *strings.Builder, seed int64, page int) {
	rng := rand.New(rand.NewSource(seed*1_000_003 + int64(page)))
	for n := 0; ; n++ {
		g := givenNames[rng.Intn(len(givenNames))]
		s := surnames[rng.Intn(len(surnames))]
		u := units[rng.Intn(len(units))]
		rec := fmt.Sprintf("dn: cn=%s %s %d-%d,ou=%s,o=Zoomserv\ncn: %s %s\nsn: %s\nmail: %s.%s.%d@zoomserv.example\ntelephoneNumber: +44 20 7946 %04d\n\n",
			g, s, page, n, u, g, s, s, strings.ToLower(g), strings.ToLower(s), page, rng.Intn(10000))
		if sb.Len()+len(rec) > MaxBody {
			return
		}
		sb.WriteString(rec)
	}
}

// Stats describes a consistent database, as found by Scan.
type Stats struct {
	Header
	MaxTxID uint64 // highest transaction id recorded in any page
}

// Check verifies the database at path: header valid, file size matching the
// page count, every page checksum and number, and the sum invariant. It
// returns nil for a consistent file, a *PageError (wrapping ErrCorrupt) naming
// the first bad page, or an I/O error.
func Check(path string) error {
	_, err := Scan(path)
	return err
}

// Scan is Check that also returns what it found.
func Scan(path string) (Stats, error) {
	f, err := os.Open(path)
	if err != nil {
		return Stats{}, fmt.Errorf("check %s: %w", path, err)
	}
	defer f.Close()
	return ScanReader(path, f)
}

// ScanReader is Scan on an open reader; name is used in errors.
func ScanReader(name string, r io.Reader) (Stats, error) {
	br := bufio.NewReaderSize(r, 1<<20)
	buf := make([]byte, PageSize)
	if _, err := io.ReadFull(br, buf); err != nil {
		return Stats{}, &PageError{Path: name, Page: 0, Reason: fmt.Sprintf("cannot read header: %v", err)}
	}
	h, err := DecodeHeader(buf)
	if err != nil {
		return Stats{}, &PageError{Path: name, Page: 0, Reason: err.Error()}
	}
	st := Stats{Header: h}
	var sum int64
	for i := 1; i <= h.Pages; i++ {
		if _, err := io.ReadFull(br, buf); err != nil {
			if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
				return Stats{}, &PageError{Path: name, Page: i, Reason: fmt.Sprintf("file truncated: header says %d pages", h.Pages)}
			}
			return Stats{}, fmt.Errorf("check %s: read page %d: %w", name, i, err)
		}
		p, err := DecodePage(buf, i)
		if err != nil {
			return Stats{}, &PageError{Path: name, Page: i, Reason: err.Error()}
		}
		sum += p.Balance
		st.MaxTxID = max(st.MaxTxID, p.TxID)
	}
	if n, _ := io.ReadFull(br, buf[:1]); n > 0 {
		return Stats{}, &PageError{Path: name, Page: -1, Reason: fmt.Sprintf("trailing data after %d pages", h.Pages)}
	}
	if sum != h.Total {
		return Stats{}, &PageError{Path: name, Page: -1, Reason: fmt.Sprintf("sum of balances %d != total %d (torn: a transaction was half written)", sum, h.Total)}
	}
	return st, nil
}
