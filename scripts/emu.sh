#!/usr/bin/env bash
# The local stand-ins: moto server (SQS + DynamoDB) from PyPI, in a venv the project owns.
#   scripts/emu.sh install   create the venv and install moto (idempotent)
#   scripts/emu.sh start     start moto on $MOTO_PORT (default 4566) unless it already answers
#   scripts/emu.sh stop      stop the moto this script started
#   scripts/emu.sh env       print the exports that point the AWS SDK at it
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
EMU="${EMU_DIR:-$REPO/.emu}"
PORT="${MOTO_PORT:-4566}"
URL="http://127.0.0.1:$PORT"
MOTO_VERSION="5.2.5"

install() {
  if [ -x "$EMU/venv/bin/moto_server" ]; then return 0; fi
  mkdir -p "$EMU"
  local t0=$SECONDS
  python3 -m venv "$EMU/venv"
  "$EMU/venv/bin/pip" install -q --disable-pip-version-check "moto[server]==$MOTO_VERSION"
  echo "emu: installed moto $MOTO_VERSION in $((SECONDS - t0)) s"
}

answering() { curl -sf -o /dev/null "$URL/moto-api/"; }

start() {
  install
  if answering; then echo "emu: moto already answering at $URL"; return 0; fi
  # moto's server, with a local-only speed fix to its TransactWriteItems (see moto_server.py).
  "$EMU/venv/bin/python" "$REPO/scripts/moto_server.py" -H 127.0.0.1 -p "$PORT" >"$EMU/moto-$PORT.log" 2>&1 &
  echo $! >"$EMU/moto-$PORT.pid"
  for _ in $(seq 1 100); do
    if answering; then echo "emu: moto answering at $URL (pid $(cat "$EMU/moto-$PORT.pid"))"; return 0; fi
    sleep 0.1
  done
  echo "emu: moto did not answer at $URL; log:" >&2
  cat "$EMU/moto-$PORT.log" >&2
  return 1
}

stop() {
  if [ -f "$EMU/moto-$PORT.pid" ]; then
    local pid
    pid="$(cat "$EMU/moto-$PORT.pid")"
    kill "$pid" 2>/dev/null || true
    # Gone before returning, so a `start` right after starts a new one (not the old, answering).
    for _ in $(seq 1 50); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    rm -f "$EMU/moto-$PORT.pid"
  fi
}

env_exports() {
  cat <<EOV
export AWS_ENDPOINT_URL=$URL
export AWS_REGION=us-east-1
export AWS_ACCESS_KEY_ID=test
export AWS_SECRET_ACCESS_KEY=test
export DSYNC_MOTO_URL=$URL
export DSYNC_MOTO_BIN=$EMU/venv/bin/moto_server
EOV
}

case "${1:-}" in
  install) install ;;
  start) start ;;
  stop) stop ;;
  env) env_exports ;;
  *) echo "usage: $0 install|start|stop|env" >&2; exit 64 ;;
esac
