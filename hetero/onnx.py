"""ONNX import (``load``) and an ``onnx.backend`` Backend that runs models through hetero.

Design. ``load`` reads a ModelProto in three steps, each of which can only refuse the model with a
``ModelError`` before anything runs:

1. *Check*: the protobuf parses, the ONNX checker accepts it, every node's op is one we convert
   (all unsupported ops are collected and reported together, each with its node names), and every
   external tensor file lies inside the model's own folder.
2. *Convert*: nodes are visited in order. Every ONNX value is either a constant (a NumPy array,
   known at import) or a value of the graph being built. A converter per ONNX op maps the node's
   attributes and inputs to registry ops (``auto_pad`` resolved into explicit pads, Clip bounds and
   Reshape targets read from constant inputs, Softmax before opset 13 flattened, ...). An op whose
   inputs are all constants is evaluated at once with its NumPy kernel, so Constant,
   ConstantOfShape, Shape and everything computed from them fold away: shapes are static.
3. *Emit*: the Graph keeps the ONNX graph input names; each node's ``where`` is
   ``"model.onnx:node_name"`` so every later error names the ONNX node.

``onnx`` itself is imported inside functions only, so ``import hetero.onnx`` needs nothing but
NumPy; ``Backend`` and ``BackendRep`` (subclasses of onnx's base classes) are built on first use.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from hetero.builder import GraphBuilder
from hetero.config import resolve_machine
from hetero.devices import Machine
from hetero.errors import HeteroError, ModelError
from hetero.graph import Graph, Node, TensorSpec, Value
from hetero.ops.registry import REGISTRY, lookup
from hetero.pipeline import compile_graph

# Backend and BackendRep are built on first access (module __getattr__), so they are not listed.
_log = logging.getLogger("hetero.onnx")

__all__ = ["load", "load_assuming", "compile", "Model", "input_dims", "supported_ops", "prepare",
           "run_model", "run_node", "StaticInputError"]

# ----------------------------------------------------------------------------------------------
# Values during import


@dataclass(frozen=True, slots=True)
class _Val:
    """One ONNX value: a constant array known at import, or a value of the graph being built."""

    spec: TensorSpec
    array: np.ndarray | None = None
    value: Value | None = None
    hint: str | None = None  # ONNX name of a constant, used if it becomes a constant node
    sources: frozenset[str] = frozenset()  # graph inputs this value is computed from

    @property
    def is_const(self) -> bool:
        return self.array is not None


class StaticInputError(ModelError):
    """A graph input feeds a parameter that must be known at import (a Reshape target, Slice
    bounds, ...). ``inputs`` names those graph inputs; pass their values as ``static_inputs``."""

    def __init__(self, message: str, inputs: frozenset[str]) -> None:
        super().__init__(message)
        self.inputs = inputs


class _Builder:
    """The importer's side of a ``GraphBuilder``: every ONNX value is a constant array, known at
    import and folded (an op whose inputs are all constants runs at once through its NumPy
    kernel, ``Op.evaluate``), or a value of the graph being built."""

    def __init__(self, name: str, fold_budget: int, array_limit: int) -> None:
        self.graph = GraphBuilder(name)
        self.fold_budget = fold_budget
        self.array_limit = array_limit
        self.folded = 0  # bytes of the arrays made by folding so far

    def charge(self, nbytes: int, where: str, what: str) -> None:
        """Count ``nbytes`` that folding is about to allocate; a ModelError naming the node if
        that one array is over ``array_limit`` or the import would then hold more than
        ``fold_budget`` bytes of folded constants (checked before allocating, so a hostile
        shape never reaches NumPy)."""
        if nbytes > self.array_limit:
            raise ModelError(
                f"{where}: folding {what} would allocate {nbytes:,} bytes, more than the "
                f"import's limit for one folded constant ({self.array_limit:,} bytes); pass "
                "fold_budget=<bytes> to load() if the model really needs it")
        if self.folded + nbytes > self.fold_budget:
            raise ModelError(
                f"{where}: folding {what} would allocate {nbytes:,} bytes, past the import's "
                f"constant-folding budget ({self.folded:,} of {self.fold_budget:,} bytes used); "
                "pass a larger fold_budget to load() if the model really needs it")
        self.folded += nbytes

    def fresh(self, base: str) -> str:
        return self.graph.fresh(base)

    def const(self, array: np.ndarray) -> _Val:
        array = np.asarray(array)
        return _Val(TensorSpec.of(array), array=array)

    def materialize(self, v: _Val, name: str, where: str | None) -> Value:
        """The graph value of ``v``: a constant node (made once per array) if ``v`` is constant.
        Arrays made during import are the importer's alone: they are frozen, not copied."""
        if v.value is not None:
            return v.value
        return self.graph.constant(v.array, _clean(v.hint or name), copy=False, where=where,
                                   soft=False)

    def emit(self, op_name: str, ins: Sequence[_Val], attrs: Mapping[str, Any], name: str,
             where: str, fold: bool = True) -> list[_Val]:
        op = lookup(op_name)
        label = f"{where} ({op_name})"
        try:
            attrs = op.normalize_attrs(attrs, label)
            specs = op.infer_specs(tuple(v.spec for v in ins), attrs)
        except HeteroError as exc:
            raise ModelError(f"{where}: cannot convert to {op_name}: {exc}") from None
        if fold and all(v.is_const for v in ins):
            self.charge(sum(sp.nbytes for sp in specs), label, "constants")
            try:
                outs = op.evaluate([v.array for v in ins], attrs, specs)
            except Exception as exc:
                raise ModelError(f"{where}: folding {op_name} of constants failed: "
                                 f"{type(exc).__name__}: {exc}") from exc
            return [self.const(o) for o in outs]
        values = tuple(self.materialize(v, f"{name}_const{i}", where) for i, v in enumerate(ins))
        node = self.graph.add(Node(self.fresh(name), op_name, values, attrs, tuple(specs),
                                   where=where))
        sources = frozenset().union(*(v.sources for v in ins))
        return [_Val(s, value=node.value(i), sources=sources) for i, s in enumerate(specs)]


class _Ctx:
    """What a converter sees of one ONNX node."""

    def __init__(self, imp: _Importer, node: Any, index: int, ins: list[_Val | None]) -> None:
        self.imp = imp
        self.node = node
        self.op_type = node.op_type
        self.ins = ins
        self.opset = imp.opset
        self.where = f"{imp.source}:{node.name or f'{node.op_type}#{index}'}"
        self.base = _clean(node.output[0] if node.output and node.output[0] else node.op_type)
        self.n_outputs = len(node.output)
        self._attrs = {a.name: a for a in node.attribute}
        self._k = 0

    # -- attributes and inputs ------------------------------------------------------------------

    def attr(self, name: str, default: Any = None) -> Any:
        import onnx.helper

        a = self._attrs.get(name)
        if a is None:
            return default
        value = onnx.helper.get_attribute_value(a)
        if isinstance(value, bytes):
            return value.decode()
        if isinstance(value, list):
            return tuple(v.decode() if isinstance(v, bytes) else v for v in value)
        if a.type == a.TENSOR:
            return _tensor_to_array(value, self.imp.folder, self.where)
        return value

    def has_attr(self, name: str) -> bool:
        return name in self._attrs

    def fail(self, message: str) -> ModelError:
        return ModelError(f"{self.where} ({self.op_type}): {message}")

    def axis(self, axis: int, ndim: int) -> int:
        """``axis`` in ``[-ndim, ndim)`` made non-negative; out of range is a ModelError (a rank-0
        input takes axis 0 or -1)."""
        if not -max(ndim, 1) <= axis < max(ndim, 1):
            raise self.fail(f"axis {axis} is out of range for rank {ndim}")
        return axis % max(ndim, 1)

    def inp(self, i: int) -> _Val:
        if i >= len(self.ins) or self.ins[i] is None:
            raise self.fail(f"input {i} is required")
        return self.ins[i]

    def opt(self, i: int) -> _Val | None:
        return self.ins[i] if i < len(self.ins) else None

    def const(self, i: int, what: str) -> np.ndarray | None:
        """The array of optional input ``i``, which must be known at import (static shapes)."""
        v = self.opt(i)
        if v is None:
            return None
        if not v.is_const:
            raise StaticInputError(
                f"{self.where} ({self.op_type}): {what} (input {i}) must be a constant or "
                "computed from constants and shapes (hetero graphs have static shapes); it "
                f"depends on graph input(s) {', '.join(sorted(v.sources))}: pass their values "
                "as static_inputs", v.sources)
        return v.array

    def spec(self, i: int) -> TensorSpec:
        return self.inp(i).spec

    # -- emitting -------------------------------------------------------------------------------

    def emit(self, op: str, ins: Sequence[_Val], **attrs: Any) -> _Val:
        return self.emit_multi(op, ins, **attrs)[0]

    def emit_multi(self, op: str, ins: Sequence[_Val], fold: bool = True,
                   **attrs: Any) -> list[_Val]:
        name = self.base if self._k == 0 else f"{self.base}_{self._k}"
        self._k += 1
        return self.imp.builder.emit(op, ins, attrs, name, self.where, fold=fold)

    def const_val(self, array: Any) -> _Val:
        return self.imp.builder.const(np.asarray(array))

    def charge(self, shape: Sequence[int], dtype: Any, what: str) -> None:
        """Charge an array of ``shape`` and ``dtype`` that this converter is about to build to
        the folding budget (before building it)."""
        n = math.prod(int(d) for d in shape)
        self.imp.builder.charge(n * np.dtype(dtype).itemsize, f"{self.where} ({self.op_type})",
                                what)


def _fits(value: Any, dtype: np.dtype) -> bool:
    """Does the number ``value`` convert to the integer or bool ``dtype`` exactly?"""
    if isinstance(value, float) and (not math.isfinite(value) or not value.is_integer()):
        return False
    if dtype.kind == "b":
        return value in (0, 1)
    info = np.iinfo(dtype)
    return info.min <= int(value) <= info.max


def _clean(name: str) -> str:
    return name.replace(" ", "_") or "v"


# ----------------------------------------------------------------------------------------------
# Converters: ONNX op type -> function(ctx) -> list of output _Vals (None for unused outputs)

Converter = Callable[[_Ctx], Sequence[_Val | None]]
_CONVERTERS: dict[str, tuple[Converter, tuple[str, ...]]] = {}


def _converts(*op_types: str, needs: tuple[str, ...] = ()):
    """Register a converter for ``op_types``; ``needs`` names the registry ops it emits."""

    def deco(fn: Converter) -> Converter:
        for t in op_types:
            _CONVERTERS[t] = (fn, needs)
        return fn

    return deco


def supported_ops() -> list[str]:
    """ONNX op types this importer converts with the ops now in the registry."""
    return sorted(t for t, (_, needs) in _CONVERTERS.items() if all(n in REGISTRY for n in needs))


def _legacy_broadcast(ctx: _Ctx, a: _Val, b: _Val) -> _Val:
    """Opset < 7 broadcasting: ``b`` aligns with ``a`` starting at attribute ``axis``."""
    if ctx.opset >= 7 or not ctx.attr("broadcast", 0) or b.spec.ndim == 0:
        return b
    axis = ctx.attr("axis", a.spec.ndim - b.spec.ndim)
    axis %= max(a.spec.ndim, 1)
    trailing = a.spec.ndim - axis - b.spec.ndim
    if trailing <= 0:
        return b
    return ctx.emit("reshape", [b], shape=b.spec.shape + (1,) * trailing)


_BINARY = {"Add": "add", "Sub": "sub", "Mul": "mul", "Div": "div", "Pow": "pow",
           "Equal": "equal", "Greater": "greater", "Less": "less",
           "GreaterOrEqual": "greater_equal", "LessOrEqual": "less_equal"}


def _binary_converter(onnx_op: str, op: str) -> None:
    @_converts(onnx_op, needs=(op,))
    def convert(ctx: _Ctx) -> list[_Val]:
        a, b = ctx.inp(0), ctx.inp(1)
        b = _legacy_broadcast(ctx, a, b)
        if a.spec.dtype != b.spec.dtype:
            if onnx_op != "Pow":
                raise ctx.fail(f"inputs have different dtypes {a.spec.dtype} and {b.spec.dtype}")
            b = ctx.emit("cast", [b], to=a.spec.dtype.name)  # Pow(12+) allows a mixed exponent
        return [ctx.emit(op, [a, b])]


