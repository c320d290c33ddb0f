"""Reductions (``sum``, ``mean``, ``max``, ``min``) and ``softmax`` / ``log_softmax``.

Attributes follow ONNX: ``axes`` is None (reduce every axis) or a tuple of axes (negative counts
from the end), ``keepdims`` keeps reduced axes as size 1. Each kernel hands ``axis=`` and ``out=``
straight to the namespace's reduction. Reducing over an empty set gives the ONNX identity: 0 for
``sum``, NaN for ``mean``, -inf / +inf (or the dtype's extreme) for ``max`` / ``min``.
``softmax`` subtracts the maximum first, so large inputs do not overflow.
"""

from __future__ import annotations

import builtins

import numpy as np

from hetero.errors import ShapeError
from hetero.graph import TensorSpec
from hetero.ops.registry import Cost, Op, normalize_axis, register, require_float
from hetero.tracing import apply

__all__ = ["sum", "mean", "max", "min", "softmax", "log_softmax"]


def _normalize_axes(axes, ndim: int, name: str) -> tuple[int, ...]:
    if axes is None:
        return tuple(range(ndim))
    if isinstance(axes, (int, np.integer)):
        axes = (axes,)
    out = []
    for a in axes:
        if not isinstance(a, (int, np.integer)):
            raise ShapeError(f"{name} axes must be integers, got {axes!r}")
        if not -ndim <= a < ndim:
            raise ShapeError(f"{name} axis {a} is out of range for rank {ndim}")
        out.append(int(a) % ndim)
    if len(set(out)) != len(out):
        raise ShapeError(f"{name} axes {tuple(axes)} repeat an axis")
    return tuple(sorted(out))


def _reduce_infer(name: str):
    def infer(ins, attrs):
        (x,) = ins
        if name == "mean":
            require_float(x, name)
        elif x.dtype.kind == "b" and name == "sum":
            raise ShapeError("sum does not take bool inputs; cast them first")
        axes = _normalize_axes(attrs["axes"], x.ndim, name)
        if attrs["keepdims"]:
            shape = tuple(1 if i in axes else d for i, d in enumerate(x.shape))
        else:
            shape = tuple(d for i, d in enumerate(x.shape) if i not in axes)
        return (TensorSpec(shape, x.dtype),)
    return infer


def _reduce_cost(ins, outs, attrs):
    return Cost(flops=float(ins[0].size), bytes=float(ins[0].nbytes + outs[0].nbytes))


def _empty_identity(name: str, dtype: np.dtype):
    """What a reduction over no elements yields (ONNX ReduceMax/ReduceMin/ReduceMean)."""
    if name == "mean":
        return np.nan
    if dtype.kind == "f":
        return -np.inf if name == "max" else np.inf
    if dtype.kind == "b":
        return name == "min"
    info = np.iinfo(dtype)
    return info.min if name == "max" else info.max


def _axis_arg(axes):
    # NumPy and CuPy take None or a tuple; a list (from JSON) must become a tuple
    return None if axes is None else tuple(axes)


def _sum_kernel(xp, ins, attrs, outs):
    out = outs[0]
    xp.sum(ins[0], axis=_axis_arg(attrs["axes"]), dtype=out.dtype, out=out,
           keepdims=builtins.bool(attrs["keepdims"]))


def _extreme_kernel(name: str):
    def kernel(xp, ins, attrs, outs):
        x, out = ins[0], outs[0]
        if x.size == 0:
            out.fill(_empty_identity(name, out.dtype))
            return
        fn = xp.max if name == "max" else xp.min
        fn(x, axis=_axis_arg(attrs["axes"]), out=out, keepdims=builtins.bool(attrs["keepdims"]))
    return kernel


def _mean_kernel(xp, ins, attrs, outs):
    x, out = ins[0], outs[0]
    if x.size == 0:
        out.fill(np.nan)
        return
    xp.mean(x, axis=_axis_arg(attrs["axes"]), out=out, keepdims=builtins.bool(attrs["keepdims"]))


_REDUCE_ATTRS = {"axes": None, "keepdims": 0}
register(Op("sum", _reduce_infer("sum"), _sum_kernel, attrs=_REDUCE_ATTRS, cost=_reduce_cost,
            op_class="reduce", doc="sum over axes (ONNX ReduceSum)"))
