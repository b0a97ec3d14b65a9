package password

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/stasisbackup/stasis/repo/crypto"
)

// envMap returns an Env function that reads only m.
func envMap(m map[string]string) func(string) string {
	return func(k string) string { return m[k] }
}

func writeFile(t *testing.T, content string) string {
	t.Helper()
	name := filepath.Join(t.TempDir(), "pw")
	if err := os.WriteFile(name, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return name
}

func TestSourceOrder(t *testing.T) {
	ctx := context.Background()
	flagFile := writeFile(t, "from-flag-file\n")
	envFile := writeFile(t, "from-env-file\n")
	cmd := "echo from-command"
	env := map[string]string{EnvFile: envFile, EnvPassword: "from-env"}
	cases := []struct {
		name string
		src  Source
		want string
	}{
		{"flag file beats all", Source{File: flagFile, Command: cmd, Env: envMap(env)}, "from-flag-file"},
		{"env file beats command", Source{Command: cmd, Env: envMap(env)}, "from-env-file"},
		{"command beats env", Source{Command: cmd, Env: envMap(map[string]string{EnvPassword: "from-env"})}, "from-command"},
		{"env alone", Source{Env: envMap(map[string]string{EnvPassword: "from-env"})}, "from-env"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			for _, read := range []func(context.Context, string) ([]byte, error){c.src.Read, c.src.ReadNew} {
				got, err := read(ctx, "password: ")
				if err != nil {
					t.Fatal(err)
				}
				if string(got) != c.want {
					t.Fatalf("got %q, want %q", got, c.want)
				}
			}
		})
	}
}

func TestPasswordTrimsOneNewline(t *testing.T) {
	ctx := context.Background()
	none := envMap(nil)
	for content, want := range map[string]string{
		"pw":         "pw",
		"pw\n":       "pw",
		"pw\r\n":     "pw",
		"pw\n\n":     "pw\n",
		" pw \n":     " pw ",
		"pw\r":       "pw\r",
		"p\nw\n":     "p\nw",
		"secret\t\n": "secret\t",
	} {
		got, err := Source{File: writeFile(t, content), Env: none}.Read(ctx, "")
		if err != nil || string(got) != want {
			t.Errorf("file %q: got %q, %v; want %q", content, got, err, want)
		}
		got, err = Source{Command: "printf '%s' '" + content + "'", Env: none}.Read(ctx, "")
		if err != nil || string(got) != want {
			t.Errorf("command printing %q: got %q, %v; want %q", content, got, err, want)
		}
	}
}

func TestSourceErrors(t *testing.T) {
	ctx := context.Background()
	none := envMap(nil)
	missing := filepath.Join(t.TempDir(), "missing")
	cases := []struct {
		name string
		src  Source
		want []string
	}{
		{"missing flag file", Source{File: missing, Env: none}, []string{missing, "--password-file", "no such file"}},
		{"missing env file", Source{Env: envMap(map[string]string{EnvFile: missing})}, []string{missing, EnvFile}},
		{"empty file", Source{File: writeFile(t, "\n"), Env: none}, []string{"is empty"}},
		{"command fails", Source{Command: "echo vault sealed >&2; exit 7", Env: none},
			[]string{`password command "echo vault sealed >&2; exit 7" failed`, "exit status 7", "vault sealed", "--password-command"}},
		{"command not found", Source{Command: "/nonexistent/pass show repo", Env: none}, []string{"failed", "exit status 127", "not found"}},
		{"command prints nothing", Source{Command: "true", Env: none}, []string{"printed no password"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := c.src.Read(ctx, "")
			if err == nil {
				t.Fatal("no error")
			}
			for _, w := range c.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not contain %q", err, w)
				}
			}
		})
	}
}

func TestPasswordCommandCancelled(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, err := Source{Command: "echo pw", Env: envMap(nil)}.Read(ctx, "")
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("err = %v, want context.Canceled", err)
	}
}

func TestNoSource(t *testing.T) {
	// Stdin is a pipe, not a terminal: no prompt.
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	defer w.Close()
	for _, src := range []Source{{Env: envMap(nil)}, {Env: envMap(nil), Stdin: r}} {
		_, err := src.Read(context.Background(), "password: ")
		if !errors.Is(err, crypto.ErrNoPassword) {
			t.Fatalf("err = %v, want crypto.ErrNoPassword", err)
		}
		for _, w := range []string{"--password-file", EnvFile, "--password-command", EnvPassword, "terminal"} {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("error %q does not mention %s", err, w)
			}
		}
	}
}

// openPTY returns the master and slave ends of a new pseudo-terminal.
func openPTY(t *testing.T) (master, slave *os.File) {
	t.Helper()
	m, err := os.OpenFile("/dev/ptmx", os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		t.Skipf("no pseudo-terminal (/dev/ptmx): %v", err)
	}
	t.Cleanup(func() { m.Close() })
	if err := unix.IoctlSetPointerInt(int(m.Fd()), unix.TIOCSPTLCK, 0); err != nil {
		t.Skipf("unlock pty: %v", err)
	}
	n, err := unix.IoctlGetInt(int(m.Fd()), unix.TIOCGPTN)
	if err != nil {
		t.Skipf("pty number: %v", err)
	}
	s, err := os.OpenFile("/dev/pts/"+strconv.Itoa(n), os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		t.Skipf("open pty slave: %v", err)
	}
	t.Cleanup(func() { s.Close() })
	return m, s
}

func TestPasswordPrompt(t *testing.T) {
	ctx := context.Background()
	cases := []struct {
		name    string
		typed   string
		confirm bool
		want    string
		wantErr string
		prompts int
	}{
		{"read", "secret\n", false, "secret", "", 1},
		{"read new, same twice", "secret\nsecret\n", true, "secret", "", 2},
		{"read new, differ", "secret\nsecreT\n", true, "", "differ", 2},
		{"empty", "\n", false, "", "empty password", 1},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			master, slave := openPTY(t)
			if _, err := master.WriteString(c.typed); err != nil {
				t.Fatal(err)
			}
			var prompt strings.Builder
			src := Source{Env: envMap(nil), Stdin: slave, Prompt: &prompt}
			read := src.Read
			if c.confirm {
				read = src.ReadNew
			}
			got, err := read(ctx, "password for /repo: ")
			if c.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), c.wantErr) {
					t.Fatalf("err = %v, want %q", err, c.wantErr)
				}
			} else if err != nil || string(got) != c.want {
				t.Fatalf("got %q, %v; want %q", got, err, c.want)
			}
			if !strings.HasPrefix(prompt.String(), "password for /repo: ") || strings.Count(prompt.String(), ": ") != c.prompts {
				t.Fatalf("prompt output %q, want %d prompts", prompt.String(), c.prompts)
			}
		})
	}
	// Any other source wins over the terminal.
	_, slave := openPTY(t)
	got, err := Source{Env: envMap(map[string]string{EnvPassword: "env"}), Stdin: slave}.Read(ctx, "")
	if err != nil || string(got) != "env" {
		t.Fatalf("env with terminal: %q, %v", got, err)
	}
}
