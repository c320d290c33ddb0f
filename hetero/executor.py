"""The executor: runs a Plan's per-device queues concurrently.

Design
======

A Plan gives every device a queue of node names in execution order. The executor runs each queue
in order on its own host thread and orders work across devices only through the plan's data
dependencies. There is no dynamic scheduling: the placer and the scheduler already decided where
and in which order everything runs, so the run-time job is to start each node as soon as its
inputs exist and to get out of the way.

Threads
    * one thread per CPU worker ("cpu:N") with a non-empty queue; it calls each node's kernel
      itself. The queue of the first CPU worker runs on the calling thread (in a plan without
      CPU work, the first GPU's enqueue loop does), so a plan that uses one worker or one GPU
      starts no host thread at all: under CPU contention every thread to start or wake costs a
      scheduling delay.
    * one host thread per GPU (CUDA or simulated) with a non-empty queue; it *enqueues* each node
      on one of the GPU's streams and moves on: compute on ``compute_stream``, host-to-device and
      device-to-device copies on ``h2d_stream``, device-to-host copies on ``d2h_stream``, so copies
      overlap compute.

Load time (``Executor(plan)``), done once per plan
    * arenas: one buffer per memory space of the plan's ``MemoryPlan``; every planned value is a
      typed view of its arena at its offset.
    * constants: uploaded once into the memory space of each constant node.
    * each queue is compiled into a flat list of instructions, one frozen record per node: a
      ``CpuStep`` on a CPU worker (its kernel, the lists ``ins`` and ``outs`` of the very buffers
      the kernel reads and writes, so the hot loop does no dictionary look-up and no allocation,
      its waits and signal), a ``GpuStep`` on a GPU (``launch`` enqueues the kernel or the copy on
      its stream, with its simulated duration precomputed on a simulated GPU; the stream, the
      events the stream waits for, the event slot it records). ``waits`` are ``(done flag, event
      slot or -1)`` pairs. The CPU hot loop unpacks the records' fields from plain tuples (a
      NamedTuple unpacks 60 ns slower per node in CPython 3.11).

State of a run (all of it; reset at the start of each run)
    ``slots``
        Values that change from run to run: graph inputs (the caller's arrays) and graph outputs
        (a fresh buffer per run, because the caller keeps them while the next run writes its
        arena). Their positions in the instruction lists are patched before any thread starts.
    ``done[node]`` (a ``threading.Event``)
        Exists only for nodes with a consumer on another thread. Set by the thread that owns the
        node: by a CPU worker when the kernel returned; by a GPU host thread once the node is
        enqueued and its stream event recorded.
    ``events[node]``
        The stream event recorded after a GPU node that a consumer on another stream or thread
        waits for: a GPU consumer makes its stream wait on it (no host block); a CPU consumer
        waits for ``done`` and then for the event.
    ``failure``
        The first error (exception, node, device), and ``aborted``.

Policy
    * Within a queue, order is the queue's order. Within a GPU stream it is enqueue order.
    * A node waits for exactly its inputs produced on another thread or stream; nothing else.
      Memory reuse needs no further waits: ``plan_memory`` only lets two values share bytes when
      the last use of one happens-before the producer of the other through these same edges.
    * Only ``_Run.fail`` mutates shared state after the threads start (every ``done`` is written
      by its single owner). It records the first error, sets ``aborted`` and sets every ``done``
      event so that no thread stays blocked; each thread checks ``aborted`` after its waits and
      before each node, and returns. The calling thread joins every thread, synchronises every
      stream, and raises ``ExecutionError`` naming the node, op, device and source line. A
      KeyboardInterrupt (in the calling thread or raised by a kernel) takes the same path and is
      re-raised. Afterwards no thread of the run is alive and the plan can run again.
    * Threads (``hetero.threads``): BLAS runs one thread during a run (``blas_limit``, shared
      with every other run of the process). With ``w`` host compute threads (CPU workers plus
      simulated GPUs, whose kernels run on the host), a CPU worker's splitting kernels (ops
      whose registry entry ``splits``: products and convolutions) cut their work into
      shape-determined pieces run on ``cores // w`` intra-op threads, set in each worker thread
      itself. So results are the same bits whatever the thread counts, the machine's load, or
      the other plans running in the process. ``Executor(plan, blas_threads=n)`` fixes another
      BLAS count (and no intra-op threads, unless given too).

Synchronous mode (``run(..., sync=True)``)
    Runs every node on the calling thread, one at a time, on its device, in one order that
    respects the data dependencies and every queue's order (so the arena layout stays valid),
    synchronising the stream after every GPU node. For debugging and as the reference that the
    concurrent runs must equal.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
import warnings
import weakref
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import numpy as np

from hetero import threads
from hetero.backends import cpu as cpu_kernels
from hetero.backends.sim import raw
from hetero.config import config
from hetero.errors import ExecutionError, HeteroError, OutOfMemoryError
from hetero.graph import Attrs, Graph, Node, NodeKind, TensorSpec, Value, toposort
from hetero.ops.registry import lookup
from hetero.profile import Profile
from hetero.reference import check_inputs
from hetero.spaces import output_space, stream_of
from hetero.verify import check

__all__ = ["CpuStep", "Executor", "GpuStep"]

_UINT8 = np.dtype(np.uint8)
#: Node kinds that exist before a run starts: nothing waits for them.
_BEFORE_RUN = frozenset({NodeKind.INPUT, NodeKind.CONSTANT})

#: (done flag, event slot or -1): what a step waits for before it runs.
Wait = tuple[threading.Event, int]


class CpuStep(NamedTuple):
    """One node on a CPU worker: its kernel bound to the buffers it reads and writes."""

    kernel: Callable[..., None]
    xp: Any
    ins: list[Any]
    attrs: Attrs
    outs: list[Any]
    waits: tuple[Wait, ...]
    signal: threading.Event | None
    index: int  # the node's position in the graph


class GpuStep(NamedTuple):
    """One node on a GPU: ``launch(ins, attrs, outs, stream, report)`` enqueues it on
    ``stream`` after the events ``stream_waits``; ``record`` is its event slot (or -1)."""

    launch: Callable[..., None]
    ins: list[Any]
    attrs: Attrs
    outs: list[Any]
    waits: tuple[Wait, ...]
    signal: threading.Event | None
    index: int
    stream: Any
    stream_waits: tuple[int, ...]
    record: int

# ----------------------------------------------------------------------------------------------
# Per-run state


class _Run:
    """Shared state of one run; ``fail`` is the only writer once the threads are started."""

    __slots__ = ("aborted", "error", "lock", "flags", "events", "trace", "keep", "intra",
                 "threads")

    def __init__(self, flags: list[threading.Event], nevents: int, trace: bool,
                 keep: bool = False, intra: int = 1) -> None:
        self.aborted = False
        self.keep = keep  # outputs="device": outputs computed on a GPU stay there
        self.intra = intra  # intra-op threads of the CPU workers' splitting kernels
        self.error: tuple[BaseException, Node | None, str] | None = None
        self.lock = threading.Lock()
        self.flags = flags
        self.events: list[Any] = [None] * nevents
        self.trace: list[tuple] | None = [] if trace else None
        # host threads working for this run (objects, not idents: an ident is reused as soon as
        # its thread ends)
        self.threads = {threading.current_thread()}

    def fail(self, exc: BaseException, node: Node | None, device: str) -> None:
        with self.lock:
            if self.error is None:
                self.error = (exc, node, device)
            self.aborted = True
        for f in self.flags:
            f.set()


class _Thread:
    """Everything one host thread runs: its device and its instructions."""

    def __init__(self, device: Any, graph: Graph) -> None:
        self.device = device
        self.graph = graph
        self.instrs: list[Any] = []  # CpuStep or GpuStep
        self.fields: list[tuple] = []  # the same steps as plain tuples, for the CPU hot loop

    def __repr__(self) -> str:
        return f"_Thread({self.device.name}, {len(self.instrs)} nodes)"


# ----------------------------------------------------------------------------------------------
# The executor


class Executor:
    """Runs a Plan: every device's queue concurrently (see the module docstring).

    Args:
        plan: the Plan to run, with its MemoryPlan (``compile`` and ``Plan.run`` see to it).
        blas_threads: BLAS threads per host compute thread during runs (default: the cores
            over the host compute threads, less cores other processes keep busy at load).
        intra_op_threads: threads a splitting kernel (a conv) may use per worker (default:
            the cores over the host compute threads when the plan has such kernels and
            ``blas_threads`` is not given, else 1); above 1, BLAS runs one thread.
        cost: a measured cost model (``hetero.cost.MeasuredCost``) that profiled runs feed and
            save (default: the plan's ``cost``, when it has ``record``; ``compile(...,
            cost="measured")`` gives the plan one).
    """

    def __init__(self, plan: Any, *, cost: Any = None, blas_threads: int | None = None,
                 intra_op_threads: int | None = None) -> None:
        if plan.memory is None:
            raise HeteroError("the plan has no memory plan: run hetero.passes.memory.plan_memory "
                              "on it first (compile and Plan.run do)")
        self.plan = plan
        self.graph: Graph = plan.graph
        self.machine = plan.machine
        if cost is None:  # a plan compiled with a measured model carries it
            cost = plan.cost
        self.cost = cost if hasattr(cost, "record") else None
        self._fixed_blas = blas_threads
        self._fixed_intra = intra_op_threads
        self._run_lock = threading.Lock()
        self._active: _Run | None = None  # the run under way, if any
        _EXECUTORS.add(self)
        self._load()

    # -- load time ---------------------------------------------------------------------------

    def _device(self, name: str) -> Any:
        return self.machine.device(name)

    def _load(self) -> None:
        """Everything a run needs that does not change between runs (see the module docstring)."""
        if config.checks:
            check(self.plan)
        graph, plan = self.graph, self.plan
        self._node_index = {n.name: i for i, n in enumerate(graph.nodes)}
        self._spaces = {d.name: d.memory_space for d in self.machine.devices}
        self._owner = {name: dev for dev, queue in plan.queues.items() for name in queue}
        self._outputs = list(dict.fromkeys(graph.outputs))
        # outputs the graph lists more than once: each place gets a copy of its own
        self._repeated = {v for v in self._outputs if graph.outputs.count(v) > 1}
        self._arenas = self._allocate_arenas(plan.memory)
        self._place_values()
        self._plan_synchronisation()
        self._compile_queues()
        self._order = self._sync_order()

    def _place_values(self) -> None:
        """Give every value its buffer: an arena view or an uploaded constant (``_fixed``), or a
        per-run slot (``_dynamic``: graph inputs and outputs, with their patch sites)."""
        graph = self.graph
        outputs = set(self._outputs)
        fixed: dict[Value, Any] = {}
        dynamic: dict[Value, list[tuple[list, int]]] = {}
        # a weight streamed to a GPU on every run is kept in page-locked host memory, so that
        # its copy is asynchronous (CUDA copies pageable memory through a staging buffer)
        streamed = {n.inputs[0].node: self._device(n.device) for n in graph.nodes
                    if n.is_transfer and n.attrs.get("streamed")}
        for node in graph.nodes:
            if node.is_input:
                dynamic[Value(node.name, 0)] = []
                continue
            dev = self._device(node.device or self._owner.get(node.name, "cpu:0"))
            if node.is_constant:
                data = graph.constants[node.name]
                if node.name in streamed:
                    buf = streamed[node.name].pinned_empty(node.outputs[0])
                    buf[...] = data
                    fixed[Value(node.name, 0)] = buf
                else:
                    fixed[Value(node.name, 0)] = dev.from_host(data)
                continue
            for i, spec in enumerate(node.outputs):
                v = Value(node.name, i)
                if v in outputs:
                    dynamic[v] = []
                else:
                    fixed[v] = self._arena_view(v, spec, node)
        self._fixed = fixed
        self._dynamic = dynamic
        self._output_space = {v: output_space(graph.node(v.node), self._spaces)
                              for v in self._outputs if not graph.node(v.node).is_input}
        # outputs a device-to-host copy brings home: with outputs="device" the caller gets a
        # copy inside the GPU, made by the run itself while the source is still live (its arena
        # slot may hold another value by the end of the run). A copy that brings the value home
        # for no one but the caller becomes that copy (``_kept``); one that host nodes also
        # read makes it besides (``_mirror``: the run's GPU buffer, patched in per run).
        read = {v for n in graph.nodes for v in n.inputs}
        self._kept = {}
        self._mirror: dict[Value, list] = {}
        for v in self._outputs:
            node = graph.node(v.node)
            if node.is_transfer and node.attrs["kind"] == "d2h":
                self._kept[v] = self._device(node.attrs["src"])
                if v in read:
                    self._mirror[v] = [None]

    def _plan_synchronisation(self) -> None:
        """Which nodes need a ``done`` flag (a consumer on another thread) and which a stream
        event (a consumer on another stream, or a host thread reading a GPU's copy)."""
        graph = self.graph
        thread_of = {}  # node -> (device, stream)
        for name, dev in self._owner.items():
            thread_of[name] = (dev, stream_of(graph.node(name), self._device(dev).kind))
        self._thread_of = thread_of
        consumers_elsewhere: set[str] = set()
        needs_event: set[str] = set()
        for node in graph.nodes:
            if node.name not in thread_of:
                continue
            dev, stream = thread_of[node.name]
            for v in node.inputs:
                if graph.node(v.node).kind in _BEFORE_RUN:
                    continue
                pdev, pstream = thread_of[v.node]
                if pdev != dev:
                    consumers_elsewhere.add(v.node)
                    if self._device(pdev).kind == "gpu":
                        needs_event.add(v.node)
                elif pstream != stream:
                    needs_event.add(v.node)
        by_position = self._node_index.get
        self._flag_of = {n: threading.Event() for n in sorted(consumers_elsewhere,
                                                              key=by_position)}
        self._flags = list(self._flag_of.values())
        self._event_slot = {n: i for i, n in enumerate(sorted(needs_event, key=by_position))}
        self._recorded_by = [graph.node(n) for n in self._event_slot]  # slot -> its node

    def _compile_queues(self) -> None:
        """One ``_Thread`` per device with work, its queue compiled into instructions; the first
        CPU worker first (the calling thread runs the first one)."""
        self._threads: list[_Thread] = []
        for dev, queue in self.plan.queues.items():
            device = self._device(dev)
            th = _Thread(device, self.graph)
            for name in queue:
                node = self.graph.node(name)
                if node.is_constant:  # uploaded at load time
                    continue
                op = None if node.is_transfer else lookup(node.op, node)
                th.instrs.append(self._compile(node, device, op, self._dynamic))
            # CPython unpacks a plain tuple 60 ns faster than a NamedTuple (a tuple subclass)
            th.fields = [tuple(step) for step in th.instrs]
            if th.instrs:
                self._threads.append(th)
        self._threads.sort(key=lambda t: (t.device.kind != "cpu", t.device.name))
        self._host_compute = sum(1 for t in self._threads
                                 if t.device.kind == "cpu" or t.device.backend == "sim")
        self._blas, self._intra = self._choose_threads()

    def _allocate_arenas(self, memory: Any) -> dict[str, Any]:
        arenas = {}
        gpus = [d for d in self.machine.devices if d.kind == "gpu"]
        for space, arena in memory.arenas.items():
            nbytes = max(arena.arena_bytes, 1)
            spec = TensorSpec((nbytes,), _UINT8)
            if space == "host":
                pinned = gpus[0] if gpus else None
                # pinned host memory lets copies to and from a GPU run asynchronously
                try:
                    buf = pinned.pinned_empty(spec) if pinned is not None else np.empty(nbytes,
                                                                                        _UINT8)
                except (MemoryError, ValueError) as exc:
                    raise OutOfMemoryError(f"the plan's host arena of {nbytes} bytes cannot be "
                                           f"allocated: {exc}") from None
            else:
                dev = next(d for d in self.machine.devices if d.memory_space == space)
                buf = dev.empty(spec)
            arenas[space] = buf
        return arenas

    def _arena_view(self, v: Value, spec: TensorSpec, node: Node) -> Any:
        loc = self.plan.memory.location(v)
        space = output_space(node, self._spaces)
        if loc is None or loc[0] != space:
            dev = next(d for d in self.machine.devices if d.memory_space == space)
            return dev.empty(spec)
        _, off, nbytes = loc
        arena = self._arenas[space]
        return arena[off:off + nbytes].view(spec.dtype).reshape(spec.shape)

    def _buffer_ref(self, v: Value, site: list, pos: int, dynamic: dict) -> Any:
        if v in dynamic:
            dynamic[v].append((site, pos))
            return None
        return self._fixed[v]

    def _compile(self, node: Node, device: Any, op: Any, dynamic: dict) -> tuple:
        """One instruction: the node's kernel bound to its buffers, waits and signal."""
        ins: list[Any] = [None] * len(node.inputs)
        for i, v in enumerate(node.inputs):
            ins[i] = self._buffer_ref(v, ins, i, dynamic)
        outs: list[Any] = [None] * len(node.outputs)
        for i in range(len(node.outputs)):
            outs[i] = self._buffer_ref(Value(node.name, i), outs, i, dynamic)
        idx = self._node_index[node.name]
        dev, stream = self._thread_of[node.name]
        host_waits: list[tuple[threading.Event, int]] = []  # (done flag, event slot or -1)
        stream_waits: list[int] = []
        for p_name in dict.fromkeys(v.node for v in node.inputs):
            p = self.graph.node(p_name)
            if p.kind in _BEFORE_RUN:
                continue
            pdev, pstream = self._thread_of[p_name]
            pgpu = self._device(pdev).kind == "gpu"
            if pdev != dev:
                if device.kind == "gpu":
                    host_waits.append((self._flag_of[p_name], -1))
                    if pgpu:
                        stream_waits.append(self._event_slot[p_name])
                else:
                    host_waits.append((self._flag_of[p_name],
                                       self._event_slot[p_name] if pgpu else -1))
            elif pstream != stream:
                stream_waits.append(self._event_slot[p_name])
        signal = self._flag_of.get(node.name)
        record = self._event_slot.get(node.name, -1)
        if device.kind != "gpu":
            kernel = _host_kernel(node, op, device)
            return CpuStep(kernel, device.xp, ins, node.attrs, outs, tuple(host_waits), signal,
                           idx)
        streams = {"compute": device.compute_stream, "h2d": device.h2d_stream,
                   "d2h": device.d2h_stream}
        if op is not None and any(a is None for a in ins + outs):
            raise ExecutionError(f"{node.label} on {dev} reads or writes a graph input or "
                                 "output directly; the partition must copy it through the host")
        value = Value(node.name, 0)
        launch = _gpu_launch(node, op, device, ins, outs,
                             keepable=value in self._kept and value not in self._mirror,
                             mirror=self._mirror.get(value))
        return GpuStep(launch, ins, node.attrs, outs, tuple(host_waits), signal, idx,
                       streams[stream], tuple(stream_waits), record)

    def _sync_order(self) -> list[str]:
        """One order of the queued nodes that respects data edges and every queue's order,
        earliest estimated start first."""
        names = list(self._owner)
        at = {n: i for i, n in enumerate(names)}
        succ: list[set[int]] = [set() for _ in names]
        for node in self.graph.nodes:
            if node.name in at:
                succ_of = at[node.name]
                for v in node.inputs:
                    if v.node in at:
                        succ[at[v.node]].add(succ_of)
        for queue in self.plan.queues.values():
            for a, b in zip(queue, queue[1:]):
                succ[at[a]].add(at[b])
        pos, est = self._node_index, self.plan.estimates

        def key(i: int) -> tuple[float, int]:
            n = names[i]
            return (est[n][0] if n in est else 0.0, pos[n])

        order = toposort(len(names), succ, key)
        if order is None:
            raise ExecutionError("the plan's queues contradict its data dependencies; it "
                                 "would deadlock (check(plan) says where)")
        return [names[i] for i in order]

    # -- run time ----------------------------------------------------------------------------

    def run(self, inputs: Sequence[Any], *, profile: bool = False, sync: bool = False,
            outputs: str = "host") -> Any:
        """Run the plan once.

        Args:
            inputs: one array per graph input (NumPy arrays, or anything ``np.asarray`` takes).
            profile: also return a ``Profile`` of this run.
            sync: run node by node on the calling thread (debugging; see the module docstring).
            outputs: "host" (NumPy arrays) or "device" (each output stays where it was computed:
                an output computed on a GPU comes back as an array on that GPU).

        Returns:
            The list of outputs, or ``(outputs, profile)`` when ``profile`` is true.
        """
        if outputs not in ("host", "device"):
            raise HeteroError(f"outputs must be 'host' or 'device', got {outputs!r}")
        arrays = check_inputs(self.graph, inputs)
        if not self._run_lock.acquire(blocking=False):
            self._refuse_reentry()
            self._run_lock.acquire()
        try:  # one run at a time: runs share the arenas
            run = self._active = _Run(self._flags, len(self._event_slot), profile,
                                      outputs == "device", self._intra)
            # sync mode keeps the same limits, so that it computes what the concurrent run does
            limits = contextlib.ExitStack()
            limits.enter_context(threads.blas_limit(self._blas))
            limits.enter_context(threads.intra_op(self._intra))
            try:
                self._bind(arrays, keep=outputs == "device")
                bases = self._time_bases() if profile else {}
                gpus = [d for d in self.machine.devices
                        if d.kind == "gpu" and hasattr(d, "reset_peak")] if profile else []
                for dev in gpus:  # a profile measures this run's high-water mark
                    dev.reset_peak()
                t0 = time.perf_counter()
                if sync:
                    self._run_sync(run)
                else:
                    self._run_concurrent(run)
                t1 = time.perf_counter()
                _resolve_times(run, bases)
                result = self._collect(arrays, outputs)
            finally:
                limits.close()
                self._unbind()
        finally:
            self._active = None
            self._run_lock.release()
        if not profile:
            return result
        kept = (frozenset(v.node for v in self._kept if v not in self._mirror)
                if outputs == "device" else frozenset())
        prof = Profile.from_run(self.plan, run.trace or [], t0, t1, kept,
                                peak_memory={d.memory_space: int(d.peak_allocated)
                                             for d in gpus})
        if self.cost is not None:
            self._learn(prof)
        return result, prof

    def _refuse_reentry(self) -> None:
        """A run of this plan is under way: refuse a ``run`` from one of its own threads (a
        kernel or stream callback of that run), which would wait for itself forever."""
        active = self._active
        me = threading.current_thread()
        if active is None:
            return
        ours = me in active.threads or any(
            getattr(stream, "_thread", None) is me
            for dev in self.machine.devices if dev.kind == "gpu"
            for stream in (dev.compute_stream, dev.h2d_stream, dev.d2h_stream))
        if ours:
            raise ExecutionError(
                f"plan {self.graph.name!r}: run() was called from inside a run of the same plan "
                f"(on its thread {me.name!r}: a kernel or callback of that run); it would wait "
                "for itself forever. Compile a second plan for nested use, or run it afterwards")

    def _learn(self, prof: Any) -> None:
        """Record a profiled run's kernel times into the measured cost model and save it, so
        that the next compile with that model places with what really ran (see Plan.cost)."""
        if prof.feed(self.cost, threads=(self._blas, self._intra)) and getattr(
                self.cost, "dirty", True):
            save = getattr(self.cost, "save", None)
            if save is not None:
                try:
                    save()
                except OSError as exc:  # a read-only cache must not fail a finished run
                    warnings.warn(f"hetero: could not save measured costs: {exc}", stacklevel=3)

    def _bind(self, arrays: list[np.ndarray], keep: bool = False) -> None:
        """Patch this run's inputs and fresh output buffers into the instruction lists (with
        ``keep``, outputs computed on a GPU get a buffer on that GPU)."""
        graph = self.graph
        values: dict[Value, Any] = {}
        for name, arr in zip(graph.inputs, arrays):
            values[Value(name, 0)] = arr
        for v in self._outputs:
            if v in values or v not in self._dynamic:
                continue
            node = graph.node(v.node)
            space = self._output_space[v]
            if keep and v in self._mirror:
                self._mirror[v][0] = self._kept[v].empty(node.outputs[v.index])
            if keep and v in self._kept and v not in self._mirror:
                values[v] = self._kept[v].empty(node.outputs[v.index])
            elif space == "host":
                try:
                    values[v] = np.empty(node.outputs[v.index].shape, node.outputs[v.index].dtype)
                except (MemoryError, ValueError) as exc:
                    raise OutOfMemoryError(f"{node.label}: cannot allocate its output "
                                           f"{node.outputs[v.index]} on the host: {exc}") from None
            else:
                dev = next(d for d in self.machine.devices if d.memory_space == space)
                values[v] = dev.empty(node.outputs[v.index])
        for v, sites in self._dynamic.items():
            arr = values.get(v)
            for site, pos in sites:
                site[pos] = arr
        self._bound = values
        for f in self._flags:
            f.clear()

    def _unbind(self) -> None:
        for sites in self._dynamic.values():
            for site, pos in sites:
                site[pos] = None
        for holder in self._mirror.values():
            holder[0] = None
        self._bound = {}

    def _collect(self, arrays: list[np.ndarray], where: str) -> list[Any]:
        graph = self.graph
        result = []
        for v in graph.outputs:
            node = graph.node(v.node)
            if node.is_input:
                result.append(np.array(self._bound[v], copy=True))
                continue
            if node.is_constant:
                result.append(np.array(graph.constants[node.name], copy=True))
                continue
            arr = self._bound[v]
            if where == "device" and v in self._mirror:
                arr = self._mirror[v][0]  # copied on its GPU by the run, beside the d2h copy
            elif where == "device" and v in self._kept:
                pass  # computed into a buffer on its GPU by the run itself
            elif v in self._repeated and any(a is arr for a in result):
                arr = np.array(arr, copy=True)
            result.append(arr)
        return result

    def _run_concurrent(self, run: _Run) -> None:
        threads = self._threads
        finished: list[threading.Event] = []
        started: list[threading.Thread] = []
        try:
            # the calling thread runs the first queue itself (a CPU worker's if any, else a
            # GPU's enqueue loop): one thread fewer to start and to wake per run
            main = threads[0] if threads else None
            for th in threads:
                if th is main:
                    continue
                target = _gpu_loop if th.device.kind == "gpu" else _cpu_loop
                begun, done = threading.Event(), threading.Event()
                t = threading.Thread(target=_thread_main, args=(target, th, run, begun, done),
                                     daemon=True, name=f"hetero-{th.device.name}")
                # listed before start(): an interrupt inside start() must still be waited for
                started.append(t)
                finished.append((begun, done))
                t.start()
            if main is not None:
                (_gpu_loop if main.device.kind == "gpu" else _cpu_loop)(main, run)
            for _, done in finished:
                done.wait()
        except BaseException as exc:  # KeyboardInterrupt while waiting: cancel everything
            run.fail(exc, None, "host")
        finally:
            launched = _wait_all(finished, run)
            for t, ok in zip(started, launched):
                if ok:
                    t.join()
            self._synchronize_streams(run)
        _raise_failure(run, self._recorded_by)

    @property
    def blas_threads(self) -> int:
        """BLAS threads during every run of this executor: one, unless the caller fixed another
        count (``hetero.threads``: products split themselves over the intra-op threads)."""
        return self._blas

    def _choose_threads(self) -> threads.Threads:
        """The thread policy of this plan's runs (``hetero.threads.choose``): BLAS one thread,
        and the cores shared out over the host compute threads as intra-op threads of the
        splitting kernels that CPU workers run."""
        splits = any(lookup(self.graph.node(name).op).splits
                     for th in self._threads if th.device.kind == "cpu"
                     for name in self.plan.queues[th.device.name]
                     if self.graph.node(name).kind is NodeKind.COMPUTE)
        return threads.choose(self._host_compute, splits, fixed_blas=self._fixed_blas,
                              fixed_intra=self._fixed_intra)

    @property
    def intra_op_threads(self) -> int:
        """Threads each splitting kernel (an op whose registry entry ``splits``) uses during
        runs."""
        return self._intra

    def _time_bases(self) -> dict[str, tuple[Any, float]]:
        """Per CUDA GPU: an event recorded on its idle compute stream now, and the host time."""
        bases = {}
        for th in self._threads:
            d = th.device
            if d.kind == "gpu" and hasattr(d, "event"):
                ev = d.compute_stream.record(d.event(timing=True))
                ev.synchronize()
                bases[d.name] = (ev, time.perf_counter())
        return bases

    def _synchronize_streams(self, run: _Run) -> None:
        """Wait for every stream this plan uses; a stream's own error becomes the run's."""
        for th in self._threads:
            if th.device.kind == "gpu":
                d = th.device
                for s in (d.compute_stream, d.h2d_stream, d.d2h_stream):
                    try:
                        s.synchronize()
                    except BaseException as exc:
                        run.fail(exc, None, d.name)

    def _run_sync(self, run: _Run) -> None:
        by_name = {}
        for th in self._threads:
            for step in th.instrs:
                by_name[self.graph.nodes[step.index].name] = (th, step)
        try:
            for name in self._order:
                if name not in by_name:
                    continue
                th, step = by_name[name]
                if th.device.kind == "gpu":
                    _gpu_step(th, step, run, wait=False)
                    try:
                        step.stream.synchronize()
                    except Exception as exc:  # this step's own work failed on its stream
                        run.fail(exc, self.graph.nodes[step.index], th.device.name)
                        break
                else:
                    _cpu_step(th, step, run)
                if run.aborted:
                    break
        except BaseException as exc:
            run.fail(exc, None, "host")
        finally:
            self._synchronize_streams(run)
        _raise_failure(run, self._recorded_by)

    def __repr__(self) -> str:
        return f"Executor({self.graph.name!r}, {', '.join(map(repr, self._threads))})"


def _raise_failure(run: _Run, recorded_by: Sequence[Node] = ()) -> None:
    """Raise the run's first error, naming the node it came from: the failing node itself, or
    (``recorded_by``: event slot -> node) the node whose stream event reported it to a
    waiting consumer, such as a copy a host node waited for."""
    if run.error is None:
        return
    exc, node, device = run.error
    if isinstance(exc, KeyboardInterrupt) or not isinstance(exc, Exception):
        raise exc
    event = getattr(exc, "event", None)
    slot = next((i for i, e in enumerate(run.events) if e is event), -1) if event else -1
    # the first event recorded on a stream after its work failed: a copy's own (its consumer
    # is always on another stream); after a kernel it may be a later node's, and the stream's
    # message names the kernel already
    if 0 <= slot < len(recorded_by) and recorded_by[slot] is not node and \
            recorded_by[slot].is_transfer:
        source = recorded_by[slot]
        waiter = f"; {node.label} waited for it" if node is not None else ""
        raise ExecutionError(f"{_describe(source)} failed on {source.device}: "
                             f"{type(exc).__name__}: {exc}{waiter}") from exc
    if node is not None and node.is_transfer:
        raise ExecutionError(f"{_describe(node)} failed on {device}: {type(exc).__name__}: "
                             f"{exc}") from exc
    if node is None:
        raise ExecutionError(f"run failed on {device}: {type(exc).__name__}: {exc}") from exc
    raise ExecutionError(f"{node.label} failed on {device}: {type(exc).__name__}: {exc}") from exc


def _describe(node: Node) -> str:
    """A node as a failure message names it; a transfer with the value it carries."""
    if not node.is_transfer:
        return node.label
    a = node.attrs
    return (f"{node.label}, the {a['kind']} copy of {node.inputs[0]} ({node.outputs[0]}) from "
            f"{a['src']} to {a['dst']},")


# ----------------------------------------------------------------------------------------------
# Kernels bound to devices


def _host_kernel(node: Node, op: Any, device: Any) -> Any:
    """The kernel ``f(xp, ins, attrs, outs)`` of a node on a CPU worker."""
    if op is None:  # a copy inside the host space
        return _host_copy
    cpu_kernels.install()  # the compiled CPU kernels, once per process (numba, lazily)
    kernel = op.kernel_for(device.backend) or op.kernel_for("numpy")
    if kernel is None:
        raise ExecutionError(f"{node.label} has no kernel for {device.name} "
                             f"({device.backend})")
    return kernel


def _host_copy(xp: Any, ins: list, attrs: Any, outs: list) -> None:
    xp.copyto(outs[0], ins[0])


def _gpu_launch(node: Node, op: Any, device: Any, ins: list, outs: list, *,
                keepable: bool = False, mirror: list | None = None) -> Any:
    """``launch(ins, attrs, outs, stream, report)``: enqueue the node on ``stream``.

    A compute node never reads or writes a per-run slot (graph inputs and outputs live on the
    host), so its buffers are bound here once; a simulated GPU also gets the node's simulated
    duration, computed once. A ``keepable`` device-to-host copy (it brings a graph output home
    and nothing else reads it) copies inside the GPU instead when the run keeps outputs there
    (``report[0].keep``); one with a ``mirror`` (host nodes read it too) makes that copy into
    ``mirror[0]`` besides bringing it home."""
    if op is None:
        kind = node.attrs["kind"]
        if kind == "h2d":
            def launch(ins, attrs, outs, stream, report):
                device.copy_from_host(outs[0], ins[0], stream)
        elif kind == "d2h" and mirror is not None:
            def launch(ins, attrs, outs, stream, report):
                device.copy_to_host(outs[0], ins[0], stream)
                if report[0].keep:
                    _copy_on_device(device, mirror[0], ins[0], stream)
        elif kind == "d2h" and keepable:
            def launch(ins, attrs, outs, stream, report):
                if report[0].keep:
                    _copy_on_device(device, outs[0], ins[0], stream)
                else:
                    device.copy_to_host(outs[0], ins[0], stream)
        elif kind == "d2h":
            def launch(ins, attrs, outs, stream, report):
                device.copy_to_host(outs[0], ins[0], stream)
        else:
            def launch(ins, attrs, outs, stream, report):
                device.copy_peer(outs[0], ins[0], stream)
        return launch
    kernel = op.kernel_for(device.backend)
    if kernel is None:
        raise ExecutionError(f"{node.label} has no kernel for {device.name} "
                             f"({device.backend})")
    label = node.label
    device.check_owned(ins, "input", label)
    device.check_owned(outs, "output", label)
    xp = device.xp
    name = device.name

    def body(ins, attrs, outs, report):
        if report[0].aborted:
            return
        try:
            kernel(xp, ins, attrs, outs)
        except BaseException as exc:
            report[0].fail(exc, node, name)

    if device.backend == "sim":
        duration = device.kernel_time(op, [TensorSpec.of(a) for a in ins],
                                      [TensorSpec.of(a) for a in outs], node.attrs)
        raw_ins, raw_outs = [raw(a) for a in ins], [raw(a) for a in outs]

        def launch(ins, attrs, outs, stream, report):
            stream.launch_timed(duration, label, body, raw_ins, attrs, raw_outs, report)
        return launch

    def launch(ins, attrs, outs, stream, report):
        stream.launch(body, ins, attrs, outs, report)
    return launch


def _copy_on_device(device: Any, dst: Any, src: Any, stream: Any) -> None:
    """Enqueue ``dst[...] = src`` within one GPU's memory on ``stream`` (a simulated GPU paces
    it to reading and writing the bytes at its memory bandwidth)."""
    if device.backend == "sim":
        seconds = 2.0 * src.nbytes / device.mem_bandwidth
        stream.launch_timed(seconds, "copy on device", np.copyto, raw(dst), raw(src))
    else:
        stream.launch(device.xp.copyto, dst, src)


# ----------------------------------------------------------------------------------------------
# Thread loops (the hot path)


def _cpu_loop(th: _Thread, run: _Run) -> None:
    """Run one CPU worker's queue; on the first error report it through ``run.fail``."""
    instrs = th.fields  # the CpuSteps' fields, unpacked in CpuStep's order
    events = run.events
    trace = run.trace
    clock = time.perf_counter
    i = -1
    try:
        if trace is None:
            for kernel, xp, ins, attrs, outs, waits, signal, i in instrs:  # noqa: B007
                if waits:
                    for flag, ev in waits:
                        if not flag.is_set():
                            flag.wait()
                        if ev >= 0 and not run.aborted:
                            events[ev].synchronize()
                if run.aborted:
                    return
                kernel(xp, ins, attrs, outs)
                if signal is not None:
                    signal.set()
        else:
            name = th.device.name
            for kernel, xp, ins, attrs, outs, waits, signal, i in instrs:
                for flag, ev in waits:
                    if not flag.is_set():
                        flag.wait()
                    if ev >= 0 and not run.aborted:
                        events[ev].synchronize()
                if run.aborted:
                    return
                t0 = clock()
                kernel(xp, ins, attrs, outs)
                trace.append((i, name, "worker", t0, clock()))
                if signal is not None:
                    signal.set()
    except BaseException as exc:
        node = None
        if i >= 0:
            node = _node_of(th, i)
        run.fail(exc, node, th.device.name)


#: Every executor of the process: in a child after ``os.fork`` a run that another thread of the
#: parent had under way does not exist, so its lock is released there.
_EXECUTORS: weakref.WeakSet[Executor] = weakref.WeakSet()


def _restart_after_fork() -> None:
    for ex in list(_EXECUTORS):
        ex._run_lock = threading.Lock()
        ex._active = None


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_restart_after_fork)


