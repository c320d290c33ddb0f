"""The verifier: every invariant of every stage, in one place (``ht.check``).

``check(graph)`` verifies the IR: unique names, inputs produced earlier (no dangling input, no
cycle, topological order), output specs equal to what the op infers, well-formed input and
constant nodes, device annotations that are device names. On a partitioned graph (every node
placed, given a machine or holding transfers) it also verifies that no op reads a value from
another memory space and that every transfer is well formed. ``check(plan)`` verifies a Plan: its
graph as above, every non-input node in exactly one queue (its device's), queues that together
with the data edges cannot deadlock, estimates for every node, a makespan no lower than the lower
bound, and a memory plan where every value has its place in its space's arena, in bounds and
aligned, and no two values that can be live at once overlap (``Plan`` registers it here).

Every error is a ``GraphError`` naming the node, its op and source line, with the neighbourhood
printed. Tests run ``check`` after every pass, and ``HETERO_CHECKS=1`` runs it in user code.
"""

from __future__ import annotations

import functools
from typing import Any

import networkx as nx

from hetero.devices import normalize_device
from hetero.errors import DeviceError, GraphError
from hetero.graph import Graph, Node, NodeKind, TensorSpec, Value, node_error
from hetero.ops import registry
from hetero.passes.memory import UNPLANNED, HappensBefore, align
from hetero.spaces import HOST, device_space, output_space, transfer_issuer, transfer_kind

__all__ = ["check", "check_graph", "check_memory", "check_partitioned", "check_plan"]


@functools.singledispatch
def check(obj: Any, **kwargs: Any) -> None:
    """Verify every invariant of a Graph or a Plan; raise ``GraphError`` naming the node, its op
    and source line, with the neighbourhood printed."""
    raise GraphError(f"check() takes a Graph or a Plan, got {type(obj).__name__}")


# ----------------------------------------------------------------------------------------------
# Graphs


@check.register
def check_graph(graph: Graph, *, machine: Any = None) -> None:
    """Every invariant of the IR, and of partitioning where the graph is partitioned."""
    seen: dict[str, Node] = {}
    names = {n.name for n in graph.nodes}
    if len(names) != len(graph.nodes):
        dup = [n for n in graph.nodes if sum(m.name == n.name for m in graph.nodes) > 1][0]
        raise node_error(graph, dup, "node name is used more than once")
    for node in graph.nodes:
        for pos, v in enumerate(node.inputs):
            if v.node not in names:
                raise node_error(graph, node, f"input {pos} reads {v}, which no node of the "
                                              "graph produces (dangling input)")
            if v.node not in seen:
                _raise_cycle_or_order(graph, node, v)
            producer = seen[v.node]
            if not 0 <= v.index < len(producer.outputs):
                raise node_error(graph, node, f"input {pos} reads output {v.index} of "
                                              f"{producer.label}, which has "
                                              f"{len(producer.outputs)}")
        if node.device is not None:
            _check_device_name(graph, node)
        if node.kind is NodeKind.INPUT:
            if node.inputs or len(node.outputs) != 1:
                raise node_error(graph, node, "an input node takes no inputs and has one output")
            if node.name not in graph.inputs:
                raise node_error(graph, node, "input node is not listed in graph.inputs (the "
                                              "graph would have no value for it)")
        elif node.kind is NodeKind.CONSTANT:
            arr = graph.constants.get(node.name)
            if arr is None:
                raise node_error(graph, node, "constant has no array in graph.constants")
            if TensorSpec.of(arr) != node.outputs[0]:
                raise node_error(graph, node, f"constant array is {TensorSpec.of(arr)} but the "
                                              f"node says {node.outputs[0]}")
        else:
            op = registry.lookup(node.op, node)
            in_specs = tuple(seen[v.node].outputs[v.index] for v in node.inputs)
            try:
                expected = op.infer_specs(in_specs, node.attrs)
            except Exception as exc:  # the op's own message names what is wrong
                raise node_error(graph, node, f"inputs {', '.join(map(str, in_specs))} are "
                                              f"invalid: {exc}") from None
            if tuple(expected) != node.outputs:
                raise node_error(graph, node, "wrong output spec: node says "
                                 f"{', '.join(map(str, node.outputs))} but {node.op} of "
                                 f"{', '.join(map(str, in_specs))} gives "
                                 f"{', '.join(map(str, expected))}")
        seen[node.name] = node
    for n in graph.inputs:
        if n not in names or not graph.node(n).is_input:
            raise GraphError(f"graph input {n!r} is not an input node")
    if len(set(graph.inputs)) != len(graph.inputs):
        dup = sorted({n for n in graph.inputs if graph.inputs.count(n) > 1})
        raise GraphError(f"graph inputs {', '.join(dup)} are listed more than once")
    for v in graph.outputs:
        if v.node not in names:
            raise GraphError(f"graph output {v} is produced by no node")
        if v.index >= len(graph.node(v.node).outputs):
            raise GraphError(f"graph output {v} is out of range")
    check_partitioned(graph, machine)


