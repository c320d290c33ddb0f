"""Cost models: how long a node takes on a device, and how long a copy between devices takes.

Every model has the two methods of the ``CostModel`` protocol:

- ``compute(node, device, ins=None) -> seconds``: ``math.inf`` where the op has no kernel on the
  device's backend. ``ins`` are the node's input specs; most cost formulas need them (a matmul's
  flops depend on its inner dimension), so the passes always pass them. Without them the output
  specs stand in.
- ``transfer(nbytes, src, dst) -> seconds``: 0 on one device; a small synchronisation cost
  between two CPU workers (they share the host memory space); link latency + bytes / bandwidth
  between memory spaces.

Devices may be given as ``Device`` objects or names. Three models:

- ``RooflineCost(machine)``: from the machine's specs: ``launch_overhead + max(flops /
  peak_flops[op_class], bytes / mem_bandwidth)``.
- ``MeasuredCost(machine)``: StarPU-style history. Each (op, input shapes, dtypes, attrs, device)
  is timed by running its kernel on that device (``calibrate``) or fed by the executor's
  measurements (``record``); every sample, from either source, updates one entry's running mean
  and minimum, and the model reads one of them (``statistic``, the mean by default). A CPU
  kernel's time depends on the threads it may use, so CPU entries are kept per thread condition
  (BLAS threads, intra-op threads per worker): ``record`` files a run's times under the
  executor's thread policy, ``measure`` times under the condition the model looks up, and
  ``compile`` sets that condition to the policy the executor will choose for the plan
  (``plan_threads``); a kernel measured only under another condition (or in an older cache,
  under an unknown one) borrows that time before the roofline. The history is cached as JSON in
  the user cache directory (``$HETERO_CACHE_DIR``, else ``$XDG_CACHE_HOME/hetero``, else
  ``~/.cache/hetero``). Anything not measured falls back to the roofline.
- ``TableCost(table)``: user-supplied seconds per (node name | op, device name | device kind).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import re
import sys
import tempfile
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np

from hetero.backends import cpu as cpu_kernels
from hetero.config import resolve_machine
from hetero.errors import HeteroError
from hetero.graph import Graph, Node, NodeKind, TensorSpec
from hetero.ops import registry
from hetero.threads import Threads, blas_limit, choose, intra_op

#: Seconds for a value to change hands between two CPU workers: an event and a thread wake-up.
CPU_SYNC = 2e-6

Specs = tuple[TensorSpec, ...]


@runtime_checkable
class CostModel(Protocol):
    """What the placer and scheduler ask of a cost model."""

    def compute(self, node: Node, device: Any, ins: Specs | None = None) -> float: ...

    def transfer(self, nbytes: float, src: Any, dst: Any) -> float: ...


def input_specs(graph: Graph, node: Node) -> Specs:
    """The specs of the values ``node`` reads in ``graph``."""
    return tuple(graph.spec(v) for v in node.inputs)


def _resolve(machine: Any, device: Any) -> Any:
    return machine.device(device) if isinstance(device, str) else device


def _kernel_exists(node: Node, device: Any) -> bool:
    return registry.has_kernel(node.op, device.backend)


def _work(node: Node, ins: Specs | None) -> registry.Cost:
    op = registry.lookup(node.op, node)
    if ins is None:
        return registry.default_cost(node.outputs, node.outputs, node.attrs)
    return op.cost_of(ins, node.outputs, node.attrs)


def _link_time(machine: Any, nbytes: float, src: Any, dst: Any, cpu_sync: float) -> float:
    if src.name == dst.name:
        return 0.0
    if src.memory_space == dst.memory_space:
        return cpu_sync
    return float(machine.link(src.memory_space, dst.memory_space).time(nbytes))


class RooflineCost:
    """Times from the machine's specs: launch overhead + max(flops / peak, bytes / bandwidth).

    >>> from hetero.devices import Machine
    >>> cost = RooflineCost(Machine.parse("cpu:2"))
    >>> cost.transfer(1 << 20, "cpu:0", "cpu:0"), cost.transfer(1 << 20, "cpu:0", "cpu:1")
    (0.0, 2e-06)
    """

    def __init__(self, machine: Any, *, cpu_sync: float = CPU_SYNC) -> None:
        self.machine = machine
        self.cpu_sync = cpu_sync

    def compute(self, node: Node, device: Any, ins: Specs | None = None) -> float:
        """Estimated seconds of ``node`` on ``device`` (inf where it has no kernel)."""
        device = _resolve(self.machine, device)
        if node.kind in (NodeKind.INPUT, NodeKind.CONSTANT):
            return 0.0
        if node.kind is NodeKind.TRANSFER:
            nbytes = sum(s.nbytes for s in node.outputs)
            return self.transfer(nbytes, node.attrs["src"], node.attrs["dst"])
        if not _kernel_exists(node, device):
            return math.inf
        return device.roofline(_work(node, ins), registry.lookup(node.op, node).op_class)

    def transfer(self, nbytes: float, src: Any, dst: Any) -> float:
        """Estimated seconds to make ``nbytes`` produced on ``src`` readable on ``dst``."""
        src, dst = _resolve(self.machine, src), _resolve(self.machine, dst)
        return _link_time(self.machine, nbytes, src, dst, self.cpu_sync)


class TableCost:
    """User-supplied times.

    ``table`` maps keys to seconds (or to ``fn(node, device) -> seconds``). For a node the first
    key found wins: ``(node name, device name)``, ``(op, device name)``, ``(op, device kind)``,
    ``op``. A missing entry falls back to ``fallback`` (a cost model), or is an error without one.
    ``transfers`` maps ``(src kind, dst kind)`` ("cpu"/"gpu") to ``(latency s, bandwidth B/s)``;
    copies it lacks go to ``fallback``, or cost 0 inside one memory space.
    """

    def __init__(self, table: Mapping[Any, Any], *, machine: Any = None,
                 transfers: Mapping[tuple[str, str], tuple[float, float]] | None = None,
                 fallback: Any = None) -> None:
        self.table = dict(table)
        self.machine = machine if machine is not None else getattr(fallback, "machine", None)
        self.transfers = dict(transfers or {})
        self.fallback = fallback

    def _device(self, device: Any) -> Any:
        if isinstance(device, str):
            if self.machine is None:
                raise HeteroError(f"TableCost got device name {device!r} but has no machine")
            return self.machine.device(device)
        return device

    def compute(self, node: Node, device: Any, ins: Specs | None = None) -> float:
        device = self._device(device)
        if node.kind in (NodeKind.INPUT, NodeKind.CONSTANT):
            return 0.0
        if node.kind is NodeKind.TRANSFER:
            return self.transfer(sum(s.nbytes for s in node.outputs), node.attrs["src"],
                                 node.attrs["dst"])
        if not _kernel_exists(node, device):
            return math.inf
        for key in ((node.name, device.name), (node.op, device.name), (node.op, device.kind),
                    node.op):
            if key in self.table:
                value = self.table[key]
                return float(value(node, device) if callable(value) else value)
        if self.fallback is not None:
            return self.fallback.compute(node, device, ins)
        raise HeteroError(f"{node.label}: TableCost has no time for {node.op} on {device.name} "
                          f"(keys tried: ({node.name!r}, {device.name!r}), ({node.op!r}, "
                          f"{device.name!r}), ({node.op!r}, {device.kind!r}), {node.op!r})")

    def transfer(self, nbytes: float, src: Any, dst: Any) -> float:
        src, dst = self._device(src), self._device(dst)
        if src.name == dst.name:
            return 0.0
        entry = self.transfers.get((src.kind, dst.kind))
        if entry is not None:
            latency, bandwidth = entry
            return float(latency) + float(nbytes) / float(bandwidth)
        if self.fallback is not None:
            return self.fallback.transfer(nbytes, src, dst)
        return 0.0 if src.memory_space == dst.memory_space else math.inf


# ----------------------------------------------------------------------------------------------
# Measured (history-based) costs


def cache_dir() -> str:
    """Where measured costs are cached: $HETERO_CACHE_DIR, $XDG_CACHE_HOME/hetero or
    ~/.cache/hetero."""
    explicit = os.environ.get("HETERO_CACHE_DIR")
    if explicit:
        return explicit
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "hetero")


def _device_signature(device: Any) -> str:
    """What a measured time is a time of. CPU workers are the same cores of one host, so they
    share entries (a time measured on cpu:1 is what cpu:0 would take; keyed per worker, a
    measured worker would look slower than an unmeasured one costed by the roofline); a GPU is
    keyed by its own name too (two cards may differ). CPU entries keep the form they had when
    keyed per worker, as cpu:0's, so older caches stay valid."""
    name = "cpu:0" if device.kind == "cpu" else device.name
    return f"{name}|{device.backend}|{device.model}"


