"""The simulated GPU: a complete device with its own memory space, streams, events and rates.

It is how the multi-device logic is tested on machines without CUDA, and how a plan for a machine
you do not have (``Machine.parse("cpu:8,sim:2@h100")``) is run. It is not a mock: every stage runs
against it through the same ``Device`` contract as against a CUDA GPU.

Memory. A buffer is a ``SimArray``: a NumPy array that carries the memory space it lives in
("gpu:N"). CPU workers and other GPUs refuse it (``Device.check_owned``), and NumPy arithmetic that
mixes it with a host array or a buffer of another space raises DeviceError, so a missing transfer
shows up as an error naming the buffer's space, as it would on a GPU, never as a silent success.
``empty`` counts bytes against ``capacity`` and raises OutOfMemoryError past it; the bytes return
when the last view of the buffer is garbage-collected (``weakref.finalize`` on the base array).
(Arrays that NumPy arithmetic on buffers creates outside kernels are not counted; kernels write
into buffers from ``empty``, and the executor allocates only through it.)

Streams. Each device has three ``SimStream``s: compute, h2d (host to device) and d2h (device to
host). A stream is one daemon thread draining an in-order queue of items: ``run`` (call a function;
kernels and copies), ``record`` (mark an ``SimEvent`` passed) and ``wait`` (block this stream until
another stream's event has passed). The thread starts on first use and exits after
``IDLE_EXIT_S`` idle seconds. Work on different streams overlaps, like CUDA streams.

Time. A kernel's simulated duration is ``Device.roofline(op cost, op class)`` = launch overhead +
max(flops / peak, bytes / memory bandwidth), the very estimate the cost model makes; a copy's is
the link's ``latency + bytes / bandwidth``.
The stream really computes (NumPy) and then owes the difference between the simulated and the
real duration; it sleeps off what it owes before it passes any event (and whenever the debt
exceeds ``SLEEP_QUANTUM_S``), so events fire no earlier than the simulated timeline says. A device
simulated faster than the host's NumPy can only be as fast as NumPy: a kernel that really runs
longer than its simulated duration owes nothing, and only an oversleep (at most
``SLEEP_QUANTUM_S``) is credited to the next work.

Errors. A function that raises on a stream poisons it: later ``run`` items are skipped (their
inputs may be garbage), events still fire (no waiter hangs) and carry the error, and the next host
``synchronize`` of the stream or of such an event raises ExecutionError and clears the poison.
"""

from __future__ import annotations

import os
import queue
import threading
import time
import weakref
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from hetero.devices import Device, Event, Link, SimSpec, Stream, space_of
from hetero.errors import DeviceError, ExecutionError, OutOfMemoryError
from hetero.graph import TensorSpec, fmt_bytes

#: A stream sleeps off simulated time once it owes this much (smaller sleeps overshoot).
SLEEP_QUANTUM_S = 1e-3
#: A stream's thread exits after this long without work (it restarts on the next launch).
IDLE_EXIT_S = 5.0
#: Kernel durations a device remembers before it starts over.
_DURATION_CACHE = 4096


# ----------------------------------------------------------------------------------------------
# Buffers


class SimArray(np.ndarray):
    """A NumPy array in a simulated GPU's memory space (``memory_space`` "gpu:N")."""

    memory_space: str

    def __array_finalize__(self, obj: Any) -> None:
        self.memory_space = getattr(obj, "memory_space", "gpu:?")

    def __array_ufunc__(self, ufunc: Any, method: str, *inputs: Any, out: Any = None,
                        **kwargs: Any) -> Any:
        space = self.memory_space
        args = _unwrap_all(inputs, space, ufunc.__name__)
        if out is not None:
            kwargs["out"] = tuple(_unwrap_all(out, space, ufunc.__name__))
        result = getattr(ufunc, method)(*args, **kwargs)
        if out is not None:
            return out[0] if len(out) == 1 else out
        return _wrap(result, space)

    def __array_function__(self, func: Any, types: Any, args: Any, kwargs: Any) -> Any:
        space = self.memory_space
        flat = list(args) + list(kwargs.values())
        for a in flat:
            for x in (a if isinstance(a, list | tuple) else (a,)):
                _check_same_space(x, space, getattr(func, "__name__", "a NumPy function"))
        return super().__array_function__(func, types, args, kwargs)

    def __reduce__(self) -> Any:
        raise DeviceError(f"a buffer of {self.memory_space} cannot be pickled; copy it to the "
                          "host first")


