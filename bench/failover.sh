#!/usr/bin/env bash
# Failover-group benchmark on two local PostgreSQL clusters ("regions"), in one run:
#   (1) listener throughput: pgbench select-only through the read-write listener against
#       the same pgbench connecting directly and through HAProxy in TCP mode (the proxy
#       Patroni setups deploy): throughput and added latency (target >= HAProxy)
#   (2) DRILLS (default 20) consecutive `georep drill` runs (failover + failback under a
#       write load): lost writes, RTO and write gap each way
#   (3) automatic failover after SIGKILL of the primary's postmaster: time from the kill
#       to the first write acknowledged through the listener, minus detection and grace
# Run as root (clusters run as the postgres user). Data on a tmpfs. Needs haproxy
# (apt-get install -y haproxy).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
DRILLS=${DRILLS:-20}
SECONDS_PGB=${SECONDS_PGB:-10}
PGBIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
[ "$(id -u)" = 0 ] || { echo "run as root (clusters run as postgres)" >&2; exit 2; }
command -v haproxy >/dev/null || { echo "haproxy is missing: apt-get install -y haproxy" >&2; exit 2; }
B=$(mktemp -d /tmp/georep-fobench.XXXXXX)
mount -t tmpfs -o size=2g georep-fobench "$B"; chown postgres:postgres "$B"
PIDS=$B/pids; : > $PIDS
source bench/lib.sh
P1=$(free_port); P2=$(free_port); RW=$(free_port); RO=$(free_port); API=$(free_port)
SERVE_PID=
cleanup() {
  [ -n "$SERVE_PID" ] && kill $SERVE_PID 2>/dev/null || true
  for p in $(cat $PIDS 2>/dev/null); do kill $p 2>/dev/null || true; done
  for d in $B/qc $B/we; do [ -d $d ] && runuser -u postgres -- $PGBIN/pg_ctl -D $d -m immediate stop >/dev/null 2>&1 || true; done
  sleep 0.5; [ -n "${KEEP:-}" ] && cp -r $B/reports $KEEP/ 2>/dev/null; umount "$B"; rmdir "$B"
}
trap cleanup EXIT
start() {
  runuser -u postgres -- $PGBIN/initdb -D $1 -U postgres -A trust --no-sync -E UTF8 --locale=C.UTF-8 >/dev/null
  printf "listen_addresses = '127.0.0.1'\nwal_level = logical\nfsync = off\nmax_connections = 200\n" >> $1/postgresql.conf
  runuser -u postgres -- $PGBIN/pg_ctl -D $1 -l $1.log -w -o "-p $2 -k $B" start >/dev/null
}
start $B/qc $P1; start $B/we $P2
Q="postgres://postgres@127.0.0.1:$P1"; W="postgres://postgres@127.0.0.1:$P2"
for u in $Q $W; do psql -q -d $u/postgres -c "CREATE DATABASE shop"; done
pgbench -q -i -s 5 -d $Q/shop >/dev/null 2>&1
psql -q -d $Q/shop -c "ALTER TABLE pgbench_history ADD COLUMN id bigserial PRIMARY KEY"

echo "== building georep (release)"
cargo build --release --locked -p georep >/dev/null 2>&1 || cargo build --release --locked -p georep
GEOREP=$ROOT/target/release/georep
topo() { # POLICY-LINES
  cat > $B/georep.toml <<TOML
[state]
url = "sqlite://state/g.db"
[server]
listen = "127.0.0.1:$API"
[regions.qc]
[regions.we]
[[databases]]
name = "shop"
engine = "postgres"
primary = { region = "qc", url = "$Q/shop" }
replicas = [ { region = "we", url = "$W/shop" } ]
[[failover_groups]]
name = "fg"
database = "shop"
read_write_listener = "127.0.0.1:$RW"
read_only_listener = "127.0.0.1:$RO"
probe_interval = "500ms"
probe_timeout = "400ms"
probe_failures = 2
$1
TOML
}
serve() {
  $GEOREP serve -c $B/georep.toml --log-level warn > $B/serve.out 2> $B/serve.log &
  SERVE_PID=$!
  for _ in $(seq 200); do grep -q "API on" $B/serve.out 2>/dev/null && break; sleep 0.05; done
}
topo ""
$GEOREP db setup shop -c $B/georep.toml >/dev/null 2>&1
serve

