"""Tests of the list-scheduling core (hetero/scheduling.py).

The two published examples are checked task by task; every example is re-run with the tasks and
devices renamed (same insertion order), which must not change the schedule: ties are broken by
insertion order, never by names or hash order.
"""

from __future__ import annotations

import math
import random

import networkx as nx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hetero.errors import HeteroError, PlacementError
from hetero.scheduling import (
    Schedule,
    SchedulingError,
    heft,
    lower_bound,
    makespan_of,
    optimistic_cost_table,
    peft,
    schedule_fixed,
    upward_rank,
)

# ----------------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------------


def make_problem(edges: dict, costs: list, names=None, devices=("P1", "P2", "P3")):
    """A DAG of tasks 1..n (renamed by ``names``), a cost table and a comm function.

    ``costs[i][k]`` is the time of task i+1 on ``devices[k]``; ``edges[(u, v)]`` is the delay of
    edge u -> v between two different devices (0 on the same device).
    """
    names = names or {i: i for i in range(1, len(costs) + 1)}
    g = nx.DiGraph()
    for i in range(1, len(costs) + 1):
        g.add_node(names[i])
    for (u, v), c in edges.items():
        g.add_edge(names[u], names[v], c=c)
    table = {(names[i + 1], d): float(row[k]) for i, row in enumerate(costs)
             for k, d in enumerate(devices)}

    def compute(t, p):
        return table[t, p]

    def comm(u, v, p, q):
        return 0.0 if p == q else float(g[u][v]["c"])

    return g, list(devices), compute, comm


def namings(n: int):
    """Identity, then names whose sorted and hash orders differ from insertion order."""
    yield "ints", {i: i for i in range(1, n + 1)}, ("P1", "P2", "P3")
    yield "reversed", {i: f"t{n - i:02d}" for i in range(1, n + 1)}, ("z", "y", "x")
    rng = random.Random(7)
    shuffled = [f"{rng.choice('qwertyuiop')}{k}" for k in rng.sample(range(100), n)]
    yield "shuffled", {i: shuffled[i - 1] for i in range(1, n + 1)}, ("gpu:1", "cpu:0", "gpu:0")
    yield "tuples", {i: ("node", -i) for i in range(1, n + 1)}, (3, 1, 2)


def as_rows(s: Schedule, names, devices):
    """The schedule in the original task numbers and device positions, for comparison."""
    back = {v: k for k, v in names.items()}
    pos = {d: k for k, d in enumerate(devices)}
    return {back[t]: (pos[s.device[t]], s.start[t], s.finish[t]) for t in s.device}


# ----------------------------------------------------------------------------------------------
# HEFT paper: Topcuoglu, Hariri, Wu, IEEE TPDS 13(3) 2002, Fig. 2 and Table 1
# ----------------------------------------------------------------------------------------------

HEFT_EDGES = {(1, 2): 18, (1, 3): 12, (1, 4): 9, (1, 5): 11, (1, 6): 14, (2, 8): 19, (2, 9): 16,
              (3, 7): 23, (4, 8): 27, (4, 9): 23, (5, 9): 13, (6, 8): 15, (7, 10): 17,
              (8, 10): 11, (9, 10): 13}
HEFT_COSTS = [(14, 16, 9), (13, 19, 18), (11, 13, 19), (13, 8, 17), (12, 13, 10), (13, 16, 9),
              (7, 15, 11), (5, 11, 14), (18, 12, 20), (21, 7, 16)]
# Fig. 3(a) of the paper: task -> (processor index, start, finish); makespan 80.
HEFT_SCHEDULE = {1: (2, 0, 9), 2: (0, 27, 40), 3: (2, 9, 28), 4: (1, 18, 26), 5: (2, 28, 38),
                 6: (1, 26, 42), 7: (2, 38, 49), 8: (0, 57, 62), 9: (1, 56, 68), 10: (1, 73, 80)}
