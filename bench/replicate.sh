#!/usr/bin/env bash
# Replication benchmark for `georep serve`, measured in one run:
#   (1) a steady RATE objects/s (default 200) of 64 KiB for DURATION s (default 30) written
#       into a local-folder source; filesystem notifications -> a local destination
#   (2) the same into an Azurite container, each blob announced by an Event Grid event
#       posted to the webhook -> a second Azurite (two regions)
#   (3) the cost of a scan of SCAN_COUNT (default 100,000) unchanged objects against a
#       bare listing of the same folder by `georep ls`, `find` and `rclone lsf` (if installed)
# For (1) and (2): p50/p99/max latency from the change at the source to the copy being
# visible at the destination (from georep's own per-object record), the largest backlog
# seen, and the backlog in the first and last thirds of the run (growth = falling behind).
# Data lives on a fresh tmpfs when run as root. CASES="1 3" runs a subset.
# Needs: azurite-blob (npm), python3 with azure-storage-blob (pip); rclone optional.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
RATE=${RATE:-200}
DURATION=${DURATION:-30}
SCAN_COUNT=${SCAN_COUNT:-100000}
CASES=${CASES:-1 2 3}
want() { [[ " $CASES " == *" $1 "* ]]; }

MOUNTED=
B=$(mktemp -d /tmp/georep-rbench.XXXXXX)
if [ "$(id -u)" = 0 ] && mount -t tmpfs -o size=8g georep-rbench "$B"; then MOUNTED=1; fi
PIDS=$B/pids
touch "$PIDS"
cleanup() {
  xargs -r kill < "$PIDS" 2>/dev/null || true
  sleep 1
  if [ -n "$MOUNTED" ]; then umount "$B" && rmdir "$B"; else rm -rf "$B"; fi
}
trap cleanup EXIT

need() { command -v "$1" >/dev/null 2>&1 || { echo "missing $1: $2" >&2; exit 2; }; }
need azurite-blob "npm install -g azurite"
python3 -c 'import azure.storage.blob' 2>/dev/null || { echo "missing azure-storage-blob: pip install azure-storage-blob" >&2; exit 2; }

echo "== building georep (release)"
cargo build --release --locked -p georep >/dev/null 2>&1 || cargo build --release --locked -p georep
GEOREP=$ROOT/target/release/georep
source bench/lib.sh
export AZURE_STORAGE_ACCOUNT_NAME=devstoreaccount1 AZURE_STORAGE_ACCOUNT_KEY=$KEY

# topo FILE SRC_URL DST_URL SCAN_INTERVAL: a two-region topology with one policy "p"
topo() {
  cat > "$1" <<TOML
[state]
url = "sqlite://state/georep.db"
[regions.a]
[regions.b]
[stores.src]
region = "a"
url = "$2"
[stores.dst]
region = "b"
url = "$3"
[[policies]]
name = "p"
source = "src"
destinations = ["dst"]
scan_interval = "$4"
rpo = "1m"
transfers = 16
TOML
}
# serve NAME CONFIG: starts the daemon, prints its API base URL
serve() {
  local out=$B/$1.out
  $GEOREP serve -c "$2" --listen 127.0.0.1:0 --log-level warn > "$out" 2> "$B/$1.log" &
  echo $! >> "$PIDS"; echo $! > "$B/$1.pid"
  for _ in $(seq 200); do grep -q "API on" "$out" 2>/dev/null && break; sleep 0.05; done
  sed -n 's/.*API on //p' "$out"
}
# stop NAME: prints the daemon's peak RSS, then stops it with SIGTERM
stop() {
  local pid; pid=$(cat "$B/$1.pid")
  echo "daemon peak RSS ($1): $(awk '/VmHWM/ {printf "%.0f MiB", $2/1024}' /proc/$pid/status)" | tee -a "$B/rss.txt"
  kill -TERM "$pid" || true
}

if want 1; then
  echo "== (1) $RATE/s x 64 KiB for ${DURATION}s into a local folder (filesystem notifications)"
  mkdir -p $B/l/src $B/l/dst
  topo $B/l/georep.toml src dst 5m
  API=$(serve l $B/l/georep.toml)
  python3 bench/replicate_load.py --mode local --api "$API" --policy p --state $B/l/state/georep.db \
    --src $B/l/src --rate $RATE --seconds $DURATION | tee $B/r1.json
  stop l
fi

