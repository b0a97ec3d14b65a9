package tape

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

var testTime = time.Date(2026, 11, 20, 3, 0, 0, 0, time.UTC)

type testMember struct {
	name string
	data []byte
}

// makeMembers returns n members shaped like repository files, with sizes
// drawn from [minSize, maxSize], from a fixed seed.
func makeMembers(seed int64, n, minSize, maxSize int) []testMember {
	rng := rand.New(rand.NewSource(seed))
	out := []testMember{{"config", []byte(`{"version":1}`)}}
	for i := 1; i < n; i++ {
		data := make([]byte, minSize+rng.Intn(maxSize-minSize+1))
		rng.Read(data)
		var id [32]byte
		rng.Read(id[:])
		name := fmt.Sprintf("packs/%02x/%x", id[0], id)
		if i%5 == 0 {
			name = fmt.Sprintf("snapshots/%x", id)
		}
		out = append(out, testMember{name, data})
	}
	return out
}

func toMembers(ms []testMember) []Member {
	out := make([]Member, len(ms))
	for i, m := range ms {
		data := m.data
		out[i] = Member{Name: m.name, Size: int64(len(data)), Open: func(context.Context) (io.ReadCloser, error) {
			return io.NopCloser(bytes.NewReader(data)), nil
		}}
	}
	return out
}

func names(ms []testMember) []string {
	var out []string
	for _, m := range ms {
		out = append(out, m.name)
	}
	return out
}

func entryNames(es []Entry) []string {
	var out []string
	for _, e := range es {
		out = append(out, e.Name)
	}
	return out
}

func baseOpts(bs int, vs int64) WriteOptions {
	return WriteOptions{BlockSize: bs, VolumeSize: vs, Label: "weekly", RepositoryID: "repo-1",
		SetID: "set-1", Now: func() time.Time { return testTime }}
}

func openFile(t *testing.T, p string) *os.File {
	t.Helper()
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return f
}

// readAllMembers reads a volume with ReadVolume and returns the data of
// each good member.
func readAllMembers(t *testing.T, p string, bs int, ref *Catalog) (map[string][]byte, *Report, error) {
	t.Helper()
	got := map[string][]byte{}
	rep, err := ReadVolume(context.Background(), openFile(t, p), ReadOptions{BlockSize: bs, Catalog: ref}, func(e Entry, r io.Reader) error {
		b, err := io.ReadAll(r)
		if err != nil {
			return err
		}
		if int64(len(b)) != e.Size {
			t.Errorf("member %s: read %d bytes, size %d", e.Name, len(b), e.Size)
		}
		got[e.Name] = b
		return nil
	})
	if rep != nil {
		for k := range got {
			if !slices.ContainsFunc(rep.Good, func(e Entry) bool { return e.Name == k }) {
				delete(got, k)
			}
		}
	}
	return got, rep, err
}

func gnuTar(t *testing.T) string {
	t.Helper()
	p, err := exec.LookPath("tar")
	if err != nil {
		t.Skip("GNU tar not installed (Debian package tar): skipping the plain-tar check")
	}
	out, err := exec.Command(p, "--version").Output()
	if err != nil || !strings.Contains(string(out), "GNU tar") {
		t.Skip("tar is not GNU tar: skipping the plain-tar check")
	}
	return p
}

