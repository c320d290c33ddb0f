"""hetero: run one computation graph on every processor of a machine at once."""

from hetero import backends, ops  # noqa: F401  (backends register the GPU device classes)
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
from hetero.function import Function, function
from hetero.graph import Attrs, Graph, Node, NodeKind, TensorSpec, Value
from hetero.tracing import Tensor, colocate, device, tensor
from hetero.version import __version__  # noqa: F401

# The pipeline and later stages load on first use, so `import hetero` stays light (it imports
# NumPy and threadpoolctl, not networkx).
_LAZY = {
    "scheduling": ("hetero.scheduling", None),
    "onnx": ("hetero.onnx", None),
    "distributed": ("hetero.distributed", None),
    "cluster": ("hetero.cluster", None),
    "plan_cluster": ("hetero.cluster", "plan_cluster"),
    "place_nodes": ("hetero.cluster", "place_nodes"),
    "partition_cluster": ("hetero.cluster", "partition_cluster"),
    "place": ("hetero.pipeline", "place"),
    "partition": ("hetero.passes.partition", "partition"),
    "schedule": ("hetero.passes.schedule", "schedule"),
    "plan_memory": ("hetero.passes.memory", "plan_memory"),
    "compile": ("hetero.compiler", "compile"),
    "calibrate": ("hetero.compiler", "calibrate"),
    "Placement": ("hetero.passes.place", "Placement"),
    "Reason": ("hetero.passes.place", "Reason"),
    "Plan": ("hetero.plan", "Plan"),
    "Profile": ("hetero.profile", "Profile"),
    "Executor": ("hetero.executor", "Executor"),
    "RooflineCost": ("hetero.cost", "RooflineCost"),
    "MeasuredCost": ("hetero.cost", "MeasuredCost"),
    "TableCost": ("hetero.cost", "TableCost"),
    "compare_policies": ("hetero.pipeline", "compare_policies"),
    "check": ("hetero.verify", "check"),
    "grad": ("hetero.autodiff", "grad"),
    "value_and_grad": ("hetero.autodiff", "value_and_grad"),
    "vjp": ("hetero.autodiff", "vjp"),
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
    "HeteroError", "Link", "Machine", "ModelError", "Node", "NodeKind", "OutOfMemoryError",
    "PlacementError",
    "ShapeError", "SimSpec", "Tensor", "TensorSpec", "TraceError", "TransferGuardError",
    "UnknownOpError", "Value", "check", "colocate", "config", "device", "function", "ops",
    "tensor",
]
