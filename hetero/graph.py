"""The IR: TensorSpec, Value, Node, Graph (the verifier of every stage is ``hetero.verify``).

Everything here is immutable. A pass never edits a node or a graph; it builds new ones with
``replace`` (or with ``hetero.builder.GraphBuilder``). Nodes refer to their inputs by
``Value(node_name, index)``, so a pass that rewrites one node does not have to rebuild its
consumers.

Three ops are part of a graph's structure rather than computation, and every node says which of
these it is (``Node.kind``): graph inputs are nodes of op ``"input"``; constants are nodes of op
``"constant"`` whose array lives in ``Graph.constants`` under the node's name (arrays are not
hashable, so they stay out of ``attrs``); copies between memory spaces, which only partitioning
inserts, are nodes of op ``"transfer"``. Every other node computes (``NodeKind.COMPUTE``) with the
op registry's kernel of its op.
"""

from __future__ import annotations

import dataclasses
import enum
import heapq
import math
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import numpy as np

from hetero.errors import GraphError, ShapeError, node_label

# ----------------------------------------------------------------------------------------------
# Node kinds


class NodeKind(enum.Enum):
    """What a node is to the pipeline: one of the three structural ops, or a computation."""

    INPUT = "input"
    CONSTANT = "constant"
    TRANSFER = "transfer"
    COMPUTE = "compute"


#: The op names of the structural node kinds.
INPUT, CONSTANT, TRANSFER = "input", "constant", "transfer"
#: The op that writes a donated input in place (``hetero.ops.transfer``); its inputs after the
#: first two only order it.
ASSIGN = "assign"
STRUCTURAL_OPS = frozenset({INPUT, CONSTANT, TRANSFER})
_KIND_OF = {INPUT: NodeKind.INPUT, CONSTANT: NodeKind.CONSTANT, TRANSFER: NodeKind.TRANSFER}


#: Op classes: every registry op is of one (``Op.op_class``); devices have a peak rate per class,
#: and the cost model and the simulated GPU rate an op by its class.
OP_CLASSES = ("elementwise", "matmul", "conv", "reduce", "data", "norm")


def kind_of(op: str) -> NodeKind:
    """The node kind of an op name."""
    return _KIND_OF.get(op, NodeKind.COMPUTE)

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


def fmt_bytes(n: float | None) -> str:
    """Bytes with a binary unit: ``"1.5 MiB"``; ``"-"`` for None.

    >>> fmt_bytes(512), fmt_bytes(3 * 2**20 // 2), fmt_bytes(2**63), fmt_bytes(None)
    ('512 B', '1.5 MiB', '8 EiB', '-')
    """
    if n is None:
        return "-"
    for unit, size in (("EiB", 2**60), ("PiB", 2**50), ("TiB", 2**40), ("GiB", 2**30),
                       ("MiB", 2**20), ("KiB", 2**10)):
        if abs(n) >= size:
            return f"{n / size:.3g} {unit}"
    return f"{int(n)} B"


def native(array: np.ndarray) -> np.ndarray:
    """``array`` in the machine's byte order (a converted copy of a big-endian array on a
    little-endian host; the array itself otherwise). Specs carry no byte order: every kernel and
    device computes in the native one."""
    if array.dtype.isnative:
        return array
    return array.astype(array.dtype.newbyteorder("="))


#: The largest tensor a spec may describe: an offset into any arena or device must fit a signed
#: 64-bit integer (NumPy, CUDA), and no machine has more memory than that.
MAX_TENSOR_BYTES = 2**63 - 1


