package tape

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"testing"
)

func FuzzDecodeLabel(f *testing.F) {
	l := Label{Magic: LabelMagic, FormatVersion: FormatVersion, SetID: "s", Volume: 2, Label: "x", Time: testTime, BlockSize: 512}
	f.Add(encodeJSON(l))
	f.Add([]byte(`{"magic":"stasis-tape-volume","format_version":2}`))
	f.Add([]byte(`{"magic":"stasis-tape-volume","format_version":1,"set_id":"s","volume":1,"block_size":100}`))
	f.Add([]byte(`{} {}`))
	f.Add([]byte("\x00\xff"))
	f.Fuzz(func(t *testing.T, data []byte) {
		l, err := DecodeLabel(data)
		if err != nil {
			return
		}
		again, err := DecodeLabel(encodeJSON(l))
		if err != nil || !again.Time.Equal(l.Time) || again.SetID != l.SetID || again.Volume != l.Volume {
			t.Fatalf("label %+v does not survive re-encoding: %v", l, err)
		}
	})
}

func FuzzDecodeCatalog(f *testing.F) {
	c := Catalog{Magic: CatalogMagic, FormatVersion: FormatVersion, SetID: "s", Volume: 1, Time: testTime,
		Members: []Entry{{Name: "packs/ab/cd", Size: 3, BLAKE3: string(bytes.Repeat([]byte("a"), 64)), Volume: 1}},
		Dropped: []Dropped{{Name: "config", Size: 1, Reason: "end of media"}}}
	f.Add(encodeJSON(c))
	c.Members[0].Name = "../x"
	f.Add(encodeJSON(c))
	f.Add([]byte(`{"magic":"stasis-tape-catalog","format_version":1,"set_id":"s","volume":1,"members":[{"name":"a","size":-1}]}`))
	f.Add([]byte(`[1,2,3]`))
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := DecodeCatalog(data)
		if err != nil {
			return
		}
		b, _ := json.Marshal(c)
		if _, err := DecodeCatalog(b); err != nil {
			t.Fatalf("catalog %+v does not survive re-encoding: %v", c, err)
		}
		for _, e := range c.Members {
			if ValidName(e.Name) != nil {
				t.Fatalf("accepted invalid name %q", e.Name)
			}
		}
	})
}

// FuzzReadVolume feeds arbitrary bytes to the volume reader: it may fail,
// never panic, and never pass an invalid name to the callback.
func FuzzReadVolume(f *testing.F) {
	dev := &tapeDrive{dir: f.TempDir(), blockSize: 512}
	ms := makeMembers(13, 3, 10, 600)
	if _, err := WriteSet(context.Background(), dev, baseOpts(512, 0), toMembers(ms), nil); err != nil {
		f.Fatal(err)
	}
	f.Add(mustRead(f, dev.path(1)))
	f.Add([]byte("not a tar"))
	f.Fuzz(func(t *testing.T, data []byte) {
		ctx := context.Background()
		ReadVolume(ctx, bytes.NewReader(data), ReadOptions{BlockSize: 512}, func(e Entry, r io.Reader) error {
			io.Copy(io.Discard, r)
			if ValidName(e.Name) != nil {
				t.Fatalf("callback got invalid name %q", e.Name)
			}
			return nil
		})
		if v, err := ListVolume(ctx, bytes.NewReader(data), ReadOptions{BlockSize: 512}); err == nil {
			MergeCatalogs(v)
		}
	})
}
