"""The concurrent executor against the sequential reference; failures, cancellation, threads."""

from __future__ import annotations

import os
import random
import re
import threading
import time

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from threadpoolctl import threadpool_limits

from hetero import reference
from hetero.devices import Machine
from hetero.errors import ExecutionError, ShapeError
from hetero.executor import Executor
from hetero.graph import Graph
from hetero.ops import registry
from hetero.pipeline import default_cpu_workers
from hetero.threads import cores_per_worker
from tests.graphs import Builder, cnn, inputs_for, mlp, parallel_branches, tiny_ops
from tests.test_memory import make_plan, random_placement

MACHINE = Machine.parse("cpu:2,sim:1")
RUN_TIMEOUT_S = 30.0
SENTINEL = 7777.0
_OWN_THREAD = re.compile(r"^hetero-(cpu|gpu):\d+$")  # the executor's threads (not sim streams)


def random_dag(seed: int, n: int = 8, steps: int = 14) -> Graph:
    """A random DAG of registry ops on n x n float32 matrices; every sink is an output."""
    rnd = random.Random(seed)
    b = Builder(f"random_dag_{seed}")
    rng = np.random.default_rng(seed)
    pool = [b.input((n, n), name=f"x{i}") for i in range(rnd.randint(1, 3))]
    pool.append(b.const((rng.standard_normal((n, n)) * 0.5).astype(np.float32), name="w"))
    scale = b.const(np.full((n, n), 1.0 / n, np.float32), name="scale")
    for _ in range(steps):
        a, c = rnd.choice(pool[-4:]), rnd.choice(pool)
        kind = rnd.random()
        if kind < 0.35:
            y = b.op(rnd.choice(("add", "sub", "mul", "maximum", "minimum")), a, c)
        elif kind < 0.6:
            y = b.op(rnd.choice(("relu", "tanh", "neg", "abs", "sigmoid")), a)
        elif kind < 0.8:
            y = b.op("mul", b.op("matmul", a, c), scale)
        elif kind < 0.9:
            y = b.op("softmax", a, axis=-1)
        else:
            y = b.op("transpose", a, perm=(1, 0))
        pool.append(y)
    consumed = {v.node for node in b.nodes for v in node.inputs}
    op_of = {node.name: node.op for node in b.nodes}
    sinks = [v for v in pool
             if v.node not in consumed and op_of[v.node] not in ("input", "constant")]
    return b.build(*(sinks or [pool[-1]]))


def reference_outputs(graph: Graph, xs, ex: Executor | None = None):
    """The reference run with the BLAS threads the executor uses (BLAS results depend on how
    many threads split a product)."""
    with threadpool_limits(ex.blas_threads if ex is not None else 1, "blas"):
        return reference.run(graph, xs)


def bounded(fn, timeout: float = RUN_TIMEOUT_S):
    """Run ``fn()`` on a helper thread and fail (instead of hanging) if it does not finish."""
    box: dict = {}

    def target():
        try:
            box["value"] = fn()
        except BaseException as exc:  # re-raised in the test's thread
            box["error"] = exc

    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(timeout)
    assert not t.is_alive(), f"run did not finish in {timeout} s (deadlock?)"
    if "error" in box:
        raise box["error"]
    return box["value"]


def own_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if _OWN_THREAD.match(t.name)]


def assert_same(outs, ref):
    assert len(outs) == len(ref)
    for a, r in zip(outs, ref):
        assert isinstance(a, np.ndarray)
        assert a.dtype == r.dtype and a.shape == r.shape
        np.testing.assert_array_equal(a, r)


# ----------------------------------------------------------------------------------------------
# Concurrent == sequential


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 100_000), place_seed=st.integers(0, 100_000),
       order_seed=st.integers(0, 100_000))
def test_random_dags_random_placements_equal_the_reference(seed, place_seed, order_seed):
    g = random_dag(seed)
    plan = make_plan(g, MACHINE, random_placement(place_seed), seed=order_seed)
    ex = Executor(plan)
    for k in range(3):
        xs = inputs_for(g, seed=k)
        assert_same(bounded(lambda xs=xs: ex.run(xs)), reference_outputs(g, xs, ex))
    assert_same(bounded(lambda: ex.run(xs, sync=True)), reference_outputs(g, xs, ex))
    assert not own_threads()


