"""The one graph builder: tracing, ONNX import, partitioning and the optimizer's rewrites all make
their graphs with it.

A ``GraphBuilder`` holds nodes in the order they are added (which must be topological), the
graph inputs, the constants and the names already taken. ``fresh(base)`` gives ``base`` or the
first free ``base_1``, ``base_2``, ... (a numbered builder, as tracing uses, gives ``base_N`` from
one counter for every base: ``matmul_0``, ``relu_1``); ``constant(array, ...)`` adds a constant
node holding a read-only array, and an array object given again (unchanged) reuses its node, so a
weight read by several ops is stored once; ``build(outputs)`` returns the immutable Graph.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from hetero.graph import CONSTANT, INPUT, Graph, Node, TensorSpec, Value, native

__all__ = ["GraphBuilder", "frozen"]


def frozen(array: Any, *, copy: bool = True) -> np.ndarray:
    """``array`` as a read-only C-contiguous NumPy array of the same shape (0-d stays 0-d): a copy
    with ``copy``, else the array itself where it already is contiguous (then frozen in place:
    for arrays the caller owns)."""
    arr = np.asarray(array)
    if not arr.dtype.isnative:  # a big-endian weight is kept in the machine's byte order
        arr, copy = native(arr), False
    if copy:
        arr = np.array(arr, copy=True, order="C")
    else:
        arr = np.require(arr, requirements="C")
    arr.flags.writeable = False
    return arr


class GraphBuilder:
    """A graph under construction (see the module docstring).

    Args:
        name: the graph's name.
        taken: names that ``fresh`` must not hand out (the nodes of a graph being rewritten).
        numbered: name every fresh node ``base_N`` from one counter.
    """

    def __init__(self, name: str = "graph", *, taken: Iterable[str] = (),
                 numbered: bool = False) -> None:
        self.name = name
        self._counter = itertools.count() if numbered else None
        self.nodes: list[Node] = []
        self.inputs: list[str] = []
        self.constants: dict[str, np.ndarray] = {}
        self._names: set[str] = set(taken)
        # id(source array) -> (the source, kept alive so its id is not reused; its value)
        self._const_src: dict[int, tuple[Any, Value]] = {}

    def fresh(self, base: str) -> str:
        """``base``, or ``base_1``, ``base_2``, ... (numbered: ``base_N``): the first name not
        taken yet, taken from now on."""
        base = base or "node"
        if self._counter is not None:
            name = f"{base}_{next(self._counter)}"
            while name in self._names:
                name = f"{base}_{next(self._counter)}"
        else:
            name, k = base, 1
            while name in self._names:
                name, k = f"{base}_{k}", k + 1
        self._names.add(name)
        return name

    def add(self, node: Node) -> Node:
        """Append ``node`` (its name is taken from now on)."""
        self._names.add(node.name)
        self.nodes.append(node)
        return node

    def input(self, name: str, spec: TensorSpec, *, device: str | None = None,
              soft: bool = True, where: str | None = None) -> Value:
        """A graph input node called ``name`` (the next input in call order)."""
        node = self.add(Node(name=name, op=INPUT, outputs=(spec,), device=device, soft=soft,
                             where=where))
        self.inputs.append(node.name)
        return node.value()

    def constant(self, array: Any, base: str = "constant", *, copy: bool = True,
                 exact: bool = False, where: str | None = None, device: str | None = None,
                 soft: bool = True, colocate: str | None = None) -> Value:
        """A constant node holding ``array`` (frozen: a copy with ``copy``, else the array itself
        frozen in place), named ``fresh(base)`` (``base`` itself with ``exact``). The same array
        object given again, with the same contents, reuses the node."""
        seen = self._const_src.get(id(array))
        if seen is not None and seen[0] is array:
            value = seen[1]
            kept = self.constants[value.node]
            if not copy or (kept.dtype == array.dtype and kept.shape == np.shape(array) and
                            np.array_equal(kept, array, equal_nan=kept.dtype.kind in "fc")):
                return value
        arr = frozen(array, copy=copy)
        name = base if exact else self.fresh(base)
        node = self.add_constant(Node(name=name, op=CONSTANT, outputs=(TensorSpec.of(arr),),
                                      device=device, soft=soft, colocate=colocate,
                                      where=where), arr)
        value = node.value()
        self._const_src[id(array)] = (array, value)
        return value

    def add_constant(self, node: Node, array: np.ndarray) -> Node:
        """Append a constant node made by the caller, with its (read-only) array."""
        self.constants[node.name] = array
        return self.add(node)

    def build(self, outputs: Sequence[Value], *, prune: bool = False,
              inputs: Sequence[str] | None = None) -> Graph:
        """The Graph of the nodes added so far returning ``outputs``; with ``prune``, constant
        nodes that nothing reads are left out. ``inputs`` overrides the input order."""
        nodes = self.nodes
        constants = self.constants
        if prune:
            used = {v.node for n in nodes for v in n.inputs} | {v.node for v in outputs}
            nodes = [n for n in nodes if not n.is_constant or n.name in used]
            constants = {k: a for k, a in constants.items() if k in used}
        return Graph(tuple(nodes), tuple(self.inputs if inputs is None else inputs),
                     tuple(outputs), constants, name=self.name)
