#!/usr/bin/env bash
# Runs every georep test. Installs what the tests need when it is missing:
#   Azurite (npm, global)             -> Azure Blob endpoints
#   moto[server] (pip, in ./.venv)    -> S3 endpoints
#   restic (apt)                      -> reads georep's backup repositories
#   mariadb-server (apt)              -> MariaDB members (the tests start their own mariadbd)
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

if ! command -v restic >/dev/null 2>&1; then
  echo "== installing restic (apt-get install restic)"
  if [ "$(id -u)" = 0 ]; then
    apt-get install -y -q restic >/dev/null || { apt-get update -q >/dev/null && apt-get install -y -q restic >/dev/null; }
  else
    echo "restic is missing: run apt-get install restic as root" >&2
    exit 2
  fi
fi

if ! [ -x /usr/sbin/mariadbd ] || ! command -v mariadb-install-db >/dev/null 2>&1; then
  echo "== installing MariaDB (apt-get install mariadb-server)"
  if [ "$(id -u)" = 0 ]; then
    apt-get install -y -q mariadb-server >/dev/null || { apt-get update -q >/dev/null && apt-get install -y -q mariadb-server >/dev/null; }
  else
    echo "MariaDB is missing: run apt-get install mariadb-server as root" >&2
    exit 2
  fi
fi

cargo test --workspace --locked "$@"
