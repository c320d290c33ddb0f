"""Tensor's operators and array methods, attached from the op library's side.

``hetero.tracing.Tensor`` knows how to hold a value and how ops apply to it, but not the ops
themselves; this module gives it ``+``, ``@``, ``x[...]``, ``.reshape()`` and the rest by setting
them on the class once the op families exist (as JAX attaches its array methods from
``jax._src.numpy.array_methods``, to keep the core free of the op library). Importing
``hetero.ops`` runs it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from hetero.ops import elementwise, linalg, misc, reduce, shape, transfer
from hetero.tracing import Tensor, _kind, _to_float, promote_operands

_OPERAND_TYPES = (np.ndarray, np.generic, int, float, bool)


def _binary(fn: Callable[[Any, Any], Any], a: Any, b: Any, promote: bool = True) -> Any:
    """``fn`` on the operands of a Python operator, or NotImplemented where one of them is not
    array-like (Python then raises its usual TypeError); lists and tuples become NumPy
    arrays."""
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
    if promote:
        operands = list(promote_operands(*operands))
    return fn(*operands)


def _true_div(a: Any, b: Any) -> Any:
    """``a / b`` as Python means it: integer operands give a float32 quotient (``ht.ops.div``
    keeps ONNX semantics, where integer division truncates)."""
    if _kind(a) not in "fc" and _kind(b) not in "fc":
        a, b = _to_float(a), _to_float(b)
    return elementwise.div(a, b)


def _floor_div(a: Any, b: Any) -> Any:
    """``a // b`` as Python means it: the quotient rounded down (integers stay integers)."""
    if _kind(a) in "iu" and _kind(b) in "iu":
        # a - a % b is an exact multiple of b (% takes the divisor's sign, as in Python), so the
        # truncating integer division is exact
        return elementwise.div(elementwise.sub(a, misc.mod(a, b)), b)
    return elementwise.floor(elementwise.div(a, b))


def _operator(fn: Callable[[Any, Any], Any], promote: bool = True):
    def forward(self, other):
        return _binary(fn, self, other, promote)

    def backward(self, other):
        return _binary(fn, other, self, promote)

    return forward, backward


_BINARY = {
    "add": elementwise.add, "sub": elementwise.sub, "mul": elementwise.mul,
    "truediv": _true_div, "floordiv": _floor_div, "mod": misc.mod, "pow": elementwise.pow,
    "matmul": linalg.matmul,
}
_LOGICAL = {"and": misc.logical_and, "or": misc.logical_or, "xor": misc.logical_xor}
_COMPARISONS = {"eq": elementwise.equal, "ne": elementwise.not_equal, "gt": elementwise.greater,
                "lt": elementwise.less, "ge": elementwise.greater_equal,
                "le": elementwise.less_equal}


def _reshape(self, *new_shape) -> Tensor:
    if len(new_shape) == 1 and isinstance(new_shape[0], (tuple, list)):
        new_shape = tuple(new_shape[0])
    return shape.reshape(self, new_shape)


def _transpose(self, *perm) -> Tensor:
    if len(perm) == 1 and isinstance(perm[0], (tuple, list)):
        perm = tuple(perm[0])
    return shape.transpose(self, perm or None)


def _flatten(self) -> Tensor:
    """A 1-D copy, as NumPy's ``flatten`` (``ht.ops.flatten`` is ONNX's 2-D Flatten)."""
    return shape.reshape(self, (-1,))


def _squeeze(self, axis=None) -> Tensor:
    axes = None if axis is None else ((axis,) if isinstance(axis, int) else tuple(axis))
    return shape.squeeze(self, axes)


def _to(self, device: Any) -> Tensor:
    """This tensor on ``device`` (``ht.ops.to_device``): an explicit move."""
    return transfer.to_device(self, device)


def _reduction(fn: Callable[..., Any]):
    def method(self, axis=None, keepdims: bool = False) -> Tensor:
        return fn(self, axis=axis, keepdims=keepdims)

    method.__name__ = fn.__name__
    return method


def attach() -> None:
    """Set the operators and methods on ``Tensor``."""
    for name, fn in _BINARY.items():
        forward, backward = _operator(fn)
        setattr(Tensor, f"__{name}__", forward)
        setattr(Tensor, f"__r{name}__", backward)
    for name, fn in _LOGICAL.items():
        forward, backward = _operator(fn, promote=False)
        setattr(Tensor, f"__{name}__", forward)
        setattr(Tensor, f"__r{name}__", backward)
    for name, fn in _COMPARISONS.items():
        setattr(Tensor, f"__{name}__", _operator(fn)[0])
    Tensor.__invert__ = lambda self: misc.logical_not(self)
    Tensor.__neg__ = lambda self: elementwise.neg(self)
    Tensor.__pos__ = lambda self: self
    Tensor.__abs__ = lambda self: elementwise.abs(self)
    Tensor.__getitem__ = lambda self, key: shape.getitem(self, key)
    Tensor.T = property(lambda self: shape.transpose(self))
    Tensor.reshape = _reshape
    Tensor.transpose = _transpose
    Tensor.flatten = _flatten
    Tensor.squeeze = _squeeze
    Tensor.to = _to
    Tensor.astype = lambda self, dtype: elementwise.cast(self, dtype)
    for fn in (reduce.sum, reduce.mean, reduce.max, reduce.min):
        setattr(Tensor, fn.__name__, _reduction(fn))


attach()