def thread_tag(threads: Threads) -> str:
    """How a thread condition is written in a history key: ``"blas=2,intra=1"``."""
    blas, intra = threads
    return f"blas={int(blas)},intra={int(intra)}"


def _parse_tag(tag: Any) -> Threads | None:
    match = re.fullmatch(r"blas=(\d+),intra=(\d+)", tag) if isinstance(tag, str) else None
    return Threads(int(match[1]), int(match[2])) if match else None


def plan_threads(machine: Any, graph: Graph | None = None) -> Threads:
    """The (BLAS, intra-op) threads per CPU worker the executor will choose for a plan of
    ``graph`` on ``machine`` (``hetero.threads.choose``): BLAS one thread, and where a CPU may
    run a splitting kernel (a product, a conv) the cores shared out over the host compute threads
    (the CPU workers and simulated GPUs) as intra-op threads. The executor may choose fewer
    (workers left empty by placement, a fixed ``blas_threads``); its profiled runs then record
    under what it chose."""
    workers = sum(1 for d in machine.devices if d.kind == "cpu" or d.backend == "sim")
    splits = graph is not None and any(n.computes and registry.lookup(n.op, n).splits
                                       for n in graph.nodes)
    return choose(max(1, workers), splits)


@dataclass(frozen=True, slots=True)
class HistoryKey:
    """What a history entry is a time of: op, input shapes and dtypes, attrs (their sorted
    ``repr``), the device's signature, and for a CPU device the thread condition it ran under
    (None: not a CPU, or unknown, as in caches older than thread conditions). On disk it is the
    JSON list ``[op, shapes, dtypes, attrs, device(, "blas=B,intra=I")]``."""

    op: str
    shapes: tuple[tuple[int, ...], ...]
    dtypes: tuple[str, ...]
    attrs: str
    device: str
    threads: Threads | None = None

    def untagged(self) -> HistoryKey:
        """This key without its thread condition."""
        return dataclasses.replace(self, threads=None)

    def to_json(self) -> str:
        parts: list[Any] = [self.op, [list(s) for s in self.shapes], list(self.dtypes),
                            self.attrs, self.device]
        if self.threads is not None:
            parts.append(thread_tag(self.threads))
        return json.dumps(parts)

    @classmethod
    def from_json(cls, text: str) -> HistoryKey | None:
        """The key ``to_json`` wrote, or None for text that is not one."""
        try:
            parts = json.loads(text)
            op, shapes, dtypes, attrs, device = parts[:5]
            key = cls(str(op), tuple(tuple(int(d) for d in s) for s in shapes),
                      tuple(str(d) for d in dtypes), str(attrs), str(device))
        except (ValueError, TypeError, IndexError):
            return None
        if len(parts) == 6:
            threads = _parse_tag(parts[5])
            return None if threads is None else dataclasses.replace(key, threads=threads)
        return key if len(parts) == 5 else None


