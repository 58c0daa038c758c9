#!/usr/bin/env bash
# The whole pipeline locally, in one command, with the group-rename story:
#   WorkOS sandbox --signed webhook--> webhook-receiver --> SQS (moto) --> `dsync process` (the
#   processor's Lambda handler behind a local event-source poller) --> DynamoDB (moto)
# Seeds a directory with "Enterprise Admins" and "Engineering" (10 users each), syncs it, prints the
# entitlements, renames "Enterprise Admins" to "Platform Admins" in the sandbox (which delivers a
# signed dsync.group.updated webhook), processes it, prints the entitlements again and checks them.
#
#   scripts/demo.sh          run it, stop everything it started (exit 0 only if the check passed)
#   scripts/demo.sh --keep   run it and leave it running, with a `dsync process` polling the queue
#   scripts/demo.sh --stop   stop what --keep left running
#
# Ports (fail clearly when taken): MOTO_PORT (4566; a moto already answering there is reused and
# left alone), SANDBOX_PORT (4100), RECEIVER_PORT (3000). DEMO_DIR (.emu/demo) holds logs, pid files
# and the env file of a kept demo. DEMO_BUILD=0 skips `cargo build`.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
export MOTO_PORT="${MOTO_PORT:-4566}"
SANDBOX_PORT="${SANDBOX_PORT:-4100}"
RECEIVER_PORT="${RECEIVER_PORT:-3000}"
DEMO_DIR="${DEMO_DIR:-$REPO/.emu/demo}"
BIN="${CARGO_TARGET_DIR:-$REPO/target}/debug"
SANDBOX="http://127.0.0.1:$SANDBOX_PORT"
RECEIVER="http://127.0.0.1:$RECEIVER_PORT"
# Everything here is on loopback: keep any configured HTTP proxy out of it (curl, python, reqwest).
export NO_PROXY="127.0.0.1,localhost${NO_PROXY:+,$NO_PROXY}" no_proxy="127.0.0.1,localhost${no_proxy:+,$no_proxy}"

say() { printf '\n=== %s\n' "$*"; }
die() {
  echo "demo: $*" >&2
  exit 1
}
usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "${BASH_SOURCE[0]}"; }
# Something accepts connections on the port.
port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
moto_answering() { curl -sf -o /dev/null "http://127.0.0.1:$MOTO_PORT/moto-api/"; }
# Is pid $1 alive and running the program $2 (so a reused pid is never killed)?
is_ours() { [ -n "$1" ] && ps -o args= -p "$1" 2>/dev/null | grep -qF -- "$2"; }

