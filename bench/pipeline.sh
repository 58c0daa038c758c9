#!/usr/bin/env bash
# Pipeline benchmark on this machine, release builds, everything on loopback:
#  1. receiver: N signed webhooks (C at a time) into SQS (moto): throughput, latency, peak RSS;
#  2. processor: initial sync of a U-user directory from the WorkOS sandbox (4 req/s per directory
#     on /directory_users, as WorkOS) through `dsync process` (the Lambda handler behind the local
#     event source): wall time, WorkOS calls, peak RSS.
# Usage: bench/pipeline.sh [N=2000] [C=16] [U=1000]. Figures in README.md came from this script.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
N="${1:-2000}"; C="${2:-16}"; U="${3:-1000}"
export MOTO_PORT="${BENCH_MOTO_PORT:-4599}"
SANDBOX_PORT="${BENCH_SANDBOX_PORT:-4199}"
RECEIVER_PORT="${BENCH_RECEIVER_PORT:-3099}"
SECRET="whsec_bench_$$"
KEY="sk_test_bench"
OUT="$REPO/.emu/bench"; mkdir -p "$OUT"
export NO_PROXY="127.0.0.1,localhost" no_proxy="127.0.0.1,localhost"

cargo build -q --release --bin webhook-receiver --bin dsync --bin workos-sandbox
BIN="${CARGO_TARGET_DIR:-$REPO/target}/release"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  scripts/emu.sh stop >/dev/null 2>&1 || true
}
trap cleanup EXIT
scripts/emu.sh start >/dev/null
eval "$(scripts/emu.sh env)"
peak_kb() { awk '/VmHWM/ {print $2}' "/proc/$1/status" 2>/dev/null || echo "?"; }
wait_http() { for _ in $(seq 1 100); do curl -sf -o /dev/null "$1" && return 0; sleep 0.1; done; echo "no answer from $1" >&2; return 1; }

# --- 1. receiver
LOAD_QUEUE="$("$BIN/dsync" queue create "bench-load-$$")"
WORKOS_WEBHOOK_SECRET="$SECRET" EVENTS_QUEUE_URL="$LOAD_QUEUE" LISTEN_ADDR="127.0.0.1:$RECEIVER_PORT" RUST_LOG=warn \
  "$BIN/webhook-receiver" >"$OUT/receiver.log" 2>&1 &
RX=$!; pids+=("$RX")
wait_http "http://127.0.0.1:$RECEIVER_PORT/healthz"
rx_idle_kb="$(peak_kb "$RX")"
load_line="$(WORKOS_WEBHOOK_SECRET="$SECRET" "$BIN/dsync" load --url "http://127.0.0.1:$RECEIVER_PORT/webhooks/workos" --count "$N" --concurrency "$C")"
rx_peak_kb="$(peak_kb "$RX")"

# --- 2. processor initial sync
eval "$("$BIN/dsync" stack up --prefix "bench-$$")"
SANDBOX_ADDR="127.0.0.1:$SANDBOX_PORT" SANDBOX_API_KEY="$KEY" SANDBOX_SEED="1x$U" "$BIN/workos-sandbox" >"$OUT/sandbox.log" 2>&1 &
pids+=("$!")
wait_http "http://127.0.0.1:$SANDBOX_PORT/_sandbox/stats"
DIRS_JSON="$(curl -sf -H "Authorization: Bearer $KEY" "http://127.0.0.1:$SANDBOX_PORT/directories")"
DIR="$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["data"][0]["id"])' "$DIRS_JSON")"
ORG="$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["data"][0]["organization_id"])' "$DIRS_JSON")"
curl -sf -X DELETE "http://127.0.0.1:$SANDBOX_PORT/_sandbox/stats" >/dev/null
export WORKOS_API_KEY="$KEY" WORKOS_API_BASE_URL="http://127.0.0.1:$SANDBOX_PORT" \
  ENTITLEMENT_RULES="{\"organizations\":{\"$ORG\":{\"by_group_name\":{\"Group 1\":[\"feature-x\"]}}}}" \
  EVENTS_TABLE STATE_TABLE EVENTS_QUEUE_URL
"$BIN/dsync" reconcile --queue-url "$EVENTS_QUEUE_URL" --directory "$DIR" >/dev/null
t0=$(date +%s.%N)
/usr/bin/time -f "%M" -o "$OUT/process.rss" "$BIN/dsync" process --queue-url "$EVENTS_QUEUE_URL" --until-empty 2>"$OUT/process.log"
t1=$(date +%s.%N)
calls="$(curl -sf "http://127.0.0.1:$SANDBOX_PORT/_sandbox/stats" | python3 -c 'import json,sys; print(json.load(sys.stdin)["total"])')"
granted="$("$BIN/dsync" show directory --directory "$DIR" --json | python3 -c 'import json,sys; d=json.load(sys.stdin); us=d["users"] if isinstance(d,dict) else d; print(sum(1 for u in us if "feature-x" in u.get("entitlements",[])))')"

echo
echo "machine: $(nproc) cores; $(date -u +%Y-%m-%d)"
echo "receiver ($N events, $C concurrent, into moto SQS): $load_line"
echo "receiver peak RSS: $((rx_peak_kb / 1024)) MiB (idle $((rx_idle_kb / 1024)) MiB)"
awk -v a="$t0" -v b="$t1" -v u="$U" -v c="$calls" -v g="$granted" -v r="$(cat "$OUT/process.rss")" \
  'BEGIN { printf "processor initial sync of %d users: %.1f s wall, %d WorkOS calls, %d users granted, peak RSS %d MiB\n", u, b - a, c, g, r / 1024 }'
