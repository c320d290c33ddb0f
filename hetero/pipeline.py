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

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

from hetero.budget import apply_budget
from hetero.builder import GraphBuilder
from hetero.config import config, resolve_machine
from hetero.cost import resolve_cost
from hetero.devices import Machine
from hetero.errors import GraphError, PlacementError
from hetero.graph import ASSIGN, Graph, Node, TensorSpec, Value, fmt_bytes
from hetero.ops.registry import lookup
from hetero.passes import place as place_pass
from hetero.passes.memory import machine_layout, peak_bytes, plan_memory
from hetero.passes.offload import Offload, hidden_fraction, streamable
from hetero.passes.optimize import optimize
from hetero.passes.partition import partition
from hetero.passes.schedule import DeviceSchedule, schedule
from hetero.plan import Plan
from hetero.spaces import INPUT_DEVICE
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
        self._results: dict[tuple[Any, ...], tuple[Graph, DeviceSchedule]] = {}
        self._peaks: dict[tuple[Any, ...], dict[str, int]] = {}
        self._arenas: dict[tuple[Any, ...], dict[str, int]] = {}

    def _key(self, device: Mapping[str, str], offload: Offload | None = None
             ) -> tuple[Any, ...]:
        return (tuple(device[n.name] for n in self.graph.nodes if n.name in device),
                offload.key() if offload else None)

    def result(self, device: Mapping[str, str], offload: Offload | None = None
               ) -> tuple[Graph, DeviceSchedule]:
        """The partitioned graph and schedule of the placement ``device`` (with the constants
        of ``offload`` streamed)."""
        key = self._key(device, offload)
        hit = self._results.get(key)
        if hit is None:
            parted = partition(self.graph, device, self.machine, offload)
            hit = self._results[key] = (parted, schedule(parted, self.machine, self.cost))
        return hit

    def peaks(self, device: Mapping[str, str], offload: Offload | None = None
              ) -> dict[str, int]:
        """Predicted peak bytes per memory space of the plan of this placement: its exact
        memory plan (``hetero.passes.memory``) plus its resident constants."""
        key = self._key(device, offload)
        hit = self._peaks.get(key)
        if hit is None:
            parted, sched = self.result(device, offload)
            memory = machine_layout(parted, sched.queues, sched.estimates, self.machine)
            self._arenas[key] = {s: a.arena_bytes for s, a in memory.arenas.items()}
            hit = self._peaks[key] = peak_bytes(parted, memory, self.machine)
        return hit

    def arena_bytes(self, device: Mapping[str, str], offload: Offload | None, space: str
                    ) -> int:
        """The size of ``space``'s arena in the plan of this placement."""
        self.peaks(device, offload)
        return self._arenas[self._key(device, offload)].get(space, 0)

    def fits(self, device: Mapping[str, str], offload: Offload | None = None) -> bool:
        """Does every GPU's predicted peak stay within its capacity (its budget)?"""
        peaks = self.peaks(device, offload)
        for dev in self.machine.devices:
            if dev.kind != "cpu" and dev.capacity and \
                    peaks.get(dev.memory_space, 0) > dev.capacity:
                return False
        return True

    def __call__(self, device: Mapping[str, str]
                 ) -> tuple[dict[str, float], dict[str, float], float]:
        _, sched = self.result(device)
        est = sched.estimates
        start = {n.name: est.get(n.name, (0.0, 0.0))[0] for n in self.graph.nodes}
        finish = {n.name: est.get(n.name, (0.0, 0.0))[1] for n in self.graph.nodes}
        return start, finish, sched.makespan


def place(graph: Graph, machine: Any = None, cost: Any = None,
          policy: str = "heft", *, memory: Any = None) -> place_pass.Placement:
    """``hetero.passes.place.place`` with candidates evaluated as the plan will run them, and
    weights streamed where a GPU's memory cannot hold them (``ht.place``, see ``placed``);
    ``memory`` budgets devices (``hetero.budget.apply_budget``)."""
    machine = apply_budget(resolve_machine(machine), memory)
    cost = resolve_cost(cost, machine)
    return placed(graph, machine, cost, policy, Evaluations(graph, machine, cost))


