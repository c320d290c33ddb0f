"""Shape and data-movement ops: reshape, transpose, concat, split, slice, flatten, squeeze,
unsqueeze, pad, gather; plus ``getitem`` (``Tensor.__getitem__``) and ``constant``.

Semantics follow ONNX (``slice`` clamps out-of-range starts and ends and takes negative steps;
``pad`` takes ``(begins..., ends...)``, negative entries crop; ``gather`` takes negative indices),
with one deliberate difference: ``reshape`` reads its ``shape`` as NumPy does (0 is an empty
dimension, -1 is inferred); an ONNX importer resolves ONNX's "0 copies the input dimension" first.

Every kernel writes into its preallocated output. The reshape family (reshape, flatten, squeeze,
unsqueeze) copies ``x`` into a view of the output with ``x``'s shape, so a strided input is copied
once, never twice. Index tuples that depend only on the attributes and the input shape (slice,
split, pad) are computed once per distinct (attrs, shape) and cached, so a kernel call does no
index arithmetic in Python.

``getitem`` is not a registry op: it lowers ``x[key]`` to at most one ``slice`` node and one
``reshape`` node (integer indices drop axes, ``None`` adds them), or to ``gather`` for an integer
array key, through ``apply``, so it works the same eagerly and inside ``@function``.
"""

from __future__ import annotations

import functools
import math

import numpy as np

from hetero.errors import ShapeError, TraceError
from hetero.graph import TensorSpec
from hetero.ops.registry import REQUIRED, Cost, Op, normalize_axis, register, same_dtype
from hetero.tracing import Tensor, _traces, apply, tensor, user_line

__all__ = [
    "reshape", "transpose", "concat", "split", "slice", "flatten", "squeeze", "unsqueeze", "pad",
    "gather", "getitem", "constant",
]

_builtin_slice = slice


def _data_cost(ins, outs, attrs):
    """Data movement: no arithmetic, every byte read and written once."""
    return Cost(flops=0.0, bytes=float(sum(s.nbytes for s in ins) + sum(s.nbytes for s in outs)))


def _ints(value, what: str, name: str) -> tuple[int, ...]:
    """A tuple of Python ints from an attribute (a tuple, a list from JSON, or one int)."""
    if isinstance(value, (int, np.integer)):
        value = (value,)
    try:
        out = tuple(int(v) for v in value)
    except (TypeError, ValueError):
        raise ShapeError(f"{name} {what} must be a tuple of integers, got {value!r}") from None
    if any(not isinstance(v, (int, np.integer)) or isinstance(v, bool) for v in value):
        raise ShapeError(f"{name} {what} must be a tuple of integers, got {value!r}")
    return out


def _reshape_kernel(xp, ins, attrs, outs):
    x, out = ins[0], outs[0]
    if out.flags.c_contiguous:
        out.reshape(x.shape)[...] = x  # one copy, straight from a possibly strided x
    else:
        out[...] = x.reshape(out.shape)


# ----------------------------------------------------------------------------------------------
# reshape, flatten, squeeze, unsqueeze (all the same kernel: only the shape changes)


