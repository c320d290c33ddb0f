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

``--zoo [DIR]`` benchmarks the modern architectures ``scripts/export_zoo.py`` exported to DIR
(default ~/.cache/hetero/zoo) instead: per model hetero (default placement), onnxruntime
(intra_op_num_threads = cores) and PyTorch eager (``torch.set_num_threads(cores)``,
``torch.inference_mode()``; n/a without torch) in rotating blocks, with the ratios, the relative
error against onnxruntime (hetero's and torch's) and hetero's first-call cost (import +
compile + first run). A model hetero cannot import or run shows its error in the table and is
left out of the geometric means.

Usage: python scripts/bench_models.py [--models resnet50,vgg19] [--runs 7] [--profile]
       [--markdown docs/benchmarks-models.md]
       python scripts/bench_models.py --zoo [DIR] [--models resnet18,vit_b16] [--runs 5]
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time
from collections import defaultdict

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import hetero  # noqa: E402
import hetero.onnx as ho  # noqa: E402
from hetero.errors import HeteroError  # noqa: E402
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
        result["top_ops"] = top_ops(plan, inputs)
    return result


def top_ops(plan, inputs, n: int = 5) -> list[tuple[str, float, float]]:
    """(op type, seconds, share) of the n op types with the most summed node time."""
    _, prof = plan.run(*inputs, profile=True)
    by_op: dict[str, float] = defaultdict(float)
    for span in prof.spans:
        by_op[span.op] += span.duration
    total = sum(by_op.values()) or 1.0
    return sorted(((op, s, s / total) for op, s in by_op.items()), key=lambda t: -t[1])[:n]


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


# ----------------------------------------------------------------------------------------------
# --zoo: modern architectures exported from PyTorch (scripts/export_zoo.py)

DEFAULT_ZOO = os.path.join(os.path.expanduser("~"), ".cache", "hetero", "zoo")


def zoo_models(folder: str) -> list[str]:
    """The models export_zoo.py wrote to ``folder``, in its manifest's order."""
    import json

    path = os.path.join(folder, "manifest.json")
    if os.path.exists(path):
        with open(path) as f:
            names = list(json.load(f))
    else:
        names = sorted(n[:-5] for n in os.listdir(folder) if n.endswith(".onnx"))
    return [n for n in names if os.path.exists(os.path.join(folder, f"{n}.onnx"))]


def _torch_worker(conn, folder: str, threads: int) -> None:
    """PyTorch eager in a process of its own (a spawned child the benchmark drives through a
    pipe), so torch's libgomp and its thread pool stay out of hetero's process."""
    import torch

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import export_zoo

    torch.set_num_threads(threads)
    conn.send(torch.__version__)
    module = xt = None

    def run():
        with torch.inference_mode():
            return module(xt)

    while True:
        msg = conn.recv()
        if msg[0] == "load":
            name = msg[1]
            module = export_zoo.build(name)
            module.load_state_dict(torch.load(os.path.join(folder, f"{name}.pt")))
            xt = torch.from_numpy(np.load(os.path.join(folder, f"{name}.input.npy")))
            conn.send(run().numpy())
        elif msg[0] == "time":
            torch.set_num_threads(threads)
            conn.send(_times(run, msg[1], msg[2]))
        else:
            return


class TorchEager:
    """The parent's handle on ``_torch_worker``; None from ``start`` without torch."""

    @classmethod
    def start(cls, folder: str, threads: int) -> TorchEager | None:
        import importlib.util
        import multiprocessing

        if importlib.util.find_spec("torch") is None:
            return None
        ctx = multiprocessing.get_context("spawn")
        self = cls()
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_torch_worker, args=(child, folder, threads), daemon=True)
        self.proc.start()
        self.version = self.conn.recv()
        return self

    def load(self, name: str) -> np.ndarray:
        self.conn.send(("load", name))
        return self.conn.recv()

    def times(self, runs: int, warmup: int) -> list[float]:
        self.conn.send(("time", runs, warmup))
        return self.conn.recv()

    def close(self) -> None:
        self.conn.send(("quit",))
        self.proc.join(10)


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    label = "" if isinstance(exc, HeteroError) else f"{type(exc).__name__} (not a HeteroError): "
    return (label + text)[:300].replace("|", "/")


