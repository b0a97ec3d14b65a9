package repo_test

import (
	"bytes"
	"io"
	"testing"

	"github.com/klauspost/compress/zstd"
	"github.com/restic/chunker"
	"github.com/stasisbackup/stasis/internal/enginetest"
	"github.com/stasisbackup/stasis/repo"
	"github.com/stasisbackup/stasis/repo/crypto"
	"github.com/zeebo/blake3"
)

// The backup's CPU stages one at a time, on one core, over the chunks of
// benchPages (a 64 MiB page-structured database): their MB/s set the CPU
// floor of a backup (docs/benchmarks.md, "CPU floor").

func pagesBytes(b *testing.B) ([][]byte, []byte) {
	chunks, err := benchPages()
	if err != nil {
		b.Fatal(err)
	}
	return chunks, bytes.Join(chunks, nil)
}

// BenchmarkStageChunk: content-defined chunking with the db profile.
func BenchmarkStageChunk(b *testing.B) {
	_, all := pagesBytes(b)
	b.SetBytes(int64(len(all)))
	p := repo.ProfileDB
	c := chunker.NewWithBoundaries(nil, enginetest.Polynomial, p.Min, p.Max)
	buf := make([]byte, p.Max)
	for b.Loop() {
		c.ResetWithBoundaries(bytes.NewReader(all), enginetest.Polynomial, p.Min, p.Max)
		c.SetAverageBits(p.AvgBits)
		for {
			if _, err := c.Next(buf); err == io.EOF {
				break
			} else if err != nil {
				b.Fatal(err)
			}
		}
	}
}

// BenchmarkStageHash: keyed BLAKE3-256 of every chunk (the blob ids).
func BenchmarkStageHash(b *testing.B) {
	chunks, all := pagesBytes(b)
	b.SetBytes(int64(len(all)))
	h, _ := blake3.NewKeyed(make([]byte, 32))
	var sum [32]byte
	for b.Loop() {
		for _, c := range chunks {
			h.Reset()
			h.Write(c)
			h.Sum(sum[:0])
		}
	}
}

// BenchmarkStageCompress: zstd at the default level 2, one frame per chunk
// (version 1, with a raw-content dictionary as version 1 makes) against
// frames of 512 KiB (version 2). stored/raw is the compressed share.
func BenchmarkStageCompress(b *testing.B) {
	chunks, all := pagesBytes(b)
	var dict []byte
	for _, c := range chunks[:16] {
		dict = append(dict, c[:4096]...)
	}
	level := zstd.WithEncoderLevel(zstd.EncoderLevelFromZstd(2))
	perChunk, _ := zstd.NewWriter(nil, level, zstd.WithEncoderCRC(false), zstd.WithEncoderConcurrency(1), zstd.WithEncoderDictRaw(40000, dict))
	framed, _ := zstd.NewWriter(nil, level, zstd.WithEncoderCRC(false), zstd.WithEncoderConcurrency(1))
	b.Run("chunk-per-frame-dict", func(b *testing.B) {
		b.SetBytes(int64(len(all)))
		var out []byte
		stored := 0
		for b.Loop() {
			stored = 0
			for _, c := range chunks {
				out = perChunk.EncodeAll(c, out[:0])
				stored += len(out)
			}
		}
		b.ReportMetric(float64(stored)/float64(len(all)), "stored/raw")
	})
	b.Run("frames-512KiB", func(b *testing.B) {
		b.SetBytes(int64(len(all)))
		var out []byte
		stored := 0
		for b.Loop() {
			stored = 0
			for off := 0; off < len(all); off += repo.DefaultFrameSize {
				out = framed.EncodeAll(all[off:min(off+repo.DefaultFrameSize, len(all))], out[:0])
				stored += len(out)
			}
		}
		b.ReportMetric(float64(stored)/float64(len(all)), "stored/raw")
	})
}

// BenchmarkStageSeal: XChaCha20-Poly1305 of 512 KiB frames (the
// compressed bytes are about a sixth of that on this data).
func BenchmarkStageSeal(b *testing.B) {
	mk, err := crypto.NewMasterKey()
	if err != nil {
		b.Fatal(err)
	}
	frame := make([]byte, repo.DefaultFrameSize)
	b.SetBytes(int64(len(frame)))
	var out []byte
	for b.Loop() {
		out = mk.Seal(out[:0], frame, []byte("stasis-frame\x01"))
	}
}
