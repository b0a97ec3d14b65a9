package main

import (
	"bytes"
	"context"
	"io/fs"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/stasisbackup/stasis/cmd/stasis/internal/password"
	"github.com/stasisbackup/stasis/internal/enginetest"
	"github.com/stasisbackup/stasis/internal/index"
	"github.com/stasisbackup/stasis/repo"
	"github.com/stasisbackup/stasis/repo/blob"
	"github.com/stasisbackup/stasis/repo/crypto"
	"golang.org/x/sys/unix"
)

// Key files made by in-process tests use the cheap test parameters; the
// built binary tunes argon2id as in real use.
func init() { newKDF = func() crypto.KDFParams { return crypto.TestKDFParams } }

// cli runs the CLI in-process with no terminal on stdin.
func cli(t *testing.T, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var out, errb bytes.Buffer
	code = run(context.Background(), args, strings.NewReader(""), &out, &errb)
	return code, out.String(), errb.String()
}

func cliOK(t *testing.T, args ...string) string {
	t.Helper()
	code, out, errs := cli(t, args...)
	if code != 0 {
		t.Fatalf("stasis %s: exit %d\n%s%s", strings.Join(args, " "), code, out, errs)
	}
	return out
}

// noPasswordEnv clears every password source of the environment.
func noPasswordEnv(t *testing.T) {
	for _, v := range []string{"STASIS_REPO", password.EnvPassword, password.EnvFile, envNewPassword, envNewPasswordFile} {
		t.Setenv(v, "")
	}
}

// randomBytes returns n bytes from a fixed seed (incompressible).
func randomBytes(seed uint64, n int) []byte {
	rng := rand.New(rand.NewPCG(seed, 0))
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(rng.Uint32())
	}
	return b
}

// filesContaining returns the files under dir whose bytes contain marker.
func filesContaining(t *testing.T, dir string, marker []byte) []string {
	t.Helper()
	var hits []string
	n := 0
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		n++
		data, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		if bytes.Contains(data, marker) {
			hits = append(hits, p)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if n < 4 {
		t.Fatalf("only %d files under %s: the scan proves nothing", n, dir)
	}
	return hits
}

// TestNoPlaintextInRepository backs up files with a marker in their content,
// name, host and tag, and searches every file of the repository (packs,
// snapshots, config, keys, index.db) for it. With --insecure-no-password the
// same scan finds it, which shows that the scan works.
func TestNoPlaintextInRepository(t *testing.T) {
	noPasswordEnv(t)
	t.Setenv(password.EnvPassword, "marker test password")
	marker := "QX7-MARKER-zebra-4417"
	src := filepath.Join(t.TempDir(), "src")
	os.MkdirAll(filepath.Join(src, "dir-"+marker), 0o755)
	content := append(append(randomBytes(1, 64<<10), marker...), randomBytes(2, 64<<10)...)
	os.WriteFile(filepath.Join(src, "dir-"+marker, "file-"+marker+".txt"), content, 0o600)
	os.WriteFile(filepath.Join(src, "X500.db"), bytes.Repeat([]byte("page "+marker+" of records\n"), 2000), 0o600)

	for _, tc := range []struct {
		name  string
		flags []string
		found bool
	}{
		{"encrypted", nil, false},
		{"insecure", []string{"--insecure-no-password"}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "repo")
			args := append([]string{"backup", "--init", "--repo", dir, "--host", "host-" + marker, "--tag", "tag-" + marker}, tc.flags...)
			cliOK(t, append(args, src)...)
			cliOK(t, "check", "--read-data", "--repo", dir)
			hits := filesContaining(t, dir, []byte(marker))
			if tc.found && len(hits) == 0 {
				t.Fatalf("unencrypted repository: marker not found anywhere; the scan is broken")
			}
			if !tc.found && len(hits) > 0 {
				t.Fatalf("marker found in plaintext in %v", hits)
			}
			// Whatever the layout, the data comes back.
			target := t.TempDir()
			cliOK(t, "restore", "latest", "--repo", dir, "--target", target)
			got, _ := os.ReadFile(filepath.Join(target, src, "dir-"+marker, "file-"+marker+".txt"))
			if !bytes.Equal(got, content) {
				t.Error("restored file differs")
			}
		})
	}
}

