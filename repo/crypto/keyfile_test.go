package crypto

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"
)

func newKeyFile(t testing.TB, mk *MasterKey, pw string) []byte {
	t.Helper()
	data, err := NewKeyFile(mk, []byte(pw), TestKDFParams)
	if err != nil {
		t.Fatal(err)
	}
	return data
}

func TestKeyFileRoundTrip(t *testing.T) {
	mk := newKey(t)
	data := newKeyFile(t, mk, "correct horse")

	var fields map[string]any
	if err := json.Unmarshal(data, &fields); err != nil {
		t.Fatalf("key file is not JSON: %v\n%s", err, data)
	}
	for k, want := range map[string]any{"format": "stasis-key", "version": 1.0, "kdf": "argon2id"} {
		if fields[k] != want {
			t.Errorf("field %s = %v, want %v", k, fields[k], want)
		}
	}
	for _, k := range []string{"id", "created", "host", "user", "kdf_params", "salt", "data"} {
		if _, ok := fields[k]; !ok {
			t.Errorf("field %s missing", k)
		}
	}

	got, err := OpenKeyFile(data, []byte("correct horse"))
	if err != nil {
		t.Fatal(err)
	}
	if !got.Equal(mk) || got.IDKey() != mk.IDKey() {
		t.Fatal("opened master key differs from the one sealed")
	}
	// The opened key decrypts what the original sealed.
	if _, err := got.Open(nil, mk.Seal(nil, []byte("x"), nil), nil); err != nil {
		t.Fatal(err)
	}

	info, err := ParseKeyFile(data)
	if err != nil {
		t.Fatal(err)
	}
	if info.KDF != TestKDFParams || len(info.ID) != 64 || time.Since(info.Created) > time.Hour || info.Created.IsZero() {
		t.Fatalf("ParseKeyFile = %+v", info)
	}

	// A second key file for the same master key differs (salt, id) but opens to the same key.
	data2 := newKeyFile(t, mk, "other password")
	info2, err := ParseKeyFile(data2)
	if err != nil {
		t.Fatal(err)
	}
	if info2.ID == info.ID {
		t.Fatal("two key files share an id")
	}
	got2, err := OpenKeyFile(data2, []byte("other password"))
	if err != nil || !got2.Equal(mk) {
		t.Fatalf("second key file: %v", err)
	}
}

func TestKeyFileWrongPassword(t *testing.T) {
	data := newKeyFile(t, newKey(t), "right")
	for _, pw := range []string{"wrong", "righ", "right ", ""} {
		mk, err := OpenKeyFile(data, []byte(pw))
		if !errors.Is(err, ErrWrongPassword) || mk != nil {
			t.Errorf("password %q: key %v, err %v; want ErrWrongPassword", pw, mk, err)
		}
	}
}

// editKeyFile decodes data, lets edit change the fields and encodes it again.
func editKeyFile(t *testing.T, data []byte, edit func(map[string]any)) []byte {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal(data, &m); err != nil {
		t.Fatal(err)
	}
	edit(m)
	out, err := json.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func TestKeyFileMalformed(t *testing.T) {
	good := newKeyFile(t, newKey(t), "pw")
	set := func(k string, v any) func(map[string]any) { return func(m map[string]any) { m[k] = v } }
	cases := []struct {
		name string
		data []byte
		want string
	}{
		{"empty", nil, "not a stasis key file"},
		{"not json", []byte("hello"), "not a stasis key file"},
		{"truncated", good[:len(good)/2], "not a stasis key file"},
		{"json array", []byte("[1,2]"), "not a stasis key file"},
		{"two objects", append(append([]byte{}, good...), good...), "data after the JSON object"},
		{"huge", make([]byte, 1<<20), "more than"},
		{"other format", editKeyFile(t, good, set("format", "restic")), `format "restic"`},
		{"newer version", editKeyFile(t, good, set("version", 2)), "version 2 is not supported"},
		{"unknown field", editKeyFile(t, good, set("extra", 1)), "unknown field"},
		{"bad id", editKeyFile(t, good, set("id", "zz")), "not 64 hex digits"},
		{"unknown kdf", editKeyFile(t, good, set("kdf", "scrypt")), `unknown kdf "scrypt"`},
		{"short salt", editKeyFile(t, good, set("salt", "AAAA")), "salt of 3 bytes"},
		{"salt not base64", editKeyFile(t, good, set("salt", "!!")), "not a stasis key file"},
		{"short data", editKeyFile(t, good, set("data", "AAAA")), "sealed key of 3 bytes"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			for _, f := range []func() error{
				func() error { _, err := OpenKeyFile(c.data, []byte("pw")); return err },
				func() error { _, err := ParseKeyFile(c.data); return err },
			} {
				err := f()
				if err == nil || errors.Is(err, ErrWrongPassword) || !strings.Contains(err.Error(), c.want) {
					t.Fatalf("err = %v, want an error containing %q that is not ErrWrongPassword", err, c.want)
				}
			}
		})
	}
}

