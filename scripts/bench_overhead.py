"""Per-node overhead of the executor on graphs of tiny ops, next to raw NumPy and dask.

For each graph (a chain of tiny elementwise ops; several independent chains side by side) it
measures, as the median of several runs:

- raw NumPy: the same ufunc calls in a Python loop, into preallocated buffers (the floor);
- hetero: ``Executor(plan).run(inputs)`` of the compiled plan (CPU workers only);
- dask: ``dask.threaded.get`` on the equivalent task graph (one task per node).

and prints microseconds per node and the ratios. Usage::

    python scripts/bench_overhead.py [--nodes 2000] [--repeats 15] [--markdown]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from hetero.devices import Machine  # noqa: E402
from hetero.executor import Executor  # noqa: E402
from hetero.graph import Graph, Node, TensorSpec, Value  # noqa: E402

OPS = (("add", np.add), ("mul", np.multiply), ("sub", np.subtract))
SIZE = 8


def tiny_graph(chains: int, length: int, alternate: int = 0) -> Graph:
    """``chains`` independent chains of ``length`` tiny elementwise ops on 8-float vectors;
    with ``alternate`` = k, node i is pinned to worker i % k (a hand-off between workers at
    every node)."""
    spec = TensorSpec((SIZE,), np.float32)
    nodes = [Node("c", "constant", outputs=(spec,))]
    inputs, outputs = [], []
    for c in range(chains):
        x = f"x{c}"
        nodes.append(Node(x, "input", outputs=(spec,)))
        inputs.append(x)
        prev = Value(x)
        for i in range(length):
            name = f"n{c}_{i}"
            dev = f"cpu:{i % alternate}" if alternate else None
            nodes.append(Node(name, OPS[i % 3][0], (prev, Value("c")), outputs=(spec,),
                              device=dev))
            prev = Value(name)
        outputs.append(prev)
    const = {"c": np.full(SIZE, 0.5, np.float32)}
    return Graph(tuple(nodes), tuple(inputs), tuple(outputs), const, name="tiny")


def median_time(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def raw_numpy(chains: int, length: int):
    c = np.full(SIZE, 0.5, np.float32)
    xs = [np.ones(SIZE, np.float32) for _ in range(chains)]
    bufs = [[np.empty(SIZE, np.float32) for _ in range(2)] for _ in range(chains)]

    def run():
        for k in range(chains):
            prev, pair = xs[k], bufs[k]
            for i in range(length):
                out = pair[i & 1]
                OPS[i % 3][1](prev, c, out=out)
                prev = out

    return run


def dask_graph(graph: Graph):
    c = np.full(SIZE, 0.5, np.float32)
    ufunc = dict((name, f) for name, f in OPS)
    dsk: dict = {"c": c}
    for node in graph.nodes:
        if node.op == "input":
            dsk[node.name] = np.ones(SIZE, np.float32)
        elif node.op != "constant":
            dsk[node.name] = (ufunc[node.op], node.inputs[0].node, node.inputs[1].node)
    return dsk, [v.node for v in graph.outputs]


def bench(chains: int, length: int, workers: int, repeats: int, alternate: int = 0) -> dict:
    import dask.threaded

    import hetero

    graph = tiny_graph(chains, length, alternate)
    nodes = chains * length
    plan = hetero.compile(graph, machine=Machine.parse(f"cpu:{workers}"))
    ex = Executor(plan)
    xs = [np.ones(SIZE, np.float32) for _ in range(chains)]
    used = sum(1 for q in plan.queues.values() if q)
    t_raw = median_time(raw_numpy(chains, length), repeats)
    t_ex = median_time(lambda: ex.run(xs), repeats)
    t_sync = median_time(lambda: ex.run(xs, sync=True), repeats)
    dsk, keys = dask_graph(graph)
    t_dask = median_time(lambda: dask.threaded.get(dsk, keys, num_workers=workers),
                         max(3, repeats // 3))
    name = f"{chains} x chain of {length}" + (" (workers alternate)" if alternate else "")
    return {"graph": name, "nodes": nodes, "machine": f"cpu:{workers}", "workers": used,
            "raw": t_raw / nodes * 1e6, "hetero": t_ex / nodes * 1e6,
            "sync": t_sync / nodes * 1e6, "dask": t_dask / nodes * 1e6}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=2000, help="nodes per graph")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--markdown", action="store_true", help="print a Markdown table")
    args = parser.parse_args(argv)
    n = args.nodes
    cases = [(1, n, 1, 0), (1, n, 2, 0), (4, n // 4, 2, 0), (16, n // 16, 2, 0),
             (1, n // 10, 2, 2)]
    rows = [bench(c, length, w, args.repeats, alt) for c, length, w, alt in cases]
    head = ("graph", "nodes", "machine", "workers used", "raw NumPy us/node", "hetero us/node",
            "hetero overhead us/node", "hetero sync us/node", "dask us/node",
            "hetero / raw", "dask / hetero")
    table = []
    for r in rows:
        table.append((r["graph"], str(r["nodes"]), r["machine"], str(r["workers"]),
                      f"{r['raw']:.2f}", f"{r['hetero']:.2f}", f"{r['hetero'] - r['raw']:.2f}",
                      f"{r['sync']:.2f}",
                      f"{r['dask']:.1f}", f"{r['hetero'] / r['raw']:.1f}x",
                      f"{r['dask'] / r['hetero']:.0f}x"))
    if args.markdown:
        print("| " + " | ".join(head) + " |")
        print("|" + "|".join("---" for _ in head) + "|")
        for t in table:
            print("| " + " | ".join(t) + " |")
    else:
        widths = [max(len(h), *(len(t[i]) for t in table)) for i, h in enumerate(head)]
        print("  ".join(h.rjust(w) for h, w in zip(head, widths)))
        for t in table:
            print("  ".join(c.rjust(w) for c, w in zip(t, widths)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