def _reshape_infer(ins, attrs):
    (x,) = ins
    shape = _ints(attrs["shape"], "shape", "reshape")
    if sum(d == -1 for d in shape) > 1 or any(d < -1 for d in shape):
        raise ShapeError(f"reshape shape {shape} may hold at most one -1 and no other negative "
                         "entry")
    known = math.prod(d for d in shape if d != -1)
    if -1 in shape:
        if known == 0 or x.size % known:
            raise ShapeError(f"cannot reshape {x.shape} (size {x.size}) into {shape}")
        shape = tuple(x.size // known if d == -1 else d for d in shape)
    elif known != x.size:
        raise ShapeError(f"cannot reshape {x.shape} (size {x.size}) into {shape} "
                         f"(size {known})")
    return (TensorSpec(shape, x.dtype),)


def _flatten_infer(ins, attrs):
    (x,) = ins
    axis = attrs["axis"]
    if not -x.ndim <= axis <= x.ndim:
        raise ShapeError(f"flatten axis {axis} is out of range for rank {x.ndim}")
    axis += x.ndim if axis < 0 else 0
    return (TensorSpec((math.prod(x.shape[:axis]), math.prod(x.shape[axis:])), x.dtype),)


def _squeeze_infer(ins, attrs):
    (x,) = ins
    if attrs["axes"] is None:
        return (TensorSpec(tuple(d for d in x.shape if d != 1), x.dtype),)
    axes = {normalize_axis(a, x.ndim, "squeeze") for a in _ints(attrs["axes"], "axes", "squeeze")}
    bad = [a for a in sorted(axes) if x.shape[a] != 1]
    if bad:
        raise ShapeError(f"squeeze cannot remove axis {bad[0]} of shape {x.shape}: its size is "
                         f"{x.shape[bad[0]]}, not 1")
    return (TensorSpec(tuple(d for i, d in enumerate(x.shape) if i not in axes), x.dtype),)


def _unsqueeze_infer(ins, attrs):
    (x,) = ins
    axes = _ints(attrs["axes"], "axes", "unsqueeze")
    rank = x.ndim + len(axes)
    norm = [normalize_axis(a, rank, "unsqueeze") for a in axes]
    if len(set(norm)) != len(norm):
        raise ShapeError(f"unsqueeze axes {axes} repeat an axis")
    dims = iter(x.shape)
    return (TensorSpec(tuple(1 if i in norm else next(dims) for i in range(rank)), x.dtype),)


register(Op("reshape", _reshape_infer, _reshape_kernel, attrs={"shape": REQUIRED},
            cost=_data_cost, op_class="data", doc="same elements, new shape (-1 is inferred)"))
register(Op("flatten", _flatten_infer, _reshape_kernel, attrs={"axis": 1}, cost=_data_cost,
            op_class="data", doc="2-D: dims before axis, dims from axis on"))
register(Op("squeeze", _squeeze_infer, _reshape_kernel, attrs={"axes": None}, cost=_data_cost,
            op_class="data", doc="remove size-1 axes (all of them if axes is None)"))
register(Op("unsqueeze", _unsqueeze_infer, _reshape_kernel, attrs={"axes": REQUIRED},
            cost=_data_cost, op_class="data", doc="insert size-1 axes at output positions"))


# ----------------------------------------------------------------------------------------------
# transpose


def _perm(perm, ndim: int) -> tuple[int, ...]:
    if perm is None:
        return tuple(range(ndim))[::-1]
    perm = _ints(perm, "perm", "transpose")
    if sorted(p % ndim if -ndim <= p < ndim else p for p in perm) != list(range(ndim)):
        raise ShapeError(f"transpose perm {perm} is not a permutation of the {ndim} axes")
    return tuple(p % ndim for p in perm)


def _transpose_infer(ins, attrs):
    (x,) = ins
    perm = _perm(attrs["perm"], x.ndim)
    return (TensorSpec(tuple(x.shape[p] for p in perm), x.dtype),)


def _transpose_kernel(xp, ins, attrs, outs):
    perm = attrs["perm"]
    outs[0][...] = xp.transpose(ins[0], None if perm is None else tuple(perm))


register(Op("transpose", _transpose_infer, _transpose_kernel, attrs={"perm": None},
            cost=_data_cost, op_class="data", doc="permute axes (reverse them if perm is None)"))


# ----------------------------------------------------------------------------------------------
# concat, split


def _concat_infer(ins, attrs):
    dtype = same_dtype(ins, "the inputs of concat")
    first = ins[0]
    if first.ndim == 0:
        raise ShapeError("concat needs inputs of rank >= 1")
    axis = normalize_axis(attrs["axis"], first.ndim, "concat")
    for i, s in enumerate(ins[1:], 1):
        if s.ndim != first.ndim or any(a != b for j, (a, b) in
                                       enumerate(zip(s.shape, first.shape)) if j != axis):
            raise ShapeError(f"concat along axis {axis}: input {i} has shape {s.shape}, which does "
                             f"not match input 0's shape {first.shape} outside that axis")
    shape = list(first.shape)
    shape[axis] = sum(s.shape[axis] for s in ins)
    return (TensorSpec(tuple(shape), dtype),)


def _concat_kernel(xp, ins, attrs, outs):
    xp.concatenate(ins, axis=attrs["axis"], out=outs[0])


register(Op("concat", _concat_infer, _concat_kernel, arity=(1, None), attrs={"axis": REQUIRED},
            cost=_data_cost, op_class="data", doc="join along an existing axis"))


def _split_infer(ins, attrs):
    (x,) = ins
    if x.ndim == 0:
        raise ShapeError("split needs an input of rank >= 1")
    axis = normalize_axis(attrs["axis"], x.ndim, "split")
    sizes = _ints(attrs["sizes"], "sizes", "split")
    if not sizes or any(s < 0 for s in sizes) or sum(sizes) != x.shape[axis]:
        raise ShapeError(f"split sizes {sizes} must be non-negative and add up to "
                         f"{x.shape[axis]}, the size of axis {axis} of {x.shape}")
    return tuple(TensorSpec(x.shape[:axis] + (s,) + x.shape[axis + 1:], x.dtype) for s in sizes)


@functools.lru_cache(maxsize=1024)
def _split_index(ndim: int, axis: int, sizes: tuple[int, ...]) -> tuple[tuple, ...]:
    axis %= ndim
    lead = (_builtin_slice(None),) * axis
    out, start = [], 0
    for s in sizes:
        out.append(lead + (_builtin_slice(start, start + s),))
        start += s
    return tuple(out)


def _split_kernel(xp, ins, attrs, outs):
    x = ins[0]
    for out, idx in zip(outs, _split_index(x.ndim, attrs["axis"], tuple(attrs["sizes"]))):
        out[...] = x[idx]


register(Op("split", _split_infer, _split_kernel, attrs={"axis": 0, "sizes": REQUIRED},
            cost=_data_cost, op_class="data", doc="cut along an axis into pieces of given sizes"))


# ----------------------------------------------------------------------------------------------
# slice


@functools.lru_cache(maxsize=1024)
def _slice_plan(shape: tuple[int, ...], starts: tuple[int, ...], ends: tuple[int, ...],
                axes: tuple[int, ...] | None, steps: tuple[int, ...] | None):
    """ONNX Slice: (index tuple, output shape). Raises ShapeError on invalid attributes."""
    ndim = len(shape)
    if len(starts) != len(ends):
        raise ShapeError(f"slice starts {starts} and ends {ends} differ in length")
    if axes is None:
        axes = tuple(range(len(starts)))
    if steps is None:
        steps = (1,) * len(starts)
    if len(axes) != len(starts) or len(steps) != len(starts):
        raise ShapeError(f"slice starts, ends, axes and steps must have one entry per sliced "
                         f"axis; got {len(starts)}, {len(ends)}, {len(axes)}, {len(steps)}")
    if ndim == 0 and starts:
        raise ShapeError("slice of a rank-0 tensor: it has no axis to slice")
    index = [_builtin_slice(None)] * ndim
    out = list(shape)
    seen = set()
    for start, end, axis, step in zip(starts, ends, axes, steps):
        axis = normalize_axis(axis, ndim, "slice")
        if axis in seen:
            raise ShapeError(f"slice axes {axes} repeat axis {axis}")
        seen.add(axis)
        if step == 0:
            raise ShapeError("slice step cannot be 0")
        dim = shape[axis]
        start += dim if start < 0 else 0
        end += dim if end < 0 else 0
        if step > 0:
            start, end = min(max(start, 0), dim), min(max(end, 0), dim)
        else:
            start, end = min(max(start, 0), dim - 1), min(max(end, -1), dim - 1)
        n = max(0, -(-(end - start) // step)) if dim else 0
        out[axis] = n
        if n == 0:
            index[axis] = _builtin_slice(0, 0)
        else:
            index[axis] = _builtin_slice(start, end if end >= 0 else None, step)
    return tuple(index), tuple(out)


def _slice_key(attrs):
    axes, steps = attrs["axes"], attrs["steps"]
    return (_ints(attrs["starts"], "starts", "slice"), _ints(attrs["ends"], "ends", "slice"),
            None if axes is None else _ints(axes, "axes", "slice"),
            None if steps is None else _ints(steps, "steps", "slice"))


def _slice_infer(ins, attrs):
    (x,) = ins
    _, shape = _slice_plan(x.shape, *_slice_key(attrs))
    return (TensorSpec(shape, x.dtype),)


def _slice_kernel(xp, ins, attrs, outs):
    x = ins[0]
    index, _ = _slice_plan(x.shape, tuple(attrs["starts"]), tuple(attrs["ends"]),
                           attrs["axes"] and tuple(attrs["axes"]),
                           attrs["steps"] and tuple(attrs["steps"]))
    outs[0][...] = x[index]


register(Op("slice", _slice_infer, _slice_kernel,
            attrs={"starts": REQUIRED, "ends": REQUIRED, "axes": None, "steps": None},
            cost=_data_cost, op_class="data", doc="strided sub-tensor with ONNX clamping"))


# ----------------------------------------------------------------------------------------------
# pad

_PAD_MODES = ("constant", "reflect", "edge")


@functools.lru_cache(maxsize=1024)
def _pad_plan(shape: tuple[int, ...], pads: tuple[int, ...], mode: str):
    """(source crop index, destination index, positive pad widths, output shape)."""
    ndim = len(shape)
    if len(pads) != 2 * ndim:
        raise ShapeError(f"pad pads {pads} must hold 2 * rank = {2 * ndim} entries "
                         "(all begins, then all ends)")
    if mode not in _PAD_MODES:
        raise ShapeError(f"pad mode must be one of {', '.join(_PAD_MODES)}, got {mode!r}")
    src, dst, widths, out = [], [], [], []
    for axis, d in enumerate(shape):
        b, e = pads[axis], pads[axis + ndim]
        n = d + b + e
        if n < 0:
            raise ShapeError(f"pad pads {pads} crop axis {axis} (size {d}) below zero")
        lo, hi = max(-b, 0), d - max(-e, 0)
        inner = max(hi - lo, 0)
        pb, pe = max(b, 0), max(e, 0)
        if mode == "reflect" and (pb or pe) and max(pb, pe) > inner - 1:
            raise ShapeError(f"pad mode 'reflect' needs pads smaller than the axis: axis {axis} "
                             f"has size {inner} and pads ({pb}, {pe})")
        if mode == "edge" and (pb or pe) and inner == 0:
            raise ShapeError(f"pad mode 'edge' cannot pad the empty axis {axis}")
        src.append(_builtin_slice(lo, lo + inner))
        dst.append(_builtin_slice(pb, pb + inner))
        widths.append((pb, pe))
        out.append(n)
    return tuple(src), tuple(dst), tuple(widths), tuple(out)


def _pad_infer(ins, attrs):
    (x,) = ins
    *_, shape = _pad_plan(x.shape, _ints(attrs["pads"], "pads", "pad"), attrs["mode"])
    return (TensorSpec(shape, x.dtype),)


def _pad_kernel(xp, ins, attrs, outs):
    x, out = ins[0], outs[0]
    mode = attrs["mode"]
    src, dst, widths, _ = _pad_plan(x.shape, tuple(attrs["pads"]), mode)
    if mode == "constant":
        out.fill(attrs["value"])
        out[dst] = x[src]
    elif x.ndim == 0:
        out[...] = x
    else:
        out[...] = xp.pad(x[src], widths, mode=mode)


def _pad_cost(ins, outs, attrs):
    return Cost(flops=0.0, bytes=float(ins[0].nbytes + outs[0].nbytes))


register(Op("pad", _pad_infer, _pad_kernel, attrs={"pads": REQUIRED, "mode": "constant",
                                                  "value": 0.0},
            cost=_pad_cost, op_class="data", doc="pad (or crop) each axis; constant/reflect/edge"))


# ----------------------------------------------------------------------------------------------
# gather


def _gather_infer(ins, attrs):
    x, idx = ins
    if idx.dtype.kind not in "iu":
        raise ShapeError(f"gather indices must be integers, got {idx.dtype.name}")
    if x.ndim == 0:
        raise ShapeError("gather needs data of rank >= 1")
    axis = normalize_axis(attrs["axis"], x.ndim, "gather")
    if x.shape[axis] == 0 and idx.size:
        raise ShapeError(f"gather from the empty axis {axis} of {x.shape}")
    return (TensorSpec(x.shape[:axis] + idx.shape + x.shape[axis + 1:], x.dtype),)


def _gather_kernel(xp, ins, attrs, outs):
    xp.take(ins[0], ins[1], axis=attrs["axis"], out=outs[0])


def _gather_cost(ins, outs, attrs):
    return Cost(flops=0.0, bytes=float(2 * outs[0].nbytes + ins[1].nbytes))


register(Op("gather", _gather_infer, _gather_kernel, arity=(2, 2), attrs={"axis": 0},
            cost=_gather_cost, op_class="data", doc="take entries along an axis (ONNX Gather)"))


# ----------------------------------------------------------------------------------------------
# Public functions


def reshape(x, shape, *, device=None):
    """``x`` with a new shape; one entry may be -1 (inferred)."""
    if isinstance(shape, (int, np.integer)):
        shape = (shape,)
    return apply("reshape", (x,), {"shape": _ints(shape, "shape", "reshape")}, device=device)


def transpose(x, perm=None, *, device=None):
    """``x`` with its axes permuted by ``perm`` (reversed if None)."""
    attrs = {"perm": None if perm is None else _ints(perm, "perm", "transpose")}
    return apply("transpose", (x,), attrs, device=device)


def concat(*xs, axis=0, device=None):
    """Join tensors along an existing ``axis``: ``concat(a, b, axis=1)`` or ``concat([a, b])``."""
    if len(xs) == 1 and isinstance(xs[0], (list, tuple)):
        xs = tuple(xs[0])
    return apply("concat", xs, {"axis": axis}, device=device)


def split(x, sizes, axis=0, *, device=None):
    """Cut ``x`` along ``axis``; returns a tuple of tensors.

    Args:
        sizes: the size of each piece (a tuple), or a number of pieces: an int ``n`` makes pieces
            of ``ceil(dim / n)``, the last one smaller if ``dim`` does not divide (ONNX Split).
    """
    if isinstance(sizes, (int, np.integer)):
        n = int(sizes)
        dim = _spec_of(x).shape[normalize_axis(axis, _spec_of(x).ndim, "split")]
        if n <= 0:
            raise ShapeError(f"split into {n} pieces: the number must be positive")
        chunk = -(-dim // n)
        sizes = tuple(min(chunk, max(dim - i * chunk, 0)) for i in range(n))
    out = apply("split", (x,), {"axis": axis, "sizes": _ints(sizes, "sizes", "split")},
                device=device)
    return out if isinstance(out, tuple) else (out,)


def slice(x, starts, ends, axes=None, steps=None, *, device=None):
    """Sub-tensor ``x[starts:ends:steps]`` on ``axes`` with ONNX clamping of out-of-range bounds."""
    attrs = {"starts": _ints(starts, "starts", "slice"), "ends": _ints(ends, "ends", "slice"),
             "axes": None if axes is None else _ints(axes, "axes", "slice"),
             "steps": None if steps is None else _ints(steps, "steps", "slice")}
    return apply("slice", (x,), attrs, device=device)


def flatten(x, axis=1, *, device=None):
    """2-D view of ``x``: dimensions before ``axis`` times dimensions from ``axis`` on."""
    return apply("flatten", (x,), {"axis": axis}, device=device)


def squeeze(x, axes=None, *, device=None):
    """Remove the size-1 ``axes`` (every size-1 axis if None)."""
    attrs = {"axes": None if axes is None else _ints(axes, "axes", "squeeze")}
    return apply("squeeze", (x,), attrs, device=device)


def unsqueeze(x, axes, *, device=None):
    """Insert size-1 axes at ``axes`` (positions in the output; negative counts from its end)."""
    return apply("unsqueeze", (x,), {"axes": _ints(axes, "axes", "unsqueeze")}, device=device)


def pad(x, pads, mode="constant", value=0.0, *, device=None):
    """Pad ``x``: ``pads`` = (begin of each axis..., end of each axis...); negative crops.

    Args:
        mode: "constant" (fill with ``value``), "reflect" (mirror, edge not repeated) or "edge".
    """
    attrs = {"pads": _ints(pads, "pads", "pad"), "mode": mode, "value": float(value)}
    return apply("pad", (x,), attrs, device=device)


def gather(x, indices, axis=0, *, device=None):
    """Entries of ``x`` at integer ``indices`` along ``axis`` (negative indices count back)."""
    return apply("gather", (x, indices), {"axis": axis}, device=device)


def constant(array, *, dtype=None):
    """A tensor holding ``array``: an eager tensor, or inside ``@function`` a constant node.

    Python floats become float32 (as in ``ht.tensor``); NumPy arrays keep their dtype.
    """
    traces = _traces()
    if not traces:
        return tensor(array, dtype=dtype)
    if isinstance(array, Tensor):
        if array.is_traced:
            raise TraceError(f"{user_line()}: constant() of a traced value")
        array = array.numpy()
    arr = np.asarray(array, dtype=dtype)
    if dtype is None and arr.dtype == np.float64 and not isinstance(array, np.ndarray):
        arr = arr.astype(np.float32)
    trace = traces[-1]
    value = trace.add_constant(arr, user_line())
    return Tensor(_trace=trace, _value=value, _spec=TensorSpec.of(arr))


def _spec_of(x) -> TensorSpec:
    if isinstance(x, Tensor):
        return x.spec
    return TensorSpec.of(np.asarray(x))


# ----------------------------------------------------------------------------------------------
# getitem


def getitem(x, key, *, device=None):
    """``x[key]`` as NumPy reads it, for ints, slices (any step), ``...``, ``None`` and at most one
    integer array (a list, NumPy array or Tensor) at any position, whose dimensions replace the
    axis it indexes. Lowered to ``slice`` + ``reshape`` nodes, and a ``gather`` for the array."""
    spec = _spec_of(x)
    if not isinstance(key, tuple):
        key = (key,)
    key, arrays = list(key), []
    for j, k in enumerate(key):
        if isinstance(k, (Tensor, np.ndarray, list)):
            idx = k if isinstance(k, Tensor) else np.asarray(k)
            if idx.dtype.kind not in "iu":
                raise ShapeError(f"getitem: only integer arrays can index a tensor, got "
                                 f"{idx.dtype.name} (boolean masks have no static shape)")
            arrays.append((j, idx))
            key[j] = _builtin_slice(None)  # sliced as a whole here, gathered below
    if len(arrays) > 1:
        raise ShapeError("getitem: at most one integer array can index a tensor "
                         f"({len(arrays)} given); index in two steps")
    key = tuple(key)
    n_ellipsis = sum(k is Ellipsis for k in key)
    if n_ellipsis > 1:
        raise ShapeError("getitem: an index can only have a single ellipsis ('...')")
    used = sum(k is not None and k is not Ellipsis for k in key)
    if used > spec.ndim:
        raise ShapeError(f"getitem: too many indices for a tensor of rank {spec.ndim} "
                         f"(shape {spec.shape}): {used} given")
    array_at = arrays[0][0] if arrays else None
    if n_ellipsis:
        i = next(j for j, k in enumerate(key) if k is Ellipsis)
        fill = spec.ndim - used
        key = key[:i] + (_builtin_slice(None),) * fill + key[i + 1:]
        if array_at is not None and array_at > i:
            array_at += fill - 1
    else:
        key = key + (_builtin_slice(None),) * (spec.ndim - used)

    starts, ends, axes, steps, out_shape = [], [], [], [], []
    axis = 0
    gather_axis = None
    for pos, k in enumerate(key):
        if pos == array_at:
            gather_axis = len(out_shape)
        if k is None:
            out_shape.append(1)
            continue
        dim = spec.shape[axis]
        if isinstance(k, _builtin_slice):
            if k.step == 0:
                raise ShapeError(f"getitem: slice step cannot be zero in {k}")
            start, stop, step = k.indices(dim)
            n = len(range(start, stop, step))
            if not (step == 1 and n == dim):  # a full slice needs no node
                if step < 0 and stop < 0:
                    stop = -dim - 1  # "before index 0": ONNX reads a plain -1 as dim - 1
                starts.append(start)
                ends.append(stop)
                axes.append(axis)
                steps.append(step)
            out_shape.append(n)
        elif isinstance(k, (int, np.integer)) and not isinstance(k, bool):
            i = int(k)
            if not -dim <= i < dim:
                raise ShapeError(f"getitem: index {i} is out of bounds for axis {axis} with "
                                 f"size {dim}")
            i %= dim
            starts.append(i)
            ends.append(i + 1)
            axes.append(axis)
            steps.append(1)
        else:
            raise ShapeError(f"getitem: unsupported index {k!r} of type {type(k).__name__} "
                             "(use ints, slices, ..., None, or one integer array)")
        axis += 1

    y = x
    if starts:
        y = slice(y, starts, ends, axes, steps, device=device)
    if tuple(out_shape) != _spec_of(y).shape:
        y = reshape(y, tuple(out_shape), device=device)
    if arrays:
        idx = arrays[0][1]
        y = gather(y, idx, gather_axis, device=device)
        advanced = [p for p, k in enumerate(key) if p == array_at or
                    (isinstance(k, (int, np.integer)) and not isinstance(k, bool))]
        if gather_axis and advanced[-1] - advanced[0] + 1 != len(advanced):
            # NumPy: advanced indices (the array and any ints) that a slice, ... or None separates
            # put their dimensions first
            moved = list(range(gather_axis, gather_axis + idx.ndim))
            rest = [a for a in range(_spec_of(y).ndim) if a not in moved]
            y = transpose(y, tuple(moved + rest), device=device)
        return y
    if y is x and not isinstance(x, Tensor):
        y = reshape(x, spec.shape, device=device)  # always hand back a Tensor
    return y
