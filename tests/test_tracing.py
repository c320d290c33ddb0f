"""Eager mode, annotations, and graph mode (@function) against eager mode."""

from __future__ import annotations

import logging
import warnings

import numpy as np
import pytest

import hetero as ht
from hetero import ops
from hetero.tracing import apply

RNG = np.random.default_rng(0)


def rand(*shape):
    return RNG.standard_normal(shape).astype(np.float32)


# ----------------------------------------------------------------------------------------------
# Eager mode


def test_eager_ops_run_at_once_and_return_tensors():
    a = ht.tensor([[1.0, 2.0], [3.0, 4.0]])
    assert isinstance(a, ht.Tensor) and a.dtype == np.float32 and a.device == "cpu:0"
    b = a + 1
    np.testing.assert_array_equal(b.numpy(), [[2, 3], [4, 5]])
    np.testing.assert_allclose((a @ a).numpy(), np.array([[7, 10], [15, 22]]))
    np.testing.assert_array_equal((-a).numpy(), -a.numpy())
    np.testing.assert_array_equal((2 - a).numpy(), 2 - a.numpy())
    np.testing.assert_array_equal((a / 2).numpy(), a.numpy() / 2)
    np.testing.assert_array_equal((a ** 2).numpy(), a.numpy() ** 2)
    np.testing.assert_array_equal(a.T.numpy(), a.numpy().T)
    np.testing.assert_array_equal(a.reshape(4).numpy(), [1, 2, 3, 4])
    np.testing.assert_array_equal(a.sum(axis=0).numpy(), [4, 6])
    np.testing.assert_allclose(a.mean().numpy(), 2.5)
    np.testing.assert_array_equal(a[1:, ::-1].numpy(), [[4, 3]])
    np.testing.assert_array_equal(a[0].numpy(), [1, 2])
    assert "Tensor([[1., 2.]," in repr(a) and "float32" in repr(a)


def test_numpy_arrays_and_scalars_are_accepted():
    x = rand(3, 4)
    t = ht.tensor(x)
    np.testing.assert_allclose((x + t).numpy(), 2 * x)
    np.testing.assert_allclose(ops.mul(x, 3.0).numpy(), 3 * x, rtol=1e-6)
    assert (t * 2).dtype == np.float32  # Python scalars take the tensor's dtype


def test_eager_shape_error_names_user_line():
    with pytest.raises(ht.ShapeError, match=r"test_tracing.py:\d+\).*cannot be broadcast"):
        ht.tensor(rand(2, 3)) + ht.tensor(rand(4, 5))


def test_unknown_op_and_unknown_device():
    with pytest.raises(ht.UnknownOpError, match="unknown op 'matmull'; did you mean matmul"):
        apply("matmull", (rand(2, 2), rand(2, 2)))
    with pytest.raises(ht.DeviceError, match="unknown device string 'tpu:0'"):
        with ht.device("tpu:0"):
            pass
    with pytest.raises(ht.DeviceError, match="gpu:7.*not in this machine"):
        ops.add(rand(2), rand(2), device="gpu:7")


# ----------------------------------------------------------------------------------------------
# Annotations


def test_annotations_recorded_with_source_line():
    @ht.function
    def f(x):
        a = ops.relu(x)  # line A
        with ht.device("gpu:0"):
            b = ops.exp(a)
            with ht.device("cpu:1", soft=True):
                c = ops.tanh(b)
            with ht.colocate("head"):
                d = ops.add(b, c)
        e = ops.mul(d, 2.0, device="gpu")
        return e

    g = f.graph(rand(2, 2))
    by_op = {n.op: n for n in g.nodes}
    assert by_op["relu"].device is None
    assert by_op["exp"].device == "gpu:0" and not by_op["exp"].soft
    assert by_op["tanh"].device == "cpu:1" and by_op["tanh"].soft
    assert by_op["add"].device == "gpu:0" and by_op["add"].colocate == "head"
    assert by_op["mul"].device == "gpu:0" and by_op["mul"].colocate is None
    assert by_op["relu"].where.startswith("test_tracing.py:")
    ht.check(g)


# ----------------------------------------------------------------------------------------------
# Graph mode equals eager mode


def mlp(x, w1, b1, w2, b2):
    h = ops.relu(x @ w1 + b1)
    return ops.softmax(h @ w2 + b2, axis=-1)


def cnn(x, w1, w2, wfc):
    h = ops.relu(ops.conv2d(x, w1, pads=(1, 1, 1, 1)))
    h = ops.max_pool2d(h, kernel_shape=(2, 2), strides=(2, 2))
    h = ops.relu(ops.conv2d(h, w2, strides=(2, 2), pads=(1, 1, 1, 1)))
    h = ops.global_avg_pool(h)
    return ops.flatten(h) @ wfc


def branches(x, w):
    """
          x
        /   \\
      tanh  sigmoid
       |      |
      @w     exp
        \\   /
         add -> sum
    """
    left = ops.tanh(x) @ w
    right = ops.exp(ops.sigmoid(x)) @ w
    return (left + right).sum(axis=1), left