def _thread_main(loop: Any, th: _Thread, run: _Run, begun: threading.Event,
                 done: threading.Event) -> None:
    run.threads.add(threading.current_thread())
    begun.set()
    try:
        with threads.intra_op(run.intra):  # the setting is each thread's own
            loop(th, run)
    finally:
        done.set()


#: How long to wait for a thread whose start() was interrupted to show that it runs at all.
_START_GRACE_S = 1.0


def _wait_all(finished: list[tuple[threading.Event, threading.Event]], run: _Run) -> list[bool]:
    """Wait until every launched thread of the run has returned, even through further
    interrupts; returns, per thread, whether it was launched.

    (Waiting on our own events, not ``Thread.join``: an interrupted join in Python 3.11 can mark a
    thread as stopped while it still runs. A thread whose ``start()`` was interrupted before the
    thread existed never sets ``begun``.)"""
    launched = [True] * len(finished)
    k = 0
    while k < len(finished):
        begun, done = finished[k]
        try:
            if begun.wait(_START_GRACE_S):
                done.wait()
            else:
                launched[k] = False
            k += 1
        except BaseException as exc:  # a second Ctrl-C: keep cancelling, keep waiting
            run.fail(exc, None, "host")
    return launched


def _node_of(th: _Thread, index: int) -> Node:
    return th.graph.nodes[index]


