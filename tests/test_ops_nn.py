"""nn ops against direct float64 NumPy references and against onnxruntime."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hetero.errors import ShapeError
from hetero.graph import TensorSpec
from hetero.ops import nn  # noqa: F401  (registers the ops)
from hetero.ops.registry import lookup

RNG = np.random.default_rng(0)


def run_op(name, ins, **attrs):
    """Infer, allocate and run the NumPy kernel of ``name``, as an executor does."""
    op = lookup(name)
    attrs = op.normalize_attrs(attrs)
    specs = op.infer_specs(tuple(TensorSpec.of(a) for a in ins), attrs)
    outs = [np.full(s.shape, np.nan, s.dtype) for s in specs]
    op.kernel_for("numpy")(np, list(ins), attrs, outs)
    return outs[0]


def rand(*shape, dtype=np.float32):
    return RNG.standard_normal(shape).astype(dtype)


# ----------------------------------------------------------------------------------------------
# Direct references (float64, one output position at a time)


def pad_nchw(x, pads, value=0.0, extra=(0, 0)):
    t, left, b, r = pads
    return np.pad(x.astype(np.float64), ((0, 0), (0, 0), (t, b + extra[0]), (left, r + extra[1])),
                  constant_values=value)


def ref_conv(x, w, b=None, strides=(1, 1), pads=(0, 0, 0, 0), dilations=(1, 1), groups=1):
    n, c, h, wd = x.shape
    o, cg, kh, kw = w.shape
    xp = pad_nchw(x, pads)
    oh = (h + pads[0] + pads[2] - dilations[0] * (kh - 1) - 1) // strides[0] + 1
    ow = (wd + pads[1] + pads[3] - dilations[1] * (kw - 1) - 1) // strides[1] + 1
    out = np.zeros((n, o, oh, ow))
    og = o // groups
    w64 = w.astype(np.float64)
    for g in range(groups):
        for i in range(oh):
            for j in range(ow):
                hs, ws = i * strides[0], j * strides[1]
                patch = xp[:, g * cg:(g + 1) * cg,
                           hs:hs + dilations[0] * (kh - 1) + 1:dilations[0],
                           ws:ws + dilations[1] * (kw - 1) + 1:dilations[1]]
                out[:, g * og:(g + 1) * og, i, j] = np.tensordot(
                    patch, w64[g * og:(g + 1) * og], axes=([1, 2, 3], [1, 2, 3]))
    if b is not None:
        out += b.reshape(1, -1, 1, 1)
    return out


def ref_out_size(size, k, s, d, p0, p1, ceil_mode):
    span = size + p0 + p1 - d * (k - 1) - 1
    if ceil_mode:
        out = math.ceil(span / s) + 1
        if (out - 1) * s >= size + p0:
            out -= 1
        return out
    return span // s + 1


def ref_pool(x, kind, kernel, strides, pads, dilations=(1, 1), ceil_mode=0,
             count_include_pad=0):
    n, c, h, w = x.shape
    oh = ref_out_size(h, kernel[0], strides[0], dilations[0], pads[0], pads[2], ceil_mode)
    ow = ref_out_size(w, kernel[1], strides[1], dilations[1], pads[1], pads[3], ceil_mode)
    out = np.zeros((n, c, oh, ow))
    x64 = x.astype(np.float64)
    for i in range(oh):
        for j in range(ow):
            vals, inside_pad = [], 0
            for a in range(kernel[0]):
                for b in range(kernel[1]):
                    r = i * strides[0] - pads[0] + a * dilations[0]
                    q = j * strides[1] - pads[1] + b * dilations[1]
                    if 0 <= r < h and 0 <= q < w:
                        vals.append(x64[:, :, r, q])
                    if -pads[0] <= r < h + pads[2] and -pads[1] <= q < w + pads[3]:
                        inside_pad += 1
            if not vals:
                return None  # a window of padding only: the op refuses such geometry
            stack = np.stack(vals)
            if kind == "max":
                out[:, :, i, j] = stack.max(axis=0)
            else:
                div = inside_pad if count_include_pad else len(vals)
                out[:, :, i, j] = stack.sum(axis=0) / div
    return out


def ref_lrn(x, size, alpha, beta, bias):
    x64 = x.astype(np.float64)
    c = x.shape[1]
    sq = np.zeros_like(x64)
    for ch in range(c):
        lo = max(0, ch - (size - 1) // 2)
        hi = min(c - 1, ch + math.ceil((size - 1) / 2))
        sq[:, ch] = (x64[:, lo:hi + 1] ** 2).sum(axis=1)
    return x64 / (bias + alpha / size * sq) ** beta


def close(got, want, tol=1e-4):
    scale = max(1.0, float(np.abs(want).max()))
    np.testing.assert_allclose(got, want, rtol=tol, atol=tol * scale)


# ----------------------------------------------------------------------------------------------
# conv2d


@pytest.mark.parametrize("cfg", [
    dict(x=(2, 3, 9, 9), w=(4, 3, 3, 3)),
    dict(x=(1, 8, 6, 6), w=(16, 8, 1, 1)),                                   # plain GEMM
    dict(x=(1, 8, 7, 7), w=(6, 8, 1, 1), strides=(2, 2)),                    # strided 1x1
    dict(x=(1, 3, 11, 10), w=(5, 3, 7, 7), strides=(2, 2), pads=(3, 3, 3, 3)),
    dict(x=(1, 4, 8, 9), w=(6, 2, 3, 3), groups=2, pads=(1, 0, 2, 1)),        # asymmetric pads
    dict(x=(2, 6, 9, 9), w=(6, 1, 3, 3), groups=6, pads=(1, 1, 1, 1)),        # depthwise
    dict(x=(1, 4, 9, 9), w=(8, 1, 3, 3), groups=4, strides=(2, 1)),           # depth multiplier 2
    dict(x=(1, 2, 12, 12), w=(3, 2, 3, 2), dilations=(2, 3), pads=(2, 1, 0, 3)),
])
def test_conv2d_matches_direct_reference(cfg):
    x, w, b = rand(*cfg["x"]), rand(*cfg["w"]), rand(cfg["w"][0])
    attrs = {k: cfg[k] for k in ("strides", "pads", "dilations", "groups") if k in cfg}
    close(run_op("conv2d", [x, w], **attrs), ref_conv(x, w, **attrs))
    close(run_op("conv2d", [x, w, b], **attrs), ref_conv(x, w, b, **attrs))


@given(n=st.integers(1, 2), cg=st.integers(1, 3), og=st.integers(1, 3), groups=st.integers(1, 3),
       h=st.integers(1, 9), w=st.integers(1, 9), kh=st.integers(1, 4), kw=st.integers(1, 4),
       sh=st.integers(1, 3), sw=st.integers(1, 3), dh=st.integers(1, 2), dw=st.integers(1, 2),
       pads=st.tuples(*[st.integers(0, 3)] * 4), bias=st.booleans())
@settings(max_examples=25, deadline=None)
def test_conv2d_property(n, cg, og, groups, h, w, kh, kw, sh, sw, dh, dw, pads, bias):
    if h + pads[0] + pads[2] < dh * (kh - 1) + 1 or w + pads[1] + pads[3] < dw * (kw - 1) + 1:
        return  # window does not fit: covered by test_conv2d_shape_errors
    x, wt = rand(n, cg * groups, h, w), rand(og * groups, cg, kh, kw)
    b = rand(og * groups) if bias else None
    attrs = dict(strides=(sh, sw), pads=pads, dilations=(dh, dw), groups=groups)
    ins = [x, wt] if b is None else [x, wt, b]
    close(run_op("conv2d", ins, **attrs), ref_conv(x, wt, b, **attrs))


@given(n=st.integers(1, 2), c=st.integers(1, 40), mult=st.integers(1, 2), h=st.integers(1, 16),
       w=st.integers(1, 16), k=st.integers(1, 5), s=st.tuples(st.integers(1, 3), st.integers(1, 3)),
       d=st.tuples(st.integers(1, 2), st.integers(1, 2)),
       pads=st.tuples(*[st.integers(0, 3)] * 4), act=st.sampled_from(["none", "relu"]))
@settings(max_examples=25, deadline=None)
def test_depthwise_conv_property(n, c, mult, h, w, k, s, d, pads, act):
    """The channels-last depthwise kernel (one input channel per group, any multiplier)."""
    if h + pads[0] + pads[2] < d[0] * (k - 1) + 1 or w + pads[1] + pads[3] < d[1] * (k - 1) + 1:
        return
    x, wt, b = rand(n, c, h, w), rand(c * mult, 1, k, k), rand(c * mult)
    attrs = dict(strides=s, pads=pads, dilations=d, groups=c)
    want = ref_conv(x, wt, b, **attrs)
    close(run_op("conv2d", [x, wt, b], activation=act, **attrs),
          np.maximum(want, 0) if act == "relu" else want)


@pytest.mark.parametrize("act, params, fn", [
    ("relu", (), lambda y: np.maximum(y, 0)),
    ("leaky_relu", (0.2,), lambda y: np.where(y >= 0, y, 0.2 * y)),
    ("leaky_relu", (), lambda y: np.where(y >= 0, y, 0.01 * y)),
    ("leaky_relu", (1.5,), lambda y: np.where(y >= 0, y, 1.5 * y)),
    ("sigmoid", (), lambda y: 1 / (1 + np.exp(-y))),
    ("tanh", (), np.tanh),
    ("clip", (-0.5, 0.75), lambda y: np.clip(y, -0.5, 0.75)),
    ("silu", (), lambda y: y / (1 + np.exp(-y))),
    ("hard_swish", (), lambda y: y * np.clip(y / 6 + 0.5, 0, 1)),
    ("hard_sigmoid", (0.3, 0.4), lambda y: np.clip(0.3 * y + 0.4, 0, 1)),
])
def test_conv2d_fused_activation(act, params, fn):
    x, w, b = rand(1, 3, 6, 6) * 4, rand(4, 3, 3, 3), rand(4)
    got = run_op("conv2d", [x, w, b], pads=(1, 1, 1, 1), activation=act, activation_params=params)
    close(got, fn(ref_conv(x, w, b, pads=(1, 1, 1, 1))))


@pytest.mark.parametrize("name, make, attrs", [
    ("conv2d", lambda: [rand(1, 8, 6, 6), rand(4, 8, 3, 3), rand(4)], {"pads": (1, 1, 1, 1)}),
    ("conv2d", lambda: [rand(1, 8, 6, 6), rand(8, 1, 3, 3)], {"groups": 8}),
    ("avg_pool2d", lambda: [rand(1, 3, 8, 8) + 20], {"kernel_shape": (4, 4)}),
    ("lrn", lambda: [rand(1, 6, 3, 3)], {"size": 5, "alpha": 0.5}),
])
def test_float16_accumulates_in_float32(name, make, attrs):
    """float16 in, float16 out, but one rounding at the end: the same result as computing in
    float32 and casting (what onnxruntime does)."""
    ins32 = [a.astype(np.float16).astype(np.float32) for a in make()]
    want = run_op(name, ins32, **attrs).astype(np.float16)
    got = run_op(name, [a.astype(np.float16) for a in ins32], **attrs)
    assert got.dtype == np.float16
    np.testing.assert_array_equal(got, want)


def test_conv2d_add_fuses_the_residual():
    x, w, b, z = rand(2, 3, 6, 6), rand(4, 3, 3, 3), rand(4), rand(2, 4, 6, 6)
    got = run_op("conv2d_add", [x, w, b, z], pads=(1, 1, 1, 1), activation="relu")
    close(got, np.maximum(ref_conv(x, w, b, pads=(1, 1, 1, 1)) + z, 0))
    op = lookup("conv2d_add")
    with pytest.raises(ShapeError, match="residual must be"):
        op.infer_specs(tuple(TensorSpec.of(a) for a in (x, w, b, rand(2, 4, 5, 6))),
                       op.normalize_attrs({"pads": (1, 1, 1, 1)}))


@given(n=st.integers(1, 2), o=st.integers(1, 8), extra_c=st.integers(0, 8),
       h=st.integers(1, 12), w=st.integers(1, 12), kh=st.integers(1, 3), kw=st.integers(1, 3),
       d=st.tuples(st.integers(1, 2), st.integers(1, 2)),
       pads=st.tuples(*[st.integers(0, 2)] * 4), bias=st.booleans(), residual=st.booleans(),
       act=st.sampled_from(["none", "relu"]))
@settings(max_examples=30, deadline=None)
def test_conv2d_stacked_taps_property(n, o, extra_c, h, w, kh, kw, d, pads, bias, residual,
                                      act):
    """Stride-1 convs with few output channels per input channel: one GEMM of the stacked tap
    weights and shifted adds (any size here: the pixel threshold is lowered)."""
    c = 2 * o + extra_c
    if h + pads[0] + pads[2] < d[0] * (kh - 1) + 1 or w + pads[1] + pads[3] < d[1] * (kw - 1) + 1:
        return
    x, wt, b = rand(n, c, h, w), rand(o, c, kh, kw), rand(o)
    attrs = dict(pads=pads, dilations=d, activation=act)
    want = ref_conv(x, wt, b if bias or residual else None, pads=pads, dilations=d)
    saved, nn.STACKED_MIN_PIXELS = nn.STACKED_MIN_PIXELS, 1
    try:
        if residual:
            z = rand(*want.shape)
            got = run_op("conv2d_add", [x, wt, b, z], **attrs)
            want = want + z
        else:
            got = run_op("conv2d", [x, wt, b] if bias else [x, wt], **attrs)
    finally:
        nn.STACKED_MIN_PIXELS = saved
    close(got, np.maximum(want, 0) if act == "relu" else want)


@pytest.fixture
def monkeypatch_pixels(monkeypatch):
    monkeypatch.setattr(nn, "STACKED_MIN_PIXELS", 1)
    calls = []
    real = nn._stacked_taps
    monkeypatch.setattr(nn, "_stacked_taps", lambda *a: calls.append(1) or real(*a))
    return calls


def test_conv2d_stacked_taps_is_taken(monkeypatch_pixels):
    x, w = rand(1, 8, 14, 14), rand(4, 8, 3, 3)
    close(run_op("conv2d", [x, w], pads=(1, 1, 1, 1)), ref_conv(x, w, pads=(1, 1, 1, 1)))
    assert monkeypatch_pixels


def test_conv2d_writes_into_a_non_contiguous_output():
    x, w = rand(1, 3, 5, 5), rand(4, 3, 3, 3)
    op = lookup("conv2d")
    attrs = op.normalize_attrs({"activation": "relu"})
    big = np.full((1, 8, 3, 3), np.nan, np.float32)
    op.kernel_for("numpy")(np, [x, w], attrs, [big[:, ::2]])
    close(big[:, ::2], np.maximum(ref_conv(x, w), 0))
    assert np.isnan(big[:, 1::2]).all()


def test_conv2d_float64_and_eager_api():
    import hetero as ht

    x, w = rand(1, 2, 5, 5, dtype=np.float64), rand(3, 2, 2, 2, dtype=np.float64)
    y = ht.ops.conv2d(x, w, strides=(1, 2), pads=(0, 1, 1, 0))
    assert y.dtype == np.float64
    np.testing.assert_allclose(np.asarray(y), ref_conv(x, w, strides=(1, 2), pads=(0, 1, 1, 0)),
                               rtol=1e-12)


def test_conv2d_cost_counts_multiply_adds():
    op = lookup("conv2d")
    attrs = op.normalize_attrs({"strides": (2, 2), "pads": (1, 1, 1, 1), "groups": 2})
    ins = (TensorSpec((2, 8, 10, 10), np.float32), TensorSpec((6, 4, 3, 3), np.float32))
    outs = op.infer_specs(ins, attrs)
    assert outs[0].shape == (2, 6, 5, 5)
    assert op.cost_of(ins, outs, attrs).flops == 2 * 2 * 6 * 5 * 5 * 4 * 3 * 3
    assert op.op_class == "conv"
    assert lookup("batch_norm").op_class == lookup("lrn").op_class == "norm"
    assert lookup("max_pool2d").op_class == lookup("global_avg_pool").op_class == "reduce"


@pytest.mark.parametrize("xs, ws, attrs, message", [
    ((1, 3, 5), (4, 3, 3, 3), {}, "4-D NCHW"),
    ((1, 3, 5, 5), (4, 2, 3, 3), {}, "expects 2"),
    ((1, 4, 5, 5), (5, 2, 3, 3), {"groups": 2}, "not divisible by groups=2"),
    ((1, 3, 2, 2), (4, 3, 3, 3), {}, "does not fit"),
    ((1, 3, 5, 5), (4, 3, 3, 3), {"pads": (1, 1)}, "4 entries"),
    ((1, 3, 5, 5), (4, 3, 3, 3), {"strides": (0, 1)}, "must be >= 1"),
    ((1, 3, 5, 5), (4, 3, 3, 3), {"activation": "swish"}, "unknown activation"),
    ((1, 3, 5, 5), (4, 3, 3, 3), {"activation": "clip", "activation_params": (1.0,)},
     "takes 2"),
])
def test_conv2d_shape_errors(xs, ws, attrs, message):
    op = lookup("conv2d")
    with pytest.raises(ShapeError, match=message):
        op.infer_specs((TensorSpec(xs, np.float32), TensorSpec(ws, np.float32)),
                       op.normalize_attrs(attrs))


def test_conv2d_bias_and_dtype_errors():
    op = lookup("conv2d")
    x, w = TensorSpec((1, 3, 5, 5), np.float32), TensorSpec((4, 3, 3, 3), np.float32)
    with pytest.raises(ShapeError, match=r"bias must have shape \(4,\)"):
        op.infer_specs((x, w, TensorSpec((3,), np.float32)), op.normalize_attrs({}))
    with pytest.raises(ShapeError, match="different dtypes"):
        op.infer_specs((x, TensorSpec((4, 3, 3, 3), np.float64)), op.normalize_attrs({}))


@given(n=st.integers(1, 2), c=st.integers(1, 4), o=st.integers(1, 4), h=st.integers(1, 9),
       w=st.integers(1, 9), pads=st.tuples(*[st.integers(0, 2)] * 4), bias=st.booleans())
@settings(max_examples=25, deadline=None)
def test_conv2d_winograd_matches_reference(n, c, o, h, w, pads, bias):
    from hetero.ops.nn import winograd_weights

    if h + pads[0] + pads[2] < 3 or w + pads[1] + pads[3] < 3:
        return
    x, wt, b = rand(n, c, h, w), rand(o, c, 3, 3), rand(o)
    ins = [x, winograd_weights(wt)] + ([b] if bias else [])
    got = run_op("conv2d_winograd", ins, pads=pads, activation="relu")
    close(got, np.maximum(ref_conv(x, wt, b if bias else None, pads=pads), 0))


def test_conv2d_winograd_errors_and_cost():
    from hetero.ops.nn import winograd_weights

    op = lookup("conv2d_winograd")
    x = TensorSpec((1, 4, 8, 8), np.float32)
    with pytest.raises(ShapeError, match=r"must be \(16, O, 4\)"):
        op.infer_specs((x, TensorSpec((9, 5, 4), np.float32)), op.normalize_attrs({}))
    with pytest.raises(ShapeError, match="OIHW 3x3"):
        winograd_weights(np.zeros((2, 2, 5, 5), np.float32))
    attrs = op.normalize_attrs({"pads": (1, 1, 1, 1)})
    ins = (TensorSpec((1, 128, 8, 8), np.float32), TensorSpec((16, 128, 128), np.float32))
    outs = op.infer_specs(ins, attrs)
    assert outs[0].shape == (1, 128, 8, 8)
    # with many channels, fewer flops than the direct convolution (transforms included)
    direct = 2 * 128 * 64 * 128 * 9
    assert 0.4 * direct < op.cost_of(ins, outs, attrs).flops < 0.6 * direct


# ----------------------------------------------------------------------------------------------
# Pooling


@given(kh=st.integers(1, 3), kw=st.integers(1, 3), sh=st.integers(1, 3), sw=st.integers(1, 3),
       h=st.integers(1, 8), w=st.integers(1, 8), pads=st.tuples(*[st.integers(0, 2)] * 4),
       ceil_mode=st.integers(0, 1), count_include_pad=st.integers(0, 1),
       dil=st.integers(1, 2))
@settings(max_examples=25, deadline=None)
def test_pools_property(kh, kw, sh, sw, h, w, pads, ceil_mode, count_include_pad, dil):
    if h + pads[0] + pads[2] < dil * (kh - 1) + 1 or w + pads[1] + pads[3] < dil * (kw - 1) + 1:
        return
    x = rand(2, 3, h, w)
    geo = dict(kernel_shape=(kh, kw), strides=(sh, sw), pads=pads, dilations=(dil, dil),
               ceil_mode=ceil_mode)
    want = ref_pool(x, "max", (kh, kw), (sh, sw), pads, (dil, dil), ceil_mode)
    if want is None:
        with pytest.raises(ShapeError, match="padding only"):
            run_op("max_pool2d", [x], **geo)
        return
    close(run_op("max_pool2d", [x], **geo), want)
    close(run_op("avg_pool2d", [x], **geo, count_include_pad=count_include_pad),
          ref_pool(x, "avg", (kh, kw), (sh, sw), pads, (dil, dil), ceil_mode, count_include_pad))


@given(k=st.tuples(st.integers(1, 4), st.integers(1, 4)), s=st.integers(1, 3),
       n=st.integers(1, 2), c=st.integers(1, 5), h=st.integers(1, 15), w=st.integers(1, 15),
       pads=st.tuples(*[st.integers(0, 2)] * 4), ceil_mode=st.integers(0, 1),
       count_include_pad=st.integers(0, 1), dil=st.tuples(st.integers(1, 2), st.integers(1, 2)),
       contiguous=st.booleans())
@settings(max_examples=40, deadline=None)
def test_pools_equal_strides_property(k, s, n, c, h, w, pads, ceil_mode, count_include_pad, dil,
                                      contiguous):
    """Equal strides take the flattened-tensor pool (and its fallback for a non-contiguous
    input without padding)."""
    if h + pads[0] + pads[2] < dil[0] * (k[0] - 1) + 1 or \
            w + pads[1] + pads[3] < dil[1] * (k[1] - 1) + 1:
        return
    x = rand(n, c, h, w) if contiguous else rand(n, c, w, h).transpose(0, 1, 3, 2)
    geo = dict(kernel_shape=k, strides=(s, s), pads=pads, dilations=dil, ceil_mode=ceil_mode)
    want = ref_pool(x, "max", k, (s, s), pads, dil, ceil_mode)
    if want is None:
        return
    close(run_op("max_pool2d", [x], **geo), want)
    close(run_op("avg_pool2d", [x], **geo, count_include_pad=count_include_pad),
          ref_pool(x, "avg", k, (s, s), pads, dil, ceil_mode, count_include_pad))


def test_global_pools():
    x = rand(2, 5, 4, 3)
    close(run_op("global_avg_pool", [x]), x.astype(np.float64).mean(axis=(2, 3), keepdims=True))
    close(run_op("global_max_pool", [x]), x.max(axis=(2, 3), keepdims=True))
    assert run_op("global_avg_pool", [rand(1, 2, 7)]).shape == (1, 2, 1)


def test_pool_errors():
    op = lookup("max_pool2d")
    x = TensorSpec((1, 1, 4, 4), np.float32)
    with pytest.raises(ShapeError, match="missing required attribute 'kernel_shape'"):
        op.normalize_attrs({})
    with pytest.raises(ShapeError, match="padding only"):
        op.infer_specs((x,), op.normalize_attrs({"kernel_shape": (2, 2), "pads": (2, 0, 0, 0)}))
    with pytest.raises(ShapeError, match="does not fit"):
        op.infer_specs((x,), op.normalize_attrs({"kernel_shape": (5, 5)}))
    with pytest.raises(ShapeError, match="floating-point"):
        op.infer_specs((TensorSpec((1, 1, 4, 4), np.int64),),
                       op.normalize_attrs({"kernel_shape": (2, 2)}))


# ----------------------------------------------------------------------------------------------
# Normalisation


def test_batch_norm():
    x = rand(2, 4, 3, 5)
    scale, bias, mean = rand(4), rand(4), rand(4)
    var = np.abs(rand(4)) + 0.1
    shape = (1, 4, 1, 1)
    want = ((x - mean.reshape(shape)) / np.sqrt(var.reshape(shape).astype(np.float64) + 1e-3)
            * scale.reshape(shape) + bias.reshape(shape))
    close(run_op("batch_norm", [x, scale, bias, mean, var], epsilon=1e-3), want)
    with pytest.raises(ShapeError, match=r"var must have shape \(4,\)"):
        lookup("batch_norm").infer_specs(
            tuple(TensorSpec.of(a) for a in (x, scale, bias, mean, rand(3))),
            lookup("batch_norm").normalize_attrs({}))
    # fused activation; a non-contiguous input takes the 4-D broadcast
    close(run_op("batch_norm", [x, scale, bias, mean, var], epsilon=1e-3, activation="relu"),
          np.maximum(want, 0))
    xt = np.ascontiguousarray(x.transpose(0, 1, 3, 2)).transpose(0, 1, 3, 2)
    close(run_op("batch_norm", [xt, scale, bias, mean, var], epsilon=1e-3,
                 activation="clip", activation_params=(-0.5, 0.5)), np.clip(want, -0.5, 0.5))
    with pytest.raises(ShapeError, match="unknown activation"):
        lookup("batch_norm").infer_specs(
            tuple(TensorSpec.of(a) for a in (x, scale, bias, mean, var)),
            lookup("batch_norm").normalize_attrs({"activation": "gelu"}))


@pytest.mark.parametrize("size", [1, 2, 3, 4, 5])
def test_lrn(size):
    x = rand(2, 6, 3, 3)
    close(run_op("lrn", [x], size=size, alpha=0.01, beta=0.6, bias=1.5),
          ref_lrn(x, size, 0.01, 0.6, 1.5))


# ----------------------------------------------------------------------------------------------
# onnxruntime


def ort_run(op_type, inputs, initializers=(), **attrs):
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    from onnx import helper, numpy_helper

    names = [f"in{i}" for i in range(len(inputs))]
    inits = [numpy_helper.from_array(a, f"init{i}") for i, a in enumerate(initializers)]
    node = helper.make_node(op_type, names + [t.name for t in inits], ["y"], **attrs)
    graph = helper.make_graph(
        [node], "t",
        [helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, a.shape)
         for n, a in zip(names, inputs)],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(model.SerializeToString(), opts,
                                providers=["CPUExecutionProvider"])
    return sess.run(None, dict(zip(names, inputs)))[0]


def onnx_pads(pads):  # ours (top, left, bottom, right) is ONNX's (x1_begin, x2_begin, x1_end, ...)
    return list(pads)


@pytest.mark.parametrize("cfg", [
    dict(x=(1, 4, 10, 9), w=(6, 2, 3, 3), strides=(2, 1), pads=(1, 0, 2, 1), dilations=(1, 2),
         group=2),
    dict(x=(2, 8, 7, 7), w=(8, 1, 3, 3), strides=(1, 1), pads=(1, 1, 1, 1), dilations=(1, 1),
         group=8),
    dict(x=(1, 16, 6, 6), w=(12, 16, 1, 1), strides=(1, 1), pads=(0, 0, 0, 0), dilations=(1, 1),
         group=1),
])
def test_conv2d_matches_onnxruntime(cfg):
    x, w, b = rand(*cfg["x"]), rand(*cfg["w"]), rand(cfg["w"][0])
    want = ort_run("Conv", [x], [w, b], strides=list(cfg["strides"]),
                   pads=onnx_pads(cfg["pads"]), dilations=list(cfg["dilations"]),
                   group=cfg["group"])
    got = run_op("conv2d", [x, w, b], strides=cfg["strides"], pads=cfg["pads"],
                 dilations=cfg["dilations"], groups=cfg["group"])
    close(got, want)


@pytest.mark.parametrize("ceil_mode", [0, 1])
def test_pools_match_onnxruntime(ceil_mode):
    x = rand(1, 3, 10, 11)
    geo = dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 0, 1, 1])
    close(run_op("max_pool2d", [x], ceil_mode=ceil_mode, **geo),
          ort_run("MaxPool", [x], ceil_mode=ceil_mode, **geo))
    for cip in (0, 1):
        close(run_op("avg_pool2d", [x], ceil_mode=ceil_mode, count_include_pad=cip, **geo),
              ort_run("AveragePool", [x], ceil_mode=ceil_mode, count_include_pad=cip, **geo))
    # a last window that would start in the trailing padding is dropped (output 3x3, not 4x4)
    small = rand(1, 2, 4, 4)
    geo = dict(kernel_shape=[3, 3], strides=[2, 2], pads=[2, 2, 2, 2], ceil_mode=ceil_mode)
    close(run_op("max_pool2d", [small], **geo), ort_run("MaxPool", [small], **geo))
    close(run_op("avg_pool2d", [small], **geo), ort_run("AveragePool", [small], **geo))
    close(run_op("global_avg_pool", [x]), ort_run("GlobalAveragePool", [x]))
    close(run_op("global_max_pool", [x]), ort_run("GlobalMaxPool", [x]))


def test_norms_match_onnxruntime():
    x = rand(2, 5, 4, 4)
    p = [rand(5), rand(5), rand(5), np.abs(rand(5)) + 0.5]
    close(run_op("batch_norm", [x, *p], epsilon=1e-4),
          ort_run("BatchNormalization", [x], p, epsilon=1e-4))
    close(run_op("lrn", [x], size=3, alpha=0.02, beta=0.7, bias=2.0),
          ort_run("LRN", [x], size=3, alpha=0.02, beta=0.7, bias=2.0))


def test_conv2d_kernel_is_thread_safe():
    """Several threads running the same kernel at once each get their own correct result."""
    from concurrent.futures import ThreadPoolExecutor

    cases = [(rand(1, 4, 9, 9), rand(6, 4, 3, 3), dict(pads=(1, 1, 1, 1))),
             (rand(2, 6, 8, 8), rand(6, 1, 3, 3), dict(groups=6, strides=(2, 2))),
             (rand(1, 8, 5, 5), rand(3, 8, 1, 1), {})] * 4
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda c: run_op("conv2d", [c[0], c[1]], **c[2]), cases))
    for (x, w, attrs), got in zip(cases, results):
        close(got, ref_conv(x, w, **attrs))


@given(size=st.integers(1, 9000), nan=st.booleans(), strided=st.booleans(),
       act=st.sampled_from([("relu", ()), ("clip", (-0.25, 0.5)), ("clip", (None, 0.1))]))
@settings(max_examples=30, deadline=None)
def test_activation_bounds_match_numpy(size, nan, strided, act):
    """relu and clip go through constant rows on NumPy (fast path): same values, NaN kept,
    contiguous (any length, cut into rows) or not."""
    from hetero.ops.nn import apply_activation

    base = np.random.default_rng(size).standard_normal((size, 2)).astype(np.float32)
    if nan:
        base[size // 2, :] = np.nan
    x = base[:, 0] if strided else base.reshape(-1)
    want = x.copy()
    name, params = act
    want = np.maximum(want, 0) if name == "relu" else np.clip(
        want, -np.inf if params[0] is None else params[0], params[1])
    apply_activation(np, x, name, params)
    np.testing.assert_array_equal(x, want)


@pytest.mark.parametrize("shape", [(0, 3), (0, 3, 4, 4)])
def test_batch_norm_of_an_empty_batch(shape):
    from hetero.tracing import apply

    p = np.ones(3, np.float32)
    out = apply("batch_norm", [np.zeros(shape, np.float32), p, p, p, p])
    assert out.shape == shape


@pytest.mark.parametrize("shape, view", [
    ((5, 7), None), ((3, 100_000), None), ((1, 4, 130, 130), None),
    ((40, 3000), (slice(None), slice(100, 2900))),  # an epilogue's column band: strided rows
    ((6, 40, 50), (slice(None), slice(None), slice(3, 45))),  # strided 3-D: one scratch
])
@pytest.mark.parametrize("act", ["silu", "hard_swish"])
def test_gated_activations_have_the_bits_of_the_unfused_ops(shape, view, act):
    """silu and hard_swish in place (chunked through a per-thread scratch on NumPy, whole
    otherwise) give the bits of ``mul(x, sigmoid(x))`` and of the hard_swish op, and leave
    everything outside the view alone."""
    x = (RNG.standard_normal(shape) * 5).astype(np.float32)
    x.reshape(-1)[:4] = [np.nan, -0.0, np.inf, -np.inf]
    got = x.copy()
    region = got if view is None else got[view]
    with np.errstate(invalid="ignore"):  # inf * 0 in hard_swish, as in the op
        want = x * run_op("sigmoid", [x]) if act == "silu" else run_op("hard_swish", [x])
        nn.apply_activation(np, region, act)
    expect = x.copy()
    if view is None:
        expect = want
    else:
        expect[view] = want[view]
    np.testing.assert_array_equal(got, expect)