@pytest.mark.parametrize("build", [mlp, cnn, tiny_ops, lambda: parallel_branches(64)],
                         ids=["mlp", "cnn", "tiny_ops", "parallel_branches"])
@pytest.mark.parametrize("devices", [("cpu:0",), ("cpu:0", "cpu:1"), ("cpu:0", "cpu:1", "gpu:0"),
                                     ("gpu:0",)], ids=["cpu1", "cpu2", "mixed", "gpu"])
def test_model_graphs_equal_the_reference(build, devices):
    g = build()
    plan = make_plan(g, MACHINE, random_placement(3, devices))
    ex = Executor(plan)
    xs = inputs_for(g)
    ref = reference_outputs(g, xs, ex)
    assert_same(bounded(lambda: ex.run(xs)), ref)
    assert_same(bounded(lambda: ex.run(xs, sync=True)), ref)


def test_compiled_plan_runs_through_plan_run():
    import hetero as ht

    g = mlp(batch=8, sizes=(16, 32, 8))
    plan = ht.compile(g, machine=MACHINE)
    xs = inputs_for(g)
    outs = plan.run(*xs)
    ref = reference_outputs(g, xs, plan._executor)
    assert_same(outs, ref)
    outs, prof = plan.run(*xs, profile=True)
    assert_same(outs, ref)
    assert prof.spans
    assert_same(plan.run(*xs, sync=True), ref)  # the debugging mode, from the plan too


def test_outputs_are_not_overwritten_by_the_next_run():
    g = tiny_ops(6, size=16)
    ex = Executor(make_plan(g, MACHINE, random_placement(0)))
    xs1, xs2 = inputs_for(g, 1), inputs_for(g, 2)
    first = ex.run(xs1)
    kept = [a.copy() for a in first]
    ex.run(xs2)
    assert_same(first, kept)


def test_outputs_can_stay_on_the_device():
    b = Builder("on_gpu")
    x = b.input((8, 8))
    w = b.const(np.eye(8, dtype=np.float32) * 2)
    g = b.build(b.op("relu", b.op("matmul", x, w)))
    plan = make_plan(g, MACHINE, lambda n: "gpu:0")
    ex = Executor(plan)
    xs = inputs_for(g)
    (out,) = ex.run(xs, outputs="device")
    gpu = MACHINE.device("gpu:0")
    assert gpu.owns(out)
    np.testing.assert_array_equal(gpu.to_host(out), reference_outputs(g, xs)[0])
    (host,) = ex.run(xs)
    assert isinstance(host, np.ndarray) and not gpu.owns(host)


def test_device_outputs_skip_the_copy_home(monkeypatch):
    """outputs="device": an output computed on the GPU is never copied to the host (the run
    copies it within the GPU into a buffer the caller keeps); an output that a CPU node also
    reads still comes home for that node, and the caller gets it on the GPU too."""
    b = Builder("keep")
    x = b.input((16, 16))
    w = b.const(np.eye(16, dtype=np.float32) * 3)
    y = b.op("matmul", x, w)
    z = b.op("relu", y)
    g = b.build(z, b.op("neg", z), y)
    plan = make_plan(g, MACHINE, lambda n: "cpu:1" if n.op == "neg" else "gpu:0")
    ex = Executor(plan)
    gpu = MACHINE.device("gpu:0")
    homes = []
    real = gpu.copy_to_host

    def counting(dst, src, stream):
        homes.append(src.shape)
        real(dst, src, stream)

    monkeypatch.setattr(gpu, "copy_to_host", counting)
    xs = inputs_for(g)
    want = reference_outputs(g, xs, ex)
    for sync in (False, True):
        homes.clear()
        first = ex.run(xs, outputs="device", sync=sync)
        assert len(homes) == 1  # z, for neg on cpu:1; y stays on the GPU
        second = ex.run([x * 2 for x in xs], outputs="device", sync=sync)
        assert gpu.owns(first[0]) and gpu.owns(first[2]) and not gpu.owns(first[1])
        assert first[0] is not second[0] and first[2] is not second[2]
        for got, ref in zip(first, want):
            np.testing.assert_array_equal(gpu.to_host(got) if gpu.owns(got) else got, ref)
    homes.clear()
    host = ex.run(xs)
    assert len(homes) == 2 and not any(gpu.owns(a) for a in host)
    # the profile counts only the bytes that crossed the link
    _, on_host = ex.run(xs, profile=True)
    _, on_gpu = ex.run(xs, profile=True, outputs="device")
    y_bytes = 16 * 16 * 4
    assert on_host.summary()["transfer_bytes"] - on_gpu.summary()["transfer_bytes"] == y_bytes


