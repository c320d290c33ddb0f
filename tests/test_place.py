"""Placement: cost-driven choices on a machine with a fast GPU behind a slow link, fair policy
comparisons across DAG families, and every annotation rule with its Reason."""

from __future__ import annotations

import logging
import math
import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import hetero as ht
from hetero.config import config
from hetero.cost import RooflineCost, resolve_cost
from hetero.devices import Machine, SimSpec
from hetero.errors import PlacementError
from hetero.passes import place as place_pass
from hetero.passes.place import lower_bound, planned_peaks
from hetero.pipeline import Evaluations, compare_policies, place
from tests import graphs as G

# The simulated GPU is ~140x a CPU worker at matmul and conv, 4x at elementwise work, but sits
# behind a slow link (2 GB/s, 50 us per copy) and pays 10 us per kernel launch.
SLOW_LINK_GPU = SimSpec(
    speed={"elementwise": 32e9, "matmul": 10e12, "conv": 10e12, "reduce": 32e9, "data": 32e9,
           "norm": 32e9},
    mem_bandwidth=500e9, launch_overhead=10e-6, link_bandwidth=2e9, latency=50e-6,
    capacity=1 << 30)


def slow_link_machine(capacity: int | None = None) -> Machine:
    spec = SLOW_LINK_GPU
    if capacity is not None:
        spec = SimSpec(**{**spec.__dict__, "capacity": capacity})
    return Machine.from_spec(cpus=2, sims=[spec])


@pytest.fixture(scope="module")
def machine() -> Machine:
    return slow_link_machine()


def computing(graph, placement):
    """Device of every node that computes (not inputs or constants)."""
    return {n.name: placement.device[n.name] for n in graph.nodes
            if n.op not in ("input", "constant")}


def assert_feasible(graph, placement, machine, cost):
    """Start/finish times respect durations, dependencies plus transfer delays, and no device
    runs two nodes at once."""
    tol = 1e-12
    for node in graph.nodes:
        s, f = placement.start[node.name], placement.finish[node.name]
        assert 0 <= s <= f + tol, node.name
        if node.op in ("input", "constant"):
            continue
        dur = cost.compute(node, placement.device[node.name],
                           tuple(graph.spec(v) for v in node.inputs))
        assert math.isclose(f - s, dur, rel_tol=1e-9, abs_tol=1e-15), node.name
        for v in node.inputs:
            producer = graph.node(v.node)
            if producer.op == "constant":
                continue
            delay = cost.transfer(graph.spec(v).nbytes, placement.device[v.node],
                                  placement.device[node.name])
            assert s + tol >= placement.finish[v.node] + delay * (1 - 1e-9), (v.node, node.name)
    by_device: dict[str, list[tuple[float, float]]] = {}
    for node in graph.nodes:
        if node.op not in ("input", "constant"):
            by_device.setdefault(placement.device[node.name], []).append(
                (placement.start[node.name], placement.finish[node.name]))
    for spans in by_device.values():
        spans.sort()
        for (_, f1), (s2, _) in zip(spans, spans[1:]):
            assert s2 + tol >= f1


# ----------------------------------------------------------------------------------------------
# Cost-driven choices


def test_tiny_ops_stay_on_the_cpu(machine):
    g = G.tiny_ops()
    p = place(g, machine)
    assert set(computing(g, p).values()) <= {"cpu:0", "cpu:1"}
    assert p.device[g.inputs[0]] == "cpu:0"
    assert_feasible(g, p, machine, RooflineCost(machine))


def test_large_matmuls_go_to_the_gpu(machine):
    g = G.matmul_chain(n=1024, depth=4)
    p = place(g, machine)
    matmuls = [n.name for n in g.nodes if n.op == "matmul"]
    assert {p.device[n] for n in matmuls} == {"gpu:0"}
    assert all(p.reason[n].kind == "cost" for n in matmuls)
    assert_feasible(g, p, machine, RooflineCost(machine))