# Table 2 of the paper: rank_u per task.
HEFT_RANKS = {1: 108.0, 2: 77.0, 3: 80.0, 4: 80.0, 5: 69.0, 6: 63.333, 7: 42.667, 8: 35.667,
              9: 44.333, 10: 14.667}


@pytest.mark.parametrize("label,names,devices", list(namings(10)), ids=lambda x: str(x)[:8])
def test_heft_paper_example(label, names, devices):
    r"""HEFT on the 10-task DAG of Topcuoglu et al. (2002), 3 processors: makespan 80.

    Edge labels are the communication costs between different processors (0 on one)::

                               n1
              18 /     12 /    9 |     11 \     14 \
               n2        n3      n4        n5        n6
               | \        |      | \        |         |
             19|  \16   23|    27|  \23    13|       15|
               v   \      v      v   \      v         v
               n8   `--> n9      n8   `--> n9        n8
                         n7     (n8 <- n2, n4, n6;  n9 <- n2, n4, n5)

               n7 --17--> n10 <--11-- n8        n9 --13--> n10

    Ranks n3 and n4 tie at 80; the paper schedules n3 first (it comes first).
    """
    g, devs, compute, comm = make_problem(HEFT_EDGES, HEFT_COSTS, names, devices)
    s = heft(g, devs, compute, comm)
    s.validate(g, compute, comm)
    assert s.makespan == 80.0
    assert as_rows(s, names, devs) == HEFT_SCHEDULE
    ranks = upward_rank(g, devs, compute, comm)
    assert {i: round(ranks[names[i]], 3) for i in names} == HEFT_RANKS
    # The paper's scheduling order: n1, n3, n4, n2, n5, n6, n9, n7, n8, n10.
    by_rank = sorted(names, key=lambda i: (-round(ranks[names[i]], 9), i))
    assert by_rank == [1, 3, 4, 2, 5, 6, 9, 7, 8, 10]
    assert s.order[devs[1]] == [names[i] for i in (4, 6, 9, 10)]


def test_heft_example_lower_bound_and_fixed_policies():
    """Bounds derived by hand on the HEFT example.

    Fastest times 9 13 11 8 10 9 7 5 12 7 (sum 91, /3 = 30.3); the critical path on fastest
    times without communication is n1-n2-n9-n10 = 9 + 13 + 12 + 7 = 41. Everything on P2 runs
    back to back: 16+19+13+8+13+16+15+11+12+7 = 130.
    """
    g, devs, compute, comm = make_problem(HEFT_EDGES, HEFT_COSTS)
    assert lower_bound(g, devs, compute) == 41.0
    assert makespan_of(g, {t: "P2" for t in g}, compute, comm) == 130.0
    assert makespan_of(g, {t: "P1" for t in g}, compute, comm) == sum(r[0] for r in HEFT_COSTS)
    # Re-evaluating HEFT's own assignment as a fixed policy gives a valid schedule no later
    # than a sequential run and no earlier than the bound.
    s = heft(g, devs, compute, comm)
    fixed = schedule_fixed(g, s.device, compute, comm, devices=devs)
    fixed.validate(g, compute, comm)
    assert fixed.device == s.device
    assert 41.0 <= fixed.makespan <= 130.0


# ----------------------------------------------------------------------------------------------
# PEFT paper: Arabnejad and Barbosa, IEEE TPDS 25(3) 2014, Fig. 1 and Tables 1-2
# ----------------------------------------------------------------------------------------------

PEFT_EDGES = {(1, 2): 17, (1, 3): 31, (1, 4): 29, (1, 5): 13, (1, 6): 7, (2, 8): 3, (2, 9): 30,
              (3, 7): 16, (4, 8): 11, (4, 9): 7, (5, 9): 57, (6, 8): 5, (7, 10): 9, (8, 10): 42,
              (9, 10): 7}
