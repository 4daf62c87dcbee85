#!/usr/bin/env bash
# Relay benchmark (issue 14): a georep relay (`[[relays]]`, Event Grid publish API,
# durable outbox) against publishing straight to the receiver, in one run:
#   (1) p50/p99 publish latency at a fixed rate (RATE events/s, 1 KiB each, one event
#       per request, CONNS connections): straight to the receiver, then through the
#       relay (acknowledged only once fsync'd); the added latency;
#   (2) sustained accepted events/s (batches of 10 x 1 KiB, CONNS connections, as fast
#       as they are answered), straight and through the relay;
#   (3) failover: the primary receiver is killed while events flow; time from the kill
#       to the first event at the secondary, and events lost;
#   (4) catch-up: the receiver down for OUTAGE seconds at RATE events/s, then back;
#       delivery rate while the relay drains;
#   (5) logs: Logs Ingestion batches (100 records x 1 KiB) as fast as answered, straight
#       to one receiver, then through a `replicate` relay to two receivers and a gzip
#       NDJSON archive in a folder: records/s accepted, and how long until all three
#       hold every record.
# The receiver is a small Python server speaking a topic's publish contract (no Event
# Grid server can be installed here), the same for both paths. Run as any user.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
RATE=${RATE:-1000}
SECS=${SECS:-10}
CONNS=${CONNS:-8}
OUTAGE=${OUTAGE:-20}
B=$(mktemp -d /tmp/georep-bench-relay.XXXX)
PIDS=$B/pids
touch "$PIDS"
cleanup() { while read -r p; do kill "$p" 2>/dev/null || true; done < "$PIDS"; rm -rf "$B"; }
trap cleanup EXIT
source "$ROOT/bench/lib.sh"

echo "== building georep (release)"
cargo build --release --locked -p georep >/dev/null 2>&1 || cargo build --release --locked -p georep
GEOREP=$ROOT/target/release/georep

cat > "$B/receiver.py" <<'PY'
# A topic's publish endpoint: POST /api/events?api-version=2018-01-01 with aeg-sas-key,
# a JSON array of events; records (id, arrival time) of each event to a file.
import json, sys, time
from http.server import ThreadingHTTPServer, BaseHTTPRequestHandler
port, key, out = int(sys.argv[1]), sys.argv[2], open(sys.argv[3], "a", buffering=1)
class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def log_message(self, *a): pass
    def reply(self, code):
        self.send_response(code); self.send_header("Content-Length", "0"); self.end_headers()
    def do_GET(self): self.reply(200 if self.path == "/healthz" else 405)
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        logs = self.path.startswith("/dataCollectionRules/")
        given = self.headers.get("Authorization", "")[7:] if logs else self.headers.get("aeg-sas-key")
        if given != key: return self.reply(401)
        now = time.time()
        out.write("".join(f"{e['id']} {now}\n" for e in json.loads(body)))
        self.reply(204 if logs else 200)
ThreadingHTTPServer.daemon_threads = True
ThreadingHTTPServer(("127.0.0.1", port), H).serve_forever()
PY
cat > "$B/load.py" <<'PY'
# Publishes events: `rate` mode sends RATE single events/s for SECS over CONNS keep-alive
# connections and prints p50/p99 latency (ms); `max` mode sends batches of 10 as fast as
# answered and prints events/s. Ids are PREFIX-N.
import http.client, json, sys, threading, time
mode, port, key, rate, secs, conns, prefix = sys.argv[1], int(sys.argv[2]), sys.argv[3], float(sys.argv[4]), float(sys.argv[5]), int(sys.argv[6]), sys.argv[7]
logs = mode == "logs"
path = "/dataCollectionRules/dcr-b/streams/Custom-Bench_CL?api-version=2023-01-01" if logs else "/api/events?api-version=2018-01-01"
pad = "x" * 900
def rec(i): return {"TimeGenerated": "2026-12-02T10:00:00Z", "id": f"{prefix}-{i}", "Msg": pad}
def ev(i): return {"id": f"{prefix}-{i}", "subject": f"orders/{i % 16}", "eventType": "Bench", "eventTime": "2026-12-02T10:00:00Z", "dataVersion": "1", "data": {"pad": pad}}
lat, errors, sent = [], [0], [0]
lock = threading.Lock()
def worker(w):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    h = {"Authorization": "Bearer " + key} if logs else {"aeg-sas-key": key}
    h["Content-Type"] = "application/json"
    i = w; start = time.time(); n = 0
    while time.time() - start < secs:
        if mode == "rate":
            due = start + n * conns / rate
            d = due - time.time()
            if d > 0: time.sleep(d)
            body = json.dumps([ev(i)])
        elif logs:
            body = json.dumps([rec(i + k * conns) for k in range(100)])
        else:
            body = json.dumps([ev(i + k * conns) for k in range(10)])
        t = time.time()
        try:
            c.request("POST", path, body, h); r = c.getresponse(); r.read(); ok = r.status in (200, 204)
        except Exception:
            ok = False; c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        el = time.time() - t
        with lock:
            if ok: lat.append(el); sent[0] += 1 if mode == "rate" else 100 if logs else 10
            else: errors[0] += 1
        n += 1; i += conns if mode == "rate" else (100 if logs else 10) * conns
