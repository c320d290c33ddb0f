"""Eager mode on a machine with a simulated GPU: ops really run on gpu:0, mixing devices copies
explicitly and obeys ht.config.transfer_guard, ht.ops.to_device moves on purpose."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import hetero as ht
from hetero.backends.sim import SimArray
from hetero.config import config
from hetero.devices import Machine, SimSpec
from hetero.errors import DeviceError, OutOfMemoryError, TransferGuardError

F32 = np.float32


@pytest.fixture(autouse=True)
def sim_machine():
    old_machine, old_guard = config._machine, config.transfer_guard
    config.machine = "cpu:2,sim:2"
    try:
        yield config.machine
    finally:
        config._machine = old_machine
        config.transfer_guard = old_guard


def _rand(*shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(F32)


def _on_gpu(t: ht.Tensor, name: str = "gpu:0") -> bool:
    return t.device == name and isinstance(t._data, SimArray) and t._data.memory_space == name


def test_device_scope_computes_on_the_simulated_gpu():
    x, w, b = _rand(4, 6), _rand(6, 3, seed=1), _rand(3, seed=2)
    with ht.device("gpu:0"):
        tx, tw, tb = ht.tensor(x), ht.tensor(w), ht.tensor(b)
        y = ht.ops.relu(tx @ tw + tb).sum(axis=1)
    assert _on_gpu(tx) and _on_gpu(y)
    np.testing.assert_allclose(y.numpy(), np.maximum(x @ w + b, 0).sum(axis=1), rtol=1e-5)
    assert type(y.numpy()) is np.ndarray


@pytest.mark.parametrize("name, fn, ref", [
    ("softmax", lambda t: ht.ops.softmax(t, axis=-1),
     lambda a: np.exp(a) / np.exp(a).sum(-1, keepdims=True)),
    ("transpose", lambda t: t.T, lambda a: a.T),
    ("reshape", lambda t: t.reshape(6, 4), lambda a: a.reshape(6, 4)),
    ("getitem", lambda t: t[1:, ::2], lambda a: a[1:, ::2]),
    ("scalar", lambda t: (t * 2.0 - 1.0) / 3.0, lambda a: (a * 2 - 1) / 3),
    ("mean", lambda t: t.mean(axis=0, keepdims=True), lambda a: a.mean(0, keepdims=True)),
    ("compare", lambda t: t > 0.5, lambda a: a > 0.5),
    ("tanh", lambda t: ht.ops.tanh(t), np.tanh),
])
def test_eager_ops_on_gpu_equal_numpy(name, fn, ref):
    a = _rand(4, 6)
    with ht.device("gpu:0"):
        out = fn(ht.tensor(a))
    assert _on_gpu(out), name
    np.testing.assert_allclose(out.numpy(), ref(a), rtol=1e-5, atol=1e-6)


def test_conv2d_on_gpu_equals_cpu():
    x, w = _rand(1, 3, 8, 8), _rand(4, 3, 3, 3, seed=3)
    cpu = ht.ops.conv2d(ht.tensor(x), ht.tensor(w), pads=(1, 1, 1, 1))
    with ht.device("gpu:1"):
        gpu = ht.ops.conv2d(ht.tensor(x), ht.tensor(w), pads=(1, 1, 1, 1))
    assert _on_gpu(gpu, "gpu:1") and cpu.device == "cpu:0"
    np.testing.assert_allclose(gpu.numpy(), cpu.numpy(), rtol=1e-5, atol=1e-5)


def test_ops_follow_their_inputs_device():
    g = ht.tensor(_rand(3), device="gpu:1")
    assert _on_gpu(ht.ops.exp(g), "gpu:1")
    assert _on_gpu(g + 1.0, "gpu:1")


def test_multi_output_op_on_gpu():
    a = _rand(6, 4)
    with ht.device("gpu:0"):
        parts = ht.ops.split(ht.tensor(a), axis=0, sizes=(2, 4))
    assert all(_on_gpu(p) for p in parts)
    np.testing.assert_array_equal(parts[1].numpy(), a[2:])


def test_mixing_devices_copies_when_allowed():
    config.transfer_guard = "allow"
    a, b = _rand(5), _rand(5, seed=1)
    ta, tb = ht.tensor(a), ht.tensor(b, device="gpu:0")
    s = ta + tb  # runs on the first input's device: cpu:0, tb is copied to the host
    assert s.device == "cpu:0" and type(s._data) is np.ndarray
    with ht.device("gpu:0"):
        t = ta * tb  # the scope wins: ta is copied to gpu:0
    assert _on_gpu(t)
    np.testing.assert_allclose(s.numpy(), a + b)
    np.testing.assert_allclose(t.numpy(), a * b)
    assert tb.device == "gpu:0" and ta.device == "cpu:0"  # operands stay where they were


def test_gpu_to_gpu_mixing_copies_over_the_peer_link():
    a = _rand(4)
    t0, t1 = ht.tensor(a, device="gpu:0"), ht.tensor(a, device="gpu:1")
    s = t1 + t0
    assert _on_gpu(s, "gpu:1")
    np.testing.assert_allclose(s.numpy(), 2 * a)


def test_transfer_guard_log(caplog):
    config.transfer_guard = "log"
    tb = ht.tensor(_rand(3), device="gpu:0")
    with caplog.at_level(logging.WARNING, logger="hetero.tracing"):
        ht.tensor(_rand(3)) - tb
    assert "implicit copy of f32[3] from gpu:0 to cpu:0" in caplog.text


def test_transfer_guard_disallow_blocks_implicit_but_not_explicit_moves():
    config.transfer_guard = "disallow"
    ta, tb = ht.tensor(_rand(3)), ht.tensor(_rand(3), device="gpu:0")
    with pytest.raises(TransferGuardError, match="implicit copy .* from gpu:0 to cpu:0.*to_device"):
        ta + tb
    s = ta + ht.ops.to_device(tb, "cpu:0")  # explicit: fine
    np.testing.assert_allclose(s.numpy(), ta.numpy() + tb.numpy())
    # CPU workers share the host memory space: no copy, so nothing to guard
    c1 = ht.tensor(_rand(3), device="cpu:1")
    assert (ta + c1).device == "cpu:0"


def test_to_device_moves_between_every_kind_of_space():
    a = _rand(2, 3)
    t = ht.tensor(a)
    g0 = ht.ops.to_device(t, "gpu:0")
    g1 = ht.ops.to_device(g0, "gpu:1")
    c1 = ht.ops.to_device(g1, "cpu:1")
    assert _on_gpu(g0) and _on_gpu(g1, "gpu:1") and c1.device == "cpu:1"
    np.testing.assert_array_equal(c1.numpy(), a)
    assert ht.ops.to_device(t, "cpu:0") is t
    assert ht.ops.to_device(t, "cpu:1")._data is t._data  # same space: same buffer
    assert _on_gpu(ht.ops.to_device(a, "gpu:0"))  # NumPy arrays and scalars too
    assert ht.ops.to_device(2.5, "gpu:0").numpy() == np.float32(2.5)
    with pytest.raises(DeviceError, match="not in this machine .*cpu:0, cpu:1, gpu:0, gpu:1"):
        ht.ops.to_device(t, "gpu:4")


def test_to_device_in_graph_mode_pins_an_identity_node():
    @ht.function
    def f(x):
        return ht.ops.to_device(x * 2, "gpu:1") + 1

    graph = f.graph(np.ones(3, F32))
    node = next(n for n in graph.nodes if n.op == "identity")
    assert node.device == "gpu:1" and node.soft is False


def test_unknown_device_in_scope_lists_the_machine():
    with pytest.raises(DeviceError, match="not in this machine .*cpu:0, cpu:1, gpu:0, gpu:1"):
        with ht.device("gpu:7"):
            ht.tensor([1.0, 2.0])


def test_eager_out_of_memory_on_a_small_gpu():
    config.machine = Machine.from_spec(cpus=1, sims=[SimSpec(capacity=1024)])
    small = ht.tensor(np.ones(64, F32), device="gpu:0")  # 256 bytes
    with pytest.raises(OutOfMemoryError, match="gpu:0: out of memory"):
        with ht.device("gpu:0"):
            ht.tensor(np.ones(1024, F32))
    assert _on_gpu(small + small)


@settings(max_examples=25, deadline=None)
@given(st.lists(st.sampled_from(["add", "mul", "sub", "relu", "neg", "abs"]), min_size=1,
                max_size=6),
       st.integers(1, 5), st.integers(1, 5), st.integers(0, 2**16))
def test_random_elementwise_chains_on_gpu_equal_numpy(ops, rows, cols, seed):
    a = np.random.default_rng(seed).standard_normal((rows, cols)).astype(F32)
    ref = a.copy()
    with ht.device("gpu:0"):
        t = ht.tensor(a)
        for name in ops:
            if name in ("add", "mul", "sub"):
                t = getattr(ht.ops, name)(t, t)
                ref = {"add": ref + ref, "mul": ref * ref, "sub": ref - ref}[name]
            else:
                t = getattr(ht.ops, name)(t)
                ref = {"relu": np.maximum(ref, 0), "neg": -ref, "abs": np.abs(ref)}[name]
    assert _on_gpu(t)
    np.testing.assert_allclose(t.numpy(), ref, rtol=1e-5, atol=1e-6)


def test_a_failing_kernel_on_the_gpu_names_the_op_and_source_line(monkeypatch):
    from hetero.errors import ExecutionError
    from hetero.ops.registry import lookup

    def broken(xp, ins, attrs, outs):
        raise FloatingPointError("bad value")

    monkeypatch.setitem(lookup("exp").kernels, "sim", broken)
    t = ht.tensor(_rand(3), device="gpu:0")
    with pytest.raises(ExecutionError,
                       match=r"exp \(exp, from test_eager_devices.py:\d+\) failed on gpu:0: "
                             r"FloatingPointError: bad value"):
        ht.ops.exp(t)
    monkeypatch.undo()  # the stream is not left poisoned: the next kernel runs
    np.testing.assert_allclose(ht.ops.exp(t).numpy(), np.exp(t.numpy()), rtol=1e-6)


def test_transfer_guard_covers_numpy_operands_of_gpu_ops():
    config.transfer_guard = "disallow"
    t = ht.tensor(_rand(3), device="gpu:0")
    with pytest.raises(TransferGuardError, match="NumPy array to gpu:0"):
        t + np.ones(3, F32)
    assert _on_gpu(t + 1.0) and _on_gpu(t * np.float32(2))  # scalars are not transfers
    assert (ht.tensor(_rand(3)) + np.ones(3, F32)).device == "cpu:0"  # host arrays on the host


def test_eager_gpu_memory_returns_when_tensors_go():
    import gc

    gpu = config.machine.device("gpu:0")
    gc.collect()
    before = gpu.allocated
    with ht.device("gpu:0"):
        x = ht.tensor(_rand(64, 64))
        y = ht.ops.relu(x @ x + 1.0).sum()
    assert gpu.allocated > before
    assert np.isfinite(y.numpy())
    del x, y
    gc.collect()
    assert gpu.allocated == before


def test_soft_scope_falls_back_where_its_device_is_missing(caplog):
    """A soft annotation is a preference: on a machine without that GPU, eager ops and new
    tensors stay on the CPU (logged); a hard one is an error naming the line; and
    ``config.strict_placement`` turns the fallback into a PlacementError."""
    from hetero.errors import PlacementError

    config.machine = "cpu:2"
    x = _rand(2, 3)
    with caplog.at_level(logging.INFO, logger="hetero.tracing"):
        with ht.device("gpu:0", soft=True):
            t = ht.tensor(x)
            y = ops_relu(t) * 2
    assert t.device == y.device == "cpu:0"
    np.testing.assert_allclose(y.numpy(), np.maximum(x, 0) * 2)
    assert "soft device gpu:0 is not in this machine" in caplog.text
    with pytest.raises(DeviceError, match=r"test_eager_devices.py:\d+.*gpu:0.*not in this"):
        with ht.device("gpu:0"):
            ht.tensor(x)
    config.strict_placement = True
    try:
        with pytest.raises(PlacementError, match="strict_placement"):
            with ht.device("gpu:0", soft=True):
                ops_relu(x)
    finally:
        config.strict_placement = False


def test_soft_scope_on_a_machine_with_the_gpu_uses_it(sim_machine):
    with ht.device("gpu:1", soft=True):
        y = ops_relu(ht.tensor(_rand(2, 2)))
    assert _on_gpu(y, "gpu:1")


def ops_relu(x):
    return ht.ops.relu(x)


def test_transfer_guard_from_the_environment():
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    code = ("import numpy as np, hetero as ht; ht.config.machine = 'cpu:1,sim:1'; "
            "print(ht.config.transfer_guard); x = ht.tensor(np.ones(2, np.float32)); "
            "g = ht.tensor(np.ones(2, np.float32), device='gpu:0'); g + x")
    env = {**os.environ, "HETERO_TRANSFER_GUARD": "disallow"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                          cwd=root)
    assert proc.stdout.strip() == "disallow"
    assert "TransferGuardError" in proc.stderr
    env["HETERO_TRANSFER_GUARD"] = "sometimes"
    proc = subprocess.run([sys.executable, "-c", "import hetero"], capture_output=True,
                          text=True, env=env, cwd=root)
    assert proc.returncode != 0 and "must be one of allow, log, disallow" in proc.stderr