@dataclass(slots=True)
class Timing:
    """One history entry: ``n`` samples' running ``mean`` and their ``min`` (seconds)."""

    mean: float = 0.0
    n: int = 0
    min: float = math.inf

    def add(self, seconds: float) -> None:
        """One more sample."""
        self.n += 1
        self.mean += (float(seconds) - self.mean) / self.n
        self.min = min(self.min, float(seconds))

    def to_json(self) -> dict[str, float]:
        return {"mean": self.mean, "n": self.n, "min": self.min}

    @classmethod
    def from_json(cls, entry: Any) -> Timing | None:
        if not (isinstance(entry, dict) and "mean" in entry and "n" in entry):
            return None
        mean = float(entry["mean"])  # format 1 kept no minimum: the mean stands in
        return cls(mean, int(entry["n"]), float(entry.get("min", mean)))


def history_key(node: Node, ins: Specs | None, device: Any,
                threads: Threads | None = None) -> HistoryKey:
    """The history entry of a node on a device: op, input shapes and dtypes, attrs, device, and
    for a CPU device the thread condition (``threads``) it ran under. Without ``threads`` (and
    for other devices) the key leaves the condition unknown, as older caches did."""
    specs = ins if ins is not None else ()
    attrs = {k: node.attrs[k] for k in node.attrs}
    tagged = threads is not None and device.kind == "cpu"
    return HistoryKey(node.op, tuple(tuple(s.shape) for s in specs),
                      tuple(s.dtype.name for s in specs), repr(sorted(attrs.items())),
                      _device_signature(device),
                      Threads(int(threads[0]), int(threads[1])) if tagged else None)