def _check_device_name(graph: Graph, node: Node) -> None:
    try:
        ok = normalize_device(node.device) == node.device  # type: ignore[arg-type]
    except DeviceError:
        ok = False
    if not ok:
        raise node_error(graph, node, f"device annotation {node.device!r} is not a device name "
                                      "like 'cpu:0' or 'gpu:1'")


def _raise_cycle_or_order(graph: Graph, node: Node, v: Value) -> None:
    g = graph.to_networkx()
    try:
        cycle = nx.find_cycle(g, source=node.name)
    except nx.NetworkXNoCycle:
        raise node_error(graph, node, f"reads {v} before it is produced (nodes are not in "
                                      "topological order)") from None
    path = " -> ".join([u for u, _ in cycle] + [cycle[0][0]])
    raise node_error(graph, node, f"the graph has a cycle: {path}")


# ----------------------------------------------------------------------------------------------
# Partitioned graphs: no op reads a value from another memory space


def _is_partitioned(graph: Graph, machine: Any) -> bool:
    if any(n.device is None for n in graph.nodes):
        return False
    return machine is not None or any(n.is_transfer for n in graph.nodes)


def check_partitioned(graph: Graph, machine: Any = None) -> None:
    """Unless the graph is not partitioned (a node without a device; no machine given and no
    transfer): raise GraphError unless every op reads only values in its own memory space, every
    transfer is well formed, no (value, space) pair is copied twice, and every output is on the
    host."""
    if not _is_partitioned(graph, machine):
        return
    known = {d.name for d in machine.devices} if machine is not None else None
    spaces: dict[str, str] = {}
    seen: dict[tuple[Value, str], str] = {}
    for node in graph.nodes:
        if known is not None and node.device not in known:
            raise node_error(graph, node, f"is placed on {node.device}, which is not in the "
                                          f"machine ({', '.join(sorted(known))})")
        here = device_space(node.device, machine)  # type: ignore[arg-type]
        if node.kind is NodeKind.TRANSFER:
            src, dst, kind = node.attrs["src"], node.attrs["dst"], node.attrs["kind"]
            s_space, d_space = device_space(src, machine), device_space(dst, machine)
            if s_space == d_space:
                raise node_error(graph, node, f"transfer within one memory space ({s_space})")
            if kind != transfer_kind(s_space, d_space):
                raise node_error(graph, node, f"transfer from {s_space} to {d_space} is "
                                              f"{transfer_kind(s_space, d_space)}, not {kind}")
            if node.device != transfer_issuer(src, dst, kind):
                raise node_error(graph, node, f"a {kind} transfer is issued by "
                                              f"{transfer_issuer(src, dst, kind)}, not "
                                              f"{node.device}")
            v = node.inputs[0]
            if spaces[v.node] != s_space:
                raise node_error(graph, node, f"copies {v} from {s_space} but it lives in "
                                              f"{spaces[v.node]}")
            for w in node.inputs[1:]:  # order-only inputs of a streamed copy: its issuer's space
                if spaces[w.node] != here:
                    raise node_error(graph, node, f"waits for {w} in {spaces[w.node]}, not in "
                                                  f"the space of its issuer ({here})")
            # a streamed weight has a copy per reader (``hetero.passes.offload``)
            key = (v, d_space, node.name) if node.attrs.get("streamed") else (v, d_space)
            if key in seen:
                raise node_error(graph, node, f"{v} is already copied to {d_space} by "
                                              f"{seen[key]} (one transfer per value and memory "
                                              "space)")
            seen[key] = node.name
            spaces[node.name] = d_space
            continue
        for pos, v in enumerate(node.reads):  # not an assign's order-only inputs
            if spaces[v.node] != here:
                producer = graph.node(v.node)
                raise node_error(graph, node, f"input {pos} reads {v} from {spaces[v.node]} "
                                 f"({producer.label} on {producer.device}) but runs on "
                                 f"{node.device} in {here}: a transfer node is missing")
        spaces[node.name] = here
    for v in graph.outputs:
        if spaces[v.node] != HOST:
            raise GraphError(f"graph output {v} stays in {spaces[v.node]}; outputs must come "
                             "back to the host")


