"""Shared test graphs built directly in the IR: MLP, small CNN, parallel branches, a tiled Cholesky
task graph, tiny-op and large-matmul chains, and random layered DAGs of registry ops.

Every builder returns a checked ``Graph`` whose nodes carry full, normalised attributes (the
registry's defaults filled in), plus ``inputs_for(graph, seed)`` to draw matching input arrays.
Values are kept small so that the float32 results of long chains stay finite.

    from tests.graphs import mlp, inputs_for
    g = mlp()
    outs = hetero.reference.run(g, inputs_for(g))
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Sequence
from typing import Any

import numpy as np

from hetero.graph import Graph, Node, TensorSpec, Value
from hetero.ops import registry
from hetero.verify import check

F32 = np.dtype(np.float32)


class Builder:
    """Builds a Graph node by node, inferring specs and normalising attributes via the registry."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.nodes: list[Node] = []
        self.inputs: list[str] = []
        self.constants: dict[str, np.ndarray] = {}
        self._count = itertools.count()
        self._annotation: tuple[str | None, bool, str | None] = (None, False, None)

    def fresh(self, prefix: str) -> str:
        return f"{prefix}_{next(self._count)}"

    def annotate(self, device: str | None = None, *, soft: bool = False,
                 colocate: str | None = None) -> Builder:
        """Nodes added from now on carry this annotation (``annotate()`` clears it)."""
        self._annotation = (device, soft, colocate)
        return self

    def input(self, shape: Sequence[int], dtype: Any = F32, name: str | None = None) -> Value:
        node = Node(name or self.fresh("x"), "input", outputs=(TensorSpec(tuple(shape), dtype),))
        self.nodes.append(node)
        self.inputs.append(node.name)
        return node.value()

    def const(self, array: np.ndarray, name: str | None = None) -> Value:
        arr = np.asarray(array)
        dev, soft, col = self._annotation
        node = Node(name or self.fresh("w"), "constant", outputs=(TensorSpec.of(arr),),
                    device=dev, soft=soft if dev else False, colocate=col)
        self.nodes.append(node)
        self.constants[node.name] = arr
        return node.value()

    def spec(self, v: Value) -> TensorSpec:
        for n in self.nodes:
            if n.name == v.node:
                return n.outputs[v.index]
        raise KeyError(v)

    def op(self, name: str, *inputs: Value, node_name: str | None = None,
           device: str | None = None, soft: bool | None = None, colocate: str | None = None,
           **attrs: Any) -> Value:
        """Add one node of registry op ``name``; returns its first output."""
        return self.op_multi(name, *inputs, node_name=node_name, device=device, soft=soft,
                             colocate=colocate, **attrs)[0]

    def op_multi(self, name: str, *inputs: Value, node_name: str | None = None,
                 device: str | None = None, soft: bool | None = None,
                 colocate: str | None = None, **attrs: Any) -> tuple[Value, ...]:
        op = registry.lookup(name)
        norm = op.normalize_attrs(attrs)
        outs = op.infer_specs(tuple(self.spec(v) for v in inputs), norm)
        a_dev, a_soft, a_col = self._annotation
        dev = device if device is not None else a_dev
        node = Node(node_name or self.fresh(name), name, tuple(inputs), norm, outs,
                    device=dev, soft=(a_soft if soft is None else soft) if dev else False,
                    colocate=colocate if colocate is not None else a_col,
                    where=f"graphs.py:{self.name}")
        self.nodes.append(node)
        return tuple(node.value(i) for i in range(len(outs)))

    def build(self, *outputs: Value) -> Graph:
        g = Graph(tuple(self.nodes), tuple(self.inputs), tuple(outputs), self.constants,
                  name=self.name)
        check(g)
        return g


def _weights(rng: np.random.Generator, *shape: int) -> np.ndarray:
    # dense (k, m): fan-in k; convolution (out, in, kh, kw): fan-in in * kh * kw
    fan_in = shape[0] if len(shape) <= 2 else int(np.prod(shape[1:]))
    return (rng.standard_normal(shape) / np.sqrt(max(fan_in, 1))).astype(np.float32)