PEFT_COSTS = [(22, 21, 36), (22, 18, 18), (32, 27, 43), (7, 10, 4), (29, 27, 35), (26, 17, 24),
              (14, 25, 30), (29, 23, 36), (15, 21, 8), (13, 16, 33)]
# The optimistic cost table of the paper (OCT on P1, P2, P3 per task).
PEFT_OCT = {1: (64, 68, 86), 2: (42, 39, 42), 3: (27, 41, 43), 4: (42, 39, 50), 5: (28, 37, 28),
            6: (42, 39, 44), 7: (13, 16, 22), 8: (13, 16, 33), 9: (13, 16, 20), 10: (0, 0, 0)}
# PEFT's schedule of the example: makespan 122.
PEFT_SCHEDULE = {1: (0, 0, 22), 2: (0, 29, 51), 3: (0, 51, 83), 4: (0, 22, 29), 5: (2, 35, 70),
                 6: (1, 29, 46), 7: (0, 83, 97), 8: (1, 54, 77), 9: (2, 81, 89),
                 10: (1, 106, 122)}


@pytest.mark.parametrize("label,names,devices", list(namings(10)), ids=lambda x: str(x)[:8])
def test_peft_paper_example(label, names, devices):
    r"""PEFT on the 10-task DAG of Arabnejad and Barbosa (2014): PEFT 122, HEFT 133.

    Edge labels are the communication costs between different processors (0 on one)::

                               T1
              17 /     31 /   29 |     13 \      7 \
               T2        T3      T4        T5        T6
               | \        |      | \        |         |
              3|  \30   16|    11|  \7     57|        5|
               v   \      v      v   \      v         v
               T8   `--> T9      T8   `--> T9        T8
                         T7     (T8 <- T2, T4, T6;  T9 <- T2, T4, T5)

               T7 --9--> T10 <--42-- T8         T9 --7--> T10
    """
    g, devs, compute, comm = make_problem(PEFT_EDGES, PEFT_COSTS, names, devices)
    table = optimistic_cost_table(g, devs, compute, comm)
    assert {i: tuple(table[names[i]][d] for d in devs) for i in names} == PEFT_OCT
    s = peft(g, devs, compute, comm)
    s.validate(g, compute, comm)
    assert s.makespan == 122.0
    assert as_rows(s, names, devs) == PEFT_SCHEDULE
    h = heft(g, devs, compute, comm)
    h.validate(g, compute, comm)
    assert h.makespan == 133.0


def test_peft_takes_the_best_ready_task_not_the_best_task():
    """rank_oct leaves out a task's own cost, so a child can outrank its parent; PEFT (like the
    paper) picks from the ready list, so precedence holds. Here rank_oct(s) = 50.5 > rank_oct(t)
    = 1::

        t (0 anywhere) --> s (0 anywhere) --(c̄ 1000)--> x (1 on d0, 100 on d1)
    """
    g = nx.DiGraph([("t", "s"), ("s", "x")])
    cost = {("t", "d0"): 0.0, ("t", "d1"): 0.0, ("s", "d0"): 0.0, ("s", "d1"): 0.0,
            ("x", "d0"): 1.0, ("x", "d1"): 100.0}

    def comm(u, v, p, q):
        return 0.0 if p == q else (1000.0 if u == "s" else 0.0)

    table = optimistic_cost_table(g, ["d0", "d1"], lambda t, p: cost[t, p], comm)
    assert table["s"] == {"d0": 1.0, "d1": 100.0}
    assert table["t"] == {"d0": 1.0, "d1": 1.0}
    s = peft(g, ["d0", "d1"], lambda t, p: cost[t, p], comm)
    s.validate(g, lambda t, p: cost[t, p], comm)
    assert s.device == {"t": "d0", "s": "d0", "x": "d0"}
    assert s.makespan == 1.0


