"""Reverse-mode automatic differentiation: ``grad``, ``value_and_grad`` (``has_aux`` too) and
``vjp``, with JAX's conventions.

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

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np

import hetero.ops.vjp  # noqa: F401  (fills Op.vjp)
from hetero.errors import HeteroError
from hetero.graph import TensorSpec, Value
from hetero.ops.registry import lookup
from hetero.tracing import Tensor, Trace, _traces, apply, colocate, device, tensor, user_line

__all__ = ["GradError", "grad", "value_and_grad", "vjp"]


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


class _GradTrace(Trace):
    """The trace of a differentiated function: a tensor of an enclosing trace that it reads
    from its closure becomes an input (once), appended to ``extra``."""

    def __init__(self, name: str, extra: list[Tensor]) -> None:
        super().__init__(name)
        self._extra = extra
        self._captured: dict[tuple[int, Value], Value] = {}

    def capture(self, x: Tensor, where: str | None) -> Value:
        if not any(x._trace is t for t in _traces()):
            return super().capture(x, where)
        key = (id(x._trace), x._value)
        if key not in self._captured:
            self._extra.append(x)
            self._captured[key] = self.add_input(x.spec, f"aux{len(self._extra) - 1}",
                                                 None)._value
        return self._captured[key]


def _as_tensor(x: Any, where: str | None) -> Tensor:
    if isinstance(x, Tensor):
        return x
    if isinstance(x, (np.ndarray, float, int, np.generic, list)):
        return tensor(np.asarray(x))
    raise GradError(f"{where}: cannot differentiate with respect to a {type(x).__name__}")


def value_and_grad(f: Callable[..., Any], argnums: int | Sequence[int] = 0, *,
                   has_aux: bool = False) -> Callable[..., Any]:
    """A function returning ``(f(*args), gradient of f with respect to args[argnums])``.

    ``f`` must return a scalar float Tensor. With ``argnums`` an int the gradient is one pytree;
    with a tuple it is a tuple of them. With ``has_aux`` (JAX's), ``f`` returns ``(loss, aux)``,
    aux any pytree (logits, metrics) that is not differentiated, and the result is
    ``((loss, aux), gradient)``.
    """
    single = isinstance(argnums, int)
    nums = (argnums,) if single else tuple(argnums)

    def wrapped(*args: Any, **kwargs: Any) -> Any:
        where = user_line()
        aux_box: list[Any] = []

        def main(*a: Any, **k: Any) -> Any:
            res = f(*a, **k)
            if not has_aux:
                return res
            if not (isinstance(res, (tuple, list)) and len(res) == 2):
                raise GradError(f"{where}: with has_aux, {getattr(f, '__name__', 'f')} must "
                                f"return a pair (loss, aux), got {type(res).__name__}")
            aux_box.append(res[1])
            return res[0]
        main.__name__ = getattr(f, "__name__", "f")
        out, real, extra, trees, trace = _trace_f(main, args, kwargs, nums, where)
        if out.size != 1 or out.dtype.kind != "f":
            raise GradError(f"{where}: gradient of a non-scalar output (shape {out.shape}, "
                            f"{out.dtype}); reduce it to a scalar first (e.g. with sum), or "
                            "give its cotangent explicitly with ht.vjp")
        aux_leaves, aux_rebuild = _flatten(aux_box[0] if has_aux else None)
        kept = [out._value]
        for x in aux_leaves:
            if isinstance(x, Tensor) and x._trace is trace and x._value not in kept:
                kept.append(x._value)
        graph = trace.graph(kept)
        env = _replay(graph, real + extra)
        value = env[out._value]
        grads = _reverse(graph, env, real + extra, out._value, None)[:len(real)]
        flat = iter(grads)
        result = []
        for _n, (leaves, rebuild) in trees.items():
            result.append(rebuild([next(flat) for _ in leaves]))
        gradient = result[0] if single else tuple(result)
        if has_aux:
            aux = aux_rebuild([env[x._value] if isinstance(x, Tensor) and x._trace is trace
                               else x for x in aux_leaves])
            return (value, aux), gradient
        return value, gradient

    wrapped.__name__ = f"value_and_grad_{getattr(f, '__name__', 'f')}"
    return wrapped


def vjp(f: Callable[..., Any], *primals: Any) -> tuple[Tensor, Callable[[Any], tuple[Any, ...]]]:
    """``(f(*primals), vjp_fn)`` (JAX's ``vjp``): ``vjp_fn(cotangent)``, the cotangent an array
    or Tensor of the output's shape, gives the cotangent of each primal (a tuple of pytrees).
    The output need not be a scalar; the forward pass runs once, here."""
    where = user_line()
    out, real, extra, trees, trace = _trace_f(f, primals, {}, tuple(range(len(primals))), where)
    if out.dtype.kind != "f":
        raise GradError(f"{where}: vjp of an output of dtype {out.dtype}: it must be float")
    graph = trace.graph([out._value])
    env = _replay(graph, real + extra)

    def vjp_fn(cotangent: Any) -> tuple[Any, ...]:
        cts = _reverse(graph, env, real + extra, out._value, cotangent)[:len(real)]
        flat = iter(cts)
        return tuple(rebuild([next(flat) for _ in leaves]) for leaves, rebuild in trees.values())
    return env[out._value], vjp_fn


def _trace_f(f, args, kwargs, nums, where):
    """``f`` traced with ``args[nums]``'s leaves as inputs: (output, their real values, the
    enclosing traces' values read, the pytrees, the trace)."""
    for n in nums:
        if not -len(args) <= n < len(args):
            raise GradError(f"{where}: argnums {n} is out of range for {len(args)} arguments")
    trees = {n % len(args): _flatten(args[n]) for n in nums}
    real: list[Tensor] = []
    extra: list[Tensor] = []
    trace = _GradTrace(getattr(f, "__name__", "f") + "_grad", extra)
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
    # values of an enclosing @function passed as other arguments, or read by f from its
    # closure (_GradTrace.capture), become inputs too, bound back to those values on replay
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
    return out, real, extra, trees, trace


def grad(f: Callable[..., Any], argnums: int | Sequence[int] = 0, *,
         has_aux: bool = False) -> Callable[..., Any]:
    """A function returning the gradient of scalar ``f`` with respect to ``args[argnums]``
    (``(gradient, aux)`` with ``has_aux``, as JAX's)."""
    vg = value_and_grad(f, argnums, has_aux=has_aux)

    def wrapped(*args: Any, **kwargs: Any) -> Any:
        value, gradient = vg(*args, **kwargs)
        return (gradient, value[1]) if has_aux else gradient

    wrapped.__name__ = f"grad_{getattr(f, '__name__', 'f')}"
    return wrapped


@contextlib.contextmanager
def _annotated(node, forward: bool) -> Iterator[None]:
    """The device scope ``f`` gave ``node`` (``with ht.device(...)``), for its replay and for its
    backward nodes (which run where the forward op did); the colocation group for the replay."""
    with contextlib.ExitStack() as stack:
        if node.device is not None:
            stack.enter_context(device(node.device, soft=node.soft))
        if forward and node.colocate:
            stack.enter_context(colocate(node.colocate))
        yield


def _filled(v: float, like: Tensor) -> Tensor:
    """A tensor of ``like``'s shape and dtype holding ``v`` (a constant node when traced)."""
    return apply("expand", [np.full((), v, like.dtype)], {"shape": like.shape})


def _replay(graph, real: list[Tensor]) -> dict[Value, Any]:
    """``graph``'s nodes run (or recorded) again on ``real``: every value's Tensor."""
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
        with _annotated(node, forward=True):
            res = apply(node.op, ins, dict(node.attrs))
        res = res if isinstance(res, tuple) else (res,)
        for i, r in enumerate(res):
            env[Value(node.name, i)] = r
    return env


def _reverse(graph, env: dict[Value, Any], real: list[Tensor], out: Value,
             seed: Any) -> list[Tensor]:
    """The cotangents of ``graph``'s inputs, from ``seed`` (None: ones) at ``out``, each op's
    rule called in reverse order."""
    y = env[out]
    # seeds and missing cotangents are constants broadcast to shape, never ``y * 0`` (an inf or
    # NaN output would make them NaN)
    if seed is None:
        seed = _filled(1, y)
    else:
        if not isinstance(seed, Tensor):
            seed = np.asarray(seed, dtype=y.dtype)
        if tuple(seed.shape) != tuple(y.shape):
            raise GradError(f"{user_line()}: the cotangent has shape {tuple(seed.shape)}, the "
                            f"output {tuple(y.shape)}")
        seed = apply("add", [_filled(0, y), seed])  # a Tensor of y's dtype, in this mode
    cts: dict[Value, Any] = {out: seed}
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
                outs_ct[i] = _filled(0, outs[i])
        try:
            with _annotated(node, forward=False):
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
        grads.append(c if c is not None else _filled(0, t))
    return grads
