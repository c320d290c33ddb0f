"""Eager tensors, device and colocation scopes, and graph mode (``@function``).

One ``Tensor`` type serves both modes. An eager tensor holds a concrete array on a device; a traced
tensor holds a ``Value`` of the graph being recorded. Every op goes through ``apply``: outside a
trace it runs the op's kernel at once on the chosen device; inside a trace it records a ``Node``
with the device annotation of the innermost scope and the user's source line.

State: a thread-local stack of annotation scopes (device, soft, colocate) and a thread-local stack
of active traces. A trace only records; it never runs kernels.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import itertools
import logging
import os
import sys
import threading
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from hetero.errors import (
    DeviceError,
    HeteroError,
    ShapeError,
    TraceError,
    TransferGuardError,
    node_label,
)
from hetero.graph import Attrs, Graph, Node, TensorSpec, Value

log = logging.getLogger("hetero.tracing")

_HETERO_DIR = os.path.dirname(os.path.abspath(__file__))
_local = threading.local()


def _scopes() -> list[tuple[str | None, bool, str | None]]:
    s = getattr(_local, "scopes", None)
    if s is None:
        s = _local.scopes = []
    return s


def _traces() -> list[Trace]:
    t = getattr(_local, "traces", None)
    if t is None:
        t = _local.traces = []
    return t


#: code file name -> is it hetero's own (or contextlib's) code, which user_line skips
_INTERNAL_FILES: dict[str, bool] = {}


def _internal(path: str) -> bool:
    known = _INTERNAL_FILES.get(path)
    if known is None:
        known = os.path.abspath(path).startswith(_HETERO_DIR) or "contextlib" in path
        _INTERNAL_FILES[path] = known
    return known


def user_line() -> str | None:
    """``file:line`` of the innermost stack frame outside the hetero package."""
    frame = sys._getframe(1)
    while frame is not None:
        path = frame.f_code.co_filename
        if not _internal(path):
            return f"{os.path.basename(path)}:{frame.f_lineno}"
        frame = frame.f_back
    return None


# ----------------------------------------------------------------------------------------------
# Scopes


@contextlib.contextmanager
def device(name: Any, *, soft: bool = False) -> Iterator[None]:
    """Run (or record) the ops inside on device ``name`` ("cpu:0", "gpu:1", or a ``Device``).

    Scopes nest; the innermost wins. ``soft=True`` lets the placer override the annotation.
    ``ht.device(None)`` clears the device of the enclosing scopes (as ``tf.device(None)``).
    """
    from hetero.devices import Device, normalize_device

    if isinstance(name, Device):
        name = name.name
    if name is None:
        soft = False
    else:
        try:
            name = normalize_device(name)
        except DeviceError as exc:
            raise DeviceError(f"ht.device (from {user_line()}): {exc}") from None
    stack = _scopes()
    _, _, col = stack[-1] if stack else (None, False, None)
    stack.append((name, soft, col))
    try:
        yield
    finally:
        stack.pop()


@contextlib.contextmanager
def colocate(group: str) -> Iterator[None]:
    """Nodes created inside share one device, whatever the placer decides."""
    if not isinstance(group, str) or not group:
        raise HeteroError(f"ht.colocate (from {user_line()}): a colocation group is a non-empty "
                          f"string, got {group!r}")
    stack = _scopes()
    dev, soft, _ = stack[-1] if stack else (None, False, None)
    stack.append((dev, soft, group))
    try:
        yield
    finally:
        stack.pop()


def current_annotation() -> tuple[str | None, bool, str | None]:
    stack = _scopes()
    return stack[-1] if stack else (None, False, None)


# ----------------------------------------------------------------------------------------------
# Tensor


class Tensor:
    """A tensor: eager (a concrete array on a device) or traced (a value of a graph being built)."""

    __slots__ = ("_data", "_device", "_trace", "_value", "_spec", "__weakref__")
    __array_priority__ = 100  # so ndarray + Tensor calls Tensor.__radd__

    def __init__(self, data: Any = None, device: str | None = None, *, _trace: Trace | None = None,
                 _value: Value | None = None, _spec: TensorSpec | None = None) -> None:
        self._data = data
        self._device = device
        self._trace = _trace
        self._value = _value
        self._spec = _spec if _spec is not None else TensorSpec.of(data)

    # -- properties ---------------------------------------------------------------------------

    @property
    def spec(self) -> TensorSpec:
        return self._spec

    @property
    def shape(self) -> tuple[int, ...]:
        return self._spec.shape

    @property
    def dtype(self) -> np.dtype:
        return self._spec.dtype

    @property
    def ndim(self) -> int:
        return self._spec.ndim

    @property
    def size(self) -> int:
        return self._spec.size

    @property
    def device(self) -> str | None:
        """The device an eager tensor lives on (None for a traced tensor)."""
        return self._device

    @property
    def is_traced(self) -> bool:
        return self._trace is not None

    def numpy(self) -> np.ndarray:
        """The value as a NumPy array on the host."""
        if self._trace is not None:
            raise TraceError(f"{user_line()}: .numpy() on a traced value: inside @function there "
                             "is no value yet; return the tensor from the function instead")
        from hetero.config import config

        return config.machine.device(self._device).to_host(self._data)

    def __array__(self, dtype=None, copy=None):
        arr = self.numpy()
        return arr if dtype is None else arr.astype(dtype)

    def __repr__(self) -> str:
        if self._trace is not None:
            return f"Tensor<traced {self._value} {self._spec}>"
        body = np.array2string(self.numpy(), separator=", ", prefix="Tensor(")
        shape = f", shape={self.shape}" if self.size == 0 else ""
        return f"Tensor({body}{shape}, dtype={self.dtype.name}, device={self._device!r})"

    # -- Python protocols that would need a value -----------------------------------------------

    def _no_value(self, what: str) -> TraceError:
        return TraceError(
            f"{user_line()}: {what} on a traced value: Python control flow cannot depend on a "
            "value inside @function (the graph is traced once, not run). Use "
            "ht.ops.where(cond, a, b) to choose between values, or pass the flag as a plain "
            "Python argument.")

    def __bool__(self) -> bool:
        if self._trace is not None:
            raise self._no_value("bool() (an `if`, `while`, `and`/`or`)")
        return bool(self.numpy())

    def __int__(self) -> int:
        if self._trace is not None:
            raise self._no_value("int()")
        return int(self.numpy())

    def __float__(self) -> float:
        if self._trace is not None:
            raise self._no_value("float()")
        return float(self.numpy())

    def __index__(self) -> int:
        if self._trace is not None:
            raise self._no_value("using a tensor as an index")
        if self.dtype.kind not in "iu" or self.ndim:
            raise TypeError(f"only a rank-0 integer tensor can be used as an index, "
                            f"got {self.spec}")  # TypeError: what __index__ must raise
        return int(self.numpy())

    def __len__(self) -> int:
        if not self.shape:
            raise TypeError("len() of a 0-d tensor")
        return self.shape[0]

    def __iter__(self):
        if not self.shape:
            raise TypeError("iteration over a 0-d tensor")
        return (self[i] for i in range(self.shape[0]))

    __hash__ = object.__hash__

    # -- operators ------------------------------------------------------------------------------

    # Binary operators return NotImplemented for operands that are not array-like, so Python
    # raises its usual TypeError; lists and tuples become NumPy arrays.
    def __add__(self, o): return _binary("add", self, o)
    def __radd__(self, o): return _binary("add", o, self)
    def __sub__(self, o): return _binary("sub", self, o)
    def __rsub__(self, o): return _binary("sub", o, self)
    def __mul__(self, o): return _binary("mul", self, o)
    def __rmul__(self, o): return _binary("mul", o, self)
    def __truediv__(self, o): return _binary(_true_div, self, o)
    def __rtruediv__(self, o): return _binary(_true_div, o, self)
    def __floordiv__(self, o): return _binary(_floor_div, self, o)
    def __rfloordiv__(self, o): return _binary(_floor_div, o, self)
    def __mod__(self, o): return _binary("mod", self, o)
    def __rmod__(self, o): return _binary("mod", o, self)
    def __pow__(self, o): return _binary("pow", self, o)
    def __rpow__(self, o): return _binary("pow", o, self)
    def __matmul__(self, o): return _binary("matmul", self, o)
    def __rmatmul__(self, o): return _binary("matmul", o, self)
    def __and__(self, o): return _binary("logical_and", self, o)
    def __rand__(self, o): return _binary("logical_and", o, self)
    def __or__(self, o): return _binary("logical_or", self, o)
    def __ror__(self, o): return _binary("logical_or", o, self)
    def __xor__(self, o): return _binary("logical_xor", self, o)
    def __rxor__(self, o): return _binary("logical_xor", o, self)
    def __invert__(self): return _ops().logical_not(self)
    def __neg__(self): return _ops().neg(self)
    def __pos__(self): return self
    def __abs__(self): return _ops().abs(self)
    def __eq__(self, o): return _binary("equal", self, o)  # type: ignore[override]
    def __ne__(self, o): return _binary("not_equal", self, o)  # type: ignore[override]
    def __gt__(self, o): return _binary("greater", self, o)
    def __lt__(self, o): return _binary("less", self, o)
    def __ge__(self, o): return _binary("greater_equal", self, o)
    def __le__(self, o): return _binary("less_equal", self, o)

    @property
    def T(self) -> Tensor:
        return _ops().transpose(self)

    def reshape(self, *shape) -> Tensor:
        if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
            shape = tuple(shape[0])
        return _ops().reshape(self, shape)

    def transpose(self, *perm) -> Tensor:
        if len(perm) == 1 and isinstance(perm[0], (tuple, list)):
            perm = tuple(perm[0])
        return _ops().transpose(self, perm or None)

    def sum(self, axis=None, keepdims: bool = False) -> Tensor:
        return _ops().sum(self, axis=axis, keepdims=keepdims)

    def mean(self, axis=None, keepdims: bool = False) -> Tensor:
        return _ops().mean(self, axis=axis, keepdims=keepdims)

    def max(self, axis=None, keepdims: bool = False) -> Tensor:
        return _ops().max(self, axis=axis, keepdims=keepdims)

    def min(self, axis=None, keepdims: bool = False) -> Tensor:
        return _ops().min(self, axis=axis, keepdims=keepdims)

    def astype(self, dtype) -> Tensor:
        return _ops().cast(self, dtype)

    def flatten(self) -> Tensor:
        """A 1-D copy, as NumPy's ``flatten`` (``ht.ops.flatten`` is ONNX's 2-D Flatten)."""
        return _ops().reshape(self, (-1,))

    def squeeze(self, axis=None) -> Tensor:
        axes = None if axis is None else ((axis,) if isinstance(axis, int) else tuple(axis))
        return _ops().squeeze(self, axes)

    def to(self, device: Any) -> Tensor:
        """This tensor on ``device`` (``ht.ops.to_device``): an explicit move."""
        return _ops().to_device(self, device)

    def __getitem__(self, key) -> Tensor:
        return _ops().getitem(self, key)


def _ops():
    import hetero.ops as ops

    return ops


_OPERAND_TYPES = (np.ndarray, np.generic, int, float, bool)


def _binary(op: str | Callable[[Any, Any], Any], a: Any, b: Any) -> Any:
    """``op`` (an ``ht.ops`` function name or a function) on the operands of a Python operator,
    or NotImplemented where one of them is not array-like."""
    operands = []
    for x in (a, b):
        if isinstance(x, (list, tuple)):
            try:
                x = np.asarray(x)
            except ValueError:
                return NotImplemented
            if x.dtype == object:
                return NotImplemented
        elif not isinstance(x, (Tensor, *_OPERAND_TYPES)):
            return NotImplemented
        operands.append(x)
    if not (isinstance(op, str) and op.startswith("logical_")):
        operands = list(promote_operands(*operands))
    fn = getattr(_ops(), op) if isinstance(op, str) else op
    return fn(*operands)


def _kind(x: Any) -> str:
    """NumPy dtype kind of an operand ("f", "i", "u", "b", ...); Python scalars by type."""
    if isinstance(x, (Tensor, np.ndarray, np.generic)):
        return x.dtype.kind
    if isinstance(x, bool):
        return "b"
    if isinstance(x, int):
        return "i"
    return "f"


def _to_float(x: Any) -> Any:
    """A non-float operand as float32 (tensors through a cast node, arrays on the host)."""
    if _kind(x) in "fc":
        return x
    if isinstance(x, Tensor):
        return _ops().cast(x, np.float32)
    if isinstance(x, (np.ndarray, np.generic)):
        return np.asarray(x, dtype=np.float32)
    return float(x)


def _true_div(a: Any, b: Any) -> Any:
    """``a / b`` as Python means it: integer operands give a float32 quotient (``ht.ops.div``
    keeps ONNX semantics, where integer division truncates)."""
    if _kind(a) not in "fc" and _kind(b) not in "fc":
        a, b = _to_float(a), _to_float(b)
    return _ops().div(a, b)


def _floor_div(a: Any, b: Any) -> Any:
    """``a // b`` as Python means it: the quotient rounded down (integers stay integers)."""
    ops = _ops()
    if _kind(a) in "iu" and _kind(b) in "iu":
        # a - a % b is an exact multiple of b (% takes the divisor's sign, as in Python), so the
        # truncating integer division is exact
        return ops.div(ops.sub(a, ops.mod(a, b)), b)
    return ops.floor(ops.div(a, b))


