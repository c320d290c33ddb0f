"""Reductions and softmax against NumPy float64, eager and traced."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from op_reference import SETTINGS, assert_matches, rand, seeds, shapes

import hetero as ht
from hetero.ops.registry import REGISTRY

ops = ht.ops

REDUCTIONS = {"sum": np.sum, "mean": np.mean, "max": np.max, "min": np.min}


@st.composite
def shape_and_axes(draw, min_side=0):
    shape = draw(shapes(min_side=min_side))
    ndim = len(shape)
    if draw(st.booleans()) or ndim == 0:
        return shape, None
    axes = draw(st.lists(st.integers(-ndim, ndim - 1), min_size=1, max_size=ndim,
                         unique_by=lambda a: a % ndim))
    return shape, axes[0] if len(axes) == 1 and draw(st.booleans()) else tuple(axes)


def _reduced_is_empty(shape, axes) -> bool:
    if axes is None:
        axes = range(len(shape))
    elif isinstance(axes, int):
        axes = (axes,)
    return any(shape[a] == 0 for a in axes)


@pytest.mark.parametrize("name", sorted(REDUCTIONS))
@SETTINGS
@given(case=shape_and_axes(), keepdims=st.booleans(), seed=seeds)
def test_reductions(name, case, keepdims, seed):
    shape, axes = case
    x = rand(seed, shape)
    if name in ("max", "min") and x.size == 0 and _reduced_is_empty(shape, axes):
        ident = -np.inf if name == "max" else np.inf
        out_shape = np.sum(np.zeros(shape), axis=axes, keepdims=keepdims).shape

        def ref(a):
            return np.full(out_shape, ident)
    elif name == "mean" and x.size == 0:
        out_shape = np.sum(np.zeros(shape), axis=axes, keepdims=keepdims).shape

        def ref(a):
            return np.full(out_shape, np.nan)
    else:
        def ref(a):
            return REDUCTIONS[name](a, axis=axes, keepdims=keepdims)

    (out,) = assert_matches(lambda t: getattr(ops, name)(t, axis=axes, keepdims=keepdims), ref, x,
                            rtol=1e-5, atol=1e-5)
    assert out.dtype == np.float32


def test_reductions_keep_integer_dtype():
    x = np.arange(12, dtype=np.int32).reshape(3, 4)
    assert_matches(lambda t: ops.sum(t, axis=1), lambda a: a.sum(axis=1), x)
    assert_matches(lambda t: ops.max(t, axis=0), lambda a: a.max(axis=0), x)
    assert ops.min(np.zeros((0, 2), np.int64), axis=0).numpy().tolist() == [2**63 - 1] * 2
    assert ops.sum(x).numpy().dtype == np.int32


def test_tensor_methods():
    x = rand(3, (2, 3, 4))
    t = ht.tensor(x)
    np.testing.assert_allclose(t.sum().numpy(), x.sum(), rtol=1e-5)
    np.testing.assert_allclose(t.mean(axis=(0, 2)).numpy(), x.mean(axis=(0, 2)), rtol=1e-5)
    np.testing.assert_array_equal(t.max(axis=-1, keepdims=True).numpy(), x.max(-1, keepdims=True))
    np.testing.assert_array_equal(t.min(1).numpy(), x.min(1))


def _softmax(a, axis):
    if a.size == 0:
        return a
    e = np.exp(a - a.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


@pytest.mark.parametrize("name", ["softmax", "log_softmax"])
@SETTINGS
@given(shape=shapes(min_dims=1), data=st.data(), seed=seeds)
def test_softmax(name, shape, data, seed):
    axis = data.draw(st.integers(-len(shape), len(shape) - 1))
    x = rand(seed, shape, low=-20, high=20)

    def ref(a):
        s = _softmax(a, axis)
        return s if name == "softmax" else np.log(s)

    assert_matches(lambda t: getattr(ops, name)(t, axis=axis), ref, x, rtol=1e-5, atol=1e-5)


def test_softmax_large_inputs_do_not_overflow():
    x = np.array([[1000.0, 1000.0], [-1000.0, 0.0]], np.float32)
    np.testing.assert_allclose(ops.softmax(x).numpy(), [[0.5, 0.5], [0.0, 1.0]])
    np.testing.assert_allclose(ops.log_softmax(x).numpy(), [[-np.log(2), -np.log(2)],
                                                            [-1000.0, 0.0]], rtol=1e-6)


@pytest.mark.parametrize("call, message", [
    (lambda: ops.sum(np.ones((2, 3), np.float32), axis=2), "sum axis 2 is out of range"),
    (lambda: ops.max(np.ones((2, 3), np.float32), axis=(0, -2)), "repeat an axis"),
    (lambda: ops.mean(np.ones(3, np.int32)), "mean needs a floating-point input"),
    (lambda: ops.softmax(np.ones((2, 3), np.float32), axis=-3), "softmax axis -3 is out of range"),
    (lambda: ops.softmax(np.ones((), np.float32)), "rank >= 1"),
])
def test_bad_inputs(call, message):
    with pytest.raises(ht.ShapeError, match=message):
        call()


def test_traced_error_names_the_user_line():
    @ht.function
    def f(a):
        return ops.sum(a, axis=5)

    with pytest.raises(ht.ShapeError, match=r"sum_\d+ \(sum, from test_ops_reduce\.py:\d+\)"):
        f.graph(np.ones((2, 3), np.float32))


def test_registry_entries_and_cost():
    for name in ["sum", "mean", "max", "min", "softmax", "log_softmax"]:
        op = REGISTRY[name]
        assert op.op_class == "reduce"
        assert getattr(ops, name).__doc__ and name in ops.reduce.__all__
    spec_in = ht.TensorSpec((8, 16), np.float32)
    spec_out = ht.TensorSpec((8,), np.float32)
    op = REGISTRY["sum"]
    cost = op.cost_of((spec_in,), (spec_out,), op.normalize_attrs({"axes": (1,)}))
    assert cost.flops == 128 and cost.bytes == 4 * (128 + 8)


@pytest.mark.parametrize("op_type, name", [("ReduceSum", "sum"), ("ReduceMax", "max"),
                                           ("ReduceMin", "min"), ("ReduceMean", "mean")])
@pytest.mark.parametrize("axes, keepdims", [((1,), 0), ((0, -1), 1), (None, 0)])
def test_reductions_match_onnxruntime(op_type, name, axes, keepdims):
    pytest.importorskip("onnxruntime")
    from op_reference import run_onnxruntime

    x = rand(0, (2, 3, 4))
    consts = {} if axes is None else {"axes": np.asarray(axes, np.int64)}
    (want,) = run_onnxruntime(op_type, [x], {"keepdims": keepdims}, constants=consts)
    got = getattr(ops, name)(x, axis=axes, keepdims=keepdims).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-6)


@pytest.mark.parametrize("op_type, name", [("Softmax", "softmax"), ("LogSoftmax", "log_softmax")])
@pytest.mark.parametrize("axis", [-1, 0, 1])
def test_softmax_matches_onnxruntime(op_type, name, axis):
    pytest.importorskip("onnxruntime")
    from op_reference import run_onnxruntime

    x = rand(0, (3, 4, 2), low=-10, high=10)
    (want,) = run_onnxruntime(op_type, [x], {"axis": axis}, opset=13)
    np.testing.assert_allclose(getattr(ops, name)(x, axis=axis).numpy(), want, rtol=1e-5,
                               atol=1e-6)


def test_axes_is_an_alias_of_axis():
    x = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    for name in ("sum", "mean", "max", "min"):
        fn = getattr(ht.ops, name)
        np.testing.assert_array_equal(fn(x, axes=(0, 2)).numpy(), fn(x, axis=(0, 2)).numpy())
        with pytest.raises(ht.ShapeError, match="not both"):
            fn(x, axis=0, axes=0)
