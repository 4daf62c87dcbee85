#!/usr/bin/env bash
# Transfer benchmark: georep against its peers, measured in the same run.
#   (a) 20,000 files of 4 KiB, local -> local        peers: rclone, cp -r
#   (b) 8 files of 256 MiB, local -> local           peers: rclone, cp -r
#   (c) no-op sync of 100,000 unchanged files        peer:  rclone sync
#   (d) (a) between two Azurite instances            peer:  Azure SDK for Python (same threads)
# Each case runs ROUNDS times (default 3), tools interleaved, and reports the median:
# on a small VM, writeback from one run slows the next, so a single ordered run is unfair.
# Prints a table of wall times and ratios (peer time / georep time; > 1 means georep is
# faster). Peak RSS from GNU time. Data lives in $BENCH_DIR (default: a temp folder).
# Needs: rclone (apt), azurite-blob (npm), python3 with azure-storage-blob (pip).
# CASES="a c" runs only those cases (default: all).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
JOBS=${JOBS:-16}
CASES=${CASES:-a b c d}
ROUNDS=${ROUNDS:-3}
want() { [[ " $CASES " == *" $1 "* ]]; }
# By default the data lives on a fresh tmpfs (as root): this VM's ext4 has no journal, and
# after a large delete it scans recently freed inodes on every file creation for minutes,
# which swamps what is being measured. Set BENCH_DIR to measure a disk instead.
MOUNTED=
if [ -z "${BENCH_DIR:-}" ]; then
  BENCH_DIR=$(mktemp -d /tmp/georep-bench.XXXXXX)
  if [ "$(id -u)" = 0 ] && mount -t tmpfs -o size=14g georep-bench "$BENCH_DIR"; then MOUNTED=1; fi
fi
mkdir -p "$BENCH_DIR"
PIDS=$BENCH_DIR/azurite.pids
cleanup() {
  [ -f "$PIDS" ] && xargs -r kill < "$PIDS" 2>/dev/null
  sleep 0.5
  if [ -n "$MOUNTED" ]; then umount "$BENCH_DIR" && rmdir "$BENCH_DIR"
  elif [ -z "${KEEP:-}" ]; then rm -rf "$BENCH_DIR"; fi
}
trap cleanup EXIT

need() { command -v "$1" >/dev/null 2>&1 || { echo "missing $1: $2" >&2; exit 2; }; }
need rclone "apt-get install -y rclone"
need azurite-blob "npm install -g azurite"
need /usr/bin/time "apt-get install -y time"
python3 -c 'import azure.storage.blob' 2>/dev/null || { echo "missing azure-storage-blob: pip install azure-storage-blob" >&2; exit 2; }

echo "== building georep (release)"
cargo build --release --locked -p georep >/dev/null 2>&1 || cargo build --release --locked -p georep
GEOREP=$ROOT/target/release/georep

# run NAME CMD... : prints seconds and peak RSS (KiB) into $BENCH_DIR/NAME.t
run() {
  local name=$1; shift
  sync; /usr/bin/time -f "%e %M" -o "$BENCH_DIR/$name.t" "$@" >/dev/null 2>"$BENCH_DIR/$name.err" || {
    echo "command failed: $*" >&2; cat "$BENCH_DIR/$name.err" >&2; exit 1; }
}
# ext4 skips inodes freed in the last ~30 s when it allocates new ones, which makes every
# file creation slow right after a big delete: wait that out before timing anything.
settle() { sync; if [ -z "$MOUNTED" ]; then sleep ${SETTLE:-180}; fi; }

# median over rounds of field N (1 = seconds, 2 = peak RSS KiB) of NAME_*.t
median() { python3 -c "import sys,glob,statistics as s; print(s.median(float(open(f).read().split()[$2-1]) for f in glob.glob(sys.argv[1])))" "$BENCH_DIR/$1_r*.t"; }
secs() { median "$1" 1; }
rss() { python3 -c "print(int($(median "$1" 2) // 1024))"; }

echo "== generating data in $BENCH_DIR"
python3 - "$BENCH_DIR" <<'PY'
import os, sys
root = sys.argv[1]
def tree(name, count, size, per_dir=1000):
    base = os.path.join(root, name)
    blob = os.urandom(size)
    for i in range(count):
        d = os.path.join(base, f"d{i // per_dir:04d}")
        if i % per_dir == 0:
            os.makedirs(d, exist_ok=True)
        with open(os.path.join(d, f"f{i:07d}.bin"), "wb") as f:
            f.write(blob)
tree("small", 20000, 4096)
tree("noop", 100000, 128)
base = os.path.join(root, "large"); os.makedirs(base, exist_ok=True)
chunk = os.urandom(1 << 20)
for i in range(8):
    with open(os.path.join(base, f"big{i}.bin"), "wb") as f:
        for _ in range(256):
            f.write(chunk)
