"""The simulated GPU: memory spaces, capacity, streams, events, copies, pacing, errors."""

from __future__ import annotations

import gc
import pickle
import threading
import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import hetero as ht
from hetero import ops
from hetero.backends import array_namespace
from hetero.backends.sim import SimArray, SimDevice
from hetero.devices import Machine, SimSpec
from hetero.errors import DeviceError, ExecutionError, OutOfMemoryError
from hetero.graph import Attrs, TensorSpec
from hetero.ops.registry import lookup

F32 = np.float32


@pytest.fixture
def machine():
    return Machine.parse("cpu:2,sim:2")


def _spec(*shape, dtype=F32):
    return TensorSpec(shape, dtype)


# ----------------------------------------------------------------------------------------------
# Memory spaces


def test_buffers_carry_their_space_and_views_keep_it(machine):
    g = machine.device("gpu:0")
    buf = g.empty(_spec(4, 4))
    assert isinstance(buf, SimArray) and buf.memory_space == "gpu:0"
    assert g.owns(buf) and g.owns(buf[1:, :2]) and g.owns(buf.reshape(16))
    assert not machine.device("gpu:1").owns(buf)
    assert not machine.device("cpu:0").owns(buf)
    assert not g.owns(np.empty((4, 4), F32))
    assert array_namespace(buf) is np


def test_sim_kernel_refuses_another_devices_buffer(machine):
    g0, g1, cpu = machine.device("gpu:0"), machine.device("gpu:1"), machine.device("cpu:0")
    add = lookup("add")
    a0 = g0.from_host(np.ones(3, F32))
    a1 = g1.from_host(np.ones(3, F32))
    with pytest.raises(DeviceError, match="input 1 lives in memory space 'gpu:1'"):
        g0.run_kernel(add, [a0, a1], Attrs(), [g0.empty(_spec(3))])
    with pytest.raises(DeviceError, match="input 0 lives in memory space 'host'"):
        g0.run_kernel(add, [np.ones(3, F32), a0], Attrs(), [g0.empty(_spec(3))])
    with pytest.raises(DeviceError, match="output 0 lives in memory space 'host'"):
        g0.run_kernel(add, [a0, a0], Attrs(), [np.empty(3, F32)])
    # and the CPU refuses simulated buffers: a missing transfer is an error
    with pytest.raises(DeviceError, match="input 0 lives in memory space 'gpu:0'"):
        cpu.run_kernel(add, [a0, np.ones(3, F32)], Attrs(), [np.empty(3, F32)])
    with pytest.raises(DeviceError, match="'gpu:0'"):
        cpu.to_host(a0)


def test_numpy_arithmetic_mixing_spaces_raises(machine):
    g0, g1 = machine.device("gpu:0"), machine.device("gpu:1")
    a = g0.from_host(np.arange(3, dtype=F32))
    b = g1.from_host(np.arange(3, dtype=F32))
    with pytest.raises(DeviceError, match="host array"):
        a + np.ones(3, F32)
    with pytest.raises(DeviceError, match="'gpu:0' and 'gpu:1'"):
        np.add(a, b)
    with pytest.raises(DeviceError, match="host array"):
        np.concatenate([a, np.ones(3, F32)])
    same = a * 2 + a  # within one space (and with scalars) arithmetic works and stays there
    assert isinstance(same, SimArray) and same.memory_space == "gpu:0"
    np.testing.assert_array_equal(g0.to_host(same), [0, 3, 6])
    with pytest.raises(DeviceError, match="cannot be pickled"):
        pickle.dumps(a)


def test_capacity_overflow_raises_out_of_memory_and_frees_on_release():
    m = Machine.from_spec(cpus=1, sims=[SimSpec(capacity=1000)])
    g = m.device("gpu:0")
    a = g.empty(_spec(100))  # 400 bytes
    view = a[10:20]
    del a
    gc.collect()
    assert g.allocated == 400  # a view keeps the buffer alive
    b = g.empty(_spec(150))  # 600 bytes: exactly full
    assert g.allocated == 1000
    with pytest.raises(OutOfMemoryError, match=r"gpu:0: out of memory allocating 4 B .* 1000 B"):
        g.empty(_spec(1))
    with pytest.raises(OutOfMemoryError):
        g.from_host(np.ones(10, F32))
    del view, b
    gc.collect()
    assert g.allocated == 0
    assert g.peak_allocated == 1000
    g.empty(_spec(250))  # all of it again


# ----------------------------------------------------------------------------------------------
# Streams and events


def test_launch_returns_before_the_work_runs_and_events_wait_for_it(machine):
    stream = machine.device("gpu:0").compute_stream
    gate, ran = threading.Event(), []
    stream.launch(gate.wait)
    stream.launch(ran.append, "done")
    event = stream.record()
    assert not event.query() and ran == []  # the host went on while the stream is blocked
    gate.set()
    event.synchronize()
    assert event.query() and ran == ["done"]


