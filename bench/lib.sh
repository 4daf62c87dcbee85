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