def placed(graph: Graph, machine: Machine, cost: Any, policy: str,
           evaluations: Evaluations) -> place_pass.Placement:
    """The placement of ``graph`` under ``policy``, memory budgets included.

    - "heft" / "peft": the placer's own placement when it fits every GPU's memory. Otherwise the
      cheapest, by estimated makespan, of that capacity-moved placement (nodes moved to the
      CPU), placements that run as if memory were unlimited (or as the capacity-moved one)
      but stream the weights that do not fit (``hetero.passes.offload``: for each prefetch
      distance, the most weights resident, in the order they are used, that still let the
      exact memory plan fit), and the two offload policies' placements.
    - "sequential_offload": every node with a GPU kernel on a GPU, every weight streamed just
      before its node and nothing overlapped (Hugging Face accelerate's CPU offload).
    - "layer_split": the first k layers on the GPU with their weights resident, the rest on the
      CPU, k the most that fits (llama.cpp's ``-ngl``).
    - the others: ``hetero.passes.place.place``.
    """
    if policy == "sequential_offload":
        return _sequential_offload(graph, machine, cost, evaluations)
    if policy == "layer_split":
        return _layer_split(graph, machine, cost, evaluations)
    bounded = [d for d in machine.devices if d.kind != "cpu" and d.capacity]
    if policy not in ("heft", "peft") or not bounded:
        return place_pass.place(graph, machine, cost, policy, evaluate=evaluations)
    try:
        moved: place_pass.Placement | None = place_pass.place(graph, machine, cost, policy,
                                                              evaluate=evaluations)
    except PlacementError:
        moved = None
    if moved is not None and not any(r.kind == "capacity" for r in moved.reason.values()):
        return moved  # it fits without moving anything (the memory pass checks it exactly)
    free = place_pass.place(graph, machine, cost, policy, evaluate=evaluations, capacity=False)
    best = moved if moved is not None and evaluations.fits(moved.device) else None
    # streamed weights on the unconstrained placement, and on top of the capacity-moved one
    for base in (free, *([moved] if moved is not None else [])):
        for prefetch in PREFETCH_DISTANCES:
            offload = _most_resident(graph, machine, base.device, evaluations, prefetch)
            if offload is None:
                continue
            candidate = _streamed_placement(graph, machine, base, offload, evaluations, policy)
            if best is None or candidate.makespan < best.makespan * (1 - 1e-9):
                best = candidate
    # and, as the fixed "cpu" and "gpu" placements are for the placer, the offload policies'
    # own placements: the default is never estimated slower than either
    for name, build in (("layer_split", _layer_split), ("sequential_offload",
                                                        _sequential_offload)):
        try:
            candidate = build(graph, machine, cost, evaluations)
        except PlacementError:
            continue
        if not evaluations.fits(candidate.device, candidate.offload):
            continue
        if best is None or candidate.makespan < best.makespan * (1 - 1e-9):
            reasons = {n: (place_pass.Reason(r.kind, f"{r.detail} ({name}'s placement, "
                                                     f"estimated fastest under the budget)")
                           if r.kind in ("policy", "streamed") else r)
                       for n, r in candidate.reason.items()}
            best = dataclasses.replace(candidate, policy=policy, reason=reasons)
    if best is None:
        if moved is None:  # the placer's own error names what cannot move
            place_pass.place(graph, machine, cost, policy, evaluate=evaluations)
        raise PlacementError(_no_fit(graph, machine, free.device, evaluations))
    return best


#: Prefetch distances the streamed candidates try (weights a copy may run ahead of compute).
PREFETCH_DISTANCES = (1, 2, 3)


def _no_fit(graph: Graph, machine: Machine, device: Mapping[str, str],
            evaluations: Evaluations) -> str:
    everything = Offload(frozenset(n for names in streamable(graph, device, machine).values()
                                   for n in names), prefetch=0)
    peaks = evaluations.peaks(device, everything)
    parts = [f"{d.name}: {fmt_bytes(peaks.get(d.memory_space, 0))} needed with every weight "
             f"streamed, {fmt_bytes(d.capacity)} available" for d in machine.devices
             if d.kind != "cpu" and d.capacity and peaks.get(d.memory_space, 0) > d.capacity]
    return ("the graph does not fit in GPU memory, not even with its weights streamed from the "
            "host and its nodes moved to the CPU (" + "; ".join(parts) + ")")


