"""List scheduling of a task DAG on heterogeneous devices: HEFT, PEFT and fixed assignments.

This module is the pure scheduling core shared by the placer and the plan scheduler. It knows
nothing about tensors: a task is any hashable vertex of a ``networkx.DiGraph``, a device is any
hashable id, and the caller supplies two cost functions:

- ``compute(task, device) -> float``: run time of ``task`` on ``device``; ``math.inf`` means
  "cannot run there" and such a device is never chosen.
- ``comm(u, v, src, dst) -> float``: delay between the end of ``u`` on ``src`` and the moment
  ``v`` may start on ``dst``. It is the caller's function, so it decides what a same-device edge
  costs (usually 0).

An optional ``allowed(task) -> iterable of devices`` narrows where a task may run (None: anywhere).
A task whose allowed, finite-cost devices are none raises :class:`SchedulingError` naming it.

Algorithms
----------
``heft``: Heterogeneous Earliest Finish Time (Topcuoglu, Hariri and Wu, IEEE TPDS 2002). Priority
is the upward rank ``rank_u(t) = w̄(t) + max over successors s of (c̄(t, s) + rank_u(s))``; the
chosen device is the one with the smallest earliest finish time (EFT).

``peft``: Predict Earliest Finish Time (Arabnejad and Barbosa, IEEE TPDS 2014). The optimistic
cost table ``OCT(t, p) = max over successors s of min over devices q of (OCT(s, q) + w(s, q) +
[c̄(t, s) if q != p])`` is the cost of the rest of the graph if ``t`` ran on ``p`` and every later
task found its best device free. Priority is ``rank_oct(t)`` = mean of ``OCT(t, .)``; the chosen
device minimises ``EFT(t, p) + OCT(t, p)``.

``schedule_fixed`` / ``makespan_of``: the device of every task is given (a "cpu" or "gpu" policy,
say); tasks are list-scheduled in upward-rank order computed with the assigned costs, by the same
insertion-based engine, so fixed policies and HEFT are compared on equal terms.

Averages
--------
``w̄(t)`` is the mean of ``compute(t, p)`` over the allowed devices of ``t`` with finite cost.
``c̄(u, v)`` is the mean of ``comm(u, v, p, q)`` over the pairs of distinct devices ``p != q``
allowed for ``u`` and ``v`` (as in both papers, an average over links; a same-device pair is not a
link). When no distinct pair exists (both tasks pinned to one device), ``c̄`` is
``comm(u, v, p, p)``.

State of the engine (one call, nothing global)
----------------------------------------------
- ``pending[t]``: number of predecessors of ``t`` not yet scheduled.
- ``ready``: a heap of the tasks whose predecessors are all scheduled, keyed by
  ``(-priority, position of the task in dag.nodes)``.
- ``busy[p]``: the intervals ``(start, finish, position)`` already booked on device ``p``, sorted.
- ``device``, ``start``, ``finish``: the decisions so far.

Policy
------
Repeat until ``ready`` is empty: pop the ready task with the highest priority; for every candidate
device compute the data-ready time ``max over predecessors u of finish[u] + comm(u, t, device[u],
p)`` and the earliest start at or after it that fits ``compute(t, p)`` into ``busy[p]``
(insertion-based: an idle gap between two booked tasks may be used); pick a device by the
algorithm's rule; book it; release successors whose ``pending`` count reaches zero. Taking the
highest-priority *ready* task (PEFT's ready list) equals HEFT's sorted list whenever ranks
strictly decrease along edges, and stays valid when zero costs make them tie.

Tie-breaking (deterministic, never by hash order or by names)
-------------------------------------------------------------
Priorities and finish times are compared after rounding to 12 significant digits, so sums that
differ only by floating-point noise count as equal. Equal priorities go to the task that comes
first in ``dag.nodes`` (insertion order); equal costs go to the device that comes first in
``devices``. HEFT picks the smallest EFT; PEFT the smallest ``EFT + OCT``, then the smallest EFT.
Renaming tasks while keeping their insertion order therefore never changes a schedule.

Cost: O(E·P²) calls of ``comm`` for the averages, O(V·P) calls of ``compute``, O(E·P) calls of
``comm`` and O(V²·P) interval checks for the list phase.

Example (two tasks, a fast and a slow device, a costly link):

>>> import networkx as nx
>>> g = nx.DiGraph([("a", "b")])
>>> cost = {("a", "fast"): 1.0, ("a", "slow"): 4.0, ("b", "fast"): 1.0, ("b", "slow"): 4.0}
>>> s = heft(g, ["fast", "slow"], lambda t, p: cost[t, p],
...          lambda u, v, p, q: 0.0 if p == q else 10.0)
>>> s.device, s.makespan
({'a': 'fast', 'b': 'fast'}, 2.0)
"""

