"""CUDA copies, streams, events and memory limits of ``CudaDevice``.

Directions: host -> device (pageable and pinned), device -> host (pinned, and non-contiguous
device sources), device -> device (same GPU and, with two GPUs, peer). Ordering: work on one
stream is seen by another only through an event, and every such handoff here goes through one.
"""

from __future__ import annotations

import time

import numpy as np
import pytest

from hetero.errors import DeviceError, OutOfMemoryError
from hetero.graph import TensorSpec
from hetero.ops.registry import lookup

pytestmark = pytest.mark.gpu

DTYPES = [np.float32, np.float64, np.float16, np.int64, np.int8, np.bool_]
SHAPES = [(), (0,), (7,), (3, 5), (2, 3, 4, 5), (1024, 1025)]


def _array(shape, dtype) -> np.ndarray:
    rng = np.random.default_rng([len(shape), *shape, np.dtype(dtype).num])
    return (rng.standard_normal(shape) * 50).astype(dtype)


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_round_trip(shape, dtype, gpu):
    host = _array(shape, dtype)
    dev = gpu.from_host(host)
    assert gpu.owns(dev) and dev.shape == host.shape and dev.dtype == host.dtype
    back = gpu.to_host(dev)
    assert isinstance(back, np.ndarray)
    np.testing.assert_array_equal(back, host)


@pytest.mark.parametrize("pinned", [True, False], ids=["pinned", "pageable"])
def test_async_h2d_then_d2h(pinned, gpu):
    spec = TensorSpec((513, 257), np.float32)
    src = gpu.pinned_empty(spec) if pinned else np.empty(spec.shape, spec.dtype)
    src[...] = _array(spec.shape, np.float32)
    dst = gpu.empty(spec)
    gpu.copy_from_host(dst, src, gpu.h2d_stream)
    uploaded = gpu.h2d_stream.record()
    gpu.d2h_stream.wait(uploaded)
    out = gpu.pinned_empty(spec) if pinned else np.empty(spec.shape, spec.dtype)
    gpu.copy_to_host(out, dst, gpu.d2h_stream)
    done = gpu.d2h_stream.record()
    done.synchronize()
    assert done.query()
    np.testing.assert_array_equal(out, src)


def test_pinned_buffer_is_page_locked(gpu, cp):
    buf = gpu.pinned_empty(TensorSpec((16,), np.float32))
    assert isinstance(buf, np.ndarray) and buf.shape == (16,)
    attrs = cp.cuda.runtime.pointerGetAttributes(buf.ctypes.data)
    assert attrs.type == cp.cuda.runtime.memoryTypeHost


def test_d2h_of_a_non_contiguous_view(gpu):
    host = _array((6, 9), np.float64)
    view = gpu.from_host(host).T
    out = np.empty(view.shape, view.dtype)
    gpu.copy_to_host(out, view, gpu.d2h_stream)
    gpu.d2h_stream.synchronize()
    np.testing.assert_array_equal(out, host.T)


def test_device_to_device_same_gpu(gpu):
    host = _array((100, 3), np.float32)
    src = gpu.from_host(host)
    dst = gpu.empty(TensorSpec.of(host))
    gpu.copy_peer(dst, src, gpu.compute_stream)
    gpu.compute_stream.synchronize()
    np.testing.assert_array_equal(gpu.to_host(dst), host)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_0d_copy_from_host(dtype, gpu):
    """A 0-d value stays 0-d (np.ascontiguousarray would make it (1,) and the copy refuse)."""
    host = np.array(_array((), dtype))
    dst = gpu.empty(TensorSpec((), dtype))
    gpu.copy_from_host(dst, host, gpu.h2d_stream)
    gpu.h2d_stream.synchronize()
    assert gpu.to_host(dst).shape == () and gpu.to_host(dst) == host


def _produced_late(dev, shape):
    """A non-contiguous view whose values a long kernel chain on ``dev``'s compute stream
    writes last, and the event after that chain."""
    x = dev.empty(TensorSpec(shape, np.float32))

    def chain(a):
        a.fill(0)
        for _ in range(300):
            a += 1

    dev.compute_stream.launch(chain, x)
    return x[::2].T, dev.compute_stream.record()


def test_non_contiguous_copy_on_one_gpu_waits_for_its_producer(gpu):
    src, produced = _produced_late(gpu, (2048, 1024))
    dst = gpu.empty(TensorSpec(src.shape, np.float32))
    gpu.h2d_stream.wait(produced)
    gpu.copy_peer(dst, src, gpu.h2d_stream)
    gpu.h2d_stream.synchronize()
    assert np.all(gpu.to_host(dst) == 300)


def test_non_contiguous_peer_copy_waits_for_its_producer(cp):
    """The pack on the source GPU waits for the producer (through the copy stream), not on the
    legacy default stream, which does not wait for non-blocking streams."""
    from hetero.backends.cupy import CudaDevice

    if cp.cuda.runtime.getDeviceCount() < 2:
        pytest.skip("needs two CUDA devices")
    a, b = CudaDevice.from_index(0), CudaDevice.from_index(1)
    for _ in range(3):
        src, produced = _produced_late(a, (2048, 1024))
        dst = b.empty(TensorSpec(src.shape, np.float32))
        b.h2d_stream.wait(produced)
        b.copy_peer(dst, src, b.h2d_stream)
        del src  # the packed buffer must outlive the copy all the same
        b.h2d_stream.synchronize()
        assert np.all(b.to_host(dst) == 300)


