"""Cost models: roofline from the machine's specs, the measured history cache, user tables."""

from __future__ import annotations

import json
import math
import os
import types

import numpy as np
import pytest

import hetero as ht
from hetero import threads as tpool
from hetero.compiler import calibrate
from hetero.cost import (
    CPU_SYNC,
    CostModel,
    MeasuredCost,
    RooflineCost,
    TableCost,
    Timing,
    cache_dir,
    history_key,
    input_specs,
    plan_threads,
)
from hetero.errors import HeteroError
from hetero.graph import Node, TensorSpec, Value
from hetero.ops import registry
from hetero.passes.optimize import optimize
from tests import graphs as G


@pytest.fixture(scope="module")
def machine():
    return ht.Machine.parse("cpu:2,sim:1")


def matmul_node(n: int) -> tuple[Node, tuple[TensorSpec, ...]]:
    spec = TensorSpec((n, n), np.float32)
    node = Node("mm", "matmul", (Value("a"), Value("b")), outputs=(spec,))
    return node, (spec, spec)


def test_roofline_matches_the_formula(machine):
    cost = RooflineCost(machine)
    node, ins = matmul_node(512)
    work = registry.lookup("matmul").cost_of(ins, node.outputs, node.attrs)
    for dev in machine.devices:
        want = dev.launch_overhead + max(work.flops / dev.peak_flops["matmul"],
                                         work.bytes / dev.mem_bandwidth)
        assert cost.compute(node, dev.name, ins) == pytest.approx(want)
        assert cost.compute(node, dev, ins) == pytest.approx(want)
    assert cost.compute(node, "gpu:0", ins) < cost.compute(node, "cpu:0", ins)
    assert isinstance(cost, CostModel)


def test_roofline_bandwidth_bound_for_elementwise(machine):
    cost = RooflineCost(machine)
    spec = TensorSpec((1 << 20,), np.float32)
    node = Node("a", "add", (Value("x"), Value("y")), outputs=(spec,))
    dev = machine.device("cpu:0")
    t = cost.compute(node, dev, (spec, spec))
    assert t == pytest.approx(dev.launch_overhead + 3 * spec.nbytes / dev.mem_bandwidth)


def test_transfers(machine):
    cost = RooflineCost(machine)
    nbytes = 1 << 20
    assert cost.transfer(nbytes, "cpu:0", "cpu:0") == 0.0
    assert cost.transfer(nbytes, "cpu:0", "cpu:1") == CPU_SYNC
    link = machine.link("host", "gpu:0")
    assert cost.transfer(nbytes, "cpu:1", "gpu:0") == pytest.approx(
        link.latency + nbytes / link.bandwidth)
    assert cost.transfer(nbytes, "gpu:0", "gpu:0") == 0.0


def test_no_kernel_is_infinite(machine):
    op = G.cpu_only_op()
    spec = TensorSpec((8,), np.float32)
    node = Node("sq", op, (Value("x"),), outputs=(spec,))
    cost = RooflineCost(machine)
    assert math.isinf(cost.compute(node, "gpu:0", (spec,)))
    assert math.isfinite(cost.compute(node, "cpu:0", (spec,)))


def test_table_cost_lookup_order_and_fallback(machine):
    node, ins = matmul_node(64)
    table = TableCost({("mm", "gpu:0"): 1.0, ("matmul", "cpu:0"): 2.0, ("matmul", "cpu"): 3.0},
                      machine=machine, transfers={("cpu", "gpu"): (1e-3, 1e9)})
    assert table.compute(node, "gpu:0", ins) == 1.0
    assert table.compute(node, "cpu:0", ins) == 2.0
    assert table.compute(node, "cpu:1", ins) == 3.0
    assert table.transfer(1e6, "cpu:0", "gpu:0") == pytest.approx(2e-3)
    assert table.transfer(10, "cpu:0", "cpu:1") == 0.0
    relu = Node("r", "relu", (Value("x"),), outputs=(ins[0],))
    with pytest.raises(HeteroError, match=r"r \(relu\): TableCost has no time for relu"):
        table.compute(relu, "cpu:0", ins[:1])
    backed = TableCost({"matmul": lambda n, d: 5.0}, fallback=RooflineCost(machine))
    assert backed.compute(node, "cpu:1", ins) == 5.0
    assert backed.compute(relu, "cpu:0", ins[:1]) == RooflineCost(machine).compute(
        relu, "cpu:0", ins[:1])


