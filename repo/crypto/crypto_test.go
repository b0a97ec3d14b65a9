package crypto

import (
	"bytes"
	"errors"
	"fmt"
	"testing"
)

func newKey(t testing.TB) *MasterKey {
	t.Helper()
	k, err := NewMasterKey()
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// pattern returns n deterministic bytes.
func pattern(n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i*7 + i/251)
	}
	return b
}

func TestNewMasterKeyRandom(t *testing.T) {
	a, b := newKey(t), newKey(t)
	if a.Equal(b) || a.IDKey() == b.IDKey() {
		t.Fatal("two new master keys are equal")
	}
	if a.enc == a.id {
		t.Fatal("encryption key equals id key")
	}
	if !a.Equal(a) {
		t.Fatal("key not Equal to itself")
	}
}

func TestSealOpenRoundTrip(t *testing.T) {
	k := newKey(t)
	ad := []byte("data 0123")
	for _, n := range []int{0, 1, 63, 64, 65, 16 << 10, 1<<20 + 3} {
		t.Run(fmt.Sprint(n), func(t *testing.T) {
			plain := pattern(n)
			prefix := []byte("prefix")
			sealed := k.Seal(append([]byte(nil), prefix...), plain, ad)
			if !bytes.HasPrefix(sealed, prefix) {
				t.Fatal("Seal did not append to dst")
			}
			sealed = sealed[len(prefix):]
			if len(sealed) != n+Overhead {
				t.Fatalf("sealed %d bytes: %d, want %d", n, len(sealed), n+Overhead)
			}
			if n >= 16 && bytes.Contains(sealed, plain[:16]) {
				t.Fatal("sealed message contains plaintext")
			}
			got, err := k.Open([]byte("x"), sealed, ad)
			if err != nil {
				t.Fatal(err)
			}
			if got[0] != 'x' || !bytes.Equal(got[1:], plain) {
				t.Fatal("Open returned other bytes than were sealed")
			}
			again := k.Seal(nil, plain, ad)
			if bytes.Equal(again[:NonceSize], sealed[:NonceSize]) {
				t.Fatal("two seals used the same nonce")
			}
		})
	}
}

func TestOpenRejectsTampering(t *testing.T) {
	k := newKey(t)
	plain, ad := pattern(100), []byte("tree abc")
	sealed := k.Seal(nil, plain, ad)
	check := func(what string, msg, ad []byte) {
		t.Helper()
		dst := []byte("keep")
		got, err := k.Open(dst, msg, ad)
		if !errors.Is(err, ErrAuthFailed) {
			t.Fatalf("%s: err = %v, want ErrAuthFailed", what, err)
		}
		if string(got) != "keep" {
			t.Fatalf("%s: dst changed to %q", what, got)
		}
	}
	for i := range sealed {
		for _, bit := range []byte{0x01, 0x80} {
			m := bytes.Clone(sealed)
			m[i] ^= bit
			check(fmt.Sprintf("bit %#x of byte %d flipped", bit, i), m, ad)
		}
	}
	for n := range len(sealed) {
		check(fmt.Sprintf("truncated to %d", n), sealed[:n], ad)
	}
	check("byte appended", append(bytes.Clone(sealed), 0), ad)
	check("wrong additional data", sealed, []byte("tree abd"))
	check("no additional data", sealed, nil)
	check("other key", newKey(t).Seal(nil, plain, ad), ad)
}

func TestSealOpenNoAllocation(t *testing.T) {
	k := newKey(t)
	plain, ad := pattern(16<<10), []byte("ad")
	sealed := make([]byte, 0, len(plain)+Overhead)
	opened := make([]byte, 0, len(plain))
	allocs := testing.AllocsPerRun(20, func() {
		s := k.Seal(sealed[:0], plain, ad)
		if _, err := k.Open(opened[:0], s, ad); err != nil {
			t.Fatal(err)
		}
	})
	if allocs != 0 {
		t.Fatalf("Seal+Open with room in dst allocated %v times, want 0", allocs)
	}
}

func FuzzOpen(f *testing.F) {
	var enc, id [KeySize]byte
	enc[0], id[0] = 1, 2
	k, err := newMasterKey(enc, id)
	if err != nil {
		f.Fatal(err)
	}
	good := k.Seal(nil, []byte("hello, stasis"), []byte("ad"))
	f.Add(good, []byte("ad"))
	f.Add(good[:Overhead], []byte("ad"))
	f.Add([]byte{}, []byte{})
	f.Add(k.Seal(nil, nil, nil), []byte{})
	f.Fuzz(func(t *testing.T, sealed, ad []byte) {
		out, err := k.Open(nil, sealed, ad)
		if err != nil {
			if !errors.Is(err, ErrAuthFailed) || out != nil {
				t.Fatalf("Open error %v with output %q", err, out)
			}
			return
		}
		if len(out) != len(sealed)-Overhead {
			t.Fatalf("opened %d bytes from %d", len(out), len(sealed))
		}
	})
}

func benchSealOpen(b *testing.B, size int) {
	k := newKey(b)
	plain, ad := pattern(size), []byte("data 0123456789abcdef")
	sealed := k.Seal(nil, plain, ad)
	b.Run("Seal", func(b *testing.B) {
		dst := make([]byte, 0, size+Overhead)
		b.SetBytes(int64(size))
		b.ReportAllocs()
		for b.Loop() {
			k.Seal(dst[:0], plain, ad)
		}
	})
	b.Run("Open", func(b *testing.B) {
		dst := make([]byte, 0, size)
		b.SetBytes(int64(size))
		b.ReportAllocs()
		for b.Loop() {
			if _, err := k.Open(dst[:0], sealed, ad); err != nil {
				b.Fatal(err)
			}
		}
	})
}

func BenchmarkSealOpen16KiB(b *testing.B) { benchSealOpen(b, 16<<10) }
func BenchmarkSealOpen1MiB(b *testing.B)  { benchSealOpen(b, 1<<20) }
