#!/usr/bin/env bash
# Runs the receiver locally against the stand-ins and sends it a signed test event:
# moto (SQS) -> a fresh queue -> webhook-receiver on 127.0.0.1:${RECEIVER_PORT:-3000} -> `dsync send-test-event`
# -> shows what landed on the queue. Stops what it started.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
PORT="${RECEIVER_PORT:-3000}"
SECRET="whsec_local_try_$(date +%s)"

cargo build -q --bin webhook-receiver --bin dsync
started_moto=0
if ! curl -sf -o /dev/null "http://127.0.0.1:${MOTO_PORT:-4566}/moto-api/"; then scripts/emu.sh start; started_moto=1; fi
eval "$(scripts/emu.sh env)"
rx_pid=""
cleanup() {
  if [ -n "$rx_pid" ]; then kill "$rx_pid" 2>/dev/null || true; fi
  if [ "$started_moto" = 1 ]; then scripts/emu.sh stop; fi
}
trap cleanup EXIT

QUEUE_URL="$(target/debug/dsync queue create "try-events-$$")"
echo "queue: $QUEUE_URL"
WORKOS_WEBHOOK_SECRET="$SECRET" EVENTS_QUEUE_URL="$QUEUE_URL" LISTEN_ADDR="127.0.0.1:$PORT" \
  target/debug/webhook-receiver &
rx_pid=$!
for _ in $(seq 1 100); do curl -sf -o /dev/null "http://127.0.0.1:$PORT/healthz" && break; sleep 0.1; done

echo "--- a signed event"
WORKOS_WEBHOOK_SECRET="$SECRET" target/debug/dsync send-test-event --url "http://127.0.0.1:$PORT/webhooks/workos"
echo "--- the same event signed with the wrong secret (expect 401)"
if WORKOS_WEBHOOK_SECRET="whsec_wrong" target/debug/dsync send-test-event --url "http://127.0.0.1:$PORT/webhooks/workos"; then
  echo "expected a 401" >&2; exit 1
fi
echo "--- on the queue"
target/debug/dsync queue peek "$QUEUE_URL"