def test_table_cost_drives_placement(machine):
    """A table that makes the GPU slow keeps everything on the CPU."""
    g = G.matmul_chain(n=64, depth=3)
    slow_gpu = TableCost({("matmul", "gpu"): 1.0, ("matmul", "cpu"): 1e-3},
                         fallback=RooflineCost(machine))
    p = ht.place(g, machine, slow_gpu)
    assert all(p.device[n.name].startswith("cpu") for n in g.nodes if n.op == "matmul")


def test_cache_dir_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("HETERO_CACHE_DIR", str(tmp_path / "explicit"))
    assert cache_dir() == str(tmp_path / "explicit")
    monkeypatch.delenv("HETERO_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == str(tmp_path / "xdg" / "hetero")
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_dir() == str(tmp_path / "home" / ".cache" / "hetero")


def test_calibrate_measures_caches_and_reloads(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("HETERO_CACHE_DIR", str(tmp_path))
    m = ht.Machine.parse("cpu:1,sim:1")
    g = G.mlp(batch=4, sizes=(8, 16, 4))
    cost = calibrate(g, m, progress=False)
    path = tmp_path / "costs.json"
    assert path.exists()
    data = json.loads(path.read_text())
    g = optimize(g)  # what compile places, and so what calibrate times
    computing = [n for n in g.nodes if n.op not in ("input", "constant")]
    distinct = {cost.key(n, d, input_specs(g, n)) for n in computing for d in m.devices}
    assert set(data["entries"]) == {k.to_json() for k in distinct}
    node = computing[0]
    ins = input_specs(g, node)
    measured = cost.compute(node, "cpu:0", ins)
    assert measured == data["entries"][cost.key(node, "cpu:0", ins).to_json()]["mean"] > 0
    # a second model reads the cache; nothing is measured again
    again = MeasuredCost(m)
    assert again.compute(node, "cpu:0", ins) == measured
    before = os.path.getmtime(path)
    calibrate(g, m, again, progress=False)
    assert os.path.getmtime(path) == before
    # unmeasured shapes fall back to the roofline
    other = G.mlp(batch=2, sizes=(8, 16, 4))
    n2 = next(n for n in other.nodes if n.op == "matmul")
    assert again.compute(n2, "cpu:0", input_specs(other, n2)) == RooflineCost(m).compute(
        n2, "cpu:0", input_specs(other, n2))
    assert capsys.readouterr().err == ""


def test_calibrate_progress_bar(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("HETERO_CACHE_DIR", str(tmp_path))
    import builtins

    real_import = builtins.__import__

    def no_tqdm(name, *args, **kwargs):
        if name == "tqdm":
            raise ImportError("tqdm hidden by the test")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_tqdm)
    calibrate(G.tiny_ops(n=2), "cpu:1", progress=True)
    err = capsys.readouterr().err
    assert "calibrating tiny_ops" in err and "2/2" in err


def test_record_keeps_a_running_mean(machine, tmp_path):
    cost = MeasuredCost(machine, path=str(tmp_path / "c.json"))
    node, ins = matmul_node(32)
    cost.record(node, "cpu:1", 1.0, ins)
    cost.record(node, "cpu:1", 3.0, ins)
    assert cost.compute(node, "cpu:1", ins) == pytest.approx(2.0)
    # CPU workers are the same cores: a time measured on one holds for all of them
    assert cost.compute(node, "cpu:0", ins) == pytest.approx(2.0)
    assert cost.compute(node, "gpu:0", ins) == RooflineCost(machine).compute(node, "gpu:0", ins)
    cost.save()
    assert MeasuredCost(machine, path=str(tmp_path / "c.json")).compute(
        node, "cpu:1", ins) == pytest.approx(2.0)


def test_damaged_cache_is_ignored(machine, tmp_path, capsys):
    path = tmp_path / "costs.json"
    path.write_text("{not json")
    cost = MeasuredCost(machine, path=str(path))
    assert cost.history == {}
    assert "ignoring unreadable cost cache" in capsys.readouterr().err


def test_calibrate_records_the_simulated_duration_of_a_sim_gpu(tmp_path):
    """A simulated GPU is not timed on the host (that measures this host's NumPy plus pacing):
    calibrate records its simulated duration, which is what the sim's stream paces runs to."""
    m = ht.Machine.parse("cpu:1,sim:1")
    g = G.mlp(batch=64, sizes=(256, 512, 10))
    cost = calibrate(g, m, MeasuredCost(m, path=str(tmp_path / "c.json")), progress=False)
    gpu = m.device("gpu:0")
    g = optimize(g)
    timed = 0
    for node in g.nodes:
        if node.op in registry.STRUCTURAL_OPS:
            continue
        ins = input_specs(g, node)
        op = registry.lookup(node.op, node)
        assert cost.compute(node, gpu, ins) == pytest.approx(
            gpu.kernel_time(op, ins, node.outputs, node.attrs))
        assert cost.has(node, "cpu:0", ins)
        timed += 1
    assert timed >= 2


def test_calibrate_times_the_optimized_graph_that_compile_places(tmp_path):
    m = ht.Machine.parse("cpu:1")
    g = G.cnn()
    cost = calibrate(g, m, MeasuredCost(m, path=str(tmp_path / "c.json")), progress=False)
    plan = ht.compile(g, m, cost=cost)
    looked_up = [n for n in plan.graph.nodes
                 if n.op not in registry.STRUCTURAL_OPS and n.op != "transfer"]
    assert looked_up and all(cost.has(n, n.device, input_specs(plan.graph, n))
                             for n in looked_up)
    # without optimize=False the unfused graph's kernels are not timed
    raw = [n for n in g.nodes if n.op not in registry.STRUCTURAL_OPS]
    assert not all(cost.has(n, "cpu:0", input_specs(g, n)) for n in raw)


def test_calibrate_on_a_cpu_machine_times_the_fused_residual_and_winograd_convs(tmp_path):
    """On a machine without a GPU compile also fuses residual adds (conv2d_add) and runs large
    3x3 convolutions as Winograd; calibrate optimizes exactly so, and times those kernels."""
    rng = np.random.default_rng(0)
    b = G.Builder("block")
    x = b.input((1, 128, 12, 12))
    w1 = b.const((0.05 * rng.standard_normal((128, 128, 3, 3))).astype(np.float32))
    w2 = b.const((0.05 * rng.standard_normal((128, 128, 1, 1))).astype(np.float32))
    y = b.op("relu", b.op("conv2d", x, w1, pads=(1, 1, 1, 1)))
    g = b.build(b.op("relu", b.op("add", b.op("conv2d", y, w2), x)))
    m = ht.Machine.parse("cpu:1")
    cost = calibrate(g, m, MeasuredCost(m, path=str(tmp_path / "c.json"), repeats=1),
                     progress=False)
    plan = ht.compile(g, m, cost=cost)
    ops_placed = {n.op for n in plan.graph.nodes if n.computes}
    assert {"conv2d_add", "conv2d_winograd"} <= ops_placed
    assert all(cost.has(n, n.device, input_specs(plan.graph, n))
               for n in plan.graph.nodes if n.computes)


def test_observed_times_on_a_simulated_gpu_are_not_recorded(machine, tmp_path):
    cost = MeasuredCost(machine, path=str(tmp_path / "c.json"))
    node, ins = matmul_node(32)
    assert cost.record(node, "gpu:0", 5.0, ins) is False
    assert cost.compute(node, "gpu:0", ins) == RooflineCost(machine).compute(node, "gpu:0", ins)
    assert cost.record(node, "cpu:0", 5.0, ins) is True and cost.dirty


def test_measure_and_record_update_one_mean_and_min(machine, tmp_path, monkeypatch):
    """Every timed repeat is a sample of the same running mean and minimum that profiled runs
    update; the model reads one statistic of it (the mean unless told the min)."""
    path = str(tmp_path / "c.json")
    cost = MeasuredCost(machine, path=path, repeats=3)
    node, ins = matmul_node(8)
    ticks = iter([0.0, 0.5, 1.0, 1.1, 2.0, 2.3])  # runs of 0.5 s, 0.1 s and 0.3 s
    monkeypatch.setattr("hetero.cost.time", types.SimpleNamespace(perf_counter=lambda: next(ticks)))
    assert cost.measure(node, "cpu:0", ins) == pytest.approx(0.3)
    entry = cost.history[cost.key(node, "cpu:0", ins)]
    assert entry.n == 3 and entry.mean == pytest.approx(0.3)
    assert entry.min == pytest.approx(0.1)
    cost.record(node, "cpu:1", 0.7, ins)  # a profiled run: the same entry, the same statistics
    assert entry.n == 4 and entry.mean == pytest.approx(0.4)
    assert entry.min == pytest.approx(0.1)
    assert cost.compute(node, "cpu:0", ins) == pytest.approx(0.4)
    cost.save()
    fastest = MeasuredCost(machine, path=path, statistic="min")
    assert fastest.compute(node, "cpu:0", ins) == pytest.approx(0.1)
    with pytest.raises(HeteroError, match="statistic must be"):
        MeasuredCost(machine, path=path, statistic="median")


def test_measure_runs_cpu_kernels_under_the_model_threads(machine, tmp_path, monkeypatch):
    """measure times a CPU kernel with BLAS limited and intra-op threads set as the executor
    sets them for the condition it files the time under, not with every thread of the
    process."""
    from threadpoolctl import threadpool_info

    from hetero.devices import CpuDevice

    seen = []
    real = CpuDevice.run_kernel

    def spy(self, op, ins, attrs, outs):
        blas = [i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"]
        seen.append((max(blas, default=1), tpool.intra_op_threads()))
        return real(self, op, ins, attrs, outs)

    monkeypatch.setattr(CpuDevice, "run_kernel", spy)
    cost = MeasuredCost(machine, path=str(tmp_path / "c.json"), threads=(1, 3), repeats=2)
    node, ins = matmul_node(16)
    cost.measure(node, "cpu:0", ins)
    assert seen == [(1, 3)] * 3  # warm-up and two repeats
    assert tpool.intra_op_threads() == 1  # restored afterwards
    assert list(cost.history) == [history_key(node, ins, machine.device("cpu:0"), (1, 3))]
    assert next(iter(cost.history)).threads == (1, 3)
    assert json.loads(next(iter(cost.history)).to_json())[-1] == "blas=1,intra=3"
    cost.use_threads((2, 1))  # fixed threads stay fixed
    assert cost.threads == (1, 3)


def test_cpu_entries_are_kept_per_thread_condition(machine, tmp_path):
    """A CPU time is filed under the threads it ran with; the model reads the entry of its own
    condition, else the nearest other one, else the roofline. GPUs have no condition."""
    cost = MeasuredCost(machine, path=str(tmp_path / "c.json"))
    node, ins = matmul_node(32)
    roofline = RooflineCost(machine).compute(node, "cpu:0", ins)
    cost.use_threads((3, 1))
    assert not cost.has(node, "cpu:0", ins)
    assert cost.compute(node, "cpu:0", ins) == roofline
    cost.record(node, "cpu:0", 1.0, ins, threads=(1, 1))
    cost.record(node, "cpu:1", 4.0, ins, threads=(2, 1))
    cost.record(node, "cpu:1", 6.0, ins, threads=(2, 1))
    assert len(cost.history) == 2
    assert cost.has(node, "cpu:0", ins)
    assert cost.compute(node, "cpu:0", ins) == pytest.approx(5.0)  # nearest: 2 threads
    cost.use_threads((1, 1))
    assert cost.compute(node, "cpu:1", ins) == pytest.approx(1.0)
    cost.use_threads((2, 1))
    assert cost.compute(node, "cpu:1", ins) == pytest.approx(5.0)
    cost.use_threads((1, 2))  # as many threads, in a conv's helpers: the nearest
    assert cost.compute(node, "cpu:0", ins) == pytest.approx(5.0)
    cost.record(node, "cpu:0", 9.0, ins)  # no threads given: the model's own condition
    assert cost.compute(node, "cpu:0", ins) == pytest.approx(9.0)
    assert cost.compute(node, "gpu:0", ins) == RooflineCost(machine).compute(node, "gpu:0", ins)
    cost.save()
    again = MeasuredCost(machine, path=str(tmp_path / "c.json"), threads=(1, 1))
    assert again.compute(node, "cpu:0", ins) == pytest.approx(1.0)


def test_old_cache_files_still_load(machine, tmp_path):
    """A cache written before entries had a minimum and a thread condition loads: its CPU
    entries (condition unknown) answer until one of the model's own condition exists, and
    saving keeps them."""
    node, ins = matmul_node(32)
    old_cpu = history_key(node, ins, machine.device("cpu:0"))
    old_gpu = history_key(node, ins, machine.device("gpu:0"))
    path = tmp_path / "costs.json"
    path.write_text(json.dumps({"format": "hetero.costs/1", "entries": {
        old_cpu.to_json(): {"mean": 2.0, "n": 5}, old_gpu.to_json(): {"mean": 0.5, "n": 1}}}))
    cost = MeasuredCost(machine, path=str(path))
    assert cost.history[old_cpu] == Timing(mean=2.0, n=5, min=2.0)
    assert cost.compute(node, "cpu:1", ins) == 2.0 and cost.has(node, "cpu:0", ins)
    assert cost.compute(node, "gpu:0", ins) == 0.5
    cost.record(node, "cpu:0", 3.0, ins, threads=cost.threads)
    assert cost.compute(node, "cpu:0", ins) == 3.0
    assert cost.history[old_cpu].n == 5  # the old entry is not mixed into the new one
    cost.save()
    entries = json.loads(path.read_text())["entries"]
    assert entries[old_cpu.to_json()] == {"mean": 2.0, "n": 5, "min": 2.0}
    assert len(entries) == 3


def test_plan_threads_follow_the_executor_policy(monkeypatch):
    monkeypatch.setattr("hetero.threads.cpu_cores", lambda: 4)
    tiny = G.tiny_ops(n=2)  # nothing splits: one BLAS thread, no intra-op threads
    assert plan_threads(ht.Machine.parse("cpu:1"), tiny) == (1, 1)
    assert plan_threads(ht.Machine.parse("cpu:2"), tiny) == (1, 1)
    products = G.matmul_chain(n=64, depth=2)
    assert plan_threads(ht.Machine.parse("cpu:1"), products) == (1, 4)
    assert plan_threads(ht.Machine.parse("cpu:2"), products) == (1, 2)
    assert plan_threads(ht.Machine.parse("cpu:2,sim:1"), products) == (1, 1)  # 3 host threads
    assert plan_threads(ht.Machine.parse("cpu:1"), G.cnn()) == (1, 4)
    assert plan_threads(ht.Machine.parse("cpu:4"), G.cnn()) == (1, 1)


def test_calibrated_and_profiled_times_meet_only_under_one_condition(tmp_path):
    """Calibration times kernels under the plan's thread policy; a profiled run under that
    policy adds to those entries, a run under another one files its times apart."""
    from hetero.executor import Executor

    m = ht.Machine.parse("cpu:1")
    g = G.mlp(batch=4, sizes=(8, 16, 4))
    cost = calibrate(g, m, MeasuredCost(m, path=str(tmp_path / "c.json"), repeats=2),
                     progress=False)
    calibrated = {k: e.n for k, e in cost.history.items()}
    plan = ht.compile(g, m, cost=cost)
    blas, intra = cost.threads
    xs = G.inputs_for(g)
    Executor(plan, cost=cost, blas_threads=blas, intra_op_threads=intra).run(xs, profile=True)
    assert set(cost.history) == set(calibrated)
    assert all(cost.history[k].n == n + 1 for k, n in calibrated.items())
    Executor(plan, cost=cost, blas_threads=blas + 1, intra_op_threads=1).run(xs, profile=True)
    apart = set(cost.history) - set(calibrated)
    assert apart and all(k.threads == (blas + 1, 1) for k in apart)
    assert all(cost.history[k].n == n + 1 for k, n in calibrated.items())


def test_calibrate_a_function_as_compile_takes_it(tmp_path):
    def f(x, w):
        return ht.ops.relu(x @ w)

    x = np.ones((16, 16), np.float32)
    m = ht.Machine.parse("cpu:1")
    cost = calibrate(f, m, MeasuredCost(m, path=str(tmp_path / "c.json")), progress=False,
                     example_inputs=(x, x))
    plan = ht.compile(f, m, cost=cost, example_inputs=(x, x))
    kernels = [n for n in plan.graph.nodes if n.op not in registry.STRUCTURAL_OPS]
    assert kernels and all(cost.has(n, "cpu:0", input_specs(plan.graph, n)) for n in kernels)
