"""hetero.distributed: clusters of several nodes, and plans run by Dask actors on a LocalCluster
of 2 worker processes, compared bit for bit with the in-process executor."""

from __future__ import annotations

import os
import pathlib
import signal
import threading
import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import hetero as ht
from hetero import distributed as hd
from hetero.cli import load_model
from hetero.compiler import compile as compile_graph
from hetero.devices import Link, Machine
from hetero.errors import DeviceError, ExecutionError

ROOT = pathlib.Path(__file__).resolve().parent.parent
EXAMPLES = sorted((ROOT / "examples").glob("*.onnx"))
LIGHT = ROOT / "tests" / "fixtures" / "models" / "squeezenet.ts.onnx"
SEG = ROOT / "tests" / "fixtures" / "models" / "seg_head.ts.onnx"


def _inputs(graph, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(s.shape).astype(s.dtype) for s in graph.input_specs]


def _same(got, want) -> bool:
    return len(got) == len(want) and all(
        np.asarray(a).dtype == np.asarray(b).dtype and np.array_equal(a, b, equal_nan=True)
        for a, b in zip(got, want))


@pytest.fixture(scope="module")
def conn():
    pytest.importorskip("distributed")
    c = hd.connect("local:2")
    yield c
    c.close()


# -- cluster specs and the split over nodes (no Dask) ------------------------------------------


def test_repeated_and_named_cluster_specs():
    c = hd.parse_cluster("2x(cpu:2,sim:1@t4)")
    assert c.names == ("node0", "node1") and c.network == hd.DEFAULT_NETWORK
    assert c.device_names() == ["cpu:0", "cpu:1", "gpu:0",
                                "node1/cpu:0", "node1/cpu:1", "node1/gpu:0"]
    n = hd.parse_cluster("node0=cpu:2,sim:1;node1=cpu:4;net=25gbps/20us")
    assert [len(m.devices) for m in n.machines] == [3, 4]
    assert n.network == Link(25e9 / 8, 20e-6)
    assert n.node_of("node1/cpu:3") == 1 and n.node_of("gpu:0") == 0
    assert hd.parse_cluster("cpu:2").names == ("node0",)
    assert "2 node(s)" in n.describe() and "node1/cpu:3" in n.describe()


@pytest.mark.parametrize("bad", ["", "3x()", "0x(cpu:1)", "a=cpu:1;a=cpu:2", "cpu:1;cpu:2",
                                 "2x(cpu:1);net=fast", "Node 1=cpu:1", "2x(cpu:1,tpu:1)"])
def test_bad_cluster_specs_are_refused(bad):
    with pytest.raises(DeviceError):
        hd.parse_cluster(bad)


def test_network_enters_transfer_costs():
    c = hd.parse_cluster("2x(cpu:1,sim:1@t4);net=1gbps/100us")
    nbytes = 4 << 20
    within = c.transfer_time(nbytes, "cpu:0", "gpu:0")
    across = c.transfer_time(nbytes, "cpu:0", "node1/gpu:0")
    assert within == c.machines[0].transfer_time(nbytes, "cpu:0", "gpu:0")
    assert across == pytest.approx(100e-6 + nbytes / (1e9 / 8) + hd.MESSAGE_COST + within)
    assert c.transfer_time(nbytes, "cpu:0", "node1/cpu:0") == \
        c.network.time(nbytes) + hd.MESSAGE_COST
    quiet = hd.parse_cluster("2x(cpu:1);net=1gbps/100us;msg=20us")
    assert quiet.message == pytest.approx(20e-6)
    assert quiet.transfer_time(nbytes, "cpu:0", "node1/cpu:0") == \
        pytest.approx(100e-6 + nbytes / (1e9 / 8) + 20e-6)
    with pytest.raises(DeviceError, match="node2/cpu:0"):
        c.transfer_time(1, "cpu:0", "node2/cpu:0")


def test_slow_network_moves_the_cut_to_a_smaller_value():
    g = load_model(str(LIGHT))
    fast = hd.stage_cuts(g, hd.parse_cluster("2x(cpu:1);net=1000gbps/1us"))
    slow = hd.stage_cuts(g, hd.parse_cluster("2x(cpu:1);net=0.001gbps/1us"))
    compute = [n for n in g.nodes if n.computes]

    def crossing(cut: int) -> int:
        made = {n.name for n in compute[:cut]}
        vals = {v for n in compute[cut:] for v in n.inputs if v.node in made}
        return sum(g.spec(v).nbytes for v in vals)

    assert crossing(slow[0]) <= crossing(fast[0])