def promote_operands(*xs: Any) -> tuple[Any, ...]:
    """Operands of an elementwise op, with plain NumPy arrays and Python numbers made to fit the
    tensors among them (NumPy's rule for scalars, extended to arrays the user did not make a
    tensor of):

    - a NumPy array whose dtype differs from the first tensor's is cast to it where NumPy's
      ``same_kind`` rule allows (float64 array + float32 tensor -> float32);
    - a Python float (or NumPy float scalar) next to integer tensors turns them into float32
      (``int_tensor * 0.5`` is a float32 tensor, as in JAX), instead of truncating the scalar.

    Tensors of different dtypes are left alone: the op refuses them with a ShapeError.
    """
    tensors = [x for x in xs if isinstance(x, Tensor)]
    if not tensors:
        return xs
    out = list(xs)
    if any(isinstance(x, (float, np.floating)) for x in xs) and \
            all(t.dtype.kind in "iub" for t in tensors):
        out = [_to_float(x) if isinstance(x, (Tensor, np.ndarray)) else x for x in out]
        tensors = [x for x in out if isinstance(x, Tensor)]
    target = tensors[0].dtype
    for i, x in enumerate(out):
        if isinstance(x, np.ndarray) and x.dtype != target and \
                np.can_cast(x.dtype, target, "same_kind"):
            out[i] = x.astype(target)
    return tuple(out)


