"""GPU throughput figures: GEMM TFLOP/s (fp32, tf32, fp16) and host<->device copy GB/s.

Usage::

    python scripts/bench_gpu.py [--sizes 1024 2048 4096 8192] [--reps 20] [--json out.json]

GEMM: square ``cupy.matmul`` (cuBLAS) of n x n matrices, timed with CUDA events over ``--reps``
calls after a warm-up; 2 n^3 flops per call. "fp32" forces the plain FP32 compute type,
"tf32" lets cuBLAS use TF32 tensor cores for float32, "fp16" multiplies float16 matrices (float32
accumulate). Copies: ``CudaDevice.copy_from_host`` / ``copy_to_host`` (cudaMemcpyAsync) of 1, 16
and 256 MiB from pinned (``pinned_empty``) and pageable (``numpy.empty``) host buffers.

ResNet-50 (``--resnet50``, on by default; ``--no-resnet50`` skips it): batch ``--batch`` (32) of
224 x 224 images through hetero (``hetero.compile(..., policy="gpu")``, cuDNN convolutions) and,
where PyTorch with CUDA imports (in this interpreter, or in ``--torch-python``: scripts/gpu_check.sh
installs it in a venv of its own so its CUDA wheels cannot change hetero's), through
``torch.nn.functional`` with the same weights, ``torch.backends.cudnn.benchmark`` on, in
channels-last. Both take a host array and return a host array, so both times include the
19 MiB upload; the maximum relative difference of the logits is reported too.

It prints one table per measurement and a summary; ``--json`` also writes every figure. On a
machine without CUDA it says so and exits with status 2.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time
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


# ----------------------------------------------------------------------------------------------
# ResNet-50: one description, run by hetero and by PyTorch


def resnet50_layers(seed: int = 0) -> list[tuple]:
    """ResNet-50 (v1.5: stride on the 3x3) as a flat list of layers with random He-scaled
    weights; both runners below interpret the same list. Entries: ("conv", w, stride, pad),
    ("bn", scale, bias, mean, var), ("relu",), ("maxpool",), ("save",) / ("add", shortcut)
    around a residual block, ("head", w, b)."""
    rng = np.random.default_rng(seed)

    def conv(cin, cout, k, stride=1):
        w = rng.standard_normal((cout, cin, k, k)).astype(np.float32)
        return ("conv", w * np.float32(np.sqrt(2.0 / (cin * k * k))), stride, k // 2)

    def bn(c):
        return ("bn", (rng.random(c) * 0.5 + 0.5).astype(np.float32),
                (rng.standard_normal(c) * 0.1).astype(np.float32),
                (rng.standard_normal(c) * 0.1).astype(np.float32),
                (rng.random(c) + 0.5).astype(np.float32))

    layers = [conv(3, 64, 7, 2), bn(64), ("relu",), ("maxpool",)]
    cin = 64
    for width, blocks, stride in ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)):
        for i in range(blocks):
            s = stride if i == 0 else 1
            shortcut = []
            if i == 0:
                shortcut = [conv(cin, width * 4, 1, s), bn(width * 4)]
            layers += [("save",), conv(cin, width, 1), bn(width), ("relu",),
                       conv(width, width, 3, s), bn(width), ("relu",),
                       conv(width, width * 4, 1), bn(width * 4), ("add", shortcut), ("relu",)]
            cin = width * 4
    w = (rng.standard_normal((1000, 2048)) * np.sqrt(1.0 / 2048)).astype(np.float32)
    return [*layers, ("head", w, np.zeros(1000, np.float32))]


def _run_layers(layers, x, ops: dict):
    saved = []
    for layer in layers:
        kind = layer[0]
        if kind == "save":
            saved.append(x)
        elif kind == "add":
            skip = saved.pop()
            x = ops["add"](x, _run_layers(layer[1], skip, ops) if layer[1] else skip)
        else:
            x = ops[kind](x, *layer[1:])
    return x


def hetero_resnet50(layers, batch: int):
    """A callable host array -> host logits: ResNet-50 compiled by hetero, all on gpu:0."""
    import hetero as ht

    ops = {"conv": lambda x, w, s, p: ht.ops.conv2d(x, w, strides=(s, s), pads=(p,) * 4),
           "bn": lambda x, *p: ht.ops.batch_norm(x, *p),
           "relu": ht.ops.relu, "add": ht.ops.add,
           "maxpool": lambda x: ht.ops.max_pool2d(x, (3, 3), (2, 2), (1, 1, 1, 1)),
           "head": lambda x, w, b: ht.ops.gemm(ht.ops.flatten(ht.ops.global_avg_pool(x)), w, b,
                                               trans_b=True)}
    example = np.zeros((batch, 3, 224, 224), np.float32)
    plan = ht.compile(lambda x: _run_layers(layers, x, ops), machine=ht.Machine.detect(),
                      policy="gpu", example_inputs=[example])
    return lambda x: np.asarray(plan.run(x)[0])


def torch_resnet50(layers):
    """The same network in torch.nn.functional on CUDA (cuDNN, channels-last); None without a
    CUDA torch."""
    import torch
    import torch.nn.functional as F

    if not torch.cuda.is_available():
        return None
    torch.backends.cudnn.benchmark = True
    dev = torch.device("cuda")

    def t(a):
        return torch.from_numpy(a).to(dev)

    moved = _torch_layers(layers, t)
    ops = {"conv": lambda x, w, s, p: F.conv2d(x, w, stride=s, padding=p),
           "bn": lambda x, g, b, m, v: F.batch_norm(x, m, v, g, b, training=False, eps=1e-5),
           "relu": F.relu, "add": torch.add,
           "maxpool": lambda x: F.max_pool2d(x, 3, 2, 1),
           "head": lambda x, w, b: F.linear(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1), w, b)}

    def run(x):
        with torch.inference_mode():
            xt = torch.from_numpy(x).to(dev).contiguous(memory_format=torch.channels_last)
            return _run_layers(moved, xt, ops).cpu().numpy()

    return run


def _torch_layers(layers, t):
    """``layers`` with every weight a CUDA tensor (convolution weights channels-last)."""
    import torch

    out = []
    for layer in layers:
        if layer[0] == "conv":
            out.append(("conv", t(layer[1]).to(memory_format=torch.channels_last), *layer[2:]))
        elif layer[0] in ("bn", "head"):
            out.append((layer[0], *(t(a) for a in layer[1:])))
        elif layer[0] == "add":
            out.append(("add", _torch_layers(layer[1], t)))
        else:
            out.append(layer)
    return out


def _median_ms(fn, x, runs: int, warmup: int = 3) -> float:
    for _ in range(warmup):
        fn(x)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn(x)
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def bench_resnet50(batch: int, runs: int, torch_python: str | None) -> dict:
    """Median ms per batch for hetero and (where it runs) PyTorch; logits compared."""
    layers = resnet50_layers()
    x = np.random.default_rng(1).standard_normal((batch, 3, 224, 224)).astype(np.float32)
    out: dict = {"batch": batch}
    try:
        run = hetero_resnet50(layers, batch)
        out["hetero_ms"] = round(_median_ms(run, x, runs), 2)
        ours = run(x)
    except Exception as exc:  # reported in the table, the rest of the benchmark still runs
        out["hetero_error"] = f"{type(exc).__name__}: {exc}"[:300]
        ours = None
    if torch_python:  # a separate interpreter: run this module's --torch-only mode there
        proc = subprocess.run([torch_python, __file__, "--torch-only", "--batch", str(batch),
                               "--reps", str(runs)], capture_output=True, text=True,
                              timeout=600)
        if proc.returncode == 0:
            theirs_info = json.loads(proc.stdout.strip().splitlines()[-1])
            out.update({k: v for k, v in theirs_info.items() if k != "logits_file"})
            theirs = np.load(theirs_info["logits_file"]) if "logits_file" in theirs_info else None
        else:
            out["torch_error"] = (proc.stderr.strip().splitlines() or ["failed"])[-1][:300]
            theirs = None
    else:
        theirs = None
        try:
            run_t = torch_resnet50(layers)
            if run_t is None:
                out["torch_error"] = "torch has no CUDA here"
            else:
                out["torch_ms"] = round(_median_ms(run_t, x, runs), 2)
                theirs = run_t(x)
        except ImportError:
            out["torch_error"] = "torch is not installed"
    if ours is not None and theirs is not None:
        out["max_rel_diff"] = float(np.max(np.abs(ours - theirs)) / max(np.max(np.abs(theirs)),
                                                                          1e-30))
    return out


def _torch_only(batch: int, reps: int) -> int:
    """--torch-only: the PyTorch half of bench_resnet50, printed as one JSON line."""
    import tempfile

    layers = resnet50_layers()
    x = np.random.default_rng(1).standard_normal((batch, 3, 224, 224)).astype(np.float32)
    import torch

    run = torch_resnet50(layers)
    if run is None:
        print(json.dumps({"torch_error": "torch has no CUDA here"}))
        return 0
    info = {"torch_ms": round(_median_ms(run, x, reps), 2), "torch": torch.__version__,
            "torch_cudnn": torch.backends.cudnn.version()}
    path = Path(tempfile.mkdtemp()) / "torch_logits.npy"
    np.save(path, run(x))
    info["logits_file"] = str(path)
    print(json.dumps(info))
    return 0


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
    parser.add_argument("--no-resnet50", dest="resnet50", action="store_false",
                        help="skip the ResNet-50 comparison")
    parser.add_argument("--batch", type=int, default=32, help="ResNet-50 batch (32)")
    parser.add_argument("--torch-python", help="the interpreter that has a CUDA PyTorch "
                        "(default: try this one)")
    parser.add_argument("--torch-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.torch_only:
        return _torch_only(args.batch, args.reps)

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
    if args.resnet50:
        res = results["resnet50"] = bench_resnet50(args.batch, max(5, args.reps // 2),
                                                   args.torch_python)
        print()
        print(_table(f"ResNet-50, batch {args.batch}, float32 (ms per batch, host in/out)",
                     ["hetero", "torch", "max rel diff"],
                     [[str(res.get("hetero_ms", res.get("hetero_error", "n/a"))),
                       str(res.get("torch_ms", res.get("torch_error", "n/a"))),
                       f"{res['max_rel_diff']:.1e}" if "max_rel_diff" in res else "n/a"]]))
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
    if args.resnet50:
        res = results["resnet50"]
        for who in ("hetero", "torch"):
            value = (f"{res[who + '_ms']:.1f} ms" if who + "_ms" in res
                     else str(res.get(who + "_error", "n/a"))[:60])
            summary.append([f"ResNet-50 {who}", value, f"batch {args.batch}"])
    print()
    print(_table(f"Summary: {dev!r}", ["measure", "value", "at"], summary))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
        print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