@settings(max_examples=6, deadline=None)
@given(st.integers(1, 10_000))
def test_any_split_runs_like_the_whole_plan(seed):
    """Invariant: wherever the cut falls, the stages run one after another give the whole
    graph's outputs (the sub-plans' endpoints carry every cross-node value)."""
    g = load_model(str(EXAMPLES[-1]))
    n = sum(node.computes for node in g.nodes)
    cut = 1 + seed % (n - 1)
    stages = hd.split(g, "2x(cpu:1)", cuts=[cut])
    xs = _inputs(g, seed)
    want = compile_graph(g, Machine.parse("cpu:1")).run(*xs)
    np.testing.assert_allclose(hd.run_stages(stages, xs)[0], want[0], rtol=1e-5, atol=1e-5)


def test_split_on_a_cluster_you_do_not_have():
    g = load_model(str(EXAMPLES[0]))
    stages = hd.split(g, "2x(cpu:2,sim:1@h100)")
    assert [s.node for s in stages] == ["node0", "node1"]
    assert stages[0].sends and any(src[0] == "stage" for src in stages[1].inputs)
    assert all(s.plan.machine.spec == "cpu:2,sim:1@h100" for s in stages)


# -- on a LocalCluster of 2 worker processes ---------------------------------------------------


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_replicas_equal_the_executor_bit_for_bit(conn, path):
    g = load_model(str(path))
    plan = compile_graph(g, Machine.parse("cpu:1"))
    runner = conn.runner(plan)
    assert len(runner.workers) == 2
    batches = [_inputs(g, seed) for seed in range(4)]
    for xs, got in zip(batches, runner.map(batches)):
        assert _same(got, plan.run(*xs))
    assert _same(runner.run(*batches[0]), plan.run(*batches[0]))


