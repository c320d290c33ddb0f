"""The CUDA backend: a ``CudaDevice`` per GPU, its streams and events, and GPU-only kernels.

Design:

- ``CudaDevice`` is a ``hetero.devices.Device`` (kind "gpu", backend "cupy", memory space
  "gpu:N"). Buffers come from CuPy's memory pool; an allocation that would take the pool past the
  device's ``capacity`` raises hetero's ``OutOfMemoryError`` naming the device (and the node, when
  the caller passes its label), and so does CuPy's own out-of-memory error.
- Each device owns three non-blocking CuPy streams: ``compute_stream`` for kernels and
  ``h2d_stream`` / ``d2h_stream`` for copies, so copies overlap compute. Cross-stream order is
  expressed only by ``Event`` objects (``stream.record()`` then ``other.wait(event)``).
  ``Stream.launch(fn, *args)`` calls ``fn`` with the stream made current, so every CuPy call, cuBLAS
  call, cuDNN graph and raw kernel that ``fn`` issues is enqueued on it; it returns without waiting.
- Copies are ``cudaMemcpyAsync`` / ``cudaMemcpyPeerAsync`` on the stream given; they are truly
  asynchronous when the host side comes from ``pinned_empty``.
- Kernels: every op has the shared array-namespace kernel (run with ``xp = cupy``). When this
  module loads, ``register_kernels()`` puts faster CUDA kernels into ``Op.kernels["cupy"]`` for the
  ops that exist in the registry: ``gemm``/``matmul`` through cuBLAS (``cupy.cublas.gemm``),
  ``conv2d`` and ``batch_norm`` through cuDNN's graph API (``nvidia-cudnn-frontend``, ``import
  cudnn``), and the CUDA C kernels in ``hetero/kernels/*.cu`` (compiled at run time by NVRTC through
  ``cupy.RawModule``) for what neither library has: the fused bias+activation epilogue (also exact
  ``gelu`` and ``erf``), ONNX ``lrn``, max/average pooling, and a one-pass-per-row
  ``softmax``/``log_softmax`` (the installed cuDNN frontend has no pooling or softmax node). Each
  override checks what it supports (dtype, layout, attributes) and otherwise calls the shared
  kernel; a cuDNN graph that cuDNN refuses is remembered in ``CUDNN_FALLBACKS`` (with the reason,
  warned once) and that shape runs on the shared im2col + cuBLAS kernel from then on.
- Every ``.cu`` kernel has a NumPy float64 twin here (``ref_bias_act``, ``ref_lrn``,
  ``ref_pool2d``, ``ref_softmax``) so its logic is tested on the CPU; tests/gpu compares the two
  on a GPU.

Nothing here imports CuPy at module import time: ``import hetero.backends.cupy`` works without it,
and only constructing a device or running a kernel needs it.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.resources
import math
import threading
import warnings
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from hetero.devices import Device
from hetero.devices import Event as _EventBase
from hetero.devices import Stream as _StreamBase
from hetero.errors import DeviceError, ExecutionError, OutOfMemoryError, UnknownOpError
from hetero.ops.registry import lookup

__all__ = [
    "ACTIVATIONS",
    "CUDNN_COUNTS",
    "CUDNN_FALLBACKS",
    "CudaDevice",
    "Event",
    "Stream",
    "batch_norm_graph",
    "bias_act",
    "channels_last",
    "channels_last_strides",
    "conv2d_graph",
    "cuda_device_count",
    "cudnn_report",
    "cudnn_unavailable",
    "cudnn_version",
    "format_cudnn_version",
    "host_contiguous",
    "kernel_source",
    "kernel_sources",
    "lrn",
    "pool2d",
    "ref_bias_act",
    "ref_lrn",
    "ref_pool2d",
    "ref_softmax",
    "register_kernels",
    "softmax",
]

#: Activation codes of kernels/bias_act.cu (keep in sync with the switch there).
ACTIVATIONS = {
    "none": 0, "identity": 0, "relu": 1, "leaky_relu": 2, "sigmoid": 3, "tanh": 4,
    "gelu": 5, "gelu_tanh": 6, "erf": 7, "clip": 8,
}

#: cuDNN graphs that cuDNN refused, or could not run because cuDNN is missing: key -> reason.
#: Those shapes run on the shared kernel.
CUDNN_FALLBACKS: dict[tuple, str] = {}
#: Since the process started: "executed" (cuDNN graphs run), "fallback" (calls meant for cuDNN
#: that ran on the shared kernel instead). ``cudnn_report()`` reads both; the profile shows them.
CUDNN_COUNTS: Counter[str] = Counter()

_BLOCK = 256
_MAX_GRID = 1 << 16  # grid-stride loops: more blocks than this buys nothing
_KERNEL_FILES = ("bias_act.cu", "lrn.cu", "pool2d.cu", "softmax.cu")


# ----------------------------------------------------------------------------------------------
# Lazy imports


def _cupy():
    try:
        import cupy
    except ImportError as exc:  # pragma: no cover - depends on the machine
        raise DeviceError("the CUDA backend needs CuPy: pip install 'hetero[gpu]' "
                          "(or cupy-cuda12x for a CUDA 12 driver)") from exc
    return cupy


def cuda_device_count() -> int:
    """Number of CUDA devices CuPy sees; 0 (never an error) without CuPy or a driver."""
    try:
        import cupy

        return int(cupy.cuda.runtime.getDeviceCount())
    except Exception:
        return 0


# ----------------------------------------------------------------------------------------------
# Streams and events


def host_contiguous(array: Any) -> np.ndarray:
    """``array`` as a C-contiguous NumPy array of the same shape, copied only when needed.

    ``np.ascontiguousarray`` returns at least one dimension, so a 0-d value would arrive on the
    device as shape (1,) and no longer match its 0-d destination.
    """
    host = np.asarray(array)
    return host if host.flags.c_contiguous else np.ascontiguousarray(host)


def _cuda_failure(what: str, exc: BaseException) -> ExecutionError:
    err = ExecutionError(f"{what} failed: {type(exc).__name__}: {exc}")
    err.__cause__ = exc
    return err


class Event(_EventBase):
    """A CUDA event: a point in one stream's work that other streams or the host can wait for."""

    __slots__ = ("_event", "device_index")

    def __init__(self, device_index: int, *, timing: bool = False) -> None:
        cp = _cupy()
        with cp.cuda.Device(device_index):
            # block=True: a host thread waiting on it sleeps instead of spinning, which would
            # take a core from the CPU workers that run beside the GPU threads
            self._event = cp.cuda.Event(block=True, disable_timing=not timing)
        self.device_index = device_index

    def record(self, stream: Stream) -> Event:
        """Mark the current end of ``stream``'s queue; returns self."""
        self._event.record(stream.raw)
        return self

    def synchronize(self) -> None:
        """Block the host until the work before the recorded point has finished; a CUDA error
        from that work becomes an ExecutionError."""
        try:
            self._event.synchronize()
        except _cupy().cuda.runtime.CUDARuntimeError as exc:
            raise _cuda_failure(f"work before an event on gpu:{self.device_index}", exc) from None

    def query(self) -> bool:
        """Has the work before the recorded point finished? (Never blocks.)"""
        return bool(self._event.done)

    def elapsed_ms(self, later: Event) -> float:
        """Milliseconds between this event and ``later`` (both created with ``timing=True``)."""
        return float(_cupy().cuda.get_elapsed_time(self._event, later._event))

    @property
    def raw(self):
        return self._event


