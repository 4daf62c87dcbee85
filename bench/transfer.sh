#!/usr/bin/env bash
# Transfer benchmark: georep against its peers, measured in the same run.
#   (a) 20,000 files of 4 KiB, local -> local        peers: rclone, cp -r
#   (b) 8 files of 256 MiB, local -> local           peers: rclone, cp -r
#   (c) no-op sync of 100,000 unchanged files        peer:  rclone sync
#   (d) (a) between two Azurite instances            peer:  Azure SDK for Python (same threads)
# Prints a table of wall times and ratios (peer time / georep time; > 1 means georep is
# faster). Peak RSS from GNU time. Data lives in $BENCH_DIR (default: a temp folder).
# Needs: rclone (apt), azurite-blob (npm), python3 with azure-storage-blob (pip).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
JOBS=${JOBS:-16}
BENCH_DIR=${BENCH_DIR:-$(mktemp -d /tmp/georep-bench.XXXXXX)}
mkdir -p "$BENCH_DIR"
trap 'kill $(jobs -p) 2>/dev/null || true; [ -z "${KEEP:-}" ] && rm -rf "$BENCH_DIR"' EXIT

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
secs() { cut -d' ' -f1 "$BENCH_DIR/$1.t"; }
rss() { echo $(( $(cut -d' ' -f2 "$BENCH_DIR/$1.t") / 1024 )); }

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
RCLONE="rclone --transfers $JOBS --checkers $JOBS --config /dev/null"
echo "== (a) 20,000 x 4 KiB local -> local"
run a_georep $GEOREP copy $B/small $B/a_georep --transfers $JOBS --checkers $JOBS
run a_rclone $RCLONE copy $B/small $B/a_rclone
run a_cp cp -r $B/small $B/a_cp
echo "== (b) 8 x 256 MiB local -> local"
run b_georep $GEOREP copy $B/large $B/b_georep --transfers $JOBS --checkers $JOBS
run b_rclone $RCLONE copy $B/large $B/b_rclone
run b_cp cp -r $B/large $B/b_cp
rm -rf $B/a_rclone $B/a_cp $B/b_georep $B/b_rclone $B/b_cp
echo "== (c) no-op sync of 100,000 unchanged files"
$GEOREP sync $B/noop $B/c_georep >/dev/null
$RCLONE sync $B/noop $B/c_rclone >/dev/null 2>&1
run c_georep $GEOREP sync $B/noop $B/c_georep --transfers $JOBS --checkers $JOBS
run c_rclone $RCLONE sync $B/noop $B/c_rclone
rm -rf $B/c_georep $B/c_rclone

echo "== (d) 20,000 x 4 KiB Azurite -> Azurite"
KEY="Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
start_azurite() {
  local port dir; port=$(free_port); dir=$(mktemp -d "$B/azurite.XXXX")
  azurite-blob --loose --skipApiVersionCheck --disableTelemetry --silent -l "$dir" --blobHost 127.0.0.1 --blobPort "$port" >/dev/null 2>&1 &
  for _ in $(seq 100); do curl -s -o /dev/null "http://127.0.0.1:$port/" && break; sleep 0.1; done
  echo "$port"
}
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
run d_georep $GEOREP copy $E1/src $E2/dgeorep --transfers $JOBS --checkers $JOBS
run d_sdk python3 bench/azure_sdk_copy.py $E1 src $E2 dsdk $JOBS
$GEOREP check $E1/src $E2/dgeorep --checksum >/dev/null

ratio() { python3 -c "print(f'{$1/$2:.2f}x')"; }
echo
echo "| case | georep | peer | peer time | georep advantage | georep peak RSS | peer peak RSS |"
echo "|---|---|---|---|---|---|---|"
row() { echo "| $1 | $(secs $2)s | $3 | $(secs $4)s | $(ratio $(secs $4) $(secs $2)) | $(rss $2) MiB | $(rss $4) MiB |"; }
row "(a) 20k x 4 KiB local->local" a_georep rclone a_rclone
row "(a) 20k x 4 KiB local->local" a_georep "cp -r" a_cp
row "(b) 8 x 256 MiB local->local" b_georep rclone b_rclone
row "(b) 8 x 256 MiB local->local" b_georep "cp -r" b_cp
row "(c) no-op sync 100k files" c_georep "rclone sync" c_rclone
row "(d) 20k x 4 KiB Azurite->Azurite" d_georep "Azure SDK (python)" d_sdk
echo
echo "transfers=checkers=$JOBS; $(nproc) cores; rclone $(rclone version 2>/dev/null | head -1 | cut -d' ' -f2)"
