#!/usr/bin/env bash
# The one command for a lent GPU. From a fresh clone on a machine that has only an NVIDIA driver
# (CUDA 13: R580 or newer) and Python 3.10+, it installs hetero[gpu,dev] into a venv (every CUDA
# library from PyPI: CuPy's headers, cuBLAS, cuRAND and NVRTC through cupy-cuda13x[ctk], and
# libcudnn), runs tests/gpu, runs scripts/bench_gpu.py (GEMM TFLOP/s; host<->device GB/s, pinned
# and pageable; ResNet-50 batch 32 against PyTorch, which it installs in a second venv in the
# background while the tests run), and prints one summary table. Target: under 8 minutes.
#
#   scripts/gpu_check.sh                          # venv .venv-gpu (and .venv-gpu-torch)
#   PYTHON=/usr/bin/python3 scripts/gpu_check.sh  # install into that interpreter's environment
#   SKIP_INSTALL=1 scripts/gpu_check.sh           # use what is installed (with PYTHON or the venv)
#   NO_TORCH=1 scripts/gpu_check.sh               # no PyTorch comparison (saves its ~3 GB install)
#   TEST_TIMEOUT=300 BENCH_TIMEOUT=180 TORCH_TIMEOUT=300   # seconds per step (the defaults)
#
# Outputs go to ${OUT_DIR:-gpu-check-out}/: install.log, torch-install.log, pytest.log,
# junit.xml, bench.txt, bench.json, probe.json, summary.txt (the table) and validation-entry.md
# (the section to paste into docs/gpu-validation.md). Exit status: 0 all passed, 1 a test or the
# benchmark failed, 2 no GPU here (said before anything is installed), 3 the install failed.
set -uo pipefail

cd "$(dirname "$0")/.."
OUT_DIR="${OUT_DIR:-gpu-check-out}"
VENV="${VENV:-.venv-gpu}"
started=$(date +%s)

if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L >/dev/null 2>&1; then
    echo "gpu_check: no NVIDIA GPU here (nvidia-smi missing or lists no GPU)." >&2
    echo "gpu_check: run this on a CUDA machine; the CPU suite is 'pytest' alone." >&2
    exit 2
fi
nvidia-smi -L
mkdir -p "$OUT_DIR"
step() { echo "== $* ($(( $(date +%s) - started )) s)"; }

if [ -z "${PYTHON:-}" ]; then
    if [ ! -x "$VENV/bin/python" ] && ! python3 -m venv "$VENV" >"$OUT_DIR/install.log" 2>&1; then
        echo "gpu_check: python3 -m venv failed (apt install python3-venv?); using python3" >&2
        PYTHON=python3
    else
        PYTHON="$VENV/bin/python"
    fi
fi

# PyTorch in a venv of its own, in the background: its CUDA and cuDNN wheels must not replace
# the ones hetero[gpu] installed, and its download overlaps the tests.
torch_python=""
torch_pid=""
if [ "${NO_TORCH:-0}" != "1" ]; then
    torch_venv="${VENV}-torch"
    if [ -x "$torch_venv/bin/python" ] && "$torch_venv/bin/python" -c "import torch" 2>/dev/null; then
        torch_python="$torch_venv/bin/python"
    elif python3 -m venv "$torch_venv" >"$OUT_DIR/torch-install.log" 2>&1; then
        ( timeout "${TORCH_TIMEOUT:-300}" "$torch_venv/bin/python" -m pip install --quiet \
              numpy torch >>"$OUT_DIR/torch-install.log" 2>&1 ) &
        torch_pid=$!
        torch_python="$torch_venv/bin/python"
    fi
fi

if [ "${SKIP_INSTALL:-0}" != "1" ]; then
    step "installing hetero[gpu,dev] into $("$PYTHON" -c 'import sys; print(sys.prefix)')"
    if ! { "$PYTHON" -m pip install --quiet --upgrade pip \
           && "$PYTHON" -m pip install --quiet -e ".[gpu,dev]"; } >>"$OUT_DIR/install.log" 2>&1; then
        tail -20 "$OUT_DIR/install.log" >&2
        echo "gpu_check: pip install failed (full log: $OUT_DIR/install.log)" >&2
        exit 3
    fi
fi

if ! "$PYTHON" -c "import cupy, sys; sys.exit(0 if cupy.cuda.runtime.getDeviceCount() > 0 else 1)"; then
    echo "gpu_check: CuPy cannot see a CUDA device (driver older than CUDA 13? use cupy-cuda12x)" >&2
    exit 2
fi

# What cuDNN does on this card: versions, one convolution and one batch norm through the
# backend, and the counts of graph runs and fallbacks (with the reasons).
step "probe: versions and cuDNN paths"
"$PYTHON" - >"$OUT_DIR/probe.json" 2>"$OUT_DIR/probe.log" <<'PY'
import json, warnings
import numpy as np
import cupy
import hetero as ht
from hetero.backends import cupy as backend
warnings.simplefilter("ignore")
v = cupy.cuda.runtime.runtimeGetVersion()
out = {"cuda_runtime": f"{v // 1000}.{v % 1000 // 10}", "cupy": cupy.__version__,
       "cudnn": backend.cudnn_version() or f"n/a ({backend.cudnn_unavailable()})"}