def test_two_independent_heavy_branches_use_both(machine):
    """Two heavy, independent branches: compute-bound (left) and data-bound (right)::

        xa (4 MiB)  -> mm -> mm -> mm ------------.
                                                   add -> out
        xb (16 MiB) -> mul -> add -> sum(axis 0) -'

    The GPU takes the matmuls (~140x a CPU worker); uploading xb over the slow link would take
    longer than a CPU worker needs for the whole right branch, so it stays on the host. (With two
    CPU workers, splitting two *equal* branches never beats giving each worker one, so the
    branches differ in kind.)"""
    rng = np.random.default_rng(0)
    n = 1024
    b = G.Builder("mixed_branches")
    xa, xb = b.input((n, n), name="xa"), b.input((4, n, n), name="xb")
    y = xa
    for _ in range(3):
        y = b.op("matmul", y, b.const(G._weights(rng, n, n)))
    half = b.const(np.full((n, n), 0.5, np.float32))
    z = b.op("mul", xb, half)
    z = b.op("add", z, half)
    z = b.op("sum", z, axes=(0,), keepdims=0)
    g = b.build(b.op("add", y, z))
    p = place(g, machine)
    devs = computing(g, p)
    assert {devs[n.name] for n in g.nodes if n.op == "matmul"} == {"gpu:0"}
    assert {devs[n.name] for n in g.nodes if n.op in ("mul", "sum")} <= {"cpu:0", "cpu:1"}
    assert p.makespan < place(g, machine, policy="gpu").makespan
    assert p.makespan < place(g, machine, policy="cpu").makespan
    assert_feasible(g, p, machine, RooflineCost(machine))


def test_equal_heavy_branches_keep_the_cpu_workers_apart():
    """On CPU workers alone, two independent chains run one per worker."""
    m = Machine.from_spec(cpus=2)
    g = G.parallel_branches(n=256, depth=3)
    p = place(g, m)
    branch_a = {p.device[n.name] for n in g.nodes if n.op == "matmul" and
                any(v.node == "xa" for v in n.inputs)}
    branch_b = {p.device[n.name] for n in g.nodes if n.op == "matmul" and
                any(v.node == "xb" for v in n.inputs)}
    assert branch_a and branch_b and branch_a.isdisjoint(branch_b)


FAMILY_CASES = [
    ("mlp", lambda: G.mlp()),
    ("mlp_small", lambda: G.mlp(batch=4, sizes=(16, 32, 8))),
    ("cnn", lambda: G.cnn()),
    ("tiled_cholesky", lambda: G.tiled_cholesky(tiles=4, tile=128)),
    ("tiled_cholesky_small", lambda: G.tiled_cholesky(tiles=3, tile=16)),
    ("parallel_branches", lambda: G.parallel_branches(n=512)),
    ("tiny_ops", lambda: G.tiny_ops()),
]


@pytest.mark.parametrize("name,build", FAMILY_CASES, ids=[c[0] for c in FAMILY_CASES])
@pytest.mark.parametrize("spec", ["slow", "fast"])
def test_heft_never_worse_than_fixed_policies(name, build, spec):
    m = slow_link_machine() if spec == "slow" else Machine.parse("cpu:2,sim:1")
    g = build()
    res = compare_policies(g, m)
    assert set(res) == {"heft", "peft", "cpu", "gpu", "annotated", "lower_bound"}
    for fixed in ("cpu", "gpu"):
        assert res["heft"] <= res[fixed] * (1 + 1e-9), (fixed, res)
        assert res["peft"] <= res[fixed] * (1 + 1e-9), (fixed, res)
    for policy in ("heft", "peft", "cpu", "gpu", "annotated"):
        assert res[policy] >= res["lower_bound"] * (1 - 1e-9)
    p = place(g, m)
    assert_feasible(g, p, m, RooflineCost(m))


@settings(max_examples=12, deadline=None)
@given(seed=st.integers(0, 10_000), layers=st.integers(2, 6), width=st.integers(1, 4),
       n=st.sampled_from([16, 128, 512]))
