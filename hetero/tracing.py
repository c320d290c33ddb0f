"""Eager tensors, device and colocation scopes, and how an op applies to tensors.

One ``Tensor`` type serves eager and graph mode. An eager tensor holds a concrete array on a
device; a traced tensor holds a ``Value`` of the graph being recorded. Every op goes through
``apply``: outside a trace it runs the op's kernel at once on the chosen device; inside a trace it
records a ``Node`` with the device annotation of the innermost scope and the user's source line.
Tensor's operators and array methods (``+``, ``x[...]``, ``.reshape``) are attached by
``hetero.ops.methods``; graph mode's ``@function`` is ``hetero.function``.

State: a thread-local stack of annotation scopes (device, soft, colocate) and a thread-local stack
of active traces. A trace only records; it never runs kernels.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from hetero.builder import GraphBuilder
from hetero.config import config
from hetero.devices import Device, normalize_device
from hetero.errors import (
    DeviceError,
    ExecutionError,
    HeteroError,
    OutOfMemoryError,
    PlacementError,
    ShapeError,
    TraceError,
    TransferGuardError,
    node_label,
)
from hetero.graph import Attrs, Graph, Node, TensorSpec, Value, native
from hetero.ops.registry import lookup

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

    def _value_for(self, what: str) -> np.ndarray:
        """The eager value, for a Python protocol that needs one (``what`` names it)."""
        if self._trace is not None:
            raise self._no_value(what)
        return self.numpy()

    def __bool__(self) -> bool:
        return bool(self._value_for("bool() (an `if`, `while`, `and`/`or`)"))

    def __int__(self) -> int:
        return int(self._value_for("int()"))

    def __float__(self) -> float:
        return float(self._value_for("float()"))

    def __index__(self) -> int:
        self._value_for("using a tensor as an index")
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
        return apply("cast", (x,), {"to": "float32"})
    if isinstance(x, (np.ndarray, np.generic)):
        return np.asarray(x, dtype=np.float32)
    return float(x)

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
        if isinstance(x, np.generic):  # a NumPy scalar is weak, like a Python number
            x = out[i] = np.asarray(x)
        if isinstance(x, np.ndarray) and x.dtype != target and \
                np.can_cast(x.dtype, target, "same_kind"):
            out[i] = x.astype(target)
    return tuple(out)


def scalars_like(xs: Sequence[Any], who: str) -> tuple[Any, ...]:
    """Python numbers among ``xs`` as 0-d arrays of the first tensor's or array's dtype among
    ``xs`` (for ops such as ``where`` whose first input is not the one scalars should fit)."""
    like = _weak_dtype(xs)
    if like is None:
        return tuple(xs)
    return tuple(_scalar_array(x, like, who) if isinstance(x, (bool, int, float)) else x
                 for x in xs)


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
    arr = native(arr)
    if dtype is None and arr.dtype == np.float64 and not isinstance(data, np.ndarray):
        arr = arr.astype(np.float32)
    scope, soft, _ = current_annotation()
    name = normalize_device(device) if device else (scope or "cpu:0")
    machine = config.machine
    if not device and soft and scope not in machine:
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
    """A graph being recorded by ``@function``: a numbered ``GraphBuilder`` (``matmul_0``,
    ``relu_1``, ...) whose inputs and constants are tensors of this trace."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.builder = GraphBuilder(name, numbered=True)

    def fresh(self, prefix: str) -> str:
        """A node name not used yet in this trace."""
        return self.builder.fresh(prefix)

    def add_input(self, spec: TensorSpec, name: str, device: str | None) -> Tensor:
        value = self.builder.input(name, spec, device=device)
        return Tensor(_trace=self, _value=value, _spec=spec)

    def add_constant(self, array: np.ndarray, where: str | None) -> Value:
        """A ``constant`` node holding a read-only copy of ``array``, annotated as the innermost
        scope says. The same array object used again in this trace, unchanged, reuses the node
        (a weight read by several ops is stored once)."""
        dev, _, col = current_annotation()
        return self.builder.constant(array, "constant", where=where, device=dev, soft=True,
                                     colocate=col)

    def add(self, node: Node) -> Node:
        return self.builder.add(node)

    def capture(self, x: Tensor, where: str | None) -> Value:
        """The value standing for ``x``, a tensor of another trace, read here. A plain trace
        refuses; a nested one (``hetero.autodiff``'s) may make it an input."""
        raise TraceError(f"{where}: a value traced by another @function is used here")

    def graph(self, outputs: Sequence[Value]) -> Graph:
        return self.builder.build(outputs)


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
    op = lookup(op_name)
    inputs = _fit_float_arrays(inputs)
    where = user_line()
    dev, scope_soft, col = current_annotation()
    if device is not None:
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
                v = trace.capture(x, where)
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
    trace.add(node)
    outs = tuple(Tensor(_trace=trace, _value=Value(name, i), _spec=s)
                 for i, s in enumerate(out_specs))
    return outs[0] if len(outs) == 1 else outs


def _run_eager(op, inputs, attrs: Attrs, dev: str | None, where: str | None, *,
               soft: bool = False) -> Any:
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
        raise OutOfMemoryError(f"{node_label(op.name, op.name, where)}: cannot allocate its "
                               f"output {', '.join(map(str, out_specs))} on {target.name}: "
                               f"{exc}") from None
    try:
        target.run_kernel(op, arrays, attrs, outs)
    except HeteroError:
        raise
    except Exception as exc:
        raise ExecutionError(f"{node_label(op.name, op.name, where)} failed on {target.name}: "
                             f"{type(exc).__name__}: {exc}") from exc
    result = tuple(Tensor(o, target.name, _spec=s) for o, s in zip(outs, out_specs))
    return result[0] if len(result) == 1 else result


def _soft_fallback(op, dev: str, home: str, machine, where: str | None, why: str):
    """The device an eager op runs on when its soft annotation ``dev`` cannot be honoured: the
    device of its first tensor input, else cpu:0 (as TensorFlow's soft placement does), or a
    PlacementError under ``config.strict_placement``."""
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
    return machine.copy(x._data, src, target)


def tensor_from_host(array: np.ndarray, device: str = "cpu:0") -> Tensor:
    """An eager tensor on ``device`` holding a copy of host array ``array``."""
    dev = config.machine.device(device)
    return Tensor(dev.from_host(np.asarray(array)), dev.name)
