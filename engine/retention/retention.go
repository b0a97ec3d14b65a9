// Package retention decides which snapshots a forget policy keeps.
//
// It is a pure function of a list of snapshots, a [Policy] and the current
// time: it reads and writes nothing. The caller (stasis forget) lists the
// snapshots, calls [Apply], prints each [Decision], refuses with [Guard] to
// remove every snapshot of a group unless told explicitly, and only then
// removes the snapshots that are not kept.
//
// # Semantics
//
// Snapshots are grouped by host and the sorted set of backed-up paths
// ([GroupKey]); each group is thinned on its own. Within a group the
// snapshots are walked from newest to oldest. For each bucket rule (last,
// hourly, daily, weekly, monthly, yearly) with count N, the newest snapshot of
// each of the N most recent distinct periods that have a snapshot is kept:
// "daily 7" keeps the newest snapshot of each of the last 7 days on which a
// snapshot was taken (not the last 7 calendar days). Weeks are ISO 8601 weeks
// (Monday first; the week of 2027-01-01 is 2026-W53). A count of -1 keeps one
// snapshot in every period. A snapshot is kept if any rule keeps it, and every
// rule that keeps it is listed as a reason.
//
// Periods are computed in the location of the now argument of [Apply]:
// pass time.Now() for local time, or a time in a fixed location for tests.
//
// Within keeps every snapshot taken less than Within before now (not before
// the newest snapshot, as restic does: if backups stop, a within-only policy
// eventually keeps nothing, which [Guard] refuses). Tags keeps every snapshot
// that has at least one of the tags.
package retention

