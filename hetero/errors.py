"""One exception hierarchy for everything hetero raises on purpose.

Every error that is about a node carries the node's name, its op and the user's source line, so a
message reads like ``matmul_3 (matmul, from model.py:42): shapes (2, 3) and (4, 5) do not align``.
"""

from __future__ import annotations


class HeteroError(Exception):
    """Base class of every error hetero raises on purpose."""


class GraphError(HeteroError):
    """A graph breaks an invariant of the IR (dangling input, wrong spec, cycle, ...)."""


class ShapeError(HeteroError):
    """Inputs of an op have shapes or dtypes the op cannot take."""


class UnknownOpError(HeteroError):
    """An op name that the registry does not know."""


class DeviceError(HeteroError):
    """A device string that names no device, or a device that cannot do what was asked."""


class TraceError(HeteroError):
    """Something a traced function did that graph mode cannot record (Python control flow on a
    traced value, a traced value escaping its trace, ...)."""


class PlacementError(HeteroError):
    """No valid device exists for a node under its annotations, kernels and memory capacity."""


class ExecutionError(HeteroError):
    """A kernel failed while a graph ran; the message names the node, op, device and source line."""


class OutOfMemoryError(HeteroError):
    """An allocation past a device's memory capacity."""


class TransferGuardError(HeteroError):
    """An implicit copy between memory spaces while ``config.transfer_guard == "disallow"``."""


class ModelError(HeteroError):
    """A model file (ONNX) that cannot be imported: malformed, unsupported ops, hostile paths."""


def node_label(name: str, op: str, where: str | None) -> str:
    """``name (op, from file:line)``: how every message refers to a node."""
    if where:
        return f"{name} ({op}, from {where})"
    return f"{name} ({op})"
