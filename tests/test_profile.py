"""Profiles: spans of every node and transfer, Chrome trace JSON, summary, cost feedback."""

from __future__ import annotations

import json

import jsonschema
import numpy as np
import pytest

from hetero.devices import Machine
from hetero.executor import Executor
from hetero.profile import Profile, Span
from tests.graphs import inputs_for, mlp, parallel_branches
from tests.test_memory import make_plan

MACHINE = Machine.parse("cpu:2,sim:1")

# The subset of the Chrome trace event format this profile writes.
TRACE_SCHEMA = {
    "type": "object",
    "required": ["traceEvents"],
    "properties": {
        "traceEvents": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["ph", "pid", "tid"],
                "properties": {
                    "ph": {"enum": ["X", "M", "s", "f"]},
                    "pid": {"type": "integer"},
                    "tid": {"type": "integer"},
                    "ts": {"type": "number", "minimum": 0},
                    "dur": {"type": "number", "minimum": 0},
                    "name": {"type": "string"},
                    "args": {"type": "object"},
                    "id": {"type": "integer"},
                },
                "allOf": [
                    {"if": {"properties": {"ph": {"const": "X"}}},
                     "then": {"required": ["ts", "dur", "name", "args"]}},
                    {"if": {"properties": {"ph": {"enum": ["s", "f"]}}},
                     "then": {"required": ["ts", "id", "name"]}},
                ],
            },
        },
        "displayTimeUnit": {"enum": ["ms", "ns"]},
    },
}


@pytest.fixture(scope="module")
def mixed_run():
    g = parallel_branches(64)
    plan = make_plan(g, MACHINE, lambda n: "gpu:0" if n.op == "matmul" and n.name < "matmul_3"
                     else ("cpu:1" if n.op == "matmul" else "cpu:0"))
    ex = Executor(plan)
    xs = inputs_for(g)
    outs, prof = ex.run(xs, profile=True)
    return ex, outs, prof


def test_profile_has_a_span_per_queued_node(mixed_run):
    ex, _, prof = mixed_run
    graph = ex.plan.graph
    expected = {n for q in ex.plan.queues.values() for n in q
                if graph.node(n).op != "constant"}
    assert {s.node for s in prof.spans} == expected
    for s in prof.spans:
        assert 0 <= s.start <= s.end <= prof.wall + 1e-3
        node = graph.node(s.node)
        assert s.device == node.device
        if node.op == "transfer":
            assert s.stream == ("d2h" if node.attrs["kind"] == "d2h" else "h2d")
            assert s.nbytes == node.outputs[0].nbytes
        else:
            assert s.stream == ("compute" if s.device.startswith("gpu") else "worker")


def test_spans_respect_dependencies(mixed_run):
    ex, _, prof = mixed_run
    by_node = {s.node: s for s in prof.spans}
    for node in ex.plan.graph.nodes:
        for v in node.inputs:
            if node.name in by_node and v.node in by_node:
                assert by_node[v.node].end <= by_node[node.name].start + 1e-6, (v.node, node.name)


def test_profiled_outputs_equal_unprofiled(mixed_run):
    ex, outs, _ = mixed_run
    g = ex.graph
    plain = ex.run(inputs_for(g))
    for a, b in zip(outs, plain):
        np.testing.assert_array_equal(a, b)


def test_chrome_trace_is_valid_and_complete(mixed_run, tmp_path):
    ex, _, prof = mixed_run
    path = tmp_path / "trace.json"
    prof.save(str(path))
    data = json.loads(path.read_text())
    jsonschema.validate(data, TRACE_SCHEMA)
    events = data["traceEvents"]
    complete = [e for e in events if e["ph"] == "X"]
    assert {e["name"] for e in complete} == {s.node for s in prof.spans}
    # one named track per CPU worker and per GPU stream that ran something
    tracks = {e["args"]["name"] for e in events if e["ph"] == "M" and e["name"] == "thread_name"}
    used = {(s.device, s.stream) for s in prof.spans}
    for dev, stream in used:
        label = "worker" if stream == "worker" else f"{stream} stream"
        assert f"{dev} {label}" in tracks
    # flow arrows come in start/finish pairs, one pair per hop through a transfer
    starts = {e["id"] for e in events if e["ph"] == "s"}
    finishes = {e["id"] for e in events if e["ph"] == "f"}
    assert starts == finishes and starts
    # placement reasons are in the args
    for e in complete:
        assert e["args"]["reason"]
        if e["cat"] == "modelled":  # the simulated GPU's modelled timeline
            assert e["args"]["modelled_ms"] >= 0 and e["pid"] not in {
                x["pid"] for x in complete if x["cat"] != "modelled"}
        elif e["cat"] == "transfer":
            assert e["args"]["bytes"] > 0 and "transfer" in e["args"]["reason"]
        else:
            assert e["args"]["reason"].startswith("policy")


