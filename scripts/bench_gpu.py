"""GPU throughput figures: GEMM TFLOP/s (fp32, tf32, fp16) and host<->device copy GB/s.

Usage::

    python scripts/bench_gpu.py [--sizes 1024 2048 4096 8192] [--reps 20] [--json out.json]

GEMM: square ``cupy.matmul`` (cuBLAS) of n x n matrices, timed with CUDA events over ``--reps``
calls after a warm-up; 2 n^3 flops per call. "fp32" forces the plain FP32 compute type,
"tf32" lets cuBLAS use TF32 tensor cores for float32, "fp16" multiplies float16 matrices (float32
accumulate). Copies: ``CudaDevice.copy_from_host`` / ``copy_to_host`` (cudaMemcpyAsync) of 1, 16
and 256 MiB from pinned (``pinned_empty``) and pageable (``numpy.empty``) host buffers.

It prints one table per measurement and a summary; ``--json`` also writes every figure. On a
machine without CUDA it says so and exits with status 2.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _gemm_tflops(cp, n: int, mode: str, reps: int) -> float:
    """TFLOP/s of an n x n x n matmul in ``mode`` ("fp32", "tf32", "fp16"); NaN where this CuPy
    cannot select the float32 compute type (a private CuPy API)."""
    try:
        from cupy._core import _routines_linalg as linalg

        linalg.get_compute_type(np.dtype(np.float32))
    except (ImportError, AttributeError):
        if mode != "fp16":
            return float("nan")
        linalg = None
    dtype = np.float16 if mode == "fp16" else np.float32
    if linalg is None:
        return _time_matmul(cp, n, dtype, reps)
    previous = linalg.get_compute_type(np.dtype(np.float32))
    if mode == "fp32":
        linalg.set_compute_type(np.dtype(np.float32), linalg.COMPUTE_TYPE_FP32)
    elif mode == "tf32":
        linalg.set_compute_type(np.dtype(np.float32), linalg.COMPUTE_TYPE_TF32)
    try:
        return _time_matmul(cp, n, dtype, reps)
    finally:
        linalg.set_compute_type(np.dtype(np.float32), previous)


def _time_matmul(cp, n: int, dtype, reps: int) -> float:
    a = cp.random.standard_normal((n, n), dtype=np.float32).astype(dtype)
    b = cp.random.standard_normal((n, n), dtype=np.float32).astype(dtype)
    c = cp.empty((n, n), dtype=dtype)
    for _ in range(3):
        cp.matmul(a, b, out=c)
    start, end = cp.cuda.Event(), cp.cuda.Event()
    start.record()
    for _ in range(reps):
        cp.matmul(a, b, out=c)
    end.record()
    end.synchronize()
    seconds = cp.cuda.get_elapsed_time(start, end) / 1e3 / reps
    return 2.0 * n**3 / seconds / 1e12


def _copy_gbps(dev, nbytes: int, direction: str, pinned: bool, reps: int) -> float:
    """GB/s of one ``nbytes`` copy host->device ("h2d") or device->host ("d2h")."""
    from hetero.graph import TensorSpec

    spec = TensorSpec((nbytes,), np.uint8)
    host = dev.pinned_empty(spec) if pinned else np.empty(nbytes, np.uint8)
    host[...] = 1
    device = dev.empty(spec)
    stream = dev.h2d_stream if direction == "h2d" else dev.d2h_stream

    def copy():
        if direction == "h2d":
            dev.copy_from_host(device, host, stream)
        else:
            dev.copy_to_host(host, device, stream)

    copy()
    stream.synchronize()
    start = stream.record(dev.event(timing=True))
    for _ in range(reps):
        copy()
    end = stream.record(dev.event(timing=True))
    end.synchronize()
    seconds = start.elapsed_ms(end) / 1e3 / reps
    return nbytes / seconds / 1e9


def _table(title: str, header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    line = "  ".join(f"{h:>{w}}" for h, w in zip(header, widths))
    out = [title, line, "-" * len(line)]
    out += ["  ".join(f"{c:>{w}}" for c, w in zip(row, widths)) for row in rows]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1024, 2048, 4096, 8192])
    parser.add_argument("--reps", type=int, default=20)
    parser.add_argument("--copy-mib", type=int, nargs="+", default=[1, 16, 256])
    parser.add_argument("--device", type=int, default=0)
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args(argv)

    from hetero.backends.cupy import CudaDevice, cuda_device_count

    if cuda_device_count() == 0:
        print("bench_gpu: no CUDA device (or CuPy is not installed); nothing to measure.",
              file=sys.stderr)
        return 2
    import cupy as cp

    dev = CudaDevice.from_index(args.device)
    results: dict = {"device": repr(dev), "model": dev.model, "specs": dict(dev.specs),
                     "cupy": cp.__version__, "python": platform.python_version(),
                     "gemm_tflops": {}, "copy_gbps": {}}
    with cp.cuda.Device(dev.index):
        rows = []
        for n in args.sizes:
            row = [str(n)]
            for mode in ("fp32", "tf32", "fp16"):
                tflops = _gemm_tflops(cp, n, mode, args.reps)
                results["gemm_tflops"][f"{mode}/{n}"] = round(tflops, 2)
                row.append(f"{tflops:.1f}")
            rows.append(row)
        print(_table(f"GEMM on {dev.model} (TFLOP/s, cuBLAS via cupy.matmul)",
                     ["n", "fp32", "tf32", "fp16"], rows))
        print()
        rows = []
        for mib in args.copy_mib:
            row = [str(mib)]
            for direction in ("h2d", "d2h"):
                for pinned in (True, False):
                    gbps = _copy_gbps(dev, mib << 20, direction, pinned, max(3, args.reps // 2))
                    key = f"{direction}/{'pinned' if pinned else 'pageable'}/{mib}MiB"
                    results["copy_gbps"][key] = round(gbps, 2)
                    row.append(f"{gbps:.1f}")
            rows.append(row)
        print(_table("Host <-> device copies (GB/s, cudaMemcpyAsync)",
                     ["MiB", "h2d pinned", "h2d pageable", "d2h pinned", "d2h pageable"], rows))
    big = max(args.sizes)
    top = max(args.copy_mib)
    summary = [
        ["GEMM fp32", f"{results['gemm_tflops'][f'fp32/{big}']:.1f} TFLOP/s", f"n={big}"],
        ["GEMM tf32", f"{results['gemm_tflops'][f'tf32/{big}']:.1f} TFLOP/s", f"n={big}"],
        ["GEMM fp16", f"{results['gemm_tflops'][f'fp16/{big}']:.1f} TFLOP/s", f"n={big}"],
        ["H2D pinned", f"{results['copy_gbps'][f'h2d/pinned/{top}MiB']:.1f} GB/s", f"{top} MiB"],
        ["H2D pageable", f"{results['copy_gbps'][f'h2d/pageable/{top}MiB']:.1f} GB/s",
         f"{top} MiB"],
        ["D2H pinned", f"{results['copy_gbps'][f'd2h/pinned/{top}MiB']:.1f} GB/s", f"{top} MiB"],
        ["D2H pageable", f"{results['copy_gbps'][f'd2h/pageable/{top}MiB']:.1f} GB/s",
         f"{top} MiB"],
    ]
    print()
    print(_table(f"Summary: {dev!r}", ["measure", "value", "at"], summary))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
        print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