def test_record_wait_orders_two_streams(machine):
    g = machine.device("gpu:0")
    a, b = g.compute_stream, g.d2h_stream
    gate, order = threading.Event(), []
    a.launch(gate.wait)
    a.launch(order.append, "a")
    b.wait(a.record())
    b.launch(order.append, "b")
    b_done = b.record()
    time.sleep(0.01)  # give b every chance to run early if the wait were broken
    assert order == [] and not b_done.query()
    gate.set()
    b.synchronize()
    assert order == ["a", "b"]


def test_streams_of_one_device_overlap(machine):
    g = machine.device("gpu:0")
    gate, seen = threading.Event(), []
    g.compute_stream.launch(gate.wait)
    g.h2d_stream.launch(seen.append, "h2d ran while compute was blocked")
    g.h2d_stream.synchronize()
    assert seen and not g.compute_stream.record().query()
    gate.set()
    g.synchronize()


def test_launch_kernel_is_asynchronous_and_correct(machine):
    g = machine.device("gpu:0")
    x = np.random.default_rng(0).standard_normal((8, 5)).astype(F32)
    y = np.random.default_rng(1).standard_normal((5, 3)).astype(F32)
    gx, gy, out = g.from_host(x), g.from_host(y), g.empty(_spec(8, 3))
    gate = threading.Event()
    g.compute_stream.launch(gate.wait)
    g.launch_kernel(lookup("matmul"), [gx, gy], Attrs(), [out])
    done = g.compute_stream.record()
    assert not done.query()
    gate.set()
    done.synchronize()
    np.testing.assert_allclose(g.to_host(out), x @ y, rtol=1e-5)


def test_stream_error_poisons_until_synchronize(machine):
    stream = machine.device("gpu:1").compute_stream
    ran = []

    def boom():
        raise ValueError("kernel exploded")

    stream.launch(boom)
    stream.launch(ran.append, "skipped")
    event = stream.record()
    with pytest.raises(ExecutionError, match="boom failed on gpu:1 .*compute.*kernel exploded"):
        event.synchronize()
    assert ran == []  # work after a failure is skipped, the event still fired
    stream.launch(ran.append, "after")
    stream.synchronize()
    assert ran == ["after"]


def test_wait_on_a_failed_stream_poisons_the_waiter(machine):
    g = machine.device("gpu:0")

    def boom():
        raise RuntimeError("upstream")

    g.h2d_stream.launch(boom)
    g.compute_stream.wait(g.h2d_stream.record())
    with pytest.raises(ExecutionError, match="upstream"):
        g.compute_stream.synchronize()
    with pytest.raises(ExecutionError, match="upstream"):
        g.h2d_stream.synchronize()
    g.synchronize()  # both clean again


def test_pacing_makes_simulated_time_pass():
    """A kernel of known cost takes at least its simulated duration (a lower bound only)."""
    m = Machine.from_spec(cpus=1, sims=[SimSpec(speed=1e9, mem_bandwidth=1e12,
                                                launch_overhead=0.0)])
    g = m.device("gpu:0")
    a = g.from_host(np.ones(20_000, F32))
    out = g.empty(_spec(20_000))
    start = g.compute_stream.record()
    g.launch_kernel(lookup("add"), [a, a], Attrs(), [out])  # 20k flops at 1 GFLOP/s: 20 us
    g.launch_kernel(lookup("mul"), [a, a], Attrs(), [out])
    end = g.compute_stream.record()
    end.synchronize()
    assert start.elapsed(end) >= 2 * 20_000 / 1e9


# ----------------------------------------------------------------------------------------------
# Copies


def test_h2d_d2h_d2d_copies(machine):
    g0, g1 = machine.device("gpu:0"), machine.device("gpu:1")
    host = np.arange(24, dtype=F32).reshape(2, 3, 4)
    d0 = g0.empty(TensorSpec.of(host))
    g0.copy_from_host(d0, host, g0.h2d_stream)
    d1 = g1.empty(TensorSpec.of(host))
    g1.h2d_stream.wait(g0.h2d_stream.record())
    g1.copy_peer(d1, d0, g1.h2d_stream)
    back = g1.pinned_empty(TensorSpec.of(host))
    g1.d2h_stream.wait(g1.h2d_stream.record())
    g1.copy_to_host(back, d1, g1.d2h_stream)
    g1.d2h_stream.synchronize()
    np.testing.assert_array_equal(back, host)
    assert d1.memory_space == "gpu:1"


def test_copy_argument_errors(machine):
    g0, g1 = machine.device("gpu:0"), machine.device("gpu:1")
    d0 = g0.empty(_spec(3))
    with pytest.raises(DeviceError, match="differ"):
        g0.copy_from_host(d0, np.ones(4, F32), g0.h2d_stream)
    with pytest.raises(DeviceError, match="differ"):
        g0.copy_from_host(d0, np.ones(3, np.float64), g0.h2d_stream)
    with pytest.raises(DeviceError, match="destination 0 lives in memory space 'gpu:0'"):
        g1.copy_from_host(d0, np.ones(3, F32), g1.h2d_stream)
    with pytest.raises(DeviceError, match="not on the host"):
        g1.copy_from_host(g1.empty(_spec(3)), d0, g1.h2d_stream)
    with pytest.raises(DeviceError, match="another simulated GPU"):
        g0.copy_peer(d0, np.ones(3, F32), g0.h2d_stream)
    with pytest.raises(DeviceError, match="not on the host"):
        g0.copy_to_host(g1.empty(_spec(3)), d0, g0.d2h_stream)