for _t, _o in _BINARY.items():
    _binary_converter(_t, _o)

_UNARY = {"Relu": "relu", "Sigmoid": "sigmoid", "Tanh": "tanh", "Exp": "exp", "Log": "log",
          "Sqrt": "sqrt", "Neg": "neg", "Abs": "abs", "Erf": "erf", "Reciprocal": "reciprocal",
          "Floor": "floor", "Ceil": "ceil", "Softplus": "softplus", "Softsign": "softsign",
          "Sign": "sign", "HardSwish": "hard_swish", "Mish": "mish", "Round": "round",
          "Sin": "sin", "Cos": "cos"}


def _unary_converter(onnx_op: str, op: str) -> None:
    @_converts(onnx_op, needs=(op,))
    def convert(ctx: _Ctx) -> list[_Val]:
        return [ctx.emit(op, [ctx.inp(0)])]


for _t, _o in _UNARY.items():
    _unary_converter(_t, _o)


def _alpha_converter(onnx_op: str, op: str, alpha: float) -> None:
    @_converts(onnx_op, needs=(op,))
    def convert(ctx: _Ctx) -> list[_Val]:
        return [ctx.emit(op, [ctx.inp(0)], alpha=float(ctx.attr("alpha", alpha)))]


# ONNX op -> (registry op, default alpha)
for _t, (_o, _alpha) in {"LeakyRelu": ("leaky_relu", 0.01), "Elu": ("elu", 1.0),
                         "Celu": ("celu", 1.0),
                         "ThresholdedRelu": ("thresholded_relu", 1.0)}.items():
    _alpha_converter(_t, _o, _alpha)


@_converts("Selu", needs=("selu",))
def _selu(ctx: _Ctx) -> list[_Val]:
    alpha = float(ctx.attr("alpha", 1.67326319217681884765625))
    gamma = float(ctx.attr("gamma", 1.05070102214813232421875))
    return [ctx.emit("selu", [ctx.inp(0)], alpha=alpha, gamma=gamma)]


def _arg_converter(onnx_op: str, op: str) -> None:
    @_converts(onnx_op, needs=(op,))
    def convert(ctx: _Ctx) -> list[_Val]:
        x = ctx.inp(0)
        return [ctx.emit(op, [x], axis=ctx.axis(int(ctx.attr("axis", 0)), x.spec.ndim),
                         keepdims=int(ctx.attr("keepdims", 1)),
                         select_last_index=int(ctx.attr("select_last_index", 0)))]


_arg_converter("ArgMax", "argmax")
_arg_converter("ArgMin", "argmin")


@_converts("HardSigmoid", needs=("hard_sigmoid",))
def _hard_sigmoid(ctx: _Ctx) -> list[_Val]:
    return [ctx.emit("hard_sigmoid", [ctx.inp(0)], alpha=float(ctx.attr("alpha", 0.2)),
                     beta=float(ctx.attr("beta", 0.5)))]


@_converts("PRelu", needs=("prelu", "reshape"))
def _prelu(ctx: _Ctx) -> list[_Val]:
    x, slope = ctx.inp(0), ctx.inp(1)
    # opset < 7 (and pytorch exports) give a per-channel slope of shape (C,) for NC... inputs
    if slope.spec.ndim == 1 and x.spec.ndim > 2 and slope.spec.shape[0] == x.spec.shape[1] != 1:
        per_channel = (slope.spec.shape[0],) + (1,) * (x.spec.ndim - 2)
        slope = ctx.emit("reshape", [slope], shape=per_channel)
    return [ctx.emit("prelu", [x, slope])]


@_converts("Gelu", needs=("gelu",))
def _gelu(ctx: _Ctx) -> list[_Val]:
    return [ctx.emit("gelu", [ctx.inp(0)], approximate=ctx.attr("approximate", "none"))]


@_converts("Clip", needs=("clip",))
def _clip(ctx: _Ctx) -> list[_Val]:
    if ctx.opset < 11:
        lo, hi = ctx.attr("min"), ctx.attr("max")
    else:
        lo_a, hi_a = ctx.const(1, "min"), ctx.const(2, "max")
        lo = None if lo_a is None else lo_a.item()
        hi = None if hi_a is None else hi_a.item()
    x = ctx.inp(0)
    if lo is None and hi is None:
        return [x]
    return [ctx.emit("clip", [x], min=lo, max=hi)]


@_converts("Cast", needs=("cast",))
def _cast(ctx: _Ctx) -> list[_Val]:
    to = _onnx_dtype(ctx.attr("to"), ctx)
    x = ctx.inp(0)
    if x.spec.dtype == to:
        return [x]
    return [ctx.emit("cast", [x], to=to.name)]


@_converts("CastLike", needs=("cast",))
def _cast_like(ctx: _Ctx) -> list[_Val]:
    x, like = ctx.inp(0), ctx.inp(1)
    if x.spec.dtype == like.spec.dtype:
        return [x]
    return [ctx.emit("cast", [x], to=like.spec.dtype.name)]


_LOGICAL = {"Not": "logical_not", "And": "logical_and", "Or": "logical_or",
            "Xor": "logical_xor"}


def _logical_converter(onnx_op: str, op: str) -> None:
    @_converts(onnx_op, needs=(op,))
    def convert(ctx: _Ctx) -> list[_Val]:
        a = ctx.inp(0)
        if onnx_op == "Not":
            return [ctx.emit(op, [a])]
        return [ctx.emit(op, [a, _legacy_broadcast(ctx, a, ctx.inp(1))])]


for _t, _o in _LOGICAL.items():
    _logical_converter(_t, _o)


@_converts("Mod", needs=("mod",))
def _mod(ctx: _Ctx) -> list[_Val]:
    return [ctx.emit("mod", [ctx.inp(0), ctx.inp(1)], fmod=int(ctx.attr("fmod", 0)))]


@_converts("Range")
def _range(ctx: _Ctx) -> list[_Val]:
    start, limit, delta = (ctx.const(i, name) for i, name in
                           enumerate(("start", "limit", "delta")))
    if start is None or limit is None or delta is None:
        raise ctx.fail("start, limit and delta are required")
    dtype = start.dtype
    if delta.item() == 0:
        raise ctx.fail("delta is 0")
    steps = (limit.item() - start.item()) / delta.item()
    if not math.isfinite(steps):
        raise ctx.fail(f"start {start.item()}, limit {limit.item()}, delta {delta.item()} give "
                       "no finite number of elements")
    n = max(int(np.ceil(steps)), 0)
    ctx.charge((n,), dtype, f"a range of {n:,} elements")
    return [ctx.const_val((start.item() + np.arange(n) * delta.item()).astype(dtype))]


@_converts("Where", needs=("where",))
def _where(ctx: _Ctx) -> list[_Val]:
    return [ctx.emit("where", [ctx.inp(0), ctx.inp(1), ctx.inp(2)])]


def _variadic(ctx: _Ctx, op: str) -> _Val:
    ins = [v for v in ctx.ins if v is not None]
    if not ins:
        raise ctx.fail("needs at least one input")
    acc = ins[0]
    for v in ins[1:]:
        acc = ctx.emit(op, [acc, v])
    return acc


@_converts("Max", needs=("maximum",))
def _max(ctx: _Ctx) -> list[_Val]:
    return [_variadic(ctx, "maximum")]


@_converts("Min", needs=("minimum",))
def _min(ctx: _Ctx) -> list[_Val]:
    return [_variadic(ctx, "minimum")]


@_converts("Sum", needs=("add_n", "add"))
def _sum(ctx: _Ctx) -> list[_Val]:
    ins = [v for v in ctx.ins if v is not None]
    if len(ins) == 1:
        return [ins[0]]
    shapes = {v.spec.shape for v in ins}
    if len(shapes) == 1:
        return [ctx.emit("add_n", ins)]
    return [_variadic(ctx, "add")]  # broadcasting Sum


@_converts("Mean", needs=("add", "div"))
def _mean(ctx: _Ctx) -> list[_Val]:
    acc = _variadic(ctx, "add")
    n = sum(v is not None for v in ctx.ins)
    return [ctx.emit("div", [acc, ctx.const_val(np.asarray(n, acc.spec.dtype))])]


@_converts("MatMul", needs=("matmul",))
def _matmul(ctx: _Ctx) -> list[_Val]:
    return [ctx.emit("matmul", [ctx.inp(0), ctx.inp(1)])]


@_converts("Gemm", needs=("gemm",))
def _gemm(ctx: _Ctx) -> list[_Val]:
    ins = [ctx.inp(0), ctx.inp(1)]
    c = ctx.opt(2)
    if c is not None:
        ins.append(c)
    return [ctx.emit("gemm", ins, alpha=float(ctx.attr("alpha", 1.0)),
                     beta=float(ctx.attr("beta", 1.0)), trans_a=int(ctx.attr("transA", 0)),
                     trans_b=int(ctx.attr("transB", 0)))]


# -- reductions -----------------------------------------------------------------------------------

_REDUCE = {"ReduceSum": ("sum", 13), "ReduceMean": ("mean", 18), "ReduceMax": ("max", 18),
           "ReduceMin": ("min", 18)}


def _reduce_converter(onnx_op: str, op: str, axes_input_since: int) -> None:
    @_converts(onnx_op, needs=(op,))
    def convert(ctx: _Ctx) -> list[_Val]:
        x = ctx.inp(0)
        if ctx.opset >= axes_input_since:
            arr = ctx.const(1, "axes")
            axes = None if arr is None else tuple(int(a) for a in arr.reshape(-1))
        else:
            axes = ctx.attr("axes")
        keepdims = bool(ctx.attr("keepdims", 1))
        if not axes:
            if ctx.attr("noop_with_empty_axes", 0):
                return [x]
            axes = None
        else:
            axes = tuple(sorted(ctx.axis(a, x.spec.ndim) for a in axes))
        if x.spec.ndim == 0:
            return [x]
        return [ctx.emit(op, [x], axes=axes, keepdims=keepdims)]


for _t, (_o, _since) in _REDUCE.items():
    _reduce_converter(_t, _o, _since)


def _softmax_converter(onnx_op: str, op: str) -> None:
    @_converts(onnx_op, needs=(op, "reshape"))
    def convert(ctx: _Ctx) -> list[_Val]:
        x = ctx.inp(0)
        nd = x.spec.ndim
        if ctx.opset >= 13:
            return [ctx.emit(op, [x], axis=ctx.axis(int(ctx.attr("axis", -1)), nd))]
        # before opset 13 the input is seen as 2-D: dims before `axis` x dims from `axis` on
        axis = ctx.axis(int(ctx.attr("axis", 1)), nd)
        if axis == nd - 1:
            return [ctx.emit(op, [x], axis=axis)]
        shape = x.spec.shape
        flat = (math.prod(shape[:axis]), math.prod(shape[axis:]))
        y = ctx.emit(op, [ctx.emit("reshape", [x], shape=flat)], axis=1)
        return [ctx.emit("reshape", [y], shape=shape)]


_softmax_converter("Softmax", "softmax")
_softmax_converter("LogSoftmax", "log_softmax")


# -- shape ops ------------------------------------------------------------------------------------


@_converts("Reshape", needs=("reshape",))
def _reshape(ctx: _Ctx) -> list[_Val]:
    x = ctx.inp(0)
    if ctx.opset < 5:
        target = list(ctx.attr("shape", ()))
    else:
        target = [int(d) for d in ctx.const(1, "shape").reshape(-1)]
    allowzero = ctx.attr("allowzero", 0)
    for i, d in enumerate(target):
        if d == 0 and not allowzero:
            if i >= x.spec.ndim:
                raise ctx.fail(f"shape {tuple(target)} copies dim {i}, but the input has rank "
                               f"{x.spec.ndim}")
            target[i] = x.spec.shape[i]
    if target.count(-1) > 1:
        raise ctx.fail(f"shape {tuple(target)} has more than one -1")
    if -1 in target:
        known = math.prod(d for d in target if d != -1)
        if known == 0 or x.spec.size % known:
            raise ctx.fail(f"cannot reshape {x.spec} to {tuple(target)}")
        target[target.index(-1)] = x.spec.size // known
    if math.prod(target) != x.spec.size:
        raise ctx.fail(f"cannot reshape {x.spec} to {tuple(target)}")
    if tuple(target) == x.spec.shape:
        return [x]
    return [ctx.emit("reshape", [x], shape=tuple(target))]