def _check_same_space(x: Any, space: str, what: str) -> None:
    if isinstance(x, SimArray):
        if x.memory_space != space:
            raise DeviceError(f"{what} mixes buffers of {space!r} and {x.memory_space!r}: "
                              "copy one of them first")
    elif isinstance(x, np.ndarray) and x.ndim > 0:
        raise DeviceError(f"{what} mixes a buffer of {space!r} with a host array: copy it to "
                          f"{space} first")


def _unwrap_all(xs: Sequence[Any], space: str, what: str) -> list[Any]:
    out = []
    for x in xs:
        _check_same_space(x, space, what)
        out.append(x.view(np.ndarray) if isinstance(x, SimArray) else x)
    return out


def _wrap(result: Any, space: str) -> Any:
    if isinstance(result, tuple):
        return tuple(_wrap(r, space) for r in result)
    if isinstance(result, np.ndarray) and not isinstance(result, SimArray):
        arr = result.view(SimArray)
        arr.memory_space = space
        return arr
    return result


def raw(array: Any) -> np.ndarray:
    """The plain NumPy view of a simulated buffer (what kernels compute on)."""
    return array.view(np.ndarray) if isinstance(array, SimArray) else array


# ----------------------------------------------------------------------------------------------
# Streams and events


#: Every simulated stream of the process, restarted in the child after ``os.fork``.
_STREAMS: weakref.WeakSet[SimStream] = weakref.WeakSet()
_DEVICES: weakref.WeakSet[SimDevice] = weakref.WeakSet()


def _restart_streams_after_fork() -> None:
    for stream in list(_STREAMS):
        stream._restart()
    for device in list(_DEVICES):
        device._mem_lock = threading.RLock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_restart_streams_after_fork)


class SimEvent(Event):
    """A point in a ``SimStream``'s queue; ``time`` is when (``time.perf_counter``) it passed."""

    def __init__(self, stream: SimStream) -> None:
        self.stream = stream
        self.time: float | None = None
        self._done = threading.Event()
        self._error: BaseException | None = None
        self._where = ""  # where the error came from: "<label> failed on gpu:0 (h2d stream)"
        self._origin: SimEvent | None = None  # the first event recorded after that failure

    def synchronize(self) -> None:
        self._done.wait()
        if self._error is not None:
            err = self._error
            self.stream._clear(err)
            exc = ExecutionError(f"{self._where}: {type(err).__name__}: {err}")
            exc.__cause__ = err
            exc.event = self._origin or self  # the executor names the node that recorded it
            raise exc

    def query(self) -> bool:
        return self._done.is_set()

    def elapsed(self, end: SimEvent) -> float:
        """Seconds between this event and ``end`` (both must have passed)."""
        if self.time is None or end.time is None:
            raise DeviceError("elapsed() needs two events that have passed; synchronize first")
        return end.time - self.time