def test_heft_on_random_layered_dags(seed, layers, width, n):
    m = slow_link_machine()
    g = G.random_layered(seed, layers=layers, width=width, n=n)
    cost = RooflineCost(m)
    res = compare_policies(g, m, cost, policies=("heft", "cpu", "gpu"))
    assert res["heft"] <= min(res["cpu"], res["gpu"]) * (1 + 1e-9)
    assert res["heft"] >= res["lower_bound"] * (1 - 1e-9)
    p = place(g, m, cost)
    assert_feasible(g, p, m, cost)
    assert set(p.reason) == {n.name for n in g.nodes}


# ----------------------------------------------------------------------------------------------
# Rules and reasons


def test_every_node_has_device_reason_and_times(machine):
    g = G.mlp()
    p = place(g, machine)
    assert set(p.device) == set(p.reason) == set(p.start) == set(p.finish) == \
        {n.name for n in g.nodes}
    assert p.reason["x_0"].kind == "input" and p.device["x_0"] == "cpu:0"
    consumers = g.consumers()
    for n in g.nodes:
        if n.op == "constant":
            assert p.device[n.name] == p.device[consumers[n.name][0]]
    assert p.makespan == pytest.approx(max(p.finish.values()), rel=0.5)


def test_pinned_node_stays_even_when_cost_disagrees(machine):
    b = G.Builder("pinned")
    x = b.input((8,))
    y = b.op("relu", x, node_name="relu_pinned", device="gpu:0")
    g = b.build(b.op("neg", y))
    p = place(g, machine)
    assert p.device["relu_pinned"] == "gpu:0"
    assert p.reason["relu_pinned"].kind == "pinned"


def test_pinned_to_unknown_device_names_node_op_and_line(machine):
    b = G.Builder("unknown_dev")
    x = b.input((8,))
    g = b.build(b.op("relu", x, node_name="r", device="gpu:3"))
    with pytest.raises(PlacementError, match=r"r \(relu, from graphs.py:unknown_dev\).*gpu:3.*"
                                             r"not in this machine"):
        place(g, machine)


def test_pinned_without_kernel_is_an_error(machine):
    op = G.cpu_only_op()
    b = G.Builder("nokernel_pin")
    x = b.input((8,))
    g = b.build(b.op(op, x, node_name="sq", device="gpu:0"))
    with pytest.raises(PlacementError, match=rf"sq \({op}.*no kernel on sim"):
        place(g, machine)


def test_op_without_gpu_kernel_never_lands_there(machine):
    op = G.cpu_only_op()
    b = G.Builder("nokernel")
    x = b.input((1024, 1024))
    y = b.op("matmul", x, x)
    y = b.op(op, y, node_name="sq")
    g = b.build(b.op("matmul", y, y))
    for policy in ("heft", "peft", "gpu"):
        p = place(g, machine, policy=policy)
        assert p.device["sq"].startswith("cpu")
        assert p.reason["sq"].kind == "no-kernel-elsewhere"


def test_soft_annotation_kept_or_overridden(machine):
    b = G.Builder("soft")
    x = b.input((8,))
    y = b.op("relu", x, node_name="soft_gpu", device="gpu:0", soft=True)
    y = b.op("neg", y, node_name="soft_cpu", device="cpu:0", soft=True)
    g = b.build(y)
    p = place(g, machine)
    assert p.device["soft_gpu"] != "gpu:0"
    assert p.reason["soft_gpu"].kind == "soft-overridden"
    assert "annotated gpu:0" in p.reason["soft_gpu"].detail
    assert p.device["soft_cpu"] == "cpu:0" and p.reason["soft_cpu"].kind == "soft-kept"
    annotated = place(g, machine, policy="annotated")
    assert annotated.device["soft_gpu"] == "gpu:0"
    # under a fixed policy the reason names the policy, not a cost comparison
    gpu = place(g, machine, policy="gpu")
    assert gpu.device["soft_cpu"] == "gpu:0"
    assert str(gpu.reason["soft_cpu"]) == ("soft-overridden: annotated cpu:0, but policy 'gpu' "
                                           "puts it on gpu:0")