def test_device_output_also_read_on_the_host_keeps_its_own_bytes():
    """Issue 13.1: a GPU output that a host node also reads came back with outputs="device"
    copied from its arena slot after the run, when a later value had reused that slot."""
    import hetero as ht
    from hetero import ops

    def f(x):
        with ht.device("gpu:0"):
            a = ops.tanh(x)
        b = ops.neg(a)
        with ht.device("gpu:0"):
            c = ops.relu(b)
        return a, c

    x = np.random.default_rng(0).standard_normal((4, 5)).astype(np.float32)
    plan = ht.compile(ht.function(f).graph(x), machine="cpu:1,sim:1", policy="annotated")
    gpu = plan.machine.device("gpu:0")
    want = plan.run(x)
    for sync in (False, True):
        got = plan.run(x, outputs="device", sync=sync)
        assert gpu.owns(got[0]) and gpu.owns(got[1])
        for g, w in zip(got, want):
            np.testing.assert_array_equal(gpu.to_host(g), w)
        np.testing.assert_allclose(gpu.to_host(got[0]), np.tanh(x), rtol=1e-6)


def test_graph_input_returned_as_output_is_a_copy():
    b = Builder("passthrough")
    x = b.input((4,))
    g = b.build(x, b.op("neg", x))
    ex = Executor(make_plan(g, MACHINE, lambda n: "cpu:0"))
    xs = inputs_for(g)
    out = ex.run(xs)
    assert out[0] is not xs[0]
    np.testing.assert_array_equal(out[0], xs[0])
    np.testing.assert_array_equal(out[1], -xs[0])


# ----------------------------------------------------------------------------------------------
# Failures


def with_victim(seed: int) -> tuple[Graph, str]:
    """A random DAG with one ``add`` (the victim) reading a constant marked with SENTINEL."""
    rnd = random.Random(seed)
    g = random_dag(seed)
    b = Builder(f"victim_{seed}")
    # rebuild g's nodes into the builder, then hang the victim off a random computed value
    b.nodes = list(g.nodes)
    b.inputs = list(g.inputs)
    b.constants = dict(g.constants)
    flag = np.zeros((8, 8), np.float32)
    flag.flat[0] = SENTINEL
    computed = [n for n in g.nodes if n.op not in ("input", "constant")]
    target = rnd.choice(computed)
    marker = b.const(flag, name="flag")
    victim = b.op("add", target.value(), marker, node_name="victim")
    after = b.op("relu", victim, node_name="after_victim")
    return b.build(*g.outputs, after), "victim"


def patch_add(monkeypatch, exc_type=RuntimeError, times: int = 1) -> dict:
    """Make the ``add`` kernel raise ``exc_type`` on its first ``times`` calls that read the
    SENTINEL constant."""
    op = registry.lookup("add")
    original = op.kernel
    state = {"left": times, "calls": 0}

    def kernel(xp, ins, attrs, outs):
        state["calls"] += 1
        if ins[1].flat[0] == SENTINEL and state["left"] > 0:
            state["left"] -= 1
            raise exc_type("injected failure")
        original(xp, ins, attrs, outs)

    monkeypatch.setattr(op, "kernel", kernel)
    return state


