"""The IR: TensorSpec, Value, Node, Graph, and the verifier ``check``.

Everything here is immutable. A pass never edits a node or a graph; it builds new ones with
``replace``. Nodes refer to their inputs by ``Value(node_name, index)``, so a pass that rewrites one
node does not have to rebuild its consumers.

Graph inputs are nodes of op ``"input"``; constants are nodes of op ``"constant"`` whose array
lives in ``Graph.constants`` under the node's name (arrays are not hashable, so they stay out
of ``attrs``).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import numpy as np

from hetero.errors import GraphError, node_label

# ----------------------------------------------------------------------------------------------
# Attributes


def _freeze(value: Any) -> Any:
    """Normalise an attribute value into something immutable and hashable."""
    if isinstance(value, (list, tuple)):
        return tuple(_freeze(v) for v in value)
    if isinstance(value, np.ndarray):
        if value.ndim == 0:
            return value.item()
        return tuple(_freeze(v) for v in value.tolist())
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.dtype):
        return value.name
    if isinstance(value, (dict, Mapping)):
        return Attrs(value)
    return value


class Attrs(Mapping[str, Any]):
    """An immutable, hashable mapping of attribute names to plain values (ints, floats, strings,
    tuples, None)."""

    __slots__ = ("_items", "_hash")

    def __init__(self, items: Mapping[str, Any] | Iterable[tuple[str, Any]] = ()) -> None:
        pairs = items.items() if isinstance(items, Mapping) else items
        self._items = {str(k): _freeze(v) for k, v in sorted(pairs)}
        self._hash: int | None = None

    def __getitem__(self, key: str) -> Any:
        return self._items[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __hash__(self) -> int:
        if self._hash is None:
            self._hash = hash(tuple(self._items.items()))
        return self._hash

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Attrs):
            return self._items == other._items
        if isinstance(other, Mapping):
            return self._items == dict(other)
        return NotImplemented

    def __repr__(self) -> str:
        return "{" + ", ".join(f"{k}={v!r}" for k, v in self._items.items()) + "}"

    def set(self, **changes: Any) -> Attrs:
        """A copy with some attributes changed."""
        return Attrs({**self._items, **changes})


EMPTY_ATTRS = Attrs()

# ----------------------------------------------------------------------------------------------
# Specs and values


@dataclass(frozen=True, slots=True)
class TensorSpec:
    """Static shape and dtype of one tensor."""

    shape: tuple[int, ...]
    dtype: np.dtype

    def __post_init__(self) -> None:
        object.__setattr__(self, "shape", tuple(int(d) for d in self.shape))
        object.__setattr__(self, "dtype", np.dtype(self.dtype))
        if any(d < 0 for d in self.shape):
            raise GraphError(f"negative dimension in shape {self.shape}")

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    @property
    def nbytes(self) -> int:
        return self.size * self.dtype.itemsize

    def __str__(self) -> str:
        return f"{_short_dtype(self.dtype)}[{','.join(map(str, self.shape))}]"

    @classmethod
    def of(cls, array: Any) -> TensorSpec:
        return cls(tuple(array.shape), array.dtype)

    def to_json(self) -> dict[str, Any]:
        return {"shape": list(self.shape), "dtype": self.dtype.name}


def _short_dtype(dtype: np.dtype) -> str:
    names = {"float32": "f32", "float64": "f64", "float16": "f16", "int64": "i64", "int32": "i32",
             "int8": "i8", "uint8": "u8", "bool": "bool"}
    return names.get(dtype.name, dtype.name)


@dataclass(frozen=True, slots=True)
class Value:
    """One output of one node: ``(node name, output index)``."""

    node: str
    index: int = 0

    def __str__(self) -> str:
        return f"%{self.node}" if self.index == 0 else f"%{self.node}:{self.index}"


# ----------------------------------------------------------------------------------------------
# Nodes


@dataclass(frozen=True, slots=True)
class Node:
    """One operation in a graph.

    Attributes:
        name: unique within its graph.
        op: registry name of the operation ("matmul", "conv2d", "input", "constant", "transfer").
        inputs: the values it reads.
        attrs: op attributes (immutable).
        outputs: the specs of what it produces.
        device: device annotation ("gpu:0") or, after partitioning, the device it was placed on.
        soft: the placer may override ``device``.
        colocate: nodes with the same group name must share a device.
        where: the user's source line that created the node ("model.py:42").
    """

    name: str
    op: str
    inputs: tuple[Value, ...] = ()
    attrs: Attrs = EMPTY_ATTRS
    outputs: tuple[TensorSpec, ...] = ()
    device: str | None = None
    soft: bool = False
    colocate: str | None = None
    where: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.attrs, Attrs):
            object.__setattr__(self, "attrs", Attrs(self.attrs))
        object.__setattr__(self, "inputs", tuple(self.inputs))
        object.__setattr__(self, "outputs", tuple(self.outputs))

    def replace(self, **changes: Any) -> Node:
        return dataclasses.replace(self, **changes)

    @property
    def label(self) -> str:
        """``name (op, from file:line)``, the way every message names a node."""
        return node_label(self.name, self.op, self.where)

    def value(self, index: int = 0) -> Value:
        return Value(self.name, index)

    def __str__(self) -> str:
        outs = ", ".join(str(s) for s in self.outputs)
        args = ", ".join(str(v) for v in self.inputs)
        attrs = "" if not self.attrs else " " + repr(self.attrs)
        dev = f" @{self.device}{'?' if self.soft else ''}" if self.device else ""
        col = f" colocate={self.colocate}" if self.colocate else ""
        where = f"  # {self.where}" if self.where else ""
        return f"%{self.name}: {outs} = {self.op}({args}){attrs}{dev}{col}{where}"


# ----------------------------------------------------------------------------------------------
# Graphs


@dataclass(frozen=True, slots=True)
class Graph:
    """Nodes in a topological order, the graph's inputs and outputs, and its constants.

    ``inputs`` are the names of ``"input"`` nodes in call order; ``outputs`` are values.
    """

    nodes: tuple[Node, ...]
    inputs: tuple[str, ...]
    outputs: tuple[Value, ...]
    constants: Mapping[str, np.ndarray] = field(default_factory=dict)
    name: str = "graph"
    _index: dict[str, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "nodes", tuple(self.nodes))
        object.__setattr__(self, "inputs", tuple(self.inputs))
        object.__setattr__(self, "outputs", tuple(self.outputs))
        consts = {}
        for k, arr in dict(self.constants).items():
            if arr.flags.writeable:
                arr = arr.copy()
                arr.flags.writeable = False
            consts[k] = arr
        object.__setattr__(self, "constants", MappingProxyType(consts))
        object.__setattr__(self, "_index", {n.name: i for i, n in enumerate(self.nodes)})

    # -- access ---------------------------------------------------------------------------------

    def __iter__(self) -> Iterator[Node]:
        return iter(self.nodes)

    def __len__(self) -> int:
        return len(self.nodes)

    def __contains__(self, name: object) -> bool:
        return name in self._index

    def node(self, name: str) -> Node:
        try:
            return self.nodes[self._index[name]]
        except KeyError:
            raise GraphError(f"graph {self.name!r} has no node {name!r}") from None

    def position(self, name: str) -> int:
        return self._index[name]

    def spec(self, value: Value) -> TensorSpec:
        return self.node(value.node).outputs[value.index]

    @property
    def input_specs(self) -> tuple[TensorSpec, ...]:
        return tuple(self.node(n).outputs[0] for n in self.inputs)

    @property
    def output_specs(self) -> tuple[TensorSpec, ...]:
        return tuple(self.spec(v) for v in self.outputs)

    def consumers(self) -> dict[str, list[str]]:
        """Node name -> names of the nodes that read any of its outputs (in graph order, unique)."""
        out: dict[str, list[str]] = {n.name: [] for n in self.nodes}
        for n in self.nodes:
            for v in dict.fromkeys(v.node for v in n.inputs):
                if v in out:
                    out[v].append(n.name)
        return out

    def replace(self, **changes: Any) -> Graph:
        changes.setdefault("constants", self.constants)
        return dataclasses.replace(self, **changes)

    def to_networkx(self):
        """A ``networkx.DiGraph`` view: one vertex per node (attribute ``node``), one edge per
        producer/consumer pair (attributes ``values`` and ``nbytes``)."""
        import networkx as nx

        g = nx.DiGraph(name=self.name)
        for n in self.nodes:
            g.add_node(n.name, node=n)
        for n in self.nodes:
            for v in dict.fromkeys(n.inputs):
                if g.has_edge(v.node, n.name):
                    g[v.node][n.name]["values"].append(v)
                else:
                    g.add_edge(v.node, n.name, values=[v])
        for _, _, data in g.edges(data=True):
            data["nbytes"] = sum(self.spec(x).nbytes for x in data["values"])
        return g

    def __str__(self) -> str:
        ins = ", ".join(f"%{n}: {self.node(n).outputs[0]}" for n in self.inputs)
        body = "\n".join(
            "  " + str(n) for n in self.nodes if n.op != "input"
        )
        outs = ", ".join(str(v) for v in self.outputs)
        return f"graph {self.name}({ins}) {{\n{body}\n  return {outs}\n}}"


# ----------------------------------------------------------------------------------------------
# Verifier


@functools.singledispatch
def check(obj: Any, **kwargs: Any) -> None:
    """Verify every invariant of a Graph (or, once registered, a Plan); raise ``GraphError``
    naming the node, its op and source line, with the neighbourhood printed."""
    raise GraphError(f"check() takes a Graph or a Plan, got {type(obj).__name__}")


def neighbourhood(graph: Graph, name: str, radius: int = 2) -> str:
    """The lines of the printed graph around node ``name``, the culprit marked with ``>>``."""
    i = graph._index.get(name)
    if i is None:
        return ""
    lo, hi = max(0, i - radius), min(len(graph.nodes), i + radius + 1)
    return "\n".join(
        ("  >> " if j == i else "     ") + str(graph.nodes[j]) for j in range(lo, hi)
    )


def _fail(graph: Graph, node: Node, message: str) -> GraphError:
    near = neighbourhood(graph, node.name)
    return GraphError(f"{node.label}: {message}" + (f"\n{near}" if near else ""))


@check.register
def _check_graph(graph: Graph, *, machine: Any = None) -> None:
    from hetero.ops import registry

    seen: dict[str, Node] = {}
    names = {n.name for n in graph.nodes}
    if len(names) != len(graph.nodes):
        dup = [n for n in graph.nodes if sum(m.name == n.name for m in graph.nodes) > 1][0]
        raise _fail(graph, dup, "node name is used more than once")
    for node in graph.nodes:
        for pos, v in enumerate(node.inputs):
            if v.node not in names:
                raise _fail(graph, node, f"input {pos} reads {v}, which no node of the graph "
                                         "produces (dangling input)")
            if v.node not in seen:
                _raise_cycle_or_order(graph, node, v)
            producer = seen[v.node]
            if not 0 <= v.index < len(producer.outputs):
                raise _fail(graph, node, f"input {pos} reads output {v.index} of "
                                         f"{producer.label}, which has {len(producer.outputs)}")
        if node.device is not None:
            _check_device_name(graph, node)
        if node.op == "input":
            if node.inputs or len(node.outputs) != 1:
                raise _fail(graph, node, "an input node takes no inputs and has one output")
            if node.name not in graph.inputs:
                raise _fail(graph, node, "input node is not listed in graph.inputs (the graph "
                                         "would have no value for it)")
        elif node.op == "constant":
            arr = graph.constants.get(node.name)
            if arr is None:
                raise _fail(graph, node, "constant has no array in graph.constants")
            if TensorSpec.of(arr) != node.outputs[0]:
                raise _fail(graph, node, f"constant array is {TensorSpec.of(arr)} but the node "
                                         f"says {node.outputs[0]}")
        else:
            op = registry.lookup(node.op, node)
            in_specs = tuple(seen[v.node].outputs[v.index] for v in node.inputs)
            try:
                expected = op.infer_specs(in_specs, node.attrs)
            except Exception as exc:  # the op's own message names what is wrong
                raise _fail(graph, node, f"inputs {', '.join(map(str, in_specs))} are invalid: "
                                         f"{exc}") from None
            if tuple(expected) != node.outputs:
                raise _fail(graph, node, "wrong output spec: node says "
                            f"{', '.join(map(str, node.outputs))} but {node.op} of "
                            f"{', '.join(map(str, in_specs))} gives "
                            f"{', '.join(map(str, expected))}")
        seen[node.name] = node
    for n in graph.inputs:
        if n not in names or graph.node(n).op != "input":
            raise GraphError(f"graph input {n!r} is not an input node")
    if len(set(graph.inputs)) != len(graph.inputs):
        dup = sorted({n for n in graph.inputs if graph.inputs.count(n) > 1})
        raise GraphError(f"graph inputs {', '.join(dup)} are listed more than once")
    for v in graph.outputs:
        if v.node not in names:
            raise GraphError(f"graph output {v} is produced by no node")
        if v.index >= len(graph.node(v.node).outputs):
            raise GraphError(f"graph output {v} is out of range")
    for hook in _GRAPH_CHECKS:
        hook(graph, machine)


def _check_device_name(graph: Graph, node: Node) -> None:
    from hetero.devices import normalize_device
    from hetero.errors import DeviceError

    try:
        ok = normalize_device(node.device) == node.device
    except DeviceError:
        ok = False
    if not ok:
        raise _fail(graph, node, f"device annotation {node.device!r} is not a device name like "
                                 "'cpu:0' or 'gpu:1'")


# Stages that add invariants (partitioning: no op reads another memory space) register here.
_GRAPH_CHECKS: list = []


def _raise_cycle_or_order(graph: Graph, node: Node, v: Value) -> None:
    import networkx as nx

    g = graph.to_networkx()
    try:
        cycle = nx.find_cycle(g, source=node.name)
    except nx.NetworkXNoCycle:
        raise _fail(graph, node, f"reads {v} before it is produced (nodes are not in "
                                 "topological order)") from None
    path = " -> ".join([u for u, _ in cycle] + [cycle[0][0]])
    raise _fail(graph, node, f"the graph has a cycle: {path}")
