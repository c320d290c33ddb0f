"""Reverse-mode rules (vector-Jacobian products) for the registry's ops.

Each rule is ``rule(ins, outs, cts, attrs) -> input cotangents``: ``ins`` and ``outs`` are the
node's input and output Tensors, ``cts`` the cotangents of its outputs (None where an output has
none), and it returns one cotangent per input (None for inputs with no gradient, such as integer
indices). Rules build the backward pass with ``hetero.tracing.apply``, so inside a trace it is
ordinary graph nodes and outside one it runs eagerly. ``install()`` stores them in ``Op.vjp``.
"""

from __future__ import annotations

import builtins
from typing import Any

import numpy as np

from hetero.ops.registry import REGISTRY
from hetero.tracing import apply


def _sum_to(ct: Any, shape: tuple[int, ...]) -> Any:
    """``ct`` summed over the axes NumPy broadcasting added to reach its shape from ``shape``."""
    if ct.shape == tuple(shape):
        return ct
    lead = ct.ndim - len(shape)
    axes = tuple(range(lead)) + tuple(lead + i for i, d in enumerate(shape)
                                      if d == 1 and ct.shape[lead + i] != 1)
    if axes:
        ct = apply("sum", [ct], {"axes": axes, "keepdims": 1})
    return apply("reshape", [ct], {"shape": tuple(shape)})


def _c(x: Any, v: float) -> np.ndarray:
    return np.asarray(v, dtype=x.dtype)


def _add(ins, outs, cts, attrs):
    return [_sum_to(cts[0], ins[0].shape), _sum_to(cts[0], ins[1].shape)]


def _sub(ins, outs, cts, attrs):
    return [_sum_to(cts[0], ins[0].shape),
            _sum_to(apply("neg", [cts[0]]), ins[1].shape)]


def _mul(ins, outs, cts, attrs):
    a, b = ins
    return [_sum_to(apply("mul", [cts[0], b]), a.shape),
            _sum_to(apply("mul", [cts[0], a]), b.shape)]


def _div(ins, outs, cts, attrs):
    a, b = ins
    ga = apply("div", [cts[0], b])
    gb = apply("neg", [apply("mul", [ga, outs[0]])])
    return [_sum_to(ga, a.shape), _sum_to(gb, b.shape)]


def _unary(f):
    def rule(ins, outs, cts, attrs):
        return [apply("mul", [cts[0], f(ins[0], outs[0], attrs)])]
    return rule


def _relu_d(x, y, attrs):
    return apply("cast", [apply("greater", [x, _c(x, 0.0)])], {"to": str(x.dtype)})


def _sigmoid_d(x, y, attrs):
    return apply("mul", [y, apply("sub", [_c(y, 1.0), y])])


def _tanh_d(x, y, attrs):
    return apply("sub", [_c(y, 1.0), apply("mul", [y, y])])


def _gelu_d(x, y, attrs):
    if attrs["approximate"] == "tanh":
        # y = x/2 (1 + tanh(u)), u = c (x + k x^3): y' = (1 + t)/2 + x/2 (1 - t^2) c (1 + 3k x^2)
        c, k = np.sqrt(2.0 / np.pi), 0.044715
        x2 = apply("mul", [x, x])
        t = apply("tanh", [apply("mul", [_c(x, c), apply("add", [x, apply(
            "mul", [_c(x, k), apply("mul", [x2, x])])])])])
        du = apply("mul", [_c(x, c), apply("add", [_c(x, 1.0), apply("mul", [_c(x, 3 * k), x2])])])
        sech2 = apply("sub", [_c(x, 1.0), apply("mul", [t, t])])
        return apply("add", [apply("mul", [_c(x, 0.5), apply("add", [_c(x, 1.0), t])]),
                             apply("mul", [apply("mul", [_c(x, 0.5), x]),
                                           apply("mul", [sech2, du])])])
    # d/dx x*Phi(x) = Phi(x) + x*phi(x)  (the exact, erf form)
    phi_cdf = apply("mul", [_c(x, 0.5), apply("add", [_c(x, 1.0), apply(
        "erf", [apply("mul", [x, _c(x, 1.0 / np.sqrt(2.0))])])])])
    pdf = apply("mul", [_c(x, 1.0 / np.sqrt(2.0 * np.pi)),
                        apply("exp", [apply("mul", [_c(x, -0.5), apply("mul", [x, x])])])])
    return apply("add", [phi_cdf, apply("mul", [x, pdf])])


