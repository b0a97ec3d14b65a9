package main

import (
	"bytes"
	"strings"
	"testing"

	"github.com/stasisbackup/stasis/internal/backendtest"
)

// TestS3StasisOnly runs the s3 flow on a tiny workload with stasis built
// from this module, on a local directory and on a SeaweedFS the run starts
// (skipped without a weed binary).
func TestS3StasisOnly(t *testing.T) {
	skipUnlessLong(t, "builds stasis and starts SeaweedFS")
	if _, explicit, err := backendtest.WeedBinary(); err != nil {
		if explicit {
			t.Fatal(err)
		}
		t.Skip(err)
	}
	work := t.TempDir()
	var out, errs bytes.Buffer
	code := run(t.Context(), []string{"s3", "--work", work, "--db-size", "512KiB", "--files", "40", "--runs", "1", "--tools", "stasis"}, &out, &errs)
	if code != 0 {
		t.Fatalf("exit %d\n%s", code, errs.String())
	}
	if n := strings.Count(out.String(), "| scenario | tool |"); n != 2 {
		t.Errorf("%d tables, want 2 (local, s3):\n%s", n, out.String())
	}
	for _, sc := range s3Scenarios {
		if n := strings.Count(out.String(), "| "+sc+" | stasis |"); n != 2 {
			t.Errorf("%d rows for %q, want 2, in\n%s", n, sc, out.String())
		}
	}
	if !strings.Contains(out.String(), "### SeaweedFS S3 on loopback") {
		t.Errorf("no S3 table in\n%s", out.String())
	}
}

func TestResetS3Env(t *testing.T) {
	tl := &Tool{Name: "restic", Bin: "true", Env: []string{"RESTIC_REPOSITORY=/old", "RESTIC_PASSWORD_FILE=/p", "AWS_ACCESS_KEY_ID=old"}}
	tg := backendtest.S3Target{URL: "s3:http://127.0.0.1:1/b/p", Env: []string{"AWS_ACCESS_KEY_ID=k", "AWS_SECRET_ACCESS_KEY=s"}}
	if err := resetS3(t.Context(), tl, tg); err != nil {
		t.Fatal(err)
	}
	want := "AWS_ACCESS_KEY_ID=k AWS_SECRET_ACCESS_KEY=s RESTIC_REPOSITORY=s3:http://127.0.0.1:1/b/p RESTIC_PASSWORD_FILE=/p"
	if got := strings.Join(tl.Env, " "); got != want || tl.Repo != tg.URL {
		t.Errorf("env %q, repo %q; want %q, %q", got, tl.Repo, want, tg.URL)
	}
}
