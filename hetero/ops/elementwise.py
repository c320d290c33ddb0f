"""Elementwise ops: NumPy broadcasting, ONNX semantics (inputs share one dtype)."""

from __future__ import annotations

from hetero.graph import TensorSpec
from hetero.ops.registry import Op, broadcast_shapes, register, same_dtype
from hetero.tracing import apply

__all__ = ["add", "sub", "mul"]


def _infer_binary(ins, attrs):
    dtype = same_dtype(ins)
    return (TensorSpec(broadcast_shapes(*(s.shape for s in ins)), dtype),)


def _binary(name: str, ufunc: str, doc: str):
    def kernel(xp, ins, attrs, outs):
        getattr(xp, ufunc)(ins[0], ins[1], out=outs[0])

    register(Op(name, _infer_binary, kernel, arity=(2, 2), doc=doc))


_binary("add", "add", "a + b")
_binary("sub", "subtract", "a - b")
_binary("mul", "multiply", "a * b")


def add(a, b, *, device=None):
    """Elementwise ``a + b`` with NumPy broadcasting."""
    return apply("add", (a, b), device=device)


def sub(a, b, *, device=None):
    """Elementwise ``a - b`` with NumPy broadcasting."""
    return apply("sub", (a, b), device=device)


def mul(a, b, *, device=None):
    """Elementwise ``a * b`` with NumPy broadcasting."""
    return apply("mul", (a, b), device=device)
