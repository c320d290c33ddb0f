"""Eager mode on a real CUDA GPU: inside ``ht.device("gpu:0")`` ops compute on the GPU (CuPy
buffers), mixing devices copies explicitly under ``ht.config.transfer_guard``, ``to_device``
moves on purpose, and graph mode retraces on a device change. The same checks run on the
simulated GPU in tests/test_eager_devices.py; here the machine is the detected one.
"""

from __future__ import annotations

import logging

import numpy as np
import pytest

import hetero as ht
from hetero.config import config

pytestmark = pytest.mark.gpu

RNG = np.random.default_rng(7)


def _rand(*shape):
    return RNG.standard_normal(shape).astype(np.float32)


def _on_cuda(t: ht.Tensor, name: str = "gpu:0") -> bool:
    return t.device == name and (type(t._data).__module__ or "").startswith("cupy")


@pytest.fixture(autouse=True)
def detected_machine():
    old_machine, old_guard = config._machine, config.transfer_guard
    config.machine = ht.Machine.detect()
    try:
        yield config.machine
    finally:
        config._machine = old_machine
        config.transfer_guard = old_guard


def test_ops_in_a_gpu_scope_compute_on_the_gpu():
    x, w = _rand(16, 32), _rand(32, 8)
    with ht.device("gpu:0"):
        tx = ht.tensor(x)
        y = ht.ops.relu(tx @ w + 1.0)
        s = ht.ops.softmax(y, axis=-1).sum(axis=0)
    assert _on_cuda(tx) and _on_cuda(y) and _on_cuda(s)
    np.testing.assert_allclose(y.numpy(), np.maximum(x @ w + 1, 0), rtol=1e-4, atol=1e-4)
    e = np.exp(y.numpy() - y.numpy().max(axis=-1, keepdims=True))
    np.testing.assert_allclose(s.numpy(), (e / e.sum(axis=-1, keepdims=True)).sum(axis=0),
                               rtol=1e-4, atol=1e-5)
    assert "device='gpu:0'" in repr(y)


def test_conv_and_pooling_in_eager_mode_equal_the_cpu():
    x, w, b = _rand(2, 3, 12, 12), _rand(8, 3, 3, 3), _rand(8)

    def net(x):
        h = ht.ops.relu(ht.ops.conv2d(x, w, b, pads=(1, 1, 1, 1)))
        return ht.ops.global_avg_pool(ht.ops.max_pool2d(h, kernel_shape=(2, 2), strides=(2, 2)))

    cpu = net(ht.tensor(x))
    with ht.device("gpu:0"):
        gpu = net(ht.tensor(x))
    assert _on_cuda(gpu) and cpu.device == "cpu:0"
    # cuDNN may use TF32 for float32 convolutions
    np.testing.assert_allclose(gpu.numpy(), cpu.numpy(), rtol=5e-3, atol=5e-3)


def test_mixing_devices_follows_the_transfer_guard(caplog):
    a = ht.tensor(_rand(4, 4))
    with ht.device("gpu:0"):
        b = ht.tensor(_rand(4, 4))
    out = b + a  # a is uploaded implicitly
    assert _on_cuda(out)
    np.testing.assert_allclose(out.numpy(), b.numpy() + a.numpy(), rtol=1e-6)
    config.transfer_guard = "log"
    with caplog.at_level(logging.WARNING, logger="hetero.tracing"):
        b + a  # noqa: B018
    assert "implicit copy of f32[4,4] from cpu:0 to gpu:0" in caplog.text
    config.transfer_guard = "disallow"
    with pytest.raises(ht.TransferGuardError, match="cpu:0 to gpu:0"):
        b + a  # noqa: B018
    moved = ht.ops.to_device(a, "gpu:0")  # explicit: allowed under "disallow"
    assert _on_cuda(moved)
    np.testing.assert_array_equal((b + moved).numpy(), b.numpy() + a.numpy())
    back = ht.ops.to_device(b + moved, "cpu:0")
    assert back.device == "cpu:0" and isinstance(back._data, np.ndarray)


def test_function_retraces_when_an_input_moves_to_the_gpu(caplog):
    @ht.function
    def f(x):
        return ht.ops.tanh(x) * 2

    x = _rand(3, 5)
    f(ht.tensor(x))
    with caplog.at_level(logging.INFO, logger="hetero.tracing"):
        out = f(ht.tensor(x, device="gpu:0"))
    assert "argument x changed device cpu:0 -> gpu:0" in caplog.text
    np.testing.assert_allclose(out.numpy(), np.tanh(x) * 2, rtol=1e-5, atol=1e-6)


def test_eager_out_of_memory_is_a_hetero_error():
    """An output larger than the card (from two small inputs, broadcast) raises
    OutOfMemoryError before anything is written; the GPU stays usable."""
    gpu = config.machine.device("gpu:0")
    n = int(np.sqrt(gpu.capacity / 4)) + 1024  # n * n float32 is past the card's memory
    with ht.device("gpu:0"):
        col, row = ht.tensor(np.zeros((n, 1), np.float32)), ht.tensor(np.zeros((1, n), np.float32))
        with pytest.raises(ht.OutOfMemoryError):
            col + row  # noqa: B018
        np.testing.assert_array_equal((col[:2] + row[:, :3]).numpy(), np.zeros((2, 3)))