def test_soft_fallback_and_strict_placement(machine):
    op = G.cpu_only_op()
    b = G.Builder("soft_fallback")
    x = b.input((8,))
    g = b.build(b.op(op, x, node_name="sq", device="gpu:0", soft=True))
    p = place(g, machine)
    assert p.device["sq"].startswith("cpu")
    assert p.reason["sq"].kind == "soft-overridden" and "no kernel" in p.reason["sq"].detail
    config.strict_placement = True
    try:
        with pytest.raises(PlacementError, match=r"sq .*strict_placement"):
            place(g, machine)
    finally:
        config.strict_placement = False


def test_colocation_group_shares_one_device(machine):
    b = G.Builder("colocate")
    x = b.input((1024, 1024))
    y = b.op("matmul", x, x, colocate="grp", node_name="big")
    y = b.op("relu", y, colocate="grp", node_name="small")
    g = b.build(b.op("neg", y))
    p = place(g, machine)
    assert p.device["big"] == p.device["small"]
    assert p.reason["big"].kind == p.reason["small"].kind == "colocated"


def test_colocation_around_an_outside_node(machine):
    """Contracting {a, c} would create a cycle through b::

        x -> a -> b -> c
    """
    b = G.Builder("colocate_cycle")
    x = b.input((512, 512))
    a = b.op("matmul", x, x, colocate="g", node_name="a")
    y = b.op("relu", a, node_name="b")
    c = b.op("matmul", y, y, colocate="g", node_name="c")
    g = b.build(c)
    p = place(g, machine)
    assert p.device["a"] == p.device["c"]
    assert p.reason["a"].kind == "colocated"


@pytest.mark.parametrize("names", [("a", "b", "c", "d"), ("d", "c", "b", "a")])
def test_two_groups_that_cross(machine, names):
    """Each group alone contracts without a cycle, both together would close one
    ({a, d} -> {b, c} through a -> c, and back through b -> d)::

        x -> a(g1) -> c(g2)
        x -> b(g2) -> d(g1)
    """
    a, b_, c, d = names
    b = G.Builder("crossed_groups")
    x = b.input((64, 64))
    ya = b.op("matmul", x, x, colocate="g1", node_name=a)
    yb = b.op("relu", x, colocate="g2", node_name=b_)
    yc = b.op("neg", ya, colocate="g2", node_name=c)
    yd = b.op("matmul", yb, yb, colocate="g1", node_name=d)
    g = b.build(yc, yd)
    p = place(g, machine)
    assert p.device[a] == p.device[d] and p.device[b_] == p.device[c]
    assert {p.reason[n].kind for n in names} == {"colocated"}
    assert_feasible(g, p, machine, RooflineCost(machine))


def test_colocation_with_conflicting_pins_is_an_error(machine):
    b = G.Builder("colocate_conflict")
    x = b.input((8,))
    y = b.op("relu", x, colocate="g", device="cpu:0", node_name="on_cpu")
    y = b.op("neg", y, colocate="g", device="gpu:0", node_name="on_gpu")
    g = b.build(y)
    with pytest.raises(PlacementError, match="colocation group 'g'"):
        place(g, machine)


def test_gpu_capacity_moves_the_largest_nodes(machine):
    g = G.matmul_chain(n=1024, depth=4)  # 4 MiB per matrix
    free = place(g, machine)
    peak_free = planned_peaks(g, free.device, free.start, free.finish, machine)["gpu:0"][0]
    m = slow_link_machine(capacity=int(peak_free * 0.6))
    p = place_pass.place(g, m, evaluate=Evaluations(g, m, resolve_cost(None, m)))
    peaks = planned_peaks(g, p.device, p.start, p.finish, m)
    assert peaks.get("gpu:0", (0.0, ""))[0] <= m.device("gpu:0").capacity
    assert any(r.kind == "capacity" for r in p.reason.values())
    assert any(d == "gpu:0" for d in p.device.values())
    # the pipeline's placement may instead stream weights (hetero.passes.offload), whichever
    # is estimated faster; either way the exact memory plan fits
    plan = ht.compile(g, m)
    assert plan.peak_memory["gpu:0"] <= m.device("gpu:0").capacity
    assert any(r.kind in ("capacity", "streamed") for r in plan.placement.reason.values())
    assert plan.makespan <= p.makespan * (1 + 1e-9)