def test_peer_copy_between_two_gpus(cp):
    from hetero.backends.cupy import CudaDevice

    if cp.cuda.runtime.getDeviceCount() < 2:
        pytest.skip("needs two CUDA devices")
    a, b = CudaDevice.from_index(0), CudaDevice.from_index(1)
    host = _array((257, 31), np.float32)
    src = a.from_host(host)
    dst = b.empty(TensorSpec.of(host))
    b.copy_peer(dst, src, b.h2d_stream)
    b.h2d_stream.synchronize()
    assert b.owns(dst) and not a.owns(dst)
    np.testing.assert_array_equal(b.to_host(dst), host)


def test_copy_shape_mismatch_is_a_device_error(gpu):
    dst = gpu.empty(TensorSpec((3, 4), np.float32))
    with pytest.raises(DeviceError, match="does not match"):
        gpu.copy_from_host(dst, np.zeros((4, 3), np.float32), gpu.h2d_stream)
    with pytest.raises(DeviceError, match="does not match"):
        gpu.copy_from_host(dst, np.zeros((3, 4), np.float64), gpu.h2d_stream)


def test_event_orders_compute_before_copy(gpu, cp):
    """A long chain of kernels on the compute stream, then a copy on the d2h stream that waits on
    an event recorded after the chain: the copy sees the final value."""
    spec = TensorSpec((1 << 22,), np.float32)
    x = gpu.empty(spec)

    def chain(x):
        x.fill(0)
        for _ in range(200):
            x += 1

    gpu.compute_stream.launch(chain, x)
    finished = gpu.compute_stream.record()
    gpu.d2h_stream.wait(finished)
    out = gpu.pinned_empty(spec)
    gpu.copy_to_host(out, x, gpu.d2h_stream)
    gpu.d2h_stream.synchronize()
    assert finished.query()
    assert np.all(out == 200)


def test_event_timing(gpu, cp):
    start = gpu.compute_stream.record(gpu.event(timing=True))
    gpu.compute_stream.launch(lambda: cp.ones((2048, 2048), np.float32).sum())
    end = gpu.compute_stream.record(gpu.event(timing=True))
    end.synchronize()
    assert start.query() and end.query()
    assert start.elapsed_ms(end) >= 0.0


SPIN = r"""
extern "C" __global__ void spin(long long cycles, int* done) {
    long long start = clock64();
    while (clock64() - start < cycles) { }
    *done = 1;
}
"""


def test_launch_returns_before_the_work_is_done(gpu, cp):
    """launch() enqueues: the host gets control back while a kernel that spins for about
    0.3 s still runs (the stream is not done), and synchronize() waits for it."""
    kernel = cp.RawKernel(SPIN, "spin")
    done = gpu.empty(TensorSpec((1,), np.int32))
    gpu.compute_stream.launch(kernel, (1,), (1,), (np.int64(0), done))  # compile it first
    gpu.compute_stream.synchronize()
    gpu.compute_stream.launch(done.fill, 0)
    cycles = np.int64(0.3 * 2.5e9)  # >= 0.12 s at any clock up to 2.5 GHz
    start = time.perf_counter()
    gpu.compute_stream.launch(kernel, (1,), (1,), (cycles, done))
    returned = time.perf_counter() - start
    still_running = not gpu.compute_stream.query()
    gpu.compute_stream.synchronize()
    finished = time.perf_counter() - start
    assert still_running, "the stream was done when launch() returned: launch waited"
    assert finished > 0.1 and returned < finished / 4, (returned, finished)
    assert gpu.compute_stream.query() and int(gpu.to_host(done)[0]) == 1


def test_run_kernel_refuses_host_arrays(gpu):
    op = lookup("relu")
    out = gpu.empty(TensorSpec((3,), np.float32))
    with pytest.raises(DeviceError, match="memory space 'host'"):
        gpu.run_kernel(op, [np.zeros(3, np.float32)], op.normalize_attrs({}), [out])


def test_allocation_past_capacity_raises(gpu):
    from hetero.backends.cupy import CudaDevice

    small = CudaDevice.from_index(0, capacity=gpu.allocated + (8 << 20))
    keep = small.empty(TensorSpec((1 << 20,), np.float32))  # 4 MiB fits
    with pytest.raises(OutOfMemoryError, match="gpu:0.*capacity"):
        small.empty(TensorSpec((4 << 20,), np.float32), label="conv_3 (conv2d)")
    with pytest.raises(OutOfMemoryError, match="conv_3"):
        small.empty(TensorSpec((4 << 20,), np.float32), label="conv_3 (conv2d)")
    del keep


def test_allocation_past_the_real_gpu_raises(gpu):
    """With the capacity check lifted, CuPy's own out-of-memory error becomes hetero's."""
    from hetero.backends.cupy import CudaDevice

    unlimited = CudaDevice.from_index(0, capacity=1 << 62)
    too_big = int(unlimited.specs["total_memory"]) * 2
    with pytest.raises(OutOfMemoryError, match="gpu:0 ran out of memory"):
        unlimited.empty(TensorSpec((too_big,), np.uint8))


def test_machine_detect_finds_the_gpu():
    import hetero

    machine = hetero.Machine.detect()
    gpus = [d for d in machine.devices if d.kind == "gpu" and d.backend == "cupy"]
    assert gpus, machine
    assert gpus[0].memory_space == "gpu:0" and gpus[0].capacity > 0
    assert set(gpus[0].peak_flops) >= {"matmul", "conv", "elementwise"}
