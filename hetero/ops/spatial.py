"""N-d spatial ops with ONNX semantics: ``conv_nd``, ``conv_transpose``, ``max_pool_nd``,
``avg_pool_nd`` and ``resize``.

The 2-D ``conv2d`` and pools of ``hetero.ops.nn`` are the fast path for images; these ops take
any number of spatial axes (an input is N, C, D1, ..., Dk), which is what 3-D convolutions and
pools, transposed convolutions (decoder and segmentation heads) and resizes need.

Each kernel is written once against the array namespace ``xp`` (NumPy or CuPy) and works tap by
tap: a window of ``K1 x ... x Kk`` taps is ``prod(K)`` strided slices of the padded input, so a
convolution is one batched product over (channels x taps), a transposed convolution is one
product followed by a strided add per tap (col2im), and a pool is a running maximum or sum over
the taps. ``resize`` is separable: each resized axis is a gather of ``n`` neighbours per output
position and a weighted sum, with the neighbours and weights computed on the host from the
shapes and attributes alone (ONNX Resize's coordinate transforms, nearest rounding modes,
linear and cubic weights, ``exclude_outside``, antialiasing and ``tf_crop_and_resize``'s
extrapolation), exactly as ``onnx.reference`` defines them.
"""

from __future__ import annotations

import functools
import itertools
import math

import numpy as np

from hetero.errors import ShapeError
from hetero.graph import TensorSpec
from hetero.ops.registry import REQUIRED, Cost, Op, register, same_dtype
from hetero.tracing import apply

__all__ = ["conv_nd", "conv_transpose", "max_pool_nd", "avg_pool_nd", "resize"]


# ----------------------------------------------------------------------------------------------
# Window geometry shared by the ops


def _geometry(x: TensorSpec, attrs, kernel: tuple[int, ...], opname: str):
    """(strides, pads, dilations) of a window op on ``x`` (N, C, spatial...), checked."""
    nd = x.ndim - 2
    if nd < 1:
        raise ShapeError(f"{opname} needs an N,C,spatial... input, got shape {x.shape}")
    strides = tuple(attrs["strides"]) or (1,) * nd
    dilations = tuple(attrs["dilations"]) or (1,) * nd
    pads = tuple(attrs["pads"]) or (0,) * (2 * nd)
    if len(kernel) != nd or len(strides) != nd or len(dilations) != nd or len(pads) != 2 * nd:
        raise ShapeError(f"{opname}: kernel {kernel}, strides {strides}, dilations {dilations} "
                         f"and pads {pads} do not fit {nd} spatial axes of {x.shape}")
    if min(kernel) < 1 or min(strides) < 1 or min(dilations) < 1:
        raise ShapeError(f"{opname}: kernel {kernel}, strides {strides} and dilations "
                         f"{dilations} must be positive")
    return strides, pads, dilations


