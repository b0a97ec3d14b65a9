package retention

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
	"time"
)

// loc is the "local time" of the tests: UTC+1, so that day, week and year
// boundaries differ from UTC.
var loc = time.FixedZone("UTC+1", 3600)

// now is the fixed clock of the tests.
var now = time.Date(2027, 1, 10, 12, 0, 0, 0, loc)

func at(s string) time.Time {
	t, err := time.ParseInLocation("2006-01-02 15:04", s, loc)
	if err != nil {
		panic(err)
	}
	return t
}

// snaps makes snapshots of host h, paths /srv, with IDs equal to the times.
func snaps(times ...string) []Snapshot {
	out := make([]Snapshot, len(times))
	for i, s := range times {
		out[i] = Snapshot{ID: s, Time: at(s), Host: "h", Paths: []string{"/srv"}}
	}
	return out
}

func keptIDs(ds []Decision) []string {
	var ids []string
	for _, d := range ds {
		if d.Keep {
			ids = append(ids, d.ID)
		}
	}
	return ids
}

func reasonsOf(ds []Decision, id string) []string {
	for _, d := range ds {
		if d.ID == id {
			return d.Reasons
		}
	}
	return nil
}

func TestApplyBuckets(t *testing.T) {
	tests := []struct {
		name   string
		snaps  []Snapshot
		policy Policy
		keep   []string // newest first
	}{
		{
			name:   "last",
			snaps:  snaps("2027-01-01 02:00", "2027-01-02 02:00", "2027-01-03 02:00", "2027-01-04 02:00", "2027-01-05 02:00"),
			policy: Policy{Last: 3},
			keep:   []string{"2027-01-05 02:00", "2027-01-04 02:00", "2027-01-03 02:00"},
		},
		{
			name:   "last unlimited",
			snaps:  snaps("2027-01-01 02:00", "2027-01-01 02:00", "2027-01-03 02:00"),
			policy: Policy{Last: Unlimited},
			keep:   []string{"2027-01-03 02:00", "2027-01-01 02:00", "2027-01-01 02:00"},
		},
		{
			name:   "hourly",
			snaps:  snaps("2027-01-05 10:05", "2027-01-05 10:40", "2027-01-05 11:10", "2027-01-05 12:00", "2027-01-05 12:30"),
			policy: Policy{Hourly: 2},
			keep:   []string{"2027-01-05 12:30", "2027-01-05 11:10"},
		},
		{
			name: "daily keeps the newest of each day (ties within a day)",
			snaps: snaps("2027-01-01 02:00", "2027-01-01 14:00", "2027-01-02 02:00", "2027-01-02 14:00",
				"2027-01-03 02:00", "2027-01-03 14:00", "2027-01-04 00:00", "2027-01-04 23:59"),
			policy: Policy{Daily: 3},
			keep:   []string{"2027-01-04 23:59", "2027-01-03 14:00", "2027-01-02 14:00"},
		},
		{
			name:   "daily counts days with a snapshot, not calendar days",
			snaps:  snaps("2026-12-01 02:00", "2026-12-02 02:00", "2026-12-05 02:00", "2026-12-09 02:00"),
			policy: Policy{Daily: 3},
			keep:   []string{"2026-12-09 02:00", "2026-12-05 02:00", "2026-12-02 02:00"},
		},
		{
			// 2026-12-27 is Sunday of 2026-W52; 2026-12-28 .. 2027-01-03 is
			// 2026-W53; 2027-01-04 is Monday of 2027-W01.
			name:   "weekly uses ISO weeks across a year end",
			snaps:  snaps("2026-12-21 02:00", "2026-12-27 02:00", "2026-12-29 02:00", "2027-01-02 02:00", "2027-01-04 02:00"),
			policy: Policy{Weekly: 3},
			keep:   []string{"2027-01-04 02:00", "2027-01-02 02:00", "2026-12-27 02:00"},
		},
		{
			name:   "weekly: Sunday and the next Monday are different weeks",
			snaps:  snaps("2027-01-03 23:00", "2027-01-04 01:00"),
			policy: Policy{Weekly: 2},
			keep:   []string{"2027-01-04 01:00", "2027-01-03 23:00"},
		},
		{
			name:   "monthly",
			snaps:  snaps("2026-10-31 02:00", "2026-11-01 02:00", "2026-11-30 02:00", "2026-12-15 02:00", "2026-12-16 02:00"),
			policy: Policy{Monthly: 2},
			keep:   []string{"2026-12-16 02:00", "2026-11-30 02:00"},
		},
		{
			name:   "yearly",
			snaps:  snaps("2024-06-01 02:00", "2025-01-01 02:00", "2025-12-31 23:00", "2026-12-31 23:59", "2027-01-01 00:01"),
			policy: Policy{Yearly: 3},
			keep:   []string{"2027-01-01 00:01", "2026-12-31 23:59", "2025-12-31 23:00"},
		},
		{
			name:   "yearly unlimited",
			snaps:  snaps("2024-06-01 02:00", "2024-07-01 02:00", "2025-01-01 02:00", "2026-12-31 02:00"),
			policy: Policy{Yearly: Unlimited},
			keep:   []string{"2026-12-31 02:00", "2025-01-01 02:00", "2024-07-01 02:00"},
		},
		{
			name:   "more periods asked than exist keeps one per period",
			snaps:  snaps("2027-01-01 02:00", "2027-01-01 03:00", "2027-01-02 02:00"),
			policy: Policy{Daily: 30},
			keep:   []string{"2027-01-02 02:00", "2027-01-01 03:00"},
		},
		{
			name:   "within is measured from now",
			snaps:  snaps("2027-01-03 11:59", "2027-01-03 12:01", "2027-01-09 02:00"),
			policy: Policy{Within: 7 * 24 * time.Hour},
			keep:   []string{"2027-01-09 02:00", "2027-01-03 12:01"},
		},
		{
			name: "combination of daily, weekly and monthly",
			snaps: snaps(
				"2026-10-10 02:00", "2026-10-20 02:00", // October
				"2026-11-02 02:00", "2026-11-20 02:00", // November
				"2026-12-14 02:00", "2026-12-21 02:00", "2026-12-28 02:00", // one per week
				"2027-01-05 02:00", "2027-01-06 02:00", "2027-01-07 02:00", "2027-01-08 02:00", "2027-01-09 02:00",
			),
			policy: Policy{Daily: 3, Weekly: 2, Monthly: 3},
			keep: []string{
				"2027-01-09 02:00", "2027-01-08 02:00", "2027-01-07 02:00", // daily 3; weekly + monthly on the 9th
				"2026-12-28 02:00", // weekly 2026-W53 and monthly 2026-12
				"2026-11-20 02:00", // monthly 2026-11
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := tt.policy.Validate(); err != nil {
				t.Fatal(err)
			}
			ds := Apply(tt.snaps, tt.policy, now)
			if len(ds) != len(tt.snaps) {
				t.Fatalf("got %d decisions for %d snapshots", len(ds), len(tt.snaps))
			}
			if got := keptIDs(ds); !slices.Equal(got, tt.keep) {
				t.Errorf("kept %q\nwant %q", got, tt.keep)
			}
			for _, d := range ds {
				if d.Keep != (len(d.Reasons) > 0) {
					t.Errorf("%s: keep=%v with reasons %q", d.ID, d.Keep, d.Reasons)
				}
			}
		})
	}
}

