"""compile: place -> partition -> schedule -> memory into a Plan that checks, runs, and
round-trips through JSON; @function(machine=...) runs through it."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

import hetero as ht
from hetero import reference
from hetero.compiler import compile
from hetero.errors import GraphError, HeteroError
from hetero.passes.memory import MemoryPlan
from hetero.passes.place import Reason
from hetero.passes.schedule import schedule
from hetero.pipeline import compare_policies
from hetero.plan import Plan
from hetero.spaces import lane_of
from tests import graphs as G


@pytest.fixture(scope="module")
def machine():
    return ht.Machine.parse("cpu:2,sim:1")


@pytest.mark.parametrize("family", ["mlp", "cnn", "tiled_cholesky", "parallel_branches"])
@pytest.mark.parametrize("policy", ["heft", "peft", "cpu", "gpu", "annotated"])
def test_plan_is_valid_and_runs_like_the_reference(family, policy, machine):
    g = {"mlp": G.mlp, "cnn": G.cnn, "tiled_cholesky": lambda: G.tiled_cholesky(3, 32),
         "parallel_branches": lambda: G.parallel_branches(n=64)}[family]()
    plan = compile(g, machine, policy=policy)
    ht.check(plan)
    queued = [n for q in plan.queues.values() for n in q]
    assert sorted(queued) == sorted(n.name for n in plan.graph.nodes if n.op != "input")
    assert plan.makespan >= plan.lower_bound * (1 - 1e-9) > 0
    assert plan.policy == policy
    # the placer estimated exactly the plan the compiler built
    assert plan.placement.makespan == pytest.approx(plan.makespan)
    for name, (s, f) in plan.estimates.items():
        if name in plan.placement.start:
            assert (plan.placement.start[name], plan.placement.finish[name]) == \
                pytest.approx((s, f))
    x = G.inputs_for(g)
    want = reference.run(g, x)
    got = plan.run(*x)
    for a, b in zip(want, got):
        np.testing.assert_allclose(np.asarray(b), a, rtol=1e-5, atol=1e-5)


def test_queue_order_follows_estimates(machine):
    plan = compile(G.tiled_cholesky(3, 32), machine)
    for dev, queue in plan.queues.items():
        starts = [plan.estimates[n][0] for n in queue]
        assert starts == sorted(starts), dev
    for node in plan.graph.nodes:
        for v in node.inputs:
            assert plan.estimates[node.name][0] >= plan.estimates[v.node][1] - 1e-15


def test_copies_run_on_their_own_lanes(machine):
    g = G.matmul_chain(n=256, depth=2)
    plan = compile(g, machine, policy="gpu")
    lanes = {n.name: lane_of(n) for n in plan.graph.nodes}
    kinds = {n.attrs["kind"]: lanes[n.name] for n in plan.transfers()}
    assert kinds == {"h2d": "gpu:0/h2d", "d2h": "gpu:0/d2h"}
    assert all(plan.graph.node(n).device == "gpu:0" for n in plan.queues["gpu:0"])
    again = schedule(plan.graph, machine)
    assert again.makespan == pytest.approx(plan.makespan)


def test_plan_json_round_trip(machine):
    g = G.cnn()
    plan = compile(g, machine)
    text = json.dumps(plan.to_json())
    back = Plan.from_json(json.loads(text), machine=machine)
    assert back.graph.nodes == plan.graph.nodes
    assert dict(back.queues) == dict(plan.queues)
    assert back.estimates.keys() == plan.estimates.keys()
    for name, times in plan.estimates.items():
        assert back.estimates[name] == pytest.approx(times)
    assert back.makespan == plan.makespan and back.policy == plan.policy
    assert dict(back.placement.reason) == dict(plan.placement.reason)
    for name, arr in plan.graph.constants.items():
        np.testing.assert_array_equal(back.graph.constants[name], arr)
    ht.check(back)
    x = G.inputs_for(g)
    np.testing.assert_allclose(back.run(*x)[0], plan.run(*x)[0], rtol=1e-6)


def test_plan_json_without_machine_rebuilds_it(machine):
    plan = compile(G.mlp(batch=2, sizes=(4, 8, 2)), machine)
    back = Plan.from_json(json.loads(json.dumps(plan.to_json())))
    assert [d.name for d in back.machine.devices] == [d.name for d in machine.devices]
    ht.check(back)


def test_check_plan_catches_broken_queues(machine):
    plan = compile(G.tiled_cholesky(3, 32), machine)
    dev, queue = next((d, q) for d, q in plan.queues.items() if len(q) > 2)
    missing = plan.replace(queues={**plan.queues, dev: queue[1:]})
    with pytest.raises(GraphError, match="is in no queue"):
        ht.check(missing)
    other = next(d for d in plan.queues if d != dev)
    moved = plan.replace(queues={**plan.queues, dev: queue[1:],
                                 other: plan.queues[other] + queue[:1]})
    with pytest.raises(GraphError, match=f"is placed on {dev} but queued on {other}"):
        ht.check(moved)
    compute = [n for n in queue if plan.graph.node(n).inputs]
    consumer = compute[-1]
    producer = next(v.node for v in plan.graph.node(consumer).inputs
                    if v.node in queue)
    swapped = list(queue)
    i, j = swapped.index(producer), swapped.index(consumer)
    swapped[i], swapped[j] = swapped[j], swapped[i]
    with pytest.raises(GraphError, match="deadlock"):
        ht.check(plan.replace(queues={**plan.queues, dev: tuple(swapped)}))


def test_compile_a_function_and_function_decorator(machine):
    def f(x, w):
        return ht.ops.relu(x @ w) + 1.0

    x = np.random.default_rng(0).standard_normal((32, 32)).astype(np.float32)
    w = np.random.default_rng(1).standard_normal((32, 32)).astype(np.float32)
    with pytest.raises(HeteroError, match="example_inputs"):
        compile(f, machine)
    plan = compile(f, machine, example_inputs=(x, w))
    want = np.maximum(x @ w, 0) + 1
    np.testing.assert_allclose(plan.run(x, w)[0], want, rtol=1e-5)
    g = ht.function(f, machine=machine, policy="gpu")
    np.testing.assert_allclose(g(x, w).numpy(), want, rtol=1e-5)
    # compiling such a function uses its machine and policy unless the call names others
    plan = compile(g, example_inputs=(x, w))
    assert plan.machine is machine and plan.policy == "gpu"
    assert compile(g, policy="cpu", example_inputs=(x, w)).policy == "cpu"


def test_compare_policies_for_the_report(machine):
    res = compare_policies(G.mlp(), machine)
    assert set(res) == {"heft", "peft", "cpu", "gpu", "annotated", "lower_bound"}
    assert all(v >= res["lower_bound"] * (1 - 1e-9) for v in res.values())


def test_reason_kinds_are_checked():
    with pytest.raises(HeteroError, match="unknown placement reason"):
        Reason("because")
    assert str(Reason("cost", "1 ms")) == "cost: 1 ms"


def test_two_gpus_copy_device_to_device():
    """x -> relu (gpu:0) -> neg (gpu:1) -> out: h2d to gpu:0, d2d to gpu:1, d2h home."""
    m = ht.Machine.parse("cpu:1,sim:2")
    b = G.Builder("d2d")
    x = b.input((8, 8))
    y = b.op("relu", x, device="gpu:0")
    g = b.build(b.op("neg", y, device="gpu:1"))
    plan = compile(g, m)
    ht.check(plan)
    assert [(t.attrs["kind"], t.device) for t in plan.transfers()] == [
        ("h2d", "gpu:0"), ("d2d", "gpu:1"), ("d2h", "gpu:1")]
    xs = G.inputs_for(g)
    np.testing.assert_array_equal(plan.run(*xs)[0], reference.run(g, xs)[0])
    big = G.tiled_cholesky(3, 32)
    plan = compile(big, m)
    ht.check(plan)
    xs = G.inputs_for(big)
    for a, b in zip(reference.run(big, xs), plan.run(*xs)):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6)


# -- the measured cost model learns from profiled runs --------------------------------------


def test_profiled_runs_feed_the_measured_model_and_placement_follows(monkeypatch, tmp_path):
    """compile(cost="measured") gives the plan a MeasuredCost; every profiled run records the
    CPU kernels' real times into it and saves them; a later compile reads them. Once the
    measurements say the CPU is slow at these ops, the next plan moves them to the GPU."""
    from hetero.cost import MeasuredCost, history_key, input_specs
    from hetero.devices import SimSpec

    monkeypatch.setenv("HETERO_CACHE_DIR", str(tmp_path))
    slow_link = SimSpec(speed={"elementwise": 32e9, "matmul": 10e12, "conv": 10e12,
                               "reduce": 32e9, "data": 32e9, "norm": 32e9},
                        mem_bandwidth=500e9, launch_overhead=10e-6, link_bandwidth=2e9,
                        latency=50e-6, capacity=1 << 30)
    m = ht.Machine.from_spec(cpus=1, sims=[slow_link])
    g = G.tiny_ops(n=4)
    plan = compile(g, m, cost="measured")
    assert isinstance(plan.cost, MeasuredCost)
    kernels = [n for n in plan.graph.nodes if n.op not in ("input", "constant", "transfer")]
    assert {n.device for n in kernels} == {"cpu:0"}  # tiny ops stay home behind a slow link
    xs = G.inputs_for(g)
    out, prof = plan.run(*xs, profile=True)
    np.testing.assert_array_equal(out[0], reference.run(g, xs)[0])
    saved = MeasuredCost(m)  # what the next process would read
    by_key: dict[str, list[float]] = {}
    ran = (plan._executor.blas_threads, plan._executor.intra_op_threads)  # filed under these
    for n in kernels:
        ins = input_specs(plan.graph, n)
        span = next(s for s in prof.spans if s.node == n.name)
        by_key.setdefault(history_key(n, ins, m.device("cpu:0"), ran), []).append(span.duration)
    assert set(saved.history) == set(by_key)
    for key, durations in by_key.items():
        assert saved.history[key].n == len(durations)
        assert saved.history[key].mean == pytest.approx(np.mean(durations))
    # later runs say these kernels take 5 ms each on the CPU (a loaded or slow host)
    for _ in range(3):
        for n in kernels:
            saved.record(n, "cpu:0", 5e-3, input_specs(plan.graph, n))
    saved.save()
    moved = compile(g, m, cost="measured")
    assert {n.device for n in moved.graph.nodes
            if n.op not in ("input", "constant", "transfer")} == {"gpu:0"}
    assert moved.makespan < len(kernels) * 5e-3  # what staying on the CPU would now cost
    np.testing.assert_array_equal(moved.run(*xs)[0], reference.run(g, xs)[0])
    # the plan's JSON remembers where its measured model lives
    again = Plan.from_json(json.loads(json.dumps(moved.to_json())), machine=m)
    assert isinstance(again.cost, MeasuredCost) and again.cost.path == moved.cost.path


def test_compile_looks_up_the_measured_times_of_its_plans_thread_policy(monkeypatch, tmp_path):
    """A CPU kernel's measured time depends on its threads: compile reads the entry of the
    (BLAS, intra-op) threads the executor will give the plan's workers, so the same history
    costs a kernel differently on one worker with every core than on four with one each."""
    from hetero.cost import MeasuredCost, input_specs, plan_threads

    monkeypatch.setattr("hetero.threads.cpu_cores", lambda: 4)
    g = G.matmul_chain(n=64, depth=2)  # products split over the intra-op threads
    cost = MeasuredCost(ht.Machine.parse("cpu:4"), path=str(tmp_path / "c.json"))
    plan = compile(g, "cpu:1", cost=cost, optimize=False)
    kernels = [n for n in plan.graph.nodes if n.computes]
    for threads, seconds in (((1, 4), 1e-3), ((1, 2), 2e-3), ((1, 1), 3e-3)):
        for n in kernels:
            cost.record(n, "cpu:0", seconds, input_specs(plan.graph, n), threads=threads)
    for spec, threads, seconds in (("cpu:1", (1, 4), 1e-3), ("cpu:2", (1, 2), 2e-3),
                                   ("cpu:4", (1, 1), 3e-3)):
        m = ht.Machine.parse(spec)
        plan = compile(g, m, cost=cost, optimize=False)
        assert plan_threads(m, g) == threads and cost.threads == threads
        for n in kernels:
            start, end = plan.estimates[n.name]
            assert end - start == pytest.approx(seconds)


def test_cost_argument_names_and_errors(machine):
    from hetero.cost import RooflineCost

    g = G.tiny_ops(n=2)
    assert isinstance(compile(g, machine, cost="roofline").cost, RooflineCost)
    assert isinstance(compile(g, machine).cost, RooflineCost)
    with pytest.raises(HeteroError, match="unknown cost model 'fast'"):
        compile(g, machine, cost="fast")
    with pytest.raises(HeteroError, match="compute\\(\\) and transfer\\(\\)"):
        compile(g, machine, cost=42)
    # place and compare_policies take the same names
    assert ht.place(g, machine, cost="roofline").device == compile(g, machine).placement.device
    with pytest.raises(HeteroError, match="unknown cost model"):
        ht.place(g, machine, cost="fast")


def test_default_machine_follows_the_graphs_parallelism(monkeypatch):
    """With no machine given (and none configured) a chain gets one CPU worker, and a graph of
    independent heavy branches as many as it can use (up to the cores)."""
    from hetero import pipeline, threads
    from hetero.config import config

    monkeypatch.setattr(config, "_machine", None)
    monkeypatch.setattr(threads, "cpu_cores", lambda: 4)
    monkeypatch.setattr(pipeline, "cpu_cores", lambda: 4)
    monkeypatch.setattr(pipeline, "_host", ht.Machine.parse("cpu:4,sim:1"))
    chain = compile(G.matmul_chain(n=128, depth=4))
    assert [d.name for d in chain.machine.devices] == ["cpu:0", "gpu:0"]
    wide = compile(G.parallel_branches(n=128, depth=3))
    assert len(wide.machine.cpus()) >= 2
    # one host's devices, shared by the plans
    assert chain.machine.device("gpu:0") is wide.machine.device("gpu:0")
    g = G.parallel_branches(n=128, depth=3)
    xs = G.inputs_for(g)
    for got, want in zip(wide.run(*xs), reference.run(g, xs)):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    # a machine eager mode detected (not chosen by the user) is cut to the graph too
    monkeypatch.setattr(config, "_machine", ht.Machine.parse("cpu:4"))
    monkeypatch.setattr(config, "_machine_detected", True, raising=False)
    assert len(compile(G.matmul_chain(n=128, depth=2)).machine.cpus()) == 1
    monkeypatch.setattr(config, "_machine_detected", False)
    # a machine the user configured is used as it is
    monkeypatch.setattr(config, "_machine", ht.Machine.parse("cpu:3"))
    assert len(compile(G.matmul_chain(n=128, depth=2)).machine.cpus()) == 3


def test_compare_policies_is_exported_at_the_top_level(machine):
    assert ht.compare_policies is compare_policies
    assert set(ht.compare_policies(G.tiny_ops(n=2), machine)) >= {"heft", "lower_bound"}


def test_cpu_only_machines_get_winograd_and_gpu_machines_plain_convs():
    """A 3x3 convolution with many channels runs as Winograd on a CPU-only machine (faster
    there), and stays a conv2d for cuDNN on a machine with a GPU; both equal the reference."""
    from hetero import ops

    rng = np.random.default_rng(3)
    x = rng.standard_normal((1, 128, 14, 14)).astype(np.float32)
    w = (rng.standard_normal((128, 128, 3, 3)) * 0.05).astype(np.float32)
    g = ht.function(lambda a: ops.relu(ops.conv2d(a, w, pads=(1, 1, 1, 1)))).graph(x)
    (want,) = reference.run(g, [x])
    for spec, op in (("cpu:2", "conv2d_winograd"), ("cpu:2,sim:1", "conv2d")):
        plan = compile(g, machine=spec)
        assert op in {n.op for n in plan.graph.nodes}, spec
        np.testing.assert_allclose(plan.run(x)[0], want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("data", ["{}", None, {"format": "hetero.plan/1"},
                                  {"format": "hetero.plan/1", "machine": 5}])
def test_plan_from_malformed_json_is_a_hetero_error(data):
    from hetero.plan import Plan

    with pytest.raises(HeteroError, match="hetero plan|Plan.from_json takes"):
        Plan.from_json(data)


def _with_offsets(data, change):
    """A copy of a plan's JSON with every arena place passed through ``change(off, nbytes,
    arena)``."""
    import copy

    data = copy.deepcopy(data)
    for arena in data["memory"]["arenas"]:
        arena["offsets"] = [[n, i, *change(off, nb, arena)] for n, i, off, nb in arena["offsets"]]
    return data


def test_plan_json_with_overlapping_places_is_refused(machine):
    """Issue 13.3: every offset set to 0 passed check() and ran wrong (off by up to 2.36)."""
    g = G.cnn()
    plan = compile(g, machine)
    data = json.loads(json.dumps(plan.to_json()))
    zeroed = _with_offsets(data, lambda off, nb, a: (0, nb))
    with pytest.raises(GraphError, match="overlaps .* both can be live at once"):
        Plan.from_json(zeroed, machine=machine)
    with pytest.raises(GraphError, match="overlaps"):  # check(plan) on a plan built in memory
        ht.check(dataclasses.replace(plan, memory=MemoryPlan.from_json(zeroed["memory"])))


def test_plan_json_with_places_out_of_bounds_is_refused(machine):
    """Issue 13.3: offsets past the arena's end gave a raw ValueError at load."""
    plan = compile(G.cnn(), machine)
    data = json.loads(json.dumps(plan.to_json()))
    with pytest.raises(GraphError, match="past its end"):
        Plan.from_json(_with_offsets(data, lambda off, nb, a: (a["arena_bytes"], nb)),
                       machine=machine)
    with pytest.raises(GraphError, match="is .* bytes, its place"):
        Plan.from_json(_with_offsets(data, lambda off, nb, a: (off, nb + 1)), machine=machine)
    with pytest.raises(GraphError, match="multiple of its alignment"):
        Plan.from_json(_with_offsets(data, lambda off, nb, a: (off + 1, nb)), machine=machine)
    dropped = json.loads(json.dumps(data))
    arena = max(dropped["memory"]["arenas"], key=lambda a: len(a["offsets"]))
    arena["offsets"] = arena["offsets"][1:]
    with pytest.raises(GraphError, match="has no place in the memory plan"):
        Plan.from_json(dropped, machine=machine)


def test_every_compiled_plan_passes_the_memory_check(machine):
    for g in (G.cnn(), G.mlp(batch=2, sizes=(4, 8, 2)), G.tiled_cholesky(3, 32)):
        for policy in ("heft", "cpu", "gpu"):
            plan = compile(g, machine, policy=policy)
            ht.check(plan)
            back = Plan.from_json(json.loads(json.dumps(plan.to_json())), machine=machine)
            assert back.memory == plan.memory
