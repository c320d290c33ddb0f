"""Devices and machines: what hardware a plan runs on, and how fast each part of it is.

Design
------
A ``Device`` is one processor that runs kernels: a CPU worker thread (``CpuDevice``, NumPy), a
CUDA GPU (``hetero.backends.cupy.CudaDevice``, CuPy) or a simulated GPU
(``hetero.backends.sim.SimDevice``, NumPy buffers in a memory space of their own, stream threads,
paced to a card's published rates). Every stage codes against the base class below, never against
a backend, so the placer, the partitioner, the memory planner and the executor run unchanged on a
simulated machine and on a real one.

A ``Machine`` is a set of devices plus the ``Link`` (bandwidth, latency) between every pair of
memory spaces. CPU workers share the memory space ``"host"``: moving a value between them costs a
synchronisation, not a copy. Each GPU (real or simulated) has its own space, named like the device
(``"gpu:0"``). ``Machine.detect()`` finds the real hardware; ``Machine.parse("cpu:2,sim:1@h100")``
and ``Machine.from_spec(...)`` describe machines you may not have.

Device contract (the owner of each backend implements it exactly)
-----------------------------------------------------------------
Every device:

- ``name`` "cpu:N" | "gpu:N" (simulated GPUs are "gpu:N" too), ``kind`` "cpu" | "gpu",
  ``memory_space`` ("host" for CPU workers, the device name for a GPU), ``backend``
  "numpy" | "cupy" | "sim", ``model`` (card or CPU name, text).
- Rates: ``capacity`` (bytes of its memory space), ``peak_flops`` (mapping op class -> FLOP/s for
  every class of ``OP_CLASSES``: elementwise matmul conv reduce data norm),
  ``mem_bandwidth`` (B/s), ``launch_overhead`` (s per kernel), ``host_link`` (``Link`` between its
  space and "host"), ``peer_link`` (``Link`` to another GPU of the same machine, or None).
  ``roofline(cost, op_class)`` -> seconds = launch_overhead + max(flops/peak, bytes/bandwidth).
- ``xp``: the array namespace its kernels get (numpy for "numpy" and "sim", cupy for "cupy").
- ``empty(spec)`` -> a buffer of this device for a ``TensorSpec``; may raise OutOfMemoryError.
- ``from_host(ndarray)`` -> a buffer of this device holding a copy (CPU: the array itself),
  synchronous. ``to_host(buffer)`` -> a NumPy array, synchronous.
- ``owns(buffer)`` -> bool: the buffer lives in this device's memory space.
- ``run_kernel(op, ins, attrs, outs)``: run ``op``'s kernel for this backend now, synchronously
  (eager mode uses it). Raises DeviceError, naming the buffer's memory space, if an input or output
  is not owned by this device: a missing transfer is an error, never a silent success.

GPU-like devices (``kind == "gpu"``: sim and cupy) additionally:

- ``compute_stream``, ``h2d_stream``, ``d2h_stream``: ``Stream`` objects (see ``Stream``): work on
  one stream runs in order; different streams overlap.
- ``launch_kernel(op, ins, attrs, outs, stream=None)``: enqueue the kernel on ``stream`` (default
  the compute stream) and return at once. The simulated GPU paces it to ``roofline``.
- ``pinned_empty(spec)`` -> a host (NumPy) buffer suited to asynchronous copies.
- ``copy_from_host(dst, src, stream)``: enqueue ``dst[...] = src`` (dst on this device, src a host
  array) on ``stream``; ``copy_to_host(dst, src, stream)``: the reverse (dst a host array);
  ``copy_peer(dst, src, stream)``: dst on this device, src on another GPU of the machine. All three
  return at once; shapes and dtypes must match exactly (DeviceError otherwise). The host buffer
  must not be touched until the copy's stream has passed it (record an event and wait on it).
- ``synchronize()``: wait until every stream of the device is idle.
- ``allocated``: bytes in use in its memory space. There is no ``free``: memory returns when the
  last reference to a buffer goes.
- ``launch_kernel`` (CUDA: on the compute stream) and ``copy_*`` may also be called from any host
  thread; each stream keeps the order in which work was enqueued.

Backends register their device class here (``register_backend``; ``hetero.backends`` registers
"sim" and, loaded on first use, "cupy"), so this module constructs GPUs without importing a
backend. Construction of a real GPU: ``Machine.detect()`` asks cuda-python for each GPU
(``GpuInfo``) and builds ``device_class("cupy").from_index(ordinal, name="gpu:<ordinal>")``,
which sets its attributes itself (it need not call ``Device.__init__``; the class attributes below
are the defaults for what it leaves out); then ``_adopt_rates`` gives it the links of
``rates_for(info)`` and, for a card in ``CARDS``, its published peak rates.
"""

from __future__ import annotations

import logging
import math
import numbers
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import numpy as np

from hetero.errors import DeviceError
from hetero.graph import OP_CLASSES, TensorSpec
from hetero.threads import cpu_cores

log = logging.getLogger("hetero.devices")


_DEVICE_RE = re.compile(r"^(cpu|gpu)(?::(\d+))?$")


def normalize_device(name: str | Device) -> str:
    """``"gpu"`` -> ``"gpu:0"`` (a ``Device`` gives its name); refuses strings that are not
    ``cpu[:N]`` or ``gpu[:N]``."""
    if isinstance(name, Device):
        return name.name
    if not isinstance(name, str):
        raise DeviceError(f"a device is a string like 'cpu:0' or 'gpu:1', got {name!r}")
    m = _DEVICE_RE.match(name.strip().lower())
    if not m:
        raise DeviceError(f"unknown device string {name!r}: expected 'cpu:N' or 'gpu:N' "
                          "(e.g. 'cpu:0', 'gpu:1')")
    return f"{m.group(1)}:{int(m.group(2) or 0)}"


# ----------------------------------------------------------------------------------------------
# Backends register their GPU device classes

#: backend name -> a function returning its Device class (a backend loads on first use).
_BACKENDS: dict[str, Any] = {}


def register_backend(name: str, load: Any) -> None:
    """Register GPU backend ``name``: ``load()`` returns its Device class (importing it then)."""
    _BACKENDS[name] = load


def device_class(backend: str) -> Any:
    """The Device class of GPU backend ``backend`` ("sim", "cupy"), loaded on first use."""
    load = _BACKENDS.get(backend)
    if load is None:
        raise DeviceError(f"no GPU backend {backend!r} is registered (known: "
                          f"{', '.join(sorted(_BACKENDS)) or 'none'}; hetero.backends registers "
                          "them)")
    return load()


