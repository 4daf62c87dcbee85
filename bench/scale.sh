#!/usr/bin/env bash
# Memory at scale: peak RSS of georep syncing 1,000,000 small files local -> local
# (a full copy, then a no-op re-sync), and of rclone's no-op sync of the same trees.
# COUNT overrides the object count (0 skips that part); LARGE_GIB the large object's size. Needs GNU time (apt-get install -y time); rclone optional.
set -euo pipefail
cd "$(dirname "$0")/.."
COUNT=${COUNT:-1000000}
JOBS=${JOBS:-16}
# Data on a fresh tmpfs when run as root (see transfer.sh for why); BENCH_DIR overrides.
MOUNTED=
if [ -z "${BENCH_DIR:-}" ]; then
  DIR=$(mktemp -d /tmp/georep-scale.XXXXXX)
  if [ "$(id -u)" = 0 ] && mount -t tmpfs -o size=16g georep-scale "$DIR"; then MOUNTED=1; fi
else
  DIR=$BENCH_DIR
fi
cleanup() { if [ -n "$MOUNTED" ]; then umount "$DIR" && rmdir "$DIR"; elif [ -z "${KEEP:-}" ]; then rm -rf "$DIR"; fi; }
trap cleanup EXIT
command -v /usr/bin/time >/dev/null || { echo "missing GNU time: apt-get install -y time" >&2; exit 2; }
cargo build --release --locked -p georep >/dev/null 2>&1 || cargo build --release --locked -p georep
GEOREP=$PWD/target/release/georep

measure() { # label, command...
  local label=$1; shift
  /usr/bin/time -f "%e %M" -o "$DIR/t" "$@" >"$DIR/out" 2>"$DIR/err" || { cat "$DIR/err" >&2; exit 1; }
  read -r secs kib < "$DIR/t"
  printf "| %s | %s s | %d MiB |\n" "$label" "$secs" $((kib / 1024))
}

if [ "$COUNT" != 0 ]; then
echo "== generating $COUNT files in $DIR/src"
python3 - "$DIR/src" "$COUNT" <<'PY'
import os, sys
root, count = sys.argv[1], int(sys.argv[2])
for i in range(count):
    d = os.path.join(root, f"d{i // 1000:04d}")
    if i % 1000 == 0:
        os.makedirs(d, exist_ok=True)
    fd = os.open(os.path.join(d, f"object-{i:07d}.dat"), os.O_WRONLY | os.O_CREAT, 0o644)
    os.write(fd, b"0123456789abcdef")
    os.close(fd)
PY

echo
echo "| run ($COUNT objects) | wall time | peak RSS |"
echo "|---|---|---|"
measure "georep sync (copies all)" $GEOREP sync "$DIR/src" "$DIR/dst" --transfers $JOBS --checkers $JOBS
measure "georep sync (no-op)" $GEOREP sync "$DIR/src" "$DIR/dst" --transfers $JOBS --checkers $JOBS
measure "georep check" $GEOREP check "$DIR/src" "$DIR/dst"
if command -v rclone >/dev/null; then
  measure "rclone sync (no-op)" rclone --config /dev/null --transfers $JOBS --checkers $JOBS sync "$DIR/src" "$DIR/dst"
fi
fi

# One large object through an object store: memory must not follow the object's size.
LARGE_GIB=${LARGE_GIB:-3}
if [ "$LARGE_GIB" != 0 ] && command -v azurite-blob >/dev/null; then
  echo
  echo "== one ${LARGE_GIB} GiB object: local -> Azurite -> local"
  rm -rf "$DIR/src" "$DIR/dst"
  mkdir -p "$DIR/large" "$DIR/azurite"
  python3 - "$DIR/large/big.bin" "$LARGE_GIB" <<'PY'
import os, sys
chunk = os.urandom(1 << 20)
with open(sys.argv[1], "wb") as f:
    for _ in range(int(sys.argv[2]) * 1024):
        f.write(chunk)
PY
  PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  azurite-blob --loose --skipApiVersionCheck --disableTelemetry --silent -l "$DIR/azurite" --blobHost 127.0.0.1 --blobPort "$PORT" >/dev/null 2>&1 &
  AZ_PID=$!
  trap 'kill $AZ_PID 2>/dev/null; sleep 0.5; cleanup' EXIT
  for _ in $(seq 100); do curl -s -o /dev/null "http://127.0.0.1:$PORT/" && break; sleep 0.1; done
  python3 - "$PORT" <<'PY'
import sys
from azure.storage.blob import BlobServiceClient
BlobServiceClient(account_url=f"http://127.0.0.1:{sys.argv[1]}/devstoreaccount1",
    credential={"account_name": "devstoreaccount1",
                "account_key": "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="}
).create_container("large")
PY
  AZ=http://127.0.0.1:$PORT/devstoreaccount1/large
  echo "| run (${LARGE_GIB} GiB object) | wall time | peak RSS |"
  echo "|---|---|---|"
  measure "georep copy local -> Azurite (multipart)" $GEOREP copy "$DIR/large" "$AZ"
  measure "georep copy Azurite -> local (streamed)" $GEOREP copy "$AZ" "$DIR/back"
  cmp "$DIR/large/big.bin" "$DIR/back/big.bin" && echo "(byte-identical after the round trip)"
fi