ts = [threading.Thread(target=worker, args=(w,)) for w in range(conns)]
t0 = time.time()
[t.start() for t in ts]; [t.join() for t in ts]
took = time.time() - t0
lat.sort()
q = lambda p: lat[min(len(lat) - 1, int(p * len(lat)))] * 1000 if lat else float("nan")
print(json.dumps({"sent": sent[0], "errors": errors[0], "p50_ms": q(0.5), "p99_ms": q(0.99), "per_s": sent[0] / took}))
PY

RK="bench-relay-key-0123456789"
start_receiver() { # PORT FILE -> pid
  python3 "$B/receiver.py" "$1" topic-key "$2" >/dev/null 2>&1 &
  local pid=$!; echo $pid >> "$PIDS"
  for _ in $(seq 100); do curl -s -o /dev/null "http://127.0.0.1:$1/healthz" && break; sleep 0.05; done
  echo $pid
}
topo() { # MODE EXTRA TARGETS
  cat > "$B/georep.toml" <<TOML
[state]
url = "sqlite://$B/state/georep.db"
[server]
listen = "127.0.0.1:$API"
[regions.qc]
[regions.we]
[[relays]]
name = "bench"
listen = "127.0.0.1:$RP"
accept = "${ACCEPT:-eventgrid}"
key = "\${RELAY_KEY}"
mode = "$1"
$2
targets = [
$3
]
TOML
}
serve() {
  RELAY_KEY=$RK EG_KEY=topic-key $GEOREP serve -c "$B/georep.toml" --log-level warn > "$B/serve.out" 2> "$B/serve.log" &
  SERVE_PID=$!; echo $SERVE_PID >> "$PIDS"
  for _ in $(seq 200); do curl -s -o /dev/null "http://127.0.0.1:$RP/healthz" && break; sleep 0.05; done
}
stop_serve() { kill "$SERVE_PID" 2>/dev/null || true; wait "$SERVE_PID" 2>/dev/null || true; rm -rf "$B/state"; }
count() { sort -u -k1,1 "$1" | grep -c "^$2-" || true; }
target() { echo "{ name = \"$1\", region = \"$2\", kind = \"eventgrid\", url = \"http://127.0.0.1:$3/api/events\", key = \"\${EG_KEY}\", timeout = \"2s\" },"; }

API=$(free_port); RP=$(free_port); P1=$(free_port); P2=$(free_port)
R1=$(start_receiver "$P1" "$B/r1.txt")

echo "== (1) latency at $RATE events/s (1 KiB, one event per request, $CONNS connections, ${SECS}s)"
D=$(python3 "$B/load.py" rate "$P1" topic-key "$RATE" "$SECS" "$CONNS" direct)
topo failover "" "$(target qc qc "$P1")
$(target we we "$P2")"
serve
G=$(python3 "$B/load.py" rate "$RP" "$RK" "$RATE" "$SECS" "$CONNS" relay)
for _ in $(seq 200); do [ "$(count "$B/r1.txt" relay)" -ge "$(echo "$G" | python3 -c 'import json,sys; print(json.load(sys.stdin)["sent"])')" ] && break; sleep 0.1; done
python3 - "$D" "$G" <<'PY'
import json, sys
d, g = json.loads(sys.argv[1]), json.loads(sys.argv[2])
print(f"   straight: p50 {d['p50_ms']:.2f} ms, p99 {d['p99_ms']:.2f} ms ({d['per_s']:.0f}/s, {d['errors']} errors)")
print(f"   relay:    p50 {g['p50_ms']:.2f} ms, p99 {g['p99_ms']:.2f} ms ({g['per_s']:.0f}/s, {g['errors']} errors), durable (fsync'd) before 200")
print(f"   added p99: {g['p99_ms'] - d['p99_ms']:+.2f} ms (target < 5 ms)")
PY

echo "== (2) sustained accepted events/s (batches of 10 x 1 KiB, $CONNS connections, ${SECS}s)"
D=$(python3 "$B/load.py" max "$P1" topic-key 0 "$SECS" "$CONNS" dmax)
G=$(python3 "$B/load.py" max "$RP" "$RK" 0 "$SECS" "$CONNS" gmax)
python3 - "$D" "$G" <<'PY'
import json, sys
d, g = json.loads(sys.argv[1]), json.loads(sys.argv[2])
print(f"   straight {d['per_s']:.0f} events/s, relay {g['per_s']:.0f} events/s accepted: {g['per_s']/d['per_s']:.2f}x")
PY
stop_serve

