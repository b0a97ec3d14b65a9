package password

import (
	"context"
	"errors"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stasisbackup/stasis/repo/crypto"
)

// A Source for another repository (copy's source) reads its own
// environment variables and names its own flags in errors.
func TestSourceOtherNames(t *testing.T) {
	ctx := context.Background()
	env := envMap(map[string]string{EnvPassword: "destination", "STASIS_FROM_PASSWORD": "source"})
	src := Source{Env: env, FileFlag: "--from-password-file", CommandFlag: "--from-password-command",
		FileEnv: "STASIS_FROM_PASSWORD_FILE", PasswordEnv: "STASIS_FROM_PASSWORD"}
	if got, err := src.Read(ctx, ""); err != nil || string(got) != "source" {
		t.Errorf("Read = %q, %v; want the source's password", got, err)
	}
	if _, err := (Source{Env: envMap(map[string]string{EnvPassword: "destination"}), FileEnv: "STASIS_FROM_PASSWORD_FILE", PasswordEnv: "STASIS_FROM_PASSWORD"}).Read(ctx, ""); !errors.Is(err, crypto.ErrNoPassword) {
		t.Errorf("the destination's STASIS_PASSWORD was used for another source: %v", err)
	}
	missing := filepath.Join(t.TempDir(), "nope")
	src.File = missing
	if _, err := src.Read(ctx, ""); err == nil || !strings.Contains(err.Error(), "--from-password-file") {
		t.Errorf("missing file: %v, want it to name --from-password-file", err)
	}
	src.File = ""
	src.Env = envMap(map[string]string{"STASIS_FROM_PASSWORD_FILE": missing})
	if _, err := src.Read(ctx, ""); err == nil || !strings.Contains(err.Error(), "STASIS_FROM_PASSWORD_FILE") {
		t.Errorf("missing env file: %v, want it to name STASIS_FROM_PASSWORD_FILE", err)
	}
	src.Env, src.Command = envMap(nil), "exit 3"
	if _, err := src.Read(ctx, ""); err == nil || !strings.Contains(err.Error(), "--from-password-command") {
		t.Errorf("failing command: %v, want it to name --from-password-command", err)
	}
}
