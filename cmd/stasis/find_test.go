package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

type findDoc struct {
	Snapshot string    `json:"snapshot"`
	Time     time.Time `json:"time"`
	Host     string    `json:"host"`
	Hits     []struct {
		Path  string    `json:"path"`
		Type  string    `json:"type"`
		Size  uint64    `json:"size"`
		MTime time.Time `json:"mtime"`
		Mode  uint32    `json:"mode"`
	} `json:"hits"`
}

func findJSONOut(t *testing.T, args ...string) []findDoc {
	t.Helper()
	out := mustRun(t, append([]string{"find", "--json"}, args...)...)
	var docs []findDoc
	if err := json.Unmarshal([]byte(out), &docs); err != nil {
		t.Fatalf("find --json %v: %v\n%s", args, err, out)
	}
	return docs
}

// find across three days: a file added on day 2 and deleted on day 3 is
// found in day 2 only; a glob with '/'; --newest 1; --snapshot; --json.
func TestCLIFindAcrossThreeSnapshots(t *testing.T) {
	dumpEnv(t)
	src := sampleTree(t)
	mustRun(t, "backup", "--init", "--host", "zoom1", src)
	newFile := filepath.Join(src, "ldif", "new.ldif")
	os.WriteFile(newFile, []byte("dn: cn=carol\n"), 0o640)
	mtime := time.Date(2026, 11, 21, 1, 2, 3, 456789, time.UTC)
	os.Chtimes(newFile, mtime, mtime)
	mustRun(t, "backup", "--host", "zoom1", src)
	os.Remove(newFile)
	mustRun(t, "backup", "--host", "zoom1", src)
	var snaps []map[string]any
	json.Unmarshal([]byte(mustRun(t, "snapshots", "--json")), &snaps)
	if len(snaps) != 3 {
		t.Fatalf("%d snapshots", len(snaps))
	}
	id := func(i int) string { return snaps[i]["id"].(string) }

	// Text: the snapshot's short id, time, host, then the hit.
	out := mustRun(t, "find", "new.ldif")
	if !strings.Contains(out, "snapshot "+id(1)[:8]) || strings.Contains(out, id(0)[:8]) || strings.Contains(out, id(2)[:8]) ||
		!strings.Contains(out, "zoom1") || !strings.Contains(out, newFile) || !strings.Contains(out, " 13 ") {
		t.Errorf("find new.ldif:\n%s", out)
	}

	docs := findJSONOut(t, "new.ldif")
	if len(docs) != 1 || docs[0].Snapshot != id(1) || docs[0].Host != "zoom1" || len(docs[0].Hits) != 1 {
		t.Fatalf("find --json new.ldif: %+v", docs)
	}
	if h := docs[0].Hits[0]; h.Path != newFile || h.Type != "file" || h.Size != 13 || h.Mode != 0o640 || !h.MTime.Equal(mtime) {
		t.Errorf("hit %+v", h)
	}

	// A glob with '/': trailing components, and a whole path.
	for _, pattern := range []string{"ldif/*.ldif", filepath.Join(src, "*", "people.ldif")} {
		docs := findJSONOut(t, pattern)
		if len(docs) != 3 {
			t.Fatalf("find %s: %d snapshots, want 3", pattern, len(docs))
		}
		for i, d := range docs {
			want := 1
			if i == 1 && strings.HasPrefix(pattern, "ldif/") {
				want = 2
			}
			if d.Snapshot != id(i) || len(d.Hits) != want {
				t.Errorf("find %s: snapshot %d: %+v", pattern, i, d)
			}
		}
	}
	docs = findJSONOut(t, "--newest", "1", "*.ldif")
	if len(docs) != 1 || docs[0].Snapshot != id(2) || len(docs[0].Hits) != 1 {
		t.Errorf("--newest 1: %+v", docs)
	}
	docs = findJSONOut(t, "--snapshot", "latest", "--snapshot", id(1)[:8], "--snapshot", id(1), "-i", "NEW.LDIF", "X500.DB")
	if len(docs) != 2 || docs[0].Snapshot != id(1) || len(docs[0].Hits) != 2 || docs[1].Snapshot != id(2) || len(docs[1].Hits) != 1 {
		t.Errorf("--snapshot latest --snapshot %s -i: %+v", id(1)[:8], docs)
	}
	if docs := findJSONOut(t, "no-such-name"); len(docs) != 0 {
		t.Errorf("no match: %+v", docs)
	}
	if code, _, errs := stasis(t, "find", "[x"); code != exitUsage || !strings.Contains(errs, "[x") {
		t.Errorf("malformed pattern: exit %d, %s", code, errs)
	}
	if code, _, _ := stasis(t, "find"); code != exitUsage {
		t.Errorf("no pattern: exit %d", code)
	}
}