import (
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Unlimited as a bucket count keeps one snapshot in every period.
const Unlimited = -1

// Policy is a forget policy. The zero Policy is empty: it keeps everything.
type Policy struct {
	// Last keeps the N newest snapshots.
	Last int
	// Hourly, Daily, Weekly, Monthly and Yearly keep the newest snapshot of
	// each of the N most recent hours, days, ISO weeks, months and years
	// that have a snapshot. -1 (Unlimited) means every such period; 0 means
	// the rule is off.
	Hourly, Daily, Weekly, Monthly, Yearly int
	// Within keeps snapshots taken less than Within before now; 0 is off.
	Within time.Duration
	// Tags keeps snapshots that carry any of these tags.
	Tags []string
}

// Empty reports whether the policy has no keep rule at all. Apply keeps
// every snapshot under an empty policy; stasis forget refuses to run with one.
func (p Policy) Empty() bool {
	return p.Last == 0 && p.Hourly == 0 && p.Daily == 0 && p.Weekly == 0 &&
		p.Monthly == 0 && p.Yearly == 0 && p.Within == 0 && len(p.Tags) == 0
}

// Validate returns an error naming the first invalid field: counts below -1,
// a negative Within, or an empty tag.
func (p Policy) Validate() error {
	for _, r := range p.rules() {
		if r.n < Unlimited {
			return fmt.Errorf("--keep-%s %d: use a count of at least 0, or -1 for unlimited", r.name, r.n)
		}
	}
	if p.Within < 0 {
		return fmt.Errorf("--keep-within %s: the duration must not be negative", p.Within)
	}
	for _, t := range p.Tags {
		if t == "" {
			return errors.New("--keep-tag: a tag must not be empty")
		}
	}
	return nil
}

// String describes the policy in the words of the CLI flags, e.g.
// "keep 7 daily, 5 weekly, 12 monthly snapshots".
func (p Policy) String() string {
	var parts []string
	for _, r := range p.rules() {
		switch {
		case r.n == Unlimited:
			parts = append(parts, "all "+r.name)
		case r.n > 0:
			parts = append(parts, strconv.Itoa(r.n)+" "+r.name)
		}
	}
	s := "keep nothing by rule"
	if len(parts) > 0 {
		s = "keep " + strings.Join(parts, ", ") + " snapshots"
	}
	if p.Within > 0 {
		s += ", all within " + FormatDuration(p.Within)
	}
	if len(p.Tags) > 0 {
		s += ", all tagged " + strings.Join(p.Tags, " or ")
	}
	return s
}

// Snapshot is what retention needs to know about a snapshot.
type Snapshot struct {
	ID    string
	Time  time.Time
	Host  string
	Paths []string
	Tags  []string
}

// Decision says whether a snapshot is kept and why.
type Decision struct {
	Snapshot
	// Keep is true if at least one rule keeps the snapshot.
	Keep bool
	// Reasons lists every rule that keeps the snapshot, e.g. "last snapshot",
	// "daily snapshot 2026-11-20", "weekly snapshot 2026-W47", "within 7d",
	// "has tag monthly". It is empty exactly when Keep is false.
	Reasons []string
}

// GroupKey names the group a snapshot is thinned in: its host and its sorted,
// de-duplicated paths. Two snapshots are in one group exactly when their keys
// are equal. The key is readable, e.g. `host "db1" paths ["/srv/zoomserv"]`.
func GroupKey(s Snapshot) string {
	paths := slices.Clone(s.Paths)
	slices.Sort(paths)
	paths = slices.Compact(paths)
	q := make([]string, len(paths))
	for i, p := range paths {
		q[i] = strconv.Quote(p)
	}
	return "host " + strconv.Quote(s.Host) + " paths [" + strings.Join(q, " ") + "]"
}

type rule struct {
	name string // plural flag word: "last", "hourly", ...
	n    int
	// period returns the period a time falls in, or "" for "last" where
	// every snapshot is its own period.
	period func(time.Time) string
	reason string // reason prefix: "daily snapshot"
}

func (p Policy) rules() []rule {
	return []rule{
		{"last", p.Last, nil, "last snapshot"},
		{"hourly", p.Hourly, func(t time.Time) string { return t.Format("2006-01-02 15h") }, "hourly snapshot"},
		{"daily", p.Daily, func(t time.Time) string { return t.Format("2006-01-02") }, "daily snapshot"},
		{"weekly", p.Weekly, func(t time.Time) string {
			y, w := t.ISOWeek()
			return fmt.Sprintf("%04d-W%02d", y, w)
		}, "weekly snapshot"},
		{"monthly", p.Monthly, func(t time.Time) string { return t.Format("2006-01") }, "monthly snapshot"},
		{"yearly", p.Yearly, func(t time.Time) string { return t.Format("2006") }, "yearly snapshot"},
	}
}

// Apply decides, for every snapshot, whether p keeps it. It returns one
// Decision per input snapshot, ordered by GroupKey and within a group from
// newest to oldest (equal times: greater ID first). Buckets are computed in
// now's location. An empty policy keeps every snapshot with the reason
// "no keep rule given". Apply does not validate p; call Validate first.
// The input slice is not modified.
func Apply(snaps []Snapshot, p Policy, now time.Time) []Decision {
	loc := now.Location()
	type item struct {
		key string
		d   Decision
	}
	items := make([]item, len(snaps))
	for i, s := range snaps {
		items[i] = item{GroupKey(s), Decision{Snapshot: s}}
	}
	slices.SortStableFunc(items, func(a, b item) int {
		if c := strings.Compare(a.key, b.key); c != 0 {
			return c
		}
		if c := b.d.Time.Compare(a.d.Time); c != 0 {
			return c
		}
		return strings.Compare(b.d.ID, a.d.ID)
	})
	ds := make([]Decision, len(items))
	for i := range items {
		ds[i] = items[i].d
	}
	if p.Empty() {
		for i := range ds {
			ds[i].Keep = true
			ds[i].Reasons = []string{"no keep rule given"}
		}
		return ds
	}
	rules := p.rules()
	for start := 0; start < len(ds); {
		end := start + 1
		for end < len(ds) && items[end].key == items[start].key {
			end++
		}
		applyGroup(ds[start:end], rules, p, now, loc)
		start = end
	}
	return ds
}

// applyGroup decides for one group, sorted newest first.
func applyGroup(ds []Decision, rules []rule, p Policy, now time.Time, loc *time.Location) {
	left := make([]int, len(rules))
	last := make([]string, len(rules))
	for i, r := range rules {
		left[i] = r.n
	}
	for i := range ds {
		d := &ds[i]
		t := d.Time.In(loc)
		for ri, r := range rules {
			if left[ri] == 0 {
				continue
			}
			if r.period == nil {
				d.Reasons = append(d.Reasons, r.reason)
			} else {
				per := r.period(t)
				if per == last[ri] {
					continue
				}
				last[ri] = per
				d.Reasons = append(d.Reasons, r.reason+" "+per)
			}
			if left[ri] > 0 {
				left[ri]--
			}
		}
		if p.Within > 0 && now.Sub(d.Time) < p.Within {
			d.Reasons = append(d.Reasons, "within "+FormatDuration(p.Within))
		}
		for _, tag := range p.Tags {
			if slices.Contains(d.Tags, tag) {
				d.Reasons = append(d.Reasons, "has tag "+tag)
			}
		}
		d.Keep = len(d.Reasons) > 0
	}
}

// FormatDuration writes d in the units of --keep-within: "7d", "36h",
// "1d12h", "90m". Whole days are written as days.
func FormatDuration(d time.Duration) string {
	if d <= 0 {
		return "0s"
	}
	var b strings.Builder
	units := []struct {
		suffix string
		size   time.Duration
	}{{"d", 24 * time.Hour}, {"h", time.Hour}, {"m", time.Minute}, {"s", time.Second}}
	for _, u := range units {
		if n := d / u.size; n > 0 {
			b.WriteString(strconv.FormatInt(int64(n), 10) + u.suffix)
			d -= n * u.size
		}
	}
	if d > 0 || b.Len() == 0 {
		b.WriteString(d.String())
	}
	return b.String()
}

// ParseDuration parses a --keep-within value: a sequence of numbers with the
// units y (365 days), d (24 hours), h, m, s, e.g. "7d", "1y6d", "36h30m".
func ParseDuration(s string) (time.Duration, error) {
	orig := s
	if s == "" {
		return 0, errors.New("empty duration: use e.g. 7d, 36h or 1y")
	}
	var total time.Duration
	for s != "" {
		i := 0
		for i < len(s) && s[i] >= '0' && s[i] <= '9' {
			i++
		}
		if i == 0 || i == len(s) {
			return 0, fmt.Errorf("duration %q: want numbers with units y, d, h, m or s, e.g. 7d or 36h", orig)
		}
		n, err := strconv.ParseInt(s[:i], 10, 64)
		if err != nil {
			return 0, fmt.Errorf("duration %q: %w", orig, err)
		}
		var unit time.Duration
		switch s[i] {
		case 'y':
			unit = 365 * 24 * time.Hour
		case 'd':
			unit = 24 * time.Hour
		case 'h':
			unit = time.Hour
		case 'm':
			unit = time.Minute
		case 's':
			unit = time.Second
		default:
			return 0, fmt.Errorf("duration %q: unknown unit %q, use y, d, h, m or s", orig, s[i])
		}
		if n > int64((1<<63-1)/unit) || total > time.Duration(1<<63-1)-time.Duration(n)*unit {
			return 0, fmt.Errorf("duration %q is too long", orig)
		}
		total += time.Duration(n) * unit
		s = s[i+1:]
	}
	return total, nil
}

// ErrRemovesAll is matched (errors.Is) by the error of Guard when a group
// would lose every snapshot.
var ErrRemovesAll = errors.New("policy removes every snapshot of a group")

// EmptiedGroups returns the GroupKey of every group in which ds keeps no
// snapshot, in the order of ds.
func EmptiedGroups(ds []Decision) []string {
	kept := map[string]bool{}
	var order []string
	for _, d := range ds {
		k := GroupKey(d.Snapshot)
		if _, seen := kept[k]; !seen {
			order = append(order, k)
			kept[k] = false
		}
		if d.Keep {
			kept[k] = true
		}
	}
	var out []string
	for _, k := range order {
		if !kept[k] {
			out = append(out, k)
		}
	}
	return out
}

// Guard returns an error matching ErrRemovesAll that names every group in
// which ds would remove every snapshot, unless allowAll is set (stasis forget
// --allow-remove-all). It returns nil when every group keeps a snapshot.
func Guard(ds []Decision, allowAll bool) error {
	if allowAll {
		return nil
	}
	groups := EmptiedGroups(ds)
	if len(groups) == 0 {
		return nil
	}
	return fmt.Errorf("%w: %s; nothing was removed. Check the policy (a --keep-within older "+
		"than the last backup keeps nothing), or pass --allow-remove-all if that is intended",
		ErrRemovesAll, strings.Join(groups, "; "))
}