func TestApplyReasons(t *testing.T) {
	s := snaps("2026-12-28 02:00", "2027-01-08 02:00", "2027-01-09 02:00")
	s[0].Tags = []string{"monthly", "manual"}
	p := Policy{Last: 1, Daily: 2, Weekly: 2, Monthly: 2, Yearly: 1, Within: 36 * time.Hour, Tags: []string{"monthly"}}
	ds := Apply(s, p, now)
	want := map[string][]string{
		"2027-01-09 02:00": {"last snapshot", "daily snapshot 2027-01-09", "weekly snapshot 2027-W01",
			"monthly snapshot 2027-01", "yearly snapshot 2027", "within 1d12h"},
		"2027-01-08 02:00": {"daily snapshot 2027-01-08"},
		"2026-12-28 02:00": {"weekly snapshot 2026-W53", "monthly snapshot 2026-12", "has tag monthly"},
	}
	for id, w := range want {
		if got := reasonsOf(ds, id); !slices.Equal(got, w) {
			t.Errorf("%s: reasons %q\nwant %q", id, got, w)
		}
	}
}

func TestApplyUsesLocationOfNow(t *testing.T) {
	// 23:30 UTC on the 20th is 00:30 on the 21st at UTC+1.
	a := Snapshot{ID: "a", Time: time.Date(2026, 11, 20, 22, 0, 0, 0, time.UTC), Host: "h"}
	b := Snapshot{ID: "b", Time: time.Date(2026, 11, 20, 23, 30, 0, 0, time.UTC), Host: "h"}
	p := Policy{Daily: 2}

	inUTC := Apply([]Snapshot{a, b}, p, now.In(time.UTC))
	if got := keptIDs(inUTC); !slices.Equal(got, []string{"b"}) {
		t.Errorf("in UTC kept %q, want [b] (same day)", got)
	}
	inLoc := Apply([]Snapshot{a, b}, p, now)
	if got := keptIDs(inLoc); !slices.Equal(got, []string{"b", "a"}) {
		t.Errorf("at UTC+1 kept %q, want [b a] (two days)", got)
	}
	if got := reasonsOf(inLoc, "b"); !slices.Equal(got, []string{"daily snapshot 2026-11-21"}) {
		t.Errorf("reasons of b = %q", got)
	}
}