def test_to_host_waits_for_queued_compute(machine):
    g = machine.device("gpu:0")
    a = g.from_host(np.full(4, 2, F32))
    out = g.empty(_spec(4))
    gate = threading.Event()
    g.compute_stream.launch(gate.wait)
    g.launch_kernel(lookup("mul"), [a, a], Attrs(), [out])
    threading.Timer(0.01, gate.set).start()
    np.testing.assert_array_equal(g.to_host(out), [4, 4, 4, 4])


def test_from_host_refuses_device_buffers(machine):
    g0, g1 = machine.device("gpu:0"), machine.device("gpu:1")
    with pytest.raises(DeviceError, match="memory space 'gpu:0'"):
        g1.from_host(g0.from_host(np.ones(2, F32)))
    with pytest.raises(DeviceError, match="memory space 'gpu:0'"):
        machine.device("cpu:0").from_host(g0.from_host(np.ones(2, F32)))


def test_a_sim_device_is_a_device():
    g = SimDevice(3, SimSpec(card="t4"))
    assert (g.name, g.kind, g.memory_space, g.backend) == ("gpu:3", "gpu", "gpu:3", "sim")
    assert g.capacity == 16 * 2**30 and ht.ops.lookup("matmul").has_kernel(g.backend)
    assert isinstance(g, ht.Device)


@st.composite
def _stream_programs(draw):
    """Ops as (stream index, dependencies on earlier ops, sleep in us)."""
    n = draw(st.integers(1, 12))
    ops = []
    for i in range(n):
        deps = draw(st.sets(st.integers(0, i - 1), max_size=3)) if i else set()
        ops.append((draw(st.integers(0, 2)), sorted(deps), draw(st.sampled_from([0, 0, 50, 300]))))
    return ops


@settings(max_examples=30, deadline=None)
@given(_stream_programs())
def test_record_wait_respects_every_dependency(program):
    """Work enqueued on three streams with record/wait edges runs in an order that respects
    every edge and each stream's own order, whatever the timing."""
    g = Machine.parse("cpu:1,sim:1").device("gpu:0")
    streams = (g.compute_stream, g.h2d_stream, g.d2h_stream)
    log, lock, after = [], threading.Lock(), {}

    def work(i, us):
        if us:
            time.sleep(us / 1e6)
        with lock:
            log.append(i)

    for i, (s, deps, us) in enumerate(program):
        for j in deps:
            if program[j][0] != s:
                streams[s].wait(after[j])
        streams[s].launch(work, i, us)
        after[i] = streams[s].record()
    g.synchronize()
    position = {op: k for k, op in enumerate(log)}
    assert sorted(log) == list(range(len(program)))
    for i, (s, deps, _) in enumerate(program):
        for j in deps:
            assert position[j] < position[i], (j, i)
        earlier = [j for j in range(i) if program[j][0] == s]
        assert all(position[j] < position[i] for j in earlier)


def test_the_placers_estimate_is_the_simulated_duration_for_every_op_class():
    """One formula (Device.roofline): the roofline cost model's estimate for a node on a
    simulated GPU equals the duration that GPU paces the node's kernel to, for every op class
    (compute-bound and memory-bound sizes alike)."""
    from hetero.cost import RooflineCost, input_specs
    from hetero.graph import OP_CLASSES

    def model(x, w, image, kernel):
        m = x @ w                                                # matmul
        e = ops.relu(m + 1.0)                                   # elementwise
        r = ops.sum(e, axis=1)                                  # reduce
        c = ops.conv2d(image, kernel, pads=(1, 1, 1, 1))        # conv
        t = ops.transpose(e)                                    # data
        n = ops.layer_norm(m, np.ones(m.shape[-1], F32))        # norm
        return r, c, t, n

    for n in (8, 512):
        args = [np.ones((n, n), F32), np.ones((n, n), F32), np.ones((1, 8, n // 4, n // 4), F32),
                np.ones((16, 8, 3, 3), F32)]
        graph = ht.function(model).graph(*args)
        for spec in ("cpu:1,sim:1@h100", "cpu:1,sim:1@t4", "cpu:1,sim:1"):
            machine = Machine.parse(spec)
            gpu = machine.device("gpu:0")
            cost = RooflineCost(machine)
            seen = set()
            for node in graph.nodes:
                if not node.computes:
                    continue
                op = lookup(node.op)
                ins = input_specs(graph, node)
                simulated = gpu.kernel_time(op, ins, node.outputs, node.attrs)
                assert cost.compute(node, gpu, ins) == simulated, (spec, node.op)
                seen.add(op.op_class)
            assert seen == set(OP_CLASSES)
