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



# ----------------------------------------------------------------------------------------------
# Python operators, eager and traced


def _ints(*shape, low=-7, high=8):
    return RNG.integers(low, high, shape).astype(np.int64)


OPERATORS = {
    "add": (lambda a, b: a + b, np.add),
    "radd": (lambda a, b: 2 + b, lambda a, b: 2 + b),
    "sub": (lambda a, b: a - b, np.subtract),
    "rsub": (lambda a, b: 1 - b, lambda a, b: 1 - b),
    "mul": (lambda a, b: a * b, np.multiply),
    "matmul": (lambda a, b: a @ b.T, lambda a, b: a @ b.T),
    "pow": (lambda a, b: abs(a) ** b, lambda a, b: np.abs(a) ** b),
    "rpow": (lambda a, b: 2 ** b, lambda a, b: 2.0 ** b),
    "truediv": (lambda a, b: a / b, np.true_divide),
    "rtruediv": (lambda a, b: 3 / b, lambda a, b: 3 / b),
    "floordiv": (lambda a, b: a // b, np.floor_divide),
    "rfloordiv": (lambda a, b: 5 // b, lambda a, b: 5 // b),
    "mod": (lambda a, b: a % b, np.mod),
    "rmod": (lambda a, b: 5 % b, lambda a, b: 5 % b),
    "eq": (lambda a, b: a == b, np.equal),
    "ne": (lambda a, b: a != b, np.not_equal),
    "gt": (lambda a, b: a > b, np.greater),
    "ge": (lambda a, b: a >= b, np.greater_equal),
    "lt": (lambda a, b: a < b, np.less),
    "le": (lambda a, b: a <= b, np.less_equal),
    "neg": (lambda a, b: -a, lambda a, b: -a),
    "abs": (lambda a, b: abs(a), lambda a, b: np.abs(a)),
    "bool_ops": (lambda a, b: ~(a > b) & (a != 0) | (b > 2) ^ (a < 0),
                 lambda a, b: ~(a > b) & (a != 0) | (b > 2) ^ (a < 0)),
}


# Integer pow and matmul are covered by the op tests (test_ops_elementwise, test_ops_linalg).
OPERATOR_CASES = [(name, dtype) for dtype in ("float32", "int64") for name in sorted(OPERATORS)
                  if not (dtype == "int64" and name in ("pow", "rpow", "matmul"))]


@pytest.mark.parametrize(("name", "dtype"), OPERATOR_CASES)
def test_python_operators_match_numpy_in_both_modes(name, dtype):
    """Every operator a Tensor defines gives NumPy's answer, eagerly and in a traced graph
    (integer ``/`` is true division, ``//`` and ``%`` round toward minus infinity)."""
    fn, ref = OPERATORS[name]
    if dtype == "int64":
        a, b = _ints(3, 4), _ints(3, 4, low=1, high=5) * np.where(_ints(3, 4) >= 0, 1, -1)
    else:
        a, b = rand(3, 4), rand(3, 4)
        b[np.abs(b) < 0.1] = 0.5  # no division by (almost) zero
    want = np.asarray(ref(a, b))
    eager = fn(ht.tensor(a, dtype=a.dtype), ht.tensor(b, dtype=b.dtype)).numpy()
    traced = ht.function(fn)(a, b).numpy()
    for got in (eager, traced):
        if dtype == "int64" and name in ("truediv", "rtruediv"):
            assert got.dtype == np.float32
        elif want.dtype == bool:
            assert got.dtype == bool
        np.testing.assert_allclose(got.astype(np.float64), want, rtol=2e-6, atol=1e-6)


def test_operators_refuse_what_is_not_array_like():
    t = ht.tensor([1.0, 2.0])
    with pytest.raises(TypeError):
        t + "a"  # noqa: B018
    with pytest.raises(TypeError):
        t * object()  # noqa: B018
    assert (t == None) is False  # noqa: E711  (Python's identity fallback)
    np.testing.assert_array_equal((t + [1, 1]).numpy(), [2, 3])
    assert (t + [1, 1]).dtype == np.float32


def test_numpy_float64_arrays_and_float_scalars_fit_the_tensor():
    t = ht.tensor(rand(2, 3))
    for out in (t + np.ones((2, 3)), np.ones((2, 3)) + t, t @ np.ones((3, 2))):
        assert out.dtype == np.float32
    i = ht.tensor([1, 2, 3])
    np.testing.assert_allclose((i * 0.5).numpy(), [0.5, 1.0, 1.5])
    np.testing.assert_allclose((i / 2).numpy(), [0.5, 1.0, 1.5])
    assert (i // 2).dtype == np.int64 and (i + 1).dtype == np.int64


def test_repr_of_empty_tensor_shows_its_shape():
    assert "shape=(2, 0)" in repr(ht.tensor(np.zeros((2, 0), np.float32)))
    assert "shape" not in repr(ht.tensor([1.0]))


# ----------------------------------------------------------------------------------------------
# @function calling conventions


def test_function_takes_keywords_defaults_and_varargs(caplog):
    @ht.function
    def f(x, w, *rest, scale=2.0, **named):
        out = (x @ w) * scale
        for r in rest:
            out = out + r
        for key in sorted(named):
            out = out - named[key]
        return out

    x, w, r = rand(2, 3), rand(3, 4), rand(4)
    want = (x @ w) * 2.0 + r - 1.0
    np.testing.assert_allclose(f(x, w, r, bias=np.ones(4, np.float32)).numpy(), want,
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(f(w=w, x=x).numpy(), (x @ w) * 2.0, rtol=1e-5, atol=1e-6)
    assert f.trace_count == 2
    f(x=x, w=w)  # the same signature as f(w=w, x=x)
    assert f.trace_count == 2
    with caplog.at_level(logging.INFO, logger="hetero.tracing"):
        np.testing.assert_allclose(f(x, w, scale=3.0).numpy(), (x @ w) * 3.0, rtol=1e-5,
                                   atol=1e-6)
    assert "argument scale changed value 2.0 -> 3.0" in caplog.text
    g = f.graph(x, w, r)
    assert [n.name for n in g.nodes if n.op == "input"] == ["x", "w", "rest_0"]
    with pytest.raises(TypeError):
        f(x)  # missing w: Python's own error


def test_function_called_inside_another_is_inlined():
    @ht.function
    def inner(x):
        return ops.relu(x) * 2

    @ht.function
    def outer(x):
        return inner(x) + 1

    x = rand(3, 4)
    g = outer.graph(x)
    assert [n.op for n in g.nodes if n.op not in ("input", "constant")] == ["relu", "mul", "add"]
    np.testing.assert_allclose(outer(x).numpy(), np.maximum(x, 0) * 2 + 1, rtol=1e-6)


def test_many_traces_warn_at_the_callers_line():
    @ht.function
    def f(x):
        return x + 1

    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        for n in range(1, 8):
            f(np.ones(n, np.float32))
    hits = [w for w in rec if "traced 6 times" in str(w.message)]
    assert hits and hits[0].filename == __file__


def test_retrace_on_a_device_change_says_so(caplog):
    from hetero.config import config

    old = config._machine
    config.machine = "cpu:2,sim:1"
    try:
        @ht.function
        def f(x):
            return x * 2

        x = rand(2, 2)
        f(ht.tensor(x))
        with caplog.at_level(logging.INFO, logger="hetero.tracing"):
            out = f(ht.tensor(x, device="gpu:0"))
        assert "argument x changed device cpu:0 -> gpu:0" in caplog.text
        assert f.trace_count == 2
        np.testing.assert_allclose(out.numpy(), 2 * x)
    finally:
        config._machine = old


def test_bad_device_argument_names_the_op_and_line():
    with pytest.raises(ht.DeviceError, match=r"relu \(relu, from test_tracing.py:\d+\).*tpu:0"):
        ops.relu(rand(2), device="tpu:0")


def test_numpy_scalars_are_graph_inputs_not_static_values():
    @ht.function
    def f(x, k):
        return x * k

    x = rand(3)
    np.testing.assert_allclose(f(x, np.float32(2)).numpy(), 2 * x)
    np.testing.assert_allclose(f(x, np.float32(3)).numpy(), 3 * x)
    assert f.trace_count == 1  # a new value of a 0-d input does not retrace
    assert [n.name for n in f.graph(x, np.float32(1)).nodes if n.op == "input"] == ["x", "k"]


def test_float64_numpy_weights_fit_a_float32_tensor_in_every_op():
    x = ht.tensor(rand(1, 3, 6, 6))
    w = np.random.default_rng(1).standard_normal((4, 3, 3, 3))  # float64, as NumPy makes them
    out = ops.conv2d(x, w, pads=(1, 1, 1, 1))
    assert out.dtype == np.float32 and out.shape == (1, 4, 6, 6)
    want = ops.conv2d(x, w.astype(np.float32), pads=(1, 1, 1, 1)).numpy()
    np.testing.assert_array_equal(out.numpy(), want)
    g = ht.function(lambda t: ops.concat(t, np.zeros((1, 3, 6, 6)), axis=0)).graph(x)
    assert g.output_specs[0] == ht.TensorSpec((2, 3, 6, 6), np.float32)
    # integer arrays (indices) keep their dtype
    assert ops.gather(x, np.array([2, 0]), axis=1).shape == (1, 2, 6, 6)


def test_import_hetero_is_light():
    """``import hetero`` and an eager op load NumPy and networkx only: none of the optional
    libraries, no later stage of the pipeline. Graph mode loads the pipeline and the compiled
    CPU kernels (numba, and only what numba itself loads), never another extra."""
    import subprocess
    import sys
    from pathlib import Path

    extras = "'cupy', 'cupyx', 'cuda', 'onnx', 'onnxruntime', 'dask', 'scipy'"
    stages = "'threadpoolctl', 'hetero.onnx', 'hetero.executor', 'hetero.compiler'"
    eager = ("import sys, numpy as np, hetero as ht; "
             "t = ht.tensor(np.ones((2, 2), np.float32)); (t @ t + 1).numpy(); "
             f"print(sorted(m for m in ({extras}, {stages}) if m in sys.modules))")
    graph = ("import sys, numpy as np, hetero as ht; "
             "ht.function(lambda x: ht.ops.relu(x) * 2)(np.ones(3, np.float32)); "
             f"print(sorted(m for m in ({extras},) if m in sys.modules))")
    # graph mode runs the plan on a CPU worker, whose compiled kernels import numba (the "cpu"
    # extra), and numba imports what it imports (SciPy where installed): those may be loaded
    numba_brings = subprocess.run(
        [sys.executable, "-c", "import sys\ntry:\n    import numba\nexcept ImportError:\n"
         f"    pass\nprint(sorted(m for m in ({extras},) if m in sys.modules))"],
        capture_output=True, text=True, check=True).stdout.strip()
    for code, allowed in ((eager, "[]"), (graph, numba_brings)):
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             check=True, cwd=Path(__file__).resolve().parents[1])
        assert out.stdout.strip() == allowed, out.stdout + out.stderr


def test_device_none_clears_the_scope_and_devices_work_as_names():
    machine = ht.Machine.parse("cpu:2,sim:1")

    @ht.function
    def f(x):
        with ht.device(machine.device("gpu:0"), soft=True):
            a = ops.relu(x)
            with ht.device(None):
                b = ops.exp(a)
            c = ops.tanh(b, device=machine.device("cpu:1"))
        return c

    by_op = {n.op: n for n in f.graph(rand(2)).nodes}
    assert (by_op["relu"].device, by_op["relu"].soft) == ("gpu:0", True)
    assert (by_op["exp"].device, by_op["exp"].soft) == (None, False)
    assert (by_op["tanh"].device, by_op["tanh"].soft) == ("cpu:1", False)


def test_function_compiles_for_a_configured_machine(monkeypatch):
    """With ``ht.config.machine`` set by the user, graph mode places the graph on that machine
    and runs the plan (device annotations take effect); without one it compiles for this host."""
    import hetero.pipeline as pipeline
    from hetero.config import config

    compiled = []
    real = pipeline.compile_graph

    def spy(graph, **kwargs):
        plan = real(graph, **kwargs)
        compiled.append(plan)
        return plan

    monkeypatch.setattr(pipeline, "compile_graph", spy)

    def fn(x, w):
        with ht.device("gpu:0"):
            h = ops.relu(x @ w)
        return h.sum(axis=1)

    x, w = rand(4, 8), rand(8, 3)
    want = np.maximum(x @ w, 0).sum(axis=1)
    old = config._machine
    try:
        config.machine = "cpu:2,sim:1"
        np.testing.assert_allclose(ht.function(fn)(x, w).numpy(), want, rtol=1e-5, atol=1e-5)
        assert len(compiled) == 1
        plan = compiled[0]
        placed = {plan.graph.node(n).op: d for d, q in plan.queues.items() for n in q}
        assert placed["matmul"] == "gpu:0" and placed["relu"] == "gpu:0"
        config._machine = None
        np.testing.assert_allclose(ht.function(lambda a: a * 2)(x).numpy(), 2 * x)
        assert len(compiled) == 2  # no machine set: compiled for this host, CPU only
        assert {d for d, q in compiled[1].queues.items() if q} <= {"cpu:0", "cpu:1"}
    finally:
        config._machine = old


def test_a_numpy_weight_used_twice_is_one_constant():
    w = rand(4, 4)

    def fn(x):
        h = x @ w
        h = ops.relu(h) @ w
        return h + w[0]

    g = ht.function(fn).graph(rand(2, 4))
    consts = [n for n in g.nodes if n.op == "constant"]
    assert sum(n.outputs[0].shape == (4, 4) for n in consts) == 1
    x = rand(2, 4)
    np.testing.assert_allclose(ht.function(fn)(x).numpy(), fn(ht.tensor(x)).numpy(), rtol=1e-5)

    v = rand(4)

    def mutating(x):
        a = x * v
        v[0] += 1.0  # changed between two uses: the second use is a constant of its own
        return a + x * v

    v0 = v.copy()
    out = ht.function(mutating)(x)
    v1 = v0.copy()
    v1[0] += 1.0
    np.testing.assert_allclose(out.numpy(), x * v0 + x * v1, rtol=1e-5)


def test_tensor_methods_flatten_squeeze_to():
    x = rand(2, 1, 3)
    for fn, ref in ((lambda t: t.flatten(), lambda a: a.flatten()),
                    (lambda t: t.squeeze(), lambda a: a.squeeze()),
                    (lambda t: t.squeeze(1), lambda a: a.squeeze(1)),
                    (lambda t: t.T.transpose(2, 0, 1), lambda a: a.T.transpose(2, 0, 1))):
        np.testing.assert_array_equal(fn(ht.tensor(x)).numpy(), ref(x))
        np.testing.assert_array_equal(ht.function(fn)(x).numpy(), ref(x))
    from hetero.config import config

    old = config._machine
    try:
        config.machine = "cpu:2,sim:1"
        moved = ht.tensor(x).to(config.machine.device("gpu:0"))
        assert moved.device == "gpu:0"
        np.testing.assert_array_equal(moved.numpy(), x)
    finally:
        config._machine = old


# ----------------------------------------------------------------------------------------------
# Hostile inputs: a HeteroError naming the op and the user's line, never a NumPy error


@pytest.mark.parametrize("data", [np.ones(3, np.complex64), np.array([1, "a"], dtype=object),
                                  np.array(["a"]), None, [[1, 2], [3]]])
def test_tensor_refuses_unsupported_data(data):
    with pytest.raises(ht.ShapeError, match="test_tracing.py"):
        ht.tensor(data)


@pytest.mark.parametrize("other", [np.ones(3, np.complex64), None, "a", {"a": 1}, object()])
def test_ops_refuse_unsupported_operands_eager_and_traced(other):
    x = ht.tensor(np.ones(3, np.float32))
    with pytest.raises(ht.ShapeError, match=r"add \(add, from test_tracing.py:\d+\)"):
        apply("add", [x, other])

    @ht.function
    def f(a):
        return apply("add", [a, other])

    with pytest.raises(ht.ShapeError, match=r"add_?\d* \(add, from test_tracing.py:\d+\)"):
        f.graph(np.ones(3, np.float32))


def test_huge_eager_output_is_an_out_of_memory_error():
    x = ht.tensor(np.ones((1, 1), np.float32))
    with pytest.raises(ht.OutOfMemoryError, match=r"expand \(expand, from test_tracing.py"):
        ops.expand(x, (10**6, 10**6))
    with pytest.raises(ht.OutOfMemoryError, match="tile"):
        ops.tile(ht.tensor(np.ones((10, 10), np.float32)), (10**5, 10**5))
    with pytest.raises(ht.ShapeError, match=r"tile \(tile, from test_tracing.py:\d+\): a "
                                            r"f32\[10000000000,10000000000\] tensor would be "
                                            r".* more than any machine can address"):
        ops.tile(ht.tensor(np.ones((10, 10), np.float32)), (10**9, 10**9))


def test_non_contiguous_and_read_only_inputs_compute_correctly():
    a = np.arange(24, dtype=np.float32).reshape(4, 6)[:, ::2]
    ro = np.arange(12, dtype=np.float32).reshape(4, 3)
    ro.setflags(write=False)
    np.testing.assert_array_equal(ops.add(ht.tensor(a), ro).numpy(), a + ro)
    np.testing.assert_array_equal((ht.tensor(ro) @ a.T).numpy(), ro @ a.T)


@pytest.mark.parametrize("bad", [3, "f", [lambda x: x]])
def test_function_refuses_non_callables(bad):
    with pytest.raises(ht.TraceError, match="decorates a function"):
        ht.function(bad)
    with pytest.raises(ht.TraceError, match="decorates a function"):
        ht.function(machine="cpu:1")(bad)


def test_bad_scopes_name_the_user_line():
    with pytest.raises(ht.DeviceError, match=r"ht.device \(from test_tracing.py:\d+\): unknown"):
        with ht.device("tpu:0"):
            pass
    with pytest.raises(ht.HeteroError, match=r"ht.colocate \(from test_tracing.py:\d+\)"):
        with ht.colocate(""):
            pass


@pytest.mark.parametrize("zero", [0, 0.0, np.float32(0), np.float64(0), np.int64(0),
                                  np.array(0.0), np.array(0, np.int32)],
                         ids=lambda z: type(z).__name__ + str(getattr(z, "dtype", "")))
def test_numpy_scalars_promote_like_python_scalars(zero):
    """Issue 13.8: ops.where(x > 0, x, np.float32(0)) was a ShapeError (bool, float32)."""
    from hetero import ops

    data = np.array([[-1.0, 2.0], [3.0, -4.0]], np.float32)
    want = np.where(data > 0, data, 0).astype(np.float32)
    x = ht.tensor(data)
    for got in (ops.where(x > 0, x, zero), ops.where(x <= 0, zero, x),
                ht.function(lambda t: ops.where(t > 0, t, zero))(data)):
        assert got.dtype == np.float32
        np.testing.assert_array_equal(got.numpy(), want)
    assert (x * (zero + 2)).dtype == np.float32
    ints = ht.tensor(np.array([1, 2], np.int32))
    assert (ints * np.float32(0.5)).dtype == np.float32  # a float scalar makes ints float
    assert (ints + np.int64(1)).dtype == np.int32  # an int scalar takes the tensor's width


@pytest.mark.parametrize("machine", ["cpu:1", "cpu:2,sim:1"])
def test_big_endian_inputs_and_weights_are_converted(machine):
    """Issue 13.9: a big-endian input array was refused with "must be f32[4,5], got f32[4,5]"."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 5)).astype(">f4")
    w = rng.standard_normal((5, 3)).astype(">f4")
    want = np.maximum(x.astype(np.float32) @ w.astype(np.float32), 0)
    f = ht.function(lambda x: ops.relu(x @ w))
    np.testing.assert_allclose(f(x).numpy(), want, rtol=1e-6)
    plan = ht.compile(f.graph(x.astype(np.float32)), machine,
                      policy="gpu" if "sim" in machine else "heft")
    (got,) = plan.run(x)
    assert got.dtype == np.float32 and got.dtype.isnative
    np.testing.assert_allclose(got, want, rtol=1e-6)
    assert ht.tensor(x).numpy().dtype.isnative
    assert ht.TensorSpec((4, 5), ">f4") == ht.TensorSpec((4, 5), np.float32)
