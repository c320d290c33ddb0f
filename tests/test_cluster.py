"""hetero.cluster: placing a graph over the nodes of a cluster (network in the costs), the n2n
transfers partitioning adds between nodes, stages, and the cluster report. No Dask here."""

from __future__ import annotations

import json
import pathlib

import jsonschema
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import hetero as ht
from hetero import cluster as hc
from hetero import report
from hetero.cli import load_model, main
from hetero.compiler import compile as compile_graph
from hetero.devices import Machine
from hetero.errors import HeteroError, PlacementError
from hetero.graph import NodeKind

ROOT = pathlib.Path(__file__).resolve().parent.parent
TWO_TOWER = ROOT / "examples" / "two_tower.onnx"
CNN = ROOT / "examples" / "cnn.onnx"


def _inputs(graph, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(s.shape).astype(s.dtype) for s in graph.input_specs]


def _n2n_invariants(graph, cplan) -> None:
    """Every edge between compute nodes on different nodes goes through exactly one n2n
    transfer, one per (value, destination node), and no n2n transfer joins two nodes' same."""
    node_of = cplan.placement.node_of
    cg = cplan.graph
    transfers = {n.name: n for n in cg.nodes if n.kind is NodeKind.TRANSFER}
    assert all(t.attrs["kind"] == "n2n" for t in transfers.values())
    seen = set()
    for t in transfers.values():
        v = t.inputs[0]
        dst = cplan.cluster.node_of(t.attrs["dst"])
        assert node_of[v.node] != dst
        assert cplan.cluster.node_of(t.attrs["src"]) == node_of[v.node]
        assert (v, dst) not in seen
        seen.add((v, dst))
    for node in cg.nodes:
        if not node.computes or node.kind is NodeKind.TRANSFER:
            continue
        for v in node.inputs:
            if v.node in transfers:
                assert cplan.cluster.node_of(transfers[v.node].attrs["dst"]) == node_of[node.name]
            elif v.node in node_of:
                assert node_of[v.node] == node_of[node.name]  # a crossing edge has a transfer


def test_latency_objective_runs_the_two_towers_on_two_nodes_at_once():
    g = load_model(str(TWO_TOWER))
    thr = hc.plan_cluster(g, "2x(cpu:1)")
    lat = hc.plan_cluster(g, "2x(cpu:1)", objective="latency")
    towers = {name[:4]: lat.placement.node_of[name] for name in ("user0.mm", "item0.mm")}
    assert towers["user"] != towers["item"]
    # the head waits for the other node: node0 runs two stages, its first without waiting
    assert [s.label for s in lat.stages] == ["node0.1", "node1", "node0.2"]
    assert not any(src[0] == "stage" for src in lat.stages[0].inputs)
    assert lat.latency < 0.7 * thr.latency
    assert [(t["kind"], t["src"], t["dst"]) for t in lat.transfers] == [
        ("n2n", "node1", "node0.2"), ("stage", "node0.1", "node0.2")]
    _n2n_invariants(g, lat)
    _n2n_invariants(g, thr)
    why = lat.placement.reasons["item0.mm"]
    assert "heft" in why and "node0 alone" in why and "at best on node0" in why


def test_a_slow_network_keeps_a_latency_placement_on_one_node():
    g = load_model(str(TWO_TOWER))
    slow = hc.plan_cluster(g, "2x(cpu:1);net=0.01gbps/10ms", objective="latency")
    assert set(slow.placement.node_of.values()) == {0} and len(slow.stages) == 1
    assert not slow.transfers
    assert "node0 alone" in slow.placement.reasons["user0.mm"]
    # the pipeline objective still uses both nodes (throughput), and pays the network
    thr = hc.plan_cluster(g, "2x(cpu:1);net=0.01gbps/10ms")
    assert len(thr.stages) == 2 and thr.latency > slow.latency


def test_a_chain_is_not_spread_for_latency_but_is_pipelined_for_throughput():
    g = load_model(str(CNN))
    lat = hc.plan_cluster(g, "2x(cpu:1)", objective="latency")
    thr = hc.plan_cluster(g, "2x(cpu:1)")
    assert len(lat.stages) == 1
    assert len(thr.stages) == 2 and thr.interval < lat.interval
    second = [name for name, k in thr.placement.node_of.items() if k == 1]
    assert all("pipeline stage 2 of 2" in thr.placement.reasons[n] for n in second)


@pytest.mark.parametrize("objective", hc.OBJECTIVES)
@pytest.mark.parametrize("spec", ["2x(cpu:1)", "2x(cpu:2,sim:1@t4)", "a=cpu:1;b=cpu:2;c=cpu:1"])
def test_stages_run_like_the_whole_graph(objective, spec):
    for path in (TWO_TOWER, CNN):
        g = load_model(str(path))
        xs = _inputs(g)
        cplan = hc.plan_cluster(g, spec, objective=objective)
        want = compile_graph(g, Machine.parse("cpu:1")).run(*xs)
        got = hc.run_stages(cplan.stages, xs)
        for a, b in zip(got, want):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
        # the cluster graph with its n2n transfers computes what the graph does
        ref = ht.reference.run(cplan.graph, xs)
        for a, b in zip(ref, ht.reference.run(g, xs)):
            np.testing.assert_array_equal(a, b)