def _matmul(ins, outs, cts, attrs):
    a, b = ins
    g = cts[0]
    if a.ndim == 1 or b.ndim == 1:
        a2 = apply("unsqueeze", [a], {"axes": (0,)}) if a.ndim == 1 else a
        b2 = apply("unsqueeze", [b], {"axes": (1,)}) if b.ndim == 1 else b
        g2 = g
        if a.ndim == 1:
            g2 = apply("unsqueeze", [g2], {"axes": (g2.ndim - 1 if b.ndim != 1 else 0,)})
        if b.ndim == 1:
            g2 = apply("unsqueeze", [g2], {"axes": (g2.ndim,)})
        ga, gb = _matmul([a2, b2], [None], [g2], attrs)
        return [apply("reshape", [ga], {"shape": a.shape}),
                apply("reshape", [gb], {"shape": b.shape})]
    ga = apply("matmul", [g, _t(b)])
    gb = apply("matmul", [_t(a), g])
    return [_sum_to(ga, a.shape), _sum_to(gb, b.shape)]


def _t(x):
    perm = tuple(range(x.ndim - 2)) + (x.ndim - 1, x.ndim - 2)
    return apply("transpose", [x], {"perm": perm})


def _axes_of(x, attrs):
    axes = attrs["axes"]
    if axes is None:
        return tuple(range(x.ndim))
    return tuple(a % x.ndim for a in axes)


def _expand_back(ct, x, attrs):
    """A reduction's cotangent reshaped to keep the reduced axes and broadcast to ``x``."""
    axes = _axes_of(x, attrs)
    kept = tuple(1 if i in axes else d for i, d in enumerate(x.shape))
    ct = apply("reshape", [ct], {"shape": kept})
    return apply("expand", [ct], {"shape": x.shape})


def _sum(ins, outs, cts, attrs):
    return [_expand_back(cts[0], ins[0], attrs)]


def _mean(ins, outs, cts, attrs):
    x = ins[0]
    n = int(np.prod([x.shape[a] for a in _axes_of(x, attrs)]))
    return [apply("mul", [_expand_back(cts[0], x, attrs), _c(x, 1.0 / max(n, 1))])]


def _reshape(ins, outs, cts, attrs):
    return [apply("reshape", [cts[0]], {"shape": ins[0].shape})]


def _transpose(ins, outs, cts, attrs):
    perm = attrs["perm"]
    if perm is None:
        perm = tuple(reversed(range(ins[0].ndim)))
    inv = tuple(int(i) for i in np.argsort(perm))
    return [apply("transpose", [cts[0]], {"perm": inv})]


def _softmax(ins, outs, cts, attrs):
    y, g = outs[0], cts[0]
    s = apply("sum", [apply("mul", [g, y])], {"axes": (attrs["axis"],), "keepdims": 1})
    return [apply("mul", [y, apply("sub", [g, s])])]


def _log_softmax(ins, outs, cts, attrs):
    y, g = outs[0], cts[0]
    s = apply("sum", [g], {"axes": (attrs["axis"],), "keepdims": 1})
    return [apply("sub", [g, apply("mul", [apply("exp", [y]), s])])]


def _where(ins, outs, cts, attrs):
    c, a, b = ins
    zero = _c(cts[0], 0.0)
    return [None, _sum_to(apply("where", [c, cts[0], zero]), a.shape),
            _sum_to(apply("where", [c, zero, cts[0]]), b.shape)]


def _gemm(ins, outs, cts, attrs):
    a, b = ins[0], ins[1]
    g = cts[0]
    if attrs["alpha"] != 1.0:
        g = apply("mul", [g, _c(g, attrs["alpha"])])
    at = apply("transpose", [a], {"perm": (1, 0)}) if attrs["trans_a"] else a
    bt = apply("transpose", [b], {"perm": (1, 0)}) if attrs["trans_b"] else b
    ga = apply("matmul", [g, _t(bt)])  # d/d(at)
    gb = apply("matmul", [_t(at), g])  # d/d(bt)
    res = [_t(ga) if attrs["trans_a"] else ga, _t(gb) if attrs["trans_b"] else gb]
    if len(ins) == 3:
        gc = cts[0] if attrs["beta"] == 1.0 else apply("mul", [cts[0], _c(g, attrs["beta"])])
        res.append(_sum_to(gc, ins[2].shape))
    return res


