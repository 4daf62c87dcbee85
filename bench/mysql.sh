#!/usr/bin/env bash
# MariaDB geo-replica benchmark on local mariadbd servers ("regions"), peers in the same run:
#   (1) initial copy of a sysbench data set: `georep db setup` against `mariadb-dump |
#       mariadb` and against mydumper/myloader (THREADS threads)    target >= 1.2x the better
#   (2) `georep db verify` against pt-table-checksum on the same data  target >= 1x
#   (3) replica lag p50/p99 under `sysbench oltp_write_only`, read from the daemon's
#       heartbeat lag every 250 ms                                 target p99 < 1 s
#   (4) the read-write listener against direct connections and HAProxy (TCP mode):
#       sysbench oltp_read_only, same clients; throughput and added latency
#   (5) DRILLS (default 20) `georep drill` runs = 2 x DRILLS planned failovers under a
#       writer: lost writes, write gap                            target 0 lost, gap < 2 s
#   (6) automatic failover after SIGKILL of the primary: first acknowledged write through
#       the listener after the grace period
# Needs root (mariadbd runs as mysql), mariadb-server, sysbench, mydumper,
# percona-toolkit and haproxy (apt-get install -y sysbench mydumper percona-toolkit haproxy).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
THREADS=${THREADS:-4}
TABLES=${TABLES:-8}
ROWS=${ROWS:-100000}
SECS=${SECS:-15}
DRILLS=${DRILLS:-20}
ONLY=${ONLY:-2 3 4 5 6}  # the sections after (1) to run, e.g. ONLY="2 4"
want() { [[ " $ONLY " == *" $1 "* ]]; }
[ "$(id -u)" = 0 ] || { echo "run as root (mariadbd runs as mysql)" >&2; exit 2; }
for t in mariadbd sysbench mydumper myloader pt-table-checksum haproxy mariadb-dump; do
  command -v $t >/dev/null || [ -x /usr/sbin/$t ] || { echo "$t is missing: apt-get install -y mariadb-server sysbench mydumper percona-toolkit haproxy" >&2; exit 2; }
done
B=$(mktemp -d /tmp/georep-mybench.XXXXXX)
mount -t tmpfs -o size=4g georep-mybench "$B"; chown mysql:mysql "$B"
PIDS=$B/pids; : > $PIDS
source bench/lib.sh
SERVE_PID=
cleanup() {
  [ -n "$SERVE_PID" ] && kill $SERVE_PID 2>/dev/null || true
  for p in $(cat $PIDS 2>/dev/null); do kill $p 2>/dev/null || true; done
  sleep 1; umount "$B" 2>/dev/null || umount -l "$B"; rmdir "$B" 2>/dev/null || true
}
trap cleanup EXIT

# start_maria NAME ID: a server with the binary log, ROW format and GTID strict mode.
start_maria() {
  local d=$B/$1 port; port=$(free_port)
  mkdir -p $d; chown mysql:mysql $d
  mariadb-install-db --no-defaults --user=mysql --datadir=$d --auth-root-authentication-method=normal --skip-test-db >/dev/null 2>&1
  /usr/sbin/mariadbd --no-defaults --user=mysql --datadir=$d --port=$port --bind-address=127.0.0.1 \
    --socket=$d/sock --pid-file=$d/pid --log-error=$d/err.log --server-id=$2 --log-bin=$d/binlog \
    --relay-log=$d/relay --binlog-format=ROW --log-slave-updates --gtid-strict-mode=1 --skip-name-resolve \
    --innodb-buffer-pool-size=512M --innodb-log-file-size=256M --max-connections=500 \
    --innodb-flush-log-at-trx-commit=2 --sync-binlog=0 --slave-parallel-threads=4 >/dev/null 2>&1 &
  echo $! >> $PIDS
  for _ in $(seq 300); do mariadb -uroot -h127.0.0.1 -P$port -e 'SELECT 1' >/dev/null 2>&1 && break; sleep 0.1; done
  echo $port
}
sql() { mariadb -uroot -h127.0.0.1 -P$1 -N -B -e "$2"; }
P=$(start_maria qc 1); R=$(start_maria we 2); X=$(start_maria peer 3)
echo "servers: primary :$P, replica :$R, peer target :$X"

echo "== building georep (release)"
cargo build --release --locked -p georep >/dev/null 2>&1 || cargo build --release --locked -p georep
GEOREP=$ROOT/target/release/georep
RW=$(free_port); RO=$(free_port); API=$(free_port)
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
engine = "mariadb"
rpo = "5s"
primary = { region = "qc", url = "mysql://root@127.0.0.1:$P/sbtest" }
replicas = [ { region = "we", url = "mysql://root@127.0.0.1:$R/mysql" } ]
[[failover_groups]]
name = "fg"
database = "shop"
read_write_listener = "127.0.0.1:$RW"
read_only_listener = "127.0.0.1:$RO"
probe_interval = "500ms"
probe_timeout = "1s"
probe_failures = 2
$1
TOML
}
serve() {
  $GEOREP serve -c $B/georep.toml --log-level warn > $B/serve.out 2> $B/serve.log &
  SERVE_PID=$!
  for _ in $(seq 200); do grep -q "API on" $B/serve.out 2>/dev/null && break; sleep 0.05; done
}
SB="sysbench --db-driver=mysql --mysql-host=127.0.0.1 --mysql-user=root --mysql-db=sbtest --tables=$TABLES --table-size=$ROWS"
sql $P "CREATE DATABASE sbtest"
echo "== preparing sysbench data: $TABLES tables x $ROWS rows"
$SB --mysql-port=$P --threads=$THREADS oltp_write_only prepare >/dev/null
SIZE=$(sql $P "SELECT ROUND(SUM(data_length+index_length)/1048576) FROM information_schema.TABLES WHERE table_schema='sbtest'")
echo "   $SIZE MiB"
topo ""
cd $B

