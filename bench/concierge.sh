#!/usr/bin/env bash
# Concierge benchmark (issue 15): a georep concierge (`[[concierges]]`) over two real
# Mosquitto 2 hubs with dynamic security, and a simulated fleet of reference-client
# devices (crates/device/examples/fleet.rs), in one run:
#   (1) assignments/s and p50/p99 latency (a shared access signature checked, an Ed25519
#       signature made, per request; CONNS connections, SECS seconds), beside the same
#       concierge's bare /healthz as the HTTP baseline: the cost of authentication and
#       signing;
#   (2) failover of DEVICES connected devices: the preferred hub killed (kill -9); time
#       from the kill until each device is connected to the other hub (p50, p99, max),
#       and how many moved (target: all within 60 s; IoT Hub's manual failover of
#       100k devices takes about 15 minutes);
#   (3) failback: the hub back; time from its return until every device is back
#       (probes, failback_after, then reassign notices spread over the fleet);
#   (4) identity propagation: a device added to the identities file, then the time
#       until it can log in to both hubs (SAMPLES times; default poll of 1 s), beside
#       the same with `mosquitto_ctrl dynsec createClient` straight to one hub (the
#       floor: what a hand-run script would take for one hub); target p99 < 2 s.
# Run as any user; as root, mosquitto drops to its own user.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
DEVICES=${DEVICES:-1000}
CONNS=${CONNS:-8}
SECS=${SECS:-10}
SAMPLES=${SAMPLES:-20}
B=$(mktemp -d /tmp/georep-bench-concierge.XXXX)
PIDS=$B/pids
touch "$PIDS"
cleanup() { while read -r p; do kill "$p" 2>/dev/null || true; done < "$PIDS"; [ -n "${KEEP:-}" ] && echo "kept $B" || rm -rf "$B"; }
trap cleanup EXIT
source "$ROOT/bench/lib.sh"
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"

# PROFILE=debug for a quick look (the figures are release figures).
PROFILE=${PROFILE:-release}
echo "== building georep and the simulated fleet ($PROFILE)"
FLAG=$([ "$PROFILE" = release ] && echo --release || true)
build() { cargo build $FLAG --locked -p georep && cargo build $FLAG --locked -p georep-device --example fleet; }
build >/dev/null 2>&1 || build
GEOREP=$ROOT/target/$PROFILE/georep
FLEET=$ROOT/target/$PROFILE/examples/fleet
DYNSEC=/usr/lib/x86_64-linux-gnu/mosquitto_dynamic_security.so
[ -f "$DYNSEC" ] || { echo "mosquitto 2 with dynamic security is needed: apt-get install mosquitto"; exit 1; }

# start_hub NAME: a Mosquitto with dynamic security on a free port; sets NAME_PORT, NAME_PID
start_hub() {
  local name=$1 port dir; port=$(free_port); dir=$B/$name; mkdir -p "$dir"
  mosquitto_ctrl dynsec init "$dir/dynsec.json" admin "admin-pw-$name" >/dev/null
  printf 'listener %s 127.0.0.1\nallow_anonymous false\nper_listener_settings false\npersistence false\nmax_connections -1\nplugin %s\nplugin_opt_config_file %s\n' \
    "$port" "$DYNSEC" "$dir/dynsec.json" > "$dir/mosquitto.conf"
  # As root, mosquitto drops to its own user: it must reach and own its folder.
  [ "$(id -u)" = 0 ] && chmod 711 "$B" && chown -R mosquitto: "$dir"
  mosquitto -c "$dir/mosquitto.conf" > "$dir/log" 2>&1 &
  local pid=$!; echo $pid >> "$PIDS"
  for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/"$port") 2>/dev/null && break; sleep 0.05; done
  eval "${name^^}_PORT=$port; ${name^^}_PID=$pid"
}
start_hub qc; start_hub we

