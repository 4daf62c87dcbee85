#!/usr/bin/env bash
# PostgreSQL geo-replica benchmark, measured in one run on two local clusters ("regions"):
#   (1) replica lag under a sustained pgbench write load on the primary (TPS, DURATION):
#       p50/p99/max of the primary's replay_lag and of the unconfirmed WAL, sampled 5x/s
#   (2) `georep db copy --jobs JOBS` against `pg_dump | psql` and against
#       `pg_dump -Fd -j JOBS | pg_restore -j JOBS`, on the same pgbench data (SCALE)
# Run as root (clusters run as the postgres user) with PostgreSQL server binaries under
# /usr/lib/postgresql/*/bin. Data lives on a tmpfs.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
SCALE=${SCALE:-30}
TPS=${TPS:-500}
DURATION=${DURATION:-30}
JOBS=${JOBS:-2}
PGBIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
[ "$(id -u)" = 0 ] || { echo "run as root (clusters run as postgres)" >&2; exit 2; }

B=$(mktemp -d /tmp/georep-pgbench.XXXXXX)
mount -t tmpfs -o size=6g georep-pgbench "$B"
chown postgres:postgres "$B"
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
P1=$(free_port); P2=$(free_port)
cleanup() {
  for d in $B/qc $B/we; do [ -d $d ] && runuser -u postgres -- $PGBIN/pg_ctl -D $d -m immediate stop >/dev/null 2>&1 || true; done
  umount "$B"; rmdir "$B"
}
trap cleanup EXIT
start() { # DIR PORT
  runuser -u postgres -- $PGBIN/initdb -D $1 -U postgres -A trust --no-sync -E UTF8 --locale=C.UTF-8 >/dev/null
  cat >> $1/postgresql.conf <<CONF
listen_addresses = '127.0.0.1'
wal_level = logical
fsync = off
synchronous_commit = off
shared_buffers = 256MB
max_wal_size = 4GB
max_replication_slots = 10
max_wal_senders = 10
CONF
  runuser -u postgres -- $PGBIN/pg_ctl -D $1 -l $1.log -w -o "-p $2 -k $B" start >/dev/null
}
start $B/qc $P1; start $B/we $P2
Q="postgres://postgres@127.0.0.1:$P1"; W="postgres://postgres@127.0.0.1:$P2"
psql -q -d $Q/postgres -c "CREATE DATABASE bench"
for d in copy_georep copy_dump copy_dumpj; do psql -q -d $W/postgres -c "CREATE DATABASE $d"; done

echo "== building georep (release)"
cargo build --release --locked -p georep >/dev/null 2>&1 || cargo build --release --locked -p georep
GEOREP=$ROOT/target/release/georep

echo "== pgbench -i -s $SCALE"
pgbench -q -i -s $SCALE -d $Q/bench >/dev/null 2>&1
# pgbench_history has no key; logical replication needs one (georep db setup says so).
psql -q -d $Q/bench -c "ALTER TABLE pgbench_history ADD COLUMN id bigserial PRIMARY KEY"
SIZE=$(psql -At -d $Q/bench -c "SELECT pg_size_pretty(pg_database_size('bench'))")
echo "database size: $SIZE"

echo "== (2) one-shot copy of the database ($SIZE)"
t() { local s e; s=$(date +%s.%N); "$@" >/dev/null 2>&1; e=$(date +%s.%N); python3 -c "print(round($e-$s,2))"; }
ROUNDS=${ROUNDS:-3}
: > $B/copy.txt
for r in $(seq $ROUNDS); do
  for d in copy_georep copy_dump copy_dumpj; do psql -q -d $W/postgres -c "DROP DATABASE IF EXISTS $d" -c "CREATE DATABASE $d"; done
  rm -rf $B/dumpdir
  echo "georep $(t $GEOREP db copy --from $Q/bench --to $W/copy_georep --jobs $JOBS)" >> $B/copy.txt
  echo "dump $(t bash -c "pg_dump -d $Q/bench | psql -q -d $W/copy_dump")" >> $B/copy.txt
  echo "dumpj $(t bash -c "pg_dump -Fd -j $JOBS -f $B/dumpdir -d $Q/bench && pg_restore -j $JOBS -d $W/copy_dumpj $B/dumpdir")" >> $B/copy.txt
