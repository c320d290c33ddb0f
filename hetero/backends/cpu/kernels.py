"""The compiled CPU kernels ``hetero.backends.cpu.install()`` registers: op name -> a function
of the reference kernel returning the compiled one (which hands uncovered cases back to it)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from hetero.backends.cpu import _loops as loops
from hetero.ops import elementwise as ew
from hetero.ops import nn
from hetero.ops.scratch import by_chunks
from hetero.threads import intra_op_threads, parallel_for

_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))

#: A strided depthwise convolution on maps at least this wide takes the row loop
#: (``loops.depthwise``); narrower ones keep NumPy's channels-last taps (their rows are too
#: short for the row loop's vector width). Stride 1 always takes the flat loop
#: (``loops.depthwise_flat``). Measured on one core, 3x3: 144 channels at 56x56 stride 1: NumPy
#: 2.72 ms, rows 0.75, flat 0.37; 272 at 14x14: 0.35, 0.39, 0.10; 5x5 672 at 14x14: 1.71,
#: 2.47, 0.54; stride 2, 96 at 112x112: 4.26, 1.64, 2.82; 240 at 28x28 5x5: 0.90, 0.97, 1.12.
#: Every path gives the same bits, so the choice changes only the time.
DEPTHWISE_ROWS_MIN_WIDTH = 24
#: A depthwise convolution with multiplier 1 on a map narrower than this (stride 1), or than
#: ``DEPTHWISE_ROWS_MIN_WIDTH`` (stride 2 and above), takes the channels-last compiled loop
#: (``loops.depthwise_nhwc``). One core, today's kernel -> channels-last: stride 2, 5x5, 288
#: channels to 7x7 214 -> 62 us, 96 to 14x14 282 -> 87 us; stride 1, 5x5, 576 at 7x7 215 ->
#: 103 us, 240 at 14x14 162 -> 160 us (a tie, hence 14); 144 at 56x56 3x3 351 -> 1024 us.
DEPTHWISE_NHWC_MAX_WIDTH = 14

#: Window taps (outputs x kernel taps) a compiled depthwise convolution or pool needs before it
#: is cut into channel bands: the compiled loops run 3-7x faster than the NumPy ones that
#: ``nn.CHANNEL_SPLIT_MIN_TAPS`` was measured for, so a piece must be larger to pay for the
#: hand-off (192 channels at 28x28, 3x3, 1.4 M taps: 0.14 ms whole, 0.22 ms in two bands).
COMPILED_SPLIT_MIN_TAPS = 3_000_000


def _bands(channels: int, taps: int) -> int:
    """Channel bands of a compiled per-channel kernel (the bits do not depend on them)."""
    threads = intra_op_threads()
    if threads <= 1 or taps < COMPILED_SPLIT_MIN_TAPS:
        return 1
    return max(1, min(threads, channels // 8, max(2, taps // COMPILED_SPLIT_MIN_TAPS)))


def _covered(xp: Any, ins, outs) -> bool:
    """NumPy float32/float64 buffers, one dtype, all C-contiguous."""
    if xp is not np:
        return False
    dtype = outs[0].dtype
    if dtype not in _FLOATS:
        return False
    return all(a.dtype == dtype and a.flags.c_contiguous for a in (*ins, *outs))


def _activation_code(activation: str, params, dtype) -> tuple[int, Any, Any] | None:
    """The compiled epilogue's activation code and parameters (in ``dtype``), or None where
    NumPy's ``apply_activation`` runs after it (sigmoid, tanh, float64 silu: NumPy's tanh is a
    SIMD routine whose bits a compiled loop does not reproduce; leaky_relu outside [0, 1], a clip
    with a missing bound). float32 silu is compiled with a rational tanh, the one activation
    that is not the reference's bits (within 3e-6 of them: ``loops.TANH_P``)."""
    t = dtype.type
    if activation == "none":
        return loops.NONE, t(0), t(0)
    if activation == "relu":
        return loops.RELU, t(0), t(0)
    if activation == "leaky_relu":
        alpha = float(params[0]) if params else 0.01
        return (loops.LEAKY, t(alpha), t(0)) if 0.0 <= alpha <= 1.0 else None
    if activation == "clip" and len(params) == 2 and None not in tuple(params):
        return loops.CLIP, t(params[0]), t(params[1])
    if activation == "silu" and dtype == np.float32:  # within 3e-6 of the reference's tanh
        return loops.SILU, t(0), t(0)
    if activation == "hard_swish":
        return loops.HSWISH, t(1 / 6), t(0.5)
    if activation == "hard_sigmoid":
        alpha, beta = (float(params[0]), float(params[1])) if params else (0.2, 0.5)
        return loops.HSIGMOID, t(alpha), t(beta)
    return None


