"""The ``hetero`` command: see where a model's nodes would run, run it, calibrate the cost model.

Subcommands (``hetero SUBCOMMAND --help`` for each):

- ``hetero devices [--devices SPEC]``: the devices found (``Machine.detect()``) or described by a
  spec, with their rates and the links between memory spaces.
- ``hetero place MODEL``: compile MODEL for a machine and report the placement (table, JSON, DOT or
  HTML; ``hetero.report``), with the estimated makespan next to its lower bound and to the "cpu"
  and "gpu" policies.
- ``hetero run MODEL``: compile and run with given (``--input name=file.npy``) or random inputs;
  the median measured time of ``--repeat`` runs next to the estimate; a Chrome trace with
  ``--profile``.
- ``hetero calibrate [MODEL]``: time each kernel of MODEL (or of a built-in probe graph) on each
  device and save the measurements that ``--cost measured`` then uses.

MODEL is an ONNX file or ``path/to/file.py:function``; a Python function is imported by path and
traced with ``hetero.function``, its arguments described by ``--input name=SHAPE[:DTYPE]``
(``x=32x784:float32``). ``--devices SPEC`` (``cpu:16,sim:1@h100``) plans for a machine you may not
have: simulated GPUs run anywhere.

Exit status: 0 on success, 2 for a usage error (argparse: unknown option, bad SPEC, malformed
--input), 1 for a model, placement or run error (a ``HeteroError``, or a file that cannot be read
or written). An error is one line on stderr; ``--debug`` adds the traceback.
"""

from __future__ import annotations

import argparse
import importlib.util
import inspect
import io
import json
import os
import re
import shlex
import stat
import statistics
import sys
import tempfile
import time
import traceback
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NoReturn

import numpy as np

from hetero import cost as costs
from hetero import ops, reference, report
from hetero.devices import SPEC_GRAMMAR, Machine
from hetero.errors import HeteroError, ModelError, OutOfMemoryError
from hetero.function import Function
from hetero.graph import TensorSpec
from hetero.ops import registry
from hetero.passes.place import OFFLOAD_POLICIES, POLICIES
from hetero.pipeline import compile_graph, optimize_for
from hetero.plan import Plan
from hetero.report import fmt_bytes, fmt_time, text_table
from hetero.threads import cpu_cores
from hetero.version import __version__

PROG = "hetero"
SPEC_EXAMPLE = "cpu:2,sim:1@h100"


# ----------------------------------------------------------------------------------------------
# Argument types (their errors are usage errors: exit status 2)


def _one_line(text: str, *, items: int = 4, hint: bool = True) -> str:
    """A multi-line message as one line: its first line, and when that line introduces a list
    (ends with ':'), the first ``items`` indented lines of the list; other lines are dropped
    (``--debug`` shows the whole message).

    >>> _one_line("m.onnx: 2 unsupported op(s):\\n  Det: n1\\n  Stft: n2\\n(supported: ...)")
    'm.onnx: 2 unsupported op(s): Det: n1; Stft: n2 (run with --debug for the rest)'
    """
    lines = text.strip().splitlines()
    if not lines:
        return text
    head = lines[0].rstrip()
    if len(lines) == 1:
        return head
    listed = []
    if head.endswith(":"):
        for line in lines[1:]:
            if not line[:1].isspace():
                break
            listed.append(line.strip())
    shown = "; ".join(listed[:items]) + (f"; {len(listed) - items} more" if len(listed) > items
                                         else "")
    rest = " (run with --debug for the rest)" if hint else ""
    return f"{head} {shown}{rest}" if shown else f"{head}{rest}"


def machine_arg(spec: str) -> Any:
    """``--devices SPEC`` -> Machine (argparse type); a spec of several nodes
    (``2x(cpu:2,sim:1@t4)``) -> ``hetero.distributed.Cluster``."""
    from hetero.distributed import is_cluster_spec, parse_cluster  # light: no Dask import

    try:
        if is_cluster_spec(spec):
            return parse_cluster(spec)
        return Machine.parse(spec)
    except HeteroError as exc:
        msg = str(exc).replace(SPEC_GRAMMAR, "").strip().rstrip(":").strip()
        raise argparse.ArgumentTypeError(
            f"{_one_line(msg, hint=False)} (a SPEC looks like {SPEC_EXAMPLE!r}; see "
            "'hetero devices --help')"
        ) from None


@dataclass(frozen=True)
class InputArg:
    """One ``--input``: a name and either a shape and dtype or a ``.npy`` file."""

    name: str
    shape: tuple[int, ...] | None = None
    dtype: str | None = None  # None: not given (float32 for a Python function's argument)
    path: str | None = None

    def text(self) -> str:
        """As typed on the command line (``x=32x784:float32``, ``x=file.npy``)."""
        if self.path is not None:
            return f"{self.name}={self.path}"
        shape = "x".join(map(str, self.shape)) if self.shape else "scalar"
        return f"{self.name}={shape}" + (f":{self.dtype}" if self.dtype else "")

    def array(self) -> np.ndarray | None:
        """The array of a ``.npy`` input (None for a shape)."""
        if self.path is None:
            return None
        try:
            return np.load(self.path, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise ModelError(f"--input {self.name}: cannot read {self.path}: {exc}") from None


def input_arg(text: str) -> InputArg:
    """``name=SHAPE[:DTYPE]`` (``x=32x784:float32``; ``x=scalar:int64`` for a 0-d tensor) or
    ``name=file.npy`` (argparse type)."""
    name, sep, rest = text.partition("=")
    name = name.strip()
    if not sep or not name or not rest:
        raise argparse.ArgumentTypeError(
            f"{text!r}: expected name=SHAPE[:DTYPE] (e.g. x=32x784:float32) or name=file.npy")
    if rest.endswith(".npy"):
        if not os.path.isfile(rest):
            raise argparse.ArgumentTypeError(f"{text!r}: no such file {rest!r}")
        return InputArg(name, path=rest)
    shape_text, _, dtype_text = rest.partition(":")
    dtype = None
    if dtype_text.strip():
        try:
            dt = np.dtype(dtype_text.strip())
        except TypeError:
            raise argparse.ArgumentTypeError(f"{text!r}: unknown dtype {dtype_text!r}") from None
        if dt.kind not in "biuf":
            raise argparse.ArgumentTypeError(f"{text!r}: dtype {dtype_text!r} is not a number "
                                             "or bool")
        dtype = dt.name
    if shape_text.strip() == "scalar":
        return InputArg(name, (), dtype)
    if "," in shape_text:
        raise argparse.ArgumentTypeError(
            f"{text!r}: dimensions are separated by 'x', not commas: "
            f"{name}={shape_text.replace(',', 'x').replace(' ', '')}"
            + (f":{dtype_text}" if dtype_text else ""))
    dims = shape_text.split("x")
    try:
        shape = tuple(int(d) for d in dims)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r}: bad shape {shape_text!r} (dimensions separated by 'x', e.g. 32x784)"
        ) from None
    if any(d < 0 for d in shape):
        raise argparse.ArgumentTypeError(f"{text!r}: negative dimension in {shape_text!r}")
    return InputArg(name, shape, dtype)


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: must be at least 1")
    return value