@settings(max_examples=12, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 100_000), place_seed=st.integers(0, 100_000))
def test_a_failing_kernel_stops_the_run_and_the_plan_runs_again(monkeypatch, seed, place_seed):
    g, victim = with_victim(seed)
    xs = inputs_for(g)
    plan = make_plan(g, MACHINE, random_placement(place_seed))
    ref = reference_outputs(g, xs, Executor(plan))
    with monkeypatch.context() as m:
        patch_add(m)
        ex = Executor(plan)
        with pytest.raises(ExecutionError) as info:
            bounded(lambda: ex.run(xs))
        device = plan.graph.node(victim).device
        msg = str(info.value)
        assert f"{victim} (add" in msg and f"failed on {device}" in msg
        assert "injected failure" in msg
        assert not own_threads()
        # the failure was transient: the same executor runs the plan again, correctly
        assert_same(bounded(lambda: ex.run(xs)), ref)
    assert not own_threads()


def test_a_failing_kernel_in_sync_mode_names_the_node(monkeypatch):
    g, victim = with_victim(5)
    plan = make_plan(g, MACHINE, random_placement(5))
    patch_add(monkeypatch)
    ex = Executor(plan)
    with pytest.raises(ExecutionError, match=f"{victim} \\(add"):
        ex.run(inputs_for(g), sync=True)


@pytest.mark.parametrize("device", ["cpu:0", "cpu:1", "gpu:0"])
def test_keyboard_interrupt_cancels_cleanly(monkeypatch, device):
    g, victim = with_victim(11)
    placement = random_placement(11)
    plan = make_plan(g, MACHINE, lambda n: device if n.name == victim else placement(n))
    xs = inputs_for(g)
    ref = reference_outputs(g, xs, Executor(plan))
    patch_add(monkeypatch, KeyboardInterrupt)
    ex = Executor(plan)
    with pytest.raises(KeyboardInterrupt):
        bounded(lambda: ex.run(xs))
    assert not own_threads()
    assert_same(bounded(lambda: ex.run(xs)), ref)


@pytest.mark.parametrize("main_waits", [True, False], ids=["main-waits", "main-joins"])
def test_ctrl_c_in_the_calling_thread_cancels_the_run(monkeypatch, main_waits):
    """A real SIGINT reaches the calling thread while a worker thread runs a (slow) kernel: the
    calling thread is either blocked waiting for that worker's value (cpu:0 consumes it) or
    joining the threads (nothing left on cpu:0)."""
    import signal
    import time

    b = Builder("ctrl_c")
    x = b.input((4,))
    flag = np.zeros(4, np.float32)
    flag[0] = SENTINEL
    slow = b.op("add", x, b.const(flag, name="flag"), node_name="victim")
    g = b.build(b.op("neg", slow, node_name="consumer"))
    main_dev = "cpu:0" if main_waits else "cpu:1"
    plan = make_plan(g, MACHINE, lambda n: "cpu:1" if n.name == "victim" else main_dev)
    op = registry.lookup("add")
    original = op.kernel
    main = threading.main_thread().ident

    def kernel(xp, ins, attrs, outs):
        if ins[1].flat[0] == SENTINEL and state["armed"]:
            state["armed"] = False
            signal.pthread_kill(main, signal.SIGINT)
            time.sleep(0.3)  # still running when the calling thread gets the interrupt
        original(xp, ins, attrs, outs)

    state = {"armed": True}
    monkeypatch.setattr(op, "kernel", kernel)
    ex = Executor(plan)
    xs = inputs_for(g)
    with pytest.raises(KeyboardInterrupt):
        ex.run(xs)
    assert not own_threads()
    np.testing.assert_array_equal(ex.run(xs)[0], -(xs[0] + flag))


def test_ctrl_c_in_a_gpu_only_plan(monkeypatch):
    """The calling thread itself enqueues a GPU-only plan and then waits for the streams; a real
    SIGINT while the simulated GPU runs a slow kernel cancels the run, and the plan runs again."""
    import signal
    import time

    b = Builder("ctrl_c_gpu")
    x = b.input((4,))
    flag = np.zeros(4, np.float32)
    flag[0] = SENTINEL
    slow = b.op("add", x, b.const(flag, name="flag"), node_name="victim")
    g = b.build(b.op("neg", slow, node_name="consumer"))
    plan = make_plan(g, MACHINE, lambda n: "gpu:0")
    op = registry.lookup("add")
    original = op.kernel
    main = threading.main_thread().ident
    state = {"armed": True}

    def kernel(xp, ins, attrs, outs):
        if ins[1].flat[0] == SENTINEL and state["armed"]:
            state["armed"] = False
            signal.pthread_kill(main, signal.SIGINT)
            time.sleep(0.3)
        original(xp, ins, attrs, outs)

    monkeypatch.setattr(op, "kernel", kernel)
    ex = Executor(plan)
    assert [t.device.name for t in ex._threads] == ["gpu:0"]
    xs = inputs_for(g)
    with pytest.raises(KeyboardInterrupt):
        ex.run(xs)
    assert not own_threads()
    np.testing.assert_array_equal(ex.run(xs)[0], -(xs[0] + flag))


