"""Placement and Plan: what the placer decided, and the immutable plan the executor runs.

``Reason`` says why a node landed on its device, ``Placement`` holds a device, a reason and an
estimated start and finish per node (the result of ``hetero.passes.place.place``), and ``Plan`` is
the end of the compile pipeline: the partitioned graph (every edge device-local, explicit
``transfer`` nodes between memory spaces), one queue of node names per device in execution order,
the estimates, the lower bound on the makespan and, once ``plan_memory`` ran, the arena layout.

All three are frozen. ``Plan.to_json()`` / ``Plan.from_json()`` round-trip a plan (constants
included), and ``check(plan)`` (registered on ``hetero.graph.check``) states every invariant.
"""

from __future__ import annotations

import base64
import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import numpy as np

from hetero.errors import GraphError, HeteroError
from hetero.graph import Attrs, Graph, Node, TensorSpec, Value, check

#: Every kind of reason a node can carry, in the words the report uses.
REASON_KINDS = ("pinned", "soft-kept", "soft-overridden", "colocated", "no-kernel-elsewhere",
                "cost", "capacity", "default", "input", "policy")


def _frozen_map(m: Mapping[str, Any] | None) -> Mapping[str, Any]:
    return MappingProxyType(dict(m or {}))


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
        policy: the policy that produced it ("heft", "peft", "cpu", "gpu", "annotated").
    """

    device: Mapping[str, str]
    reason: Mapping[str, Reason]
    start: Mapping[str, float] = field(default_factory=dict)
    finish: Mapping[str, float] = field(default_factory=dict)
    makespan: float = 0.0
    policy: str = "heft"

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
                   makespan=float(data["makespan"]), policy=data["policy"])


@dataclass(frozen=True)
class Plan:
    """Everything the executor needs to run a graph on a machine. Immutable.

    Attributes:
        graph: the partitioned graph (every node's ``device`` set, explicit transfers).
        machine: the Machine it was planned for.
        placement: the Placement of the original graph's nodes (reasons for the report).
        queues: device name -> node names in execution order; every non-input node of ``graph``
            is in exactly one queue, the queue of its device.
        estimates: node name -> (estimated start, estimated finish) in seconds.
        makespan: estimated seconds for one run.
        lower_bound: no schedule of this graph on this machine can beat it (same cost model).
        policy: the placement policy.
        memory: the MemoryPlan (one arena per device), or None before ``plan_memory``.
        cost: the cost model the plan was compiled with. When it is a measured model
            (``MeasuredCost``), every ``plan.run(..., profile=True)`` records the measured kernel
            times into it and saves them, so the next ``compile(..., cost="measured")`` places
            with them. Not part of equality; JSON keeps only where a measured model is cached.
    """

    graph: Graph
    machine: Any
    placement: Placement
    queues: Mapping[str, tuple[str, ...]]
    estimates: Mapping[str, tuple[float, float]]
    makespan: float
    lower_bound: float = 0.0
    policy: str = "heft"
    memory: Any = None
    cost: Any = field(default=None, repr=False, compare=False)
    _executor: Any = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "queues", _frozen_map(
            {d: tuple(q) for d, q in dict(self.queues).items()}))
        object.__setattr__(self, "estimates", _frozen_map(
            {n: (float(s), float(f)) for n, (s, f) in dict(self.estimates).items()}))

    def replace(self, **changes: Any) -> Plan:
        """A copy with some fields changed (``plan_memory`` uses it to add ``memory``)."""
        return dataclasses.replace(self, **changes)

    def run(self, *inputs: Any, profile: bool = False, outputs: str = "host",
            sync: bool = False) -> Any:
        """Run the plan on ``inputs`` with ``hetero.executor.Executor`` (loaded on the first run
        and kept); returns the list of outputs, and a Profile too when ``profile=True``.

        Args:
            inputs: one array per graph input.
            profile: also return a ``Profile``; with a measured cost model (``self.cost``) the
                run's kernel times are recorded into it and saved.
            outputs: "host" (NumPy arrays) or "device" (outputs computed on a GPU stay there).
            sync: run node by node on the calling thread (debugging; same results).
        """
        from hetero.executor import Executor

        if self._executor is None:
            object.__setattr__(self, "_executor", Executor(self))
        return self._executor.run(list(inputs), profile=profile, outputs=outputs, sync=sync)

    def node_device(self, name: str) -> str:
        return self.graph.node(name).device  # type: ignore[return-value]

    def transfers(self) -> tuple[Node, ...]:
        """The transfer nodes of the plan, in graph order."""
        return tuple(n for n in self.graph.nodes if n.op == "transfer")

    # -- JSON ------------------------------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        """A JSON-serialisable dict (constants base64-encoded) that ``from_json`` reads back."""
        memory = self.memory
        return {
            "format": "hetero.plan/1",
            "graph": graph_to_json(self.graph),
            "machine": _machine_to_json(self.machine),
            "placement": self.placement.to_json(),
            "queues": {d: list(q) for d, q in self.queues.items()},
            "estimates": {n: list(se) for n, se in self.estimates.items()},
            "makespan": self.makespan,
            "lower_bound": self.lower_bound,
            "policy": self.policy,
            "memory": memory.to_json() if memory is not None and hasattr(memory, "to_json")
            else None,
            "cost": _cost_to_json(self.cost),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any], machine: Any = None) -> Plan:
        """Read a plan written by ``to_json``; ``machine`` overrides the recorded one."""
        if not isinstance(data, Mapping):
            raise HeteroError(f"Plan.from_json takes the dict to_json wrote (json.load it first), "
                              f"got {type(data).__name__}")
        if data.get("format") != "hetero.plan/1":
            raise HeteroError(f"not a hetero plan (format {data.get('format')!r})")
        try:
            return cls._from_json(data, machine)
        except (KeyError, TypeError, ValueError, AttributeError, IndexError) as exc:
            raise HeteroError(f"a malformed hetero plan: {type(exc).__name__}: {exc}") from None

    @classmethod
    def _from_json(cls, data: Mapping[str, Any], machine: Any) -> Plan:
        if machine is None:
            machine = _machine_from_json(data["machine"])
        memory = None
        if data.get("memory") is not None:
            from hetero.passes.memory import MemoryPlan  # written by the memory pass

            memory = MemoryPlan.from_json(data["memory"])
        return cls(graph=graph_from_json(data["graph"]), machine=machine,
                   placement=Placement.from_json(data["placement"]),
                   queues={d: tuple(q) for d, q in data["queues"].items()},
                   estimates={n: tuple(se) for n, se in data["estimates"].items()},
                   makespan=float(data["makespan"]), lower_bound=float(data["lower_bound"]),
                   policy=data["policy"], memory=memory,
                   cost=_cost_from_json(data.get("cost"), machine))


def _cost_to_json(cost: Any) -> Any:
    """Where a measured cost model lives (its cache file); other models are not kept."""
    from hetero.cost import MeasuredCost

    if isinstance(cost, MeasuredCost):
        return {"model": "measured", "path": cost.path}
    return None


def _cost_from_json(data: Any, machine: Any) -> Any:
    if not data or data.get("model") != "measured" or machine is None:
        return None
    from hetero.cost import MeasuredCost

    return MeasuredCost(machine, path=data["path"])


# ----------------------------------------------------------------------------------------------
# Graph <-> JSON


def _attr_to_json(value: Any) -> Any:
    if isinstance(value, Attrs):
        return {"__attrs__": {k: _attr_to_json(v) for k, v in value.items()}}
    if isinstance(value, tuple):
        return [_attr_to_json(v) for v in value]
    return value


def _attr_from_json(value: Any) -> Any:
    if isinstance(value, dict) and "__attrs__" in value:
        return Attrs({k: _attr_from_json(v) for k, v in value["__attrs__"].items()})
    if isinstance(value, list):
        return tuple(_attr_from_json(v) for v in value)
    return value


def _array_to_json(arr: np.ndarray) -> dict[str, Any]:
    data = np.ascontiguousarray(arr)
    return {"dtype": data.dtype.str, "shape": list(data.shape),
            "data": base64.b64encode(data.tobytes()).decode("ascii")}


def _array_from_json(data: Mapping[str, Any]) -> np.ndarray:
    raw = base64.b64decode(data["data"])
    return np.frombuffer(raw, dtype=np.dtype(data["dtype"])).reshape(data["shape"]).copy()


def graph_to_json(graph: Graph) -> dict[str, Any]:
    """A Graph as plain JSON data (nodes, inputs, outputs, base64 constants)."""
    nodes = []
    for n in graph.nodes:
        nodes.append({
            "name": n.name, "op": n.op,
            "inputs": [[v.node, v.index] for v in n.inputs],
            "attrs": {k: _attr_to_json(v) for k, v in n.attrs.items()},
            "outputs": [s.to_json() for s in n.outputs],
            "device": n.device, "soft": n.soft, "colocate": n.colocate, "where": n.where,
        })
    return {"name": graph.name, "nodes": nodes, "inputs": list(graph.inputs),
            "outputs": [[v.node, v.index] for v in graph.outputs],
            "constants": {k: _array_to_json(a) for k, a in graph.constants.items()}}


def graph_from_json(data: Mapping[str, Any]) -> Graph:
    """The Graph that ``graph_to_json`` wrote."""
    import hetero.passes.partition  # noqa: F401  (registers the "transfer" op such graphs use)

    nodes = []
    for d in data["nodes"]:
        nodes.append(Node(
            name=d["name"], op=d["op"], inputs=tuple(Value(a, i) for a, i in d["inputs"]),
            attrs=Attrs({k: _attr_from_json(v) for k, v in d["attrs"].items()}),
            outputs=tuple(TensorSpec(tuple(s["shape"]), s["dtype"]) for s in d["outputs"]),
            device=d["device"], soft=d["soft"], colocate=d["colocate"], where=d["where"]))
    return Graph(tuple(nodes), tuple(data["inputs"]),
                 tuple(Value(a, i) for a, i in data["outputs"]),
                 {k: _array_from_json(a) for k, a in data["constants"].items()},
                 name=data["name"])


def _machine_to_json(machine: Any) -> Any:
    if machine is None:
        return None
    if hasattr(machine, "to_json"):
        return machine.to_json()
    return {"devices": [d.name for d in machine.devices]}


def _machine_from_json(data: Any) -> Any:
    from hetero.devices import Machine

    if data is None:
        return None
    if hasattr(Machine, "from_json"):
        return Machine.from_json(data)
    names = data["devices"] if isinstance(data, Mapping) else data
    cpus = sum(n.startswith("cpu") for n in names)
    gpus = sum(n.startswith("gpu") for n in names)
    return Machine.parse(f"cpu:{cpus}" + (f",sim:{gpus}" if gpus else ""))


# ----------------------------------------------------------------------------------------------
# Verifier


def _plan_error(plan: Plan, name: str | None, message: str) -> GraphError:
    if name is not None and name in plan.graph:
        from hetero.graph import neighbourhood

        node = plan.graph.node(name)
        near = neighbourhood(plan.graph, name)
        return GraphError(f"{node.label}: {message}" + (f"\n{near}" if near else ""))
    return GraphError(f"plan: {message}")


@check.register
def _check_plan(plan: Plan, **_: Any) -> None:
    """Every invariant of a Plan: its graph is valid and device-local, every non-input node is in
    exactly one queue (its device's), queues respect dependencies and together cannot deadlock,
    every node has estimates, and the makespan is not below the lower bound."""
    import networkx as nx

    import hetero.passes.partition  # noqa: F401  (registers the device-locality check)

    graph = plan.graph
    check(graph, machine=plan.machine)
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
            if node.op == "input":
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
        if node.op != "input" and node.name not in where:
            raise _plan_error(plan, node.name, "is in no queue")
        if node.name not in plan.estimates and node.op != "input":
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
