"""The compile pipeline: one pass from a Graph and a machine to an immutable Plan.

``compile_graph(graph, machine, policy, cost)`` runs each stage once, in order, each a pure
function of what the stage before it returned::

    optimize_for(graph, machine)         fold, fuse (residual adds, Winograd on CPU-only machines)
    place(graph, machine, cost, policy)  device + Reason per node
      evaluate(candidate)                  partition + schedule, once per candidate placement
    the winner's partitioned graph and schedule (already computed, not recomputed)
    Plan(...) -> plan_memory(plan)       one arena per memory space

Placement never runs a later stage itself: it proposes candidate placements (its own HEFT/PEFT
schedule and the fixed "cpu" and "gpu" ones, again after a capacity move), and this module
evaluates each one as the plan will run it, partitioned and scheduled on the GPUs' copy lanes
(``Evaluations``), keeping each result so that the winner's is reused. With ``config.checks``
(``HETERO_CHECKS=1``) the verifier runs after every stage.

``hetero.compiler.compile`` (``ht.compile``) is the front door that also takes functions.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from hetero.budget import apply_budget
from hetero.config import config, resolve_machine
from hetero.cost import resolve_cost
from hetero.devices import Machine
from hetero.errors import PlacementError
from hetero.graph import Graph
from hetero.ops.registry import lookup
from hetero.passes import place as place_pass
from hetero.passes.memory import plan_memory
from hetero.passes.optimize import optimize
from hetero.passes.partition import partition
from hetero.passes.schedule import DeviceSchedule, schedule
from hetero.plan import Plan
from hetero.threads import cpu_cores
from hetero.verify import check

__all__ = ["Evaluations", "compare_policies", "compile_graph", "default_cpu_workers",
           "default_machine", "optimize_for", "place"]


# ----------------------------------------------------------------------------------------------
# The machine a graph runs on when none is named

#: Nodes with less work (flops + bytes) than this hold the GIL for their whole (short) kernel,
#: so they cannot run in parallel on two workers; they count as no work for parallelism.
GIL_BOUND_WORK = 1 << 16


def default_cpu_workers(graph: Graph, cores: int | None = None) -> int:
    """How many CPU workers suit ``graph``: its average parallelism (total work over the work on
    the critical path, work = flops + bytes of each op), capped by the widest level of the graph
    and by the cores. A chain gets one worker (with every BLAS thread); a wide graph of heavy ops
    several; a graph of tiny ops one (tiny kernels hold the GIL, so workers would only take
    turns)."""
    cores = cores or cpu_cores()
    work: dict[str, float] = {}
    level: dict[str, int] = {}
    longest: dict[str, float] = {}
    width: dict[int, int] = {}
    for node in graph.nodes:
        preds = {v.node for v in node.inputs}
        if not node.computes:
            w = 0.0
        else:
            op = lookup(node.op, node)
            ins = tuple(graph.spec(v) for v in node.inputs)
            c = op.cost_of(ins, node.outputs, node.attrs)
            w = c.flops + c.bytes
            if w < GIL_BOUND_WORK:
                w = 0.0
        work[node.name] = w
        longest[node.name] = w + max((longest[p] for p in preds), default=0.0)
        if w > 0:
            lv = 1 + max((level[p] for p in preds), default=0)
            width[lv] = width.get(lv, 0) + 1
        else:
            lv = max((level[p] for p in preds), default=0)
        level[node.name] = lv
    total = sum(work.values())
    critical = max(longest.values(), default=0.0)
    if critical <= 0:
        return 1
    parallelism = total / critical
    return max(1, min(cores, int(parallelism + 0.5), max(width.values(), default=1)))


_host: Machine | None = None  # this host as Machine.detect() saw it, detected once


def default_machine(graph: Graph) -> Machine:
    """The machine graph mode uses when the caller names none: ``config.machine`` if the user set
    one, else this host's GPUs plus as many of its CPU workers as the graph's parallelism can use
    (``default_cpu_workers``: a chain gets one worker with every BLAS thread, a wide graph of
    heavy ops several). The devices are those of one detection of the host (or of the machine
    eager mode detected), so plans share them."""
    global _host
    configured = config._machine
    if configured is not None and not config._machine_detected:
        return configured  # the user's choice
    if configured is not None:
        host = configured
    else:
        if _host is None:
            _host = Machine.detect()
        host = _host
    cpus = host.cpus()
    workers = min(len(cpus), default_cpu_workers(graph))
    if workers >= len(cpus):
        return host
    return Machine([*cpus[:workers], *host.gpus()])


# ----------------------------------------------------------------------------------------------
# Stages


def optimize_for(graph: Graph, machine: Machine) -> Graph:
    """The graph optimizer as compile runs it for ``machine``: residual-add fusion and Winograd
    convolutions pay on CPUs (VGG-19 on 2 cores: 230 -> 173 ms), so they run where the machine
    has no GPU; on a machine with a GPU the convolutions stay plain conv2d nodes for cuDNN."""
    cpu_only = not machine.gpus()
    return optimize(graph, residual=cpu_only, winograd=cpu_only)


class Evaluations:
    """Candidate placements of one graph, each partitioned and scheduled once.

    Called with a device per node, it returns the start and finish of every node of the graph
    and the makespan as the plan will run (the ``evaluate`` that ``place`` takes); ``result``
    gives the partitioned graph and schedule computed for a placement, so the winner is never
    partitioned or scheduled again."""

    def __init__(self, graph: Graph, machine: Machine, cost: Any) -> None:
        self.graph = graph
        self.machine = machine
        self.cost = cost
        self._results: dict[tuple[str, ...], tuple[Graph, DeviceSchedule]] = {}

    def _key(self, device: Mapping[str, str]) -> tuple[str, ...]:
        return tuple(device[n.name] for n in self.graph.nodes if n.name in device)

    def result(self, device: Mapping[str, str]) -> tuple[Graph, DeviceSchedule]:
        """The partitioned graph and schedule of the placement ``device``."""
        key = self._key(device)
        hit = self._results.get(key)
        if hit is None:
            parted = partition(self.graph, device, self.machine)
            hit = self._results[key] = (parted, schedule(parted, self.machine, self.cost))
        return hit

    def __call__(self, device: Mapping[str, str]
                 ) -> tuple[dict[str, float], dict[str, float], float]:
        _, sched = self.result(device)
        est = sched.estimates
        start = {n.name: est.get(n.name, (0.0, 0.0))[0] for n in self.graph.nodes}
        finish = {n.name: est.get(n.name, (0.0, 0.0))[1] for n in self.graph.nodes}
        return start, finish, sched.makespan


def place(graph: Graph, machine: Any = None, cost: Any = None,
          policy: str = "heft", *, memory: Any = None) -> place_pass.Placement:
    """``hetero.passes.place.place`` with candidates evaluated as the plan will run them
    (``ht.place``); ``memory`` budgets devices (``hetero.budget.apply_budget``)."""
    machine = apply_budget(resolve_machine(machine), memory)
    cost = resolve_cost(cost, machine)
    return place_pass.place(graph, machine, cost, policy,
                            evaluate=Evaluations(graph, machine, cost))


def compile_graph(graph: Graph, machine: Any = None, policy: str | None = None, cost: Any = None,
                  *, optimize: bool = True, memory: Any = None) -> Plan:
    """Compile ``graph`` for ``machine`` into a Plan (see the module docstring).

    Args:
        graph: the graph.
        machine: a Machine or spec string; default ``default_machine(graph)``.
        policy: "heft" (default), "peft", "cpu", "gpu" or "annotated".
        cost: "roofline" (default), "measured", or a cost model object (``resolve_cost``).
        optimize: run the graph optimizer first (``optimize_for``).
        memory: budget per device, ``{"gpu:0": "2GiB"}``: the plan holds a machine whose
            budgeted devices have that capacity (``hetero.budget.apply_budget``).
    """
    policy = policy or "heft"
    checks = config.checks
    if checks:
        check(graph)
    machine = default_machine(graph) if machine is None else resolve_machine(machine)
    machine = apply_budget(machine, memory)
    if optimize:
        graph = optimize_for(graph, machine)
        if checks:
            check(graph)
    cost = resolve_cost(cost, machine, graph)  # a measured model: this plan's threads
    evaluations = Evaluations(graph, machine, cost)
    placement = place_pass.place(graph, machine, cost, policy, evaluate=evaluations)
    parted, sched = evaluations.result(placement.device)
    if checks:
        check(parted, machine=machine)
    plan = Plan(graph=parted, machine=machine, placement=placement, queues=sched.queues,
                estimates=sched.estimates, makespan=sched.makespan,
                lower_bound=place_pass.lower_bound(graph, machine, cost), policy=policy,
                cost=cost)
    plan = plan_memory(plan)
    if checks:
        check(plan)
    return plan


def compare_policies(graph: Graph, machine: Any = None, cost: Any = None,
                     policies: Sequence[str] = place_pass.POLICIES, *, memory: Any = None
                     ) -> dict[str, float]:
    """Estimated makespan of each policy's plan of ``graph`` (as given: not optimized again)
    under one cost model and list scheduler, plus ``"lower_bound"``. A policy that cannot place
    the graph maps to ``math.inf``."""
    machine = apply_budget(resolve_machine(machine), memory)
    cost = resolve_cost(cost, machine)
    result: dict[str, float] = {}
    for p in policies:
        try:
            result[p] = place(graph, machine, cost, policy=p).makespan
        except PlacementError:
            result[p] = float("inf")
    result["lower_bound"] = place_pass.lower_bound(graph, machine, cost)
    return result