# ----------------------------------------------------------------------------------------------
# Links


@dataclass(frozen=True)
class Link:
    """A path between two memory spaces: ``bandwidth`` in B/s, ``latency`` in s."""

    bandwidth: float
    latency: float = 0.0

    def time(self, nbytes: float) -> float:
        """Seconds to move ``nbytes`` over this link."""
        if math.isinf(self.bandwidth):
            return self.latency
        return self.latency + float(nbytes) / self.bandwidth

    def to_json(self) -> dict[str, float | None]:
        bw = None if math.isinf(self.bandwidth) else self.bandwidth
        return {"bandwidth": bw, "latency": self.latency}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Link:
        bw = data["bandwidth"]
        return cls(math.inf if bw is None else float(bw), float(data["latency"]))


#: The link between a memory space and itself: free.
SAME_SPACE = Link(math.inf, 0.0)


def space_of(array: Any) -> str:
    """The memory space a buffer lives in: "host" for NumPy, "gpu:N" for CuPy and simulated GPU
    buffers. Never imports CuPy."""
    space = getattr(array, "memory_space", None)
    if isinstance(space, str):
        return space
    module = type(array).__module__ or ""
    if module.startswith("cupy"):
        return f"gpu:{array.device.id}"
    if isinstance(array, np.ndarray | np.generic):
        return "host"
    return f"no memory space ({type(array).__name__})"


# ----------------------------------------------------------------------------------------------
# Streams and events (interface; backends implement them)


class Event:
    """A point in a stream's work. ``synchronize()`` blocks the host until the stream has passed
    it (and raises ExecutionError if work before it on that stream failed); ``query()`` says
    whether it has been passed, without blocking."""

    def synchronize(self) -> None:
        raise NotImplementedError

    def query(self) -> bool:
        raise NotImplementedError


class Stream:
    """An in-order queue of device work.

    ``launch(fn, *args)`` enqueues ``fn(*args)`` and returns at once (simulated GPU: it runs on
    the stream's thread; CUDA: ``fn`` issues its work on the CuPy stream). ``record()`` -> Event
    marks the current end of the queue. ``wait(event)`` makes later work on this stream wait for
    ``event`` (the host does not block). ``synchronize()`` blocks until the queue is empty and
    raises ExecutionError if any of its work failed since the last synchronize.
    """

    def launch(self, fn: Any, *args: Any) -> None:
        raise NotImplementedError

    def record(self) -> Event:
        raise NotImplementedError

    def wait(self, event: Event) -> None:
        raise NotImplementedError

    def synchronize(self) -> None:
        raise NotImplementedError


# ----------------------------------------------------------------------------------------------
# Devices


class Device:
    """Base class of every device; see the module docstring for the full contract.

    Args:
        name: "cpu:N" or "gpu:N".
        kind: "cpu" or "gpu".
        memory_space: "host" for CPU workers, the device name for a GPU.
        backend: "numpy", "cupy" or "sim".
        capacity: bytes of memory in its space.
        peak_flops: op class -> FLOP/s (a single number applies to every class).
        mem_bandwidth: bytes/s between the processor and its memory.
        launch_overhead: seconds per kernel.
        host_link: Link between its memory space and "host" (CPU: free).
        peer_link: Link to another GPU of the machine (None: through the host).
        model: human-readable hardware name.
        info: extra facts for reports (SM count, compute capability, ...).

    Attributes: the arguments, plus ``specs`` (model and info as one dict, for reports) and
    ``machine_links`` (set by the Machine that holds the device).
    """

    # Defaults for subclasses that set their attributes themselves instead of calling __init__
    # (CudaDevice does): a PCIe Gen4 host link, no peer link, no extra facts.
    host_link: Link = Link(32e9, 10e-6)
    peer_link: Link | None = None
    model: str = ""
    info: Mapping[str, Any] = MappingProxyType({})
    specs: Mapping[str, Any] = MappingProxyType({})
    #: (src_space, dst_space) -> Link of the machine that holds this device (set by Machine).
    machine_links: Mapping[tuple[str, str], Link] | None = None

    def __init__(self, name: str, *, kind: str, memory_space: str, backend: str, capacity: int,
                 peak_flops: Mapping[str, float] | float, mem_bandwidth: float,
                 launch_overhead: float, host_link: Link = SAME_SPACE,
                 peer_link: Link | None = None, model: str = "",
                 info: Mapping[str, Any] | None = None) -> None:
        self.name = normalize_device(name)
        if kind not in ("cpu", "gpu"):
            raise DeviceError(f"device kind is 'cpu' or 'gpu', got {kind!r}")
        if not self.name.startswith(kind):
            raise DeviceError(f"device {self.name} cannot be of kind {kind!r}")
        self.kind = kind
        self.memory_space = memory_space
        self.backend = backend
        self.capacity = int(capacity)
        self.peak_flops = _rates(peak_flops)
        self.mem_bandwidth = float(mem_bandwidth)
        self.launch_overhead = float(launch_overhead)
        if not self.capacity > 0:
            raise DeviceError(f"{self.name}: memory capacity must be a positive number of bytes, "
                              f"got {capacity!r}")
        if not self.mem_bandwidth > 0:
            raise DeviceError(f"{self.name}: mem_bandwidth must be positive (B/s), got "
                              f"{mem_bandwidth!r}")
        if not self.launch_overhead >= 0:
            raise DeviceError(f"{self.name}: launch_overhead must be >= 0 seconds, got "
                              f"{launch_overhead!r}")
        self.host_link = host_link
        self.peer_link = peer_link
        self.model = model
        self.info = dict(info or {})
        self.specs: dict[str, Any] = {"model": model, **self.info}

    # -- rates ------------------------------------------------------------------------------

    def roofline(self, cost: Any, op_class: str = "elementwise") -> float:
        """Seconds for work of ``cost`` (``Cost(flops, bytes)``) of ``op_class`` on this device:
        launch overhead + max(flops / peak, bytes / bandwidth), the roofline model. The cost
        model estimates with it and a simulated GPU paces its kernels to it, so the placer's
        estimate for a simulated GPU is what that device takes."""
        peak = self.peak_flops.get(op_class)
        if peak is None:
            raise DeviceError(f"{self.name}: unknown op class {op_class!r} "
                              f"(known: {', '.join(OP_CLASSES)})")
        return self.launch_overhead + max(cost.flops / peak, cost.bytes / self.mem_bandwidth)

    def kernel_time(self, op: Any, ins: Sequence[Any], outs: Sequence[Any], attrs: Any) -> float:
        """``roofline`` of one kernel of ``op`` on arrays (or TensorSpecs) ``ins`` -> ``outs``."""
        def spec(a: Any) -> TensorSpec:
            return a if isinstance(a, TensorSpec) else TensorSpec.of(a)

        cost = op.cost_of(tuple(spec(a) for a in ins), tuple(spec(a) for a in outs), attrs)
        return self.roofline(cost, op.op_class)

    # -- memory and kernels (each backend implements these) ----------------------------------

    @property
    def xp(self) -> Any:
        raise NotImplementedError

    def empty(self, spec: Any) -> Any:
        raise NotImplementedError

    def from_host(self, array: np.ndarray) -> Any:
        raise NotImplementedError

    def to_host(self, array: Any) -> np.ndarray:
        raise NotImplementedError

    def owns(self, array: Any) -> bool:
        return space_of(array) == self.memory_space

    def run_kernel(self, op: Any, ins: Sequence[Any], attrs: Any, outs: Sequence[Any]) -> None:
        raise NotImplementedError

    def check_owned(self, arrays: Iterable[Any], what: str, label: str = "") -> None:
        """DeviceError naming the memory space of the first of ``arrays`` this device does not
        own (``what``: "input", "output"; ``label``: the op or node)."""
        for i, a in enumerate(arrays):
            if not self.owns(a):
                who = f"{label}: " if label else ""
                raise DeviceError(
                    f"{who}{what} {i} lives in memory space {space_of(a)!r}, but {self.name} "
                    f"works in {self.memory_space!r}: copy it first (ht.ops.to_device, or a "
                    "transfer node)")

    # -- description --------------------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "memory_space": self.memory_space,
                "backend": self.backend, "capacity": self.capacity,
                "peak_flops": dict(self.peak_flops), "mem_bandwidth": self.mem_bandwidth,
                "launch_overhead": self.launch_overhead, "host_link": self.host_link.to_json(),
                "peer_link": self.peer_link.to_json() if self.peer_link else None,
                "model": self.model, "info": _jsonable(self.info)}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name}, {self.backend}, {self.model or self.kind})"