def test_capacity_exceeded_by_pinned_nodes_is_an_error():
    m = slow_link_machine(capacity=1 << 20)
    b = G.Builder("pinned_big")
    x = b.input((1024, 1024))
    g = b.build(b.op("matmul", x, x, device="gpu:0", node_name="mm"))
    with pytest.raises(PlacementError, match=r"does not fit in the memory of gpu:0.*mm \(matmul"):
        place(g, m)


def test_policies_cpu_gpu_annotated(machine):
    g = G.mlp()
    cpu = place(g, machine, policy="cpu")
    assert set(computing(g, cpu).values()) <= {"cpu:0", "cpu:1"}
    assert {r.kind for r in cpu.reason.values()} <= {"policy", "input", "default"}
    gpu = place(g, machine, policy="gpu")
    assert set(computing(g, gpu).values()) == {"gpu:0"}
    ann = place(g, machine, policy="annotated")
    assert set(computing(g, ann).values()) == {"cpu:0"}
    with pytest.raises(PlacementError, match="unknown placement policy"):
        place(g, machine, policy="fastest")


def test_lower_bound_and_machine_spec_string():
    g = G.tiled_cholesky(tiles=3, tile=32)
    p = place(g, "cpu:2,sim:1")
    assert p.makespan >= lower_bound(g, "cpu:2,sim:1") * (1 - 1e-9)


def test_log_device_placement(machine, caplog):
    g = G.tiny_ops(n=3)
    config.log_device_placement = True
    try:
        with caplog.at_level(logging.INFO, logger="hetero.place"):
            place(g, machine)
    finally:
        config.log_device_placement = False
    text = caplog.text
    assert "add_" in text and "-> cpu:" in text and "input" in text


def test_placement_json_round_trip(machine):
    g = G.cnn()
    p = place(g, machine)
    q = ht.Placement.from_json(p.to_json())
    assert dict(q.device) == dict(p.device) and dict(q.reason) == dict(p.reason)
    assert q.makespan == p.makespan


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 10_000), data=st.data())
def test_random_annotations_are_obeyed(seed, data):
    """Random hard pins, soft hints, colocation groups and GPU-less ops on random DAGs: pins are
    kept, groups share a device, no op lands where it has no kernel, and the timing is feasible."""
    m = slow_link_machine()
    base = G.random_layered(seed, layers=4, width=3, n=data.draw(st.sampled_from([8, 256])))
    names = [d.name for d in m.devices]
    cpu_only = G.cpu_only_op()
    nodes = []
    for node in base.nodes:
        if node.op in ("input", "constant"):
            nodes.append(node)
            continue
        choice = data.draw(st.sampled_from(["none", "none", "hard", "soft", "group", "cpuop"]))
        if choice == "hard":
            node = node.replace(device=data.draw(st.sampled_from(names)), soft=False)
        elif choice == "soft":
            node = node.replace(device=data.draw(st.sampled_from(names)), soft=True)
        elif choice == "group":
            node = node.replace(colocate=data.draw(st.sampled_from(["g1", "g2"])))
        elif choice == "cpuop" and node.op == "relu":
            node = node.replace(op=cpu_only, attrs={})
        nodes.append(node)
    g = base.replace(nodes=tuple(nodes))
    ht.check(g)
    cost = RooflineCost(m)
    try:
        p = place(g, m, cost)
    except PlacementError as exc:
        # only a colocation group whose members are pinned apart (or to a GPU-less op's
        # impossible device) may fail, and the message says which group
        assert "colocation group" in str(exc)
        return
    for node in g.nodes:
        dev = p.device[node.name]
        if node.op in ("input", "constant"):
            continue
        assert ht.ops.registry.has_kernel(node.op, m.device(dev).backend)
        if node.device is not None and not node.soft:
            assert dev == node.device and p.reason[node.name].kind == "pinned"
        if node.soft and node.device is not None:
            assert p.reason[node.name].kind in ("soft-kept", "soft-overridden",
                                                "no-kernel-elsewhere", "colocated")
    for group in ("g1", "g2"):
        devs = {p.device[n.name] for n in g.nodes if n.colocate == group}
        assert len(devs) <= 1
    assert_feasible(g, p, m, cost)


