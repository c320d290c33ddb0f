"""The package's structure: layers that import only downward, no import cycle, one pass through
the pipeline.

Every ``hetero.*`` import counts, wherever it stands (module level or inside a function): an
import names a module (``from hetero.ops import nn`` names ``hetero.ops.nn``; ``from hetero.graph
import Node`` names ``hetero.graph``), and that is an edge. Lazy imports of optional third-party
extras (cupy, onnx, dask) are not ``hetero.*`` imports and do not count.
"""

from __future__ import annotations

import ast
import pathlib

import networkx as nx
import numpy as np

import hetero as ht
from hetero import pipeline
from tests.graphs import cnn, mlp, parallel_branches

PACKAGE = pathlib.Path(ht.__file__).parent

#: The layers, lowest first (the README's architecture section draws them). A module may import
#: modules of its own layer and of lower ones.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("hetero.errors", "hetero.version", "hetero.threads"),
    ("hetero.graph", "hetero.builder", "hetero.spaces", "hetero.scheduling"),
    ("hetero.devices", "hetero.config", "hetero.budget"),
    ("hetero.ops.registry", "hetero.ops.scratch"),
    ("hetero.tracing",),
    ("hetero.ops", "hetero.ops.elementwise", "hetero.ops.index", "hetero.ops.linalg",
     "hetero.ops.misc", "hetero.ops.nn", "hetero.ops.reduce", "hetero.ops.shape",
     "hetero.ops.transfer", "hetero.ops.methods", "hetero.ops.spatial", "hetero.ops.attention",
     "hetero.ops.vjp", "hetero.ops.grads"),
    ("hetero.backends", "hetero.backends.sim", "hetero.backends.cupy", "hetero.backends.cpu",
     "hetero.backends.cpu.kernels", "hetero.backends.cpu._loops"),
    ("hetero.cost",),
    ("hetero.passes", "hetero.passes.optimize", "hetero.passes.offload", "hetero.passes.place",
     "hetero.passes.partition",
     "hetero.passes.schedule", "hetero.passes.memory"),
    ("hetero.verify", "hetero.reference", "hetero.profile"),
    ("hetero.executor",),
    ("hetero.plan",),
    ("hetero.pipeline",),
    ("hetero.function", "hetero.compiler", "hetero.onnx", "hetero.autodiff"),
    ("hetero.report", "hetero.cluster", "hetero.distributed", "hetero.optim", "hetero.nn",
     "hetero.nn.layers", "hetero.nn.onnx_export"),
    ("hetero.cli", "hetero.__main__", "hetero"),
)


def _modules() -> dict[str, pathlib.Path]:
    mods = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        mods[".".join(parts)] = path
    return mods


def import_graph() -> nx.DiGraph:
    """Module -> every hetero module it imports, at any depth of its code."""
    mods = _modules()
    graph = nx.DiGraph()

    def owner(name: str) -> str:
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name

    for module, path in mods.items():
        graph.add_node(module)
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text())):
            named: list[str] = []
            if isinstance(node, ast.Import):
                named = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")[:len(package.split(".")) - node.level + 1]
                    source = ".".join(base + ([node.module] if node.module else []))
                else:
                    source = node.module or ""
                named = [f"{source}.{a.name}" if f"{source}.{a.name}" in mods else source
                         for a in node.names]
            for name in named:
                target = owner(name) if name.startswith("hetero") else ""
                if target and target != module:
                    graph.add_edge(module, target)
    return graph


def test_every_module_has_a_layer():
    layered = {m for layer in LAYERS for m in layer}
    assert set(_modules()) == layered


def test_no_import_cycle():
    cycles = [sorted(c) for c in nx.strongly_connected_components(import_graph()) if len(c) > 1]
    assert cycles == []


def test_layers_import_only_downward():
    level = {m: i for i, layer in enumerate(LAYERS) for m in layer}
    upward = [f"{a} (layer {level[a]}) imports {b} (layer {level[b]})"
              for a, b in import_graph().edges if level[b] > level[a]]
    assert upward == []


def test_structural_ops_are_typed():
    """Node kinds are an enum derived from the op, never strings compared around the code."""
    text = {p: p.read_text() for p in PACKAGE.rglob("*.py")}
    compared = [str(p.relative_to(PACKAGE)) for p, s in text.items()
                for op in ("input", "constant", "transfer")
                if f'.op == "{op}"' in s or f'.op != "{op}"' in s]
    assert compared == []
    node = ht.Node("t", "transfer")
    assert node.kind is ht.NodeKind.TRANSFER and node.is_transfer and not node.computes


# ----------------------------------------------------------------------------------------------
# One pass through the pipeline


def _count_stage_calls(monkeypatch) -> dict[str, int]:
    calls = {"partition": 0, "schedule": 0}

    def counted(name, fn):
        def wrapper(*args, **kwargs):
            calls[name] += 1
            return fn(*args, **kwargs)
        return wrapper

    monkeypatch.setattr(pipeline, "partition", counted("partition", pipeline.partition))
    monkeypatch.setattr(pipeline, "schedule", counted("schedule", pipeline.schedule))
    return calls


def test_compile_partitions_and_schedules_each_candidate_once(monkeypatch):
    """place proposes candidates; the pipeline partitions and schedules each distinct one once
    and reuses the winner's result for the plan (no second partition or schedule)."""
    calls = _count_stage_calls(monkeypatch)
    evaluated = []
    real = pipeline.Evaluations.result

    def result(self, device, offload=None):
        key = self._key(device, offload)
        if key not in self._results:
            evaluated.append(key)
        return real(self, device, offload)

    monkeypatch.setattr(pipeline.Evaluations, "result", result)
    for graph, spec in ((mlp(batch=8, sizes=(64, 64, 8)), "cpu:2,sim:1"),
                        (cnn(batch=2), "cpu:2,sim:2@t4"),
                        (parallel_branches(n=64, depth=2), "cpu:2")):
        calls.update(partition=0, schedule=0)
        evaluated.clear()
        plan = ht.compile(graph, spec)
        assert calls["partition"] == calls["schedule"] == len(evaluated) >= 1
        assert len(set(evaluated)) == len(evaluated)
        ht.check(plan)


def test_the_plan_is_the_winners_partition(monkeypatch):
    graph = mlp(batch=8, sizes=(64, 64, 8))
    machine = ht.Machine.parse("cpu:2,sim:1")
    plan = ht.compile(graph, machine, optimize=False)
    parted = ht.partition(graph, plan.placement, machine)
    assert parted == plan.graph
    inputs = [np.ones(s.shape, s.dtype) for s in graph.input_specs]
    assert len(plan.run(*inputs)) == len(graph.outputs)