def bench_zoo_model(name: str, folder: str, threads: int, runs: int, warmup: int,
                    rounds: int, profile: bool, eager: TorchEager | None) -> dict:
    import onnx

    path = os.path.join(folder, f"{name}.onnx")
    x = np.load(os.path.join(folder, f"{name}.input.npy"))
    sess = ort_session(onnx.load(path), threads)
    feeds = {sess.get_inputs()[0].name: x}
    want = sess.run(None, feeds)[0]
    result: dict = {"model": name, "threads": threads, "input": "x".join(map(str, x.shape))}
    blocks: list[tuple[str, list[float], object]] = [
        ("ort", [], lambda: sess.run(None, feeds))]
    try:  # first-call cost: import, compile, first run
        t0 = time.perf_counter()
        graph = ho.load(path)
        t1 = time.perf_counter()
        plan = hetero.compile(graph)
        t2 = time.perf_counter()
        out = plan.run(x)
        t3 = time.perf_counter()
        result.update(import_s=t1 - t0, compile_s=t2 - t1, first_run_s=t3 - t2,
                      error=rel_error(out[0], want),
                      nodes=sum(n.op not in ("input", "constant") for n in plan.graph.nodes),
                      workers=len(plan.machine.cpus()),
                      intra=getattr(getattr(plan, "_executor", None), "intra_op_threads", 1))
        blocks.insert(0, ("hetero", [], lambda: plan.run(x)))
    except Exception as exc:  # noqa: BLE001 - reported in the table, the benchmark goes on
        result["hetero_error"] = _one_line(exc)
        plan = None
    if eager is not None:
        result["torch_error"] = rel_error(eager.load(name), want)
        blocks.append(("torch", [], None))
    for k in range(rounds):
        # the engines take turns going first, so none always follows another's spinning pool
        shift = k % len(blocks)
        for _label, times, fn in blocks[shift:] + blocks[:shift]:
            times += eager.times(runs, warmup) if fn is None else _times(fn, runs, warmup)
            time.sleep(0.1)
    for label, times, _ in blocks:
        result[f"{label}_ms"] = 1e3 * statistics.median(times)
        result[f"{label}_min_ms"] = 1e3 * min(times)
    if "hetero_ms" in result:
        result["ratio"] = result["hetero_ms"] / result["ort_ms"]
        if "torch_ms" in result:
            result["torch_ratio"] = result["hetero_ms"] / result["torch_ms"]
        if profile:
            result["top_ops"] = top_ops(plan, [x])
    return result


def _geo(values: list[float]) -> float:
    return float(np.exp(np.mean(np.log(values)))) if values else float("nan")