mkdir -p "$B/fleet"
"$FLEET" fleet-json "$DEVICES" > "$B/fleet/devices.json"
API=$(free_port); CP=$(free_port)
SEED=$(openssl rand -base64 32)
cat > "$B/georep.toml" <<TOML
[server]
listen = "127.0.0.1:$API"
[state]
url = "sqlite://$B/state/georep.db"
[regions.qc]
[regions.we]
[stores.fleet]
region = "we"
url = "$B/fleet"
[[concierges]]
name = "devices"
listen = "127.0.0.1:$CP"
signing_key = "\${SIGNING_KEY}"
identities = { store = "fleet", object = "devices.json" }
failover_after = 3
failback_after = "10s"
probe_interval = "1s"
probe_timeout = "2s"
hubs = [
  { name = "qc", region = "qc", url = "mqtt://127.0.0.1:$QC_PORT", username = "admin", password = "\${QC_PW}" },
  { name = "we", region = "we", url = "mqtt://127.0.0.1:$WE_PORT", username = "admin", password = "\${WE_PW}" },
]
TOML
export SIGNING_KEY=$SEED QC_PW=admin-pw-qc WE_PW=admin-pw-we
"$GEOREP" serve -c "$B/georep.toml" > "$B/serve.log" 2>&1 &
echo $! >> "$PIDS"
for _ in $(seq 200); do curl -s -o /dev/null "http://127.0.0.1:$CP/healthz" && break; sleep 0.05; done
status() { "$GEOREP" concierge status devices -c "$B/georep.toml" --output json 2>/dev/null || true; }
echo "== identities: $DEVICES devices onto both hubs"
T0=$(date +%s.%N)
for _ in $(seq 1200); do
  status | python3 -c "import json,sys; s=json.load(sys.stdin)[0]; sys.exit(0 if all(h['identities']['in_sync']==$DEVICES and h['identities']['pending']==0 for h in s['hubs']) else 1)" 2>/dev/null && break
  sleep 0.1
done
status | python3 -c "import json,sys; s=json.load(sys.stdin)[0]; sys.exit(0 if all(h['identities']['in_sync']==$DEVICES and h['identities']['pending']==0 for h in s['hubs']) else 1)" \
  || { echo "identities never reached both hubs; the daemon's log:"; tail -20 "$B/serve.log"; exit 1; }
echo "   $DEVICES identities in sync on both hubs $(python3 -c "import time; print(f'{time.time()-$T0:.1f}')") s after the daemon started"

echo "== (1) assignments: $CONNS connections, ${SECS}s"
BARE=$("$FLEET" assign "http://127.0.0.1:$CP" "$DEVICES" "$CONNS" "$SECS" /healthz)
ASSIGN=$("$FLEET" assign "http://127.0.0.1:$CP" "$DEVICES" "$CONNS" "$SECS")
python3 - "$BARE" "$ASSIGN" <<'PY'
import json, sys
b, a = json.loads(sys.argv[1]), json.loads(sys.argv[2])
print(f"   bare /healthz:  {b['per_sec']:.0f}/s, p50 {b['p50_ms']:.2f} ms, p99 {b['p99_ms']:.2f} ms ({b['failed']} failed)")
print(f"   assignments:    {a['per_sec']:.0f}/s, p50 {a['p50_ms']:.2f} ms, p99 {a['p99_ms']:.2f} ms ({a['failed']} failed): {a['per_sec']/b['per_sec']:.2f}x the bare endpoint")
PY

echo "== (2) failover: $DEVICES devices on qc, qc killed"
PUB=$(curl -s "http://127.0.0.1:$CP/.well-known/jwks.json" | python3 -c 'import json,sys; print(json.load(sys.stdin)["keys"][0]["x"])')
"$FLEET" run "http://127.0.0.1:$CP" devices "$PUB" "$DEVICES" > "$B/events.txt" &
echo $! >> "$PIDS"
on() { python3 - "$B/events.txt" "$1" "${2:-0}" <<'PY'
import sys
last = {}
for l in open(sys.argv[1]):
    p = l.split()
    if len(p) == 4:
        last[p[1]] = (p[2], p[3], int(p[0]))
print(sum(1 for e, h, t in last.values() if e == "connected" and h == sys.argv[2] and t >= float(sys.argv[3])))
PY
}
T0=$(date +%s.%N)
for _ in $(seq 1200); do [ "$(on qc)" -ge "$DEVICES" ] && break; sleep 0.1; done
echo "   $(on qc) of $DEVICES connected to qc $(python3 -c "import time; print(f'{time.time()-$T0:.1f}')") s after they started"
KILL_MS=$(python3 -c 'import time; print(int(time.time()*1000))')
kill -9 "$QC_PID"
for _ in $(seq 1200); do [ "$(on we "$KILL_MS")" -ge "$DEVICES" ] && break; sleep 0.1; done
# took FROM_MS HUB LABEL: per-device time from FROM_MS to its last connection to HUB
took() { python3 - "$B/events.txt" "$1" "$2" "$DEVICES" "$3" <<'PY'
import sys
path, since, hub, n, label = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4]), sys.argv[5]
first = {}
for l in open(path):
    p = l.split()
    if len(p) == 4 and p[2] == "connected" and p[3] == hub and int(p[0]) >= since:
        first.setdefault(p[1], int(p[0]) - since)
