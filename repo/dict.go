package repo

import (
	"bytes"
	"context"
	crand "crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"path"
	"time"

	"github.com/klauspost/compress/zstd"
	"github.com/stasisbackup/stasis/repo/backend"
	"github.com/stasisbackup/stasis/repo/blob"
	"github.com/zeebo/blake3"
)

// Compression dictionaries.
//
// Chunks of a page-structured database are small (≈16 KiB) and compressed
// one by one, so each zstd frame starts with an empty history. A repository
// therefore gets one zstd *raw content dictionary*: 64 KiB of sample chunk
// data taken from the first data blobs it stores. Every later data blob is
// compressed with it (tree blobs never are); the zstd frame header names the dictionary by its
// 32-bit dictionary id, so the pack format does not change and a frame
// without a dictionary id decodes as before. On the sample workload of
// docs/benchmarks.md this stores database chunks ≈15% smaller, at the cost of
// ≈20% slower compression and ≈25% slower decompression
// (BenchmarkZstdDictionary in engine).
//
// File dicts/<id>, id = BLAKE3-256 of the file's bytes, written atomically
// before any blob compressed with it; never modified or deleted:
//
//	plain = "STASISZ\x01" (8 bytes) | zstd dictionary id uint32 LE | content
//	file  = plain, or Seal(plain, AD "stasis-dict") in an encrypted repository
//	        (the samples are user data)
//
// Readers load every dictionary file at open; writers compress with the one
// whose file name sorts first (two backups that started at once may each
// have written one; both decode).

const (
	dictDir         = "dicts"
	dictSampleSize  = 4 << 10  // bytes taken from each sample blob
	dictContentSize = 64 << 10 // dictionary content
	dictMinBlob     = 2 << 10  // smaller blobs are not sampled
	maxDictFile     = 1 << 20  // bound on what is read of a dictionary file
)

var (
	dictMagic = []byte("STASISZ\x01")
	adDict    = []byte("stasis-dict")
)

// compressor is the encoder/decoder pair of the current dictionaries.
type compressor struct {
	enc    *zstd.Encoder // data blobs: with the dictionary once there is one
	plain  *zstd.Encoder // tree blobs: never with a dictionary, so a damaged dictionary costs file content, not directories
	dec    *zstd.Decoder
	dictID uint32 // 0: no dictionary yet
	dicts  int    // dictionary files listed when it was made

	files map[string]uint32 // dictionary files that loaded (dicts/<id>) → zstd dictionary id
	ids   map[uint32]string // zstd dictionary id → dictionary file
	bad   map[string]string // dictionary files that could not be loaded → why
}

// dictSampler collects sample bytes until a dictionary can be made.
type dictSampler struct {
	content []byte
	done    bool
}

func encodeDict(id uint32, content []byte) []byte {
	b := append([]byte{}, dictMagic...)
	b = binary.LittleEndian.AppendUint32(b, id)
	return append(b, content...)
}

func decodeDict(plain []byte) (uint32, []byte, error) {
	if len(plain) < len(dictMagic)+4+8 || !bytes.Equal(plain[:len(dictMagic)], dictMagic) {
		return 0, nil, errors.New("not a stasis dictionary (bad magic or too short)")
	}
	id := binary.LittleEndian.Uint32(plain[len(dictMagic):])
	if id < 32768 || id >= 1<<31 {
		return 0, nil, fmt.Errorf("dictionary id %d outside the allowed range", id)
	}
	return id, plain[len(dictMagic)+4:], nil
}

// dictFileName returns the repository-relative name of a dictionary file.
func dictFileName(data []byte) string {
	return path.Join(dictDir, blob.ID(blake3.Sum256(data)).String())
}

