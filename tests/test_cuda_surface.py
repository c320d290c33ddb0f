"""The CUDA path's surface, checked without a GPU.

Every name the CUDA code reaches for (``cupy.*`` and ``cupyx.*`` in the backend, ``xp.*`` in the
shared op kernels that run with ``xp = cupy``, ``cudnn.*`` and the frontend graph's methods,
cuda-python's ``driver.*``, and what tests/gpu and scripts/bench_gpu.py call) must exist in the
installed packages, and every call must fit the callee's parameters: its keywords exist and it
does not get more positional arguments than it takes. CuPy, cuda-python and the cuDNN frontend
import without a driver, so a renamed function or keyword fails CI here instead of costing the
minutes of a lent card. Names the installed packages cannot resolve without a CUDA library
(``cupy.cublas`` loads libcublas on import) are checked against their module's source instead.

The sources are read as ASTs; a name is "bound to CuPy" where the file says so (``import cupy as
cp``, ``cp = _cupy()``) or, in hetero/ops, where it is the array namespace ``xp``.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import inspect
import pathlib
import re
from dataclasses import dataclass

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]

cupy = pytest.importorskip("cupy", reason="cupy-cuda13x is not installed (the dev extra has it)")


@dataclass(frozen=True)
class Use:
    """One use of an outside name: ``chain`` (e.g. ``cupy.cuda.runtime.memcpyAsync``), and for a
    call, its keyword names and its number of positional arguments (None: a ``*args``)."""

    where: str
    chain: str
    call: bool
    keywords: tuple[str, ...] = ()
    positional: int | None = 0


def _chain(node: ast.AST) -> list[str] | None:
    names = []
    while isinstance(node, ast.Attribute):
        names.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        return [node.id, *reversed(names)]
    return None


def _bindings(tree: ast.Module, fixed: dict[str, str]) -> dict[str, str]:
    """Names bound to an outside module in this file: ``import cupy as cp`` and the like, plus
    ``fixed``; a name also bound to one of hetero's modules is dropped (ambiguous)."""
    bound = dict(fixed)
    ours = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                top = alias.name.split(".")[0]
                if top in {"cupy", "cupyx", "cudnn"}:
                    bound[alias.asname or top] = alias.name if alias.asname else top
        elif isinstance(node, ast.ImportFrom) and node.module:
            for alias in node.names:
                name = alias.asname or alias.name
                if node.module in {"cuda.bindings", "cuda"} and alias.name in {"driver", "cuda"}:
                    bound[name] = "cuda.bindings.driver"
                elif node.module.startswith("hetero"):
                    ours.add(name)
    return {k: v for k, v in bound.items() if k not in ours or k in fixed}


def uses(path: pathlib.Path, fixed: dict[str, str]) -> list[Use]:
    tree = ast.parse(path.read_text(), filename=str(path))
    bound = _bindings(tree, fixed)
    found: list[Use] = []
    calls: set[int] = set()
    rel = path.relative_to(ROOT)
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            chain = _chain(node.func)
            if chain and chain[0] in bound and len(chain) > 1:
                calls.add(id(node.func))
                starred = any(isinstance(a, ast.Starred) for a in node.args)
                found.append(Use(f"{rel}:{node.lineno}", ".".join([bound[chain[0]], *chain[1:]]),
                                 True, tuple(k.arg for k in node.keywords if k.arg),
                                 None if starred else len(node.args)))
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and id(node) not in calls:
            chain = _chain(node)
            if chain and chain[0] in bound:
                found.append(Use(f"{rel}:{node.lineno}",
                                 ".".join([bound[chain[0]], *chain[1:]]), False))
    return found


# ----------------------------------------------------------------------------------------------
# Resolving a name, and what its callee takes

_MISSING = object()


def _module_source_def(module: str, name: str) -> ast.FunctionDef | None:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.origin or not spec.origin.endswith(".py"):
        return None
    tree = ast.parse(pathlib.Path(spec.origin).read_text())
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and node.name == name:
            return node
    return None


def resolve(chain: str):
    """The object ``chain`` names (importing submodules on the way), a FunctionDef from the
    module's source where the module cannot be imported without a CUDA library, or _MISSING."""
    parts = chain.split(".")
    obj = importlib.import_module(parts[0])
    for i, part in enumerate(parts[1:], start=1):
        nxt = getattr(obj, part, _MISSING)
        if nxt is _MISSING:
            module = ".".join(parts[: i + 1])
            try:
                nxt = importlib.import_module(module)
            except ModuleNotFoundError:
                return _MISSING
            except ImportError:  # a CUDA library this machine lacks: read the source
                if importlib.util.find_spec(module) is None:
                    return _MISSING
                if i + 2 != len(parts):
                    return _MISSING if i + 1 < len(parts) else module
                found = _module_source_def(module, parts[i + 1])
                return _MISSING if found is None else found
        obj = nxt
    return obj