# ----------------------------------------------------------------------------------------------
# Loading a model


def _split_python_model(model: str) -> tuple[str, str] | None:
    path, sep, func = model.rpartition(":")
    if sep and path.endswith(".py") and func.isidentifier():
        return path, func
    return None


def load_model(model: str, inputs: Sequence[InputArg] = ()) -> Any:
    """The Graph of ``model``: an ONNX file, or ``file.py:function`` traced on ``inputs``.

    Raises:
        ModelError: no such file, not a model, unknown function, missing or unknown inputs.
    """
    names = [a.name for a in inputs]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ModelError(f"--input {', '.join(twice)} given more than once")
    py = _split_python_model(model)
    if py is not None:
        return _trace_python(py[0], py[1], inputs)
    if model.endswith(".py") or (":" in model and ".py:" in model):
        raise ModelError(f"{model}: a Python model is given as path/to/file.py:function")
    if _is_plan_file(model):
        raise ModelError(f"{model}: a saved plan (hetero compile -o); run it with: hetero run "
                         f"{model} (MODEL is an .onnx file or path/to/file.py:function)")
    if not os.path.exists(model):
        raise ModelError(f"{model}: no such model file (MODEL is an .onnx file or "
                         "path/to/file.py:function)")
    if os.path.isdir(model):
        raise ModelError(f"{model}: is a folder, not a model file")
    return _load_onnx(model, inputs)


def _load_onnx(path: str, inputs: Sequence[InputArg]) -> Any:
    try:
        import hetero.onnx as hx
    except ImportError as exc:  # the onnx package is an optional extra
        raise ModelError(f"{path}: reading ONNX models needs the onnx package "
                         f"(pip install 'hetero[onnx]'): {exc}") from None
    shapes = {}
    for arg in inputs:
        arr = arg.array()
        shapes[arg.name] = tuple(arr.shape) if arr is not None else arg.shape
    try:
        graph, assumed = hx.load_assuming(path, input_shapes=shapes or None)
        _say_assumed(path, assumed)
    except HeteroError as exc:
        _raise_onnx_error(path, shapes, exc)
    except Exception as exc:  # what the protobuf parser makes of a file of another format
        raise ModelError(f"{path}: not a valid ONNX model: {type(exc).__name__}: "
                         f"{_one_line(str(exc), hint=False)}") from exc
    unknown = [a.name for a in inputs if a.name not in graph.inputs]
    if unknown:
        raise ModelError(f"{path}: no graph input named {', '.join(map(repr, unknown))} "
                         f"(inputs: {', '.join(graph.inputs) or 'none'})")
    for arg in inputs:
        spec = graph.node(arg.name).outputs[0]
        arr = arg.array()
        shape = tuple(arr.shape) if arr is not None else arg.shape
        dtype = arr.dtype.name if arr is not None else arg.dtype
        if dtype is not None and dtype != spec.dtype.name:
            how = (f"convert the file with numpy's astype({spec.dtype.name!r})"
                   if arr is not None else f"drop ':{dtype}'")
            raise ModelError(f"{path}: --input {arg.name} gives dtype {dtype}, but input "
                             f"{arg.name!r} of an ONNX model has the model's dtype, "
                             f"{spec.dtype.name} (--input may change its shape, not its "
                             f"dtype): {how}")
        if shape != spec.shape:
            raise ModelError(f"{path}: --input {arg.name} gives shape {list(shape)}, but the "
                             f"model's input {arg.name!r} is {list(spec.shape)}")
    return graph


def _say_assumed(path: str, assumed: dict[str, Any]) -> None:
    """On standard error: which sizes ``load_assuming`` gave which symbolic dimensions."""
    if not assumed:
        return
    said = []
    for name, (shape, values) in assumed.items():
        named = [f"{d or 'unnamed'}={n}" for d, n in sorted(values.items(),
                                                            key=lambda kv: kv[0] is None)]
        said.append(f"{name} as {'x'.join(map(str, shape)) or 'scalar'} ({', '.join(named)})")
    hint = " ".join(f"--input {n}=SHAPE" for n in assumed)
    print(f"{PROG}: {path} has symbolic dimensions; planned with {'; '.join(said)}. "
          f"Give {hint} to plan for other sizes", file=sys.stderr)


def _raise_onnx_error(path: str, shapes: dict[str, Any], exc: HeteroError) -> NoReturn:
    """The ONNX importer's error, in the words of the command line."""
    # the library's advice names its Python argument; here it is an option
    cli = re.sub(r"pass input_shapes=\{'([^']*)': \(\.\.\.\)\}",
                 r"give its shape with --input \1=SHAPE[:DTYPE]", str(exc))
    if cli != str(exc):
        raise ModelError(cli) from exc
    if not shapes:
        raise exc
    given = ", ".join(f"{k}={'x'.join(map(str, v))}" for k, v in shapes.items())
    raise ModelError(f"with --input {given}: {exc}") from exc