@_converts("Flatten", needs=("flatten",))
def _flatten(ctx: _Ctx) -> list[_Val]:
    x = ctx.inp(0)
    axis = int(ctx.attr("axis", 1))
    nd = x.spec.ndim
    if not -nd <= axis <= nd:
        raise ctx.fail(f"axis {axis} out of range for rank {nd}")
    return [ctx.emit("flatten", [x], axis=axis + nd if axis < 0 else axis)]


@_converts("Transpose", needs=("transpose",))
def _transpose(ctx: _Ctx) -> list[_Val]:
    x = ctx.inp(0)
    perm = ctx.attr("perm")
    perm = tuple(reversed(range(x.spec.ndim))) if perm is None else tuple(int(p) for p in perm)
    return [ctx.emit("transpose", [x], perm=perm)]


@_converts("Concat", needs=("concat",))
def _concat(ctx: _Ctx) -> list[_Val]:
    ins = [v for v in ctx.ins if v is not None]
    axis = ctx.attr("axis", 1 if ctx.opset < 4 else None)
    if axis is None:
        raise ctx.fail("attribute 'axis' is required")
    nd = ins[0].spec.ndim
    if len(ins) == 1:
        return [ins[0]]
    return [ctx.emit("concat", ins, axis=ctx.axis(int(axis), nd))]


