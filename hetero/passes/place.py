"""Placement: choose a device for every node of a graph, and say why.

``place(graph, machine, cost=None, policy="heft") -> Placement``.

Design
------
The graph becomes a task DAG for the list-scheduling core (``hetero.scheduling``):

- one task per computing node; graph inputs are tasks fixed on "cpu:0" (the host) that take no
  time; constants are not tasks: a plan uploads them once to every memory space that uses them,
  so they cost nothing per run and simply follow their first consumer;
- a colocation group is contracted into one task (its cost on a device is the sum of its
  members'), unless contracting would create a cycle; then the group goes to the device where
  its members' total cost is least;
- a virtual sink on "cpu:0" reads every graph output, so bringing results back to the host is
  part of the makespan;
- ``compute(task, device)`` comes from the cost model, ``comm(u, v, p, q)`` is
  ``cost.transfer(bytes of the edge, p, q)``; ``allowed(task)`` encodes the rules below.

Rules (``allowed`` per node, then a Reason per node):

- hard annotation (``node.device`` with ``soft=False``): that device only. A device that is not in
  the machine, or that has no kernel for the op, is a PlacementError naming node, op and line;
- soft annotation: a hint; the cost model decides among the devices with a kernel
  ("soft-kept" / "soft-overridden"). An annotated device without a kernel (or not in the
  machine) falls back, unless ``config.strict_placement`` makes that a PlacementError;
- a device whose backend has no kernel for the op is never allowed
  (``registry.has_kernel(op, device.backend)``);
- policies: "heft" and "peft" schedule over all allowed devices and keep the best of their own
  placement and those of the "cpu" and "gpu" policies (built by the same list scheduler under the
  same cost model, so a HEFT-class placement is never estimated slower than a fixed one); "cpu"
  allows CPU workers only, "gpu" GPUs only (CPU workers for ops without a GPU kernel), "annotated"
  keeps the annotations and puts the rest on "cpu:0" (the default device);
- GPU memory capacity: after scheduling, the planned peak of each GPU is estimated from the
  schedule (a value is live from its producer's start to its last reader's finish in that memory
  space; constants for the whole run). While a peak exceeds the device's capacity, the largest
  movable nodes there are barred from it (Reason "capacity") and the graph is scheduled again;
  when nothing is left to move, a PlacementError names the device, its peak and capacity.
  (The pipeline weighs that capacity-moved placement against ones that stream weights from
  host memory instead, ``hetero.pipeline.placed`` and ``hetero.passes.offload``.)

Estimates: the list scheduler treats a transfer as a delay on an edge. The candidate placements
are then compared, and the chosen one's start, finish and makespan reported, as the plan will run
them: partitioned (one transfer per value and memory space) and scheduled with each GPU's copy
engines as lanes of their own (``hetero.passes.schedule``), so copies over one link queue up. A
Placement's estimates are therefore those of the Plan that ``compile`` builds from it.

``HETERO_LOG_DEVICE_PLACEMENT=1`` (``config.log_device_placement``) logs node, device and reason
on the ``hetero.place`` logger as placement happens.
"""

from __future__ import annotations

import logging
import math
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import networkx as nx

from hetero import scheduling
from hetero.config import config, resolve_machine
from hetero.cost import input_specs, resolve_cost
from hetero.errors import HeteroError, PlacementError
from hetero.graph import Graph, Node, NodeKind, fmt_bytes
from hetero.ops import registry
from hetero.passes.offload import Offload
from hetero.spaces import INPUT_DEVICE, device_space

log = logging.getLogger("hetero.place")

__all__ = ["OFFLOAD_POLICIES", "PLACER_POLICIES", "POLICIES", "REASON_KINDS", "Evaluate",
           "Placement", "Reason", "lower_bound", "place", "planned_peaks"]

#: Policies this module's ``place`` builds.
PLACER_POLICIES = ("heft", "peft", "cpu", "gpu", "annotated")
#: Policies the pipeline builds from placements with weights streamed or layers split by memory
#: (``hetero.pipeline.place``); ``place`` here refuses them.
OFFLOAD_POLICIES = ("sequential_offload", "layer_split")
POLICIES = PLACER_POLICIES + OFFLOAD_POLICIES
HOST_DEVICE = INPUT_DEVICE
SINK = "__outputs__"

#: ``evaluate(device per node) -> (start, finish, makespan)``: how a candidate placement would
#: run, as the pipeline measures it (partitioned and scheduled, ``hetero.pipeline``).
Evaluate = Callable[[Mapping[str, str]], tuple[Mapping[str, float], Mapping[str, float], float]]


def _frozen_map(m: Mapping[str, Any] | None) -> Mapping[str, Any]:
    return MappingProxyType(dict(m or {}))


# ----------------------------------------------------------------------------------------------
# What placement decides

#: Every kind of reason a node can carry, in the words the report uses.
REASON_KINDS = ("pinned", "soft-kept", "soft-overridden", "colocated", "no-kernel-elsewhere",
                "cost", "capacity", "default", "input", "policy", "streamed")


