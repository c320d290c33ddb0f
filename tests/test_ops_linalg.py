"""matmul and gemm against NumPy float64, eager and traced."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from op_reference import SETTINGS, assert_matches, rand, seeds

import hetero as ht
from hetero.ops.registry import REGISTRY

ops = ht.ops


@st.composite
def matmul_shapes(draw):
    """Operand shapes NumPy's matmul accepts: 1-D operands, broadcast batch dims, empty dims."""
    m, k, n = (draw(st.integers(0, 5)) for _ in range(3))
    batch = draw(hnp.mutually_broadcastable_shapes(num_shapes=2, max_dims=2, min_side=0,
                                                   max_side=3))
    ba, bb = batch.input_shapes
    a = (k,) if draw(st.integers(0, 4)) == 0 else ba + (m, k)
    b = (k,) if draw(st.integers(0, 4)) == 0 else bb + (k, n)
    return a, b


@SETTINGS
@given(shapes=matmul_shapes(), seed=seeds, dtype=st.sampled_from([np.float32, np.float64]))
def test_matmul(shapes, seed, dtype):
    a = rand(seed, shapes[0], dtype)
    b = rand(seed + 1, shapes[1], dtype)
    tol = 1e-5 if dtype == np.float32 else 1e-12
    assert_matches(ops.matmul, np.matmul, a, b, rtol=tol, atol=tol)


def test_matmul_operator_and_integers():
    a = np.arange(6, dtype=np.int64).reshape(2, 3)
    b = np.arange(12, dtype=np.int64).reshape(3, 4)
    assert_matches(lambda x, y: x @ y, np.matmul, a, b)
    np.testing.assert_array_equal((a @ ht.tensor(b)).numpy(), a @ b)


@st.composite
def gemm_case(draw):
    m, k, n = (draw(st.integers(0, 5)) for _ in range(3))
    trans_a, trans_b = draw(st.booleans()), draw(st.booleans())
    c = draw(st.sampled_from([None, (m, n), (n,), (1, n), (m, 1), (), (1, 1)]))
    alpha = draw(st.sampled_from([1.0, 0.5, -2.0]))
    beta = draw(st.sampled_from([1.0, 0.0, 3.0]))
    return m, k, n, trans_a, trans_b, c, alpha, beta


@SETTINGS
@given(case=gemm_case(), seed=seeds)
def test_gemm(case, seed):
    m, k, n, trans_a, trans_b, c_shape, alpha, beta = case
    a = rand(seed, (k, m) if trans_a else (m, k))
    b = rand(seed + 1, (n, k) if trans_b else (k, n))
    arrays = [a, b] if c_shape is None else [a, b, rand(seed + 2, c_shape)]

    def fn(*xs):
        return ops.gemm(*xs, alpha=alpha, beta=beta, trans_a=trans_a, trans_b=trans_b)

    def ref(x, y, z=None):
        out = alpha * ((x.T if trans_a else x) @ (y.T if trans_b else y))
        return out if z is None else out + beta * z

    assert_matches(fn, ref, *arrays, rtol=1e-5, atol=1e-5)


def test_matmul_misaligned_message():
    with pytest.raises(ht.ShapeError,
                       match=r"matmul.*shapes \(2, 3\) and \(4, 5\) do not align for matmul"):
        ops.matmul(np.ones((2, 3), np.float32), np.ones((4, 5), np.float32))


@pytest.mark.parametrize("call, message", [
    (lambda: ops.matmul(np.ones((2, 3, 4)), np.ones((3, 4, 5))), "batch dimensions"),
    (lambda: ops.matmul(np.ones(()), np.ones(3)), "rank >= 1"),
    (lambda: ops.matmul(np.ones(3, np.float32), np.ones(3)), "different dtypes"),
    (lambda: ops.gemm(np.ones((2, 3)), np.ones((2, 3))), r"do not align for gemm"),
    (lambda: ops.gemm(np.ones((2, 3)), np.ones((2, 3)), trans_b=True, c=np.ones(3)),
     r"c of shape \(3,\) cannot be broadcast"),
    (lambda: ops.gemm(np.ones(3), np.ones((3, 2))), "2-D"),
])
def test_bad_inputs(call, message):
    with pytest.raises(ht.ShapeError, match=message):
        call()


def test_traced_error_names_the_user_line():
    @ht.function
    def f(a, b):
        return a @ b

    with pytest.raises(ht.ShapeError,
                       match=r"matmul_\d+ \(matmul, from test_ops_linalg\.py:\d+\).*do not align"):
        f.graph(np.ones((2, 3), np.float32), np.ones((4, 5), np.float32))


def test_cost_counts_two_flops_per_multiply_add():
    f32 = np.float32
    a, b, out = (ht.TensorSpec(s, f32) for s in [(4, 2, 3), (3, 5), (4, 2, 5)])
    op = REGISTRY["matmul"]
    assert op.op_class == "matmul"
    cost = op.cost_of((a, b), (out,), op.normalize_attrs({}))
    assert cost.flops == 2 * 4 * 2 * 5 * 3
    assert cost.bytes == 4 * (24 + 15 + 40)
    g = REGISTRY["gemm"]
    a, b, c, out = (ht.TensorSpec(s, f32) for s in [(3, 7), (3, 5), (5,), (7, 5)])
    cost = g.cost_of((a, b, c), (out,), g.normalize_attrs({"trans_a": 1}))
    assert cost.flops == 2 * 7 * 5 * 3 + 2 * 35
    assert g.arity == (2, 3) and g.op_class == "matmul"


@pytest.mark.parametrize("trans_a", [0, 1])
@pytest.mark.parametrize("trans_b", [0, 1])
@pytest.mark.parametrize("c_shape", [None, (5,), (3, 1), (3, 5), ()])
def test_gemm_matches_onnxruntime(trans_a, trans_b, c_shape):
    pytest.importorskip("onnxruntime")
    from op_reference import run_onnxruntime

    a = rand(0, (4, 3) if trans_a else (3, 4))
    b = rand(1, (5, 4) if trans_b else (4, 5))
    ins = [a, b] if c_shape is None else [a, b, rand(2, c_shape)]
    attrs = {"alpha": 0.5, "beta": 2.0, "transA": trans_a, "transB": trans_b}
    (want,) = run_onnxruntime("Gemm", ins, attrs, opset=13)
    got = ops.gemm(*ins, alpha=0.5, beta=2.0, trans_a=trans_a, trans_b=trans_b).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