echo "== (1) initial copy, $THREADS threads for the peers"
t() { local s; s=$(date +%s.%N); "$@" >/dev/null 2>$B/err.txt || { cat $B/err.txt; exit 1; }; python3 -c "print(f'{$(date +%s.%N)-$s:.2f}')"; }
# Two rounds, the tools alternating, best of each: the first tool to run would
# otherwise meet the primary still busy after sysbench's prepare.
TGS=(); TDS=(); TMS=()
for round in 1 2; do
  if [ $round = 2 ]; then
    $GEOREP db teardown shop -c $B/georep.toml >/dev/null
    TGS+=($(t $GEOREP db setup shop -c $B/georep.toml --jobs $THREADS --wipe))
  else
    TGS+=($(t $GEOREP db setup shop -c $B/georep.toml --jobs $THREADS))
  fi
  sql $X "DROP DATABASE IF EXISTS sbtest"
  TDS+=($(t bash -c "mariadb-dump -uroot -h127.0.0.1 -P$P --single-transaction --gtid --databases sbtest | mariadb -uroot -h127.0.0.1 -P$X"))
  sql $X "DROP DATABASE IF EXISTS sbtest"
  TMS+=($(t bash -c "rm -rf $B/dump && mydumper -u root -h 127.0.0.1 -P $P -B sbtest -t $THREADS -o $B/dump && myloader -u root -h 127.0.0.1 -P $X -d $B/dump -t $THREADS -o"))
done
python3 -c "
g,d,m=[${TGS[0]},${TGS[1]}],[${TDS[0]},${TDS[1]}],[${TMS[0]},${TMS[1]}]
best=min(min(d),min(m))
print(f'georep db setup {min(g):.2f}s, mariadb-dump|mariadb {min(d):.2f}s, mydumper+myloader {min(m):.2f}s (best of 2 rounds; rounds: {g}, {d}, {m}): georep is {best/min(g):.2f}x the better peer (target >= 1.2x)')"

if want 2; then
echo "== (2) verify: georep db verify vs pt-table-checksum (same data, replica in sync)"
for _ in $(seq 300); do [ "$(sql $R 'SELECT @@gtid_slave_pos')" = "$(sql $P 'SELECT @@gtid_binlog_pos')" ] && break; sleep 0.1; done
TV=$(t $GEOREP db verify shop -c $B/georep.toml --jobs $THREADS)
sql $P "CREATE USER IF NOT EXISTS 'pt'@'127.0.0.1'; GRANT ALL ON *.* TO 'pt'@'127.0.0.1'" >/dev/null
TP=$(t pt-table-checksum --no-check-binlog-format --no-check-replication-filters --recursion-method=none --databases=sbtest h=127.0.0.1,P=$P,u=root)
python3 -c "g,p=$TV,$TP; print(f'georep db verify {g:.2f}s, pt-table-checksum {p:.2f}s: {p/g:.2f}x (target >= 1x; pt checks on the primary and leaves the replica to compare as it replicates)')"

fi

serve
for _ in $(seq 300); do curl -s http://127.0.0.1:$API/api/v1/failover-groups/fg | python3 -c 'import json,sys; g=json.load(sys.stdin); sys.exit(0 if isinstance(g["last_known_lag"].get("we",{}).get("seconds"),(int,float)) else 1)' 2>/dev/null && break; sleep 0.1; done

if want 3; then
echo "== (3) replica lag under sysbench oltp_write_only, $THREADS threads, ${SECS}s"
python3 - $API $SECS <<'PY' &
import json, sys, time, urllib.request, statistics as st
api, secs = sys.argv[1], float(sys.argv[2])
lags = []; end = time.time() + secs
while time.time() < end:
    g = json.load(urllib.request.urlopen(f"http://127.0.0.1:{api}/api/v1/failover-groups/fg"))
    s = g["last_known_lag"].get("we", {}).get("seconds")
    if s is not None: lags.append(s)
    time.sleep(0.25)
lags.sort()
q = lambda p: lags[min(len(lags)-1, int(p*len(lags)))]
print(f"   lag p50 {q(0.5)*1000:.0f} ms, p99 {q(0.99)*1000:.0f} ms, max {lags[-1]*1000:.0f} ms over {len(lags)} samples (target p99 < 1 s)")
PY
LAGPID=$!
$SB --mysql-port=$P --threads=$THREADS --time=$SECS --report-interval=0 oltp_write_only run | sed -n 's/^ *transactions: *\([0-9]*\) *(\([0-9.]*\) per sec.)/   sysbench: \2 transactions\/s on the primary/p'
wait $LAGPID