def inputs_for(graph: Graph, seed: int = 0) -> list[np.ndarray]:
    """Random inputs of the graph's input specs (standard normal floats, small ints)."""
    rng = np.random.default_rng(seed)
    out = []
    for spec in graph.input_specs:
        if spec.dtype.kind == "f":
            out.append(rng.standard_normal(spec.shape).astype(spec.dtype))
        else:
            out.append(rng.integers(0, 4, spec.shape).astype(spec.dtype))
    return out


# ----------------------------------------------------------------------------------------------
# Families


def tiny_ops(n: int = 16, size: int = 8) -> Graph:
    """A chain of ``n`` elementwise ops on vectors of ``size`` floats (launch-bound work)."""
    b = Builder("tiny_ops")
    x = b.input((size,))
    c = b.const(np.full(size, 0.5, np.float32))
    y = x
    for i in range(n):
        y = b.op(("add", "mul", "sub")[i % 3], y, c)
    return b.build(y)


def matmul_chain(n: int = 1024, depth: int = 4, seed: int = 0) -> Graph:
    """``x @ W1 @ W2 ... @ Wdepth`` with n x n float32 matrices (compute-bound work)."""
    rng = np.random.default_rng(seed)
    b = Builder("matmul_chain")
    y = b.input((n, n))
    for _ in range(depth):
        y = b.op("matmul", y, b.const(_weights(rng, n, n)))
    return b.build(y)


def parallel_branches(n: int = 1024, depth: int = 3, seed: int = 0) -> Graph:
    """Two independent heavy matmul chains from two inputs, joined by an add::

        xa -> mm -> mm -> mm --.
                                add -> out
        xb -> mm -> mm -> mm --'
    """
    rng = np.random.default_rng(seed)
    b = Builder("parallel_branches")
    xa, xb = b.input((n, n), name="xa"), b.input((n, n), name="xb")
    ys = []
    for x in (xa, xb):
        y = x
        for _ in range(depth):
            y = b.op("matmul", y, b.const(_weights(rng, n, n)))
        ys.append(y)
    return b.build(b.op("add", ys[0], ys[1]))


def mlp(batch: int = 64, sizes: Sequence[int] = (256, 512, 512, 10), seed: int = 0) -> Graph:
    """Dense layers ``relu(x @ W + b)``; the last layer has no activation."""
    rng = np.random.default_rng(seed)
    b = Builder("mlp")
    y = b.input((batch, sizes[0]))
    for i, (k, m) in enumerate(zip(sizes, sizes[1:])):
        y = b.op("matmul", y, b.const(_weights(rng, k, m)))
        y = b.op("add", y, b.const((0.01 * rng.standard_normal(m)).astype(np.float32)))
        if i < len(sizes) - 2:
            y = b.op("relu", y)
    return b.build(y)


def cnn(batch: int = 2, channels: Sequence[int] = (3, 16, 32), hw: int = 32, classes: int = 10,
        seed: int = 0) -> Graph:
    """conv3x3 -> relu per stage, then global average pool, flatten and a dense layer."""
    rng = np.random.default_rng(seed)
    b = Builder("cnn")
    y = b.input((batch, channels[0], hw, hw))
    for cin, cout in zip(channels, channels[1:]):
        w = b.const(_weights(rng, cout, cin, 3, 3))
        bias = b.const((0.01 * rng.standard_normal(cout)).astype(np.float32))
        y = b.op("conv2d", y, w, bias, pads=(1, 1, 1, 1))
        y = b.op("relu", y)
    y = b.op("global_avg_pool", y)
    y = b.op("flatten", y, axis=1)
    y = b.op("matmul", y, b.const(_weights(rng, channels[-1], classes)))
    return b.build(y)


