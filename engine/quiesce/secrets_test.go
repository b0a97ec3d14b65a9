package quiesce

import (
	"bytes"
	"context"
	"strings"
	"testing"
)

// A hook must not see the repository password, where it comes from, or
// cloud credentials; it still sees the documented STASIS_* variables and
// the rest of the caller's environment.
func TestHookEnvHasNoSecrets(t *testing.T) {
	const secret = "s3cr3t-value-4711"
	for _, name := range []string{"STASIS_PASSWORD", "STASIS_PASSWORD_FILE", "STASIS_PASSWORD_COMMAND",
		"STASIS_FROM_PASSWORD", "STASIS_NEW_PASSWORD", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN",
		"STASIS_SOME_FUTURE_PASSWORD"} {
		t.Setenv(name, secret)
	}
	t.Setenv("STASIS_HOOK_TEST_PLAIN", "kept")
	var log bytes.Buffer
	h := Hook{Phase: PhaseResume, Repo: "/r", Paths: []string{"/a"}, Command: "env"}
	if _, err := RunHook(context.Background(), h, &log); err != nil {
		t.Fatal(err)
	}
	out := log.String()
	for _, line := range strings.Split(out, "\n") {
		if strings.Contains(line, secret) {
			t.Errorf("hook environment holds a secret: %s", line)
		}
	}
	for _, want := range []string{"STASIS_REPO=/r\n", "STASIS_PATHS=/a\n", "STASIS_PHASE=resume\n", "STASIS_HOOK_TEST_PLAIN=kept\n"} {
		if !strings.Contains(out, want) {
			t.Errorf("hook environment lacks %q", want)
		}
	}
}
