"""Indexing ops with ONNX semantics: ``gather_nd``, ``scatter_nd``, ``topk``, ``cumsum`` and
``einsum``.

``gather_nd`` reads, and ``scatter_nd`` writes, slices of ``data`` addressed by the last axis of
``indices`` (each index tuple names ``k`` leading coordinates, after ``batch_dims`` batch axes
for ``gather_nd``); negative coordinates count from the end, and a coordinate out of range is a
ShapeError, never a read or write elsewhere. ``scatter_nd`` takes ONNX's ``reduction`` (none,
add, mul, max, min); with ``none`` and a repeated index the last update wins (ONNX leaves that
case undefined). ``topk`` returns the ``k`` largest (or smallest) values along an axis and their
int64 indices, equal values in index order (ONNX's rule). ``cumsum`` is ONNX CumSum, with
``exclusive`` and ``reverse``. ``einsum`` is ONNX Einsum (NumPy's subscripts: explicit ``->``
or implicit output, ``...`` broadcasting); its shapes are inferred from the equation here, so a
bad equation is a ShapeError before anything runs.

Every kernel is written once against the array namespace ``xp`` (NumPy or CuPy) and writes its
preallocated outputs.
"""

from __future__ import annotations

import math

import numpy as np

from hetero.errors import ShapeError
from hetero.graph import TensorSpec
from hetero.ops.registry import (
    REQUIRED,
    Cost,
    Op,
    broadcast_shapes,
    normalize_axis,
    register,
    same_dtype,
)
from hetero.tracing import apply

__all__ = ["gather_nd", "scatter_nd", "topk", "cumsum", "einsum"]


def _data_cost(ins, outs, attrs):
    return Cost(flops=0.0, bytes=float(sum(s.nbytes for s in ins) + sum(s.nbytes for s in outs)))


def _require_indices(spec: TensorSpec, name: str) -> None:
    if spec.dtype.kind not in "iu":
        raise ShapeError(f"{name} indices must be integers, got {spec.dtype.name}")
    if spec.ndim < 1:
        raise ShapeError(f"{name} indices must have rank >= 1 (their last axis holds the "
                         f"coordinates), got shape {spec.shape}")


def _coordinates(xp, idx, dims: tuple[int, ...], name: str):
    """``idx`` (..., k) as int64 with negative coordinates counted from the end of ``dims``;
    a coordinate outside ``[-d, d)`` is a ShapeError."""
    idx = idx.astype(xp.int64, copy=False)
    if idx.size == 0:
        return idx
    bound = xp.asarray(dims, dtype=xp.int64)
    if bool(xp.any((idx < -bound) | (idx >= bound))):
        raise ShapeError(f"{name}: an index is out of range for dimensions {dims}")
    return xp.where(idx < 0, idx + bound, idx)


# ----------------------------------------------------------------------------------------------
# gather_nd


def _gather_nd_infer(ins, attrs):
    data, idx = ins
    _require_indices(idx, "gather_nd")
    b = attrs["batch_dims"]
    if not 0 <= b < min(data.ndim, idx.ndim):
        raise ShapeError(f"gather_nd batch_dims {b} must be in [0, min(rank of data, rank of "
                         f"indices)) = [0, {min(data.ndim, idx.ndim)})")
    if data.shape[:b] != idx.shape[:b]:
        raise ShapeError(f"gather_nd: the first {b} (batch) dims of data {data.shape} and "
                         f"indices {idx.shape} differ")
    k = idx.shape[-1]
    if not 1 <= k <= data.ndim - b:
        raise ShapeError(f"gather_nd: indices' last dim {k} must be in [1, {data.ndim - b}] "
                         f"(data {data.shape}, batch_dims {b})")
    return (TensorSpec(idx.shape[:-1] + data.shape[b + k:], data.dtype),)


def _gather_nd_kernel(xp, ins, attrs, outs):
    data, idx = ins
    out = outs[0]
    b, k = attrs["batch_dims"], idx.shape[-1]
    batch = math.prod(data.shape[:b])
    rows = math.prod(idx.shape[b:-1])
    coords = _coordinates(xp, idx.reshape(batch, rows, k), data.shape[b:b + k], "gather_nd")
    flat = data.reshape((batch,) + data.shape[b:])
    key = (xp.arange(batch, dtype=xp.int64)[:, None],) + tuple(coords[..., j] for j in range(k))
    out[...] = flat[key].reshape(out.shape)


