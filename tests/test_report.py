"""hetero.report in process: the report of a compiled plan, its schema, and the renderers.

The report is checked against the Plan it came from (every node, transfer and estimate), the
JSON against the shipped JSON Schema (and the schema against documents broken on purpose), the
DOT by parsing it back, the graph layout by its invariants on random graphs.
"""

from __future__ import annotations

import json
import math
import re

import jsonschema
import numpy as np
import pydot
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import hetero
from hetero import ops, report
from hetero.devices import Machine
from hetero.pipeline import optimize_for
from tests.graphs import mlp, parallel_branches, random_layered

MACHINE = "cpu:2,sim:1@h100"


@pytest.fixture(scope="module")
def machine():
    return Machine.parse(MACHINE)


def _two_branch(x):
    a = ops.relu(x @ np.full((512, 512), 0.01, np.float32))
    b = ops.tanh(x @ np.full((512, 512), 0.02, np.float32))
    return (a + b).sum(axis=1), ops.softmax(b, axis=-1)


@pytest.fixture(scope="module")
def graph():
    return hetero.function(_two_branch).graph(np.zeros((256, 512), np.float32))


@pytest.fixture(scope="module")
def plan(graph, machine):
    return hetero.compile(graph, machine=machine)


@pytest.fixture(scope="module")
def doc(plan, graph, machine):
    return report.build(plan, source="tests:_two_branch",
                        policies=report.compare_policies(graph, machine))


def validate(doc):
    jsonschema.validate(doc, report.schema(), cls=jsonschema.Draft202012Validator)


def test_schema_is_valid_and_names_its_version():
    schema = report.schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    assert re.fullmatch(schema["properties"]["schema_version"]["pattern"],
                        report.SCHEMA_VERSION)


def test_report_holds_the_plan(doc, plan, graph):
    assert doc["transfers"], "the fixture should use the GPU"
    # outputs are named by the node that computes them, not the copy that brings them home
    assert [o["name"] for o in doc["model"]["outputs"]] == [v.node for v in graph.outputs]
    assert [o["name"] for o in doc["model"]["inputs"]] == ["x"]
    validate(json.loads(report.render_json(doc)))
    names = [n["name"] for n in doc["nodes"]]
    expected = [n.name for n in plan.graph.nodes if n.op not in ("constant", "transfer")]
    assert names == expected
    for n in doc["nodes"]:
        node = plan.graph.node(n["name"])
        assert n["device"] == node.device and n["op"] == node.op
        if node.op != "input":
            s, f = plan.estimates[node.name]
            assert (n["start"], n["finish"]) == (s, f)
            assert n["reason"] == plan.placement.reason[node.name].to_json()
    transfers = {t.name: t for t in plan.transfers()}
    assert {t["name"] for t in doc["transfers"]} == set(transfers)
    consumers = plan.graph.consumers()
    for t in doc["transfers"]:
        node = transfers[t["name"]]
        assert t["direction"] == node.attrs["kind"]
        assert t["bytes"] == node.outputs[0].nbytes
        assert t["consumers"] == consumers[t["name"]]
    assert doc["summary"]["makespan"] == plan.makespan
    assert doc["summary"]["lower_bound"] == plan.lower_bound
    arenas = {m["space"]: m["arena_bytes"] for m in doc["memory"]}
    assert arenas == {s: a.arena_bytes for s, a in plan.memory.arenas.items()}
    for d in doc["devices"]:
        assert d["arena_bytes"] == arenas.get(d["memory_space"])


def test_policy_comparison_compiles_each_policy(doc, graph, machine):
    for policy in ("cpu", "gpu"):
        expected = hetero.compile(graph, machine=machine, policy=policy).makespan
        assert doc["summary"]["policies"][policy] == pytest.approx(expected)


def test_comparison_without_gpu_is_null(graph):
    graph = optimize_for(graph, Machine.parse("cpu:2"))
    assert report.policy_makespans(graph, Machine.parse("cpu:2")) == {
        "cpu": pytest.approx(hetero.compile(graph, machine="cpu:2", policy="cpu").makespan),
        "gpu": None}


