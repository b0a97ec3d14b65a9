#!/bin/sh
# Measures how much a second day's `stasis backup --stdin-from-command` of a
# SQLite dump adds after a few rows changed (docs/capture.md).
# Usage: testdata/stdin-dedup.sh [ROWS] [CHANGED]   (needs sqlite3 and go)
set -eu
rows=${1:-200000}
changed=${2:-20}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
here=$(cd "$(dirname "$0")/.." && pwd)
(cd "$here" && go build -o "$work/stasis" ./cmd/stasis)
export STASIS_PASSWORD=measure
db="$work/app.db"
sqlite3 "$db" "CREATE TABLE notes(id INTEGER PRIMARY KEY, owner TEXT, body TEXT, updated INTEGER);
WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM n WHERE i < $rows)
INSERT INTO notes SELECT i, 'user' || (i % 977), hex(randomblob(24)) || ' note number ' || i, 1700000000 + i FROM n;"
for profile in default db; do
	repo="$work/repo-$profile"
	glob=""
	if [ "$profile" = db ]; then glob="--db-glob *.db,*.sql"; fi
	cp "$db" "$work/day.db"
	"$work/stasis" init --repo "$repo" >/dev/null
	# shellcheck disable=SC2086
	"$work/stasis" backup --repo "$repo" --json $glob --stdin-filename /dumps/app.sql \
		--stdin-from-command -- sqlite3 "$work/day.db" .dump >"$work/out" 2>"$work/err"
	d1=$(tail -1 "$work/out")
	# the next day: CHANGED rows updated (spread over the table), CHANGED rows added
	sqlite3 "$work/day.db" "UPDATE notes SET body = 'edited ' || body, updated = updated + 86400
		WHERE id IN (SELECT id FROM notes WHERE id % ($rows / $changed) = 7 LIMIT $changed);
		INSERT INTO notes(owner, body, updated) SELECT 'newuser', hex(randomblob(24)), 1800000000 FROM notes LIMIT $changed;"
	# shellcheck disable=SC2086
	"$work/stasis" backup --repo "$repo" --json $glob --stdin-filename /dumps/app.sql \
		--stdin-from-command -- sqlite3 "$work/day.db" .dump >"$work/out" 2>"$work/err"
	d2=$(tail -1 "$work/out")
	size=$(echo "$d2" | sed 's/.*"total_bytes":\([0-9]*\).*/\1/')
	add1=$(echo "$d1" | sed 's/.*"bytes_added":\([0-9]*\).*/\1/')
	add2=$(echo "$d2" | sed 's/.*"bytes_added":\([0-9]*\).*/\1/')
	echo "profile=$profile dump_bytes=$size day1_added=$add1 day2_added=$add2 changed_rows=$changed added_rows=$changed"
done