try:
    ht.config.machine = ht.Machine.detect()
    with ht.device("gpu:0"):
        x = ht.tensor(np.ones((2, 8, 16, 16), np.float32))
        ht.ops.conv2d(x, np.ones((8, 8, 3, 3), np.float32), pads=(1, 1, 1, 1)).numpy()
        ht.ops.batch_norm(x, *[np.ones(8, np.float32)] * 4).numpy()
except Exception as exc:
    out["probe_error"] = f"{type(exc).__name__}: {exc}"
report = backend.cudnn_report()
out.update(executed=report["executed"], fallback=report["fallback"],
           refused={f"{k[0]} {k[2:]}": why for k, why in report["refused"].items()})
print(json.dumps(out))
PY

step "pytest tests/gpu"
timeout "${TEST_TIMEOUT:-300}" "$PYTHON" -m pytest tests/gpu -q -rfEs -p no:cacheprovider \
    --junitxml="$OUT_DIR/junit.xml" >"$OUT_DIR/pytest.log" 2>&1
tests_rc=$?
tail -5 "$OUT_DIR/pytest.log"

if [ -n "$torch_pid" ]; then
    step "waiting for the PyTorch install"
    wait "$torch_pid" || true
fi
torch_args=()
if [ -n "$torch_python" ] && "$torch_python" -c "import torch" 2>/dev/null; then
    torch_args=(--torch-python "$torch_python")
fi

step "scripts/bench_gpu.py"
timeout "${BENCH_TIMEOUT:-180}" "$PYTHON" scripts/bench_gpu.py --sizes 2048 4096 8192 --reps 10 \
    --json "$OUT_DIR/bench.json" "${torch_args[@]}" >"$OUT_DIR/bench.txt" 2>&1
bench_rc=$?

elapsed=$(( $(date +%s) - started ))
gpu_name=$(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | head -1)
summary_line=$(grep -E '(passed|failed|error)' "$OUT_DIR/pytest.log" | tail -1)
GPU_NAME="$gpu_name" TESTS="${summary_line:-no pytest summary} (exit $tests_rc)" \
BENCH_RC="$bench_rc" ELAPSED="$elapsed" OUT_DIR="$OUT_DIR" "$PYTHON" - <<'PY' | tee "$OUT_DIR/summary.txt"
import json, os
out = os.environ["OUT_DIR"]

def load(name):
    try:
        with open(os.path.join(out, name)) as f:
            return json.load(f)
    except Exception:
        return {}

probe, bench = load("probe.json"), load("bench.json")
rows = [("GPU, driver", os.environ["GPU_NAME"]),
        ("CUDA, CuPy", f"{probe.get('cuda_runtime', '?')}, {probe.get('cupy', '?')}"),
        ("cuDNN", probe.get("cudnn", "?")),
        ("cuDNN probe", f"{probe.get('executed', '?')} graph runs, "
                        f"{probe.get('fallback', '?')} fallbacks {probe.get('probe_error', '')}"),
        ("tests/gpu", os.environ["TESTS"])]
rows += [(f"  refused {k}", v[:90]) for k, v in probe.get("refused", {}).items()]
gemm = bench.get("gemm_tflops", {})
for mode in ("fp32", "tf32", "fp16"):
    key = f"{mode}/8192"
    if key in gemm:
        rows.append((f"GEMM {mode} n=8192", f"{gemm[key]} TFLOP/s"))
copies = bench.get("copy_gbps", {})
for key in ("h2d/pinned/256MiB", "h2d/pageable/256MiB", "d2h/pinned/256MiB",
            "d2h/pageable/256MiB"):
    if key in copies:
        rows.append((key.replace("/", " "), f"{copies[key]} GB/s"))
res = bench.get("resnet50", {})
for who in ("hetero", "torch"):
    if res:
        value = (f"{res[who + '_ms']} ms" if who + "_ms" in res
                 else str(res.get(who + "_error", "n/a"))[:90])
        rows.append((f"ResNet-50 b{res['batch']} {who}", value))
if "max_rel_diff" in res:
    rows.append(("ResNet-50 logits", f"max rel diff {res['max_rel_diff']:.1e} (hetero vs torch)"))
rows.append(("bench_gpu", f"exit {os.environ['BENCH_RC']}" + ("" if bench else " (no bench.json)")))
rows.append(("total time", f"{os.environ['ELAPSED']} s"))
width = max(len(k) for k, _ in rows)
print("=" * 30 + " gpu_check summary " + "=" * 30)
for k, v in rows:
    print(f"{k:<{width}}  {v}")
print("=" * 79)
PY

# A ready-to-paste entry for docs/gpu-validation.md (newest first under "## Runs").
entry="$OUT_DIR/validation-entry.md"
commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
{
    echo "### $(date -u +%Y-%m-%d), ${gpu_name}, commit ${commit}"
    echo
    echo '```text'
    echo "environment: ${HETERO_ENV:-bare metal}"
    cat "$OUT_DIR/summary.txt"
    grep -E '^(FAILED|ERROR) ' "$OUT_DIR/pytest.log" | sed 's/^/    /'
    echo '```'
} > "$entry"
echo "outputs in $OUT_DIR/ (docs/gpu-validation.md entry: $entry)"
if [ "$tests_rc" -ne 0 ] || [ "$bench_rc" -ne 0 ]; then
    exit 1
fi
exit 0