def _gather_nd_cost(ins, outs, attrs):
    return Cost(flops=0.0, bytes=float(ins[1].nbytes + 2 * outs[0].nbytes))


register(Op("gather_nd", _gather_nd_infer, _gather_nd_kernel, arity=(2, 2),
            attrs={"batch_dims": 0}, cost=_gather_nd_cost, op_class="data",
            doc="slices of data at the index tuples in the last axis of indices (ONNX GatherND)"))


# ----------------------------------------------------------------------------------------------
# scatter_nd

_REDUCTIONS = ("none", "add", "mul", "max", "min")


def _scatter_nd_infer(ins, attrs):
    data, idx, upd = ins
    _require_indices(idx, "scatter_nd")
    if attrs["reduction"] not in _REDUCTIONS:
        raise ShapeError(f"scatter_nd reduction {attrs['reduction']!r} is not one of "
                         f"{', '.join(_REDUCTIONS)}")
    k = idx.shape[-1]
    if not 1 <= k <= data.ndim:
        raise ShapeError(f"scatter_nd: indices' last dim {k} must be in [1, {data.ndim}] (the "
                         f"rank of data {data.shape})")
    want = idx.shape[:-1] + data.shape[k:]
    if upd.shape != want:
        raise ShapeError(f"scatter_nd: updates of shape {upd.shape} do not fit data "
                         f"{data.shape} and indices {idx.shape}: expected {want}")
    if upd.dtype != data.dtype:
        raise ShapeError(f"scatter_nd: updates ({upd.dtype.name}) and data "
                         f"({data.dtype.name}) have different dtypes")
    return (data,)


def _scatter_nd_kernel(xp, ins, attrs, outs):
    data, idx, upd = ins
    out = outs[0]
    xp.copyto(out, data)
    k = idx.shape[-1]
    rows = math.prod(idx.shape[:-1])
    if rows == 0:
        return
    coords = _coordinates(xp, idx.reshape(rows, k), data.shape[:k], "scatter_nd")
    upd = upd.reshape((rows,) + data.shape[k:])
    key = tuple(coords[:, j] for j in range(k))
    reduction = attrs["reduction"]
    if reduction == "none":
        out[key] = upd
    elif reduction == "mul":  # no multiply.at in every namespace: one update at a time
        for r in range(rows):
            at = tuple(c[r] for c in key)
            out[at] = out[at] * upd[r]
    else:  # repeated indices accumulate: ufunc.at, unbuffered
        {"add": xp.add, "max": xp.maximum, "min": xp.minimum}[reduction].at(out, key, upd)


register(Op("scatter_nd", _scatter_nd_infer, _scatter_nd_kernel, arity=(3, 3),
            attrs={"reduction": "none"}, cost=_data_cost, op_class="data",
            doc="data with the slices at the index tuples of indices replaced by (or reduced "
                "with) updates (ONNX ScatterND)"))


# ----------------------------------------------------------------------------------------------
# topk


def _topk_infer(ins, attrs):
    (x,) = ins
    if x.ndim == 0:
        raise ShapeError("topk of a rank-0 tensor: it has no axis")
    axis = normalize_axis(attrs["axis"], x.ndim, "topk")
    k = attrs["k"]
    if not 0 <= k <= x.shape[axis]:
        raise ShapeError(f"topk k={k} must be in [0, {x.shape[axis]}] (the size of axis {axis} "
                         f"of {x.shape})")
    if x.dtype.kind not in "iuf":
        raise ShapeError(f"topk takes numbers, got {x.dtype.name}")
    shape = x.shape[:axis] + (k,) + x.shape[axis + 1:]
    return (TensorSpec(shape, x.dtype), TensorSpec(shape, np.int64))


