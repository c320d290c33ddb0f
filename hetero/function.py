"""Graph mode: ``@function`` traces a Python function once per input signature into a Graph,
compiles it (``hetero.pipeline.compile_graph``: optimize, place, partition, schedule, memory)
and runs the plan on the executor.

A ``Function`` keeps one trace per signature (the shapes, dtypes and devices of its tensor
arguments, and the values of the others), says why it traces again when a call's signature is
new (the ``hetero.tracing`` logger), and warns past ``max_traces`` traces at the caller's line.
Called from inside another trace, it is inlined.
"""

from __future__ import annotations

import functools
import inspect
import logging
import sys
import threading
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from hetero.config import config
from hetero.errors import TraceError
from hetero.graph import Graph, TensorSpec
from hetero.tracing import Tensor, Trace, _internal, _traces, tensor_from_host, user_line

__all__ = ["Function", "function"]

log = logging.getLogger("hetero.tracing")


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
                 name: str | None = None, donate: Mapping[int, int] | None = None) -> None:
        functools.update_wrapper(self, fn)
        self.fn = fn
        self.machine = machine
        self.policy = policy
        #: flattened array argument -> flattened output written into it in place
        #: (``ht.compile``'s ``donate``)
        self.donate = dict(donate or {})
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
        if config.checks:
            from hetero.verify import check  # the verifier loads with the pipeline, on first use

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
        donated = set(self.donate.values())  # the caller's own arrays, updated in place
        return entry.rebuild([Tensor(o, "cpu:0") if j in donated else tensor_from_host(o)
                              for j, o in enumerate(outs)])

    def _make_runner(self, graph: Graph) -> Callable[[list[np.ndarray]], list[np.ndarray]]:
        """How a traced graph runs: compiled into a Plan (optimize, place, partition, schedule,
        memory) for this function's machine and policy, or ``ht.config.machine`` when the user
        set one, or this host sized to the graph's parallelism; then run by the executor."""
        # the pipeline loads on the first graph-mode call, so that `import hetero` stays light
        from hetero.pipeline import compile_graph

        plan = compile_graph(graph, machine=self.machine, policy=self.policy or "heft",
                             donate=self.donate or None)
        return lambda arrays: list(plan.run(*arrays))


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
