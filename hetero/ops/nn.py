"""Neural-network ops: convolution, pooling, batch normalisation and local response normalisation.

ONNX semantics throughout: activations are NCHW, convolution weights OIHW, ``pads`` are in ONNX
order ``(top, left, bottom, right)``.

Every kernel is written once against the array namespace ``xp`` (NumPy on the CPU and the
simulated GPU, CuPy on a CUDA GPU) and uses only functions the two share. The design of the
convolution, which decides the speed of a CNN on the CPU:

* A 1x1, stride-1, unpadded convolution is a plain GEMM: the input ``(C, H*W)`` of each image is
  already the patch matrix, so no copy is made.
* Any other convolution pads the input once (only when ``pads`` are non-zero), takes a strided
  view of every patch (``as_strided``: no copy), copies that view once into the patch matrix
  ``(C*KH*KW, OH*OW)`` (im2col) and runs one GEMM per image and group, writing straight into the
  output buffer. The ``(C, KH, KW)`` patch order matches the OIHW weights, so the weights are used
  as they are, never reordered per call.
* A depthwise convolution (one input channel per group) has no GEMM worth the name; it is a loop
  over the ``KH*KW`` taps of one fused multiply-add over the whole tensor.
* Bias and the fused activation are applied in place on the GEMM output.

Kernels keep no state between calls, so several worker threads may run them at once.

Intra-op parallelism: a convolution that runs alone on the CPU splits itself. While the executor
runs a plan whose CPU workers leave cores over (a chain gets one worker on a 2-core box), it sets
``intra_op(threads)`` and BLAS to one thread. A conv2d / conv2d_add / conv2d_winograd (and a
large gemm, in hetero.ops.linalg) is cut into a few pieces: row bands of the output map, each
with its own im2col, or bands of output channels when the map is small, or one piece per group
of a grouped conv. ``parallel_for`` hands the pieces to the calling thread and ``threads - 1``
helper threads; each piece is a single-threaded GEMM written straight into its slice of the
output (no join copy), with bias, residual and activation applied while the slice is in cache.
Pieces are taken dynamically and the calling thread takes whatever is left, so on a loaded host
a helper that gets no core costs at most a piece, where OpenBLAS's own threads wait for each
other at a barrier (ResNet-50 under load: median 1715 ms with two OpenBLAS threads, 101 ms cut).
The cut depends only on the shapes, never on the thread count (one thread runs the same pieces
in turn), so results do not depend on how many threads ran and the reference executor, which
runs kernels on one thread, computes the very same bits.
"""

from __future__ import annotations

import math

import numpy as np

from hetero.errors import ShapeError
from hetero.graph import TensorSpec
from hetero.ops.registry import REQUIRED, Cost, Op, register, require_float, same_dtype
from hetero.ops.scratch import by_chunks
from hetero.threads import intra_op_threads, parallel_for
from hetero.tracing import apply

__all__ = [
    "conv2d", "conv2d_add", "conv2d_winograd", "winograd_weights", "max_pool2d", "avg_pool2d",
    "global_avg_pool", "global_max_pool", "batch_norm", "lrn", "ACTIVATIONS",
]

#: Activations that conv2d can apply to its output in place (``activation=`` attribute), with the
#: number of ``activation_params`` each takes: leaky_relu (alpha), clip (min, max), hard_sigmoid
#: (alpha, beta). silu is ``x * sigmoid(x)`` (EfficientNet's Sigmoid + Mul), hard_swish and
#: hard_sigmoid are MobileNet v3's; each computes the bits of the ops it replaces.
ACTIVATIONS = {"none": 0, "relu": 0, "leaky_relu": 1, "sigmoid": 0, "tanh": 0, "clip": 2,
               "silu": 0, "hard_swish": 0, "hard_sigmoid": 2}

# ----------------------------------------------------------------------------------------------
# Intra-op parallelism (the pool itself is hetero.threads)

#: A conv with fewer flops than this runs whole: handing pieces to a helper costs ~10-50 us.
SPLIT_MIN_FLOPS = 4e6


# ----------------------------------------------------------------------------------------------
# Shared shape arithmetic


def _pair(value, name: str, opname: str) -> tuple[int, int]:
    try:
        pair = tuple(int(v) for v in value)
    except TypeError:
        pair = (int(value), int(value))
    if len(pair) != 2:
        raise ShapeError(f"{opname}: {name} must have 2 entries (height, width), got {value!r}")
    return pair


#: ``_window_attrs`` per (attrs, op, kernel): a node's attributes are one immutable ``Attrs``
#: for every call, and parsing them again cost 2.7 us a call, twice per convolution (5 of a
#: small 1x1 convolution's 14 us; docs/cpu-kernels.md, "Even pieces and memoized attributes").
_WINDOW_ATTRS: dict = {}
_WINDOW_ATTRS_MAX = 4096


def _window_attrs(attrs, opname: str, kernel: tuple[int, int]):
    """Strides, pads (top, left, bottom, right) and dilations, validated (memoized for
    hashable ``attrs``; a failed check raises every time)."""
    key = (attrs, opname, kernel)
    try:
        return _WINDOW_ATTRS[key]
    except KeyError:
        pass
    except TypeError:  # an unhashable mapping (a plain dict): no memo
        return _check_window_attrs(attrs, opname, kernel)
    found = _check_window_attrs(attrs, opname, kernel)
    if len(_WINDOW_ATTRS) < _WINDOW_ATTRS_MAX:
        _WINDOW_ATTRS[key] = found
    return found


def _check_window_attrs(attrs, opname: str, kernel: tuple[int, int]):
    strides = _pair(attrs.get("strides") or (1, 1), "strides", opname)
    dilations = _pair(attrs.get("dilations") or (1, 1), "dilations", opname)
    pads = tuple(int(p) for p in (attrs.get("pads") or (0, 0, 0, 0)))
    if len(pads) != 4:
        raise ShapeError(f"{opname}: pads must have 4 entries (top, left, bottom, right) in ONNX "
                         f"order, got {pads}")
    if min(strides) < 1 or min(dilations) < 1:
        raise ShapeError(f"{opname}: strides {strides} and dilations {dilations} must be >= 1")
    if min(pads) < 0:
        raise ShapeError(f"{opname}: pads {pads} must be >= 0")
    if min(kernel) < 1:
        raise ShapeError(f"{opname}: kernel shape {kernel} must be >= 1")
    return strides, pads, dilations


