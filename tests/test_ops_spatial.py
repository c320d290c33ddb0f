"""conv_nd, conv_transpose, max_pool_nd, avg_pool_nd, resize (hetero/ops/spatial.py) and
attention (hetero/ops/attention.py): eager and traced against float64 NumPy references written
here as loops, the ONNX importer's ConvTranspose / Resize / Attention / NonZero against
onnxruntime, and bad inputs as ShapeErrors."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

import hetero as ht
from hetero.errors import ModelError, ShapeError
from tests.op_reference import SETTINGS, assert_matches, rand, run_onnxruntime, seeds

# ----------------------------------------------------------------------------------------------
# Loop references (float64)


def conv_ref(x, w, b, strides, pads, dilations, groups):
    nd = x.ndim - 2
    xp = np.pad(x, [(0, 0), (0, 0)] + [(pads[i], pads[nd + i]) for i in range(nd)])
    n, c = x.shape[:2]
    m, cg = w.shape[:2]
    k = w.shape[2:]
    out_sp = [(xp.shape[2 + i] - dilations[i] * (k[i] - 1) - 1) // strides[i] + 1
              for i in range(nd)]
    out = np.zeros((n, m, *out_sp))
    mg = m // groups
    for o in itertools.product(*(range(s) for s in out_sp)):
        for t in itertools.product(*(range(s) for s in k)):
            pos = tuple(o[i] * strides[i] + t[i] * dilations[i] for i in range(nd))
            for g in range(groups):
                patch = xp[(slice(None), slice(g * cg, (g + 1) * cg)) + pos]  # (n, cg)
                wt = w[(slice(g * mg, (g + 1) * mg), slice(None)) + t]  # (mg, cg)
                out[(slice(None), slice(g * mg, (g + 1) * mg)) + o] += patch @ wt.T
    if b is not None:
        out += b.reshape((1, m) + (1,) * nd)
    return out


def conv_transpose_ref(x, w, b, strides, pads, dilations, extra, groups):
    nd = x.ndim - 2
    n, c = x.shape[:2]
    mg = w.shape[1]
    k = w.shape[2:]
    cg = c // groups
    full = [strides[i] * (x.shape[2 + i] - 1) + extra[i] + dilations[i] * (k[i] - 1) + 1
            for i in range(nd)]
    buf = np.zeros((n, groups * mg, *full))
    for i_ in itertools.product(*(range(s) for s in x.shape[2:])):
        for t in itertools.product(*(range(s) for s in k)):
            pos = tuple(i_[d] * strides[d] + t[d] * dilations[d] for d in range(nd))
            for g in range(groups):
                xv = x[(slice(None), slice(g * cg, (g + 1) * cg)) + i_]  # (n, cg)
                wt = w[(slice(g * cg, (g + 1) * cg), slice(None)) + t]  # (cg, mg)
                buf[(slice(None), slice(g * mg, (g + 1) * mg)) + pos] += xv @ wt
    out = buf[(slice(None), slice(None)) + tuple(slice(pads[d], full[d] - pads[nd + d])
                                                 for d in range(nd))]
    if b is not None:
        out = out + b.reshape((1, -1) + (1,) * nd)
    return out


def pool_ref(x, kernel, strides, pads, dilations, kind, count_include_pad=0):
    nd = x.ndim - 2
    out_sp = [(x.shape[2 + i] + pads[i] + pads[nd + i] - dilations[i] * (kernel[i] - 1) - 1)
              // strides[i] + 1 for i in range(nd)]
    out = np.zeros(x.shape[:2] + tuple(out_sp))
    for o in itertools.product(*(range(s) for s in out_sp)):
        vals, inside = [], 0
        for t in itertools.product(*(range(s) for s in kernel)):
            pos = [o[i] * strides[i] - pads[i] + t[i] * dilations[i] for i in range(nd)]
            if all(0 <= p < x.shape[2 + i] for i, p in enumerate(pos)):
                vals.append(x[(slice(None), slice(None)) + tuple(pos)])
            inside += 1
        stack = np.stack(vals)
        if kind == "max":
            out[(slice(None), slice(None)) + o] = stack.max(0)
        else:
            out[(slice(None), slice(None)) + o] = stack.sum(0) / (inside if count_include_pad
                                                                  else len(vals))
    return out


@st.composite
def window_case(draw, transpose=False):
    nd = draw(st.integers(1, 3))
    groups = draw(st.sampled_from([1, 2]))
    cin = groups * draw(st.integers(1, 2))
    m = groups * draw(st.integers(1, 2))
    k = tuple(draw(st.integers(1, 3)) for _ in range(nd))
    s = tuple(draw(st.integers(1, 2)) for _ in range(nd))
    d = tuple(draw(st.integers(1, 2)) for _ in range(nd))
    p = tuple(draw(st.integers(0, 1)) for _ in range(2 * nd))
    size = tuple(draw(st.integers(max(d[i] * (k[i] - 1) + 1, 2), 5)) for i in range(nd))
    extra = tuple(draw(st.integers(0, max(s[i], d[i]) - 1)) for i in range(nd))
    return nd, groups, cin, m, k, s, d, p, size, extra, draw(st.booleans()), draw(seeds)


@SETTINGS
@given(window_case())
def test_conv_nd_matches_loops(case):
    nd, groups, cin, m, k, s, d, p, size, _, bias, seed = case
    x = rand(seed, (2, cin) + size)
    w = rand(seed + 1, (m, cin // groups) + k)
    b = rand(seed + 2, (m,)) if bias else None
    arrays = (x, w) if b is None else (x, w, b)
    assert_matches(lambda *a: ht.ops.conv_nd(*a, strides=s, pads=p, dilations=d, groups=groups),
                   lambda x, w, b=None: conv_ref(x, w, b, s, p, d, groups), *arrays,
                   rtol=1e-5, atol=1e-5)


@SETTINGS
@given(window_case())
def test_conv_transpose_matches_loops(case):
    nd, groups, cin, m, k, s, d, p, size, extra, bias, seed = case
    assume(all(s[i] * (size[i] - 1) + extra[i] + d[i] * (k[i] - 1) + 1 > p[i] + p[nd + i]
               for i in range(nd)))
    x = rand(seed, (2, cin) + size)
    w = rand(seed + 1, (cin, m // groups) + k)
    b = rand(seed + 2, (m,)) if bias else None
    arrays = (x, w) if b is None else (x, w, b)
    assert_matches(
        lambda *a: ht.ops.conv_transpose(*a, strides=s, pads=p, dilations=d,
                                         output_padding=extra, groups=groups),
        lambda x, w, b=None: conv_transpose_ref(x, w, b, s, p, d, extra, groups), *arrays,
        rtol=1e-5, atol=1e-5)


@SETTINGS
@given(window_case())
def test_conv_transpose_is_the_adjoint_of_conv(case):
    """<conv(x, w), y> == <x, conv_transpose(y, w)> for the same geometry."""
    nd, groups, cin, m, k, s, d, p, size, _, _, seed = case
    x = rand(seed, (1, cin) + size).astype(np.float64)
    w = rand(seed + 1, (m, cin // groups) + k).astype(np.float64)
    y_spec = np.asarray(ht.ops.conv_nd(ht.tensor(x), ht.tensor(w), strides=s, pads=p,
                                       dilations=d, groups=groups))
    y = rand(seed + 2, y_spec.shape).astype(np.float64)
    # output_padding recovers the input size the strided convolution rounded away
    extra = tuple(size[i] + p[i] + p[nd + i] - (s[i] * (y.shape[2 + i] - 1)
                                                + d[i] * (k[i] - 1) + 1) for i in range(nd))
    back = np.asarray(ht.ops.conv_transpose(ht.tensor(y), ht.tensor(w), strides=s, pads=p,
                                            dilations=d, output_padding=extra, groups=groups))
    assert back.shape == x.shape
    assert math.isclose(float((y_spec * y).sum()), float((x * back).sum()), rel_tol=1e-9,
                        abs_tol=1e-9)


@SETTINGS
@given(window_case(), st.sampled_from(["max", "avg"]), st.integers(0, 1))
def test_pools_match_loops(case, kind, include_pad):
    nd, _, cin, _, k, s, d, p, size, _, _, seed = case
    p = tuple(min(p[i % nd], k[i % nd] // 2) for i in range(2 * nd))  # a window sees data
    x = rand(seed, (2, cin) + size)
    if kind == "max":
        fn = lambda a: ht.ops.max_pool_nd(a, k, strides=s, pads=p, dilations=d)  # noqa: E731
    else:
        fn = lambda a: ht.ops.avg_pool_nd(a, k, strides=s, pads=p, dilations=d,  # noqa: E731
                                          count_include_pad=include_pad)
    assert_matches(fn, lambda x: pool_ref(x, k, s, p, d, kind, include_pad), x,
                   rtol=1e-5, atol=1e-6)


def test_max_pool_indices_are_flat_input_positions():
    x = rand(3, (2, 3, 4, 5, 6))
    values, idx = ht.ops.max_pool_nd(ht.tensor(x), (2, 2, 3), strides=(2, 2, 2), pads=(0, 1, 1,
                                                                                     0, 0, 1),
                                     indices=1)
    values, idx = np.asarray(values), np.asarray(idx)
    assert idx.dtype == np.int64
    np.testing.assert_array_equal(x.reshape(-1)[idx], values)


def test_integer_max_pool():
    x = np.arange(2 * 16, dtype=np.uint8).reshape(1, 2, 4, 4)[:, :, ::-1].copy()
    got = np.asarray(ht.ops.max_pool_nd(ht.tensor(x), (2, 2), strides=(2, 2), pads=(1, 1, 0, 0)))
    want = pool_ref(x.astype(np.float64), (2, 2), (2, 2), (1, 1, 0, 0), (1, 1), "max")
    np.testing.assert_array_equal(got, want.astype(np.uint8))


@pytest.mark.parametrize("bad", [
    lambda: ht.ops.conv_nd(ht.tensor(np.zeros((1, 3, 4, 4, 4), np.float32)),
                           ht.tensor(np.zeros((2, 2, 3, 3, 3), np.float32))),
    lambda: ht.ops.conv_transpose(ht.tensor(np.zeros((1, 3, 4), np.float32)),
                                  ht.tensor(np.zeros((2, 2, 3), np.float32))),
    lambda: ht.ops.conv_transpose(ht.tensor(np.zeros((1, 2, 2), np.float32)),
                                  ht.tensor(np.zeros((2, 2, 3), np.float32)), pads=(3, 3)),
    lambda: ht.ops.max_pool_nd(ht.tensor(np.zeros((1, 1, 2, 2, 2), np.float32)), (3, 3, 3)),
    lambda: ht.ops.avg_pool_nd(ht.tensor(np.zeros((1, 1, 4), np.int32)), (2,)),
    lambda: ht.ops.resize(ht.tensor(np.zeros((1, 2), np.float32)), (1, 2, 3)),
    lambda: ht.ops.resize(ht.tensor(np.zeros((1, 2), np.float32)), (2, 4), mode="area"),
])
def test_bad_inputs_are_shape_errors(bad):
    with pytest.raises(ShapeError):
        bad()


# ----------------------------------------------------------------------------------------------
# resize: every mode and coordinate transform against onnxruntime

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

_RESIZES = [
    ("nearest", "asymmetric", "floor"), ("nearest", "half_pixel", "round_prefer_floor"),
    ("nearest", "align_corners", "round_prefer_ceil"), ("nearest", "asymmetric", "ceil"),
    ("linear", "half_pixel", ""), ("linear", "align_corners", ""), ("linear", "asymmetric", ""),
    ("linear", "pytorch_half_pixel", ""), ("linear", "half_pixel_symmetric", ""),
    ("cubic", "half_pixel", ""), ("cubic", "align_corners", ""), ("cubic", "asymmetric", ""),
]


@pytest.mark.parametrize("mode,transform,nearest", _RESIZES)
@pytest.mark.parametrize("scales", [(1.0, 1.0, 2.0, 1.5), (1.0, 1.0, 0.6, 0.75)])
def test_resize_matches_onnxruntime(mode, transform, nearest, scales):
    """(scale x size is a whole number here: where it is not, onnxruntime's align_corners uses
    the rounded output length and onnx.reference, whose outputs the backend suite checks,
    the exact product; hetero follows onnx.reference.)"""
    import hetero.onnx as ho

    x = rand(7, (1, 2, 5, 4))
    attrs = {"mode": mode, "coordinate_transformation_mode": transform}
    if nearest:
        attrs["nearest_mode"] = nearest
    consts = {"roi": None, "scales": np.asarray(scales, np.float32)}
    want = run_onnxruntime("Resize", [x], attrs, consts, opset=19)[0]
    model = _one_node("Resize", [x], attrs, consts, opset=19)
    got = ho.compile(model, "cpu:1")(x)[0]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_resize_sizes_axes_and_aspect_ratio_match_onnxruntime():
    import hetero.onnx as ho

    x = rand(8, (1, 3, 6, 4))
    for policy in ("stretch", "not_larger", "not_smaller"):
        attrs = {"mode": "linear", "axes": [2, 3], "keep_aspect_ratio_policy": policy}
        consts = {"roi": None, "scales": None, "sizes": np.asarray([9, 5], np.int64)}
        want = run_onnxruntime("Resize", [x], attrs, consts, opset=19)[0]
        got = ho.compile(_one_node("Resize", [x], attrs, consts, opset=19), "cpu:1")(x)[0]
        assert got.shape == want.shape, policy
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("attrs", [
    {"strides": [2, 2], "output_shape": [9, 10]},
    {"strides": [2, 3], "auto_pad": "SAME_UPPER"},
    {"strides": [2, 2], "auto_pad": "SAME_LOWER", "dilations": [2, 1]},
    {"strides": [3, 2], "pads": [1, 0, 2, 1], "output_padding": [1, 1], "group": 2},
])
def test_conv_transpose_import_matches_onnxruntime(attrs):
    import hetero.onnx as ho

    x, w = rand(1, (1, 4, 4, 5)), rand(2, (4, 3, 3, 3))
    want = run_onnxruntime("ConvTranspose", [x, w], attrs, opset=17)[0]
    got = ho.compile(_one_node("ConvTranspose", [x, w], attrs, opset=17), "cpu:1")(x, w)[0]
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_nonzero_folds_constants_and_refuses_runtime_values():
    from onnx import TensorProto, helper, numpy_helper

    import hetero.onnx as ho

    c = numpy_helper.from_array(np.asarray([[0, 3], [2, 0]], np.int64), "c")
    nodes = [helper.make_node("NonZero", ["c"], ["nz"]),
             helper.make_node("Cast", ["nz"], ["nzf"], to=TensorProto.FLOAT),
             helper.make_node("ReduceSum", ["nzf"], ["s"], keepdims=0),
             helper.make_node("Add", ["x", "s"], ["y"])]
    graph = helper.make_graph(nodes, "nz", [helper.make_tensor_value_info("x", 1, [1])],
                              [helper.make_tensor_value_info("y", 1, [1])], initializer=[c])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    x = np.zeros(1, np.float32)
    assert ho.compile(model, "cpu:1")(x)[0][0] == 2.0  # indices (0, 1), (1, 0)
    graph = helper.make_graph([helper.make_node("NonZero", ["x"], ["y"], name="nz")], "nz",
                              [helper.make_tensor_value_info("x", 1, [3])],
                              [helper.make_tensor_value_info("y", TensorProto.INT64, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    with pytest.raises(ModelError, match="nz.*data-dependent output shape"):
        ho.load(model)


def _one_node(op_type, inputs, attrs, constants=None, opset=18):
    from onnx import helper, numpy_helper

    names = [f"x{i}" for i in range(len(inputs))]
    inits = []
    for name, arr in (constants or {}).items():
        names.append("" if arr is None else name)
        if arr is not None:
            inits.append(numpy_helper.from_array(np.asarray(arr), name))
    node = helper.make_node(op_type, names, ["y"], **attrs)
    graph = helper.make_graph(
        [node], "one", [helper.make_tensor_value_info(n, 1, a.shape)
                        for n, a in zip(names, inputs)],
        [helper.make_tensor_value_info("y", 1, None)], initializer=inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


# ----------------------------------------------------------------------------------------------
# attention


def attention_ref(q, k, v, mask, past_k, past_v, causal, groups):
    if past_k is not None:
        k, v = np.concatenate([past_k, k], 2), np.concatenate([past_v, v], 2)
    kr, vr = np.repeat(k, groups, 1), np.repeat(v, groups, 1)
    s = q @ np.swapaxes(kr, -1, -2) / math.sqrt(q.shape[-1])
    sq, total = s.shape[-2:]
    bias = np.zeros((sq, total))
    if causal:
        bias = np.where(np.arange(total)[None] <= np.arange(sq)[:, None] + total - sq, 0,
                        -np.inf)
    if mask is not None:
        bias = bias + np.where(mask, 0, -np.inf)
    s = s + bias
    p = np.exp(s - s.max(-1, keepdims=True))
    return (p / p.sum(-1, keepdims=True)) @ vr, k, v


@pytest.mark.parametrize("causal,with_mask,with_past,groups", [
    (False, False, False, 1), (True, False, False, 2), (False, True, False, 1),
    (True, True, True, 2), (False, False, True, 1)])
def test_attention_matches_numpy(causal, with_mask, with_past, groups):
    b, hk, sq, d, past = 2, 2, 3, 4, 2
    q = rand(1, (b, hk * groups, sq, d))
    k, v = rand(2, (b, hk, sq, d)), rand(3, (b, hk, sq, d))
    pk = rand(4, (b, hk, past, d)) if with_past else None
    pv = rand(5, (b, hk, past, d)) if with_past else None
    total = sq + (past if with_past else 0)
    mask = np.ones((b, 1, sq, total), bool) if with_mask else None
    if with_mask:
        mask[1, :, :, 0] = False
    arrays = [a for a in (q, k, v, mask, pk, pv) if a is not None]

    def fn(*a):
        a = list(a)
        q_, k_, v_ = a[:3]
        m_ = a[3] if with_mask else None
        rest = a[4:] if with_mask else a[3:]
        return ht.ops.attention(q_, k_, v_, m_, *(rest or (None, None)), is_causal=causal,
                                outputs=3)

    def ref(*a):
        a = list(a)
        m_ = a[3] if with_mask else None
        rest = a[4:] if with_mask else a[3:]
        return attention_ref(*a[:3], m_, *(rest or (None, None)), causal, groups)

    assert_matches(fn, ref, *arrays, rtol=1e-5, atol=1e-6)


def test_attention_3d_layout_and_fully_masked_rows():
    q, k, v = rand(1, (1, 2, 8)), rand(2, (1, 3, 8)), rand(3, (1, 3, 8))
    mask = np.zeros((2, 3), bool)
    mask[0] = True
    y = np.asarray(ht.ops.attention(ht.tensor(q), ht.tensor(k), ht.tensor(v), ht.tensor(mask),
                                    q_num_heads=2, kv_num_heads=2))
    assert y.shape == (1, 2, 8)
    assert np.all(y[0, 1] == 0) and np.all(np.isfinite(y))
    want, _, _ = attention_ref(q.reshape(1, 2, 2, 4).transpose(0, 2, 1, 3)[:, :, :1],
                               k.reshape(1, 3, 2, 4).transpose(0, 2, 1, 3),
                               v.reshape(1, 3, 2, 4).transpose(0, 2, 1, 3), None, None, None,
                               False, 1)
    np.testing.assert_allclose(y[0, 0], want.transpose(0, 2, 1, 3).reshape(1, 1, 8)[0, 0],
                               rtol=1e-5)


def _hostile(node, inits, xshape):
    from onnx import helper, numpy_helper

    graph = helper.make_graph([node], "h", [helper.make_tensor_value_info("x", 1, xshape)],
                              [helper.make_tensor_value_info("y", 1, None)],
                              initializer=[numpy_helper.from_array(a, n) for n, a in inits])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)])


def _hostile_cases():
    from onnx import helper

    w = [("w", np.ones((1, 1, 2, 2), np.float32))]
    return [
        (helper.make_node("Resize", ["x", "", "", "s"], ["y"], name="r"),
         [("s", np.array([1, 1, 2**40, 2**40], np.int64))], [1, 1, 4, 4]),
        (helper.make_node("Resize", ["x", "", "s"], ["y"], name="r"),
         [("s", np.array([1, 1, 1e30, 1], np.float32))], [1, 1, 4, 4]),
        (helper.make_node("Resize", ["x", "", "s"], ["y"], name="r"),
         [("s", np.array([1, 1, np.nan, 1], np.float32))], [1, 1, 4, 4]),
        (helper.make_node("ConvTranspose", ["x", "w"], ["y"], name="ct", strides=[2**40] * 2),
         w, [1, 1, 4, 4]),
        (helper.make_node("ConvTranspose", ["x", "w"], ["y"], name="ct", pads=[-2**40, 0, 0, 0]),
         w, [1, 1, 4, 4]),
        (helper.make_node("ConvTranspose", ["x", "w"], ["y"], name="ct", group=0), w,
         [1, 1, 4, 4]),
        (helper.make_node("Conv", ["x", "w"], ["y"], name="c", dilations=[2**40] * 3),
         [("w", np.ones((1, 1, 2, 2, 2), np.float32))], [1, 1, 4, 4, 4]),
        (helper.make_node("MaxPool", ["x"], ["y"], name="p", kernel_shape=[2**40] * 3), [],
         [1, 1, 4, 4, 4]),
        (helper.make_node("AveragePool", ["x"], ["y"], name="p", kernel_shape=[2] * 3,
                          strides=[-1] * 3), [], [1, 1, 4, 4, 4]),
    ]


@pytest.mark.parametrize("case", range(9))
def test_hostile_spatial_attributes_are_model_errors(case):
    """Huge or negative sizes, strides, pads, dilations and kernels name the node before any
    allocation."""
    import hetero.onnx as ho

    node, inits, xshape = _hostile_cases()[case]
    with pytest.raises(ModelError, match=rf"h.onnx:{node.name}"):
        ho.load(_hostile(node, inits, xshape))
