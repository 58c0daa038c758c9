#!/usr/bin/env bash
# Offline checks of infra/template.yaml, plus the Lambda release build.
#
#   scripts/infra-check.sh                      # all checks + cargo lambda build (arm64)
#   SKIP_LAMBDA_BUILD=1 scripts/infra-check.sh  # template checks only (seconds)
#   SAM_BUILD=1 scripts/infra-check.sh          # also `sam build` (rebuilds through cargo lambda; slow)
#
# Tools come from the venv made by scripts/infra-tools.sh (run automatically if missing); its
# bin/ goes FIRST on PATH so cargo-lambda finds its own ziglang. No AWS credentials are used.
# Every step runs; the script exits non-zero if any failed.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
EMU="${EMU_DIR:-$REPO/.emu}"
VENV="$EMU/infra"
INFRA="$REPO/infra"
OUT="$EMU/infra-out"            # scratch output (under .emu/, which git ignores)
EXPANDED="$OUT/template.expanded.json"

if [[ ! -x "$VENV/bin/cfn-lint" || ! -x "$VENV/bin/sam" || ! -x "$VENV/bin/cargo-lambda" ]]; then
  echo "infra-check: tools missing in $VENV, running scripts/infra-tools.sh"
  "$REPO/scripts/infra-tools.sh"
fi

export PATH="$VENV/bin:$PATH"
export SAM_CLI_TELEMETRY=0
export AWS_CONFIG_FILE=/dev/null AWS_SHARED_CREDENTIALS_FILE=/dev/null
export AWS_DEFAULT_REGION=us-east-1 AWS_REGION=us-east-1
export PYTHONDONTWRITEBYTECODE=1
unset AWS_PROFILE AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY AWS_SESSION_TOKEN || true
mkdir -p "$OUT"

now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }

RESULTS=()
FAILED=0
step() { # step NAME CMD...
  local name="$1"; shift
  local t; t="$(now)"
  echo
  echo "=== $name"
  if "$@"; then
    RESULTS+=("PASS  $name ($(elapsed "$t") s)")
  else
    local rc=$?
    RESULTS+=("FAIL  $name (rc $rc, $(elapsed "$t") s)")
    FAILED=$((FAILED + 1))
  fi
}

expand_and_lint() {
  rm -f "$EXPANDED"   # never let the tests read a stale expansion
  python "$INFRA/sam_expand.py" "$INFRA/template.yaml" "$EXPANDED" && cfn-lint -- "$EXPANDED"
}

sam_validate() {
  (cd "$INFRA" && sam validate --lint --region us-east-1 --template-file template.yaml)
}

template_tests() {
  (cd "$REPO" && INFRA_EXPANDED="$EXPANDED" python -m pytest -q -p no:cacheprovider infra/test_template.py)
}

LAMBDA_ARCH_FLAG=--arm64
SAM_ARCH=arm64
pick_arch() {
  if rustup target list --installed 2>/dev/null | grep -qx aarch64-unknown-linux-gnu \
     || rustup target add aarch64-unknown-linux-gnu; then
    LAMBDA_ARCH_FLAG=--arm64; SAM_ARCH=arm64
  else
    echo "infra-check: WARNING: no aarch64 std (rustup target add failed): building --x86-64 instead;"
    echo "             deploy with --parameter-overrides Architecture=x86_64"
    LAMBDA_ARCH_FLAG=--x86-64; SAM_ARCH=x86_64
  fi
  return 0
}

# The functions the template declares (Metadata.BuildProperties.Binary), so every one is built,
# a new one included.
template_bins() {
  python - "$INFRA/template.yaml" <<'PYEOF'
import sys
import yaml
with open(sys.argv[1]) as f:
    tpl = yaml.safe_load(f)
for r in (tpl.get("Resources") or {}).values():
    b = ((r.get("Metadata") or {}).get("BuildProperties") or {}).get("Binary")
    if r.get("Type") == "AWS::Serverless::Function" and b:
        print(b)
PYEOF
}

lambda_build() {
  local bins=() bin_args=() b
  mapfile -t bins < <(template_bins)
  [[ ${#bins[@]} -gt 0 ]] || { echo "no function with BuildProperties.Binary in the template"; return 1; }
  for b in "${bins[@]}"; do bin_args+=(--bin "$b"); done
  echo "  bins from the template: ${bins[*]}"
  (cd "$REPO" && cargo lambda build --release "$LAMBDA_ARCH_FLAG" "${bin_args[@]}") || return 1
  local target_dir
  target_dir="$(cd "$REPO" && cargo metadata --format-version 1 --no-deps \
      | python -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')"
  local bin f
  for bin in "${bins[@]}"; do
    f="$target_dir/lambda/$bin/bootstrap"
    [[ -f "$f" ]] || { echo "missing $f"; return 1; }
    printf '  %-18s %8s bytes  %s\n' "$bin" "$(stat -c %s "$f")" "$(file -b "$f" 2>/dev/null | cut -d, -f1-2)"
  done
}

sam_build() {
  # Writes only under .emu/ (build dir and cache); the template's CodeUri ../ is the cargo workspace.
  (cd "$INFRA" && sam build --template-file template.yaml --build-dir "$OUT/sam-build" \
      --cache-dir "$OUT/sam-cache" --beta-features --parameter-overrides "Architecture=$SAM_ARCH" </dev/null) \
    || return 1
  ls -l "$OUT"/sam-build/*/bootstrap
}

T0="$(now)"
step "cfn-lint infra/template.yaml" cfn-lint -- "$INFRA/template.yaml"
step "sam_expand.py + cfn-lint on expanded template" expand_and_lint
step "sam validate --lint" sam_validate
step "pytest infra/test_template.py" template_tests
if [[ "${SKIP_LAMBDA_BUILD:-0}" == "1" ]]; then
  RESULTS+=("SKIP  cargo lambda build (SKIP_LAMBDA_BUILD=1)")
else
  step "rustup target add aarch64-unknown-linux-gnu" pick_arch
  step "cargo lambda build --release $LAMBDA_ARCH_FLAG (every function in the template)" lambda_build
fi
if [[ "${SAM_BUILD:-0}" == "1" ]]; then
  [[ "${SKIP_LAMBDA_BUILD:-0}" == "1" ]] && pick_arch
  step "sam build (Architecture=$SAM_ARCH)" sam_build
else
  RESULTS+=("SKIP  sam build (set SAM_BUILD=1)")
fi

echo
echo "=== infra-check summary ($(elapsed "$T0") s)"
printf '%s\n' "${RESULTS[@]}"
[[ "$FAILED" -eq 0 ]]
