package tape

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

func writeOne(t *testing.T, ms []testMember) (string, Catalog) {
	t.Helper()
	dev := &PathDevice{Path: filepath.Join(t.TempDir(), "vol-%d.tar")}
	cats, err := WriteSet(context.Background(), dev, baseOpts(512, 0), toMembers(ms), nil)
	if err != nil {
		t.Fatal(err)
	}
	return dev.VolumePath(1), cats[0]
}

func TestFlippedByte(t *testing.T) {
	ctx := context.Background()
	ms := makeMembers(10, 6, 3000, 9000)
	p, cat := writeOne(t, ms)
	vol, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	victim := ms[3]
	off := bytes.Index(vol, victim.data[1000:1064])
	if off < 0 {
		t.Fatal("member data not found in the volume")
	}
	vol[off+10] ^= 0x40
	if err := os.WriteFile(p, vol, 0o600); err != nil {
		t.Fatal(err)
	}
	rep, err := VerifyVolume(ctx, openFile(t, p), ReadOptions{BlockSize: 512})
	if !errors.Is(err, ErrVerify) || errors.Is(err, ErrTruncated) || !strings.Contains(err.Error(), victim.name) {
		t.Fatalf("verify = %v, want ErrVerify naming %s", err, victim.name)
	}
	if len(rep.Bad) != 1 || rep.Bad[0].Name != victim.name || len(rep.Good) != len(ms)-1 {
		t.Fatalf("bad = %v, good = %d: want only %s bad", rep.Bad, len(rep.Good), victim.name)
	}
	// With a reference catalog the damage shows as the member ends.
	var sawChecksum []string
	_, err = ReadVolume(ctx, openFile(t, p), ReadOptions{BlockSize: 512, Catalog: &cat}, func(e Entry, r io.Reader) error {
		if _, err := io.ReadAll(r); errors.Is(err, ErrChecksum) {
			sawChecksum = append(sawChecksum, e.Name)
		} else if err != nil {
			return err
		}
		return nil
	})
	if !errors.Is(err, ErrVerify) || !slices.Equal(sawChecksum, []string{victim.name}) {
		t.Fatalf("read with reference: %v, checksum errors for %v", err, sawChecksum)
	}
}

func TestTruncatedVolume(t *testing.T) {
	ctx := context.Background()
	ms := makeMembers(11, 8, 3000, 9000)
	p, cat := writeOne(t, ms)
	fi, _ := os.Stat(p)
	if err := os.Truncate(p, fi.Size()*6/10); err != nil {
		t.Fatal(err)
	}
	v, err := ListVolume(ctx, openFile(t, p), ReadOptions{BlockSize: 512})
	if err != nil || !v.Truncated || v.Catalog != nil || v.TruncatedIn == "" {
		t.Fatalf("list truncated volume: %+v, %v", v, err)
	}
	_, err = VerifyVolume(ctx, openFile(t, p), ReadOptions{BlockSize: 512})
	if !errors.Is(err, ErrTruncated) || !strings.Contains(err.Error(), "truncated") {
		t.Fatalf("verify = %v, want ErrTruncated", err)
	}
	// Against the catalog, every member after the cut is named.
	rep, err := VerifyVolume(ctx, openFile(t, p), ReadOptions{BlockSize: 512, Catalog: &cat})
	if !errors.Is(err, ErrTruncated) || rep.EndOfMedia {
		t.Fatalf("verify with catalog = %v", err)
	}
	if len(rep.Good)+len(rep.Bad) != len(ms) || len(rep.Good) == 0 || len(rep.Bad) == 0 {
		t.Fatalf("good %d + bad %d, want %d, both non-zero", len(rep.Good), len(rep.Bad), len(ms))
	}
	for i, e := range rep.Good {
		if e.Name != ms[i].name {
			t.Fatalf("good member %d is %s, want %s", i, e.Name, ms[i].name)
		}
	}
	for i, b := range rep.Bad {
		if want := ms[len(rep.Good)+i].name; b.Name != want || !strings.Contains(err.Error(), want) {
			t.Fatalf("bad member %d is %v, want %s named in the error", i, b, want)
		}
	}
}

func TestNotAVolume(t *testing.T) {
	for _, data := range [][]byte{nil, []byte("hello"), make([]byte, 4096)} {
		if _, err := ReadLabel(context.Background(), bytes.NewReader(data), ReadOptions{BlockSize: 512}); !errors.Is(err, ErrNotVolume) {
			t.Errorf("ReadLabel(%q...) = %v, want ErrNotVolume", data[:min(len(data), 8)], err)
		}
	}
}

func TestChangeVolumeCommand(t *testing.T) {
	if _, err := os.Stat("/bin/sh"); err != nil {
		t.Skip("/bin/sh missing")
	}
	ctx := context.Background()
	dir := t.TempDir()
	drive := filepath.Join(dir, "drive")
	// The command "ejects" the full volume by moving it aside and logs
	// what it was told.
	cmd := fmt.Sprintf(`echo "$STASIS_TAPE_VOLUME $STASIS_TAPE_DEVICE" >> %[1]s/log && mv "$STASIS_TAPE_DEVICE" "%[1]s/ejected-$(($STASIS_TAPE_VOLUME - 1))"`, dir)
	dev := &PathDevice{Path: drive, ChangeVolume: cmd}
	ms := makeMembers(12, 20, 1000, 20000)
	cats, err := WriteSet(ctx, dev, baseOpts(4096, 64<<10), toMembers(ms), nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(cats) < 3 {
		t.Fatalf("%d volumes, want several", len(cats))
	}
	logged, _ := os.ReadFile(filepath.Join(dir, "log"))
	var want string
	for s := 2; s <= len(cats); s++ {
		want += fmt.Sprintf("%d %s\n", s, drive)
	}
	if string(logged) != want {
		t.Fatalf("change-volume log:\n%s\nwant\n%s", logged, want)
	}
	for s := 1; s <= len(cats); s++ {
		p := filepath.Join(dir, fmt.Sprintf("ejected-%d", s))
		if s == len(cats) {
			p = drive
		}
		l, err := ReadLabel(ctx, openFile(t, p), ReadOptions{BlockSize: 4096})
		if err != nil || l.Volume != s {
			t.Fatalf("%s: label %+v, %v; want volume %d", p, l, err, s)
		}
	}

	// A failing command aborts, naming the volume.
	dev = &PathDevice{Path: filepath.Join(dir, "drive2"), ChangeVolume: "echo no tape >&2; exit 7"}
	_, err = WriteSet(ctx, dev, baseOpts(4096, 64<<10), toMembers(ms), nil)
	if !errors.Is(err, ErrChangeVolume) || !strings.Contains(err.Error(), "volume 2") || !strings.Contains(err.Error(), "no tape") {
		t.Fatalf("err = %v, want ErrChangeVolume naming volume 2 and the command's message", err)
	}
	// A single path without a command holds one volume only.
	dev = &PathDevice{Path: filepath.Join(dir, "drive3")}
	if _, err = WriteSet(ctx, dev, baseOpts(4096, 64<<10), toMembers(ms), nil); !errors.Is(err, ErrChangeVolume) {
		t.Fatalf("err = %v, want ErrChangeVolume", err)
	}
}