def test_summary_figures(mixed_run):
    ex, _, prof = mixed_run
    s = prof.summary()
    assert set(s["devices"]) == {sp.device for sp in prof.spans}
    for d in s["devices"].values():
        assert 0.0 <= d["busy"] <= 1.0 + 1e-9
    assert s["transfer_bytes"] == sum(n.outputs[0].nbytes for n in ex.plan.transfers())
    assert 0.0 <= s["transfer_overlap"] <= 1.0
    assert 0 < s["measured_makespan"] <= s["wall"] + 1e-3
    assert s["estimated_makespan"] == ex.plan.makespan
    text = prof.table()
    assert "gpu:0" in text and "overlapped" in text


def test_summary_on_hand_made_spans():
    """cpu:0 computes 0-4 ms, a transfer runs 2-6 ms: half of it overlaps compute."""
    plan = make_plan(mlp(batch=2, sizes=(4, 4, 2)), MACHINE, lambda n: "cpu:0")
    spans = [Span("a", "matmul", "cpu:0", "worker", 0.0, 0.004),
             Span("t", "transfer", "gpu:0", "h2d", 0.002, 0.006, nbytes=1000)]
    s = Profile(plan, spans, wall=0.008).summary()
    assert s["devices"]["cpu:0"]["busy"] == pytest.approx(4 / 6)
    assert s["transfer_overlap"] == pytest.approx(0.5)
    assert s["transfer_bytes"] == 1000
    assert s["measured_makespan"] == pytest.approx(0.006)


def test_measured_times_feed_the_cost_model(tmp_path):
    from hetero.cost import MeasuredCost

    g = mlp(batch=4, sizes=(8, 16, 4))
    plan = make_plan(g, MACHINE, lambda n: "cpu:1" if n.op == "matmul" else "gpu:0")
    cost = MeasuredCost(MACHINE, path=str(tmp_path / "costs.json"))
    ex = Executor(plan, cost=cost)
    _, prof = ex.run(inputs_for(g), profile=True)
    assert cost.history and (tmp_path / "costs.json").exists()  # recorded and saved
    node = next(n for n in plan.graph.nodes if n.op == "matmul")
    ins = tuple(plan.graph.spec(v) for v in node.inputs)
    measured = cost.compute(node, "cpu:1", ins)
    span = next(s for s in prof.spans if s.node == node.name)
    assert measured == pytest.approx(span.duration)
    # the simulated GPU's kernels keep their simulated duration (what the sim paces runs to)
    relu = next(n for n in plan.graph.nodes if n.op == "relu")
    assert not cost.has(relu, "gpu:0", (plan.graph.spec(relu.inputs[0]),))
    on_cpu = sum(1 for s in prof.spans if not s.is_transfer and s.device.startswith("cpu"))
    assert prof.feed(cost) == on_cpu > 0


def test_plan_run_profile_returns_a_profile():
    g = mlp(batch=4, sizes=(8, 8, 4))
    plan = make_plan(g, MACHINE, lambda n: "cpu:0")
    outs, prof = plan.run(*inputs_for(g), profile=True)
    assert isinstance(prof, Profile) and len(outs) == 1
    assert "Profile" in repr(prof)


def test_sync_mode_profiles_too():
    g = mlp(batch=4, sizes=(8, 8, 4))
    plan = make_plan(g, MACHINE, lambda n: "gpu:0" if n.op == "relu" else "cpu:1")
    ex = Executor(plan)
    _, prof = ex.run(inputs_for(g), profile=True, sync=True)
    assert {s.node for s in prof.spans} == {n for q in plan.queues.values() for n in q
                                            if plan.graph.node(n).op != "constant"}
    ordered = sorted(prof.spans, key=lambda s: s.start)
    for a, b in zip(ordered, ordered[1:]):
        assert a.end <= b.start + 1e-6  # one at a time


