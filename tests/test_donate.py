"""Donated inputs (``ht.compile(..., donate={input: output})``): the output is written into the
input's array in place after every reader of the input has run, on any machine, and the plan
returns that array; what a train step does with its parameters and optimizer state."""

from __future__ import annotations

import json

import numpy as np
import pytest

import hetero as ht
import hetero.ops as F
from hetero import nn, optim
from hetero.errors import GraphError, HeteroError
from hetero.plan import Plan

MACHINES = ["cpu:1", "cpu:2", "cpu:2,sim:1", "cpu:1,sim:2"]


def step(x, w, m):
    """Readers of w on every side of the update: the forward product, a product of the
    transposed weights (the backward pass's input gradient), and the update itself."""
    y = F.relu(F.matmul(x, w))
    back = F.matmul(y, F.transpose(w, perm=(1, 0)))
    g = F.matmul(F.transpose(x, perm=(1, 0)), y)
    m_new = F.add(F.mul(m, np.float32(0.9)), g)
    w_new = F.sub(w, F.mul(m_new, np.float32(0.01)))
    return F.sum(F.mul(back, back)), w_new, m_new


def _inputs(seed=0):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((64, 48)).astype(np.float32),
            rng.standard_normal((48, 48)).astype(np.float32), np.zeros((48, 48), np.float32))


@pytest.mark.parametrize("machine", MACHINES)
def test_donated_arrays_are_updated_in_place_with_the_undonated_values(machine):
    x, w, m = _inputs()
    plain = ht.compile(step, machine, example_inputs=(x, w, m))
    donated = ht.compile(step, machine, example_inputs=(x, w, m), donate={1: 1, 2: 2})
    ht.check(donated)
    assert [n.device for n in donated.graph.nodes if n.op == "assign"] == ["cpu:0", "cpu:0"]
    w_ref, m_ref = w.copy(), m.copy()
    for _ in range(4):
        loss_ref, w_ref, m_ref = plain.run(x, w_ref, m_ref)
        loss, w_out, m_out = donated.run(x, w, m)
        assert w_out is w and m_out is m  # the caller's arrays
        np.testing.assert_array_equal(loss, loss_ref)  # the readers saw the old weights
        np.testing.assert_array_equal(w, w_ref)
        np.testing.assert_array_equal(m, m_ref)


def test_every_reader_runs_before_the_assign():
    x, w, m = _inputs()
    plan = ht.compile(step, "cpu:2,sim:1", example_inputs=(x, w, m), donate={1: 1})
    from hetero.passes.memory import HappensBefore

    hb = HappensBefore(plan.graph, plan.queues, {d.name: d.kind for d in plan.machine.devices})
    (assign,) = [n for n in plan.graph.nodes if n.op == "assign"]
    readers = [n.name for n in plan.graph.nodes if any(v.node == "w" for v in n.inputs)
               and n.name != assign.name]
    assert readers and all(hb.before(r, assign.name) for r in readers)


def test_donated_plans_survive_json():
    x, w, m = _inputs()
    plan = ht.compile(step, "cpu:2,sim:1", example_inputs=(x, w, m), donate={1: 1, 2: 2})
    again = Plan.from_json(json.loads(json.dumps(plan.to_json())))
    assert dict(again.donate) == {1: 1, 2: 2}
    w2, m2 = w.copy(), m.copy()
    plan.run(x, w, m)
    again.run(x, w2, m2)
    np.testing.assert_array_equal(w, w2)


def test_bad_donations_are_clear_errors():
    x, w, m = _inputs()
    with pytest.raises(GraphError, match="does not match input"):
        ht.compile(step, "cpu:1", example_inputs=(x, w, m), donate={0: 1})
    with pytest.raises(GraphError, match="donated into two inputs"):
        ht.compile(step, "cpu:1", example_inputs=(x, w, m), donate={1: 1, 2: 1})
    with pytest.raises(GraphError, match="has 3 inputs and 3 outputs"):
        ht.compile(step, "cpu:1", example_inputs=(x, w, m), donate={5: 1})
    plan = ht.compile(step, "cpu:1", example_inputs=(x, w, m), donate={1: 1})
    frozen = w.copy()
    frozen.flags.writeable = False
    with pytest.raises(HeteroError, match="donated: it is updated in place"):
        plan.run(x, frozen, m)
    with pytest.raises(HeteroError, match=r"f32\[48,48\], got a float64"):
        plan.run(x, w.astype(np.float64), m)
    np.testing.assert_array_equal(frozen, w)  # nothing ran


def test_fit_updates_parameters_and_optimizer_state_in_place():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((64, 5)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64)
    m = nn.Sequential(nn.Dense(5, 8, seed=1), nn.ReLU(), nn.Dense(8, 2, seed=2))
    m.compile(optim.Adam(0.05))
    arrays = {k: v for k, v in m.params.items()}
    before = {k: v.copy() for k, v in arrays.items()}
    m.fit(x, y, epochs=2, batch_size=16, verbose=False)
    state = list(m._state)
    m.fit(x, y, epochs=1, batch_size=16, verbose=False)
    for k, v in m.params.items():
        assert v is arrays[k]  # the same arrays, updated in place
        assert not np.array_equal(v, before[k])
    assert all(a is b for a, b in zip(m._state, state, strict=True))
    # and the same numbers as eager training
    e = nn.Sequential(nn.Dense(5, 8, seed=1), nn.ReLU(), nn.Dense(8, 2, seed=2))
    e.compile(optim.Adam(0.05), graph=False)
    e.fit(x, y, epochs=2, batch_size=16, verbose=False)
    e.fit(x, y, epochs=1, batch_size=16, verbose=False)
    for k in m.params:
        np.testing.assert_allclose(m.params[k], e.params[k], rtol=1e-5, atol=1e-6)


def test_a_plan_with_0d_constants_survives_json():
    """Found on the way: a saved plan wrote 0-d constants as 1-d (np.ascontiguousarray)."""
    x = np.ones((3, 4), np.float32)
    plan = ht.compile(lambda x: F.mul(x, np.float32(2.5)), "cpu:1", example_inputs=(x,))
    again = Plan.from_json(json.loads(json.dumps(plan.to_json())))
    np.testing.assert_array_equal(again.run(x)[0], plan.run(x)[0])