CASES = {
    "mlp": (mlp, lambda: (rand(8, 16), rand(16, 32), rand(32), rand(32, 10), rand(10))),
    "cnn": (cnn, lambda: (rand(2, 3, 16, 16), rand(8, 3, 3, 3), rand(16, 8, 3, 3), rand(16, 5))),
    "branches": (branches, lambda: (rand(6, 6), rand(6, 6))),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_graph_mode_equals_eager_mode(case):
    fn, make = CASES[case]
    args = make()
    eager = fn(*[ht.tensor(a) for a in args])
    graph = ht.function(fn)(*args)
    pairs = zip(eager, graph) if isinstance(eager, tuple) else [(eager, graph)]
    for e, g in pairs:
        assert isinstance(g, ht.Tensor)
        np.testing.assert_allclose(g.numpy(), e.numpy(), rtol=1e-5, atol=1e-6)


def test_traced_graph_passes_check_and_runs_on_reference():
    fn, make = CASES["cnn"]
    args = make()
    g = ht.function(fn).graph(*args)
    ht.check(g)
    assert [n.op for n in g.nodes if n.op == "input"] == ["input"] * 4
    from hetero import reference

    (out,) = reference.run(g, args)
    np.testing.assert_allclose(out, fn(*map(ht.tensor, args)).numpy(), rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------------------------
# The trace cache


def test_same_signature_does_not_retrace_and_changes_do(caplog):
    calls = []

    @ht.function
    def f(x, y):
        calls.append(1)
        return x * y

    a, b = rand(2, 3), rand(2, 3)
    f(a, b)
    f(rand(2, 3), rand(2, 3))
    assert len(calls) == 1 and f.trace_count == 1
    with caplog.at_level(logging.INFO, logger="hetero.tracing"):
        f(rand(4, 3), rand(4, 3))
        f(a.astype(np.float64), b.astype(np.float64))
    assert len(calls) == 3
    text = caplog.text
    assert "retracing f: argument x changed shape (2, 3) -> (4, 3)" in text
    assert "argument x changed dtype float32 -> float64" in text or \
           "argument x changed dtype" in text


def test_static_arguments_are_part_of_the_signature(caplog):
    @ht.function
    def scale(x, k):
        return x * k

    with caplog.at_level(logging.INFO, logger="hetero.tracing"):
        np.testing.assert_allclose(scale(np.ones(2, np.float32), 2.0).numpy(), [2, 2])
        np.testing.assert_allclose(scale(np.ones(2, np.float32), 3.0).numpy(), [3, 3])
    assert "argument k changed value 2.0 -> 3.0" in caplog.text


def test_many_traces_warn():
    @ht.function
    def f(x):
        return x + 1

    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        for n in range(1, 8):
            f(np.ones(n, np.float32))
    assert any("traced 6 times" in str(w.message) for w in rec)


def test_function_with_options_and_graph_without_running():
    ran = []

    @ht.function(name="my_model")
    def f(x):
        ran.append(1)
        return ops.exp(x)

    g = f.graph(rand(3))
    assert isinstance(g, ht.Graph) and g.name == "my_model"
    assert [n.op for n in g.nodes] == ["input", "exp"]
    assert len(ran) == 1  # traced once, nothing ran beyond tracing
    f(rand(3))
    assert len(ran) == 1


def test_python_control_flow_on_traced_value_is_a_clear_error():
    @ht.function
    def f(x):
        if x.sum() > 0:
            return x
        return -x

    with pytest.raises(ht.TraceError) as e:
        f(rand(3))
    msg = str(e.value)
    assert "test_tracing.py:" in msg and "ht.ops.where" in msg


def test_shape_mismatch_at_trace_time_names_user_line():
    @ht.function
    def f(x, w):
        return x @ w

    with pytest.raises(ht.ShapeError) as e:
        f(rand(2, 3), rand(4, 5))
    assert "matmul" in str(e.value) and "test_tracing.py:" in str(e.value)


def test_wrong_inputs_to_a_graph_are_refused_before_running():
    from hetero import reference

    g = ht.function(lambda x: x + 1).graph(rand(2))
    with pytest.raises(ht.ShapeError, match="must be f32\\[2\\], got f32\\[3\\]"):
        reference.run(g, [rand(3)])


def test_traced_value_escaping_is_an_error():
    leaked = []

    @ht.function
    def f(x):
        leaked.append(x)
        return x + 1

    f(rand(2))
    with pytest.raises(ht.TraceError, match="escaped"):
        ops.add(leaked[0], 1.0)


def test_structured_outputs():
    @ht.function
    def f(x):
        return {"a": x + 1, "b": (x * 2, x - 1)}

    out = f(np.ones(2, np.float32))
    np.testing.assert_array_equal(out["a"].numpy(), [2, 2])
    np.testing.assert_array_equal(out["b"][1].numpy(), [0, 0])