@_converts("Split", needs=("split",))
def _split(ctx: _Ctx) -> list[_Val]:
    x = ctx.inp(0)
    axis = ctx.axis(int(ctx.attr("axis", 0)), x.spec.ndim)
    dim = x.spec.shape[axis]
    if ctx.opset >= 13:
        arr = ctx.const(1, "split")
        sizes = None if arr is None else tuple(int(s) for s in arr)
    else:
        sizes = ctx.attr("split")
        if sizes is None and ctx.opset < 2:
            arr = ctx.const(1, "split")
            sizes = None if arr is None else tuple(int(s) for s in arr)
    n = ctx.n_outputs
    if not sizes:
        if ctx.has_attr("num_outputs") and int(ctx.attr("num_outputs")) != n:
            raise ctx.fail(f"num_outputs is {ctx.attr('num_outputs')}, but the node has {n} "
                           "outputs")
        if n < 1:
            raise ctx.fail("the node has no outputs")
        chunk = -(-dim // n)
        sizes = tuple(min(chunk, dim - i * chunk) for i in range(n))
    if len(sizes) != n:
        raise ctx.fail(f"{len(sizes)} split sizes for {n} outputs")
    if sum(sizes) != dim or any(sz < 0 for sz in sizes):
        raise ctx.fail(f"split sizes {sizes} do not add up to dim {dim}")
    return ctx.emit_multi("split", [x], axis=axis, sizes=tuple(sizes))


@_converts("Slice", needs=("slice",))
def _slice(ctx: _Ctx) -> list[_Val]:
    x = ctx.inp(0)
    if ctx.opset < 10:
        starts, ends, axes, steps = ctx.attr("starts"), ctx.attr("ends"), ctx.attr("axes"), None
    else:
        def ints(i: int, what: str):
            arr = ctx.const(i, what)
            return None if arr is None else tuple(int(v) for v in arr.reshape(-1))

        starts, ends, axes, steps = ints(1, "starts"), ints(2, "ends"), ints(3, "axes"), \
            ints(4, "steps")
    if axes is not None:
        axes = tuple(a % x.spec.ndim for a in axes)
    return [ctx.emit("slice", [x], starts=tuple(starts), ends=tuple(ends), axes=axes,
                     steps=steps)]


def _axes_arg(ctx: _Ctx, since: int) -> tuple[int, ...] | None:
    if ctx.opset >= since:
        arr = ctx.const(1, "axes")
        return None if arr is None else tuple(int(a) for a in arr.reshape(-1))
    axes = ctx.attr("axes")
    return None if axes is None else tuple(int(a) for a in axes)


@_converts("Squeeze", needs=("squeeze",))
def _squeeze(ctx: _Ctx) -> list[_Val]:
    x = ctx.inp(0)
    axes = _axes_arg(ctx, 13)
    if axes is not None:
        axes = tuple(sorted(ctx.axis(a, x.spec.ndim) for a in axes))
    return [ctx.emit("squeeze", [x], axes=axes)]


@_converts("Unsqueeze", needs=("unsqueeze",))
def _unsqueeze(ctx: _Ctx) -> list[_Val]:
    x = ctx.inp(0)
    axes = _axes_arg(ctx, 13)
    if axes is None:
        raise ctx.fail("axes are required")
    out_rank = x.spec.ndim + len(axes)
    return [ctx.emit("unsqueeze", [x], axes=tuple(sorted(a % out_rank for a in axes)))]


@_converts("Pad", needs=("pad",))
def _pad(ctx: _Ctx) -> list[_Val]:
    x = ctx.inp(0)
    nd = x.spec.ndim
    mode = ctx.attr("mode", "constant")
    if ctx.opset < 11:
        pads = tuple(int(p) for p in ctx.attr("pads", ctx.attr("paddings", ())))
        value = float(ctx.attr("value", 0.0))
    else:
        pads_arr = ctx.const(1, "pads")
        if pads_arr is None or pads_arr.dtype.kind not in "iu":
            raise ctx.fail("pads (input 1) must be an integer tensor")
        pads = tuple(int(p) for p in pads_arr.reshape(-1))
        cv = ctx.const(2, "constant_value")
        value = 0.0 if cv is None or cv.size == 0 else cv.reshape(-1)[0].item()
        axes_arr = ctx.const(3, "axes")
        if axes_arr is not None:
            axes = [ctx.axis(int(a), nd) for a in axes_arr.reshape(-1)]
            full = [0] * (2 * nd)
            for k, a in enumerate(axes):
                full[a], full[a + nd] = pads[k], pads[k + len(axes)]
            pads = tuple(full)
    if mode not in ("constant", "reflect", "edge"):
        raise ctx.fail(f"pad mode {mode!r} is not supported (constant, reflect, edge)")
    if x.spec.dtype.kind in "biu" and not _fits(value, x.spec.dtype):
        raise ctx.fail(f"constant value {value!r} is not a {x.spec.dtype.name} (the input's "
                       "type): infinite, NaN, fractional or out of range")
    if len(pads) != 2 * nd:
        raise ctx.fail(f"pads {pads} do not have 2 x rank ({nd}) entries")
    if not any(pads):
        return [x]
    return [ctx.emit("pad", [x], pads=pads, mode=mode, value=value)]


@_converts("Gather", needs=("gather",))
def _gather(ctx: _Ctx) -> list[_Val]:
    x, idx = ctx.inp(0), ctx.inp(1)
    axis = ctx.axis(int(ctx.attr("axis", 0)), x.spec.ndim)
    if idx.is_const:  # negative indices count from the end (ONNX); normalise them here
        arr = idx.array.astype(np.int64)
        idx = ctx.const_val(np.where(arr < 0, arr + x.spec.shape[axis], arr))
    return [ctx.emit("gather", [x, idx], axis=axis)]


@_converts("GatherElements", needs=("gather_elements",))
def _gather_elements(ctx: _Ctx) -> list[_Val]:
    x = ctx.inp(0)
    axis = ctx.axis(int(ctx.attr("axis", 0)), x.spec.ndim)
    return [ctx.emit("gather_elements", [x, ctx.inp(1)], axis=axis)]


@_converts("GatherND", needs=("gather_nd",))
def _gather_nd(ctx: _Ctx) -> list[_Val]:
    return [ctx.emit("gather_nd", [ctx.inp(0), ctx.inp(1)],
                     batch_dims=int(ctx.attr("batch_dims", 0)))]


@_converts("ScatterND", needs=("scatter_nd",))
def _scatter_nd(ctx: _Ctx) -> list[_Val]:
    return [ctx.emit("scatter_nd", [ctx.inp(0), ctx.inp(1), ctx.inp(2)],
                     reduction=ctx.attr("reduction", "none"))]


@_converts("IsNaN", needs=("isnan",))
def _isnan(ctx: _Ctx) -> list[_Val]:
    return [ctx.emit("isnan", [ctx.inp(0)])]


@_converts("IsInf", needs=("isinf",))
def _isinf(ctx: _Ctx) -> list[_Val]:
    return [ctx.emit("isinf", [ctx.inp(0)],
                     detect_positive=int(ctx.attr("detect_positive", 1)),
                     detect_negative=int(ctx.attr("detect_negative", 1)))]


@_converts("TopK", needs=("topk",))
def _topk(ctx: _Ctx) -> list[_Val]:
    x = ctx.inp(0)
    if ctx.opset < 10:
        k = ctx.attr("k")
    else:
        arr = ctx.const(1, "K")
        if arr is None or arr.size != 1 or arr.dtype.kind not in "iu":
            raise ctx.fail("K (input 1) must be one integer")
        k = int(arr.reshape(-1)[0])
    if k is None:
        raise ctx.fail("k is required")
    return ctx.emit_multi("topk", [x], k=int(k),
                          axis=ctx.axis(int(ctx.attr("axis", -1)), x.spec.ndim),
                          largest=int(ctx.attr("largest", 1)), sorted=int(ctx.attr("sorted", 1)))


@_converts("CumSum", needs=("cumsum",))
def _cumsum(ctx: _Ctx) -> list[_Val]:
    x = ctx.inp(0)
    arr = ctx.const(1, "axis")
    if arr is None or arr.size != 1 or arr.dtype.kind not in "iu":
        raise ctx.fail("axis (input 1) must be one integer")
    return [ctx.emit("cumsum", [x], axis=ctx.axis(int(arr.reshape(-1)[0]), x.spec.ndim),
                     exclusive=int(ctx.attr("exclusive", 0)),
                     reverse=int(ctx.attr("reverse", 0)))]


@_converts("Einsum", needs=("einsum",))
def _einsum(ctx: _Ctx) -> list[_Val]:
    ins = [v for v in ctx.ins if v is not None]
    return [ctx.emit("einsum", ins, equation=str(ctx.attr("equation")))]


@_converts("Trilu", needs=("trilu",))
def _trilu(ctx: _Ctx) -> list[_Val]:
    k = ctx.const(1, "k")
    return [ctx.emit("trilu", [ctx.inp(0)], upper=int(ctx.attr("upper", 1)),
                     k=0 if k is None else int(k.reshape(-1)[0]))]


@_converts("Expand", needs=("expand",))
def _expand(ctx: _Ctx) -> list[_Val]:
    x = ctx.inp(0)
    shape = tuple(int(d) for d in ctx.const(1, "shape").reshape(-1))
    try:
        out = tuple(np.broadcast_shapes(x.spec.shape, shape))
    except ValueError:
        raise ctx.fail(f"cannot expand {x.spec} to {shape}") from None
    if out == x.spec.shape:
        return [x]
    return [ctx.emit("expand", [x], shape=out)]


@_converts("Tile", needs=("tile",))
def _tile(ctx: _Ctx) -> list[_Val]:
    x = ctx.inp(0)
    repeats = tuple(int(r) for r in ctx.const(1, "repeats").reshape(-1))
    if len(repeats) != x.spec.ndim:
        raise ctx.fail(f"repeats {repeats} must have one entry per dimension of {x.spec}")
    return [ctx.emit("tile", [x], repeats=repeats)]


@_converts("Identity", "Dropout")
def _identity(ctx: _Ctx) -> list[_Val | None]:
    x = ctx.inp(0)
    if ctx.op_type == "Dropout":
        training = ctx.const(2, "training_mode") if ctx.opset >= 12 else None
        if training is not None and bool(training.reshape(-1)[0]):
            raise ctx.fail("training mode is not supported (inference only)")
        if ctx.opset < 7 and ctx.has_attr("is_test") and not ctx.attr("is_test"):
            raise ctx.fail("is_test=0 (training) is not supported (inference only)")
        if ctx.n_outputs > 1 and ctx.node.output[1]:
            dtype = np.dtype(np.bool_ if ctx.opset >= 10 else x.spec.dtype)
            if x.is_const:
                ctx.charge(x.spec.shape, dtype, "the all-ones Dropout mask")
                return [x, ctx.const_val(np.ones(x.spec.shape, dtype))]
            # the mask of a run-time value is made at run time: a one-element constant
            # expanded there, never an input-sized array at import
            one = ctx.const_val(np.ones((), dtype))
            return [x, ctx.emit("expand", [one], fold=False, shape=x.spec.shape)]
    return [x]


# -- constants and shapes (folded) ----------------------------------------------------------------


@_converts("Constant")
def _constant(ctx: _Ctx) -> list[_Val]:
    for key, dtype in (("value", None), ("value_float", np.float32), ("value_floats", np.float32),
                       ("value_int", np.int64), ("value_ints", np.int64)):
        if ctx.has_attr(key):
            value = ctx.attr(key)
            return [ctx.const_val(np.asarray(value, dtype) if dtype else value)]
    raise ctx.fail("only tensor, float(s) and int(s) constants are supported "
                   f"(got {', '.join(a.name for a in ctx.node.attribute) or 'no value'})")


@_converts("ConstantOfShape")
def _constant_of_shape(ctx: _Ctx) -> list[_Val]:
    shape = tuple(int(d) for d in ctx.const(0, "shape").reshape(-1))
    if any(d < 0 for d in shape):
        raise ctx.fail(f"shape {shape} has a negative dimension")
    value = ctx.attr("value")
    fill = np.zeros(1, np.float32) if value is None else value.reshape(-1)
    if fill.size != 1:
        raise ctx.fail(f"value must hold one element, it holds {fill.size}")
    ctx.charge(shape, fill.dtype, f"a constant of shape {shape}")
    return [ctx.const_val(np.full(shape, fill[0], fill.dtype))]


@_converts("Shape")
def _shape(ctx: _Ctx) -> list[_Val]:
    shape = np.asarray(ctx.spec(0).shape, np.int64)
    start, end = ctx.attr("start", 0), ctx.attr("end")
    return [ctx.const_val(shape[start:end])]


@_converts("Size")
def _size(ctx: _Ctx) -> list[_Val]:
    return [ctx.const_val(np.asarray(ctx.spec(0).size, np.int64))]


# -- neural network ops ---------------------------------------------------------------------------


def _resolve_pads(ctx: _Ctx, in_hw: Sequence[int], kernel: Sequence[int],
                  strides: Sequence[int], dilations: Sequence[int], ceil_mode: int = 0
                  ) -> tuple[int, ...]:
    """Explicit pads (begins..., ends...) from ``pads`` or ``auto_pad``."""
    nd = len(in_hw)
    auto = ctx.attr("auto_pad", "NOTSET")
    if auto in ("NOTSET", ""):
        pads = ctx.attr("pads", (0,) * (2 * nd))
        if len(pads) != 2 * nd:
            raise ctx.fail(f"pads {tuple(pads)} need {2 * nd} entries")
        return tuple(int(p) for p in pads)
    if auto == "VALID":
        return (0,) * (2 * nd)
    if auto not in ("SAME_UPPER", "SAME_LOWER"):
        raise ctx.fail(f"unknown auto_pad {auto!r}")
    begins, ends = [], []
    for n, k, s, d in zip(in_hw, kernel, strides, dilations):
        out = -(-n // s)
        total = max((out - 1) * s + (k - 1) * d + 1 - n, 0)
        small = total // 2
        if auto == "SAME_UPPER":
            begins.append(small)
            ends.append(total - small)
        else:
            begins.append(total - small)
            ends.append(small)
    return tuple(begins + ends)


def _spatial_rank(ctx: _Ctx, x: _Val) -> int:
    """Spatial dims of an N,C,... input for the 2-D ops: 2 (native) or 1 (run as 2-D with a
    unit width); 3-D and up go to the N-d ops before this is asked."""
    nsp = x.spec.ndim - 2
    if nsp < 1:
        raise ctx.fail(f"{ctx.op_type} on a rank-{x.spec.ndim} input: it needs N, C and at "
                       "least one spatial axis")
    if nsp > 2:
        raise ctx.fail(f"{ctx.op_type} on a rank-{x.spec.ndim} input is not supported here")
    return nsp


def _to_2d(ctx: _Ctx, x: _Val) -> _Val:
    return ctx.emit("reshape", [x], shape=x.spec.shape + (1,))


def _from_2d(ctx: _Ctx, y: _Val) -> _Val:
    return ctx.emit("reshape", [y], shape=y.spec.shape[:-1])


def _pair(values: Sequence[int], nsp: int, fill: int) -> tuple[int, ...]:
    """Per-spatial-dim values for the 2-D op (1-D ops get a unit second dim)."""
    values = tuple(int(v) for v in values)
    return values if nsp == 2 else values + (fill,)


def _pads_2d(pads: tuple[int, ...], nsp: int) -> tuple[int, ...]:
    return pads if nsp == 2 else (pads[0], 0, pads[1], 0)


def _nd_window(ctx: _Ctx, x: _Val, kernel: Sequence[int]) -> dict[str, tuple[int, ...]]:
    """strides, pads and dilations of a window op on any number of spatial axes."""
    nsp = x.spec.ndim - 2
    if nsp < 1:
        raise ctx.fail(f"needs an N,C,spatial... input, got {x.spec}")
    strides = tuple(int(v) for v in ctx.attr("strides", (1,) * nsp))
    dilations = tuple(int(v) for v in ctx.attr("dilations", (1,) * nsp))
    pads = _resolve_pads(ctx, x.spec.shape[2:], kernel, strides, dilations)
    return {"strides": strides, "pads": pads, "dilations": dilations}


@_converts("Conv", needs=("conv2d", "conv_nd", "reshape"))
def _conv(ctx: _Ctx) -> list[_Val]:
    x, w = ctx.inp(0), ctx.inp(1)
    kernel = tuple(ctx.attr("kernel_shape", w.spec.shape[2:]))
    if x.spec.ndim >= 5:  # 3-D and up: the N-d op
        ins = [x, w] + ([ctx.inp(2)] if ctx.opt(2) is not None else [])
        return [ctx.emit("conv_nd", ins, groups=int(ctx.attr("group", 1)),
                         **_nd_window(ctx, x, kernel))]
    nsp = _spatial_rank(ctx, x)
    strides = tuple(ctx.attr("strides", (1,) * nsp))
    dilations = tuple(ctx.attr("dilations", (1,) * nsp))
    pads = _resolve_pads(ctx, x.spec.shape[2:], kernel, strides, dilations)
    ins = [x, w]
    if nsp == 1:
        ins = [_to_2d(ctx, x), _to_2d(ctx, w)]
    b = ctx.opt(2)
    if b is not None:
        ins.append(b)
    y = ctx.emit("conv2d", ins, strides=_pair(strides, nsp, 1), pads=_pads_2d(pads, nsp),
                 dilations=_pair(dilations, nsp, 1), groups=int(ctx.attr("group", 1)))
    return [_from_2d(ctx, y) if nsp == 1 else y]


def _pool_nd(ctx: _Ctx, op: str) -> list[_Val]:
    """MaxPool / AveragePool through the N-d ops: 3-D and up, and what the 2-D ops lack
    (integer inputs, MaxPool's Indices, AveragePool's dilations)."""
    x = ctx.inp(0)
    kernel = tuple(int(k) for k in ctx.attr("kernel_shape"))
    attrs: dict[str, Any] = {"kernel_shape": kernel, "ceil_mode": int(ctx.attr("ceil_mode", 0)),
                             **_nd_window(ctx, x, kernel)}
    if op == "avg_pool_nd":
        attrs["count_include_pad"] = int(ctx.attr("count_include_pad", 0))
        return [ctx.emit(op, [x], **attrs)]
    indices = ctx.n_outputs > 1 and bool(ctx.node.output[1])
    return ctx.emit_multi(op, [x], indices=int(indices),
                          storage_order=int(ctx.attr("storage_order", 0)), **attrs)


def _needs_pool_nd(ctx: _Ctx, op: str) -> bool:
    x = ctx.inp(0)
    if x.spec.ndim >= 5 or x.spec.ndim < 3:
        return True
    if op == "max_pool2d":
        return x.spec.dtype.kind != "f" or (ctx.n_outputs > 1 and bool(ctx.node.output[1]))
    return any(d != 1 for d in ctx.attr("dilations", ()))


def _pool(ctx: _Ctx, op: str) -> _Val:
    x = ctx.inp(0)
    nsp = _spatial_rank(ctx, x)
    kernel = tuple(ctx.attr("kernel_shape"))
    strides = tuple(ctx.attr("strides", (1,) * nsp))
    dilations = tuple(ctx.attr("dilations", (1,) * nsp))
    pads = _resolve_pads(ctx, x.spec.shape[2:], kernel, strides, dilations)
    attrs: dict[str, Any] = {"kernel_shape": _pair(kernel, nsp, 1),
                             "strides": _pair(strides, nsp, 1), "pads": _pads_2d(pads, nsp),
                             "ceil_mode": int(ctx.attr("ceil_mode", 0))}
    if op == "max_pool2d":
        if ctx.n_outputs > 1 and ctx.node.output[1]:
            raise ctx.fail("the Indices output of MaxPool is not supported")
        attrs["dilations"] = _pair(dilations, nsp, 1)
    else:
        if any(d != 1 for d in dilations):
            raise ctx.fail("AveragePool with dilations is not supported")
        attrs["count_include_pad"] = int(ctx.attr("count_include_pad", 0))
    if nsp == 1:
        return _from_2d(ctx, ctx.emit(op, [_to_2d(ctx, x)], **attrs))
    return ctx.emit(op, [x], **attrs)


@_converts("MaxPool", needs=("max_pool2d", "max_pool_nd", "reshape"))
def _max_pool(ctx: _Ctx) -> list[_Val]:
    if _needs_pool_nd(ctx, "max_pool2d") or ctx.attr("storage_order", 0):
        return _pool_nd(ctx, "max_pool_nd")
    return [_pool(ctx, "max_pool2d")]


@_converts("AveragePool", needs=("avg_pool2d", "avg_pool_nd", "reshape"))
def _avg_pool(ctx: _Ctx) -> list[_Val]:
    if _needs_pool_nd(ctx, "avg_pool2d"):
        return _pool_nd(ctx, "avg_pool_nd")
    return [_pool(ctx, "avg_pool2d")]


@_converts("ConvTranspose", needs=("conv_transpose",))
def _conv_transpose(ctx: _Ctx) -> list[_Val]:
    x, w = ctx.inp(0), ctx.inp(1)
    nsp = x.spec.ndim - 2
    if nsp < 1 or w.spec.ndim != x.spec.ndim:
        raise ctx.fail(f"input {x.spec} and weight {w.spec} must be N,C,spatial... of one rank")
    kernel = tuple(int(k) for k in ctx.attr("kernel_shape", w.spec.shape[2:]))
    if kernel != w.spec.shape[2:]:
        raise ctx.fail(f"kernel_shape {kernel} differs from the weight's {w.spec.shape[2:]}")
    strides = tuple(int(v) for v in ctx.attr("strides", (1,) * nsp))
    dilations = tuple(int(v) for v in ctx.attr("dilations", (1,) * nsp))
    extra = tuple(int(v) for v in ctx.attr("output_padding", (0,) * nsp))
    if len(strides) != nsp or len(dilations) != nsp or len(extra) != nsp:
        raise ctx.fail(f"strides {strides}, dilations {dilations} and output_padding {extra} "
                       f"need {nsp} entries")
    auto = ctx.attr("auto_pad", "NOTSET") or "NOTSET"
    if auto not in ("NOTSET", "VALID", "SAME_UPPER", "SAME_LOWER"):
        raise ctx.fail(f"unknown auto_pad {auto!r}")
    shape = ctx.attr("output_shape")
    if shape is not None and len(shape) == nsp + 2:
        shape = shape[2:]
    if shape is None and auto in ("SAME_UPPER", "SAME_LOWER"):
        shape = tuple(n * s for n, s in zip(x.spec.shape[2:], strides))
    if shape is not None:
        if len(shape) != nsp:
            raise ctx.fail(f"output_shape {tuple(shape)} needs {nsp} entries")
        # ONNX: the pads that give output_shape, the odd one at the end (at the start for
        # SAME_UPPER's mirror image, SAME_LOWER... as the spec words it)
        begins, ends = [], []
        for n, k, s, d, e, o in zip(x.spec.shape[2:], kernel, strides, dilations, extra, shape):
            total = s * (n - 1) + e + (k - 1) * d + 1 - int(o)
            if auto == "SAME_UPPER":
                begins.append(total // 2)
                ends.append(total - total // 2)
            else:
                begins.append(total - total // 2)
                ends.append(total // 2)
        pads = tuple(begins + ends)
    elif auto == "VALID":
        pads = (0,) * (2 * nsp)
    else:
        pads = tuple(int(p) for p in ctx.attr("pads", (0,) * (2 * nsp)))
        if len(pads) != 2 * nsp or min(pads) < 0:
            raise ctx.fail(f"pads {pads} must be {2 * nsp} non-negative integers")
    ins = [x, w] + ([ctx.inp(2)] if ctx.opt(2) is not None else [])
    return [ctx.emit("conv_transpose", ins, strides=strides, pads=pads, dilations=dilations,
                     output_padding=extra, groups=int(ctx.attr("group", 1)))]


def _resize_geometry(ctx: _Ctx, shape: tuple[int, ...], scales: np.ndarray | None,
                     sizes: np.ndarray | None, axes: tuple[int, ...] | None,
                     roi: np.ndarray | None) -> tuple[tuple[int, ...], tuple[float, ...],
                                                      tuple[float, ...]]:
    """Per-axis output sizes, scales and roi (begins, then ends) of a Resize, as
    onnx.reference's ``_interpolate_nd`` derives them (axes, keep_aspect_ratio_policy)."""
    r = len(shape)
    axes = tuple(range(r)) if axes is None else tuple(ctx.axis(int(a), r) for a in axes)
    if len(set(axes)) != len(axes):
        raise ctx.fail(f"axes {axes} repeat an axis")
    if roi is not None and roi.size:
        roi = roi.astype(np.float64).reshape(-1)
        if roi.size != 2 * len(axes):
            raise ctx.fail(f"roi has {roi.size} values; {2 * len(axes)} needed")
        full = [0.0] * r + [1.0] * r
        for i, a in enumerate(axes):
            full[a], full[r + a] = float(roi[i]), float(roi[len(axes) + i])
        roi_t = tuple(full)
    else:
        roi_t = ()
    if sizes is not None:
        sizes = sizes.reshape(-1)
        if sizes.size != len(axes) or sizes.dtype.kind not in "iu" or (sizes < 0).any():
            raise ctx.fail(f"sizes {sizes.tolist()} must be {len(axes)} non-negative integers")
        out = list(shape)
        for i, a in enumerate(axes):
            out[a] = int(sizes[i])
        scale = [o / n if n else 1.0 for o, n in zip(out, shape)]
        policy = ctx.attr("keep_aspect_ratio_policy", "stretch")
        if policy not in ("stretch", "not_larger", "not_smaller"):
            raise ctx.fail(f"unknown keep_aspect_ratio_policy {policy!r}")
        if policy != "stretch":
            pick = min if policy == "not_larger" else max
            one = pick(scale[a] for a in axes)
            scale = [one if i in axes else 1.0 for i in range(r)]
            out = [int(one * shape[i] + 0.5) if i in axes else shape[i] for i in range(r)]
    else:
        if scales is None:
            raise ctx.fail("needs scales or sizes")
        scales = scales.astype(np.float64).reshape(-1)
        if scales.size != len(axes) or not np.all(np.isfinite(scales)) or (scales <= 0).any():
            raise ctx.fail(f"scales {scales.tolist()} must be {len(axes)} positive numbers")
        scale = [1.0] * r
        for i, a in enumerate(axes):
            scale[a] = float(scales[i])
        out = [int(s * n) for s, n in zip(scale, shape)]
    return tuple(out), tuple(float(s) for s in scale), roi_t


def _emit_resize(ctx: _Ctx, x: _Val, sizes, scales, roi, **attrs: Any) -> _Val:
    return ctx.emit("resize", [x], sizes=sizes, scales=scales, roi=roi, **attrs)


@_converts("Resize", needs=("resize",))
def _resize(ctx: _Ctx) -> list[_Val]:
    x = ctx.inp(0)
    mode = ctx.attr("mode", "nearest")
    if ctx.opset < 11:  # X, scales; asymmetric coordinates, onnxruntime's nearest rounding
        scales = ctx.const(1, "scales")
        sizes, scale, roi = _resize_geometry(ctx, x.spec.shape, scales, None, None, None)
        return [_emit_resize(ctx, x, sizes, scale, roi, mode=mode, nearest_mode="simple",
                             coordinate_transformation_mode="asymmetric")]
    roi = ctx.const(1, "roi")
    scales = ctx.const(2, "scales")
    sizes_in = ctx.const(3, "sizes")
    if scales is not None and scales.size == 0:
        scales = None
    if sizes_in is not None and sizes_in.size == 0:
        sizes_in = None
    if (scales is None) == (sizes_in is None):
        raise ctx.fail("exactly one of scales and sizes must be given")
    axes = ctx.attr("axes")
    sizes, scale, roi_t = _resize_geometry(ctx, x.spec.shape, scales, sizes_in, axes, roi)
    transform = ctx.attr("coordinate_transformation_mode", "half_pixel")
    if transform != "tf_crop_and_resize":
        roi_t = ()
    return [_emit_resize(
        ctx, x, sizes, scale, roi_t, mode=mode, coordinate_transformation_mode=transform,
        nearest_mode=ctx.attr("nearest_mode", "round_prefer_floor"),
        cubic_coeff_a=float(ctx.attr("cubic_coeff_a", -0.75)),
        exclude_outside=int(ctx.attr("exclude_outside", 0)),
        extrapolation_value=float(ctx.attr("extrapolation_value", 0.0)),
        antialias=int(ctx.attr("antialias", 0)))]


@_converts("Upsample", needs=("resize",))
def _upsample(ctx: _Ctx) -> list[_Val]:
    x = ctx.inp(0)
    if ctx.opset < 9:
        scales = ctx.attr("scales")
        if scales is None:
            raise ctx.fail("scales is required")
        scales = np.asarray(scales, np.float64)
    else:
        scales = ctx.const(1, "scales")
    sizes, scale, roi = _resize_geometry(ctx, x.spec.shape, scales, None, None, None)
    mode = ctx.attr("mode", "nearest")
    mode = "linear" if mode == "bilinear" else mode
    return [_emit_resize(ctx, x, sizes, scale, roi, mode=mode, nearest_mode="simple",
                         coordinate_transformation_mode="asymmetric")]


@_converts("Attention", needs=("attention",))
def _attention(ctx: _Ctx) -> list[_Val | None]:
    q, k, v = ctx.inp(0), ctx.inp(1), ctx.inp(2)
    mask, past_k, past_v = ctx.opt(3), ctx.opt(4), ctx.opt(5)
    nonpad = ctx.opt(6)
    if (past_k is None) != (past_v is None):
        raise ctx.fail("past_key and past_value must be given together")
    if nonpad is not None and past_k is not None:
        raise ctx.fail("nonpad_kv_seqlen cannot be combined with past_key/past_value")
    ins = [q, k, v] + [t for t in (mask, past_k, past_v, nonpad) if t is not None]
    wanted = [bool(o) for o in ctx.node.output]
    n = max((i + 1 for i, w in enumerate(wanted) if w), default=1)
    scale = ctx.attr("scale")
    if scale is not None and float(scale) == 0.0:  # hetero's attention reads 0 as "default"
        raise ctx.fail("scale=0 (every score zero) is not supported")
    outs = ctx.emit_multi(
        "attention", ins, has_mask=int(mask is not None), has_past=int(past_k is not None),
        has_nonpad=int(nonpad is not None), is_causal=int(ctx.attr("is_causal", 0)),
        scale=0.0 if scale is None else float(scale),
        q_num_heads=int(ctx.attr("q_num_heads", 0)), kv_num_heads=int(ctx.attr("kv_num_heads", 0)),
        softcap=float(ctx.attr("softcap", 0.0)),
        qk_matmul_output_mode=int(ctx.attr("qk_matmul_output_mode", 0)),
        left_window_size=int(ctx.attr("left_window_size", -1)),
        right_window_size=int(ctx.attr("right_window_size", -1)), outputs=n)
    return [o if w else None for o, w in zip(outs, wanted)]


@_converts("NonZero")
def _nonzero(ctx: _Ctx) -> list[_Val]:
    x = ctx.inp(0)
    if not x.is_const:
        raise StaticInputError(
            f"{ctx.where} (NonZero): NonZero of a run-time value has a data-dependent output "
            "shape, which hetero's static-shape plans cannot hold; it runs only where its "
            "input is computed from constants and shapes (this one depends on graph input(s) "
            f"{', '.join(sorted(x.sources)) or 'unknown'}: pass their values as static_inputs)",
            x.sources)
    if x.spec.ndim == 0:
        raise ctx.fail("NonZero of a rank-0 tensor is not supported")
    ctx.charge((max(x.spec.ndim, 1), x.spec.size), np.int64, "NonZero's indices")
    return [ctx.const_val(np.asarray(np.nonzero(x.array), np.int64).reshape(x.spec.ndim, -1))]


def _global_pool_converter(onnx_op: str, op: str) -> None:
    @_converts(onnx_op, needs=(op, "reshape"))
    def convert(ctx: _Ctx) -> list[_Val]:
        x = ctx.inp(0)
        shape = x.spec.shape
        if x.spec.ndim >= 5:  # 3-D and up: one flattened spatial axis, then the N-d shape back
            flat = ctx.emit("reshape", [x], shape=shape[:2] + (math.prod(shape[2:]), 1))
            return [ctx.emit("reshape", [ctx.emit(op, [flat])],
                             shape=shape[:2] + (1,) * (x.spec.ndim - 2))]
        if _spatial_rank(ctx, x) == 1:
            return [_from_2d(ctx, ctx.emit(op, [_to_2d(ctx, x)]))]
        return [ctx.emit(op, [x])]


_global_pool_converter("GlobalAveragePool", "global_avg_pool")
_global_pool_converter("GlobalMaxPool", "global_max_pool")


@_converts("BatchNormalization", needs=("batch_norm", "reshape"))
def _batch_norm(ctx: _Ctx) -> list[_Val]:
    if any(o for o in ctx.node.output[1:]):
        raise ctx.fail("training-mode outputs (running mean/var) are not supported")
    if ctx.attr("training_mode", 0):
        raise ctx.fail("training_mode=1 is not supported (inference only)")
    if ctx.opset < 7 and ctx.has_attr("is_test") and not ctx.attr("is_test"):
        raise ctx.fail("is_test=0 (training) is not supported (inference only)")
    if ctx.opset < 9 and not ctx.attr("spatial", 1):
        raise ctx.fail("spatial=0 is not supported")
    x = ctx.inp(0)
    params = [ctx.inp(i) for i in range(1, 5)]
    eps = float(ctx.attr("epsilon", 1e-5))
    if x.spec.ndim == 4:
        return [ctx.emit("batch_norm", [x, *params], epsilon=eps)]
    if x.spec.ndim < 2:
        raise ctx.fail(f"input of rank {x.spec.ndim}; needs N,C,...")
    shape = x.spec.shape
    as4 = shape[:2] + (math.prod(shape[2:]), 1)  # any N,C,... input normalises per channel
    y = ctx.emit("batch_norm", [ctx.emit("reshape", [x], shape=as4), *params], epsilon=eps)
    return [ctx.emit("reshape", [y], shape=shape)]


@_converts("InstanceNormalization", needs=("instance_norm",))
def _instance_norm(ctx: _Ctx) -> list[_Val]:
    return [ctx.emit("instance_norm", [ctx.inp(0), ctx.inp(1), ctx.inp(2)],
                     epsilon=float(ctx.attr("epsilon", 1e-5)))]


@_converts("LayerNormalization", needs=("layer_norm",))
def _layer_norm(ctx: _Ctx) -> list[_Val]:
    ins = [ctx.inp(0), ctx.inp(1)]
    if ctx.opt(2) is not None:
        ins.append(ctx.inp(2))
    return ctx.emit_multi("layer_norm", ins, axis=int(ctx.attr("axis", -1)),
                          epsilon=float(ctx.attr("epsilon", 1e-5)),
                          stash_type=int(ctx.attr("stash_type", 1)))


@_converts("LRN", needs=("lrn",))
def _lrn(ctx: _Ctx) -> list[_Val]:
    return [ctx.emit("lrn", [ctx.inp(0)], size=int(ctx.attr("size")),
                     alpha=float(ctx.attr("alpha", 1e-4)), beta=float(ctx.attr("beta", 0.75)),
                     bias=float(ctx.attr("bias", 1.0)))]


# ----------------------------------------------------------------------------------------------
# Tensors, external data


_DTYPES = frozenset({"bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32",
                     "uint64", "float16", "float32", "float64"})


def _onnx_dtype(code: int, ctx: _Ctx | None = None) -> np.dtype:
    import onnx.helper

    try:
        dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(int(code)))
    except Exception:
        dtype = None
    if dtype is None or dtype.name not in _DTYPES:
        name = onnx.TensorProto.DataType.Name(int(code)) if code in \
            onnx.TensorProto.DataType.values() else str(code)
        msg = (f"tensor type {name} is not supported (bool, int8-64, uint8-64, float16/32/64 "
               "are)")
        raise ctx.fail(msg) if ctx else ModelError(msg)
    return dtype


def _safe_external_path(folder: str | None, location: str, where: str) -> str:
    """The file named by ``location`` if it lies inside ``folder``; ModelError otherwise."""
    if folder is None:
        raise ModelError(f"{where}: tensor data is stored in external file {location!r}, but the "
                         "model was given as a ModelProto; load it from its path instead")
    parts = location.replace("\\", "/").split("/")
    if os.path.isabs(location) or location.startswith(("/", "\\")) or ".." in parts or \
            (len(location) > 1 and location[1] == ":"):
        raise ModelError(f"{where}: refusing external data location {location!r}: it must be a "
                         "relative path inside the model's folder")
    root = os.path.realpath(folder)
    path = os.path.realpath(os.path.join(root, location))
    if os.path.commonpath([root, path]) != root:
        raise ModelError(f"{where}: refusing external data location {location!r}: it resolves "
                         f"to {path}, outside the model's folder {root} (symbolic link?)")
    if not os.path.isfile(path):
        raise ModelError(f"{where}: external data file {location!r} not found in {root}")
    return path


def _tensor_to_array(tensor: Any, folder: str | None, where: str) -> np.ndarray:
    """A TensorProto as a NumPy array, reading external data safely."""
    from onnx import TensorProto, numpy_helper

    if tensor.data_location == TensorProto.EXTERNAL:
        info = {e.key: e.value for e in tensor.external_data}
        path = _safe_external_path(folder, info.get("location", ""), where)
        try:
            offset = int(info.get("offset") or 0)
            length = int(info["length"]) if info.get("length") else None
        except ValueError:
            offset = length = -1
        if offset < 0 or (length is not None and length < 0):
            raise ModelError(f"{where}: external data of {tensor.name!r} has an invalid offset "
                             f"or length ({info.get('offset')!r}, {info.get('length')!r})")
        try:
            with open(path, "rb") as f:
                # bounds checked against the file before seeking or reading: a hostile offset
                # or length never reaches seek() or becomes an allocation
                size = os.fstat(f.fileno()).st_size
                if offset > size or (length is not None and length > size - offset):
                    want = "the rest of the file" if length is None else f"{length:,} bytes"
                    raise ModelError(f"{where}: external data file {info['location']!r} holds "
                                     f"{size:,} bytes; {want} at offset {offset:,} expected")
                f.seek(offset)
                raw = f.read(size - offset if length is None else length)
        except OSError as exc:
            raise ModelError(f"{where}: cannot read external data file {info['location']!r}: "
                             f"{exc.strerror or exc}") from None
        if length is not None and len(raw) != length:
            raise ModelError(f"{where}: external data file {info['location']!r} holds "
                             f"{len(raw)} bytes at offset {offset}, {length} expected")
        local = TensorProto()
        local.CopyFrom(tensor)
        del local.external_data[:]
        local.data_location = TensorProto.DEFAULT
        local.raw_data = raw
        tensor = local
    if tensor.data_type:
        _onnx_dtype(tensor.data_type)
    try:
        return np.asarray(numpy_helper.to_array(tensor))
    except Exception as exc:
        raise ModelError(f"{where}: tensor {tensor.name!r} cannot be read: {exc}") from None


# ----------------------------------------------------------------------------------------------
# The importer


class _Importer:
    def __init__(self, model: Any, source: str, folder: str | None,
                 input_shapes: Mapping[str, Sequence[int]] | None = None,
                 static_inputs: Mapping[str, Any] | None = None,
                 dims: Mapping[str, int] | None = None, *,
                 fold_budget: int | None = None) -> None:
        self.model = model
        self.source = source
        self.folder = folder
        self.input_shapes = _check_input_shapes(model, input_shapes)
        self.dims = _check_dims(dims)
        self.static_inputs = {k: np.array(v, copy=True) for k, v in (static_inputs or {}).items()}
        if fold_budget is not None and (isinstance(fold_budget, bool) or
                                        not isinstance(fold_budget, int) or fold_budget < 0):
            raise ModelError(f"fold_budget must be a non-negative number of bytes, got "
                             f"{fold_budget!r}")
        self.fold_budget = fold_budget
        self.builder = _Builder(_clean(model.graph.name or "onnx"), 0, 0)
        self.opset = _opset(model)

    def run(self) -> Graph:
        try:
            return self._run()
        except UnicodeDecodeError as exc:  # a name or string attribute that is not UTF-8
            raise ModelError(f"{self.source}: not a valid ONNX model: a name or string is not "
                             f"valid UTF-8 ({exc})") from None

    def _run(self) -> Graph:
        g = self.model.graph
        _check_names(g, self.source)
        _check_supported(self.model, self.source)
        env: dict[str, _Val] = {}
        inits = {t.name for t in g.initializer}
        for t in g.initializer:
            arr = _tensor_to_array(t, self.folder, f"{self.source}:{t.name}")
            env[t.name] = _Val(TensorSpec.of(arr), array=arr, hint=t.name)
        if self.fold_budget is None:
            self.builder.fold_budget = _default_fold_budget(sum(v.array.nbytes
                                                                for v in env.values()))
            self.builder.array_limit = min(DEFAULT_FOLD_ARRAY_LIMIT, self.builder.fold_budget)
        else:
            self.builder.fold_budget = self.builder.array_limit = self.fold_budget
        for vi in g.input:
            if vi.name in inits:
                continue  # (IR < 4) an initializer listed as an input: a constant
            if vi.name in self.static_inputs:
                arr = self.static_inputs[vi.name]
                env[vi.name] = _Val(TensorSpec.of(arr), array=arr, hint=vi.name)
                continue
            spec = self._input_spec(vi)
            name = self.builder.fresh(vi.name)
            if name != vi.name:
                raise ModelError(f"{self.source}: graph input name {vi.name!r} is used twice")
            value = self.builder.graph.input(name, spec, soft=False,
                                             where=f"{self.source}:{vi.name}")
            env[vi.name] = _Val(spec, value=value, sources=frozenset({vi.name}))
        for index, node in enumerate(g.node):
            self._convert(node, index, env)
        outputs = []
        for vo in g.output:
            v = env.get(vo.name)
            if v is None:
                raise ModelError(f"{self.source}: graph output {vo.name!r} is produced by no node")
            outputs.append(self.builder.materialize(v, vo.name, f"{self.source}:{vo.name}"))
        return self.builder.graph.build(outputs)

    def _input_spec(self, vi: Any) -> TensorSpec:
        where = f"{self.source}: graph input {vi.name!r}"
        tt = vi.type.tensor_type
        if not vi.type.HasField("tensor_type"):
            raise ModelError(f"{where} is not a tensor (sequences, maps and optionals are not "
                             "supported)")
        dtype = _onnx_dtype(tt.elem_type)
        if vi.name in self.input_shapes:
            given = tuple(self.input_shapes[vi.name])
            if tt.HasField("shape") and len(tt.shape.dim) != len(given):
                declared = "x".join(str(d.dim_value) if d.HasField("dim_value")
                                    else (d.dim_param or "?") for d in tt.shape.dim)
                raise ModelError(
                    f"{where} has {len(tt.shape.dim)} dimension(s) ({declared or 'a scalar'}), "
                    f"but the shape given for it, {'x'.join(map(str, given)) or 'scalar'}, "
                    f"has {len(given)}")
            return TensorSpec(given, dtype)
        if not tt.HasField("shape"):
            raise ModelError(f"{where} has no shape; pass input_shapes={{{vi.name!r}: (...)}}")
        dims = []
        for d in tt.shape.dim:
            if d.HasField("dim_value"):
                dims.append(d.dim_value)
            elif d.dim_param and d.dim_param in self.dims:
                dims.append(self.dims[d.dim_param])
            else:
                raise ModelError(f"{where} has a symbolic dimension "
                                 f"{d.dim_param or '?'!r}; a hetero graph has static shapes: "
                                 f"pass input_shapes={{{vi.name!r}: (...)}}"
                                 + (f" or dims={{{d.dim_param!r}: N}}" if d.dim_param else "")
                                 + ", or use hetero.onnx.compile(), which specialises the "
                                 "model for each input shape it is run on")
        return TensorSpec(tuple(dims), dtype)

    def _convert(self, node: Any, index: int, env: dict[str, _Val]) -> None:
        ins: list[_Val | None] = []
        for name in node.input:
            if not name:
                ins.append(None)
                continue
            if name not in env:
                raise ModelError(f"{self.source}:{node.name or f'{node.op_type}#{index}'} "
                                 f"({node.op_type}): input {name!r} is produced by no earlier "
                                 "node (malformed or unsorted graph)")
            ins.append(env[name])
        while ins and ins[-1] is None:
            ins.pop()
        ctx = _Ctx(self, node, index, ins)
        convert, _ = _CONVERTERS[node.op_type]
        try:
            outs = list(convert(ctx))
        except ModelError:
            raise
        except HeteroError as exc:
            raise ModelError(f"{ctx.where} ({node.op_type}): {exc}") from None
        except (TypeError, ValueError, KeyError, IndexError, ZeroDivisionError, OverflowError,
                AttributeError) as exc:
            # attributes or inputs of a shape the converter does not expect: a malformed node
            # (what the checker let through: a float where an int belongs, a missing input...)
            raise ModelError(f"{ctx.where} ({node.op_type}): malformed node: "
                             f"{type(exc).__name__}: {exc}") from exc
        except MemoryError:
            raise ModelError(f"{ctx.where} ({node.op_type}): converting the node ran out of "
                             "memory") from None
        for name, v in zip(node.output, outs):
            if name:
                if v is None:
                    raise ctx.fail(f"output {name!r} is not supported")
                if v.is_const and v.hint is None:
                    v = _Val(v.spec, array=v.array, hint=name)
                env[name] = v
        for name in node.output[len(outs):]:
            if name:
                raise ctx.fail(f"output {name!r} is not supported")


def _check_names(graph: Any, source: str) -> None:
    """Every name in ``graph`` is text: protobuf hands back a string field that is not valid
    UTF-8 as ``bytes``, which would otherwise flow into names and messages."""
    def bad(kind: str, name: Any) -> None:
        if isinstance(name, bytes):
            raise ModelError(f"{source}: not a valid ONNX model: {kind} name {name!r} is not "
                             "valid UTF-8")

    bad("graph", graph.name)
    for group, kind in ((graph.input, "graph input"), (graph.output, "graph output"),
                        (graph.initializer, "initializer"), (graph.value_info, "value_info")):
        for item in group:
            bad(kind, item.name)
    for node in graph.node:
        bad("node", node.name)
        bad("op type", node.op_type)
        bad("domain", node.domain)
        for name in (*node.input, *node.output):
            bad(f"{node.op_type} input or output", name)
        for a in node.attribute:
            bad(f"{node.op_type} attribute", a.name)


def _opset(model: Any) -> int:
    for o in model.opset_import:
        if o.domain in ("", "ai.onnx"):
            return int(o.version)
    return 1


def _check_supported(model: Any, source: str) -> None:
    """Raise one ModelError listing every unsupported op type with its node names."""
    missing: dict[str, list[str]] = {}
    for i, node in enumerate(model.graph.node):
        key = node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}.{node.op_type}"
        entry = _CONVERTERS.get(node.op_type) if node.domain in ("", "ai.onnx") else None
        if entry is None or not all(n in REGISTRY for n in entry[1]):
            missing.setdefault(key, []).append(node.name or f"{node.op_type}#{i}")
    if missing:
        lines = []
        for op, names in sorted(missing.items()):
            shown = ", ".join(names[:8]) + (f", ... ({len(names)} nodes)" if len(names) > 8 else "")
            lines.append(f"  {op}: {shown}")
        raise ModelError(f"{source}: {len(missing)} unsupported ONNX op type(s):\n" +
                         "\n".join(lines) + f"\n(supported: {', '.join(supported_ops())})")


def _read_model(model: Any) -> tuple[Any, str, str | None]:
    """(ModelProto without external data loaded, source label, folder) from a path or proto."""
    import onnx
    from google.protobuf.message import DecodeError

    if isinstance(model, onnx.ModelProto):
        return model, f"{_clean(model.graph.name or 'model')}.onnx", None
    if not isinstance(model, (str, os.PathLike)):
        raise ModelError(f"load() takes a path or an onnx.ModelProto, got {type(model).__name__}")
    path = os.fspath(model)
    if os.path.isdir(path):
        raise ModelError(f"{path}: is a directory, not a model file")
    if not os.path.isfile(path):
        raise ModelError(f"{path}: no such model file")
    try:
        proto = onnx.load(path, load_external_data=False)
    except OSError as exc:
        raise ModelError(f"{path}: cannot read the model file: {exc.strerror or exc}") from None
    except (DecodeError, ValueError, RuntimeError) as exc:
        raise ModelError(f"{path}: not a valid ONNX model: {exc}") from None
    return proto, os.path.basename(path), os.path.dirname(os.path.abspath(path))


def _check_input_shapes(proto: Any, input_shapes: Mapping[str, Any] | None
                        ) -> dict[str, tuple[int, ...]]:
    """``input_shapes`` as tuples of non-negative ints, each naming a graph input."""
    if input_shapes is None:
        return {}
    if not isinstance(input_shapes, Mapping):
        raise ModelError(f"input_shapes is a dict of input name -> shape, got "
                         f"{type(input_shapes).__name__}")
    names = [vi.name for vi in proto.graph.input]
    out = {}
    for name, shape in input_shapes.items():
        if name not in names:
            raise ModelError(f"input_shapes: no graph input named {name!r} "
                             f"(inputs: {', '.join(names) or 'none'})")
        if isinstance(shape, (str, bytes)) or not isinstance(shape, (tuple, list, np.ndarray)) \
                or any(isinstance(d, bool) or not isinstance(d, (int, np.integer)) or d < 0
                       for d in shape):
            raise ModelError(f"input_shapes[{name!r}] must be a tuple of non-negative ints, "
                             f"got {shape!r}")
        out[name] = tuple(int(d) for d in shape)
    return out


def load(model: Any, *, input_shapes: Mapping[str, Sequence[int]] | None = None,
         static_inputs: Mapping[str, Any] | None = None, base_dir: str | None = None,
         dims: Mapping[str, int] | None = None, fold_budget: int | None = None) -> Graph:
    """Import an ONNX model (a path or an ``onnx.ModelProto``) as a hetero Graph.

    A Graph has static shapes. For a model with symbolic dimensions (``batch``, ``sequence``)
    give their values with ``dims`` or whole shapes with ``input_shapes``, or use ``compile``,
    which specialises the model for each input signature it runs on.

    Args:
        model: path to a ``.onnx`` file, or a ModelProto.
        input_shapes: shapes for graph inputs whose declared shape is symbolic or missing.
        dims: values of named symbolic dimensions (``{"batch": 4}``), for every input that
            declares them and has no entry in ``input_shapes``.
        static_inputs: values for graph inputs that become constants (needed where an input
            feeds a Reshape target, Slice bounds, ...); they are not inputs of the Graph.
        base_dir: folder for external tensor data of a ModelProto (a path uses its own folder).
        fold_budget: bytes that constant folding may allocate, for one array and in all. By
            default one folded array may take ``DEFAULT_FOLD_ARRAY_LIMIT`` bytes and all of
            them ``DEFAULT_FOLD_BUDGET`` plus twice the model's initializers, at most a quarter
            of the machine's memory. Past it, the import is a ModelError naming the node.

    Raises:
        ModelError: malformed model, unsupported ops (all listed at once), dynamic shapes, or an
            external data path that leaves the model's folder.
    """
    proto, source, folder = _parse(model, base_dir)
    return _Importer(proto, source, folder, input_shapes, static_inputs, dims,
                     fold_budget=fold_budget).run()


def load_assuming(model: Any, *, input_shapes: Mapping[str, Sequence[int]] | None = None,
                  default: int = 1) -> tuple[Graph, dict[str, tuple[tuple[int, ...], dict]]]:
    """``load`` for a model whose symbolic dimensions may be left open: every input that
    ``input_shapes`` does not give and that declares symbolic dimensions gets a shape where a
    named dimension takes its size from the given inputs that declare it, else ``default``, and
    an unnamed one ``default``. Reads the model once. Returns the Graph and, per input whose
    shape was assumed, ``(shape, {dimension name or None: size})``."""
    proto, source, folder = _parse(model, None)
    given = _check_input_shapes(proto, input_shapes)
    inits = {t.name for t in proto.graph.initializer}
    declared = {vi.name: _declared_dims(vi) for vi in proto.graph.input if vi.name not in inits}
    sizes: dict[str, int] = {}
    for name, shape in given.items():
        dims = declared.get(name)
        if dims is not None and len(dims) == len(shape):
            for d, n in zip(dims, shape):
                if isinstance(d, str):
                    sizes.setdefault(d, n)
    assumed = {}
    for name, dims in declared.items():
        if name in given or dims is None or all(isinstance(d, int) for d in dims):
            continue
        values = {d: sizes.get(d, default) if d else default
                  for d in dims if not isinstance(d, int)}
        shape = tuple(d if isinstance(d, int) else values[d] for d in dims)
        assumed[name] = (shape, values)
    shapes = {**given, **{n: shape for n, (shape, _) in assumed.items()}}
    return _Importer(proto, source, folder, shapes).run(), assumed


#: Bytes of folded constants an import may make beyond twice its initializers (see ``load``).
DEFAULT_FOLD_BUDGET = 2 << 30
#: Bytes one folded constant may take by default (the largest weight of VGG-19 is 392 MiB).
DEFAULT_FOLD_ARRAY_LIMIT = 512 << 20


def _default_fold_budget(initializer_bytes: int) -> int:
    try:
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        memory = 8 << 30
    return min(DEFAULT_FOLD_BUDGET + 2 * initializer_bytes, memory // 4)


def _check_dims(dims: Mapping[str, Any] | None) -> dict[str, int]:
    """``dims`` as a dict of dimension name -> non-negative int."""
    if dims is None:
        return {}
    if not isinstance(dims, Mapping):
        raise ModelError(f"dims is a dict of symbolic dimension name -> size, got "
                         f"{type(dims).__name__}")
    out = {}
    for name, size in dims.items():
        if not isinstance(name, str) or isinstance(size, bool) \
                or not isinstance(size, (int, np.integer)) or size < 0:
            raise ModelError(f"dims[{name!r}] must be a non-negative int, got {size!r}")
        out[name] = int(size)
    return out


def input_dims(model: Any) -> dict[str, tuple[int | str | None, ...] | None]:
    """The declared shape of each graph input of ``model`` (a path or a ModelProto; external
    data is not read): an int per fixed dimension, the name of a symbolic one (``"batch"``),
    None for an unnamed one; None for an input without a declared shape."""
    proto, _, _ = _read_model(model)
    inits = {t.name for t in proto.graph.initializer}
    return {vi.name: _declared_dims(vi) for vi in proto.graph.input if vi.name not in inits}


def _declared_dims(vi: Any) -> tuple[int | str | None, ...] | None:
    tt = vi.type.tensor_type
    if not vi.type.HasField("tensor_type") or not tt.HasField("shape"):
        return None
    return tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
                 for d in tt.shape.dim)


def _parse(model: Any, base_dir: str | None) -> tuple[Any, str, str | None]:
    """Read and check a model: (ModelProto, source label, folder for external data)."""
    import onnx

    proto, source, folder = _read_model(model)
    folder = folder if base_dir is None else base_dir
    if not proto.HasField("graph"):
        raise ModelError(f"{source}: not a valid ONNX model: it has no graph")
    try:
        onnx.checker.check_model(_checker_view(proto))
    except (onnx.checker.ValidationError, ValueError) as exc:
        raise ModelError(f"{source}: not a valid ONNX model: {str(exc).strip()}") from None
    return proto, source, folder


#: Initializers larger than this are shown to the checker as a one-element stand-in.
_CHECKER_INLINE_BYTES = 1 << 16


def _checker_view(proto: Any) -> Any:
    """What the onnx checker is given: ``proto`` with two differences, so the checker checks
    everything else, always.

    - A graph output without a declared type or shape gets a placeholder one (hetero infers it;
      the checker would stop at the first such output and check nothing after it).
    - An initializer stored externally (or large) is replaced by a one-element tensor of its
      type: the checker would resolve an external file against the working directory, not the
      model's folder. ``_tensor_to_array`` reads and checks the real data against the file.

    The view is a new ModelProto that shares nothing with ``proto``; large initializers are
    never copied into it.
    """
    from onnx import ModelProto, TensorProto

    view = ModelProto()
    _copy_fields(proto, view, skip="graph")
    graph = proto.graph
    _copy_fields(graph, view.graph, skip="initializer")
    for t in graph.initializer:
        external = t.data_location == TensorProto.EXTERNAL
        if not external and t.ByteSize() <= _CHECKER_INLINE_BYTES:
            view.graph.initializer.add().CopyFrom(t)
            continue
        stand_in = view.graph.initializer.add(name=t.name, data_type=t.data_type)
        try:
            itemsize = np.dtype(_onnx_dtype(t.data_type)).itemsize
        except ModelError:
            itemsize = 1
        stand_in.raw_data = bytes(itemsize)
    for vo in view.graph.output:
        if not vo.type.HasField("tensor_type") and not vo.type.ListFields():
            vo.type.tensor_type.elem_type = TensorProto.FLOAT
        if vo.type.HasField("tensor_type") and not vo.type.tensor_type.HasField("shape"):
            vo.type.tensor_type.shape.SetInParent()
    return view


def _copy_fields(src: Any, dst: Any, skip: str) -> None:
    """Copy every set field of protobuf message ``src`` into ``dst`` but the one named ``skip``."""
    for field, value in src.ListFields():
        if field.name == skip:
            continue
        repeated = field.is_repeated if hasattr(field, "is_repeated") else \
            field.label == field.LABEL_REPEATED
        if repeated:
            getattr(dst, field.name).extend(value)
        elif field.message_type is not None:
            getattr(dst, field.name).CopyFrom(value)
        else:
            setattr(dst, field.name, value)


# ----------------------------------------------------------------------------------------------
# Running imported graphs, and the onnx.backend Backend


def runner(graph: Graph, machine: Any = None, **options: Any) -> Callable[..., list]:
    """A callable ``run(*arrays) -> list of arrays``: ``graph`` compiled for ``machine``."""
    plan = compile_graph(graph, None if machine is None else resolve_machine(machine), **options)
    return lambda *arrays: list(plan.run(*arrays))


class Model:
    """An ONNX model compiled per input signature: ``compile(path)`` returns one.

    ``model(*arrays)`` (or ``model.run(...)`` with a list or a dict by input name) runs it and
    returns the outputs as a list of NumPy arrays. The first run with a new input signature
    (shapes, dtypes; the values of inputs that must be static) imports the model for those
    shapes and compiles a Plan, which later runs with that signature reuse (``plans``). A model
    with symbolic dimensions (``batch``, ``sequence``) thus runs at any size from one
    ``compile``; each new specialisation is logged on the ``hetero.onnx`` logger with what
    changed ("input x: shape (1, 3, 224, 224) -> (4, 3, 224, 224), batch 1 -> 4"), and a
    warning says so past ``max_plans`` of them.

    Arrays are checked against the declared inputs first: their number, dtype, rank, every
    fixed dimension, and one value per named symbolic dimension across the inputs (a ModelError
    naming the input and dimension otherwise).

    Graph inputs that feed import-time parameters (a Reshape target given as an input, ...)
    are found on the first import attempt (``StaticInputError``) and then treated as static:
    their values become constants and are part of the signature, as a Python argument of
    ``@hetero.function`` is.
    """

    max_plans = 8

    def __init__(self, model: Any, machine: Any = None, base_dir: str | None = None,
                 **options: Any) -> None:
        self.proto, self.source, self.folder = _parse(model, base_dir)
        self.machine = machine
        self.fold_budget = options.pop("fold_budget", None)
        self.options = options
        g = self.proto.graph
        inits = {t.name for t in g.initializer}
        self.inputs = [vi for vi in g.input if vi.name not in inits]
        self.input_names = [vi.name for vi in self.inputs]
        self.declared = {vi.name: _declared_dims(vi) for vi in self.inputs}
        self.static_names: set[str] = set()
        #: signature -> (graph input names, Plan), in the order they were compiled
        self.plans: dict[tuple, tuple[tuple[str, ...], Any]] = {}
        self._lock = threading.Lock()
        _check_supported(self.proto, self.source)
        declared = self._declared()
        if declared is not None:  # compile now, so an unsupported model fails in prepare()
            try:
                self.plans[self._key(declared)] = self._compile(declared, None)
            except StaticInputError as exc:
                self.static_names |= exc.inputs

    def _declared(self) -> list[TensorSpec] | None:
        """The declared input specs, or None if some are symbolic or of unsupported types."""
        specs = []
        for vi in self.inputs:
            dims = self.declared[vi.name]
            if dims is None or any(not isinstance(d, int) for d in dims):
                return None
            try:
                specs.append(TensorSpec(dims, _onnx_dtype(vi.type.tensor_type.elem_type)))
            except ModelError:
                return None
        return specs

    def _key(self, items: Sequence[Any]) -> tuple:
        key = []
        for name, x in zip(self.input_names, items):
            value = x.tobytes() if name in self.static_names and isinstance(x, np.ndarray) \
                else None
            key.append((tuple(x.shape), np.dtype(x.dtype).str, value))
        return tuple(key)

    def _compile(self, specs: Sequence[Any], arrays: Sequence[np.ndarray] | None
                 ) -> tuple[tuple[str, ...], Any]:
        while True:
            static = {} if arrays is None else {
                n: a for n, a in zip(self.input_names, arrays) if n in self.static_names}
            shapes = {n: s.shape for n, s in zip(self.input_names, specs)}
            try:
                graph = _Importer(self.proto, self.source, self.folder, shapes, static,
                                  fold_budget=self.fold_budget).run()
            except StaticInputError as exc:
                if arrays is None or not exc.inputs or exc.inputs <= self.static_names:
                    raise
                self.static_names |= exc.inputs
                continue
            machine = None if self.machine is None else resolve_machine(self.machine)
            return graph.inputs, compile_graph(graph, machine, **self.options)

    def _arrays(self, inputs: Sequence[Any]) -> list[np.ndarray]:
        if len(inputs) == 1 and isinstance(inputs[0], Mapping):
            given = inputs[0]
            unknown = [n for n in given if n not in self.input_names]
            missing = [n for n in self.input_names if n not in given]
            if unknown or missing:
                raise ModelError(f"{self.source} takes inputs {', '.join(self.input_names)}; "
                                 + (f"no input named {', '.join(map(repr, unknown))}"
                                    if unknown else f"missing {', '.join(missing)}"))
            inputs = [given[n] for n in self.input_names]
        elif len(inputs) == 1 and isinstance(inputs[0], (list, tuple)) \
                and len(self.input_names) != 1:
            inputs = list(inputs[0])
        arrays = [np.asarray(x) for x in inputs]
        if len(arrays) != len(self.input_names):
            raise ModelError(f"{self.source} takes {len(self.input_names)} inputs "
                             f"({', '.join(self.input_names)}), got {len(arrays)}")
        self._check(arrays)
        return arrays

    def _check(self, arrays: Sequence[np.ndarray]) -> None:
        """The arrays against the declared inputs (see the class docstring)."""
        named: dict[str, tuple[int, str]] = {}
        for vi, x in zip(self.inputs, arrays):
            name, dims = vi.name, self.declared[vi.name]
            where = f"{self.source}: input {name!r}"
            try:
                want = _onnx_dtype(vi.type.tensor_type.elem_type)
            except ModelError:
                want = None
            if want is not None and x.dtype != want:
                raise ModelError(f"{where} is {want.name}, got an array of {x.dtype.name}")
            if dims is None:
                continue
            if x.ndim != len(dims):
                raise ModelError(f"{where} has shape {_shape_text(dims)} (rank {len(dims)}), "
                                 f"got an array of shape {tuple(x.shape)}")
            for axis, (d, n) in enumerate(zip(dims, x.shape)):
                if isinstance(d, int) and d != n:
                    raise ModelError(f"{where} has shape {_shape_text(dims)}: dimension {axis} "
                                     f"is {d}, got an array of shape {tuple(x.shape)}")
                if isinstance(d, str):
                    seen = named.setdefault(d, (n, name))
                    if seen[0] != n:
                        raise ModelError(f"{where}: dimension {d!r} is {n} here but {seen[0]} "
                                         f"in input {seen[1]!r}")

    def _explain(self, key: tuple) -> str:
        """What changed from the nearest compiled signature to ``key``."""
        if not self.plans:
            return "first run"

        def changes(old: tuple) -> list[str]:
            out = []
            for name, (s0, d0, v0), (s1, d1, v1) in zip(self.input_names, old, key):
                if s0 != s1:
                    dims = self.declared.get(name) or ()
                    named = sorted({f"{d} {a} -> {b}" for d, a, b in zip(dims, s0, s1)
                                    if isinstance(d, str) and a != b})
                    out.append(f"input {name}: shape {s0} -> {s1}"
                               + (f" ({', '.join(named)})" if named else ""))
                if d0 != d1:
                    out.append(f"input {name}: dtype {np.dtype(d0).name} -> {np.dtype(d1).name}")
                if v0 != v1:
                    out.append(f"input {name}: a new value (it is static: it shapes the graph)")
            return out

        return "; ".join(min((changes(old) for old in self.plans), key=len)) or "new signature"

    def plan(self, *inputs: Any) -> Any:
        """The Plan that runs these inputs (compiled now if their signature is new)."""
        return self._entry(self._arrays(inputs))[1]

    def _entry(self, arrays: list[np.ndarray]) -> tuple[tuple[str, ...], Any]:
        key = self._key(arrays)
        entry = self.plans.get(key)
        if entry is not None:
            return entry
        with self._lock:
            key = self._key(arrays)  # static inputs may have been found meanwhile
            entry = self.plans.get(key)
            if entry is not None:
                return entry
            reason = self._explain(key)
            _log.info("specialising %s: %s", self.source, reason)
            entry = self._compile([TensorSpec.of(a) for a in arrays], arrays)
            self.plans[self._key(arrays)] = entry
            if len(self.plans) > self.max_plans:
                warnings.warn(f"{self.source} has been compiled for {len(self.plans)} input "
                              f"signatures (last because {reason}); each costs an import and "
                              "a compile: pad inputs to a few sizes", stacklevel=3)
        return entry

    def run(self, *inputs: Any) -> list[np.ndarray]:
        """The outputs for ``inputs``: arrays in input order, one list of them, or a dict by
        input name."""
        arrays = self._arrays(inputs)
        names, plan = self._entry(arrays)
        by_name = dict(zip(self.input_names, arrays))
        return list(plan.run(*(by_name[n] for n in names)))

    __call__ = run

    def __repr__(self) -> str:
        shapes = ", ".join(f"{n}: {_shape_text(d) if d is not None else '?'}"
                           for n, d in self.declared.items())
        return f"<hetero.onnx.Model {self.source} ({shapes}), {len(self.plans)} plan(s)>"


def _shape_text(dims: Sequence[int | str | None]) -> str:
    return "x".join("?" if d is None else str(d) for d in dims) or "scalar"


def compile(model: Any, machine: Any = None, *, base_dir: str | None = None,
            **options: Any) -> Model:
    """An ONNX model (a path or a ModelProto) ready to run at any input shape it admits: a
    ``Model`` that imports and compiles a Plan per input signature on first use and caches it.
    ``machine`` (a Machine or a spec such as ``"cpu:2,sim:1"``; by default the detected one)
    and ``options`` (policy, cost, ...) are ``hetero.compile``'s."""
    return Model(model, machine, base_dir=base_dir, **options)


def _backend_classes() -> tuple[type, type]:
    from onnx.backend.base import Backend as OnnxBackend
    from onnx.backend.base import BackendRep as OnnxBackendRep

    class BackendRep(OnnxBackendRep):
        """A prepared model: ``run(inputs)`` returns the outputs as a tuple of NumPy arrays."""

        def __init__(self, model: Model) -> None:
            self.model = model

        def run(self, inputs: Any, **kwargs: Any) -> tuple[np.ndarray, ...]:
            if isinstance(inputs, Mapping):
                return tuple(self.model.run(inputs))
            return tuple(self.model.run(*([inputs] if isinstance(inputs, np.ndarray)
                                          else inputs)))

    class Backend(OnnxBackend):
        """``onnx.backend.base.Backend`` that compiles models through hetero.

        ``prepare(model, device="CPU", machine=None, **compile_options)``: ``machine`` is a
        Machine or a spec string ("cpu:2,sim:1"); by default the detected machine.
        """

        @classmethod
        def is_compatible(cls, model: Any, device: str = "CPU", **kwargs: Any) -> bool:
            return True

        @classmethod
        def prepare(cls, model: Any, device: str = "CPU", **kwargs: Any) -> BackendRep:
            if not cls.supports_device(device):
                raise ModelError(f"device {device!r} is not available to hetero")
            machine = kwargs.pop("machine", None)
            return BackendRep(Model(model, machine, **kwargs))

        @classmethod
        def run_model(cls, model: Any, inputs: Any, device: str = "CPU",
                      **kwargs: Any) -> tuple[np.ndarray, ...]:
            return cls.prepare(model, device, **kwargs).run(inputs)

        @classmethod
        def run_node(cls, node: Any, inputs: Any, device: str = "CPU", outputs_info: Any = None,
                     **kwargs: Any) -> tuple[np.ndarray, ...]:
            import onnx.helper

            arrays = [np.asarray(x) for x in inputs]
            names = [n for n in node.input if n]
            graph_inputs = [onnx.helper.make_tensor_value_info(
                n, onnx.helper.np_dtype_to_tensor_dtype(a.dtype), a.shape)
                for n, a in zip(names, arrays)]
            graph_outputs = [onnx.helper.make_empty_tensor_value_info(n) for n in node.output
                             if n]
            opset = kwargs.pop("opset_version", None) or onnx.defs.onnx_opset_version()
            model = onnx.helper.make_model(
                onnx.helper.make_graph([node], "node", graph_inputs, graph_outputs),
                opset_imports=[onnx.helper.make_opsetid("", opset)])
            return cls.run_model(model, arrays, device, **kwargs)

        @classmethod
        def supports_device(cls, device: str) -> bool:
            kind = str(device).split(":")[0].upper()
            if kind == "CPU":
                return True
            if kind == "CUDA":
                try:
                    return bool(Machine.detect().gpus())
                except Exception:
                    return False
            return False

    for cls in (Backend, BackendRep):
        cls.__module__, cls.__qualname__ = __name__, cls.__name__
    return Backend, BackendRep


_LAZY_CLASSES: dict[str, type] = {}


def __getattr__(name: str) -> Any:
    if name in ("Backend", "BackendRep"):
        if not _LAZY_CLASSES:
            backend, rep = _backend_classes()
            _LAZY_CLASSES.update(Backend=backend, BackendRep=rep)
        return _LAZY_CLASSES[name]
    raise AttributeError(f"module 'hetero.onnx' has no attribute {name!r}")


def prepare(model: Any, device: str = "CPU", **kwargs: Any) -> Any:
    """``Backend.prepare``: a BackendRep whose ``run(inputs)`` runs the model through hetero."""
    return __getattr__("Backend").prepare(model, device, **kwargs)


def run_model(model: Any, inputs: Any, device: str = "CPU", **kwargs: Any) -> Any:
    """``Backend.run_model``."""
    return __getattr__("Backend").run_model(model, inputs, device, **kwargs)


def run_node(node: Any, inputs: Any, device: str = "CPU", **kwargs: Any) -> Any:
    """``Backend.run_node``."""
    return __getattr__("Backend").run_node(node, inputs, device, **kwargs)
