"""The sequential reference executor: the simplest correct way to run a Graph.

Every node runs in graph order on the host with the NumPy kernel of its op, each output in a fresh
buffer, on the calling thread, with BLAS at one thread (``hetero.threads``: the condition every
run computes under; a splitting kernel runs its pieces in turn). Device annotations are ignored
and ``transfer`` nodes are copies. Every other executor must produce what this one produces, bit
for bit on the CPU.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from hetero.errors import ExecutionError, HeteroError, ShapeError
from hetero.graph import Graph, TensorSpec, native
from hetero.ops.registry import lookup
from hetero.threads import blas_limit


def check_inputs(graph: Graph, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Refuse inputs whose count, shape or dtype differ from the graph's, before anything runs."""
    if len(inputs) != len(graph.inputs):
        raise ShapeError(f"graph {graph.name!r} takes {len(graph.inputs)} inputs "
                         f"({', '.join(graph.inputs)}), got {len(inputs)}")
    arrays = []
    for name, x in zip(graph.inputs, inputs):
        want = graph.node(name).outputs[0]
        arr = native(np.asarray(x))  # a big-endian array is converted, not refused
        got = TensorSpec.of(arr)
        if got != want:
            raise ShapeError(f"input {name!r} of graph {graph.name!r} must be {want}, got {got}")
        arrays.append(arr)
    return arrays


def run(graph: Graph, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Run ``graph`` on ``inputs`` and return its outputs as NumPy arrays."""
    arrays = check_inputs(graph, inputs)
    with blas_limit(1):
        env = _run(graph, arrays)
    return [np.array(env[v.node][v.index], copy=True) for v in graph.outputs]


def _run(graph: Graph, arrays: list[np.ndarray]) -> dict[str, tuple[np.ndarray, ...]]:
    env: dict[str, tuple[np.ndarray, ...]] = dict(
        zip(graph.inputs, ((a,) for a in arrays))
    )
    for node in graph.nodes:
        if node.is_input:
            continue
        if node.is_constant:
            env[node.name] = (graph.constants[node.name],)
            continue
        ins = [env[v.node][v.index] for v in node.inputs]
        if node.is_transfer:
            env[node.name] = (np.array(ins[0], copy=True),)
            continue
        op = lookup(node.op, node)
        try:
            outs = tuple(op.evaluate(ins, node.attrs, node.outputs))
        except HeteroError:
            raise
        except Exception as exc:
            raise ExecutionError(f"{node.label} failed on the reference executor: "
                                 f"{type(exc).__name__}: {exc}") from exc
        env[node.name] = outs
    return env