# ----------------------------------------------------------------------------------------------
# Insertion, restrictions, ties, errors
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("algorithm", [heft, peft])
def test_task_goes_into_idle_gap(algorithm):
    """``c`` is scheduled after ``b`` but fits into the idle gap before it on X::

        a (Y only, 1) --10--> b (X only, 6)       c (X only, 5), independent

    X: [c 0-5] idle [b 11-17];  Y: [a 0-1]
    """
    g = nx.DiGraph()
    g.add_nodes_from(["a", "b", "c"])
    g.add_edge("a", "b")
    cost = {"a": 1.0, "b": 6.0, "c": 5.0}
    where = {"a": {"Y"}, "b": {"X"}, "c": {"X"}}
    s = algorithm(g, ["X", "Y"], lambda t, p: cost[t],
                  lambda u, v, p, q: 0.0 if p == q else 10.0, allowed=where.__getitem__)
    assert s.device == {"a": "Y", "b": "X", "c": "X"}
    assert (s.start["b"], s.start["c"]) == (11.0, 0.0)
    assert s.order == {"X": ["c", "b"], "Y": ["a"]}
    assert s.makespan == 17.0


@pytest.mark.parametrize("algorithm", [heft, peft])
def test_infinite_cost_device_is_never_used(algorithm):
    """The fast device cannot run ``b`` (infinite cost), however attractive otherwise::

        a --> b --> c
    """
    g = nx.DiGraph([("a", "b"), ("b", "c")])

    def compute(t, p):
        if p == "fast":
            return math.inf if t == "b" else 1.0
        return 50.0

    s = algorithm(g, ["fast", "slow"], compute, lambda u, v, p, q: 0.0 if p == q else 1.0)
    s.validate(g, compute, lambda u, v, p, q: 0.0 if p == q else 1.0)
    assert s.device == {"a": "fast", "b": "slow", "c": "fast"}


@pytest.mark.parametrize("algorithm", [heft, peft])
def test_ties_follow_insertion_order_not_names(algorithm):
    """Four equal independent tasks on two equal devices: the first two inserted start first,
    each on the first free device in ``devices`` order, whatever their names::

        w   x   y   z     (no edges, cost 1 each)
    """
    for names in (["w", "x", "y", "z"], ["z", "y", "x", "w"], ["m3", "a1", "q0", "b7"]):
        g = nx.DiGraph()
        g.add_nodes_from(names)
        s = algorithm(g, ["d1", "d0"], lambda t, p: 1.0, lambda u, v, p, q: 0.0)
        assert s.order == {"d1": [names[0], names[2]], "d0": [names[1], names[3]]}


def test_floating_point_noise_does_not_break_ties():
    """rank(a) = 0.1 + 0.2 = 0.30000000000000004 and rank(b) = 0.3 are equal priorities, so
    ``b``, inserted first, goes first::

        b (0.3) --> e2 (0.0)        a (0.1) --> e1 (0.2)
    """
    g = nx.DiGraph()
    g.add_nodes_from(["b", "a", "e2", "e1"])
    g.add_edges_from([("b", "e2"), ("a", "e1")])
    cost = {"b": 0.3, "a": 0.1, "e2": 0.0, "e1": 0.2}
    ranks = upward_rank(g, ["d"], lambda t, p: cost[t], lambda u, v, p, q: 0.0)
    assert ranks["a"] != ranks["b"]
    s = heft(g, ["d"], lambda t, p: cost[t], lambda u, v, p, q: 0.0)
    assert s.start["b"] == 0.0 and s.start["a"] == 0.3


def test_empty_allowed_set_is_a_clear_error():
    """``b`` may run nowhere::

        a --> b
    """
    g = nx.DiGraph([("a", "b")])
    where = {"a": ["d0"], "b": []}
    with pytest.raises(SchedulingError, match="'b'.*no device is allowed") as info:
        heft(g, ["d0", "d1"], lambda t, p: 1.0, lambda u, v, p, q: 0.0, allowed=where.get)
    assert isinstance(info.value, ValueError)
    assert isinstance(info.value, PlacementError)
    assert isinstance(info.value, HeteroError)
    with pytest.raises(SchedulingError, match="'b'"):
        peft(g, ["d0", "d1"], lambda t, p: 1.0, lambda u, v, p, q: 0.0, allowed=where.get)


