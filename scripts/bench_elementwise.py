"""Timings of the elementwise reference kernels on the CPU against the NumPy one-liner.

    python3 scripts/bench_elementwise.py [--n 1000000] [--repeat 21]

Each row is the median of ``--repeat`` runs over ``--n`` float32 elements (standard normal, so
half the bases of ``pow`` are negative) into a preallocated output. "before" is the formula the
kernel used until the CPU-speed issue (kept here, written the same way); "kernel" is
``hetero.ops.elementwise`` as it is now; "numpy" is the one-liner a user would write.
"""

from __future__ import annotations

import argparse
import math
import statistics
import timeit

import numpy as np

from hetero.ops import elementwise as E


def _median_ms(fn, repeat: int) -> float:
    fn()
    return statistics.median(timeit.repeat(fn, number=1, repeat=repeat)) * 1e3


def _old_gelu_tanh(x, out):
    xp = np
    xp.multiply(x, x, out=out)
    out *= 0.044715
    out += 1
    out *= x
    out *= math.sqrt(2 / math.pi)
    xp.tanh(out, out=out)
    out += 1
    out *= x
    out *= 0.5


def _old_gelu_erf(x, out):
    fn = E._fast_special(np, "erfc")
    if fn is not None:
        np.multiply(x, -1 / math.sqrt(2), out=out)
        fn(out, out=out)
    else:
        E._erf_into_two_piece(np, np.multiply(x, 1 / math.sqrt(2)), out)
        out += 1
    out *= x
    out *= 0.5


def _old_leaky_relu(x, out, alpha=0.01):
    np.multiply(x, alpha, out=out)
    np.copyto(out, x, where=x >= 0)


def _kernel(name, attrs=None):
    from hetero.ops.registry import REGISTRY

    op = REGISTRY[name]
    full = op.normalize_attrs(attrs or {})
    return lambda *ins, out: op.kernel(np, ins, full, (out,))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--repeat", type=int, default=21)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    x = rng.standard_normal(args.n).astype(np.float32)
    ax = np.abs(x)
    out = np.empty_like(x)
    try:
        import scipy.special as special
    except ImportError:
        special = None
    f32 = np.float32
    pow_k = _kernel("pow")
    rows = []  # (case, before, kernel, numpy one-liner)

    def row(case, before, kernel, numpy_one=None):
        rows.append((case, *(None if f is None else _median_ms(f, args.repeat)
                              for f in (before, kernel, numpy_one))))

    for e, base in ((3.0, x), (2.0, x), (4.0, x), (-1.0, ax), (-2.0, ax), (0.5, ax),
                    (-0.5, ax), (1.7, ax)):
        b = np.array(e, f32)
        label = f"pow(x, {e:g})" + (" |x|" if base is ax else "")
        one = {3.0: lambda a=base: a * a * a, 2.0: lambda a=base: a * a,
               0.5: lambda a=base: np.sqrt(a)}.get(e, lambda a=base, e=e: a ** f32(e))
        row(label, lambda a=base, b=b: np.power(a, b, out=out),
            lambda a=base, b=b: pow_k(a, b, out=out), one)
    erf_k = _kernel("erf")
    row("erf (old fallback / kernel / scipy)", lambda: E._erf_into_two_piece(np, x, out),
        lambda: erf_k(x, out=out), special and (lambda: special.erf(x, out=out)))
    row("erf fallback (new, any install)", None, lambda: E._erf_into(np, x, out))
    row("gelu (erf)", lambda: _old_gelu_erf(x, out), lambda: _kernel("gelu")(x, out=out),
        special and (lambda: 0.5 * x * special.erfc(-x / np.float32(math.sqrt(2)))))
    row("gelu (tanh)", lambda: _old_gelu_tanh(x, out),
        lambda: _kernel("gelu", {"approximate": "tanh"})(x, out=out),
        lambda: 0.5 * x * (1 + np.tanh(f32(math.sqrt(2 / math.pi)) * (x + f32(0.044715) * x ** 3))))
    row("relu", lambda: np.maximum(x, 0, out=out), lambda: _kernel("relu")(x, out=out),
        lambda: np.maximum(x, 0))
    row("leaky_relu(0.01)", lambda: _old_leaky_relu(x, out),
        lambda: _kernel("leaky_relu")(x, out=out), lambda: np.where(x >= 0, x, f32(0.01) * x))
    row("sigmoid", None, lambda: _kernel("sigmoid")(x, out=out), lambda: 1 / (1 + np.exp(-x)))
    for name in ("hard_sigmoid", "hard_swish", "softplus", "mish", "elu"):
        row(name, None, lambda name=name: _kernel(name)(x, out=out))
    soft = x.reshape(-1, 1000)
    sout = np.empty_like(soft)
    row("softmax (rows of 1000)", None, lambda: _kernel("softmax")(soft, out=sout),
        lambda: np.exp(soft - soft.max(-1, keepdims=True)) / np.exp(
            soft - soft.max(-1, keepdims=True)).sum(-1, keepdims=True))

    print(f"{args.n:,} float32 elements, median of {args.repeat} runs, ms "
          f"(scipy {'present' if special else 'absent'})")
    print(f"{'case':38s} {'before':>9s} {'kernel':>9s} {'numpy':>9s} {'speed-up':>9s}")
    for case, before, kernel, one in rows:
        cells = [f"{v:9.3f}" if v is not None else f"{'-':>9s}" for v in (before, kernel, one)]
        gain = f"{before / kernel:8.1f}x" if before is not None else f"{'':9s}"
        print(f"{case:38s} {' '.join(cells)} {gain}")


if __name__ == "__main__":
    main()