register(Op("mean", _reduce_infer("mean"), _mean_kernel, attrs=_REDUCE_ATTRS, cost=_reduce_cost,
            op_class="reduce", doc="mean over axes (ONNX ReduceMean)"))
register(Op("max", _reduce_infer("max"), _extreme_kernel("max"), attrs=_REDUCE_ATTRS,
            cost=_reduce_cost, op_class="reduce", doc="maximum over axes (ONNX ReduceMax)"))
register(Op("min", _reduce_infer("min"), _extreme_kernel("min"), attrs=_REDUCE_ATTRS,
            cost=_reduce_cost, op_class="reduce", doc="minimum over axes (ONNX ReduceMin)"))


def _softmax_infer(name: str):
    def infer(ins, attrs):
        (x,) = ins
        require_float(x, name)
        if x.ndim == 0:
            raise ShapeError(f"{name} needs an input of rank >= 1")
        normalize_axis(attrs["axis"], x.ndim, name)
        return (TensorSpec(x.shape, x.dtype),)
    return infer


def _softmax_cost(ins, outs, attrs):
    return Cost(flops=5.0 * ins[0].size, bytes=float(ins[0].nbytes + 2 * outs[0].nbytes))


def _shifted(xp, ins, attrs, outs) -> bool:
    """``outs[0] = x - max(x)`` along the axis (what both softmaxes start from); False for an
    empty ``x``."""
    x, out = ins[0], outs[0]
    if x.size == 0:
        return False
    xp.subtract(x, xp.max(x, axis=attrs["axis"], keepdims=True), out=out)
    return True


def _softmax_kernel(xp, ins, attrs, outs):
    if _shifted(xp, ins, attrs, outs):
        out = outs[0]
        xp.exp(out, out=out)
        out /= xp.sum(out, axis=attrs["axis"], keepdims=True)


def _log_softmax_kernel(xp, ins, attrs, outs):
    if _shifted(xp, ins, attrs, outs):
        out = outs[0]
        out -= xp.log(xp.sum(xp.exp(out), axis=attrs["axis"], keepdims=True))


register(Op("softmax", _softmax_infer("softmax"), _softmax_kernel, attrs={"axis": -1},
            cost=_softmax_cost, op_class="reduce", doc="exp(x) / sum(exp(x)) along axis"))
register(Op("log_softmax", _softmax_infer("log_softmax"), _log_softmax_kernel, attrs={"axis": -1},
            cost=_softmax_cost, op_class="reduce", doc="log(softmax(x)) along axis"))


# ----------------------------------------------------------------------------------------------
# Public functions


def _one_of(axis, axes):
    if axis is not None and axes is not None:
        raise ShapeError("give the reduction axes as axis= or axes=, not both")
    return axes if axis is None else axis


def _reduce_attrs(axis, keepdims) -> dict:
    if axis is not None:
        axis = (axis,) if isinstance(axis, (int, np.integer)) else axis
    return {"axes": axis, "keepdims": int(builtins.bool(keepdims))}


def _reduction(name: str, what: str):
    def reduction(x, axis=None, keepdims=False, *, axes=None, device=None):
        return apply(name, (x,), _reduce_attrs(_one_of(axis, axes), keepdims), device=device)

    reduction.__name__ = reduction.__qualname__ = name
    reduction.__doc__ = (f"{what} over ``axis`` (an int, a tuple of ints, or None for all axes; "
                         "``axes=`` is the registry's name for it).")
    return reduction


sum = _reduction("sum", "Sum")
mean = _reduction("mean", "Mean")
max = _reduction("max", "Maximum")
min = _reduction("min", "Minimum")


def softmax(x, axis=-1, *, device=None):
    """``exp(x) / sum(exp(x))`` along ``axis``."""
    return apply("softmax", (x,), {"axis": axis}, device=device)


def log_softmax(x, axis=-1, *, device=None):
    """``log(softmax(x))`` along ``axis``, computed without forming ``softmax``."""
    return apply("log_softmax", (x,), {"axis": axis}, device=device)
