"""Memory planning: one arena per memory space, an offset per value, reuse only when it is safe.

``plan_memory(plan) -> Plan`` is pure: it returns ``dataclasses.replace(plan, memory=MemoryPlan)``.

Which values get arena memory
    Every output of a node that computes or copies (not ``input`` or ``constant`` nodes: inputs are
    the caller's arrays, constants are uploaded once per memory space when the plan is loaded).
    Graph outputs get no arena slot: the caller holds them after ``run`` returns, and the next run
    would overwrite them, so the executor gives each output a buffer of its own per run. Empty
    tensors take no memory. All CPU workers share the "host" arena; each GPU has its own.

When two values may share memory (valid under concurrency, not only in one sequential order)
    A node *happens-before* another when the second is reachable from the first in the
    happens-before DAG: the graph's edges (a consumer starts after its producer completes, across
    devices too, transfers included) plus the order of every sequential stream of execution: the
    queue of a CPU worker, and the subsequence of a GPU queue that runs on one of its streams
    (``compute``, ``h2d``, ``d2h``). Input and constant nodes are not part of it: they exist
    before the run starts, and nothing waits for them. Two nodes of one GPU queue on different
    streams are *not* ordered by the queue: the host thread enqueues them in order but the
    streams run them concurrently. Value ``v`` (produced by ``p``) and value ``w`` (produced
    by ``q``) may share bytes only if every last use of ``v`` (its consumers, or ``p`` itself if
    nobody reads it) happens-before ``q``, or the same holds with ``v`` and ``w`` swapped. A node
    that reads ``v`` and writes ``w`` never shares them (kernels need not support aliasing).

Offsets
    Greedy by size with best fit (the TFLite arena planner's strategy): values in decreasing size;
    each goes into the smallest gap between the already-placed values it interferes with that is
    large enough, or after the last of them. Sizes are rounded up to the space's alignment
    (64 bytes on the host, 256 on a GPU); the three figures below use the rounded sizes.

Figures reported per memory space
    ``arena_bytes``: the arena's size. ``naive_bytes``: the sum of every value's size (no reuse).
    ``lower_bound_bytes``: the largest total of values live at one point of an execution order
    that respects happens-before; such values pairwise interfere, so no valid layout is smaller.
    Always ``lower_bound_bytes <= arena_bytes <= naive_bytes``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from hetero.errors import GraphError, OutOfMemoryError
from hetero.graph import Graph, NodeKind, Value, fmt_bytes, toposort
from hetero.spaces import device_space, output_space, stream_of

HOST_ALIGNMENT = 64
GPU_ALIGNMENT = 256

#: node kinds whose outputs never live in an arena: they exist before a run starts
UNPLANNED = frozenset({NodeKind.INPUT, NodeKind.CONSTANT})


def align(nbytes: int, alignment: int) -> int:
    """``nbytes`` rounded up to a multiple of ``alignment``."""
    return -(-nbytes // alignment) * alignment


@dataclass(frozen=True)
class Arena:
    """The layout of one memory space's arena.

    Attributes:
        space: memory space ("host", "gpu:0").
        arena_bytes: size of the arena.
        lower_bound_bytes: no valid layout of these values is smaller.
        naive_bytes: sum of the values' sizes (one buffer each, no reuse).
        offsets: value -> (offset, nbytes) inside the arena.
        alignment: every offset is a multiple of it.
    """

    space: str
    arena_bytes: int
    lower_bound_bytes: int
    naive_bytes: int
    offsets: Mapping[Value, tuple[int, int]] = field(default_factory=dict)
    alignment: int = HOST_ALIGNMENT

    def to_json(self) -> dict[str, Any]:
        return {
            "space": self.space, "arena_bytes": self.arena_bytes,
            "lower_bound_bytes": self.lower_bound_bytes, "naive_bytes": self.naive_bytes,
            "alignment": self.alignment,
            "offsets": [[v.node, v.index, off, n] for v, (off, n) in self.offsets.items()],
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Arena:
        offsets = {Value(n, int(i)): (int(off), int(nb)) for n, i, off, nb in data["offsets"]}
        return cls(data["space"], int(data["arena_bytes"]), int(data["lower_bound_bytes"]),
                   int(data["naive_bytes"]), MappingProxyType(offsets), int(data["alignment"]))


@dataclass(frozen=True)
class MemoryPlan(Mapping[str, Arena]):
    """One ``Arena`` per memory space; also indexable by device name (``memory["cpu:1"]`` is the
    host arena)."""

    arenas: Mapping[str, Arena]
    spaces: Mapping[str, str] = field(default_factory=dict)  # device name -> memory space

    def __getitem__(self, key: str) -> Arena:
        if key in self.arenas:
            return self.arenas[key]
        return self.arenas[self.spaces[key]]

    def __iter__(self) -> Iterator[str]:
        return iter(self.arenas)

    def __len__(self) -> int:
        return len(self.arenas)

    def __hash__(self) -> int:
        return id(self)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, MemoryPlan):
            return NotImplemented
        return dict(self.arenas) == dict(other.arenas) and dict(self.spaces) == dict(other.spaces)

    def location(self, value: Value) -> tuple[str, int, int] | None:
        """``(space, offset, nbytes)`` of a value that lives in an arena, else None."""
        for space, arena in self.arenas.items():
            hit = arena.offsets.get(value)
            if hit is not None:
                return space, hit[0], hit[1]
        return None

    def summary(self) -> str:
        lines = [f"{'space':<8} {'arena':>12} {'lower bound':>12} {'naive':>12}"]
        for s, a in self.arenas.items():
            lines.append(f"{s:<8} {a.arena_bytes:>12,} {a.lower_bound_bytes:>12,} "
                         f"{a.naive_bytes:>12,}")
        return "\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        return {"arenas": [a.to_json() for a in self.arenas.values()],
                "spaces": dict(self.spaces)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> MemoryPlan:
        arenas = {a["space"]: Arena.from_json(a) for a in data["arenas"]}
        return cls(MappingProxyType(arenas), MappingProxyType(dict(data.get("spaces", {}))))


# ----------------------------------------------------------------------------------------------
# The pass


def plan_memory(plan: Any) -> Any:
    """A copy of ``plan`` with ``memory`` set: one arena per memory space, an offset per value."""
    memory = machine_layout(plan.graph, plan.queues, plan.estimates, plan.machine)
    _check_capacity(plan, memory)
    return dataclasses.replace(plan, memory=memory)


def machine_layout(graph: Graph, queues: Mapping[str, Iterable[str]],
                   estimates: Mapping[str, tuple[float, float]], machine: Any) -> MemoryPlan:
    """``layout`` of a scheduled, partitioned graph on ``machine`` (its devices' kinds and
    memory spaces; the schedule's estimated order for the lower bound): what ``plan_memory``
    plans, for the pipeline to size candidates with before any Plan exists."""
    kinds = {d.name: d.kind for d in machine.devices}
    spaces = {d.name: d.memory_space for d in machine.devices}
    return layout(graph, queues, kinds, spaces, _estimated_order(graph, estimates))


def peak_bytes(graph: Graph, memory: MemoryPlan | None, machine: Any) -> dict[str, int]:
    """Predicted peak bytes per memory space when a partitioned graph runs with ``memory``: its
    arena (activations, workspaces, copy buffers, streamed weights' buffers) plus the constants
    resident in that space (``Plan.peak_memory``)."""
    # the executor allocates every arena, an empty one as 1 byte
    peaks = {space: max(arena.arena_bytes, 1) for space, arena in
             (memory.arenas.items() if memory is not None else ())}
    consumers = graph.consumers()
    for node in graph.nodes:
        if not node.is_constant:
            continue
        readers = [graph.node(r) for r in consumers[node.name]]
        # a streamed weight's copy reads it from host memory, where it stays
        spaces = {device_space(r.attrs["src"] if r.is_transfer else r.device or "cpu:0",
                               machine) for r in readers}
        for space in spaces:
            peaks[space] = peaks.get(space, 0) + sum(s.nbytes for s in node.outputs)
    return peaks


def _check_capacity(plan: Any, memory: MemoryPlan) -> None:
    """Refuse an arena larger than its memory space (an OutOfMemoryError naming the largest
    value in it), at compile time rather than when the first run allocates it."""
    for space, arena in memory.arenas.items():
        caps = [d.capacity for d in plan.machine.devices if d.memory_space == space]
        cap = min(caps) if caps else 0
        if not cap or arena.arena_bytes <= cap:
            continue
        largest = max(arena.offsets, key=lambda v: arena.offsets[v][1])
        node = plan.graph.node(largest.node)
        raise OutOfMemoryError(
            f"the {space} arena needs {fmt_bytes(arena.arena_bytes)}, more than its "
            f"{fmt_bytes(cap)} of memory; its largest value is {largest} "
            f"({node.outputs[largest.index]}, {fmt_bytes(arena.offsets[largest][1])}) of "
            f"{node.label}")


def _estimated_order(graph: Graph, est: Mapping[str, tuple[float, float]]) -> list[str] | None:
    if not est:
        return None
    pos = {n.name: i for i, n in enumerate(graph.nodes)}
    return sorted(pos, key=lambda n: (est[n][0] if n in est else -1.0, pos[n]))


def layout(graph: Graph, queues: Mapping[str, Iterable[str]], kinds: Mapping[str, str],
           spaces: Mapping[str, str], preferred_order: list[str] | None = None) -> MemoryPlan:
    """The memory plan of a partitioned graph run as ``queues`` (device -> node names in order).

    Args:
        kinds: device name -> "cpu" | "gpu".
        spaces: device name -> memory space.
        preferred_order: a node order used (with graph order) to find the lower bound.
    """
    hb = HappensBefore(graph, queues, kinds)
    values_by_space: dict[str, list[Value]] = {}
    outputs = set(graph.outputs)
    for node in graph.nodes:
        if node.kind in UNPLANNED:
            continue
        space = output_space(node, spaces)
        for i, spec in enumerate(node.outputs):
            v = Value(node.name, i)
            if v in outputs or spec.nbytes == 0:
                continue
            values_by_space.setdefault(space, []).append(v)
    arenas = {}
    for space in sorted(set(spaces.values())):
        alignment = HOST_ALIGNMENT if space == "host" else GPU_ALIGNMENT
        vals = values_by_space.get(space, [])
        arenas[space] = _layout_space(graph, hb, space, vals, alignment, preferred_order)
    return MemoryPlan(MappingProxyType(arenas), MappingProxyType(dict(spaces)))


class HappensBefore:
    """Reachability in the happens-before DAG (graph edges + sequential stream order), as one
    bitset of descendants per node."""

    def __init__(self, graph: Graph, queues: Mapping[str, Iterable[str]],
                 kinds: Mapping[str, str]) -> None:
        names = [n.name for n in graph.nodes]
        self.index = index = {n: i for i, n in enumerate(names)}
        succ: list[set[int]] = [set() for _ in names]
        # inputs and constants exist before the run starts: they order nothing (the executor
        # does not wait for them), so they are no part of the happens-before relation
        fixed = {n.name for n in graph.nodes if n.kind in UNPLANNED}
        for node in graph.nodes:
            j = index[node.name]
            for v in node.inputs:
                if v.node not in fixed:
                    succ[index[v.node]].add(j)
        for dev, queue in queues.items():
            last: dict[str, int] = {}
            for name in queue:
                if name not in index:
                    raise GraphError(f"queue of {dev} names {name!r}, which is not in the graph")
                if name in fixed:
                    continue
                stream = stream_of(graph.node(name), kinds.get(dev, "cpu"))
                j = index[name]
                if stream in last:
                    succ[last[stream]].add(j)
                last[stream] = j
        self.succ = succ
        order = toposort(len(names), succ)
        if order is None:
            stuck = _stuck(names, succ)
            raise GraphError("the plan's queues contradict its data dependencies (a queue runs "
                             "a node before one it depends on, so the plan would deadlock): "
                             f"{', '.join(stuck)}")
        self.order = order
        desc = [0] * len(names)
        for i in reversed(self.order):
            bits = 0
            for s in succ[i]:
                bits |= (1 << s) | desc[s]
            desc[i] = bits
        self.desc = desc

    def before(self, a: str, b: str) -> bool:
        """Does node ``a`` complete before node ``b`` starts in every run?"""
        return bool(self.desc[self.index[a]] >> self.index[b] & 1)


def _stuck(names: list[str], succ: list[set[int]]) -> list[str]:
    """Up to five nodes on or behind a cycle of ``succ`` (those Kahn's algorithm never frees)."""
    indeg = [0] * len(names)
    for s in succ:
        for j in s:
            indeg[j] += 1
    ready = [i for i, d in enumerate(indeg) if d == 0]
    while ready:
        i = ready.pop()
        for j in succ[i]:
            indeg[j] -= 1
            if indeg[j] == 0:
                ready.append(j)
    return [names[i] for i, d in enumerate(indeg) if d > 0][:5]


def _layout_space(graph: Graph, hb: HappensBefore, space: str, values: list[Value],
                  alignment: int, preferred_order: list[str] | None) -> Arena:
    idx = hb.index
    readers: dict[Value, list[int]] = {v: [] for v in values}
    for node in graph.nodes:
        for v in node.reads:  # not a streamed copy's order-only inputs
            if v in readers:
                readers[v].append(idx[node.name])
    size = {v: align(graph.spec(v).nbytes, alignment) for v in values}
    producer = {v: idx[v.node] for v in values}
    # dead_after[v]: bitset of the nodes that start only after every use of v has completed
    dead_after = {}
    full = (1 << len(idx)) - 1
    for v in values:
        bits = full
        for u in readers[v] or [producer[v]]:
            bits &= hb.desc[u]
        dead_after[v] = bits

    def interfere(a: Value, b: Value) -> bool:
        return not (dead_after[a] >> producer[b] & 1 or dead_after[b] >> producer[a] & 1)

    offsets: dict[Value, tuple[int, int]] = {}
    placed: list[tuple[Value, int]] = []
    arena = 0
    for v in sorted(values, key=lambda v: (-size[v], producer[v], v.index)):
        busy = sorted((off, off + size[w]) for w, off in placed if interfere(v, w))
        off = _best_fit(busy, size[v])
        placed.append((v, off))
        offsets[v] = (off, graph.spec(v).nbytes)
        arena = max(arena, off + size[v])
    orders = [[graph.nodes[i].name for i in hb.order]]
    if preferred_order is not None:
        orders.append(_consistent(preferred_order, hb))
    lower = max(_peak_live(order, values, producer, readers, size, idx) for order in orders)
    return Arena(space, arena, lower, sum(size.values()), MappingProxyType(offsets), alignment)


def _best_fit(busy: list[tuple[int, int]], need: int) -> int:
    """The start of the smallest free gap of at least ``need`` bytes among ``busy`` intervals
    (sorted by start), or the end of the last one."""
    best, best_gap, cursor = None, None, 0
    for lo, hi in busy:
        gap = lo - cursor
        if gap >= need and (best_gap is None or gap < best_gap):
            best, best_gap = cursor, gap
        cursor = max(cursor, hi)
    return cursor if best is None else best


def _consistent(order: list[str], hb: HappensBefore) -> list[str]:
    """``order`` turned into a happens-before-respecting order (Kahn's algorithm, preferring
    nodes early in ``order``)."""
    rank = {n: i for i, n in enumerate(order)}
    names = list(hb.index)
    topo = toposort(len(names), hb.succ, key=lambda i: (rank.get(names[i], len(rank)), i))
    return [names[i] for i in topo or ()]


def _peak_live(order: list[str], values: list[Value], producer: dict[Value, int],
               readers: dict[Value, list[int]], size: dict[Value, int],
               idx: Mapping[str, int]) -> int:
    """Largest total size of values live at one position of ``order`` (a value is live from its
    producer to its last reader, both included)."""
    pos = {idx[n]: i for i, n in enumerate(order)}
    delta = [0] * (len(order) + 1)
    for v in values:
        start = pos[producer[v]]
        end = max([pos[u] for u in readers[v]], default=start)
        delta[start] += size[v]
        delta[end + 1] -= size[v]
    peak = live = 0
    for d in delta:
        live += d
        peak = max(peak, live)
    return peak