def test_other_bad_inputs_are_clear_errors():
    """Infinite everywhere, unknown device, no devices, a cycle, negative or NaN costs::

        a --> b --> a   (the cycle case)
    """
    g = nx.DiGraph([("a", "b")])
    one = lambda t, p: 1.0  # noqa: E731
    zero = lambda u, v, p, q: 0.0  # noqa: E731
    with pytest.raises(SchedulingError, match="'a'.*infinite on every device"):
        heft(g, ["d0"], lambda t, p: math.inf if t == "a" else 1.0, zero)
    with pytest.raises(SchedulingError, match="unknown devices"):
        heft(g, ["d0"], one, zero, allowed=lambda t: ["d9"])
    with pytest.raises(SchedulingError, match="no devices"):
        peft(g, [], one, zero)
    with pytest.raises(SchedulingError, match="cycle: 'a' -> 'b'"):
        heft(nx.DiGraph([("a", "b"), ("b", "a")]), ["d0"], one, zero)
    with pytest.raises(SchedulingError, match="compute cost of task 'a'"):
        heft(g, ["d0"], lambda t, p: -1.0, zero)
    with pytest.raises(SchedulingError, match="communication cost 'a' -> 'b'"):
        heft(g, ["d0", "d1"], one, lambda u, v, p, q: math.nan)
    with pytest.raises(SchedulingError, match="no device for task 'b'"):
        makespan_of(g, {"a": "d0"}, one, zero)


def test_errors_name_ir_nodes_by_their_label():
    """A vertex carrying an IR node (``Graph.to_networkx``) is named by ``node.label``."""

    class FakeNode:
        label = "matmul_3 (matmul, from model.py:42)"

    g = nx.DiGraph()
    g.add_node("matmul_3", node=FakeNode())
    with pytest.raises(SchedulingError, match=r"matmul_3 \(matmul, from model.py:42\)"):
        heft(g, ["d0"], lambda t, p: 1.0, lambda u, v, p, q: 0.0, allowed=lambda t: ())


def test_validate_catches_broken_schedules():
    """A hand-made schedule that starts ``b`` before its input arrives, then one that runs two
    tasks at once::

        a --(comm 5 across devices)--> b
    """
    g = nx.DiGraph([("a", "b")])
    one = lambda t, p: 1.0  # noqa: E731
    comm = lambda u, v, p, q: 0.0 if p == q else 5.0  # noqa: E731
    good = heft(g, ["d0", "d1"], one, comm)
    good.validate(g, one, comm)
    early = Schedule(device={"a": "d0", "b": "d1"}, start={"a": 0.0, "b": 1.0},
                     finish={"a": 1.0, "b": 2.0}, makespan=2.0, order={"d0": ["a"], "d1": ["b"]})
    with pytest.raises(SchedulingError, match="before its input from 'a'"):
        early.validate(g, one, comm)
    h = nx.DiGraph()
    h.add_nodes_from(["a", "b"])
    clash = Schedule(device={"a": "d0", "b": "d0"}, start={"a": 0.0, "b": 0.5},
                     finish={"a": 1.0, "b": 1.5}, makespan=1.5, order={"d0": ["a", "b"]})
    with pytest.raises(SchedulingError, match="at once"):
        clash.validate(h, one, comm)
    with pytest.raises(SchedulingError, match="not allowed"):
        good.validate(g, one, comm, allowed=lambda t: ["d1"])


def test_empty_dag():
    g = nx.DiGraph()
    for algorithm in (heft, peft):
        s = algorithm(g, ["d0"], lambda t, p: 1.0, lambda u, v, p, q: 0.0)
        assert (s.makespan, s.device, s.order) == (0.0, {}, {"d0": []})
    assert lower_bound(g, ["d0"], lambda t, p: 1.0) == 0.0
    assert makespan_of(g, {}, lambda t, p: 1.0, lambda u, v, p, q: 0.0) == 0.0