@dataclass(frozen=True, slots=True)
class TensorSpec:
    """Static shape and dtype of one tensor (of at most ``MAX_TENSOR_BYTES`` bytes)."""

    shape: tuple[int, ...]
    dtype: np.dtype

    def __post_init__(self) -> None:
        object.__setattr__(self, "shape", tuple(int(d) for d in self.shape))
        dtype = np.dtype(self.dtype)
        object.__setattr__(self, "dtype", dtype if dtype.isnative else dtype.newbyteorder("="))
        if any(d < 0 for d in self.shape):
            raise GraphError(f"negative dimension in shape {self.shape}")
        if self.nbytes > MAX_TENSOR_BYTES:
            raise ShapeError(f"a {self} tensor would be {self.nbytes:,} bytes, more than any "
                             f"machine can address (at most {MAX_TENSOR_BYTES:,})")

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def size(self) -> int:
        return math.prod(self.shape)  # Python ints: exact however large

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
        op: registry name of the operation ("matmul", "conv2d"), or one of the structural ops
            "input", "constant", "transfer".
        inputs: the values it reads.
        attrs: op attributes (immutable).
        outputs: the specs of what it produces.
        device: device annotation ("gpu:0") or, after partitioning, the device it was placed on.
        soft: the placer may override ``device``.
        colocate: nodes with the same group name must share a device.
        where: the user's source line that created the node ("model.py:42").
        kind: what the node is (``NodeKind``), derived from ``op``.
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
    kind: NodeKind = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "kind", kind_of(self.op))
        if not isinstance(self.attrs, Attrs):
            object.__setattr__(self, "attrs", Attrs(self.attrs))
        object.__setattr__(self, "inputs", tuple(self.inputs))
        object.__setattr__(self, "outputs", tuple(self.outputs))

    def replace(self, **changes: Any) -> Node:
        return dataclasses.replace(self, **changes)

    is_input = property(lambda self: self.kind is NodeKind.INPUT, doc="A graph input?")
    is_constant = property(lambda self: self.kind is NodeKind.CONSTANT, doc="A constant?")
    is_transfer = property(lambda self: self.kind is NodeKind.TRANSFER, doc="A copy?")
    computes = property(lambda self: self.kind is NodeKind.COMPUTE,
                        doc="Does it run a kernel of its op (not an input, constant or transfer)?")

    @property
    def reads(self) -> tuple[Value, ...]:
        """The inputs whose bytes the node reads: all of them, except for a transfer, which reads
        its first (a streamed weight's copy has order-only inputs after it), and an ``assign``,
        which reads its first two (the value and the input it overwrites; the rest order it)."""
        if self.kind is NodeKind.TRANSFER:
            return self.inputs[:1]
        if self.op == ASSIGN:
            return self.inputs[:2]
        return self.inputs

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
        body = "\n".join("  " + str(n) for n in self.nodes if not n.is_input)
        outs = ", ".join(str(v) for v in self.outputs)
        return f"graph {self.name}({ins}) {{\n{body}\n  return {outs}\n}}"



def neighbourhood(graph: Graph, name: str, radius: int = 2) -> str:
    """The lines of the printed graph around node ``name``, the culprit marked with ``>>``."""
    if name not in graph:
        return ""
    i = graph.position(name)
    lo, hi = max(0, i - radius), min(len(graph.nodes), i + radius + 1)
    return "\n".join(
        ("  >> " if j == i else "     ") + str(graph.nodes[j]) for j in range(lo, hi)
    )


def node_error(graph: Graph, node: Node, message: str) -> GraphError:
    """A GraphError naming ``node`` (name, op, source line) with its neighbourhood printed."""
    near = neighbourhood(graph, node.name)
    return GraphError(f"{node.label}: {message}" + (f"\n{near}" if near else ""))


# ----------------------------------------------------------------------------------------------
# Topological order


def toposort(count: int, successors: Sequence[Iterable[int]],
             key: Callable[[int], Any] | None = None) -> list[int] | None:
    """Kahn's algorithm over vertices ``0 .. count - 1``: an order in which every vertex comes
    after its predecessors, taking among the ready vertices the one with the least ``key``
    (default: the vertex itself). None when the edges have a cycle."""
    rank = key or (lambda i: i)
    indeg = [0] * count
    for succ in successors:
        for j in succ:
            indeg[j] += 1
    ready = [(rank(i), i) for i in range(count) if indeg[i] == 0]
    heapq.heapify(ready)
    order = []
    while ready:
        _, i = heapq.heappop(ready)
        order.append(i)
        for j in successors[i]:
            indeg[j] -= 1
            if indeg[j] == 0:
                heapq.heappush(ready, (rank(j), j))
    return order if len(order) == count else None
