package tape

import (
	"bytes"
	"context"
	"errors"
	"os"
	"os/exec"
	"slices"
	"strings"
	"syscall"
	"testing"
)

// checkSet reads every volume of drive, merges them and checks that every
// member of ms is there once, whole and in order.
func checkSet(t *testing.T, drive *tapeDrive, cats []Catalog, ms []testMember) []*Volume {
	t.Helper()
	var all []Entry
	for i, c := range cats {
		all = append(all, c.Members...)
		if c.Truncated || len(c.Dropped) > 0 {
			next := cats[i+1]
			for j, d := range c.Dropped {
				if j >= len(next.Members) || next.Members[j].Name != d.Name {
					t.Fatalf("dropped %s of volume %d is not at the start of volume %d: %v", d.Name, c.Volume, next.Volume, entryNames(next.Members))
				}
			}
		}
	}
	if got := entryNames(all); !slices.Equal(got, names(ms)) {
		t.Fatalf("members over the set = %v, want each once in order %v", got, names(ms))
	}
	var vols []*Volume
	data := map[string][]byte{}
	for _, c := range cats {
		v, err := ListVolume(context.Background(), openFile(t, drive.path(c.Volume)), ReadOptions{BlockSize: drive.blockSize})
		if err != nil {
			t.Fatal(err)
		}
		vols = append(vols, v)
	}
	set, err := MergeCatalogs(vols...)
	if err != nil {
		t.Fatal(err)
	}
	if len(set.Missing) > 0 || len(set.Unverified) > 0 || !set.EndsSession || !slices.Equal(set.Members, all) {
		t.Fatalf("set: missing %v unverified %v ends %v members %v", set.Missing, set.Unverified, set.EndsSession, entryNames(set.Members))
	}
	for _, c := range cats {
		ref := set.Catalogs[c.Volume]
		got, rep, err := readAllMembers(t, drive.path(c.Volume), drive.blockSize, &ref)
		if err != nil {
			t.Fatalf("volume %d: %v", c.Volume, err)
		}
		if rep.EndOfMedia != c.Truncated {
			t.Errorf("volume %d: report end of media %v, catalog truncated %v", c.Volume, rep.EndOfMedia, c.Truncated)
		}
		for k, b := range got {
			data[k] = b
		}
	}
	for _, m := range ms {
		if !bytes.Equal(data[m.name], m.data) {
			t.Errorf("member %s differs after reading the set back", m.name)
		}
	}
	return vols
}