def test_schema_rejects_broken_reports(doc):
    broken = [
        lambda d: d.pop("schema_version"),
        lambda d: d.update(schema_version="2.0"),
        lambda d: d["nodes"][1].update(device="tpu:0"),
        lambda d: d["nodes"][1]["reason"].update(kind="whim"),
        lambda d: d["nodes"][1].update(start=-1.0),
        lambda d: d["summary"]["policies"].update(cpu="fast"),
        lambda d: d.update(extra=1),
        lambda d: d.update(cost_model={"model": "roofline", "speed": "fast"}),
        lambda d: d.update(cost_model={"path": "costs.json"}),
    ]
    for breaks in broken:
        copy = json.loads(json.dumps(doc))
        breaks(copy)
        with pytest.raises(jsonschema.ValidationError):
            validate(copy)


def test_report_names_its_cost_model(doc, graph, machine, tmp_path):
    assert doc["cost_model"] == {"model": "roofline"}
    table = hetero.TableCost({"matmul": 1e-3}, machine=machine,
                             fallback=hetero.cost.RooflineCost(machine))
    assert report.build(hetero.compile(graph, machine=machine, cost=table))["cost_model"] == {
        "model": "table"}
    # a measured model: which of the plan's nodes it had a time for, on their device
    cpus = Machine.parse("cpu:2")
    measured = hetero.cost.MeasuredCost(cpus, path=str(tmp_path / "costs.json"))
    plan = hetero.compile(graph, machine=cpus, cost=measured)
    computing = [n for n in plan.graph.nodes if n.op not in ("input", "constant", "transfer")]
    assert report.build(plan)["cost_model"]["measured_nodes"] == 0
    first = computing[0]
    measured.record(first, first.device, 1e-3, hetero.cost.input_specs(plan.graph, first))
    got = report.build(plan)
    validate(got)

    def key(n):  # nodes of one op, shapes and attributes share the entry (the two matmuls)
        return hetero.cost.history_key(n, hetero.cost.input_specs(plan.graph, n),
                                       cpus.device(n.device))

    same = sum(key(n) == key(first) for n in computing)
    assert same == 2
    assert got["cost_model"] == {"model": "measured", "path": str(tmp_path / "costs.json"),
                                 "nodes": len(computing), "measured_nodes": same}
    assert f"cost model measured ({same} of {len(computing)} nodes" in report.render_table(got)


def test_infinite_makespan_becomes_null():
    assert report._finite(math.inf) is None and report._finite(1.5) == 1.5


def test_table_lists_every_node_and_transfer(doc):
    text = report.render_table(doc)
    for n in doc["nodes"]:
        assert re.search(rf"^{re.escape(n['name'])}\s+{n['op']}\s+{n['device']}", text, re.M)
    for t in doc["transfers"]:
        assert re.search(rf"^{re.escape(t['name'])}\s+{t['direction']}\s", text, re.M)
    assert f"estimated makespan {report.fmt_time(doc['summary']['makespan'])}" in text