def _concat(ins, outs, cts, attrs):
    axis = attrs["axis"] % outs[0].ndim
    res, start = [], 0
    for x in ins:
        end = start + x.shape[axis]
        res.append(apply("slice", [cts[0]], {"starts": (start,), "ends": (end,),
                                             "axes": (axis,)}))
        start = end
    return res


def _split(ins, outs, cts, attrs):
    parts = [c if c is not None else apply("expand", [_c(o, 0.0)], {"shape": o.shape})
             for c, o in zip(cts, outs, strict=True)]
    return [apply("concat", parts, {"axis": attrs["axis"]})]


def _slice(ins, outs, cts, attrs):
    x = ins[0]
    axes = attrs["axes"] if attrs["axes"] is not None else tuple(range(len(attrs["starts"])))
    steps = attrs["steps"] or (1,) * len(axes)
    before, after = [0] * x.ndim, [0] * x.ndim
    strided = []
    for a, st, en, sp in zip(axes, attrs["starts"], attrs["ends"], steps, strict=True):
        a %= x.ndim
        if sp != 1:  # ONNX clamps the bounds as Python slicing does
            strided.append((a, np.arange(x.shape[a])[builtins_slice(st, en, sp)]))
            continue
        lo, hi, _ = builtins_slice(st, en, 1).indices(x.shape[a])
        before[a], after[a] = lo, x.shape[a] - max(hi, lo)
    ct = cts[0]
    if any(before) or any(after):
        ct = apply("pad", [ct], {"pads": tuple(before + after), "mode": "constant", "value": 0.0})
    for a, idx in strided:
        ct = _embed(ct, a, idx, x.shape[a])
    return [ct]


def _embed(ct, axis, idx, n):
    """``ct`` put back at positions ``idx`` of an axis of length ``n`` (zeros elsewhere, repeats
    added): ``scatter_nd`` over that axis moved to the front."""
    perm = (axis,) + tuple(i for i in range(ct.ndim) if i != axis)
    if axis:
        ct = apply("transpose", [ct], {"perm": perm})
    zeros = np.zeros((n,) + tuple(ct.shape[idx.ndim:]), ct.dtype)
    where = apply("unsqueeze", [apply("cast", [idx], {"to": "int64"})], {"axes": (idx.ndim,)})
    out = apply("scatter_nd", [zeros, where, ct], {"reduction": "add"})
    if axis:
        out = apply("transpose", [out], {"perm": tuple(int(i) for i in np.argsort(perm))})
    return out


builtins_slice = slice


def _gather(ins, outs, cts, attrs):
    """Cotangent slices added back where they were read (``scatter_nd`` with ``add`` over the
    gathered axis moved to the front; an embedding lookup is axis 0)."""
    x, idx = ins
    k, r = attrs["axis"] % x.ndim, idx.ndim
    ct = cts[0]
    if k:  # the index dims to the front, then x's other axes in order
        perm = tuple(range(k, k + r)) + tuple(range(k)) + tuple(range(k + r, ct.ndim))
        ct = apply("transpose", [ct], {"perm": perm})
    xperm = (k,) + tuple(i for i in range(x.ndim) if i != k)
    zeros = np.zeros(tuple(x.shape[i] for i in xperm), x.dtype)
    where = apply("unsqueeze", [apply("cast", [idx], {"to": "int64"})], {"axes": (r,)})
    out = apply("scatter_nd", [zeros, where, ct], {"reduction": "add"})
    if k:
        out = apply("transpose", [out], {"perm": tuple(int(i) for i in np.argsort(xperm))})
    return [out, None]


