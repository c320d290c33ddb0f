"""The compiled loops (numba, LLVM) behind ``hetero.backends.cpu``; imported only by its
``install()``, so nothing imports numba before a CPU worker runs a kernel.

Every loop computes the very values of the NumPy code it replaces, in the same floating-point
order (numba's default keeps IEEE semantics: no reassociation, no fused multiply-add), so a
compiled kernel and the reference kernel give the same bits; the one exception is float32 SiLU
(``_silu_row``: a rational tanh, within 4e-6 of NumPy's, docs/cpu-kernels.md). ``nogil``: the
intra-op pieces run them on several threads at once. ``cache``: compiled once per machine, then
loaded from disk.

The loops index flat arrays with unsigned offsets: numba then emits no negative-index
wrap-around test and LLVM vectorises the inner loops (measured on a depthwise 3x3 of 144
channels at 56x56: 1.75 ms with per-row views, 0.99 ms flat).
"""

from __future__ import annotations

import math

import numba
import numpy as np
from numba import uint64 as _u

jit = numba.njit(cache=True, nogil=True)
#: the loops with a floating-point division: numba's default (Python's) error model tests every
#: divisor for zero, and the branch keeps LLVM from vectorising the loop; NumPy's model divides
#: as IEEE does (x / 0 is inf or NaN), which is what the reference kernels do
jit_ieee = numba.njit(cache=True, nogil=True, error_model="numpy")


