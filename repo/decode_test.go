package repo

import (
	"encoding/json"
	"testing"

	"github.com/stasisbackup/stasis/repo/blob"
	"github.com/zeebo/blake3"
)

func FuzzDecodeSnapshot(f *testing.F) {
	sn := &Snapshot{Tree: blob.ID{1}, Paths: []string{"/srv"}, Host: "h"}
	b, _ := EncodeSnapshot(sn)
	f.Add(b)
	f.Add([]byte(`{"format":"stasis-snapshot","version":1}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		id := blob.ID(blake3.Sum256(data))
		if _, err := DecodeSnapshot(id, data); err != nil {
			return
		}
		if _, err := DecodeSnapshot(blob.ID{}, data); err == nil {
			t.Fatal("snapshot accepted under a wrong id")
		}
	})
}

func FuzzDecodeConfig(f *testing.F) {
	c, err := newConfig(InitOptions{})
	if err != nil {
		f.Fatal(err)
	}
	b, _ := json.Marshal(c)
	f.Add(b)
	f.Add([]byte(`{}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := DecodeConfig(data)
		if err != nil {
			return
		}
		if (!c.Encrypted && c.Polynomial() == 0) || c.PackSize <= 0 { // an encrypted config seals its polynomial
			t.Fatalf("invalid config accepted: %+v", c)
		}
	})
}

func FuzzDecodeDict(f *testing.F) {
	f.Add(encodeDict(40000, []byte("dn: cn=alice,ou=people,o=Zoomserv\n")))
	f.Add([]byte("STASISZ\x01"))
	f.Fuzz(func(t *testing.T, data []byte) {
		id, content, err := decodeDict(data)
		if err != nil {
			return
		}
		if id < 32768 || id >= 1<<31 || len(content) < 8 {
			t.Fatalf("accepted dictionary id %d with %d bytes", id, len(content))
		}
	})
}
