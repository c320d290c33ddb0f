"""Micro-benchmarks for issue 11's untried CPU routes, one BLAS thread, interleaved medians.

    python scripts/bench_layout.py [--repeat 41] [--only gemm|conv|bands|attrs|depthwise]

* ``gemm``: the GEMM of a convolution / Linear layer in each orientation OpenBLAS can be handed:
  today's ``w (O, K) @ cols (K, P)`` against the weight pre-transposed (``wT (K, O)``, read as
  ``wT.T``), the Fortran-ordered weight, and the transposed product ``cols.T @ w.T`` (what an
  NHWC layout computes: ``(P, K) @ (K, O)``), with a check whether the bits agree.
* ``conv``: a whole 3x3 / 1x1 convolution: NCHW im2col + GEMM (today's reference path) against
  NHWC im2col + GEMM (input channels-last, patches ``(P, KH*KW*C)``, output channels-last).
  The GEMM shapes include transformer Linear layers ``(S, K) @ (K, N)`` (ViT, GPT-2, ConvNeXt).
* ``bands``: hetero's split conv at 28x28 on two intra-op threads, three row bands against the
  four ``nn._even_bands`` makes.
* ``attrs``: the fixed cost of a tiny conv call with ``nn._window_attrs`` memoized and without.
* ``depthwise``: depthwise convolutions by NumPy's channels-last taps, the compiled NCHW loops
  and the compiled channels-last loop.

Every figure is the median of ``--repeat`` calls, all variants of one shape interleaved call by
call, so the ratios are same-run ratios on a loaded host.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# (C, H, O, K, stride, pad): ResNet-50 / MobileNet v2 / ConvNeXt convolutions, batch 1
CONVS = [
    (64, 56, 64, 3, 1, 1), (128, 28, 128, 3, 1, 1), (256, 14, 256, 3, 1, 1),
    (512, 7, 512, 3, 1, 1), (64, 56, 256, 1, 1, 0), (256, 56, 64, 1, 1, 0),
    (1024, 14, 256, 1, 1, 0), (512, 7, 2048, 1, 1, 0), (144, 56, 24, 1, 1, 0),
    (32, 112, 16, 1, 1, 0), (96, 56, 24, 1, 1, 0), (960, 7, 160, 1, 1, 0),
    (3, 224, 96, 4, 4, 0), (96, 56, 192, 2, 2, 0),
]
# (M, K, N): ViT-B/16 (197 tokens), GPT-2 (128 tokens), ConvNeXt-T's pointwise Linear layers
LINEARS = [
    (197, 768, 2304), (197, 768, 768), (197, 768, 3072), (197, 3072, 768),
    (128, 768, 2304), (128, 768, 3072), (128, 3072, 768), (3136, 96, 384), (3136, 384, 96),
    (196, 384, 1536), (49, 3072, 768),
]


def medians(fns, repeat):
    times = [[] for _ in fns]
    for fn in fns:
        fn()
    for _ in range(repeat):
        for fn, ts in zip(fns, times):
            t = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t)
    return [statistics.median(ts) * 1e3 for ts in times]


def gemm_variants(m_o, k, p, rng):
    """``out (O, P) = w (O, K) @ cols (K, P)`` in four orientations."""
    w = rng.standard_normal((m_o, k)).astype(np.float32)
    cols = rng.standard_normal((k, p)).astype(np.float32)
    wt = np.ascontiguousarray(w.T)  # (K, O)
    wf = np.asfortranarray(w)
    colst = np.ascontiguousarray(cols.T)  # (P, K): NHWC patches
    out = np.empty((m_o, p), np.float32)
    out_t = np.empty((p, m_o), np.float32)
    fns = {
        "w@cols": lambda: np.matmul(w, cols, out=out),
        "wT.T@cols": lambda: np.matmul(wt.T, cols, out=out),
        "wF@cols": lambda: np.matmul(wf, cols, out=out),
        "colsT@wT (NHWC)": lambda: np.matmul(colst, wt, out=out_t),
        "colsT@w.T": lambda: np.matmul(colst, w.T, out=out_t),
    }
    ref = w @ cols
    same = {name: None for name in fns}
    for name, fn in fns.items():
        fn()
        got = out if "colsT" not in name else out_t.T
        same[name] = bool(np.array_equal(got, ref))
    return fns, same


def bench_gemm(repeat):
    from threadpoolctl import threadpool_limits

    rng = np.random.default_rng(0)
    print("## GEMM orientations (one BLAS thread; ms, median; ratio to w@cols; bits == w@cols)")
    shapes = [(o, c * k * k, ((h + 2 * p - k) // s + 1) ** 2) for c, h, o, k, s, p in CONVS]
    shapes += [(n, k, m) for m, k, n in LINEARS]  # a Linear layer as (N, K) @ (K, M) too
    with threadpool_limits(1, "blas"):
        for o, k, p in shapes:
            fns, same = gemm_variants(o, k, p, rng)
            ms = medians(list(fns.values()), repeat)
            gf = 2.0 * o * k * p / ms[0] / 1e6
            row = ", ".join(f"{name} {t:.3f} ({t / ms[0]:.2f}{'' if same[name] else ' !bits'})"
                            for name, t in zip(fns, ms))
            print(f"O={o} K={k} P={p} [{gf:.0f} GF/s]: {row}")


def nchw_conv(x, w, stride, pad):
    n, c, h, wd = x.shape
    o, _, kh, kw = w.shape
    oh = (h + 2 * pad - kh) // stride + 1
    ow = (wd + 2 * pad - kw) // stride + 1
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad))) if pad else x
    sn, sc, sh, sw = xp.strides
    view = np.lib.stride_tricks.as_strided(
        xp, (n, c, kh, kw, oh, ow), (sn, sc, sh, sw, sh * stride, sw * stride))
    out = np.empty((n, o, oh, ow), np.float32)
    if (kh, kw, stride, pad) == (1, 1, 1, 0):
        cols = x.reshape(n, c, h * wd)
    else:
        cols = view.reshape(n, c * kh * kw, oh * ow)
    np.matmul(w.reshape(o, -1), cols, out=out.reshape(n, o, oh * ow))
    return out


def nhwc_conv(x, wk, stride, pad):
    """``x`` (N, H, W, C), ``wk`` (KH*KW*C, O): the output (N, OH, OW, O)."""
    n, h, wd, c = x.shape
    kk, o = wk.shape
    k = int(round((kk // c) ** 0.5))
    oh = (h + 2 * pad - k) // stride + 1
    ow = (wd + 2 * pad - k) // stride + 1
    out = np.empty((n, oh, ow, o), np.float32)
    if (k, stride, pad) == (1, 1, 0):
        np.matmul(x.reshape(n, h * wd, c), wk, out=out.reshape(n, oh * ow, o))
        return out
    xp = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0))) if pad else x
    sn, sh, sw, sc = xp.strides
    view = np.lib.stride_tricks.as_strided(
        xp, (n, oh, ow, k, k, c), (sn, sh * stride, sw * stride, sh, sw, sc))
    cols = view.reshape(n, oh * ow, k * k * c)
    np.matmul(cols, wk, out=out.reshape(n, oh * ow, o))
    return out


def bench_conv(repeat):
    from threadpoolctl import threadpool_limits

    rng = np.random.default_rng(1)
    print("## Whole convolution, NCHW im2col + GEMM vs NHWC im2col + GEMM (one thread; ms)")
    with threadpool_limits(1, "blas"):
        for c, h, o, k, s, p in CONVS:
            x = rng.standard_normal((1, c, h, h)).astype(np.float32)
            w = rng.standard_normal((o, c, k, k)).astype(np.float32)
            xh = np.ascontiguousarray(x.transpose(0, 2, 3, 1))
            wk = np.ascontiguousarray(w.transpose(2, 3, 1, 0).reshape(k * k * c, o))
            ref = nchw_conv(x, w, s, p)
            got = nhwc_conv(xh, wk, s, p).transpose(0, 3, 1, 2)
            err = float(np.max(np.abs(got - ref)) / np.max(np.abs(ref)))
            ms = medians([lambda x=x, w=w, s=s, p=p: nchw_conv(x, w, s, p),
                          lambda xh=xh, wk=wk, s=s, p=p: nhwc_conv(xh, wk, s, p)], repeat)
            print(f"C={c} H={h} O={o} k={k} s={s}: NCHW {ms[0]:.3f}  NHWC {ms[1]:.3f}  "
                  f"ratio {ms[1] / ms[0]:.2f}  rel.err {err:.1e}")


def _conv_case(c, h, o, k, s, p, activation="relu", seed=0):
    from hetero.ops.registry import lookup

    rng = np.random.default_rng(seed)
    x = rng.standard_normal((1, c, h, h)).astype(np.float32)
    w = (rng.standard_normal((o, c, k, k)) * 0.05).astype(np.float32)
    b = rng.standard_normal(o).astype(np.float32)
    oh = (h + 2 * p - k) // s + 1
    op = lookup("conv2d")
    attrs = op.normalize_attrs({"strides": (s, s), "pads": (p,) * 4, "activation": activation})
    return op.kernel_for("numpy"), [x, w, b], attrs, [np.empty((1, o, oh, oh), np.float32)]


def bench_bands(repeat):
    """Three row bands (the cut before ``nn._even_bands``) against four, on two threads."""
    from threadpoolctl import threadpool_limits

    import hetero.backends.cpu as compiled
    from hetero.ops import nn
    from hetero.threads import intra_op

    compiled.install()
    even = nn._even_bands
    print("## Row bands of a split conv at 28x28 (784 pixels), two intra-op threads (ms)")
    shapes = [(128, 28, 128, 3, 1, 1), (128, 56, 128, 3, 2, 1), (512, 28, 128, 1, 1, 0),
              (128, 28, 512, 1, 1, 0), (256, 28, 256, 3, 1, 1), (32, 28, 192, 1, 1, 0)]
    with threadpool_limits(1, "blas"):
        for c, h, o, k, s, p in shapes:
            case = _conv_case(c, h, o, k, s, p)

            def run(threads, rule, case=case):
                def call():
                    nn._even_bands = rule
                    with intra_op(threads):
                        case[0](np, *case[1:])
                return call

            try:
                ms = medians([run(1, even), run(2, lambda b, r, f: b), run(2, even)], repeat)
            finally:
                nn._even_bands = even
            print(f"C={c} H={h} O={o} k={k} s={s}: one thread {ms[0]:.3f} | two threads: "
                  f"3 bands {ms[1]:.3f}, 4 bands {ms[2]:.3f} (four / three {ms[2] / ms[1]:.2f})")


def bench_attrs(repeat):
    """A tiny conv's fixed cost with ``nn._window_attrs`` memoized and without."""
    import hetero.backends.cpu as compiled
    from hetero.ops import nn

    compiled.install()
    memo = nn._window_attrs
    print("## Fixed cost of a tiny conv (16 channels, 2x2 / 4x4 map; us per call)")
    for c, h, o, k, s, p in [(16, 2, 16, 1, 1, 0), (16, 4, 16, 3, 1, 1)]:
        case = _conv_case(c, h, o, k, s, p)

        def run(fn, case=case):
            def call():
                nn._window_attrs = fn
                for _ in range(100):
                    case[0](np, *case[1:])
            return call

        try:
            ms = medians([run(nn._check_window_attrs), run(memo)], repeat)
        finally:
            nn._window_attrs = memo
        print(f"C={c} H={h} k={k}: attributes parsed per call {ms[0] * 10:.1f} us, "
              f"memoized {ms[1] * 10:.1f} us ({ms[1] / ms[0]:.2f})")