def _out_size(size: int, k: int, s: int, d: int, p0: int, p1: int, ceil_mode: bool) -> int:
    """Output length along one axis (ONNX/PyTorch rule: with ``ceil_mode`` a last window that
    would start in the trailing padding is dropped)."""
    span = size + p0 + p1 - (d * (k - 1) + 1)
    if span < 0:
        return 0
    if not ceil_mode:
        return span // s + 1
    out = -(-span // s) + 1
    if (out - 1) * s >= size + p0:
        out -= 1
    return out


def _spatial_out(x: TensorSpec, kernel, strides, pads, dilations, ceil_mode, opname):
    _, _, h, w = x.shape
    oh = _out_size(h, kernel[0], strides[0], dilations[0], pads[0], pads[2], ceil_mode)
    ow = _out_size(w, kernel[1], strides[1], dilations[1], pads[1], pads[3], ceil_mode)
    if oh < 1 or ow < 1:
        raise ShapeError(f"{opname}: a {kernel[0]}x{kernel[1]} window (dilations {dilations}) "
                         f"does not fit the {h}x{w} input padded by {pads}; the output would be "
                         f"{oh}x{ow}")
    return oh, ow


def _require_nchw(spec: TensorSpec, opname: str, what: str = "input") -> None:
    if spec.ndim != 4:
        raise ShapeError(f"{opname}: {what} must be 4-D NCHW, got shape {spec.shape}")
    require_float(spec, opname)


def _padded(xp, x, pads, height: int, width: int, fill: float):
    """``x`` inside a buffer of ``height x width`` whose border (``pads`` top/left, the rest
    bottom/right) holds ``fill``; ``x`` itself when nothing needs padding."""
    n, c, h, w = x.shape
    top, left = pads[0], pads[1]
    if top == 0 and left == 0 and height <= h and width <= w:
        return x
    hb, wb = max(height, top + h), max(width, left + w)
    buf = xp.empty((n, c, hb, wb), x.dtype)
    # fill only the border, so every element is written once
    buf[:, :, :top] = fill
    buf[:, :, top + h:] = fill
    buf[:, :, top:top + h, :left] = fill
    buf[:, :, top:top + h, left + w:] = fill
    buf[:, :, top:top + h, left:left + w] = x
    return buf


def _windows(xp, buf, oh, ow, kernel, strides, dilations):
    """A no-copy view ``(N, C, KH, KW, OH, OW)`` of every window of ``buf``."""
    n, c = buf.shape[:2]
    sn, sc, sh, sw = buf.strides
    return xp.lib.stride_tricks.as_strided(
        buf, shape=(n, c, kernel[0], kernel[1], oh, ow),
        strides=(sn, sc, sh * dilations[0], sw * dilations[1], sh * strides[0], sw * strides[1]))


def _needed(size_out: int, k: int, s: int, d: int) -> int:
    """Input length the windows of one axis reach (padding included)."""
    return (size_out - 1) * s + d * (k - 1) + 1


def _accumulate_wide(kernel):
    """``kernel`` with float16 inputs computed in float32 and rounded once at the end, as ONNX
    runtimes do: sums of many float16 products would otherwise be rounded at every step."""
    def wide(xp, ins, attrs, outs):
        if all(o.dtype != np.float16 for o in outs):
            return kernel(xp, ins, attrs, outs)
        wide_ins = [a.astype(np.float32) if a.dtype == np.float16 else a for a in ins]
        wide_outs = [xp.empty(o.shape, np.float32) for o in outs]
        kernel(xp, wide_ins, attrs, wide_outs)
        for o, w in zip(outs, wide_outs):
            o[...] = w
    wide.__doc__ = kernel.__doc__
    return wide


# ----------------------------------------------------------------------------------------------
# conv2d


def _conv_attrs(attrs, kernel):
    strides, pads, dilations = _window_attrs(attrs, "conv2d", kernel)
    return strides, pads, dilations, int(attrs["groups"])


def _infer_conv(ins, attrs):
    x, w = ins[0], ins[1]
    _require_nchw(x, "conv2d")
    _require_nchw(w, "conv2d", "weight")
    same_dtype(ins, "conv2d inputs")
    n, c, _, _ = x.shape
    o, cg, kh, kw = w.shape
    strides, pads, dilations, groups = _conv_attrs(attrs, (kh, kw))
    if groups < 1:
        raise ShapeError(f"conv2d: groups must be >= 1, got {groups}")
    if c != cg * groups:
        raise ShapeError(f"conv2d: input has {c} channels but the weight {w.shape} (OIHW) with "
                         f"groups={groups} expects {cg * groups}")
    if o % groups:
        raise ShapeError(f"conv2d: {o} output channels are not divisible by groups={groups}")
    if len(ins) == 3 and ins[2].shape != (o,):
        raise ShapeError(f"conv2d: bias must have shape ({o},), got {ins[2].shape}")
    _check_activation("conv2d", attrs)
    oh, ow = _spatial_out(x, (kh, kw), strides, pads, dilations, False, "conv2d")
    return (TensorSpec((n, o, oh, ow), x.dtype),)


def _conv_cost(ins, outs, attrs):
    w = ins[1]
    n, o, oh, ow = outs[0].shape
    _, cg, kh, kw = w.shape
    flops = 2.0 * n * o * oh * ow * cg * kh * kw
    return Cost(flops=flops, bytes=float(sum(s.nbytes for s in ins) + outs[0].nbytes))


#: Length of the constant rows ``_bound`` compares against (a 16 KiB float32 row).
_BOUND_ROW = 4096


def _bound(xp, out, value, fn) -> None:
    """``out = fn(out, value)`` in place for ``fn`` = ``xp.maximum`` / ``xp.minimum``. NumPy 2.x
    runs maximum(array, scalar) through a slow non-vectorised loop (3x slower than
    maximum(array, array): 351 K float32 elements in 107 us against 36 us), so on NumPy the
    scalar is a constant row broadcast over ``out`` (its contiguous run cut into rows of
    ``_BOUND_ROW``); NaNs propagate as with the scalar."""
    if xp is not np or out.size < 64:
        fn(out, out.dtype.type(value), out=out)
        return
    if out.flags.c_contiguous:
        flat = out.reshape(-1)
        width = min(_BOUND_ROW, flat.size)
        row = np.full(width, value, out.dtype)
        full = flat.size // width * width
        block = flat[:full].reshape(-1, width)
        fn(block, row, out=block)
        if full < flat.size:
            fn(flat[full:], row[:flat.size - full], out=flat[full:])
    else:
        fn(out, np.full(out.shape[-1], value, out.dtype), out=out)


def apply_activation(xp, out, activation: str, params=()) -> None:
    """Apply a fused activation to ``out`` in place."""
    if activation == "none":
        return
    if activation == "relu":
        _bound(xp, out, 0, xp.maximum)
    elif activation == "leaky_relu":
        alpha = float(params[0]) if params else 0.01
        # max(x, alpha*x) is leaky relu for 0 <= alpha <= 1; use where() for other alphas
        if 0.0 <= alpha <= 1.0:
            xp.maximum(out, out * out.dtype.type(alpha), out=out)
        else:
            out[...] = xp.where(out >= 0, out, out * out.dtype.type(alpha))
    elif activation == "sigmoid":
        # sigmoid(x) = 0.5 * tanh(x / 2) + 0.5: no overflow for large |x|
        out *= out.dtype.type(0.5)
        xp.tanh(out, out=out)
        out *= out.dtype.type(0.5)
        out += out.dtype.type(0.5)
    elif activation == "tanh":
        xp.tanh(out, out=out)
    elif activation in ("silu", "hard_swish"):
        _gated(xp, out, activation)
    elif activation == "hard_sigmoid":
        alpha, beta = (float(params[0]), float(params[1])) if params else (0.2, 0.5)
        _hard_sigmoid(xp, out, out, alpha, beta)
    elif activation == "clip":
        lo = params[0] if len(params) > 0 else None
        hi = params[1] if len(params) > 1 else None
        if lo is not None:
            _bound(xp, out, lo, xp.maximum)
        if hi is not None:
            _bound(xp, out, hi, xp.minimum)
    else:  # guarded by inference; kept for direct kernel calls
        raise ValueError(f"unknown activation {activation!r}")


def _sigmoid(xp, x, out) -> None:
    """``out = sigmoid(x)`` as the sigmoid op computes it: ``0.5 * tanh(0.5 * x) + 0.5``."""
    half = out.dtype.type(0.5)
    xp.multiply(x, half, out=out)
    xp.tanh(out, out=out)
    out *= half
    out += half


def _hard_sigmoid(xp, x, out, alpha: float, beta: float) -> None:
    """``out = clip(x * alpha + beta, 0, 1)``, each step rounded as the hard_sigmoid op's."""
    xp.multiply(x, out.dtype.type(alpha), out=out)
    xp.add(out, out.dtype.type(beta), out=out)
    xp.clip(out, 0, 1, out=out)


#: elements per chunk of ``_gated``'s scratch on NumPy (256 KiB of float32: the gate's passes
#: stay in L2)
_GATE_CHUNK = 1 << 16


def _gated(xp, out, activation: str) -> None:
    """``out *= gate(out)`` in place: silu (gate sigmoid) or hard_swish (gate hard_sigmoid with
    alpha 1/6, beta 1/2), the gate computed as its op computes it, so the product has the bits of
    the unfused ``mul(x, sigmoid(x))`` / ``hard_swish(x)``. On NumPy the gate goes through a
    per-thread scratch in chunks (no tensor-sized temporary; the chunk stays in cache)."""
    def part(xp, _, dst, s):
        if activation == "silu":
            _sigmoid(xp, dst, s)
        else:
            _hard_sigmoid(xp, dst, s, 1 / 6, 0.5)
        xp.multiply(dst, s, out=dst)

    by_chunks(xp, part, out, out, chunk=_GATE_CHUNK)


def finish_numpy(out3, img, rows, cols, bias, z, activation, params) -> None:
    """A convolution's epilogue on ``out3[img, rows, cols]`` (``out3``: the output as ``(N, O,
    OH*OW)``; ``img`` an image or a slice of them; ``bias``: ``(O, 1)`` or None; ``z``: the
    residual as ``(N, O, OH*OW)`` or None):
    the bias, then the residual, then the activation, each a NumPy pass rounded on its own.
    ``hetero.backends.cpu`` swaps in one compiled pass that rounds each step the same way."""
    dst = out3[img, rows, cols]
    if bias is not None:
        dst += bias[rows]
    if z is not None:
        dst += z[img, rows, cols]
    apply_activation(np, dst, activation, params)


def _conv_kernel(xp, ins, attrs, outs, finish=None):
    """The convolution (see the module docstring); ``finish`` replaces ``finish_numpy`` as the
    epilogue of the NumPy paths of an ungrouped convolution."""
    x, w = ins[0], ins[1]
    out = outs[0]
    n, c, h, wd = x.shape
    o, cg, kh, kw = w.shape
    strides, pads, dilations, groups = _conv_attrs(attrs, (kh, kw))
    _, _, oh, ow = out.shape
    og = o // groups
    # a C-contiguous output can be written in place through reshaped views
    target = out if out.flags.c_contiguous else xp.empty(out.shape, out.dtype)

    if groups == 1 and _stacked_taps(xp, x, w, ins[2:], attrs, target, strides, pads,
                                     dilations):
        if target is not out:
            out[...] = target
        return
    if xp is np and target is out and (
            _split_conv(x, w, ins[2:], attrs, out, strides, pads, dilations,
                        finish or finish_numpy) if groups == 1
            else cg > 1 and _split_groups(x, w, ins[2:], attrs, out, strides, pads, dilations,
                                          groups)):
        return
    whole_finish = finish is not None and groups == 1 and target is out
    if cg == 1 and groups > 1:
        _depthwise(xp, x, w, target, strides, pads, dilations, groups)
    elif (kh, kw) == (1, 1) and strides == (1, 1) and pads == (0, 0, 0, 0):
        cols = x.reshape(n, groups, cg, h * wd)
        if not cols.flags.c_contiguous:
            cols = xp.ascontiguousarray(cols)
        xp.matmul(w.reshape(groups, og, cg), cols, out=target.reshape(n, groups, og, oh * ow))
    else:
        buf = _padded(xp, x, pads, _needed(oh, kh, strides[0], dilations[0]),
                      _needed(ow, kw, strides[1], dilations[1]), 0.0)
        view = _windows(xp, buf, oh, ow, (kh, kw), strides, dilations)
        # one copy: (N, C, KH, KW, OH, OW) -> patch matrices (N, G, Cg*KH*KW, OH*OW)
        cols = view.reshape(n, groups, cg * kh * kw, oh * ow)
        xp.matmul(w.reshape(groups, og, cg * kh * kw), cols,
                  out=target.reshape(n, groups, og, oh * ow))

    if whole_finish:
        out3 = out.reshape(n, o, oh * ow)
        bias = ins[2].reshape(o, 1) if len(ins) >= 3 else None
        z = ins[3].reshape(n, o, oh * ow) if len(ins) == 4 else None
        finish(out3, slice(None), slice(None), slice(None), bias, z, attrs["activation"],
               attrs["activation_params"])
        return
    # the bias as (O, 1) over (N, O, OH*OW) rows: NumPy's broadcast loop runs OH*OW long
    # (a (1, O, 1, 1) bias over the 4-D map would run OW long: 2-3x slower on 14x14 maps)
    rows = target.reshape(n, o, oh * ow)
    if len(ins) >= 3:
        rows += ins[2].reshape(o, 1)
    if len(ins) == 4:  # conv2d_add: the residual, added while the output is still in cache
        target += ins[3]
    apply_activation(xp, target, attrs["activation"], attrs["activation_params"])
    if target is not out:
        out[...] = target


#: A stride-1 conv with at most this many output channels per input channel, on maps of at
#: least ``STACKED_MIN_PIXELS`` output pixels, takes ``_stacked_taps`` instead of im2col.
STACKED_MAX_OUT_PER_IN = 0.5
STACKED_MIN_PIXELS = 196
#: ... and is cut into bands of output channels only from this many flops: DenseNet's 128 -> 32
#: 3x3 conv at 14x14 (14.5 MFLOP) took 0.36-0.39 ms whole and 0.39-0.45 ms in two bands on two
#: threads; at 28x28 (58 MFLOP) two bands won (0.83-0.89 against 0.93-0.98 ms).
STACKED_SPLIT_MIN_FLOPS = 3e7


def _stacked_taps(xp, x, w, extra, attrs, out, strides, pads, dilations) -> bool:
    """A stride-1, ungrouped conv with few output channels (DenseNet's 128 -> 32 3x3 convs)
    without im2col: the taps' weights stacked as one ``(KH*KW*O, C)`` matrix multiply the padded
    input itself, read as ``(C, Hb*Wb)``, in one GEMM; output ``(r, q)`` of tap ``(i, j)`` is
    column ``r*Wb + q + i*dh*Wb + j*dw`` of that tap's rows, so the taps are summed by
    ``KH*KW`` shifted adds over ``(O, (OH-1)*Wb + OW)`` runs, and one copy drops the ``Wb - OW``
    wrap-around columns. The product holds ``KH*KW*O`` rows per pixel where im2col's patches hold
    ``KH*KW*C``: less memory traffic when ``O < C``. Measured (one thread, AVX-512 OpenBLAS):
    128 -> 32 at 56x56 1.79 -> 1.24 ms (two threads 1.41 -> 0.73), 192 -> 64 at 56x56 3.9 ->
    3.4 ms, 256 -> 128 at 14x14 0.93 -> 0.82 ms; 96 -> 96 at 28x28 ties; 512 -> 128 at 7x7
    and 16 -> 64 at 55x55 lose, hence ``STACKED_MAX_OUT_PER_IN`` and ``STACKED_MIN_PIXELS``.
    On NumPy the output channels are cut into bands run by ``parallel_for`` (the cut depends
    on the shapes only). False (nothing done) where it does not apply."""
    n, c, _, _ = x.shape
    o, _, kh, kw = w.shape
    _, _, oh, ow = out.shape
    if (strides != (1, 1) or kh * kw == 1 or o > STACKED_MAX_OUT_PER_IN * c
            or oh * ow < STACKED_MIN_PIXELS):
        return False
    buf = _padded(xp, x, pads, _needed(oh, kh, 1, dilations[0]),
                  _needed(ow, kw, 1, dilations[1]), 0.0)
    if not buf.flags.c_contiguous:
        buf = xp.ascontiguousarray(buf)
    hb, wb = buf.shape[2:]
    flat = buf.reshape(n, c, hb * wb)
    length = (oh - 1) * wb + ow
    taps = [(i * dilations[0] * wb + j * dilations[1]) for i in range(kh) for j in range(kw)]
    w3 = w.transpose(2, 3, 0, 1).reshape(kh * kw, o, c)  # (tap, O, C)
    bias = extra[0].reshape(o, 1) if extra else None
    z = extra[1].reshape(n, o, oh, ow) if len(extra) > 1 else None
    activation, params = attrs["activation"], attrs["activation_params"]
    flops = 2.0 * n * o * oh * ow * c * kh * kw
    bands = (max(1, min(SPLIT_MAX_PIECES, o // SPLIT_MIN_CHANNELS))
             if xp is np and flops >= STACKED_SPLIT_MIN_FLOPS else 1)

    def piece(k):
        img, b = divmod(k, bands)
        rows = slice(b * o // bands, (b + 1) * o // bands)
        ob = rows.stop - rows.start
        stacked = xp.ascontiguousarray(w3[:, rows]).reshape(kh * kw * ob, c)
        y = xp.matmul(stacked, flat[img])  # (tap*ob, Hb*Wb)
        acc = xp.empty((ob, oh * wb), out.dtype)
        head = acc[:, :length]
        head[...] = y[:ob, taps[0]:taps[0] + length]
        for t in range(1, kh * kw):
            head += y[t * ob:(t + 1) * ob, taps[t]:taps[t] + length]
        dst = out[img, rows]
        dst[...] = acc.reshape(ob, oh, wb)[:, :, :ow]
        if bias is not None:
            dst.reshape(ob, oh * ow)[...] += bias[rows]
        if z is not None:
            dst += z[img, rows]
        apply_activation(xp, dst, activation, params)

    if xp is np:
        parallel_for(n * bands, piece)
    else:
        for k in range(n * bands):
            piece(k)
    return True


#: Output pixels per row band at least; smaller maps are cut by output channels instead.
SPLIT_MIN_PIXELS = 256
#: Output channels per channel band at least.
SPLIT_MIN_CHANNELS = 16
#: Pieces per image at most.
SPLIT_MAX_PIECES = 4
#: A batch whose per-image pieces would each be smaller than this is cut by whole images
#: instead (examples/train_digits.py's 16 -> 32 conv on 4x4 maps, batch 32: 64 pieces of 73
#: KFLOP took 0.7-1.3 ms, the unsplit batched kernel 0.33 ms).
SPLIT_MIN_PIECE_FLOPS = 1e6


#: ... and three row bands become four from this many flops (see ``_even_bands``).
EVEN_BANDS_MIN_FLOPS = 5e7


def _even_bands(bands: int, rows: int, flops: float) -> int:
    """Three row bands become four (where there are four rows and the conv is large): the
    pool's two or four threads then take the same number of pieces each, where three left one
    thread idle for a third of the conv. 28x28 maps (784 pixels: three bands of 256), two
    threads, interleaved medians of 41 (docs/cpu-kernels.md), three -> four bands: 128 -> 128
    3x3 1.93 -> 1.68 ms, 256 -> 256 3x3 7.2 -> 5.4, 3x3/2 from 56x56 2.04 -> 1.67, 512 -> 128
    1x1 0.79 -> 0.70; but 32 -> 192 1x1 (9.6 MFLOP) 0.17 -> 0.20, hence the flops floor."""
    if bands == 3 and rows >= 4 and SPLIT_MAX_PIECES >= 4 and flops >= EVEN_BANDS_MIN_FLOPS:
        return 4
    return bands


def _split_conv(x, w, extra, attrs, out, strides, pads, dilations,
                finish=finish_numpy) -> bool:
    """An ungrouped NumPy convolution cut into pieces run by ``parallel_for``; False (nothing
    done) when it is too small to gain. ``extra`` is ``(bias,)`` or ``(bias, residual)``;
    ``finish`` is the epilogue (``finish_numpy``)."""
    n, c, h, wd = x.shape
    o, _, kh, kw = w.shape
    _, _, oh, ow = out.shape
    if 2.0 * n * o * oh * ow * c * kh * kw < SPLIT_MIN_FLOPS:
        return False
    bias = extra[0].reshape(o, 1) if extra else None
    z = extra[1].reshape(n, o, oh * ow) if len(extra) > 1 else None
    activation, params = attrs["activation"], attrs["activation_params"]
    w2 = w.reshape(o, c * kh * kw)
    out3 = out.reshape(n, o, oh * ow)

    def epilogue(img, rows, cols):
        finish(out3, img, rows, cols, bias, z, activation, params)

    direct = (kh, kw) == (1, 1) and strides == (1, 1) and pads == (0, 0, 0, 0)
    if direct:
        view = None
    else:
        buf = _padded(np, x, pads, _needed(oh, kh, strides[0], dilations[0]),
                      _needed(ow, kw, strides[1], dilations[1]), 0.0)
        view = _windows(np, buf, oh, ow, (kh, kw), strides, dilations)
    flops = 2.0 * n * o * oh * ow * c * kh * kw
    bands = _even_bands(min(SPLIT_MAX_PIECES, oh, oh * ow // SPLIT_MIN_PIXELS), oh, flops)
    per_image = max(bands, min(SPLIT_MAX_PIECES, o // SPLIT_MIN_CHANNELS), 1)
    if n > 1 and flops / (n * per_image) < SPLIT_MIN_PIECE_FLOPS:
        # a batch of small maps (training): pieces of whole images, each one batched im2col
        # and GEMM (the unsplit kernel's products, so its bits), rather than n x bands tiny ones
        chunks = min(n, int(flops // SPLIT_MIN_PIECE_FLOPS), 2 * SPLIT_MAX_PIECES)
        if chunks < 2:
            return False

        def images(i):
            a, b = i * n // chunks, (i + 1) * n // chunks
            if direct:
                patches = x[a:b].reshape(b - a, c, h * wd)
            else:
                patches = view[a:b].reshape(b - a, c * kh * kw, oh * ow)
            np.matmul(w2, patches, out=out3[a:b])
            epilogue(slice(a, b), slice(None), slice(None))

        parallel_for(chunks, images)
        return True
    if bands >= 2:  # row bands of the output map, each with its own im2col
        def band(i):
            img, b = divmod(i, bands)
            r0, r1 = b * oh // bands, (b + 1) * oh // bands
            cols = slice(r0 * ow, r1 * ow)
            if direct:
                patches = x[img].reshape(c, h * wd)[:, cols]
            else:
                patches = view[img, :, :, :, r0:r1].reshape(c * kh * kw, (r1 - r0) * ow)
            np.matmul(w2, patches, out=out3[img, :, cols])
            epilogue(img, slice(None), cols)

        parallel_for(n * bands, band)
        return True
    bands = min(SPLIT_MAX_PIECES, o // SPLIT_MIN_CHANNELS)
    if bands < 2:
        return False
    # bands of output channels over one patch matrix per image
    patches = [x[i].reshape(c, h * wd) if direct
               else view[i].reshape(c * kh * kw, oh * ow) for i in range(n)]

    def channels(i):
        img, b = divmod(i, bands)
        rows = slice(b * o // bands, (b + 1) * o // bands)
        np.matmul(w2[rows], patches[img], out=out3[img, rows])
        epilogue(img, rows, slice(None))

    parallel_for(n * bands, channels)
    return True


def _split_groups(x, w, extra, attrs, out, strides, pads, dilations, groups) -> bool:
    """A grouped (not depthwise) NumPy convolution, one piece per image and group: each its
    own im2col and GEMM, as the batched product computes them."""
    n, c, _, _ = x.shape
    o, cg, kh, kw = w.shape
    _, _, oh, ow = out.shape
    # each piece is one group's GEMM: below SPLIT_MIN_FLOPS a piece gains nothing from another
    # thread (ShuffleNet's 4-group 1x1 convs, 1.8 MFLOP a group: 105 us in 4 pieces on one
    # thread, 118 us on two, 86 us as one batched product with the epilogue over the whole map)
    if 2.0 * n * o * oh * ow * cg * kh * kw / groups < SPLIT_MIN_FLOPS:
        return False
    og = o // groups
    buf = _padded(np, x, pads, _needed(oh, kh, strides[0], dilations[0]),
                  _needed(ow, kw, strides[1], dilations[1]), 0.0)
    view = _windows(np, buf, oh, ow, (kh, kw), strides, dilations)
    w3 = w.reshape(groups, og, cg * kh * kw)
    out3 = out.reshape(n, o, oh * ow)
    bias = extra[0].reshape(o, 1) if extra else None
    z = extra[1].reshape(n, o, oh * ow) if len(extra) > 1 else None

    def piece(i):
        img, g = divmod(i, groups)
        rows = slice(g * og, (g + 1) * og)
        patches = view[img, g * cg:(g + 1) * cg].reshape(cg * kh * kw, oh * ow)
        dst = out3[img, rows]
        np.matmul(w3[g], patches, out=dst)
        if bias is not None:
            dst += bias[rows]
        if z is not None:
            dst += z[img, rows]
        apply_activation(np, dst, attrs["activation"], attrs["activation_params"])

    parallel_for(n * groups, piece)
    return True


#: Window-tap operations (output elements x kernel taps) a depthwise conv or pool needs before
#: it is cut into channel bands run by ``parallel_for``. Measured on one core pair, depthwise
#: 3x3: 136 channels at 28x28 (0.96 M taps) gains 15-20 % from two bands, 272 at 14x14
#: (0.48 M) loses 20 % (each NumPy call of a band is then too short to release the GIL for
#: long); max pool 3x3/2 of 64 channels at 111x111: 0.42-0.52 -> 0.32 ms.
CHANNEL_SPLIT_MIN_TAPS = 700_000


def _channel_bands(xp, channels: int, taps: int) -> int:
    """Channel bands for a per-channel kernel (depthwise conv, pools) on NumPy: 1 (no split)
    outside a run that allows intra-op threads, or when the work is too small."""
    threads = intra_op_threads()
    if xp is not np or threads <= 1 or taps < CHANNEL_SPLIT_MIN_TAPS:
        return 1
    return max(1, min(threads, channels // 8, max(2, taps // CHANNEL_SPLIT_MIN_TAPS)))


def _depthwise(xp, x, w, out, strides, pads, dilations, groups, split=True):
    """Grouped conv with one input channel per group: a multiply-add per kernel tap, computed
    channels-last. In NCHW every tap would multiply short rows by a per-channel weight (NumPy's
    slow broadcast loop); in NHWC the weight of a tap is one contiguous vector along the
    innermost axis, so each tap is a fast elementwise product over ``(OH, OW, C)``. The two
    transposes (input into the padded NHWC buffer, result back into ``out``) cost less than
    that gain (one core, 272 channels at 14x14: 0.31 -> 0.15 ms; 112 at 56x56, stride 2:
    0.45 -> 0.41 ms)."""
    n, c, h, wd = x.shape
    o, _, kh, kw = w.shape
    _, _, oh, ow = out.shape
    mult = o // groups
    bands = _channel_bands(xp, c, out.size * kh * kw) if split else 1
    if bands > 1:
        def band(i):
            c0, c1 = i * c // bands, (i + 1) * c // bands
            _depthwise(np, x[:, c0:c1], w[c0 * mult:c1 * mult], out[:, c0 * mult:c1 * mult],
                       strides, pads, dilations, c1 - c0, split=False)

        parallel_for(bands, band)
        return
    (sh, sw), (dh, dw), (top, left) = strides, dilations, pads[:2]
    hb = max(_needed(oh, kh, sh, dh), top + h)
    wb = max(_needed(ow, kw, sw, dw), left + wd)
    buf = xp.empty((n, hb, wb, c), out.dtype)
    buf[:, :top] = 0
    buf[:, top + h:] = 0
    buf[:, top:top + h, :left] = 0
    buf[:, top:top + h, left + wd:] = 0
    buf[:, top:top + h, left:left + wd] = x.transpose(0, 2, 3, 1)
    # tap t of output channel g*mult + m: weight wt[t, g, m]
    wt = xp.ascontiguousarray(w.reshape(c, mult, kh * kw).transpose(2, 0, 1))
    if mult == 1:
        wt = wt.reshape(kh * kw, c)
    acc = xp.empty((n, oh, ow, c) if mult == 1 else (n, oh, ow, c, mult), out.dtype)
    tmp = xp.empty(acc.shape, out.dtype)
    for t in range(kh * kw):
        i, j = divmod(t, kw)
        src = buf[:, i * dh:i * dh + (oh - 1) * sh + 1:sh, j * dw:j * dw + (ow - 1) * sw + 1:sw]
        if mult > 1:
            src = src[..., None]
        if t == 0:
            xp.multiply(src, wt[t], out=acc)
        else:
            xp.multiply(src, wt[t], out=tmp)
            acc += tmp
    out[...] = acc.reshape(n, oh, ow, o).transpose(0, 3, 1, 2)


_CONV_ATTRS = {"strides": (1, 1), "pads": (0, 0, 0, 0), "dilations": (1, 1), "groups": 1,
               "activation": "none", "activation_params": ()}
register(Op(
    "conv2d", _infer_conv, _accumulate_wide(_conv_kernel), arity=(2, 3), attrs=_CONV_ATTRS,
    cost=_conv_cost, op_class="conv", splits=True,
    doc="2-D convolution (NCHW, OIHW), optional bias and fused activation"))


def _infer_conv_add(ins, attrs):
    (out,) = _infer_conv(ins[:3], attrs)
    if ins[3] != out:
        raise ShapeError(f"conv2d_add: the residual must be {out} like the convolution's output, "
                         f"got {ins[3]}")
    return (out,)


def _conv_add_cost(ins, outs, attrs):
    cost = _conv_cost(ins, outs, attrs)
    return Cost(cost.flops + outs[0].size, cost.bytes)


register(Op(
    "conv2d_add", _infer_conv_add, _accumulate_wide(_conv_kernel), arity=(4, 4),
    attrs=_CONV_ATTRS, cost=_conv_add_cost, op_class="conv", splits=True,
    doc="activation(conv2d(x, w, b) + z): a convolution with its residual add fused"))


def conv2d_add(x, w, b, z, *, strides=(1, 1), pads=(0, 0, 0, 0), dilations=(1, 1), groups=1,
               activation="none", activation_params=(), device=None):
    """``activation(conv2d(x, w, b) + z)`` in one pass over the output (a ResNet block's last
    conv, its shortcut ``z`` and the relu after the sum); what ``optimize(residual=True)`` emits.
    """
    return apply("conv2d_add", (x, w, b, z),
                 {"strides": tuple(strides), "pads": tuple(pads), "dilations": tuple(dilations),
                  "groups": int(groups), "activation": activation,
                  "activation_params": tuple(activation_params)}, device=device)


def conv2d(x, w, b=None, *, strides=(1, 1), pads=(0, 0, 0, 0), dilations=(1, 1), groups=1,
           activation="none", activation_params=(), device=None):
    """2-D convolution of an NCHW input with OIHW weights (ONNX Conv).

    Args:
        x: input ``(N, C, H, W)``.
        w: weights ``(O, C // groups, KH, KW)``.
        b: optional bias ``(O,)``.
        strides, dilations: per spatial axis (height, width).
        pads: ONNX order ``(top, left, bottom, right)``.
        groups: channel groups (``groups == C`` is a depthwise convolution).
        activation: fused activation applied after the bias: one of ``ACTIVATIONS``.
        activation_params: ``(alpha,)`` for leaky_relu, ``(min, max)`` for clip.

    Returns:
        ``(N, O, OH, OW)``.
    """
    ins = (x, w) if b is None else (x, w, b)
    return apply("conv2d", ins, {"strides": tuple(strides), "pads": tuple(pads),
                                 "dilations": tuple(dilations), "groups": int(groups),
                                 "activation": activation,
                                 "activation_params": tuple(activation_params)},
                 device=device)


# ----------------------------------------------------------------------------------------------
# conv2d_winograd: 3x3, stride 1 convolution as Winograd F(2x2, 3x3) with pre-transformed weights

# F(2x2, 3x3) (Lavin & Gray 2016): Y = A^T [(G g G^T) * (B^T d B)] A for each 4x4 input tile d
# and 2x2 output tile. The 2-D transforms are Kronecker products, so each is one small GEMM over
# all tiles at once: V = (B^T (x) B^T) d, Y = (A^T (x) A^T) M.
_WINO_G = np.array([[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]])
_WINO_BT = np.array([[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]], dtype=float)
_WINO_AT = np.array([[1, 1, 1, 0], [0, 1, -1, -1]], dtype=float)
_WINO_KB = np.kron(_WINO_BT, _WINO_BT)  # (16, 16)
_WINO_KA = np.kron(_WINO_AT, _WINO_AT)  # (4, 16)
for _a in (_WINO_KB, _WINO_KA):
    _a.flags.writeable = False


def winograd_weights(w: np.ndarray) -> np.ndarray:
    """Transform OIHW 3x3 weights into the ``(16, O, C)`` Winograd F(2x2, 3x3) domain that
    ``conv2d_winograd`` takes (computed in float64, returned in ``w``'s dtype)."""
    w = np.asarray(w)
    if w.ndim != 4 or w.shape[2:] != (3, 3):
        raise ShapeError(f"winograd_weights: needs OIHW 3x3 weights, got shape {w.shape}")
    o, c = w.shape[:2]
    u = np.einsum("ik,ockl,jl->ijoc", _WINO_G, w.astype(np.float64), _WINO_G)
    return np.ascontiguousarray(u.reshape(16, o, c).astype(w.dtype))


def _wino_pads(attrs):
    return _window_attrs(attrs, "conv2d_winograd", (3, 3))[1]


def _infer_winograd(ins, attrs):
    x, u = ins[0], ins[1]
    _require_nchw(x, "conv2d_winograd")
    same_dtype(ins, "conv2d_winograd inputs")
    n, c, _, _ = x.shape
    if u.ndim != 3 or u.shape[0] != 16 or u.shape[2] != c:
        raise ShapeError(f"conv2d_winograd: weights must be (16, O, {c}) (winograd_weights of "
                         f"OIHW 3x3 weights), got {u.shape}")
    o = u.shape[1]
    if len(ins) == 3 and ins[2].shape != (o,):
        raise ShapeError(f"conv2d_winograd: bias must have shape ({o},), got {ins[2].shape}")
    act = attrs["activation"]
    if act not in ACTIVATIONS:
        raise ShapeError(f"conv2d_winograd: unknown activation {act!r}")
    oh, ow = _spatial_out(x, (3, 3), (1, 1), _wino_pads(attrs), (1, 1), False, "conv2d_winograd")
    return (TensorSpec((n, o, oh, ow), x.dtype),)


def _winograd_cost(ins, outs, attrs):
    n, o, oh, ow = outs[0].shape
    c = ins[0].shape[1]
    tiles = n * -(-oh // 2) * -(-ow // 2)
    flops = 2.0 * 16 * o * c * tiles + 2.0 * 256 * c * tiles + 2.0 * 64 * o * tiles
    return Cost(flops=flops, bytes=float(sum(s.nbytes for s in ins) + outs[0].nbytes))


def _winograd_kernel(xp, ins, attrs, outs):
    x, u, out = ins[0], ins[1], outs[0]
    n, c, _, _ = x.shape
    o = u.shape[1]
    _, _, oh, ow = out.shape
    th, tw = -(-oh // 2), -(-ow // 2)
    tiles = n * th * tw
    buf = _padded(xp, x, _wino_pads(attrs), 2 * th + 2, 2 * tw + 2, 0.0)
    sn, sc, sh, sw = buf.strides
    view = xp.lib.stride_tricks.as_strided(
        buf, shape=(4, 4, c, n, th, tw), strides=(sh, sw, sc, sn, 2 * sh, 2 * sw))
    if (xp is np and out.flags.c_contiguous
            and 2.0 * 16 * o * c * tiles >= SPLIT_MIN_FLOPS):
        _split_winograd(x, u, ins[2] if len(ins) == 3 else None, attrs, out, view, tiles)
        return
    d = xp.empty((4, 4, c, n, th, tw), x.dtype)
    d[...] = view  # the only gather: every 4x4 input tile, one row per tile position
    v = xp.matmul(xp.asarray(_WINO_KB.astype(x.dtype)), d.reshape(16, c * tiles))
    m = xp.matmul(u, v.reshape(16, c, tiles))  # 16 GEMMs (O, C) @ (C, tiles)
    y = xp.matmul(xp.asarray(_WINO_KA.astype(x.dtype)), m.reshape(16, o * tiles))
    y6 = y.reshape(2, 2, o, n, th, tw).transpose(3, 2, 4, 0, 5, 1)  # (N, O, TH, 2, TW, 2)
    if (2 * th, 2 * tw) == (oh, ow) and out.flags.c_contiguous:
        out.reshape(n, o, th, 2, tw, 2)[...] = y6
    else:
        out[...] = y6.reshape(n, o, 2 * th, 2 * tw)[:, :, :oh, :ow]
    if len(ins) == 3:
        out += ins[2].reshape(1, o, 1, 1)
    apply_activation(xp, out, attrs["activation"], attrs["activation_params"])


def _bands(size: int, least: int) -> list[slice]:
    """``size`` cut into at most SPLIT_MAX_PIECES slices of at least ``least`` (one if small)."""
    k = max(1, min(SPLIT_MAX_PIECES, size // least))
    return [slice(i * size // k, (i + 1) * size // k) for i in range(k)]


def _split_winograd(x, u, bias, attrs, out, view, tiles) -> None:
    """``_winograd_kernel`` in three ``parallel_for`` rounds: gather and input transform by
    bands of input channels, the 16 products one each, output transform and epilogue by bands
    of output channels."""
    n, c = x.shape[:2]
    o = u.shape[1]
    _, _, oh, ow = out.shape
    th, tw = -(-oh // 2), -(-ow // 2)
    d = np.empty((4, 4, c, n, th, tw), x.dtype)
    v = np.empty((16, c * tiles), x.dtype)
    m = np.empty((16, o, tiles), x.dtype)
    kb, ka = _WINO_KB.astype(x.dtype), _WINO_KA.astype(x.dtype)
    d2 = d.reshape(16, c * tiles)
    ins_bands = _bands(c, 32)

    def gather(i):
        ch = ins_bands[i]
        d[:, :, ch] = view[:, :, ch]
        cols = slice(ch.start * tiles, ch.stop * tiles)
        np.matmul(kb, d2[:, cols], out=v[:, cols])

    parallel_for(len(ins_bands), gather)
    v3 = v.reshape(16, c, tiles)
    parallel_for(16, lambda k: np.matmul(u[k], v3[k], out=m[k]))
    m2 = m.reshape(16, o * tiles)
    outs_bands = _bands(o, 32)
    exact = (2 * th, 2 * tw) == (oh, ow)
    activation, params = attrs["activation"], attrs["activation_params"]

    def scatter(i):
        ch = outs_bands[i]
        k = ch.stop - ch.start
        y = ka @ m2[:, ch.start * tiles:ch.stop * tiles]
        y6 = y.reshape(2, 2, k, n, th, tw).transpose(3, 2, 4, 0, 5, 1)  # (N, k, TH, 2, TW, 2)
        dst = out[:, ch]
        if exact:
            dst.reshape(n, k, th, 2, tw, 2)[...] = y6
        else:
            dst[...] = y6.reshape(n, k, 2 * th, 2 * tw)[:, :, :oh, :ow]
        if bias is not None:
            dst += bias[ch].reshape(1, k, 1, 1)
        apply_activation(np, dst, activation, params)

    parallel_for(len(outs_bands), scatter)


register(Op(
    "conv2d_winograd", _infer_winograd, _accumulate_wide(_winograd_kernel), arity=(2, 3),
    attrs={"pads": (0, 0, 0, 0), "activation": "none", "activation_params": ()},
    cost=_winograd_cost, op_class="conv", splits=True,
    doc="3x3 stride-1 convolution by Winograd F(2x2,3x3); weights from winograd_weights()"))


def conv2d_winograd(x, u, b=None, *, pads=(0, 0, 0, 0), activation="none", activation_params=(),
                    device=None):
    """3x3, stride-1, ungrouped convolution of an NCHW input by Winograd F(2x2, 3x3).

    Equals ``conv2d(x, w, b, pads=pads, ...)`` for ``u = winograd_weights(w)``; 2.25x fewer
    multiplies in its GEMMs. ``hetero.passes.optimize`` rewrites conv2d nodes into it where that
    pays (``winograd=True``).
    """
    ins = (x, u) if b is None else (x, u, b)
    return apply("conv2d_winograd", ins, {"pads": tuple(pads), "activation": activation,
                                          "activation_params": tuple(activation_params)},
                 device=device)


# ----------------------------------------------------------------------------------------------
# Pooling


def _pool_geometry(attrs, opname):
    kernel = _pair(attrs["kernel_shape"], "kernel_shape", opname)
    strides, pads, dilations = _window_attrs(attrs, opname, kernel)
    return kernel, strides, pads, dilations, bool(attrs["ceil_mode"])


def _pool_infer(opname):
    def infer(ins, attrs):
        x = ins[0]
        _require_nchw(x, opname)
        kernel, strides, pads, dilations, ceil_mode = _pool_geometry(attrs, opname)
        oh, ow = _spatial_out(x, kernel, strides, pads, dilations, ceil_mode, opname)
        h, w = x.shape[2:]
        for size, out, axis in ((h, oh, 0), (w, ow, 1)):
            counts = _window_counts(out, kernel[axis], strides[axis], dilations[axis],
                                    pads[axis], pads[axis] + size)
            if counts.min() == 0:
                raise ShapeError(f"{opname}: with pads {pads}, kernel {kernel} and dilations "
                                 f"{dilations} a window would see padding only")
        return (TensorSpec((x.shape[0], x.shape[1], oh, ow), x.dtype),)
    return infer


def _pool_cost(ins, outs, attrs):
    kh, kw = _pair(attrs["kernel_shape"], "kernel_shape", "pool")
    return Cost(flops=float(outs[0].size * kh * kw),
                bytes=float(ins[0].nbytes + outs[0].nbytes))


def _separable_pool(xp, buf, out, kernel, strides, dilations, combine) -> None:
    """Reduce every window of ``buf`` into ``out`` with ``combine`` (maximum or add), first along
    the rows (``KW`` taps), then along the columns (``KH`` taps): ``KW*rows*OW + KH*OH*OW``
    element operations instead of ``KH*KW*OH*OW``."""
    n, c = buf.shape[:2]
    _, _, oh, ow = out.shape
    rows = _needed(oh, kernel[0], strides[0], dilations[0])
    sw, dw = strides[1], dilations[1]

    def column(j):
        return buf[:, :, :rows, j * dw:j * dw + (ow - 1) * sw + 1:sw]

    if kernel[1] == 1:
        across = column(0)
    else:
        across = xp.empty((n, c, rows, ow), buf.dtype)
        combine(column(0), column(1), out=across)
        for j in range(2, kernel[1]):
            combine(across, column(j), out=across)
    sh, dh = strides[0], dilations[0]

    def row(i):
        return across[:, :, i * dh:i * dh + (oh - 1) * sh + 1:sh]

    if kernel[0] == 1:
        out[...] = row(0)
        return
    combine(row(0), row(1), out=out)
    for i in range(2, kernel[0]):
        combine(out, row(i), out=out)


def _split_pool(kernel_fn):
    """``kernel_fn`` run on channel bands by ``parallel_for`` when it is large enough: every
    channel of a pool is independent."""
    def split(xp, ins, attrs, outs):
        x, out = ins[0], outs[0]
        kh, kw = _pair(attrs["kernel_shape"], "kernel_shape", "pool")
        c = x.shape[1]
        bands = _channel_bands(xp, c, out.size * kh * kw)
        if bands <= 1:
            return kernel_fn(xp, ins, attrs, outs)

        def band(i):
            c0, c1 = i * c // bands, (i + 1) * c // bands
            kernel_fn(xp, [x[:, c0:c1]], attrs, [out[:, c0:c1]])

        parallel_for(bands, band)
    split.__doc__ = kernel_fn.__doc__
    return split


def _flat_pool(xp, x, out, kernel, stride, pads, dilations, fill, combine) -> bool:
    """Pool with equal strides over the whole tensor read as one line: pad ``x`` into a
    buffer ``(N, C, Hb, Wb)`` with ``Hb`` and ``Wb`` multiples of ``stride``; then tap
    ``(i, j)`` of output ``(r, q)`` of every plane sits at ``stride*(r*Wb + q) + i*dh*Wb +
    j*dw``. The row pass reads ``buf[stride*k + j*dw]`` for every ``k`` of the tensor, the
    column pass combines that at offsets ``i*dh*Wb/stride``, each a single long NumPy operation
    (the separable pool's ops run over ``OW``-long rows: 3x3 average, stride 1, 576 channels
    on 14x14: 0.23 -> 0.15 ms on one core; 3x3/1 max pool, 1024 channels on 7x7: 0.26 -> 0.09
    ms; on maps of 112x112 it ties). Positions that straddle two rows or planes are computed
    and dropped by the final copy into ``out``. False (nothing done) where it would not pay
    or the unpadded input is not contiguous."""
    n, c, h, w = x.shape
    _, _, oh, ow = out.shape
    s, (dh, dw) = stride, dilations
    top, left = pads[0], pads[1]
    hb = -(-max(_needed(oh, kernel[0], s, dh), top + h) // s) * s
    wb = -(-max(_needed(ow, kernel[1], s, dw), left + w) // s) * s
    if top == 0 and left == 0 and (hb, wb) == (h, w):
        if not x.flags.c_contiguous:
            return False
        buf = x
    elif s > 1 and top == 0 and left == 0 and hb - h < s and wb - w < s and h * w > 4096:
        # a large map that needs no padding but for the rounding up: the copy would cost what
        # the long operations save (3x3/2 max pool of 64 channels at 111x111: 0.42 -> 0.50 ms)
        return False
    else:
        buf = _padded(xp, x, pads, hb, wb, fill)
    flat = buf.reshape(-1)
    total = flat.size // s  # positions k = r*Wb + q (per plane) of both passes
    step = dh * wb // s  # one tap row down, in positions k
    length = (n * c - 1) * (hb * wb // s) + (oh - 1) * wb + ow  # up to the last output
    span = length + (kernel[0] - 1) * step  # what the column pass reads
    rows = xp.empty(total, x.dtype)
    head = rows[:span]

    def tap(j):
        off = j * dw
        return flat[off:off + s * (span - 1) + 1:s]

    if kernel[1] == 1:
        head[...] = tap(0)
    else:
        combine(tap(0), tap(1), out=head)
        for j in range(2, kernel[1]):
            combine(head, tap(j), out=head)
    cols = xp.empty(total, x.dtype)
    cols_head = cols[:length]
    if kernel[0] == 1:
        cols_head[...] = rows[:length]
    else:
        combine(rows[:length], rows[step:step + length], out=cols_head)
        for i in range(2, kernel[0]):
            combine(cols_head, rows[i * step:i * step + length], out=cols_head)
    out[...] = cols.reshape(n, c, hb // s, wb)[:, :, :oh, :ow]
    return True


def _max_pool_kernel(xp, ins, attrs, outs):
    x, out = ins[0], outs[0]
    kernel, strides, pads, dilations, _ = _pool_geometry(attrs, "max_pool2d")
    _, _, oh, ow = out.shape
    if strides[0] == strides[1] and _flat_pool(xp, x, out, kernel, strides[0], pads, dilations,
                                               -math.inf, xp.maximum):
        return
    buf = _padded(xp, x, pads, _needed(oh, kernel[0], strides[0], dilations[0]),
                  _needed(ow, kernel[1], strides[1], dilations[1]), -math.inf)
    _separable_pool(xp, buf, out, kernel, strides, dilations, xp.maximum)


def _window_counts(out_size, k, s, d, lo, hi):
    """Per output position, how many taps of its window fall in ``[lo, hi)`` (input coords)."""
    starts = np.arange(out_size)[:, None] * s + np.arange(k)[None, :] * d
    return ((starts >= lo) & (starts < hi)).sum(axis=1)


def _avg_pool_kernel(xp, ins, attrs, outs):
    x, out = ins[0], outs[0]
    kernel, strides, pads, dilations, _ = _pool_geometry(attrs, "avg_pool2d")
    n, c, h, w = x.shape
    _, _, oh, ow = out.shape
    if not (strides[0] == strides[1] and _flat_pool(xp, x, out, kernel, strides[0], pads,
                                                    dilations, 0.0, xp.add)):
        buf = _padded(xp, x, pads, _needed(oh, kernel[0], strides[0], dilations[0]),
                      _needed(ow, kernel[1], strides[1], dilations[1]), 0.0)
        _separable_pool(xp, buf, out, kernel, strides, dilations, xp.add)
    average(xp, out, attrs, h, w)


def average(xp, out, attrs, h: int, w: int) -> None:
    """Divide the window sums in ``out`` by their tap counts (padding counted or not, as
    ``count_include_pad`` says); ``h``, ``w``: the input's size."""
    kernel, strides, pads, dilations, _ = _pool_geometry(attrs, "avg_pool2d")
    n, c, oh, ow = out.shape
    # buffer coordinates: the input occupies [top, top + h); explicit pads end at top + h + bottom
    if attrs["count_include_pad"]:
        ch = _window_counts(oh, kernel[0], strides[0], dilations[0], 0, pads[0] + h + pads[2])
        cw = _window_counts(ow, kernel[1], strides[1], dilations[1], 0, pads[1] + w + pads[3])
    else:
        ch = _window_counts(oh, kernel[0], strides[0], dilations[0], pads[0], pads[0] + h)
        cw = _window_counts(ow, kernel[1], strides[1], dilations[1], pads[1], pads[1] + w)
    inv = (1.0 / np.maximum(ch[:, None] * cw[None, :], 1)).astype(out.dtype).reshape(-1)
    # (N*C, OH*OW) against one (OH*OW,) row: a contiguous-by-contiguous NumPy loop
    planes = out.reshape(n * c, oh * ow) if out.flags.c_contiguous else out
    planes *= xp.asarray(inv if planes is not out else inv.reshape(oh, ow))


_POOL_ATTRS = {"strides": (1, 1), "pads": (0, 0, 0, 0), "dilations": (1, 1), "ceil_mode": 0}
register(Op("max_pool2d", _pool_infer("max_pool2d"), _split_pool(_max_pool_kernel),
            attrs={"kernel_shape": REQUIRED, **_POOL_ATTRS}, cost=_pool_cost, op_class="reduce",
            doc="2-D max pooling (ONNX MaxPool)"))
register(Op("avg_pool2d", _pool_infer("avg_pool2d"),
            _split_pool(_accumulate_wide(_avg_pool_kernel)),
            attrs={"kernel_shape": REQUIRED, **_POOL_ATTRS, "count_include_pad": 0},
            cost=_pool_cost, op_class="reduce", doc="2-D average pooling (ONNX AveragePool)"))


def max_pool2d(x, kernel_shape, strides=None, pads=(0, 0, 0, 0), dilations=(1, 1), ceil_mode=0,
               *, device=None):
    """2-D max pooling of an NCHW input (ONNX MaxPool); ``pads`` are (top, left, bottom, right)
    and padding never wins the max."""
    return apply("max_pool2d", (x,), {
        "kernel_shape": tuple(kernel_shape), "strides": tuple(strides or (1, 1)),
        "pads": tuple(pads), "dilations": tuple(dilations), "ceil_mode": int(ceil_mode)},
        device=device)


def avg_pool2d(x, kernel_shape, strides=None, pads=(0, 0, 0, 0), ceil_mode=0, count_include_pad=0,
               dilations=(1, 1), *, device=None):
    """2-D average pooling of an NCHW input (ONNX AveragePool).

    ``count_include_pad`` divides by the window size including the explicit padding; windows that
    ``ceil_mode`` lets run past the padding never count the part beyond it.
    """
    return apply("avg_pool2d", (x,), {
        "kernel_shape": tuple(kernel_shape), "strides": tuple(strides or (1, 1)),
        "pads": tuple(pads), "dilations": tuple(dilations), "ceil_mode": int(ceil_mode),
        "count_include_pad": int(count_include_pad)}, device=device)


def _infer_global(opname):
    def infer(ins, attrs):
        x = ins[0]
        if x.ndim < 3:
            raise ShapeError(f"{opname}: input must be (N, C, spatial...), got shape {x.shape}")
        require_float(x, opname)
        if opname == "global_max_pool" and 0 in x.shape[2:]:
            raise ShapeError(f"{opname}: the maximum of an empty map, input shape {x.shape}")
        return (TensorSpec(x.shape[:2] + (1,) * (x.ndim - 2), x.dtype),)
    return infer


def _global_kernel(reduction):
    def kernel(xp, ins, attrs, outs):
        x = ins[0]
        getattr(xp, reduction)(x, axis=tuple(range(2, x.ndim)), keepdims=True, out=outs[0])
    return kernel


def _global_cost(ins, outs, attrs):
    return Cost(flops=float(ins[0].size), bytes=float(ins[0].nbytes + outs[0].nbytes))


register(Op("global_avg_pool", _infer_global("global_avg_pool"),
            _accumulate_wide(_global_kernel("mean")), cost=_global_cost, op_class="reduce",
            doc="mean over every spatial axis, kept as size 1 (ONNX GlobalAveragePool)"))
register(Op("global_max_pool", _infer_global("global_max_pool"), _global_kernel("max"),
            cost=_global_cost, op_class="reduce",
            doc="max over every spatial axis, kept as size 1 (ONNX GlobalMaxPool)"))


def global_avg_pool(x, *, device=None):
    """Mean over every spatial axis: ``(N, C, H, W) -> (N, C, 1, 1)``."""
    return apply("global_avg_pool", (x,), device=device)


def global_max_pool(x, *, device=None):
    """Max over every spatial axis: ``(N, C, H, W) -> (N, C, 1, 1)``."""
    return apply("global_max_pool", (x,), device=device)


# ----------------------------------------------------------------------------------------------
# Normalisation


def _infer_batch_norm(ins, attrs):
    x = ins[0]
    if x.ndim < 2:
        raise ShapeError(f"batch_norm: input must be (N, C, ...), got shape {x.shape}")
    require_float(x, "batch_norm")
    same_dtype(ins, "batch_norm inputs")
    c = x.shape[1]
    for name, spec in zip(("scale", "bias", "mean", "var"), ins[1:]):
        if spec.shape != (c,):
            raise ShapeError(f"batch_norm: {name} must have shape ({c},) for {c} channels, got "
                             f"{spec.shape}")
    _check_activation("batch_norm", attrs)
    return (x,)


def _check_activation(opname: str, attrs) -> None:
    act = attrs["activation"]
    if act not in ACTIVATIONS:
        raise ShapeError(f"{opname}: unknown activation {act!r} (known: {', '.join(ACTIVATIONS)})")
    params = tuple(attrs["activation_params"] or ())
    if act != "none" and len(params) not in (0, ACTIVATIONS[act]):
        raise ShapeError(f"{opname}: activation {act} takes {ACTIVATIONS[act]} activation_params, "
                         f"got {params}")


def batch_norm_affine(xp, scale, bias, mean, var, epsilon):
    """Per-channel ``(a, b)`` with ``batch_norm(x) = a * x + b``."""
    a = scale / xp.sqrt(var + var.dtype.type(epsilon))
    return a, bias - mean * a


def _batch_norm_kernel(xp, ins, attrs, outs):
    x, out = ins[0], outs[0]
    a, b = batch_norm_affine(xp, *ins[1:], attrs["epsilon"])
    n, c = x.shape[:2]
    if x.flags.c_contiguous and out.flags.c_contiguous:
        # (N, C, rest) against (C, 1): NumPy's broadcast loop runs over the whole map, not
        # its last axis only
        rest = int(np.prod(x.shape[2:], dtype=np.int64))  # not -1: N may be 0
        x3, out3 = x.reshape(n, c, rest), out.reshape(n, c, rest)
        xp.multiply(x3, a.reshape(c, 1), out=out3)
        out3 += b.reshape(c, 1)
    else:
        shape = (1, c) + (1,) * (x.ndim - 2)
        xp.multiply(x, a.reshape(shape), out=out)
        out += b.reshape(shape)
    apply_activation(xp, out, attrs["activation"], attrs["activation_params"])


register(Op("batch_norm", _infer_batch_norm, _accumulate_wide(_batch_norm_kernel), arity=(5, 5),
            attrs={"epsilon": 1e-5, "activation": "none", "activation_params": ()},
            cost=lambda ins, outs, attrs: Cost(2.0 * ins[0].size,
                                               float(ins[0].nbytes + outs[0].nbytes)),
            op_class="norm",
            doc="inference batch normalisation (ONNX BatchNormalization), optional fused "
                "activation"))


def batch_norm(x, scale, bias, mean, var, *, epsilon=1e-5, activation="none",
               activation_params=(), device=None):
    """Inference batch normalisation over axis 1:
    ``(x - mean) / sqrt(var + epsilon) * scale + bias``, then ``activation`` (as conv2d's)."""
    return apply("batch_norm", (x, scale, bias, mean, var),
                 {"epsilon": float(epsilon), "activation": activation,
                  "activation_params": tuple(activation_params)}, device=device)


def _infer_lrn(ins, attrs):
    x = ins[0]
    if x.ndim < 3:
        raise ShapeError(f"lrn: input must be (N, C, spatial...), got shape {x.shape}")
    require_float(x, "lrn")
    if int(attrs["size"]) < 1:
        raise ShapeError(f"lrn: size must be >= 1, got {attrs['size']}")
    return (x,)


def _lrn_kernel(xp, ins, attrs, outs):
    x, out = ins[0], outs[0]
    size = int(attrs["size"])
    c = x.shape[1]
    lo, hi = (size - 1) // 2, -(-(size - 1) // 2)  # channels before and after, ONNX
    sq = xp.zeros((x.shape[0], c + lo + hi) + x.shape[2:], x.dtype)
    xp.multiply(x, x, out=sq[:, lo:lo + c])
    out[...] = sq[:, 0:c]
    for k in range(1, size):
        out += sq[:, k:k + c]
    t = x.dtype.type
    out *= t(attrs["alpha"] / size)
    out += t(attrs["bias"])
    xp.power(out, t(-attrs["beta"]), out=out)
    out *= x


register(Op("lrn", _infer_lrn, _accumulate_wide(_lrn_kernel),
            attrs={"size": REQUIRED, "alpha": 1e-4, "beta": 0.75, "bias": 1.0},
            cost=lambda ins, outs, attrs: Cost(float(ins[0].size * (int(attrs["size"]) + 4)),
                                               float(ins[0].nbytes + outs[0].nbytes)),
            op_class="norm", doc="local response normalisation across channels (ONNX LRN)"))


def lrn(x, size, alpha=1e-4, beta=0.75, bias=1.0, *, device=None):
    """Local response normalisation across channels (ONNX LRN):
    ``x / (bias + alpha / size * sum of x**2 over `size` neighbouring channels) ** beta``."""
    return apply("lrn", (x,), {"size": size, "alpha": alpha, "beta": beta, "bias": bias},
                 device=device)