def _layer_norm(ins, outs, cts, attrs):
    x, scale = ins[0], ins[1]
    axis = attrs["axis"] % x.ndim
    axes = tuple(range(axis, x.ndim))
    lead = tuple(range(axis))
    g = cts[0]
    mu = apply("mean", [x], {"axes": axes, "keepdims": 1})
    xc = apply("sub", [x, mu])
    var = apply("mean", [apply("mul", [xc, xc])], {"axes": axes, "keepdims": 1})
    rstd = apply("reciprocal", [apply("sqrt", [apply("add", [var, _c(x, attrs["epsilon"])])])])
    xhat = apply("mul", [xc, rstd])
    dxhat = apply("mul", [g, scale])
    m1 = apply("mean", [dxhat], {"axes": axes, "keepdims": 1})
    m2 = apply("mean", [apply("mul", [dxhat, xhat])], {"axes": axes, "keepdims": 1})
    dx = apply("mul", [rstd, apply("sub", [apply("sub", [dxhat, m1]), apply("mul", [xhat, m2])])])
    gs = apply("mul", [g, xhat])
    res = [dx, _sum_to(apply("sum", [gs], {"axes": lead, "keepdims": 0}) if lead else gs,
                       scale.shape)]
    if len(ins) == 3:
        gb = apply("sum", [g], {"axes": lead, "keepdims": 0}) if lead else g
        res.append(_sum_to(gb, ins[2].shape))
    return res


def _conv2d(ins, outs, cts, attrs):
    """dx: the transposed convolution of the cotangent with the same weight; dw: per group, a
    convolution of the input with the cotangent, batch and channels swapped and strides and
    dilations exchanged, cut to the kernel; db: the cotangent summed over N, H, W."""
    if attrs["activation"] != "none":
        raise NotImplementedError("conv2d with a fused activation has no gradient rule "
                                  "(differentiate the unfused graph)")
    x, w = ins[0], ins[1]
    g = cts[0]
    s, d, p = attrs["strides"], attrs["dilations"], attrs["pads"]
    groups = attrs["groups"]
    kh, kw = w.shape[2], w.shape[3]
    oh, ow = g.shape[2], g.shape[3]
    reach = (d[0] * (kh - 1), d[1] * (kw - 1))
    if tuple(s) == (1, 1) and all(p[i] <= reach[i % 2] for i in range(4)):
        dx = _conv_input_grad_stride1(g, w, d, p, reach, groups)
    else:
        extra = tuple(x.shape[2 + i] - (s[i] * ((oh, ow)[i] - 1) + d[i] * ((kh, kw)[i] - 1) + 1
                                       - p[i] - p[i + 2]) for i in range(2))
        dx = apply("conv_transpose", [g, w], {"strides": s, "pads": p, "dilations": d,
                                              "output_padding": extra, "groups": groups})
    res = [dx, _conv_weight_grad(x, g, (kh, kw), s, d, p, groups)]
    if len(ins) == 3:
        res.append(apply("sum", [g], {"axes": (0, 2, 3), "keepdims": 0}))
    return res


def _conv_input_grad_stride1(g, w, d, p, reach, groups):
    """The input cotangent of a stride-1 conv2d as a convolution: the cotangent convolved with
    the weights flipped in space and with their channel axes swapped per group, padded by
    ``dilation * (kernel - 1) - pad`` on each side. It takes conv2d's kernels (banded im2col
    GEMMs, the compiled depthwise loop) where the transposed convolution adds one strided tap
    at a time."""
    o, cg, kh, kw = w.shape
    og = o // groups
    flipped = apply("slice", [w], {"starts": (-1, -1), "ends": (-(2**62), -(2**62)),
                                   "axes": (2, 3), "steps": (-1, -1)})
    if groups == 1:
        wt = apply("transpose", [flipped], {"perm": (1, 0, 2, 3)})
    else:  # (G, Og, Cg, kh, kw) -> (G, Cg, Og, kh, kw) -> (C, Og, kh, kw)
        five = apply("reshape", [flipped], {"shape": (groups, og, cg, kh, kw)})
        wt = apply("reshape", [apply("transpose", [five], {"perm": (0, 2, 1, 3, 4)})],
                   {"shape": (groups * cg, og, kh, kw)})
    pads = (reach[0] - p[0], reach[1] - p[1], reach[0] - p[2], reach[1] - p[3])
    return apply("conv2d", [g, wt], {"strides": (1, 1), "pads": pads, "dilations": tuple(d),
                                     "groups": groups})


