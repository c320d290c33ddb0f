#!/usr/bin/env bash
# One-command GPU validation: install hetero with its GPU extras, run the CUDA test suite, then the
# GPU benchmark, and end with a summary table.
#
#   scripts/gpu_check.sh            # uses the current Python environment (pip install -e .[gpu,dev])
#   SKIP_INSTALL=1 scripts/gpu_check.sh   # use what is installed already
#   PYTHON=python3.12 scripts/gpu_check.sh
#
# Outputs go to ${OUT_DIR:-gpu-check-out}/: pytest.log, junit.xml, bench.txt, bench.json, and
# validation-entry.md (the section to paste into docs/gpu-validation.md).
# On a machine without an NVIDIA GPU it says so and exits with status 2 before installing anything.
set -uo pipefail

cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
OUT_DIR="${OUT_DIR:-gpu-check-out}"

if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L >/dev/null 2>&1; then
    echo "gpu_check: no NVIDIA GPU here (nvidia-smi missing or lists no GPU)." >&2
    echo "gpu_check: run this on a CUDA machine; the CPU suite is 'pytest' alone." >&2
    exit 2
fi
nvidia-smi -L
mkdir -p "$OUT_DIR"

if [ "${SKIP_INSTALL:-0}" != "1" ]; then
    echo "== installing hetero[gpu,dev]"
    "$PYTHON" -m pip install --quiet -e ".[gpu,dev]" || { echo "gpu_check: pip install failed" >&2; exit 1; }
fi

if ! "$PYTHON" -c "import cupy, sys; sys.exit(0 if cupy.cuda.runtime.getDeviceCount() > 0 else 1)"; then
    echo "gpu_check: CuPy cannot see a CUDA device (driver too old for cupy-cuda13x? try cupy-cuda12x)" >&2
    exit 2
fi

echo "== pytest tests/gpu"
"$PYTHON" -m pytest tests/gpu -v -p no:cacheprovider --junitxml="$OUT_DIR/junit.xml" 2>&1 \
    | tee "$OUT_DIR/pytest.log"
tests_rc=${PIPESTATUS[0]}

echo "== scripts/bench_gpu.py"
"$PYTHON" scripts/bench_gpu.py --json "$OUT_DIR/bench.json" 2>&1 | tee "$OUT_DIR/bench.txt"
bench_rc=${PIPESTATUS[0]}

summary_line=$(grep -E '^=+ .*(passed|failed|error|skipped).* =+$' "$OUT_DIR/pytest.log" | tail -1)
gpu_name=$(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | head -1)
echo
echo "================ gpu_check summary ================"
printf '%-14s %s\n' "GPU" "$gpu_name"
printf '%-14s %s\n' "tests/gpu" "${summary_line:-no pytest summary} (exit $tests_rc)"
printf '%-14s %s\n' "bench_gpu" "exit $bench_rc, figures in $OUT_DIR/bench.json"
sed -n '/^Summary:/,$p' "$OUT_DIR/bench.txt" | sed 's/^/    /'
echo "==================================================="

# A ready-to-paste entry for docs/gpu-validation.md (newest first under "## Runs").
entry="$OUT_DIR/validation-entry.md"
gpu_model=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)
driver=$(nvidia-smi --query-gpu=driver_version --format=csv,noheader | head -1)
commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
versions=$("$PYTHON" - <<'PY' 2>/dev/null
import cupy
v = cupy.cuda.runtime.runtimeGetVersion()
try:
    from cupy.cuda import cudnn
    dnn = cudnn.getVersion()
except Exception:
    dnn = "n/a"
print(f"CUDA runtime {v // 1000}.{v % 1000 // 10}, cuDNN {dnn}, CuPy {cupy.__version__}")
PY
)
# cuDNN graphs that cuDNN refuses on this card (a convolution and a batch norm, run once here)
fallbacks=$("$PYTHON" - <<'PY' 2>/dev/null
import numpy as np
import hetero as ht
from hetero.backends import cupy as backend
ht.config.machine = ht.Machine.detect()
with ht.device("gpu:0"):
    x = ht.tensor(np.ones((1, 3, 8, 8), np.float32))
    ht.ops.conv2d(x, np.ones((4, 3, 3, 3), np.float32), pads=(1, 1, 1, 1)).numpy()
    ht.ops.batch_norm(x, *[np.ones(3, np.float32)] * 4).numpy()
print(dict(backend.CUDNN_FALLBACKS) or "none")
PY
)
{
    echo "### $(date -u +%Y-%m-%d), ${gpu_model}, driver ${driver}, commit ${commit}"
    echo
    echo '```text'
    echo "environment: ${HETERO_ENV:-bare metal}, ${versions:-versions unknown}"
    echo "tests/gpu:   ${summary_line:-no pytest summary} (exit $tests_rc)"
    grep -E '^(FAILED|ERROR) ' "$OUT_DIR/pytest.log" | sed 's/^/    /'
    echo "cuDNN fallbacks: ${fallbacks:-unknown}"
    echo "bench_gpu summary:"
    sed -n '/^Summary:/,$p' "$OUT_DIR/bench.txt" | sed 's/^/    /'
    echo '```'
} > "$entry"
echo "docs/gpu-validation.md entry written to $entry (HETERO_ENV names how it ran, e.g. 'docker hetero:gpu')"
if [ "$tests_rc" -ne 0 ] || [ "$bench_rc" -ne 0 ]; then
    exit 1
fi
exit 0