from __future__ import annotations

import heapq
import itertools
import math
from bisect import bisect_right, insort
from collections import Counter
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from hetero.errors import PlacementError

__all__ = [
    "Schedule",
    "SchedulingError",
    "interval_length",
    "interval_overlap",
    "merge_intervals",
    "heft",
    "lower_bound",
    "makespan_of",
    "mean_comm",
    "optimistic_cost_table",
    "peft",
    "schedule_fixed",
    "upward_rank",
]

Task = Hashable
Device = Hashable
ComputeFn = Callable[[Any, Any], float]
CommFn = Callable[[Any, Any, Any, Any], float]
AllowedFn = Callable[[Any], Iterable[Any]]


class SchedulingError(PlacementError, ValueError):
    """A DAG, device list or cost that no schedule can be built from (names the task)."""


# ----------------------------------------------------------------------------------------------
# Result
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Schedule:
    """Where and when every task runs.

    Attributes:
        device: task -> device it runs on.
        start, finish: task -> estimated start and finish time.
        makespan: latest finish time (0 for an empty DAG).
        order: device -> its tasks in start order (every device of the call has an entry).
    """

    device: dict
    start: dict
    finish: dict
    makespan: float
    order: dict
    #: task -> the options it chose from: ``(device, inputs ready, start, finish)`` per allowed
    #: device, in ``devices`` order (what a placement reason explains a choice with)
    options: dict = field(default_factory=dict, compare=False, repr=False)

    def validate(
        self,
        dag,
        compute: ComputeFn,
        comm: CommFn,
        *,
        allowed: AllowedFn | None = None,
        rel_tol: float = 1e-9,
    ) -> None:
        """Raise :class:`SchedulingError` unless this schedule is feasible for ``dag``.

        Checks: every task is placed once (on an allowed device when ``allowed`` is given) and
        runs for ``compute(task, device)``; every task starts after each predecessor's finish
        plus ``comm``; no device runs two tasks at once; ``order`` and ``makespan`` agree.
        """
        validate(self, dag, compute, comm, allowed=allowed, rel_tol=rel_tol)


def validate(
    schedule: Schedule,
    dag,
    compute: ComputeFn,
    comm: CommFn,
    *,
    allowed: AllowedFn | None = None,
    rel_tol: float = 1e-9,
) -> None:
    """Module-level form of :meth:`Schedule.validate`."""

    def close_or_after(a: float, b: float) -> bool:  # a >= b up to rounding
        return a >= b - rel_tol * max(1.0, abs(a), abs(b))

    s = schedule
    tasks = list(dag.nodes)
    if set(s.device) != set(tasks) or set(s.start) != set(tasks) or set(s.finish) != set(tasks):
        missing = [t for t in tasks if t not in s.device]
        raise SchedulingError(f"schedule does not cover the DAG; unplaced tasks: {missing!r}")
    for t in tasks:
        d = s.device[t]
        if allowed is not None and d not in set(allowed(t)):
            raise SchedulingError(f"task {_name(dag, t)} runs on {d!r}, which it is not allowed")
        w = float(compute(t, d))
        if not math.isfinite(w):
            raise SchedulingError(f"task {_name(dag, t)} runs on {d!r} where its cost is {w}")
        dur = s.finish[t] - s.start[t]
        if not (close_or_after(dur, w) and close_or_after(w, dur)) or s.start[t] < 0:
            raise SchedulingError(
                f"task {_name(dag, t)} on {d!r} runs [{s.start[t]}, {s.finish[t]}], "
                f"but its cost there is {w}")
    for u, v in dag.edges:
        need = s.finish[u] + float(comm(u, v, s.device[u], s.device[v]))
        if not close_or_after(s.start[v], need):
            raise SchedulingError(
                f"task {_name(dag, v)} starts at {s.start[v]} on {s.device[v]!r}, before its "
                f"input from {_name(dag, u)} ({s.device[u]!r}) arrives at {need}")
    placed = Counter(t for ts in s.order.values() for t in ts)
    if placed != Counter(tasks) or any(
        s.device[t] != d for d, ts in s.order.items() for t in ts
    ):
        raise SchedulingError("schedule.order does not list each task once under its device")
    for d, ts in s.order.items():
        for a, b in zip(ts, ts[1:]):
            if not close_or_after(s.start[b], s.finish[a]):
                raise SchedulingError(
                    f"device {d!r} runs {_name(dag, a)} [{s.start[a]}, {s.finish[a]}] and "
                    f"{_name(dag, b)} [{s.start[b]}, {s.finish[b]}] at once")
    latest = max(s.finish.values(), default=0.0)
    if not (close_or_after(s.makespan, latest) and close_or_after(latest, s.makespan)):
        raise SchedulingError(f"makespan {s.makespan} is not the latest finish time {latest}")


