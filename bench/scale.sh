#!/usr/bin/env bash
# Scale benchmark (issue 9), release builds, on this machine. The WorkOS sandbox runs as its own
# process with its real HTTP API and rate limits; time runs SPEED times faster (the sandbox's
# rate-limit windows and the processor's pacing, delays and chunk length scaled alike), so the
# figures are in scaled seconds: multiply wall times by SPEED for the real-time equivalent.
#
#   bench/scale.sh reconcile [--users 100000 --groups 1000 --memberships 300000 --biggest 50000]
#   bench/scale.sh burst     [--users 10000]
#   bench/scale.sh moto      [--users 2000]      (starts moto on a port of its own)
#   common: --speed 10 --workers 8
#
# `reconcile` and `burst` keep the state in the in-memory store (the one that passes the DynamoDB
# conformance suite and bills like DynamoDB); `moto` runs the DynamoDB adapters on moto. Figures in
# BENCHMARKS.md came from this script.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
export NO_PROXY="127.0.0.1,localhost" no_proxy="127.0.0.1,localhost"
cargo build -q --release -p integration-tests --bin scale -p workos-sandbox --bin workos-sandbox
BIN="${CARGO_TARGET_DIR:-$REPO/target}/release"
scenario="${1:-reconcile}"
[[ $# -gt 0 ]] && shift
if [[ "$scenario" == "moto" ]]; then
  export MOTO_PORT="${BENCH_MOTO_PORT:-4598}"
  trap 'scripts/emu.sh stop >/dev/null 2>&1 || true' EXIT
  scripts/emu.sh start >/dev/null
  eval "$(scripts/emu.sh env)"
fi
exec_time=(/usr/bin/time -f "process: %e s wall, %M KiB peak RSS")
[[ -x /usr/bin/time ]] || exec_time=()
"${exec_time[@]}" "$BIN/scale" "$scenario" --sandbox "$BIN/workos-sandbox" "$@"