def zoo_markdown(results: list[dict], machine, load: str, torch_version: str | None) -> str:
    threads = results[0]["threads"] if results else os.cpu_count()
    lines = [
        f"Machine: {', '.join(d.name for d in machine.devices)} ({os.cpu_count()} cores); "
        f"onnxruntime with intra_op_num_threads={threads}; "
        + (f"PyTorch {torch_version} eager with set_num_threads({threads}), inference_mode, "
           "in a process of its own"
           if torch_version else "PyTorch not installed (n/a)")
        + f"; load average during the run: {load}.",
        "",
        "| model | input | nodes | CPU workers x conv threads | hetero ms | onnxruntime ms | "
        "torch ms | hetero / ort | hetero / torch | rel. error vs ort: hetero (torch) | "
        "hetero first call s: import + compile + run |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]

    def ms(r, key):
        return f"{r[key]:.1f}" if key in r else "n/a"

    for r in results:
        terr = f"{r['torch_error']:.1e}" if "torch_error" in r else "n/a"
        if "hetero_error" in r:
            lines.append(f"| {r['model']} | {r['input']} | | | import/run failed: "
                         f"{r['hetero_error']} | {ms(r, 'ort_ms')} | {ms(r, 'torch_ms')} | | | "
                         f"- ({terr}) | |")
            continue
        tratio = f"{r['torch_ratio']:.2f}" if "torch_ratio" in r else "n/a"
        first = r["import_s"] + r["compile_s"] + r["first_run_s"]
        lines.append(f"| {r['model']} | {r['input']} | {r['nodes']} | "
                     f"{r['workers']} x {r['intra']} | {r['hetero_ms']:.1f} | {r['ort_ms']:.1f} | "
                     f"{ms(r, 'torch_ms')} | {r['ratio']:.2f} | {tratio} | "
                     f"{r['error']:.1e} ({terr}) | {first:.2f}: {r['import_s']:.2f} + "
                     f"{r['compile_s']:.2f} + {r['first_run_s']:.2f} |")
    ok = [r for r in results if "ratio" in r]
    geo = _geo([r["ratio"] for r in ok])
    geo_torch = _geo([r["torch_ratio"] for r in ok if "torch_ratio" in r])
    geo_ort_torch = _geo([r["ort_ms"] / r["torch_ms"] for r in results if "torch_ms" in r])
    lines += ["", f"Geometric means over the {len(ok)} models hetero runs: hetero / onnxruntime "
              f"{geo:.2f}, hetero / torch "
              + (f"{geo_torch:.2f}" if not math.isnan(geo_torch) else "n/a")
              + (f" (onnxruntime / torch {geo_ort_torch:.2f})"
                 if not math.isnan(geo_ort_torch) else "") + "."]
    failed = [r for r in results if "hetero_error" in r]
    if failed:
        lines += ["", "Left out (hetero cannot import or run them): "
                  + "; ".join(f"{r['model']}: {r['hetero_error']}" for r in failed) + "."]
    if any("top_ops" in r for r in results):
        lines += ["", "hetero device time by op type (profiled run, share of summed node time):",
                  "", "| model | hetero / ort | top ops |", "|---|---:|---|"]
        for r in sorted(ok, key=lambda r: -r["ratio"]):
            tops = ", ".join(f"{op} {share:.0%} ({s * 1e3:.1f} ms)"
                             for op, s, share in r.get("top_ops", []))
            lines.append(f"| {r['model']} | {r['ratio']:.2f} | {tops} |")
    return "\n".join(lines) + "\n"


def zoo_main(args, machine) -> int:
    folder = os.path.expanduser(args.zoo)
    if not os.path.isdir(folder):
        print(f"{folder}: no such folder; run scripts/export_zoo.py --out {folder} first",
              file=sys.stderr)
        return 2
    names = args.models.split(",") if args.models else zoo_models(folder)
    threads = len(machine.cpus())
    eager = TorchEager.start(folder, threads)
    results = []
    for name in names:
        r = bench_zoo_model(name, folder, threads, args.runs, args.warmup, args.rounds,
                            args.profile, eager)
        results.append(r)
        if "hetero_error" in r:
            het = f"hetero failed: {r['hetero_error']}"
        else:
            het = (f"hetero {r['hetero_ms']:8.1f} ms  ratio {r['ratio']:5.2f}  "
                   f"err {r['error']:.1e}  first call "
                   f"{r['import_s'] + r['compile_s'] + r['first_run_s']:.2f} s")
        tms = f"{r['torch_ms']:8.1f} ms" if "torch_ms" in r else "     n/a"
        print(f"{name:<20} onnxruntime {r['ort_ms']:8.1f} ms  torch {tms}  {het}", flush=True)
        for op, s, share in r.get("top_ops", []):
            print(f"    {op:<16} {s * 1e3:8.1f} ms  {share:5.1%}")
    if eager is not None:
        eager.close()
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    text = zoo_markdown(results, machine, load, eager.version if eager else None)
    print(text)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(text)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default=None,
                        help="comma-separated (default: the nine light models, or with --zoo "
                             "every exported model)")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--markdown", help="write the table to this file")
    parser.add_argument("--machine", choices=("default", "all"), default="default",
                        help="default: the machine compile picks (workers the graph can use); "
                             "all: one CPU worker per detected core")
    parser.add_argument("--zoo", nargs="?", const=DEFAULT_ZOO, metavar="DIR",
                        help="benchmark the models scripts/export_zoo.py exported to DIR "
                             f"(default {DEFAULT_ZOO}) against onnxruntime and PyTorch eager")
    args = parser.parse_args(argv)
    machine = hetero.Machine.detect()
    if args.zoo:
        return zoo_main(args, machine)
    results = []
    for name in (args.models or ",".join(MODELS)).split(","):
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