class SimStream(Stream):
    """An in-order work queue drained by one daemon thread (see the module docstring)."""

    def __init__(self, device: SimDevice, name: str) -> None:
        self.device = device
        self.name = name
        self._restart()
        _STREAMS.add(self)

    def _restart(self) -> None:
        """An empty queue and no thread: a new stream, or this one in a forked child (where
        the parent's stream thread does not exist and its lock may be held forever)."""
        self._queue: queue.SimpleQueue[tuple[Any, ...]] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._pending = 0  # items enqueued and not yet finished (guarded by _lock)
        self._error: BaseException | None = None
        self._error_where = ""
        self._error_origin: SimEvent | None = None
        self._owed = 0.0

    # -- the contract ---------------------------------------------------------------------

    def launch(self, fn: Callable[..., Any], *args: Any) -> None:
        """Enqueue ``fn(*args)``; returns at once."""
        self.launch_timed(None, getattr(fn, "__name__", "work"), fn, *args)

    def launch_timed(self, duration: float | None, label: str, fn: Callable[..., Any],
                     *args: Any) -> None:
        """Enqueue ``fn(*args)`` and pace it to last ``duration`` simulated seconds."""
        self._put(("run", fn, args, duration, label))

    def record(self) -> SimEvent:
        event = SimEvent(self)
        self._put(("record", event))
        return event

    def wait(self, event: Event) -> None:
        if not isinstance(event, SimEvent):
            raise DeviceError(f"{self.device.name} {self.name} stream can only wait on events of "
                              f"simulated streams, got {type(event).__name__}")
        self._put(("wait", event))

    def synchronize(self) -> None:
        self.record().synchronize()

    def __repr__(self) -> str:
        return f"SimStream({self.device.name} {self.name})"

    # -- the thread -------------------------------------------------------------------------

    def _put(self, item: tuple[Any, ...]) -> None:
        with self._lock:
            self._pending += 1
            self._queue.put(item)
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._loop, name=f"hetero-{self.device.name}-{self.name}", daemon=True)
                self._thread.start()

    def _loop(self) -> None:
        while True:
            try:
                item = self._queue.get(timeout=IDLE_EXIT_S)
            except queue.Empty:
                with self._lock:
                    if self._pending == 0:
                        self._thread = None
                        return
                continue
            try:
                self._do(item)
            finally:
                with self._lock:
                    self._pending -= 1

    def _do(self, item: tuple[Any, ...]) -> None:
        kind = item[0]
        if kind == "run":
            _, fn, args, duration, label = item
            if self._error is not None:
                return
            t0 = time.perf_counter()
            try:
                fn(*args)
            except BaseException as exc:
                self._error, self._error_origin = exc, None
                self._error_where = f"{label} failed on {self.device.name} ({self.name} stream)"
                return
            if duration:
                self._owed += max(0.0, duration - (time.perf_counter() - t0))
                if self._owed >= SLEEP_QUANTUM_S:
                    self._pay()
        elif kind == "record":
            self._pay()
            event = item[1]
            event._error = self._error
            if self._error is not None:
                if self._error_origin is None:  # the node whose work failed recorded it
                    self._error_origin = event
                event._origin, event._where = self._error_origin, self._error_where
            event.time = time.perf_counter()
            event._done.set()
        elif kind == "wait":
            self._pay()
            event = item[1]
            event._done.wait()
            if event._error is not None and self._error is None:  # the cause stays the cause
                self._error, self._error_where = event._error, event._where
                self._error_origin = event._origin

    def _pay(self) -> None:
        """Sleep off the simulated time this stream owes."""
        if self._owed > 0:
            t0 = time.perf_counter()
            time.sleep(self._owed)
            self._owed -= time.perf_counter() - t0
        self._owed = max(self._owed, -SLEEP_QUANTUM_S)

    def _clear(self, err: BaseException) -> None:
        if self._error is err:
            self._error = None


# ----------------------------------------------------------------------------------------------
# The device