def _topk_kernel(xp, ins, attrs, outs):
    (x,) = ins
    values, indices = outs
    axis = attrs["axis"] % x.ndim
    k, n = attrs["k"], x.shape[axis]
    if k == 0:
        return
    if attrs["largest"]:
        # descending, equal values in index order: a stable ascending sort of the reversed axis,
        # read from its end
        order = xp.argsort(xp.flip(x, axis=axis), axis=axis, kind="stable")
        order = (n - 1) - xp.flip(order, axis=axis)
    else:
        order = xp.argsort(x, axis=axis, kind="stable")
    top = xp.take(order, xp.arange(k), axis=axis)
    indices[...] = top
    values[...] = xp.take_along_axis(x, top, axis=axis)


def _topk_cost(ins, outs, attrs):
    n = ins[0].size
    return Cost(flops=float(n * max(math.log2(max(ins[0].shape[attrs["axis"] % ins[0].ndim], 1)),
                                    1.0)),
                bytes=float(ins[0].nbytes + sum(s.nbytes for s in outs)))


register(Op("topk", _topk_infer, _topk_kernel, attrs={"k": REQUIRED, "axis": -1, "largest": 1,
                                                       "sorted": 1},
            cost=_topk_cost, op_class="reduce",
            doc="the k largest (or smallest) values along axis and their indices (ONNX TopK)"))


# ----------------------------------------------------------------------------------------------
# cumsum


def _cumsum_infer(ins, attrs):
    (x,) = ins
    normalize_axis(attrs["axis"], x.ndim, "cumsum")
    if x.dtype.kind not in "iuf":
        raise ShapeError(f"cumsum takes numbers, got {x.dtype.name}")
    return (x,)


def _cumsum_kernel(xp, ins, attrs, outs):
    (x,) = ins
    out = outs[0]
    axis = attrs["axis"] % max(x.ndim, 1)
    if x.ndim == 0:
        out[...] = 0 if attrs["exclusive"] else x
        return
    src = xp.flip(x, axis=axis) if attrs["reverse"] else x
    dst = xp.flip(out, axis=axis) if attrs["reverse"] else out  # a view: written through
    if attrs["exclusive"]:
        n = x.shape[axis]
        head = [slice(None)] * x.ndim
        head[axis] = slice(0, 1)
        dst[tuple(head)] = 0
        if n > 1:
            rest, prefix = list(head), list(head)
            rest[axis], prefix[axis] = slice(1, None), slice(0, n - 1)
            xp.cumsum(src[tuple(prefix)], axis=axis, dtype=x.dtype, out=dst[tuple(rest)])
    else:
        xp.cumsum(src, axis=axis, dtype=x.dtype, out=dst)


register(Op("cumsum", _cumsum_infer, _cumsum_kernel,
            attrs={"axis": REQUIRED, "exclusive": 0, "reverse": 0}, op_class="reduce",
            doc="running sum along axis (ONNX CumSum: exclusive, reverse)"))


# ----------------------------------------------------------------------------------------------
# einsum


def _einsum_term(term: str, shape: tuple[int, ...], equation: str):
    """(letters with None for each dim under ``...``, the ``...`` dims) of one input term."""
    if term.count("...") > 1 or not all(c.isalpha() for c in term.replace("...", "")):
        raise ShapeError(f"einsum equation {equation!r}: bad term {term!r} (letters and at most "
                         "one '...')")
    if "..." in term:
        pre, post = term.split("...")
        n = len(shape) - len(pre) - len(post)
        if n < 0:
            raise ShapeError(f"einsum equation {equation!r}: term {term!r} has more letters "
                             f"than the input {shape} has dims")
        return list(pre) + [None] * n + list(post), shape[len(pre):len(pre) + n]
    if len(term) != len(shape):
        raise ShapeError(f"einsum equation {equation!r}: term {term!r} has {len(term)} letters "
                         f"for an input of shape {shape}")
    return list(term), ()