func TestApplyEqualTimesAreOrderedByID(t *testing.T) {
	s := []Snapshot{
		{ID: "aaa", Time: at("2027-01-01 02:00"), Host: "h"},
		{ID: "ccc", Time: at("2027-01-01 02:00"), Host: "h"},
		{ID: "bbb", Time: at("2027-01-01 02:00"), Host: "h"},
	}
	for _, perm := range [][]int{{0, 1, 2}, {2, 1, 0}, {1, 0, 2}} {
		in := []Snapshot{s[perm[0]], s[perm[1]], s[perm[2]]}
		if got := keptIDs(Apply(in, Policy{Daily: 1}, now)); !slices.Equal(got, []string{"ccc"}) {
			t.Errorf("order %v: kept %q, want [ccc]", perm, got)
		}
	}
}

func TestApplyGroups(t *testing.T) {
	s := []Snapshot{
		{ID: "h1-old", Time: at("2027-01-01 02:00"), Host: "h1", Paths: []string{"/a", "/b"}},
		{ID: "h1-new", Time: at("2027-01-02 02:00"), Host: "h1", Paths: []string{"/b", "/a"}},
		{ID: "h2-old", Time: at("2026-01-01 02:00"), Host: "h2", Paths: []string{"/a", "/b"}},
		{ID: "h2-new", Time: at("2026-01-02 02:00"), Host: "h2", Paths: []string{"/a", "/b"}},
		{ID: "h1-a", Time: at("2026-06-01 02:00"), Host: "h1", Paths: []string{"/a"}},
	}
	ds := Apply(s, Policy{Last: 1}, now)
	got := keptIDs(ds)
	slices.Sort(got)
	if want := []string{"h1-a", "h1-new", "h2-new"}; !slices.Equal(got, want) {
		t.Errorf("kept %q, want %q", got, want)
	}
	if GroupKey(s[0]) != GroupKey(s[1]) {
		t.Errorf("path order changed the group: %s vs %s", GroupKey(s[0]), GroupKey(s[1]))
	}
	if GroupKey(s[0]) == GroupKey(s[2]) || GroupKey(s[0]) == GroupKey(s[4]) {
		t.Error("different host or paths share a group")
	}
	if k := GroupKey(s[0]); k != `host "h1" paths ["/a" "/b"]` {
		t.Errorf("GroupKey = %s", k)
	}
	// A path containing a space must not collide with two paths.
	x := Snapshot{Host: "h", Paths: []string{"/a /b"}}
	y := Snapshot{Host: "h", Paths: []string{"/a", "/b"}}
	if GroupKey(x) == GroupKey(y) {
		t.Errorf("GroupKey collides: %s", GroupKey(x))
	}
}