# ----------------------------------------------------------------------------------------------
# Public algorithms
# ----------------------------------------------------------------------------------------------


def heft(
    dag,
    devices: Sequence[Device],
    compute: ComputeFn,
    comm: CommFn,
    *,
    allowed: AllowedFn | None = None,
) -> Schedule:
    """HEFT: schedule in decreasing upward rank, each task on the device of earliest finish."""
    devices = _check_devices(devices)
    cand, w = _candidates_and_costs(dag, devices, compute, allowed)
    rank = _upward_rank(dag, w, lambda u, v: mean_comm(u, v, cand[u], cand[v], comm))

    def select(task, options):
        return min(options, key=lambda o: (_q(o[2]), o[3]))

    return _list_schedule(dag, devices, cand, w, comm, rank, select)


def peft(
    dag,
    devices: Sequence[Device],
    compute: ComputeFn,
    comm: CommFn,
    *,
    allowed: AllowedFn | None = None,
) -> Schedule:
    """PEFT: schedule in decreasing rank_oct, each task on the device of least EFT + OCT."""
    devices = _check_devices(devices)
    cand, w = _candidates_and_costs(dag, devices, compute, allowed)
    oct_ = _oct(dag, cand, w, comm)
    rank = {t: sum(oct_[t].values()) / len(oct_[t]) for t in dag.nodes}

    def select(task, options):
        return min(options, key=lambda o: (_q(o[2] + oct_[task][o[0]]), _q(o[2]), o[3]))

    return _list_schedule(dag, devices, cand, w, comm, rank, select)


def schedule_fixed(
    dag,
    assignment: Mapping[Task, Device],
    compute: ComputeFn,
    comm: CommFn,
    *,
    devices: Sequence[Device] | None = None,
) -> Schedule:
    """List-schedule a DAG whose device per task is given, in upward-rank order.

    The rank uses the assigned costs (``compute(t, assignment[t])`` and ``comm`` between the
    assigned devices); start times come from the same insertion-based engine as :func:`heft`.
    ``devices`` (default: the assigned devices in first-use order) only sets the keys of
    ``Schedule.order``.
    """
    missing = [t for t in dag.nodes if t not in assignment]
    if missing:
        raise SchedulingError(f"assignment has no device for task {_name(dag, missing[0])}")
    if devices is None:
        devices = list(dict.fromkeys(assignment[t] for t in dag.nodes))
    devices = _check_devices(devices, allow_empty=len(dag) == 0)
    known = set(devices)
    cand: dict = {}
    w: dict = {}
    for t in dag.nodes:
        d = assignment[t]
        if d not in known:
            raise SchedulingError(f"task {_name(dag, t)} is assigned to unknown device {d!r}")
        cost = _cost(dag, compute, t, d)
        if math.isinf(cost):
            raise SchedulingError(f"task {_name(dag, t)} is assigned to {d!r}, where it cannot run")
        cand[t] = (d,)
        w[t] = {d: cost}
    rank = _upward_rank(dag, w, lambda u, v: _comm(dag, comm, u, v, cand[u][0], cand[v][0]))
    return _list_schedule(dag, devices, cand, w, comm, rank, lambda task, options: options[0])


def makespan_of(dag, assignment: Mapping[Task, Device], compute: ComputeFn, comm: CommFn) -> float:
    """Makespan of a fixed assignment, list-scheduled as in :func:`schedule_fixed`."""
    return schedule_fixed(dag, assignment, compute, comm).makespan


def upward_rank(
    dag,
    devices: Sequence[Device],
    compute: ComputeFn,
    comm: CommFn,
    *,
    allowed: AllowedFn | None = None,
) -> dict:
    """HEFT's upward rank of every task: mean cost plus the longest mean-cost path to an exit."""
    devices = _check_devices(devices)
    cand, w = _candidates_and_costs(dag, devices, compute, allowed)
    return _upward_rank(dag, w, lambda u, v: mean_comm(u, v, cand[u], cand[v], comm))


def optimistic_cost_table(
    dag,
    devices: Sequence[Device],
    compute: ComputeFn,
    comm: CommFn,
    *,
    allowed: AllowedFn | None = None,
) -> dict:
    """PEFT's optimistic cost table: task -> {allowed device -> OCT}."""
    devices = _check_devices(devices)
    cand, w = _candidates_and_costs(dag, devices, compute, allowed)
    return _oct(dag, cand, w, comm)