def finish(out3, img, rows, cols, bias, z, activation, params) -> None:
    """``nn.finish_numpy`` as one compiled pass per output row (the same values); ``img`` an
    image or a slice of them."""
    if isinstance(img, slice):
        i0, i1, _ = img.indices(out3.shape[0])
        code = _activation_code(activation, params, out3.dtype)
        if code is None:
            for i in range(i0, i1):
                finish(out3, i, rows, cols, bias, z, activation, params)
            return
        r0, r1, _ = rows.indices(out3.shape[1])
        c0, c1, _ = cols.indices(out3.shape[2])
        loops.epilogue_images(out3, i0, i1, r0, r1, c0, c1,
                              out3[0, 0] if bias is None else bias.reshape(-1),
                              out3 if z is None else z, bias is not None, z is not None, *code)
        return
    y = out3[img]
    r0, r1, _ = rows.indices(y.shape[0])
    c0, c1, _ = cols.indices(y.shape[1])
    code = _activation_code(activation, params, y.dtype)
    t = y.dtype.type
    loops.epilogue(y, r0, r1, c0, c1, y[0] if bias is None else bias.reshape(-1),
                   y if z is None else z[img], bias is not None, z is not None,
                   loops.NONE if code is None else code[0],
                   t(0) if code is None else code[1], t(0) if code is None else code[2])
    if code is None:
        nn.apply_activation(np, y[r0:r1, c0:c1], activation, params)


def _depthwise(x, w, out, extra, attrs, strides, pads, dilations, groups) -> bool:
    """The depthwise path of ``nn._conv_kernel`` (``_depthwise`` and the epilogue after it),
    in channel bands per image (``_bands``); False (nothing done) where NumPy's taps are as
    fast (see ``DEPTHWISE_ROWS_MIN_WIDTH``)."""
    n, c, h, wd = x.shape
    o, _, kh, kw = w.shape
    _, _, oh, ow = out.shape
    flat = strides == (1, 1)
    mult = o // groups
    if mult == 1 and ow < (DEPTHWISE_NHWC_MAX_WIDTH if flat else DEPTHWISE_ROWS_MIN_WIDTH):
        _depthwise_nhwc(x, w, out, extra, attrs, strides, pads, dilations)
        return True
    if not flat and ow < DEPTHWISE_ROWS_MIN_WIDTH:
        return False
    w2 = w.reshape(o, kh * kw)
    bias = extra[0].reshape(o, 1) if extra else None
    z = extra[1].reshape(n, o, oh * ow) if len(extra) > 1 else None
    out3 = out.reshape(n, o, oh * ow)
    activation, params = attrs["activation"], attrs["activation_params"]
    bands = _bands(c, out.size * kh * kw)
    geometry = (kh, kw, strides[0], strides[1], dilations[0], dilations[1], pads[0], pads[1])
    # the padded plane of the flat loop, as the NumPy kernel's padded buffer
    hb = max(nn._needed(oh, kh, 1, dilations[0]), pads[0] + h)
    wb = max(nn._needed(ow, kw, 1, dilations[1]), pads[1] + wd)

    def piece(i):
        img, b = divmod(i, bands)
        c0, c1 = b * c // bands, (b + 1) * c // bands
        if flat:
            loops.depthwise_flat(x[img], w2, out[img], mult, *geometry, c0, c1,
                                 np.empty((hb, wb), x.dtype), np.empty((oh, wb), x.dtype))
        else:
            loops.depthwise(x[img], w2, out[img], mult, *geometry, c0, c1)
        finish(out3, img, slice(c0 * mult, c1 * mult), slice(None), bias, z, activation, params)

    parallel_for(n * bands, piece)
    return True