def _einsum_plan(equation: str, shapes: tuple[tuple[int, ...], ...]):
    """(output shape, size of every letter) of ``equation`` on inputs of ``shapes``."""
    if not isinstance(equation, str):
        raise ShapeError(f"einsum equation must be a string, got {equation!r}")
    eq = equation.replace(" ", "")
    lhs, arrow, rhs = eq.partition("->")
    terms = lhs.split(",")
    if len(terms) != len(shapes):
        raise ShapeError(f"einsum equation {equation!r} has {len(terms)} input terms for "
                         f"{len(shapes)} inputs")
    sizes: dict[str, int] = {}
    counts: dict[str, int] = {}
    ellipses = []
    for term, shape in zip(terms, shapes):
        letters, ell = _einsum_term(term, shape, equation)
        ellipses.append(ell)
        for letter, d in zip(letters, shape):
            if letter is None:
                continue
            counts[letter] = counts.get(letter, 0) + 1
            if sizes.setdefault(letter, d) != d:
                raise ShapeError(f"einsum equation {equation!r}: {letter!r} is {sizes[letter]} "
                                 f"in one input and {d} in another (shapes {shapes})")
    try:
        ell_out = broadcast_shapes(*ellipses)
    except ShapeError as exc:
        raise ShapeError(f"einsum equation {equation!r}: the '...' dims: {exc}") from None
    if not arrow:
        out = [*ell_out, *(sizes[c] for c in sorted(c for c, n in counts.items() if n == 1))]
        return tuple(out), sizes
    if rhs.count("...") > 1 or not all(c.isalpha() for c in rhs.replace("...", "")):
        raise ShapeError(f"einsum equation {equation!r}: bad output term {rhs!r}")
    pre, _, post = rhs.partition("...")
    if "..." not in rhs and any(ellipses):
        raise ShapeError(f"einsum equation {equation!r}: the output drops the '...' dims")
    for c in rhs.replace("...", ""):
        if c not in sizes or rhs.count(c) > 1:
            raise ShapeError(f"einsum equation {equation!r}: output letter {c!r} is not an input "
                             "letter, or repeats")
    out = [sizes[c] for c in pre] + (list(ell_out) if "..." in rhs else []) + \
        [sizes[c] for c in post]
    return tuple(out), sizes


def _einsum_infer(ins, attrs):
    dtype = same_dtype(ins, "the inputs of einsum")
    shape, _ = _einsum_plan(attrs["equation"], tuple(s.shape for s in ins))
    return (TensorSpec(shape, dtype),)


def _einsum_kernel(xp, ins, attrs, outs):
    outs[0][...] = xp.einsum(attrs["equation"], *ins, optimize=True)


def _einsum_cost(ins, outs, attrs):
    _, sizes = _einsum_plan(attrs["equation"], tuple(s.shape for s in ins))
    work = math.prod(sizes.values())  # one multiply-add per point of the letters' space
    return Cost(flops=2.0 * work * max(len(ins) - 1, 1),
                bytes=float(sum(s.nbytes for s in ins) + outs[0].nbytes))


register(Op("einsum", _einsum_infer, _einsum_kernel, arity=(1, None),
            attrs={"equation": REQUIRED}, cost=_einsum_cost, op_class="matmul",
            doc="Einstein summation over the inputs (ONNX Einsum)"))


# ----------------------------------------------------------------------------------------------
# Public functions


def gather_nd(data, indices, batch_dims: int = 0, *, device=None):
    """The slices of ``data`` at the index tuples in the last axis of ``indices``."""
    return apply("gather_nd", (data, indices), {"batch_dims": batch_dims}, device=device)


def scatter_nd(data, indices, updates, reduction: str = "none", *, device=None):
    """A copy of ``data`` with the slices at ``indices`` replaced by (or reduced with)
    ``updates``."""
    return apply("scatter_nd", (data, indices, updates), {"reduction": reduction},
                 device=device)


def topk(x, k: int, axis: int = -1, largest: bool = True, *, device=None):
    """(values, indices) of the ``k`` largest (or smallest) elements of ``x`` along ``axis``."""
    return apply("topk", (x,), {"k": k, "axis": axis, "largest": int(largest)}, device=device)


def cumsum(x, axis: int, exclusive: bool = False, reverse: bool = False, *, device=None):
    """Running sum of ``x`` along ``axis``."""
    return apply("cumsum", (x,), {"axis": axis, "exclusive": int(exclusive),
                                  "reverse": int(reverse)}, device=device)


def einsum(equation: str, *xs, device=None):
    """Einstein summation of ``xs`` by ``equation`` (NumPy's subscripts)."""
    return apply("einsum", xs, {"equation": equation}, device=device)
