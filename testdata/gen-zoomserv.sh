#!/bin/sh
# Regenerates testdata/zoomserv, the small Zoomserv directory the README demo
# backs up, deterministically: the same bytes on every run.
#   X500.db   512 pages made by `zoomsim init --seed 1`, then 300 transactions
#   X500.log  the log of those 300 transactions (fixed fake clock)
#   etc/zoomserv.conf, ldif/*.ldif, README
# Usage: sh testdata/gen-zoomserv.sh   (from the repository root)
set -eu
root=$(cd "$(dirname "$0")/.." && pwd)
out="$root/testdata/zoomserv"
bin=$(mktemp -d)
trap 'rm -rf "$bin"' EXIT
(cd "$root" && go build -o "$bin/zoomsim" ./cmd/zoomsim)

rm -rf "$out"
mkdir -p "$out/etc" "$out/ldif"
"$bin/zoomsim" init --db "$out/X500.db" --pages 512 --seed 1
"$bin/zoomsim" run --db "$out/X500.db" --seed 1 --transactions 300 \
	--fake-clock 2026-11-20T01:00:00Z >/dev/null
"$bin/zoomsim" check "$out/X500.db" >/dev/null

cat >"$out/etc/zoomserv.conf" <<'CONF'
# Zoomserv directory service configuration (sample)
[server]
listen        = 0.0.0.0:389
listen_tls    = 0.0.0.0:636
suffix        = o=Zoomserv
database      = /srv/zoomserv/X500.db
txlog         = /srv/zoomserv/X500.log
page_size     = 4096
fsync         = per-transaction

[replication]
enabled       = false
peers         =

[backup]
# stasis pauses the service through its control socket before capture:
quiesce       = zoomsim pause --db /srv/zoomserv/X500.db
resume        = zoomsim resume --db /srv/zoomserv/X500.db
CONF

units="Sales Engineering Support Finance Legal Operations Research Marketing Facilities Security Training Procurement"
i=0
for u in $units; do
	i=$((i + 1))
	lc=$(echo "$u" | tr 'A-Z' 'a-z')
	f="$out/ldif/$(printf '%02d' "$i")-$lc.ldif"
	{
		echo "version: 1"
		echo
		echo "dn: ou=$u,o=Zoomserv"
		echo "objectClass: organizationalUnit"
		echo "ou: $u"
		echo
		for n in 1 2 3 4 5 6; do
			echo "dn: cn=$u Person $n,ou=$u,o=Zoomserv"
			echo "objectClass: inetOrgPerson"
			echo "cn: $u Person $n"
			echo "sn: Person$n"
			echo "mail: $lc.person$n@zoomserv.example"
			echo "telephoneNumber: +44 20 7946 $(printf '%02d%02d' "$i" "$n")"
			echo
		done
	} >"$f"
done

cat >"$out/README" <<'TXT'
A small Zoomserv directory, the sample tree the stasis README demo backs up.

  X500.db            the directory database: 512 pages of 4096 bytes, written in
                     place by the running service (here: made by zoomsim).
                     `zoomsim check X500.db` verifies it.
  X500.log           the transaction log, one line per committed transaction.
  etc/zoomserv.conf  service configuration.
  ldif/*.ldif        directory exports, one per organisational unit.

Regenerate with `sh testdata/gen-zoomserv.sh`; the result is byte-identical.
To see a live service, run `zoomsim run --db /tmp/demo/X500.db` on a copy.
TXT
