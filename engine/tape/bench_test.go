package tape

import (
	"bytes"
	"context"
	"io"
	"os"
	"path/filepath"
	"testing"

	"github.com/zeebo/blake3"
)

// discardDevice accepts every volume and throws the bytes away, like
// exporting to /dev/null.
type discardDevice struct{}

type nopWriteCloser struct{ io.Writer }

func (nopWriteCloser) Close() error { return nil }

func (discardDevice) OpenWrite(context.Context, int) (io.WriteCloser, error) {
	return nopWriteCloser{io.Discard}, nil
}

func (discardDevice) OpenRead(context.Context, int) (io.ReadCloser, error) {
	return nil, os.ErrNotExist
}

// benchMembers returns 32 members of 4 MiB, shaped like pack files: 128 MiB.
func benchMembers() ([]Member, int64) {
	ms := makeMembers(7, 33, 4<<20, 4<<20)[1:]
	var total int64
	for _, m := range ms {
		total += int64(len(m.data))
	}
	return toMembers(ms), total
}

func benchWriteSet(b *testing.B, dev Device) {
	members, total := benchMembers()
	b.SetBytes(total)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, err := WriteSet(context.Background(), dev, baseOpts(DefaultBlockSize, 0), members, nil); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkWriteSetDiscard measures the export data path alone (read,
// hash, block, write) to a device that costs nothing.
func BenchmarkWriteSetDiscard(b *testing.B) { benchWriteSet(b, discardDevice{}) }

// BenchmarkWriteSetFile measures writing a volume file (synced on Close).
func BenchmarkWriteSetFile(b *testing.B) {
	benchWriteSet(b, &PathDevice{Path: filepath.Join(b.TempDir(), "vol-%03d.tar")})
}

// BenchmarkVerifyVolume measures verify of a volume held in memory: tar
// parsing, block reads and BLAKE3 of every member.
func BenchmarkVerifyVolume(b *testing.B) {
	members, total := benchMembers()
	p := filepath.Join(b.TempDir(), "vol.tar")
	if _, err := WriteSet(context.Background(), &PathDevice{Path: p}, baseOpts(DefaultBlockSize, 0), members, nil); err != nil {
		b.Fatal(err)
	}
	vol, err := os.ReadFile(p)
	if err != nil {
		b.Fatal(err)
	}
	b.SetBytes(total)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, err := VerifyVolume(context.Background(), bytes.NewReader(vol), ReadOptions{}); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkBLAKE3 is the bound of one core: the hash every exported and
// verified byte goes through.
func BenchmarkBLAKE3(b *testing.B) {
	buf := make([]byte, 256<<10)
	b.SetBytes(int64(len(buf)))
	h := blake3.New()
	for i := 0; i < b.N; i++ {
		h.Write(buf)
	}
}