def test_wrong_inputs_fail_before_anything_runs(monkeypatch):
    g, _ = with_victim(2)
    ex = Executor(make_plan(g, MACHINE, random_placement(2)))
    state = patch_add(monkeypatch, times=0)
    xs = inputs_for(g)
    bad_shape = [np.zeros((3, 3), np.float32)] + xs[1:]
    with pytest.raises(ShapeError, match="must be f32\\[8,8\\]"):
        ex.run(bad_shape)
    bad_dtype = [xs[0].astype(np.float64)] + xs[1:]
    with pytest.raises(ShapeError):
        ex.run(bad_dtype)
    with pytest.raises(ShapeError, match="takes"):
        ex.run(xs[:0])
    assert state["calls"] == 0


# ----------------------------------------------------------------------------------------------
# Workers and BLAS threads


def test_default_cpu_workers_follows_the_graphs_parallelism():
    assert default_cpu_workers(tiny_ops(32), cores=8) == 1
    assert default_cpu_workers(mlp(), cores=8) == 1
    assert default_cpu_workers(parallel_branches(256), cores=8) == 2
    assert default_cpu_workers(parallel_branches(256), cores=1) == 1
    b = Builder("wide")
    x = b.input((128, 128))
    branches = [b.op("matmul", x, b.const(np.eye(128, dtype=np.float32))) for _ in range(6)]
    g = b.build(b.op("add_n", *branches))
    assert default_cpu_workers(g, cores=4) == 4
    assert 5 <= default_cpu_workers(g, cores=16) <= 6  # the add_n at the end is serial work
    # the same shape with tiny ops: kernels that short hold the GIL, so one worker
    b = Builder("wide_tiny")
    x = b.input((4, 4))
    branches = [b.op("matmul", x, b.const(np.eye(4, dtype=np.float32))) for _ in range(6)]
    assert default_cpu_workers(b.build(b.op("add_n", *branches)), cores=4) == 1


def test_cores_per_worker_never_oversubscribe():
    for cores in (1, 2, 8, 16):
        for workers in range(1, 10):
            t = cores_per_worker(workers, cores)
            assert t >= 1
            assert workers * t <= max(cores, workers)


def test_the_thread_policy_is_blas_one_thread_and_intra_op_pieces(monkeypatch):
    """Every run computes with BLAS at one thread; a CPU worker's products and convolutions
    split over the cores it has (so results never depend on thread counts or load); a caller's
    fixed BLAS count is kept."""
    from hetero import threads

    monkeypatch.setattr(threads, "cpu_cores", lambda: 4)
    g = mlp(batch=4, sizes=(8, 8, 4))
    one = Executor(make_plan(g, Machine.parse("cpu:1"), lambda n: "cpu:0"))
    assert (one.blas_threads, one.intra_op_threads) == (1, 4)
    two = Executor(make_plan(g, Machine.parse("cpu:2"), random_placement(1, ("cpu:0", "cpu:1"))))
    assert (two.blas_threads, two.intra_op_threads) == (1, 2)
    tiny = Executor(make_plan(tiny_ops(3), Machine.parse("cpu:1"), lambda n: "cpu:0"))
    assert (tiny.blas_threads, tiny.intra_op_threads) == (1, 1)  # nothing splits
    fixed = Executor(make_plan(g, Machine.parse("cpu:1"), lambda n: "cpu:0"), blas_threads=2)
    assert (fixed.blas_threads, fixed.intra_op_threads) == (2, 1)