def _sample(spec: TensorSpec, rng: np.random.Generator) -> np.ndarray:
    if spec.dtype.kind == "f":
        return rng.standard_normal(spec.shape).astype(spec.dtype)
    if spec.dtype.kind == "b":
        return rng.integers(0, 2, spec.shape).astype(bool)
    return np.zeros(spec.shape, spec.dtype)  # zeros are valid indices for gather and friends


class MeasuredCost:
    """History-based costs (as StarPU's): measured, cached as JSON, roofline otherwise.

    The history maps a ``HistoryKey`` to a ``Timing`` (``n`` samples' running ``mean`` and their
    ``min``); ``measure`` (calibration) and ``record`` (profiled runs) add samples to the same
    statistics, and ``compute`` reads one of them (``statistic``). CPU entries are per thread
    condition (see the module docstring).

    Args:
        machine: the Machine whose devices are timed.
        path: the JSON cache file (default ``cache_dir()/costs.json``).
        fallback: model for anything not measured (default ``RooflineCost(machine)``).
        repeats: timed runs per measurement (each one a sample), after one warm-up run.
        statistic: what ``compute`` returns of an entry: "mean" (default: what runs take on
            average, as the executor observes them) or "min" (the fastest sample).
        threads: the (BLAS, intra-op) threads per CPU worker that ``compute`` looks up and
            ``measure`` times under; fixed when given, else ``plan_threads(machine)`` until
            ``compile`` or ``calibrate`` sets the policy of the plan (``use_threads``).
    """

    def __init__(self, machine: Any, *, path: str | None = None, fallback: Any = None,
                 repeats: int = 3, statistic: str = "mean",
                 threads: Threads | None = None) -> None:
        if statistic not in ("mean", "min"):
            raise HeteroError(f"MeasuredCost statistic must be 'mean' or 'min', got {statistic!r}")
        self.machine = machine
        self.path = path or os.path.join(cache_dir(), "costs.json")
        self.fallback = fallback if fallback is not None else RooflineCost(machine)
        self.repeats = max(1, int(repeats))
        self.statistic = statistic
        self.fixed_threads = None if threads is None else Threads(int(threads[0]),
                                                                  int(threads[1]))
        self.threads: Threads = self.fixed_threads or plan_threads(machine)
        self.history: dict[HistoryKey, Timing] = {}
        self.failed: dict[HistoryKey, str] = {}
        self.dirty = False  # history changed since the last load or save
        # untagged key -> thread condition -> the entry's key
        self._conditions: dict[HistoryKey, dict[Threads | None, HistoryKey]] = {}
        self._load()

    def use_threads(self, threads: Threads) -> None:
        """Look CPU kernels up (and measure them) under ``threads`` from now on, unless the
        model was given fixed threads."""
        if self.fixed_threads is None:
            self.threads = Threads(int(threads[0]), int(threads[1]))

    def _index(self, key: HistoryKey) -> None:
        self._conditions.setdefault(key.untagged(), {})[key.threads] = key

    def _load(self) -> None:
        try:
            with open(self.path) as f:
                data = json.load(f)
        except FileNotFoundError:
            return
        except (OSError, ValueError) as exc:
            # a damaged cache is not worth failing a compile for; it is rebuilt on save
            print(f"hetero: ignoring unreadable cost cache {self.path}: {exc}", file=sys.stderr)
            return
        for text, entry in data.get("entries", {}).items():
            key, timing = HistoryKey.from_json(text), Timing.from_json(entry)
            if key is not None and timing is not None:
                self.history[key] = timing
                self._index(key)

    def save(self) -> str:
        """Write the history to ``self.path`` atomically; returns the path."""
        folder = os.path.dirname(self.path) or "."
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".costs.", suffix=".json", dir=folder)
        entries = {k.to_json(): t.to_json() for k, t in self.history.items()}
        with os.fdopen(fd, "w") as f:
            json.dump({"format": "hetero.costs/1", "entries": entries}, f, indent=0,
                      sort_keys=True)
        os.replace(tmp, self.path)
        self.dirty = False
        return self.path

    def key(self, node: Node, device: Any, ins: Specs | None = None,
            threads: Threads | None = None) -> HistoryKey:
        """The entry ``measure`` and ``record`` file a sample of ``node`` on ``device`` under:
        tagged with ``threads`` (default ``self.threads``) on a CPU."""
        device = _resolve(self.machine, device)
        return history_key(node, ins, device, threads or self.threads)

    def entry(self, node: Node, device: Any, ins: Specs | None = None) -> Timing | None:
        """The entry ``compute`` reads: on a CPU the one under ``self.threads``, else the one
        under the nearest other thread count (fewest threads on a tie), else one from an older
        cache (condition unknown); None when the kernel was never measured."""
        device = _resolve(self.machine, device)
        exact = self.history.get(history_key(node, ins, device, self.threads))
        if exact is not None or device.kind != "cpu":
            return exact
        found = self._conditions.get(history_key(node, ins, device), {})
        want = self.threads[0] * self.threads[1]
        tagged = sorted((abs(t[0] * t[1] - want), t[0] * t[1], t) for t in found if t is not None)
        key = found[tagged[0][2]] if tagged else found.get(None)
        return None if key is None else self.history.get(key)

    def has(self, node: Node, device: Any, ins: Specs | None = None) -> bool:
        """Whether ``compute`` answers from a measurement (not the fallback)."""
        return self.entry(node, device, ins) is not None

    def compute(self, node: Node, device: Any, ins: Specs | None = None) -> float:
        device = _resolve(self.machine, device)
        if not node.computes or not _kernel_exists(node, device):
            return self.fallback.compute(node, device, ins)
        entry = self.entry(node, device, ins)
        if entry is None:
            return self.fallback.compute(node, device, ins)
        return getattr(entry, self.statistic)

    def transfer(self, nbytes: float, src: Any, dst: Any) -> float:
        return self.fallback.transfer(nbytes, src, dst)

    def _add(self, key: HistoryKey, seconds: float) -> Timing:
        """One more sample of ``key``."""
        entry = self.history.get(key)
        if entry is None:
            entry = self.history[key] = Timing()
            self._index(key)
        entry.add(seconds)
        self.dirty = True
        return entry

    def record(self, node: Node, device: Any, seconds: float, ins: Specs | None = None,
               threads: Threads | None = None) -> bool:
        """Add one observed run time (the executor's profile feeds this, with ``threads`` the
        executor's (BLAS, intra-op) threads per worker; default ``self.threads``).

        Returns whether it was recorded: a simulated GPU's observed times are not (its kernels
        run on this host's NumPy and its stream paces them to the simulated duration, so what a
        run observes there is host contention, not the simulated card; ``compute`` keeps using
        the simulated duration)."""
        device = _resolve(self.machine, device)
        if device.backend == "sim" or not node.computes:
            return False
        self._add(self.key(node, device, ins, threads), seconds)
        return True

    def measure(self, node: Node, device: Any, ins: Specs, *, seed: int = 0) -> float:
        """Run ``node``'s kernel on ``device`` on random inputs: one warm-up, then ``repeats``
        timed runs, each added as a sample; returns the entry's ``statistic``. A CPU kernel runs
        under ``self.threads`` (BLAS limited and intra-op threads set as the executor sets them),
        so its samples are comparable with a profiled run's. A simulated GPU is not run: its
        simulated duration is the entry."""
        device = _resolve(self.machine, device)
        op = registry.lookup(node.op, node)
        key = self.key(node, device, ins)
        if device.backend == "sim":
            seconds = float(device.kernel_time(op, ins, node.outputs, node.attrs))
            self.history[key] = Timing(seconds, 1, seconds)
            self._index(key)
            self.dirty = True
            return seconds
        rng = np.random.default_rng(seed)
        arrays = [device.from_host(_sample(s, rng)) for s in ins]
        outs = [device.empty(s) for s in node.outputs]
        with contextlib.ExitStack() as stack:
            if device.kind == "cpu":
                cpu_kernels.install()  # time the kernels CPU workers run
                blas, intra = self.threads
                stack.enter_context(blas_limit(1 if intra > 1 else blas))
                stack.enter_context(intra_op(intra))
            device.run_kernel(op, arrays, node.attrs, outs)  # warm-up: caches, lazy init
            times = []
            for _ in range(self.repeats):
                t0 = time.perf_counter()
                device.run_kernel(op, arrays, node.attrs, outs)
                times.append(time.perf_counter() - t0)
        for seconds in times:
            entry = self._add(key, seconds)
        return getattr(entry, self.statistic)