@pytest.mark.parametrize("path", [EXAMPLES[-1], LIGHT, SEG], ids=lambda p: p.name)
def test_split_over_two_nodes_equals_the_executor_bit_for_bit(conn, path):
    """SEG's outputs (80 KiB and 45 KiB) are larger than what travels inside a message."""
    g = load_model(str(path))
    xs = _inputs(g, 3)
    stages = hd.split(g, "2x(cpu:1)")
    runner = hd.PipelineRunner(conn, stages, timeout=30)
    assert len(set(runner._workers)) == 2
    got = runner.run(*xs)
    assert _same(got, hd.run_stages(stages, xs))  # the same sub-plans in this process
    whole = compile_graph(g, Machine.parse("cpu:1")).run(*xs)
    ref = ht.reference.run(g, xs)
    assert len(got) == len(whole) == len(ref)
    for a, w, r in zip(got, whole, ref):
        np.testing.assert_allclose(a, w, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(a, r, rtol=1e-4, atol=1e-5)


def test_pipelined_map_of_16_inputs_in_order(conn):
    g = load_model(str(EXAMPLES[-1]))
    stages = hd.split(g, "2x(cpu:1)")
    runner = hd.PipelineRunner(conn, stages, timeout=30)
    batches = [_inputs(g, seed) for seed in range(16)]
    outs = runner.map(batches)
    assert len(outs) == 16
    for xs, got in zip(batches, outs):
        assert _same(got, hd.run_stages(stages, xs))
    assert not np.array_equal(outs[0][0], outs[1][0])  # distinct inputs, distinct outputs


def test_a_latency_plan_runs_two_stages_on_one_node_bit_for_bit(conn):
    """The latency objective splits two_tower's towers over the nodes: node0 runs the user
    tower, then (a second actor on its worker) the head once node1's tower arrives."""
    g = load_model(str(ROOT / "examples" / "two_tower.onnx"))
    cplan = hd.plan_cluster(g, "2x(cpu:1)", objective="latency")
    runner = hd.PipelineRunner(conn, cplan, timeout=30)
    assert [s.label for s in cplan.stages] == ["node0.1", "node1", "node0.2"]
    assert runner.nodes == 2 and runner._workers[0] == runner._workers[2] != runner._workers[1]
    batches = [_inputs(g, seed) for seed in range(4)]
    for xs, got in zip(batches, runner.map(batches)):
        assert _same(got, hd.run_stages(cplan.stages, xs))
    whole = compile_graph(g, Machine.parse("cpu:1"))
    assert _same(runner.run(*batches[0]), whole.run(*batches[0]))
    # the cross-node value went worker to worker: node1 sent it, node0's second stage got it
    sent = runner._actors[1].timings().result()["sent"]
    arrived = runner._actors[2].timings().result()["arrived"]
    assert sent and set(sent) <= set(arrived)  # node0.1 sends its tower to node0.2 too
    assert all(arrived[k] >= t for k, t in sent.items())


def test_the_client_talks_to_workers_directly(conn):
    """Actor calls of a default Dask client go through the scheduler; connect switches them to
    direct (a given Client too, unless direct=False)."""
    from distributed import Client

    assert conn.client.direct_to_workers is True
    other = Client(conn.client.scheduler.address)
    try:
        assert not other.direct_to_workers
        assert hd.connect(other).client.direct_to_workers is True
        another = Client(conn.client.scheduler.address)
        assert not hd.connect(another, direct=False).client.direct_to_workers
        another.close()
    finally:
        other.close()


def test_messages_pack_small_arrays_inline_and_large_ones_as_frames():
    pytest.importorskip("distributed")
    from distributed.protocol import Serialize

    arrays = [np.arange(12, dtype=np.float32).reshape(3, 4), np.float64(2.5) * np.ones(()),
              np.array([True, False]), np.arange(20, dtype=np.int64)[::3],
              np.zeros((0, 3), np.float16), np.ones(hd.INLINE_BYTES // 4 + 1, np.float32),
              np.array(["a", "bc"])]
    packed = hd._pack(arrays)
    assert [isinstance(p, Serialize) for p in packed] == [False] * 5 + [True, True]
    for a, b in zip(hd._unpack(packed[:5]), arrays):
        assert a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a, b)
        assert a.flags.writeable


def test_resource_mismatch_is_refused_before_anything_runs(conn):
    g = load_model(str(EXAMPLES[-1]))
    stages = hd.split(g, "2x(cpu:1)")
    with pytest.raises(DeviceError, match=r"node node1 .*GPU=1.*offers none"):
        hd.PipelineRunner(conn, stages, needs=[{}, {"GPU": 1}])


def test_worker_killed_mid_run(conn):
    g = load_model(str(LIGHT))
    stages = hd.split(g, "2x(cpu:1)")
    runner = hd.PipelineRunner(conn, stages, timeout=20, poll=0.2)
    xs = _inputs(g, 5)
    want = hd.run_stages(stages, xs)
    assert _same(runner.run(*xs), want)
    victim = runner._actors[1].pid().result()
    threading.Timer(0.3, os.kill, (victim, signal.SIGKILL)).start()
    t0 = time.monotonic()
    with pytest.raises(ExecutionError, match=r"node node1 .*partition"):
        runner.map([xs] * 200)
    assert time.monotonic() - t0 < 20 + 5
    assert _same(runner.run(*xs), want)  # the lost actor is made again
    assert runner._actors[1].pid().result() != victim


# -- the command line --------------------------------------------------------------------------


def test_cli_run_on_a_running_cluster_with_a_two_node_spec(conn, capsys):
    from hetero.cli import main

    address = conn.client.scheduler.address
    assert main(["run", str(EXAMPLES[-1]), "--dask", address, "--devices", "2x(cpu:1)",
                 "--check", "--repeat", "2"]) == 0
    out = capsys.readouterr().out
    assert "2 stage(s) on 2 node(s)" in out and "estimated" in out
    assert "max relative error 0" in out


def test_cli_place_plans_for_a_cluster_you_do_not_have(capsys):
    from hetero.cli import main

    assert main(["place", str(EXAMPLES[0]), "--devices", "2x(cpu:2,sim:1@h100)",
                 "--format", "json"]) == 0
    import json

    doc = json.loads(capsys.readouterr().out)
    assert [n["name"] for n in doc["nodes"]] == ["node0", "node1"]
    assert doc["transfers"] and all(t["kind"] == "n2n" for t in doc["transfers"])
    assert doc["cluster"]["network"]["bandwidth"] == 10e9 / 8
    assert main(["compile", str(EXAMPLES[0]), "--devices", "2x(cpu:1)", "-o", "-"]) != 0
    assert "describes several nodes" in capsys.readouterr().err


def test_an_actor_uses_no_more_threads_than_its_worker_declares(conn):
    """local:2 starts one-thread workers: even alone on the 2-core host, an actor's executor
    runs one intra-op thread (Dask's account of the worker), so N such workers on N cores are
    not oversubscribed by one of them."""
    g = load_model(str(EXAMPLES[0]))
    stages = hd.split(g, "2x(cpu:1)")
    runner = hd.PipelineRunner(conn, stages)
    assert [a.threads().result() for a in runner._actors] == [1, 1]
    assert hd._worker_threads() is None  # not on a worker here


def test_a_memory_budget_applies_to_that_device_on_every_node(capsys):
    from hetero.cli import main

    g = load_model(str(EXAMPLES[0]))
    stages = hd.split(g, "2x(cpu:2,sim:1@t4)", memory={"gpu:0": "1MiB"})
    assert [s.plan.machine.device("gpu:0").capacity for s in stages] == [2**20, 2**20]
    assert main(["place", str(EXAMPLES[0]), "--devices", "2x(cpu:2,sim:1@t4)",
                 "--memory", "gpu:0=1KiB"]) == 0
    assert "capacity: moved off gpu:0" in capsys.readouterr().out


def test_an_actor_keeps_only_the_latest_timings():
    times: dict = {}
    for i in range(hd.TIMINGS_KEPT + 10):
        hd._stamp(times, (i, "v"), float(i))
    assert len(times) == hd.TIMINGS_KEPT
    assert min(k[0] for k in times) == 10 and (hd.TIMINGS_KEPT + 9, "v") in times
