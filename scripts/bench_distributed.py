"""The cost of running plans on Dask distributed (hetero.distributed), on a LocalCluster of
worker processes on this machine.

    python3 scripts/bench_distributed.py [--repeat 200] [--batches 24] [--rounds 3]

1. One cross-node value on localhost: a two-op graph (relu, then neg, of a float32[256]) run
   whole on one worker (client -> actor -> client) against split over two nodes (client ->
   node0 -> node1 -> client: one more worker-to-worker message carrying the value). The
   difference of the medians is the cost of one cross-node value end to end; the value's own
   trip (node0's send to its arrival on node1, from the actors' clocks) is printed too.
2. Throughput of ``map`` over 2 worker processes against 1, on examples/two_tower.onnx (one run
   about 70 ms on one CPU worker): data-parallel replicas (``Connection.runner``, one per
   worker) and the pipeline over two nodes (``PipelineRunner``, the graph split in two; each
   node's partition takes 10 ms or more, printed). One run's latency over two nodes too: the
   throughput split against the latency placement (``objective="latency"``), which runs the
   two towers on the two nodes at once.

Each figure is the median of ``--rounds`` rounds. The machine may be shared: read the ratios.
"""

from __future__ import annotations

import argparse
import pathlib
import statistics
import time

import numpy as np

from hetero import distributed as hd
from hetero.builder import GraphBuilder
from hetero.cli import load_model
from hetero.compiler import compile as compile_graph
from hetero.devices import Machine
from hetero.graph import Node, TensorSpec

ROOT = pathlib.Path(__file__).resolve().parent.parent


def _two_op_graph(n: int = 256):
    b = GraphBuilder("hop")
    x = b.input("x", TensorSpec((n,), np.dtype("float32")))
    r = b.add(Node("r", "relu", (x,), outputs=(TensorSpec((n,), np.dtype("float32")),)))
    y = b.add(Node("y", "neg", (r.value(),), outputs=(TensorSpec((n,), np.dtype("float32")),)))
    return b.build([y.value()])


def _median_run(runner, xs, repeat: int) -> float:
    runner.run(*xs)
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        runner.run(*xs)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _rate(runner, batches, rounds: int) -> float:
    runner.map(batches[:2])
    rates = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        runner.map(batches)
        rates.append(len(batches) / (time.perf_counter() - t0))
    return statistics.median(rates)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=200)
    ap.add_argument("--batches", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    machine = Machine.parse("cpu:1")
    with hd.connect("local:2") as conn:
        g = _two_op_graph()
        xs = [np.random.default_rng(0).standard_normal(256).astype(np.float32)]
        whole = conn.runner(compile_graph(g, machine), replicas=1)
        split = hd.PipelineRunner(conn, hd.split(g, "2x(cpu:1)", cuts=[1]))
        hops = []
        for _ in range(args.rounds):
            one = _median_run(whole, xs, args.repeat)
            two = _median_run(split, xs, args.repeat)
            hops.append((one, two))
        one = statistics.median(h[0] for h in hops)
        two = statistics.median(h[1] for h in hops)
        # the value's own trip: node0 hands it to its worker's event loop -> node1's handler
        # has it (both clocks are this host's monotonic clock)
        sent = split._actors[0].timings().result()["sent"]
        arrived = split._actors[1].timings().result()["arrived"]
        trips = [arrived[k] - t for k, t in sent.items() if k in arrived]
        print(f"| one node, whole graph (client -> actor -> client) | {one * 1e3:.3f} ms |")
        print(f"| two nodes, one cross-node value of 1 KiB | {two * 1e3:.3f} ms |")
        print(f"| cost of the cross-node value (difference) | {(two - one) * 1e3:.3f} ms |")
        print(f"| the value's trip, node0's send to node1's arrival (median of {len(trips)}) | "
              f"{statistics.median(trips) * 1e3:.3f} ms |")

        cnn = load_model(str(ROOT / "examples" / "two_tower.onnx"))
        plan = compile_graph(cnn, machine)
        rng = np.random.default_rng(1)
        batches = [[rng.standard_normal(s.shape).astype(s.dtype) for s in cnn.input_specs]
                   for _ in range(args.batches)]
        t_run = _median_run(conn.runner(plan, replicas=1), batches[0], 20)
        stages = hd.split(cnn, "2x(cpu:1)")
        stage_ms = []
        for st in stages:
            ins = [np.zeros(s.shape, s.dtype) for s in st.plan.graph.input_specs]
            st.plan.run(*ins)
            t0 = time.perf_counter()
            for _ in range(10):
                st.plan.run(*ins)
            stage_ms.append((time.perf_counter() - t0) / 10 * 1e3)
        lat = hd.plan_cluster(cnn, "2x(cpu:1)", objective="latency")
        t_lat = _median_run(hd.PipelineRunner(conn, lat), batches[0], 20)
        t_thr = _median_run(hd.PipelineRunner(conn, stages), batches[0], 20)
        r1 = _rate(conn.runner(plan, replicas=1), batches, args.rounds)
        r2 = _rate(conn.runner(plan, replicas=2), batches, args.rounds)
        rp = _rate(hd.PipelineRunner(conn, stages), batches, args.rounds)
        print(f"| two_tower.onnx, one run on one worker | {t_run * 1e3:.1f} ms |")
        print(f"| two_tower.onnx partitions over two nodes (in-process, each) | "
              f"{', '.join(f'{m:.1f} ms' for m in stage_ms)} |")
        print(f"| one run over 2 nodes, throughput split (pipeline stages) | "
              f"{t_thr * 1e3:.1f} ms ({t_thr / t_run:.2f}x of one worker) |")
        labels = ", ".join(s.label for s in lat.stages)
        print(f"| one run over 2 nodes, latency placement ({labels}: the towers at once) | "
              f"{t_lat * 1e3:.1f} ms ({t_lat / t_run:.2f}x of one worker) |")
        print(f"| map, 1 worker | {r1:.1f} runs/s |")
        print(f"| map, 2 workers, data-parallel replicas | {r2:.1f} runs/s ({r2 / r1:.2f}x) |")
        print(f"| map, 2 workers, pipeline over 2 nodes | {rp:.1f} runs/s ({rp / r1:.2f}x) |")


if __name__ == "__main__":
    main()