@settings(max_examples=12, deadline=None)
@given(st.lists(st.integers(0, 2), min_size=64, max_size=64))
def test_any_node_assignment_gives_acyclic_stages_that_run_like_the_graph(picks):
    """Invariant: however the compute nodes are spread over the nodes, back and forth included,
    the stages depend only on earlier ones and run to the graph's outputs; every crossing edge
    has its n2n transfer."""
    g = load_model(str(TWO_TOWER))
    compute = [n.name for n in g.nodes if n.computes]
    node_of = {name: picks[i % len(picks)] for i, name in enumerate(compute)}
    placement = hc.NodePlacement("latency", node_of, {}, {}, 0.0)
    cplan = hc.plan_cluster(g, "3x(cpu:1)", placement=placement)
    for s in cplan.stages:
        assert all(src[1] < s.index for src in s.inputs if src[0] == "stage")
        assert {node_of[n.name] for n in s.plan.graph.nodes
                if n.computes and n.name in node_of} <= \
            {s.node_index}
    _n2n_invariants(g, cplan)
    xs = _inputs(g, sum(picks))
    want = compile_graph(g, Machine.parse("cpu:1")).run(*xs)
    for a, b in zip(hc.run_stages(cplan.stages, xs), want):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_bad_objective_and_placement_are_refused():
    g = load_model(str(CNN))
    with pytest.raises(PlacementError, match="unknown cluster objective 'fast'"):
        hc.place_nodes(g, "2x(cpu:1)", objective="fast")
    with pytest.raises(PlacementError, match="no node of cluster"):
        hc.plan_cluster(g, "2x(cpu:1)", placement=hc.NodePlacement("latency", {}, {}, {}, 0.0))


def test_cli_cluster_report_validates_and_names_every_stage(capsys):
    assert main(["place", str(TWO_TOWER), "--devices", "2x(cpu:1)", "--objective", "latency",
                 "--format", "json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    jsonschema.validate(doc, report.cluster_schema(), cls=jsonschema.Draft202012Validator)
    assert [n["name"] for n in doc["nodes"]] == ["node0.1", "node1", "node0.2"]
    assert doc["objective"] == "latency"
    assert doc["estimate"]["latency"] > 0 and doc["estimate"]["interval"] > 0
    [t] = [t for t in doc["transfers"] if t["kind"] == "n2n"]
    assert (t["src"], t["dst"], t["src_device"]) == ("node1", "node0.2", "node1/cpu:0")
    [h] = [t for t in doc["transfers"] if t["kind"] == "stage"]
    assert (h["value"], h["src"], h["dst"], h["transfer"]) == ("user2.h", "node0.1", "node0.2",
                                                               None)
    assert doc["placement"]["item0.mm"]["node"] == "node1"
    for fmt in ("table", "dot", "html"):
        assert main(["place", str(TWO_TOWER), "--devices", "2x(cpu:1)", "--objective",
                     "latency", "--format", fmt]) == 0
        out = capsys.readouterr().out
        assert "node0.2" in out and "item2.h" in out and "objective latency" in out
    bad = dict(doc, nodes=[dict(doc["nodes"][0], report={"nodes": []})])
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, report.cluster_schema(), cls=jsonschema.Draft202012Validator)


def test_objective_needs_a_cluster_spec(capsys):
    assert main(["place", str(CNN), "--devices", "cpu:2", "--objective", "latency"]) != 0
    assert "--objective applies to a cluster spec" in capsys.readouterr().err
    with pytest.raises(HeteroError):
        hc.parse_cluster("2x(cpu:1);msg=soon")


@pytest.mark.parametrize("name", ["gpt2_past.ts.onnx", "vit.dynamo.onnx", "googlenet.ts.onnx"])
def test_a_latency_plan_is_never_planned_slower_than_one_node(name):
    """With a network so fast that the node-level schedule spreads these models over three
    nodes, the stages compiled for their nodes are weighed against the whole graph on the best
    node, and the faster plan is kept (here: one node)."""
    g = load_model(str(ROOT / "tests" / "fixtures" / "models" / name))
    spec = "3x(cpu:2,sim:1@t4);net=100gbps/5us;msg=1us"
    spread = hc.place_nodes(g, spec, objective="latency")
    assert len(set(spread.node_of.values())) > 1
    kept = hc.plan_cluster(g, spec, objective="latency")
    one = hc.plan_cluster(g, spec, placement=hc.NodePlacement(
        "latency", dict.fromkeys(spread.node_of, spread.single), {}, {}, 0.0))
    forced = hc.plan_cluster(g, spec, placement=spread)
    assert kept.latency <= min(one.latency, forced.latency) + 1e-12
    if kept.latency < forced.latency:
        assert "the spread placement" in next(iter(kept.placement.reasons.values()))


def test_cli_cluster_takes_the_measured_cost_model(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("HETERO_CACHE_DIR", str(tmp_path))  # an empty cache: roofline fallback
    assert main(["place", str(CNN), "--devices", "2x(cpu:1)", "--cost", "measured"]) == 0
    assert capsys.readouterr().out.count("cost model measured") == 2  # each stage's report
    assert main(["place", str(CNN), "--devices", "2x(cpu:1)", "--cost-file", "x.json"]) != 0
    assert "with a cluster spec use --cost measured" in capsys.readouterr().err


def test_the_cluster_api_is_on_hetero_and_loads_on_first_use():
    import subprocess
    import sys

    code = ("import sys, hetero as ht; assert 'hetero.cluster' not in sys.modules; "
            "assert ht.plan_cluster is ht.cluster.plan_cluster; "
            "assert ht.partition_cluster is ht.cluster.partition_cluster; "
            "assert ht.place_nodes is ht.cluster.place_nodes")
    subprocess.run([sys.executable, "-c", code], check=True)
