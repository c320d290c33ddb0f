"""A GPT-2-like decoder whose weights do not fit a memory budget on a simulated T4.

Traces a decoder built from hetero's ops (pre-norm blocks: layer_norm, causal attention over
one head with a fused QKV projection, GELU MLP, residual adds; random weights) and plans it for
``cpu:2,sim:1@t4`` with ``memory={"gpu:0": budget}`` smaller than its weights (default: a
third of them) under three policies side by side:

- ``heft`` (hetero's default): weights that do not fit are streamed from host memory on every
  run into rotating GPU buffers, their copies prefetched ahead on the host-to-device stream;
- ``sequential_offload`` (Hugging Face accelerate's CPU offload): every weight copied just
  before its node, nothing overlapped;
- ``layer_split`` (llama.cpp's ``-ngl``): the first k layers on the GPU, the rest on the CPU.

Each plan runs on the simulated GPU; the script prints its estimated makespan on the T4 (and the
default plan's lower bound: the larger of its copy-bound and compute-bound times), the measured
peak of the GPU's memory against the prediction and the budget, the bytes copied against the
plan's, and the largest difference from a CPU-only run. (The simulated GPU runs its kernels with
NumPy on this machine's CPU, so its wall-clock times are this machine's, not a T4's; memory and
copies are exact.)

    python examples/gpt_offload.py [--layers 8] [--width 256] [--seq 64] [--budget 8MiB]
                                   [--svg-dir docs/img]
"""

from __future__ import annotations

import argparse
import pathlib

import numpy as np

import hetero as ht
from hetero import report
from hetero.ops import attention, gelu, layer_norm, matmul

POLICIES = ("heft", "sequential_offload", "layer_split")


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
    ap.add_argument("--svg-dir", default=None, metavar="DIR",
                    help="also write each policy's estimated timeline to DIR/offload-POLICY.svg")
    args = ap.parse_args(argv)
    weights = decoder_weights(args.layers, args.width)
    nbytes = weight_bytes(weights)
    budget = args.budget or f"{nbytes // 3}B"
    x = np.random.default_rng(1).standard_normal((args.seq, args.width)).astype(np.float32)
    fn = make_decoder(weights)
    (ref,) = ht.compile(fn, "cpu:1", example_inputs=(x,)).run(x)
    print(f"decoder: {args.layers} layers, width {args.width}, seq {args.seq}: "
          f"{nbytes / 2**20:.1f} MiB of weights; gpu:0 budget "
          f"{ht.budget.parse_size(budget) / 2**20:.1f} MiB")
    print(f"{'policy':<20}{'estimated':>11}{'streamed':>11}{'peak':>10}"
          f"{'predicted':>11}{'copied':>10}{'planned':>10}  max |out - cpu|")
    plans = {}
    for policy in POLICIES:
        plan = plans[policy] = ht.compile(fn, args.devices, policy=policy, example_inputs=(x,),
                                          memory={"gpu:0": budget})
        gpu = plan.machine.device("gpu:0")
        (out,) = plan.run(x)  # the first run loads the plan (arena, resident weights)
        gpu.reset_peak()
        gpu.reset_copied()
        (out,) = plan.run(x)
        copied = sum(gpu.copied_bytes.values())
        planned = sum(plan.copy_bytes().get("gpu:0", {}).values())
        streamed = sum(plan.graph.spec(n.inputs[0]).nbytes for n in plan.transfers()
                       if n.attrs.get("streamed"))
        err = float(np.max(np.abs(np.asarray(out) - np.asarray(ref))))
        if args.svg_dir:
            path = pathlib.Path(args.svg_dir) / f"offload-{policy}.svg"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(report.render(report.build(plan, source="gpt_offload"), "svg"))
        print(f"{policy:<20}{plan.makespan * 1e3:9.3f}ms{streamed / 2**20:8.1f}MiB"
              f"{gpu.peak_allocated / 2**20:7.2f}MiB{plan.peak_memory.get('gpu:0', 0) / 2**20:8.2f}"
              f"MiB{copied / 2**20:7.1f}MiB{planned / 2**20:7.1f}MiB  {err:.1e}")
    best = plans["heft"]
    rival = min(plans["sequential_offload"].makespan, plans["layer_split"].makespan)
    print(f"heft / best of the other two: {best.makespan / rival:.2f}; heft / its lower bound "
          f"(copy- or compute-bound): {best.makespan / best.lower_bound:.2f}")
    streamed = [r for r in best.placement.reason.values() if r.kind == "streamed"]
    if streamed:
        print(f"why heft streams its first streamed weight: {streamed[0].detail}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
