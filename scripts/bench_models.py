"""Time per inference of the ONNX light models: hetero (graph mode, default placement) vs
onnxruntime on the CPU with the same number of threads.

Each model gets random weights (tests/test_onnx_models.py) and a random batch-1 input. hetero
compiles the imported graph with the default placement policy, for the machine ``compile`` picks
by itself (``--machine default``: this host's cores, as many CPU workers as the graph's
parallelism can use, so a chain-shaped CNN gets one worker whose convolutions split themselves
over the cores) or for every detected core as a worker (``--machine all``); onnxruntime gets
``intra_op_num_threads`` = the number of cores.
The same plan also runs with its convolutions whole (``Executor(plan, intra_op_threads=1)``:
what the executor did before convolutions split themselves), for a before/after from one run.
They run in alternating blocks (``--rounds`` x (hetero, hetero unsplit, onnxruntime: ``--runs``),
each after ``--warmup`` runs), so load from other processes hits both alike without one's
spinning pool threads slowing the other; the table reports the median over all runs, and the
ratio hetero / onnxruntime.

``--profile`` also runs hetero with the profiler and prints, per model, the op types that take
the most device time (summed over nodes).

Usage: python scripts/bench_models.py [--models resnet50,vgg19] [--runs 7] [--profile]
       [--markdown docs/benchmarks-models.md]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections import defaultdict

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import hetero  # noqa: E402
import hetero.onnx as ho  # noqa: E402
from hetero.executor import Executor  # noqa: E402
from tests.test_onnx_models import (  # noqa: E402
    MODELS,
    light_model_with_random_weights,
    rel_error,
)


def ort_session(model, threads: int):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), opts,
                                providers=["CPUExecutionProvider"])


def _times(fn, runs: int, warmup: int) -> list[float]:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def bench_model(name: str, machine, runs: int, warmup: int, profile: bool,
                rounds: int = 2, default_machine: bool = False) -> dict:
    model, feeds = light_model_with_random_weights(name)
    graph = ho.load(model)
    threads = len(machine.cpus())
    t0 = time.perf_counter()
    plan = hetero.compile(graph, machine=None if default_machine else machine)
    compile_s = time.perf_counter() - t0
    sess = ort_session(model, threads)
    inputs = [feeds[n] for n in graph.inputs]
    # Blocks, not alternation: onnxruntime's pool threads spin for a while after each run and
    # would steal the cores from the hetero run that follows.
    # the same plan without split convolutions (intra_op_threads=1: BLAS threads as the
    # executor chooses them for the free cores), for a before/after from the same run
    whole = Executor(plan, intra_op_threads=1)
    het, ref, unsplit = [], [], []
    for k in range(rounds):
        # the two hetero blocks swap places every round, so neither always follows onnxruntime
        # (whose pool threads may still be spinning); a pause lets those threads go idle
        blocks = ((het, lambda: plan.run(*inputs)), (unsplit, lambda: whole.run(list(inputs))))
        for times, fn in blocks[::1 if k % 2 == 0 else -1]:
            times += _times(fn, runs, warmup)
        ref += _times(lambda: sess.run(None, feeds), runs, warmup)
        time.sleep(0.1)
    out, want = plan.run(*inputs), sess.run(None, feeds)
    result = {
        "model": name, "nodes": sum(n.op not in ("input", "constant") for n in plan.graph.nodes),
        "hetero_ms": 1e3 * statistics.median(het), "ort_ms": 1e3 * statistics.median(ref),
        "compile_s": compile_s, "error": rel_error(out[0], want[0]), "threads": threads,
        "hetero_min_ms": 1e3 * min(het), "ort_min_ms": 1e3 * min(ref),
        "workers": len(plan.machine.cpus()), "unsplit_ms": 1e3 * statistics.median(unsplit),
        "unsplit_blas": whole.blas_threads,
        "intra": getattr(getattr(plan, "_executor", None), "intra_op_threads", 1),
    }
    result["ratio"] = result["hetero_ms"] / result["ort_ms"]
    if profile:
        _, prof = plan.run(*inputs, profile=True)
        by_op: dict[str, float] = defaultdict(float)
        for span in prof.spans:
            by_op[span.op] += span.duration
        total = sum(by_op.values()) or 1.0
        result["top_ops"] = sorted(((op, s, s / total) for op, s in by_op.items()),
                                   key=lambda t: -t[1])[:5]
    return result


def markdown(results: list[dict], machine, load: str) -> str:
    lines = [
        f"Machine: {', '.join(d.name for d in machine.devices)} ({os.cpu_count()} cores); "
        f"onnxruntime with intra_op_num_threads={results[0]['threads']}; "
        f"load average during the run: {load}.",
        "",
        "| model | nodes | CPU workers x conv threads | hetero ms | onnxruntime ms | "
        "hetero / onnxruntime | min: hetero / onnxruntime ms | rel. error | "
        "unsplit convs ms (ratio; BLAS threads) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        lines.append(f"| {r['model']} | {r['nodes']} | {r['workers']} x {r['intra']} | "
                     f"{r['hetero_ms']:.1f} | {r['ort_ms']:.1f} | "
                     f"{r['ratio']:.2f} | {r['hetero_min_ms']:.1f} / {r['ort_min_ms']:.1f} | "
                     f"{r['error']:.1e} | {r['unsplit_ms']:.1f} "
                     f"({r['unsplit_ms'] / r['ort_ms']:.2f}; {r['unsplit_blas']}) |")
    ratios = [r["ratio"] for r in results]
    geo = float(np.exp(np.mean(np.log(ratios))))
    geo_min = float(np.exp(np.mean([np.log(r["hetero_min_ms"] / r["ort_min_ms"])
                                    for r in results])))
    lines += ["", f"Geometric mean of the median ratios: {geo:.2f} (of the best-run ratios: "
              f"{geo_min:.2f})."]
    if any("top_ops" in r for r in results):
        lines += ["", "Device time by op type (profiled run, share of summed node time):", "",
                  "| model | top ops |", "|---|---|"]
        for r in results:
            tops = ", ".join(f"{op} {share:.0%} ({s * 1e3:.1f} ms)"
                             for op, s, share in r.get("top_ops", []))
            lines.append(f"| {r['model']} | {tops} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--markdown", help="write the table to this file")
    parser.add_argument("--machine", choices=("default", "all"), default="default",
                        help="default: the machine compile picks (workers the graph can use); "
                             "all: one CPU worker per detected core")
    args = parser.parse_args(argv)
    machine = hetero.Machine.detect()
    results = []
    for name in args.models.split(","):
        r = bench_model(name, machine, args.runs, args.warmup, args.profile, args.rounds,
                        default_machine=args.machine == "default")
        results.append(r)
        print(f"{name:<14} {r['workers']} x {r['intra']}  hetero {r['hetero_ms']:8.1f} ms  "
              f"unsplit {r['unsplit_ms']:8.1f} ms  onnxruntime {r['ort_ms']:8.1f} ms  "
              f"ratio {r['ratio']:5.2f}  err {r['error']:.1e}", flush=True)
        for op, s, share in r.get("top_ops", []):
            print(f"    {op:<16} {s * 1e3:8.1f} ms  {share:5.1%}")
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    text = markdown(results, machine, load)
    print(text)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