func TestPasswordErrors(t *testing.T) {
	noPasswordEnv(t)
	dir := filepath.Join(t.TempDir(), "repo")

	// init with no password anywhere and no terminal: exit 12, all options listed.
	code, _, errs := cli(t, "init", "--repo", dir)
	if code != exitPassword {
		t.Errorf("init without password: exit %d, want %d: %s", code, exitPassword, errs)
	}
	for _, opt := range []string{"--password-file", "--password-command", "STASIS_PASSWORD", "terminal", "--insecure-no-password"} {
		if !strings.Contains(errs, opt) {
			t.Errorf("init without password: %q does not mention %s", errs, opt)
		}
	}
	if _, err := os.Stat(filepath.Join(dir, "config")); err == nil {
		t.Fatal("init without password created a repository")
	}

	pwFile := filepath.Join(t.TempDir(), "pw")
	os.WriteFile(pwFile, []byte("file password\n"), 0o600)
	out := cliOK(t, "init", "--repo", dir, "--password-file", pwFile)
	if !strings.Contains(out, "created stasis repository") {
		t.Errorf("init: %s", out)
	}

	// Each source opens it; one trailing newline of a file is not part of the password.
	cliOK(t, "snapshots", "--repo", dir, "--password-file", pwFile)
	cliOK(t, "snapshots", "--repo", dir, "--password-command", "echo 'file password'")
	t.Setenv(password.EnvFile, pwFile)
	cliOK(t, "snapshots", "--repo", dir)
	t.Setenv(password.EnvFile, "")
	t.Setenv(password.EnvPassword, "file password")
	cliOK(t, "snapshots", "--repo", dir)

	// Wrong password: exit 12, saying so.
	t.Setenv(password.EnvPassword, "guess")
	code, out, errs = cli(t, "snapshots", "--repo", dir)
	if code != exitPassword || !strings.Contains(errs, "wrong password for repository "+dir+" (no key file matched)") {
		t.Errorf("wrong password: exit %d\n%s%s", code, out, errs)
	}
	// --password-file wins over STASIS_PASSWORD.
	cliOK(t, "snapshots", "--repo", dir, "--password-file", pwFile)

	// No password: exit 12 listing the options.
	t.Setenv(password.EnvPassword, "")
	code, _, errs = cli(t, "check", "--repo", dir)
	if code != exitPassword || !strings.Contains(errs, "--password-file") || !strings.Contains(errs, "STASIS_PASSWORD") {
		t.Errorf("no password: exit %d, %s", code, errs)
	}
	// A failing password command is reported with its output.
	code, _, errs = cli(t, "check", "--repo", dir, "--password-command", "echo vault sealed >&2; exit 3")
	if code == 0 || !strings.Contains(errs, "vault sealed") {
		t.Errorf("failing password command: exit %d, %s", code, errs)
	}
}