done
med() { python3 -c "import statistics,sys; print(round(statistics.median(float(l.split()[1]) for l in open(sys.argv[1]) if l.split()[0]==sys.argv[2]), 2))" $B/copy.txt $1; }
T_GEOREP=$(med georep); T_DUMP=$(med dump); T_DUMPJ=$(med dumpj)
for d in copy_georep copy_dump copy_dumpj; do
  echo "  $d: $(psql -At -d $W/$d -c "SELECT count(*) FROM pgbench_accounts") accounts"
done
echo "median of $ROUNDS rounds: georep db copy --jobs $JOBS: ${T_GEOREP}s; pg_dump | psql: ${T_DUMP}s; pg_dump -Fd -j $JOBS | pg_restore -j $JOBS: ${T_DUMPJ}s"
python3 -c "print(f'georep is {$T_DUMP/$T_GEOREP:.2f}x faster than pg_dump | psql, {$T_DUMPJ/$T_GEOREP:.2f}x than parallel pg_dump/pg_restore')"

echo "== (1) replica lag under pgbench at $TPS tps for ${DURATION}s"
cat > $B/georep.toml <<TOML
[regions.qc]
[regions.we]
[[databases]]
name = "bench"
engine = "postgres"
primary = { region = "qc", url = "$Q/bench" }
replicas = [ { region = "we", url = "$W/bench" } ]
TOML
psql -q -d $W/postgres -c "CREATE DATABASE bench"
S=$(date +%s.%N)
$GEOREP db setup bench -c $B/georep.toml
E=$(date +%s.%N)
echo "setup (schema + initial copy of $SIZE): $(python3 -c "print(round($E-$S,1))")s"
pgbench -n -c 4 -j 2 -R $TPS -T $DURATION -d $Q/bench > $B/pgbench.out 2>&1 &
PGB=$!
python3 - "$Q/bench" "$DURATION" <<'PY' | tee $B/lag.txt
import subprocess, sys, time, statistics
url, dur = sys.argv[1], float(sys.argv[2])
sql = ("SELECT coalesce(EXTRACT(epoch FROM r.replay_lag), 0), "
       "pg_wal_lsn_diff(pg_current_wal_lsn(), s.confirmed_flush_lsn) "
       "FROM pg_replication_slots s LEFT JOIN pg_stat_replication r ON r.application_name = s.slot_name "
       "WHERE s.slot_name = 'georep_bench_we'")
secs, byts = [], []
end = time.time() + dur
while time.time() < end:
    out = subprocess.run(["psql", "-At", "-F", " ", "-d", url, "-c", sql], capture_output=True, text=True).stdout.split()
    if len(out) == 2:
        secs.append(float(out[0])); byts.append(float(out[1]))
    time.sleep(0.2)
def pct(v, p):
    v = sorted(v); return v[max(0, min(len(v) - 1, int(round(p / 100 * len(v) + 0.5)) - 1))]
print(f"samples {len(secs)}; replay lag p50 {pct(secs,50)*1000:.0f} ms, p99 {pct(secs,99)*1000:.0f} ms, max {max(secs)*1000:.0f} ms; "
      f"unconfirmed WAL p50 {pct(byts,50)/1024:.0f} KiB, p99 {pct(byts,99)/1024:.0f} KiB")
PY
wait $PGB || true
grep -E "^tps|latency average" $B/pgbench.out || cat $B/pgbench.out
$GEOREP db verify bench -c $B/georep.toml | tail -5
$GEOREP db teardown bench -c $B/georep.toml
