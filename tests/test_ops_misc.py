"""The ONNX-support ops of ``hetero/ops/misc.py`` against NumPy float64, eager and traced.

Ops are called through the registry (``apply(name, inputs, attrs)``), so the table checks the
registered semantics whatever the public helpers look like. Shapes come from hypothesis and
include size-1 and empty dimensions where the op allows them.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from op_reference import (
    SETTINGS,
    assert_matches,
    broadcast_pair,
    rand,
    run_modes,
    seeds,
    shapes,
)

import hetero as ht
from hetero.ops.registry import REGISTRY
from hetero.tracing import apply

SELU_ALPHA = 1.67326319217681884765625
SELU_GAMMA = 1.05070102214813232421875


def _softplus(x):
    return np.logaddexp(0.0, x)


# name -> (attrs, float64 reference)
UNARY = {
    "identity": ({}, lambda x: x),
    "dropout": ({}, lambda x: x),
    "elu": ({"alpha": 0.7}, lambda x: np.where(x > 0, x, 0.7 * np.expm1(x))),
    "selu": ({}, lambda x: SELU_GAMMA * np.where(x > 0, x, SELU_ALPHA * np.expm1(x))),
    "hard_sigmoid": ({"alpha": 0.3, "beta": 0.4}, lambda x: np.clip(0.3 * x + 0.4, 0, 1)),
    "softplus": ({}, _softplus),
    "softsign": ({}, lambda x: x / (1 + np.abs(x))),
    "sign": ({}, np.sign),
    "hard_swish": ({}, lambda x: x * np.clip(x / 6 + 0.5, 0, 1)),
    "mish": ({}, lambda x: x * np.tanh(_softplus(x))),
    "celu": ({"alpha": 0.5},
             lambda x: np.maximum(x, 0) + np.minimum(0, 0.5 * np.expm1(x / 0.5))),
    "thresholded_relu": ({"alpha": 0.25}, lambda x: np.where(x > 0.25, x, 0)),
    "cos": ({}, np.cos),
    "sin": ({}, np.sin),
    "round": ({}, np.round),
}


def _present(names):
    import hetero.ops  # noqa: F401  (registers every op family)

    return sorted(n for n in names if n in REGISTRY)


def _op(name, attrs=None):
    return lambda *xs: apply(name, xs, attrs or {})


@pytest.mark.parametrize("name", _present(UNARY))
@SETTINGS
@given(shape=shapes(), seed=seeds)
def test_unary(name, shape, seed):
    attrs, ref = UNARY[name]
    x = rand(seed, shape, low=-4, high=4)
    if name == "round":
        # exact halves, where round-half-to-even matters
        x = np.asarray(np.round(x * 4) / 4, dtype=np.float32)
    assert_matches(_op(name, attrs), ref, x, rtol=2e-6, atol=2e-6)


@pytest.mark.parametrize("fmod", [0, 1])
@pytest.mark.parametrize("dtype", [np.float32, np.int32])
@SETTINGS
@given(shapes=broadcast_pair(), seed=seeds)
def test_mod(fmod, dtype, shapes, seed):
    a_shape, b_shape = shapes.input_shapes
    a = rand(seed, a_shape, dtype, -20, 20)
    b = rand(seed + 1, b_shape, dtype, 1, 6) * np.where(rand(seed + 2, b_shape) > 0, 1, -1)
    b = b.astype(dtype)
    ref = np.fmod if fmod else np.mod
    assert_matches(_op("mod", {"fmod": fmod}), ref, a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", _present(["logical_and", "logical_or", "logical_xor"]))
@SETTINGS
@given(shapes=broadcast_pair(), seed=seeds)
def test_logical_binary(name, shapes, seed):
    a_shape, b_shape = shapes.input_shapes
    a, b = rand(seed, a_shape, bool), rand(seed + 1, b_shape, bool)
    (out,) = assert_matches(_op(name), getattr(np, name), a, b)
    assert out.dtype == np.bool_


@SETTINGS
@given(shape=shapes(), seed=seeds)
def test_logical_not(shape, seed):
    assert_matches(_op("logical_not"), np.logical_not, rand(seed, shape, bool))


def test_logical_ops_refuse_numbers():
    with pytest.raises(ht.ShapeError, match="bool"):
        apply("logical_and", (np.ones(2, np.float32), np.ones(2, np.float32)))


@SETTINGS
@given(shapes=broadcast_pair(), seed=seeds)
def test_prelu(shapes, seed):
    x_shape, s_shape = shapes.input_shapes
    # the slope broadcasts to x (ONNX: unidirectional); a pair where x would grow gets a scalar
    if np.broadcast_shapes(x_shape, s_shape) != tuple(x_shape):
        s_shape = ()
    x, slope = rand(seed, x_shape), rand(seed + 1, s_shape, low=0.05, high=0.5)
    assert_matches(_op("prelu"), lambda x, s: np.where(x < 0, x * s, x), x, slope)


@SETTINGS
@given(shape=shapes(min_dims=1), n=st.integers(1, 4), seed=seeds)
def test_add_n(shape, n, seed):
    xs = [rand(seed + i, shape) for i in range(n)]
    assert_matches(_op("add_n"), lambda *xs: sum(xs), *xs, rtol=1e-5, atol=1e-5)


@SETTINGS
@given(shapes=broadcast_pair(), seed=seeds)
def test_expand(shapes, seed):
    x_shape, target = shapes.input_shapes
    x = rand(seed, x_shape)
    want = np.broadcast_shapes(x_shape, target)
    assert_matches(_op("expand", {"shape": target}), lambda x: np.broadcast_to(x, want), x)


@SETTINGS
@given(shape=shapes(), data=st.data(), seed=seeds)
def test_tile(shape, data, seed):
    reps = tuple(data.draw(st.lists(st.integers(0, 3), min_size=len(shape),
                                    max_size=len(shape))))
    assert_matches(_op("tile", {"repeats": reps}), lambda x: np.tile(x, reps),
                   rand(seed, shape))


@pytest.mark.parametrize("name", _present(["argmax", "argmin"]))
@SETTINGS
@given(shape=shapes(min_dims=1, min_side=1), data=st.data(), seed=seeds,
       keepdims=st.sampled_from([0, 1]), last=st.sampled_from([0, 1]))
def test_argmax_argmin(name, shape, data, seed, keepdims, last):
    axis = data.draw(st.integers(-len(shape), len(shape) - 1))
    x = rand(seed, shape, np.int32, 0, 2).astype(np.float32)  # many ties

    def ref(x):
        pick = np.argmax if name == "argmax" else np.argmin
        if last:
            flipped = np.flip(x, axis)
            out = x.shape[axis] - 1 - pick(flipped, axis=axis)
        else:
            out = pick(x, axis=axis)
        return np.expand_dims(out, axis) if keepdims else out

    attrs = {"axis": axis, "keepdims": keepdims, "select_last_index": last}
    (out,) = assert_matches(_op(name, attrs), ref, x)
    assert out.dtype == np.int64


@SETTINGS
@given(shape=shapes(min_dims=1, min_side=1), data=st.data(), seed=seeds)
def test_layer_norm(shape, data, seed):
    axis = data.draw(st.integers(-len(shape), len(shape) - 1))
    norm = shape[axis % len(shape):]
    x, scale, bias = rand(seed, shape), rand(seed + 1, norm), rand(seed + 2, norm)

    def ref(x, scale, bias):
        axes = tuple(range(axis % x.ndim, x.ndim))
        mean = x.mean(axis=axes, keepdims=True)
        inv = 1 / np.sqrt(((x - mean) ** 2).mean(axis=axes, keepdims=True) + 1e-5)
        return (x - mean) * inv * scale + bias, mean, inv

    assert_matches(_op("layer_norm", {"axis": axis}), ref, x, scale, bias, rtol=1e-4, atol=1e-4)


@SETTINGS
@given(n=st.integers(1, 3), c=st.integers(1, 3), hw=st.tuples(st.integers(1, 4),
                                                               st.integers(1, 4)), seed=seeds)
def test_instance_norm(n, c, hw, seed):
    x, scale, bias = rand(seed, (n, c, *hw)), rand(seed + 1, (c,)), rand(seed + 2, (c,))

    def ref(x, scale, bias):
        mean = x.mean(axis=(2, 3), keepdims=True)
        var = x.var(axis=(2, 3), keepdims=True)
        return (x - mean) / np.sqrt(var + 1e-5) * scale[:, None, None] + bias[:, None, None]

    assert_matches(_op("instance_norm"), ref, x, scale, bias, rtol=1e-4, atol=1e-4)


@SETTINGS
@given(shape=shapes(min_dims=1, min_side=1), data=st.data(), seed=seeds)
def test_gather_elements(shape, data, seed):
    axis = data.draw(st.integers(-len(shape), len(shape) - 1))
    ishape = list(shape)
    ishape[axis] = data.draw(st.integers(0, 4))
    dim = shape[axis]
    idx = rand(seed + 1, tuple(ishape), np.int64, -dim, dim - 1)
    assert_matches(_op("gather_elements", {"axis": axis}),
                   lambda x, i: np.take_along_axis(x, np.where(i < 0, i + dim, i), axis),
                   rand(seed, shape), idx, exact=True)


@SETTINGS
@given(shape=shapes(min_dims=2), k=st.integers(-4, 4), upper=st.sampled_from([0, 1]),
       seed=seeds)
def test_trilu(shape, k, upper, seed):
    ref = np.triu if upper else np.tril
    assert_matches(_op("trilu", {"upper": upper, "k": k}), lambda x: ref(x, k),
                   rand(seed, shape), exact=True)


def test_every_misc_op_is_covered_here():
    """A new op in misc.py needs a case in this file."""
    import hetero.ops.misc as misc

    covered = {*UNARY, "mod", "logical_and", "logical_or", "logical_xor", "logical_not", "prelu",
               "add_n", "expand", "tile", "argmax", "argmin", "layer_norm", "instance_norm",
               "gather_elements", "trilu"}
    registered_here = {name for name, op in REGISTRY.items()
                       if getattr(op.kernel, "__module__", None) == misc.__name__}
    assert len(registered_here) >= 20  # the check sees misc.py's ops
    assert registered_here - covered == set(), sorted(registered_here - covered)


# ----------------------------------------------------------------------------------------------
# Attribute types: a wrong type is a ShapeError naming the node, never a TypeError in a kernel


def _attr_case_inputs(name):
    x = np.ones((1, 2, 5, 5), np.float32)
    special = {
        "gather": [x, np.zeros((1, 2, 5, 5), np.int64)],
        "gather_elements": [x, np.zeros((1, 2, 5, 5), np.int64)],
        "where": [x > 0.5, x, x],
        "conv2d": [x, np.ones((3, 2, 3, 3), np.float32)],
        "conv2d_winograd": [x, np.ones((3, 2, 3, 3), np.float32)],
        "conv2d_add": [x, np.ones((3, 2, 3, 3), np.float32), np.ones(3, np.float32),
                       np.ones((1, 3, 3, 3), np.float32)],
        "batch_norm": [x] + [np.ones(2, np.float32)] * 4,
        "instance_norm": [x, np.ones(2, np.float32), np.ones(2, np.float32)],
        "layer_norm": [x, np.ones(5, np.float32)],
        "prelu": [x, np.ones(1, np.float32)],
        "gemm": [np.ones((3, 4), np.float32), np.ones((4, 5), np.float32)],
    }
    return special.get(name, [x] * REGISTRY[name].arity[0])


_GOOD = {"kernel_shape": (2, 2), "axis": 1, "shape": (1, 50), "size": 3, "pads": (0,) * 8,
         "starts": (0,), "ends": (1,), "sizes": (1, 1), "repeats": (1, 1, 1, 1), "axes": (0,),
         "equation": "ij->ji", "k": 1}
_BAD = ["a", 1.5, (1.5,), ("a", "b"), {"x": 1}, 10**20, object()]


@pytest.mark.parametrize("name", sorted(n for n in REGISTRY
                                         if REGISTRY[n].attrs and n != "transfer"))
def test_wrong_attribute_types_are_shape_errors(name):
    from hetero.ops.registry import REQUIRED
    from hetero.tracing import apply

    op = REGISTRY[name]
    ins = _attr_case_inputs(name)
    required = {k: _GOOD.get(k, 1) for k, d in op.attrs.items() if d is REQUIRED}
    for key, default in op.attrs.items():
        if isinstance(default, str) or key in ("min", "max"):
            continue  # strings (modes, dtypes) and clip bounds take other types on purpose
        for bad in _BAD:
            if isinstance(default, float) and isinstance(bad, (int, float)):
                continue  # any number is a valid float attribute
            if key == "activation_params" and bad == (1.5,):
                continue
            with pytest.raises(ht.ShapeError, match=rf"{name} \({name}, from test_ops_misc"):
                apply(name, ins, {**required, key: bad})


def test_public_wrappers_do_not_coerce_attributes():
    ops = ht.ops
    x = ht.tensor(np.ones((2, 3), np.float32))
    with pytest.raises(ht.ShapeError, match="'axis' must be an integer, got 'a'"):
        ops.softmax(x, axis="a")
    with pytest.raises(ht.ShapeError, match="'k' must be an integer, got 1.5"):
        ops.trilu(x, k=1.5)
    with pytest.raises(ht.ShapeError, match="shape must be a tuple of integers"):
        ops.reshape(x, (3, 2.0))
    with pytest.raises(ht.ShapeError, match="axis must be an integer"):
        ops.split(x, 2, axis="a")
    np.testing.assert_array_equal(x.sum(axis=np.int64(0)).numpy(), [2, 2, 2])
    np.testing.assert_array_equal(ops.concat(x, x, axis=np.int32(1)).shape, (2, 6))


def test_rank_zero_and_bool_inputs_are_shape_errors():
    s = ht.tensor(np.float32(2.0))
    for fn in (lambda: ht.ops.argmax(s), lambda: ht.ops.argmin(s),
               lambda: ht.ops.gather_elements(s, np.int64(0)),
               lambda: ht.ops.slice(s, (0,), (1,)),
               lambda: ht.ops.sign(ht.tensor(np.array([True, False])))):
        with pytest.raises(ht.ShapeError, match="from test_ops_misc.py"):
            fn()


# ----------------------------------------------------------------------------------------------
# The mask-free activations (max/min/clip/fmax identities instead of masked copies): special
# values, the sign of zero, the large-|x| ends and inputs above a scratch chunk

_SPECIAL = np.array([np.nan, np.inf, -np.inf, 0.0, -0.0, 1e-45, -1e-45, 1e-30, -1e-30, 1e-8,
                     -1e-8, 0.25, 0.2500001, 0.5, -0.5, 1.0, -1.0, 7.6, 8.0, 16.0, 16.7, 17.0,
                     20.0, -20.0, 30.0, 88.0, 89.0, -88.0, -104.0, -110.0, 1e4, -1e4, 3e38,
                     -3e38], np.float32)


def _special_inputs(n: int = 300_000) -> np.ndarray:
    rng = np.random.default_rng(7)
    wide = rng.standard_normal(n) * np.exp(rng.uniform(-8, 5, n))  # 3e-4 .. 150 in magnitude
    return np.concatenate([_SPECIAL, wide.astype(np.float32)])  # above _CHUNK: chunked runs


def _elu_ref(alpha):
    return lambda x: np.where(x > 0, x, alpha * np.expm1(x))


def _celu_ref(alpha):
    # max(0, x) is +0 at x = -0 (NumPy's maximum returns its second argument on a tie of zeros)
    return lambda x: np.maximum(x, 0) + np.minimum(0, alpha * np.expm1(x / alpha))


_MASK_FREE = {
    "softplus": ({}, _softplus),
    "mish": ({}, lambda x: x * np.tanh(_softplus(x))),
    "elu": ({"alpha": 1.0}, _elu_ref(1.0)),
    "elu_small": ({"alpha": 0.3}, _elu_ref(0.3)),
    "elu_large": ({"alpha": 2.5}, _elu_ref(2.5)),
    "selu": ({}, lambda x: SELU_GAMMA * _elu_ref(SELU_ALPHA)(x)),
    "celu": ({"alpha": 1.0}, _celu_ref(1.0)),
    "celu_small": ({"alpha": 0.5}, _celu_ref(0.5)),
    "celu_negative": ({"alpha": -2.0}, _celu_ref(-2.0)),
    "thresholded_relu": ({"alpha": 0.25}, lambda x: np.where(x > 0.25, x, 0.0)),
    "thresholded_relu_zero": ({"alpha": 0.0}, lambda x: np.where(x > 0, x, 0.0)),
    "thresholded_relu_negative": ({"alpha": -1.0}, lambda x: np.where(x > -1, x, 0.0)),
}


def _check_against(out, want, rtol=1e-6, atol=1e-7):
    """``out`` (float32) is ``want`` (float64) to float32 rounding: nan where it is nan, the same
    infinities, and zeros of the same sign."""
    want32 = want.astype(np.float32)
    np.testing.assert_array_equal(np.isnan(out), np.isnan(want32))
    np.testing.assert_array_equal(np.isinf(out), np.isinf(want32))
    fin = np.isfinite(want32)
    np.testing.assert_array_equal(out[~fin & ~np.isnan(out)], want32[~fin & ~np.isnan(want32)])
    np.testing.assert_allclose(out[fin], want[fin], rtol=rtol, atol=atol)
    zero = want32 == 0
    np.testing.assert_array_equal(np.signbit(out[zero]), np.signbit(want32[zero]))


@pytest.mark.parametrize("case", sorted(_MASK_FREE))
def test_mask_free_activations_special_values(case):
    name = case.split("_small")[0].split("_large")[0].split("_negative")[0].split("_zero")[0]
    attrs, ref = _MASK_FREE[case]
    x = _special_inputs()
    with np.errstate(all="ignore"):
        want = ref(x.astype(np.float64))
        (out,) = run_modes(_op(name, attrs), x)[0]
    assert out.dtype == np.float32
    _check_against(out, want, rtol=2e-6 if name == "mish" else 1e-6)


def test_mask_free_activations_named_values():
    x = np.array([np.nan, np.inf, -np.inf, 0.0, -0.0, 100.0, -200.0], np.float32)

    def run(name, **attrs):
        with np.errstate(all="ignore"):
            return apply(name, (x,), attrs).numpy()

    nan, log2 = np.nan, np.float32(np.log(2))
    np.testing.assert_array_equal(run("softplus"), [nan, np.inf, 0, log2, log2, 100, 0])
    # mish(-inf) is -inf * tanh(0): nan, as the formula (and ONNX's reference) give it
    np.testing.assert_array_equal(run("mish"), [nan, np.inf, nan, 0, 0, 100, 0])
    np.testing.assert_array_equal(run("elu", alpha=0.5), [nan, np.inf, -0.5, 0, 0, 100, -0.5])
    np.testing.assert_array_equal(np.signbit(run("elu", alpha=0.5)[3:5]), [False, True])
    np.testing.assert_array_equal(np.signbit(run("selu")[3:5]), [False, True])
    np.testing.assert_array_equal(np.signbit(run("celu")[3:5]), [False, False])
    np.testing.assert_array_equal(run("thresholded_relu", alpha=1.0), [0, np.inf, 0, 0, 0, 100, 0])


@pytest.mark.parametrize("dtype", [np.float16, np.float64])
@pytest.mark.parametrize("name", ["softplus", "mish", "elu", "selu", "celu"])
def test_mask_free_activations_other_dtypes(name, dtype):
    # the exp bound follows the dtype: float16's exp(min(x, T)) must not overflow
    x = np.concatenate([_SPECIAL, np.linspace(-30, 30, 2001)]).astype(dtype)
    attrs, ref = _MASK_FREE[name]
    with np.errstate(all="ignore"):
        out = apply(name, (x,), attrs).numpy()
        want = ref(x.astype(np.float64)).astype(dtype)
    assert out.dtype == dtype
    np.testing.assert_array_equal(np.isnan(out), np.isnan(want))
    tol = 2e-3 if dtype == np.float16 else 1e-13
    np.testing.assert_allclose(out.astype(np.float64), want.astype(np.float64), rtol=tol,
                               atol=tol)


@pytest.mark.parametrize("slope", [[0.1, 0.5, 1.0], [1.0, 2.0, 3.5], [0.5, 2.0, 1.0],
                                   [0.0, 0.5, 1.0], [-0.5, 0.25, 0.1], [np.nan, 0.5, 1.0],
                                   [np.inf, 2.0, 1.0]])
def test_prelu_slopes_special_values(slope):
    # slopes all in (0, 1] or all in [1, inf) select by max/min; the others keep the masked copy
    x = np.broadcast_to(_SPECIAL[:, None], (_SPECIAL.size, 3)).copy()
    s = np.array(slope, np.float32)
    with np.errstate(all="ignore"):
        want = np.where(x < 0, x.astype(np.float64) * s, x)
        (out,) = run_modes(_op("prelu"), x, s)[0]
    _check_against(out, want)