def test_simulated_devices_carry_host_and_modelled_times():
    """Issue 13.13: "measured 7.133 ms, estimated 0.062 ms" for a simulated GPU, unexplained.
    Spans on a simulated GPU carry the modelled time beside the host time; the table says which
    is which; the Chrome trace has the modelled timeline as its own tracks."""
    import json

    import hetero as ht
    from hetero import ops

    rng = np.random.default_rng(0)
    x = rng.standard_normal((64, 784)).astype(np.float32)
    w = rng.standard_normal((784, 256)).astype(np.float32)

    def f(x, w):
        h = ops.relu(x @ w)
        return ops.softmax(h, axis=-1), ops.tanh(h)

    plan = ht.compile(ht.function(f).graph(x, w), machine="cpu:1,sim:1@h100", policy="gpu")
    _, prof = plan.run(x, w, profile=True)
    est = plan.estimates
    on_gpu = [s for s in prof.spans if s.device == "gpu:0"]
    assert on_gpu and all(s.modelled == pytest.approx(est[s.node][1] - est[s.node][0])
                          for s in on_gpu)
    assert all(s.modelled is None for s in prof.spans if s.device.startswith("cpu"))
    summary = prof.summary()
    assert summary["simulated"] == ["gpu:0"]
    assert summary["devices"]["gpu:0"]["modelled_busy_s"] == pytest.approx(
        sum(s.modelled for s in on_gpu if not s.is_transfer))
    table = prof.table()
    assert "modelled ms" in table.splitlines()[0]
    said = " ".join(table.split())
    assert "gpu:0 is a simulated GPU. A simulated GPU computes with NumPy on this host, so it " \
           "runs no faster than the host does, whatever card it simulates: its measured times " \
           "('busy ms', the measured makespan) are host time." in said
    trace = json.loads(json.dumps(prof.to_chrome()))
    names = {e["pid"]: e["args"]["name"] for e in trace["traceEvents"]
             if e.get("ph") == "M" and e["name"] == "process_name"}
    modelled_pid = next(p for p, n in names.items() if n == "gpu:0 (modelled)")
    modelled = {e["name"]: e for e in trace["traceEvents"]
                if e.get("ph") == "X" and e["pid"] == modelled_pid}
    assert set(modelled) == {s.node for s in on_gpu}
    for s in on_gpu:
        assert modelled[s.node]["dur"] == pytest.approx(s.modelled * 1e6, rel=1e-6, abs=1e-3)
        assert modelled[s.node]["args"]["measured_ms"] == pytest.approx(s.duration * 1e3)
    starts = {n: modelled[n]["ts"] for n in modelled}
    for n in modelled:  # the modelled timeline keeps the plan's order
        for v in plan.graph.node(n).inputs:
            if v.node in modelled:
                assert starts[v.node] <= starts[n]


def test_real_devices_only_have_no_modelled_tracks():
    import hetero as ht
    from hetero import ops

    x = np.ones((8, 8), np.float32)
    plan = ht.compile(ht.function(lambda a: ops.relu(a) * 2.0).graph(x), machine="cpu:2")
    _, prof = plan.run(x, profile=True)
    assert prof.summary()["simulated"] == [] and "note" not in prof.table()
    assert not [e for e in prof.to_chrome()["traceEvents"] if e.get("cat") == "modelled"]


def _sim_mlp_run(cost=None, machine="cpu:1,sim:1@h100"):
    """x @ w -> relu -> (softmax, tanh) compiled with policy "gpu", run once with a profile."""
    import hetero as ht
    from hetero import ops

    rng = np.random.default_rng(0)
    x = rng.standard_normal((64, 784)).astype(np.float32)
    w = rng.standard_normal((784, 256)).astype(np.float32)

    def f(x, w):
        h = ops.relu(x @ w)
        return ops.softmax(h, axis=-1), ops.tanh(h)

    plan = ht.compile(ht.function(f).graph(x, w), machine=machine, policy="gpu", cost=cost)
    _, prof = plan.run(x, w, profile=True)
    return plan, prof


def _sim_model(plan, span):
    """What the simulated GPU paces a span's kernel or copy to (sim.py, executor._gpu_launch)."""
    from hetero.ops.registry import lookup

    node, dev = plan.graph.node(span.node), plan.machine.device(span.device)
    if node.is_transfer:
        return plan.machine.link(node.attrs["src"], node.attrs["dst"]).time(span.nbytes)
    return dev.kernel_time(lookup(node.op, node), [plan.graph.spec(v) for v in node.inputs],
                           list(node.outputs), node.attrs)