if want 2; then
  echo "== (2) $RATE/s x 64 KiB for ${DURATION}s into Azurite + Event Grid webhook -> second Azurite"
  P1=$(start_azurite); P2=$(start_azurite)
  python3 - "$P1" "$P2" <<PY
import sys
from azure.storage.blob import BlobServiceClient
for p, n in ((sys.argv[1], "src"), (sys.argv[2], "dst")):
    BlobServiceClient(account_url=f"http://127.0.0.1:{p}/devstoreaccount1",
        credential={"account_name": "devstoreaccount1", "account_key": "$KEY"}).create_container(n)
PY
  mkdir -p $B/z
  topo $B/z/georep.toml http://127.0.0.1:$P1/devstoreaccount1/src http://127.0.0.1:$P2/devstoreaccount1/dst 5m
  API=$(serve z $B/z/georep.toml)
  # The webhook needs its own token, which serve generates beside the state.
  python3 bench/replicate_load.py --mode azure --api "$API" --policy p --state $B/z/state/georep.db \
    --token "$(cat $B/z/state/georep.events-token)" --endpoint http://127.0.0.1:$P1/devstoreaccount1 --container src --rate $RATE --seconds $DURATION | tee $B/r2.json
  stop z
fi

if want 3; then
  echo "== (3) scan of $SCAN_COUNT unchanged objects vs a bare listing"
  mkdir -p $B/s/dst
  python3 - $B/s/src $SCAN_COUNT <<'PY'
import os, sys
root, n = sys.argv[1], int(sys.argv[2])
data = b"x" * 1024
for i in range(n):
    d = os.path.join(root, f"d{i // 1000:04d}")
    if i % 1000 == 0:
        os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, f"f{i:07d}.bin"), "wb") as f:
        f.write(data)
PY
  topo $B/s/georep.toml src dst 3s
  API=$(serve s $B/s/georep.toml)
  python3 - "$API" $SCAN_COUNT > $B/scan.txt <<'PY'
import json, sys, time, urllib.request, statistics
api, n = sys.argv[1], int(sys.argv[2])
get = lambda: json.load(urllib.request.urlopen(api + "/api/v1/policies/p", timeout=60))
t0 = time.time()
while True:
    s = get()
    if s["source_objects"] == n and all(d["pending"] == 0 for d in s["destinations"]):
        break
    time.sleep(0.5)
first = time.time() - t0
# The next scans see an unchanged source: record three of them.
seen, durations = s["last_scan"]["scans"], []
while len(durations) < 3:
    s = get()
    if s["last_scan"]["scans"] > seen:
        seen = s["last_scan"]["scans"]
        durations.append(s["last_scan"]["duration_ms"] / 1000)
    time.sleep(0.2)
print(f"initial replication of {n} objects: {first:.1f}s")
print("unchanged scan seconds:", " ".join(f"{d:.3f}" for d in durations))
print(f"SCAN {statistics.median(durations):.3f}")
PY
  stop s
  cat $B/scan.txt
  median3() { python3 -c "import statistics,sys; print(f'{statistics.median(map(float, sys.argv[1:])):.3f}')" "$@"; }
  t() { local s e; s=$(date +%s.%N); "$@" > /dev/null; e=$(date +%s.%N); python3 -c "print($e-$s)"; }
  LS=$(median3 $(t $GEOREP ls $B/s/src) $(t $GEOREP ls $B/s/src) $(t $GEOREP ls $B/s/src))
  FIND=$(median3 $(t find $B/s/src -type f -printf '%P %s %T@\n') $(t find $B/s/src -type f -printf '%P %s %T@\n') $(t find $B/s/src -type f -printf '%P %s %T@\n'))
  SCAN=$(sed -n 's/^SCAN //p' $B/scan.txt)
  echo "bare listing: georep ls ${LS}s, find ${FIND}s"
  if command -v rclone >/dev/null; then
    RC=$(median3 $(t rclone lsf -R --files-only $B/s/src) $(t rclone lsf -R --files-only $B/s/src) $(t rclone lsf -R --files-only $B/s/src))
    echo "bare listing: rclone lsf ${RC}s"
  fi
  python3 -c "print(f'scan / georep ls = {$SCAN/$LS:.2f}x (target <= 1.5x); scan / find = {$SCAN/$FIND:.2f}x')"
fi

echo
echo "== summary"
for f in $B/r1.json $B/r2.json; do [ -f "$f" ] && cat "$f"; done
[ -f $B/scan.txt ] && cat $B/scan.txt
[ -f $B/rss.txt ] && cat $B/rss.txt
true