# ----------------------------------------------------------------------------------------------
# Plans


def _plan_error(plan: Any, name: str | None, message: str) -> GraphError:
    if name is not None and name in plan.graph:
        return node_error(plan.graph, plan.graph.node(name), message)
    return GraphError(f"plan: {message}")


def check_plan(plan: Any, **_: Any) -> None:
    """Every invariant of a Plan: its graph is valid and device-local, every non-input node is in
    exactly one queue (its device's), queues respect dependencies and together cannot deadlock,
    every node has estimates, and the makespan is not below the lower bound."""
    graph = plan.graph
    check_graph(graph, machine=plan.machine)
    known = {d.name for d in plan.machine.devices} if plan.machine is not None else None
    where: dict[str, tuple[str, int]] = {}
    for dev, queue in plan.queues.items():
        if known is not None and dev not in known:
            raise _plan_error(plan, None, f"queue for {dev!r}, which is not in the machine "
                                          f"({', '.join(sorted(known))})")
        for i, name in enumerate(queue):
            if name not in graph:
                raise _plan_error(plan, None, f"queue {dev} holds {name!r}, which is not a node")
            if name in where:
                raise _plan_error(plan, name, f"is in queue {where[name][0]} and again in {dev}")
            node = graph.node(name)
            if node.is_input:
                raise _plan_error(plan, name, "an input node is in a queue")
            if node.device != dev:
                raise _plan_error(plan, name, f"is placed on {node.device} but queued on {dev}")
            where[name] = (dev, i)
    order = nx.DiGraph()
    for node in graph.nodes:
        if node.device is None:
            raise _plan_error(plan, node.name, "has no device after partitioning")
        if known is not None and node.device not in known:
            raise _plan_error(plan, node.name, f"is placed on {node.device}, not in the machine")
        if not node.is_input and node.name not in where:
            raise _plan_error(plan, node.name, "is in no queue")
        if node.name not in plan.estimates and not node.is_input:
            raise _plan_error(plan, node.name, "has no estimated start and finish")
        order.add_node(node.name)
        for v in node.inputs:
            order.add_edge(v.node, node.name)
    for queue in plan.queues.values():
        order.add_edges_from(zip(queue, queue[1:]))
    if not nx.is_directed_acyclic_graph(order):
        cycle = nx.find_cycle(order)
        path = " -> ".join([u for u, _ in cycle] + [cycle[0][0]])
        raise _plan_error(plan, cycle[0][0], "queue order contradicts the data dependencies "
                                             f"(the run would deadlock): {path}")
    if plan.makespan + 1e-12 < plan.lower_bound * (1 - 1e-9):
        raise _plan_error(plan, None, f"makespan {plan.makespan:.6g}s is below the lower bound "
                                      f"{plan.lower_bound:.6g}s")
    if plan.memory is not None:
        check_memory(plan)