func TestKeyCommands(t *testing.T) {
	noPasswordEnv(t)
	dir := filepath.Join(t.TempDir(), "repo")
	pw := func(s string) string {
		p := filepath.Join(t.TempDir(), "pw")
		os.WriteFile(p, []byte(s), 0o600)
		return p
	}
	first, second, third := pw("first"), pw("second"), pw("third")
	cliOK(t, "init", "--repo", dir, "--password-file", first)

	out := cliOK(t, "key", "list", "--repo", dir, "--password-file", first)
	if strings.Count(out, "\n") != 2 || !strings.Contains(out, "argon2id") {
		t.Errorf("key list of one key:\n%s", out)
	}
	// add needs a new password source; with none and no terminal it says how.
	code, _, errs := cli(t, "key", "add", "--repo", dir, "--password-file", first)
	if code != exitUsage || !strings.Contains(errs, "--new-password-file") {
		t.Errorf("key add without new password: exit %d, %s", code, errs)
	}
	out = cliOK(t, "key", "add", "--repo", dir, "--password-file", first, "--new-password-file", second)
	if !strings.HasPrefix(out, "added key ") {
		t.Fatalf("key add: %s", out)
	}
	secondID := strings.TrimSpace(strings.TrimPrefix(out, "added key "))

	out = cliOK(t, "key", "list", "--repo", dir, "--password-file", second)
	var firstID string
	for _, line := range strings.Split(strings.TrimSpace(out), "\n")[1:] {
		f := strings.Fields(line)
		switch {
		case f[0] == "*" && f[1] == secondID:
		case f[0] != "*":
			firstID = f[0]
		default:
			t.Errorf("key list: unexpected line %q", line)
		}
	}
	if firstID == "" {
		t.Fatalf("key list with the second password:\n%s", out)
	}
	// The second password works for everything.
	cliOK(t, "check", "--repo", dir, "--password-file", second)

	// The key in use cannot remove itself.
	code, _, errs = cli(t, "key", "remove", secondID, "--repo", dir, "--password-file", second)
	if code != exitFatal || !strings.Contains(errs, "in use") {
		t.Errorf("remove key in use: exit %d, %s", code, errs)
	}
	// With the second password, the first key goes; the first password then fails.
	if out := cliOK(t, "key", "remove", firstID, "--repo", dir, "--password-file", second); !strings.Contains(out, "removed key "+firstID) {
		t.Errorf("key remove: %s", out)
	}
	if code, _, errs := cli(t, "snapshots", "--repo", dir, "--password-file", first); code != exitPassword {
		t.Errorf("removed key: exit %d, %s", code, errs)
	}
	// The last key cannot be removed.
	code, _, errs = cli(t, "key", "remove", secondID, "--repo", dir, "--password-file", second)
	if code != exitFatal || !strings.Contains(errs, "last key") {
		t.Errorf("remove last key: exit %d, %s", code, errs)
	}
	// passwd replaces the key in use.
	t.Setenv(envNewPasswordFile, third)
	if out := cliOK(t, "key", "passwd", "--repo", dir, "--password-file", second); !strings.Contains(out, "replaces key "+secondID) {
		t.Errorf("key passwd: %s", out)
	}
	if code, _, _ := cli(t, "snapshots", "--repo", dir, "--password-file", second); code != exitPassword {
		t.Errorf("old password after passwd: exit %d", code)
	}
	cliOK(t, "snapshots", "--repo", dir, "--password-file", third)

	// Keys of an unencrypted repository: a clear error.
	plain := filepath.Join(t.TempDir(), "plain")
	cliOK(t, "init", "--repo", plain, "--insecure-no-password")
	if code, _, errs := cli(t, "key", "list", "--repo", plain); code != exitFatal || !strings.Contains(errs, "not encrypted") {
		t.Errorf("key list of plain repository: exit %d, %s", code, errs)
	}
}

// TestTamperedCiphertextNamedByCheckAndRestore flips one byte inside the
// sealed bytes of a file's chunk: check --read-data and restore both name
// the file, and restore writes no garbage in its place.
func TestTamperedCiphertextNamedByCheckAndRestore(t *testing.T) {
	noPasswordEnv(t)
	t.Setenv(password.EnvPassword, "tamper password")
	src := filepath.Join(t.TempDir(), "src")
	os.MkdirAll(src, 0o755)
	victim := randomBytes(3, 512<<10) // one chunk (the default profile's minimum) in a frame of its own (not below the frame size)
	os.WriteFile(filepath.Join(src, "victim.bin"), victim, 0o600)
	os.WriteFile(filepath.Join(src, "bystander.txt"), []byte("I am fine\n"), 0o600)
	dir := filepath.Join(t.TempDir(), "repo")
	cliOK(t, "backup", "--init", "--repo", dir, src)

	// Find the victim's chunk: the only data blob of its size.
	r, err := repo.Open(context.Background(), enginetest.Local(dir), repo.OpenOptions{Password: func(context.Context) ([]byte, error) { return []byte("tamper password"), nil }})
	if err != nil {
		t.Fatal(err)
	}
	var loc index.Location
	r.Index().EachBlob(func(id blob.ID, l index.Location) error {
		if l.Type == blob.Data && l.RawLength == uint32(len(victim)) {
			loc = l
		}
		return nil
	})
	r.Close()
	if loc.Length != uint32(len(victim))+crypto.Overhead {
		t.Fatalf("victim chunk %+v: want raw storage plus %d bytes of AEAD overhead", loc, crypto.Overhead)
	}
	name := filepath.Join(dir, repo.PackName(loc.Pack))
	data, err := os.ReadFile(name)
	if err != nil {
		t.Fatal(err)
	}
	data[loc.Offset+crypto.NonceSize+1000] ^= 0x01
	if err := os.WriteFile(name, data, 0o600); err != nil {
		t.Fatal(err)
	}

	code, out, errs := cli(t, "check", "--read-data", "--repo", dir)
	if code == 0 || !strings.Contains(out+errs, filepath.Join(src, "victim.bin")) {
		t.Errorf("check --read-data: exit %d; want damage naming %s\n%s%s", code, filepath.Join(src, "victim.bin"), out, errs)
	}
	if strings.Contains(out+errs, "bystander.txt") {
		t.Errorf("check names an intact file:\n%s%s", out, errs)
	}
	target := t.TempDir()
	code, out, errs = cli(t, "restore", "latest", "--repo", dir, "--target", target)
	if code == 0 || !strings.Contains(out+errs, "victim.bin") {
		t.Errorf("restore: exit %d; want an error naming victim.bin\n%s%s", code, out, errs)
	}
	if got, err := os.ReadFile(filepath.Join(target, src, "victim.bin")); err == nil && !bytes.Equal(got, victim) {
		t.Error("restore wrote garbage for the tampered file")
	}
	if got, err := os.ReadFile(filepath.Join(target, src, "bystander.txt")); err != nil || string(got) != "I am fine\n" {
		t.Errorf("intact file not restored: %q, %v", got, err)
	}
}

