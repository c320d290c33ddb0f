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
  is timed once by running its kernel on that device (``calibrate``) or fed by the executor's
  measurements (``record``); the running mean is cached as JSON in the user cache directory
  (``$HETERO_CACHE_DIR``, else ``$XDG_CACHE_HOME/hetero``, else ``~/.cache/hetero``). Anything
  not measured falls back to the roofline.
- ``TableCost(table)``: user-supplied seconds per (node name | op, device name | device kind).
"""

from __future__ import annotations

import json
import math
import os
import sys
import tempfile
import time
from collections.abc import Iterable, Mapping
from typing import Any, Protocol, runtime_checkable

import numpy as np

from hetero.errors import HeteroError
from hetero.graph import Graph, Node, TensorSpec
from hetero.ops import registry

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
    link = getattr(machine, "link", None)
    if link is not None:
        return float(link(src.memory_space, dst.memory_space).time(nbytes))
    gpu = dst if dst.kind == "gpu" else src
    return float(gpu.host_link.time(nbytes))


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
        if node.op in ("input", "constant"):
            return 0.0
        if node.op == "transfer":
            nbytes = sum(s.nbytes for s in node.outputs)
            return self.transfer(nbytes, node.attrs["src"], node.attrs["dst"])
        if not _kernel_exists(node, device):
            return math.inf
        work = _work(node, ins)
        op_class = registry.lookup(node.op, node).op_class
        peak = device.peak_flops[op_class]
        return device.launch_overhead + max(work.flops / peak, work.bytes / device.mem_bandwidth)

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
        if node.op in ("input", "constant"):
            return 0.0
        if node.op == "transfer":
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
    model = getattr(device, "model", "")
    name = "cpu:0" if device.kind == "cpu" else device.name
    return f"{name}|{device.backend}|{model}"


def history_key(node: Node, ins: Specs | None, device: Any) -> str:
    """The history entry of a node on a device: op, input shapes and dtypes, attrs, device."""
    specs = ins if ins is not None else ()
    attrs = {k: node.attrs[k] for k in node.attrs}
    return json.dumps([node.op, [list(s.shape) for s in specs], [s.dtype.name for s in specs],
                       repr(sorted(attrs.items())), _device_signature(device)])


def _sample(spec: TensorSpec, rng: np.random.Generator) -> np.ndarray:
    if spec.dtype.kind == "f":
        return rng.standard_normal(spec.shape).astype(spec.dtype)
    if spec.dtype.kind == "b":
        return rng.integers(0, 2, spec.shape).astype(bool)
    return np.zeros(spec.shape, spec.dtype)  # zeros are valid indices for gather and friends


class MeasuredCost:
    """History-based costs (as StarPU's): measured once, cached as JSON, roofline otherwise.

    Args:
        machine: the Machine whose devices are timed.
        path: the JSON cache file (default ``cache_dir()/costs.json``).
        fallback: model for anything not measured (default ``RooflineCost(machine)``).
        repeats: timed runs per measurement (the fastest is kept), after one warm-up run.
    """

    def __init__(self, machine: Any, *, path: str | None = None, fallback: Any = None,
                 repeats: int = 3) -> None:
        self.machine = machine
        self.path = path or os.path.join(cache_dir(), "costs.json")
        self.fallback = fallback if fallback is not None else RooflineCost(machine)
        self.repeats = max(1, int(repeats))
        self.history: dict[str, dict[str, float]] = {}
        self.failed: dict[str, str] = {}
        self.dirty = False  # history changed since the last load or save
        self._load()

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
        for key, entry in data.get("entries", {}).items():
            if isinstance(entry, dict) and "mean" in entry and "n" in entry:
                self.history[key] = {"mean": float(entry["mean"]), "n": int(entry["n"])}

    def save(self) -> str:
        """Write the history to ``self.path`` atomically; returns the path."""
        folder = os.path.dirname(self.path) or "."
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".costs.", suffix=".json", dir=folder)
        with os.fdopen(fd, "w") as f:
            json.dump({"format": "hetero.costs/1", "entries": self.history}, f, indent=0,
                      sort_keys=True)
        os.replace(tmp, self.path)
        self.dirty = False
        return self.path

    def has(self, node: Node, device: Any, ins: Specs | None = None) -> bool:
        return history_key(node, ins, _resolve(self.machine, device)) in self.history

    def compute(self, node: Node, device: Any, ins: Specs | None = None) -> float:
        device = _resolve(self.machine, device)
        if node.op in registry.STRUCTURAL_OPS or not _kernel_exists(node, device):
            return self.fallback.compute(node, device, ins)
        entry = self.history.get(history_key(node, ins, device))
        if entry is None:
            return self.fallback.compute(node, device, ins)
        return entry["mean"]

    def transfer(self, nbytes: float, src: Any, dst: Any) -> float:
        return self.fallback.transfer(nbytes, src, dst)

    def record(self, node: Node, device: Any, seconds: float, ins: Specs | None = None) -> bool:
        """Add one observed run time (the executor's profile feeds this); keeps a running mean.

        Returns whether it was recorded: a simulated GPU's observed times are not (its kernels
        run on this host's NumPy and its stream paces them to the simulated duration, so what a
        run observes there is host contention, not the simulated card; ``compute`` keeps using
        the simulated duration)."""
        device = _resolve(self.machine, device)
        if device.backend == "sim" or node.op in registry.STRUCTURAL_OPS:
            return False
        key = history_key(node, ins, device)
        entry = self.history.setdefault(key, {"mean": 0.0, "n": 0})
        n = entry["n"] + 1
        entry["mean"] += (float(seconds) - entry["mean"]) / n
        entry["n"] = n
        self.dirty = True
        return True

    def measure(self, node: Node, device: Any, ins: Specs, *, seed: int = 0) -> float:
        """Run ``node``'s kernel on ``device`` on random inputs; record and return the fastest
        of ``repeats`` timed runs after one warm-up (the minimum: other load on the machine only
        ever adds time). A simulated GPU is not run: its simulated duration is recorded."""
        device = _resolve(self.machine, device)
        op = registry.lookup(node.op, node)
        key = history_key(node, ins, device)
        if device.backend == "sim":
            seconds = float(device.kernel_time(op, ins, node.outputs, node.attrs))
            self.history[key] = {"mean": seconds, "n": 1}
            self.dirty = True
            return seconds
        rng = np.random.default_rng(seed)
        arrays = [device.from_host(_sample(s, rng)) for s in ins]
        outs = [device.empty(s) for s in node.outputs]
        device.run_kernel(op, arrays, node.attrs, outs)  # warm-up: caches, lazy init
        times = []
        for _ in range(self.repeats):
            t0 = time.perf_counter()
            device.run_kernel(op, arrays, node.attrs, outs)
            times.append(time.perf_counter() - t0)
        seconds = min(times)
        self.history[key] = {"mean": seconds, "n": len(times)}
        self.dirty = True
        return seconds


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


def calibrate(graph: Any, machine: Any, cost: MeasuredCost | None = None,
              progress: bool = True, devices: Iterable[str] | None = None, *,
              optimize: bool = True, example_inputs: Any = None) -> MeasuredCost:
    """Time every distinct (op, shapes, dtypes, attrs, device) of ``graph`` not measured yet.

    The graph is first optimized as ``compile`` optimizes it (fused convolutions, folded
    batch-norms), so what is timed is what compile will place and look up. Each kernel is run
    once per device that has a kernel for it (a simulated GPU is not run: its simulated duration
    is recorded), the history is saved to the cache, and the MeasuredCost is returned (pass it as
    ``cost=`` to ``place`` or ``compile``). A kernel that fails on random inputs is skipped (it
    keeps the roofline estimate) and listed in ``cost.failed``.

    Args:
        graph: the graph whose kernels to time, or a function (``@ht.function`` or plain) traced
            on ``example_inputs``, as ``compile`` takes it.
        machine: a Machine or spec string.
        cost: the MeasuredCost to extend (default: the one cached for ``machine``).
        progress: show a progress bar (tqdm if installed) on stderr.
        devices: device names to time on (default: all of the machine's).
        optimize: optimize the graph first, as ``compile(..., optimize=True)`` does.
        example_inputs: arrays to trace a function with.
    """
    from hetero.compiler import as_graph

    graph = as_graph(graph, example_inputs)
    if isinstance(machine, str):
        from hetero.devices import Machine

        machine = Machine.parse(machine)
    cost = cost if cost is not None else MeasuredCost(machine)
    if optimize:
        from hetero.compiler import _optional

        optimizer = _optional("hetero.passes.optimize", "optimize")
        if optimizer is not None:
            graph = optimizer(graph)
    targets = [machine.device(d) for d in devices] if devices else list(machine.devices)
    todo: dict[str, tuple[Node, Any, Specs]] = {}
    for node in graph.nodes:
        if node.op in registry.STRUCTURAL_OPS:
            continue
        ins = tuple(graph.spec(v) for v in node.inputs)
        for dev in targets:
            if not _kernel_exists(node, dev):
                continue
            key = history_key(node, ins, dev)
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


def resolve_cost(cost: Any, machine: Any) -> Any:
    """A cost model from ``cost``: None or "roofline" (the machine's specs), "measured" (the
    ``MeasuredCost`` cached for this machine, which profiled runs of the plan keep learning), or
    a cost model object, returned as it is."""
    if cost is None or cost == "roofline":
        return RooflineCost(machine)
    if cost == "measured":
        return MeasuredCost(machine)
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


__all__ = ["CPU_SYNC", "CostModel", "MeasuredCost", "RooflineCost", "TableCost", "cache_dir",
           "calibrate", "history_key", "input_specs", "node_time", "resolve_cost"]