def lower_bound(
    dag,
    devices: Sequence[Device],
    compute: ComputeFn,
    *,
    allowed: AllowedFn | None = None,
) -> float:
    """A makespan no schedule can beat: max(critical path, total work / device count).

    The critical path puts every task on its fastest allowed device and ignores communication;
    the work bound spreads the sum of those fastest times evenly over all devices.
    """
    devices = _check_devices(devices)
    cand, w = _candidates_and_costs(dag, devices, compute, allowed)
    fastest = {t: min(w[t].values()) for t in dag.nodes}
    path: dict = {}
    for t in _topological(dag):
        path[t] = fastest[t] + max((path[u] for u in dag.predecessors(t)), default=0.0)
    critical = max(path.values(), default=0.0)
    return max(critical, sum(fastest.values()) / len(devices))


def mean_comm(u, v, src_devices: Sequence, dst_devices: Sequence, comm: CommFn) -> float:
    """c̄(u, v): mean of ``comm`` over distinct device pairs (same-device pair if none)."""
    total = 0.0
    count = 0
    for p in src_devices:
        for q in dst_devices:
            if p != q:
                total += float(comm(u, v, p, q))
                count += 1
    if count:
        return total / count
    return float(comm(u, v, src_devices[0], dst_devices[0]))


# ----------------------------------------------------------------------------------------------
# Engine
# ----------------------------------------------------------------------------------------------


def _list_schedule(dag, devices, cand, w, comm, rank, select) -> Schedule:
    """Insertion-based list scheduling; ``select(task, options)`` picks one option.

    An option is ``(device, start, finish, device position)``, offered in ``devices`` order.
    """
    position = {t: i for i, t in enumerate(dag.nodes)}
    device_position = {d: i for i, d in enumerate(devices)}
    pending = {t: dag.in_degree(t) for t in dag.nodes}
    ready = [(-_q(rank[t]), position[t], t) for t in dag.nodes if pending[t] == 0]
    heapq.heapify(ready)
    busy: dict = {d: [] for d in devices}
    device: dict = {}
    start: dict = {}
    finish: dict = {}
    considered: dict = {}
    while ready:
        _, _, t = heapq.heappop(ready)
        options = []
        arrivals = []
        for d in cand[t]:
            arrival = 0.0
            for u in dag.predecessors(t):
                arrival = max(arrival, finish[u] + _comm(dag, comm, u, t, device[u], d))
            begin = _earliest_start(busy[d], arrival, w[t][d])
            options.append((d, begin, begin + w[t][d], device_position[d]))
            arrivals.append(arrival)
        considered[t] = tuple((o[0], a, o[1], o[2]) for o, a in zip(options, arrivals))
        d, begin, end, _ = select(t, options)
        if math.isinf(end):
            raise SchedulingError(f"task {_name(dag, t)} cannot finish in finite time on any "
                                  "allowed device (infinite communication cost?)")
        insort(busy[d], (begin, end, position[t]))
        device[t], start[t], finish[t] = d, begin, end
        for s in dag.successors(t):
            pending[s] -= 1
            if pending[s] == 0:
                heapq.heappush(ready, (-_q(rank[s]), position[s], s))
    if len(device) != len(position):
        raise SchedulingError("the task graph has a cycle; it cannot be scheduled")
    by_position = {i: t for t, i in position.items()}
    order = {d: [by_position[i] for _, _, i in busy[d]] for d in devices}
    return Schedule(device=device, start=start, finish=finish,
                    makespan=max(finish.values(), default=0.0), order=order, options=considered)


def _earliest_start(booked: list, arrival: float, duration: float) -> float:
    """First time >= ``arrival`` at which ``duration`` fits between the ``booked`` intervals."""
    # Intervals do not overlap, so their ends are sorted too: skip those over before arrival.
    candidate = arrival
    first = bisect_right(booked, arrival, key=_end)
    for begin, end, _ in itertools.islice(booked, first, None):
        if candidate + duration <= begin:
            return candidate
        candidate = max(candidate, end)
    return candidate


def _end(interval: tuple) -> float:
    return interval[1]


def _upward_rank(dag, w, cbar) -> dict:
    rank: dict = {}
    for t in reversed(_topological(dag)):
        mean_w = sum(w[t].values()) / len(w[t])
        rank[t] = mean_w + max((cbar(t, s) + rank[s] for s in dag.successors(t)), default=0.0)
    return rank