// ptyPair returns the master and slave ends of a new pseudo-terminal.
func ptyPair(t *testing.T) (master, slave *os.File) {
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

// onTerminal runs the CLI with stdin on a pseudo-terminal where typed is
// already typed.
func onTerminal(t *testing.T, typed string, args ...string) (int, string, string) {
	t.Helper()
	master, slave := ptyPair(t)
	if _, err := master.WriteString(typed); err != nil {
		t.Fatal(err)
	}
	var out, errb bytes.Buffer
	code := run(context.Background(), args, slave, &out, &errb)
	return code, out.String(), errb.String()
}

func TestPasswordPromptOnTerminal(t *testing.T) {
	noPasswordEnv(t)
	dir := filepath.Join(t.TempDir(), "repo")
	// init asks twice; two different answers create nothing.
	code, _, errs := onTerminal(t, "typed once\ntyped twice\n", "init", "--repo", dir)
	if code == 0 || !strings.Contains(errs, "differ") {
		t.Fatalf("init with differing passwords: exit %d, %s", code, errs)
	}
	if _, err := os.Stat(filepath.Join(dir, "config")); err == nil {
		t.Fatal("init with differing passwords created a repository")
	}
	code, _, errs = onTerminal(t, "on a tty\non a tty\n", "init", "--repo", dir)
	if code != 0 || strings.Count(errs, "password") != 2 {
		t.Fatalf("init on a terminal: exit %d, prompts %q", code, errs)
	}
	// Other commands ask once.
	code, _, errs = onTerminal(t, "on a tty\n", "snapshots", "--repo", dir)
	if code != 0 || !strings.Contains(errs, "enter password for repository "+dir) {
		t.Fatalf("snapshots on a terminal: exit %d, %q", code, errs)
	}
	code, _, errs = onTerminal(t, "not it\n", "snapshots", "--repo", dir)
	if code != exitPassword || !strings.Contains(errs, "wrong password") {
		t.Fatalf("wrong password on a terminal: exit %d, %q", code, errs)
	}
}

// A bad new password source is named by its own flag or variable, not by
// the --password-file/--password-command of the current password.
func TestNewPasswordErrorsNameTheirSource(t *testing.T) {
	noPasswordEnv(t)
	dir := t.TempDir()
	repoDir, pw := filepath.Join(dir, "repo"), filepath.Join(dir, "pw")
	os.WriteFile(pw, []byte("old\n"), 0o600)
	cliOK(t, "init", "--repo", repoDir, "--password-file", pw)
	missing := filepath.Join(dir, "missing")
	for _, c := range []struct {
		args []string
		env  string
		want string
	}{
		{args: []string{"--new-password-file", missing}, want: "(from --new-password-file)"},
		{env: missing, want: "(from " + envNewPasswordFile + ")"},
		{args: []string{"--new-password-command", "exit 3"}, want: "fix the command given with --new-password-command"},
	} {
		t.Setenv(envNewPasswordFile, c.env)
		for _, sub := range []string{"add", "passwd"} {
			args := append([]string{"key", sub, "--repo", repoDir, "--password-file", pw}, c.args...)
			code, _, errs := cli(t, args...)
			if code == 0 || !strings.Contains(errs, c.want) || strings.Contains(errs, "(from --password-file)") {
				t.Errorf("stasis %s: exit %d, stderr %q; want a failure naming %q", strings.Join(args, " "), code, errs, c.want)
			}
		}
	}
}