def _conv_weight_grad(x, g, kernel, s, d, p, groups):
    """The weight cotangent of ``conv2d(x, w)`` whose output's cotangent is ``g``: one
    ``conv2d_weight_grad`` node (im2col and a GEMM per group, ``hetero.ops.grads``)."""
    return apply("conv2d_weight_grad", [x, g], {"kernel_shape": tuple(kernel), "strides": s,
                                                "pads": p, "dilations": d, "groups": groups})


def _conv2d_weight_grad(ins, outs, cts, attrs):
    """dW = corr(x, g) is linear in both: the cotangent of g is conv2d(x, ct) and that of x
    conv2d's input cotangent under the weights ct (a transposed convolution)."""
    x, g = ins
    ct = cts[0]
    s, p, d = attrs["strides"], attrs["pads"], attrs["dilations"]
    groups = attrs["groups"]
    dg = apply("conv2d", [x, ct], {"strides": s, "pads": p, "dilations": d, "groups": groups})
    kh, kw = attrs["kernel_shape"]
    oh, ow = g.shape[2], g.shape[3]
    extra = tuple(x.shape[2 + i] - (s[i] * ((oh, ow)[i] - 1) + d[i] * ((kh, kw)[i] - 1) + 1
                                   - p[i] - p[i + 2]) for i in range(2))
    dx = apply("conv_transpose", [g, ct], {"strides": s, "pads": p, "dilations": d,
                                           "output_padding": extra, "groups": groups})
    return [dx, dg]


def _conv_transpose(ins, outs, cts, attrs):
    """y = conv2d's input-adjoint of x under w: dx = conv2d(ct, w) (same geometry), dw = conv2d's
    weight cotangent with ct as its input and x as its output's cotangent; 2-D only."""
    x, w = ins[0], ins[1]
    g = cts[0]
    if x.ndim != 4:
        raise NotImplementedError("conv_transpose's gradient rule covers 2-D (NCHW) only")
    s = tuple(attrs["strides"]) or (1, 1)
    d = tuple(attrs["dilations"]) or (1, 1)
    p = tuple(attrs["pads"]) or (0, 0, 0, 0)
    if min(p) < 0:
        raise NotImplementedError("conv_transpose with negative pads has no gradient rule")
    groups = attrs["groups"]
    dx = apply("conv2d", [g, w], {"strides": s, "pads": p, "dilations": d, "groups": groups})
    res = [dx, _conv_weight_grad(g, x, w.shape[2:], s, d, p, groups)]
    if len(ins) == 3:
        res.append(apply("sum", [g], {"axes": (0, 2, 3), "keepdims": 0}))
    return res


def _scatter_window(part, x, attrs, kernel):
    """``part`` (one value per output position) sent back to the input positions a pooling window
    read, weighted by ``kernel`` (C x 1 x kh x kw): a depthwise transposed convolution."""
    s, d, p = attrs["strides"], attrs["dilations"], attrs["pads"]
    kh, kw = kernel.shape[2], kernel.shape[3]
    oh, ow = part.shape[2], part.shape[3]
    extra = tuple(x.shape[2 + i] - (s[i] * ((oh, ow)[i] - 1) + d[i] * ((kh, kw)[i] - 1) + 1
                                   - p[i] - p[i + 2]) for i in range(2))
    return apply("conv_transpose", [part, kernel.astype(x.dtype)],
                 {"strides": s, "pads": p, "dilations": d, "output_padding": extra,
                  "groups": x.shape[1]})