def check_memory(plan: Any) -> None:
    """The memory plan of ``plan``: every value a run keeps in an arena (not an input, constant
    or graph output, and not empty) has exactly one place, in its own space's arena, aligned, of
    its size and inside the arena; and two values whose bytes overlap are never live at once
    (one's last reader completes before the other's producer starts in every run, by the data
    edges and the streams' order: the relation the memory pass plans with)."""
    graph, memory = plan.graph, plan.memory
    spaces = {d.name: d.memory_space for d in plan.machine.devices}
    kinds = {d.name: d.kind for d in plan.machine.devices}
    outputs = set(graph.outputs)
    for space, arena in memory.arenas.items():
        if space not in set(spaces.values()):
            raise _plan_error(plan, None, f"the memory plan has an arena for {space!r}, which is "
                                          "no memory space of the machine")
        if arena.arena_bytes < 0 or arena.alignment <= 0:
            raise _plan_error(plan, None, f"arena {space}: size {arena.arena_bytes} and "
                                          f"alignment {arena.alignment} are not valid")
    located: dict[Value, str] = {}
    for space, arena in memory.arenas.items():
        for v, (off, nbytes) in arena.offsets.items():
            if v.node not in graph or not 0 <= v.index < len(graph.node(v.node).outputs):
                raise _plan_error(plan, None, f"arena {space} places {v}, which no node of the "
                                              "graph produces")
            node = graph.node(v.node)
            if v in located:
                raise _plan_error(plan, v.node, f"output {v.index} has a place in arena "
                                                f"{located[v]} and again in {space}")
            located[v] = space
            if node.kind in UNPLANNED or v in outputs:
                raise _plan_error(plan, v.node, f"output {v.index} is an input, constant or graph "
                                                f"output, which live outside the arena, yet "
                                                f"arena {space} places it")
            want_space = output_space(node, spaces)
            if want_space != space:
                raise _plan_error(plan, v.node, f"output {v.index} lives in {want_space} but "
                                                f"has its place in arena {space}")
            spec = graph.spec(v)
            if nbytes != spec.nbytes:
                raise _plan_error(plan, v.node, f"output {v.index} ({spec}) is {spec.nbytes} "
                                                f"bytes, its place in arena {space} {nbytes}")
            if off < 0 or off % arena.alignment:
                raise _plan_error(plan, v.node, f"output {v.index} is at offset {off} of arena "
                                                f"{space}, which is not a non-negative multiple "
                                                f"of its alignment {arena.alignment}")
            if off + align(nbytes, arena.alignment) > arena.arena_bytes:
                raise _plan_error(plan, v.node, f"output {v.index} ends at byte "
                                                f"{off + nbytes} of arena {space}, past its end "
                                                f"({arena.arena_bytes} bytes)")
    for node in graph.nodes:
        if node.kind in UNPLANNED:
            continue
        for i, spec in enumerate(node.outputs):
            v = Value(node.name, i)
            if v not in outputs and spec.nbytes and v not in located:
                raise _plan_error(plan, node.name, f"output {i} ({spec}) has no place in the "
                                                   "memory plan")
    hb = HappensBefore(graph, plan.queues, kinds)
    readers: dict[Value, list[str]] = {v: [] for v in located}
    for node in graph.nodes:
        for v in node.reads:
            if v in readers:
                readers[v].append(node.name)

    def dead_before(a: Value, b: Value) -> bool:  # every use of a completes before b is made
        return all(hb.before(u, b.node) for u in readers[a] or [a.node])

    for space, arena in memory.arenas.items():
        active: list[tuple[int, Value]] = []  # (end, value) of places that start earlier
        for v, (off, nbytes) in sorted(arena.offsets.items(), key=lambda kv: kv[1][0]):
            if nbytes == 0:
                continue
            active = [(end, w) for end, w in active if end > off]
            for _, w in active:
                if not (dead_before(v, w) or dead_before(w, v)):
                    raise _plan_error(plan, v.node, f"output {v.index} overlaps {w} in arena "
                                                    f"{space} (bytes {off}-{off + nbytes} and "
                                                    f"{arena.offsets[w][0]}-"
                                                    f"{sum(arena.offsets[w])}), and both can be "
                                                    "live at once")
            active.append((off + nbytes, v))