def _most_resident(graph: Graph, machine: Machine, device: Mapping[str, str],
                   evaluations: Evaluations, prefetch: int) -> Offload | None:
    """The Offload that streams the fewest weights (the last ones used, per GPU space) and
    fits, at this prefetch distance; None if even streaming every one does not fit."""
    order = streamable(graph, device, machine)
    if not order:
        return None
    streamed = {s: list(names) for s, names in order.items()}

    def offload() -> Offload:
        return Offload(frozenset(n for names in streamed.values() for n in names), prefetch)

    if not evaluations.fits(device, offload()):
        return None
    for space, names in order.items():
        lo, hi = 0, len(names)  # resident prefix length: lo fits; find the largest
        while lo < hi:
            mid = (lo + hi + 1) // 2
            streamed[space] = names[mid:]
            if evaluations.fits(device, offload()):
                lo = mid
            else:
                hi = mid - 1
        streamed[space] = names[lo:]
    result = offload()
    return result if result else None


def _streamed_placement(graph: Graph, machine: Machine, base: place_pass.Placement,
                        offload: Offload, evaluations: Evaluations, policy: str,
                        detail: str | None = None) -> place_pass.Placement:
    """``base`` with ``offload``'s constants streamed: on the host, each with a "streamed"
    Reason quoting the bytes, the budget, the prefetch distance and the share of its copy the
    schedule hides behind compute."""
    parted, sched = evaluations.result(base.device, offload)
    peaks = evaluations.peaks(base.device, offload)
    est = sched.estimates
    device = dict(base.device)
    reasons = dict(base.reason)
    copies: dict[str, list[Node]] = {}  # streamed constant -> its copies (one per reader)
    for n in parted.nodes:
        if n.is_transfer and n.attrs.get("streamed"):
            copies.setdefault(n.inputs[0].node, []).append(n)
    how = (detail or f"prefetched {offload.prefetch} weight"
           f"{'s' if offload.prefetch != 1 else ''} ahead")
    per_gpu: dict[str, tuple[list[tuple[float, float]], str, str]] = {}
    for gpu_name in {ts[0].attrs["dst"] for ts in copies.values()}:
        # once per GPU: its kernels' intervals, and what every streamed copy into it says
        gpu = machine.device(gpu_name)
        space = gpu.memory_space
        compute = [est[n.name] for n in parted.nodes if n.computes and n.name in est
                   and sched.lanes.get(n.name) == gpu_name]
        all_copies = [est[t.name] for ts in copies.values() for t in ts
                      if t.attrs["dst"] == gpu_name]
        streamed_bytes = sum(graph.spec(Value(c, 0)).nbytes for c, ts in copies.items()
                             if ts[0].attrs["dst"] == gpu_name)
        resident = peaks.get(space, 0) - evaluations.arena_bytes(base.device, offload, space)
        why = (f"{fmt_bytes(streamed_bytes)} of weights do not fit in {gpu_name}'s "
               f"{fmt_bytes(gpu.capacity)} beside {fmt_bytes(resident)} of resident weights and "
               f"{fmt_bytes(peaks.get(space, 0) - resident)} of activations and copy buffers"
               if not offload.sequential else
               f"{policy} streams every weight ({fmt_bytes(streamed_bytes)}) into {gpu_name}")
        total = (f"the {len(all_copies)} streamed copies take "
                 f"{sum(f - s for s, f in all_copies) * 1e3:.3g} ms, "
                 f"{hidden_fraction(all_copies, compute):.0%} of it overlapped with compute")
        per_gpu[gpu_name] = (compute, why, total)
    for name in offload.streamed:
        device[name] = place_pass.HOST_DEVICE
        mine = copies[name]
        compute, why, total = per_gpu[mine[0].attrs["dst"]]
        hidden = hidden_fraction([est[t.name] for t in mine], compute)
        reasons[name] = place_pass.Reason(
            "streamed", f"{why}; copied from host memory on every run into a rotating buffer, "
            f"{how}, {hidden:.0%} of its cop{'ies' if len(mine) > 1 else 'y'} hidden behind "
            f"compute{f' ({len(mine)} uses, a copy each)' if len(mine) > 1 else ''}; {total} "
            "(estimated)")
    start = {n.name: est.get(n.name, (0.0, 0.0))[0] for n in graph.nodes}
    finish = {n.name: est.get(n.name, (0.0, 0.0))[1] for n in graph.nodes}
    return dataclasses.replace(base, device=device, reason=reasons, start=start, finish=finish,
                               makespan=sched.makespan, policy=policy, offload=offload)