def _avg_pool2d(ins, outs, cts, attrs):
    x, g = ins[0], cts[0]
    kh, kw = attrs["kernel_shape"]
    if attrs["ceil_mode"]:
        raise NotImplementedError("avg_pool2d's gradient rule needs ceil_mode=0")
    if attrs["count_include_pad"] or not any(attrs["pads"]):
        kernel = np.full((x.shape[1], 1, kh, kw), 1.0 / (kh * kw))
        return [_scatter_window(g, x, attrs, kernel)]
    # each window divides by the inputs it covers (padding not counted): a static (oh, ow) table
    s, d, p = attrs["strides"], attrs["dilations"], attrs["pads"]

    def covered(n, k, i):
        return np.array([builtins.sum(0 <= o * s[i] - p[i] + t * d[i] < n for t in range(k))
                         for o in range(g.shape[2 + i])])
    counts = np.outer(covered(x.shape[2], kh, 0), covered(x.shape[3], kw, 1))
    share = apply("mul", [g, (1.0 / counts).astype(g.dtype)])
    return [_scatter_window(share, x, attrs, np.ones((x.shape[1], 1, kh, kw)))]


def _max_pool2d(ins, outs, cts, attrs):
    """Each window's cotangent goes to the input(s) equal to its maximum, shared equally among
    ties (JAX's convention for max; PyTorch gives all of it to the first): one
    ``max_pool2d_grad`` node (``hetero.ops.grads``)."""
    if attrs["ceil_mode"]:
        raise NotImplementedError("max_pool2d's gradient rule needs ceil_mode=0")
    window = {k: attrs[k] for k in ("kernel_shape", "strides", "pads", "dilations")}
    return [apply("max_pool2d_grad", [ins[0], outs[0], cts[0]], window)]


def _max_pool2d_grad(ins, outs, cts, attrs):
    """Linear in the cotangent g: its cotangent gathers ct back through the same windows (each
    window's share of the inputs equal to its maximum); piecewise constant in x and y, whose
    cotangents are zero."""
    x, y, g = ins
    ct = cts[0]
    kh, kw = attrs["kernel_shape"]
    s, d, p = attrs["strides"], attrs["dilations"], attrs["pads"]
    xp_, cp_ = x, ct
    if any(p):
        pads = (0, 0, p[0], p[1], 0, 0, p[2], p[3])
        xp_ = apply("pad", [x], {"pads": pads, "mode": "constant", "value": float("-inf")})
        cp_ = apply("pad", [ct], {"pads": pads, "mode": "constant", "value": 0.0})
    oh, ow = y.shape[2], y.shape[3]
    count = total = None
    for i in range(kh):
        for j in range(kw):
            window = {"starts": (i * d[0], j * d[1]),
                      "ends": (i * d[0] + s[0] * (oh - 1) + 1, j * d[1] + s[1] * (ow - 1) + 1),
                      "axes": (2, 3), "steps": (s[0], s[1])}
            hit = apply("equal", [apply("slice", [xp_], window), y])
            one = apply("cast", [hit], {"to": str(g.dtype)})
            picked = apply("where", [hit, apply("slice", [cp_], window), _c(g, 0.0)])
            count = one if count is None else apply("add", [count, one])
            total = picked if total is None else apply("add", [total, picked])
    dg = apply("div", [total, apply("maximum", [count, _c(g, 1.0)])])
    zeros = [apply("mul", [t, _c(t, 0.0)]) for t in (x, y)]
    return [zeros[0], zeros[1], dg]


def _max_reduce(ins, outs, cts, attrs):
    """max/min over axes: the cotangent goes to the entries equal to the result, shared equally
    among ties (JAX's convention)."""
    x = ins[0]
    hit = apply("equal", [x, _expand_back(outs[0], x, attrs)])
    kept = {"axes": _axes_of(x, attrs), "keepdims": 1}
    count = apply("sum", [apply("cast", [hit], {"to": str(x.dtype)})], kept)
    share = apply("div", [_expand_back(cts[0], x, attrs),
                          apply("expand", [apply("maximum", [count, _c(x, 1.0)])],
                                {"shape": x.shape})])
    return [apply("where", [hit, share, _c(x, 0.0)])]


def _pow(ins, outs, cts, attrs):
    """d(a**b)/da = b * a**(b-1) (b == 0 gives 0, also at a == 0); d/db = a**b * log(a) for
    a > 0 and 0 elsewhere (a constant exponent's cotangent is dropped)."""
    a, b = ins
    g = cts[0]
    if a.dtype.kind != "f":
        return [None, None]
    zero_b = apply("equal", [b, _c(b, 0.0)])
    exp = apply("where", [zero_b, _c(b, 1.0), apply("sub", [b, _c(b, 1.0)])])
    ga = apply("mul", [g, apply("mul", [b, apply("pow", [a, exp])])])
    pos = apply("greater", [a, _c(a, 0.0)])
    loga = apply("log", [apply("where", [pos, a, _c(a, 1.0)])])
    gb = apply("mul", [g, apply("mul", [outs[0], loga])])
    return [_sum_to(ga, a.shape), _sum_to(gb, b.shape)]