@dataclass(frozen=True, slots=True)
class Reason:
    """Why a node is on its device: ``kind`` (one of ``REASON_KINDS``) and a sentence of detail."""

    kind: str
    detail: str = ""

    def __post_init__(self) -> None:
        if self.kind not in REASON_KINDS:
            raise HeteroError(f"unknown placement reason {self.kind!r} "
                              f"(known: {', '.join(REASON_KINDS)})")

    def __str__(self) -> str:
        return f"{self.kind}: {self.detail}" if self.detail else self.kind

    def to_json(self) -> dict[str, str]:
        return {"kind": self.kind, "detail": self.detail}

    @classmethod
    def from_json(cls, data: Mapping[str, str]) -> Reason:
        return cls(data["kind"], data.get("detail", ""))


@dataclass(frozen=True)
class Placement:
    """A device, a Reason and an estimated start and finish (seconds) for every node.

    Attributes:
        device: node name -> device name.
        reason: node name -> Reason.
        start, finish: node name -> estimated seconds from the start of a run.
        makespan: estimated finish of the last node.
        policy: the policy that produced it (one of ``POLICIES``).
        offload: the constants streamed into a GPU on every run instead of uploaded once, and
            how far ahead their copies run (``hetero.passes.offload.Offload``), or None.
    """

    device: Mapping[str, str]
    reason: Mapping[str, Reason]
    start: Mapping[str, float] = field(default_factory=dict)
    finish: Mapping[str, float] = field(default_factory=dict)
    makespan: float = 0.0
    policy: str = "heft"
    offload: Offload | None = None

    def __post_init__(self) -> None:
        for name in ("device", "reason", "start", "finish"):
            object.__setattr__(self, name, _frozen_map(getattr(self, name)))
        object.__setattr__(self, "makespan", float(self.makespan))

    def __getitem__(self, node: str) -> str:
        return self.device[node]

    def devices_used(self) -> tuple[str, ...]:
        """The devices at least one node is placed on, sorted."""
        return tuple(sorted(set(self.device.values())))

    def table(self) -> str:
        """One line per node: name, device, reason, estimated start and finish (ms)."""
        rows = []
        for name, dev in self.device.items():
            s, f = self.start.get(name, 0.0), self.finish.get(name, 0.0)
            rows.append(f"{name:<24} {dev:<7} {s * 1e3:9.3f} {f * 1e3:9.3f}  {self.reason[name]}")
        return "\n".join(rows)

    def to_json(self) -> dict[str, Any]:
        return {
            "policy": self.policy,
            "makespan": self.makespan,
            "offload": self.offload.to_json() if self.offload else None,
            "nodes": {n: {"device": d, "reason": self.reason[n].to_json(),
                          "start": self.start.get(n, 0.0), "finish": self.finish.get(n, 0.0)}
                      for n, d in self.device.items()},
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Placement:
        nodes = data["nodes"]
        return cls(device={n: v["device"] for n, v in nodes.items()},
                   reason={n: Reason.from_json(v["reason"]) for n, v in nodes.items()},
                   start={n: float(v["start"]) for n, v in nodes.items()},
                   finish={n: float(v["finish"]) for n, v in nodes.items()},
                   makespan=float(data["makespan"]), policy=data["policy"],
                   offload=Offload.from_json(data.get("offload")))




# ----------------------------------------------------------------------------------------------
# Rules: which devices each node may use, and the reason that follows from the rules alone


@dataclass
class _Rules:
    """Per node: allowed device names (machine order), and a reason fixed by the rules."""

    allowed: dict[str, tuple[str, ...]] = field(default_factory=dict)
    fixed: dict[str, Reason] = field(default_factory=dict)
    kernel_devices: dict[str, tuple[str, ...]] = field(default_factory=dict)
    soft_wish: dict[str, str] = field(default_factory=dict)


def _annotation_rules(graph: Graph, machine: Any, policy: str, strict: bool) -> _Rules:
    names = [d.name for d in machine.devices]
    by_name = {d.name: d for d in machine.devices}
    cpus = [d.name for d in machine.devices if d.kind == "cpu"]
    gpus = [d.name for d in machine.devices if d.kind != "cpu"]
    if HOST_DEVICE not in by_name:
        raise PlacementError(f"the machine has no {HOST_DEVICE} for graph inputs and outputs "
                             f"(devices: {', '.join(names)})")
    rules = _Rules()
    # under "annotated", an unannotated member of a group follows the group's annotated members
    annotated_groups = {n.colocate for n in graph.nodes
                        if n.colocate and n.device is not None and not n.is_constant}
    for node in graph.nodes:
        if node.is_constant:
            continue
        if node.is_input:
            rules.allowed[node.name] = (HOST_DEVICE,)
            rules.fixed[node.name] = Reason("input", "graph inputs arrive on the host")
            continue
        ok = tuple(n for n in names if registry.has_kernel(node.op, by_name[n].backend))
        rules.kernel_devices[node.name] = ok
        if not ok:
            raise PlacementError(f"{node.label}: op {node.op} has a kernel on no device of this "
                                 f"machine ({', '.join(names)})")
        if node.device is not None and not node.soft:
            rules.allowed[node.name] = (_check_pin(node, by_name, names),)
            rules.fixed[node.name] = Reason("pinned", f"hard annotation {node.device}")
            continue
        if node.device is not None:  # soft annotation
            trouble = None
            if node.device not in by_name:
                trouble = f"{node.device} is not in this machine ({', '.join(names)})"
            elif node.device not in ok:
                trouble = (f"op {node.op} has no kernel on {node.device} "
                           f"({by_name[node.device].backend})")
            if trouble is not None:
                if strict:
                    raise PlacementError(f"{node.label}: soft annotation {node.device} cannot be "
                                         f"kept: {trouble}, and config.strict_placement forbids "
                                         "falling back")
                rules.fixed[node.name] = Reason("soft-overridden", f"annotated {node.device}, "
                                                f"but {trouble}")
            else:
                rules.soft_wish[node.name] = node.device
        if policy == "annotated" and node.colocate in annotated_groups:
            rules.allowed[node.name] = ok
        else:
            rules.allowed[node.name] = _policy_allowed(node, policy, ok, cpus, gpus, rules)
        if len(ok) < len(names) and node.name not in rules.fixed:
            missing = [n for n in names if n not in ok]
            rules.fixed[node.name] = Reason("no-kernel-elsewhere",
                                            f"op {node.op} has no kernel on {', '.join(missing)}")
    return rules


def _check_pin(node: Node, by_name: Mapping[str, Any], names: Sequence[str]) -> str:
    dev = node.device
    if dev not in by_name:
        raise PlacementError(f"{node.label}: pinned to {dev}, which is not in this machine "
                             f"({', '.join(names)})")
    backend = by_name[dev].backend
    if not registry.has_kernel(node.op, backend):
        have = [n for n in names if registry.has_kernel(node.op, by_name[n].backend)]
        raise PlacementError(f"{node.label}: pinned to {dev}, but op {node.op} has no kernel on "
                             f"{backend} (it has one on: {', '.join(have) or 'no device'})")
    return dev  # type: ignore[return-value]


def _policy_allowed(node: Node, policy: str, ok: tuple[str, ...], cpus: Sequence[str],
                    gpus: Sequence[str], rules: _Rules) -> tuple[str, ...]:
    if policy in ("heft", "peft"):
        return ok
    if policy == "annotated":
        wish = rules.soft_wish.get(node.name)
        if wish is not None:
            return (wish,)
        return (HOST_DEVICE,) if HOST_DEVICE in ok else ok[:1]
    preferred = cpus if policy == "cpu" else gpus
    narrowed = tuple(d for d in ok if d in preferred)
    if narrowed:
        return narrowed
    if node.name not in rules.fixed:
        if not preferred:
            kind = "CPU worker" if policy == "cpu" else "GPU"
            rules.fixed[node.name] = Reason("policy", f"policy {policy}: the machine has no "
                                            f"{kind}; runs on {ok[0]}")
        else:
            rules.fixed[node.name] = Reason("no-kernel-elsewhere", f"policy {policy}: op "
                                            f"{node.op} has no kernel there; runs on {ok[0]}")
    return ok


# ----------------------------------------------------------------------------------------------
# The task DAG


@dataclass
class _Tasks:
    """The scheduling view of a graph: tasks, their members, and cached costs."""

    dag: nx.DiGraph
    members: dict[str, tuple[str, ...]]       # task -> node names (a group has several)
    task_of: dict[str, str]                   # node name -> task
    group_device: dict[str, str]              # group pinned by cycle fallback -> device


def _build_tasks(graph: Graph, rules: _Rules, cost_of: Any, devices: Sequence[str]) -> _Tasks:
    groups: dict[str, list[str]] = {}
    for node in graph.nodes:
        if node.colocate and node.kind not in (NodeKind.CONSTANT, NodeKind.INPUT):
            groups.setdefault(node.colocate, []).append(node.name)
    task_of = {n.name: n.name for n in graph.nodes if not n.is_constant}
    members: dict[str, tuple[str, ...]] = {}
    group_device: dict[str, str] = {}
    for group, names in groups.items():
        common = [d for d in devices if all(d in rules.allowed[n] for n in names)]
        if not common:
            detail = "; ".join(f"{graph.node(n).label} may use {', '.join(rules.allowed[n])}"
                               for n in names)
            raise PlacementError(f"colocation group {group!r} has no device all its nodes may "
                                 f"use: {detail}")
        for n in names:
            rules.allowed[n] = tuple(common)
        merged = dict(task_of)
        for n in names:
            merged[n] = f"group:{group}"
        # each group is merged into one task unless that closes a cycle, alone or together with
        # the groups merged before it (g1 -> g2 -> g1 through different members)
        if len(names) > 1 and _contraction_is_acyclic(graph, set(names)) and \
                _tasks_are_acyclic(graph, merged):
            task_of = merged
        elif len(names) > 1:
            best = min(common, key=lambda d: sum(cost_of(n, d) for n in names))
            group_device[group] = best
            for n in names:
                rules.allowed[n] = (best,)
    dag = nx.DiGraph()
    for node in graph.nodes:
        if node.is_constant:
            continue
        task = task_of[node.name]
        if task not in dag:
            dag.add_node(task, node=node)
        members[task] = members.get(task, ()) + (node.name,)
    for node in graph.nodes:
        if node.is_constant:
            continue
        for v in dict.fromkeys(node.inputs):
            _add_bytes(dag, task_of.get(v.node), task_of[node.name], graph.spec(v).nbytes)
    dag.add_node(SINK)
    members[SINK] = ()
    for v in dict.fromkeys(graph.outputs):
        _add_bytes(dag, task_of.get(v.node), SINK, graph.spec(v).nbytes)
    return _Tasks(dag, members, task_of, group_device)


def _add_bytes(dag: nx.DiGraph, src: str | None, dst: str, nbytes: int) -> None:
    """Count ``nbytes`` on the edge ``src -> dst`` of the task DAG (none within one task)."""
    if src is None or src == dst:
        return
    if dag.has_edge(src, dst):
        dag[src][dst]["nbytes"] += nbytes
    else:
        dag.add_edge(src, dst, nbytes=nbytes)


def _tasks_are_acyclic(graph: Graph, task_of: Mapping[str, str]) -> bool:
    """Is the graph of tasks (nodes merged as ``task_of`` says) acyclic?"""
    dag = nx.DiGraph()
    for node in graph.nodes:
        dst = task_of.get(node.name)
        if dst is None:
            continue
        dag.add_node(dst)
        for v in node.inputs:
            src = task_of.get(v.node)
            if src is not None and src != dst:
                dag.add_edge(src, dst)
    return nx.is_directed_acyclic_graph(dag)


def _contraction_is_acyclic(graph: Graph, group: set[str]) -> bool:
    """Would merging ``group`` into one vertex leave the graph acyclic? (No path leaves the group
    and re-enters it.)"""
    g = graph.to_networkx()
    outside_succ = {s for n in group for s in g.successors(n) if s not in group}
    if not outside_succ:
        return True
    reach: set[str] = set()
    for s in outside_succ:
        reach |= nx.descendants(g, s) | {s}
    return not (reach & group)


# ----------------------------------------------------------------------------------------------
# Scheduling under a set of rules


@dataclass
class _Outcome:
    """The chosen candidate: devices, plan-level start and finish per node, makespan, and which
    candidate ("heft", "cpu", ...) it was."""

    device: dict[str, str]
    start: dict[str, float]
    finish: dict[str, float]
    makespan: float
    label: str
    #: task -> its scheduler options ``(device, inputs ready, start, finish)`` (Schedule.options)
    options: Mapping[str, tuple] = field(default_factory=dict)
    task_of: Mapping[str, str] = field(default_factory=dict)
    #: task -> device in the list schedule, and the task DAG (bytes per edge): what a reason
    #: counts the copies with
    task_device: Mapping[str, str] = field(default_factory=dict)
    dag: Any = None
    #: PEFT's optimistic cost table (task -> device -> seconds) when "peft" won, else empty
    oct: Mapping[str, Mapping[str, float]] = field(default_factory=dict)


def _run_scheduler(tasks: _Tasks, devices: Sequence[str], algorithm: str, allowed_of: Any,
                   task_cost: Any, comm: Any) -> scheduling.Schedule:
    fn = scheduling.peft if algorithm == "peft" else scheduling.heft
    return fn(tasks.dag, list(devices), task_cost, comm, allowed=allowed_of)


def _restricted(rules: _Rules, tasks: _Tasks, devices: Sequence[str],
                keep: Iterable[str] | None) -> Any:
    """``allowed(task)`` for the scheduler; ``keep`` narrows unpinned tasks to those devices."""
    keep_set = set(keep) if keep is not None else None

    def allowed(task: str) -> tuple[str, ...]:
        if task == SINK:
            return (HOST_DEVICE,)
        common = [d for d in devices if all(d in rules.allowed[n] for n in tasks.members[task])]
        if keep_set is not None:
            pinned = any(rules.fixed.get(n, Reason("default")).kind in
                         ("pinned", "input", "no-kernel-elsewhere") for n in tasks.members[task])
            narrowed = [d for d in common if d in keep_set]
            if narrowed and not pinned:
                return tuple(narrowed)
        return tuple(common)

    return allowed


# ----------------------------------------------------------------------------------------------
# Memory estimate


def planned_peaks(graph: Graph, device: Mapping[str, str], start: Mapping[str, float],
                  finish: Mapping[str, float], machine: Any) -> dict[str, tuple[float, str]]:
    """Estimated peak bytes per GPU memory space under a schedule, and the node that produces the
    largest value live at that peak. Values live from their producer's start to the last finish
    of a reader in that space; constants for the whole run."""
    def space(dev: str) -> str:
        return device_space(dev, machine)

    events: dict[str, list[tuple[float, int, float, str]]] = {}
    makespan = max(finish.values(), default=0.0)
    consumers = graph.consumers()
    outputs = {v.node for v in graph.outputs}
    for node in graph.nodes:
        nbytes = float(sum(s.nbytes for s in node.outputs))
        if nbytes == 0:
            continue
        readers = [graph.node(c) for c in consumers[node.name]]
        if node.is_constant:
            for s in {space(device[r.name]) for r in readers}:
                events.setdefault(s, []).append((0.0, 1, nbytes, node.name))
            continue
        home = space(device[node.name])
        by_space: dict[str, list[Node]] = {}
        for r in readers:
            by_space.setdefault(space(device[r.name]), []).append(r)
        end = max((finish[r.name] for r in by_space.get(home, [])), default=finish[node.name])
        end = max([end] + [start[r.name] for s, rs in by_space.items() if s != home for r in rs])
        if node.name in outputs:
            end = makespan
        events.setdefault(home, []).append((start[node.name], 1, nbytes, node.name))
        events[home].append((end, 0, -nbytes, node.name))
        for s, rs in by_space.items():
            if s == home:
                continue
            events.setdefault(s, []).append((finish[node.name], 1, nbytes, node.name))
            events[s].append((max(finish[r.name] for r in rs), 0, -nbytes, node.name))
    peaks: dict[str, tuple[float, str]] = {}
    for s, evs in events.items():
        if s == "host":
            continue
        evs.sort(key=lambda e: (e[0], e[1]))  # frees before allocations at the same instant
        live, best, who = 0.0, 0.0, ""
        largest: dict[str, float] = {}
        for _, _, delta, name in evs:
            live += delta
            if delta > 0:
                largest[name] = delta
            else:
                largest.pop(name, None)
            if live > best:
                best = live
                who = max(largest, key=largest.__getitem__) if largest else name
        peaks[s] = (best, who)
    return peaks


# ----------------------------------------------------------------------------------------------
# place


def place(graph: Graph, machine: Any = None, cost: Any = None, policy: str = "heft", *,
          evaluate: Evaluate, capacity: bool = True) -> Placement:
    """Choose a device for every node of ``graph`` on ``machine`` (see the module docstring).

    Args:
        graph: the graph to place.
        machine: a Machine or spec string ("cpu:2,sim:1"); default ``config.machine``.
        cost: a cost model, or "roofline" (default) or "measured" (``resolve_cost``).
        policy: "heft" (default), "peft", "cpu", "gpu" or "annotated".
        evaluate: how a candidate placement runs (start and finish per node, makespan); the
            pipeline partitions and schedules it (``hetero.pipeline.place`` supplies this and
            keeps what it computed for the winner). Placement never runs a later stage itself.
        capacity: move nodes off a GPU whose planned peak exceeds its capacity; False places as
            if memory were unlimited (the pipeline then streams weights to make it fit).

    Returns:
        A Placement: device, Reason, estimated start and finish for every node, and the makespan.

    Raises:
        PlacementError: a hard annotation that cannot be obeyed, an op with no kernel anywhere, a
            soft fallback under ``config.strict_placement``, or a graph that does not fit in
            device memory.
    """
    machine = resolve_machine(machine)
    if policy not in POLICIES:
        raise PlacementError(f"unknown placement policy {policy!r} (known: {', '.join(POLICIES)})")
    if policy in OFFLOAD_POLICIES:
        raise PlacementError(f"policy {policy!r} is built by hetero.pipeline.place (ht.place), "
                             "which sizes it with the memory plan")
    cost = resolve_cost(cost, machine)
    ctx = _Context(graph, machine, cost)
    rules = _annotation_rules(graph, machine, policy, config.strict_placement)
    tasks = _build_tasks(graph, rules, ctx.node_cost, ctx.devices)
    capacity_moves: dict[str, str] = {}
    while True:
        outcome = _best_schedule(ctx, rules, tasks, policy, evaluate)
        device, start, finish = outcome.device, outcome.start, outcome.finish
        over = _over_capacity(ctx, device, start, finish) if capacity else None
        if over is None:
            break
        moved = _relieve(ctx, rules, tasks, device, over, policy)
        capacity_moves.update(moved)
    reasons = _reasons(ctx, rules, tasks, device, policy, outcome, capacity_moves)
    placement = Placement(device=device, reason=reasons, start=start, finish=finish,
                          makespan=outcome.makespan, policy=policy)
    if config.log_device_placement:
        _log(graph, placement)
    return placement


class _Context:
    """The graph, machine and cost model of one ``place`` call, with memoised costs."""

    def __init__(self, graph: Graph, machine: Any, cost: Any) -> None:
        self.graph = graph
        self.machine = machine
        self.cost = cost
        self.devices = [d.name for d in machine.devices]
        self.cpus = [d.name for d in machine.devices if d.kind == "cpu"]
        self.gpus = [d.name for d in machine.devices if d.kind != "cpu"]
        self._node: dict[tuple[str, str], float] = {}
        self._comm: dict[tuple[float, str, str], float] = {}

    def node_cost(self, name: str, dev: str) -> float:
        key = (name, dev)
        if key not in self._node:
            node = self.graph.node(name)
            if node.is_input:
                self._node[key] = 0.0
            else:
                self._node[key] = float(self.cost.compute(node, dev, input_specs(self.graph, node)))
        return self._node[key]

    def comm_bytes(self, nbytes: float, p: str, q: str) -> float:
        if p == q:
            return 0.0
        key = (nbytes, p, q)
        if key not in self._comm:
            self._comm[key] = float(self.cost.transfer(nbytes, p, q))
        return self._comm[key]


def _best_schedule(ctx: _Context, rules: _Rules, tasks: _Tasks, policy: str,
                   evaluate: Evaluate) -> _Outcome:
    """Schedule under the policy's candidates and keep the fastest on the plan-level estimate."""
    def task_cost(task: str, dev: str) -> float:
        return sum(ctx.node_cost(n, dev) for n in tasks.members[task])

    def comm(u: str, v: str, p: str, q: str) -> float:
        return ctx.comm_bytes(tasks.dag[u][v]["nbytes"], p, q)

    devs = ctx.devices
    if policy in ("heft", "peft"):
        candidates = [(policy, None), ("cpu", ctx.cpus), ("gpu", ctx.gpus or None)]
    elif policy == "cpu":
        candidates = [("cpu", ctx.cpus)]
    elif policy == "gpu":
        candidates = [("gpu", ctx.gpus or None)]
    else:
        candidates = [("annotated", None)]
    best: _Outcome | None = None
    best_allowed: Any = None
    seen: set[tuple[str, ...]] = set()
    for label, keep in candidates:
        # the fixed-policy candidates are built exactly as those policies build them
        algorithm = "peft" if label == "peft" else "heft"
        allowed = _restricted(rules, tasks, devs, keep)
        sched = _run_scheduler(tasks, devs, algorithm, allowed, task_cost, comm)
        device = _expand(ctx, tasks, sched)
        key = tuple(device.values())
        if key in seen:  # the same placement as an earlier candidate
            continue
        seen.add(key)
        start, finish, makespan = evaluate(device)
        if best is None or makespan < best.makespan * (1 - 1e-12):
            best = _Outcome(device, start, finish, makespan, label, sched.options,
                            tasks.task_of, sched.device, tasks.dag)
            best_allowed = allowed
    assert best is not None
    if best.label == "peft":  # PEFT chose by finish time + OCT: the reasons quote both
        best.oct = scheduling.optimistic_cost_table(tasks.dag, devs, task_cost, comm,
                                                    allowed=best_allowed)
    return best


def _expand(ctx: _Context, tasks: _Tasks, sched: scheduling.Schedule) -> dict[str, str]:
    """Device per node (in graph order) from a task schedule; constants follow their first
    consumer."""
    device: dict[str, str] = {}
    for task, members in tasks.members.items():
        if task != SINK:
            for n in members:
                device[n] = sched.device[task]
    consumers = ctx.graph.consumers()
    for node in ctx.graph.nodes:
        if node.is_constant:
            readers = consumers[node.name]
            device[node.name] = device[readers[0]] if readers else HOST_DEVICE
    return {n.name: device[n.name] for n in ctx.graph.nodes}


def _over_capacity(ctx: _Context, device: Mapping[str, str], start: Mapping[str, float],
                   finish: Mapping[str, float]) -> tuple[str, float, float, str] | None:
    """(device, peak, capacity, culprit) for the first GPU whose planned peak exceeds its
    capacity, or None."""
    peaks = planned_peaks(ctx.graph, device, start, finish, ctx.machine)
    for dev in ctx.machine.devices:
        if dev.kind == "cpu" or not dev.capacity:
            continue
        peak, who = peaks.get(dev.memory_space, (0.0, ""))
        if peak > dev.capacity:
            return dev.name, peak, float(dev.capacity), who
    return None


def _relieve(ctx: _Context, rules: _Rules, tasks: _Tasks, device: Mapping[str, str],
             over: tuple[str, float, float, str], policy: str = "heft") -> dict[str, str]:
    """Bar the largest movable nodes from the over-full device; returns node -> device."""
    dev, peak, capacity, who = over
    graph = ctx.graph
    movable = []
    for task, members in tasks.members.items():
        if task == SINK or not members or device[members[0]] != dev:
            continue
        fixed = [rules.fixed.get(n) for n in members]
        if any(r is not None and r.kind in ("pinned", "input") for r in fixed):
            continue
        if any(len([d for d in rules.allowed[n] if d != dev]) == 0 for n in members):
            continue
        nbytes = sum(s.nbytes for n in members for s in graph.node(n).outputs)
        nbytes += sum(graph.spec(v).nbytes for n in members for v in graph.node(n).inputs)
        movable.append((nbytes, task))
    if not movable:
        stuck = sorted((n for n in graph.nodes if device.get(n.name) == dev
                        and n.kind not in (NodeKind.CONSTANT, NodeKind.INPUT)),
                       key=lambda n: -sum(s.nbytes for s in n.outputs))
        names = ", ".join(n.label for n in stuck[:3]) + (" ..." if len(stuck) > 3 else "")
        peak_node = graph.node(who) if who in graph else None
        largest = f"; the largest value live at the peak comes from {peak_node.label}" \
            if peak_node is not None else ""
        raise PlacementError(f"the graph does not fit in the memory of {dev}: planned peak "
                             f"{peak / 2**20:.1f} MiB, capacity {capacity / 2**20:.1f} MiB, and "
                             f"none of the nodes there may move ("
                             + ("the 'gpu' policy keeps every node with a GPU kernel on the GPU "
                                "with its weights resident; the default policy streams weights "
                                "or moves nodes to fit" if policy == "gpu" else
                                "pinned or without a kernel elsewhere")
                             + f"): {names}{largest}")
    movable.sort(key=lambda x: -x[0])
    excess = peak - capacity
    moved: dict[str, str] = {}
    freed = 0.0
    for nbytes, task in movable:
        for n in tasks.members[task]:
            rules.allowed[n] = tuple(d for d in rules.allowed[n] if d != dev)
            moved[n] = dev
        freed += nbytes
        if freed >= excess:
            break
    return moved


def _reasons(ctx: _Context, rules: _Rules, tasks: _Tasks, device: Mapping[str, str],
             policy: str, outcome: _Outcome, capacity_moves: Mapping[str, str]
             ) -> dict[str, Reason]:
    graph = ctx.graph
    consumers = graph.consumers()
    reasons: dict[str, Reason] = {}
    for node in graph.nodes:
        name, dev = node.name, device[node.name]
        if node.is_constant:
            readers = consumers[name]
            reasons[name] = Reason("default", f"constant follows its consumer {readers[0]}"
                                   if readers else "constant kept on the host")
            continue
        fixed = rules.fixed.get(name)
        if fixed is not None and fixed.kind in ("input", "pinned", "no-kernel-elsewhere"):
            reasons[name] = fixed
        elif name in capacity_moves:
            reasons[name] = Reason("capacity", f"moved off {capacity_moves[name]}: its planned "
                                   "memory peak exceeded the capacity")
        elif node.colocate and len(tasks.members.get(tasks.task_of.get(name, name), ())) > 1:
            reasons[name] = Reason("colocated", f"group {node.colocate!r} runs on {dev}")
        elif node.colocate and node.colocate in tasks.group_device:
            reasons[name] = Reason("colocated", f"group {node.colocate!r} runs on {dev} (least "
                                   "total cost for the group)")
        elif fixed is not None:
            reasons[name] = fixed
        elif name in rules.soft_wish:
            wish = rules.soft_wish[name]
            if wish == dev:
                reasons[name] = Reason("soft-kept", f"annotated {wish}; "
                                       + _cost_detail(ctx, name, dev, rules, outcome))
            elif policy in ("cpu", "gpu"):
                reasons[name] = Reason("soft-overridden", f"annotated {wish}, but policy "
                                       f"{policy!r} puts it on {dev}")
            else:
                reasons[name] = Reason("soft-overridden", f"annotated {wish}, but "
                                       + _cost_detail(ctx, name, dev, rules, outcome))
        elif policy == "annotated":
            reasons[name] = Reason("default", f"no annotation: default device {dev}")
        elif policy in ("cpu", "gpu"):
            reasons[name] = Reason("policy", f"policy {policy}")
        else:
            why = _cost_detail(ctx, name, dev, rules, outcome)
            if outcome.label != policy:
                why += f" ({outcome.label}-only schedule estimated faster than {policy})"
            reasons[name] = Reason("cost", why)
    return reasons


def _cost_detail(ctx: _Context, name: str, dev: str, rules: _Rules,
                 outcome: _Outcome | None = None) -> str:
    """The kernel costs on the chosen and the next best device and, where those do not explain
    the choice (equal as printed, or the other device is faster), what decided it in the list
    scheduler (``_decider``)."""
    here = ctx.node_cost(name, dev)
    others = [(ctx.node_cost(name, d), d) for d in rules.kernel_devices.get(name, ()) if d != dev]
    text = f"{_ms(here)} on {dev}"
    if not others:
        return text
    t, d = min(others)
    text += f", {_ms(t)} on {d}"
    if t > here and _ms(t) != _ms(here):
        return text  # the cheaper kernel won: the costs say why
    if outcome is None:
        # HEFT minimises the finish time, which counts copies and the device's queue too
        return text + (f"; {dev} finishes first once copies and queues count" if t < here
                       else f"; a tie: {dev} comes first in the device list")
    return text + _decider(ctx, name, dev, d, outcome)


def _decider(ctx: _Context, name: str, dev: str, rival: str, outcome: _Outcome) -> str:
    """What made the list scheduler pick ``dev`` over ``rival`` for ``name``'s task, from the
    options it compared (``Schedule.options``) and its rule (``hetero.scheduling``): HEFT takes
    the least finish time, PEFT the least finish time + OCT, then the least finish time; values
    equal to 12 significant digits tie, and a tie goes to the device listed first."""
    task = outcome.task_of.get(name, name)
    options = {o[0]: o for o in outcome.options.get(task, ())}
    if dev not in options:
        return ""
    if rival not in options:
        if outcome.label in ("cpu", "gpu"):
            return f"; the {outcome.label}-only schedule does not consider {rival}"
        return f"; {rival} was not a candidate"
    _, ready, begin, end = options[dev]
    _, r_ready, r_begin, r_end = options[rival]
    q = scheduling._q  # the scheduler's own rounding, so a tie here is a tie there
    if outcome.label == "peft":
        ahead, r_ahead = outcome.oct[task][dev], outcome.oct[task][rival]
        if q(end + ahead) != q(r_end + r_ahead):
            a, b = _ms_pair(end + ahead, r_end + r_ahead)
            fa, fb = _ms_pair(end, r_end) if q(end) != q(r_end) else (_ms(end), _ms(r_end))
            oa, ob = _ms_pair(ahead, r_ahead) if q(ahead) != q(r_ahead) else (_ms(ahead),) * 2
            return (f"; PEFT counts the rest of the graph: finish {fa} + optimistic rest {oa} "
                    f"= {a} on {dev}, against {fb} + {ob} = {b} on {rival}")
        prefix = f"; PEFT's finish + optimistic rest ties ({_ms(end + ahead)})"
    else:
        prefix = ""
    if q(end) == q(r_end):
        return (f"{prefix}; both would finish at {_ms(end)}: {dev} comes first in the device "
                "list")
    a, b = _ms_pair(end, r_end)
    text = f"{prefix}; {dev} finishes first ({a} against {b} on {rival})"
    why = []
    if q(begin) < q(r_begin):
        if q(ready) < q(r_ready):
            a, b = _ms_pair(ready, r_ready)
            why.append(f"its inputs are there at {a}, on {rival} at {b} "
                       f"({_copies(ctx, task, rival, dev, outcome)})")
        if q(r_begin) > q(r_ready):
            a, b = _ms_pair(begin, r_begin)
            why.append(f"its queue is free at {a}, {rival}'s at {b}")
    work, r_work = end - begin, r_end - r_begin
    if q(work) < q(r_work):
        a, b = _ms_pair(work, r_work)
        why.append(f"its kernel takes {a}, {b} on {rival}")
    return text + (": " + " and ".join(why) if why else "")


def _copies(ctx: _Context, task: str, rival: str, dev: str, outcome: _Outcome) -> str:
    """The bytes the task's inputs would copy to ``rival`` and to ``dev`` under the schedule."""
    def inbound(to: str) -> float:
        space = device_space(to, ctx.machine)
        dag = outcome.dag
        return sum(dag[u][task]["nbytes"] for u in dag.predecessors(task)
                   if device_space(outcome.task_device[u], ctx.machine) != space)

    there, here = inbound(rival), inbound(dev)
    if not there and not here:
        return "no copies: a hand-off between devices of one memory space"
    return (f"{fmt_bytes(there) if there else 'nothing'} to copy to {rival}, "
            f"{fmt_bytes(here) if here else 'nothing'} to {dev}")


def _ms(seconds: float, digits: int = 3) -> str:
    if math.isinf(seconds):
        return "inf"
    if seconds >= 1e-3 or float(f"{seconds * 1e6:.{digits}g}") >= 1e3:  # not "1e+03 us"
        return f"{seconds * 1e3:.{digits}g} ms"
    return f"{seconds * 1e6:.{digits}g} us"


def _ms_pair(a: float, b: float) -> tuple[str, str]:
    """``_ms`` of two times that differ to the scheduler, with as many digits as it takes to
    show their difference (never "410 us against 410 us", nor "102 us against 103 us" for
    102.4 and 102.5)."""
    top, diff = max(abs(a), abs(b)), abs(a - b)
    if not math.isfinite(top) or top == 0:
        return _ms(a), _ms(b)
    for digits in range(3, 13):
        sa, sb = _ms(a, digits), _ms(b, digits)
        if sa != sb and 10 ** (math.floor(math.log10(top)) - digits + 1) <= diff:
            break
    return sa, sb


def _log(graph: Graph, placement: Placement) -> None:
    if not log.hasHandlers() or log.getEffectiveLevel() > logging.INFO:
        if not any(isinstance(h, logging.StreamHandler) for h in log.handlers):
            handler = logging.StreamHandler(sys.stderr)
            handler.setFormatter(logging.Formatter("%(name)s: %(message)s"))
            log.addHandler(handler)
        log.setLevel(logging.INFO)
    for node in graph.nodes:
        log.info("%s -> %s (%s)", node.label, placement.device[node.name],
                 placement.reason[node.name])


# ----------------------------------------------------------------------------------------------
# The lower bound


def lower_bound(graph: Graph, machine: Any = None, cost: Any = None) -> float:
    """A makespan no placement of ``graph`` can beat under ``cost`` (critical path on the fastest
    devices, or total work spread over every device; communication ignored)."""
    machine = resolve_machine(machine)
    cost = resolve_cost(cost, machine)
    ctx = _Context(graph, machine, cost)
    rules = _annotation_rules(graph, machine, "heft", strict=False)
    dag = nx.DiGraph()
    for node in graph.nodes:
        if not node.is_constant:
            dag.add_node(node.name, node=node)
    for node in graph.nodes:
        for v in node.inputs:
            if v.node in dag and node.name in dag:
                dag.add_edge(v.node, node.name)
    return scheduling.lower_bound(dag, ctx.devices, ctx.node_cost,
                                  allowed=lambda t: rules.allowed[t])
