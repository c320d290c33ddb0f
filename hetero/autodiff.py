"""Reverse-mode automatic differentiation: ``grad`` and ``value_and_grad`` (JAX's conventions).

``value_and_grad(f, argnums)(*args)`` traces ``f`` into a Graph with the differentiated
arguments as graph inputs, replays that graph's nodes on the real arguments (eagerly, or as nodes
of the enclosing ``@function`` trace, so a gradient inside a traced function is part of its one
graph and is placed, partitioned, planned and run like any other), then walks the nodes in
reverse, calling each op's ``vjp`` rule from the registry (``hetero.ops.vjp``). The rules build
the backward nodes with ``hetero.tracing.apply`` too.

Arguments may be pytrees (tuples, lists, dicts) of arrays or Tensors; the gradient has the same
structure as the differentiated arguments.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

import hetero.ops.vjp  # noqa: F401  (fills Op.vjp)
from hetero.errors import HeteroError
from hetero.graph import TensorSpec, Value
from hetero.ops.registry import lookup
from hetero.tracing import Tensor, Trace, _traces, apply, tensor, user_line

__all__ = ["GradError", "grad", "value_and_grad"]


class GradError(HeteroError):
    """A gradient that cannot be taken: a non-scalar output, an integer input, an op with no
    reverse-mode rule."""


def _flatten(tree: Any) -> tuple[list[Any], Callable[[list[Any]], Any]]:
    if isinstance(tree, (tuple, list)):
        parts = [_flatten(t) for t in tree]
        sizes = [len(p[0]) for p in parts]

        def rebuild(leaves: list[Any]) -> Any:
            out, i = [], 0
            for (_, r), n in zip(parts, sizes, strict=True):
                out.append(r(leaves[i:i + n]))
                i += n
            return type(tree)(out) if isinstance(tree, list) else tuple(out)
        return [x for p in parts for x in p[0]], rebuild
    if isinstance(tree, dict):
        keys = list(tree)
        inner, rebuild_list = _flatten([tree[k] for k in keys])
        return inner, lambda leaves: dict(zip(keys, rebuild_list(leaves), strict=True))
    return [tree], lambda leaves: leaves[0]


def _as_tensor(x: Any, where: str | None) -> Tensor:
    if isinstance(x, Tensor):
        return x
    if isinstance(x, (np.ndarray, float, int, np.generic, list)):
        return tensor(np.asarray(x))
    raise GradError(f"{where}: cannot differentiate with respect to a {type(x).__name__}")


def value_and_grad(f: Callable[..., Any], argnums: int | Sequence[int] = 0) -> Callable[..., Any]:
    """A function returning ``(f(*args), gradient of f with respect to args[argnums])``.

    ``f`` must return a scalar float Tensor. With ``argnums`` an int the gradient is one pytree;
    with a tuple it is a tuple of them.
    """
    single = isinstance(argnums, int)
    nums = (argnums,) if single else tuple(argnums)

    def wrapped(*args: Any, **kwargs: Any) -> Any:
        where = user_line()
        for n in nums:
            if not -len(args) <= n < len(args):
                raise GradError(f"{where}: argnums {n} is out of range for {len(args)} arguments")
        trees = {n % len(args): _flatten(args[n]) for n in nums}
        real: list[Tensor] = []
        trace = Trace(getattr(f, "__name__", "f") + "_grad")
        call_args = list(args)
        for n, (leaves, rebuild) in trees.items():
            traced = []
            for leaf in leaves:
                t = _as_tensor(leaf, where)
                if t.dtype.kind != "f":
                    raise GradError(f"{where}: gradient with respect to argument {n} of dtype "
                                    f"{t.dtype}: only float inputs can be differentiated")
                real.append(t)
                traced.append(trace.add_input(TensorSpec(t.shape, t.dtype),
                                              f"arg{len(real) - 1}", None))
            call_args[n] = rebuild(traced)
        # values of an enclosing @function passed as other arguments become inputs too (bound
        # back to those values on replay), so f may use them
        extra: list[Tensor] = []
        for n, arg in enumerate(args):
            if n in trees:
                continue
            leaves, rebuild = _flatten(arg)
            if any(isinstance(x, Tensor) and x.is_traced for x in leaves):
                new = []
                for x in leaves:
                    if isinstance(x, Tensor) and x.is_traced:
                        extra.append(x)
                        x = trace.add_input(x.spec, f"aux{len(extra) - 1}", None)
                    new.append(x)
                call_args[n] = rebuild(new)
        _traces().append(trace)
        try:
            out = f(*call_args, **kwargs)
        finally:
            _traces().pop()
        if not isinstance(out, Tensor) or out._trace is not trace:
            raise GradError(f"{where}: {getattr(f, '__name__', 'f')} must return a Tensor "
                            "computed from its differentiated arguments")
        if out.size != 1 or out.dtype.kind != "f":
            raise GradError(f"{where}: gradient of a non-scalar output (shape {out.shape}, "
                            f"{out.dtype}); reduce it to a scalar first (e.g. with sum)")
        graph = trace.graph([out._value])
        value, grads = _backward(graph, real + extra, out._value)
        grads = grads[:len(real)]
        flat = iter(grads)
        result = []
        for _n, (leaves, rebuild) in trees.items():
            result.append(rebuild([next(flat) for _ in leaves]))
        return value, (result[0] if single else tuple(result))

    wrapped.__name__ = f"value_and_grad_{getattr(f, '__name__', 'f')}"
    return wrapped


def grad(f: Callable[..., Any], argnums: int | Sequence[int] = 0) -> Callable[..., Any]:
    """A function returning the gradient of scalar ``f`` with respect to ``args[argnums]``."""
    vg = value_and_grad(f, argnums)

    def wrapped(*args: Any, **kwargs: Any) -> Any:
        return vg(*args, **kwargs)[1]

    wrapped.__name__ = f"grad_{getattr(f, '__name__', 'f')}"
    return wrapped


def _backward(graph, real: list[Tensor], out: Value) -> tuple[Tensor, list[Tensor]]:
    env: dict[Value, Any] = {}
    for name, t in zip(graph.inputs, real, strict=True):
        env[Value(name, 0)] = t
    for node in graph.nodes:
        if node.is_input:
            continue
        if node.is_constant:
            env[Value(node.name, 0)] = tensor(np.array(graph.constants[node.name]))
            continue
        ins = [env[v] for v in node.inputs]
        res = apply(node.op, ins, dict(node.attrs))
        res = res if isinstance(res, tuple) else (res,)
        for i, r in enumerate(res):
            env[Value(node.name, i)] = r
    y = env[out]
    cts: dict[Value, Any] = {out: tensor(np.ones(y.shape, y.dtype))
                             if not y.is_traced else
                             apply("add", [apply("mul", [y, np.asarray(0, y.dtype)]),
                                           np.asarray(1, y.dtype)])}
    for node in reversed(graph.nodes):
        if not node.computes:
            continue
        outs_ct = [cts.get(Value(node.name, i)) for i in range(len(node.outputs))]
        if all(c is None for c in outs_ct):
            continue
        rule = lookup(node.op).vjp
        if rule is None:
            raise GradError(f"{node.where}: op {node.op} (node {node.name}) has no gradient "
                            "rule (see docs/training.md for the supported ops)")
        ins = [env[v] for v in node.inputs]
        outs = [env[Value(node.name, i)] for i in range(len(node.outputs))]
        for i, c in enumerate(outs_ct):
            if c is None:
                outs_ct[i] = apply("mul", [outs[i], np.asarray(0, outs[i].dtype)])
        try:
            in_cts = rule(ins, outs, outs_ct, node.attrs)
        except NotImplementedError as exc:
            raise GradError(f"{node.where}: op {node.op} (node {node.name}): {exc}") from None
        for v, c in zip(node.inputs, in_cts, strict=True):
            if c is None:
                continue
            cts[v] = c if v not in cts else apply("add", [cts[v], c])
    grads = []
    for name, t in zip(graph.inputs, real, strict=True):
        c = cts.get(Value(name, 0))
        grads.append(c if c is not None else tensor(np.zeros(t.shape, t.dtype)))
    return y, grads
