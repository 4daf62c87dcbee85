# Shared helpers for the bench scripts (sourced). Needs $B (work folder) and $PIDS (file of
# child PIDs that the caller kills on exit).
KEY="Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
# start_azurite: starts an Azurite blob service in a temp folder under $B, prints its port
start_azurite() {
  local port dir; port=$(free_port); dir=$(mktemp -d "$B/azurite.XXXX")
  azurite-blob --loose --skipApiVersionCheck --disableTelemetry --silent -l "$dir" --blobHost 127.0.0.1 --blobPort "$port" >/dev/null 2>&1 &
  echo $! >> "$PIDS"
  for _ in $(seq 100); do curl -s -o /dev/null "http://127.0.0.1:$port/" && break; sleep 0.1; done
  echo "$port"
}
# drill_summary DIR: lost writes, write gaps and RTO over the drill reports (JSON) in DIR
drill_summary() {
  python3 - "$1" <<'PY'
import json, glob, statistics as st, sys
r = [json.load(open(f)) for f in sorted(glob.glob(sys.argv[1] + "/*.json"))]
if not r: sys.exit(0)
lost = sum(x["lost_writes"] for x in r); acked = sum(x["acknowledged_writes"] for x in r)
def s(k): v = [x[k] for x in r if x.get(k) is not None]; return f"median {st.median(v):.0f} ms, max {max(v):.0f} ms"
print(f"{len(r)} drills ({2*len(r)} planned failovers), {acked} acknowledged writes, {lost} lost; zero-loss drills: {sum(1 for x in r if x['lost_writes']==0)}/{len(r)}")
print(f"write gap at the listener, failover: {s('write_gap_failover_ms')}; failback: {s('write_gap_failback_ms')}")
print(f"RTO seen by the writer, failover: {s('rto_failover_ms')}; failback: {s('rto_failback_ms')}")
PY
}
# start_haproxy PORT: HAProxy in TCP mode (as Patroni and MySQL setups deploy it) on a free
# port in front of 127.0.0.1:PORT, one thread per core (its default); prints its port
start_haproxy() {
  local port; port=$(free_port)
  cat > "$B/haproxy.$port.cfg" <<CFG
global
  maxconn 2000
defaults
  mode tcp
  timeout connect 5s
  timeout client 1h
  timeout server 1h
listen db
  bind 127.0.0.1:$port
  server primary 127.0.0.1:$1
CFG
  haproxy -f "$B/haproxy.$port.cfg" -D -p "$B/haproxy.$port.pid"
  cat "$B/haproxy.$port.pid" >> "$PIDS"
  echo "$port"
}