def _cpu_step(th: _Thread, instr: CpuStep, run: _Run) -> None:
    kernel, xp, ins, attrs, outs, waits, signal, i = instr
    t0 = time.perf_counter()
    try:
        kernel(xp, ins, attrs, outs)
    except BaseException as exc:
        run.fail(exc, _node_of(th, i), th.device.name)
        return
    if run.trace is not None:
        run.trace.append((i, th.device.name, "worker", t0, time.perf_counter()))


def _gpu_loop(th: _Thread, run: _Run) -> None:
    """Enqueue one GPU's queue on its streams; on the first error report it."""
    instr: GpuStep | None = None
    try:
        for instr in th.instrs:
            if run.aborted:
                return
            _gpu_step(th, instr, run, wait=True)
    except BaseException as exc:
        node = _node_of(th, instr.index) if instr is not None else None
        run.fail(exc, node, th.device.name)


def _gpu_step(th: _Thread, instr: GpuStep, run: _Run, wait: bool) -> None:
    launch, ins, attrs, outs, waits, signal, i, stream, stream_waits, record = instr
    events = run.events
    if wait:
        for flag, _ in waits:
            if not flag.is_set():
                flag.wait()
        if run.aborted:
            return
        for ev in stream_waits:
            stream.wait(events[ev])
    trace = run.trace
    if trace is not None:
        device = th.device
        e0 = _timing_event(device, stream)
        launch(ins, attrs, outs, stream, (run,))
        e1 = _timing_event(device, stream)
        trace.append((i, device.name, _stream_name(device, stream), (e0, e1), None))
    else:
        launch(ins, attrs, outs, stream, (run,))
    if record >= 0:
        events[record] = stream.record()
    if signal is not None:
        signal.set()