PY

B=$BENCH_DIR
settle
RCLONE="rclone --transfers $JOBS --checkers $JOBS --config /dev/null"
if want a; then
echo "== (a) 20,000 x 4 KiB local -> local"
for r in $(seq $ROUNDS); do
  run a_georep_r$r $GEOREP copy $B/small $B/dst/a_georep_$r --transfers $JOBS --checkers $JOBS
  $GEOREP check $B/small $B/dst/a_georep_$r --checksum >/dev/null
  run a_rclone_r$r $RCLONE copy $B/small $B/dst/a_rclone_$r
  run a_cp_r$r cp -r $B/small $B/dst/a_cp_$r
  [ -n "$MOUNTED" ] && rm -rf $B/dst
done
fi
if want b; then
echo "== (b) 8 x 256 MiB local -> local"
for r in $(seq $ROUNDS); do
  run b_georep_r$r $GEOREP copy $B/large $B/dst/b_georep_$r --transfers $JOBS --checkers $JOBS
  $GEOREP check $B/large $B/dst/b_georep_$r --checksum >/dev/null
  run b_rclone_r$r $RCLONE copy $B/large $B/dst/b_rclone_$r
  run b_cp_r$r cp -r $B/large $B/dst/b_cp_$r
  [ -n "$MOUNTED" ] && rm -rf $B/dst
done
fi
rm -rf $B/dst; settle
if want c; then
echo "== (c) no-op sync of 100,000 unchanged files"
$GEOREP sync $B/noop $B/c_georep >/dev/null
$RCLONE sync $B/noop $B/c_rclone >/dev/null 2>&1
for r in $(seq $ROUNDS); do
  run c_georep_r$r $GEOREP sync $B/noop $B/c_georep --transfers $JOBS --checkers $JOBS
  run c_rclone_r$r $RCLONE sync $B/noop $B/c_rclone
done
rm -rf $B/c_georep $B/c_rclone; settle
fi

if want d; then
echo "== (d) 20,000 x 4 KiB Azurite -> Azurite"
source bench/lib.sh
P1=$(start_azurite); P2=$(start_azurite)
python3 - "$P1" "$P2" <<PY
import sys
from azure.storage.blob import BlobServiceClient
for p, names in ((sys.argv[1], ["src"]), (sys.argv[2], ["dgeorep", "dsdk"])):
    c = BlobServiceClient(account_url=f"http://127.0.0.1:{p}/devstoreaccount1",
                          credential={"account_name": "devstoreaccount1", "account_key": "$KEY"})
    for n in names:
        c.create_container(n)
PY
E1=http://127.0.0.1:$P1/devstoreaccount1; E2=http://127.0.0.1:$P2/devstoreaccount1
$GEOREP copy $B/small $E1/src --transfers $JOBS >/dev/null
run d_georep_r1 $GEOREP copy $E1/src $E2/dgeorep --transfers $JOBS --checkers $JOBS
run d_sdk_r1 python3 bench/azure_sdk_copy.py $E1 src $E2 dsdk $JOBS
$GEOREP check $E1/src $E2/dgeorep >/dev/null || { echo "georep's Azurite copy is incomplete" >&2; exit 1; }
fi

ratio() { python3 -c "print(f'{$1/$2:.2f}x')"; }
echo
echo "| case | georep | peer | peer time | georep advantage | georep peak RSS | peer peak RSS |"
echo "|---|---|---|---|---|---|---|"
row() { ls "$BENCH_DIR/$2"_r*.t >/dev/null 2>&1 || return 0; echo "| $1 | $(secs $2)s | $3 | $(secs $4)s | $(ratio $(secs $4) $(secs $2)) | $(rss $2) MiB | $(rss $4) MiB |"; }
row "(a) 20k x 4 KiB local->local" a_georep rclone a_rclone
row "(a) 20k x 4 KiB local->local" a_georep "cp -r" a_cp
row "(b) 8 x 256 MiB local->local" b_georep rclone b_rclone
row "(b) 8 x 256 MiB local->local" b_georep "cp -r" b_cp
row "(c) no-op sync 100k files" c_georep "rclone sync" c_rclone
row "(d) 20k x 4 KiB Azurite->Azurite" d_georep "Azure SDK (python)" d_sdk
echo
echo "data on $([ -n "$MOUNTED" ] && echo tmpfs || echo "$BENCH_DIR"); median of $ROUNDS rounds ((d): 1 round); transfers=checkers=$JOBS; $(nproc) cores; rclone $(rclone version 2>/dev/null | head -1 | cut -d' ' -f2)"