func TestKeyFileTamperedSealedPartsFailAsWrongPassword(t *testing.T) {
	good := newKeyFile(t, newKey(t), "pw")
	for name, edit := range map[string]func(map[string]any){
		// The id is bound as additional data; salt and params change the derived key.
		"id":     func(m map[string]any) { m["id"] = strings.Repeat("ab", 32) },
		"salt":   func(m map[string]any) { m["salt"] = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=" },
		"params": func(m map[string]any) { m["kdf_params"].(map[string]any)["time"] = 2 },
	} {
		_, err := OpenKeyFile(editKeyFile(t, good, edit), []byte("pw"))
		if !errors.Is(err, ErrWrongPassword) {
			t.Errorf("%s changed: err = %v, want ErrWrongPassword", name, err)
		}
	}
	// Host, user and created are informational: editing them keeps the file usable.
	edited := editKeyFile(t, good, func(m map[string]any) { m["host"] = "elsewhere" })
	if _, err := OpenKeyFile(edited, []byte("pw")); err != nil {
		t.Errorf("host changed: %v", err)
	}
}

func TestKeyFileHostileKDFParams(t *testing.T) {
	good := newKeyFile(t, newKey(t), "pw")
	for _, p := range []KDFParams{
		{Time: 1, MemoryKiB: 1 << 31, Threads: 1},  // 2 TiB
		{Time: 1 << 30, MemoryKiB: 64, Threads: 1}, // a billion passes
		{Time: 64, MemoryKiB: 4 << 20, Threads: 4}, // within each bound, too much work together
		{Time: 1, MemoryKiB: 64, Threads: 0},       // no thread
		{Time: 0, MemoryKiB: 64, Threads: 1},       // no pass
		{Time: 1, MemoryKiB: 64, Threads: 200},     // too many threads
		{Time: 1, MemoryKiB: 8, Threads: 2},        // less than 8 KiB per thread
	} {
		data := editKeyFile(t, good, func(m map[string]any) {
			m["kdf_params"] = map[string]any{"time": p.Time, "memory_kib": p.MemoryKiB, "threads": p.Threads}
		})
		start := time.Now()
		_, err := OpenKeyFile(data, []byte("pw"))
		if err == nil || errors.Is(err, ErrWrongPassword) || !strings.Contains(err.Error(), "refusing kdf parameters") {
			t.Errorf("%+v: err = %v, want refusal", p, err)
		}
		if d := time.Since(start); d > time.Second {
			t.Errorf("%+v: refusal took %v", p, d)
		}
		if _, err := NewKeyFile(newKey(t), []byte("pw"), p); err == nil {
			t.Errorf("NewKeyFile accepted %+v", p)
		}
	}
	// Out of range for uint8/uint32 in JSON: a decode error.
	data := editKeyFile(t, good, func(m map[string]any) { m["kdf_params"].(map[string]any)["threads"] = 1000 })
	if _, err := OpenKeyFile(data, []byte("pw")); err == nil || errors.Is(err, ErrWrongPassword) {
		t.Errorf("threads 1000: err = %v", err)
	}
}

func TestNewKeyFileRefusesEmptyPassword(t *testing.T) {
	if _, err := NewKeyFile(newKey(t), nil, TestKDFParams); err == nil {
		t.Fatal("empty password accepted")
	}
}

func TestTuneKDF(t *testing.T) {
	if testing.Short() {
		t.Skip("TuneKDF runs argon2id with 64 MiB; skipped with -short")
	}
	p := TuneKDF(time.Millisecond)
	if err := p.Validate(); err != nil {
		t.Fatal(err)
	}
	if p.MemoryKiB != MinTunedMemoryKiB || p.Time != 1 || p.Threads < 1 || p.Threads > 4 {
		t.Fatalf("TuneKDF(1ms) = %+v, want the floors: 1 pass, 64 MiB", p)
	}
	// With a budget far beyond one floor derivation, it spends more.
	big := TuneKDF(time.Hour)
	if err := big.Validate(); err != nil {
		t.Fatal(err)
	}
	if uint64(big.Time)*uint64(big.MemoryKiB) <= uint64(p.Time)*uint64(p.MemoryKiB) || big.MemoryKiB != maxTunedMemoryKiB {
		t.Fatalf("TuneKDF(1h) = %+v, want more work than %+v at %d KiB", big, p, maxTunedMemoryKiB)
	}
}

func FuzzOpenKeyFile(f *testing.F) {
	var enc, id [KeySize]byte
	mk, err := newMasterKey(enc, id)
	if err != nil {
		f.Fatal(err)
	}
	good, err := NewKeyFile(mk, []byte("pw"), TestKDFParams)
	if err != nil {
		f.Fatal(err)
	}
	f.Add(good, []byte("pw"))
	f.Add(good, []byte("wrong"))
	f.Add(good[:40], []byte("pw"))
	f.Add([]byte(`{"format":"stasis-key","version":1}`), []byte("pw"))
	f.Add([]byte(`{}`), []byte(""))
	// Cheap KDF bounds keep each run fast; the parsing and opening code is the same.
	cheap := func(p KDFParams) error {
		if err := p.Validate(); err != nil {
			return err
		}
		if p.MemoryKiB > 256 || p.Time > 2 {
			return errors.New("too expensive for fuzzing")
		}
		return nil
	}
	f.Fuzz(func(t *testing.T, data, pw []byte) {
		k, err := openKeyFile(data, pw, cheap)
		if (err == nil) != (k != nil) {
			t.Fatalf("key %v with error %v", k, err)
		}
	})
}

// BenchmarkOpenKeyFileTuned measures opening a key file made with
// TuneKDF(500ms) on this machine and reports the parameters chosen.
func BenchmarkOpenKeyFileTuned(b *testing.B) {
	p := TuneKDF(500 * time.Millisecond)
	data, err := NewKeyFile(newKey(b), []byte("pw"), p)
	if err != nil {
		b.Fatal(err)
	}
	for b.Loop() {
		if _, err := OpenKeyFile(data, []byte("pw")); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(p.Time), "passes")
	b.ReportMetric(float64(p.MemoryKiB>>10), "MiB")
	b.ReportMetric(float64(p.Threads), "threads")
}
