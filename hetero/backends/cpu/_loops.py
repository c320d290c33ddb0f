"""The compiled loops (numba, LLVM) behind ``hetero.backends.cpu``; imported only by its
``install()``, so nothing imports numba before a CPU worker runs a kernel.

Every loop computes the very values of the NumPy code it replaces, in the same floating-point
order (numba's default keeps IEEE semantics: no reassociation, no fused multiply-add), so a
compiled kernel and the reference kernel give the same bits. ``nogil``: the intra-op pieces run
them on several threads at once. ``cache``: compiled once per machine, then loaded from disk.

The loops index flat arrays with unsigned offsets: numba then emits no negative-index
wrap-around test and LLVM vectorises the inner loops (measured on a depthwise 3x3 of 144
channels at 56x56: 1.75 ms with per-row views, 0.99 ms flat).
"""

from __future__ import annotations

import numba
from numba import uint64 as _u

jit = numba.njit(cache=True, nogil=True)


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
NONE, RELU, LEAKY, CLIP = 0, 1, 2, 3


@jit
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


@jit
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


@jit
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