@dataclass(frozen=True)
class Params:
    names: frozenset[str]  # accepted by keyword
    positional: int | None  # most positional arguments; None: any
    any_keyword: bool


_DOC_SIG = re.compile(r"^\s*[\w.]+\((.*)\)")


def _from_doc(doc: str) -> Params | None:
    """Cython functions and CuPy's ufuncs keep their signature in the docstring's first line:
    ``memcpyAsync(intptr_t dst, intptr_t src, size_t size, int kind, intptr_t stream)``."""
    match = _DOC_SIG.match(doc.splitlines()[0]) if doc else None
    if not match:
        return None
    names, positional, keyword_only, any_kw = [], 0, False, False
    for part in match.group(1).replace("\\*", "*").split(","):
        part = part.strip()
        if not part:
            continue
        if part == "/":
            continue
        if part == "*":
            keyword_only = True
            continue
        if part.startswith("**"):
            any_kw = True
            continue
        if part.startswith("*"):
            positional = None
            keyword_only = True
            continue
        name = part.split("=")[0].split()[-1]
        names.append(name)
        if not keyword_only and positional is not None:
            positional += 1
    return Params(frozenset(names), positional, any_kw)


def _from_def(node: ast.FunctionDef) -> Params:
    a = node.args
    pos = [*a.posonlyargs, *a.args]
    names = [x.arg for x in [*a.args, *a.kwonlyargs]]
    return Params(frozenset(names), None if a.vararg else len(pos), a.kwarg is not None)


def params(obj) -> Params | None:
    """What ``obj`` takes, or None where nothing says (a C type without a signature)."""
    if isinstance(obj, ast.FunctionDef):
        return _from_def(obj)
    try:
        sig = inspect.signature(obj)
    except (TypeError, ValueError):
        return _from_doc(getattr(obj, "__doc__", "") or "")
    ps = list(sig.parameters.values())
    kinds = inspect.Parameter
    positional = sum(p.kind in (kinds.POSITIONAL_ONLY, kinds.POSITIONAL_OR_KEYWORD) for p in ps)
    return Params(frozenset(p.name for p in ps if p.kind != kinds.POSITIONAL_ONLY),
                  None if any(p.kind == kinds.VAR_POSITIONAL for p in ps) else positional,
                  any(p.kind == kinds.VAR_KEYWORD for p in ps))


def misfits(use: Use, obj) -> list[str]:
    if not use.call or isinstance(obj, str) or inspect.ismodule(obj):
        return []
    taken = params(obj)
    if taken is None:
        return []
    wrong = [f"{use.where}: {use.chain}() has no keyword {k!r}"
             for k in use.keywords if k not in taken.names and not taken.any_keyword]
    if (use.positional is not None and taken.positional is not None
            and use.positional > taken.positional):
        wrong.append(f"{use.where}: {use.chain}() takes {taken.positional} positional "
                     f"arguments, called with {use.positional}")
    return wrong


# ----------------------------------------------------------------------------------------------
# The sources

BACKEND = ROOT / "hetero" / "backends" / "cupy.py"
OPS = sorted((ROOT / "hetero" / "ops").glob("*.py"))
GPU_SIDE = [ROOT / "scripts" / "bench_gpu.py", *sorted((ROOT / "tests" / "gpu").glob("*.py"))]


def _all_uses() -> list[Use]:
    found = uses(BACKEND, {"cp": "cupy", "xp": "cupy"})
    for path in OPS:
        found += uses(path, {"xp": "cupy"})
    for path in GPU_SIDE:
        found += uses(path, {})
    found += [u for u in uses(ROOT / "hetero" / "devices.py", {})
              if u.chain.startswith("cuda.bindings.driver")]
    return found


USES = _all_uses()


def test_the_sources_are_read():
    """A check that found no names would pass for the wrong reason."""
    chains = {u.chain for u in USES}
    assert len(USES) > 150
    for expected in ("cupy.cuda.runtime.memcpyAsync", "cupy.matmul", "cupyx.empty_pinned",
                     "cudnn.pygraph", "cudnn.backend_version", "cuda.bindings.driver.cuInit",
                     "cupy.lib.stride_tricks.as_strided", "cupy.cublas.gemm"):
        assert expected in chains, expected