def _blas_threads_seen_by_relu(monkeypatch) -> list[int]:
    """Make every relu kernel record the BLAS threads it runs under; return that record."""
    from threadpoolctl import threadpool_info

    seen = []
    op = registry.lookup("relu")
    original = op.kernel

    def kernel(xp, ins, attrs, outs):
        seen.append(max((i["num_threads"] for i in threadpool_info()
                         if i["user_api"] == "blas"), default=1))
        original(xp, ins, attrs, outs)

    monkeypatch.setattr(op, "kernel", kernel)
    return seen


def test_every_run_computes_with_one_blas_thread(monkeypatch):
    seen = _blas_threads_seen_by_relu(monkeypatch)
    g = mlp(batch=4, sizes=(8, 8, 4))
    Executor(make_plan(g, Machine.parse("cpu:1"), lambda n: "cpu:0")).run(inputs_for(g))
    assert seen == [1]


def test_blas_is_limited_while_several_workers_run(monkeypatch):
    seen = _blas_threads_seen_by_relu(monkeypatch)
    g = mlp(batch=4, sizes=(8, 8, 8, 4))
    machine = Machine.parse("cpu:2")
    Executor(make_plan(g, machine, random_placement(1, ("cpu:0", "cpu:1")))).run(inputs_for(g))
    assert seen and max(seen) == 1


def test_a_plan_that_would_deadlock_is_refused_at_load():
    """cpu:0 runs b before a, but b reads a's value (and a sits on the same queue)."""
    import dataclasses

    from hetero.plan import Plan

    g = tiny_ops(3)
    plan = make_plan(g, MACHINE, lambda n: "cpu:0")
    queue = plan.queues["cpu:0"]
    bad = dataclasses.replace(plan, queues={"cpu:0": tuple(reversed(queue))})
    assert isinstance(bad, Plan)
    with pytest.raises(Exception, match="deadlock"):
        Executor(bad)


def test_host_allocations_past_memory_are_out_of_memory_errors():
    import hetero as ht

    x = np.ones((1, 1), np.float32)

    def out(x):
        return ht.ops.expand(x, (10**6, 10**6))

    def middle(x):
        return ht.ops.expand(x, (10**6, 10**6)).sum()

    plan = ht.compile(ht.function(out).graph(x), machine="cpu:2")
    with pytest.raises(ht.OutOfMemoryError, match=r"expand_0 \(expand, from test_executor.py"):
        plan.run(x)
    with pytest.raises(ht.OutOfMemoryError, match="host arena"):
        ht.compile(ht.function(middle).graph(x), machine="cpu:2").run(x)


def test_two_plans_running_at_once_are_bit_exact():
    """A server runs many plans at once: a convolution plan and a product plan run from two
    threads, many times over, and every result equals the plan's result when run alone; the
    thread settings are those of each run, and nothing is left changed afterwards."""
    from threadpoolctl import threadpool_info

    from hetero import threads

    def blas():
        return max((i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"),
                   default=1)

    before = blas()
    conv, dense = cnn(batch=2, channels=(3, 16, 32), hw=24), mlp(batch=32, sizes=(512, 512, 64))
    plans = [make_plan(conv, Machine.parse("cpu:1"), lambda n: "cpu:0"),
             make_plan(dense, Machine.parse("cpu:1"), lambda n: "cpu:0")]
    inputs = [inputs_for(conv), inputs_for(dense)]
    alone = [Executor(p).run(xs) for p, xs in zip(plans, inputs)]
    executors = [Executor(p) for p in plans]
    bad: list[str] = []

    def hammer(k: int) -> None:
        for _ in range(25):
            for got, want in zip(executors[k].run(inputs[k]), alone[k]):
                if not np.array_equal(got, want):
                    bad.append(f"plan {k}")

    workers = [threading.Thread(target=hammer, args=(k,)) for k in (0, 1, 0, 1)]
    for t in workers:
        t.start()
    for t in workers:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in workers) and bad == []
    assert threads.intra_op_threads() == 1 and blas() == before


