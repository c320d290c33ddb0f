"""compile: a function or graph and a machine in, an immutable Plan out (``ht.compile``), and
``calibrate`` (``ht.calibrate``), which times the kernels such a plan runs.

Both take what users hold: a Graph, an ``@ht.function``, or a plain function traced on example
inputs. The work is ``hetero.pipeline``'s: ``compile_graph`` (optimize, place, partition,
schedule, memory) and ``optimize_for`` (the graph compile places, so calibration times the very
kernels compile will look up).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from hetero.config import resolve_machine
from hetero.cost import MeasuredCost, calibrate_graph
from hetero.errors import HeteroError
from hetero.function import Function
from hetero.graph import Graph
from hetero.pipeline import compile_graph, optimize_for
from hetero.plan import Plan

__all__ = ["as_graph", "calibrate", "compile"]


def as_graph(fn_or_graph: Any, example_inputs: Sequence[Any] | None = None) -> Graph:
    """The Graph of a Graph, an ``@function``, or a plain function traced on ``example_inputs``."""
    if isinstance(fn_or_graph, Graph):
        return fn_or_graph
    if not callable(fn_or_graph):
        raise HeteroError(f"compile takes a Graph or a function, got {type(fn_or_graph).__name__}")
    if example_inputs is None:
        raise HeteroError("compile of a function needs example_inputs=(...) to trace it "
                          "(arrays or ht.Tensors of the shapes and dtypes it will be called with)")
    fn = fn_or_graph if isinstance(fn_or_graph, Function) else Function(fn_or_graph)
    return fn.graph(*example_inputs)


def compile(fn_or_graph: Any, machine: Any = None, policy: str | None = None, cost: Any = None,
            example_inputs: Sequence[Any] | None = None, *, optimize: bool = True,
            memory: Any = None, donate: Mapping[int, int] | None = None) -> Plan:
    """Compile ``fn_or_graph`` for ``machine`` into a Plan: place, partition, schedule, memory.

    Args:
        fn_or_graph: a Graph, an ``@ht.function``, or a plain function (then ``example_inputs``
            are required to trace it).
        machine: a Machine or spec string ("cpu:2,sim:1"); default ``config.machine`` when the
            user set one, else this host with as many CPU workers as the graph can use
            (``hetero.pipeline.default_machine``).
        policy: placement policy: "heft" (default), "peft", "cpu", "gpu", "annotated". An
            ``@ht.function(machine=..., policy=...)`` supplies both when they are not given.
        cost: "roofline" (default, from the machine's specs), "measured" (times measured by
            ``ht.calibrate`` and by profiled runs of earlier plans, cached on disk; the plan keeps
            recording into it on every ``run(..., profile=True)``), or a cost model object.
        example_inputs: arrays (or Tensors) to trace a function with.
        optimize: run the graph optimizer first (on a machine without a GPU also residual-add
            fusion and Winograd for 3x3 convolutions, which pay on CPUs).
        memory: memory budget per device, ``{"gpu:0": "2GiB"}`` (sizes like "512MiB",
            "1.5GB"; ``hetero.budget``): weights, activations, workspaces and copy buffers of
            the plan stay within it, and a simulated GPU enforces it when the plan runs.
        donate: ``{input index: output index}``: each run writes that output into that input's
            array in place, after every reader of it, and returns the array as the output (a
            train step's parameters and optimizer state; ``hetero.pipeline.donated``).

    Returns:
        The Plan; ``plan.run(*inputs)`` runs it.
    """
    if isinstance(fn_or_graph, Function):  # @ht.function(machine=..., policy=...) brings its own
        machine = machine if machine is not None else fn_or_graph.machine
        policy = policy or fn_or_graph.policy
    graph = as_graph(fn_or_graph, example_inputs)
    return compile_graph(graph, machine, policy, cost, optimize=optimize, memory=memory,
                         donate=donate)


def calibrate(graph: Any, machine: Any, cost: MeasuredCost | None = None,
              progress: bool = True, devices: Iterable[str] | None = None, *,
              optimize: bool = True, example_inputs: Any = None) -> MeasuredCost:
    """Time every distinct (op, shapes, dtypes, attrs, device) of ``graph`` that compile would
    place and that is not measured yet (``hetero.cost.calibrate_graph``), and return the
    MeasuredCost (pass it as ``cost=`` to ``compile``).

    The graph is first optimized exactly as ``compile`` optimizes it for ``machine``
    (``hetero.pipeline.optimize_for``: fused convolutions, folded batch-norms, and on a CPU-only
    machine residual adds and Winograd convolutions), so what is timed is what compile will look
    up.

    Args:
        graph: the graph whose kernels to time, or a function (``@ht.function`` or plain) traced
            on ``example_inputs``, as ``compile`` takes it.
        machine: a Machine or spec string.
        cost: the MeasuredCost to extend (default: the one cached for ``machine``).
        progress: show a progress bar (tqdm if installed) on stderr.
        devices: device names to time on (default: all of the machine's).
        optimize: optimize the graph first, as ``compile(..., optimize=True)`` does.
        example_inputs: arrays to trace a function with.
    """
    graph = as_graph(graph, example_inputs)
    machine = resolve_machine(machine)
    if optimize:
        graph = optimize_for(graph, machine)
    return calibrate_graph(graph, machine, cost, progress=progress, devices=devices)