// loadCompressor reads every dictionary and builds the encoder and decoder.
// A dictionary file that cannot be read is returned in problems (check
// lists them) and skipped: blobs compressed with it fail to decode, others
// are unaffected.
func (r *Repository) loadCompressor(ctx context.Context) (c *compressor, problems []string, err error) {
	names, err := r.DictNames(ctx)
	if err != nil {
		return nil, nil, err
	}
	type dict struct {
		id      uint32
		content []byte
	}
	var dicts []dict
	files, ids, bad := map[string]uint32{}, map[uint32]string{}, map[string]string{}
	for _, name := range names {
		data, err := backend.ReadAll(ctx, r.st, name, maxDictFile)
		if err == nil && dictFileName(data) != name {
			err = errors.New("content does not match its name (bit rot or tampering)")
		}
		plain := data
		if err == nil && r.mk != nil {
			plain, err = r.mk.Open(nil, data, adDict)
		}
		var id uint32
		var content []byte
		if err == nil {
			id, content, err = decodeDict(plain)
		}
		if err != nil {
			problems = append(problems, fmt.Sprintf("compression dictionary %s: %v (blobs compressed with it cannot be decoded)", name, err))
			bad[name] = err.Error()
			continue
		}
		files[name], ids[id] = id, name
		dicts = append(dicts, dict{id, content})
	}
	level := zstd.EncoderLevelFromZstd(r.cfg.CompressionLevel)
	encOpts := []zstd.EOption{zstd.WithEncoderLevel(level), zstd.WithEncoderCRC(false)}
	if r.cfg.framed() {
		// A frame is at most 2 × FrameSize: a window as large holds all
		// of it, and each encoder's history stays that small (the default
		// 8 MiB window was a third of a backup's peak heap). A blob alone
		// larger than that (a chunk up to 8 MiB) finds matches within the
		// window only.
		encOpts = append(encOpts, zstd.WithWindowSize(frameWindow(r.cfg.FrameSize)))
	}
	decOpts := []zstd.DOption{zstd.WithDecoderMaxMemory(1 << 30)}
	c = &compressor{dicts: len(names), files: files, ids: ids, bad: bad}
	if c.plain, err = zstd.NewWriter(nil, encOpts...); err != nil {
		return nil, nil, err
	}
	for i, d := range dicts {
		if i == 0 {
			encOpts = append(encOpts, zstd.WithEncoderDictRaw(d.id, d.content))
			c.dictID = d.id
		}
		decOpts = append(decOpts, zstd.WithDecoderDictRaw(d.id, d.content))
	}
	if c.enc, err = zstd.NewWriter(nil, encOpts...); err != nil {
		return nil, nil, err
	}
	if c.dec, err = zstd.NewReader(nil, decOpts...); err != nil {
		return nil, nil, err
	}
	return c, problems, nil
}

// sampleForDict collects data blob samples and, once there are enough,
// writes the repository's dictionary and switches to it. Called for every
// new data blob while the repository has no dictionary; cheap otherwise.
func (r *Repository) sampleForDict(ctx context.Context, data []byte) error {
	if len(data) < dictMinBlob {
		return nil
	}
	r.dictMu.Lock()
	defer r.dictMu.Unlock()
	s := &r.sampler
	if s.done {
		return nil
	}
	n := min(len(data), dictSampleSize, dictContentSize-len(s.content))
	s.content = append(s.content, data[:n]...)
	if len(s.content) < dictContentSize {
		return nil
	}
	s.done = true
	var idb [4]byte
	if _, err := crand.Read(idb[:]); err != nil {
		return err
	}
	id := 32768 + binary.LittleEndian.Uint32(idb[:])%(1<<31-32768)
	plain := encodeDict(id, s.content)
	file := plain
	if r.mk != nil {
		file = r.mk.Seal(nil, plain, adDict)
	}
	name := dictFileName(file)
	if err := backend.PutBytes(ctx, r.st, name, file); err != nil {
		return fmt.Errorf("write compression dictionary: %w", err)
	}
	c, _, err := r.loadCompressor(ctx)
	if err != nil {
		return err
	}
	// The old decoder stays usable by readers that hold it; Close closes it.
	r.retired = append(r.retired, r.comp.Swap(c))
	s.content = nil
	return nil
}

// reloadDicts loads the dictionaries again when the repository has more
// than compressor c knows, and reports whether it did: a blob named a
// dictionary c lacks.
func (r *Repository) reloadDicts(c *compressor) bool {
	r.dictMu.Lock()
	defer r.dictMu.Unlock()
	if r.comp.Load() != c {
		return true // reloaded meanwhile
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	names, err := r.DictNames(ctx)
	if err != nil || len(names) <= c.dicts {
		return false
	}
	nc, problems, err := r.loadCompressor(ctx)
	if err != nil {
		return false
	}
	r.retired = append(r.retired, r.comp.Swap(nc))
	r.dictProblems = problems
	r.sampler.done = true
	return true
}

// DictProblems lists dictionary files that could not be loaded (for check).
func (r *Repository) DictProblems() []string {
	r.dictMu.Lock()
	defer r.dictMu.Unlock()
	return r.dictProblems
}

// DictNames lists the repository-relative names of the dictionary files
// (for tape export).
func (r *Repository) DictNames(ctx context.Context) ([]string, error) {
	names, err := backend.ListNames(ctx, r.st, dictDir+"/")
	if err != nil {
		return nil, fmt.Errorf("list compression dictionaries of %s: %w", r.loc, err)
	}
	return names, nil
}

// frameWindow is the zstd window for frames of frameSize: the smallest
// power of two that holds a whole frame (2 × frameSize).
func frameWindow(frameSize int64) int {
	w := zstd.MinWindowSize
	for int64(w) < 2*frameSize && w < zstd.MaxWindowSize {
		w *= 2
	}
	return w
}
