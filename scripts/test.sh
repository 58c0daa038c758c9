#!/usr/bin/env bash
# Runs every test: starts the stand-ins (moto), runs the whole workspace's tests, stops them.
# Extra arguments go to `cargo test` (e.g. scripts/test.sh -p dsync).
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
started_here=0
if ! curl -sf -o /dev/null "http://127.0.0.1:${MOTO_PORT:-4566}/moto-api/"; then
  scripts/emu.sh start
  started_here=1
fi
cleanup() { if [ "$started_here" = 1 ]; then scripts/emu.sh stop; fi; }
trap cleanup EXIT
eval "$(scripts/emu.sh env)"
# Debug builds nest deep poll frames (SDK + HTTP + crash-injection wrappers): give test threads
# room. Release builds, as deployed, need far less.
export RUST_MIN_STACK="${RUST_MIN_STACK:-16777216}"
cargo test --workspace --locked "$@"
