package tape

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// The change-volume command is a hook like --quiesce: it must not see the
// repository password (or where it comes from) in its environment.
func TestChangeVolumeCommandGetsNoSecrets(t *testing.T) {
	const secret = "tape-s3cr3t-4711"
	for _, name := range []string{"STASIS_PASSWORD", "STASIS_PASSWORD_FILE", "STASIS_PASSWORD_COMMAND", "AWS_SECRET_ACCESS_KEY"} {
		t.Setenv(name, secret)
	}
	dir := t.TempDir()
	drive := filepath.Join(dir, "drive")
	cmd := fmt.Sprintf(`env >> %[1]s/env && mv "$STASIS_TAPE_DEVICE" "%[1]s/ejected-$(($STASIS_TAPE_VOLUME - 1))"`, dir)
	ms := makeMembers(12, 20, 1000, 20000)
	cats, err := WriteSet(context.Background(), &PathDevice{Path: drive, ChangeVolume: cmd}, baseOpts(4096, 64<<10), toMembers(ms), nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(cats) < 2 {
		t.Fatalf("%d volumes: the change-volume command never ran", len(cats))
	}
	env, err := os.ReadFile(filepath.Join(dir, "env"))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(env), "STASIS_TAPE_VOLUME=2\n") {
		t.Fatalf("change-volume environment lacks STASIS_TAPE_VOLUME:\n%s", env)
	}
	for _, line := range strings.Split(string(env), "\n") {
		if strings.Contains(line, secret) {
			t.Errorf("change-volume command sees a secret: %s", line)
		}
	}
}