#: dtype kinds a tensor may have: bool, signed and unsigned integers, floats
_DTYPE_KINDS = "biuf"


def check_dtype(dtype: np.dtype, who: str) -> None:
    """Refuse a dtype no op has kernels for (complex, object, strings, datetimes, void)."""
    if dtype.kind not in _DTYPE_KINDS:
        raise ShapeError(f"{who}: dtype {dtype.name} is not supported (hetero tensors are bool, "
                         "integer or floating-point)")


def tensor(data: Any, dtype: Any = None, device: str | None = None) -> Tensor:
    """An eager tensor from an array-like, on ``device`` (or the innermost device scope, or cpu:0).

    Python floats become float32 and Python ints int64 unless ``dtype`` says otherwise.
    """
    if isinstance(data, Tensor):
        data = data.numpy()
    try:
        arr = np.asarray(data, dtype=dtype)
    except (TypeError, ValueError, OverflowError) as exc:
        raise ShapeError(f"{user_line()}: ht.tensor cannot make an array of {type(data).__name__}"
                         f" (dtype {dtype!r}): {exc}") from None
    check_dtype(arr.dtype, f"{user_line()}: ht.tensor")
    if dtype is None and arr.dtype == np.float64 and not isinstance(data, np.ndarray):
        arr = arr.astype(np.float32)
    from hetero.config import config
    from hetero.devices import normalize_device

    scope, soft, _ = current_annotation()
    name = normalize_device(device) if device else (scope or "cpu:0")
    machine = config.machine
    if not device and soft and scope not in machine:
        from hetero.errors import PlacementError

        if config.strict_placement:
            raise PlacementError(f"{user_line()}: soft device {scope} is not in this machine, "
                                 "and ht.config.strict_placement forbids falling back")
        log.info("%s: soft device %s is not in this machine; the tensor stays on cpu:0",
                 user_line(), scope)
        name = "cpu:0"
    try:
        dev = machine.device(name)
    except DeviceError as exc:
        raise DeviceError(f"{user_line()}: {exc}") from None
    return Tensor(dev.from_host(arr), dev.name)