def _sequential_offload(graph: Graph, machine: Machine, cost: Any,
                        evaluations: Evaluations) -> place_pass.Placement:
    base = place_pass.place(graph, machine, cost, "gpu", evaluate=evaluations, capacity=False)
    order = streamable(graph, base.device, machine)
    if not order:
        return dataclasses.replace(base, policy="sequential_offload")
    offload = Offload(frozenset(n for names in order.values() for n in names), prefetch=0,
                      sequential=True)
    if not evaluations.fits(base.device, offload):
        raise PlacementError(_no_fit(graph, machine, base.device, evaluations))
    return _streamed_placement(graph, machine, base, offload, evaluations, "sequential_offload",
                               detail="copied just before its node with nothing overlapped")


def _layer_split(graph: Graph, machine: Machine, cost: Any,
                 evaluations: Evaluations) -> place_pass.Placement:
    gpu_base = place_pass.place(graph, machine, cost, "gpu", evaluate=evaluations,
                                capacity=False)
    cpu_base = place_pass.place(graph, machine, cost, "cpu", evaluate=evaluations)
    order = streamable(graph, gpu_base.device, machine)
    position = {n.name: i for i, n in enumerate(graph.nodes)}
    consumers = graph.consumers()
    # layer boundaries: where the k-th weight (in the order they are used) is first read
    weights = sorted((position[consumers[c][0]], c) for names in order.values() for c in names)
    cuts = [p for p, _ in weights] + [len(graph.nodes)]

    def split(k: int) -> dict[str, str]:
        cut = cuts[k] if k < len(weights) else len(graph.nodes)
        device = {n.name: (gpu_base.device[n.name] if position[n.name] < cut
                           else cpu_base.device[n.name]) for n in graph.nodes}
        for node in graph.nodes:  # constants follow their first consumer
            if node.is_constant:
                readers = consumers[node.name]
                device[node.name] = device[readers[0]] if readers else place_pass.HOST_DEVICE
        return device

    lo, hi = 0, len(weights)  # k = lo fits (k = 0: everything on the CPU)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if evaluations.fits(split(mid)):
            lo = mid
        else:
            hi = mid - 1
    device = split(lo)
    start, finish, makespan = evaluations(device)
    gpu_bytes = sum(graph.spec(Value(c, 0)).nbytes for _, c in weights[:lo])
    reasons = {}
    for node in graph.nodes:
        on_gpu = machine.device(device[node.name]).kind != "cpu"
        if node.is_input or node.is_constant:
            reasons[node.name] = cpu_base.reason[node.name] if not on_gpu else \
                gpu_base.reason[node.name]
        else:
            reasons[node.name] = place_pass.Reason(
                "policy", f"layer_split: the first {lo} of {len(weights)} weights "
                f"({fmt_bytes(gpu_bytes)}) are the most that fit on the GPU; this node is "
                f"{'before' if on_gpu else 'after'} the split")
    return place_pass.Placement(device=device, reason=reasons, start=start, finish=finish,
                                makespan=makespan, policy="layer_split")