fi
if want 4; then
echo "== (4) oltp_read_only, $THREADS clients, ${SECS}s: direct, HAProxy (TCP mode), georep's listener"
HP=$(start_haproxy $P)
ro() { $SB --mysql-port=$1 --threads=$THREADS --time=$SECS oltp_read_only run | awk '/transactions:/ {gsub(/[()]/,"",$3); t=$3} /avg:/ {a=$2} END {print t, a}'; }
read D1 DL1 < <(ro $P); read H1 HL1 < <(ro $HP); read L1 LL1 < <(ro $RW)
read D2 DL2 < <(ro $P); read H2 HL2 < <(ro $HP); read L2 LL2 < <(ro $RW)
python3 -c "
d,h,l=($D1+$D2)/2,($H1+$H2)/2,($L1+$L2)/2; dl,hl,ll=($DL1+$DL2)/2,($HL1+$HL2)/2,($LL1+$LL2)/2
print(f'   direct {d:.0f} tps ({dl:.2f} ms), HAProxy {h:.0f} tps ({hl:.2f} ms, +{(hl-dl)*1000:.0f} µs), georep {l:.0f} tps ({ll:.2f} ms, +{(ll-dl)*1000:.0f} µs)')
print(f'   georep/HAProxy throughput {l/h:.2f}x; georep {l/d*100:.1f}% of direct, HAProxy {h/d*100:.1f}%')"
cpu() { awk '{print $14 + $15}' /proc/$1/stat; }  # utime + stime, in clock ticks
HPID=$(head -1 $B/haproxy.$HP.pid)
C0=$(cpu $HPID); read H3 _ < <(ro $HP); C1=$(cpu $HPID)
G0=$(cpu $SERVE_PID); read L3 _ < <(ro $RW); G1=$(cpu $SERVE_PID)
python3 -c "
tk=$(getconf CLK_TCK); h=($C1-$C0)/tk/($H3*$SECS)*1e6; g=($G1-$G0)/tk/($L3*$SECS)*1e6
print(f'   proxy CPU per transaction (14 queries): HAProxy {h:.0f} µs, georep {g:.0f} µs (the daemon, probes included)')"

fi
if want 5; then
echo "== (5) $DRILLS drills (each a planned failover and a failback under a writer)"
mkdir -p $B/reports
for i in $(seq $DRILLS); do
  $GEOREP drill fg -c $B/georep.toml --settle 1 --report-dir $B/reports > $B/drill.$i.out 2>&1 || { echo "drill $i FAILED"; cat $B/drill.$i.out; }
done
drill_summary $B/reports

fi
if want 6; then
echo "== (6) automatic failover after SIGKILL of the primary (grace 2s, probes 2 x 500ms)"
kill $SERVE_PID; wait $SERVE_PID 2>/dev/null || true; SERVE_PID=
topo $'policy = "automatic"\ngrace_period = "2s"\nmax_data_loss = "5s"'
serve
CUR=$(curl -s http://127.0.0.1:$API/api/v1/failover-groups/fg | python3 -c 'import json,sys; print(json.load(sys.stdin)["primary"])')
if [ "$CUR" = "primary" ]; then DIR=$B/qc; else DIR=$B/we; fi
for _ in $(seq 600); do
  curl -s http://127.0.0.1:$API/api/v1/failover-groups/fg | python3 -c 'import json,sys; g=json.load(sys.stdin); sys.exit(0 if any(isinstance(v.get("seconds"), (int, float)) for v in g["last_known_lag"].values()) else 1)' && break
  sleep 0.1
done
python3 - "$DIR" "$RW" <<'PY'
import subprocess, sys, time
d, rw = sys.argv[1], sys.argv[2]
pid = open(d + "/pid").readline().strip()
t0 = time.time(); subprocess.run(["kill", "-9", pid])
while time.time() - t0 < 60:
    r = subprocess.run(["mariadb", "-uroot", "-h127.0.0.1", f"-P{rw}", "-e", "CREATE DATABASE IF NOT EXISTS georep; CREATE TABLE IF NOT EXISTS georep.after_kill (id INT PRIMARY KEY); REPLACE INTO georep.after_kill VALUES (1)"], capture_output=True)
    if r.returncode == 0: break
    time.sleep(0.05)
t = time.time() - t0
if t >= 60: sys.exit("no write succeeded through the listener within 60 s of the kill")
print(f"   first write through the listener {t:.2f}s after the kill: {t - 2.0:.2f}s after the 2.0s grace period, detection included")
PY
curl -s http://127.0.0.1:$API/api/v1/failover-groups/fg | python3 -c 'import json,sys; g=json.load(sys.stdin); print("   epoch", g["epoch"], "primary", g["primary"], "fenced", g["fenced"], "; data loss:", g["last_failover"]["data_loss"])'
fi