func TestEndOfMediaTruncatedVolume(t *testing.T) {
	ctx := context.Background()
	ms := makeMembers(6, 14, 1000, 20000)
	drive := &tapeDrive{dir: t.TempDir(), blockSize: 4096, partial: 1000,
		capacity: func(int) int64 { return 40 << 10 }}
	cats, err := WriteSet(ctx, drive, baseOpts(4096, 0), toMembers(ms), nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(cats) < 3 || !cats[0].Truncated || len(cats[0].Dropped) == 0 {
		t.Fatalf("catalogs %+v: want a truncated first volume", cats[0])
	}
	fi, _ := os.Stat(drive.path(1))
	if fi.Size() != 40<<10+1000 {
		t.Fatalf("volume 1 is %d bytes, want capacity plus the partial block", fi.Size())
	}
	vols := checkSet(t, drive, cats, ms)
	if !vols[0].Truncated || vols[0].Catalog != nil || !slices.EqualFunc(vols[1].Earlier, cats[:1], catalogEqual) {
		t.Fatalf("volume 1 truncated=%v own catalog=%v; volume 2 must carry its catalog", vols[0].Truncated, vols[0].Catalog)
	}
	// Alone, the truncated volume cannot be checked: that is reported.
	rep, err := VerifyVolume(ctx, openFile(t, drive.path(1)), ReadOptions{BlockSize: 4096})
	if !errors.Is(err, ErrTruncated) || rep.OK() {
		t.Fatalf("verify volume 1 without a catalog: %v", err)
	}
}

func catalogEqual(a, b Catalog) bool {
	return a.Volume == b.Volume && a.Truncated == b.Truncated && slices.Equal(a.Members, b.Members) && slices.Equal(a.Dropped, b.Dropped)
}

func TestEndOfMediaCleanClose(t *testing.T) {
	ctx := context.Background()
	ms := makeMembers(7, 14, 1000, 20000)
	drive := &tapeDrive{dir: t.TempDir(), blockSize: 4096, grace: 100,
		capacity: func(int) int64 { return 40 << 10 }}
	cats, err := WriteSet(ctx, drive, baseOpts(4096, 0), toMembers(ms), nil)
	if err != nil {
		t.Fatal(err)
	}
	if cats[0].Truncated || len(cats[0].Dropped) != 1 {
		t.Fatalf("volume 1: truncated=%v dropped=%v: want a clean close with one dropped member", cats[0].Truncated, cats[0].Dropped)
	}
	checkSet(t, drive, cats, ms)
	// The volume stands alone: its catalog is on it and verify passes.
	rep, err := VerifyVolume(ctx, openFile(t, drive.path(1)), ReadOptions{BlockSize: 4096})
	if err != nil {
		t.Fatal(err)
	}
	if slices.ContainsFunc(rep.Good, func(e Entry) bool { return e.Name == cats[0].Dropped[0].Name }) {
		t.Fatal("the zero-padded dropped member is reported good")
	}
	if tarBin, err := exec.LookPath("tar"); err == nil {
		if out, err := exec.Command(tarBin, "-b", "8", "-tf", drive.path(1)).CombinedOutput(); err != nil {
			t.Fatalf("GNU tar on a cleanly closed volume: %v\n%s", err, out)
		}
	}
}

func TestEndOfMediaInCatalog(t *testing.T) {
	ctx := context.Background()
	ms := makeMembers(8, 4, 4096, 4096)
	probe := &tapeDrive{dir: t.TempDir(), blockSize: 4096}
	if _, err := WriteSet(ctx, probe, baseOpts(4096, 0), toMembers(ms), nil); err != nil {
		t.Fatal(err)
	}
	fi, _ := os.Stat(probe.path(1))
	// The last block (catalog and end marker) meets end of media.
	drive := &tapeDrive{dir: t.TempDir(), blockSize: 4096, capacity: func(int) int64 { return fi.Size() - 4096 }}
	cats, err := WriteSet(ctx, drive, baseOpts(4096, 0), toMembers(ms), nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(cats) != 2 || !cats[0].Truncated || len(cats[1].Members) != 0 || !cats[1].EndsSession {
		t.Fatalf("catalogs %+v: want volume 1 truncated in its catalog and volume 2 carrying it", cats)
	}
	checkSet(t, drive, cats, ms)
}

func TestMediaTooSmall(t *testing.T) {
	ms := makeMembers(9, 3, 30000, 30000)
	drive := &tapeDrive{dir: t.TempDir(), blockSize: 4096, capacity: func(int) int64 { return 16 << 10 }}
	_, err := WriteSet(context.Background(), drive, baseOpts(4096, 0), toMembers(ms), nil)
	if !errors.Is(err, ErrMemberTooLarge) {
		t.Fatalf("err = %v, want ErrMemberTooLarge", err)
	}
}

func TestDriveRejectsOtherWriteSizes(t *testing.T) {
	drive := &tapeDrive{dir: t.TempDir(), blockSize: 512}
	_, err := WriteSet(context.Background(), drive, baseOpts(1024, 0), toMembers(makeMembers(14, 2, 10, 10)), nil)
	if !errors.Is(err, syscall.EINVAL) || !strings.Contains(err.Error(), "volume 1") {
		t.Fatalf("err = %v, want EINVAL naming volume 1", err)
	}
}
