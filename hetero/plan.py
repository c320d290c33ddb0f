"""Plan: the immutable end of the compile pipeline, which the executor runs.

A ``Plan`` holds the partitioned graph (every edge device-local, explicit ``transfer`` nodes
between memory spaces), the ``Placement`` it came from (``hetero.passes.place``: a device and a
Reason per node), one queue of node names per device in execution order, the estimates, the lower
bound on the makespan and the arena layout (``hetero.passes.memory``).

``Plan.to_json()`` / ``Plan.from_json()`` round-trip a plan (constants included), and
``check(plan)`` (``hetero.verify``) states every invariant.
"""

from __future__ import annotations

import base64
import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import numpy as np

from hetero.cost import MeasuredCost
from hetero.devices import Machine
from hetero.errors import HeteroError
from hetero.executor import Executor
from hetero.graph import Attrs, Graph, Node, TensorSpec, Value
from hetero.passes.memory import MemoryPlan, plan_memory
from hetero.passes.place import Placement
from hetero.verify import check, check_plan

__all__ = ["Plan", "graph_from_json", "graph_to_json"]


def _frozen_map(m: Mapping[str, Any] | None) -> Mapping[str, Any]:
    return MappingProxyType(dict(m or {}))


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
        memory: the MemoryPlan (one arena per memory space), or None before ``plan_memory``
            (which ``compile`` runs; the executor needs it).
        cost: the cost model the plan was compiled with. When it is a measured model
            (``MeasuredCost``), every ``plan.run(..., profile=True)`` records the measured kernel
            times into it and saves them, so the next ``compile(..., cost="measured")`` places
            with them. Not part of equality; JSON keeps only where a measured model is cached.
        donate: graph input index -> graph output index written into that input's array in
            place (``compile(..., donate=...)``); ``run`` returns the input array there.
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
    donate: Mapping[int, int] = field(default_factory=dict)
    _executor: Any = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "queues", _frozen_map(
            {d: tuple(q) for d, q in dict(self.queues).items()}))
        object.__setattr__(self, "estimates", _frozen_map(
            {n: (float(s), float(f)) for n, (s, f) in dict(self.estimates).items()}))
        object.__setattr__(self, "donate", _frozen_map(
            {int(i): int(j) for i, j in dict(self.donate).items()}))

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
        if self._executor is None:
            plan = self if self.memory is not None else plan_memory(self)
            object.__setattr__(self, "_executor", Executor(plan))
        inputs = list(inputs)
        for i in self.donate:  # written in place: the caller's own array, exactly as planned
            x = inputs[i] if i < len(inputs) else None
            want = self.graph.node(self.graph.inputs[i]).outputs[0]
            if not (isinstance(x, np.ndarray) and x.flags.writeable and x.dtype == want.dtype
                    and x.dtype.isnative and tuple(x.shape) == tuple(want.shape)):
                raise HeteroError(f"input {i} ({self.graph.inputs[i]!r}) is donated: it is "
                                  f"updated in place, so it must be a writable NumPy array of "
                                  f"{want}, got {_describe(x)}")
        result = self._executor.run(inputs, profile=profile, outputs=outputs, sync=sync)
        if not self.donate:
            return result
        outs = result[0] if profile else result
        outs = list(outs)
        for i, j in self.donate.items():
            outs[j] = inputs[i]
        return (outs, result[1]) if profile else outs

    def transfers(self) -> tuple[Node, ...]:
        """The transfer nodes of the plan, in graph order."""
        return tuple(n for n in self.graph.nodes if n.is_transfer)

    def copy_bytes(self) -> dict[str, dict[str, int]]:
        """Planned bytes copied per run, per issuing GPU and kind ("h2d", "d2h", "d2d"): what a
        simulated GPU's ``copied_bytes`` counts over one run (streamed weights included)."""
        out: dict[str, dict[str, int]] = {}
        for node in self.transfers():
            per = out.setdefault(node.device or "", {"h2d": 0, "d2h": 0, "d2d": 0})
            per[node.attrs["kind"]] += sum(s.nbytes for s in node.outputs)
        return out

    @property
    def peak_memory(self) -> dict[str, int]:
        """Predicted peak bytes per memory space when the plan runs: its arena (activations,
        workspaces, copy buffers) plus the constants uploaded to that space (one copy per space
        that reads them), the figure a device's capacity or memory budget must hold. The
        simulated GPU's ``peak_allocated`` after a run is at most this."""
        from hetero.passes.memory import peak_bytes

        return peak_bytes(self.graph, self.memory, self.machine)

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
            "memory": memory.to_json() if memory is not None else None,
            "peak_memory": self.peak_memory,
            "donate": {str(i): j for i, j in self.donate.items()},
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
            plan = cls._from_json(data, machine)
        except (KeyError, TypeError, ValueError, AttributeError, IndexError) as exc:
            raise HeteroError(f"a malformed hetero plan: {type(exc).__name__}: {exc}") from None
        check(plan)  # a plan from a file is verified before anything runs it
        return plan

    @classmethod
    def _from_json(cls, data: Mapping[str, Any], machine: Any) -> Plan:
        if machine is None:
            machine = _machine_from_json(data["machine"])
        memory = None
        if data.get("memory") is not None:
            memory = MemoryPlan.from_json(data["memory"])
        return cls(graph=graph_from_json(data["graph"]), machine=machine,
                   placement=Placement.from_json(data["placement"]),
                   queues={d: tuple(q) for d, q in data["queues"].items()},
                   estimates={n: tuple(se) for n, se in data["estimates"].items()},
                   makespan=float(data["makespan"]), lower_bound=float(data["lower_bound"]),
                   policy=data["policy"], memory=memory,
                   cost=_cost_from_json(data.get("cost"), machine),
                   donate={int(i): int(j) for i, j in (data.get("donate") or {}).items()})


def _describe(x: Any) -> str:
    if isinstance(x, np.ndarray):
        flags = "" if x.flags.writeable else "read-only "
        return f"a {flags}{x.dtype}{list(x.shape)} array"
    return "nothing" if x is None else type(x).__name__


def _cost_to_json(cost: Any) -> Any:
    """Where a measured cost model lives (its cache file); other models are not kept."""
    if isinstance(cost, MeasuredCost):
        return {"model": "measured", "path": cost.path}
    return None


def _cost_from_json(data: Any, machine: Any) -> Any:
    if not data or data.get("model") != "measured" or machine is None:
        return None
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
    data = np.array(arr, order="C", copy=None)  # ascontiguousarray makes a 0-d array 1-d
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


def _machine_to_json(machine: Machine | None) -> Any:
    return None if machine is None else machine.to_json()


def _machine_from_json(data: Any) -> Machine | None:
    return None if data is None else Machine.from_json(data)


check.register(Plan, check_plan)