def test_table_rows_run_in_start_order_then_node_order(doc):
    """The node table is in estimated start order; nodes that start together keep the plan's
    node order (the JSON keeps node order). Starts rewritten so that later nodes start first,
    in tied pairs."""
    import copy

    d = copy.deepcopy(doc)
    n = len(d["nodes"])
    for i, node in enumerate(d["nodes"]):
        node["start"] = float((n - i) // 2)
    text = report.render_table(d)
    names = [row["name"] for row in d["nodes"]]
    at = {m.group(1): m.start() for name in names
          for m in re.finditer(rf"^({re.escape(name)})\s", text, re.M)}
    shown = sorted(names, key=lambda name: at[name])
    assert shown == [row["name"] for _, row in sorted(
        enumerate(d["nodes"]), key=lambda p: (p[1]["start"], p[0]))]
    assert shown != names


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # pydot's use of pyparsing
def test_dot_round_trips_through_pydot(doc):
    (g,) = pydot.graph_from_dot_data(report.render_dot(doc))
    nodes = {n.get_name().strip('"'): n for n in g.get_nodes()}
    for n in doc["nodes"]:
        assert nodes[n["name"]].get("fillcolor").strip('"') == next(
            d["color"] for d in doc["machine"]["devices"] if d["name"] == n["device"])
    for t in doc["transfers"]:
        assert nodes[t["name"]].get("shape") == "cds"
    assert len(g.get_edges()) == len(doc["edges"])
    first = doc["nodes"][1]
    assert nodes[first["name"]].get("label") == (
        f'"{first["name"]}\\n{first["op"]} on {first["device"]}\\n'
        f'{report.fmt_time(first["time"])}"')  # DOT line breaks, not escaped backslashes


def test_dot_quotes_odd_names():
    doc = {"model": {"name": 'a "b"'}, "machine": {"devices": [
        {"name": "cpu:0", "color": "#4e79a7"}]},
           "nodes": [{"name": 'x"\\y', "op": "input", "device": "cpu:0", "time": 0.0,
                      "reason": {"kind": "input", "detail": ""}}],
           "transfers": [], "edges": []}
    (g,) = pydot.graph_from_dot_data(report.render_dot(doc))
    assert any('x\\"' in n.get_name() for n in g.get_nodes())


def test_html_is_self_contained(doc):
    page = report.render_html(doc)
    assert page.startswith("<!DOCTYPE html>")
    assert not re.search(r"<(script|img|link|iframe)[^>]+(src|href)=", page)
    assert "url(http" not in page and "@import" not in page
    assert len(re.findall(r'class="node[ "]', page)) == len(doc["nodes"]) + len(doc["transfers"])
    computing = [n for n in doc["nodes"] if n["op"] != "input"]
    assert len(re.findall(r'class="bar[ "]', page)) == len(computing) + len(doc["transfers"])


def test_render_rejects_unknown_format(doc):
    with pytest.raises(hetero.HeteroError, match="unknown report format 'pdf'"):
        report.render(doc, "pdf")


def test_formatting():
    assert report.fmt_time(0.0) == "0 us"
    assert report.fmt_time(math.inf) == "inf"
    assert report.fmt_time(3e-9) == "3 ns"
    assert report.fmt_bytes(2**30 * 3) == "3 GiB"


def test_device_colours_are_distinct(machine):
    colors = report.device_colors(Machine.parse("cpu:4,sim:3").devices)
    assert len(set(colors.values())) == 7


# ----------------------------------------------------------------------------------------------
# Layout invariants


def _check_layout(doc):
    coords = report.layout_graph(doc)
    names = [n["name"] for n in doc["nodes"]] + [t["name"] for t in doc["transfers"]]
    assert set(coords) == set(names)
    for e in doc["edges"]:  # every edge points down: layers follow topological depth
        assert coords[e["dst"]][1] > coords[e["src"]][1]
    boxes = sorted(coords.values())
    for (x1, y1), (x2, y2) in zip(boxes, boxes[1:]):
        if y1 == y2:
            assert abs(x1 - x2) >= report.BOX_W
    assert len(set(coords.values())) == len(coords)


def test_layout_of_the_plan(doc):
    _check_layout(doc)


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 10_000), layers=st.integers(1, 5), width=st.integers(1, 4))
def test_layout_of_random_plans(seed, layers, width):
    g = random_layered(seed, layers=layers, width=width, n=16)
    plan = hetero.compile(g, machine=MACHINE)
    doc = report.build(plan)
    validate(doc)
    _check_layout(doc)


def test_report_of_parallel_branches_on_cpus_only():
    plan = hetero.compile(parallel_branches(n=64), machine="cpu:2")
    doc = report.build(plan)
    validate(doc)
    assert doc["transfers"] == [] and doc["summary"]["policies"] == {}
    assert {n["device"] for n in doc["nodes"]} <= {"cpu:0", "cpu:1"}


def test_svg_is_the_timeline_alone():
    plan = hetero.compile(mlp(batch=8, sizes=(64, 64, 8)), "cpu:2,sim:1")
    text = report.render(report.build(plan), "svg")
    assert text.startswith("<?xml") and text.rstrip().endswith("</svg>")
    assert "<style>" in text and 'id="gantt"' in text and "gpu:0/h2d" in text
    import xml.dom.minidom

    xml.dom.minidom.parseString(text)  # well-formed