def _timing_event(device: Any, stream: Any) -> Any:
    """An event recorded on ``stream`` that can tell when the stream passed it."""
    make = getattr(device, "event", None)
    if make is not None:  # CUDA: events time only when created for it
        return stream.record(make(timing=True))
    return stream.record()  # simulated: every event notes the time it passed


def _resolve_times(run: _Run, bases: dict[str, tuple[Any, float]]) -> None:
    """Turn the GPU records' event pairs into host times (after the streams are synchronised).

    A simulated event knows the ``time.perf_counter()`` at which it passed; a CUDA event only
    knows its distance from another event, so each GPU's times are measured from an event
    recorded on an idle stream at the start of the run, at a known host time."""
    trace = run.trace
    if not trace:
        return
    for k, (i, dev, stream, start, end) in enumerate(trace):
        if end is not None:
            continue
        e0, e1 = start
        t = getattr(e0, "time", None)
        if t is not None:
            trace[k] = (i, dev, stream, e0.time, e1.time)
        elif dev in bases:
            base, host = bases[dev]
            trace[k] = (i, dev, stream, host + base.elapsed_ms(e0) / 1e3,
                        host + base.elapsed_ms(e1) / 1e3)
        else:
            trace[k] = (i, dev, stream, 0.0, 0.0)


def _stream_name(device: Any, stream: Any) -> str:
    if stream is device.compute_stream:
        return "compute"
    if stream is device.h2d_stream:
        return "h2d"
    return "d2h"