func TestSingleVolumeRoundTrip(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	ms := makeMembers(1, 12, 0, 700<<10)
	ms = append(ms, testMember{"keys/" + strings.Repeat("ab", 32), []byte("key material")},
		testMember{"deep/" + strings.Repeat("long-directory-name/", 8) + "file", []byte("long name needs pax")})
	drive := &tapeDrive{dir: dir, blockSize: DefaultBlockSize}
	cats, err := WriteSet(ctx, drive, baseOpts(0, 0), toMembers(ms), nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(cats) != 1 || cats[0].Volume != 1 || !cats[0].EndsSession || cats[0].Truncated {
		t.Fatalf("catalogs = %+v, want one complete volume 1", cats)
	}
	if got := entryNames(cats[0].Members); !slices.Equal(got, names(ms)) {
		t.Fatalf("catalog members = %v, want %v", got, names(ms))
	}
	fi, err := os.Stat(drive.path(1))
	if err != nil {
		t.Fatal(err)
	}
	if fi.Size()%DefaultBlockSize != 0 || int64(drive.writes)*DefaultBlockSize != fi.Size() {
		t.Fatalf("volume size %d, %d block writes: not whole blocks", fi.Size(), drive.writes)
	}

	l, err := ReadLabel(ctx, openFile(t, drive.path(1)), ReadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if l.SetID != "set-1" || l.Volume != 1 || l.Label != "weekly" || l.RepositoryID != "repo-1" ||
		!l.Time.Equal(testTime) || l.BlockSize != DefaultBlockSize {
		t.Fatalf("label = %+v", l)
	}
	v, err := ListVolume(ctx, openFile(t, drive.path(1)), ReadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if v.Truncated || v.Catalog == nil || len(v.Earlier) != 0 || !slices.Equal(v.Catalog.Members, cats[0].Members) {
		t.Fatalf("list = %+v", v)
	}
	got, rep, err := readAllMembers(t, drive.path(1), 0, nil)
	if err != nil || !rep.OK() {
		t.Fatalf("read volume: %v", err)
	}
	for _, m := range ms {
		if !bytes.Equal(got[m.name], m.data) {
			t.Errorf("member %s differs after reading back", m.name)
		}
	}

	// GNU tar lists the volume and extracts it with no stasis.
	tarBin := gnuTar(t)
	out, err := exec.Command(tarBin, "-b", "512", "-tf", drive.path(1)).CombinedOutput()
	if err != nil {
		t.Fatalf("tar -tf: %v\n%s", err, out)
	}
	want := append(append([]string{LabelName}, names(ms)...), CatalogName(1))
	if got := strings.Split(strings.TrimSpace(string(out)), "\n"); !slices.Equal(got, want) {
		t.Fatalf("tar -tf lists\n%v\nwant\n%v", got, want)
	}
	x := t.TempDir()
	if out, err := exec.Command(tarBin, "-b", "512", "-xf", drive.path(1), "-C", x).CombinedOutput(); err != nil {
		t.Fatalf("tar -xf: %v\n%s", err, out)
	}
	for _, m := range ms {
		b, err := os.ReadFile(filepath.Join(x, m.name))
		if err != nil || !bytes.Equal(b, m.data) {
			t.Errorf("tar -xf %s: %v, equal=%v", m.name, err, bytes.Equal(b, m.data))
		}
	}
	lb, _ := os.ReadFile(filepath.Join(x, LabelName))
	if l2, err := DecodeLabel(lb); err != nil || l2 != l {
		t.Errorf("extracted label = %+v, %v", l2, err)
	}
	cb, _ := os.ReadFile(filepath.Join(x, CatalogName(1)))
	if c, err := DecodeCatalog(cb); err != nil || !slices.Equal(c.Members, cats[0].Members) {
		t.Errorf("extracted catalog: %v", err)
	}
}

// writeMulti writes ms in volumes of vs bytes with 4 KiB blocks to
// vol-%03d.tar files in a new directory.
func writeMulti(t *testing.T, ms []testMember, vs int64) (*PathDevice, []Catalog) {
	t.Helper()
	dev := &PathDevice{Path: filepath.Join(t.TempDir(), "vol-%03d.tar")}
	cats, err := WriteSet(context.Background(), dev, baseOpts(4096, vs), toMembers(ms), nil)
	if err != nil {
		t.Fatal(err)
	}
	return dev, cats
}

func TestMultiVolume(t *testing.T) {
	ctx := context.Background()
	ms := makeMembers(2, 30, 1000, 20000)
	const vs = 64 << 10
	dev, cats := writeMulti(t, ms, vs)
	if len(cats) < 4 {
		t.Fatalf("%d volumes, want several", len(cats))
	}
	var all []Entry
	for i, c := range cats {
		if c.Volume != i+1 || c.EndsSession != (i == len(cats)-1) || c.Truncated || len(c.Members) == 0 {
			t.Fatalf("catalog %d: volume %d ends=%v truncated=%v members=%d", i, c.Volume, c.EndsSession, c.Truncated, len(c.Members))
		}
		all = append(all, c.Members...)
		fi, err := os.Stat(dev.VolumePath(c.Volume))
		if err != nil {
			t.Fatal(err)
		}
		if fi.Size() > vs || fi.Size()%4096 != 0 {
			t.Errorf("volume %d is %d bytes, capacity %d, block 4096", c.Volume, fi.Size(), vs)
		}
	}
	if got := entryNames(all); !slices.Equal(got, names(ms)) {
		t.Fatalf("members over all volumes = %v, want in order %v", got, names(ms))
	}

	// Every volume is a tar archive of its own, with whole members only.
	for _, c := range cats {
		tr := tar.NewReader(openFile(t, dev.VolumePath(c.Volume)))
		var listed []string
		for {
			h, err := tr.Next()
			if err == io.EOF {
				break
			}
			if err != nil {
				t.Fatalf("volume %d: %v", c.Volume, err)
			}
			listed = append(listed, h.Name)
		}
		var want []string
		want = append(want, LabelName)
		for s := 1; s < c.Volume; s++ {
			want = append(want, CatalogName(s))
		}
		want = append(append(want, entryNames(c.Members)...), CatalogName(c.Volume))
		if !slices.Equal(listed, want) {
			t.Fatalf("volume %d lists %v, want %v", c.Volume, listed, want)
		}
	}
	if tarBin, err := exec.LookPath("tar"); err == nil {
		for _, c := range cats {
			if out, err := exec.Command(tarBin, "-b", "8", "-tf", dev.VolumePath(c.Volume)).CombinedOutput(); err != nil {
				t.Fatalf("GNU tar -tf volume %d: %v\n%s", c.Volume, err, out)
			}
		}
	}

	// Read the volumes in shuffled order: the set is complete.
	order := rand.New(rand.NewSource(3)).Perm(len(cats))
	var vols []*Volume
	data := map[string][]byte{}
	for _, i := range order {
		p := dev.VolumePath(i + 1)
		v, err := ListVolume(ctx, openFile(t, p), ReadOptions{BlockSize: 4096})
		if err != nil {
			t.Fatal(err)
		}
		if len(v.Earlier) != i {
			t.Errorf("volume %d carries %d earlier catalogs, want %d", i+1, len(v.Earlier), i)
		}
		vols = append(vols, v)
		got, _, err := readAllMembers(t, p, 4096, nil)
		if err != nil {
			t.Fatal(err)
		}
		for k, b := range got {
			data[k] = b
		}
	}
	set, err := MergeCatalogs(vols...)
	if err != nil {
		t.Fatal(err)
	}
	if len(set.Missing) != 0 || set.Highest != len(cats) || !set.EndsSession || len(set.Unverified) != 0 {
		t.Fatalf("merged set: missing %v highest %d ends %v unverified %v", set.Missing, set.Highest, set.EndsSession, set.Unverified)
	}
	if !slices.Equal(set.Members, all) {
		t.Fatalf("merged members differ from the written catalogs")
	}
	for _, m := range ms {
		if !bytes.Equal(data[m.name], m.data) {
			t.Errorf("member %s differs", m.name)
		}
	}

	// Without volume 2, MergeCatalogs names it and its members.
	var without []*Volume
	for _, v := range vols {
		if v.Label.Volume != 2 {
			without = append(without, v)
		}
	}
	set, err = MergeCatalogs(without...)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(set.Missing, []int{2}) || !slices.Equal(set.MissingMembers(), cats[1].Members) {
		t.Fatalf("missing = %v, members %v; want [2] and %v", set.Missing, entryNames(set.MissingMembers()), entryNames(cats[1].Members))
	}
	// Without the last volume, nothing says the set is complete.
	set, err = MergeCatalogs(vols[:0:0]...)
	if err == nil {
		t.Fatal("merging no volumes succeeded")
	}
	var firstN []*Volume
	for _, v := range vols {
		if v.Label.Volume < len(cats) {
			firstN = append(firstN, v)
		}
	}
	set, err = MergeCatalogs(firstN...)
	if err != nil || set.EndsSession || len(set.Missing) != 0 {
		t.Fatalf("without the last volume: ends=%v missing=%v err=%v; want an unfinished set", set.EndsSession, set.Missing, err)
	}
}

func TestIncrementalAppend(t *testing.T) {
	ctx := context.Background()
	ms := makeMembers(4, 10, 1000, 20000)
	dev, first := writeMulti(t, ms, 64<<10)
	more := makeMembers(5, 6, 1000, 20000)[1:]
	cats, err := WriteSet(ctx, dev, WriteOptions{BlockSize: 4096, VolumeSize: 64 << 10}, toMembers(more), first)
	if err != nil {
		t.Fatal(err)
	}
	if cats[0].Volume != len(first)+1 || cats[0].SetID != "set-1" {
		t.Fatalf("appended volume %d of set %s, want %d of set-1", cats[0].Volume, cats[0].SetID, len(first)+1)
	}
	v, err := ListVolume(ctx, openFile(t, dev.VolumePath(cats[0].Volume)), ReadOptions{BlockSize: 4096})
	if err != nil {
		t.Fatal(err)
	}
	set, err := MergeCatalogs(v)
	if err != nil {
		t.Fatal(err)
	}
	if got := entryNames(set.Members); !slices.Equal(got, append(names(ms), names(more)...)) {
		t.Fatalf("set members %v", got)
	}
	if _, err := WriteSet(ctx, dev, WriteOptions{SetID: "other"}, toMembers(more), first); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("append to another set: %v", err)
	}
}

func TestMemberTooLarge(t *testing.T) {
	ms := []testMember{{"config", []byte("x")}, {"packs/00/big", make([]byte, 100<<10)}}
	dev := &PathDevice{Path: filepath.Join(t.TempDir(), "vol-%d.tar")}
	_, err := WriteSet(context.Background(), dev, baseOpts(4096, 64<<10), toMembers(ms), nil)
	if !errors.Is(err, ErrMemberTooLarge) || !strings.Contains(err.Error(), "packs/00/big") {
		t.Fatalf("err = %v, want ErrMemberTooLarge naming packs/00/big", err)
	}
	if _, err := os.Stat(dev.VolumePath(1)); !os.IsNotExist(err) {
		t.Fatalf("a volume was written before the size check: %v", err)
	}
}

func TestInvalidNames(t *testing.T) {
	for _, n := range []string{"", ".", "/etc/passwd", "../x", "a/../../x", "a//b", "a/./b", "a/", "STASIS-VOLUME.json", "STASIS-CATALOG-000001.json", `a\b`} {
		if err := ValidName(n); !errors.Is(err, ErrInvalidName) {
			t.Errorf("ValidName(%q) = %v", n, err)
		}
		ms := []Member{{Name: n, Size: 0, Open: func(context.Context) (io.ReadCloser, error) { return io.NopCloser(nil), nil }}}
		if _, err := WriteSet(context.Background(), &tapeDrive{dir: t.TempDir(), blockSize: 512}, WriteOptions{BlockSize: 512}, ms, nil); !errors.Is(err, ErrInvalidName) {
			t.Errorf("WriteSet with %q: %v", n, err)
		}
	}
	for _, n := range []string{"config", "keys/ab", "packs/ab/" + strings.Repeat("f", 64), "snapshots/x..y"} {
		if err := ValidName(n); err != nil {
			t.Errorf("ValidName(%q) = %v", n, err)
		}
	}
}

// TestMemberOffsets: the reader a MemberFunc receives tells where the
// member's bytes are in the volume file, for a reader that reads them in
// place (tape restore from volume files).
func TestMemberOffsets(t *testing.T) {
	ms := makeMembers(11, 40, 1, 20<<10)
	dev, cats := writeMulti(t, ms, 128<<10)
	want := map[string][]byte{}
	for _, m := range ms {
		want[m.name] = m.data
	}
	seen := 0
	for i := range cats {
		p := fmt.Sprintf(dev.Path, i+1)
		vol, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		_, err = ReadVolume(context.Background(), openFile(t, p), ReadOptions{BlockSize: 4096}, func(e Entry, r io.Reader) error {
			at, ok := r.(Offsetter)
			if !ok {
				t.Fatalf("member %s: the reader has no offset", e.Name)
			}
			off := at.Offset()
			if off < 0 || off+e.Size > int64(len(vol)) || !bytes.Equal(vol[off:off+e.Size], want[e.Name]) {
				t.Errorf("volume %d, member %s: the bytes at offset %d are not the member's", i+1, e.Name, off)
			}
			seen++
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	if seen != len(ms) {
		t.Errorf("%d members seen, want %d", seen, len(ms))
	}
}