def _pick(op):
    """maximum / minimum: the cotangent goes to the chosen operand, halved on ties."""
    def rule(ins, outs, cts, attrs):
        a, b = ins
        g = cts[0]
        half = apply("mul", [g, _c(g, 0.5)])
        tie = apply("equal", [a, b])
        a_wins = apply(op, [a, b])
        ga = apply("where", [tie, half, apply("where", [a_wins, g, _c(g, 0.0)])])
        gb = apply("where", [tie, half, apply("where", [a_wins, _c(g, 0.0), g])])
        return [_sum_to(ga, a.shape), _sum_to(gb, b.shape)]
    return rule


def _where_d(cond, a, b):
    def d(x, y, attrs):
        return apply("where", [cond(x, attrs), a(x, y, attrs), b(x, y, attrs)])
    return d


def _clip_d(x, y, attrs):
    inside = None
    for bound, cmp in ((attrs["min"], "greater_equal"), (attrs["max"], "less_equal")):
        if bound is not None:
            m = apply(cmp, [x, _c(x, bound)])
            inside = m if inside is None else apply("logical_and", [inside, m])
    if inside is None:
        return apply("expand", [_c(x, 1.0)], {"shape": x.shape})
    return apply("cast", [inside], {"to": str(x.dtype)})


def _pad(ins, outs, cts, attrs):
    """Constant padding: the cotangent cut back (and a crop's zeros padded back): pad(-pads)."""
    if attrs["mode"] != "constant":
        raise NotImplementedError(f"pad mode {attrs['mode']!r} has no gradient rule")
    return [apply("pad", [cts[0]], {"pads": tuple(-int(v) for v in attrs["pads"]),
                                     "mode": "constant", "value": 0.0})] + [None] * (len(ins) - 1)


def _tile(ins, outs, cts, attrs):
    """The cotangent viewed as (r0, d0, r1, d1, ...) and summed over the repeats."""
    x = ins[0]
    reps = tuple(int(r) for r in attrs["repeats"])
    split = tuple(v for r, d in zip(reps, x.shape, strict=True) for v in (r, d))
    ct = apply("reshape", [cts[0]], {"shape": split})
    ct = apply("sum", [ct], {"axes": tuple(range(0, 2 * x.ndim, 2)), "keepdims": 0})
    return [ct]


def _global_avg_pool(ins, outs, cts, attrs):
    x = ins[0]
    n = int(np.prod(x.shape[2:]))
    return [apply("mul", [apply("expand", [cts[0]], {"shape": x.shape}), _c(x, 1.0 / n)])]


def _global_max_pool(ins, outs, cts, attrs):
    x = ins[0]
    axes = {"axes": tuple(range(2, x.ndim)), "keepdims": 1}
    return _max_reduce(ins, outs, cts, axes)


def _batch_norm(ins, outs, cts, attrs):
    """y = (x - mean) * rstd * scale + bias per channel (axis 1), rstd = 1 / sqrt(var + eps):
    cotangents for all five inputs, so statistics computed from x by ops (training mode) get
    their share too."""
    if attrs["activation"] != "none":
        raise NotImplementedError("batch_norm with a fused activation has no gradient rule")
    x, scale, _bias, mean, var = ins
    g = cts[0]
    chan = (1, x.shape[1]) + (1,) * (x.ndim - 2)
    others = {"axes": (0,) + tuple(range(2, x.ndim)), "keepdims": 0}

    def per_channel(v):
        return apply("reshape", [v], {"shape": chan})
    rstd = apply("reciprocal", [apply("sqrt", [apply("add", [var, _c(var, attrs["epsilon"])])])])
    a = apply("mul", [scale, rstd])
    xc = apply("sub", [x, per_channel(mean)])
    gx = apply("mul", [g, per_channel(a)])
    gs = apply("sum", [apply("mul", [g, apply("mul", [xc, per_channel(rstd)])])], others)
    gb = apply("sum", [g], others)
    gm = apply("neg", [apply("sum", [gx], others)])
    # d rstd / d var = -rstd^3 / 2
    gv = apply("mul", [apply("sum", [apply("mul", [gx, xc])], others),
                       apply("mul", [_c(var, -0.5), apply("mul", [rstd, rstd])])])
    return [gx, gs, gb, gm, gv]