class _StderrBar:
    """A progress bar on stderr for when tqdm is not installed."""

    def __init__(self, total: int, desc: str) -> None:
        self.total, self.desc, self.done = total, desc, 0

    def update(self, n: int = 1) -> None:
        self.done += n
        width = 30
        filled = width * self.done // max(self.total, 1)
        sys.stderr.write(f"\r{self.desc} [{'#' * filled}{'.' * (width - filled)}] "
                         f"{self.done}/{self.total}")
        sys.stderr.flush()

    def set_postfix_str(self, text: str) -> None:
        del text

    def close(self) -> None:
        sys.stderr.write("\n")
        sys.stderr.flush()


def _progress(total: int, desc: str, enabled: bool) -> Any:
    if not enabled:
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        return _StderrBar(total, desc)
    return tqdm(total=total, desc=desc, unit="kernel")


def calibrate_graph(graph: Graph, machine: Any, cost: MeasuredCost | None = None, *,
                    progress: bool = True, devices: Iterable[str] | None = None) -> MeasuredCost:
    """Time every distinct (op, shapes, dtypes, attrs, device) of ``graph`` as it stands (the
    graph compile places: ``hetero.compiler.calibrate`` optimizes it first) that is not measured
    yet (on a CPU: not under the thread condition a plan of ``graph`` on ``machine`` runs with,
    ``plan_threads``, which is the condition its kernels are timed under).

    Each kernel is run once per device that has a kernel for it (a simulated GPU is not run: its
    simulated duration is recorded), the history is saved to the cache, and the MeasuredCost is
    returned. A kernel that fails on random inputs is skipped (it keeps the roofline estimate)
    and listed in ``cost.failed``.

    Args:
        graph: the graph whose kernels to time.
        machine: a Machine or spec string.
        cost: the MeasuredCost to extend (default: the one cached for ``machine``).
        progress: show a progress bar (tqdm if installed) on stderr.
        devices: device names to time on (default: all of the machine's).
    """
    machine = resolve_machine(machine)
    cost = cost if cost is not None else MeasuredCost(machine)
    cost.use_threads(plan_threads(machine, graph))  # the condition compile will look up
    targets = [machine.device(d) for d in devices] if devices else list(machine.devices)
    todo: dict[HistoryKey, tuple[Node, Any, Specs]] = {}
    for node in graph.nodes:
        if not node.computes:
            continue
        ins = tuple(graph.spec(v) for v in node.inputs)
        for dev in targets:
            if not _kernel_exists(node, dev):
                continue
            key = cost.key(node, dev, ins)
            if key not in cost.history and key not in todo:
                todo[key] = (node, dev, ins)
    bar = _progress(len(todo), f"calibrating {graph.name}", progress)
    try:
        for key, (node, dev, ins) in todo.items():
            if bar is not None:
                bar.set_postfix_str(f"{node.op} on {dev.name}")
            try:
                with np.errstate(all="ignore"):  # random inputs: log of a negative is no error
                    cost.measure(node, dev, ins)
            except Exception as exc:  # one odd kernel must not stop a calibration run
                cost.failed[key] = f"{node.label} on {dev.name}: {type(exc).__name__}: {exc}"
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    if todo:
        cost.save()
    return cost