def _oct(dag, cand, w, comm) -> dict:
    table: dict = {}
    for t in reversed(_topological(dag)):
        row = {}
        succ = [(s, mean_comm(t, s, cand[t], cand[s], comm)) for s in dag.successors(t)]
        for p in cand[t]:
            worst = 0.0
            for s, cbar in succ:
                best = min(table[s][q] + w[s][q] + (0.0 if q == p else cbar) for q in cand[s])
                worst = max(worst, best)
            row[p] = worst
        table[t] = row
    return table


# ----------------------------------------------------------------------------------------------
# Inputs
# ----------------------------------------------------------------------------------------------


def _check_devices(devices, *, allow_empty: bool = False) -> tuple:
    devices = tuple(devices)
    if not devices and not allow_empty:
        raise SchedulingError("no devices to schedule on")
    if len(set(devices)) != len(devices):
        raise SchedulingError(f"devices are not unique: {devices!r}")
    return devices


def _candidates_and_costs(dag, devices, compute, allowed):
    """Per task: the allowed devices with finite cost (in ``devices`` order) and those costs."""
    _topological(dag)  # a cycle is reported before any cost is asked for
    known = set(devices)
    cand: dict = {}
    w: dict = {}
    for t in dag.nodes:
        if allowed is None:
            wanted = devices
        else:
            chosen = set(allowed(t))
            unknown = chosen - known
            if unknown:
                raise SchedulingError(f"task {_name(dag, t)} is allowed on unknown devices "
                                      f"{sorted(map(repr, unknown))}; devices are {devices!r}")
            wanted = [d for d in devices if d in chosen]
        costs = {}
        for d in wanted:
            c = _cost(dag, compute, t, d)
            if not math.isinf(c):
                costs[d] = c
        if not costs:
            why = "no device is allowed" if not wanted else "its cost is infinite on every device"
            raise SchedulingError(f"task {_name(dag, t)} cannot be placed: {why} "
                                  f"(allowed: {list(wanted)!r})")
        cand[t] = tuple(costs)
        w[t] = costs
    return cand, w


def _cost(dag, compute, t, d) -> float:
    c = float(compute(t, d))
    if not c >= 0.0:  # also rejects NaN
        raise SchedulingError(f"compute cost of task {_name(dag, t)} on {d!r} is {c}")
    return c


def _comm(dag, comm, u, v, p, q) -> float:
    c = float(comm(u, v, p, q))
    if not c >= 0.0:
        raise SchedulingError(
            f"communication cost {_name(dag, u)} -> {_name(dag, v)} ({p!r} -> {q!r}) is {c}")
    return c


def _topological(dag) -> list:
    """Topological order, ties by position in ``dag.nodes``; a cycle raises SchedulingError."""
    import networkx as nx

    position = {t: i for i, t in enumerate(dag.nodes)}
    try:
        return list(nx.lexicographical_topological_sort(dag, key=position.__getitem__))
    except nx.NetworkXUnfeasible:
        cycle = nx.find_cycle(dag)
        names = " -> ".join(_name(dag, u) for u, _ in cycle)
        raise SchedulingError(f"the task graph has a cycle: {names}") from None


def _name(dag, t) -> str:
    """How a message names a task: the IR node's label when the vertex carries one."""
    node = dag.nodes[t].get("node") if t in dag else None
    label = getattr(node, "label", None)
    return label if isinstance(label, str) else repr(t)


def _q(x: float) -> float:
    """Round to 12 significant digits so floating-point noise cannot decide a tie."""
    return float(f"{x:.12g}")


# ----------------------------------------------------------------------------------------------
# Intervals of time (a profile's busy spans, a schedule's copies against its kernels)


def merge_intervals(intervals: Iterable[tuple[float, float]]) -> list[tuple[float, float]]:
    """The union of ``(start, end)`` intervals as a sorted list of disjoint ones."""
    merged: list[list[float]] = []
    for lo, hi in sorted(intervals):
        if merged and lo <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], hi)
        else:
            merged.append([lo, hi])
    return [(lo, hi) for lo, hi in merged]


def interval_length(intervals: Iterable[tuple[float, float]]) -> float:
    return sum(hi - lo for lo, hi in intervals)


def interval_overlap(a: Sequence[tuple[float, float]], b: Sequence[tuple[float, float]]) -> float:
    """Total length of the intersection of two sorted, disjoint interval lists."""
    i = j = 0
    total = 0.0
    while i < len(a) and j < len(b):
        lo, hi = max(a[i][0], b[j][0]), min(a[i][1], b[j][1])
        if hi > lo:
            total += hi - lo
        if a[i][1] < b[j][1]:
            i += 1
        else:
            j += 1
    return total
