"""compile: a function or graph and a machine in, an immutable Plan out.

Pipeline (each stage a pure function): trace (when given a function) -> optimize (when
``hetero.passes.optimize`` provides ``optimize(graph)``) -> place -> partition -> schedule ->
plan_memory (when ``hetero.passes.memory`` provides it). With ``config.checks`` (or
``HETERO_CHECKS=1``) the verifier runs after every stage.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Sequence
from typing import Any

from hetero.config import config
from hetero.cost import resolve_cost
from hetero.errors import HeteroError
from hetero.graph import Graph, check
from hetero.plan import Plan


def _optional(module: str, attr: str) -> Any:
    """``module.attr`` if that module exists, else None (later stages plug in here)."""
    try:
        if importlib.util.find_spec(module) is None:
            return None
    except ModuleNotFoundError:
        return None
    return getattr(importlib.import_module(module), attr, None)


def as_graph(fn_or_graph: Any, example_inputs: Sequence[Any] | None = None) -> Graph:
    """The Graph of a Graph, an ``@function``, or a plain function traced on ``example_inputs``."""
    if isinstance(fn_or_graph, Graph):
        return fn_or_graph
    from hetero.tracing import Function

    if not callable(fn_or_graph):
        raise HeteroError(f"compile takes a Graph or a function, got {type(fn_or_graph).__name__}")
    if example_inputs is None:
        raise HeteroError("compile of a function needs example_inputs=(...) to trace it "
                          "(arrays or ht.Tensors of the shapes and dtypes it will be called with)")
    fn = fn_or_graph if isinstance(fn_or_graph, Function) else Function(fn_or_graph)
    return fn.graph(*example_inputs)


_host: Any = None  # this host as Machine.detect() saw it, detected once


def default_machine(graph: Graph) -> Any:
    """The machine graph mode uses when the caller names none: ``config.machine`` if the user set
    one, else this host's GPUs plus as many of its CPU workers as the graph's parallelism can use
    (``hetero.executor.default_cpu_workers``: a chain gets one worker with every BLAS thread, a
    wide graph of heavy ops several). The devices are those of one detection of the host (or of
    the machine eager mode detected), so plans share them."""
    global _host
    from hetero.devices import Machine
    from hetero.executor import default_cpu_workers

    configured = getattr(config, "_machine", None)
    if configured is not None and not getattr(config, "_machine_detected", False):
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


def compile(fn_or_graph: Any, machine: Any = None, policy: str | None = None, cost: Any = None,
            example_inputs: Sequence[Any] | None = None, *, optimize: bool = True) -> Plan:
    """Compile ``fn_or_graph`` for ``machine`` into a Plan: place, partition, schedule, memory.

    Args:
        fn_or_graph: a Graph, an ``@ht.function``, or a plain function (then ``example_inputs``
            are required to trace it).
        machine: a Machine or spec string ("cpu:2,sim:1"); default ``config.machine`` when the
            user set one, else this host with as many CPU workers as the graph can use
            (``default_machine``).
        policy: placement policy: "heft" (default), "peft", "cpu", "gpu", "annotated". An
            ``@ht.function(machine=..., policy=...)`` supplies both when they are not given.
        cost: "roofline" (default, from the machine's specs), "measured" (times measured by
            ``ht.calibrate`` and by profiled runs of earlier plans, cached on disk; the plan keeps
            recording into it on every ``run(..., profile=True)``), or a cost model object.
        example_inputs: arrays (or Tensors) to trace a function with.
        optimize: run the graph optimizer first (on a machine without a GPU also residual-add
            fusion and Winograd for 3x3 convolutions, which pay on CPUs).

    Returns:
        The Plan; ``plan.run(*inputs)`` runs it.
    """
    from hetero.passes.partition import partition
    from hetero.passes.place import lower_bound, place, resolve_machine
    from hetero.passes.schedule import schedule
    from hetero.tracing import Function

    if isinstance(fn_or_graph, Function):  # @ht.function(machine=..., policy=...) brings its own
        machine = machine if machine is not None else fn_or_graph.machine
        policy = policy or fn_or_graph.policy
    policy = policy or "heft"
    graph = as_graph(fn_or_graph, example_inputs)
    checks = config.checks
    if checks:
        check(graph)
    machine = default_machine(graph) if machine is None else resolve_machine(machine)
    optimizer = _optional("hetero.passes.optimize", "optimize") if optimize else None
    if optimizer is not None:
        # Residual fusion and Winograd pay on CPUs (VGG-19 on 2 cores: 230 -> 173 ms); on a
        # machine with a GPU the convolutions should stay plain conv2d nodes for cuDNN.
        cpu_only = not machine.gpus()
        graph = optimizer(graph, residual=cpu_only, winograd=cpu_only)
        if checks:
            check(graph)
    cost = resolve_cost(cost, machine, graph)  # a measured model: this plan's threads
    placement = place(graph, machine, cost, policy=policy)
    parted = partition(graph, placement, machine)
    if checks:
        check(parted, machine=machine)
    sched = schedule(parted, machine, cost)
    plan = Plan(graph=parted, machine=machine, placement=placement, queues=sched.queues,
                estimates=sched.estimates, makespan=sched.makespan,
                lower_bound=lower_bound(graph, machine, cost), policy=policy, cost=cost)
    plan_memory = _optional("hetero.passes.memory", "plan_memory")
    if plan_memory is not None:
        plan = plan_memory(plan)
    if checks:
        check(plan)
    return plan
