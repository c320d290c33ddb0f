"""Ops that imported models need beyond the core families (ONNX semantics).

Identity and inference-mode Dropout, the variadic sum ``add_n`` (ONNX Sum), the remaining ONNX
activations (Elu, Selu, HardSigmoid, PRelu, Softplus, Softsign, Sign), Expand, Tile and
InstanceNormalization. Kernels are written once against the array namespace ``xp``.
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
    register,
    require_float,
    same_dtype,
)
from hetero.ops.scratch import by_chunks
from hetero.tracing import apply

__all__ = [
    "identity", "dropout", "add_n", "elu", "selu", "hard_sigmoid", "prelu", "softplus",
    "softsign", "sign", "expand", "tile", "instance_norm", "logical_not", "logical_and",
    "logical_or", "logical_xor", "mod", "layer_norm", "hard_swish", "mish", "celu",
    "thresholded_relu", "round", "sin", "cos", "argmax", "argmin", "gather_elements", "trilu",
]


def _same(ins, attrs):
    return (ins[0],)


def _same_float(name: str):
    def infer(ins, attrs):
        require_float(ins[0], name)
        return (ins[0],)
    return infer


def _copy_kernel(xp, ins, attrs, outs):
    outs[0][...] = ins[0]


def _copy_cost(ins, outs, attrs) -> Cost:
    return Cost(flops=0.0, bytes=float(ins[0].nbytes + outs[0].nbytes))


register(Op("identity", _same, _copy_kernel, cost=_copy_cost, op_class="data",
            doc="a copy of x"))
register(Op("dropout", _same_float("dropout"), _copy_kernel, attrs={"ratio": 0.5},
            cost=_copy_cost, op_class="data", doc="inference-mode dropout: x unchanged"))


def _infer_add_n(ins, attrs):
    dtype = same_dtype(ins)
    shapes = {s.shape for s in ins}
    if len(shapes) > 1:
        raise ShapeError(f"add_n needs inputs of one shape, got {sorted(shapes)}")
    return (TensorSpec(ins[0].shape, dtype),)


def _add_n_kernel(xp, ins, attrs, outs):
    out = outs[0]
    if len(ins) == 1:
        out[...] = ins[0]
        return
    xp.add(ins[0], ins[1], out=out)
    for x in ins[2:]:
        xp.add(out, x, out=out)


def _add_n_cost(ins, outs, attrs) -> Cost:
    return Cost(flops=float(max(len(ins) - 1, 1) * outs[0].size),
                bytes=float(sum(s.nbytes for s in ins) + outs[0].nbytes))


register(Op("add_n", _infer_add_n, _add_n_kernel, arity=(1, None), cost=_add_n_cost,
            doc="sum of any number of same-shape tensors (ONNX Sum)"))


# The activations below compute into their output buffer (out=) and allocate no tensor-sized
# temporary (tests/test_allocations.py): a formula that needs a second value per element takes
# it from a small per-thread scratch, chunk by chunk (hetero.ops.scratch). None of them uses a
# masked step (copyto/ufunc with where=): on random signs a masked pass costs ~5 ns an element, ten
# plain passes' worth; each select is an arithmetic identity instead (max/min/clip/fmax),
# keeping NaN, +-inf and the sign of zero as the formula has them.

#: elements per chunk of the scratch-using kernels (512 KiB of float32 scratch a thread): the
#: passes gain nothing from a chunk in cache here, and below ~1 << 16 the calls per chunk (~2.5 us
#: for np.clip) cost more than they save (measured: selu per 1M float32, 1.4 ms unchunked and
#: at 1 << 17, 2.4 ms at 1 << 15, 5 ms at 1 << 12)
_CHUNK = 1 << 17


def _exp_bound(dtype) -> float:
    """A T with ``log1p(exp(x))`` equal to ``x`` in ``dtype`` for every x >= T (e^-x below half
    an ulp of x) and ``exp(T)`` far from overflow: 16.6 for float32, 7.6 float16, 36.7 float64."""
    return math.log(2 / float(np.finfo(dtype).eps))


def _expm1_neg_into(xp, x, out, alpha, scale_arg: bool) -> None:
    """``out = alpha * expm1(min(x, 0) [/ alpha])``: 0 (of x's sign at zero) for x >= 0."""
    xp.clip(x, -math.inf, 0, out=out)  # clip keeps nan and -0; NumPy's maximum/minimum with a
    if scale_arg:                      # scalar are ~3x slower than this SIMD loop
        xp.divide(out, alpha, out=out)
    xp.expm1(out, out=out)
    xp.multiply(out, alpha, out=out)


def _elu_into(xp, x, out, alpha) -> None:
    """``out = x if x > 0 else alpha * expm1(x)`` (x at +-0: the same as alpha * expm1(x))."""
    if 0 <= alpha <= 1:
        # alpha * expm1(x) >= x for x <= 0 (e^x >= 1 + x), and the term is 0 for x > 0, so the
        # select is a max; nan stays nan, -inf gives -alpha, +inf gives +inf
        _expm1_neg_into(xp, x, out, alpha, scale_arg=False)
        xp.maximum(out, x, out=out)
        return

    def part(xp, x, out, s):  # max(x, 0) + alpha * expm1(min(x, 0)): one term is 0 (or -0)
        xp.clip(x, 0, math.inf, out=s)
        _expm1_neg_into(xp, x, out, alpha, scale_arg=False)
        xp.add(out, s, out=out)
    by_chunks(xp, part, x, out, chunk=_CHUNK)


def _elu_kernel(xp, ins, attrs, outs):
    _elu_into(xp, ins[0], outs[0], attrs["alpha"])


def _selu_kernel(xp, ins, attrs, outs):
    _elu_into(xp, ins[0], outs[0], attrs["alpha"])  # where(x > 0, x, alpha * expm1(x))
    xp.multiply(outs[0], attrs["gamma"], out=outs[0])


def _hard_sigmoid_kernel(xp, ins, attrs, outs):
    out = outs[0]
    xp.multiply(ins[0], attrs["alpha"], out=out)
    xp.add(out, attrs["beta"], out=out)
    xp.clip(out, 0, 1, out=out)


def _softplus_into(xp, x, out):
    """``out = log(1 + e^x)`` as ``max(x, log1p(exp(min(x, T))))`` (T: _exp_bound): below T
    log1p(e^x) >= x and is the value, above it the value rounds to x (and e^T does not overflow);
    softplus(-inf) = 0, softplus(inf) = inf, nan stays nan."""
    xp.clip(x, -math.inf, _exp_bound(out.dtype), out=out)
    xp.exp(out, out=out)
    xp.log1p(out, out=out)
    xp.maximum(out, x, out=out)


def _softplus_kernel(xp, ins, attrs, outs):
    _softplus_into(xp, ins[0], outs[0])


def _softsign_kernel(xp, ins, attrs, outs):
    x, out = ins[0], outs[0]
    xp.abs(x, out=out)
    xp.add(out, 1, out=out)
    xp.divide(x, out, out=out)


def _sign_kernel(xp, ins, attrs, outs):
    xp.sign(ins[0], out=outs[0])


register(Op("elu", _same_float("elu"), _elu_kernel, attrs={"alpha": 1.0},
            doc="x if x > 0 else alpha * (exp(x) - 1)"))
register(Op("selu", _same_float("selu"), _selu_kernel,
            attrs={"alpha": 1.67326319217681884765625, "gamma": 1.05070102214813232421875},
            doc="gamma * (x if x > 0 else alpha * (exp(x) - 1))"))
register(Op("hard_sigmoid", _same_float("hard_sigmoid"), _hard_sigmoid_kernel,
            attrs={"alpha": 0.2, "beta": 0.5}, doc="clip(alpha * x + beta, 0, 1)"))
register(Op("softplus", _same_float("softplus"), _softplus_kernel, doc="log(1 + exp(x))"))
register(Op("softsign", _same_float("softsign"), _softsign_kernel, doc="x / (1 + |x|)"))
def _infer_sign(ins, attrs):
    if ins[0].dtype.kind not in "iuf":
        raise ShapeError(f"sign needs a numeric input, got {ins[0].dtype.name}")
    return (ins[0],)


register(Op("sign", _infer_sign, _sign_kernel, doc="-1, 0 or 1 by the sign of x"))


def _infer_prelu(ins, attrs):
    x, slope = ins
    require_float(x, "prelu")
    same_dtype(ins)
    if broadcast_shapes(x.shape, slope.shape) != x.shape:
        raise ShapeError(f"prelu slope {slope.shape} does not broadcast to x {x.shape}")
    return (x,)


def _prelu_kernel(xp, ins, attrs, outs):
    x, slope = ins
    out = outs[0]
    xp.multiply(x, slope, out=out)
    select = _prelu_select(xp, slope)
    if select is None:
        xp.copyto(out, x, where=~(x < 0))  # where(x < 0, x * slope, x), NaN included
    else:
        select(out, x, out=out)


def _prelu_select(xp, slope):
    """``maximum`` when every slope is in (0, 1], ``minimum`` when every slope is finite and >= 1:
    then x * slope is on the right side of x for either sign of x, and the select of
    where(x < 0, x * slope, x) is that function (nan and +-inf included; slope 0 would turn
    x = inf into nan). None otherwise, and for a slope not in host memory (reading its values
    would synchronise a device's stream, and a GPU's masked copy is not slow)."""
    if xp.__name__ != "numpy" or not isinstance(slope, np.ndarray) or slope.size == 0:
        return None
    lo, hi = float(slope.min()), float(slope.max())  # nan in slope: both nan, no fast path
    if 0 < lo and hi <= 1:
        return xp.maximum
    if 1 <= lo and hi < math.inf:
        return xp.minimum
    return None


register(Op("prelu", _infer_prelu, _prelu_kernel, arity=(2, 2),
            doc="x if x >= 0 else slope * x (slope broadcasts to x)"))


def _infer_expand(ins, attrs):
    shape = tuple(attrs["shape"])
    out = broadcast_shapes(ins[0].shape, shape)
    return (TensorSpec(out, ins[0].dtype),)


def _expand_kernel(xp, ins, attrs, outs):
    outs[0][...] = xp.broadcast_to(ins[0], outs[0].shape)


def _infer_tile(ins, attrs):
    reps = tuple(int(r) for r in attrs["repeats"])
    if len(reps) != ins[0].ndim or any(r < 0 for r in reps):
        raise ShapeError(f"tile repeats {reps} must be one non-negative int per dim of "
                         f"{ins[0].shape}")
    return (TensorSpec(tuple(d * r for d, r in zip(ins[0].shape, reps)), ins[0].dtype),)


def _tile_kernel(xp, ins, attrs, outs):
    x, out = ins[0], outs[0]
    reps = tuple(attrs["repeats"])
    dims = (1,) * (len(reps) - x.ndim) + tuple(x.shape)
    if not out.flags.c_contiguous or out.size == 0:
        out[...] = xp.tile(x, reps)
        return
    # out as (r0, d0, r1, d1, ...): every repeat is one broadcast copy of x, with no temporary
    split = tuple(n for pair in zip(reps, dims) for n in pair)
    xp.copyto(out.reshape(split), x.reshape(tuple(n for d in dims for n in (1, d))))


register(Op("expand", _infer_expand, _expand_kernel, attrs={"shape": REQUIRED},
            cost=_copy_cost, op_class="data", doc="broadcast x to broadcast(x.shape, shape)"))
register(Op("tile", _infer_tile, _tile_kernel, attrs={"repeats": REQUIRED}, cost=_copy_cost,
            op_class="data", doc="x repeated along each axis"))


def _infer_instance_norm(ins, attrs):
    x, scale, bias = ins
    require_float(x, "instance_norm")
    same_dtype(ins)
    if x.ndim < 3:
        raise ShapeError(f"instance_norm needs an N,C,... input of rank >= 3, got {x.shape}")
    c = x.shape[1]
    if scale.shape != (c,) or bias.shape != (c,):
        raise ShapeError(f"instance_norm scale {scale.shape} and bias {bias.shape} must be ({c},)")
    return (x,)


def _instance_norm_kernel(xp, ins, attrs, outs):
    x, scale, bias = ins
    axes = tuple(range(2, x.ndim))
    shape = (1, x.shape[1]) + (1,) * (x.ndim - 2)
    mean = x.mean(axis=axes, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=axes, keepdims=True)
    inv = (1.0 / xp.sqrt(var + attrs["epsilon"])).astype(x.dtype)
    outs[0][...] = (x - mean) * inv * scale.reshape(shape) + bias.reshape(shape)


def _instance_norm_cost(ins, outs, attrs) -> Cost:
    return Cost(flops=float(8 * outs[0].size), bytes=float(2 * ins[0].nbytes + outs[0].nbytes))


register(Op("instance_norm", _infer_instance_norm, _instance_norm_kernel, arity=(3, 3),
            attrs={"epsilon": 1e-5}, cost=_instance_norm_cost, op_class="norm",
            doc="per-sample, per-channel normalisation, then scale and bias"))


def _infer_logical(ins, attrs):
    if any(s.dtype.kind != "b" for s in ins):
        raise ShapeError("logical ops take bool inputs, got "
                         + ", ".join(s.dtype.name for s in ins))
    return (TensorSpec(broadcast_shapes(*(s.shape for s in ins)), ins[0].dtype),)


def _logical(name: str, ufunc: str, arity: int) -> None:
    def kernel(xp, ins, attrs, outs):
        getattr(xp, ufunc)(*ins, out=outs[0])

    register(Op(name, _infer_logical, kernel, arity=(arity, arity), doc=f"elementwise {ufunc}"))


_logical("logical_not", "logical_not", 1)
_logical("logical_and", "logical_and", 2)
_logical("logical_or", "logical_or", 2)
_logical("logical_xor", "logical_xor", 2)


def _infer_mod(ins, attrs):
    dtype = same_dtype(ins)
    if dtype.kind == "b":
        raise ShapeError("mod takes numeric inputs")
    return (TensorSpec(broadcast_shapes(ins[0].shape, ins[1].shape), dtype),)


def _mod_kernel(xp, ins, attrs, outs):
    a, b = ins
    if attrs["fmod"]:
        xp.fmod(a, b, out=outs[0])  # sign of the dividend (C fmod)
    else:
        xp.mod(a, b, out=outs[0])  # sign of the divisor (Python %)


register(Op("mod", _infer_mod, _mod_kernel, arity=(2, 2), attrs={"fmod": 0},
            doc="remainder: fmod=0 takes the divisor's sign, fmod=1 the dividend's"))


def _infer_layer_norm(ins, attrs):
    x = ins[0]
    require_float(x, "layer_norm")
    axis = attrs["axis"]
    if not -x.ndim <= axis < max(x.ndim, 1):
        raise ShapeError(f"layer_norm axis {axis} is out of range for rank {x.ndim}")
    axis %= max(x.ndim, 1)
    norm_shape = x.shape[axis:]
    for name, s in zip(("scale", "bias"), ins[1:]):
        if s.dtype != x.dtype or broadcast_shapes(norm_shape, s.shape) != norm_shape:
            raise ShapeError(f"layer_norm {name} {s} must broadcast to {norm_shape} ({x.dtype})")
    stash = np.dtype(np.float32) if attrs["stash_type"] == 1 else x.dtype
    stats = TensorSpec(x.shape[:axis] + (1,) * (x.ndim - axis), stash)
    return (x, stats, stats)


def _layer_norm_kernel(xp, ins, attrs, outs):
    x = ins[0]
    axis = attrs["axis"] % max(x.ndim, 1)
    axes = tuple(range(axis, x.ndim))
    # stash_type=1 (the default): statistics in float32, whatever the input's precision
    work = x.astype(xp.float32) if attrs["stash_type"] == 1 else x
    mean = work.mean(axis=axes, keepdims=True)
    centred = work - mean
    inv = 1.0 / xp.sqrt((centred * centred).mean(axis=axes, keepdims=True) + attrs["epsilon"])
    y = centred * inv
    y = y.astype(x.dtype) * ins[1]
    if len(ins) == 3:
        y = y + ins[2]
    outs[0][...] = y
    outs[1][...] = mean
    outs[2][...] = inv


def _layer_norm_cost(ins, outs, attrs) -> Cost:
    return Cost(flops=float(8 * outs[0].size), bytes=float(2 * ins[0].nbytes + outs[0].nbytes))


register(Op("layer_norm", _infer_layer_norm, _layer_norm_kernel, arity=(2, 3),
            attrs={"axis": -1, "epsilon": 1e-5, "stash_type": 1}, cost=_layer_norm_cost,
            op_class="norm",
            doc="normalise over dims axis..-1, then * scale + bias; also mean and 1/std"))


def _hard_swish_kernel(xp, ins, attrs, outs):
    x, out = ins[0], outs[0]
    xp.multiply(x, 1 / 6, out=out)
    xp.add(out, 0.5, out=out)
    xp.clip(out, 0, 1, out=out)
    xp.multiply(out, x, out=out)  # x * clip(x / 6 + 1/2, 0, 1)


def _mish_kernel(xp, ins, attrs, outs):
    x, out = ins[0], outs[0]
    # x * tanh(log1p(exp(min(x, T)))): from T on tanh(softplus(x)) rounds to 1, so the clip
    # (which keeps exp finite) changes nothing; mish(-inf) is -inf * 0 = nan, as the formula
    xp.clip(x, -math.inf, _exp_bound(out.dtype), out=out)
    xp.exp(out, out=out)
    xp.log1p(out, out=out)
    xp.tanh(out, out=out)
    xp.multiply(out, x, out=out)  # x * tanh(softplus(x))


def _celu_kernel(xp, ins, attrs, outs):
    x, a, out = ins[0], attrs["alpha"], outs[0]
    if a > 0:
        # a * expm1(x / a) >= x for x <= 0 and the term is 0 for x > 0: the sum of the formula
        # max(0, x) + min(0, a * expm1(x / a)) is a max
        _expm1_neg_into(xp, x, out, a, scale_arg=True)
        xp.maximum(out, x, out=out)
    else:
        def part(xp, x, out, s):
            xp.clip(x, 0, math.inf, out=s)  # max(0, x)
            _expm1_neg_into(xp, x, out, a, scale_arg=True)
            xp.clip(out, -math.inf, 0, out=out)  # min(0, a * expm1(min(x, 0) / a))
            xp.add(out, s, out=out)
        by_chunks(xp, part, x, out, chunk=_CHUNK)
    xp.add(out, 0.0, out=out)  # the formula's +0 for x = -0 (max(0, -0) + min(0, -0))


def _thresholded_relu_kernel(xp, ins, attrs, outs):
    x, out, alpha = ins[0], outs[0], attrs["alpha"]
    if not (math.isfinite(alpha) and alpha >= 0):
        out.fill(0)
        xp.copyto(out, x, where=x > alpha)
        return
    alpha = float(alpha) + 0.0  # -0 -> +0 (the same threshold)

    def part(xp, x, out, s):
        # fmax(x, alpha) * (x > alpha): x where x > alpha (inf included), alpha * 0 = +0
        # elsewhere, nan too (fmax drops it; fmax/maximum with a scalar are slow in NumPy, with
        # an array fast)
        s.fill(alpha)
        xp.fmax(x, s, out=out)
        xp.greater(x, alpha, out=s)
        xp.multiply(out, s, out=out)
    by_chunks(xp, part, x, out, chunk=_CHUNK)


def _ufunc_kernel(name: str):
    def kernel(xp, ins, attrs, outs):
        getattr(xp, name)(ins[0], out=outs[0])
    return kernel


register(Op("hard_swish", _same_float("hard_swish"), _hard_swish_kernel,
            doc="x * clip(x / 6 + 1/2, 0, 1)"))
register(Op("mish", _same_float("mish"), _mish_kernel, doc="x * tanh(softplus(x))"))
register(Op("celu", _same_float("celu"), _celu_kernel, attrs={"alpha": 1.0},
            doc="max(0, x) + min(0, alpha * (exp(x / alpha) - 1))"))
register(Op("thresholded_relu", _same_float("thresholded_relu"), _thresholded_relu_kernel,
            attrs={"alpha": 1.0}, doc="x if x > alpha else 0"))
register(Op("round", _same_float("round"), _ufunc_kernel("rint"),
            doc="round half to even"))
register(Op("sin", _same_float("sin"), _ufunc_kernel("sin"), doc="sine"))
register(Op("cos", _same_float("cos"), _ufunc_kernel("cos"), doc="cosine"))


def _infer_arg(ins, attrs):
    x = ins[0]
    if x.ndim == 0:
        raise ShapeError("argmax/argmin of a rank-0 tensor: it has no axis to reduce")
    if not -x.ndim <= attrs["axis"] < max(x.ndim, 1):
        raise ShapeError(f"axis {attrs['axis']} is out of range for rank {x.ndim}")
    axis = attrs["axis"] % max(x.ndim, 1)
    if x.ndim and x.shape[axis] == 0:
        raise ShapeError("argmax/argmin of an empty axis")
    shape = list(x.shape)
    if attrs["keepdims"]:
        shape[axis] = 1
    else:
        del shape[axis]
    return (TensorSpec(tuple(shape), np.int64),)


def _arg_kernel(which: str):
    def kernel(xp, ins, attrs, outs):
        x = ins[0]
        axis = attrs["axis"] % max(x.ndim, 1)
        fn = getattr(xp, which)
        if attrs["select_last_index"]:  # the last of equal extremes: search the reversed axis
            rev = xp.flip(x, axis=axis)
            idx = x.shape[axis] - 1 - fn(rev, axis=axis, keepdims=True)
        else:
            idx = fn(x, axis=axis, keepdims=True)
        outs[0][...] = idx.reshape(outs[0].shape)
    return kernel


_ARG_ATTRS = {"axis": 0, "keepdims": 1, "select_last_index": 0}
register(Op("argmax", _infer_arg, _arg_kernel("argmax"), attrs=_ARG_ATTRS, op_class="reduce",
            doc="index of the largest element along axis"))
register(Op("argmin", _infer_arg, _arg_kernel("argmin"), attrs=_ARG_ATTRS, op_class="reduce",
            doc="index of the smallest element along axis"))


def _infer_gather_elements(ins, attrs):
    x, idx = ins
    if idx.dtype.kind not in "iu":
        raise ShapeError(f"gather_elements indices must be integers, got {idx.dtype}")
    if x.ndim == 0 or idx.ndim != x.ndim or not -x.ndim <= attrs["axis"] < x.ndim:
        raise ShapeError(f"gather_elements needs indices of x's rank {x.ndim} and an axis in "
                         f"range, got {idx.shape} and axis {attrs['axis']}")
    return (TensorSpec(idx.shape, x.dtype),)


def _gather_elements_kernel(xp, ins, attrs, outs):
    x, idx = ins
    axis = attrs["axis"] % max(x.ndim, 1)
    idx = xp.where(idx < 0, idx + x.shape[axis], idx)  # ONNX counts negatives from the end
    outs[0][...] = xp.take_along_axis(x, idx.astype(xp.int64), axis=axis)


register(Op("gather_elements", _infer_gather_elements, _gather_elements_kernel, arity=(2, 2),
            attrs={"axis": 0}, op_class="data", doc="x[..., indices[i], ...] along axis"))


def _infer_trilu(ins, attrs):
    if ins[0].ndim < 2:
        raise ShapeError(f"trilu needs a rank >= 2 input, got {ins[0].shape}")
    return (ins[0],)


def _trilu_kernel(xp, ins, attrs, outs):
    x, out, k = ins[0], outs[0], attrs["k"]
    rows, cols = x.shape[-2:]
    # the elements triu/tril set to zero: a (rows, cols) mask, not a tensor-sized temporary
    if attrs["upper"]:
        dropped = xp.tri(rows, cols, k - 1, dtype=bool)
    else:
        dropped = xp.logical_not(xp.tri(rows, cols, k, dtype=bool))
    xp.copyto(out, x)
    xp.copyto(out, xp.zeros((), dtype=out.dtype), where=dropped)  # bool tensors too


register(Op("trilu", _infer_trilu, _trilu_kernel, attrs={"upper": 1, "k": 0}, op_class="data",
            doc="upper (or lower) triangle of the last two dims, from diagonal k"))


# ----------------------------------------------------------------------------------------------
# Public functions


def identity(x, *, device=None):
    """A copy of ``x``."""
    return apply("identity", (x,), device=device)


def dropout(x, ratio: float = 0.5, *, device=None):
    """Dropout at inference: ``x`` unchanged (``ratio`` is recorded, not applied)."""
    return apply("dropout", (x,), {"ratio": ratio}, device=device)


def add_n(*xs, device=None):
    """The sum of any number of tensors of one shape and dtype."""
    return apply("add_n", xs, device=device)


def elu(x, alpha: float = 1.0, *, device=None):
    """``x if x > 0 else alpha * (exp(x) - 1)``."""
    return apply("elu", (x,), {"alpha": alpha}, device=device)


def selu(x, alpha: float = 1.67326319217681884765625, gamma: float = 1.05070102214813232421875,
         *, device=None):
    """Scaled ELU: ``gamma * elu(x, alpha)``."""
    return apply("selu", (x,), {"alpha": alpha, "gamma": gamma}, device=device)


def hard_sigmoid(x, alpha: float = 0.2, beta: float = 0.5, *, device=None):
    """``clip(alpha * x + beta, 0, 1)``."""
    return apply("hard_sigmoid", (x,), {"alpha": alpha, "beta": beta}, device=device)


def prelu(x, slope, *, device=None):
    """``x if x >= 0 else slope * x``; ``slope`` broadcasts to ``x``."""
    return apply("prelu", (x, slope), device=device)


def softplus(x, *, device=None):
    """``log(1 + exp(x))``, computed without overflow."""
    return apply("softplus", (x,), device=device)


def softsign(x, *, device=None):
    """``x / (1 + |x|)``."""
    return apply("softsign", (x,), device=device)


def sign(x, *, device=None):
    """-1, 0 or 1 by the sign of each element."""
    return apply("sign", (x,), device=device)


def expand(x, shape, *, device=None):
    """``x`` broadcast to ``broadcast(x.shape, shape)`` (ONNX Expand)."""
    return apply("expand", (x,), {"shape": tuple(shape)}, device=device)


def tile(x, repeats, *, device=None):
    """``x`` repeated ``repeats[i]`` times along axis ``i``."""
    return apply("tile", (x,), {"repeats": tuple(repeats)}, device=device)


def instance_norm(x, scale, bias, epsilon: float = 1e-5, *, device=None):
    """Normalise each sample and channel over its spatial dims, then ``* scale + bias``."""
    return apply("instance_norm", (x, scale, bias), {"epsilon": epsilon}, device=device)


def logical_not(x, *, device=None):
    """Elementwise not of a bool tensor."""
    return apply("logical_not", (x,), device=device)


def logical_and(a, b, *, device=None):
    """Elementwise and of bool tensors (broadcasting)."""
    return apply("logical_and", (a, b), device=device)


def logical_or(a, b, *, device=None):
    """Elementwise or of bool tensors (broadcasting)."""
    return apply("logical_or", (a, b), device=device)


def logical_xor(a, b, *, device=None):
    """Elementwise xor of bool tensors (broadcasting)."""
    return apply("logical_xor", (a, b), device=device)


def mod(a, b, fmod: int = 0, *, device=None):
    """Remainder of ``a / b``: ``fmod=0`` has the sign of ``b`` (Python ``%``), ``fmod=1`` the
    sign of ``a`` (C ``fmod``)."""
    return apply("mod", (a, b), {"fmod": int(fmod)}, device=device)


def layer_norm(x, scale, bias=None, axis: int = -1, epsilon: float = 1e-5, *, device=None):
    """Normalise ``x`` over dims ``axis`` to the last, then ``* scale + bias`` (ONNX
    LayerNormalization; returns only the normalised tensor)."""
    ins = (x, scale) if bias is None else (x, scale, bias)
    return apply("layer_norm", ins, {"axis": axis, "epsilon": epsilon}, device=device)[0]


def hard_swish(x, *, device=None):
    """``x * clip(x / 6 + 1/2, 0, 1)`` (MobileNetV3's h-swish)."""
    return apply("hard_swish", (x,), device=device)


def mish(x, *, device=None):
    """``x * tanh(softplus(x))``."""
    return apply("mish", (x,), device=device)


def celu(x, alpha: float = 1.0, *, device=None):
    """``max(0, x) + min(0, alpha * (exp(x / alpha) - 1))``."""
    return apply("celu", (x,), {"alpha": alpha}, device=device)


def thresholded_relu(x, alpha: float = 1.0, *, device=None):
    """``x if x > alpha else 0``."""
    return apply("thresholded_relu", (x,), {"alpha": alpha}, device=device)


def round(x, *, device=None):  # noqa: A001  (the op's name)
    """Round half to even."""
    return apply("round", (x,), device=device)


def sin(x, *, device=None):
    """Elementwise sine."""
    return apply("sin", (x,), device=device)


def cos(x, *, device=None):
    """Elementwise cosine."""
    return apply("cos", (x,), device=device)


def argmax(x, axis: int = 0, keepdims: bool = True, select_last_index: bool = False, *,
           device=None):
    """Index (int64) of the largest element along ``axis``."""
    return apply("argmax", (x,), {"axis": axis, "keepdims": int(keepdims),
                                  "select_last_index": int(select_last_index)}, device=device)


def argmin(x, axis: int = 0, keepdims: bool = True, select_last_index: bool = False, *,
           device=None):
    """Index (int64) of the smallest element along ``axis``."""
    return apply("argmin", (x,), {"axis": axis, "keepdims": int(keepdims),
                                  "select_last_index": int(select_last_index)}, device=device)


def gather_elements(x, indices, axis: int = 0, *, device=None):
    """``out[i][j] = x[indices[i][j]][j]`` for ``axis=0`` (ONNX GatherElements)."""
    return apply("gather_elements", (x, indices), {"axis": axis}, device=device)


def trilu(x, upper: bool = True, k: int = 0, *, device=None):
    """The upper (or lower) triangle of the last two dims of ``x``, from diagonal ``k``."""
    return apply("trilu", (x,), {"upper": upper, "k": k}, device=device)