def _rates(peak: Mapping[str, float] | float) -> dict[str, float]:
    if isinstance(peak, Mapping):
        unknown = sorted(set(peak) - set(OP_CLASSES))
        if unknown:
            raise DeviceError(f"unknown op class(es) {', '.join(unknown)} in peak_flops "
                              f"(known: {', '.join(OP_CLASSES)})")
        missing = sorted(set(OP_CLASSES) - set(peak))
        if missing:
            raise DeviceError(f"peak_flops lacks op class(es) {', '.join(missing)}")
        out = {k: float(peak[k]) for k in OP_CLASSES}
    else:
        out = dict.fromkeys(OP_CLASSES, float(peak))
    for k, v in out.items():
        if not v > 0:
            raise DeviceError(f"peak_flops[{k!r}] must be positive, got {v}")
    return out


def _jsonable(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, int | float | str | bool) or value is None:
        return value
    return str(value)


# ----------------------------------------------------------------------------------------------
# CPU workers

#: Per-core peak FLOP/s of a CPU worker by op class. Measured on a 2-core machine of ours: NumPy
#: sgemm reaches 125 GFLOP/s on one thread and 139 on two (the cores share caches and memory), so
#: about 70 per core when both work; im2col convolutions reach a little less; elementwise ops run
#: at 3-15 GFLOP/s of arithmetic (their time is mostly the bytes term of the roofline).
CPU_PEAK_PER_CORE = {"elementwise": 8e9, "matmul": 70e9, "conv": 50e9, "reduce": 8e9,
                     "data": 8e9, "norm": 8e9}
#: Memory bandwidth one worker gets when every core streams (measured: 40 GB/s for one thread
#: alone, shared by two).
CPU_BANDWIDTH_PER_CORE = 20e9
#: Seconds of Python and NumPy call overhead per kernel.
CPU_LAUNCH_OVERHEAD = 3e-6


class CpuDevice(Device):
    """One CPU worker: runs NumPy kernels in the calling thread, in the shared "host" space."""

    def __init__(self, index: int, *, peak_flops: Mapping[str, float] | float | None = None,
                 mem_bandwidth: float = CPU_BANDWIDTH_PER_CORE,
                 launch_overhead: float = CPU_LAUNCH_OVERHEAD, capacity: int | None = None,
                 model: str = "") -> None:
        super().__init__(f"cpu:{index}", kind="cpu", memory_space="host", backend="numpy",
                         capacity=host_memory() if capacity is None else capacity,
                         peak_flops=CPU_PEAK_PER_CORE if peak_flops is None else peak_flops,
                         mem_bandwidth=mem_bandwidth, launch_overhead=launch_overhead,
                         host_link=SAME_SPACE, model=model or cpu_model())
        self.index = index

    @property
    def xp(self) -> Any:
        return np

    def empty(self, spec: Any) -> np.ndarray:
        return np.empty(spec.shape, spec.dtype)

    def from_host(self, array: np.ndarray) -> np.ndarray:
        if isinstance(array, np.ndarray) and space_of(array) != "host":
            raise DeviceError(f"{self.name}.from_host got a buffer of memory space "
                              f"{space_of(array)!r}; copy it with machine.copy")
        return np.asarray(array)

    def to_host(self, array: Any) -> np.ndarray:
        self.check_owned((array,), "buffer", f"{self.name}.to_host")
        return np.asarray(array)

    def run_kernel(self, op: Any, ins: Sequence[Any], attrs: Any, outs: Sequence[Any]) -> None:
        label = op.name
        self.check_owned(ins, "input", label)
        self.check_owned(outs, "output", label)
        kernel = op.kernel_for(self.backend)
        if kernel is None:
            raise DeviceError(f"{label}: op {op.name} has no kernel on {self.name} (numpy)")
        kernel(np, ins, attrs, outs)

    def synchronize(self) -> None:
        """Nothing to wait for: a CPU worker runs kernels synchronously."""


def host_memory() -> int:
    """Bytes of physical memory of the host (0 if the OS does not say)."""
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (AttributeError, ValueError, OSError):
        return 0


