"""The op registry: one ``Op`` entry per operation, holding everything about it.

An entry has the attribute schema, shape and dtype inference, a cost formula, and kernels. A kernel
is written once against the array namespace of its inputs::

    def kernel(xp, ins, attrs, outs) -> None

where ``xp`` is ``numpy`` on the CPU and the simulated GPU and ``cupy`` on a CUDA GPU, ``ins`` are
the input arrays, and ``outs`` are preallocated output arrays the kernel must fill (``out=`` or
``outs[0][...] = ...``). Backend-specific kernels (cuDNN, ``kernels/*.cu``) override the shared one
for their backend in ``Op.kernels``. Which backend has a kernel for an op is a question this
registry answers, so the placer never imports a backend.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from hetero.errors import ShapeError, UnknownOpError
from hetero.graph import OP_CLASSES, STRUCTURAL_OPS, Attrs, Node, TensorSpec

#: Every backend name the project knows. "sim" is the simulated GPU: it has the same kernel set as
#: "cupy", so placement on a simulated machine is placement on a real one.
BACKENDS = ("numpy", "cupy", "sim")
GPU_BACKENDS = frozenset({"cupy", "sim"})


Kernel = Callable[[Any, Sequence[Any], Attrs, Sequence[Any]], None]
Infer = Callable[[tuple[TensorSpec, ...], Attrs], tuple[TensorSpec, ...]]


@dataclass(frozen=True, slots=True)
class Cost:
    """Work of one node: floating-point operations and bytes moved to and from memory."""

    flops: float = 0.0
    bytes: float = 0.0

    def __add__(self, other: Cost) -> Cost:
        return Cost(self.flops + other.flops, self.bytes + other.bytes)


REQUIRED = object()  # attribute schema marker: no default


def default_cost(ins: tuple[TensorSpec, ...], outs: tuple[TensorSpec, ...], attrs: Attrs) -> Cost:
    """One flop per output element; every input and output read or written once."""
    return Cost(flops=float(sum(s.size for s in outs)),
                bytes=float(sum(s.nbytes for s in ins) + sum(s.nbytes for s in outs)))


@dataclass(eq=False)
class Op:
    """One operation: schema, inference, cost and kernels.

    Attributes:
        name: registry name ("matmul").
        infer: ``(input specs, attrs) -> output specs``; raises ShapeError on invalid inputs.
        kernel: the array-namespace kernel shared by every backend in ``backends``.
        arity: (min, max) number of inputs; max None means variadic.
        attrs: attribute schema, name -> default (``REQUIRED`` for none).
        cost: ``(input specs, output specs, attrs) -> Cost``.
        op_class: what the cost model and the simulated GPU rate this op as.
        backends: backends on which the op has a kernel.
        kernels: backend-specific kernels that replace ``kernel`` on that backend.
        splits: its CPU kernel cuts its own work over the intra-op threads
            (``hetero.threads.parallel_for``), so a plan that runs it on a CPU worker grants
            intra-op threads (``hetero.threads.choose``).
        doc: one line for the docs.
    """

    name: str
    infer: Infer
    kernel: Kernel | None
    arity: tuple[int, int | None] = (1, 1)
    attrs: Mapping[str, Any] = field(default_factory=dict)
    cost: Callable[..., Cost] = default_cost
    op_class: str = "elementwise"
    backends: frozenset[str] = frozenset(BACKENDS)
    kernels: dict[str, Kernel] = field(default_factory=dict)
    splits: bool = False
    doc: str = ""
    #: reverse-mode rule ``(ins, outs, cotangents, attrs) -> input cotangents`` over Tensors,
    #: built with ``hetero.tracing.apply`` (``hetero.ops.vjp`` fills it, ``hetero.autodiff``
    #: calls it)
    vjp: Callable[..., Any] | None = None

    def kernel_for(self, backend: str) -> Kernel | None:
        """The kernel that runs this op on ``backend``, or None if it has none there."""
        if backend not in self.backends:
            return None
        return self.kernels.get(backend, self.kernel)

    def has_kernel(self, backend: str) -> bool:
        return self.kernel_for(backend) is not None

    def normalize_attrs(self, attrs: Mapping[str, Any] | None, label: str = "") -> Attrs:
        """Fill defaults and refuse unknown or missing attributes."""
        attrs = dict(attrs or {})
        unknown = sorted(set(attrs) - set(self.attrs))
        who = label or self.name
        if unknown:
            raise ShapeError(f"{who}: unknown attribute(s) {', '.join(unknown)} "
                             f"(known: {', '.join(sorted(self.attrs)) or 'none'})")
        out = {}
        for key, default in self.attrs.items():
            if key in attrs and attrs[key] is not None:
                out[key] = _check_attr(who, key, attrs[key], default)
            elif default is REQUIRED:
                raise ShapeError(f"{who}: missing required attribute {key!r}")
            else:
                out[key] = default
        return Attrs(out)

    def infer_specs(self, ins: tuple[TensorSpec, ...], attrs: Attrs) -> tuple[TensorSpec, ...]:
        lo, hi = self.arity
        if len(ins) < lo or (hi is not None and len(ins) > hi):
            want = f"{lo}" if lo == hi else f"{lo} to {hi if hi is not None else 'any'}"
            raise ShapeError(f"{self.name} takes {want} inputs, got {len(ins)}")
        return tuple(self.infer(tuple(ins), attrs))

    def cost_of(self, ins: tuple[TensorSpec, ...], outs: tuple[TensorSpec, ...],
                attrs: Attrs) -> Cost:
        return self.cost(ins, outs, attrs)

    def evaluate(self, arrays: Sequence[np.ndarray], attrs: Attrs,
                 specs: Sequence[TensorSpec]) -> list[np.ndarray]:
        """Run the NumPy kernel now on host arrays ``arrays`` into fresh outputs of ``specs``:
        how constants are folded (at import and by the optimizer) and how the reference executor
        runs a node. Whatever the kernel raises propagates."""
        kernel = self.kernel_for("numpy")
        if kernel is None:
            raise UnknownOpError(f"op {self.name} has no NumPy kernel")
        outs = [np.empty(s.shape, s.dtype) for s in specs]
        kernel(np, list(arrays), attrs, outs)
        return outs


#: Attributes that are integers or sequences of integers whatever their default says (their
#: default is REQUIRED or None, so it cannot tell).
_INT_ATTRS = frozenset({"axis", "size", "k", "groups", "keepdims"})
_INT_SEQ_ATTRS = frozenset({"kernel_shape", "strides", "pads", "dilations", "shape", "starts",
                            "ends", "axes", "steps", "sizes", "repeats", "perm"})
_REAL_SEQ_ATTRS = frozenset({"activation_params"})
_INT64 = 2 ** 63


def _as_int(who: str, key: str, v: Any) -> int:
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)):
        raise ShapeError(f"{who}: attribute {key!r} must be an integer, got {v!r}")
    v = int(v)
    if not -_INT64 <= v < _INT64:
        raise ShapeError(f"{who}: attribute {key!r} = {v} does not fit in 64 bits")
    return v


def _as_real(who: str, key: str, v: Any) -> float | int:
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, float, np.integer, np.floating)):
        raise ShapeError(f"{who}: attribute {key!r} must be a number, got {v!r}")
    return v


def _check_attr(who: str, key: str, v: Any, default: Any) -> Any:
    """``v`` checked against the type the attribute's default (or its well-known name) implies,
    so a string, a float or a tuple where an integer belongs is a ShapeError naming the node
    rather than a TypeError deep in a kernel. Types it cannot tell are passed through."""
    int_default = isinstance(default, int) and not isinstance(default, bool)
    if key in _INT_SEQ_ATTRS or (isinstance(default, tuple) and default
                                 and all(isinstance(d, int) for d in default)):
        if isinstance(v, (str, bytes)) or not isinstance(v, (tuple, list, np.ndarray)):
            raise ShapeError(f"{who}: attribute {key!r} must be a sequence of integers, "
                             f"got {v!r}")
        return tuple(_as_int(who, key, x) for x in (v.tolist() if isinstance(v, np.ndarray)
                                                    else v))
    if key in _REAL_SEQ_ATTRS:
        if isinstance(v, (str, bytes)) or not isinstance(v, (tuple, list, np.ndarray)):
            raise ShapeError(f"{who}: attribute {key!r} must be a sequence of numbers, got {v!r}")
        return tuple(_as_real(who, key, x) for x in (v.tolist() if isinstance(v, np.ndarray)
                                                     else v))
    if key in _INT_ATTRS or int_default:
        if isinstance(v, (bool, np.bool_)):
            return int(v)
        return _as_int(who, key, v)
    if isinstance(default, float):
        return _as_real(who, key, v)
    return v


REGISTRY: dict[str, Op] = {}


def register(op: Op) -> Op:
    if op.name in REGISTRY:
        raise ValueError(f"op {op.name!r} registered twice")
    if op.op_class not in OP_CLASSES:
        raise ValueError(f"op {op.name!r}: unknown op class {op.op_class!r}")
    REGISTRY[op.name] = op
    return op


def lookup(name: str, node: Node | None = None) -> Op:
    """The registry entry for ``name``; an ``UnknownOpError`` that suggests close names if none."""
    op = REGISTRY.get(name)
    if op is not None:
        return op
    close = difflib.get_close_matches(name, REGISTRY, n=3)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    who = f"{node.label}: " if node is not None else ""
    raise UnknownOpError(f"{who}unknown op {name!r}{hint}")


def has_kernel(op_name: str, backend: str) -> bool:
    """Does ``op_name`` have a kernel on ``backend``? (The structural ops "input", "constant"
    and "transfer" run everywhere.)"""
    if op_name in STRUCTURAL_OPS:
        return True
    return lookup(op_name).has_kernel(backend)


# ----------------------------------------------------------------------------------------------
# Helpers shared by the op families


def broadcast_shapes(*shapes: tuple[int, ...]) -> tuple[int, ...]:
    """NumPy broadcasting of shapes, with a ShapeError that shows them (in Python ints: a shape
    too large for NumPy still broadcasts, and TensorSpec then says it is too large)."""
    ndim = max((len(s) for s in shapes), default=0)
    out = []
    for axis in range(ndim):
        dims = {int(s[axis - ndim + len(s)]) for s in shapes if axis - ndim + len(s) >= 0}
        dims.discard(1)
        if len(dims) > 1:
            raise ShapeError("shapes " + ", ".join(str(tuple(s)) for s in shapes)
                             + " cannot be broadcast together")
        out.append(dims.pop() if dims else 1)
    return tuple(out)


def same_dtype(ins: Sequence[TensorSpec], what: str = "inputs") -> np.dtype:
    """The common dtype of ``ins``; ONNX requires them equal, and so do we."""
    dtypes = {s.dtype for s in ins}
    if len(dtypes) > 1:
        raise ShapeError(f"{what} have different dtypes "
                         f"({', '.join(sorted(d.name for d in dtypes))}); cast one first")
    return ins[0].dtype


def require_float(spec: TensorSpec, opname: str) -> None:
    if spec.dtype.kind != "f":
        raise ShapeError(f"{opname} needs a floating-point input, got {spec.dtype.name}")


def normalize_axis(axis: int, ndim: int, opname: str = "") -> int:
    if isinstance(axis, (bool, np.bool_)) or not isinstance(axis, (int, np.integer)):
        raise ShapeError(f"{opname} axis must be an integer, got {axis!r}")
    if not -ndim <= axis < max(ndim, 1):
        raise ShapeError(f"{opname} axis {axis} is out of range for rank {ndim}")
    return axis % max(ndim, 1)
