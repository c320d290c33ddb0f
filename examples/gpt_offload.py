"""A GPT-2-like decoder whose weights do not fit a memory budget on a simulated T4.

Traces a decoder built from hetero's ops (pre-norm blocks: layer_norm, causal attention over
one head with a fused QKV projection, GELU MLP, residual adds; random weights), compiles it for
``cpu:2,sim:1@t4`` with ``memory={"gpu:0": budget}`` smaller than its weights, prints the
policies' estimated makespans side by side, runs the plan on the simulated GPU and prints the
measured peak of the GPU's memory against the budget.

    python examples/gpt_offload.py [--layers 8] [--width 512] [--seq 64] [--budget 12MiB]
"""

from __future__ import annotations

import argparse

import numpy as np

import hetero as ht
from hetero.compiler import as_graph
from hetero.ops import attention, gelu, layer_norm, matmul
from hetero.pipeline import compare_policies, optimize_for


def decoder_weights(layers: int, width: int, seed: int = 0) -> list[dict[str, np.ndarray]]:
    """Random weights of ``layers`` blocks of width ``width`` (float32)."""
    rng = np.random.default_rng(seed)

    def w(*shape: int) -> np.ndarray:
        return (rng.standard_normal(shape) / np.sqrt(shape[0])).astype(np.float32)

    return [{"ln1": np.ones(width, np.float32), "qkv": w(width, 3 * width), "proj": w(width, width),
             "ln2": np.ones(width, np.float32), "up": w(width, 4 * width),
             "down": w(4 * width, width)} for _ in range(layers)]


def make_decoder(weights: list[dict[str, np.ndarray]]):
    """The decoder as a plain function of its (seq, width) input, for ``ht.compile``."""
    width = weights[0]["proj"].shape[0]

    def decoder(x):
        for blk in weights:
            h = layer_norm(x, blk["ln1"])
            qkv = matmul(h, blk["qkv"])
            q, k, v = qkv[:, :width], qkv[:, width:2 * width], qkv[:, 2 * width:]
            a = attention(q.reshape((1, 1, -1, width)), k.reshape((1, 1, -1, width)),
                          v.reshape((1, 1, -1, width)), is_causal=True)
            x = x + matmul(a.reshape((-1, width)), blk["proj"])
            h = layer_norm(x, blk["ln2"])
            x = x + matmul(gelu(matmul(h, blk["up"])), blk["down"])
        return x

    return decoder


def weight_bytes(weights: list[dict[str, np.ndarray]]) -> int:
    return sum(a.nbytes for blk in weights for a in blk.values())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--width", type=int, default=256)
    ap.add_argument("--seq", type=int, default=64)
    ap.add_argument("--budget", default=None, help="gpu:0 budget (default: a third of the "
                    "weights)")
    ap.add_argument("--devices", default="cpu:2,sim:1@t4")
    args = ap.parse_args(argv)
    weights = decoder_weights(args.layers, args.width)
    nbytes = weight_bytes(weights)
    budget = args.budget or f"{nbytes // 3}B"
    x = np.random.default_rng(1).standard_normal((args.seq, args.width)).astype(np.float32)
    fn = make_decoder(weights)
    plan = ht.compile(fn, args.devices, example_inputs=(x,), memory={"gpu:0": budget})
    gpu = plan.machine.device("gpu:0")
    print(f"decoder: {args.layers} layers, width {args.width}, seq {args.seq}: "
          f"{nbytes / 2**20:.1f} MiB of weights; gpu:0 budget {gpu.capacity / 2**20:.1f} MiB")
    est = compare_policies(optimize_for(as_graph(fn, (x,)), plan.machine), args.devices,
                           memory={"gpu:0": budget})
    for name, value in est.items():
        print(f"  {name:12s} {value * 1e3:9.3f} ms (estimated)")
    gpu.reset_peak()
    before = gpu.allocated
    (out,) = plan.run(x)
    peak = gpu.peak_allocated
    (ref,) = ht.compile(fn, "cpu:1", example_inputs=(x,)).run(x)
    err = float(np.max(np.abs(np.asarray(out) - np.asarray(ref))))
    print(f"run: gpu:0 peak {peak / 2**20:.2f} MiB measured, "
          f"{plan.peak_memory.get('gpu:0', 0) / 2**20:.2f} MiB predicted "
          f"({before / 2**20:.2f} MiB allocated before the run), budget "
          f"{gpu.capacity / 2**20:.1f} MiB; max |out - cpu-only| {err:.2e}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