# ----------------------------------------------------------------------------------------------
# Tracing


class Trace:
    """A graph under construction: nodes in creation order (which is topological)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.nodes: list[Node] = []
        self.constants: dict[str, np.ndarray] = {}
        self.inputs: list[str] = []
        self._counter = itertools.count()
        self._const_src: dict[int, tuple[np.ndarray, Value]] = {}

    def fresh(self, prefix: str) -> str:
        """A node name not used yet in this trace."""
        return f"{prefix}_{next(self._counter)}"

    def add_input(self, spec: TensorSpec, name: str, device: str | None) -> Tensor:
        node = Node(name=name, op="input", outputs=(spec,), device=device,
                    soft=True, where=None)
        self.nodes.append(node)
        self.inputs.append(node.name)
        return Tensor(_trace=self, _value=node.value(), _spec=spec)

    def add_constant(self, array: np.ndarray, where: str | None) -> Value:
        """A ``constant`` node holding a read-only copy of ``array``. The same array object used
        again in this trace, unchanged, reuses the node (a weight read by several ops is stored
        once)."""
        seen = self._const_src.get(id(array))
        if seen is not None:
            src, value = seen
            kept = self.constants[value.node]
            if src is array and kept.dtype == array.dtype and kept.shape == array.shape and \
                    np.array_equal(kept, array, equal_nan=kept.dtype.kind in "fc"):
                return value
        arr = np.array(array, copy=True)
        arr.flags.writeable = False
        dev, soft, col = current_annotation()
        node = Node(name=self.fresh("constant"), op="constant", outputs=(TensorSpec.of(arr),),
                    device=dev, soft=True, colocate=col, where=where)
        self.nodes.append(node)
        self.constants[node.name] = arr
        value = node.value()
        # keep the source alive, so that its id cannot be reused by another array in this trace
        self._const_src[id(array)] = (array, value)
        return value

    def graph(self, outputs: Sequence[Value]) -> Graph:
        return Graph(tuple(self.nodes), tuple(self.inputs), tuple(outputs), self.constants,
                     name=self.name)


def _weak_dtype(inputs: Sequence[Any]) -> np.dtype | None:
    """The dtype Python scalars take: that of the first tensor or array among the inputs."""
    for x in inputs:
        if isinstance(x, Tensor):
            return x.dtype
        if isinstance(x, np.ndarray):
            return x.dtype
    return None


def _scalar_array(x: Any, like: np.dtype | None, who: str = "") -> np.ndarray:
    if not isinstance(x, (bool, int, float, np.generic, list, tuple)):
        raise ShapeError(f"{who}: an input must be a Tensor, a NumPy array, a number or a list of "
                         f"numbers, got {type(x).__name__}")
    try:
        return _scalar_array_of(x, like)
    except (TypeError, ValueError, OverflowError) as exc:
        raise ShapeError(f"{who}: cannot make an array of {x!r:.60}: {exc}") from None


def _scalar_array_of(x: Any, like: np.dtype | None) -> np.ndarray:
    if like is not None and not (isinstance(x, float) and like.kind in "iub"):
        return np.asarray(x, dtype=like)
    if isinstance(x, bool):
        return np.asarray(x)
    if isinstance(x, int):
        return np.asarray(x, dtype=np.int64)
    return np.asarray(x, dtype=np.float32)


def apply(op_name: str, inputs: Sequence[Any], attrs: dict[str, Any] | None = None, *,
          device: str | None = None, soft: bool | None = None) -> Any:
    """Run op ``op_name`` eagerly, or record it in the active trace.

    Returns one Tensor, or a tuple of Tensors for ops with several outputs.
    """
    from hetero.ops.registry import lookup

    op = lookup(op_name)
    inputs = _fit_float_arrays(inputs)
    where = user_line()
    dev, scope_soft, col = current_annotation()
    if device is not None:
        from hetero.devices import normalize_device

        try:
            dev, scope_soft = normalize_device(device), False
        except DeviceError as exc:
            raise DeviceError(f"{node_label(op_name, op_name, where)}: {exc}") from None
    soft = scope_soft if soft is None else soft
    attrs = op.normalize_attrs(attrs, node_label(op_name, op_name, where))

    traces = _traces()
    trace = traces[-1] if traces else None
    if trace is None:
        for x in inputs:
            if isinstance(x, Tensor) and x._trace is not None:
                raise TraceError(f"{where}: a traced value escaped its @function and is used "
                                 "outside it (store results by returning them)")
        return _run_eager(op, inputs, attrs, dev, where, soft=bool(dev and soft))
    return _record(trace, op, inputs, attrs, dev, soft, col, where)


def _fit_float_arrays(inputs: Sequence[Any]) -> Sequence[Any]:
    """Float NumPy arrays given next to a float tensor take that tensor's dtype (a float64 weight
    array meets a float32 activation), for every op; integer and bool arrays (indices, masks)
    are left alone."""
    ft = next((x.dtype for x in inputs if isinstance(x, Tensor) and x.dtype.kind == "f"), None)
    if ft is None or not any(isinstance(x, np.ndarray) and x.dtype.kind == "f" and x.dtype != ft
                             for x in inputs):
        return inputs
    return [x.astype(ft) if isinstance(x, np.ndarray) and x.dtype.kind == "f" else x
            for x in inputs]


def _record(trace: Trace, op, inputs, attrs: Attrs, dev, soft, col, where) -> Any:
    like = _weak_dtype(inputs)
    values: list[Value] = []
    specs: list[TensorSpec] = []
    for x in inputs:
        if isinstance(x, Tensor):
            if x._trace is None:
                v = trace.add_constant(x.numpy(), where)
            elif x._trace is not trace:
                raise TraceError(f"{where}: a value traced by another @function is used here")
            else:
                v = x._value
            values.append(v)
            specs.append(x.spec)
        else:
            arr = (x if isinstance(x, np.ndarray)
                   else _scalar_array(x, like, node_label(op.name, op.name, where)))
            check_dtype(arr.dtype, node_label(op.name, op.name, where))
            v = trace.add_constant(arr, where)
            values.append(v)
            specs.append(TensorSpec.of(arr))
    name = trace.fresh(op.name)
    try:
        out_specs = op.infer_specs(tuple(specs), attrs)
    except ShapeError as exc:
        raise ShapeError(f"{node_label(name, op.name, where)}: {exc}") from None
    node = Node(name=name, op=op.name, inputs=tuple(values), attrs=attrs, outputs=out_specs,
                device=dev, soft=soft if dev else False, colocate=col, where=where)
    trace.nodes.append(node)
    outs = tuple(Tensor(_trace=trace, _value=Value(name, i), _spec=s)
                 for i, s in enumerate(out_specs))
    return outs[0] if len(outs) == 1 else outs


def _run_eager(op, inputs, attrs: Attrs, dev: str | None, where: str | None, *,
               soft: bool = False) -> Any:
    from hetero.config import config

    machine = config.machine
    home = next((x._device for x in inputs if isinstance(x, Tensor)), "cpu:0")
    if dev is None:
        dev = home
    try:
        target = machine.device(dev)
    except DeviceError as exc:
        if not soft:
            raise DeviceError(f"{node_label(op.name, op.name, where)}: {exc}") from None
        target = _soft_fallback(op, dev, home, machine, where, "is not in this machine")
    if soft and not op.has_kernel(target.backend):
        target = _soft_fallback(op, dev, home, machine, where,
                                f"has no {op.name} kernel ({target.backend})")
    like = _weak_dtype(inputs)
    arrays = []
    for x in inputs:
        if isinstance(x, Tensor):
            arrays.append(_move(x, target, machine, op.name, where))
        elif isinstance(x, np.ndarray):
            check_dtype(x.dtype, node_label(op.name, op.name, where))
            if x.ndim and target.memory_space != "host":
                _guard_transfer(f"{node_label(op.name, op.name, where)}: implicit copy of "
                                f"{TensorSpec.of(x)} from a NumPy array to {target.name}")
            arrays.append(target.from_host(x))
        else:
            arr = _scalar_array(x, like, node_label(op.name, op.name, where))
            check_dtype(arr.dtype, node_label(op.name, op.name, where))
            arrays.append(target.from_host(arr))
    specs = tuple(TensorSpec.of(a) for a in arrays)
    try:
        out_specs = op.infer_specs(specs, attrs)
    except ShapeError as exc:
        raise ShapeError(f"{node_label(op.name, op.name, where)}: {exc}") from None
    kernel_ok = op.has_kernel(target.backend)
    if not kernel_ok:
        raise DeviceError(f"{node_label(op.name, op.name, where)}: op {op.name} has no kernel on "
                          f"{target.name} ({target.backend})")
    try:
        outs = [target.empty(s) for s in out_specs]
    except (MemoryError, ValueError) as exc:
        from hetero.errors import OutOfMemoryError

        raise OutOfMemoryError(f"{node_label(op.name, op.name, where)}: cannot allocate its "
                               f"output {', '.join(map(str, out_specs))} on {target.name}: "
                               f"{exc}") from None
    try:
        target.run_kernel(op, arrays, attrs, outs)
    except HeteroError:
        raise
    except Exception as exc:
        from hetero.errors import ExecutionError

        raise ExecutionError(f"{node_label(op.name, op.name, where)} failed on {target.name}: "
                             f"{type(exc).__name__}: {exc}") from exc
    result = tuple(Tensor(o, target.name, _spec=s) for o, s in zip(outs, out_specs))
    return result[0] if len(result) == 1 else result


def _soft_fallback(op, dev: str, home: str, machine, where: str | None, why: str):
    """The device an eager op runs on when its soft annotation ``dev`` cannot be honoured: the
    device of its first tensor input, else cpu:0 (as TensorFlow's soft placement does), or a
    PlacementError under ``config.strict_placement``."""
    from hetero.config import config
    from hetero.errors import PlacementError

    label = node_label(op.name, op.name, where)
    if config.strict_placement:
        raise PlacementError(f"{label}: soft device {dev} {why}, and "
                             "ht.config.strict_placement forbids falling back")
    for name in (home, "cpu:0"):
        if name in machine and op.has_kernel(machine.device(name).backend):
            log.info("%s: soft device %s %s; running on %s", label, dev, why, name)
            return machine.device(name)
    raise DeviceError(f"{label}: soft device {dev} {why}, and neither {home} nor cpu:0 can "
                      "run it")


def _guard_transfer(msg: str) -> None:
    """Apply ``config.transfer_guard`` to the implicit copy that ``msg`` describes."""
    from hetero.config import config

    guard = config.transfer_guard
    if guard == "disallow":
        raise TransferGuardError(msg + " (ht.config.transfer_guard is 'disallow'; move it "
                                 "explicitly with ht.ops.to_device)")
    if guard == "log":
        log.warning(msg)


def _move(x: Tensor, target, machine, opname: str, where: str | None) -> Any:
    if x._device == target.name:
        return x._data
    src = machine.device(x._device)
    if src.memory_space == target.memory_space:
        return x._data
    _guard_transfer(f"{node_label(opname, opname, where)}: implicit copy of {x.spec} from "
                    f"{src.name} to {target.name}")
    copy = getattr(machine, "copy", None)
    if copy is not None:
        return copy(x._data, src, target)
    return target.from_host(src.to_host(x._data))


# ----------------------------------------------------------------------------------------------
# Graph mode


@dataclass(frozen=True)
class _ArgSig:
    kind: str  # "tensor" | "static"
    shape: tuple[int, ...] | None = None
    dtype: str | None = None
    device: str | None = None
    static: Any = None


def _signature(args: Sequence[Any]) -> tuple[_ArgSig, ...]:
    sig = []
    for a in args:
        if isinstance(a, Tensor):
            if a._trace is not None:
                raise TraceError("calling an @function with a traced value of another trace")
            sig.append(_ArgSig("tensor", a.shape, a.dtype.name, a.device))
        elif isinstance(a, (np.ndarray, np.generic)):  # NumPy scalars are 0-d inputs, as in JAX
            sig.append(_ArgSig("tensor", tuple(a.shape), a.dtype.name, "cpu:0"))
        else:
            try:
                hash(a)
            except TypeError:
                raise TraceError(f"argument {a!r} of type {type(a).__name__} is neither a tensor "
                                 "nor a hashable static value") from None
            sig.append(_ArgSig("static", static=a))
    return tuple(sig)


def _explain_retrace(old_names: Sequence[str], old: tuple[_ArgSig, ...],
                     new_names: Sequence[str], new: tuple[_ArgSig, ...]) -> str:
    """Which argument changed between two signatures, and how (shape, dtype, device, value)."""
    changes = []
    old_by_name = dict(zip(old_names, old))
    for name, b in zip(new_names, new):
        a = old_by_name.get(name)
        if a is None:
            changes.append(f"argument {name} is new")
            continue
        if a.kind != b.kind:
            changes.append(f"argument {name} changed from {a.kind} to {b.kind}")
            continue
        for what in ("shape", "dtype", "device", "static"):
            va, vb = getattr(a, what), getattr(b, what)
            if va != vb:
                noun = "value" if what == "static" else what
                changes.append(f"argument {name} changed {noun} {va} -> {vb}")
    gone = [n for n in old_names if n not in set(new_names)]
    if gone:
        changes.append(f"argument(s) {', '.join(gone)} no longer passed")
    return "; ".join(changes) or "new signature"


def _flatten(obj: Any) -> tuple[list[Any], Callable[[list[Any]], Any]]:
    """Flatten nested tuples/lists/dicts of leaves; return leaves and a rebuild function."""
    if isinstance(obj, (tuple, list)):
        parts = [_flatten(o) for o in obj]
        leaves = [leaf for p in parts for leaf in p[0]]
        sizes = [len(p[0]) for p in parts]

        def rebuild(xs):
            out, i = [], 0
            for (_, rb), n in zip(parts, sizes):
                out.append(rb(xs[i:i + n]))
                i += n
            return type(obj)(out) if isinstance(obj, list) else tuple(out)
        return leaves, rebuild
    if isinstance(obj, dict):
        keys = list(obj)
        leaves, rb = _flatten([obj[k] for k in keys])
        return leaves, lambda xs: dict(zip(keys, rb(xs)))
    return [obj], lambda xs: xs[0]


class _Traced:
    """One entry of a Function's trace cache."""

    def __init__(self, graph: Graph, rebuild: Callable[[list[Any]], Any],
                 out_kinds: list[str]) -> None:
        self.graph = graph
        self.rebuild = rebuild
        self.out_kinds = out_kinds
        self.runner: Any = None


class _Bound:
    """One call's arguments, flattened in parameter order: ``names``, ``values``, and the
    ``layout`` (parameter name, kind, count or keys) that ``rebuild`` uses to call the function
    the way the user did."""

    def __init__(self, names: list[str], values: list[Any],
                 layout: list[tuple[str, Any, Any]]) -> None:
        self.names = names
        self.values = values
        self.layout = layout

    def rebuild(self, values: Sequence[Any]) -> tuple[list[Any], dict[str, Any]]:
        args: list[Any] = []
        kwargs: dict[str, Any] = {}
        i = 0
        for name, kind, extra in self.layout:
            if kind is inspect.Parameter.VAR_POSITIONAL:
                args += values[i:i + extra]
                i += extra
            elif kind is inspect.Parameter.VAR_KEYWORD:
                kwargs.update(zip(extra, values[i:i + len(extra)]))
                i += len(extra)
            elif kind is inspect.Parameter.KEYWORD_ONLY:
                kwargs[name] = values[i]
                i += 1
            else:
                args.append(values[i])
                i += 1
        return args, kwargs


def _user_stacklevel() -> int:
    """The ``stacklevel`` for ``warnings.warn`` that points at the first frame outside hetero."""
    frame = sys._getframe(1)
    level = 1
    while frame is not None and _internal(frame.f_code.co_filename) and \
            "contextlib" not in frame.f_code.co_filename:
        frame = frame.f_back
        level += 1
    return level


class Function:
    """A Python function in graph mode: traced once per input signature, then the graph runs.

    Tensor arguments (``ht.Tensor``, NumPy arrays and scalars) become graph inputs; any other is a
    static Python value that is part of the signature (a changed value retraces). Arguments may
    be passed by position or by keyword, as the Python function takes them.
    """

    #: more traces than this of one function warn (as tf.function does)
    max_traces = 5

    def __init__(self, fn: Callable[..., Any], *, machine: Any = None, policy: str | None = None,
                 name: str | None = None) -> None:
        functools.update_wrapper(self, fn)
        self.fn = fn
        self.machine = machine
        self.policy = policy
        self.name = name or getattr(fn, "__name__", "function")
        self._cache: dict[tuple[Any, ...], _Traced] = {}
        self._lock = threading.Lock()
        self.trace_count = 0
        try:
            self._sig: inspect.Signature | None = inspect.signature(fn)
        except (TypeError, ValueError):
            self._sig = None

    def __get__(self, obj, objtype=None):
        if obj is None:
            return self
        return functools.partial(self, obj)

    def __repr__(self) -> str:
        return f"<ht.function {self.name} ({self.trace_count} trace(s))>"

    def _bind(self, args: Sequence[Any], kwargs: Mapping[str, Any]) -> _Bound:
        """The call's arguments in the order of the function's parameters (defaults filled in),
        with their names, and how to pass them back to the Python function."""
        if self._sig is None:
            if kwargs:
                raise TraceError(f"@function {self.name}: its signature is unknown, so it takes "
                                 "positional arguments only")
            return _Bound([f"arg{i}" for i in range(len(args))], list(args),
                          [("", inspect.Parameter.VAR_POSITIONAL, len(args))])
        bound = self._sig.bind(*args, **kwargs)  # a TypeError, as Python gives, if they do not fit
        bound.apply_defaults()
        names: list[str] = []
        values: list[Any] = []
        layout: list[tuple[str, Any, Any]] = []
        for pname, value in bound.arguments.items():
            kind = self._sig.parameters[pname].kind
            if kind is inspect.Parameter.VAR_POSITIONAL:
                names += [f"{pname}_{i}" for i in range(len(value))]
                values += list(value)
                layout.append((pname, kind, len(value)))
            elif kind is inspect.Parameter.VAR_KEYWORD:
                keys = sorted(value)
                names += keys
                values += [value[k] for k in keys]
                layout.append((pname, kind, keys))
            else:
                names.append(pname)
                values.append(value)
                layout.append((pname, kind, None))
        return _Bound(names, values, layout)

    def _traced(self, bound: _Bound) -> _Traced:
        sig = (tuple(bound.names), _signature(bound.values))
        entry = self._cache.get(sig)
        if entry is not None:
            return entry
        with self._lock:
            entry = self._cache.get(sig)
            if entry is not None:
                return entry
            if self._cache:
                def explain(old: tuple[Any, ...]) -> str:
                    return _explain_retrace(old[0], old[1], sig[0], sig[1])

                reason = explain(min(self._cache, key=lambda old: len(explain(old))))
                log.info("retracing %s: %s", self.name, reason)
            else:
                reason = "first call"
                log.debug("tracing %s: first call", self.name)
            entry = self._trace(bound)
            self._cache[sig] = entry
            self.trace_count += 1
            if self.trace_count > self.max_traces:
                warnings.warn(
                    f"@function {self.name} has been traced {self.trace_count} times (last "
                    f"because {reason}); tracing is expensive. Pass tensors of fixed shape, "
                    "or avoid passing changing Python values.", stacklevel=_user_stacklevel())
        return entry

    def _trace(self, bound: _Bound) -> _Traced:
        trace = Trace(self.name)
        call_values = []
        for name, a in zip(bound.names, bound.values):
            if isinstance(a, (Tensor, np.ndarray, np.generic)):
                dev = a.device if isinstance(a, Tensor) else None
                call_values.append(trace.add_input(TensorSpec.of(a), name, dev))
            else:
                call_values.append(a)
        args, kwargs = bound.rebuild(call_values)
        _traces().append(trace)
        try:
            result = self.fn(*args, **kwargs)
        finally:
            _traces().pop()
        leaves, rebuild = _flatten(result)
        outputs, kinds = [], []
        for leaf in leaves:
            if isinstance(leaf, Tensor) and leaf._trace is trace:
                outputs.append(leaf._value)
                kinds.append("tensor")
            elif isinstance(leaf, (Tensor, np.ndarray)) or np.isscalar(leaf):
                # a value that does not depend on the inputs still becomes a graph output
                arr = leaf.numpy() if isinstance(leaf, Tensor) else np.asarray(leaf)
                outputs.append(trace.add_constant(arr, None))
                kinds.append("tensor")
            else:
                raise TraceError(f"@function {self.name} returned {type(leaf).__name__}; return "
                                 "tensors (or tuples, lists, dicts of them)")
        graph = trace.graph(outputs)
        from hetero.config import config

        if config.checks:
            from hetero.graph import check

            check(graph)
        return _Traced(graph, rebuild, kinds)

    def graph(self, *args: Any, **kwargs: Any) -> Graph:
        """The traced Graph for these arguments, without running it."""
        return self._traced(self._bind(args, kwargs)).graph

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if _traces():
            # called from inside another trace: inline it, recording its ops into that trace
            return self.fn(*args, **kwargs)
        bound = self._bind(args, kwargs)
        entry = self._traced(bound)
        arrays = [a.numpy() if isinstance(a, Tensor) else np.asarray(a) for a in bound.values
                  if isinstance(a, (Tensor, np.ndarray, np.generic))]
        if entry.runner is None:
            entry.runner = self._make_runner(entry.graph)
        outs = entry.runner(arrays)
        return entry.rebuild([tensor_from_host(o) for o in outs])

    def _make_runner(self, graph: Graph) -> Callable[[list[np.ndarray]], list[np.ndarray]]:
        """How a traced graph runs: compiled into a Plan (optimize, place, partition, schedule,
        memory) for this function's machine and policy, or ``ht.config.machine`` when the user
        set one, or this host sized to the graph's parallelism; then run by the executor."""
        from hetero.compiler import compile

        plan = compile(graph, machine=self.machine, policy=self.policy or "heft")
        return lambda arrays: list(plan.run(*arrays))


def tensor_from_host(array: np.ndarray, device: str = "cpu:0") -> Tensor:
    from hetero.config import config

    dev = config.machine.device(device)
    return Tensor(dev.from_host(np.asarray(array)), dev.name)


def function(fn: Callable[..., Any] | None = None, **options: Any) -> Any:
    """Decorator: run ``fn`` in graph mode.

    Use as ``@function`` or ``@function(machine=..., policy=...)``.
    """
    if fn is None:
        return lambda f: function(f, **options)
    if not callable(fn):
        raise TraceError(f"{user_line()}: @function decorates a function, got "
                         f"{type(fn).__name__} {fn!r:.60}")
    return Function(fn, **options)
