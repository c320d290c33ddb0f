"""hetero: run one computation graph on every processor of a machine at once."""

from hetero import ops
from hetero.config import config
from hetero.devices import Device, Link, Machine, SimSpec
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

# Later stages load on first use, so `import hetero` stays light (NumPy and networkx only).
_LAZY = {
    "scheduling": ("hetero.scheduling", None),
    "onnx": ("hetero.onnx", None),
    "place": ("hetero.passes.place", "place"),
    "partition": ("hetero.passes.partition", "partition"),
    "schedule": ("hetero.passes.schedule", "schedule"),
    "plan_memory": ("hetero.passes.memory", "plan_memory"),
    "compile": ("hetero.compiler", "compile"),
    "calibrate": ("hetero.cost", "calibrate"),
    "Placement": ("hetero.plan", "Placement"),
    "Reason": ("hetero.plan", "Reason"),
    "Plan": ("hetero.plan", "Plan"),
    "Profile": ("hetero.profile", "Profile"),
    "Executor": ("hetero.executor", "Executor"),
    "RooflineCost": ("hetero.cost", "RooflineCost"),
    "MeasuredCost": ("hetero.cost", "MeasuredCost"),
    "TableCost": ("hetero.cost", "TableCost"),
    "compare_policies": ("hetero.passes.place", "compare_policies"),
}


def __getattr__(name: str):
    import importlib

    if name in _LAZY:
        module, attr = _LAZY[name]
        mod = importlib.import_module(module)
        value = mod if attr is None else getattr(mod, attr)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'hetero' has no attribute {name!r}")

__all__ = [
    "Attrs", "Device", "DeviceError", "ExecutionError", "Function", "Graph", "GraphError",
    "HeteroError", "Link", "Machine", "ModelError", "Node", "OutOfMemoryError", "PlacementError",
    "ShapeError", "SimSpec", "Tensor", "TensorSpec", "TraceError", "TransferGuardError",
    "UnknownOpError", "Value", "check", "colocate", "config", "device", "function", "ops",
    "tensor",
]
