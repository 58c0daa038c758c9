#!/usr/bin/env bash
# Idempotently install the infra tool chain into a venv at ${EMU_DIR:-$REPO/.emu}/infra:
# cfn-lint, aws-sam-cli, pyyaml, pytest and cargo-lambda (which brings ziglang).
# Re-running is cheap: pinned packages already present are skipped.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
EMU="${EMU_DIR:-$REPO/.emu}"
VENV="$EMU/infra"
PY="${PYTHON:-python3}"

PKGS=(
  "cfn-lint==1.58.0"
  "aws-sam-cli==1.170.0"
  "cargo-lambda==1.9.2"
  "pyyaml"
  "pytest"
)

now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }

T0="$(now)"
mkdir -p "$EMU"
if [[ ! -x "$VENV/bin/python" ]]; then
  t="$(now)"
  "$PY" -m venv "$VENV"
  echo "infra-tools: created venv $VENV ($(elapsed "$t") s)"
else
  echo "infra-tools: venv exists: $VENV"
fi

# Skip pip entirely when every pin is already satisfied (idempotent and fast).
satisfied() {
  "$VENV/bin/python" - "$@" <<'PYEOF'
import sys
from importlib import metadata
for spec in sys.argv[1:]:
    name, _, want = spec.partition("==")
    try:
        have = metadata.version(name)
    except metadata.PackageNotFoundError:
        sys.exit(1)
    if want and have != want:
        sys.exit(1)
PYEOF
}

if satisfied "${PKGS[@]}"; then
  echo "infra-tools: all packages already installed"
else
  t="$(now)"
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check --upgrade pip
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check "${PKGS[@]}"
  echo "infra-tools: pip install ($(elapsed "$t") s)"
fi

export PATH="$VENV/bin:$PATH"
echo "infra-tools: versions:"
echo "  $(cfn-lint --version 2>&1 | head -1)"
echo "  $(SAM_CLI_TELEMETRY=0 sam --version 2>&1 | head -1)"
echo "  $(cargo-lambda lambda --version 2>&1 | head -1 || true)"
echo "  ziglang $("$VENV/bin/python" -c 'from importlib import metadata; print(metadata.version("ziglang"))')"
echo "  pyyaml $("$VENV/bin/python" -c 'import yaml; print(yaml.__version__)'), $(pytest --version 2>&1 | head -1)"
echo "infra-tools: done in $(elapsed "$T0") s (venv: $VENV; put $VENV/bin first on PATH)"