@jit
def depthwise(x, w, out, mult, kh, kw, sh, sw, dh, dw, top, left, c0, c1):
    """Output channels of input channels ``c0:c1`` of a depthwise convolution of one image:
    ``out[g*mult + m] = sum over taps t of x_pad[g, window t] * w[g*mult + m, t]``, summed in
    tap order from the first product, a padded position reading 0 as the NumPy kernel's padded
    buffer does (so ``0 * inf`` is NaN alike, and signed zeros come out the same). ``x``:
    ``(C, H, W)``; ``w``: ``(C*mult, KH*KW)``; ``out``: ``(C*mult, OH, OW)``, all
    C-contiguous."""
    _, h, wd = x.shape
    _, oh, ow = out.shape
    xf = x.reshape(-1)
    of = out.reshape(-1)
    zero = x.dtype.type(0)
    for g in range(c0, c1):
        for m in range(mult):
            oc = g * mult + m
            for i in range(kh):
                for j in range(kw):
                    wt = w[oc, i * kw + j]
                    pad = zero * wt
                    first = i == 0 and j == 0
                    off = j * dw - left
                    # the outputs q_lo:q_hi of a row read inside the input's columns
                    q_lo = 0 if off >= 0 else min(ow, (-off + sw - 1) // sw)
                    q_hi = min(ow, (wd - off + sw - 1) // sw) if wd > off else 0
                    q_hi = max(q_lo, q_hi)
                    n_in = q_hi - q_lo
                    for r in range(oh):
                        y = r * sh + i * dh - top
                        ob = _u((oc * oh + r) * ow)
                        if y < 0 or y >= h:
                            for q in range(ow):
                                k = ob + _u(q)
                                of[k] = pad if first else of[k] + pad
                            continue
                        for q in range(q_lo):
                            k = ob + _u(q)
                            of[k] = pad if first else of[k] + pad
                        xb = _u((g * h + y) * wd + q_lo * sw + off)
                        o2 = ob + _u(q_lo)
                        if first:
                            for q in range(n_in):
                                of[o2 + _u(q)] = xf[xb + _u(q * sw)] * wt
                        else:
                            for q in range(n_in):
                                of[o2 + _u(q)] = of[o2 + _u(q)] + xf[xb + _u(q * sw)] * wt
                        for q in range(q_hi, ow):
                            k = ob + _u(q)
                            of[k] = pad if first else of[k] + pad


#: activation codes of ``epilogue`` (``hetero.backends.cpu.kernels`` maps the names; the others
#: run NumPy's ``apply_activation`` after it)
NONE, RELU, LEAKY, CLIP, HSWISH, HSIGMOID, SILU = 0, 1, 2, 3, 4, 5, 6

#: ``tanh(t) = t * P(t^2) / Q(t^2)`` on ``|t| <= TANH_CLAMP`` (Eigen's float32 rational,
#: ``generic_fast_tanh_float``): the compiled SiLU's sigmoid, ``0.5 * tanh(x / 2) + 0.5``
#: as the reference computes it with NumPy's tanh, within 3e-6 of it (float32 only)
TANH_CLAMP = 7.90531110763549805
TANH_P = (4.89352455891786e-03, 6.37261928875436e-04, 1.48572235717979e-05,
          5.12229709037114e-08, -8.60467152213735e-11, 2.00018790482477e-13,
          -2.76076847742355e-16)
TANH_Q = (4.89352518554385e-03, 2.26843463243900e-03, 1.18534705686654e-04,
          1.19825839466702e-06)
_P1, _P3, _P5, _P7, _P9, _P11, _P13 = TANH_P
_Q0, _Q2, _Q4, _Q6 = TANH_Q


@jit_ieee
def _silu_row(row):
    """``row *= sigmoid(row)`` in place, the sigmoid from the rational tanh (float32 rows)."""
    t32 = row.dtype.type
    half, c = t32(0.5), t32(TANH_CLAMP)
    p1, p3, p5, p7, p9, p11, p13 = t32(_P1), t32(_P3), t32(_P5), t32(_P7), t32(_P9), t32(_P11), \
        t32(_P13)
    q0, q2, q4, q6 = t32(_Q0), t32(_Q2), t32(_Q4), t32(_Q6)
    for k in range(row.shape[0]):
        v = row[k]
        t = v * half
        t = c if t > c else t  # NaN stays NaN
        t = -c if t < -c else t
        t2 = t * t
        p = t2 * p13 + p11
        p = t2 * p + p9
        p = t2 * p + p7
        p = t2 * p + p5
        p = t2 * p + p3
        p = t2 * p + p1
        q = t2 * q6 + q4
        q = t2 * q + q2
        q = t2 * q + q0
        row[k] = v * ((t * p / q) * half + half)


@jit_ieee
def _activate(row, code, a, b):
    """``apply_activation`` in place on a 1-D ``row``: np.maximum(v, t) is v where v > t or v is
    NaN, else t (so -0.0 against 0.0 gives 0.0, as NumPy's); np.minimum alike."""
    n = row.shape[0]
    if code == RELU:
        zero = row.dtype.type(0)
        for p in range(n):
            v = row[p]
            row[p] = v if (v > zero or v != v) else zero
    elif code == LEAKY:
        for p in range(n):
            v = row[p]
            t = v * a
            row[p] = v if (v > t or v != v) else t
    elif code == CLIP:
        for p in range(n):
            v = row[p]
            v = v if (v > a or v != v) else a
            row[p] = v if (v < b or v != v) else b
    elif code == HSIGMOID or code == HSWISH:
        # clip(v * a + b, 0, 1) (times v for hard_swish: a = 1/6, b = 1/2), each step rounded
        # as the hard_sigmoid op's NumPy passes round it
        zero = row.dtype.type(0)
        one = row.dtype.type(1)
        for p in range(n):
            v = row[p]
            s = (v * a) + b
            s = zero if s < zero else s  # np.clip: NaN and -0.0 stay as they are
            s = one if s > one else s
            row[p] = s * v if code == HSWISH else s
    elif code == SILU:
        _silu_row(row)


@jit_ieee
def epilogue(y, r0, r1, c0, c1, bias, z, has_bias, has_z, code, a, b):
    """A convolution's epilogue on rows ``r0:r1``, columns ``c0:c1`` of ``y`` (``(O, P)``,
    C-contiguous), row by row while the row is in cache: ``+ bias[o]``, then ``+ z`` (like
    ``y``), then the activation ``code`` (alpha ``a``; clip bounds ``a``, ``b``; scalars of
    ``y``'s dtype), each step rounded as NumPy's separate passes round it."""
    n = c1 - c0
    for o in range(r0, r1):
        row = y[o, c0:c1]
        if has_bias:
            bo = bias[o]
            if has_z:
                zr = z[o, c0:c1]
                for p in range(n):
                    row[p] = (row[p] + bo) + zr[p]
            else:
                for p in range(n):
                    row[p] = row[p] + bo
        elif has_z:
            zr = z[o, c0:c1]
            for p in range(n):
                row[p] = row[p] + zr[p]
        _activate(row, code, a, b)


@jit_ieee
def epilogue_images(y3, i0, i1, r0, r1, c0, c1, bias, z3, has_bias, has_z, code, a, b):
    """``epilogue`` on images ``i0:i1`` of ``y3`` (``(N, O, P)``; ``z3`` like it), one call for a
    batch."""
    for i in range(i0, i1):
        epilogue(y3[i], r0, r1, c0, c1, bias, z3[i], has_bias, has_z, code, a, b)


@jit
def _combine(a, v, is_max):
    # np.maximum(a, v): a where a > v or a is NaN, else v; np.add: a + v
    if is_max:
        return a if (a > v or a != a) else v
    return a + v


@jit
def pool(x, out, across, is_max, fill, kh, kw, sh, sw, dh, dw, top, left, c0, c1):
    """Max (``is_max``) or sum pooling of channels ``c0:c1`` of one image, in the NumPy
    kernel's order: first along each row (taps ``j = 0 .. KW-1``, left to right), then down the
    columns (taps ``i``), a padded position reading ``fill`` (-inf or 0). ``x``: ``(C, H,
    W)``; ``out``: ``(C, OH, OW)``; ``across``: scratch ``(rows, OW)`` (rows the windows reach)."""
    _, h, wd = x.shape
    _, oh, ow = out.shape
    rows = across.shape[0]
    xf = x.reshape(-1)
    af = across.reshape(-1)
    of = out.reshape(-1)
    for g in range(c0, c1):
        for yb in range(rows):
            y = yb - top
            ab = _u(yb * ow)
            if y < 0 or y >= h:
                for q in range(ow):
                    af[ab + _u(q)] = fill  # fill combined with fill
                continue
            for j in range(kw):
                off = j * dw - left
                q_lo = 0 if off >= 0 else min(ow, (-off + sw - 1) // sw)
                q_hi = min(ow, (wd - off + sw - 1) // sw) if wd > off else 0
                q_hi = max(q_lo, q_hi)
                xb = _u((g * h + y) * wd + q_lo * sw + off)
                if j == 0:
                    for q in range(q_lo):
                        af[ab + _u(q)] = fill
                    for q in range(q_hi - q_lo):
                        af[ab + _u(q_lo + q)] = xf[xb + _u(q * sw)]
                    for q in range(q_hi, ow):
                        af[ab + _u(q)] = fill
                else:
                    for q in range(q_lo):
                        k = ab + _u(q)
                        af[k] = _combine(af[k], fill, is_max)
                    for q in range(q_hi - q_lo):
                        k = ab + _u(q_lo + q)
                        af[k] = _combine(af[k], xf[xb + _u(q * sw)], is_max)
                    for q in range(q_hi, ow):
                        k = ab + _u(q)
                        af[k] = _combine(af[k], fill, is_max)
        for r in range(oh):
            ob = _u((g * oh + r) * ow)
            a0 = _u(r * sh * ow)
            for q in range(ow):
                of[ob + _u(q)] = af[a0 + _u(q)]
            for i in range(1, kh):
                ai = _u((r * sh + i * dh) * ow)
                for q in range(ow):
                    k = ob + _u(q)
                    of[k] = _combine(of[k], af[ai + _u(q)], is_max)


@jit
def depthwise_flat(x, w, out, mult, kh, kw, sh, sw, dh, dw, top, left, c0, c1, buf, acc):
    """``depthwise`` computed on each channel's zero-padded plane read as one line: the plane is
    copied into ``buf`` (``Hb*Wb`` with its padding), and tap ``(i, j)`` of output ``(r, q)``
    sits at ``buf[s*(r*Wb + q) + i*dh*Wb + j*dw]`` when both strides are ``s``, so every tap is
    one long loop over the positions ``k = r*Wb + q`` into ``acc`` (the ``Wb - OW`` positions
    past each row's end are computed and dropped). Same products, same order, same zeros as
    the NumPy kernel's padded buffer; long inner loops where a row loop would run ``OW``
    long (the win on 14x14 and 7x7 maps). Stride 1 (the read would be ``s*k`` with ``s``
    both strides). ``buf``: scratch ``(Hb, Wb)``, the NumPy kernel's padded plane size;
    ``acc``: scratch ``(OH, Wb)``."""
    _, h, wd = x.shape
    _, oh, ow = out.shape
    s = sh
    zero = x.dtype.type(0)
    hb = buf.shape[0]
    wb = buf.shape[1]
    bf = buf.reshape(-1)
    af = acc.reshape(-1)
    xf = x.reshape(-1)
    of = out.reshape(-1)
    length = (oh - 1) * wb + ow
    for p in range(hb * wb):
        bf[_u(p)] = zero
    for g in range(c0, c1):
        for y in range(h):  # the plane into the middle of its padding
            src = _u((g * h + y) * wd)
            dst = _u((top + y) * wb + left)
            for q in range(wd):
                bf[dst + _u(q)] = xf[src + _u(q)]
        for m in range(mult):
            oc = g * mult + m
            for i in range(kh):
                for j in range(kw):
                    wt = w[oc, i * kw + j]
                    base = _u(i * dh * wb + j * dw)
                    if i == 0 and j == 0:
                        for k in range(length):
                            af[_u(k)] = bf[base + _u(s * k)] * wt
                    else:
                        for k in range(length):
                            af[_u(k)] = af[_u(k)] + bf[base + _u(s * k)] * wt
            for r in range(oh):
                ob = _u((oc * oh + r) * ow)
                ab = _u(r * wb)
                for q in range(ow):
                    of[ob + _u(q)] = af[ab + _u(q)]


@jit_ieee
def affine(x, out, a, b, code, p0, p1):
    """``out[n, c] = x[n, c] * a[c] + b[c]`` (the product rounded, then the sum, as NumPy's two
    passes round them), then the activation ``code``, one row at a time. ``x``, ``out``: ``(N,
    C, L)`` C-contiguous."""
    n, c, length = x.shape
    for i in range(n):
        for ch in range(c):
            src = x[i, ch]
            row = out[i, ch]
            ac = a[ch]
            bc = b[ch]
            for p in range(length):
                row[p] = (src[p] * ac) + bc
            _activate(row, code, p0, p1)


@jit
def hard_gate(x, out, swish, a, b):
    """``out = clip(x * a + b, 0, 1)`` (the hard_sigmoid op's passes, each step rounded as they
    round it), times ``x`` when ``swish`` (hard_swish: a = 1/6, b = 1/2), in one pass. ``x``,
    ``out``: C-contiguous, of one size."""
    xf = x.reshape(-1)
    of = out.reshape(-1)
    zero = x.dtype.type(0)
    one = x.dtype.type(1)
    for p in range(xf.shape[0]):
        v = xf[_u(p)]
        s = (v * a) + b
        s = zero if s < zero else s  # np.clip: NaN and -0.0 stay as they are
        s = one if s > one else s
        of[_u(p)] = s * v if swish else s


@jit
def channel_scale(x, g, out):
    """``out[i, c, :] = x[i, c, :] * g[i or 0, c]``: a squeeze-excite gate broadcast over the map
    (NumPy's ``multiply`` of ``(N, C, H, W)`` by ``(N, C, 1, 1)``). ``x``, ``out``: ``(N, C,
    L)``; ``g``: ``(N or 1, C)``; all C-contiguous."""
    n, c, length = x.shape
    one_g = g.shape[0] == 1
    for i in range(n):
        gi = 0 if one_g else i
        for ch in range(c):
            src = x[i, ch]
            dst = out[i, ch]
            s = g[gi, ch]
            for p in range(length):
                dst[p] = src[p] * s


@jit
def _pairwise_leaf(a, lo, n):
    """NumPy's pairwise sum of a run of at most 128 terms: below 8 one by one from 0, else eight
    running sums combined as ``((r0+r1)+(r2+r3)) + ((r4+r5)+(r6+r7))``, then the rest."""
    if n < 8:
        res = a.dtype.type(0)
        for i in range(n):
            res = res + a[_u(lo + i)]
        return res
    r0 = a[_u(lo)]
    r1 = a[_u(lo + 1)]
    r2 = a[_u(lo + 2)]
    r3 = a[_u(lo + 3)]
    r4 = a[_u(lo + 4)]
    r5 = a[_u(lo + 5)]
    r6 = a[_u(lo + 6)]
    r7 = a[_u(lo + 7)]
    stop = n - n % 8
    for i in range(8, stop, 8):
        b = _u(lo + i)
        r0 = r0 + a[b]
        r1 = r1 + a[b + _u(1)]
        r2 = r2 + a[b + _u(2)]
        r3 = r3 + a[b + _u(3)]
        r4 = r4 + a[b + _u(4)]
        r5 = r5 + a[b + _u(5)]
        r6 = r6 + a[b + _u(6)]
        r7 = r7 + a[b + _u(7)]
    res = ((r0 + r1) + (r2 + r3)) + ((r4 + r5) + (r6 + r7))
    for i in range(stop, n):
        res = res + a[_u(lo + i)]
    return res


@jit
def _pairwise_sum(a, lo, n):
    """NumPy's pairwise sum of ``a[lo:lo+n]`` (``pairwise_sum`` in its umath loops: up to 128
    terms ``_pairwise_leaf``; above, the two halves, cut at a multiple of 8, each summed so and
    added left + right), the very order of ``np.add.reduce`` over a contiguous run. The halving
    is walked with an explicit stack, not recursion: numba's on-disk cache cannot link a
    recursive function into a second caller ("Symbol not found: .numba.unresolved$...")."""
    if n <= 128:
        return _pairwise_leaf(a, lo, n)
    st_lo = np.empty(64, np.int64)  # depth <= log2(n / 128) + 1
    st_n = np.empty(64, np.int64)
    stage = np.zeros(64, np.int8)  # 0: not split yet, 1: summing the left half, 2: the right
    left = np.empty(64, a.dtype)
    sp = 0
    st_lo[0] = lo
    st_n[0] = n
    while True:
        cn = st_n[sp]
        if cn > 128:
            half = cn // 2
            half -= half % 8
            stage[sp] = 1
            st_lo[sp + 1] = st_lo[sp]
            st_n[sp + 1] = half
            stage[sp + 1] = 0
            sp += 1
            continue
        v = _pairwise_leaf(a, st_lo[sp], cn)
        while True:  # hand the finished sum at sp to its parent
            if sp == 0:
                return v
            sp -= 1
            if stage[sp] == 1:
                left[sp] = v
                stage[sp] = 2
                half = st_n[sp] // 2
                half -= half % 8
                st_lo[sp + 1] = st_lo[sp] + half
                st_n[sp + 1] = st_n[sp] - half
                stage[sp + 1] = 0
                sp += 1
                break
            v = left[sp] + v


@jit
def row_means(x, out):
    """``out[r] = (0 + pairwise_sum(x[r])) / L`` for the rows of ``x`` (``(R, L)``,
    C-contiguous), the division in float64 and rounded once to ``out``'s dtype, as ``np.mean``
    divides its sum by an ``intp`` count."""
    rows, length = x.shape
    xf = x.reshape(-1)
    zero = x.dtype.type(0)
    for r in range(rows):
        s = zero + _pairwise_sum(xf, r * length, length)
        out[r] = float(s) / float(length)


@jit
def depthwise_nhwc(buf, wt, acc, kw, sh, sw, dh, dw, r0, r1):
    """Rows ``r0:r1`` of a depthwise convolution (one input channel per group) computed
    channels-last, as the NumPy kernel does: ``acc[r, q, c] = sum over taps t of
    buf[r*sh + i*dh, q*sw + j*dw, c] * wt[t, c]`` (``t = i*kw + j``), the first product
    assigned and each later one rounded, then added, in tap order. ``buf``: the zero-padded
    input ``(Hb, Wb, C)``; ``wt``: ``(KH*KW, C)``; ``acc``: ``(OH, OW, C)``; all C-contiguous.
    The inner loop runs along the channels, contiguous whatever the map's width or stride."""
    _, wb, c = buf.shape
    _, ow, _ = acc.shape
    taps = wt.shape[0]
    bf = buf.reshape(-1)
    wf = wt.reshape(-1)
    af = acc.reshape(-1)
    cu = _u(c)
    for r in range(r0, r1):
        for q in range(ow):
            ob = _u((r * ow + q) * c)
            xb0 = _u(((r * sh) * wb + q * sw) * c)
            for k in range(cu):
                af[ob + k] = bf[xb0 + k] * wf[k]
            for t in range(1, taps):
                i = t // kw
                j = t - i * kw
                xb = _u(((r * sh + i * dh) * wb + q * sw + j * dw) * c)
                wo = _u(t * c)
                for k in range(cu):
                    af[ob + k] = af[ob + k] + bf[xb + k] * wf[wo + k]


@jit
def log_erfc_poly(x, out, s, bound, c0, c1, c2, c3, c4, c5, c6, c7, c8, c9, c10):
    """The float32 erf's and GELU's polynomial (``hetero.ops.elementwise._log_erfc_into``) in one
    pass where NumPy makes 21: ``s = |clip(x, -bound, bound)|`` and ``out = (((c10*s + c9)*s +
    c8)*s ... + c1)*s`` (plus ``c0`` where it is not 0), each product and sum rounded as NumPy's
    passes round it. ``x``, ``out``, ``s``: flat float32 arrays of one size; the constants
    float32, as NumPy casts a Python float next to a float32 array."""
    zero = x.dtype.type(0)
    lo = -bound
    for p in range(x.shape[0]):
        v = x[_u(p)]
        v = lo if v < lo else v  # np.clip: NaN stays NaN
        v = bound if v > bound else v
        t = abs(v)
        acc = t * c10
        acc = (acc + c9) * t
        acc = (acc + c8) * t
        acc = (acc + c7) * t
        acc = (acc + c6) * t
        acc = (acc + c5) * t
        acc = (acc + c4) * t
        acc = (acc + c3) * t
        acc = (acc + c2) * t
        acc = (acc + c1) * t
        if c0 != zero:
            acc = acc + c0
        out[_u(p)] = acc
        s[_u(p)] = t


@jit
def copysign_into(out, x):
    """``out = copysign(out, x)`` (NumPy's ``copysign`` pass: a bit operation, so exact).
    Flat arrays of one size and dtype."""
    for p in range(out.shape[0]):
        out[_u(p)] = math.copysign(out[_u(p)], x[_u(p)])


@jit
def gelu_tail(x, out, s):
    """``out = max(x, 0) - out * s`` as the float32 GELU's last three NumPy passes round it
    (``out *= s``, ``np.clip(x, 0, inf)``: NaN and -0.0 stay as they are, then the
    difference). Flat arrays of one size and dtype."""
    zero = x.dtype.type(0)
    for p in range(out.shape[0]):
        v = x[_u(p)]
        v = zero if v < zero else v
        out[_u(p)] = v - out[_u(p)] * s[_u(p)]


@jit_ieee
def layer_norm_rows(x, scale, bias, has_bias, eps, out, mean, inv, sq, r0, r1):
    """Rows ``r0:r1`` of the float32 layer norm over the last axis, in the reference's passes
    (``hetero.ops.misc._layer_norm_kernel``): ``mean = (0 + pairwise_sum(row)) / L`` (the
    division in float64, rounded once, as ``np.mean`` divides by an ``intp`` count), ``c = row -
    mean``, ``var`` the same mean of the rounded squares ``c * c``, ``inv = 1 / sqrt(var + eps)``,
    ``out = (c * inv) * scale (+ bias)``. ``x``, ``out``: ``(R, L)``; ``scale``, ``bias``:
    ``(L,)``; ``mean``, ``inv``: ``(R,)``; ``sq``: scratch ``(L,)``; all C-contiguous float32."""
    length = x.shape[1]
    zero = x.dtype.type(0)
    one = x.dtype.type(1)
    for r in range(r0, r1):
        row = x[r]
        dst = out[r]
        m = x.dtype.type(float(zero + _pairwise_sum(row, 0, length)) / float(length))
        for p in range(length):
            c = row[p] - m
            dst[p] = c
            sq[p] = c * c
        v = x.dtype.type(float(zero + _pairwise_sum(sq, 0, length)) / float(length))
        iv = one / math.sqrt(v + eps)
        if has_bias:
            for p in range(length):
                dst[p] = ((dst[p] * iv) * scale[p]) + bias[p]
        else:
            for p in range(length):
                dst[p] = (dst[p] * iv) * scale[p]
        mean[r] = m
        inv[r] = iv
