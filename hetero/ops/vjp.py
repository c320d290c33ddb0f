"""Reverse-mode rules (vector-Jacobian products) for the registry's ops.

Each rule is ``rule(ins, outs, cts, attrs) -> input cotangents``: ``ins`` and ``outs`` are the
node's input and output Tensors, ``cts`` the cotangents of its outputs (None where an output has
none), and it returns one cotangent per input (None for inputs with no gradient, such as integer
indices). Rules build the backward pass with ``hetero.tracing.apply``, so inside a trace it is
ordinary graph nodes and outside one it runs eagerly. ``install()`` stores them in ``Op.vjp``.
"""

from __future__ import annotations

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
    parts = [c if c is not None else apply("mul", [o, _c(o, 0.0)])
             for c, o in zip(cts, outs, strict=True)]
    return [apply("concat", parts, {"axis": attrs["axis"]})]


def _slice(ins, outs, cts, attrs):
    x = ins[0]
    axes = attrs["axes"] if attrs["axes"] is not None else tuple(range(len(attrs["starts"])))
    steps = attrs["steps"] or (1,) * len(axes)
    before, after = [0] * x.ndim, [0] * x.ndim
    for a, st, en, sp in zip(axes, attrs["starts"], attrs["ends"], steps, strict=True):
        a %= x.ndim
        if sp != 1:
            raise NotImplementedError("slice with a step other than 1 has no gradient rule")
        lo, hi, _ = builtins_slice(st, en, 1).indices(x.shape[a])
        before[a], after[a] = lo, x.shape[a] - max(hi, lo)
    return [apply("pad", [cts[0]], {"pads": tuple(before + after), "mode": "constant",
                                     "value": 0.0})]


builtins_slice = slice


def _gather(ins, outs, cts, attrs):
    """Cotangent rows added back where they were read (``scatter_nd`` with ``add``); axis 0 and
    non-negative indices (what an embedding lookup is)."""
    x, idx = ins
    if attrs["axis"] % x.ndim != 0:
        raise NotImplementedError("gather's gradient rule covers axis 0 only")
    zeros = np.zeros(x.shape, x.dtype)
    where = apply("unsqueeze", [apply("cast", [idx], {"to": "int64"})], {"axes": (idx.ndim,)})
    return [apply("scatter_nd", [zeros, where, cts[0]], {"reduction": "add"}), None]


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
    extra = tuple(x.shape[2 + i] - (s[i] * ((oh, ow)[i] - 1) + d[i] * ((kh, kw)[i] - 1) + 1
                                   - p[i] - p[i + 2]) for i in range(2))
    dx = apply("conv_transpose", [g, w], {"strides": s, "pads": p, "dilations": d,
                                          "output_padding": extra, "groups": groups})
    cin, cout = x.shape[1] // groups, w.shape[0] // groups
    xt = apply("transpose", [x], {"perm": (1, 0, 2, 3)})
    gt = apply("transpose", [g], {"perm": (1, 0, 2, 3)})
    parts = []
    for k in range(groups):
        xk = xt if groups == 1 else apply("slice", [xt], {"starts": (k * cin,),
                                                         "ends": ((k + 1) * cin,), "axes": (0,)})
        gk = gt if groups == 1 else apply("slice", [gt], {"starts": (k * cout,),
                                                         "ends": ((k + 1) * cout,), "axes": (0,)})
        r = apply("conv2d", [xk, gk], {"strides": d, "dilations": s, "pads": p})
        r = apply("slice", [r], {"starts": (0, 0), "ends": (kh, kw), "axes": (2, 3)})
        parts.append(apply("transpose", [r], {"perm": (1, 0, 2, 3)}))
    dw = parts[0] if groups == 1 else apply("concat", parts, {"axis": 0})
    res = [dx, dw]
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
    x = ins[0]
    kh, kw = attrs["kernel_shape"]
    if attrs["ceil_mode"] or (any(attrs["pads"]) and not attrs["count_include_pad"]):
        raise NotImplementedError("avg_pool2d's gradient rule needs ceil_mode=0 and either no "
                                  "padding or count_include_pad=1")
    kernel = np.full((x.shape[1], 1, kh, kw), 1.0 / (kh * kw))
    return [_scatter_window(cts[0], x, attrs, kernel)]


def _max_pool2d(ins, outs, cts, attrs):
    """Each window's cotangent goes to the input(s) equal to its maximum (ties all get it)."""
    x, y, g = ins[0], outs[0], cts[0]
    if attrs["ceil_mode"]:
        raise NotImplementedError("max_pool2d's gradient rule needs ceil_mode=0")
    s, d, p = attrs["strides"], attrs["dilations"], attrs["pads"]
    kh, kw = attrs["kernel_shape"]
    xp = x
    if any(p):
        xp = apply("pad", [x], {"pads": (0, 0, p[0], p[1], 0, 0, p[2], p[3]), "mode": "constant",
                                "value": float("-inf")})
    oh, ow = y.shape[2], y.shape[3]
    total = None
    for i in range(kh):
        for j in range(kw):
            win = apply("slice", [xp], {"starts": (i * d[0], j * d[1]),
                                        "ends": (i * d[0] + s[0] * (oh - 1) + 1,
                                                 j * d[1] + s[1] * (ow - 1) + 1),
                                        "axes": (2, 3), "steps": (s[0], s[1])})
            hit = apply("where", [apply("equal", [win, y]), g, _c(g, 0.0)])
            kernel = np.zeros((x.shape[1], 1, kh, kw))
            kernel[:, :, i, j] = 1.0
            back = _scatter_window(hit, x, attrs, kernel)
            total = back if total is None else apply("add", [total, back])
    return [total]


def _reshape_like(ins, outs, cts, attrs):
    return [apply("reshape", [cts[0]], {"shape": ins[0].shape})]


def _cast(ins, outs, cts, attrs):
    if ins[0].dtype.kind != "f":
        return [None]
    return [apply("cast", [cts[0]], {"to": str(ins[0].dtype)})]


RULES = {
    "conv2d": _conv2d, "avg_pool2d": _avg_pool2d, "max_pool2d": _max_pool2d,
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
}


def install() -> None:
    """Store every rule in its op's registry entry."""
    for name, rule in RULES.items():
        REGISTRY[name].vjp = rule


install()