def test_runs_asking_for_other_blas_counts_take_turns():
    """BLAS's thread count is process-wide: while runs hold one count, a run asking for another
    waits, so no run computes under a count it did not ask for."""
    from threadpoolctl import threadpool_info

    from hetero import threads

    def blas():
        return max((i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"),
                   default=1)

    inside = threading.Event()
    release = threading.Event()
    seen = []

    def hold():
        with threads.blas_limit(1):
            inside.set()
            release.wait(10)
            seen.append(("one", blas()))

    def other():
        with threads.blas_limit(2):
            seen.append(("two", blas()))

    t1 = threading.Thread(target=hold)
    t1.start()
    inside.wait(10)
    t2 = threading.Thread(target=other)
    t2.start()
    t2.join(0.2)
    assert t2.is_alive()  # waits for the runs under one thread
    release.set()
    t1.join(10)
    t2.join(10)
    assert seen[0] == ("one", 1) and seen[1][0] == "two"


def test_a_blas_limit_already_in_force_is_not_set_again(monkeypatch):
    """A Dask worker starts with OPENBLAS_NUM_THREADS=1: a run asking for one BLAS thread skips
    threadpoolctl's set-and-restore (about 80 us a run); one asking for another count still
    sets it and restores the count after."""
    from threadpoolctl import threadpool_info

    from hetero import threads

    def blas():
        return [i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"]

    if not blas():
        pytest.skip("no BLAS library that threadpoolctl can see")
    before = blas()
    with threads.blas_limit(1):
        assert set(blas()) == {1}
        ctl = threads._blas_controller()
        calls = []
        real = type(ctl).limit
        monkeypatch.setattr(type(ctl), "limit", lambda self, **kw: calls.append(kw) or
                            real(self, **kw))
    assert blas() == before
    with threads.blas_limit(1):  # set through threadpoolctl unless it already was 1
        pass
    assert bool(calls) == (set(before) != {1})
    calls.clear()
    with threads.blas_limit(1):
        with threads.blas_limit(1):  # nested: the lease is shared
            pass
    assert len(calls) <= 1
    monkeypatch.undo()
    with threads.blas_limit(max(before)):  # the count in force: nothing set
        assert blas() == before


def test_a_blas_loaded_after_the_first_run_is_limited_too():
    """SciPy brings its own OpenBLAS; one imported between runs is held to the run's count as
    well (threadpoolctl lists the libraries once, so the list is refreshed after imports)."""
    pytest.importorskip("scipy")
    import json
    import subprocess
    import sys

    script = (
        "import numpy as np\n"
        "from threadpoolctl import threadpool_info\n"
        "from hetero import threads\n"
        "def counts():\n"
        "    return sorted(i['num_threads'] for i in threadpool_info()\n"
        "                  if i['user_api'] == 'blas')\n"
        "with threads.blas_limit(1):\n"
        "    assert counts() == [1], counts()\n"
        "import scipy.linalg\n"
        "with threads.blas_limit(1):\n"
        "    print(counts())\n"
    )
    env = dict(os.environ, OPENBLAS_NUM_THREADS="2", OMP_NUM_THREADS="2")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    counts = json.loads(out.stdout.strip())
    assert counts and set(counts) == {1}


_REENTRANT: dict = {}


def _reentrant_op() -> str:
    """A test identity op whose kernel calls ``_REENTRANT["plan"].run`` and records the
    ExecutionError it gets."""
    name = "test_reentrant_identity"
    if name not in registry.REGISTRY:
        def kernel(xp, ins, attrs, outs):
            try:
                _REENTRANT["plan"].run(_REENTRANT["inputs"])
            except ExecutionError as exc:
                _REENTRANT["errors"].append(str(exc))
            xp.copyto(outs[0], ins[0])

        registry.register(registry.Op(name, lambda ins, attrs: (ins[0],), kernel,
                                      doc="identity that re-enters its plan (tests)"))
    return name


@pytest.mark.parametrize("machine,where", [("cpu:1", "cpu:0"), ("cpu:2", "cpu:1"),
                                           ("cpu:1,sim:1", "gpu:0")])
@pytest.mark.parametrize("sync", [False, True])
def test_a_kernel_that_runs_its_own_plan_gets_an_error_not_a_deadlock(machine, where, sync):
    """Issue 13.6: a kernel or callback that called plan.run on its own plan deadlocked on the
    run lock. On the calling thread, a CPU worker's thread and a simulated GPU's stream."""
    name = _reentrant_op()
    b = Builder("reenter")
    g = b.build(b.op(name, b.op("relu", b.input((2, 3)))))
    plan = make_plan(g, Machine.parse(machine), lambda n: where)
    ex = Executor(plan)
    x = np.arange(-3, 3, dtype=np.float32).reshape(2, 3)
    _REENTRANT.update(plan=ex, inputs=[x], errors=[])
    (out,) = ex.run([x], sync=sync)
    np.testing.assert_array_equal(out, np.maximum(x, 0))
    assert len(_REENTRANT["errors"]) == 1
    assert "called from inside a run of the same plan" in _REENTRANT["errors"][0]
    (out,) = ex.run([x])  # the plan still runs
    np.testing.assert_array_equal(out, np.maximum(x, 0))


@pytest.mark.skipif(not hasattr(os, "fork"), reason="os.fork is POSIX only")
@pytest.mark.parametrize("machine", ["cpu:1,sim:1", "cpu:2,sim:2", "cpu:1"])
def test_a_forked_child_runs_a_plan_its_parent_ran(machine):
    """Issue 13.5: after os.fork, plan.run in the child blocked forever in
    SimStream.synchronize (the stream thread does not exist in the child). The child also
    uses the intra-op helpers (a conv on cpu:1 splits) and BLAS lease its parent used."""
    import hetero as ht
    from hetero import ops

    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, 8, 32, 32)).astype(np.float32)
    w = (rng.standard_normal((64, 8, 3, 3)) * 0.1).astype(np.float32)
    f = ht.function(lambda a: ops.relu(ops.conv2d(a, w, pads=(1, 1, 1, 1))) * 2.0)
    plan = ht.compile(f.graph(x), machine=machine)
    (want,) = plan.run(x)
    busy = threading.Thread(target=lambda: [plan.run(x) for _ in range(20)])
    busy.start()  # another thread's run may be under way at the fork
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report and leave without running the parent's atexit handlers
        code = 1
        try:
            (got,) = plan.run(x)
            (again,) = plan.run(x, sync=True)
            code = 0 if np.array_equal(got, want) and np.array_equal(again, want) else 2
        finally:
            os.write(write, bytes([code]))
            os._exit(code)
    os.close(write)
    busy.join()
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        time.sleep(0.02)
    else:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
        pytest.fail("the forked child hung in plan.run")
    assert os.read(read, 1) == b"\x00" and os.waitstatus_to_exitcode(status) == 0
    os.close(read)


