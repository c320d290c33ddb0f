"""Explicit device moves: ``to_device(x, "gpu:0")``, and the structural ``transfer`` op.

Eager mode: a copy between memory spaces over the machine's link (``Machine.copy``), made on
purpose, so ``config.transfer_guard`` does not apply to it. Within one memory space (two CPU
workers) the tensor keeps its buffer and only changes device. Graph mode: an ``identity`` node
pinned to the device (not soft), so the placer keeps it there and the partitioner inserts the
transfer node in front of it.

``assign`` writes a new value into the buffer of a graph input, in place: what a compile with
``donate`` (the train step's parameters) appends after the graph's last reader of that input.

The ``transfer`` op is what partitioning inserts between memory spaces: the identity on its
first input's spec; the executor turns it into a copy on the issuing GPU's copy stream. A
streamed weight's copy (``streamed=True``, ``hetero.passes.offload``) may have more inputs: they
only order it (the copy starts after their producers) and are never read.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from hetero.config import config
from hetero.devices import normalize_device
from hetero.errors import DeviceError, ShapeError, TraceError
from hetero.graph import TRANSFER, Attrs, TensorSpec
from hetero.ops.registry import REQUIRED, Cost, Op, register
from hetero.tracing import Tensor, _traces, apply, tensor, user_line

__all__ = ["to_device"]


def _transfer_infer(ins: tuple[TensorSpec, ...], attrs: Attrs) -> tuple[TensorSpec, ...]:
    return (ins[0],)


def _transfer_kernel(xp, ins, attrs, outs) -> None:
    outs[0][...] = ins[0]


register(Op(TRANSFER, _transfer_infer, _transfer_kernel, arity=(1, None),
            attrs={"src": REQUIRED, "dst": REQUIRED, "kind": REQUIRED, "streamed": False},
            cost=lambda ins, outs, attrs: Cost(0.0, float(ins[0].nbytes)), op_class="data",
            doc="copy one value between memory spaces (inserted by partition)"))


def _assign_infer(ins: tuple[TensorSpec, ...], attrs: Attrs) -> tuple[TensorSpec, ...]:
    value, target = ins[0], ins[1]
    if value != target:
        raise ShapeError(f"assign: the new value {value} does not match its target {target}")
    return (TensorSpec((0,), target.dtype),)


def _assign_kernel(xp, ins, attrs, outs) -> None:
    ins[1][...] = ins[0]


register(Op("assign", _assign_infer, _assign_kernel, arity=(2, None), backends=frozenset({"numpy"}),
            cost=lambda ins, outs, attrs: Cost(0.0, 2.0 * float(ins[0].nbytes)), op_class="data",
            doc="write input 0 into the buffer of graph input 1, in place (a donated input, "
                "hetero.compiler); the inputs after them only order it: it runs after them"))


def to_device(x: Any, device: str) -> Tensor:
    """``x`` on ``device`` ("cpu:1", "gpu:0"): an explicit copy, never blocked by the transfer
    guard. ``x`` may be a Tensor, a NumPy array or a Python scalar."""
    name = normalize_device(device)
    if _traces():
        return apply("identity", (x,), device=name, soft=False)
    if isinstance(x, Tensor) and x.is_traced:
        raise TraceError(f"{user_line()}: a traced value escaped its @function and is used "
                         "outside it (store results by returning them)")
    machine = config.machine
    try:
        dst = machine.device(name)
    except DeviceError as exc:
        raise DeviceError(f"to_device (from {user_line()}): {exc}") from None
    if isinstance(x, Tensor):
        if x.device == dst.name:
            return x
        src = machine.device(x.device)
        return Tensor(machine.copy(x._data, src, dst), dst.name, _spec=x.spec)
    if isinstance(x, np.ndarray):
        return Tensor(dst.from_host(x), dst.name)
    return tensor(x, device=dst.name)