def resolve_cost(cost: Any, machine: Any, graph: Graph | None = None) -> Any:
    """A cost model from ``cost``: None or "roofline" (the machine's specs), "measured" (the
    ``MeasuredCost`` cached for this machine, which profiled runs of the plan keep learning), or
    a cost model object, returned as it is. Given the ``graph`` to be placed, a ``MeasuredCost``
    looks CPU kernels up under the thread policy a plan of it runs with (``plan_threads``)."""
    if cost is None or cost == "roofline":
        return RooflineCost(machine)
    if cost == "measured":
        cost = MeasuredCost(machine)
    if isinstance(cost, MeasuredCost):
        if graph is not None:
            cost.use_threads(plan_threads(machine, graph))
        return cost
    if isinstance(cost, str):
        raise HeteroError(f"unknown cost model {cost!r} (known: 'roofline', 'measured', or a "
                          "cost model object such as ht.TableCost(...))")
    if not (hasattr(cost, "compute") and hasattr(cost, "transfer")):
        raise HeteroError(f"cost must be 'roofline', 'measured' or an object with compute() and "
                          f"transfer(), got {type(cost).__name__}")
    return cost


def node_time(cost: Any, graph: Graph, node: Node, device: Any) -> float:
    """``cost.compute`` with the node's input specs taken from ``graph``."""
    return float(cost.compute(node, device, input_specs(graph, node)))


__all__ = ["CPU_SYNC", "CostModel", "HistoryKey", "MeasuredCost", "RooflineCost", "TableCost",
           "Timing", "cache_dir", "calibrate_graph", "history_key", "input_specs", "node_time",
           "plan_threads", "resolve_cost", "thread_tag"]
