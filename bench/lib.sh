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