func TestApplyKeepTag(t *testing.T) {
	s := snaps("2026-01-01 02:00", "2026-02-01 02:00", "2026-03-01 02:00")
	s[0].Tags = []string{"release"}
	s[1].Tags = []string{"other"}
	ds := Apply(s, Policy{Tags: []string{"release", "pinned"}}, now)
	if got := keptIDs(ds); !slices.Equal(got, []string{"2026-01-01 02:00"}) {
		t.Errorf("kept %q", got)
	}
	if got := reasonsOf(ds, "2026-01-01 02:00"); !slices.Equal(got, []string{"has tag release"}) {
		t.Errorf("reasons %q", got)
	}
}

func TestEmptyPolicyKeepsEverything(t *testing.T) {
	var p Policy
	if !p.Empty() {
		t.Fatal("zero policy is not empty")
	}
	for _, q := range []Policy{{Last: 1}, {Yearly: -1}, {Within: time.Hour}, {Tags: []string{"x"}}} {
		if q.Empty() {
			t.Errorf("%+v reported empty", q)
		}
	}
	s := snaps("2026-01-01 02:00", "2026-02-01 02:00")
	for _, d := range Apply(s, p, now) {
		if !d.Keep || len(d.Reasons) == 0 {
			t.Errorf("%s: keep=%v reasons=%q under the empty policy", d.ID, d.Keep, d.Reasons)
		}
	}
}

func TestValidate(t *testing.T) {
	bad := []Policy{{Daily: -2}, {Last: -5}, {Within: -time.Hour}, {Tags: []string{""}}}
	for _, p := range bad {
		if err := p.Validate(); err == nil {
			t.Errorf("%+v: no error", p)
		}
	}
	if err := (Policy{Daily: -1, Weekly: 0, Monthly: 12}).Validate(); err != nil {
		t.Error(err)
	}
	if err := (Policy{Daily: -2}).Validate(); !strings.Contains(err.Error(), "--keep-daily -2") {
		t.Errorf("error does not name the flag: %v", err)
	}
}

func TestGuard(t *testing.T) {
	s := []Snapshot{
		{ID: "a", Time: at("2026-01-01 02:00"), Host: "h1"},
		{ID: "b", Time: at("2027-01-09 02:00"), Host: "h2"},
	}
	ds := Apply(s, Policy{Within: 7 * 24 * time.Hour}, now)
	err := Guard(ds, false)
	if !errors.Is(err, ErrRemovesAll) {
		t.Fatalf("Guard = %v, want ErrRemovesAll", err)
	}
	if !strings.Contains(err.Error(), `host "h1"`) || strings.Contains(err.Error(), `host "h2"`) {
		t.Errorf("error names the wrong groups: %v", err)
	}
	if err := Guard(ds, true); err != nil {
		t.Errorf("Guard with allowAll = %v", err)
	}
	if err := Guard(Apply(s, Policy{Last: 1}, now), false); err != nil {
		t.Errorf("Guard with a kept snapshot in every group = %v", err)
	}
	if g := EmptiedGroups(ds); len(g) != 1 || g[0] != GroupKey(s[0]) {
		t.Errorf("EmptiedGroups = %q", g)
	}
}

func TestDurations(t *testing.T) {
	for _, tt := range []struct {
		in   string
		want time.Duration
		out  string
	}{
		{"7d", 7 * 24 * time.Hour, "7d"},
		{"36h", 36 * time.Hour, "1d12h"},
		{"1y", 365 * 24 * time.Hour, "365d"},
		{"90m", 90 * time.Minute, "1h30m"},
		{"1d2h3m4s", 26*time.Hour + 3*time.Minute + 4*time.Second, "1d2h3m4s"},
	} {
		got, err := ParseDuration(tt.in)
		if err != nil || got != tt.want {
			t.Errorf("ParseDuration(%q) = %v, %v; want %v", tt.in, got, err, tt.want)
		}
		if s := FormatDuration(got); s != tt.out {
			t.Errorf("FormatDuration(%v) = %q, want %q", got, s, tt.out)
		}
	}
	for _, bad := range []string{"", "7", "d", "7w", "-1d", "99999999999999999999y", "1000000y"} {
		if _, err := ParseDuration(bad); err == nil {
			t.Errorf("ParseDuration(%q): no error", bad)
		}
	}
}