stop_kept() {
  local stopped=0 f name pid
  for f in "$DEMO_DIR"/*.pid; do
    [ -e "$f" ] || continue
    name="$(basename "$f" .pid)"
    pid="$(cat "$f")"
    if is_ours "$pid" "$(cat "$DEMO_DIR/$name.bin" 2>/dev/null || echo "$name")"; then
      kill "$pid" 2>/dev/null && echo "stopped $name (pid $pid)" && stopped=1
    fi
    rm -f "$f" "$DEMO_DIR/$name.bin"
  done
  if [ -f "$DEMO_DIR/moto.port" ]; then
    MOTO_PORT="$(cat "$DEMO_DIR/moto.port")" scripts/emu.sh stop
    echo "stopped moto (port $(cat "$DEMO_DIR/moto.port"))"
    rm -f "$DEMO_DIR/moto.port"
    stopped=1
  fi
  rm -f "$DEMO_DIR/env"
  if [ "$stopped" = 0 ]; then echo "demo: nothing was running"; fi
}

mode=run
case "${1:-}" in
  "") ;;
  --keep) mode=keep ;;
  --stop)
    stop_kept
    exit 0
    ;;
  -h | --help)
    usage
    exit 0
    ;;
  *)
    usage >&2
    exit 64
    ;;
esac

t0=$SECONDS
mkdir -p "$DEMO_DIR"
for f in "$DEMO_DIR"/*.pid; do
  if [ -e "$f" ] && is_ours "$(cat "$f")" "$(cat "${f%.pid}.bin" 2>/dev/null || basename "$f" .pid)"; then
    die "a kept demo is still running ($(basename "$f" .pid), pid $(cat "$f")): scripts/demo.sh --stop"
  fi
done
for p in "SANDBOX_PORT=$SANDBOX_PORT" "RECEIVER_PORT=$RECEIVER_PORT"; do
  if port_in_use "${p#*=}"; then die "port ${p#*=} is in use: set ${p%%=*} to a free port, or stop what listens there"; fi
done
if [ "$SANDBOX_PORT" = "$RECEIVER_PORT" ] || [ "$SANDBOX_PORT" = "$MOTO_PORT" ] || [ "$RECEIVER_PORT" = "$MOTO_PORT" ]; then
  die "MOTO_PORT, SANDBOX_PORT and RECEIVER_PORT must differ"
fi
if ! moto_answering && port_in_use "$MOTO_PORT"; then
  die "port $MOTO_PORT is in use by something that is not moto: set MOTO_PORT to a free port"
fi

say "build"
scripts/emu.sh install
if [ "${DEMO_BUILD:-1}" != 0 ]; then
  cargo build -q --bin webhook-receiver --bin workos-sandbox --bin dsync
fi
for b in webhook-receiver workos-sandbox dsync; do
  [ -x "$BIN/$b" ] || die "$BIN/$b is missing: run cargo build --bin $b"
done
DSYNC="$BIN/dsync"
t_built=$SECONDS

started_moto=0
rx_pid=""
sb_pid=""
cleanup() {
  local rc=$?
  if [ "$mode" = keep ] && [ "$rc" = 0 ]; then return; fi
  if is_ours "$rx_pid" webhook-receiver; then kill "$rx_pid" 2>/dev/null || true; fi
  if is_ours "$sb_pid" workos-sandbox; then kill "$sb_pid" 2>/dev/null || true; fi
  if [ "$started_moto" = 1 ]; then scripts/emu.sh stop; fi
  if [ "$rc" != 0 ]; then
    echo "demo: failed (exit $rc); logs in $DEMO_DIR" >&2
    for l in receiver sandbox; do
      if [ -s "$DEMO_DIR/$l.log" ]; then
        echo "--- $l.log (last lines)" >&2
        tail -n 15 "$DEMO_DIR/$l.log" >&2
      fi
    done
  fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

say "stand-ins"
if moto_answering; then
  echo "moto already answering on port $MOTO_PORT: using it (and leaving it running)"
else
  scripts/emu.sh start
  started_moto=1
fi
eval "$(scripts/emu.sh env)"

PREFIX="${DEMO_PREFIX:-demo-$(date +%s)-$$}"
stack_env="$("$DSYNC" stack up --prefix "$PREFIX")"
eval "$stack_env"
export EVENTS_TABLE STATE_TABLE EVENTS_QUEUE_URL DLQ_URL
echo "$stack_env"

SECRET="whsec_demo_$(date +%s)_$RANDOM"
API_KEY="sk_test_demo_$RANDOM$RANDOM"
WORKOS_WEBHOOK_SECRET="$SECRET" LISTEN_ADDR="127.0.0.1:$RECEIVER_PORT" \
  "$BIN/webhook-receiver" >"$DEMO_DIR/receiver.log" 2>&1 &
rx_pid=$!
for _ in $(seq 1 100); do curl -sf -o /dev/null "$RECEIVER/healthz" && break; sleep 0.1; done
curl -sf -o /dev/null "$RECEIVER/healthz" && kill -0 "$rx_pid" 2>/dev/null ||
  die "the receiver did not start on $RECEIVER (see $DEMO_DIR/receiver.log)"
echo "webhook-receiver on $RECEIVER/webhooks/workos (pid $rx_pid)"

SANDBOX_ADDR="127.0.0.1:$SANDBOX_PORT" SANDBOX_API_KEY="$API_KEY" \
  SANDBOX_WEBHOOK_URL="$RECEIVER/webhooks/workos" SANDBOX_WEBHOOK_SECRET="$SECRET" \
  "$BIN/workos-sandbox" >"$DEMO_DIR/sandbox.log" 2>&1 &
sb_pid=$!
for _ in $(seq 1 100); do curl -sf -o /dev/null "$SANDBOX/_sandbox/stats" && break; sleep 0.1; done
curl -sf -o /dev/null "$SANDBOX/_sandbox/stats" && kill -0 "$sb_pid" 2>/dev/null ||
  die "the WorkOS sandbox did not start on $SANDBOX (see $DEMO_DIR/sandbox.log)"
echo "WorkOS sandbox on $SANDBOX (pid $sb_pid), delivering signed webhooks to the receiver"

# Has every event the sandbox recorded been delivered with a 2xx answer? ("verbose": say what is missing)
delivered() {
  python3 - "$SANDBOX" "${1:-}" <<'PY'
import json, sys, urllib.request
base, verbose = sys.argv[1], sys.argv[2] == "verbose"
events = json.load(urllib.request.urlopen(base + "/_sandbox/events"))["data"]
records = json.load(urllib.request.urlopen(base + "/_sandbox/delivery"))["records"]
ok = {r["event_id"] for r in records if r["status"] is not None and 200 <= r["status"] < 300}
missing = [e["id"] for e in events if e["id"] not in ok]
if missing and verbose:
    print(f"not delivered: {missing}; last attempts: {json.dumps(records[-5:])}", file=sys.stderr)
sys.exit(1 if missing else 0)
PY
}
wait_delivered() {
  for _ in $(seq 1 150); do
    if delivered; then return 0; fi
    sleep 0.1
  done
  delivered verbose || die "the sandbox's webhooks were not all delivered within 15 s"
}

say "seed the directory (the sandbox sends its initial-sync events as webhooks)"
seed_json="$(curl -sf -X POST "$SANDBOX/_sandbox/seed" -H 'content-type: application/json' \
  -d '{"name":"Acme Corp","groups":[{"name":"Enterprise Admins","users":10},{"name":"Engineering","users":10}]}')" ||
  die "seeding the sandbox failed"
ids="$(python3 -c '
import json, sys
s = json.load(sys.stdin)
g = {x["name"]: x for x in s["groups"]}
a, e = g["Enterprise Admins"], g["Engineering"]
print(s["directory_id"], s["organization_id"], a["id"], e["id"], ",".join(a["user_ids"]))
' <<<"$seed_json")" || die "unexpected answer from POST /_sandbox/seed: $seed_json"
read -r DIRECTORY_ID ORG_ID ADMINS_ID ENG_ID ADMIN_USERS <<<"$ids"
[ -n "${ADMIN_USERS:-}" ] || die "unexpected answer from POST /_sandbox/seed: $seed_json"
echo "directory $DIRECTORY_ID: \"Enterprise Admins\" $ADMINS_ID, \"Engineering\" $ENG_ID (10 users each)"
wait_delivered

export WORKOS_API_KEY="$API_KEY" WORKOS_API_BASE_URL="$SANDBOX"
# A group-id rule for the admins group, and a name rule scoped to this customer's organization.
export ENTITLEMENT_RULES="{\"organizations\":{\"$ORG_ID\":{\"by_group_id\":{\"$ADMINS_ID\":[\"admin-console\"]},\"by_group_name\":{\"Platform Admins\":[\"audit-log\"]}}}}"
echo "ENTITLEMENT_RULES=$ENTITLEMENT_RULES"

say "initial sync: dsync reconcile, then dsync process --until-empty"
"$DSYNC" reconcile --directory "$DIRECTORY_ID"
"$DSYNC" process --until-empty 2>&1

say "BEFORE the rename"
"$DSYNC" show directory --directory "$DIRECTORY_ID"

say "rename \"Enterprise Admins\" to \"Platform Admins\" in the sandbox (a signed dsync.group.updated webhook follows)"
curl -sf -o /dev/null -X PATCH "$SANDBOX/_sandbox/groups/$ADMINS_ID" -H 'content-type: application/json' \
  -d '{"name":"Platform Admins"}' || die "renaming the group in the sandbox failed"
t_rename=$SECONDS
wait_delivered
echo "delivered to the receiver and queued"
"$DSYNC" process --until-empty 2>&1

say "AFTER the rename"
"$DSYNC" show directory --directory "$DIRECTORY_ID"

say "check"
after_json="$("$DSYNC" show directory --directory "$DIRECTORY_ID" --json)"
python3 - "$ADMIN_USERS" "$after_json" <<'PY'
import json, sys
members = set(sys.argv[1].split(","))
users = {u["user_id"]: u for u in json.loads(sys.argv[2])["users"]}
want = {"admin-console", "audit-log"}
bad = []
for uid in sorted(members):
    u = users.get(uid)
    if u is None:
        bad.append(f"{uid}: not stored")
        continue
    names = [g["name"] for g in u["groups"]]
    if "Platform Admins" not in names or not want <= set(u["entitlements"]) or not u["current"]:
        bad.append(f"{uid}: groups {names}, entitlements {u['entitlements']}, current {u['current']}")
for uid, u in sorted(users.items()):
    if uid not in members and set(u["entitlements"]) & want:
        bad.append(f"{uid} is not in the group but has {u['entitlements']}")
if bad:
    print("check FAILED:\n  " + "\n  ".join(bad), file=sys.stderr)
    sys.exit(1)
print(f"ok: all {len(members)} members of the renamed group show \"Platform Admins\" with admin-console and audit-log; nobody else has them")
PY
echo "timings: build ${t_built}s, pipeline $((SECONDS - t_built))s (rename to checked: $((SECONDS - t_rename))s), total $((SECONDS - t0))s"

if [ "$mode" = run ]; then
  say "done: stopping what the demo started"
  exit 0
fi

# --keep: leave it running, with a processor polling the queue, and say how to use and stop it.
"$DSYNC" process >"$DEMO_DIR/process.log" 2>&1 &
px_pid=$!
echo "$rx_pid" >"$DEMO_DIR/receiver.pid" && echo "$BIN/webhook-receiver" >"$DEMO_DIR/receiver.bin"
echo "$sb_pid" >"$DEMO_DIR/sandbox.pid" && echo "$BIN/workos-sandbox" >"$DEMO_DIR/sandbox.bin"
echo "$px_pid" >"$DEMO_DIR/process.pid" && echo "$BIN/dsync process" >"$DEMO_DIR/process.bin"
if [ "$started_moto" = 1 ]; then echo "$MOTO_PORT" >"$DEMO_DIR/moto.port"; fi
{
  scripts/emu.sh env
  for v in EVENTS_TABLE STATE_TABLE EVENTS_QUEUE_URL DLQ_URL WORKOS_API_KEY WORKOS_API_BASE_URL ENTITLEMENT_RULES; do
    printf 'export %s=%q\n' "$v" "${!v}"
  done
  printf 'export WORKOS_WEBHOOK_SECRET=%q\n' "$SECRET"
  printf 'export DIRECTORY_ID=%q ADMINS_ID=%q ENG_ID=%q SANDBOX=%q RECEIVER=%q\n' \
    "$DIRECTORY_ID" "$ADMINS_ID" "$ENG_ID" "$SANDBOX" "$RECEIVER"
} >"$DEMO_DIR/env"
moto_note="already running, left alone by --stop"
if [ "$started_moto" = 1 ]; then moto_note="pid $(cat "$REPO/.emu/moto-$MOTO_PORT.pid" 2>/dev/null || echo '?')"; fi
rel="${DEMO_DIR#"$REPO"/}"
cat <<EOT

=== running (stop with: scripts/demo.sh --stop)
  moto (SQS + DynamoDB)  http://127.0.0.1:$MOTO_PORT  ($moto_note)
  WorkOS sandbox         $SANDBOX  (pid $sb_pid, log $rel/sandbox.log)
  webhook-receiver       $RECEIVER/webhooks/workos  (pid $rx_pid, log $rel/receiver.log)
  dsync process          polling $EVENTS_QUEUE_URL  (pid $px_pid, log $rel/process.log)

Try (every change in the sandbox now flows through on its own):
  source $rel/env
  $BIN/dsync show directory --directory \$DIRECTORY_ID
  $BIN/dsync show user --user ${ADMIN_USERS%%,*} --json
  curl -s -X PATCH \$SANDBOX/_sandbox/groups/\$ENG_ID -d '{"name":"Platform Admins"}'; sleep 2
  curl -s -X DELETE \$SANDBOX/_sandbox/groups/\$ADMINS_ID/users/${ADMIN_USERS%%,*}; sleep 2
  curl -s \$SANDBOX/_sandbox/events | python3 -m json.tool | less
  $BIN/dsync send-test-event --url \$RECEIVER/webhooks/workos --event dsync.group.updated \\
    --data "{\"object\":\"directory_group\",\"id\":\"\$ENG_ID\",\"directory_id\":\"\$DIRECTORY_ID\"}"
  $BIN/dsync reconcile --directory \$DIRECTORY_ID
  $BIN/dsync queue peek \$DLQ_URL
  $BIN/dsync dlq redrive --from \$DLQ_URL --to \$EVENTS_QUEUE_URL
EOT