def cpu_model() -> str:
    """The CPU's marketing name from /proc/cpuinfo ("cpu" where unknown)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "cpu"


# ----------------------------------------------------------------------------------------------
# GPU cards (published datasheet figures; dense rates, no structured sparsity)

_GiB = 1 << 30


@dataclass(frozen=True)
class Card:
    """Published rates of one GPU model.

    Attributes:
        key: short name used in specs ("h100").
        model: marketing name.
        fp32, tf32, fp16: peak FLOP/s (vector FP32; tensor-core TF32 and FP16, dense).
        mem_bandwidth: B/s of device memory.
        memory: bytes of device memory.
        host_link: B/s per direction between host and card (PCIe).
        peer_link: B/s per direction between two such cards (NVLink, else PCIe).
        peer: "nvlink" or "pcie".
        sm_count: streaming multiprocessors.
        match: lower-case substrings of the CUDA device name that identify this card.
    """

    key: str
    model: str
    fp32: float
    tf32: float
    fp16: float
    mem_bandwidth: float
    memory: int
    host_link: float
    peer_link: float
    peer: str
    sm_count: int
    match: tuple[str, ...]

    def peak_flops(self, matmul: str = "fp32", conv: str | None = None) -> dict[str, float]:
        """Peak FLOP/s per op class: matmul at precision ``matmul`` ("fp32", "tf32", "fp16"),
        conv at ``conv`` (default: as matmul); the other classes at half the FP32 rate (one op
        per element, no fused multiply-add)."""
        rates = {"fp32": self.fp32, "tf32": self.tf32, "fp16": self.fp16}
        for p in (matmul, conv):
            if p is not None and p not in rates:
                raise DeviceError(f"precision is fp32, tf32 or fp16, got {p!r}")
        other = self.fp32 / 2
        return {"elementwise": other, "matmul": rates[matmul], "conv": rates[conv or matmul],
                "reduce": other, "data": other, "norm": other}


#: PCIe per direction: Gen3 x16 ~16 GB/s, Gen4 x16 ~32 GB/s, Gen5 x16 ~64 GB/s.
CARDS: dict[str, Card] = {c.key: c for c in (
    Card("h100", "NVIDIA H100 SXM5 80GB", 66.9e12, 494.7e12, 989.4e12, 3.35e12, 80 * _GiB,
         64e9, 450e9, "nvlink", 132, ("h100 80gb hbm3", "h100 sxm", "h100")),
    Card("h100-pcie", "NVIDIA H100 PCIe 80GB", 51.2e12, 378e12, 756e12, 2.0e12, 80 * _GiB,
         64e9, 300e9, "nvlink", 114, ("h100 pcie",)),
    Card("h200", "NVIDIA H200 SXM 141GB", 66.9e12, 494.7e12, 989.4e12, 4.8e12, 141 * 10**9,
         64e9, 450e9, "nvlink", 132, ("h200",)),
    Card("a100", "NVIDIA A100 SXM4 80GB", 19.5e12, 156e12, 312e12, 2.039e12, 80 * _GiB,
         32e9, 300e9, "nvlink", 108, ("a100",)),
    Card("l4", "NVIDIA L4", 30.3e12, 60e12, 121e12, 300e9, 24 * _GiB,
         32e9, 32e9, "pcie", 58, ("l4",)),
    Card("t4", "NVIDIA T4", 8.1e12, 8.1e12, 65e12, 320e9, 16 * _GiB,
         16e9, 16e9, "pcie", 40, ("t4",)),
)}

#: Seconds per kernel launch on a CUDA GPU (host-side launch cost of a small kernel).
GPU_LAUNCH_OVERHEAD = 5e-6
#: Latency of one copy over PCIe (driver call and DMA setup) and over NVLink.
PCIE_LATENCY = 10e-6
NVLINK_LATENCY = 8e-6


def card(key: str) -> Card:
    """The ``Card`` named ``key`` ("h100", "a100", "l4", "t4", ...)."""
    c = CARDS.get(key.strip().lower())
    if c is None:
        raise DeviceError(f"unknown GPU card {key!r} (known: {', '.join(CARDS)})")
    return c


def card_for_model(model: str) -> Card | None:
    """The card whose name a CUDA device name ("NVIDIA H100 80GB HBM3") matches, or None."""
    low = model.lower()
    best: tuple[int, Card] | None = None
    for c in CARDS.values():
        for pattern in c.match:
            if pattern in low and (best is None or len(pattern) > best[0]):
                best = (len(pattern), c)
    return best[1] if best else None


# ----------------------------------------------------------------------------------------------
# Real GPUs (cuda-python)


@dataclass(frozen=True)
class GpuInfo:
    """What cuda-python says about one CUDA device."""

    index: int
    model: str
    total_memory: int
    sm_count: int
    compute_capability: tuple[int, int]
    clock_hz: float = 0.0

    @property
    def card(self) -> Card | None:
        return card_for_model(self.model)


def rates_for(info: GpuInfo) -> dict[str, Any]:
    """Keyword arguments for ``Device.__init__`` describing a real GPU: the published rates of its
    card, or, for a card not in ``CARDS``, an estimate from its SM count and clock (128 FP32 lanes
    per SM, 2 FLOP per fused multiply-add) with PCIe Gen4 and 500 GB/s memory.

    Matmul is rated at FP32 (CuPy's cuBLAS calls compute in FP32 unless CUPY_TF32=1); conv at TF32
    on compute capability 8.0 and later, where cuDNN uses TF32 tensor cores for float32 by default.
    """
    c = info.card
    facts = {"index": info.index, "sm_count": info.sm_count,
             "compute_capability": f"{info.compute_capability[0]}.{info.compute_capability[1]}"}
    if c is not None:
        peer = Link(c.peer_link, NVLINK_LATENCY if c.peer == "nvlink" else PCIE_LATENCY)
        return {"capacity": info.total_memory, "peak_flops": c.peak_flops(
                    "fp32", "tf32" if info.compute_capability >= (8, 0) else "fp32"),
                "mem_bandwidth": c.mem_bandwidth, "launch_overhead": GPU_LAUNCH_OVERHEAD,
                "host_link": Link(c.host_link, PCIE_LATENCY), "peer_link": peer,
                "model": info.model, "info": {**facts, "card": c.key}}
    fp32 = info.sm_count * 128 * 2 * (info.clock_hz or 1.5e9)
    peak = {k: fp32 / 2 for k in OP_CLASSES} | {"matmul": fp32, "conv": fp32}
    return {"capacity": info.total_memory, "peak_flops": peak, "mem_bandwidth": 500e9,
            "launch_overhead": GPU_LAUNCH_OVERHEAD, "host_link": Link(32e9, PCIE_LATENCY),
            "peer_link": Link(32e9, PCIE_LATENCY), "model": info.model,
            "info": {**facts, "card": None}}


def _cuda_driver_present() -> bool:
    """Whether the CUDA driver library loads: without it there is no GPU to ask about, and
    cuda-python (installed without a driver, as in the dev extra) stays unimported."""
    import ctypes

    for name in ("nvcuda.dll",) if os.name == "nt" else ("libcuda.so.1", "libcuda.so"):
        try:
            ctypes.CDLL(name)
            return True
        except OSError:
            continue
    return False


def detect_gpus() -> list[GpuInfo]:
    """The CUDA GPUs the driver reports, through cuda-python (imported here, lazily). Empty when
    the driver, cuda-python or a GPU is missing; never raises, never imports CuPy, and imports
    cuda-python only where a driver is present."""
    if not _cuda_driver_present():
        log.debug("no CUDA GPU: the driver library (libcuda) does not load")
        return []
    try:
        try:
            from cuda.bindings import driver
        except ImportError:
            from cuda import cuda as driver  # cuda-python < 12.6
    except ImportError:
        return []
    try:
        ok = driver.CUresult.CUDA_SUCCESS

        def call(fn: Any, *args: Any) -> Any:
            err, *rest = fn(*args)
            if err != ok:
                raise RuntimeError(f"{fn.__name__}: {err}")
            return rest[0] if len(rest) == 1 else rest

        (err,) = driver.cuInit(0)
        if err != ok:
            log.debug("no CUDA GPU: cuInit returned %s", err)
            return []
        attr = driver.CUdevice_attribute
        found = []
        for i in range(call(driver.cuDeviceGetCount)):
            dev = call(driver.cuDeviceGet, i)
            name = call(driver.cuDeviceGetName, 256, dev)
            name = name.split(b"\0", 1)[0].decode() if isinstance(name, bytes) else str(name)

            def get(a: str, dev: Any = dev) -> int:
                return int(call(driver.cuDeviceGetAttribute, getattr(attr, a), dev))

            found.append(GpuInfo(
                index=i, model=name, total_memory=int(call(driver.cuDeviceTotalMem, dev)),
                sm_count=get("CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT"),
                compute_capability=(get("CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR"),
                                    get("CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR")),
                clock_hz=get("CU_DEVICE_ATTRIBUTE_CLOCK_RATE") * 1e3))
        return found
    except Exception as exc:  # a missing driver raises from inside the bindings
        log.debug("no CUDA GPU: %s: %s", type(exc).__name__, exc)
        return []


def _cuda_devices(infos: Sequence[GpuInfo]) -> list[Device]:
    """``CudaDevice`` objects for ``infos``, named "gpu:<CUDA ordinal>"; a GPU whose backend
    cannot be loaded (CuPy missing) is logged and skipped."""
    if not infos:
        return []
    try:
        cuda_device = device_class("cupy")
    except Exception as exc:
        log.warning("found %d CUDA GPU(s) but cannot use them: %s: %s (install cupy)",
                    len(infos), type(exc).__name__, exc)
        return []
    out: list[Device] = []
    for info in infos:
        try:
            # named by CUDA ordinal, as its memory space is (and as space_of names CuPy arrays)
            dev = cuda_device.from_index(info.index, name=f"gpu:{info.index}")
            _adopt_rates(dev, info)
            out.append(dev)
        except Exception as exc:
            log.warning("skipping CUDA GPU %d (%s): %s: %s", info.index, info.model,
                        type(exc).__name__, exc)
    return out


def _adopt_rates(dev: Device, info: GpuInfo) -> None:
    """Give a CUDA device the links and facts of ``rates_for(info)``, and the published peak rates
    where its card is in ``CARDS`` (the device's own figures are rough estimates from clocks)."""
    rates = rates_for(info)
    values: dict[str, Any] = {"host_link": rates["host_link"], "peer_link": rates["peer_link"],
                              "model": info.model,
                              "info": {**rates["info"], **dict(dev.info)}}
    if info.card is not None:
        values["peak_flops"] = rates["peak_flops"]
        values["mem_bandwidth"] = rates["mem_bandwidth"]
    for key, value in values.items():
        object.__setattr__(dev, key, value)


# ----------------------------------------------------------------------------------------------
# Simulated GPUs


@dataclass(frozen=True)
class SimSpec:
    """Rates of one simulated GPU. Unset fields come from ``card`` (published figures) or, with
    no card, from fast defaults that keep tests quick.

    Attributes:
        card: a key of ``CARDS`` ("h100") to start from.
        speed: peak FLOP/s, per op class (mapping) or for every class (number).
        precision: which card rate matmul and conv use: "fp32", "tf32" or "fp16".
        mem_bandwidth: B/s of device memory.
        capacity: bytes of device memory; allocating past it raises OutOfMemoryError.
        launch_overhead: seconds per kernel.
        link_bandwidth, latency: the host link (B/s per direction, s per copy).
        peer_bandwidth, peer_latency: the link to other simulated GPUs.
        speed_factor: multiplies the peak FLOP/s of the card (or of ``speed``): a number for
            every op class, or a mapping op class -> factor for some of them
            (``{"conv": 0.5}``: convolutions at half the card's rate, the rest unchanged).
    """

    card: str | None = None
    speed: Mapping[str, float] | float | None = None
    precision: str = "fp32"
    mem_bandwidth: float | None = None
    capacity: int | None = None
    launch_overhead: float | None = None
    link_bandwidth: float | None = None
    latency: float | None = None
    peer_bandwidth: float | None = None
    peer_latency: float | None = None
    speed_factor: Mapping[str, float] | float | None = None

    def __post_init__(self) -> None:
        """Refuse impossible figures here, where the user wrote them, not at the first run."""
        if self.precision not in ("fp32", "tf32", "fp16"):
            raise DeviceError(f"SimSpec precision is 'fp32', 'tf32' or 'fp16', got "
                              f"{self.precision!r}")
        for key in ("capacity", "mem_bandwidth", "link_bandwidth", "peer_bandwidth"):
            value = getattr(self, key)
            if value is not None and not (_is_number(value) and value > 0):
                raise DeviceError(f"SimSpec {key} must be a positive number, got {value!r}")
        for key in ("launch_overhead", "latency", "peer_latency"):
            value = getattr(self, key)
            if value is not None and not (_is_number(value) and value >= 0):
                raise DeviceError(f"SimSpec {key} must be a number >= 0 (seconds), got {value!r}")

    def device_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``Device.__init__``."""
        if self.card is not None:
            c = card(self.card)
            nv = c.peer == "nvlink"
            base = {"peak_flops": c.peak_flops(self.precision), "mem_bandwidth": c.mem_bandwidth,
                    "capacity": c.memory, "launch_overhead": GPU_LAUNCH_OVERHEAD,
                    "link_bandwidth": c.host_link, "latency": PCIE_LATENCY,
                    "peer_bandwidth": c.peer_link,
                    "peer_latency": NVLINK_LATENCY if nv else PCIE_LATENCY,
                    "model": f"simulated {c.model}"}
        else:
            base = dict(SIM_DEFAULTS, model="simulated GPU")
        if self.speed is not None:
            base["peak_flops"] = self.speed
        for key in ("mem_bandwidth", "capacity", "launch_overhead", "link_bandwidth", "latency",
                    "peer_bandwidth", "peer_latency"):
            value = getattr(self, key)
            if value is not None:
                base[key] = value
        if self.speed_factor is not None:
            base["peak_flops"] = _scaled(_rates(base["peak_flops"]), self.speed_factor)
        return {"peak_flops": base["peak_flops"], "mem_bandwidth": base["mem_bandwidth"],
                "capacity": int(base["capacity"]), "launch_overhead": base["launch_overhead"],
                "host_link": Link(base["link_bandwidth"], base["latency"]),
                "peer_link": Link(base["peer_bandwidth"], base["peer_latency"]),
                "model": base["model"], "info": {"card": self.card}}


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _scaled(rates: dict[str, float], factor: Mapping[str, float] | float) -> dict[str, float]:
    """``rates`` (op class -> FLOP/s) times ``factor`` (one number, or some op classes' own)."""
    if not isinstance(factor, Mapping):
        factor = dict.fromkeys(OP_CLASSES, factor)
    unknown = sorted(set(factor) - set(OP_CLASSES))
    if unknown:
        raise DeviceError(f"unknown op class(es) {', '.join(unknown)} in speed_factor "
                          f"(known: {', '.join(OP_CLASSES)})")
    for k, v in factor.items():
        if not float(v) > 0:
            raise DeviceError(f"speed_factor[{k!r}] must be positive, got {v}")
    return {k: r * float(factor.get(k, 1.0)) for k, r in rates.items()}


#: Rates of a simulated GPU without a card: fast enough that tests barely wait.
SIM_DEFAULTS: dict[str, Any] = {
    "peak_flops": 1e13, "mem_bandwidth": 1e12, "capacity": 4 * _GiB, "launch_overhead": 1e-6,
    "link_bandwidth": 50e9, "latency": 2e-6, "peer_bandwidth": 100e9, "peer_latency": 2e-6}


# ----------------------------------------------------------------------------------------------
# Machines

SPEC_GRAMMAR = (
    "a machine spec is items separated by commas:\n"
    "  cpu[:N]          N CPU workers cpu:0..cpu:N-1 (default: one per core)\n"
    "  gpu[:N]          N real CUDA GPUs (default: every usable one)\n"
    "  sim[:N][@CARD]   N simulated GPUs, with the published rates of CARD if given\n"
    "Real GPUs are named by CUDA ordinal (gpu:0, ...), simulated ones after them.\n"
    "Cards: " + ", ".join(CARDS) + "\n"
    "examples: 'cpu:2,gpu:1', 'cpu:2,sim:1', 'cpu:4,sim:2@a100'")

#: The most devices of one kind a spec may ask for: a typo such as "cpu:99999999" must be an error,
#: not a machine that starts a hundred million worker threads.
MAX_SPEC_COUNT = 1024

_ITEM_RE = re.compile(r"^(cpu|gpu|sim)(?::(\d+))?(?:@([a-z0-9][a-z0-9_.-]*))?$")


class Machine:
    """Devices plus the links between their memory spaces.

    Args:
        devices: the devices; names must be unique, and CPU workers share the space "host".
        links: (src_space, dst_space) -> Link overrides; by default a GPU's host link joins it to
            "host", two GPUs with peer links are joined by the slower of the two, and two GPUs
            without go through the host.
        spec: the spec string this machine was built from (for reports).
    """

    def __init__(self, devices: Iterable[Device],
                 links: Mapping[tuple[str, str], Link] | None = None,
                 spec: str | None = None) -> None:
        self.devices: tuple[Device, ...] = tuple(devices)
        if not self.devices:
            raise DeviceError("a machine needs at least one device")
        names = [d.name for d in self.devices]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise DeviceError(f"device name(s) {', '.join(dup)} appear twice in the machine")
        self._by_name = {d.name: d for d in self.devices}
        gpu_spaces = [d.memory_space for d in self.devices if d.kind == "gpu"]
        for d in self.devices:
            if d.kind == "cpu" and d.memory_space != "host":
                raise DeviceError(f"CPU worker {d.name} must work in memory space 'host', "
                                  f"not {d.memory_space!r}")
            if d.kind == "gpu" and (d.memory_space == "host" or
                                    gpu_spaces.count(d.memory_space) > 1):
                raise DeviceError(f"GPU {d.name}: memory space {d.memory_space!r} is not its own "
                                  "(each GPU needs a memory space of its own)")
        spaces: list[str] = []
        for d in self.devices:
            if d.memory_space not in spaces:
                spaces.append(d.memory_space)
        self.memory_spaces: tuple[str, ...] = tuple(sorted(spaces, key=lambda s: s != "host"))
        self._links = self._default_links()
        for (src, dst), link in (links or {}).items():
            for s in (src, dst):
                if s not in self.memory_spaces:
                    raise DeviceError(f"link names memory space {s!r}, not in this machine "
                                      f"({', '.join(self.memory_spaces)})")
            self._links[(src, dst)] = link
        self.spec = spec or self._spec_string()
        for d in self.devices:
            d.machine_links = self._links

    def _default_links(self) -> dict[tuple[str, str], Link]:
        owner = {}
        for d in self.devices:
            owner.setdefault(d.memory_space, d)
        links: dict[tuple[str, str], Link] = {}
        for a in self.memory_spaces:
            for b in self.memory_spaces:
                if a == b:
                    links[(a, b)] = SAME_SPACE
                elif a == "host" or b == "host":
                    links[(a, b)] = owner[b if a == "host" else a].host_link
                else:
                    da, db = owner[a], owner[b]
                    if da.peer_link is not None and db.peer_link is not None:
                        links[(a, b)] = Link(min(da.peer_link.bandwidth, db.peer_link.bandwidth),
                                             max(da.peer_link.latency, db.peer_link.latency))
                    else:  # staged through host memory: both hops in turn
                        ha, hb = da.host_link, db.host_link
                        links[(a, b)] = Link(1 / (1 / ha.bandwidth + 1 / hb.bandwidth),
                                             ha.latency + hb.latency)
        return links

    def _spec_string(self) -> str:
        parts = [f"cpu:{len(self.cpus())}"] if self.cpus() else []
        real = sum(d.backend == "cupy" for d in self.gpus())
        if real:
            parts.append(f"gpu:{real}")
        for d in self.gpus():
            if d.backend == "sim":
                c = d.info.get("card")
                parts.append("sim:1" + (f"@{c}" if c else ""))
        return ",".join(parts)

    # -- lookup -------------------------------------------------------------------------------

    def device(self, name: str | Device) -> Device:
        """The device called ``name``; DeviceError naming this machine's devices if none."""
        if isinstance(name, Device):
            if self._by_name.get(name.name) is name:
                return name
            name = name.name
        name = normalize_device(name)
        dev = self._by_name.get(name)
        if dev is None:
            raise DeviceError(f"device {name!r} is not in this machine "
                              f"({', '.join(d.name for d in self.devices)}; spec {self.spec!r})")
        return dev

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name in self._by_name

    def cpus(self) -> tuple[Device, ...]:
        return tuple(d for d in self.devices if d.kind == "cpu")

    def gpus(self) -> tuple[Device, ...]:
        return tuple(d for d in self.devices if d.kind == "gpu")

    def link(self, src_space: str, dst_space: str) -> Link:
        """The link from memory space ``src_space`` to ``dst_space`` (device names work too)."""
        src, dst = self._space(src_space), self._space(dst_space)
        return self._links[(src, dst)]

    def _space(self, s: str | Device) -> str:
        if isinstance(s, Device):
            return s.memory_space
        if s in self.memory_spaces:
            return s
        if s in self._by_name:
            return self._by_name[s].memory_space
        raise DeviceError(f"{s!r} is neither a memory space ({', '.join(self.memory_spaces)}) "
                          f"nor a device of this machine")

    def transfer_time(self, nbytes: float, src: str | Device, dst: str | Device) -> float:
        """Seconds to move ``nbytes`` from ``src`` to ``dst`` (devices or memory spaces)."""
        return self.link(src, dst).time(nbytes)

    # -- eager copies -------------------------------------------------------------------------

    def copy(self, array: Any, src_dev: str | Device, dst_dev: str | Device) -> Any:
        """``array`` (a buffer of ``src_dev``) as a buffer of ``dst_dev``, synchronously. Within
        one memory space it is the same buffer; across spaces a copy over the link between them
        (GPU to GPU directly where both support peer copies, else through the host)."""
        src, dst = self.device(src_dev), self.device(dst_dev)
        if not src.owns(array):
            raise DeviceError(f"copy from {src.name}: the buffer lives in memory space "
                              f"{space_of(array)!r}, not {src.memory_space!r}")
        if src.memory_space == dst.memory_space:
            return array
        if src.kind == "cpu":
            return dst.from_host(array)
        if dst.kind == "cpu":
            return src.to_host(array)
        if src.backend == dst.backend:
            out = dst.empty(TensorSpec.of(array))
            src.synchronize()  # the source's pending writes come first
            dst.copy_peer(out, array, dst.h2d_stream)
            dst.h2d_stream.synchronize()
            return out
        return dst.from_host(src.to_host(array))

    # -- construction -------------------------------------------------------------------------

    @classmethod
    def detect(cls, cpus: int | None = None) -> Machine:
        """The real machine: one CPU worker per core (or ``cpus``) and every CUDA GPU that
        cuda-python reports and CuPy can drive. Without a driver, GPU or cuda-python it is the
        CPU alone, quickly and without error."""
        gpus = _cuda_devices(detect_gpus())
        return cls(_cpu_devices(cpus) + gpus)

    @classmethod
    def from_spec(cls, cpus: int | None = None, gpus: int | str = 0,
                  sims: int | Sequence[SimSpec | str] = (), *,
                  cpu_peak_flops: Mapping[str, float] | float | None = None,
                  cpu_bandwidth: float | None = None,
                  links: Mapping[tuple[str, str], Link] | None = None,
                  spec: str | None = None) -> Machine:
        """A machine described in code: ``cpus`` workers (default one per core), ``gpus`` real
        CUDA GPUs (DeviceError if fewer are usable; "all": every usable one, at least one), and
        simulated GPUs (a count for default rates, or one ``SimSpec`` or card key per GPU),
        numbered after the real ones."""
        if isinstance(sims, int):
            sims = [SimSpec()] * sims
        sims = [SimSpec(card=s) if isinstance(s, str) else s for s in sims]
        devices = _cpu_devices(cpus, cpu_peak_flops, cpu_bandwidth)
        if gpus:
            found = detect_gpus()
            real = _cuda_devices(found if gpus == "all" else found[:gpus])
            want = 1 if gpus == "all" else int(gpus)
            if len(real) < want:
                why = (f"found {len(found)} CUDA GPU(s)" +
                       (f", {len(real)} usable (is cupy installed?)" if found else ""))
                raise DeviceError(f"the spec asks for {want} real GPU(s) but {why}; use "
                                  f"'sim:{want}' for simulated ones\n{SPEC_GRAMMAR}")
            devices += real
        if sims:
            sim_device = device_class("sim")
            start = 1 + max((int(d.name.split(":")[1]) for d in devices if d.kind == "gpu"),
                            default=-1)
            devices += [sim_device(start + i, s) for i, s in enumerate(sims)]
        return cls(devices, links=links, spec=spec)

    @classmethod
    def parse(cls, spec: str) -> Machine:
        """A machine from a spec string such as ``"cpu:2,sim:1@h100"`` (see ``SPEC_GRAMMAR``).

        >>> m = Machine.parse("cpu:2,sim:1@t4")
        >>> [d.name for d in m.devices], m.memory_spaces
        (['cpu:0', 'cpu:1', 'gpu:0'], ('host', 'gpu:0'))
        >>> m.link("host", "gpu:0")
        Link(bandwidth=16000000000.0, latency=1e-05)
        """
        if isinstance(spec, Machine):
            return spec
        if not isinstance(spec, str) or not spec.strip():
            raise DeviceError(f"bad machine spec {spec!r}: {SPEC_GRAMMAR}")
        cpus: int | None = None
        gpus: int | None | str = 0
        seen_gpu = False
        sims: list[SimSpec] = []
        for raw in spec.split(","):
            item = re.sub(r"\s+", "", raw).lower()  # "sim:1 @ h100" reads as "sim:1@h100"
            m = _ITEM_RE.match(item)
            if not m:
                raise DeviceError(f"bad item {raw.strip()!r} in machine spec {spec!r}: "
                                  f"{SPEC_GRAMMAR}")
            kind, count, card_key = m.group(1), m.group(2), m.group(3)
            if card_key is not None and kind != "sim":
                raise DeviceError(f"'@{card_key}' in {raw.strip()!r}: only simulated GPUs take a "
                                  f"card (real ones are detected)\n{SPEC_GRAMMAR}")
            if card_key is not None and card_key not in CARDS:
                raise DeviceError(f"unknown card {card_key!r} in machine spec {spec!r} "
                                  f"(known: {', '.join(CARDS)})\n{SPEC_GRAMMAR}")
            n = None if count is None else int(count)
            if n is not None and n > MAX_SPEC_COUNT:
                raise DeviceError(f"{raw.strip()!r} in machine spec {spec!r} asks for {n} "
                                  f"devices; at most {MAX_SPEC_COUNT} of a kind\n{SPEC_GRAMMAR}")
            if n == 0 and kind != "cpu":
                raise DeviceError(f"{raw.strip()!r} in machine spec {spec!r} asks for no "
                                  f"{'simulated ' if kind == 'sim' else ''}GPU: the number is a "
                                  f"count, not an index ({kind}:1 is one)\n{SPEC_GRAMMAR}")
            if kind == "cpu":
                if cpus is not None:
                    raise DeviceError(f"'cpu' appears twice in machine spec {spec!r}\n"
                                      f"{SPEC_GRAMMAR}")
                if n == 0:
                    raise DeviceError(f"machine spec {spec!r}: at least one CPU worker is "
                                      f"needed (the host runs inputs and outputs)\n{SPEC_GRAMMAR}")
                cpus = n
            elif kind == "gpu":
                if seen_gpu:
                    raise DeviceError(f"'gpu' appears twice in machine spec {spec!r}\n"
                                      f"{SPEC_GRAMMAR}")
                seen_gpu = True
                gpus = n  # None: every usable GPU, and at least one
            else:
                sims += [SimSpec(card=card_key)] * (1 if n is None else n)
        return cls.from_spec(cpus=cpus, gpus="all" if gpus is None else gpus, sims=sims,
                             spec=spec.strip())

    # -- description --------------------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        return {"spec": self.spec, "devices": [d.to_json() for d in self.devices],
                "links": [{"src": a, "dst": b, **lk.to_json()}
                          for (a, b), lk in self._links.items() if a != b]}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Machine:
        """The machine ``to_json`` wrote, with the same names and rates. A real GPU becomes the
        real GPU of that index where this host has it, else a simulated GPU of its rates."""
        sim_device = device_class("sim")
        infos = None
        devices: list[Device] = []
        for d in data["devices"]:
            rates = {"peak_flops": d["peak_flops"], "mem_bandwidth": d["mem_bandwidth"],
                     "launch_overhead": d["launch_overhead"]}
            if d["kind"] == "cpu":
                devices.append(CpuDevice(int(d["name"].split(":")[1]), capacity=d["capacity"],
                                         model=d.get("model", ""), **rates))
                continue
            index = int(d["name"].split(":")[1])
            if d["backend"] == "cupy":
                infos = detect_gpus() if infos is None else infos
                idx = d.get("info", {}).get("index", index)
                real = _cuda_devices([i for i in infos if i.index == idx])
                if real:
                    object.__setattr__(real[0], "name", d["name"])
                    devices.append(real[0])
                    continue
                log.warning("%s (%s) is not on this host; simulating it", d["name"],
                            d.get("model"))
            peer = d.get("peer_link")
            devices.append(sim_device(index, None, capacity=d["capacity"],
                                      host_link=Link.from_json(d["host_link"]),
                                      peer_link=Link.from_json(peer) if peer else None,
                                      model=d.get("model", ""), info=d.get("info", {}),
                                      **rates))
        links = {(lk["src"], lk["dst"]): Link.from_json(lk) for lk in data.get("links", ())}
        return cls(devices, links=links, spec=data.get("spec"))

    def describe(self) -> str:
        """A table of the devices and their rates."""
        rows = [f"machine {self.spec}"]
        for d in self.devices:
            rows.append(f"  {d.name:7} {d.backend:6} {d.memory_space:7} "
                        f"matmul {d.peak_flops['matmul'] / 1e12:8.3f} TFLOP/s  "
                        f"mem {d.mem_bandwidth / 1e9:7.1f} GB/s  cap {d.capacity / _GiB:7.1f} GiB"
                        f"  {d.model}")
        for (a, b), lk in self._links.items():
            if a < b:
                rows.append(f"  link {a} <-> {b}: {lk.bandwidth / 1e9:.1f} GB/s, "
                            f"{lk.latency * 1e6:.1f} us")
        return "\n".join(rows)

    def __repr__(self) -> str:
        return f"Machine({self.spec!r}: {', '.join(d.name for d in self.devices)})"


def _cpu_devices(n: int | None, peak: Mapping[str, float] | float | None = None,
                 bandwidth: float | None = None) -> list[Device]:
    n = cpu_cores() if n is None else int(n)
    if n < 1:
        raise DeviceError(f"a machine needs at least one CPU worker, got {n}")
    model = cpu_model()
    kw: dict[str, Any] = {"model": model, "capacity": host_memory()}
    if peak is not None:
        kw["peak_flops"] = peak
    if bandwidth is not None:
        kw["mem_bandwidth"] = bandwidth
    return [CpuDevice(i, **kw) for i in range(n)]


__all__ = [
    "CARDS", "Card", "CpuDevice", "Device", "Event", "GpuInfo", "Link", "Machine", "SimSpec",
    "Stream", "card", "card_for_model", "detect_gpus", "device_class", "normalize_device",
    "rates_for", "register_backend", "space_of",
]