def donated(graph: Graph, donate: Mapping[int, int]) -> Graph:
    """``graph`` with each donated input written in place: for ``donate[i] = j`` an ``assign``
    node on the host writes output j into input i's buffer once every reader of input i has run
    (order-only inputs), and output j becomes the assign's empty output (``Plan.run`` returns
    the input array itself there). Raises GraphError for a pair that cannot be donated."""
    n_in, n_out = len(graph.inputs), len(graph.outputs)
    outs = list(graph.outputs)
    seen_out: set[int] = set()
    for i, j in donate.items():
        if not (0 <= i < n_in and 0 <= j < n_out):
            raise GraphError(f"donate {{{i}: {j}}}: graph {graph.name!r} has {n_in} inputs and "
                             f"{n_out} outputs")
        if j in seen_out:
            raise GraphError(f"donate: output {j} is donated into two inputs")
        seen_out.add(j)
        want, got = graph.node(graph.inputs[i]).outputs[0], graph.spec(outs[j])
        if want != got:
            raise GraphError(f"donate {{{i}: {j}}}: output {j} ({got}) does not match input "
                             f"{graph.inputs[i]!r} ({want})")
        if outs[j].node in graph.inputs:
            raise GraphError(f"donate {{{i}: {j}}}: output {j} is a graph input itself")
    consumers = graph.consumers()
    b = GraphBuilder(graph.name, taken=(n.name for n in graph.nodes))
    for node in graph.nodes:
        if node.is_constant:
            b.add_constant(node, graph.constants[node.name])
        else:
            b.add(node)
    for i, j in sorted(donate.items()):
        name = graph.inputs[i]
        value = outs[j]
        readers = [r for r in consumers[name] if r != value.node]
        node = b.add(Node(name=b.fresh(f"{name}_assign"), op=ASSIGN,
                          inputs=(value, Value(name, 0), *(Value(r, 0) for r in readers)),
                          outputs=(TensorSpec((0,), graph.spec(value).dtype),),
                          device=INPUT_DEVICE, soft=False, where=graph.node(value.node).where))
        outs[j] = Value(node.name, 0)
    return b.build(tuple(outs), inputs=graph.inputs)


def compile_graph(graph: Graph, machine: Any = None, policy: str | None = None, cost: Any = None,
                  *, optimize: bool = True, memory: Any = None,
                  donate: Mapping[int, int] | None = None) -> Plan:
    """Compile ``graph`` for ``machine`` into a Plan (see the module docstring).

    Args:
        graph: the graph.
        machine: a Machine or spec string; default ``default_machine(graph)``.
        policy: "heft" (default), "peft", "cpu", "gpu" or "annotated".
        cost: "roofline" (default), "measured", or a cost model object (``resolve_cost``).
        optimize: run the graph optimizer first (``optimize_for``).
        memory: budget per device, ``{"gpu:0": "2GiB"}``: the plan holds a machine whose
            budgeted devices have that capacity (``hetero.budget.apply_budget``).
        donate: ``{input index: output index}``: output j is written in place into input i's
            array at the end of each run, after every reader of it (``donated``); ``Plan.run``
            returns that array as output j. A train step donates its parameters and optimizer
            state: they are updated in place, and no new arrays are made for them per step.
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
    if donate:  # after the optimizer, so that its fusions see the graph the user wrote
        graph = donated(graph, donate)
    cost = resolve_cost(cost, machine, graph)  # a measured model: this plan's threads
    evaluations = Evaluations(graph, machine, cost)
    placement = placed(graph, machine, cost, policy, evaluations)
    parted, sched = evaluations.result(placement.device, placement.offload)
    if checks:
        check(parted, machine=machine)
    plan = Plan(graph=parted, machine=machine, placement=placement, queues=sched.queues,
                estimates=sched.estimates, makespan=sched.makespan,
                lower_bound=max(place_pass.lower_bound(graph, machine, cost),
                                copy_bound(parted, sched)), policy=policy, cost=cost,
                donate={int(i): int(j) for i, j in (donate or {}).items()})
    plan = plan_memory(plan)
    if checks:
        check(plan)
    return plan


def copy_bound(graph: Graph, sched: DeviceSchedule) -> float:
    """The time the busiest copy engine needs for a plan's streamed weights alone: no run of
    that plan can be faster (its copy bound; 0 without streamed weights)."""
    busy: dict[str, float] = {}
    for node in graph.nodes:
        if node.is_transfer and node.attrs.get("streamed") and node.name in sched.estimates:
            s, f = sched.estimates[node.name]
            lane = sched.lanes[node.name]
            busy[lane] = busy.get(lane, 0.0) + (f - s)
    return max(busy.values(), default=0.0)


def compare_policies(graph: Graph, machine: Any = None, cost: Any = None,
                     policies: Sequence[str] | None = None, *, memory: Any = None
                     ) -> dict[str, float]:
    """Estimated makespan of each policy's plan of ``graph`` (as given: not optimized again)
    under one cost model and list scheduler, plus ``"lower_bound"`` (the compute bound). A
    policy that cannot place the graph maps to ``math.inf``. Default policies: the placer's
    (``PLACER_POLICIES``), and with a ``memory`` budget the offload ones too."""
    if policies is None:
        policies = place_pass.PLACER_POLICIES + (place_pass.OFFLOAD_POLICIES if memory else ())
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