v = sorted(first.values())
q = lambda x: v[max(0, min(len(v)-1, int(-(-x*len(v)//1))-1))] / 1000 if v else float("nan")
print(f"   {label}: {len(v)} of {n} moved; p50 {q(0.5):.2f} s, p99 {q(0.99):.2f} s, max {(v[-1]/1000 if v else float('nan')):.2f} s")
PY
}
took "$KILL_MS" we "after the kill (target: all within 60 s)"

# The concierge fails over too (3 failed probes a second apart); devices went to the
# fallback on their own before that.
for _ in $(seq 300); do status | grep -q '"current_hub": *"we"' && break; sleep 0.1; done
echo "== (3) failback: qc back (failback_after = 10s)"
mosquitto -c "$B/qc/mosquitto.conf" > "$B/qc/log2" 2>&1 &
echo $! >> "$PIDS"
UP_MS=$(python3 -c 'import time; print(int(time.time()*1000))')
for _ in $(seq ${FAILBACK_WAIT:-1800}); do [ "$(on qc "$UP_MS")" -ge "$DEVICES" ] && break; sleep 0.1; done
took "$UP_MS" qc "after qc came back (probes, failback_after, notices spread over ~1 s)"

echo "== (4) identity propagation ($SAMPLES devices added one at a time; identities poll 1s)"
python3 - "$B/fleet/devices.json" "$SAMPLES" "$DEVICES" "$FLEET" "$QC_PORT" "$WE_PORT" "$B" <<'PY'
import json, os, subprocess, sys, time, concurrent.futures as cf
path, samples, n, fleet, qc, we, b = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5], sys.argv[6], sys.argv[7]
extra = json.loads(subprocess.check_output([fleet, "fleet-json", str(n + samples)]))["devices"][n:]
doc = json.load(open(path))
def login(port, dev):
    return int(subprocess.check_output([fleet, "login", f"mqtt://127.0.0.1:{port}", dev]).decode().strip())
georep, direct = [], []
for d in extra:
    doc["devices"].append(d)
    tmp = path + ".tmp"
    json.dump(doc, open(tmp, "w")); os.replace(tmp, path)
    t0 = time.time()
    with cf.ThreadPoolExecutor(2) as ex:
        list(ex.map(lambda p: login(p, d["id"]), [qc, we]))
    georep.append(time.time() - t0)
# The floor: the same client made by hand on one hub, then logged in.
import base64, hmac, hashlib
for i in range(samples):
    dev = f"dev-{n + samples + i:05d}"
    key = f"bench-device-key-{n + samples + i:06d}-0123456789".encode()
    pw = base64.b64encode(hmac.new(key, b"georep-mqtt", hashlib.sha256).digest()).decode()
    t0 = time.time()
    subprocess.run(["mosquitto_ctrl", "-h", "127.0.0.1", "-p", qc, "-u", "admin", "-P", "admin-pw-qc", "dynsec", "createClient", dev, "-p", pw], capture_output=True, check=True)
    login(qc, dev)
    direct.append(time.time() - t0)
def q(v, x): v = sorted(v); return v[max(0, min(len(v) - 1, -(-int(x * len(v) * 100) // 100) - 1))]
print(f"   georep (file -> both hubs, logged in): p50 {q(georep, .5):.2f} s, p99 {q(georep, .99):.2f} s, max {max(georep):.2f} s (target p99 < 2 s)")
print(f"   mosquitto_ctrl straight to one hub:    p50 {q(direct, .5):.2f} s, p99 {q(direct, .99):.2f} s")
PY
echo "== done"