def test_modelled_times_are_the_simulated_cards_whatever_the_cost_model():
    """The plan is placed with a table that says relu takes 1 ms on the GPU; the simulated H100
    still paces relu to its roofline (about 5 us), so that is the modelled time, in the spans,
    the summary and the modelled tracks. (It was the plan's estimate: 1 ms.)"""
    from hetero.cost import RooflineCost, TableCost

    machine = Machine.parse("cpu:1,sim:1@h100")
    cost = TableCost({("relu", "gpu"): 1e-3}, machine=machine, fallback=RooflineCost(machine))
    plan, prof = _sim_mlp_run(cost, machine)
    on_gpu = [s for s in prof.spans if s.device == "gpu:0"]
    relu = next(s for s in on_gpu if s.op == "relu")
    est = plan.estimates[relu.node]
    assert est[1] - est[0] == pytest.approx(1e-3)
    assert relu.modelled < 1e-4
    for s in on_gpu:
        assert s.modelled == pytest.approx(_sim_model(plan, s), rel=1e-12), s.node
    summary = prof.summary()
    assert summary["devices"]["gpu:0"]["modelled_busy_s"] == pytest.approx(
        sum(s.modelled for s in on_gpu if not s.is_transfer))
    assert summary["modelled_makespan"] < 5e-4 < summary["estimated_makespan"]
    events = {e["name"]: e for e in prof.to_chrome()["traceEvents"] if e.get("cat") == "modelled"}
    assert events[relu.node]["dur"] == pytest.approx(relu.modelled * 1e6)


def test_roofline_estimates_are_what_the_simulated_card_takes():
    plan, prof = _sim_mlp_run()
    for s in prof.spans:
        if s.device == "gpu:0":
            est = plan.estimates[s.node]
            assert s.modelled == pytest.approx(est[1] - est[0]) and \
                s.modelled == pytest.approx(_sim_model(plan, s), rel=1e-12)


def test_summary_lines_say_measured_is_host_time():
    plan, prof = _sim_mlp_run()
    s = prof.summary()
    line = next(x for x in prof.table().splitlines() if x.startswith("makespan:"))
    assert line.startswith(f"makespan: measured {s['measured_makespan'] * 1e3:.3f} ms (host "
                           f"time: gpu:0 simulated), modelled {s['modelled_makespan'] * 1e3:.3f} "
                           f"ms, estimated {s['estimated_makespan'] * 1e3:.3f} ms")
    assert all(len(x) <= 100 for x in prof.table().splitlines() if not x.startswith("makespan"))


def test_modelled_timeline_follows_streams_and_dependencies(mixed_run):
    """The mixed run (two CPU workers and a simulated GPU): every span starts when the last of
    its stream's previous span and the spans it reads from has ended, and lasts its modelled
    time on the simulated GPU, its measured time on a CPU worker; the modelled tracks show the
    simulated GPU's part of it, one track per stream."""
    ex, _, prof = mixed_run
    plan, graph = ex.plan, ex.plan.graph
    times = prof.modelled_timeline()
    by_node = {s.node: s for s in prof.spans}
    assert set(times) == set(by_node)
    origin = min(s.start for s in prof.spans)
    position = {n: i for q in plan.queues.values() for i, n in enumerate(q)}
    lanes: dict = {}
    for s in sorted(prof.spans, key=lambda s: position[s.node]):
        lanes.setdefault((s.device, s.stream), []).append(s.node)
    before = {b: a for lane in lanes.values() for a, b in zip(lane, lane[1:])}
    for n, (start, end) in times.items():
        s = by_node[n]
        assert end - start == pytest.approx(s.modelled if s.device == "gpu:0" else s.duration)
        waits = [times[before[n]][1]] if n in before else []
        waits += [times[v.node][1] for v in graph.node(n).inputs if v.node in times]
        assert start == pytest.approx(max([origin] + waits), abs=1e-12), n
    assert any(s.device == "gpu:0" for s in prof.spans) and any(
        v.node in by_node and by_node[v.node].device.startswith("cpu")
        for s in prof.spans if s.device == "gpu:0" for v in graph.node(s.node).inputs)
    trace = prof.to_chrome()["traceEvents"]
    pid = next(e["pid"] for e in trace if e.get("name") == "process_name"
               and e["args"]["name"] == "gpu:0 (modelled)")
    tracks = {e["tid"]: e["args"]["name"] for e in trace
              if e.get("name") == "thread_name" and e["pid"] == pid}
    events = [e for e in trace if e.get("cat") == "modelled"]
    assert {e["name"] for e in events} == {s.node for s in prof.spans if s.device == "gpu:0"}
    for e in events:
        assert e["pid"] == pid
        assert tracks[e["tid"]] == f"gpu:0 {by_node[e['name']].stream} stream (modelled)"
        assert e["ts"] == pytest.approx(times[e["name"]][0] * 1e6)
    assert prof.summary()["modelled_makespan"] == pytest.approx(
        max(e for _, e in times.values()) - origin)