def _out_len(size: int, k: int, s: int, d: int, p0: int, p1: int, ceil_mode: bool) -> int:
    """Output length along one axis (ONNX's rule: with ``ceil_mode`` a last window that would
    start in the trailing padding is dropped)."""
    span = size + p0 + p1 - (d * (k - 1) + 1)
    if span < 0:
        return 0
    if not ceil_mode:
        return span // s + 1
    out = -(-span // s) + 1
    if (out - 1) * s >= size + p0:
        out -= 1
    return out


def _window_out(x: TensorSpec, kernel, strides, pads, dilations, ceil_mode, opname):
    nd = len(kernel)
    out = tuple(_out_len(x.shape[2 + i], kernel[i], strides[i], dilations[i], pads[i],
                         pads[nd + i], ceil_mode) for i in range(nd))
    if min(out) < 1:
        raise ShapeError(f"{opname}: a {kernel} window (dilations {dilations}) does not fit "
                         f"the spatial shape {x.shape[2:]} padded by {pads}; the output would "
                         f"be {out}")
    return out


def _taps(kernel):
    return list(itertools.product(*(range(k) for k in kernel)))


def _tap_slices(tap, dilations, strides, lengths):
    """The strided slice that tap ``tap`` reads (or writes) for ``lengths`` window positions."""
    return tuple(slice(t * d, t * d + (n - 1) * s + 1, s)
                 for t, d, s, n in zip(tap, dilations, strides, lengths))


def _padded(xp, x, pads, ends, fill):
    """``x`` with ``pads`` before and ``ends`` after its spatial axes, filled with ``fill``."""
    nd = x.ndim - 2
    if not any(pads[:nd]) and not any(ends):
        return x
    buf = xp.full(x.shape[:2] + tuple(x.shape[2 + i] + pads[i] + ends[i] for i in range(nd)),
                  fill, dtype=x.dtype)
    inner = tuple(slice(pads[i], pads[i] + x.shape[2 + i]) for i in range(nd))
    buf[(slice(None), slice(None)) + inner] = x
    return buf


# ----------------------------------------------------------------------------------------------
# conv_nd


def _conv_nd_infer(ins, attrs):
    x, w = ins[0], ins[1]
    dtype = same_dtype(ins, "conv_nd inputs")
    if dtype.kind != "f":
        raise ShapeError(f"conv_nd needs floating-point inputs, got {dtype.name}")
    g = attrs["groups"]
    if w.ndim != x.ndim:
        raise ShapeError(f"conv_nd: weight {w.shape} and input {x.shape} differ in rank")
    kernel = w.shape[2:]
    strides, pads, dilations = _geometry(x, attrs, kernel, "conv_nd")
    if g < 1 or x.shape[1] % g or w.shape[0] % g or w.shape[1] * g != x.shape[1]:
        raise ShapeError(f"conv_nd: input channels {x.shape[1]}, weight {w.shape} and groups "
                         f"{g} do not fit (weight must be M x C/groups x kernel)")
    if len(ins) == 3 and ins[2].shape != (w.shape[0],):
        raise ShapeError(f"conv_nd: bias of shape {ins[2].shape}, expected ({w.shape[0]},)")
    out = _window_out(x, kernel, strides, pads, dilations, False, "conv_nd")
    return (TensorSpec((x.shape[0], w.shape[0]) + out, dtype),)


def _conv_nd_kernel(xp, ins, attrs, outs):
    x, w = ins[0], ins[1]
    out = outs[0]
    nd = x.ndim - 2
    strides, pads, dilations = _geometry(TensorSpec(x.shape, x.dtype), attrs, w.shape[2:],
                                         "conv_nd")
    g = attrs["groups"]
    n, c = x.shape[:2]
    m = w.shape[0]
    out_sp = out.shape[2:]
    p, taps = math.prod(out_sp), _taps(w.shape[2:])
    buf = _padded(xp, x, pads[:nd], pads[nd:], 0)
    cols = xp.empty((n, g, c // g, len(taps), p), dtype=x.dtype)
    for t, tap in enumerate(taps):
        window = buf[(slice(None), slice(None)) + _tap_slices(tap, dilations, strides, out_sp)]
        cols[:, :, :, t, :] = window.reshape(n, g, c // g, p)
    res = xp.matmul(w.reshape(g, m // g, (c // g) * len(taps)),
                    cols.reshape(n, g, (c // g) * len(taps), p))
    out[...] = res.reshape(out.shape)
    if len(ins) == 3:
        out += ins[2].reshape((1, m) + (1,) * nd)


def _conv_nd_cost(ins, outs, attrs):
    w = ins[1]
    per_out = 2.0 * math.prod(w.shape[1:])
    return Cost(flops=outs[0].size * per_out,
                bytes=float(sum(s.nbytes for s in ins) + outs[0].nbytes))


_WINDOW_ATTRS = {"strides": (), "pads": (), "dilations": ()}
register(Op("conv_nd", _conv_nd_infer, _conv_nd_kernel, arity=(2, 3),
            attrs={**_WINDOW_ATTRS, "groups": 1}, cost=_conv_nd_cost, op_class="conv",
            doc="N-d grouped convolution of an N,C,spatial... input (ONNX Conv, any rank)"))


def conv_nd(x, w, b=None, *, strides=(), pads=(), dilations=(), groups=1, device=None):
    """N-d convolution (ONNX Conv): ``w`` is M x C/groups x kernel; ``pads`` are the begins of
    every spatial axis, then the ends; empty tuples mean strides and dilations 1, pads 0."""
    ins = (x, w) if b is None else (x, w, b)
    return apply("conv_nd", ins, {"strides": tuple(strides), "pads": tuple(pads),
                                  "dilations": tuple(dilations), "groups": int(groups)},
                 device=device)


# ----------------------------------------------------------------------------------------------
# conv_transpose


def _conv_transpose_geometry(x: TensorSpec, w: TensorSpec, attrs):
    kernel = w.shape[2:]
    strides, pads, dilations = _geometry(x, attrs, kernel, "conv_transpose")
    nd = len(kernel)
    extra = tuple(attrs["output_padding"]) or (0,) * nd
    if len(extra) != nd:
        raise ShapeError(f"conv_transpose: output_padding {extra} needs {nd} entries")
    full = tuple(strides[i] * (x.shape[2 + i] - 1) + extra[i] + dilations[i] * (kernel[i] - 1)
                 + 1 for i in range(nd))
    out = tuple(full[i] - pads[i] - pads[nd + i] for i in range(nd))
    return strides, pads, dilations, full, out


def _conv_transpose_infer(ins, attrs):
    x, w = ins[0], ins[1]
    dtype = same_dtype(ins, "conv_transpose inputs")
    if dtype.kind != "f":
        raise ShapeError(f"conv_transpose needs floating-point inputs, got {dtype.name}")
    if w.ndim != x.ndim:
        raise ShapeError(f"conv_transpose: weight {w.shape} and input {x.shape} differ in rank")
    g = attrs["groups"]
    if g < 1 or x.shape[1] % g or w.shape[0] != x.shape[1]:
        raise ShapeError(f"conv_transpose: input channels {x.shape[1]}, weight {w.shape} and "
                         f"groups {g} do not fit (weight must be C x M/groups x kernel)")
    m = w.shape[1] * g
    if len(ins) == 3 and ins[2].shape != (m,):
        raise ShapeError(f"conv_transpose: bias of shape {ins[2].shape}, expected ({m},)")
    *_, out = _conv_transpose_geometry(x, w, attrs)
    if min(out) < 1:
        raise ShapeError(f"conv_transpose: the output would be {out} (input {x.shape}, weight "
                         f"{w.shape}, pads {attrs['pads']})")
    return (TensorSpec((x.shape[0], m) + out, dtype),)


def _conv_transpose_kernel(xp, ins, attrs, outs):
    x, w = ins[0], ins[1]
    out = outs[0]
    nd = x.ndim - 2
    strides, pads, dilations, full, out_sp = _conv_transpose_geometry(
        TensorSpec(x.shape, x.dtype), TensorSpec(w.shape, w.dtype), attrs)
    g = attrs["groups"]
    n, c = x.shape[:2]
    mg = w.shape[1]
    in_sp = x.shape[2:]
    p, taps = math.prod(in_sp), _taps(w.shape[2:])
    # every tap's contribution at once: (G, Mg*T, C/G) @ (N, G, C/G, P) -> (N, G, Mg*T, P)
    wt = xp.swapaxes(w.reshape(g, c // g, mg * len(taps)), 1, 2)
    cols = xp.matmul(wt, x.reshape(n, g, c // g, p)).reshape(n, g * mg, len(taps), *in_sp)
    buf = xp.zeros((n, g * mg) + full, dtype=x.dtype)
    for t, tap in enumerate(taps):
        buf[(slice(None), slice(None)) + _tap_slices(tap, dilations, strides, in_sp)] += \
            cols[:, :, t]
    # crop the pads (a negative pad, from an output_shape larger than the full result, is zeros)
    src, dst = [], []
    for i in range(nd):
        lo = max(pads[i], 0)
        at = max(-pads[i], 0)
        length = min(full[i] - lo, out_sp[i] - at)
        src.append(slice(lo, lo + length))
        dst.append(slice(at, at + length))
    if any(pads[i] < 0 or pads[nd + i] < 0 for i in range(nd)):
        out[...] = 0
    out[(slice(None), slice(None)) + tuple(dst)] = buf[(slice(None), slice(None)) + tuple(src)]
    if len(ins) == 3:
        out += ins[2].reshape((1, g * mg) + (1,) * nd)


def _conv_transpose_cost(ins, outs, attrs):
    x, w = ins[0], ins[1]
    flops = 2.0 * x.size * math.prod(w.shape[1:])
    return Cost(flops=flops, bytes=float(sum(s.nbytes for s in ins) + outs[0].nbytes))


register(Op("conv_transpose", _conv_transpose_infer, _conv_transpose_kernel, arity=(2, 3),
            attrs={**_WINDOW_ATTRS, "output_padding": (), "groups": 1},
            cost=_conv_transpose_cost, op_class="conv",
            doc="N-d grouped transposed convolution (ONNX ConvTranspose; pads already resolved)"))


def conv_transpose(x, w, b=None, *, strides=(), pads=(), dilations=(), output_padding=(),
                   groups=1, device=None):
    """N-d transposed convolution (ONNX ConvTranspose): ``w`` is C x M/groups x kernel; the
    output along each axis is ``s*(n-1) + output_padding + d*(k-1) + 1 - pad_begin - pad_end``
    (a negative pad adds zeros)."""
    ins = (x, w) if b is None else (x, w, b)
    return apply("conv_transpose", ins, {
        "strides": tuple(strides), "pads": tuple(pads), "dilations": tuple(dilations),
        "output_padding": tuple(output_padding), "groups": int(groups)}, device=device)


# ----------------------------------------------------------------------------------------------
# max_pool_nd, avg_pool_nd


def _pool_parts(x: TensorSpec, attrs, opname):
    kernel = tuple(attrs["kernel_shape"])
    strides, pads, dilations = _geometry(x, attrs, kernel, opname)
    out = _window_out(x, kernel, strides, pads, dilations, bool(attrs["ceil_mode"]), opname)
    nd = len(kernel)
    # the trailing padding a ceil_mode window may run into, past the explicit pads
    ends = tuple(max((out[i] - 1) * strides[i] + dilations[i] * (kernel[i] - 1) + 1
                     - x.shape[2 + i] - pads[i], pads[nd + i]) for i in range(nd))
    return kernel, strides, pads, dilations, out, ends


def _counts(out_len, k, s, d, p0, lo, hi):
    """How many taps of each window along one axis land in ``[lo, hi)`` (unpadded coords)."""
    start = np.arange(out_len)[:, None] * s - p0 + np.arange(k)[None, :] * d
    return ((start >= lo) & (start < hi)).sum(axis=1)


def _pool_infer(opname):
    def infer(ins, attrs):
        (x,) = ins
        if x.dtype.kind not in "iuf" or (opname == "avg_pool_nd" and x.dtype.kind != "f"):
            raise ShapeError(f"{opname} does not take {x.dtype.name} inputs")
        kernel, strides, pads, dilations, out, _ = _pool_parts(x, attrs, opname)
        nd = len(kernel)
        for i in range(nd):
            if _counts(out[i], kernel[i], strides[i], dilations[i], pads[i], 0,
                       x.shape[2 + i]).min() == 0:
                raise ShapeError(f"{opname}: with pads {pads}, kernel {kernel} and dilations "
                                 f"{dilations} a window would see padding only")
        specs = [TensorSpec(x.shape[:2] + out, x.dtype)]
        if opname == "max_pool_nd" and attrs["indices"]:
            specs.append(TensorSpec(x.shape[:2] + out, np.int64))
        return tuple(specs)
    return infer


def _lowest(dtype):
    return -np.inf if dtype.kind == "f" else np.iinfo(dtype).min


def _max_pool_nd_kernel(xp, ins, attrs, outs):
    (x,) = ins
    spec = TensorSpec(x.shape, x.dtype)
    kernel, strides, pads, dilations, out_sp, ends = _pool_parts(spec, attrs, "max_pool_nd")
    nd = len(kernel)
    buf = _padded(xp, x, pads[:nd], ends, _lowest(x.dtype))
    out = outs[0]
    indices = outs[1] if len(outs) > 1 else None
    best_tap = None
    for t, tap in enumerate(_taps(kernel)):
        window = buf[(slice(None), slice(None)) + _tap_slices(tap, dilations, strides, out_sp)]
        if t == 0:
            out[...] = window
            if indices is not None:
                best_tap = xp.zeros(out.shape, dtype=xp.int64)
            continue
        if indices is not None:
            better = window > out
            best_tap[better] = t
        xp.maximum(out, window, out=out)
    if indices is not None:
        _argmax_indices(xp, x.shape, kernel, strides, pads, dilations, out_sp, best_tap, indices,
                        bool(attrs["storage_order"]))


def _argmax_indices(xp, shape, kernel, strides, pads, dilations, out_sp, best_tap, indices,
                    column_major):
    """ONNX MaxPool's Indices: the row-major flat index into the (unpadded) input of each
    window's first maximum (``column_major``: ONNX's storage_order=1)."""
    nd = len(kernel)
    # per tap, the flat spatial index of every window position (host, from the shapes alone)
    coords = np.meshgrid(*(np.arange(o) for o in out_sp), indexing="ij")
    table = np.empty((len(_taps(kernel)),) + tuple(out_sp), np.int64)
    for t, tap in enumerate(_taps(kernel)):
        pos = [coords[i] * strides[i] - pads[i] + tap[i] * dilations[i] for i in range(nd)]
        pos = [np.clip(p, 0, shape[2 + i] - 1) for i, p in enumerate(pos)]
        if column_major:  # storage_order=1: the spatial axes in column-major order
            table[t] = np.ravel_multi_index(pos[::-1], shape[2:][::-1])
        else:
            table[t] = np.ravel_multi_index(pos, shape[2:])
    table = xp.asarray(table)
    spatial = math.prod(shape[2:])
    plane = xp.arange(shape[0] * shape[1], dtype=xp.int64).reshape(shape[:2] + (1,) * nd)
    indices[...] = plane * spatial + _pick(xp, table, best_tap)


def _pick(xp, table, best_tap):
    """``table[best_tap[n, c, o...], o...]`` for every n, c and window position o."""
    grids = xp.meshgrid(*(xp.arange(o) for o in best_tap.shape[2:]), indexing="ij")
    return table[(best_tap,) + tuple(gr[None, None] for gr in grids)]


def _avg_pool_nd_kernel(xp, ins, attrs, outs):
    (x,) = ins
    spec = TensorSpec(x.shape, x.dtype)
    kernel, strides, pads, dilations, out_sp, ends = _pool_parts(spec, attrs, "avg_pool_nd")
    nd = len(kernel)
    buf = _padded(xp, x, pads[:nd], ends, 0)
    out = outs[0]
    for t, tap in enumerate(_taps(kernel)):
        window = buf[(slice(None), slice(None)) + _tap_slices(tap, dilations, strides, out_sp)]
        if t == 0:
            out[...] = window
        else:
            out += window
    # the divisor is separable: a product of per-axis tap counts
    count = np.ones((), np.float64)
    for i in range(nd):
        lo, hi = (-pads[i], x.shape[2 + i] + pads[nd + i]) if attrs["count_include_pad"] \
            else (0, x.shape[2 + i])
        per = _counts(out_sp[i], kernel[i], strides[i], dilations[i], pads[i], lo, hi)
        count = count[..., None] * per if i else per.astype(np.float64)
    out *= xp.asarray((1.0 / count).astype(out.dtype))


def _pool_nd_cost(ins, outs, attrs):
    taps = math.prod(attrs["kernel_shape"])
    return Cost(flops=float(outs[0].size * taps),
                bytes=float(ins[0].nbytes + sum(s.nbytes for s in outs)))


_POOL_ATTRS = {"kernel_shape": REQUIRED, **_WINDOW_ATTRS, "ceil_mode": 0}
register(Op("max_pool_nd", _pool_infer("max_pool_nd"), _max_pool_nd_kernel,
            attrs={**_POOL_ATTRS, "indices": 0, "storage_order": 0}, cost=_pool_nd_cost,
            op_class="reduce",
            doc="N-d max pooling (ONNX MaxPool, any rank, with its Indices output)"))
register(Op("avg_pool_nd", _pool_infer("avg_pool_nd"), _avg_pool_nd_kernel,
            attrs={**_POOL_ATTRS, "count_include_pad": 0}, cost=_pool_nd_cost,
            op_class="reduce", doc="N-d average pooling (ONNX AveragePool, any rank)"))


def max_pool_nd(x, kernel_shape, *, strides=(), pads=(), dilations=(), ceil_mode=0, indices=0,
                device=None):
    """N-d max pooling (ONNX MaxPool); with ``indices`` also returns each window's argmax as a
    flat index into the input."""
    return apply("max_pool_nd", (x,), {
        "kernel_shape": tuple(kernel_shape), "strides": tuple(strides), "pads": tuple(pads),
        "dilations": tuple(dilations), "ceil_mode": int(ceil_mode), "indices": int(indices)},
        device=device)


def avg_pool_nd(x, kernel_shape, *, strides=(), pads=(), dilations=(), ceil_mode=0,
                count_include_pad=0, device=None):
    """N-d average pooling (ONNX AveragePool)."""
    return apply("avg_pool_nd", (x,), {
        "kernel_shape": tuple(kernel_shape), "strides": tuple(strides), "pads": tuple(pads),
        "dilations": tuple(dilations), "ceil_mode": int(ceil_mode),
        "count_include_pad": int(count_include_pad)}, device=device)


# ----------------------------------------------------------------------------------------------
# resize

_MODES = ("nearest", "linear", "cubic")
_TRANSFORMS = ("half_pixel", "half_pixel_symmetric", "pytorch_half_pixel", "align_corners",
               "asymmetric", "tf_crop_and_resize")
_NEAREST = ("round_prefer_floor", "round_prefer_ceil", "floor", "ceil", "simple")


def _reals(value, key: str) -> tuple[float, ...]:
    if isinstance(value, (str, bytes)) or not isinstance(value, (tuple, list)) or not all(
            isinstance(v, (int, float, np.integer, np.floating))
            and not isinstance(v, (bool, np.bool_)) for v in value):
        raise ShapeError(f"resize: attribute {key!r} must be a sequence of numbers, got "
                         f"{value!r}")
    return tuple(float(v) for v in value)


def _resize_infer(ins, attrs):
    (x,) = ins
    _reals(attrs["scales"], "scales")
    _reals(attrs["roi"], "roi")
    sizes, scales, roi = tuple(attrs["sizes"]), tuple(attrs["scales"]), tuple(attrs["roi"])
    r = x.ndim
    if len(sizes) != r or len(scales) != r or len(roi) not in (0, 2 * r):
        raise ShapeError(f"resize: sizes {sizes}, scales {scales} and roi {roi} do not fit an "
                         f"input of rank {r}")
    if min(sizes, default=1) < 0 or any(not s > 0 for s in scales):
        raise ShapeError(f"resize: sizes {sizes} and scales {scales} must be positive")
    for key, allowed in (("mode", _MODES), ("coordinate_transformation_mode", _TRANSFORMS),
                         ("nearest_mode", _NEAREST)):
        if attrs[key] not in allowed:
            raise ShapeError(f"resize: {key} {attrs[key]!r} is not one of {', '.join(allowed)}")
    if attrs["coordinate_transformation_mode"] == "tf_crop_and_resize" and not roi:
        raise ShapeError("resize: tf_crop_and_resize needs a roi")
    if attrs["mode"] != "nearest" and x.dtype.kind not in "iuf":
        raise ShapeError(f"resize: {attrs['mode']} mode does not take {x.dtype.name} inputs")
    if attrs["mode"] == "nearest" and attrs["antialias"]:
        raise ShapeError("resize: antialias does not apply to nearest mode")
    return (TensorSpec(sizes, x.dtype),)


def _nearest_pick(ratio: np.ndarray, mode: str, scale: float) -> np.ndarray:
    """1 where the nearest neighbour is the upper one of the pair (ratio in (0, 1])."""
    if mode == "simple":  # onnxruntime's rule for opset-10 Resize and Upsample
        mode = "ceil" if scale < 1 else "floor"
    upper = {"round_prefer_floor": ratio > 0.5, "round_prefer_ceil": ratio >= 0.5,
             "floor": np.zeros(ratio.shape, bool), "ceil": np.ones(ratio.shape, bool)}[mode]
    return upper


def _coefficients(ratio: np.ndarray, scale: float, mode: str, a: float, antialias: bool):
    """(out, n) weights of the ``n`` neighbours of each output position (onnx.reference's
    ``_linear_coeffs``, ``_cubic_coeffs`` and their antialiased forms)."""
    r = ratio[:, None]
    if mode == "linear" and not antialias:
        return np.concatenate([1 - r, r], axis=1)
    if mode == "cubic" and not antialias:
        q = 1 - r
        return np.concatenate([
            ((a * (r + 1) - 5 * a) * (r + 1) + 8 * a) * (r + 1) - 4 * a,
            ((a + 2) * r - (a + 3)) * r * r + 1,
            ((a + 2) * q - (a + 3)) * q * q + 1,
            ((a * (q + 1) - 5 * a) * (q + 1) + 8 * a) * (q + 1) - 4 * a], axis=1)
    scale = min(scale, 1.0)
    if mode == "linear":
        start = int(np.floor(-1 / scale) + 1)
        args = (np.arange(start, 2 - start)[None, :] - r) * scale
        c = np.clip(1 - np.abs(args), 0, 1)
    else:
        start = int(np.floor(-2 / scale) + 1)
        x = np.abs(scale * (np.arange(start, 2 - start)[None, :] - r))
        c = np.where(x <= 1, (a + 2) * x ** 3 - (a + 3) * x ** 2 + 1,
                     np.where(x < 2, a * x ** 3 - 5 * a * x ** 2 + 8 * a * x - 4 * a, 0.0))
    return c / c.sum(axis=1, keepdims=True)


@functools.lru_cache(maxsize=256)
def _axis_table(n_in: int, n_out: int, scale: float, roi: tuple[float, float] | None,
                mode: str, transform: str, nearest: str, a: float, exclude: bool,
                antialias: bool):
    """(indices (out, n), weights (out, n) or None for nearest, extrapolated (out,) or None)
    of one resized axis: onnx.reference's ``_interpolate_1d_along_axis``."""
    y = np.arange(n_out, dtype=np.float64)
    width = scale * n_in
    extrapolated = None
    if transform == "align_corners":
        x = np.zeros(n_out) if width == 1 else y * (n_in - 1) / (width - 1)
    elif transform == "asymmetric":
        x = y / scale
    elif transform == "tf_crop_and_resize":
        lo, hi = roi
        x = (np.full(n_out, (hi - lo) * (n_in - 1) / 2) if width == 1
             else y * (hi - lo) * (n_in - 1) / (width - 1))
        x = x + lo * (n_in - 1)
        extrapolated = (x < 0) | (x > n_in - 1)
    elif transform == "pytorch_half_pixel":
        x = np.full(n_out, -0.5) if width == 1 else (y + 0.5) / scale - 0.5
    elif transform == "half_pixel":
        x = (y + 0.5) / scale - 0.5
    else:  # half_pixel_symmetric
        offset = n_in / 2 * (1 - n_out / width)
        x = offset + (y + 0.5) / scale - 0.5
    base = np.floor(x)
    ratio = np.where(x == base, 1.0, x - base)
    if mode == "nearest":
        # an integer x is that neighbour itself; otherwise the lower or the upper one
        idx = np.where(x == base, base, base + _nearest_pick(ratio, nearest, scale))
        idx = idx.astype(np.int64)
        return np.clip(idx, 0, n_in - 1)[:, None], None, extrapolated
    weights = _coefficients(ratio, scale, mode, a, antialias)
    n = weights.shape[1]
    pad = int(np.ceil(n / 2))
    xp_ = x + pad
    p = np.floor(xp_).astype(np.int64)
    frac = xp_ - p
    if n % 2 == 0:
        offset = np.where(frac == 0, -(n // 2), -(n // 2) + 1)
    else:
        offset = np.where(frac <= 0.5, -((n - 1) // 2), -((n - 1) // 2) + 1)
    idx = (p + offset)[:, None] + np.arange(n)[None, :] - pad
    if exclude:
        weights = np.where((idx < 0) | (idx >= n_in), 0.0, weights)
        total = weights.sum(axis=1, keepdims=True)
        weights = weights / np.where(total == 0, 1.0, total)
    return np.clip(idx, 0, n_in - 1), weights, extrapolated


def _resize_kernel(xp, ins, attrs, outs):
    (x,) = ins
    out = outs[0]
    sizes, scales = tuple(attrs["sizes"]), tuple(attrs["scales"])
    roi = tuple(attrs["roi"]) or None
    r = x.ndim
    mode = attrs["mode"]
    float_dtype = x.dtype if x.dtype.kind == "f" and x.dtype.itemsize >= 4 else np.float32
    if mode != "nearest" and x.dtype.kind != "f":
        float_dtype = np.float64
    y = x if mode == "nearest" else x.astype(float_dtype, copy=False)
    for axis in range(r):
        box = None if roi is None else (float(roi[axis]), float(roi[axis + r]))
        if (math.isclose(scales[axis], 1.0) and sizes[axis] == y.shape[axis]
                and (box is None or (math.isclose(box[0], 0.0) and math.isclose(box[1], 1.0)))):
            continue
        if sizes[axis] == 0:
            y = xp.empty(y.shape[:axis] + (0,) + y.shape[axis + 1:], dtype=y.dtype)
            continue
        idx, weights, extrapolated = _axis_table(
            y.shape[axis], sizes[axis], float(scales[axis]), box, mode,
            attrs["coordinate_transformation_mode"], attrs["nearest_mode"],
            float(attrs["cubic_coeff_a"]), bool(attrs["exclude_outside"]),
            bool(attrs["antialias"]))
        if weights is None:
            y = xp.take(y, xp.asarray(idx[:, 0]), axis=axis)
        else:
            n = weights.shape[1]
            gathered = xp.take(y, xp.asarray(idx.reshape(-1)), axis=axis)
            gathered = gathered.reshape(y.shape[:axis] + (sizes[axis], n) + y.shape[axis + 1:])
            w = xp.asarray(weights.astype(float_dtype)).reshape(
                (1,) * axis + weights.shape + (1,) * (r - axis - 1))
            y = (gathered * w).sum(axis=axis + 1)
        if extrapolated is not None and extrapolated.any():
            mask = xp.asarray(extrapolated.reshape((1,) * axis + (-1,) + (1,) * (r - axis - 1)))
            y = xp.where(mask, xp.asarray(attrs["extrapolation_value"], dtype=y.dtype), y)
    if y.dtype != out.dtype and out.dtype.kind in "iu":
        info = np.iinfo(out.dtype)
        y = xp.clip(xp.rint(y), info.min, info.max)
    out[...] = y


def _resize_cost(ins, outs, attrs):
    taps = {"nearest": 0, "linear": 2, "cubic": 4}[attrs["mode"]]
    return Cost(flops=float(outs[0].size * 2 * taps * ins[0].ndim),
                bytes=float(ins[0].nbytes + outs[0].nbytes))


register(Op("resize", _resize_infer, _resize_kernel, attrs={
    "sizes": REQUIRED, "scales": REQUIRED, "roi": (), "mode": "nearest",
    "coordinate_transformation_mode": "half_pixel", "nearest_mode": "round_prefer_floor",
    "cubic_coeff_a": -0.75, "exclude_outside": 0, "extrapolation_value": 0.0, "antialias": 0},
    cost=_resize_cost, op_class="data",
    doc="resize by nearest, linear or cubic interpolation per axis (ONNX Resize, Upsample)"))


def resize(x, sizes, scales=None, *, mode="nearest", coordinate_transformation_mode="half_pixel",
           nearest_mode="round_prefer_floor", cubic_coeff_a=-0.75, exclude_outside=0,
           extrapolation_value=0.0, antialias=0, roi=(), device=None):
    """Resize ``x`` to shape ``sizes`` (ONNX Resize); ``scales`` (default ``sizes / shape``)
    enter the coordinate transform."""
    sizes = tuple(int(s) for s in sizes)
    shape = x.shape
    if scales is None:
        scales = tuple(s / n if n else 1.0 for s, n in zip(sizes, shape))
    return apply("resize", (x,), {
        "sizes": sizes, "scales": tuple(float(s) for s in scales), "roi": tuple(roi),
        "mode": mode, "coordinate_transformation_mode": coordinate_transformation_mode,
        "nearest_mode": nearest_mode, "cubic_coeff_a": float(cubic_coeff_a),
        "exclude_outside": int(exclude_outside), "extrapolation_value": float(extrapolation_value),
        "antialias": int(antialias)}, device=device)
