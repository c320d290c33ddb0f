"""Ops the backward pass emits (``hetero.ops.vjp``), where the composition of general ops costs
several times the work:

- ``conv2d_weight_grad(x, g)``: the weight cotangent of ``conv2d(x, w)`` whose output's
  cotangent is ``g``: one im2col of ``x`` and, per group, one GEMM over every image and output
  position, ``dW = G (O x N*P) @ cols (N*P x C*KH*KW)``. (Written as a convolution of the
  transposed input by the transposed cotangent it is a convolution with an OH x OW kernel and
  the batch as channels, and slow.)
- ``max_pool2d_grad(x, y, g)``: the input cotangent of ``y = max_pool2d(x)``: each window's
  cotangent shared equally among the inputs equal to its maximum (JAX's convention for ties;
  PyTorch gives all of it to the first). One pass of strided slices per window tap, where the
  composition of general ops took a compare, a cast, a where and a depthwise transposed
  convolution per tap (examples/train_digits.py: 8 transposed convolutions, half of a
  training step's time).

Kernels are written once against the array namespace (NumPy or CuPy). Their VJP rules (for a
gradient of a gradient) are in ``hetero.ops.vjp``.
"""

from __future__ import annotations

import numpy as np

from hetero.errors import ShapeError
from hetero.graph import TensorSpec
from hetero.ops.nn import _accumulate_wide, _needed, _padded, _windows
from hetero.ops.registry import REQUIRED, Cost, Op, register, same_dtype

__all__: list[str] = []

_WINDOW = {"kernel_shape": REQUIRED, "strides": (1, 1), "pads": (0, 0, 0, 0),
           "dilations": (1, 1)}


def _geometry(attrs):
    kh, kw = attrs["kernel_shape"]
    s = tuple(attrs["strides"]) or (1, 1)
    p = tuple(attrs["pads"]) or (0, 0, 0, 0)
    d = tuple(attrs["dilations"]) or (1, 1)
    return kh, kw, s, p, d


def _weight_grad_infer(ins, attrs):
    x, g = ins
    dtype = same_dtype(ins, "conv2d_weight_grad inputs")
    if x.ndim != 4 or g.ndim != 4 or x.shape[0] != g.shape[0]:
        raise ShapeError(f"conv2d_weight_grad: input {x.shape} and cotangent {g.shape} must be "
                         "NCHW with one batch")
    groups = attrs["groups"]
    if groups < 1 or x.shape[1] % groups or g.shape[1] % groups:
        raise ShapeError(f"conv2d_weight_grad: {groups} groups do not divide channels "
                         f"{x.shape[1]} and {g.shape[1]}")
    kh, kw = attrs["kernel_shape"]
    return (TensorSpec((g.shape[1], x.shape[1] // groups, kh, kw), dtype),)


def _weight_grad_kernel(xp, ins, attrs, outs):
    x, g = ins
    out = outs[0]
    kh, kw, s, p, d = _geometry(attrs)
    groups = attrs["groups"]
    n, c = x.shape[:2]
    o, oh, ow = g.shape[1], g.shape[2], g.shape[3]
    cg, og, pix = c // groups, o // groups, oh * ow
    buf = _padded(xp, x, p, _needed(oh, kh, s[0], d[0]), _needed(ow, kw, s[1], d[1]), 0.0)
    view = _windows(xp, buf, oh, ow, (kh, kw), s, d)  # (N, C, KH, KW, OH, OW), no copy
    # (G, Cg*KH*KW, N*P): the patch matrices of every image side by side
    cols = xp.ascontiguousarray(
        view.reshape(n, groups, cg * kh * kw, pix).transpose(1, 2, 0, 3)
    ).reshape(groups, cg * kh * kw, n * pix)
    gg = xp.ascontiguousarray(g.reshape(n, groups, og, pix).transpose(1, 2, 0, 3)
                              ).reshape(groups, og, n * pix)
    xp.matmul(gg, cols.transpose(0, 2, 1), out=out.reshape(groups, og, cg * kh * kw))


def _weight_grad_cost(ins, outs, attrs):
    x, g = ins
    kh, kw = attrs["kernel_shape"]
    cg = x.shape[1] // attrs["groups"]
    flops = 2.0 * g.shape[0] * g.shape[1] * g.shape[2] * g.shape[3] * cg * kh * kw
    return Cost(flops=flops, bytes=float(sum(t.nbytes for t in ins) + outs[0].nbytes))


register(Op("conv2d_weight_grad", _weight_grad_infer, _accumulate_wide(_weight_grad_kernel),
            arity=(2, 2), attrs={**_WINDOW, "groups": 1}, cost=_weight_grad_cost,
            op_class="conv",
            doc="the weight cotangent of conv2d(x, w) given its output's cotangent g"))


def _pool_grad_infer(ins, attrs):
    x, y, g = ins
    same_dtype(ins, "max_pool2d_grad inputs")
    if x.ndim != 4 or y.shape != g.shape or y.shape[:2] != x.shape[:2]:
        raise ShapeError(f"max_pool2d_grad: input {x.shape}, output {y.shape} and cotangent "
                         f"{g.shape} do not fit")
    return (TensorSpec(x.shape, x.dtype),)


def _taps(attrs, oh, ow):
    """(i, j, slices into the padded input) of every window tap, in window order."""
    kh, kw, s, _, d = _geometry(attrs)
    for i in range(kh):
        for j in range(kw):
            yield (slice(None), slice(None),
                   slice(i * d[0], i * d[0] + s[0] * (oh - 1) + 1, s[0]),
                   slice(j * d[1], j * d[1] + s[1] * (ow - 1) + 1, s[1]))


def _pool_grad_kernel(xp, ins, attrs, outs):
    x, y, g = ins
    out = outs[0]
    kh, kw, s, p, d = _geometry(attrs)
    n, c, h, w = x.shape
    oh, ow = y.shape[2], y.shape[3]
    hb, wb = _needed(oh, kh, s[0], d[0]), _needed(ow, kw, s[1], d[1])
    buf = _padded(xp, x, p, hb, wb, -np.inf)
    taps = list(_taps(attrs, oh, ow))
    count = xp.zeros(y.shape, g.dtype)
    for tap in taps:
        count += buf[tap] == y
    share = g / xp.maximum(count, g.dtype.type(1))
    grad = xp.zeros(buf.shape, g.dtype)
    zero = g.dtype.type(0)
    for tap in taps:
        grad[tap] += xp.where(buf[tap] == y, share, zero)
    out[...] = grad[:, :, p[0]:p[0] + h, p[1]:p[1] + w]


def _pool_grad_cost(ins, outs, attrs):
    kh, kw = attrs["kernel_shape"]
    return Cost(flops=4.0 * ins[1].size * kh * kw,
                bytes=float(sum(t.nbytes for t in ins) + 2 * outs[0].nbytes))


register(Op("max_pool2d_grad", _pool_grad_infer, _pool_grad_kernel, arity=(3, 3),
            attrs=dict(_WINDOW), cost=_pool_grad_cost, op_class="reduce",
            doc="the input cotangent of y = max_pool2d(x) given y's cotangent g (ties share)"))

