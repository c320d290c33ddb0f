"""Per-op timings of the gates of EfficientNet-B0 and MobileNet v3 (SiLU, hard_swish,
hard_sigmoid, the squeeze-excite channel scale, global_avg_pool): before and after, one core.

    python3 scripts/bench_gates.py [--repeat 41]

Each row is the median of ``--repeat`` calls into preallocated outputs, before and after
interleaved call by call in the same run (the host is shared and noisy):

* ``silu``: a 1x1 conv with bias (the models' expansion convs) then the ``sigmoid`` and ``mul``
  ops (what the graph ran before ``fuse_activation`` knew SiLU) against the one conv with
  ``activation="silu"``; both with the compiled conv epilogue;
* ``silu dw``: the same after a 3x3 depthwise conv;
* ``hard_swish``, ``hard_sigmoid``, ``mul`` (a map times an ``(N, C, 1, 1)`` gate) and
  ``global_avg_pool``: the NumPy reference kernel against the compiled one.

Shapes are the models' (batch 1, float32).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from hetero import threads  # noqa: E402
from hetero.backends import cpu  # noqa: E402
from hetero.ops import registry  # noqa: E402

RNG = np.random.default_rng(0)

#: (channels, map side) of EfficientNet-B0's SiLU'd maps and of MobileNet v3's gated ones
MAPS = [(32, 112), (96, 112), (144, 56), (240, 28), (480, 14), (1152, 7)]


def rand(*shape):
    return RNG.standard_normal(shape).astype(np.float32)


def paired(before, after, repeat: int) -> tuple[float, float]:
    """Medians (ms) of ``before`` and ``after``, called alternately."""
    before(), after()
    a, b = [], []
    for _ in range(repeat):
        t = time.perf_counter()
        before()
        a.append(time.perf_counter() - t)
        t = time.perf_counter()
        after()
        b.append(time.perf_counter() - t)
    return statistics.median(a) * 1e3, statistics.median(b) * 1e3


def _call(name, ins, attrs, out, compiled=True):
    op = registry.lookup(name)
    attrs = op.normalize_attrs(attrs)
    kernel = op.kernel_for("numpy") if compiled else op.kernel
    return lambda: kernel(np, ins, attrs, [out])


def silu_rows(repeat: int, depthwise: bool):
    rows = []
    for c, side in MAPS:
        cin = c if depthwise else max(8, c // 6)
        x = rand(1, cin, side, side)
        w = rand(c, 1, 3, 3) if depthwise else rand(c, cin, 1, 1)
        attrs = {"groups": c, "pads": (1, 1, 1, 1)} if depthwise else {}
        b = rand(c)
        y, s, out = (np.empty((1, c, side, side), np.float32) for _ in range(3))
        conv = _call("conv2d", [x, w, b], attrs, y)
        sig = _call("sigmoid", [y], {}, s)
        mul = _call("mul", [y, s], {}, out)
        fused = _call("conv2d", [x, w, b], {**attrs, "activation": "silu"}, out)

        def unfused(conv=conv, sig=sig, mul=mul):
            conv(), sig(), mul()
        rows.append((f"silu{' dw' if depthwise else ''} {c}x{side}x{side}",
                     *paired(unfused, fused, repeat)))
    return rows


def op_rows(repeat: int):
    rows = []
    for c, side in MAPS:
        x, out = rand(1, c, side, side), np.empty((1, c, side, side), np.float32)
        g, pooled = rand(1, c, 1, 1), np.empty((1, c, 1, 1), np.float32)
        for name, ins, attrs, dst in [("hard_swish", [x], {}, out),
                                      ("hard_sigmoid", [x], {"alpha": 1 / 6}, out),
                                      ("mul", [x, g], {}, out),
                                      ("global_avg_pool", [x], {}, pooled)]:
            rows.append((f"{name} {c}x{side}x{side}",
                         *paired(_call(name, ins, attrs, dst, compiled=False),
                                 _call(name, ins, attrs, dst), repeat)))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=41)
    args = parser.parse_args()
    assert cpu.install(), cpu.status()
    with threads.intra_op(1):
        rows = silu_rows(args.repeat, False) + silu_rows(args.repeat, True) + op_rows(args.repeat)
    print("| op, shape | before ms | after ms | before / after |")
    print("|---|---:|---:|---:|")
    for name, before, after in rows:
        print(f"| {name} | {before:.3f} | {after:.3f} | {before / after:.2f} |")


if __name__ == "__main__":
    main()