@pytest.mark.parametrize("algorithm", [heft, peft])
def test_deterministic(algorithm):
    """Same inputs twice give the identical schedule, down to dict order."""
    g, devs, compute, comm = make_problem(PEFT_EDGES, PEFT_COSTS)
    a = algorithm(g, devs, compute, comm)
    b = algorithm(g, devs, compute, comm)
    assert a == b
    assert list(a.device.items()) == list(b.device.items())
    assert list(a.order.items()) == list(b.order.items())


# ----------------------------------------------------------------------------------------------
# Properties on random layered DAGs
# ----------------------------------------------------------------------------------------------


@st.composite
def problems(draw):
    """Random layered DAG, 1-4 devices, random costs (some infinite), random ``allowed``."""
    n_dev = draw(st.integers(1, 4))
    devices = [f"d{k}" for k in draw(st.permutations(range(n_dev)))]
    n = draw(st.integers(1, 12))
    layer = sorted(draw(st.lists(st.integers(0, 4), min_size=n, max_size=n)))
    names = draw(st.permutations(range(n)))
    g = nx.DiGraph()
    g.add_nodes_from(names)
    pairs = [(i, j) for i in range(n) for j in range(i + 1, n) if layer[i] < layer[j]]
    keep = draw(st.lists(st.booleans(), min_size=len(pairs), max_size=len(pairs)))
    data = {}
    for (i, j), k in zip(pairs, keep):
        if k:
            g.add_edge(names[i], names[j])
            data[names[i], names[j]] = draw(st.integers(0, 30)) / 2
    cost = st.one_of(st.integers(0, 40).map(float), st.just(math.inf))
    table = {(t, d): draw(cost) for t in names for d in devices}
    use_allowed = draw(st.booleans())
    allowed = {}
    for t in names:
        subset = draw(st.lists(st.sampled_from(devices), min_size=1, unique=True))
        allowed[t] = subset if use_allowed else devices
        table[t, allowed[t][0]] = float(draw(st.integers(0, 40)))  # one finite choice at least
    link = {(p, q): draw(st.integers(1, 3)) for p in devices for q in devices if p != q}

    def compute(t, d):
        return table[t, d]

    def comm(u, v, p, q):
        return 0.0 if p == q else data[u, v] * link[p, q]

    return g, devices, compute, comm, (allowed.__getitem__ if use_allowed else None)


@settings(max_examples=60, deadline=None)
@given(problems())
def test_schedules_are_feasible_on_random_dags(problem):
    g, devices, compute, comm, allowed = problem
    bound = lower_bound(g, devices, compute, allowed=allowed)
    for algorithm in (heft, peft):
        s = algorithm(g, devices, compute, comm, allowed=allowed)
        s.validate(g, compute, comm, allowed=allowed)
        assert s.makespan >= bound - 1e-9
        for t, d in s.device.items():
            assert math.isfinite(compute(t, d))
            assert allowed is None or d in allowed(t)
        assert s == algorithm(g, devices, compute, comm, allowed=allowed)
        fixed = schedule_fixed(g, s.device, compute, comm, devices=devices)
        fixed.validate(g, compute, comm, allowed=allowed)
        assert fixed.makespan >= bound - 1e-9


@settings(max_examples=30, deadline=None)
@given(problems())
def test_one_device_without_comm_runs_back_to_back(problem):
    g, devices, compute, _, allowed = problem
    only = devices[0]
    cost = {t: (compute(t, only) if math.isfinite(compute(t, only)) else 1.0) for t in g}
    for algorithm in (heft, peft):
        s = algorithm(g, [only], lambda t, p: cost[t], lambda u, v, p, q: 0.0)
        assert s.makespan == pytest.approx(sum(cost.values()))