def _depthwise_nhwc(x, w, out, extra, attrs, strides, pads, dilations) -> None:
    """A depthwise convolution (one channel a group, multiplier 1) on a narrow map, computed
    channels-last as NumPy's taps compute it (``nn._depthwise``: the same padded NHWC copy,
    the same products and sums in tap order, so the same bits), but in one compiled pass whose
    inner loop runs along the channels: NCHW rows of 7-14 outputs are too short for the NCHW
    loops, and NumPy makes two passes per tap (``scripts/bench_layout.py --only depthwise``)."""
    n, c, h, wd = x.shape
    _, _, kh, kw = w.shape
    _, _, oh, ow = out.shape
    (sh, sw), (dh, dw), (top, left) = strides, dilations, pads[:2]
    hb = max(nn._needed(oh, kh, sh, dh), top + h)
    wb = max(nn._needed(ow, kw, sw, dw), left + wd)
    wt = np.ascontiguousarray(w.reshape(c, kh * kw).T)  # (tap, C)
    bias = extra[0].reshape(c, 1) if extra else None
    z = extra[1].reshape(n, c, oh * ow) if len(extra) > 1 else None
    out3 = out.reshape(n, c, oh * ow)
    activation, params = attrs["activation"], attrs["activation_params"]
    bands = min(oh, _bands(c, out.size * kh * kw))
    for img in range(n):
        buf = np.zeros((hb, wb, c), x.dtype)
        buf[top:top + h, left:left + wd] = x[img].transpose(1, 2, 0)
        acc = np.empty((oh, ow, c), x.dtype)

        def piece(i, buf=buf, acc=acc):
            loops.depthwise_nhwc(buf, wt, acc, kw, sh, sw, dh, dw, i * oh // bands,
                                 (i + 1) * oh // bands)

        parallel_for(bands, piece)
        out[img] = acc.transpose(2, 0, 1)
        finish(out3, img, slice(None), slice(None), bias, z, activation, params)


def _pool(is_max: bool) -> Callable[[Callable], Callable]:
    """Pools with padding and a stride above 1 (ResNet's 3x3/2 max pool on 112x112: 4.2 ->
    0.71 ms on one core), where NumPy pads a copy and reads it with strides; elsewhere NumPy's
    long passes over the flat tensor are as fast or faster (0.22 against 0.30 ms for a 3x3/1
    average pool of 192 channels at 28x28), and the reference kernel runs."""
    name = "max_pool2d" if is_max else "avg_pool2d"

    def make(shared: Callable) -> Callable:
        def kernel(xp, ins, attrs, outs):
            if not _covered(xp, ins, outs):
                return shared(xp, ins, attrs, outs)
            x, out = ins[0], outs[0]
            (kh, kw), strides, pads, dilations, _ = nn._pool_geometry(attrs, name)
            if not (any(pads) and max(strides) > 1):
                return shared(xp, ins, attrs, outs)  # NumPy's long passes are as fast
            n, c, h, w = x.shape
            oh, ow = out.shape[2:]
            rows = nn._needed(oh, kh, strides[0], dilations[0])
            fill = out.dtype.type(-np.inf if is_max else 0)
            bands = _bands(c, out.size * kh * kw)

            def piece(i):
                img, b = divmod(i, bands)
                across = np.empty((rows, ow), out.dtype)
                loops.pool(x[img], out[img], across, is_max, fill, kh, kw, strides[0],
                           strides[1], dilations[0], dilations[1], pads[0], pads[1],
                           b * c // bands, (b + 1) * c // bands)

            parallel_for(n * bands, piece)
            if not is_max:
                nn.average(np, out, attrs, h, w)

        kernel.__doc__ = f"{name} as one compiled pass per channel (hetero.backends.cpu)"
        return kernel

    return make


def _conv(shared: Callable) -> Callable:
    def kernel(xp, ins, attrs, outs):
        if not _covered(xp, ins, outs):
            return shared(xp, ins, attrs, outs)
        x, w = ins[0], ins[1]
        _, cg, kh, kw = w.shape
        strides, pads, dilations, groups = nn._conv_attrs(attrs, (kh, kw))
        if cg == 1 and groups > 1 and _depthwise(x, w, outs[0], ins[2:], attrs, strides, pads,
                                                 dilations, groups):
            return None
        if groups == 1:  # NumPy's im2col and OpenBLAS's GEMMs, the compiled epilogue
            return nn._conv_kernel(xp, ins, attrs, outs, finish=finish)
        return shared(xp, ins, attrs, outs)

    kernel.__doc__ = "conv2d with a compiled depthwise loop and epilogue (hetero.backends.cpu)"
    return kernel


def _batch_norm(shared: Callable) -> Callable:
    """Inference batch-norm as one pass per channel row: ``x * a + b`` then the activation,
    where NumPy makes a pass per step, each broadcasting a ``(C, 1)`` column."""
    def kernel(xp, ins, attrs, outs):
        x, out = ins[0], outs[0]
        if not _covered(xp, ins, outs) or x.ndim < 2:
            return shared(xp, ins, attrs, outs)
        a, b = nn.batch_norm_affine(np, *ins[1:], attrs["epsilon"])  # the reference's a, b
        n, c = x.shape[:2]
        rest = int(np.prod(x.shape[2:], dtype=np.int64))
        activation, params = attrs["activation"], attrs["activation_params"]
        code = _activation_code(activation, params, out.dtype)
        t = out.dtype.type
        loops.affine(x.reshape(n, c, rest), out.reshape(n, c, rest), a, b,
                     loops.NONE if code is None else code[0],
                     t(0) if code is None else code[1], t(0) if code is None else code[2])
        if code is None:
            nn.apply_activation(np, out, activation, params)

    kernel.__doc__ = "batch_norm as one compiled pass per channel (hetero.backends.cpu)"
    return kernel


def _hard_gate(swish: bool) -> Callable[[Callable], Callable]:
    """hard_swish / hard_sigmoid as one compiled pass where NumPy makes four / three (1.2 M
    float32 at 56x56: 0.185 -> 0.059 ms for hard_swish on one core)."""
    def make(shared: Callable) -> Callable:
        def kernel(xp, ins, attrs, outs):
            x, out = ins[0], outs[0]
            if not _covered(xp, ins, outs) or x.shape != out.shape:
                return shared(xp, ins, attrs, outs)
            t = out.dtype.type
            a, b = (1 / 6, 0.5) if swish else (attrs["alpha"], attrs["beta"])
            loops.hard_gate(x, out, swish, t(a), t(b))

        kernel.__doc__ = (f"{'hard_swish' if swish else 'hard_sigmoid'} as one compiled pass "
                          "(hetero.backends.cpu)")
        return kernel

    return make


def _channel_gate(x, g, out):
    """``(x3, g2)``: ``x`` as ``(N, C, L)`` and ``g`` as ``(N or 1, C)`` when ``x * g`` is a
    per-channel scale of ``x`` (``g`` of shape ``(N or 1, C, 1, ...)``) into ``out``; else None."""
    if x.ndim < 3 or x.shape != out.shape or g.ndim > x.ndim or x.size == 0:
        return None
    full = (1,) * (x.ndim - g.ndim) + g.shape
    n, c = x.shape[:2]
    if full[0] not in (1, n) or full[1] != c or any(d != 1 for d in full[2:]):
        return None
    return x.reshape(n, c, -1), g.reshape(full[0], c)


def _mul(shared: Callable) -> Callable:
    """``mul`` of a map by a per-channel gate (squeeze-excite: ``(N, C, H, W) * (N, C, 1, 1)``)
    as one compiled pass per channel row with the gate a scalar, where NumPy's broadcast loop
    is 1.5-2.7x slower (144 channels at 56x56: 0.092 -> 0.043 ms); other muls are NumPy's."""
    def kernel(xp, ins, attrs, outs):
        if not _covered(xp, ins, outs):
            return shared(xp, ins, attrs, outs)
        a, b, out = ins[0], ins[1], outs[0]
        pair = _channel_gate(a, b, out) or _channel_gate(b, a, out)
        if pair is None:
            return shared(xp, ins, attrs, outs)
        loops.channel_scale(pair[0], pair[1], out.reshape(pair[0].shape))

    kernel.__doc__ = "mul with a compiled per-channel gate (hetero.backends.cpu)"
    return kernel


#: A global average pool over at most this many pixels per channel takes the compiled loop
#: (NumPy's pairwise sum, the same bits); above it NumPy's reduction is as fast or faster (one
#: core: 1152 channels at 7x7 0.044 -> 0.019 ms, 480 at 14x14 0.039 -> 0.027, 240 at 28x28
#: 0.058 -> 0.059, 144 at 56x56 0.080 -> 0.141).
GLOBAL_POOL_MAX_PIXELS = 400


def _global_avg_pool(shared: Callable) -> Callable:
    def kernel(xp, ins, attrs, outs):
        x, out = ins[0], outs[0]
        if not _covered(xp, ins, outs) or x.ndim < 3:
            return shared(xp, ins, attrs, outs)
        rows = x.shape[0] * x.shape[1]
        pixels = x.size // rows if rows else 0
        if not 0 < pixels <= GLOBAL_POOL_MAX_PIXELS:
            return shared(xp, ins, attrs, outs)
        loops.row_means(x.reshape(rows, pixels), out.reshape(rows))

    kernel.__doc__ = "global_avg_pool as compiled row sums on small maps (hetero.backends.cpu)"
    return kernel


#: Elements per piece of a compiled float32 erf / GELU cut over the intra-op threads (below
#: it, one piece: the hand-off costs more than half the pass).
ERF_SPLIT_MIN = 1 << 16


def _float32_poly(gelu: bool) -> Callable[[Callable], Callable]:
    """float32 ``erf`` and exact ``gelu`` with their polynomial (``loops.log_erfc_poly``) in one
    compiled pass where NumPy makes 21, NumPy's own ``expm1`` / ``exp`` (a SIMD routine whose
    bits a compiled loop would not reproduce), and the last passes compiled into one, so the
    bits are the reference's (``hetero.ops.elementwise._erf32_part`` and
    ``_gelu32_part``); the flat array is cut over the intra-op threads (an elementwise result
    does not depend on the cut)."""
    coeffs = ew._GELU_F32 if gelu else ew._LOG_ERFC_F32
    bound = np.float32(ew._GELU_BOUND if gelu else ew._LOG_ERFC_BOUND)
    c = tuple(np.float32(v) for v in coeffs)

    def part(xp, x, out, s):
        xf, of, sf = x.reshape(-1), out.reshape(-1), s.reshape(-1)
        loops.log_erfc_poly(xf, of, sf, bound, *c)
        if gelu:
            np.exp(of, out=of)  # erfc(|x| / sqrt(2)) / 2
            loops.gelu_tail(xf, of, sf)  # max(x, 0) - |x| * that
        else:
            np.expm1(of, out=of)  # -erf(|x|)
            loops.copysign_into(of, xf)

    def make(shared: Callable) -> Callable:
        def kernel(xp, ins, attrs, outs):
            x, out = ins[0], outs[0]
            if (not _covered(xp, ins, outs) or out.dtype != np.float32 or x.shape != out.shape
                    or (gelu and attrs["approximate"] != "none")
                    or ew._library(xp, "erfc" if gelu else "erf", out.dtype) is not None
                    or np.shares_memory(x, out)):
                return shared(xp, ins, attrs, outs)
            xf, of = x.reshape(-1), out.reshape(-1)
            n = xf.shape[0]
            pieces = max(1, min(intra_op_threads(), n // ERF_SPLIT_MIN))
            edges = [n * i // pieces // 16 * 16 for i in range(pieces)] + [n]

            def piece(i):
                a, b = edges[i], edges[i + 1]
                by_chunks(np, part, xf[a:b], of[a:b], chunk=ew._CHUNK, dtype=np.float32)

            parallel_for(pieces, piece)

        kernel.__doc__ = (f"float32 {'gelu' if gelu else 'erf'} with its polynomial compiled, "
                          "cut over the intra-op threads (hetero.backends.cpu)")
        return kernel

    return make


#: Rows per piece of a compiled layer norm cut over the intra-op threads, times the row length
#: (below it, one piece).
LAYER_NORM_SPLIT_MIN = 1 << 16


def _layer_norm(shared: Callable) -> Callable:
    """float32 ``layer_norm`` over the last axis (what the exporters emit for transformers) as
    one compiled pass per row where NumPy makes ten over the tensor with temporaries; the
    reference's bits (``loops.layer_norm_rows``); rows cut over the intra-op threads."""
    def kernel(xp, ins, attrs, outs):
        x, scale = ins[0], ins[1]
        bias = ins[2] if len(ins) == 3 else None
        out, mean, inv = outs
        length = x.shape[-1] if x.ndim else 0
        if (not _covered(xp, [x, *outs], outs) or x.dtype != np.float32 or x.ndim < 1
                or attrs["axis"] % x.ndim != x.ndim - 1 or attrs["stash_type"] != 1
                or length == 0 or x.size == 0
                or any(p.dtype != x.dtype or p.size != length or not p.flags.c_contiguous
                       for p in ins[1:])
                or np.shares_memory(x, out)):
            return shared(xp, ins, attrs, outs)
        rows = x.size // length
        x2, o2 = x.reshape(rows, length), out.reshape(rows, length)
        m1, i1 = mean.reshape(rows), inv.reshape(rows)
        s1 = scale.reshape(length)
        b1 = s1 if bias is None else bias.reshape(length)
        eps = np.float32(attrs["epsilon"])
        pieces = max(1, min(intra_op_threads(), rows, x.size // LAYER_NORM_SPLIT_MIN))
        edges = [rows * i // pieces for i in range(pieces + 1)]

        def piece(i):
            sq = np.empty(length, np.float32)
            loops.layer_norm_rows(x2, s1, b1, bias is not None, eps, o2, m1, i1, sq,
                                  edges[i], edges[i + 1])

        parallel_for(pieces, piece)

    kernel.__doc__ = "float32 layer_norm over the last axis, compiled per row (hetero.backends.cpu)"
    return kernel


#: Elements of an elementwise op or a softmax before its NumPy pass is cut over the intra-op
#: threads (NumPy's ufuncs release the GIL, so the pieces run at once; below it the hand-off
#: costs more than half the pass).
SPLIT_MIN_ELEMENTS = 1 << 17


def _pieces(size: int) -> int:
    return 1 if size < SPLIT_MIN_ELEMENTS else intra_op_threads()


def _cut_axis(shape: tuple[int, ...], pieces: int) -> int | None:
    """The first axis longer than 1 when every axis before it is 1 (a slice along it is a
    contiguous block of a C-contiguous array) and it has at least ``pieces`` entries."""
    for axis, n in enumerate(shape):
        if n > 1:
            return axis if n >= pieces else None
    return None


def _split_elementwise(shared: Callable) -> Callable:
    """An elementwise op's kernel run on ``pieces`` blocks of its output (the same block of each
    input that is not broadcast along the cut), one per intra-op thread: each element is
    computed as the whole-array call computes it, so the bits do not depend on the cut."""
    def kernel(xp, ins, attrs, outs):
        out = outs[0]
        pieces = _pieces(out.size) if xp is np and len(outs) == 1 else 1
        axis = _cut_axis(out.shape, pieces) if pieces > 1 else None
        if axis is None or any(not isinstance(a, np.ndarray) or np.may_share_memory(a, out)
                               for a in ins):
            return shared(xp, ins, attrs, outs)
        n = out.shape[axis]
        edges = [n * i // pieces for i in range(pieces + 1)]

        def block(a, lo, hi):
            k = axis - (out.ndim - a.ndim)  # the input's axis under the cut, if any
            if k < 0 or a.shape[k] == 1:
                return a  # broadcast along the cut: every piece reads all of it
            return a[(slice(None),) * k + (slice(lo, hi),)]

        def piece(i):
            lo, hi = edges[i], edges[i + 1]
            shared(xp, [block(a, lo, hi) for a in ins], attrs,
                   [out[(slice(None),) * axis + (slice(lo, hi),)]])

        parallel_for(pieces, piece)

    kernel.__doc__ = (shared.__doc__ or "elementwise kernel") + " (cut over the intra-op threads)"
    return kernel


def _split_softmax(shared: Callable) -> Callable:
    """``softmax`` / ``log_softmax`` over the last axis of a contiguous array, its rows cut over
    the intra-op threads; each row is reduced as the whole-array call reduces it (NumPy's
    pairwise sum along a contiguous row), so the bits do not depend on the cut."""
    def kernel(xp, ins, attrs, outs):
        x, out = ins[0], outs[0]
        length = x.shape[-1] if x.ndim else 0
        pieces = _pieces(x.size) if xp is np and length else 1
        if (pieces <= 1 or attrs["axis"] % x.ndim != x.ndim - 1 or not x.flags.c_contiguous
                or not out.flags.c_contiguous or np.may_share_memory(x, out)):
            return shared(xp, ins, attrs, outs)
        rows = x.size // length
        pieces = min(pieces, rows)
        if pieces <= 1:
            return shared(xp, ins, attrs, outs)
        x2, o2 = x.reshape(rows, length), out.reshape(rows, length)
        edges = [rows * i // pieces for i in range(pieces + 1)]
        last = {"axis": -1}

        def piece(i):
            shared(xp, [x2[edges[i]:edges[i + 1]]], last, [o2[edges[i]:edges[i + 1]]])

        parallel_for(pieces, piece)

    kernel.__doc__ = "softmax over rows cut over the intra-op threads (hetero.backends.cpu)"
    return kernel


#: Elementwise ops whose NumPy pass is cut over the intra-op threads: the ones measured faster
#: in two pieces (two threads, float32, medians of 100 calls, 2026-12-04): ``where`` 1.37 ->
#: 0.76 ms at 1x96x56x56, ``sigmoid`` 0.33 -> 0.25 ms at 1x197x3072 (0.18 -> 0.15 at
#: 1x96x56x56). The memory-bound ones ran slower in two pieces than in one (add 42 -> 61 us,
#: relu 42 -> 84, div 45 -> 86, maximum 35 -> 68 at 1x96x56x56; add with a bias 35 -> 59 at
#: 1x197x768; exp 132 -> 167, tanh 114 -> 119, sqrt 109 -> 109), so they are not cut. ``pow``
#: would not be either way: its fast paths are chosen from the whole input.
SPLIT_ELEMENTWISE = ("where", "sigmoid")


#: op -> (reference kernel -> compiled kernel)
KERNELS: dict[str, Callable[[Callable], Callable]] = {
    "mul": _mul,
    **{name: _split_elementwise for name in SPLIT_ELEMENTWISE},
    "softmax": _split_softmax,
    "log_softmax": _split_softmax,
    "erf": _float32_poly(False),
    "gelu": _float32_poly(True),
    "layer_norm": _layer_norm,
    "hard_swish": _hard_gate(True),
    "hard_sigmoid": _hard_gate(False),
    "global_avg_pool": _global_avg_pool,
    "conv2d": _conv,
    "conv2d_add": _conv,
    "max_pool2d": _pool(True),
    "avg_pool2d": _pool(False),
    "batch_norm": _batch_norm,
}
