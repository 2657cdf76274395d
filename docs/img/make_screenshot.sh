#!/usr/bin/env bash
# Reproduces docs/img/tensorboard-vanishing.png: the custom-scalars dashboard of a
# vanishing-gradient diagnosis (8-layer sigmoid MLP), baseline run only, rendered by
# headless Chromium against a local TensorBoard.
#
#   apt-get install -y chromium      # Debian's package
#   bash docs/img/make_screenshot.sh [OUT.png]
#
# Needs the optdoctor package (pip install -e .), which brings tensorboard. Takes ~30 s.
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${1:-docs/img/tensorboard-vanishing.png}
WORK=$(mktemp -d)
TB_PID=""
cleanup() { [ -n "$TB_PID" ] && kill "$TB_PID" 2>/dev/null; rm -rf "$WORK"; }
trap cleanup EXIT

cat > "$WORK/deep-sigmoid.yaml" <<'YAML'
name: deep-sigmoid
model: {factory: optdoctor.models:mlp, args: {depth: 8, width: 32, act: sigmoid}}
data: {factory: optdoctor.data:blobs, batch_size: 64}
optimizer: {name: sgd, lr: 0.1}
probe: {steps: 200}
YAML

# Probe and write the logs through the Python API (same writer as --tensorboard).
python - "$WORK/deep-sigmoid.yaml" "$WORK/logs" <<'PY'
import sys
from optdoctor.config import load_config
from optdoctor.diagnose import run_diagnosis
from optdoctor.report.tensorboard import write_diagnosis

diag = run_diagnosis(load_config(sys.argv[1]))
print("findings:", [f"{f.rule} {f.cause}" for f in diag.findings], file=sys.stderr)
write_diagnosis(diag, sys.argv[2])
PY

PORT=$(python -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
tensorboard --logdir "$WORK/logs" --host 127.0.0.1 --port "$PORT" >"$WORK/tensorboard.log" 2>&1 &
TB_PID=$!
for _ in $(seq 1 120); do  # up to 60 s: served and the layout loaded
  if curl -sf "http://127.0.0.1:$PORT/data/plugin/custom_scalars/layout" | grep -q "gradient norm"; then break; fi
  sleep 0.5
done

# regexInput keeps only the baseline run (a diagnosis has up to 8 runs: 8 x 9 lines per chart).
chromium --headless --no-sandbox --disable-gpu --disable-background-networking \
  --disable-component-update --disable-sync --no-first-run --disable-quic \
  --user-data-dir="$WORK/chromium" --window-size=1400,1000 --hide-scrollbars \
  --virtual-time-budget=20000 --screenshot="$OUT" \
  "http://127.0.0.1:$PORT/#custom_scalars&regexInput=%5Ebaseline%24" 2>"$WORK/chromium.log"
echo "wrote $OUT" >&2
