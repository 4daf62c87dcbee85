#!/usr/bin/env bash
# Recovery-point benchmark: georep against restic, measured in the same run.
#   (1) first point of a tree of 20,000 files / 2 GiB           peer: restic backup
#   (2) incremental point after 1% of the files changed          peer: restic backup (parent)
#   (3) restore of the latest point into an empty folder         peer: restic restore
#   (4) dedup ratio and repository size; peak RSS of each command (GNU time)
#   (5) the daemon with every = "1m" while a writer changes 1% of the files a minute:
#       the age of the last point (RPO) sampled every 5 s for DAEMON_MINUTES minutes
# Both repositories are local folders on the same tmpfs (restic format v2, compression
# auto for restic, zstd default for georep/rustic). Each case runs ROUNDS times
# (default 1), tools interleaved; medians are reported. Ratios are restic time / georep
# time (> 1: georep is faster) and georep RSS / restic RSS.
# Needs: restic (apt), /usr/bin/time (apt: time), python3. DAEMON_MINUTES=0 skips (5).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
ROUNDS=${ROUNDS:-1}
FILES=${FILES:-20000}
TOTAL_MIB=${TOTAL_MIB:-2048}
DAEMON_MINUTES=${DAEMON_MINUTES:-3}
MOUNTED=
if [ -z "${BENCH_DIR:-}" ]; then
  BENCH_DIR=$(mktemp -d /tmp/georep-bench.XXXXXX)
  if [ "$(id -u)" = 0 ] && mount -t tmpfs -o size=14g georep-bench "$BENCH_DIR"; then MOUNTED=1; fi
fi
B=$BENCH_DIR
DAEMON_PID=
cleanup() {
  [ -n "$DAEMON_PID" ] && kill "$DAEMON_PID" 2>/dev/null || true
  [ -n "${WRITER_PID:-}" ] && kill "$WRITER_PID" 2>/dev/null || true
  sleep 0.5
  if [ -n "$MOUNTED" ]; then umount "$B" && rmdir "$B"
  elif [ -z "${KEEP:-}" ]; then rm -rf "$B"; fi
}
trap cleanup EXIT
need() { command -v "$1" >/dev/null 2>&1 || { echo "missing $1: $2" >&2; exit 2; }; }
need restic "apt-get install -y restic"
need /usr/bin/time "apt-get install -y time"

echo "== building georep (release)"
cargo build --release --locked -p georep >/dev/null 2>&1 || cargo build --release --locked -p georep
GEOREP=$ROOT/target/release/georep
export GEOREP_BENCH_PW=bench-password RESTIC_PASSWORD=bench-password

run() {
  local name=$1; shift
  sync; /usr/bin/time -f "%e %M" -o "$B/$name.t" "$@" >"$B/$name.out" 2>"$B/$name.err" || {
    echo "command failed: $*" >&2; cat "$B/$name.err" >&2; exit 1; }
}
median() { python3 -c "import sys,glob,statistics as s; print(s.median(float(open(f).read().split()[$2-1]) for f in glob.glob(sys.argv[1])))" "$B/$1_r*.t"; }
secs() { median "$1" 1; }
rss() { python3 -c "print(int($(median "$1" 2) // 1024))"; }

echo "== generating $FILES files, $TOTAL_MIB MiB in $B/src"
python3 - "$B/src" "$FILES" "$TOTAL_MIB" <<'PY'
import os, sys, random
root, n, total = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]) << 20
rnd = random.Random(7)
# Sizes spread from 1 KiB to ~1 MiB, scaled to the total; half the content repeats
# across files (copies of the same assets), so deduplication has something to find.
sizes = [rnd.randint(1, 1024) for _ in range(n)]
scale = total / sum(sizes)
shared = os.urandom(1 << 20)
for i, s in enumerate(sizes):
    size = max(1, int(s * scale))
    d = os.path.join(root, f"d{i // 1000:03d}")
    if i % 1000 == 0:
        os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, f"f{i:06d}.bin"), "wb") as f:
        if i % 2 == 0:
            f.write(shared[: min(size, len(shared))])
            size -= min(size, len(shared))
        f.write(os.urandom(size))