@pytest.mark.parametrize("kind", ["copy_to_host", "copy_from_host"])
@pytest.mark.parametrize("sync", [False, True])
def test_a_failed_copy_names_the_transfer_and_its_value(monkeypatch, kind, sync):
    """Issue 13.10: a failed device-to-host copy was blamed on the node that consumed it."""
    import hetero as ht
    from hetero import ops

    def f(x):
        with ht.device("gpu:0"):
            a = ops.tanh(x)
        return ops.neg(a)

    x = np.ones((4, 5), np.float32)
    plan = ht.compile(ht.function(f).graph(x), machine="cpu:1,sim:1", policy="annotated")
    gpu = plan.machine.device("gpu:0")

    def broken(dst, src, stream):
        def fail(*_):
            raise RuntimeError("link down")
        stream.launch_timed(1e-6, "copy", fail, dst, src)

    monkeypatch.setattr(gpu, kind, broken)
    d = "d2h" if kind == "copy_to_host" else "h2d"
    carried = r"%tanh_0 \(f32\[4,5\]\) from gpu:0 to cpu:0" if d == "d2h" else \
        r"%x \(f32\[4,5\]\) from cpu:0 to gpu:0"
    with pytest.raises(ExecutionError, match=rf"_to_\w+ \(transfer.*\), the {d} "
                                             rf"copy of {carried}, failed on gpu:0: .*link down"):
        plan.run(x, sync=sync)
    monkeypatch.undo()
    np.testing.assert_allclose(plan.run(x)[0], -np.tanh(x), rtol=1e-6)