def test_annotated_policy_follows_group_annotation(machine):
    b = G.Builder("annotated_group")
    x = b.input((64, 64))
    y = b.op("matmul", x, x, colocate="g", device="gpu:0", node_name="pinned")
    y = b.op("relu", y, colocate="g", node_name="follower")
    g = b.build(b.op("neg", y, node_name="free"))
    p = place(g, machine, policy="annotated")
    assert p.device["pinned"] == p.device["follower"] == "gpu:0"
    assert p.reason["follower"].kind == "colocated"
    assert p.device["free"] == "cpu:0" and p.reason["free"].kind == "default"


def test_tie_reasons_say_what_decided():
    """Issue 13.14: "cost: 138 us on gpu:0, 138 us on gpu:1" did not say why gpu:0 won."""
    import os

    import hetero.onnx as ho

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    g = ho.load(os.path.join(root, "examples", "two_tower.onnx"))
    plan = ht.compile(g, machine="cpu:2,sim:2@t4")
    reasons = {n: r.detail for n, r in plan.placement.reason.items()}
    assert reasons["user0.mm"].endswith("both would finish at 410 us: gpu:0 comes first in the "
                                        "device list")
    assert "gpu:1 finishes first (410 us against 548 us on gpu:0): its queue is free at 272 us, "\
           "gpu:0's at 410 us" in reasons["item0.mm"]
    assert reasons["user0.h"].endswith("gpu:0 finishes first (441 us against 713 us on gpu:1): "
                                       "its inputs are there at 410 us, on gpu:1 at 682 us (4 MiB "
                                       "to copy to gpu:1, nothing to gpu:0)")
    for name, text in reasons.items():  # every cost tie as printed says what decided
        m = re.match(r"(\S+ \S+) on (\S+), (\S+ \S+) on ([^\s;]+)(.*)", text)
        if m and m.group(1) == m.group(3):
            assert m.group(5).startswith("; "), (name, text)


def test_the_node_table_is_in_start_order():
    import os

    import hetero.onnx as ho
    from hetero import report

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

    g = ho.load(os.path.join(root, "examples", "cnn.onnx"))
    plan = ht.compile(g, machine="cpu:1")
    doc = report.build(plan)
    lines = report.render(doc, "table").splitlines()
    rows = [line.split()[0] for line in lines[4:4 + len(doc["nodes"])]]
    start = {n["name"]: n["start"] for n in doc["nodes"]}
    assert sorted(rows) == sorted(start) and "emb" in rows
    assert [start[r] for r in rows] == sorted(start.values())


def _lookahead_graph():
    """x (32 B) -> a = x @ w (256 KiB out) -> b = tanh(a) -> out, on cpu:1,sim:1 with table
    costs: a takes 10 us on the CPU and 12 us on the GPU, b 1 ms on the CPU and 10 us on the GPU.
    A CPU ``a`` finishes first, but then its 256 KiB go to the GPU for ``b``."""
    from hetero.cost import TableCost

    m = Machine.parse("cpu:1,sim:1")
    b = G.Builder("lookahead")
    x = b.input((1, 8), name="x")
    a = b.op("matmul", x, b.const(np.ones((8, 1 << 16), np.float32)), node_name="a")
    g = b.build(b.op("tanh", a, node_name="b"))
    cost = TableCost({("matmul", "cpu"): 10e-6, ("matmul", "gpu"): 12e-6,
                      ("tanh", "cpu"): 1e-3, ("tanh", "gpu"): 10e-6},
                     machine=m, fallback=RooflineCost(m))
    return g, m, cost