PY
cat > "$B/georep.toml" <<EOF
[state]
url = "sqlite://$B/state/georep.db"
[regions.qc]
[regions.we]
[stores.src]
region = "qc"
url = "$B/src"
[stores.vault]
region = "we"
url = "$B/vault_REPLACE"
[[backups]]
name = "bench"
source = "src"
repository = "vault"
password = "\${GEOREP_BENCH_PW}"
every = "1m"
EOF

change_one_percent() {  # rewrites 1% of the files with new content (seeded per round)
  python3 - "$B/src" "$FILES" "$1" <<'PY'
import os, sys, random
root, n, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
rnd = random.Random(seed)
for i in rnd.sample(range(n), max(1, n // 100)):
    p = os.path.join(root, f"d{i // 1000:03d}", f"f{i:06d}.bin")
    size = os.path.getsize(p)
    with open(p, "wb") as f:
        f.write(os.urandom(size))
PY
}

for r in $(seq $ROUNDS); do
  sed "s|vault_REPLACE|vault_$r|" "$B/georep.toml" > "$B/georep_$r.toml"
  rm -rf "$B/state"
  echo "== round $r: (1) first point"
  run first_georep_r$r $GEOREP backup run bench -c "$B/georep_$r.toml"
  restic -r "$B/restic_$r" init >/dev/null
  run first_restic_r$r restic -r "$B/restic_$r" backup --host bench "$B/src"
  change_one_percent $r
  echo "== round $r: (2) incremental point, 1% changed"
  run incr_georep_r$r $GEOREP backup run bench -c "$B/georep_$r.toml" --output json
  run incr_restic_r$r restic -r "$B/restic_$r" backup --host bench "$B/src"
  echo "== round $r: (2b) incremental point taken by the daemon (POST /run), 1% changed"
  sed 's|every = "1m"|every = "1h"|' "$B/georep_$r.toml" > "$B/georep_${r}_d.toml"
  "$GEOREP" serve -c "$B/georep_${r}_d.toml" --listen 127.0.0.1:0 > "$B/serve_$r.out" 2> "$B/serve_$r.err" &
  DAEMON_PID=$!
  for _ in $(seq 100); do grep -q "API on" "$B/serve_$r.out" && break; sleep 0.2; done
  API=$(sed -n 's/.*API on //p' "$B/serve_$r.out" | head -1)
  TOKEN=$(cat "$B/state/georep.api-token")
  POST=(curl -sf -X POST -H "Authorization: Bearer $TOKEN" -H 'Content-Type: application/json' -d '{}' "$API/api/v1/backups/bench/run")
  "${POST[@]}" > /dev/null   # the daemon's first point opens the repository (key derivation once)
  change_one_percent $((r + 50))
  run daemon_georep_r$r "${POST[@]}"
  # The time is curl's (the request waits for the point); the RSS is the daemon's peak.
  echo "$(cut -d' ' -f1 "$B/daemon_georep_r$r.t") $(awk '/VmHWM/ {print $2}' /proc/$DAEMON_PID/status)" > "$B/daemon_georep_r$r.t"
  run daemon_restic_r$r restic -r "$B/restic_$r" backup --host bench "$B/src"
  kill "$DAEMON_PID"; wait "$DAEMON_PID" 2>/dev/null || true; DAEMON_PID=
  echo "== round $r: (3) restore"
  run restore_georep_r$r $GEOREP backup restore bench -c "$B/georep_$r.toml" --to "$B/out_georep_$r"
  run restore_restic_r$r restic -r "$B/restic_$r" restore latest --target "$B/out_restic_$r"
  diff -r "$B/src" "$B/out_georep_$r" >/dev/null || { echo "georep restore differs from the source" >&2; exit 1; }
  rm -rf "$B/out_georep_$r" "$B/out_restic_$r"
done

SRC_BYTES=$(du -sb "$B/src" | cut -f1)
G_REPO=$(du -sb "$B/vault_1" | cut -f1)
R_REPO=$(du -sb "$B/restic_1" | cut -f1)
READ=$(python3 -c "import json; r=json.load(open('$B/incr_georep_r1.out')); print(r['files_read'], r['point']['files'])")

row() {  # label georep_name restic_name
  local g r; g=$(secs "$2"); r=$(secs "$3")
  printf "| %s | %.2f s, %d MiB | %.2f s, %d MiB | **%.2fx** | %.2f |\n" "$1" "$g" "$(rss "$2")" "$r" "$(rss "$3")" \
    "$(python3 -c "print($r/$g)")" "$(python3 -c "print($(rss "$2")/max(1,$(rss "$3")))")"
}
echo
echo "$FILES files, $((SRC_BYTES >> 20)) MiB; medians of $ROUNDS round(s); tmpfs; $(nproc) cores"
echo
echo "| case | georep (time, peak RSS) | restic (time, peak RSS) | speed (restic/georep) | RSS georep/restic |"
echo "|---|---|---|---|---|"
row "(1) first point" first_georep first_restic
row "(2) incremental point, 1% changed (georep backup run)" incr_georep incr_restic
row "(2b) incremental point, 1% changed, by the daemon (POST /run; RSS: whole daemon)" daemon_georep daemon_restic
row "(3) restore of the latest point" restore_georep restore_restic
echo
echo "(2) georep read $(echo $READ | cut -d' ' -f1) of $(echo $READ | cut -d' ' -f2) objects"
printf "(4) repository after two points: georep %d MiB, restic %d MiB; dedup ratio (content of both points / repository): georep %.2f, restic %.2f\n" \
  $((G_REPO >> 20)) $((R_REPO >> 20)) "$(python3 -c "print(2*$SRC_BYTES/$G_REPO)")" "$(python3 -c "print(2*$SRC_BYTES/$R_REPO)")"

if [ "$DAEMON_MINUTES" != 0 ]; then
  echo "== (5) daemon, every = 1m, 1% of the files changed every minute, $DAEMON_MINUTES min"
  rm -rf "$B/state"
  "$GEOREP" serve -c "$B/georep_1.toml" --listen 127.0.0.1:0 > "$B/serve.out" 2> "$B/serve.err" &
  DAEMON_PID=$!
  for _ in $(seq 100); do grep -q "API on" "$B/serve.out" && break; sleep 0.2; done
  API=$(sed -n 's/.*API on //p' "$B/serve.out" | head -1)
  ( i=100; while true; do change_one_percent $i; i=$((i+1)); sleep 60; done ) &
  WRITER_PID=$!
  end=$(( $(date +%s) + DAEMON_MINUTES * 60 ))
  : > "$B/rpo.txt"
  while [ "$(date +%s)" -lt "$end" ]; do
    curl -s "$API/api/v1/backups/bench" >> "$B/rpo.txt" || true; echo >> "$B/rpo.txt"
    sleep 5
  done
  kill "$WRITER_PID"; WRITER_PID=
  python3 - "$B/rpo.txt" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip().startswith("{")]
rpo = [r["rpo_seconds"] for r in rows if r.get("rpo_seconds") is not None]
last = rows[-1] if rows else {}
print(f"(5) {len(rows)} samples: RPO (age of the last point) max {max(rpo):.0f} s, "
      f"points {last.get('points')}, failures {last.get('failures')}, "
      f"breached in {sum(r['rpo_breached'] for r in rows)} samples; "
      f"sustained every = 1m: {'yes' if max(rpo) <= 120 and not last.get('failures') else 'NO'}")
PY
fi