def _import_file(path: str) -> Any:
    if not os.path.isfile(path):
        raise ModelError(f"{path}: no such Python file")
    folder = os.path.dirname(os.path.abspath(path))
    stem = os.path.splitext(os.path.basename(path))[0]
    spec = importlib.util.spec_from_file_location(f"hetero_model_{stem}", path)
    if spec is None or spec.loader is None:
        raise ModelError(f"{path}: cannot be imported as a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, folder)  # so the model file can import its neighbours
    try:
        spec.loader.exec_module(module)
    except HeteroError:
        raise
    except Exception as exc:
        raise ModelError(f"{path}: importing it failed: {type(exc).__name__}: {exc}") from exc
    finally:
        if sys.path and sys.path[0] == folder:
            sys.path.pop(0)
    return module


def _trace_python(path: str, func: str, inputs: Sequence[InputArg]) -> Any:
    module = _import_file(path)
    fn = getattr(module, func, None)
    if fn is None or not callable(fn):
        found = sorted(n for n, v in vars(module).items()
                       if callable(v) and not n.startswith("_") and inspect.isfunction(v)
                       and v.__module__ == module.__name__)
        raise ModelError(f"{path}: no function {func!r} (functions: {', '.join(found) or 'none'})")
    target = fn.fn if isinstance(fn, Function) else fn
    try:
        params = [p for p in inspect.signature(target).parameters.values()
                  if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    except (TypeError, ValueError):
        params = []
    by_name = {a.name: a for a in inputs}
    names = [p.name for p in params]
    unknown = [n for n in by_name if n not in names]
    if unknown:
        raise ModelError(f"{path}:{func} has no argument {', '.join(map(repr, unknown))} "
                         f"(arguments: {', '.join(names) or 'none'})")
    required = [p.name for p in params if p.default is p.empty]
    missing = [n for n in required if n not in by_name]
    if missing:
        hint = " ".join(f"--input {n}=SHAPE:DTYPE" for n in missing)
        raise ModelError(f"{path}:{func} needs a shape for argument "
                         f"{', '.join(map(repr, missing))}: add {hint}")
    args = []
    for n in names:
        if n not in by_name:
            break  # the remaining arguments keep their defaults
        arg = by_name[n]
        arr = arg.array()
        args.append(arr if arr is not None else np.zeros(arg.shape, arg.dtype or "float32"))
    traced = fn if isinstance(fn, Function) else Function(fn, name=func)
    try:
        return traced.graph(*args)
    except HeteroError:
        raise
    except Exception as exc:
        raise ModelError(f"{path}:{func}: tracing failed: {type(exc).__name__}: {exc}") from exc


# ----------------------------------------------------------------------------------------------
# Shared pieces


def _machine(args: argparse.Namespace) -> Any:
    from hetero.budget import apply_budget  # --memory: capacities lowered to the budgets

    if _is_cluster(args.devices):
        raise ModelError(f"--devices {args.devices.spec!r} describes several nodes: 'hetero "
                         "place' and 'hetero run' take such a spec, this command one machine's")
    if getattr(args, "objective", None) is not None:
        raise ModelError("--objective applies to a cluster spec of several nodes (e.g. --devices "
                         "'2x(cpu:2)'); one machine's plan has no nodes to place over")
    if args.devices is None:
        return apply_budget(Machine.detect(), getattr(args, "memory", None))
    _warn_oversubscribed(args.devices)
    return apply_budget(args.devices, getattr(args, "memory", None))


def _warn_oversubscribed(machine: Any) -> None:
    """A warning (standard error) when a machine has more CPU workers than this host has cores:
    it still plans and runs, but the workers take turns on the cores."""
    workers = sum(d.kind == "cpu" for d in machine.devices)
    cores = cpu_cores()
    if workers > cores:
        print(f"{PROG}: warning: {machine.spec} has {workers} CPU workers but this host gives "
              f"this process {cores} core(s): they will take turns on the cores, and measured "
              "times will not match the estimates", file=sys.stderr)


def _cost(args: argparse.Namespace, machine: Any) -> Any:
    if getattr(args, "cost", None) == "measured":
        return costs.MeasuredCost(machine, path=args.cost_file)
    return costs.RooflineCost(machine)


def _write(data: str | bytes, path: str | None) -> None:
    """Write a report, plan or trace to ``path`` (standard output for None or ``-``), never
    leaving a half-written file: a regular file is written beside and renamed into place."""
    if path is None or path == "-":
        if isinstance(data, bytes):
            sys.stdout.buffer.write(data)
        else:
            sys.stdout.write(data)
        sys.stdout.flush()
        return
    mode = "wb" if isinstance(data, bytes) else "w"
    encoding = None if isinstance(data, bytes) else "utf-8"
    if _is_special(path):  # -o /dev/null, a named pipe: a rename would replace it with a file
        try:
            with open(path, mode, encoding=encoding) as f:
                f.write(data)
        except OSError as exc:
            raise HeteroError(f"cannot write {path}: {exc.strerror or exc}") from None
        return
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        with open(tmp, mode, encoding=encoding) as f:
            f.write(data)
        os.replace(tmp, path)  # never leave a half-written report behind
    except OSError as exc:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise HeteroError(f"cannot write {path}: {exc.strerror or exc}") from None


def _is_special(path: str) -> bool:
    """An existing path that is neither a regular file nor a folder: a device or a pipe."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return False
    return not (stat.S_ISREG(mode) or stat.S_ISDIR(mode))


def _check_writable(path: str, *, make_folders: bool = False) -> None:
    """Fail before the work, not after it, where a result file cannot be written.

    The file's folder must exist (with ``make_folders``: the nearest existing one above it,
    where the folders are created) and a new file must be creatable in it; that is tried, not
    inferred from permission bits, which say yes to root on a read-only file system.
    """
    if os.path.isdir(path):
        raise HeteroError(f"cannot write {path}: it is a folder (give a file name)")
    if _is_special(path):
        if not os.access(path, os.W_OK):
            raise HeteroError(f"cannot write {path}: permission denied")
        return
    folder = os.path.dirname(os.path.abspath(path))
    if not make_folders and not os.path.isdir(folder):
        why = "is not a folder" if os.path.exists(folder) else "does not exist"
        raise HeteroError(f"cannot write {path}: the folder {folder} {why}")
    while not os.path.exists(folder):
        folder = os.path.dirname(folder)
    if not os.path.isdir(folder):
        raise HeteroError(f"cannot write {path}: {folder} is not a folder")
    try:
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".hetero-write-check-")
    except OSError as exc:
        raise HeteroError(f"cannot write {path}: cannot create a file in {folder}: "
                          f"{exc.strerror or exc}") from None
    os.close(fd)
    os.unlink(probe)


def _policy(args: argparse.Namespace) -> str:
    return args.policy or "heft"


def _compile(args: argparse.Namespace, graph: Any, machine: Any, cost: Any,
             optimize: bool = True) -> Any:
    return compile_graph(graph, machine, _policy(args), cost, optimize=optimize)


def _command(sub: str, model: str, args: argparse.Namespace, *extra: str) -> str:
    """A ``hetero`` command line for ``model`` with this invocation's inputs, machine and cost
    file (what a hint tells the user to type)."""
    parts = [PROG, sub, model]
    for arg in getattr(args, "input", []):
        parts += ["--input", arg.text()]
    if args.devices is not None:
        parts += ["--devices", args.devices.spec]
    parts += extra
    if getattr(args, "cost_file", None):
        parts += ["--cost-file", args.cost_file]
    return shlex.join(parts)


def _measured_note(plan: Any, args: argparse.Namespace) -> str | None:
    """With ``--cost measured``: how many of the plan's nodes were costed from measured times,
    and the command that measures the rest."""
    cost = report._cost_model_json(plan)
    if cost is None or cost["model"] != "measured":
        return None
    hit, total = cost["measured_nodes"], cost["nodes"]
    note = (f"cost model: measured times for {hit} of {total} node(s) from {cost['path']}"
            + ("; the roofline for the rest" if hit < total else ""))
    if hit < total:
        note += (" (time this model's kernels with: "
                 f"{_command('calibrate', args.model, args)})")
    return note


# ----------------------------------------------------------------------------------------------
# hetero devices


def _rate(value: float) -> str:
    return f"{value / 1e12:.3g}T" if value >= 1e11 else f"{value / 1e9:.3g}G"


def devices_table(machine: Any) -> str:
    """The devices of ``machine`` with their rates, and the links between memory spaces."""
    rows = []
    for d in machine.devices:
        p = d.peak_flops
        rows.append([d.name, d.kind, d.backend, d.memory_space, fmt_bytes(d.capacity),
                     _rate(p.get("matmul", 0.0)), _rate(p.get("conv", 0.0)),
                     _rate(p.get("elementwise", 0.0)), f"{d.mem_bandwidth / 1e9:.4g} GB/s",
                     fmt_time(d.launch_overhead), d.model])
    lines = [f"machine {machine.spec}  ({len(machine.cpus())} CPU worker(s), "
             f"{len(machine.gpus())} GPU(s))", ""]
    lines += text_table(["device", "kind", "backend", "memory", "capacity", "matmul/s", "conv/s",
                     "eltwise/s", "bandwidth", "launch", "model"], rows, right=(4, 5, 6, 7, 8, 9))
    links = []
    spaces = list(machine.memory_spaces)
    for i, a in enumerate(spaces):
        for b in spaces[i + 1:]:
            lk = machine.link(a, b)
            links.append([f"{a} <-> {b}", f"{lk.bandwidth / 1e9:.4g} GB/s",
                          fmt_time(lk.latency)])
    if links:
        lines += ["", *text_table(["link", "bandwidth", "latency"], links, right=(1, 2))]
    lines += ["", "peak rates are FLOP/s per op class (the cost model's roofline); "
                  "'hetero calibrate' measures real kernel times"]
    return "\n".join(lines) + "\n"


def cmd_devices(args: argparse.Namespace) -> int:
    machine = _machine(args)
    if args.format == "json":
        _write(json.dumps(machine.to_json(), indent=2) + "\n", None)
    else:
        _write(devices_table(machine), None)
    return 0


# ----------------------------------------------------------------------------------------------
# hetero place


def _check_format_output(args: argparse.Namespace) -> None:
    """A whole HTML page is no terminal output: ``--format html`` needs ``-o`` or a
    redirection; and an output path is checked before the work."""
    if args.output not in (None, "-"):
        _check_writable(args.output)
    elif args.format == "html" and sys.stdout.isatty():
        raise HeteroError("--format html writes a self-contained web page: give -o FILE.html "
                          "(or redirect standard output to a file)")


def cmd_place(args: argparse.Namespace) -> int:
    _check_format_output(args)
    if _is_cluster(args.devices):
        return _place_cluster(args)
    machine = _machine(args)
    cost = _cost(args, machine)
    graph = optimize_for(load_model(args.model, args.input), machine)  # once, for every policy
    plan = _compile(args, graph, machine, cost, optimize=False)
    policies = None
    if not args.no_compare:
        # with a memory budget, the offload policies people use today, side by side
        others = ("cpu", "gpu", *(OFFLOAD_POLICIES if args.memory else ()))
        policies = report.policy_makespans(graph, machine, cost,
                                           [p for p in others if p != _policy(args)])
    doc = report.build(plan, source=args.model, policies=policies)
    _write(report.render(doc, args.format), args.output)
    note = _measured_note(plan, args)
    if note is not None and "hetero calibrate" in note:  # stderr: the report stays the report
        print(f"{PROG}: note: {note}", file=sys.stderr)
    if args.output not in (None, "-"):
        print(f"wrote {args.format} report to {args.output} (estimated makespan "
              f"{report.fmt_time(plan.makespan)}, lower bound "
              f"{report.fmt_time(plan.lower_bound)})", file=sys.stderr)
    return 0


# ----------------------------------------------------------------------------------------------
# hetero run


def _is_cluster(devices: Any) -> bool:
    return type(devices).__name__ == "Cluster"


def _plan_cluster(args: argparse.Namespace, graph: Any) -> Any:
    """The ClusterPlan of ``graph`` over the cluster of ``--devices``; ``--memory DEV=SIZE``
    budgets that device on every node (each stage's plan is its own)."""
    from hetero.cluster import plan_cluster

    if getattr(args, "cost_file", None):
        raise ModelError("--cost-file names one machine's measured costs; with a cluster spec "
                         "use --cost measured (each node's machine reads its own entries of the "
                         "default cost cache)")
    return plan_cluster(graph, args.devices, objective=args.objective or "throughput",
                        policy=_policy(args), memory=getattr(args, "memory", None),
                        cost=getattr(args, "cost", None))


def _place_cluster(args: argparse.Namespace) -> int:
    """``hetero place`` for a cluster of several nodes: the placement over the nodes (with its
    reasons and estimates), the values that cross the network, and each stage's own placement
    report."""
    cluster = args.devices
    graph = load_model(args.model, args.input)
    cplan = _plan_cluster(args, graph)
    stages = cplan.stages
    docs = [report.build(st.plan, source=f"{args.model} ({st.label})", policies=None)
            for st in stages]
    summary = cplan.to_json()
    document = {"format": "hetero.cluster-placement/1", "cluster": cluster.to_json(),
                "objective": summary["objective"], "estimate": summary["estimate"],
                "placement": summary["placement"],
                "transfers": [dict(t) for t in cplan.transfers],
                "nodes": [{"name": st.label, "node": st.node, "report": doc}
                          for st, doc in zip(stages, docs)]}
    crossing = document["transfers"]
    if args.format == "json":
        text = json.dumps(document, indent=2) + "\n"
    elif args.format == "table":
        est = document["estimate"]
        rows = [cluster.describe(),
                f"objective {document['objective']}: estimated {fmt_time(est['latency'])} a "
                f"run, a result every {fmt_time(est['interval'])} pipelined; stages "
                + ", ".join(f"{st.label} ({fmt_time(st.plan.makespan)})" for st in stages),
                "", "node-to-node transfers (kind n2n):"]
        rows += [f"  {c['value']}: {c['src']} ({c['src_device']}) -> {c['dst']} "
                 f"({c['dst_device']}), {c['bytes']} B, {fmt_time(c['seconds'])}"
                 for c in crossing if c["kind"] == "n2n"] or ["  none"]
        local = [c for c in crossing if c["kind"] != "n2n"]
        if local:
            rows += ["values handed between stages of one node (a message on its worker):"]
            rows += [f"  {c['value']}: {c['src']} -> {c['dst']}, {c['bytes']} B"
                     for c in local]
        for st, doc in zip(stages, docs):
            first = next((n for n in st.plan.graph.nodes if n.computes), None)
            why = cplan.placement.reasons.get(first.name, "") if first is not None else ""
            rows += ["", f"== node {st.label} ==" + (f"  ({why})" if why else ""),
                     report.render(doc, "table")]
        text = "\n".join(rows) + "\n"
    else:  # dot, html: each node's plan drawn as for one machine, plus the n2n transfers
        text = report.render_cluster(document, args.format)
    _write(text, args.output)
    if args.output not in (None, "-"):
        print(f"wrote {args.format} report of {len(stages)} cluster node(s) to {args.output}",
              file=sys.stderr)
    return 0


def _run_dask(args: argparse.Namespace) -> int:
    """``hetero run --dask TARGET``: the plan run by Dask actors, one node of a cluster spec per
    worker (pipelined), or one replica of a single machine's plan per worker."""
    from hetero import distributed as hd

    if args.profile:
        raise ModelError("--profile records a run in this process; it does not combine with "
                         "--dask")
    if _is_plan_file(args.model):
        raise ModelError(f"{args.model}: --dask compiles the model for its nodes; give the "
                         "model, not a saved plan")
    devices = args.devices
    cluster = devices if _is_cluster(devices) else None
    graph = load_model(args.model, args.input)
    arrays = _run_inputs(graph, args.input, args.seed)
    target = args.dask or f"local:{len(cluster) if cluster else 1}"
    with hd.connect(target) as conn:
        if cluster is not None and len(cluster) > 1:
            cplan = _plan_cluster(args, graph)
            runner: Any = hd.PipelineRunner(conn, cplan)
            what = (f"cluster {cluster.spec} ({cplan.placement.objective}): "
                    f"{len(cplan.stages)} stage(s) on {runner.nodes} node(s), Dask workers "
                    f"{', '.join(dict.fromkeys(runner._workers))}; estimated "
                    f"{fmt_time(cplan.latency)} a run, {fmt_time(cplan.interval)} pipelined")
        else:
            machine = cluster.machines[0] if cluster is not None else _machine(args)
            plan = _compile(args, graph, machine, _cost(args, machine))
            runner = conn.runner(plan)
            what = (f"machine {machine.spec}: one replica per Dask worker "
                    f"({', '.join(runner.workers)})")
        outputs = runner.run(*arrays)  # warm-up
        times = []
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            outputs = runner.run(*arrays)
            times.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        runner.map([arrays] * args.repeat)
        rate = args.repeat / (time.perf_counter() - t0)
    print(f"model {graph.name} ({args.model})  {what}")
    print(f"measured  median {fmt_time(statistics.median(times))} of {args.repeat} run(s); "
          f"map of {args.repeat}: {rate:.1f} runs/s")
    _report_outputs(graph, outputs, args)
    if args.check:
        worst = 0.0
        for got, want in zip(outputs, reference.run(graph, arrays)):
            g = np.asarray(got, dtype=np.float64)
            w = np.asarray(want, dtype=np.float64)
            if g.size:
                worst = max(worst, float(np.max(np.abs(g - w) / (1.0 + np.abs(w)))))
        print(f"check against the reference executor: max relative error {worst:.3g}")
    return 0


def _run_inputs(graph: Any, given: Sequence[InputArg], seed: int) -> list[np.ndarray]:
    """One array per graph input: from its ``.npy`` file, else random of the input's spec."""
    rng = np.random.default_rng(seed)
    files = {a.name: a for a in given if a.path is not None}
    arrays = []
    for name in graph.inputs:
        spec = graph.node(name).outputs[0]
        if name in files:
            arr = files[name].array()
            if arr.shape != spec.shape or arr.dtype != spec.dtype:
                raise ModelError(f"--input {name}={files[name].path}: the file holds "
                                 f"{arr.dtype}{list(arr.shape)}, the model takes "
                                 f"{spec.dtype}{list(spec.shape)}")
            arrays.append(arr)
        else:
            try:
                arrays.append(_random_input(rng, spec))
            except (MemoryError, ValueError) as exc:
                raise OutOfMemoryError(f"input {name} ({spec}): cannot allocate it on the "
                                       f"host: {exc}") from None
    return arrays


def _random_input(rng: np.random.Generator, spec: TensorSpec) -> np.ndarray:
    if spec.dtype.kind == "f":
        return rng.standard_normal(spec.shape).astype(spec.dtype)
    if spec.dtype.kind == "b":
        return rng.integers(0, 2, spec.shape).astype(bool)
    # integer inputs are usually indices: zeros are valid for any table size
    return np.zeros(spec.shape, spec.dtype)


def _is_plan_file(model: str) -> bool:
    return model.lower().endswith(".json")


def load_plan(path: str, machine: Any = None) -> Any:
    """A plan saved by ``hetero compile`` (``Plan.to_json``), verified (``Plan.from_json`` runs
    ``check``); ``machine`` replaces the recorded one."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except OSError as exc:
        raise ModelError(f"{path}: cannot read the plan: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise ModelError(f"{path}: not a JSON file: {exc}") from None
    try:
        return Plan.from_json(data, machine=machine)
    except HeteroError as exc:
        raise ModelError(f"{path}: {exc}") from exc



def _report_outputs(graph, outputs, args) -> None:
    """Print each output's dtype and shape; with ``-o``, save them (numpy .npz)."""
    names = _output_names(graph)
    for name, out in zip(names, outputs):
        arr = np.asarray(out)
        print(f"output {name}: {arr.dtype}{list(arr.shape)}")
    if args.output:
        buf = io.BytesIO()
        np.savez(buf, **{name: np.asarray(out) for name, out in zip(names, outputs)})
        _write(buf.getvalue(), args.output)
        print(f"wrote the outputs of the last run to {args.output} (numpy .npz: "
              f"{', '.join(names)})")

def _output_names(graph: Any) -> list[str]:
    """The names of a graph's outputs (a saved plan's come home through copies: the name is the
    node that computed the value)."""
    names = []
    for v in graph.outputs:
        node = graph.node(v.node)
        names.append(node.inputs[0].node if node.is_transfer else v.node)
    return names


def _check_plan_options(args: argparse.Namespace) -> None:
    """A saved plan is already placed and costed: options that only apply when compiling are
    refused rather than silently ignored."""
    for option, value in (("--policy", args.policy), ("--cost", args.cost),
                          ("--cost-file", args.cost_file),
                          ("--memory", getattr(args, "memory", None))):
        if value is not None:
            raise ModelError(f"{args.model}: {option} applies when compiling, and a saved plan "
                             f"is compiled already: give it to 'hetero compile MODEL' (or run "
                             "the model with 'hetero run MODEL')")
    if any(a.path is None for a in args.input):
        raise ModelError(f"{args.model}: a saved plan has fixed input shapes; --input may "
                         "only give arrays (name=file.npy)")


def _memory_lines(plan: Plan, gpus: list, runs: int) -> list[str]:
    """Per GPU the plan uses: the measured peak of the timed runs against the prediction and
    the capacity (a budget, if one was given), and on a simulated GPU the bytes its streams
    copied per run against the plan's."""
    used = {n.device for n in plan.graph.nodes if n.computes or n.is_transfer}
    predicted = plan.peak_memory
    planned = plan.copy_bytes()
    lines = []
    for dev in gpus:
        if dev.name not in used:
            continue
        line = (f"{dev.name} memory: peak {fmt_bytes(dev.peak_allocated)} measured, "
                f"{fmt_bytes(predicted.get(dev.memory_space, 0))} predicted, capacity "
                f"{fmt_bytes(dev.capacity)}")
        if hasattr(dev, "copied_bytes") and runs:
            copied = sum(dev.copied_bytes.values()) / runs
            want = sum(planned.get(dev.name, {}).values())
            line += f"; copies {fmt_bytes(copied)} a run (planned {fmt_bytes(want)})"
        streamed = sum(plan.graph.spec(n.inputs[0]).nbytes for n in plan.transfers()
                       if n.attrs.get("streamed") and n.device == dev.name)
        if streamed:
            line += f", {fmt_bytes(streamed)} of it streamed weights"
        lines.append(line)
    return lines


def cmd_run(args: argparse.Namespace) -> int:
    if getattr(args, "dask", None) is not None or _is_cluster(args.devices):
        return _run_dask(args)
    for path in (args.profile, args.output):
        if path:
            _check_writable(path)  # before the benchmark, not after it
    if _is_plan_file(args.model):
        _check_plan_options(args)
        plan = load_plan(args.model, machine=args.devices)
        if args.devices is not None:
            _warn_oversubscribed(args.devices)
        machine, graph = plan.machine, plan.graph
        unknown = [a.name for a in args.input if a.name not in graph.inputs]
        if unknown:
            raise ModelError(f"{args.model}: the plan has no input named "
                             f"{', '.join(map(repr, unknown))} (inputs: "
                             f"{', '.join(graph.inputs) or 'none'})")
    else:
        machine = _machine(args)
        cost = _cost(args, machine)
        graph = load_model(args.model, args.input)
        plan = _compile(args, graph, machine, cost)
    arrays = _run_inputs(graph, args.input, args.seed)
    outputs = plan.run(*arrays)  # warm-up: arenas, constant uploads, first-touch costs
    gpus = [d for d in plan.machine.devices if d.kind == "gpu" and hasattr(d, "reset_peak")]
    for dev in gpus:  # the timed runs' high-water mark and copies, against the plan's
        dev.reset_peak()
        if hasattr(dev, "reset_copied"):
            dev.reset_copied()
    times = []
    for _ in range(args.repeat):
        t0 = time.perf_counter()
        outputs = plan.run(*arrays)
        times.append(time.perf_counter() - t0)
    median = statistics.median(times)
    memory_lines = _memory_lines(plan, gpus, args.repeat)
    used = sorted({n.device for n in plan.graph.nodes if n.computes or n.is_transfer})
    print(f"model {graph.name} ({args.model})  machine {machine.spec}  policy {plan.policy}")
    print(f"devices used: {', '.join(used) or 'none'}; "
          f"{len(plan.transfers())} transfer(s) per run")
    print(f"measured  median {fmt_time(median)} of {args.repeat} run(s) "
          f"(min {fmt_time(min(times))}, max {fmt_time(max(times))})")
    ratio = f" (measured/estimated {median / plan.makespan:.2f}x)" if plan.makespan > 0 else ""
    print(f"estimated {fmt_time(plan.makespan)}, lower bound {fmt_time(plan.lower_bound)}{ratio}")
    note = _measured_note(plan, args)
    if note is not None:
        print(note + ("" if args.profile else " (add --profile to record this run's times)"))
    for line in memory_lines:
        print(line)
    if any(d.backend == "sim" for d in machine.devices):
        print("note: a simulated GPU computes with NumPy on this host, so it runs no faster "
              "than the host does, whatever card it simulates")
    _report_outputs(graph, outputs, args)
    if args.check:
        expected = reference.run(graph, arrays)
        worst = 0.0
        for got, want in zip(outputs, expected):
            g = np.asarray(got, dtype=np.float64)
            w = np.asarray(want, dtype=np.float64)
            if g.size:
                worst = max(worst, float(np.max(np.abs(g - w) / (1.0 + np.abs(w)))))
        print(f"check against the reference executor: max relative error {worst:.3g}")
    if args.profile:
        history = getattr(plan.cost, "history", None) if note is not None else None
        seen = {k: e.n for k, e in history.items()} if history is not None else {}
        _, prof = plan.run(*arrays, profile=True)  # a measured plan.cost records and saves
        _write(json.dumps(prof.to_chrome()), args.profile)
        print(f"wrote Chrome trace of one profiled run ({fmt_time(prof.makespan)}) to "
              f"{args.profile} (open in chrome://tracing or https://ui.perfetto.dev)")
        if history is not None:
            added = sum(e.n - seen.get(k, 0) for k, e in history.items())
            new = len(set(history) - set(seen))
            if added:
                print(f"recorded {added} kernel time(s) of the profiled run into "
                      f"{plan.cost.path} ({new} new entr{'y' if new == 1 else 'ies'}); the "
                      "next '--cost measured' compile places with them")
            else:
                print("recorded no kernel time: the plan computes only on simulated GPUs, "
                      "which keep their simulated durations")
    return 0


# ----------------------------------------------------------------------------------------------
# hetero compile


def cmd_compile(args: argparse.Namespace) -> int:
    _check_writable(args.output)
    machine = _machine(args)
    cost = _cost(args, machine)
    graph = load_model(args.model, args.input)
    plan = _compile(args, graph, machine, cost)
    _write(json.dumps(plan.to_json(), separators=(",", ":")) + "\n", args.output)
    computes = sum(n.computes for n in plan.graph.nodes)
    print(f"wrote the plan of {graph.name} ({args.model}) for {machine.spec}, policy "
          f"{plan.policy}, to {args.output}: {computes} node(s), {len(plan.transfers())} "
          f"transfer(s), estimated makespan {fmt_time(plan.makespan)}; run it with: hetero run "
          f"{args.output}")
    return 0


# ----------------------------------------------------------------------------------------------
# hetero calibrate


def probe_graph() -> Any:
    """A small graph with one kernel of each op class at sizes typical of real models: what
    ``hetero calibrate`` times when no MODEL is given."""
    def probe(a, b, image, weight):
        m = a @ b
        act = ops.relu(m + m)
        total = ops.sum(act, axis=1)
        conv = ops.conv2d(image, weight, pads=(1, 1, 1, 1))
        pooled = ops.max_pool2d(conv, kernel_shape=(2, 2), strides=(2, 2))
        return total, ops.softmax(ops.flatten(pooled), axis=-1)

    rng = np.random.default_rng(0)
    args = [rng.standard_normal(s).astype(np.float32)
            for s in ((512, 512), (512, 512), (1, 16, 64, 64), (32, 16, 3, 3))]
    return Function(probe, name="probe").graph(*args)


def cmd_calibrate(args: argparse.Namespace) -> int:
    machine = _machine(args)
    graph = load_model(args.model, args.input) if args.model else probe_graph()
    # time the kernels that compile will place: those of the graph optimized as compile
    # optimizes it for this machine (fused convolutions, folded batch-norms; residual adds and
    # Winograd on a CPU-only machine), or the measurements would never be looked up; the table
    # below needs that graph too
    graph = optimize_for(graph, machine)
    # MeasuredCost.save creates missing folders (the cache folder, the first time)
    _check_writable(args.cost_file or os.path.join(costs.cache_dir(), "costs.json"),
                    make_folders=True)
    cost = costs.MeasuredCost(machine, path=args.cost_file, repeats=args.repeats)
    before = set(cost.history)
    # a simulated GPU runs no kernel here: calibrate records its simulated duration
    targets = [d for d in machine.devices if args.include_sim or d.backend != "sim"]
    skipped = [d.name for d in machine.devices if d not in targets]
    try:
        with np.errstate(all="ignore"):  # random inputs: a negative variance is not our concern
            costs.calibrate_graph(graph, machine, cost=cost, progress=not args.no_progress,
                                  devices=[d.name for d in targets])
    except OSError as exc:  # saving the history
        raise HeteroError(f"cannot write {cost.path}: {exc.strerror or exc}") from None
    # One row per history entry: CPU workers share theirs (the same cores), and nodes with the
    # same op, shapes and attributes share one too.
    cpus = [d for d in targets if d.kind == "cpu"]
    shared_cpu = len(cpus) > 1
    entries: dict[costs.HistoryKey, list[Any]] = {}  # key -> [first node, device, node count]
    for node in graph.nodes:
        if not node.computes:
            continue
        ins = costs.input_specs(graph, node)
        for dev in targets:
            if not registry.has_kernel(node.op, dev.backend):
                continue
            key = cost.key(node, dev, ins)  # under the threads calibrate timed with
            if key in entries:
                if entries[key][0] is not node:
                    entries[key][2] += 1
                continue
            entries[key] = [node, dev, 1]
    roofline = costs.RooflineCost(machine)
    rows = []
    timed = simulated = cached = 0
    for key, (node, dev, count) in entries.items():
        if key in before:
            cached += 1
            continue
        entry = cost.history.get(key)
        if entry is None:  # failed: listed below
            continue
        sim = dev.backend == "sim"
        simulated += sim
        timed += not sim
        est = roofline.compute(node, dev, costs.input_specs(graph, node))
        name = "cpu:*" if dev.kind == "cpu" and shared_cpu else dev.name
        rows.append([node.name + (f" (+{count - 1})" if count > 1 else ""), node.op, name,
                     fmt_time(getattr(entry, cost.statistic)), "simulated" if sim else "timed",
                     fmt_time(est),
                     f"{getattr(entry, cost.statistic) / est:.2f}x" if est > 0 else "-"])
    if rows:
        print("\n".join(text_table(["node", "op", "device", "time", "how", "roofline",
                                     "ratio"], rows, right=(3, 5, 6))))
        notes = []
        if any(r[2] == "cpu:*" for r in rows):
            notes.append("cpu:* is one entry for every CPU worker (they share the same cores)")
        if any(r[0].endswith(")") for r in rows):
            notes.append("(+N): N more nodes of the same op, shapes and attributes")
        if notes:
            print("; ".join(notes))
    done = f"timed {timed} kernel(s) of {graph.name} on {machine.spec}"
    if simulated:
        done += f", recorded {simulated} simulated duration(s)"
    print(f"{done}; {cached} already in the cost file"
          + (" (kept: delete the file or name another --cost-file to time them again)"
             if cached else ""))
    if skipped:
        import textwrap

        print(textwrap.fill(
            f"not measured: {', '.join(skipped)} (simulated GPUs run no kernel here; '--cost "
            "measured' costs them from their card's specs, the roofline; --include-sim records "
            "their simulated kernel durations instead)", width=100, subsequent_indent="  "))
    for why in cost.failed.values():
        print(f"skipped (kept the roofline estimate): {why}")
    if not (timed or simulated):
        print(f"nothing new to save: {cost.path} already holds every kernel of {graph.name}")
    elif args.model is not None:
        print(f"saved to {cost.path}; use it with: "
              f"{_command('place', args.model, args, '--cost', 'measured')}")
    else:
        print(f"saved to {cost.path}")
    if args.model is None:
        import textwrap

        # a measured time is looked up by op, shapes and attributes: the probe's 512x512
        # matmul says nothing about a model's 8x64 one
        print(textwrap.fill(
            "note: only the probe graph's node kinds were measured (its matmul, elementwise "
            "ops, reduction, convolution, pooling and softmax, at its shapes). '--cost "
            "measured' uses a measured time only for a node with the same op, shapes and "
            "attributes, so a model's own nodes mostly keep the roofline estimate; to measure "
            "a model's nodes: "
            f"{_command('calibrate', 'MODEL', args)} (with the model's --input options)",
            width=100, subsequent_indent="  ", break_on_hyphens=False, break_long_words=False))
    return 0


# ----------------------------------------------------------------------------------------------
# Parser


class _Formatter(argparse.RawDescriptionHelpFormatter):
    pass


def _wrap(text: str) -> str:
    """A help description filled to the terminal's usual width (the raw formatter keeps the
    line breaks of the epilogs, so descriptions are wrapped here)."""
    import textwrap

    return textwrap.fill(text, width=78)


def _spec_help() -> str:
    return SPEC_GRAMMAR


_DEVICES_HELP = (
    "Show the devices Machine.detect() finds (or the machine a SPEC describes): kind, "
    "backend, memory space, capacity, peak rates, and the links between memory spaces.")
_PLACE_HELP = (
    "Compile MODEL for a machine and report the placement: per node its device, reason and "
    "estimated time; every transfer; per device busy time and arena bytes; the estimated "
    "makespan next to the lower bound and the 'cpu' and 'gpu' policies.")
_RUN_HELP = (
    "Compile and run MODEL on given (--input name=file.npy) or random inputs; print the "
    "median measured time of --repeat runs (after one warm-up run) next to the estimated "
    "makespan. With --cost measured and --profile, the profiled run's kernel times are "
    "recorded into the cost file.")


_COMPILE_HELP = (
    "Compile MODEL for a machine (optimize, place, partition, schedule, plan memory) and write "
    "the plan to a JSON file: the partitioned graph with its weights, the machine, the "
    "placement with its reasons, the queues and the memory plan. 'hetero run PLAN.json' runs "
    "it without compiling again; the plan is verified (ht.check) when it is read.")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``hetero`` command (every subcommand has ``--help``)."""
    # --debug is accepted before and after the subcommand; SUPPRESS keeps a subcommand's default
    # from overwriting a --debug given before it
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                        help="show the full error message and traceback on failure")
    machine = argparse.ArgumentParser(add_help=False)
    machine.add_argument("--devices", metavar="SPEC", type=machine_arg, default=None,
                         help=f"machine to plan for, e.g. {SPEC_EXAMPLE!r} (default: the devices "
                              "detected on this host); simulated GPUs work anywhere")
    machine.add_argument("--memory", metavar="DEVICE=SIZE", action="append", default=None,
                         help="memory budget of a device, e.g. gpu:0=2GiB (sizes like 512MiB, "
                              "1.5GB); the plan stays within it; repeatable")
    machine.add_argument("--objective", choices=("throughput", "latency"), default=None,
                         help="with a cluster spec (several nodes): what placing the graph over "
                              "the nodes optimises: throughput (pipeline stages, the default) or "
                              "latency (list scheduling over every device of every node, the "
                              "network in the costs)")
    model = argparse.ArgumentParser(add_help=False)
    model.add_argument("model", metavar="MODEL",
                       help="an .onnx file, or path/to/file.py:function ('hetero run' also "
                            "takes a PLAN.json written by 'hetero compile')")
    model.add_argument("--input", metavar="NAME=SHAPE[:DTYPE]|NAME=FILE.npy", type=input_arg,
                       action="append", default=[],
                       help="shape and dtype of an input (x=32x784:float32; needed for each "
                            "argument of a Python function), or an array file; repeatable")
    planning = argparse.ArgumentParser(add_help=False)
    # None: not given (heft, roofline); 'hetero run PLAN.json' refuses them when given
    planning.add_argument("--policy", choices=POLICIES, default=None,
                          help="placement policy (default: heft)")
    planning.add_argument("--cost", choices=("roofline", "measured"), default=None,
                          help="cost model: device specs (roofline, the default) or the times "
                               "saved by 'hetero calibrate' (measured; roofline where not "
                               "measured)")
    planning.add_argument("--cost-file", metavar="FILE", default=None,
                          help="measured-cost file (default: $HETERO_CACHE_DIR/costs.json or "
                               "~/.cache/hetero/costs.json)")

    parser = argparse.ArgumentParser(
        prog=PROG, formatter_class=_Formatter,
        description=_wrap("Place, run and profile one computation graph on every processor of a "
                    "machine at once (CPU workers and GPUs)."),
        epilog="examples:\n"
               "  hetero devices\n"
               "  hetero place examples/cnn.onnx --devices cpu:2,sim:1@h100\n"
               "  hetero place examples/model.py:mlp --input x=64x784:float32 --format html "
               "-o mlp.html\n"
               "  hetero run examples/two_tower.onnx --devices cpu:2 --repeat 5 "
               "--profile trace.json\n"
               "  hetero compile examples/cnn.onnx --devices cpu:2,sim:1 -o cnn.plan.json\n"
               "  hetero run cnn.plan.json\n"
               "  hetero calibrate --devices cpu:2\n\n"
               "exit status: 0 ok, 1 model/placement/run error, 2 usage error")
    parser.add_argument("--debug", action="store_true",
                        help="show the full error message and traceback on failure")
    parser.add_argument("--version", action="version", version=f"hetero {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("devices", parents=[common, machine], formatter_class=_Formatter,
                       help="list the devices of this machine (or of a SPEC)",
                       description=_wrap(_DEVICES_HELP),
                       epilog=_spec_help())
    p.add_argument("--format", choices=("table", "json"), default="table")
    p.set_defaults(handler=cmd_devices)

    p = sub.add_parser("place", parents=[common, machine, model, planning],
                       formatter_class=_Formatter,
                       help="show where every node would run, and why",
                       description=_wrap(_PLACE_HELP),
                       epilog=_spec_help())
    p.add_argument("--format", choices=("table", "json", "dot", "html", "svg"),
                   default="table",
                   help="table (default), json (schema: hetero/schemas/placement.schema.json), "
                        "dot (Graphviz), html (one self-contained page: needs -o, or standard "
                        "output redirected to a file), svg (the timeline alone)")
    p.add_argument("-o", "--output", metavar="FILE", default=None,
                   help="write the report to FILE (default: standard output)")
    p.add_argument("--no-compare", action="store_true",
                   help="skip compiling the 'cpu' and 'gpu' policies for comparison")
    p.set_defaults(handler=cmd_place)

    p = sub.add_parser("run", parents=[common, machine, model, planning],
                       formatter_class=_Formatter,
                       help="run a model and compare the measured time with the estimate",
                       description=_wrap(_RUN_HELP),
                       epilog=_spec_help())
    p.add_argument("--repeat", type=positive_int, default=10, metavar="N",
                   help="timed runs (default 10); the median is reported")
    p.add_argument("--profile", metavar="TRACE.json", default=None,
                   help="write a Chrome trace (chrome://tracing, Perfetto) of one more run")
    p.add_argument("--check", action="store_true",
                   help="also compare the outputs with the sequential reference executor")
    p.add_argument("--dask", metavar="TARGET", default=None,
                   help="run on Dask distributed: 'local:N' (a LocalCluster of N worker "
                        "processes here) or a scheduler address 'tcp://HOST:8786'; with a "
                        "--devices spec of several nodes, node k runs on the k-th worker")
    p.add_argument("--seed", type=int, default=0, help="seed of the random inputs")
    p.add_argument("-o", "--output", metavar="OUTPUTS.npz", default=None,
                   help="save the outputs of the last timed run as a NumPy .npz archive, one "
                        "array per output name")
    p.set_defaults(handler=cmd_run)

    p = sub.add_parser("compile", parents=[common, machine, model, planning],
                       formatter_class=_Formatter,
                       help="compile a model and save the plan (for 'hetero run PLAN.json')",
                       description=_wrap(_COMPILE_HELP), epilog=_spec_help())
    p.add_argument("-o", "--output", metavar="PLAN.json", required=True,
                   help="where to write the plan (JSON, weights included)")
    p.set_defaults(handler=cmd_compile)

    p = sub.add_parser("calibrate", parents=[common, machine], formatter_class=_Formatter,
                       help="measure kernel times for the cost model and save them",
                       description=_wrap("Time every distinct kernel of MODEL "
                                         "(default: a built-in probe graph with a matmul, a "
                                         "convolution, elementwise ops and reductions), as "
                                         "compile optimizes it, on every real device, with a "
                                         "progress bar, and save the times for '--cost "
                                         "measured'. Kernels already in the cost file are kept."),
                       epilog=_spec_help())
    p.add_argument("model", metavar="MODEL", nargs="?", default=None,
                   help="an .onnx file or path/to/file.py:function (default: probe graph)")
    p.add_argument("--input", metavar="NAME=SHAPE[:DTYPE]|NAME=FILE.npy", type=input_arg,
                   action="append", default=[], help="as for 'hetero place'")
    p.add_argument("--cost-file", metavar="FILE", default=None,
                   help="where to save (default: $HETERO_CACHE_DIR/costs.json or "
                        "~/.cache/hetero/costs.json)")
    p.add_argument("--repeats", type=positive_int, default=3, metavar="N",
                   help="timed runs per kernel after a warm-up (default 3; the fastest is kept: "
                        "other load on the machine only ever adds time)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--include-sim", action="store_true",
                   help="also record simulated GPUs' kernel times: their simulated durations "
                        "(what a run on them is paced to; no kernel is run), where otherwise "
                        "'--cost measured' costs them with the roofline of their card")
    p.set_defaults(handler=cmd_calibrate)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``hetero`` console script; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)  # exits with status 2 on a usage error
    try:
        return args.handler(args)
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `hetero place ... | head`
        try:
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115
        except OSError:
            pass
        return 0
    except MemoryError as exc:
        print(f"{PROG}: error: out of host memory: {_one_line(str(exc), hint=False)}",
              file=sys.stderr)
        return 1
    except Exception as exc:
        debug = getattr(args, "debug", False)
        if debug:
            traceback.print_exc()
        if isinstance(exc, HeteroError):
            print(f"{PROG}: error: {_one_line(str(exc))}", file=sys.stderr)
        else:
            print(f"{PROG}: internal error: {type(exc).__name__}: "
                  f"{_one_line(str(exc), hint=False)}"
                  + ("" if debug else " (run with --debug for the traceback)"),
                  file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