class SimDevice(Device):
    """A simulated GPU "gpu:N" with memory space "gpu:N" and backend "sim".

    Args:
        index: N.
        spec: its rates (``SimSpec``; None for the fast defaults).
        **rates: ``Device.__init__`` keyword arguments that replace the spec's (from_json).
    """

    def __init__(self, index: int, spec: SimSpec | None = None, **rates: Any) -> None:
        kw = (spec or SimSpec()).device_kwargs()
        kw.update(rates)
        name = f"gpu:{index}"
        super().__init__(name, kind="gpu", memory_space=name, backend="sim", **kw)
        self.index = index
        self.sim_spec = spec
        # reentrant: a garbage collection inside a locked section may free a buffer (_release)
        self._mem_lock = threading.RLock()
        _DEVICES.add(self)
        self._allocated = 0
        self._peak = 0
        self._copied = {"h2d": 0, "d2h": 0, "d2d": 0}
        # (op, attrs, shapes and dtypes) -> simulated seconds: eager mode repeats kernels
        self._durations: dict[tuple[Any, ...], float] = {}
        self.compute_stream = SimStream(self, "compute")
        self.h2d_stream = SimStream(self, "h2d")
        self.d2h_stream = SimStream(self, "d2h")

    # -- memory ---------------------------------------------------------------------------

    @property
    def xp(self) -> Any:
        return np

    @property
    def allocated(self) -> int:
        """Bytes of live buffers in this device's memory."""
        return self._allocated

    @property
    def peak_allocated(self) -> int:
        """Most bytes live at once since creation or ``reset_peak``."""
        return self._peak

    def reset_peak(self) -> None:
        with self._mem_lock:
            self._peak = self._allocated

    @property
    def copied_bytes(self) -> dict[str, int]:
        """Bytes this device's streams have copied since creation or ``reset_copied``, per kind:
        "h2d" (into it from the host), "d2h" (out of it to the host), "d2d" (into it from another
        GPU). Uploads outside a stream (``from_host``: constants when a plan loads) do not
        count."""
        with self._mem_lock:
            return dict(self._copied)

    def reset_copied(self) -> None:
        with self._mem_lock:
            self._copied = dict.fromkeys(self._copied, 0)

    def _count_copy(self, kind: str, nbytes: int) -> None:
        with self._mem_lock:
            self._copied[kind] += int(nbytes)

    def empty(self, spec: Any) -> SimArray:
        """A new buffer for ``spec`` in this device's memory; OutOfMemoryError past capacity."""
        nbytes = int(spec.nbytes)
        with self._mem_lock:
            if self._allocated + nbytes > self.capacity:
                raise OutOfMemoryError(
                    f"{self.name}: out of memory allocating {fmt_bytes(nbytes)} for {spec}: "
                    f"{fmt_bytes(self._allocated)} of {fmt_bytes(self.capacity)} in use")
            self._allocated += nbytes
            self._peak = max(self._peak, self._allocated)
        try:
            base = np.empty(spec.shape, spec.dtype)
        except BaseException:
            self._release(nbytes)
            raise
        weakref.finalize(base, self._release, nbytes)
        arr = base.view(SimArray)
        arr.memory_space = self.memory_space
        return arr

    def _release(self, nbytes: int) -> None:
        with self._mem_lock:
            self._allocated -= nbytes

    def owns(self, array: Any) -> bool:
        return isinstance(array, SimArray) and array.memory_space == self.memory_space

    def pinned_empty(self, spec: Any) -> np.ndarray:
        """A host buffer for copies (host memory is what the simulated DMA reads)."""
        return np.empty(spec.shape, spec.dtype)

    def from_host(self, array: np.ndarray) -> SimArray:
        """A copy of host array ``array`` in this device's memory (over the h2d stream)."""
        if space_of(array) != "host":
            raise DeviceError(f"{self.name}.from_host got a buffer of memory space "
                              f"{space_of(array)!r}; copy it with machine.copy")
        src = np.asarray(array)
        dst = self.empty(TensorSpec.of(src))
        self.copy_from_host(dst, src, self.h2d_stream)
        self.h2d_stream.synchronize()
        return dst

    def to_host(self, array: Any) -> np.ndarray:
        """A NumPy copy of buffer ``array``, after the work already queued on the compute stream."""
        self.check_owned((array,), "buffer", f"{self.name}.to_host")
        out = np.empty(array.shape, array.dtype)
        self.d2h_stream.wait(self.compute_stream.record())
        self.copy_to_host(out, array, self.d2h_stream)
        self.d2h_stream.synchronize()
        return out

    # -- copies ---------------------------------------------------------------------------

    def _link(self, src_space: str, dst_space: str) -> Link:
        links = self.machine_links
        if links is not None and (src_space, dst_space) in links:
            return links[(src_space, dst_space)]
        if "host" in (src_space, dst_space):
            return self.host_link
        return self.peer_link or self.host_link

    def _check_copy(self, dst: Any, src: Any, what: str) -> None:
        if tuple(dst.shape) != tuple(src.shape) or dst.dtype != src.dtype:
            raise DeviceError(f"{self.name} {what}: destination {dst.dtype}{list(dst.shape)} and "
                              f"source {src.dtype}{list(src.shape)} differ")

    def copy_from_host(self, dst: SimArray, src: np.ndarray, stream: SimStream) -> None:
        """Enqueue ``dst[...] = src`` (host to this device) on ``stream``."""
        self.check_owned((dst,), "destination", f"{self.name} copy_from_host")
        if space_of(src) != "host":
            raise DeviceError(f"{self.name} copy_from_host: the source lives in "
                              f"{space_of(src)!r}, not on the host")
        self._check_copy(dst, src, "copy_from_host")
        t = self._link("host", self.memory_space).time(src.nbytes)
        self._count_copy("h2d", src.nbytes)
        stream.launch_timed(t, "copy h2d", np.copyto, raw(dst), src)

    def copy_to_host(self, dst: np.ndarray, src: SimArray, stream: SimStream) -> None:
        """Enqueue ``dst[...] = src`` (this device to host) on ``stream``."""
        self.check_owned((src,), "source", f"{self.name} copy_to_host")
        if space_of(dst) != "host":
            raise DeviceError(f"{self.name} copy_to_host: the destination lives in "
                              f"{space_of(dst)!r}, not on the host")
        self._check_copy(dst, src, "copy_to_host")
        t = self._link(self.memory_space, "host").time(src.nbytes)
        self._count_copy("d2h", src.nbytes)
        stream.launch_timed(t, "copy d2h", np.copyto, dst, raw(src))

    def copy_peer(self, dst: SimArray, src: SimArray, stream: SimStream) -> None:
        """Enqueue ``dst[...] = src`` from another simulated GPU into this one on ``stream``."""
        self.check_owned((dst,), "destination", f"{self.name} copy_peer")
        if not isinstance(src, SimArray) or src.memory_space == self.memory_space:
            raise DeviceError(f"{self.name} copy_peer: the source must be a buffer of another "
                              f"simulated GPU, it lives in {space_of(src)!r}")
        self._check_copy(dst, src, "copy_peer")
        t = self._link(src.memory_space, self.memory_space).time(src.nbytes)
        self._count_copy("d2d", src.nbytes)
        stream.launch_timed(t, "copy d2d", np.copyto, raw(dst), raw(src))

    # -- kernels --------------------------------------------------------------------------

    def launch_kernel(self, op: Any, ins: Sequence[Any], attrs: Mapping[str, Any],
                      outs: Sequence[Any], stream: SimStream | None = None,
                      label: str | None = None) -> None:
        """Enqueue ``op``'s kernel on ``stream`` (default: compute), paced to its roofline."""
        label = label or op.name
        self.check_owned(ins, "input", label)
        self.check_owned(outs, "output", label)
        kernel = op.kernel_for(self.backend)
        if kernel is None:
            raise DeviceError(f"{label}: op {op.name} has no kernel on {self.name} (sim)")
        key: tuple[Any, ...] | None = (op.name, attrs,
                                       tuple((a.shape, a.dtype.str) for a in (*ins, *outs)))
        try:
            duration = self._durations.get(key)
        except TypeError:  # attrs given as a plain dict
            key, duration = None, None
        if duration is None:
            duration = self.kernel_time(op, ins, outs, attrs)
            if key is not None:
                if len(self._durations) >= _DURATION_CACHE:
                    self._durations.clear()
                self._durations[key] = duration
        stream = stream or self.compute_stream
        stream.launch_timed(duration, label, kernel, np, [raw(a) for a in ins], attrs,
                            [raw(a) for a in outs])

    def run_kernel(self, op: Any, ins: Sequence[Any], attrs: Any, outs: Sequence[Any]) -> None:
        """Run ``op``'s kernel on the compute stream and wait for it. A kernel's own exception is
        raised as it is (as on a CPU worker), so the caller can name the node and source line."""
        self.launch_kernel(op, ins, attrs, outs)
        try:
            self.compute_stream.synchronize()
        except ExecutionError as exc:
            cause = exc.__cause__
            if isinstance(cause, Exception) and not isinstance(cause, ExecutionError):
                raise cause from None
            raise

    def synchronize(self) -> None:
        """Wait until every stream of this device is idle; raise the first stream error."""
        errors = []
        for s in (self.compute_stream, self.h2d_stream, self.d2h_stream):
            try:
                s.synchronize()
            except ExecutionError as exc:
                errors.append(exc)
        if errors:
            raise errors[0]