func TestPolicyString(t *testing.T) {
	p := Policy{Daily: 7, Weekly: 5, Monthly: -1, Within: 48 * time.Hour, Tags: []string{"a", "b"}}
	want := "keep 7 daily, 5 weekly, all monthly snapshots, all within 2d, all tagged a or b"
	if got := p.String(); got != want {
		t.Errorf("String() = %q\nwant %q", got, want)
	}
}

// TestApplyProperties checks invariants on random inputs (fixed seed).
func TestApplyProperties(t *testing.T) {
	rng := rand.New(rand.NewPCG(4, 2027))
	count := func() int { return []int{0, 0, 1, 2, 3, 7, Unlimited}[rng.IntN(7)] }
	for iter := range 500 {
		var in []Snapshot
		for i := range rng.IntN(60) {
			in = append(in, Snapshot{
				ID:    fmt.Sprintf("s%03d", i),
				Time:  now.Add(-time.Duration(rng.Int64N(int64(3 * 365 * 24 * time.Hour)))).Truncate(time.Hour),
				Host:  []string{"a", "b"}[rng.IntN(2)],
				Paths: [][]string{{"/x"}, {"/x", "/y"}}[rng.IntN(2)],
				Tags:  [][]string{nil, {"t"}}[rng.IntN(2)],
			})
		}
		p := Policy{Last: count(), Hourly: count(), Daily: count(), Weekly: count(), Monthly: count(), Yearly: count()}
		if rng.IntN(3) == 0 {
			p.Within = time.Duration(rng.IntN(100)) * 24 * time.Hour
		}
		if rng.IntN(3) == 0 {
			p.Tags = []string{"t"}
		}
		ds := Apply(in, p, now)
		name := fmt.Sprintf("iteration %d, policy %+v", iter, p)

		if len(ds) != len(in) {
			t.Fatalf("%s: %d decisions for %d snapshots", name, len(ds), len(in))
		}
		newest := map[string]Snapshot{}
		for _, s := range in {
			k := GroupKey(s)
			if n, ok := newest[k]; !ok || s.Time.After(n.Time) || (s.Time.Equal(n.Time) && s.ID > n.ID) {
				newest[k] = s
			}
		}
		buckets := p.Last != 0 || p.Hourly != 0 || p.Daily != 0 || p.Weekly != 0 || p.Monthly != 0 || p.Yearly != 0
		var kept []Snapshot
		for _, d := range ds {
			if d.Keep != (len(d.Reasons) > 0) {
				t.Fatalf("%s: %s keep=%v reasons=%q", name, d.ID, d.Keep, d.Reasons)
			}
			if buckets && newest[GroupKey(d.Snapshot)].ID == d.ID && !d.Keep {
				t.Fatalf("%s: newest snapshot %s of its group removed", name, d.ID)
			}
			if p.Within > 0 && now.Sub(d.Time) < p.Within && !d.Keep {
				t.Fatalf("%s: %s is within %v but removed", name, d.ID, p.Within)
			}
			if len(p.Tags) > 0 && slices.Contains(d.Tags, "t") && !d.Keep {
				t.Fatalf("%s: %s has tag t but removed", name, d.ID)
			}
			if d.Keep {
				kept = append(kept, d.Snapshot)
			}
		}
		if p.Empty() {
			continue
		}
		// Forgetting is idempotent: the policy keeps everything it kept.
		for _, d := range Apply(kept, p, now) {
			if !d.Keep {
				t.Fatalf("%s: second run removes %s", name, d.ID)
			}
		}
	}
}