class Stream(_StreamBase):
    """A non-blocking CUDA stream of one device.

    ``launch(fn, *args)`` makes this stream (and its device) current and calls ``fn``, so all GPU
    work ``fn`` issues is enqueued here; the host does not wait for it.
    """

    __slots__ = ("_stream", "device_index", "name")

    def __init__(self, device_index: int, name: str = "") -> None:
        cp = _cupy()
        with cp.cuda.Device(device_index):
            self._stream = cp.cuda.Stream(non_blocking=True)
        self.device_index = device_index
        self.name = name

    @property
    def raw(self):
        """The ``cupy.cuda.Stream``."""
        return self._stream

    @property
    def ptr(self) -> int:
        return int(self._stream.ptr)

    def launch(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Enqueue the GPU work of ``fn(*args)`` on this stream; returns what ``fn`` returns."""
        cp = _cupy()
        with cp.cuda.Device(self.device_index), self._stream:
            return fn(*args)

    def record(self, event: Event | None = None) -> Event:
        """Record an event at the current end of this stream (a new one unless given)."""
        event = event if event is not None else Event(self.device_index)
        return event.record(self)

    def wait(self, event: Event) -> None:
        """Make this stream's later work wait for ``event`` (the host does not block)."""
        self._stream.wait_event(event.raw)

    def synchronize(self) -> None:
        """Block the host until everything enqueued on this stream has finished; a CUDA error
        from that work becomes an ExecutionError."""
        try:
            # through a blocking-sync event: the host sleeps rather than spins
            Event(self.device_index).record(self)._event.synchronize()
        except _cupy().cuda.runtime.CUDARuntimeError as exc:
            raise _cuda_failure(f"work on gpu:{self.device_index} ({self.name} stream)",
                                exc) from None

    def query(self) -> bool:
        """Has everything enqueued on this stream finished? (Never blocks.)"""
        return bool(self._stream.done)

    def __repr__(self) -> str:
        return f"Stream(gpu:{self.device_index} {self.name})"


_PACK_STREAMS: dict[int, Stream] = {}
_PACK_LOCK = threading.Lock()


def _pack_stream(device_index: int) -> Stream:
    """The stream of GPU ``device_index`` that packs non-contiguous sources of peer copies."""
    with _PACK_LOCK:
        stream = _PACK_STREAMS.get(device_index)
        if stream is None:
            stream = _PACK_STREAMS[device_index] = Stream(device_index, "pack")
        return stream


# ----------------------------------------------------------------------------------------------
# The device


def _rough_rates(props: dict, cc: tuple[int, int]) -> tuple[dict[str, float], float]:
    """Roofline figures from the device properties: FP32 FLOP/s per op class, bytes/s.

    CUDA 13 dropped the clock fields from cudaDeviceProp; where they are missing we assume
    1.7 GHz and 2 TB/s, which is the right order for the data-centre GPUs this targets.
    """
    sms = int(props.get("multiProcessorCount", 1) or 1)
    cores_per_sm = {6: 64, 7: 64, 8: 64 if cc[1] == 0 else 128}.get(cc[0], 128)
    clock_hz = float(props.get("clockRate", 0) or 0) * 1e3 or 1.7e9
    fp32 = 2.0 * sms * cores_per_sm * clock_hz
    mem_clock = float(props.get("memoryClockRate", 0) or 0) * 1e3
    bus_bits = float(props.get("memoryBusWidth", 0) or 0)
    bandwidth = 2.0 * mem_clock * bus_bits / 8.0 if mem_clock and bus_bits else 2.0e12
    # cuBLAS/cuDNN use TF32 tensor cores for float32 convolutions on Ampere and later.
    dense = fp32 * (4.0 if cc[0] >= 8 else 1.0)
    rates = {"elementwise": fp32, "matmul": dense, "conv": dense, "reduce": fp32,
             "data": fp32, "norm": fp32}
    return rates, bandwidth


def _set(obj: Any, **values: Any) -> None:
    # object.__setattr__ works for plain and frozen dataclass bases alike.
    for key, value in values.items():
        object.__setattr__(obj, key, value)


#: Share of a card's total memory a detected device leaves free by default (see CudaDevice).
CAPACITY_MARGIN = 0.05
MIN_CAPACITY_MARGIN = 256 * 2**20


def default_capacity(free: int, total: int, held: int = 0) -> int:
    """A detected GPU's default capacity: its ``free`` memory plus what this process's pool
    already ``held``, less ``CAPACITY_MARGIN`` of ``total`` (at least ``MIN_CAPACITY_MARGIN``);
    at least 1 byte, at most ``total``."""
    margin = max(MIN_CAPACITY_MARGIN, int(total * CAPACITY_MARGIN))
    return max(1, min(int(total), int(free) + int(held) - margin))


class CudaDevice(Device):
    """One CUDA GPU driven through CuPy.

    Args:
        index: CUDA device ordinal.
        name: device name, default ``"gpu:<index>"``.
        capacity: bytes this device may hold. Default: the memory free when the device is
            created, plus what this process's CuPy pool already holds, less a margin of
            ``CAPACITY_MARGIN`` of the card's total (at least ``MIN_CAPACITY_MARGIN``) for the
            CUDA context's growth, cuBLAS and cuDNN workspaces and fragmentation. Allocations
            that would take the memory pool past it raise ``OutOfMemoryError``; a memory
            budget (``memory={"gpu:0": "2GiB"}``) lowers it.
    """

    def __init__(self, index: int, *, name: str | None = None,
                 capacity: int | None = None) -> None:
        cp = _cupy()
        count = cuda_device_count()
        if not 0 <= index < count:
            raise DeviceError(f"CUDA device {index} does not exist "
                              f"(this machine has {count} CUDA device(s))")
        with cp.cuda.Device(index):
            props = cp.cuda.runtime.getDeviceProperties(index)
            free, total = cp.cuda.runtime.memGetInfo()
            held = int(cp.get_default_memory_pool().total_bytes())
        if capacity is None:
            capacity = default_capacity(int(free), int(total), held)
        cc = (int(props.get("major", 0)), int(props.get("minor", 0)))
        rates, bandwidth = _rough_rates(props, cc)
        gpu_name = props.get("name", b"")
        gpu_name = gpu_name.decode() if isinstance(gpu_name, bytes) else str(gpu_name)
        info = {"index": int(index), "compute_capability": f"{cc[0]}.{cc[1]}",
                "sm_count": int(props.get("multiProcessorCount", 0)), "total_memory": int(total),
                "free_memory": int(free)}
        # The memory space is named by the CUDA ordinal, as hetero.devices.space_of names CuPy
        # arrays; Machine.detect() names devices so that the two agree.
        _set(self, name=name or f"gpu:{index}", kind="gpu", memory_space=f"gpu:{index}",
             backend="cupy", capacity=int(capacity),
             model=gpu_name, info=info, specs={"model": gpu_name, **info},
             peak_flops=rates, mem_bandwidth=bandwidth, launch_overhead=5e-6,
             index=int(index), _streams=None, _lock=threading.Lock())
        register_kernels()

    @classmethod
    def from_index(cls, index: int, *, name: str | None = None,
                   capacity: int | None = None) -> CudaDevice:
        """The device for CUDA ordinal ``index`` (what ``Machine.detect()`` calls)."""
        return cls(index, name=name, capacity=capacity)

    # -- streams ----------------------------------------------------------------------------

    def _stream_set(self) -> tuple[Stream, Stream, Stream]:
        with self._lock:
            if self._streams is None:
                _set(self, _streams=(Stream(self.index, "compute"), Stream(self.index, "h2d"),
                                     Stream(self.index, "d2h")))
            return self._streams

    @property
    def compute_stream(self) -> Stream:
        return self._stream_set()[0]

    @property
    def h2d_stream(self) -> Stream:
        return self._stream_set()[1]

    @property
    def d2h_stream(self) -> Stream:
        return self._stream_set()[2]

    def event(self, *, timing: bool = False) -> Event:
        return Event(self.index, timing=timing)

    def synchronize(self) -> None:
        """Wait for every stream of this device."""
        for stream in self._stream_set():
            stream.synchronize()

    # -- memory -----------------------------------------------------------------------------

    @property
    def xp(self):
        return _cupy()

    @property
    def allocated(self) -> int:
        """Bytes in use in this device's memory space (CuPy's memory pool)."""
        return self.memory_used()

    def reset_peak(self) -> None:
        """Release the memory pool's unused blocks, so that ``peak_allocated`` afterwards is
        the most this process's pool held since (CuPy keeps no high-water mark of its own; a
        pool never shrinks by itself, so what it holds is its peak)."""
        cp = _cupy()
        with cp.cuda.Device(self.index):
            cp.get_default_memory_pool().free_all_blocks()

    @property
    def peak_allocated(self) -> int:
        """Bytes this device's CuPy memory pool holds (its peak since ``reset_peak``)."""
        cp = _cupy()
        with cp.cuda.Device(self.index):
            return int(cp.get_default_memory_pool().total_bytes())

    def memory_used(self) -> int:
        """Bytes held by live arrays in this device's CuPy memory pool."""
        cp = _cupy()
        with cp.cuda.Device(self.index):
            return int(cp.get_default_memory_pool().used_bytes())

    def _check_capacity(self, nbytes: int, label: str | None) -> None:
        used = self.memory_used()
        if used + nbytes > self.capacity:
            who = f"{label}: " if label else ""
            raise OutOfMemoryError(
                f"{who}allocating {nbytes} bytes on {self.name} would exceed its capacity: "
                f"{used} of {self.capacity} bytes are in use")

    def _oom(self, exc: Exception, nbytes: int, label: str | None) -> OutOfMemoryError:
        who = f"{label}: " if label else ""
        return OutOfMemoryError(f"{who}{self.name} ran out of memory allocating {nbytes} bytes "
                                f"(capacity {self.capacity} bytes): {exc}")

    def empty(self, spec, *, label: str | None = None):
        """An uninitialised device array for ``spec`` (a ``TensorSpec``).

        The block comes from the compute stream's arena of CuPy's pool, so it may have been
        freed by compute-stream work that has not run yet: work on another stream that writes a
        fresh buffer must first wait for an event recorded on the compute stream.
        """
        cp = _cupy()
        nbytes = math.prod(spec.shape) * np.dtype(spec.dtype).itemsize
        self._check_capacity(nbytes, label)
        try:
            # Allocate in the compute stream's pool arena: a freed buffer is then reused in
            # compute-stream order. Arrays also used on other streams must stay referenced
            # until those streams have passed an event recorded after the last use.
            with cp.cuda.Device(self.index), self.compute_stream.raw:
                return cp.empty(tuple(spec.shape), dtype=spec.dtype)
        except cp.cuda.memory.OutOfMemoryError as exc:
            raise self._oom(exc, nbytes, label) from None

    def pinned_empty(self, spec) -> np.ndarray:
        """A NumPy array in page-locked host memory: the source or target of async copies."""
        import cupyx

        return cupyx.empty_pinned(tuple(spec.shape), dtype=spec.dtype)

    def from_host(self, array: Any):
        """Copy a host array to this device (synchronous)."""
        cp = _cupy()
        host = host_contiguous(array)
        self._check_capacity(host.nbytes, None)
        try:
            with cp.cuda.Device(self.index):
                with self.compute_stream.raw:
                    out = cp.empty(host.shape, dtype=host.dtype)
                stream = self.h2d_stream
                # the block may have been freed by compute-stream work still in flight
                stream.wait(self.compute_stream.record())
                self.copy_from_host(out, host, stream)
                stream.synchronize()
                return out
        except cp.cuda.memory.OutOfMemoryError as exc:
            raise self._oom(exc, host.nbytes, None) from None

    def to_host(self, array: Any) -> np.ndarray:
        """Copy a device array to a new host array, after the compute stream has produced it."""
        cp = _cupy()
        if not isinstance(array, cp.ndarray):
            return np.asarray(array)
        self.compute_stream.synchronize()
        out = np.empty(array.shape, dtype=array.dtype)
        stream = self.d2h_stream
        self.copy_to_host(out, array, stream)
        stream.synchronize()
        return out

    def owns(self, array: Any) -> bool:
        cp = _cupy()
        return isinstance(array, cp.ndarray) and int(array.device.id) == self.index

    # -- copies -----------------------------------------------------------------------------

    @staticmethod
    def _check_pair(dst: Any, src: Any, what: str) -> None:
        if tuple(dst.shape) != tuple(src.shape) or np.dtype(dst.dtype) != np.dtype(src.dtype):
            raise DeviceError(f"{what}: destination {dst.dtype}{list(dst.shape)} does not match "
                              f"source {src.dtype}{list(src.shape)}")
        if not dst.flags.c_contiguous:
            raise DeviceError(f"{what}: the destination must be C-contiguous")

    def copy_from_host(self, dst: Any, src: np.ndarray, stream: Stream) -> None:
        """Enqueue host -> device ``dst[...] = src`` on ``stream`` (async if ``src`` is pinned).

        The caller keeps ``src`` alive and unmodified until the stream has passed the copy.
        """
        cp = _cupy()
        src = host_contiguous(src)
        self._check_pair(dst, src, "copy_from_host")
        if src.nbytes:
            with cp.cuda.Device(self.index):
                cp.cuda.runtime.memcpyAsync(dst.data.ptr, src.ctypes.data, src.nbytes,
                                            cp.cuda.runtime.memcpyHostToDevice, stream.ptr)

    def copy_to_host(self, dst: np.ndarray, src: Any, stream: Stream) -> None:
        """Enqueue device -> host ``dst[...] = src`` on ``stream`` (async if ``dst`` is pinned).

        ``dst`` must be C-contiguous; the data is there once the stream (or an event recorded
        after this call) has been synchronized.
        """
        cp = _cupy()
        with cp.cuda.Device(self.index):
            if not src.flags.c_contiguous:
                with stream.raw:
                    src = cp.ascontiguousarray(src)
            self._check_pair(dst, src, "copy_to_host")
            if src.nbytes:
                cp.cuda.runtime.memcpyAsync(dst.ctypes.data, src.data.ptr, src.nbytes,
                                            cp.cuda.runtime.memcpyDeviceToHost, stream.ptr)

    def copy_peer(self, dst: Any, src: Any, stream: Stream) -> None:
        """Enqueue a device -> device copy (``src`` and ``dst`` on any GPUs) on ``stream``.

        As for every copy, the caller has made ``stream`` wait for the work that produced
        ``src``. A non-contiguous ``src`` is packed first: on ``stream`` when it lives on this
        GPU; otherwise on the source GPU's pack stream, which waits for ``stream`` (so for the
        producer) before packing, and for the copy before its next use, so the packed buffer
        (from that stream's pool arena) is not reused while the copy still reads it.
        """
        cp = _cupy()
        src_dev = int(src.device.id)
        pack_stream = None
        if not src.flags.c_contiguous:
            if src_dev == self.index:
                with cp.cuda.Device(src_dev), stream.raw:
                    src = cp.ascontiguousarray(src)
            else:  # a stream runs kernels of its own device only: pack on the source GPU
                pack_stream = _pack_stream(src_dev)
                pack_stream.wait(stream.record())
                with cp.cuda.Device(src_dev), pack_stream.raw:
                    src = cp.ascontiguousarray(src)
                stream.wait(pack_stream.record())
        self._check_pair(dst, src, "copy_peer")
        if src.nbytes:
            with cp.cuda.Device(self.index):
                cp.cuda.runtime.memcpyPeerAsync(dst.data.ptr, int(dst.device.id), src.data.ptr,
                                                src_dev, src.nbytes, stream.ptr)
        if pack_stream is not None:
            pack_stream.wait(stream.record())

    # -- kernels ----------------------------------------------------------------------------

    def launch_kernel(self, op, ins: Sequence[Any], attrs, outs: Sequence[Any],
                      stream: Stream | None = None) -> None:
        """Enqueue ``op``'s CUDA kernel on ``stream`` (default: the compute stream) and return
        without waiting for it."""
        cp = _cupy()
        kernel = op.kernel_for(self.backend)
        if kernel is None:
            raise DeviceError(f"op {op.name!r} has no kernel on {self.name} (backend cupy)")
        self.check_owned(ins, "input", op.name)
        self.check_owned(outs, "output", op.name)
        try:
            (stream or self.compute_stream).launch(kernel, cp, ins, attrs, outs)
        except cp.cuda.memory.OutOfMemoryError as exc:
            raise self._oom(exc, 0, op.name) from None

    def run_kernel(self, op, ins: Sequence[Any], attrs, outs: Sequence[Any]) -> None:
        """Run ``op``'s CUDA kernel and wait for it (what eager mode calls)."""
        self.launch_kernel(op, ins, attrs, outs)
        self.compute_stream.synchronize()

    def __repr__(self) -> str:
        return f"CudaDevice({self.name}, {self.model}, {self.capacity / 2**30:.1f} GiB)"


# ----------------------------------------------------------------------------------------------
# CUDA C kernels (kernels/*.cu through NVRTC)


def kernel_sources() -> tuple[str, ...]:
    """File names of the CUDA C kernels shipped in ``hetero/kernels``."""
    return _KERNEL_FILES


def kernel_source(filename: str) -> str:
    """The text of ``hetero/kernels/<filename>`` (package data, so it works from a wheel)."""
    return importlib.resources.files("hetero").joinpath("kernels").joinpath(filename).read_text()


_MODULES: dict[tuple[int, str], Any] = {}
_MODULES_LOCK = threading.Lock()


def _function(filename: str, symbol: str):
    """The compiled ``symbol`` of ``filename`` for the current device (compiled once per device)."""
    cp = _cupy()
    key = (int(cp.cuda.Device().id), filename)
    with _MODULES_LOCK:
        module = _MODULES.get(key)
        if module is None:
            module = cp.RawModule(code=kernel_source(filename))
            _MODULES[key] = module
    return module.get_function(symbol)


def _suffix(dtype: np.dtype) -> str | None:
    return {np.dtype(np.float32): "f32", np.dtype(np.float64): "f64"}.get(np.dtype(dtype))


def _grid(n: int) -> tuple[int]:
    return (max(1, min((n + _BLOCK - 1) // _BLOCK, _MAX_GRID)),)


def bias_act(x, bias, out, activation: str = "none", alpha: float = 0.01,
             beta: float = 0.0, channel_axis: int = 1) -> None:
    """``out = act(x + bias[c])`` on the current stream (kernels/bias_act.cu).

    Args:
        x, out: C-contiguous float32/float64 CuPy arrays of one shape (may be the same array).
        bias: 1-D array of ``x.shape[channel_axis]`` elements, or None for a plain activation.
        activation: a key of ``ACTIVATIONS``; ``alpha`` is leaky_relu's slope or clip's minimum,
            ``beta`` clip's maximum.
    """
    cp = _cupy()
    suffix = _suffix(x.dtype)
    if suffix is None or out.dtype != x.dtype:
        raise DeviceError(f"bias_act supports float32 and float64, got {x.dtype}")
    if activation not in ACTIVATIONS:
        raise DeviceError(f"bias_act: unknown activation {activation!r} "
                          f"(known: {', '.join(sorted(ACTIVATIONS))})")
    n = int(x.size)
    if n == 0:
        return
    scalar = np.float32 if suffix == "f32" else np.float64
    if bias is not None:
        channels = int(x.shape[channel_axis])
        inner = int(np.prod(x.shape[channel_axis + 1:], dtype=np.int64))
        bias = cp.ascontiguousarray(bias, dtype=x.dtype)
        bias_ptr = bias
    else:
        channels, inner = 1, 1
        bias_ptr = np.uint64(0)  # a null pointer
    fn = _function("bias_act.cu", f"bias_act_{suffix}")
    fn(_grid(n), (_BLOCK,), (x, bias_ptr, out, np.int64(n), np.int64(channels), np.int64(inner),
                             np.int32(ACTIVATIONS[activation]), scalar(alpha), scalar(beta)))


def lrn(x, out, size: int, alpha: float = 1e-4, beta: float = 0.75, bias: float = 1.0) -> None:
    """ONNX LRN across channels of a C-contiguous NCHW array, on the current stream."""
    suffix = _suffix(x.dtype)
    if suffix is None:
        raise DeviceError(f"lrn supports float32 and float64, got {x.dtype}")
    n = int(x.size)
    if n == 0:
        return
    scalar = np.float32 if suffix == "f32" else np.float64
    channels = int(x.shape[1])
    inner = int(np.prod(x.shape[2:], dtype=np.int64))
    fn = _function("lrn.cu", f"lrn_{suffix}")
    fn(_grid(n), (_BLOCK,), (x, out, np.int64(n), np.int64(channels), np.int64(inner),
                             np.int32(size), scalar(alpha), scalar(beta), scalar(bias)))


#: pool2d.cu modes
POOL_MODES = {"max": 0, "avg": 1, "avg_include_pad": 2}


def pool2d(x, out, kernel: Sequence[int], strides: Sequence[int], pads: Sequence[int],
           dilations: Sequence[int], mode: str) -> None:
    """Max or average pooling of a C-contiguous NCHW array into ``out`` (its shape gives the
    output size, so ``ceil_mode`` is already decided), on the current stream.

    Args:
        pads: ONNX order (top, left, bottom, right).
        mode: "max", "avg" (divide by the taps inside the input) or "avg_include_pad" (divide
            by the taps inside the explicitly padded input).
    """
    suffix = _suffix(x.dtype)
    if suffix is None:
        raise DeviceError(f"pool2d supports float32 and float64, got {x.dtype}")
    n = int(out.size)
    if n == 0:
        return
    _, _, h, w = (int(d) for d in x.shape)
    _, _, oh, ow = (int(d) for d in out.shape)
    fn = _function("pool2d.cu", f"pool2d_{suffix}")
    geometry = [*kernel, *strides, *dilations, *pads]
    fn(_grid(n), (_BLOCK,), (x, out, np.int64(n), np.int32(h), np.int32(w), np.int32(oh),
                             np.int32(ow), *(np.int32(v) for v in geometry),
                             np.int32(POOL_MODES[mode])))


def softmax(x, out, *, log: bool = False) -> None:
    """Softmax (or log-softmax) over the last axis of a C-contiguous array, on the current
    stream."""
    suffix = _suffix(x.dtype)
    if suffix is None:
        raise DeviceError(f"softmax supports float32 and float64, got {x.dtype}")
    if x.size == 0:
        return
    cols = int(x.shape[-1]) if x.ndim else 1
    rows = int(x.size) // cols
    threads = 32
    while threads < min(cols, 1024):
        threads *= 2
    fn = _function("softmax.cu", f"softmax_{suffix}")
    fn((max(1, min(rows, _MAX_GRID)),), (threads,),
       (x, out, np.int64(rows), np.int64(cols), np.int32(1 if log else 0)),
       shared_mem=threads * x.dtype.itemsize)


# ----------------------------------------------------------------------------------------------
# NumPy float64 references of the CUDA C kernels


_erf = np.vectorize(math.erf, otypes=[np.float64])


def ref_bias_act(x: np.ndarray, bias: np.ndarray | None, activation: str = "none",
                 alpha: float = 0.01, beta: float = 0.0, channel_axis: int = 1) -> np.ndarray:
    """What kernels/bias_act.cu computes, in float64."""
    v = np.asarray(x, dtype=np.float64)
    if bias is not None:
        shape = [1] * v.ndim
        shape[channel_axis] = -1
        v = v + np.asarray(bias, dtype=np.float64).reshape(shape)
    code = ACTIVATIONS[activation]
    if code == 1:
        return np.maximum(v, 0.0)
    if code == 2:
        return np.where(v >= 0.0, v, alpha * v)
    if code == 3:
        return 1.0 / (1.0 + np.exp(-v))
    if code == 4:
        return np.tanh(v)
    if code == 5:
        return 0.5 * v * (1.0 + _erf(v / math.sqrt(2.0)))
    if code == 6:
        return 0.5 * v * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (v + 0.044715 * v**3)))
    if code == 7:
        return _erf(v)
    if code == 8:
        return np.minimum(np.maximum(v, alpha), beta)
    return v


def ref_lrn(x: np.ndarray, size: int, alpha: float = 1e-4, beta: float = 0.75,
            bias: float = 1.0) -> np.ndarray:
    """ONNX LRN (what kernels/lrn.cu computes), in float64."""
    v = np.asarray(x, dtype=np.float64)
    channels = v.shape[1]
    lo, hi = (size - 1) // 2, size - 1 - (size - 1) // 2
    sq = np.zeros_like(v)
    for c in range(channels):
        first, last = max(0, c - lo), min(channels - 1, c + hi)
        sq[:, c] = np.sum(v[:, first:last + 1] ** 2, axis=1)
    return v / (bias + alpha / size * sq) ** beta


def ref_pool2d(x: np.ndarray, out_hw: tuple[int, int], kernel: Sequence[int],
               strides: Sequence[int], pads: Sequence[int], dilations: Sequence[int],
               mode: str) -> np.ndarray:
    """What kernels/pool2d.cu computes, in float64 (``out_hw``: the output's height, width)."""
    v = np.asarray(x, dtype=np.float64)
    n, c, h, w = v.shape
    oh, ow = out_hw
    (kh, kw), (sh, sw), (dh, dw) = kernel, strides, dilations
    top, left, bottom, right = pads
    out = np.empty((n, c, oh, ow))
    for oy in range(oh):
        for ox in range(ow):
            taps, count = [], 0
            for a in range(kh):
                iy = oy * sh + a * dh - top
                for b in range(kw):
                    ix = ox * sw + b * dw - left
                    inside = 0 <= iy < h and 0 <= ix < w
                    if mode == "avg_include_pad":
                        count += iy < h + bottom and ix < w + right
                    elif inside:
                        count += 1
                    if inside:
                        taps.append(v[:, :, iy, ix])
            if mode == "max":
                out[:, :, oy, ox] = np.max(taps, axis=0) if taps else -np.inf
            else:
                out[:, :, oy, ox] = (np.sum(taps, axis=0) if taps else 0.0) / max(count, 1)
    return out


def ref_softmax(x: np.ndarray, *, log: bool = False) -> np.ndarray:
    """Softmax or log-softmax over the last axis (what kernels/softmax.cu computes), float64."""
    v = np.asarray(x, dtype=np.float64)
    m = v.max(axis=-1, keepdims=True)
    s = np.exp(v - m).sum(axis=-1, keepdims=True)
    return v - m - np.log(s) if log else np.exp(v - m) / s


# ----------------------------------------------------------------------------------------------
# cuDNN graphs (nvidia-cudnn-frontend) on CuPy memory


@functools.cache
def cudnn_unavailable() -> str | None:
    """Why cuDNN graphs cannot run in this process (the frontend does not import, or libcudnn
    does not load), or None when they can. Needs no GPU."""
    try:
        import cudnn
    except Exception as exc:  # ImportError, or OSError from a broken install
        return (f"the cuDNN frontend does not import ({type(exc).__name__}: {exc}); "
                f"pip install 'hetero[gpu]'")
    try:
        cudnn.backend_version()
    except Exception as exc:  # the frontend loads libcudnn on first use
        return (f"libcudnn does not load ({type(exc).__name__}: {exc}); "
                f"pip install nvidia-cudnn-cu13")
    return None


def cudnn_version() -> str | None:
    """The loaded libcudnn's version ("9.14.0"), asked through the frontend
    (``cudnn.backend_version()``); None where the frontend or libcudnn is missing."""
    if cudnn_unavailable() is not None:
        return None
    import cudnn

    return format_cudnn_version(int(cudnn.backend_version()))


def format_cudnn_version(code: int) -> str:
    """cuDNN's version number as text: 9.x encodes major * 10000 + minor * 100 + patch,
    8.x major * 1000 + minor * 100 + patch.

    >>> format_cudnn_version(91400), format_cudnn_version(8902)
    ('9.14.0', '8.9.2')
    """
    major, rest = divmod(int(code), 10000 if code >= 90000 else 1000)
    minor, patch = divmod(rest, 100)
    return f"{major}.{minor}.{patch}"


@dataclasses.dataclass(frozen=True, slots=True)
class _Built:
    """A cuDNN graph with its execution plan, ready to run on one stream."""

    graph: Any
    tensors: tuple
    workspace: Any
    handle: Any


class _CudnnState:
    """cuDNN handles and built graphs, per stream.

    The frontend's rule is one handle per stream: a handle is bound to its stream once, when it
    is created, and never moved, so there is no ``set_stream`` before ``execute`` to race with
    another thread. A graph is built (and given its workspace) per stream too, so two streams
    never share a workspace.
    """

    def __init__(self) -> None:
        self.handles: dict[tuple[int, int], Any] = {}  # (device, stream ptr) -> handle
        self.graphs: dict[tuple, _Built] = {}  # (key, stream ptr) -> built graph
        self.lock = threading.Lock()


_CUDNN = _CudnnState()
_COUNT_LOCK = threading.Lock()
_WARNED: set[str] = set()


def _count(what: str) -> None:
    with _COUNT_LOCK:
        CUDNN_COUNTS[what] += 1


def cudnn_report() -> dict[str, Any]:
    """What the cuDNN paths did in this process: ``executed`` (cuDNN graphs run), ``fallback``
    (calls cuDNN was meant to take that ran on the shared kernel), and ``refused`` (key ->
    reason, from ``CUDNN_FALLBACKS``). ``hetero.profile`` shows it."""
    with _COUNT_LOCK:
        return {"executed": CUDNN_COUNTS["executed"], "fallback": CUDNN_COUNTS["fallback"],
                "refused": dict(CUDNN_FALLBACKS)}


def _cudnn_dtype(cudnn, dtype: np.dtype):
    return {np.dtype(np.float32): cudnn.data_type.FLOAT,
            np.dtype(np.float16): cudnn.data_type.HALF,
            np.dtype(np.float64): cudnn.data_type.DOUBLE}.get(np.dtype(dtype))


def _elem_strides(a) -> list[int]:
    return [int(s) // a.itemsize for s in a.strides]


def channels_last_strides(shape: Sequence[int]) -> list[int]:
    """Element strides of an NCHW-indexed tensor stored channels-last (NHWC): the layout the
    frontend's samples declare and cuDNN's engines take (NCHW-packed graphs may find none).

    >>> channels_last_strides((2, 3, 4, 5))
    [60, 1, 15, 3]
    """
    _, c, h, w = (int(d) for d in shape)
    return [h * w * c, 1, w * c, c]


def channels_last(xp, a):
    """``a`` (NCHW-indexed) over a channels-last buffer: ``a``'s own memory where it already is
    in that order (C == 1 or H == W == 1), else an NHWC copy on the current stream."""
    return xp.ascontiguousarray(a.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)


def _is_channels_last(a) -> bool:
    return bool(a.transpose(0, 2, 3, 1).flags.c_contiguous)


def _pygraph(cudnn, handle, io, compute):
    kwargs = {"handle": handle} if handle is not None else {}
    return cudnn.pygraph(io_data_type=io, intermediate_data_type=compute,
                         compute_data_type=compute, **kwargs)


def conv2d_graph(cudnn, handle, x_shape, w_shape, y_shape, dtype, pads, strides, dilations):
    """The frontend graph of one convolution, every tensor declared channels-last over
    NCHW-indexed dims; float64 computes in DOUBLE (cuDNN has no FLOAT compute for DOUBLE
    data). ``handle`` may be None (a graph not yet bound to a device). Returns
    ``(graph, (X, W, Y))``."""
    dt = _cudnn_dtype(cudnn, dtype)
    compute = cudnn.data_type.DOUBLE if np.dtype(dtype) == np.float64 else cudnn.data_type.FLOAT
    graph = _pygraph(cudnn, handle, dt, compute)
    tx = graph.tensor(name="X", dim=list(x_shape), stride=channels_last_strides(x_shape),
                      data_type=dt)
    tw = graph.tensor(name="W", dim=list(w_shape), stride=channels_last_strides(w_shape),
                      data_type=dt)
    ty = graph.conv_fprop(image=tx, weight=tw, pre_padding=[pads[0], pads[1]],
                          post_padding=[pads[2], pads[3]], stride=list(strides),
                          dilation=list(dilations), compute_data_type=compute)
    ty.set_output(True)
    ty.set_data_type(dt)
    ty.set_dim(list(y_shape))
    ty.set_stride(channels_last_strides(y_shape))
    return graph, (tx, tw, ty)


def batch_norm_graph(cudnn, handle, x_shape, dtype):
    """The frontend graph of batch-norm inference over channels-last X and Y (float32
    parameters of shape [1, C, 1, 1]). Returns ``(graph, (X, mean, inv_variance, scale, bias,
    Y))``."""
    dt = _cudnn_dtype(cudnn, dtype)
    fl = cudnn.data_type.FLOAT
    graph = _pygraph(cudnn, handle, dt, fl)
    channels = int(x_shape[1])
    pshape = [1, channels, 1, 1]
    tx = graph.tensor(name="X", dim=list(x_shape), stride=channels_last_strides(x_shape),
                      data_type=dt)
    params = [graph.tensor(name=n, dim=pshape, stride=channels_last_strides(pshape),
                           data_type=fl)
              for n in ("mean", "inv_variance", "scale", "bias")]
    ty = graph.batchnorm_inference(input=tx, mean=params[0], inv_variance=params[1],
                                   scale=params[2], bias=params[3])
    ty.set_output(True)
    ty.set_data_type(dt)
    ty.set_dim(list(x_shape))
    ty.set_stride(channels_last_strides(x_shape))
    return graph, (tx, *params, ty)


def _cudnn_handle(cudnn, device: int, stream: int):
    """The handle of (``device``, ``stream``), created and bound to that stream once."""
    handle = _CUDNN.handles.get((device, stream))
    if handle is None:
        handle = cudnn.create_handle()
        cudnn.set_stream(handle=handle, stream=stream)
        _CUDNN.handles[(device, stream)] = handle
    return handle


def _cudnn_graph(key: tuple, build: Callable[[Any, Any], tuple]) -> _Built | None:
    """The graph for ``key`` built for the current stream (once, by ``build(cudnn, handle)``),
    or None where cuDNN is unavailable or refused it (the reason goes to ``CUDNN_FALLBACKS``
    and one warning)."""
    if key in CUDNN_FALLBACKS:
        return None
    missing = cudnn_unavailable()
    if missing is not None:
        _cudnn_refused(key, missing)
        return None
    import cudnn

    cp = _cupy()
    device, stream = int(cp.cuda.Device().id), int(cp.cuda.get_current_stream().ptr)
    with _CUDNN.lock:
        built = _CUDNN.graphs.get((key, stream))
        if built is not None:
            return built
        try:
            handle = _cudnn_handle(cudnn, device, stream)
            graph, tensors = build(cudnn, handle)
            graph.validate()
            graph.build_operation_graph()
            graph.create_execution_plans([cudnn.heur_mode.A, cudnn.heur_mode.FALLBACK])
            graph.check_support()
            graph.build_plans()
            workspace = cp.empty(int(graph.get_workspace_size()), dtype=np.uint8)
        except Exception as exc:  # cuDNN reports unsupported graphs with its own exceptions
            _cudnn_refused(key, f"{type(exc).__name__}: {exc}")
            return None
        built = _Built(graph, tuple(tensors), workspace, handle)
        _CUDNN.graphs[(key, stream)] = built
        return built


def _cudnn_refused(key: tuple, reason: str) -> None:
    CUDNN_FALLBACKS[key] = reason
    if reason in _WARNED:  # cuDNN missing: one warning, not one per shape
        return
    if reason == cudnn_unavailable():
        _WARNED.add(reason)
    warnings.warn(f"cuDNN cannot run {key[0]} for {key[1:]}; using the shared CUDA kernel "
                  f"instead ({reason})", RuntimeWarning, stacklevel=3)


def _cudnn_execute(key: tuple, built: _Built, bindings: dict) -> bool:
    """Run a built graph on the current stream (its handle is bound to it); False (and a
    recorded fallback) if it fails."""
    cp = _cupy()
    try:
        built.graph.execute(bindings, built.workspace, handle=built.handle)
    except Exception as exc:
        with _CUDNN.lock:
            _CUDNN.graphs.pop((key, int(cp.cuda.get_current_stream().ptr)), None)
        _cudnn_refused(key, f"{type(exc).__name__}: {exc}")
        return False
    _count("executed")
    return True


def _conv2d_cudnn(x, w, out, attrs) -> bool:
    """Convolution through cuDNN into ``out`` (over channels-last copies where ``x``, ``w`` or
    ``out`` are not in that order already); False where cuDNN cannot do it."""
    cp = _cupy()
    pads = tuple(int(p) for p in attrs.get("pads", (0, 0, 0, 0)))
    strides = tuple(int(s) for s in attrs.get("strides", (1, 1)))
    dilations = tuple(int(d) for d in attrs.get("dilations", (1, 1)))
    key = ("conv2d", int(cp.cuda.Device().id), tuple(x.shape), tuple(w.shape), x.dtype.str,
           pads, strides, dilations)
    built = _cudnn_graph(key, lambda cudnn, handle: conv2d_graph(
        cudnn, handle, x.shape, w.shape, out.shape, x.dtype, pads, strides, dilations))
    if built is None:
        return False
    tx, tw, ty = built.tensors
    y = out if _is_channels_last(out) else channels_last(cp, cp.empty_like(out))
    if not _cudnn_execute(key, built, {tx: channels_last(cp, x), tw: channels_last(cp, w),
                                       ty: y}):
        return False
    if y is not out:
        out[...] = y
    return True


def _batch_norm_cudnn(x, scale, bias, mean, var, out, epsilon: float) -> bool:
    cp = _cupy()
    key = ("batch_norm", int(cp.cuda.Device().id), tuple(x.shape), x.dtype.str)
    built = _cudnn_graph(key, lambda cudnn, handle: batch_norm_graph(cudnn, handle, x.shape,
                                                                      x.dtype))
    if built is None:
        return False
    tx, tmean, tinv, tscale, tbias, ty = built.tensors
    f32 = np.float32
    inv = 1.0 / cp.sqrt(var.astype(f32) + f32(epsilon))
    y = out if _is_channels_last(out) else channels_last(cp, cp.empty_like(out))
    if not _cudnn_execute(key, built, {
            tx: channels_last(cp, x), tmean: cp.ascontiguousarray(mean, dtype=f32), tinv: inv,
            tscale: cp.ascontiguousarray(scale, dtype=f32),
            tbias: cp.ascontiguousarray(bias, dtype=f32), ty: y}):
        return False
    if y is not out:
        out[...] = y
    return True


# ----------------------------------------------------------------------------------------------
# Kernel overrides, registered into Op.kernels["cupy"]


def _contiguous(*arrays) -> bool:
    return all(a.flags.c_contiguous for a in arrays)


def _float(*arrays) -> bool:
    return all(_suffix(a.dtype) is not None for a in arrays) and len(
        {a.dtype for a in arrays}) == 1


def _gemm_override(shared):
    def kernel(xp, ins, attrs, outs):
        a, b = ins[0], ins[1]
        c = ins[2] if len(ins) > 2 else None
        out = outs[0]
        if not (a.ndim == b.ndim == 2 and _float(a, b, out) and _contiguous(out)
                and min(a.shape + b.shape) > 0):
            return shared(xp, ins, attrs, outs)
        import cupy.cublas

        alpha = float(attrs.get("alpha", 1.0))
        beta = float(attrs.get("beta", 1.0)) if c is not None else 0.0
        if c is not None and beta != 0.0:
            out[...] = c  # broadcast C into the output; cuBLAS then computes in place
        else:
            beta = 0.0  # cuBLAS does not read C when beta == 0, so out's contents do not matter
        trans_a = "T" if int(attrs.get("trans_a", 0)) else "N"
        trans_b = "T" if int(attrs.get("trans_b", 0)) else "N"
        cupy.cublas.gemm(trans_a, trans_b, a, b, out=out, alpha=alpha, beta=beta)

    return kernel


def _matmul_override(shared):
    def kernel(xp, ins, attrs, outs):
        a, b = ins
        out = outs[0]
        if not (a.ndim == b.ndim == 2 and _float(a, b, out) and _contiguous(out)
                and min(a.shape + b.shape) > 0):
            # batched, vector and integer products: the shared kernel (cupy.matmul, which is
            # cuBLAS's batched GEMM for floats)
            return shared(xp, ins, attrs, outs)
        import cupy.cublas

        cupy.cublas.gemm("N", "N", a, b, out=out)

    return kernel


def _conv_activation(attrs) -> tuple[str, float, float] | None:
    """conv2d's fused activation as (bias_act name, alpha, beta); None if bias_act lacks it.

    ``activation_params`` is (alpha,) for leaky_relu and (min, max) for clip (None: unbounded).
    """
    act = str(attrs.get("activation", "none") or "none")
    params = tuple(attrs.get("activation_params", ()) or ())
    if act not in ACTIVATIONS or act == "erf":
        return None
    if act == "leaky_relu":
        return act, float(params[0]) if params else 0.01, 0.0
    if act == "clip":
        lo = params[0] if len(params) > 0 and params[0] is not None else -math.inf
        hi = params[1] if len(params) > 1 and params[1] is not None else math.inf
        return act, float(lo), float(hi)
    return act, 0.0, 0.0


def _conv2d_override(shared):
    def kernel(xp, ins, attrs, outs):
        x, w = ins[0], ins[1]
        bias = ins[2] if len(ins) > 2 else None
        out = outs[0]
        act = _conv_activation(attrs)
        usable = (act is not None and x.ndim == 4 and x.dtype in (np.float32, np.float64)
                  and _float(x, w, out) and _contiguous(out))
        if not usable:
            return shared(xp, ins, attrs, outs)
        if not _conv2d_cudnn(x, w, out, attrs):
            _count("fallback")
            return shared(xp, ins, attrs, outs)
        if bias is not None or act[0] not in ("none", "identity"):
            bias_act(out, bias, out, act[0], alpha=act[1], beta=act[2])  # fused, in place

    return kernel


def _batch_norm_override(shared):
    def kernel(xp, ins, attrs, outs):
        x, scale, bias, mean, var = ins
        out = outs[0]
        usable = (x.ndim == 4 and x.dtype in (np.float32, np.float16) and out.dtype == x.dtype
                  and _contiguous(x, out) and attrs.get("activation", "none") == "none")
        if not usable:
            return shared(xp, ins, attrs, outs)
        if not _batch_norm_cudnn(x, scale, bias, mean, var, out,
                                 float(attrs.get("epsilon", 1e-5))):
            _count("fallback")
            return shared(xp, ins, attrs, outs)

    return kernel


def _softmax_override(shared, log: bool):
    def kernel(xp, ins, attrs, outs):
        x, out = ins[0], outs[0]
        axis = int(attrs.get("axis", -1))
        last = x.ndim == 0 or axis % max(x.ndim, 1) == x.ndim - 1
        if not (last and _float(x, out) and _contiguous(x, out)):
            return shared(xp, ins, attrs, outs)
        softmax(x, out, log=log)

    return kernel


def _lrn_override(shared):
    def kernel(xp, ins, attrs, outs):
        x, out = ins[0], outs[0]
        if not (x.ndim >= 3 and _float(x, out) and _contiguous(x, out)):
            return shared(xp, ins, attrs, outs)
        lrn(x, out, int(attrs["size"]), float(attrs.get("alpha", 1e-4)),
            float(attrs.get("beta", 0.75)), float(attrs.get("bias", 1.0)))

    return kernel


def _pool_override(shared, average: bool):
    def kernel(xp, ins, attrs, outs):
        x, out = ins[0], outs[0]
        if not (x.ndim == 4 and _float(x, out) and _contiguous(x, out)):
            return shared(xp, ins, attrs, outs)
        mode = "max"
        if average:
            mode = "avg_include_pad" if int(attrs.get("count_include_pad", 0)) else "avg"
        pool2d(x, out, tuple(attrs["kernel_shape"]), tuple(attrs.get("strides") or (1, 1)),
               tuple(attrs.get("pads") or (0, 0, 0, 0)),
               tuple(attrs.get("dilations") or (1, 1)), mode)

    return kernel


def _pointwise_override(shared, activation: Callable[[Any], str]):
    def kernel(xp, ins, attrs, outs):
        x, out = ins[0], outs[0]
        if not (_float(x, out) and _contiguous(x, out)):
            return shared(xp, ins, attrs, outs)
        bias_act(x, None, out, activation(attrs))

    return kernel


def _gelu_name(attrs) -> str:
    return "gelu_tanh" if str(attrs.get("approximate", "none")) == "tanh" else "gelu"


_OVERRIDES: dict[str, Callable[[Any], Any]] = {
    "gemm": _gemm_override,
    "matmul": _matmul_override,
    "conv2d": _conv2d_override,
    "batch_norm": _batch_norm_override,
    "softmax": lambda shared: _softmax_override(shared, log=False),
    "log_softmax": lambda shared: _softmax_override(shared, log=True),
    "lrn": _lrn_override,
    "max_pool2d": lambda shared: _pool_override(shared, average=False),
    "avg_pool2d": lambda shared: _pool_override(shared, average=True),
    "gelu": lambda shared: _pointwise_override(shared, _gelu_name),
    "erf": lambda shared: _pointwise_override(shared, lambda attrs: "erf"),
}

_REGISTERED: set[str] = set()
_REGISTER_LOCK = threading.Lock()


def register_kernels() -> tuple[str, ...]:
    """Install the CUDA overrides into ``Op.kernels["cupy"]`` for every op that exists.

    Idempotent; ops registered later are picked up by a later call. Needs no GPU (the kernels only
    touch CuPy when they run). Returns the names of the ops that now have a CUDA override.
    """
    with _REGISTER_LOCK:
        for name, make in _OVERRIDES.items():
            if name in _REGISTERED:
                continue
            try:
                op = lookup(name)
            except UnknownOpError:
                continue
            if "cupy" not in op.backends:
                continue
            shared = op.kernel_for("cupy")
            if shared is None:
                continue
            op.kernels["cupy"] = make(shared)
            _REGISTERED.add(name)
        return tuple(sorted(_REGISTERED))