def test_peft_reasons_quote_peft_rule():
    """PEFT picks the least finish time + optimistic cost of the rest (OCT): ``a`` goes to the GPU
    although it would finish sooner on the CPU. The reason said "gpu:0 finishes first (14 us
    against 10 us on cpu:0)"."""
    g, m, cost = _lookahead_graph()
    p = place(g, m, cost, "peft")
    assert p.device["a"] == "gpu:0"
    detail = p.reason["a"].detail
    assert "finishes first" not in detail
    found = re.search(r"PEFT counts the rest of the graph: finish (\S+) us \+ optimistic rest "
                      r"(\S+) us = (\S+) us on gpu:0, against (\S+) us \+ (\S+) us = (\S+) us on "
                      r"cpu:0$", detail)
    assert found, detail
    mine, theirs = (float(v) for v in found.group(3, 6))
    assert float(found.group(1)) > float(found.group(4)) and mine < theirs


def test_fixed_candidate_reasons_do_not_compare_with_devices_it_never_considered():
    """Under "heft" the gpu-only candidate wins here; in that schedule cpu:0 was never an option,
    so "gpu:0 finishes first once copies and queues count" was not what decided."""
    g, m, cost = _lookahead_graph()
    p = place(g, m, cost, "heft")
    assert p.device["a"] == "gpu:0"
    assert p.reason["a"].detail == ("12 us on gpu:0, 10 us on cpu:0; the gpu-only schedule does "
                                    "not consider cpu:0 (gpu-only schedule estimated faster than "
                                    "heft)")


@pytest.mark.parametrize("cheap", ["gpu:0", "gpu:1"])
def test_near_ties_print_what_decided(cheap):
    """One matmul on two GPUs whose table costs differ by less than the printed precision
    (100.1 and 100.2 us), then by scheduler noise (1e-14 relative: a tie at 12 significant
    digits) and by a hair the scheduler still sees (1e-10). Rerun with either GPU the cheaper.

        x -> a -> out
    """
    from hetero.cost import TableCost

    m = Machine.parse("cpu:1,sim:2")
    b = G.Builder("near_tie")
    x = b.input((64, 64), name="x")
    g = b.build(b.op("matmul", x, b.const(np.ones((64, 64), np.float32)), node_name="a"))
    other = "gpu:1" if cheap == "gpu:0" else "gpu:0"

    def placed(cheap_s, other_s):
        cost = TableCost({("a", cheap): cheap_s, ("a", other): other_s, ("a", "cpu:0"): 1e-3},
                         machine=m, fallback=RooflineCost(m))
        p = place(g, m, cost)
        return p.device["a"], p.reason["a"].detail

    dev, why = placed(100.1e-6, 100.2e-6)
    assert dev == cheap
    assert why.startswith(f"100 us on {cheap}, 100 us on {other}; {cheap} finishes first (")
    first = re.search(r"finishes first \((\S+ \S+) against (\S+ \S+) on", why)
    assert first and first.group(1) != first.group(2), why  # not "102 us against 102 us"
    assert why.endswith(f"its kernel takes 100.1 us, 100.2 us on {other}")

    dev, why = placed(100e-6, 100e-6 * (1 + 1e-14))  # equal to the scheduler
    assert dev == "gpu:0"
    assert why.endswith(": gpu:0 comes first in the device list")

    dev, why = placed(100e-6, 100e-6 * (1 + 1e-10))  # not equal to the scheduler
    assert dev == cheap and "device list" not in why
    first = re.search(r"finishes first \((\S+ \S+) against (\S+ \S+) on", why)
    assert first and first.group(1) != first.group(2), why