def bench_depthwise(repeat):
    """Depthwise convolutions (multiplier 1) on one thread: NumPy's channels-last taps (the
    reference), the compiled NCHW loops (flat for stride 1, rows above) and the compiled
    channels-last loop (``loops.depthwise_nhwc``), with the bias and activation left out."""
    from hetero.backends.cpu import _loops as loops
    from hetero.ops import nn

    rng = np.random.default_rng(2)
    print("## Depthwise convolution, one thread (us): NumPy taps / NCHW loop / channels-last")
    for c, h, k, s in [(288, 14, 5, 2), (96, 28, 5, 2), (72, 56, 3, 2), (576, 7, 5, 1),
                       (240, 14, 5, 1), (672, 14, 5, 1), (144, 56, 3, 1), (96, 112, 3, 2)]:
        p = k // 2
        x = rng.standard_normal((1, c, h, h)).astype(np.float32)
        w = rng.standard_normal((c, 1, k, k)).astype(np.float32)
        oh = (h + 2 * p - k) // s + 1
        hb, wb = max(nn._needed(oh, k, s, 1), p + h), max(nn._needed(oh, k, s, 1), p + h)
        outs = [np.empty((1, c, oh, oh), np.float32) for _ in range(3)]
        w2 = w.reshape(c, k * k)
        wt = np.ascontiguousarray(w2.T)

        def taps(x=x, w=w, out=outs[0], s=s, p=p, c=c):
            nn._depthwise(np, x, w, out, (s, s), (p,) * 4, (1, 1), c, split=False)

        def nchw(x=x, w2=w2, out=outs[1], s=s, p=p, c=c, k=k, hb=hb, wb=wb, oh=oh):
            if s == 1:
                loops.depthwise_flat(x[0], w2, out[0], 1, k, k, s, s, 1, 1, p, p, 0, c,
                                     np.empty((hb, wb), x.dtype), np.empty((oh, wb), x.dtype))
            else:
                loops.depthwise(x[0], w2, out[0], 1, k, k, s, s, 1, 1, p, p, 0, c)

        def nhwc(x=x, wt=wt, out=outs[2], s=s, p=p, c=c, k=k, hb=hb, wb=wb, oh=oh, h=h):
            buf = np.zeros((hb, wb, c), x.dtype)
            buf[p:p + h, p:p + h] = x[0].transpose(1, 2, 0)
            acc = np.empty((oh, oh, c), x.dtype)
            loops.depthwise_nhwc(buf, wt, acc, k, s, s, 1, 1, 0, oh)
            out[0] = acc.transpose(2, 0, 1)

        ms = medians([taps, nchw, nhwc], repeat)
        same = all(np.array_equal(o, outs[0]) for o in outs[1:])
        print(f"C={c} H={h} k={k} s={s} (out {oh}x{oh}): {ms[0] * 1e3:.0f} / {ms[1] * 1e3:.0f} / "
              f"{ms[2] * 1e3:.0f} us (channels-last / NCHW loop {ms[2] / ms[1]:.2f}); "
              f"same bits {same}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=41)
    parser.add_argument("--only", default=None,
                        choices=("gemm", "conv", "bands", "attrs", "depthwise"))
    args = parser.parse_args(argv)
    if args.only in (None, "gemm"):
        bench_gemm(args.repeat)
    if args.only in (None, "conv"):
        bench_conv(args.repeat)
    if args.only in (None, "bands"):
        bench_bands(args.repeat)
    if args.only in (None, "attrs"):
        bench_attrs(args.repeat)
    if args.only in (None, "depthwise"):
        bench_depthwise(args.repeat)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
