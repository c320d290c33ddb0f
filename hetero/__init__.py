"""hetero: run one computation graph on every processor of a machine at once."""

from hetero import ops
from hetero.config import config
from hetero.devices import Device, Machine
from hetero.errors import (
    DeviceError,
    ExecutionError,
    GraphError,
    HeteroError,
    ModelError,
    OutOfMemoryError,
    PlacementError,
    ShapeError,
    TraceError,
    TransferGuardError,
    UnknownOpError,
)
from hetero.graph import Attrs, Graph, Node, TensorSpec, Value, check
from hetero.tracing import Function, Tensor, colocate, device, function, tensor

__version__ = "0.1.0"

__all__ = [
    "Attrs", "Device", "DeviceError", "ExecutionError", "Function", "Graph", "GraphError",
    "HeteroError", "Machine", "ModelError", "Node", "OutOfMemoryError", "PlacementError",
    "ShapeError", "Tensor", "TensorSpec", "TraceError", "TransferGuardError", "UnknownOpError",
    "Value", "check", "colocate", "config", "device", "function", "ops", "tensor",
]