def tiled_cholesky(tiles: int = 4, tile: int = 128, seed: int = 0) -> Graph:
    """The task graph of a right-looking tiled Cholesky factorisation of a tiles x tiles matrix.

    The dependency structure and the costs are those of POTRF / TRSM / SYRK / GEMM on tiles; the
    arithmetic is a stand-in built from registry ops (POTRF(k) = A_kk @ A_kk scaled, TRSM = one
    matmul, SYRK and GEMM = A - L_a @ L_b), so that results are checkable by the reference.
    """
    rng = np.random.default_rng(seed)
    b = Builder("tiled_cholesky")
    scale = b.const(np.full((tile, tile), 1.0 / tile, np.float32), name="scale")
    a: dict[tuple[int, int], Value] = {}
    for i in range(tiles):
        for j in range(i + 1):
            a[i, j] = b.input((tile, tile), name=f"a_{i}_{j}")
    for k in range(tiles):
        kk = b.op("matmul", a[k, k], a[k, k], node_name=f"potrf_{k}")
        a[k, k] = b.op("mul", kk, scale, node_name=f"potrf_scale_{k}")
        for i in range(k + 1, tiles):
            a[i, k] = b.op("matmul", a[i, k], a[k, k], node_name=f"trsm_{i}_{k}")
        for i in range(k + 1, tiles):
            for j in range(k + 1, i + 1):
                prod = b.op("matmul", a[i, k], a[j, k], node_name=f"gemm_mm_{i}_{j}_{k}")
                prod = b.op("mul", prod, scale, node_name=f"gemm_scale_{i}_{j}_{k}")
                a[i, j] = b.op("sub", a[i, j], prod,
                               node_name=f"{'syrk' if i == j else 'gemm'}_{i}_{j}_{k}")
    del rng
    return b.build(*(a[i, j] for i in range(tiles) for j in range(i + 1)))


def random_layered(seed: int, layers: int = 5, width: int = 4, n: int = 256,
                   p_matmul: float = 0.4) -> Graph:
    """A random layered DAG of registry ops on n x n float32 matrices.

    Each layer has 1..width nodes; each node reads one or two values of earlier layers (mostly the
    previous one). Matmul results are scaled by 1/n so values stay bounded.
    """
    rnd = random.Random(seed)
    b = Builder(f"random_layered_{seed}")
    scale = b.const(np.full((n, n), 1.0 / n, np.float32), name="scale")
    prev = [b.input((n, n), name=f"x{i}") for i in range(rnd.randint(1, 2))]
    pool = list(prev)
    for _ in range(layers):
        layer = []
        for _ in range(rnd.randint(1, width)):
            a = rnd.choice(prev)
            if rnd.random() < p_matmul:
                other = rnd.choice(pool)
                y = b.op("mul", b.op("matmul", a, other), scale)
            elif rnd.random() < 0.5:
                y = b.op(rnd.choice(("add", "sub", "mul")), a, rnd.choice(pool))
            else:
                y = b.op("relu", a)
            layer.append(y)
        pool.extend(layer)
        prev = layer
    consumed = {v.node for node in b.nodes for v in node.inputs}
    sinks = [v for v in pool if v.node not in consumed and b.spec(v).shape == (n, n)
             and v.node not in b.inputs]
    return b.build(*(sinks or prev))


FAMILIES = {
    "mlp": mlp,
    "cnn": cnn,
    "tiled_cholesky": tiled_cholesky,
    "parallel_branches": parallel_branches,
    "matmul_chain": matmul_chain,
    "tiny_ops": tiny_ops,
}


def cpu_only_op() -> str:
    """Register (once) and return the name of a test op that has a kernel on "numpy" only, for
    placement tests of ops a GPU cannot run."""
    name = "test_cpu_only_square"
    if name not in registry.REGISTRY:
        def kernel(xp, ins, attrs, outs):
            xp.multiply(ins[0], ins[0], out=outs[0])

        registry.register(registry.Op(name, lambda ins, attrs: (ins[0],), kernel,
                                      backends=frozenset({"numpy"}),
                                      doc="x * x, NumPy only (tests)"))
    return name
