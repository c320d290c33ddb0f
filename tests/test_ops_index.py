"""gather_nd, scatter_nd, topk, cumsum, einsum (hetero/ops/index.py) and isnan, isinf: eager and
traced against NumPy references written here, imported ONNX against onnxruntime, and every bad
input a ShapeError."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import hetero as ht
from hetero.errors import ModelError, ShapeError
from tests.op_reference import SETTINGS, rand, seeds

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from onnx import TensorProto, helper, numpy_helper  # noqa: E402

import hetero.onnx as ho  # noqa: E402
from hetero import reference  # noqa: E402


def both(fn, *arrays):
    """(eager result, traced result run by the reference executor) of ``fn`` on ``arrays``."""
    eager = fn(*(ht.tensor(a) for a in arrays))
    traced = ht.function(fn)(*(ht.tensor(a) for a in arrays))
    return _as_list(eager), _as_list(traced)


def _as_list(result):
    return [np.asarray(t) for t in (result if isinstance(result, tuple) else (result,))]


def check(fn, want, *arrays):
    for got in both(fn, *arrays):
        assert len(got) == len(want)
        for g, w in zip(got, want):
            assert g.shape == w.shape and g.dtype == w.dtype, (g.shape, w.shape, g.dtype, w.dtype)
            np.testing.assert_array_equal(g, w)


# ----------------------------------------------------------------------------------------------
# NumPy references (loops over index tuples: obviously right, not fast)


def gather_nd_ref(data, idx, b):
    out_shape = idx.shape[:-1] + data.shape[b + idx.shape[-1]:]
    out = np.empty(out_shape, data.dtype)
    for pos in itertools.product(*(range(d) for d in idx.shape[:-1])):
        coords = tuple(int(c) for c in idx[pos])
        out[pos] = data[pos[:b] + coords]
    return out


def scatter_nd_ref(data, idx, upd, reduction):
    out = data.copy()
    for pos in itertools.product(*(range(d) for d in idx.shape[:-1])):
        at = tuple(int(c) for c in idx[pos])
        if reduction == "none":
            out[at] = upd[pos]
        elif reduction == "add":
            out[at] = out[at] + upd[pos]
        elif reduction == "mul":
            out[at] = out[at] * upd[pos]
        elif reduction == "max":
            out[at] = np.maximum(out[at], upd[pos])
        else:
            out[at] = np.minimum(out[at], upd[pos])
    return out


# ----------------------------------------------------------------------------------------------
# gather_nd


@SETTINGS
@given(data=st.data(), seed=seeds)
def test_gather_nd_against_a_loop(data, seed):
    rank = data.draw(st.integers(1, 4))
    shape = tuple(data.draw(st.lists(st.integers(1, 4), min_size=rank, max_size=rank)))
    b = data.draw(st.integers(0, rank - 1))
    k = data.draw(st.integers(1, rank - b))
    extra = tuple(data.draw(st.lists(st.integers(0, 3), max_size=2)))
    rng = np.random.default_rng(seed)
    dims = np.array(shape[b:b + k])
    idx = rng.integers(-dims, dims, size=shape[:b] + extra + (k,)).astype(np.int64)
    x = rand(seed, shape)
    want = gather_nd_ref(x, np.where(idx < 0, idx + dims, idx), b)
    check(lambda a, i: ht.ops.gather_nd(a, i, batch_dims=b), [want], x, idx)


def test_gather_nd_errors():
    x, i = ht.tensor(np.zeros((2, 3), np.float32)), ht.tensor(np.zeros((2, 3), np.int64))
    with pytest.raises(ShapeError, match=r"last dim 3 must be in \[1, 2\]"):
        ht.ops.gather_nd(x, i)
    with pytest.raises(ShapeError, match="indices must be integers"):
        ht.ops.gather_nd(x, ht.tensor(np.zeros((1, 1), np.float32)))
    with pytest.raises(ShapeError, match="batch"):
        ht.ops.gather_nd(x, ht.tensor(np.zeros((3, 1), np.int64)), batch_dims=1)
    with pytest.raises(ShapeError, match=r"out of range for dimensions \(2, 3\)"):
        ht.ops.gather_nd(x, ht.tensor(np.array([[1, 3]], np.int64)))


# ----------------------------------------------------------------------------------------------
# scatter_nd


@SETTINGS
@given(data=st.data(), seed=seeds, reduction=st.sampled_from(["none", "add", "mul", "max",
                                                              "min"]))
def test_scatter_nd_against_a_loop(data, seed, reduction):
    rank = data.draw(st.integers(1, 4))
    shape = tuple(data.draw(st.lists(st.integers(1, 4), min_size=rank, max_size=rank)))
    k = data.draw(st.integers(1, rank))
    rng = np.random.default_rng(seed)
    n = data.draw(st.integers(0, 5))
    dims = np.array(shape[:k])
    if reduction == "none":  # distinct index tuples: ONNX leaves repeats undefined
        cells = list(itertools.product(*(range(d) for d in shape[:k])))
        pick = rng.permutation(len(cells))[:n]
        idx = np.array([cells[p] for p in pick], np.int64).reshape(len(pick), k)
    else:
        idx = rng.integers(-dims, dims, size=(n, k)).astype(np.int64)
    x = rand(seed, shape)
    upd = rand(seed + 1, idx.shape[:-1] + shape[k:])
    want = scatter_nd_ref(x, np.where(idx < 0, idx + dims, idx), upd, reduction)
    for got in both(lambda a, i, u: ht.ops.scatter_nd(a, i, u, reduction=reduction),
                    x, idx, upd):
        np.testing.assert_allclose(got[0], want, rtol=1e-6)


def test_scatter_nd_errors():
    x = ht.tensor(np.zeros((4, 3), np.float32))
    i = ht.tensor(np.array([[0], [2]], np.int64))
    with pytest.raises(ShapeError, match=r"updates of shape \(2,\) .* expected \(2, 3\)"):
        ht.ops.scatter_nd(x, i, ht.tensor(np.zeros(2, np.float32)))
    with pytest.raises(ShapeError, match="different dtypes"):
        ht.ops.scatter_nd(x, i, ht.tensor(np.zeros((2, 3), np.float64)))
    with pytest.raises(ShapeError, match="reduction 'sum'"):
        ht.ops.scatter_nd(x, i, ht.tensor(np.zeros((2, 3), np.float32)), reduction="sum")
    with pytest.raises(ShapeError, match="out of range"):
        ht.ops.scatter_nd(x, ht.tensor(np.array([[4]], np.int64)),
                          ht.tensor(np.zeros((1, 3), np.float32)))


# ----------------------------------------------------------------------------------------------
# topk, cumsum, isnan, isinf


@SETTINGS
@given(data=st.data(), seed=seeds, largest=st.booleans())
def test_topk_with_ties_in_index_order(data, seed, largest):
    shape = tuple(data.draw(st.lists(st.integers(1, 5), min_size=1, max_size=3)))
    axis = data.draw(st.integers(-len(shape), len(shape) - 1))
    k = data.draw(st.integers(0, shape[axis]))
    x = rand(seed, shape, np.float32, -2, 2).round()  # few distinct values: many ties
    key = -x if largest else x
    order = np.argsort(key, axis=axis, kind="stable")
    idx = np.take(order, np.arange(k), axis=axis)
    want = [np.take_along_axis(x, idx, axis=axis), idx.astype(np.int64)]
    check(lambda a: ht.ops.topk(a, k, axis=axis, largest=largest), want, x)


def test_topk_errors():
    with pytest.raises(ShapeError, match=r"k=4 must be in \[0, 3\]"):
        ht.ops.topk(ht.tensor(np.zeros(3, np.float32)), 4)
    with pytest.raises(ShapeError, match="rank-0"):
        ht.ops.topk(ht.tensor(np.zeros((), np.float32)), 1)


@SETTINGS
@given(data=st.data(), seed=seeds, exclusive=st.booleans(), reverse=st.booleans(),
       dtype=st.sampled_from([np.float32, np.float64, np.int32, np.int64]))
def test_cumsum(data, seed, exclusive, reverse, dtype):
    shape = tuple(data.draw(st.lists(st.integers(0, 4), min_size=1, max_size=3)))
    axis = data.draw(st.integers(-len(shape), len(shape) - 1))
    x = rand(seed, shape, dtype)
    y = np.flip(x, axis) if reverse else x
    want = np.cumsum(y, axis=axis, dtype=dtype)
    if exclusive:
        want = np.concatenate([np.zeros_like(np.take(want, [0], axis=axis)),
                               np.take(want, np.arange(shape[axis] - 1), axis=axis)],
                              axis=axis) if shape[axis] else want
    want = np.flip(want, axis) if reverse else want
    for got in both(lambda a: ht.ops.cumsum(a, axis, exclusive, reverse), x):
        np.testing.assert_allclose(got[0], want, rtol=1e-6)
        assert got[0].dtype == dtype


@pytest.mark.parametrize("equation,shapes", [
    ("ij,jk->ik", [(2, 3), (3, 4)]), ("bij,bjk->bik", [(2, 2, 3), (2, 3, 1)]),
    ("ii->i", [(3, 3)]), ("ij->", [(2, 3)]), ("i,i", [(4,), (4,)]), ("ji", [(2, 3)]),
    ("...ij,...jk->...ik", [(2, 1, 2, 3), (4, 3, 2)]), ("b h q d, b h k d -> b h q k",
                                                      [(1, 2, 3, 4), (1, 2, 5, 4)]),
    ("i,j->ij", [(2,), (3,)]),
])
def test_einsum_against_numpy(equation, shapes):
    arrays = [rand(i, s, np.float64) for i, s in enumerate(shapes)]
    want = np.einsum(equation, *arrays)
    for got in both(lambda *xs: ht.ops.einsum(equation, *xs), *arrays):
        assert got[0].shape == want.shape
        np.testing.assert_allclose(got[0], want, rtol=1e-12)


@pytest.mark.parametrize("equation,shapes,match", [
    ("ij,jk->ik", [(2, 3), (4, 4)], "'j' is 3 in one input and 4"),
    ("ij->ik", [(2, 3)], "output letter 'k'"),
    ("ijk->i", [(2, 3)], "3 letters for an input of shape"),
    ("ij,jk", [(2, 3)], "2 input terms for 1 inputs"),
    ("...i->i", [(2, 3)], "drops the '...' dims"),
    ("i1->i", [(2, 3)], "bad term"),
])
def test_einsum_errors(equation, shapes, match):
    xs = [ht.tensor(np.zeros(s, np.float32)) for s in shapes]
    with pytest.raises(ShapeError, match=match):
        ht.ops.einsum(equation, *xs)


def test_isnan_isinf():
    x = np.array([0.0, np.nan, np.inf, -np.inf, -1.5], np.float32)
    check(ht.ops.isnan, [np.isnan(x)], x)
    check(ht.ops.isinf, [np.isinf(x)], x)
    check(lambda a: ht.ops.isinf(a, detect_negative=False), [x == np.inf], x)
    check(lambda a: ht.ops.isinf(a, detect_positive=False), [x == -np.inf], x)
    check(lambda a: ht.ops.isinf(a, False, False), [np.zeros(5, bool)], x)
    with pytest.raises(ShapeError, match="isnan needs a floating-point input"):
        ht.ops.isnan(ht.tensor(np.zeros(2, np.int64)))


# ----------------------------------------------------------------------------------------------
# Imported from ONNX, against onnxruntime


def _model(node, inputs, outputs, inits=(), opset=18):
    graph = helper.make_graph([node], "m", inputs, outputs, initializer=list(inits))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _ort(model, feeds):
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), opts,
                                providers=["CPUExecutionProvider"]).run(None, feeds)


def _vi(name, arr):
    return helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(arr.dtype),
                                         arr.shape)


@pytest.mark.parametrize("case", ["gather_nd", "gather_nd_batch", "scatter_nd",
                                  "scatter_nd_add", "topk", "topk_smallest", "cumsum",
                                  "isnan", "isinf", "einsum"])
def test_onnx_import_against_onnxruntime(case):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((3, 4, 5)).astype(np.float32)
    if case.startswith("gather_nd"):
        b = 1 if case.endswith("batch") else 0
        idx = np.array([[[1, 2], [0, -1]], [[2, 4], [1, 1]], [[0, 0], [3, 3]]], np.int64)
        idx = idx[:, :, :1] if b == 0 else idx
        if b == 0:
            idx = np.array([[1, 2], [0, -1]], np.int64)
        node = helper.make_node("GatherND", ["x", "i"], ["y"], batch_dims=b)
        feeds, inits = {"x": x}, [numpy_helper.from_array(idx, "i")]
        outs = [helper.make_empty_tensor_value_info("y")]
    elif case.startswith("scatter_nd"):
        idx = np.array([[0, 1], [2, 3], [0, 1]][: 2 if case == "scatter_nd" else 3], np.int64)
        upd = rng.standard_normal((len(idx), 5)).astype(np.float32)
        node = helper.make_node("ScatterND", ["x", "i", "u"], ["y"],
                                reduction="none" if case == "scatter_nd" else "add")
        feeds, inits = {"x": x, "u": upd}, [numpy_helper.from_array(idx, "i")]
        outs = [helper.make_empty_tensor_value_info("y")]
    elif case.startswith("topk"):
        node = helper.make_node("TopK", ["x", "k"], ["v", "i"], axis=1,
                                largest=0 if case.endswith("smallest") else 1)
        feeds, inits = {"x": x.round(1)}, [numpy_helper.from_array(np.array([3], np.int64),
                                                                    "k")]
        outs = [helper.make_empty_tensor_value_info("v"), helper.make_empty_tensor_value_info("i")]
    elif case == "cumsum":
        node = helper.make_node("CumSum", ["x", "a"], ["y"], exclusive=1, reverse=1)
        feeds, inits = {"x": x}, [numpy_helper.from_array(np.array(-1, np.int64), "a")]
        outs = [helper.make_empty_tensor_value_info("y")]
    elif case == "einsum":
        w = rng.standard_normal((5, 2)).astype(np.float32)
        node = helper.make_node("Einsum", ["x", "w"], ["y"], equation="bij,jk->bik")
        feeds, inits = {"x": x}, [numpy_helper.from_array(w, "w")]
        outs = [helper.make_empty_tensor_value_info("y")]
    else:
        x[0, 0, :3] = [np.nan, np.inf, -np.inf]
        node = helper.make_node("IsNaN" if case == "isnan" else "IsInf", ["x"], ["y"])
        feeds, inits = {"x": x}, []
        outs = [helper.make_empty_tensor_value_info("y")]
    model = _model(node, [_vi(n, a) for n, a in feeds.items()], outs, inits)
    graph = ho.load(model)
    got = reference.run(graph, [feeds[n] for n in graph.inputs])
    want = _ort(model, feeds)
    for g, w in zip(got, want):
        assert g.shape == w.shape and g.dtype == w.dtype
        np.testing.assert_allclose(g, w, rtol=1e-6, atol=1e-6)


def test_scatter_nd_of_shapes_and_constants_folds_at_import():
    """Swin's shifted-window mask: ScatterND of constants and shapes folds to one constant."""
    ins = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])]
    nodes = [helper.make_node("Shape", ["x"], ["s"]),
             helper.make_node("ConstantOfShape", ["s"], ["z"]),
             helper.make_node("ScatterND", ["z", "i", "u"], ["m"]),
             helper.make_node("Add", ["x", "m"], ["y"])]
    inits = [numpy_helper.from_array(np.array([[1, 2]], np.int64), "i"),
             numpy_helper.from_array(np.array([-100.0], np.float32), "u")]
    model = helper.make_model(helper.make_graph(nodes, "m", ins,
                                                [helper.make_empty_tensor_value_info("y")],
                                                initializer=inits),
                              opset_imports=[helper.make_opsetid("", 17)])
    graph = ho.load(model)
    assert [n.op for n in graph.nodes if n.op not in ("input", "constant")] == ["add"]
    x = np.ones((2, 3), np.float32)
    np.testing.assert_array_equal(reference.run(graph, [x])[0], _ort(model, {"x": x})[0])


def test_out_of_range_constant_index_is_a_model_error_naming_the_node():
    model = _model(helper.make_node("GatherND", ["c", "i"], ["y"], name="g"), [],
                   [helper.make_empty_tensor_value_info("y")],
                   [numpy_helper.from_array(np.zeros((2, 2), np.float32), "c"),
                    numpy_helper.from_array(np.array([[0, 2]], np.int64), "i")])
    with pytest.raises(ModelError, match=r"m.onnx:g: folding gather_nd of constants failed: "
                                         ".*out of range"):
        ho.load(model)