@pytest.mark.parametrize("root", ["cupy", "cupyx", "cuda.bindings.driver"])
def test_every_name_exists_and_every_call_fits(root):
    if root == "cuda.bindings.driver":
        pytest.importorskip("cuda.bindings", reason="cuda-python is not installed (dev extra)")
    problems = []
    for use in USES:
        if use.chain.split(".")[0] != root.split(".")[0]:
            continue
        obj = resolve(use.chain)
        if obj is _MISSING:
            problems.append(f"{use.where}: {use.chain} does not exist in the installed package")
            continue
        problems += misfits(use, obj)
    assert not problems, "\n".join(sorted(set(problems)))


def test_the_checker_catches_a_wrong_name_keyword_and_arity():
    wrong = [Use("x", "cupy.no_such_function", True),
             Use("x", "cupy.take", True, ("axis", "no_such_keyword"), 2),
             Use("x", "cupy.cuda.runtime.memcpyAsync", True, (), 6),
             Use("x", "cupy.add", True, ("out", "nope"), 2)]
    assert resolve(wrong[0].chain) is _MISSING
    assert misfits(wrong[1], resolve(wrong[1].chain)) == [
        "x: cupy.take() has no keyword 'no_such_keyword'"]
    assert "takes 5 positional" in misfits(wrong[2], resolve(wrong[2].chain))[0]
    assert misfits(wrong[3], resolve(wrong[3].chain)) == ["x: cupy.add() has no keyword 'nope'"]
    assert misfits(Use("x", "cupy.add", True, ("out", "dtype"), 2), cupy.add) == []


# ----------------------------------------------------------------------------------------------
# The cuDNN frontend: its module's names, and the methods called on its graphs and tensors


def _method_calls(path: pathlib.Path, receivers: set[str]) -> dict[str, set[str]]:
    """``{receiver: {method names}}`` for calls ``receiver.method(...)`` (and
    ``x.receiver.method(...)``) in ``path``."""
    out: dict[str, set[str]] = {r: set() for r in receivers}
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            value = node.func.value
            name = value.id if isinstance(value, ast.Name) else (
                value.attr if isinstance(value, ast.Attribute) else None)
            if name in receivers:
                out[name].add(node.func.attr)
    return out


def test_cudnn_names_graph_methods_and_tensor_methods_exist():
    cudnn = pytest.importorskip(
        "cudnn", reason="nvidia-cudnn-frontend is not installed (.ci/run installs it without "
                        "its CUTLASS DSL dependencies; see requirements/cuda-surface.txt)")
    problems = []
    for use in USES:
        if use.chain.startswith("cudnn."):
            obj = resolve(use.chain)
            if obj is _MISSING:
                problems.append(f"{use.where}: {use.chain} does not exist in the frontend")
            else:
                problems += misfits(use, obj)
    calls = _method_calls(BACKEND, {"graph", "ty"})
    assert {"validate", "build_plans", "execute", "tensor", "conv_fprop"} <= calls["graph"]
    graph = cudnn.pygraph(io_data_type=cudnn.data_type.FLOAT,
                          intermediate_data_type=cudnn.data_type.FLOAT,
                          compute_data_type=cudnn.data_type.FLOAT)
    tensor = graph.tensor(name="X", dim=[1, 2, 3, 3], stride=[18, 1, 6, 2],
                          data_type=cudnn.data_type.FLOAT)
    for receiver, obj in (("graph", graph), ("ty", tensor)):
        for method in sorted(calls[receiver]):
            if not callable(getattr(obj, method, None)):
                problems.append(f"{BACKEND.name}: {receiver}.{method}() does not exist on "
                                f"the frontend's {type(obj).__name__}")
    # execute(bindings, workspace, handle=...) as _cudnn_execute calls it
    taken = params(graph.execute)
    assert taken is not None and "handle" in taken.names | ({"handle"} if taken.any_keyword
                                                            else set())
    assert not problems, "\n".join(problems)


# ----------------------------------------------------------------------------------------------
# What tests/gpu asks of hetero's own CUDA backend


def test_names_tests_gpu_takes_from_the_backend_exist():
    from hetero.backends import cupy as backend

    problems = []
    for path in sorted((ROOT / "tests" / "gpu").glob("*.py")):
        for use in uses(path, {"backend": "hetero.backends.cupy"}):
            if not use.chain.startswith("hetero.backends.cupy."):
                continue
            name = use.chain.split(".")[3]
            if not hasattr(backend, name):
                problems.append(f"{use.where}: hetero.backends.cupy has no {name}")
    assert not problems, "\n".join(problems)
