"""Weight streaming: which constants a GPU streams from host memory on every run, and how far
ahead their copies may run.

A plan normally uploads every constant once into each memory space that reads it (``partition``
duplicates it as ``<const>@<space>``). When a GPU's memory budget cannot hold its weights beside
its activations, some constants are *streamed* instead: they stay in host memory and
``partition`` turns each use into a copy node (``transfer`` with ``streamed=True``) that runs on
the GPU's host-to-device stream on every run, into a buffer of the GPU's arena. The memory
planner then lets streamed buffers share bytes exactly as it does for any other value: when
every reader of one happens-before the copy that writes the next, so the buffers rotate.

What orders the copies is an ``Offload``:

- ``streamed``: the constants that are streamed (each read on one GPU memory space);
- ``prefetch``: how many streamed weights ahead of the compute a copy may run. Every reader of
  a streamed weight gets a copy of its own (a weight read twice far apart, a tied embedding, is
  not held in between), and the uses of a space run in their readers' order: the copy of the
  j-th use waits for the reader of use j - prefetch - 1 (an extra, order-only input of the
  transfer node: the copy starts after it and reads nothing from it). ``prefetch=0`` copies a
  weight only once the previous one is consumed; ``prefetch=2`` keeps up to three weights'
  buffers in flight, so a copy overlaps the compute of the two layers before its own;
- ``sequential``: accelerate's CPU offload instead: each copy waits for every compute node of
  the space before its reader, so copies and compute alternate and nothing overlaps (the
  ``sequential_offload`` policy).

The placement pipeline (``hetero.pipeline.placed``) chooses the Offload by the cost model and an
exact memory plan of each candidate; this module holds the decisions that need no later stage:
which constants can stream (``streamable``), the order inputs of each copy (``order_inputs``),
and the figures a report quotes (``hidden_fraction``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from hetero.graph import Graph, Value
from hetero.scheduling import interval_overlap, merge_intervals
from hetero.spaces import device_space

__all__ = ["MIN_STREAM_BYTES", "Offload", "hidden_fraction", "order_inputs", "streamable"]

#: Constants smaller than this stay resident: a per-run copy of a bias or a shape costs more in
#: latency than the bytes it would free.
MIN_STREAM_BYTES = 64 * 1024


@dataclass(frozen=True)
class Offload:
    """Which constants stream into a GPU on every run, and how their copies are ordered (see the
    module docstring)."""

    streamed: frozenset[str] = frozenset()
    prefetch: int = 1
    sequential: bool = False

    def __bool__(self) -> bool:
        return bool(self.streamed)

    def key(self) -> tuple[Any, ...]:
        return (tuple(sorted(self.streamed)), self.prefetch, self.sequential)

    def to_json(self) -> dict[str, Any]:
        return {"streamed": sorted(self.streamed), "prefetch": self.prefetch,
                "sequential": self.sequential}

    @classmethod
    def from_json(cls, data: Mapping[str, Any] | None) -> Offload | None:
        if not data:
            return None
        return cls(frozenset(data.get("streamed", ())), int(data.get("prefetch", 1)),
                   bool(data.get("sequential", False)))


def _readers_by_space(graph: Graph, device: Mapping[str, str], machine: Any
                      ) -> dict[str, dict[str, list[str]]]:
    """constant -> memory space -> its readers there (graph order)."""
    consumers = graph.consumers()
    out: dict[str, dict[str, list[str]]] = {}
    for node in graph.nodes:
        if not node.is_constant:
            continue
        spaces: dict[str, list[str]] = {}
        for r in consumers[node.name]:
            spaces.setdefault(device_space(device[r], machine), []).append(r)
        out[node.name] = spaces
    return out


def streamable(graph: Graph, device: Mapping[str, str], machine: Any,
               min_bytes: int = MIN_STREAM_BYTES) -> dict[str, list[str]]:
    """GPU memory space -> the constants that may stream into it, in the order their first
    reader runs (graph order): those of at least ``min_bytes`` read in that one GPU space and
    nowhere else."""
    position = {n.name: i for i, n in enumerate(graph.nodes)}
    found: dict[str, list[tuple[int, str]]] = {}
    for name, spaces in _readers_by_space(graph, device, machine).items():
        if len(spaces) != 1:
            continue
        (space, readers), = spaces.items()
        if space == "host" or graph.spec(Value(name, 0)).nbytes < min_bytes:
            continue
        found.setdefault(space, []).append((position[readers[0]], name))
    return {s: [n for _, n in sorted(items)] for s, items in found.items()}


def order_inputs(graph: Graph, offload: Offload, device: Mapping[str, str], machine: Any
                 ) -> dict[tuple[str, str], tuple[Value, ...]]:
    """(streamed constant, reader) -> the values (of nodes in its GPU space, in ``graph``'s
    names) that use's copy must wait for. Each reader of a streamed weight gets a copy of its
    own (a weight read twice far apart, such as a tied embedding, is not held between them),
    and the uses of a space run in their readers' order: a use's copy waits for the reader of
    the use ``prefetch + 1`` places earlier, or with ``sequential`` for the last compute node of
    the space before its own reader. Only nodes before its reader in graph order are named, so
    the order never forms a cycle."""
    position = {n.name: i for i, n in enumerate(graph.nodes)}
    uses_of: dict[str, list[tuple[int, str, str]]] = {}  # space -> (position, weight, reader)
    for name, spaces in _readers_by_space(graph, device, machine).items():
        if name not in offload.streamed or len(spaces) != 1 or "host" in spaces:
            continue  # (``streamable`` offers only weights read in one GPU space)
        (space, readers), = spaces.items()
        uses_of.setdefault(space, []).extend((position[r], name, r)
                                             for r in dict.fromkeys(readers))
    result: dict[tuple[str, str], tuple[Value, ...]] = {}
    for space, found in uses_of.items():
        uses = sorted(found)
        if offload.sequential:
            nodes = [n.name for n in graph.nodes if n.computes
                     and device_space(device[n.name], machine) == space]
            cursor, last = 0, None
            for at, name, reader in uses:
                while cursor < len(nodes) and position[nodes[cursor]] < at:
                    last = nodes[cursor]
                    cursor += 1
                result[name, reader] = (Value(last, 0),) if last is not None else ()
            continue
        for j, (at, name, reader) in enumerate(uses):
            k = j - offload.prefetch - 1
            earlier = uses[k][2] if k >= 0 else None
            result[name, reader] = ((Value(earlier, 0),)
                                    if earlier is not None and position[earlier] < at else ())
    return result


def hidden_fraction(copies: Sequence[tuple[float, float]],
                    compute: Sequence[tuple[float, float]]) -> float:
    """The share of the copies' time (``(start, finish)`` each) during which the GPU computes
    (``compute``: its kernels' intervals): 1.0 when every copy is hidden behind compute."""
    total = sum(max(0.0, f - s) for s, f in copies)
    if total <= 0:
        return 1.0
    busy = merge_intervals((s, f) for s, f in compute if f > s)
    covered = sum(interval_overlap([(s, f)], busy) for s, f in copies if f > s)
    return min(1.0, covered / total)