echo "== (3) failover: the primary receiver killed while 200 events/s flow"
: > "$B/r1.txt"; : > "$B/r2.txt"
R2=$(start_receiver "$P2" "$B/r2.txt")
topo failover 'failover_after = 3
failback_after = "60s"
probe_interval = "1s"' "$(target qc qc "$P1")
$(target we we "$P2")"
serve
python3 "$B/load.py" rate "$RP" "$RK" 200 8 2 fo > "$B/fo.json" &
LOAD=$!
sleep 3
KILL_AT=$(date +%s.%N); kill -9 "$R1"
wait $LOAD
for _ in $(seq 300); do [ "$(sort -u "$B/r1.txt" "$B/r2.txt" | awk '{print $1}' | sort -u | grep -c '^fo-')" -ge "$(python3 -c 'import json; print(json.load(open("'"$B"'/fo.json"))["sent"])')" ] && break; sleep 0.1; done
python3 - "$KILL_AT" "$B/r2.txt" "$B/r1.txt" "$B/fo.json" <<'PY'
import json, sys
kill = float(sys.argv[1])
second = [float(l.split()[1]) for l in open(sys.argv[2]) if l.startswith("fo-")]
got = {l.split()[0] for f in sys.argv[2:4] for l in open(f) if l.startswith("fo-")}
sent = json.load(open(sys.argv[4]))["sent"]
first = min(second) - kill if second else float("nan")
print(f"   first event at the secondary {first:.2f} s after the kill (target < 10 s; EventBridge global endpoints: about 360 s)")
print(f"   {sent} events accepted, {len(got)} delivered, {sent - len(got)} lost")
PY
stop_serve

echo "== (4) catch-up after a ${OUTAGE}s outage at $RATE events/s"
: > "$B/r2.txt"
topo replicate "" "$(target we we "$P2")"
serve
kill -9 "$R2"; sleep 0.2
python3 "$B/load.py" rate "$RP" "$RK" "$RATE" "$OUTAGE" "$CONNS" cu > "$B/cu.json"
SENT=$(python3 -c 'import json; print(json.load(open("'"$B"'/cu.json"))["sent"])')
UP=$(date +%s.%N)
R2=$(start_receiver "$P2" "$B/r2.txt")
for _ in $(seq 1200); do [ "$(count "$B/r2.txt" cu)" -ge "$SENT" ] && break; sleep 0.1; done
python3 - "$SENT" "$UP" "$B/r2.txt" <<'PY'
import sys
sent, up = int(sys.argv[1]), float(sys.argv[2])
t = sorted(float(l.split()[1]) for l in open(sys.argv[3]) if l.startswith("cu-"))
n = len({l.split()[0] for l in open(sys.argv[3]) if l.startswith("cu-")})
print(f"   {sent} events held through the outage; {n} delivered; first {t[0]-up:.1f} s after the receiver came back (the retry backoff), then drained at {len(t)/max(t[-1]-t[0],1e-3):.0f} events/s")
PY
stop_serve

echo "== (5) logs: Logs Ingestion batches (100 x 1 KiB records, $CONNS connections, ${SECS}s), straight to one receiver vs a replicate relay to two receivers and an archive"
: > "$B/r1.txt"; : > "$B/r2.txt"
R1=$(start_receiver "$P1" "$B/r1.txt")
D=$(python3 "$B/load.py" logs "$P1" topic-key 0 "$SECS" "$CONNS" ldirect)
mkdir -p "$B/archive"
logs_target() { echo "{ name = \"$1\", region = \"$2\", kind = \"logs\", url = \"http://127.0.0.1:$3/dataCollectionRules/dcr-b/streams/Custom-Bench_CL\", key = \"\${EG_KEY}\", timeout = \"5s\" },"; }
ACCEPT=logs topo replicate 'batch = 500' "$(logs_target qc qc "$P1")
$(logs_target we we "$P2")
{ name = \"keep\", region = \"we\", kind = \"archive\", store = \"archive\" },"
printf '[stores.archive]\nregion = "we"\nurl = "%s"\n' "$B/archive" >> "$B/georep.toml"
serve
T0=$(date +%s.%N)
G=$(python3 "$B/load.py" logs "$RP" "$RK" 0 "$SECS" "$CONNS" lrelay)
SENT=$(echo "$G" | python3 -c 'import json,sys; print(json.load(sys.stdin)["sent"])')
archived() { find "$B/archive" -name '*.ndjson.gz' -exec zcat {} + 2>/dev/null | grep -c '"lrelay-' || true; }
for _ in $(seq 1200); do
  [ "$(count "$B/r1.txt" lrelay)" -ge "$SENT" ] && [ "$(count "$B/r2.txt" lrelay)" -ge "$SENT" ] && [ "$(archived)" -ge "$SENT" ] && break
  sleep 0.1
done
DONE=$(date +%s.%N)
python3 - "$D" "$G" "$T0" "$DONE" "$(count "$B/r1.txt" lrelay)" "$(count "$B/r2.txt" lrelay)" "$(archived)" <<'PY'
import json, sys
d, g = json.loads(sys.argv[1]), json.loads(sys.argv[2])
t0, done, a, b, c = float(sys.argv[3]), float(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6]), int(sys.argv[7])
print(f"   straight to one receiver: {d['per_s']:.0f} records/s; relay accepted {g['per_s']:.0f} records/s durable: {g['per_s']/d['per_s']:.2f}x")
print(f"   {g['sent']} records: {a} and {b} at the two receivers, {c} archived, all {done - t0:.1f} s after the load began ({g['sent']/(done - t0):.0f} records/s to each of three targets)")
PY
stop_serve
