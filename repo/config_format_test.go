package repo_test

import (
	"os"
	"path/filepath"
	"regexp"
	"testing"
)

// The config file of a new plain repository, byte for byte (its random id
// and creation time left out): the profile and compression names are
// stored as they always were.
func TestConfigFileFormat(t *testing.T) {
	st, _ := cacheRepo(t)
	data, err := os.ReadFile(filepath.Join(st.Location(), "config"))
	if err != nil {
		t.Fatal(err)
	}
	got := regexp.MustCompile(`"(id|created)": "[^"]*"`).ReplaceAllString(string(data), `"$1": "…"`)
	if got != wantConfig {
		t.Errorf("config file:\n%s\nwant:\n%s", got, wantConfig)
	}
}

const wantConfig = `{
  "format": "stasis-config",
  "version": 2,
  "id": "…",
  "created": "…",
  "encrypted": false,
  "chunker_polynomial": "3da3358b4dc173",
  "id_key": "7374617369732d746573742d69642d6b65792d30313233343536373839616263",
  "profiles": {
    "db": {
      "min": 4096,
      "max": 65536,
      "avg_bits": 14
    },
    "default": {
      "min": 524288,
      "max": 8388608,
      "avg_bits": 20
    }
  },
  "db_globs": [
    "*.db"
  ],
  "compression": "zstd",
  "compression_level": 2,
  "pack_size": 65536,
  "frame_size": 524288
}
`
