"""Elementwise ops against NumPy float64, eager and traced."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from op_reference import SETTINGS, assert_matches, broadcast_pair, rand, run_modes, seeds, shapes

import hetero as ht
from hetero.ops.registry import REGISTRY

ops = ht.ops

BINARY = {
    "add": np.add, "sub": np.subtract, "mul": np.multiply, "div": np.divide,
    "maximum": np.maximum, "minimum": np.minimum,
}
COMPARE = {
    "equal": np.equal, "not_equal": np.not_equal, "greater": np.greater, "less": np.less,
    "greater_equal": np.greater_equal, "less_equal": np.less_equal,
}
_erf = np.vectorize(math.erf, otypes=[np.float64])


def _gelu_ref(x):
    return 0.5 * x * (1 + _erf(x / math.sqrt(2)))


def _gelu_tanh_ref(x):
    return 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))


# name -> (public call, reference, input low, input high)
UNARY = {
    "neg": (ops.neg, np.negative, -3, 3),
    "abs": (ops.abs, np.abs, -3, 3),
    "exp": (ops.exp, np.exp, -3, 3),
    "log": (ops.log, np.log, 0.1, 5),
    "sqrt": (ops.sqrt, np.sqrt, 0, 5),
    "tanh": (ops.tanh, np.tanh, -4, 4),
    "sigmoid": (ops.sigmoid, lambda x: 1 / (1 + np.exp(-x)), -10, 10),
    "relu": (ops.relu, lambda x: np.maximum(x, 0), -3, 3),
    "erf": (ops.erf, _erf, -5, 5),
    "reciprocal": (ops.reciprocal, np.reciprocal, 0.5, 4),
    "floor": (ops.floor, np.floor, -3, 3),
    "ceil": (ops.ceil, np.ceil, -3, 3),
    "leaky_relu": (lambda x: ops.leaky_relu(x, 0.2), lambda x: np.where(x >= 0, x, 0.2 * x), -3, 3),
    "gelu": (ops.gelu, _gelu_ref, -5, 5),
    "gelu_tanh": (lambda x: ops.gelu(x, "tanh"), _gelu_tanh_ref, -5, 5),
    "clip": (lambda x: ops.clip(x, -1.0, 0.5), lambda x: np.clip(x, -1, 0.5), -3, 3),
    "clip_min": (lambda x: ops.clip(x, min=0.0), lambda x: np.maximum(x, 0), -3, 3),
    "clip_none": (ops.clip, lambda x: x, -3, 3),
}


@pytest.mark.parametrize("name", sorted(BINARY))
@SETTINGS
@given(shapes=broadcast_pair(), seed=seeds)
def test_binary_broadcasting(name, shapes, seed):
    a_shape, b_shape = shapes.input_shapes
    a = rand(seed, a_shape)
    b = rand(seed + 1, b_shape, low=0.5) if name == "div" else rand(seed + 1, b_shape)
    fn = getattr(ops, name)
    assert_matches(fn, BINARY[name], a, b)


@pytest.mark.parametrize("name", sorted(COMPARE))
@SETTINGS
@given(shapes=broadcast_pair(), seed=seeds)
def test_comparisons_give_bool(name, shapes, seed):
    a_shape, b_shape = shapes.input_shapes
    # small integers so that equality happens often
    a = rand(seed, a_shape, np.int32, 0, 2)
    b = rand(seed + 1, b_shape, np.int32, 0, 2)
    (out,) = assert_matches(getattr(ops, name), COMPARE[name], a, b)
    assert out.dtype == np.bool_


@SETTINGS
@given(shape=shapes(), seed=seeds)
def test_pow(shape, seed):
    a = rand(seed, shape, low=0.1, high=3)
    b = rand(seed + 1, shape, low=-2, high=2)
    assert_matches(ops.pow, np.power, a, b, rtol=1e-4)


def test_integer_division_truncates_toward_zero():
    a = np.array([7, -7, 7, -7, 6, -6, 0], np.int64)
    b = np.array([2, 2, -2, -2, 3, 3, 5], np.int64)
    assert_matches(ops.div, lambda x, y: np.trunc(x / y).astype(np.int64), a, b)


@pytest.mark.parametrize("name", sorted(UNARY))
@SETTINGS
@given(shape=shapes(), seed=seeds, dtype=st.sampled_from([np.float32, np.float64]))
def test_unary(name, shape, seed, dtype):
    fn, ref, lo, hi = UNARY[name]
    x = rand(seed, shape, dtype, lo, hi)
    tol = 1e-6 if dtype == np.float32 else 1e-13
    assert_matches(fn, ref, x, rtol=tol * 10, atol=tol)


def test_erf_is_accurate_in_float64():
    x = np.linspace(-7, 7, 20001)
    got = ops.erf(x).numpy()
    np.testing.assert_allclose(got, _erf(x), rtol=1e-14, atol=1e-15)
    assert ops.erf(np.array([np.inf, -np.inf, 0.0])).numpy().tolist() == [1.0, -1.0, 0.0]


@pytest.mark.parametrize("dtype, tol", [(np.float64, 1e-15), (np.float32, 3e-7)])
def test_erf_polynomial_fallback(dtype, tol):
    """The polynomials that run where SciPy / cupyx are missing, at both precisions."""
    from hetero.ops.elementwise import _erf_into

    x = np.concatenate([np.linspace(-9, 9, 30001), [0.0, 1.5, -1.5, 1e-30, np.inf, -np.inf]])
    x = x.astype(dtype)
    out = np.empty_like(x)
    _erf_into(np, x, out)
    want = _erf(x.astype(np.float64))
    np.testing.assert_allclose(out, want, rtol=tol, atol=tol)
    out0 = np.empty((), dtype)
    _erf_into(np, np.asarray(0.5, dtype), out0)
    assert abs(out0 - math.erf(0.5)) < tol


def test_erf_and_gelu_without_scipy(monkeypatch):
    """The kernels as they run where no library erf exists."""
    from hetero.ops import elementwise

    monkeypatch.setitem(elementwise._FAST_SPECIAL, ("numpy", "erf"), None)
    monkeypatch.setitem(elementwise._FAST_SPECIAL, ("numpy", "erfc"), None)
    x = np.linspace(-6, 6, 1001)
    np.testing.assert_allclose(ops.erf(x).numpy(), _erf(x), rtol=1e-14, atol=1e-15)
    np.testing.assert_allclose(ops.gelu(x).numpy(), _gelu_ref(x), rtol=1e-13, atol=1e-14)
    x32 = x.astype(np.float32)
    np.testing.assert_allclose(ops.gelu(x32).numpy(), _gelu_ref(x), rtol=1e-6, atol=1e-6)


def test_sigmoid_does_not_overflow():
    x = np.array([-1000, -50, 0, 50, 1000], np.float32)
    with np.errstate(all="raise"):
        got = ops.sigmoid(x).numpy()
    np.testing.assert_allclose(got, [0, 0, 0.5, 1, 1], atol=1e-7)


def test_unary_on_integers():
    x = np.array([-3, 0, 4], np.int32)
    assert ops.neg(x).numpy().tolist() == [3, 0, -4]
    assert ops.abs(x).numpy().tolist() == [3, 0, 4]
    assert ops.relu(x).numpy().tolist() == [0, 0, 4]
    assert ops.clip(x, -1, 2).numpy().tolist() == [-1, 0, 2]
    assert ops.relu(x).numpy().dtype == np.int32


@pytest.mark.parametrize("to", ["float32", "float64", "int32", "int64", "bool", "float16"])
@SETTINGS
@given(shape=shapes(), seed=seeds)
def test_cast(to, shape, seed):
    x = np.asarray(rand(seed, shape, np.float32, -3, 3).round(1))
    (out,) = assert_matches(lambda t: ops.cast(t, to), lambda t: t.astype(to), x, exact=True)
    assert out.dtype == np.dtype(to)


@SETTINGS
@given(shape=broadcast_pair(), seed=seeds)
def test_where(shape, seed):
    a_shape, b_shape = shape.input_shapes
    cond = rand(seed, a_shape, np.bool_)
    a = rand(seed + 1, a_shape)
    b = rand(seed + 2, b_shape)
    assert_matches(ops.where, np.where, cond, a, b, exact=True)


def test_tensor_operators_and_python_scalars():
    x = np.array([[1.0, -2.0], [3.0, 0.5]], np.float32)
    t = ht.tensor(x)
    np.testing.assert_allclose((t + 1).numpy(), x + 1)
    np.testing.assert_allclose((2 - t).numpy(), 2 - x)
    np.testing.assert_allclose((t * t / 2).numpy(), x * x / 2)
    np.testing.assert_allclose((1 / t).numpy(), 1 / x)
    np.testing.assert_allclose((t ** 2).numpy(), x**2)
    np.testing.assert_allclose((2 ** t).numpy(), 2**x, rtol=1e-6)
    np.testing.assert_allclose((-t).numpy(), -x)
    np.testing.assert_allclose(abs(t).numpy(), np.abs(x))
    assert (t > 0).numpy().tolist() == (x > 0).tolist()
    assert (t <= 0.5).numpy().tolist() == (x <= 0.5).tolist()
    assert (t >= 1).numpy().dtype == np.bool_
    assert (t < 1).numpy().tolist() == (x < 1).tolist()
    assert (t + 1).dtype == np.float32


def test_traced_graph_of_a_small_function():
    def f(x, y):
        return ops.where(x > y, ops.relu(x) * 2.0, ops.tanh(y) - 1.0)

    x = rand(1, (3, 4))
    y = rand(2, (4,))
    eager, traced = run_modes(f, x, y)
    np.testing.assert_array_equal(eager[0], traced[0])
    xx, yy = x.astype(np.float64), y.astype(np.float64)
    np.testing.assert_allclose(eager[0], np.where(xx > yy, np.maximum(xx, 0) * 2, np.tanh(yy) - 1),
                               rtol=1e-6)


# ----------------------------------------------------------------------------------------------
# Errors


def test_shape_mismatch_names_the_op():
    with pytest.raises(ht.ShapeError, match=r"add.*\(2, 3\), \(4,\) cannot be broadcast"):
        ops.add(np.ones((2, 3), np.float32), np.ones(4, np.float32))


def test_traced_shape_mismatch_names_the_user_line():
    @ht.function
    def f(a, b):
        return a * b

    with pytest.raises(ht.ShapeError, match=r"mul_\d+ \(mul, from test_ops_elementwise\.py:\d+\)"):
        f.graph(np.ones((2, 3), np.float32), np.ones((4, 5), np.float32))


def test_dtype_mismatch_is_a_shape_error():
    with pytest.raises(ht.ShapeError, match="sub.*different dtypes.*float32.*float64"):
        ops.sub(np.ones(3, np.float32), np.ones(3, np.float64))


@pytest.mark.parametrize("call", [
    lambda: ops.log(np.ones(3, np.int32)),
    lambda: ops.sigmoid(np.ones(3, np.int64)),
    lambda: ops.where(np.ones(3, np.float32), np.ones(3, np.float32), np.ones(3, np.float32)),
    lambda: ops.gelu(np.ones(3, np.float32), "fast"),
    lambda: ops.sub(np.ones(3, bool), np.ones(3, bool)),
    lambda: ops.cast(np.ones(3, np.float32), "no-such-type"),
])
def test_bad_inputs_raise_shape_error(call):
    with pytest.raises(ht.ShapeError):
        call()


def test_registry_entries():
    for name in [*BINARY, *COMPARE, "pow", "neg", "abs", "exp", "log", "sqrt", "tanh", "sigmoid",
                 "relu", "erf", "reciprocal", "floor", "ceil", "leaky_relu", "gelu", "clip",
                 "where"]:
        op = REGISTRY[name]
        assert op.op_class == "elementwise", name
        assert op.kernel is not None and op.has_kernel("numpy") and op.has_kernel("cupy")
        assert name in ops.elementwise.__all__
        assert getattr(ops, name).__doc__
    assert REGISTRY["cast"].op_class == "data"
    spec = ht.TensorSpec((10, 10), np.float32)
    cost = REGISTRY["add"].cost_of((spec, spec), (spec,), REGISTRY["add"].normalize_attrs({}))
    assert cost.flops == 100 and cost.bytes == 1200


@pytest.mark.parametrize("op_type, call, inputs, attrs, opset", [
    ("Div", ops.div, [np.array([7, -7, 7, -7, 0], np.int32), np.array([2, 2, -2, -2, 3], np.int32)],
     {}, 13),
    ("Gelu", ops.gelu, [np.linspace(-6, 6, 101).astype(np.float32)], {}, 20),
    ("Gelu", lambda x: ops.gelu(x, "tanh"), [np.linspace(-6, 6, 101).astype(np.float32)],
     {"approximate": "tanh"}, 20),
    ("Erf", ops.erf, [np.linspace(-6, 6, 101).astype(np.float32)], {}, 13),
    ("Sigmoid", ops.sigmoid, [np.linspace(-30, 30, 101).astype(np.float32)], {}, 13),
    ("LeakyRelu", lambda x: ops.leaky_relu(x, 0.3), [np.linspace(-3, 3, 11).astype(np.float32)],
     {"alpha": 0.3}, 13),
    ("Where", ops.where, [np.array([[True], [False]]), np.ones((2, 3), np.float32),
                          np.zeros(3, np.float32)], {}, 13),
    ("Pow", ops.pow, [np.array([2.0, 0.5, 3.0], np.float32), np.array([3.0, -1.0, 0.5],
                                                                     np.float32)], {}, 13),
    ("Cast", lambda x: ops.cast(x, "int32"), [np.array([1.7, -1.7, 0.2], np.float32)],
     {"to": 6}, 13),
])
def test_matches_onnxruntime(op_type, call, inputs, attrs, opset):
    pytest.importorskip("onnxruntime")
    from op_reference import run_onnxruntime

    (want,) = run_onnxruntime(op_type, inputs, attrs, opset=opset)
    got = call(*inputs).numpy()
    assert got.dtype == want.dtype
    # atol: gelu of x < -5 is below 1e-6, where float32 rounding in either library dominates
    np.testing.assert_allclose(got, want, rtol=2e-6, atol=5e-7)


def test_numpy_operands_fit_the_tensor_dtype():
    t = ht.tensor(np.arange(4, dtype=np.float32))
    out = ops.add(t, np.ones(4))  # a float64 array next to a float32 tensor
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out.numpy(), np.arange(4) + 1)
    assert ops.where(t > 1, t, np.zeros(4)).dtype == np.float32
    assert ops.matmul(np.eye(4), t).dtype == np.float32
    # a float scalar next to integer tensors makes them float32 instead of truncating it
    i = ht.tensor(np.array([1, 2, 3]))
    np.testing.assert_array_equal(ops.mul(i, 0.5).numpy(), [0.5, 1.0, 1.5])
    assert ops.mul(i, np.float32(0.5)).dtype == np.float32
    # two tensors of different dtypes stay an error that asks for a cast
    with pytest.raises(ht.ShapeError, match="cast one first"):
        ops.add(t, ht.tensor(np.ones(4)))
    # a float array next to an integer tensor is not cast down (NumPy's same_kind rule)
    with pytest.raises(ht.ShapeError, match="different dtypes"):
        ops.add(i, np.ones(3))


# ----------------------------------------------------------------------------------------------
# Fast paths of the CPU-speed issue, against float64 references

_POW_BASES = np.concatenate([
    [0.0, -0.0, 1.0, -1.0, 2.0, -2.0, 0.5, -0.5, 3.7, -3.7, 1e-20, -1e-20, 1e20, -1e20, 1e-40,
     np.inf, -np.inf, np.nan],
    np.random.default_rng(3).standard_normal(500) * 10,
])


@pytest.mark.parametrize("dtype, rtol", [(np.float32, 4e-7), (np.float64, 1e-15)])
@pytest.mark.parametrize("e", [0, 1, 2, 3, 4, -1, -2, -3, -4, 0.5, -0.5, 1.5, 5, -7])
@pytest.mark.parametrize("layout", ["0-d", "1x1", "broadcast"])
def test_pow_constant_exponent_paths(dtype, rtol, e, layout):
    from hetero.ops.elementwise import _pow_kernel

    x = _POW_BASES.astype(dtype)
    if layout == "1x1":
        x = x[np.isfinite(x)]  # the +-0.5 paths fall back to power where an input is -inf
    b = {"0-d": np.array(e, dtype), "1x1": np.full((1, 1), e, dtype),
         "broadcast": np.broadcast_to(np.array(e, dtype), x.shape)}[layout]
    out = np.empty(np.broadcast_shapes(x.shape, b.shape), dtype)
    with np.errstate(all="ignore"):
        _pow_kernel(np, [x, b], {}, [out])
        want = np.broadcast_to(np.power(x.astype(np.float64), float(e)).astype(dtype), out.shape)
    # results below the smallest normal number may differ in their last (subnormal) bit
    np.testing.assert_allclose(out, want, rtol=rtol, atol=np.finfo(dtype).tiny)
    assert (np.signbit(out) == np.signbit(want)).all()


def test_pow_of_negative_bases_through_ops():
    x = np.linspace(-3, 3, 1001).astype(np.float32)
    for e in (3.0, 2.0, -1.0, 4.0, np.float32(3)):
        got = ops.pow(x, e).numpy()
        assert got.dtype == np.float32
        np.testing.assert_allclose(got, x.astype(np.float64) ** float(e), rtol=4e-7)
    # an exponent tensor of varying values still takes the general path
    b = np.linspace(-2, 2, 1001).astype(np.float32)
    np.testing.assert_allclose(ops.pow(np.abs(x) + 0.1, b).numpy(),
                               (np.abs(x.astype(np.float64)) + 0.1) ** b, rtol=2e-6)
    # the +-0.5 paths keep NumPy's power at -0 and -inf (with and without -inf in the input)
    for xs in ([-np.inf, -0.0, 0.0, np.inf, 4.0, -4.0, np.nan], [-0.0, 0.0, np.inf, 4.0, -4.0]):
        xs = np.array(xs, np.float32)
        for e in (0.5, -0.5):
            with np.errstate(all="ignore"):
                want = np.power(xs, np.float32(e))
            got = ops.pow(xs, e).numpy()
            np.testing.assert_array_equal(got, want)
            assert (np.signbit(got) == np.signbit(want)).all()


@pytest.mark.parametrize("dtype", [np.int32, np.int64])
def test_pow_integer_constant_exponent(dtype):
    from hetero.ops.elementwise import _pow_kernel

    x = np.array([-5, -3, -1, 0, 1, 2, 7, 1000], dtype)
    for e in range(5):
        out = np.empty_like(x)
        _pow_kernel(np, [x, np.array(e, dtype)], {}, [out])
        np.testing.assert_array_equal(out, np.power(x, e))
    with pytest.raises(ValueError):  # NumPy's rule, kept: no negative integer powers of ints
        _pow_kernel(np, [x, np.array(-1, dtype)], {}, [np.empty_like(x)])


def test_erf_float32_polynomial_is_accurate():
    """The float32 polynomial (the default for float32 even where SciPy is installed) within
    2e-7 of math.erf, with -0, +-inf and nan, and relative accuracy for tiny inputs."""
    x = np.concatenate([np.linspace(-6, 6, 400001), np.geomspace(1e-38, 1e-3, 2000),
                        -np.geomspace(1e-38, 1e-3, 2000)]).astype(np.float32)
    got = ops.erf(x).numpy()
    assert got.dtype == np.float32
    want = _erf(x.astype(np.float64))
    assert np.abs(got - want).max() <= 2e-7
    tiny = np.abs(x) < 1e-3
    np.testing.assert_allclose(got[tiny], want[tiny], rtol=3e-7)
    special = ops.erf(np.array([0.0, -0.0, np.inf, -np.inf, np.nan], np.float32)).numpy()
    assert special[:4].tolist() == [0.0, 0.0, 1.0, -1.0] and np.signbit(special[1])
    assert np.isnan(special[4])
    # float16 goes through float32
    x16 = np.linspace(-4, 4, 801).astype(np.float16)
    np.testing.assert_allclose(ops.erf(x16).numpy(), _erf(x16.astype(np.float64)), atol=1e-3)


def test_erf_chunks_and_layouts():
    """Inputs longer than a chunk, non-contiguous ones and 0-d ones give the same values."""
    from hetero.ops import elementwise

    x = np.random.default_rng(5).standard_normal(3 * elementwise._CHUNK + 17).astype(np.float32)
    whole = ops.erf(x).numpy()
    np.testing.assert_allclose(whole, _erf(x.astype(np.float64)), atol=2e-7)
    np.testing.assert_array_equal(ops.erf(x[::2]).numpy(), whole[::2])
    np.testing.assert_array_equal(ops.erf(x[:12].reshape(3, 4).T).numpy(),
                                  whole[:12].reshape(3, 4).T)
    assert abs(ops.erf(np.float32(0.5)).numpy() - math.erf(0.5)) < 2e-7


def test_gelu_float32_polynomial():
    x = np.concatenate([np.linspace(-9, 9, 200001), [0.0, -0.0, np.inf, np.nan]])
    x = x.astype(np.float32)
    got = ops.gelu(x).numpy()
    x64 = x.astype(np.float64)
    with np.errstate(invalid="ignore"):
        want = _gelu_ref(x64)
    finite = np.isfinite(x)
    err = np.abs(got - want)[finite]
    assert err.max() <= 5e-7  # half an ulp of 9 is 4.8e-7
    # relative accuracy of the small negative results (no 1 + erf cancellation)
    neg = (x64 < -0.1) & (x64 > -5)
    np.testing.assert_allclose(got[neg], want[neg], rtol=1e-5)
    assert got[-2] == np.inf and np.isnan(got[-1])


@pytest.mark.parametrize("alpha", [0.01, 0.2, 1.0, 3.0, -0.5, 0.0])
def test_leaky_relu_any_alpha(alpha):
    x = np.concatenate([np.linspace(-3, 3, 101), [0.0, -0.0, np.inf, -np.inf, np.nan]])
    x = x.astype(np.float32)
    got = ops.leaky_relu(x, alpha).numpy()
    with np.errstate(invalid="ignore"):
        want = np.where(x >= 0, x, np.float32(alpha) * x)
    np.testing.assert_array_equal(got, want)


def test_relu_float_keeps_nan_and_inf():
    x = np.array([-np.inf, -1.0, 0.0, 2.0, np.inf, np.nan], np.float32)
    got = ops.relu(x).numpy()
    np.testing.assert_array_equal(got, [0, 0, 0, 2, np.inf, np.nan])