echo "== (1) pgbench -S (select-only), 8 clients, ${SECONDS_PGB}s: direct, HAProxy (TCP mode), georep's listener"
HP=$(start_haproxy $P1)
H="postgres://postgres@127.0.0.1:$HP/shop"; L="postgres://postgres@127.0.0.1:$RW/shop"
tps() { pgbench -n -S -c 8 -j 2 -T $SECONDS_PGB -d "$1" 2>/dev/null | sed -n 's/^tps = \([0-9.]*\).*/\1/p'; }
D1=$(tps $Q/shop); H1=$(tps $H); L1=$(tps $L); D2=$(tps $Q/shop); H2=$(tps $H); L2=$(tps $L)
python3 -c "d=($D1+$D2)/2; h=($H1+$H2)/2; l=($L1+$L2)/2; print(f'direct {d:.0f} tps, HAProxy {h:.0f} tps ({h/d*100:.1f}%), georep {l:.0f} tps ({l/d*100:.1f}%): georep/HAProxy {l/h:.2f}x (target >= 1x)')"
cpu() { awk '{print $14 + $15}' /proc/$SERVE_PID/stat; }  # utime + stime, in clock ticks
C0=$(cpu); OUT=$(pgbench -n -S -c 8 -j 2 -T $SECONDS_PGB -d "postgres://postgres@127.0.0.1:$RW/shop" 2>/dev/null); C1=$(cpu)
N=$(echo "$OUT" | sed -n 's/^number of transactions actually processed: \([0-9]*\).*/\1/p')
python3 -c "print(f'   the daemon used {($C1-$C0)/$(getconf CLK_TCK):.2f} CPU-seconds for {$N} transactions: {($C1-$C0)/$(getconf CLK_TCK)/$N*1e6:.1f} µs of CPU per transaction (two hops each way)')"
echo "   at a fixed 2000 tps (CPU not saturated): average latency direct vs through the listener"
lat() { pgbench -n -S -R 2000 -c 8 -j 2 -T $SECONDS_PGB -d "$1" 2>/dev/null | sed -n 's/^latency average = \([0-9.]*\) ms/\1/p'; }
LD=$(lat $Q/shop); LH=$(lat $H); LL=$(lat $L)
python3 -c "print(f'   direct {$LD*1000:.0f} µs, HAProxy {$LH*1000:.0f} µs (+{($LH-$LD)*1000:.0f} µs), georep {$LL*1000:.0f} µs (+{($LL-$LD)*1000:.0f} µs) per transaction')"
echo "   (same, with a new connection per transaction: -C)"
tpsc() { pgbench -n -S -C -c 8 -j 2 -T $SECONDS_PGB -d "$1" 2>/dev/null | sed -n 's/^tps = \([0-9.]*\).*/\1/p'; }
DC=$(tpsc $Q/shop); HC=$(tpsc $H); LC=$(tpsc $L)
python3 -c "print(f'   direct {$DC:.0f} tps, HAProxy {$HC:.0f} tps ({$HC/$DC*100:.1f}%), georep {$LC:.0f} tps ({$LC/$DC*100:.1f}%)')"

echo "== (2) $DRILLS consecutive drills"
mkdir -p $B/reports
for i in $(seq $DRILLS); do
  $GEOREP drill fg -c $B/georep.toml --settle 1 --report-dir $B/reports > $B/drill.$i.out 2>&1 || { echo "drill $i FAILED"; cat $B/drill.$i.out; }
done
drill_summary $B/reports

echo "== (3) automatic failover after SIGKILL of the primary (grace 2s, probes 2 x 500ms)"
kill $SERVE_PID; wait $SERVE_PID 2>/dev/null || true; SERVE_PID=
topo $'policy = "automatic"\ngrace_period = "2s"\nmax_data_loss = "5s"'
serve
CUR=$(curl -s http://127.0.0.1:$API/api/v1/failover-groups/fg | python3 -c 'import json,sys; print(json.load(sys.stdin)["primary"])')
if [ "$CUR" = "primary" ]; then DIR=$B/qc; else DIR=$B/we; fi
# The replica must be streaming (its lag known) or automatic failover is rightly refused.
for _ in $(seq 600); do
  curl -s http://127.0.0.1:$API/api/v1/failover-groups/fg | python3 -c 'import json,sys; g=json.load(sys.stdin); sys.exit(0 if any(isinstance(v["seconds"], (int, float)) for v in g["last_known_lag"].values()) else 1)' && break
  sleep 0.1
done
python3 - "$DIR" "postgres://postgres@127.0.0.1:$RW/shop" <<'PY'
import subprocess, sys, time
d, url = sys.argv[1], sys.argv[2]
pid = open(d + "/postmaster.pid").readline().strip()
t0 = time.time(); subprocess.run(["kill", "-9", pid])
while time.time() - t0 < 60:
    r = subprocess.run(["psql", "-X", "-q", "-d", url, "-c", "INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES (1, 1, 1, 1, now())"], capture_output=True)
    if r.returncode == 0: break
    time.sleep(0.05)
t = time.time() - t0
if t >= 60: sys.exit("no write succeeded through the listener within 60 s of the kill")
print(f"first write through the listener {t:.2f}s after the kill: {t - 2.0:.2f}s after the 2.0s grace period, detection included (target < 5s)")
PY
curl -s http://127.0.0.1:$API/api/v1/failover-groups/fg | python3 -c 'import json,sys; g=json.load(sys.stdin); print("epoch", g["epoch"], "primary", g["primary"], "fenced", g["fenced"], "; data loss:", g["last_failover"]["data_loss"])'