def _reshape_like(ins, outs, cts, attrs):
    return [apply("reshape", [cts[0]], {"shape": ins[0].shape})]


def _cast(ins, outs, cts, attrs):
    if ins[0].dtype.kind != "f":
        return [None]
    return [apply("cast", [cts[0]], {"to": str(ins[0].dtype)})]


RULES = {
    "conv2d": _conv2d, "avg_pool2d": _avg_pool2d, "max_pool2d": _max_pool2d,
    "conv2d_weight_grad": _conv2d_weight_grad, "max_pool2d_grad": _max_pool2d_grad,
    "gemm": _gemm, "gather": _gather, "concat": _concat, "split": _split, "slice": _slice,
    "layer_norm": _layer_norm, "flatten": _reshape_like, "squeeze": _reshape_like,
    "unsqueeze": _reshape_like, "cast": _cast,
    "expand": lambda ins, outs, cts, attrs: [_sum_to(cts[0], ins[0].shape)],
    "add": _add, "sub": _sub, "mul": _mul, "div": _div,
    "neg": lambda ins, outs, cts, attrs: [apply("neg", [cts[0]])],
    "identity": lambda ins, outs, cts, attrs: [cts[0]],
    "exp": _unary(lambda x, y, a: y),
    "log": _unary(lambda x, y, a: apply("reciprocal", [x])),
    "sqrt": _unary(lambda x, y, a: apply("div", [_c(y, 0.5), y])),
    "reciprocal": _unary(lambda x, y, a: apply("neg", [apply("mul", [y, y])])),
    "relu": _unary(_relu_d), "sigmoid": _unary(_sigmoid_d), "tanh": _unary(_tanh_d),
    "gelu": _unary(_gelu_d),
    "matmul": _matmul, "sum": _sum, "mean": _mean,
    "reshape": _reshape, "transpose": _transpose,
    "softmax": _softmax, "log_softmax": _log_softmax, "where": _where,
    "max": _max_reduce, "min": _max_reduce, "pow": _pow,
    "abs": _unary(lambda x, y, a: apply("sign", [x])),
    "sin": _unary(lambda x, y, a: apply("cos", [x])),
    "cos": _unary(lambda x, y, a: apply("neg", [apply("sin", [x])])),
    "erf": _unary(lambda x, y, a: apply("mul", [_c(x, 2.0 / np.sqrt(np.pi)), apply(
        "exp", [apply("neg", [apply("mul", [x, x])])])])),
    "softplus": _unary(lambda x, y, a: apply("sigmoid", [x])),
    "leaky_relu": _unary(_where_d(lambda x, a: apply("greater_equal", [x, _c(x, 0.0)]),
                                  lambda x, y, a: _c(x, 1.0), lambda x, y, a: _c(x, a["alpha"]))),
    "elu": _unary(_where_d(lambda x, a: apply("greater", [x, _c(x, 0.0)]),
                           lambda x, y, a: _c(x, 1.0),
                           lambda x, y, a: apply("add", [y, _c(y, a["alpha"])]))),
    "clip": _unary(_clip_d),
    "dropout": lambda ins, outs, cts, attrs: [cts[0]],  # the op is inference-mode: x unchanged
    "add_n": lambda ins, outs, cts, attrs: [cts[0]] * len(ins),
    "pad": _pad, "tile": _tile, "batch_norm": _batch_norm, "conv_transpose": _conv_transpose,
    "global_avg_pool": _global_avg_pool, "global_max_pool": _global_max_pool,
    "maximum": _pick("greater"), "minimum": _pick("less"),
}


def install() -> None:
    """Store every rule in its op's registry entry."""
    for name, rule in RULES.items():
        REGISTRY[name].vjp = rule


install()
