"""The ``hetero`` command, through its installed console script in a subprocess (or ``python -m
hetero.cli``, the same ``main``, where it is not installed), on the shipped examples and on ONNX
light models; a few cases call ``main`` in this process, which is quicker.

Reports are checked against the library: the JSON validates against the shipped schema and
reports the same plan that ``hetero.compile`` builds in this process; DOT parses back with
pydot; ``run`` output matches the reference executor; errors have the documented exit status
and one line on stderr.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig

import jsonschema
import numpy as np
import pydot
import pytest

import hetero
from hetero import report
from hetero.devices import Machine

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLES = os.path.join(ROOT, "examples")
SIM = "cpu:2,sim:1@h100"


def light_model(name: str) -> str:
    onnx = pytest.importorskip("onnx")
    path = os.path.join(os.path.dirname(onnx.__file__), "backend", "test", "data", "light",
                        f"light_{name}.onnx")
    if not os.path.isfile(path):
        pytest.skip(f"onnx does not ship {path}")
    return path


def _console_script() -> list[str]:
    """The installed ``hetero`` console script of this interpreter's environment (``pip install
    -e .`` writes it; .ci/run does), else ``python -m hetero.cli`` (the same ``main``)."""
    script = os.path.join(sysconfig.get_path("scripts"), "hetero")
    return [script] if os.path.isfile(script) else [sys.executable, "-m", "hetero.cli"]


HETERO = _console_script()


def hetero_cmd(*args: str, cwd: str = ROOT, env_extra: dict | None = None,
               tmp_cache: str | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")  # this tree's hetero
    if tmp_cache is not None:
        env["HETERO_CACHE_DIR"] = tmp_cache
    env.update(env_extra or {})
    return subprocess.run([*HETERO, *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=120)


def ok(*args: str, **kw) -> subprocess.CompletedProcess:
    proc = hetero_cmd(*args, **kw)
    assert proc.returncode == 0, f"hetero {' '.join(args)} failed:\n{proc.stderr}"
    return proc


def ex(name: str) -> str:
    return os.path.join("examples", name)


# ----------------------------------------------------------------------------------------------
# entry points, help and devices


def test_console_script_and_python_m_hetero():
    if len(HETERO) != 1:
        pytest.skip("the hetero console script is not installed (pip install -e . installs it); "
                    "the other tests run python -m hetero.cli")
    proc = hetero_cmd("--version")
    assert proc.returncode == 0 and proc.stdout.strip() == f"hetero {hetero.__version__}"
    script = shutil.which("hetero")
    if script is not None:  # what a user types (a pyenv shim, a venv's bin/)
        proc = subprocess.run([script, "--version"], capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0 and proc.stdout.strip() == f"hetero {hetero.__version__}"
    proc = subprocess.run([sys.executable, "-m", "hetero", "devices", "--devices", "cpu:1"],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stdout.startswith("machine cpu:1")


@pytest.mark.parametrize("sub", [None, "devices", "place", "run", "compile", "calibrate"])
def test_help_for_every_subcommand(sub):
    proc = ok(*([sub] if sub else []), "--help")
    assert proc.stdout.startswith("usage: hetero")
    if sub is None:
        for name in ("devices", "place", "run", "compile", "calibrate"):
            assert name in proc.stdout
    if sub in ("place", "run"):
        assert "--devices SPEC" in proc.stdout and "--policy" in proc.stdout


def test_devices_lists_detected_and_described_machines():
    detected = Machine.detect()
    proc = ok("devices")
    for d in detected.devices:
        assert re.search(rf"^{re.escape(d.name)}\s+{d.kind}\s+{d.backend}\s", proc.stdout, re.M)
    proc = ok("devices", "--devices", "cpu:3,sim:1@h100")
    lines = proc.stdout.splitlines()
    assert [ln.split()[0] for ln in lines if re.match(r"^(cpu|gpu):\d", ln)] == [
        "cpu:0", "cpu:1", "cpu:2", "gpu:0"]
    gpu = next(ln for ln in lines if ln.startswith("gpu:0"))
    assert "sim" in gpu and "gpu:0" in gpu.split()[3] and "H100" in gpu
    assert any(ln.startswith("host <-> gpu:0") for ln in lines)
    data = json.loads(ok("devices", "--devices", "cpu:1,sim:1", "--format", "json").stdout)
    assert [d["name"] for d in data["devices"]] == ["cpu:0", "gpu:0"]


# ----------------------------------------------------------------------------------------------
# place


def _in_process_plan(model: str, inputs: dict | None, spec: str, policy: str = "heft"):
    path = os.path.join(ROOT, model.split(":")[0])
    if model.endswith(".onnx"):
        graph = hetero.onnx.load(path)
    else:
        from hetero.cli import InputArg, load_model

        graph = load_model(os.path.join(ROOT, model),
                           [InputArg(k, v) for k, v in (inputs or {}).items()])
    return hetero.compile(graph, machine=Machine.parse(spec), policy=policy)


PLACE_CASES = [
    (ex("cnn.onnx"), None, SIM),
    (ex("two_tower.onnx"), None, "cpu:2,sim:1"),
    (ex("model.py") + ":mlp", {"x": (64, 784)}, SIM),
    (ex("model.py") + ":branches", {"x": (32, 784)}, "cpu:2"),
]


@pytest.mark.parametrize("model,inputs,spec", PLACE_CASES)
def test_place_json_matches_schema_and_the_compiled_plan(model, inputs, spec):
    extra = [f"--input={k}={'x'.join(map(str, v))}:float32" for k, v in (inputs or {}).items()]
    doc = json.loads(ok("place", model, *extra, "--devices", spec, "--format", "json").stdout)
    jsonschema.validate(doc, report.schema(), cls=jsonschema.Draft202012Validator)
    assert doc["schema_version"] == report.SCHEMA_VERSION
    plan = _in_process_plan(model, inputs, spec)
    # the report shows the plan that the library builds: same nodes, devices, times, transfers
    assert doc["summary"]["makespan"] == pytest.approx(plan.makespan)
    assert doc["summary"]["lower_bound"] == pytest.approx(plan.lower_bound)
    shown = {n["name"]: n for n in doc["nodes"]}
    for node in plan.graph.nodes:
        if node.op in ("constant", "transfer"):
            continue
        assert shown[node.name]["device"] == node.device
        if node.op != "input":
            s, f = plan.estimates[node.name]
            assert shown[node.name]["start"] == pytest.approx(s)
            assert shown[node.name]["time"] == pytest.approx(f - s)
            assert shown[node.name]["reason"] == plan.placement.reason[node.name].to_json()
    assert sorted(t["name"] for t in doc["transfers"]) == sorted(t.name for t in plan.transfers())
    # figures are consistent with each other
    devices = {d["name"] for d in doc["machine"]["devices"]}
    for t in doc["transfers"]:
        kinds = (t["src"].split(":")[0], t["dst"].split(":")[0])
        assert t["direction"] == {("cpu", "gpu"): "h2d", ("gpu", "cpu"): "d2h",
                                  ("gpu", "gpu"): "d2d"}[kinds]
        assert set(t["consumers"]) <= set(shown) | {x["name"] for x in doc["transfers"]}
        assert t["bytes"] > 0 and t["device"] in devices
    assert doc["summary"]["transfer_bytes"] == sum(t["bytes"] for t in doc["transfers"])
    for d in doc["devices"]:
        mine = [n for n in doc["nodes"] if n["device"] == d["name"] and n["op"] != "input"]
        assert d["nodes"] == len(mine)
        assert d["busy"] == pytest.approx(sum(n["time"] for n in mine))
    ends = [n["finish"] for n in doc["nodes"]] + [t["finish"] for t in doc["transfers"]]
    assert max(ends) <= doc["summary"]["makespan"] * (1 + 1e-9)
    assert doc["summary"]["makespan"] >= doc["summary"]["lower_bound"] * (1 - 1e-9)
    has_gpu = "sim" in spec
    assert (doc["summary"]["policies"]["gpu"] is not None) == has_gpu
    assert doc["summary"]["policies"]["cpu"] == pytest.approx(
        _in_process_plan(model, inputs, spec, "cpu").makespan)


def test_place_table_shows_nodes_transfers_devices_and_comparison():
    proc = ok("place", ex("cnn.onnx"), "--devices", SIM)
    out = proc.stdout
    plan = _in_process_plan(ex("cnn.onnx"), None, SIM)
    for node in plan.graph.nodes:
        if node.op != "constant":
            assert re.search(rf"^{re.escape(node.name)}\s", out, re.M), node.name
    assert re.search(r"^image_to_gpu0\s+h2d\s+cpu:0 -> gpu:0\s+384 KiB", out, re.M)
    assert re.search(r"^gpu:0\s+gpu\s+\d+", out, re.M)
    assert "estimated makespan" in out and "lower bound" in out
    assert re.search(r"compare: cpu policy \S+ \S+\s+gpu policy", out)


def test_place_on_onnx_light_models_validates():
    for name in ("squeezenet", "inception_v1"):
        doc = json.loads(ok("place", light_model(name), "--devices", SIM, "--format", "json",
                            "--no-compare").stdout)
        jsonschema.validate(doc, report.schema(), cls=jsonschema.Draft202012Validator)
        assert doc["summary"]["nodes"] > 20
        assert doc["summary"]["policies"] == {}
        assert {n["device"] for n in doc["nodes"]} <= {"cpu:0", "cpu:1", "gpu:0"}


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # pydot's use of pyparsing
def test_place_dot_parses_back_with_device_colours(tmp_path):
    out = tmp_path / "cnn.dot"
    proc = ok("place", ex("cnn.onnx"), "--devices", SIM, "--format", "dot", "-o", str(out))
    assert "wrote dot report" in proc.stderr and proc.stdout == ""
    doc = json.loads(ok("place", ex("cnn.onnx"), "--devices", SIM, "--format", "json",
                        "--no-compare").stdout)
    (graph,) = pydot.graph_from_dot_data(out.read_text())
    nodes = {n.get_name().strip('"'): n for n in graph.get_nodes()}
    colors = {d["name"]: d["color"] for d in doc["machine"]["devices"]}
    for n in doc["nodes"]:
        assert nodes[n["name"]].get("fillcolor").strip('"') == colors[n["device"]]
    for t in doc["transfers"]:
        assert nodes[t["name"]].get("shape") == "cds"
        assert "dashed" in nodes[t["name"]].get("style")
    edges = {(e.get_source().strip('"'), e.get_destination().strip('"'))
             for e in graph.get_edges()}
    assert edges == {(e["src"], e["dst"]) for e in doc["edges"]}


def test_place_policy_cpu_keeps_everything_on_cpu_workers():
    doc = json.loads(ok("place", ex("two_tower.onnx"), "--devices", "cpu:2,sim:1", "--policy",
                        "cpu", "--format", "json").stdout)
    assert doc["policy"] == "cpu" and doc["transfers"] == []
    assert {n["device"] for n in doc["nodes"]} <= {"cpu:0", "cpu:1"}
    assert set(doc["summary"]["policies"]) == {"gpu"}


def _main(args, capsys) -> tuple[int, str, str]:
    from hetero.cli import main

    try:
        code = main(list(args))
    except SystemExit as exc:  # argparse
        code = exc.code
    out = capsys.readouterr()
    return code, out.out, out.err


def test_place_json_is_stable(capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    args = ("place", ex("two_tower.onnx"), "--devices", SIM, "--format", "json")
    code, first, _ = _main(args, capsys)
    assert code == 0
    code, second, _ = _main(args, capsys)
    assert code == 0 and first == second  # byte for byte: same plan, same key order
    doc = json.loads(first)
    required = report.schema()["required"]
    assert [k for k in doc if k in required] == required
    assert doc["cost_model"] == {"model": "roofline"}


def test_a_machine_you_do_not_have_works_in_every_subcommand(capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(ROOT)
    spec = "cpu:16,sim:1@h100"
    code, out, _ = _main(["devices", "--devices", spec], capsys)
    assert code == 0 and "cpu:15" in out and "H100" in out
    code, out, _ = _main(["place", ex("model.py") + ":branches", "--input", "x=32x784",
                          "--devices", spec, "--format", "json"], capsys)
    assert code == 0
    doc = json.loads(out)
    assert len(doc["machine"]["devices"]) == 17 and doc["summary"]["policies"]["gpu"]
    code, out, _ = _main(["run", ex("model.py") + ":branches", "--input", "x=32x784",
                          "--devices", spec, "--repeat", "1", "--check"], capsys)
    assert code == 0 and f"machine {spec}" in out
    assert float(_field(r"max relative error (\S+)", out)) < 1e-4
    code, out, _ = _main(["calibrate", ex("model.py") + ":branches", "--input", "x=4x784",
                          "--devices", spec, "--no-progress", "--repeats", "1", "--cost-file",
                          str(tmp_path / "c.json")], capsys)
    assert code == 0 and "not measured: gpu:0" in out
    entries = json.loads((tmp_path / "c.json").read_text())["entries"]
    assert f"timed {len(entries)} kernel(s) of branches" in out  # once, not 16 times


# ----------------------------------------------------------------------------------------------
# run and calibrate


def _field(pattern: str, text: str) -> str:
    m = re.search(pattern, text, re.M)
    assert m, f"{pattern!r} not in:\n{text}"
    return m.group(1)


def test_run_reports_measured_next_to_estimate_and_writes_trace(tmp_path):
    trace = tmp_path / "trace.json"
    proc = ok("run", ex("cnn.onnx"), "--devices", SIM, "--repeat", "3", "--profile", str(trace),
              "--check")
    out = proc.stdout
    assert re.search(r"^measured\s+median \S+ \S+ of 3 run\(s\)", out, re.M)
    assert re.search(r"^estimated \S+ \S+, lower bound", out, re.M)
    assert "output probs: float32[8, 10]" in out
    assert float(_field(r"max relative error (\S+)", out)) < 1e-4
    events = json.loads(trace.read_text())["traceEvents"]
    names = {e["name"] for e in events if e.get("ph") == "X"}
    plan = _in_process_plan(ex("cnn.onnx"), None, SIM)
    assert names == {n.name for n in plan.graph.nodes if n.op not in ("input", "constant")}


def test_run_python_model_on_npy_input_matches_numpy(tmp_path):
    x = np.random.default_rng(3).standard_normal((16, 784)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    proc = ok("run", ex("model.py") + ":branches", "--input", f"x={tmp_path / 'x.npy'}",
              "--devices", "cpu:2", "--repeat", "2", "--check")
    assert "output" in proc.stdout
    assert float(_field(r"max relative error (\S+)", proc.stdout)) < 1e-4


def test_calibrate_saves_measurements_that_place_uses(tmp_path):
    costs = tmp_path / "costs.json"
    proc = ok("calibrate", "--devices", "cpu:2,sim:1", "--no-progress", "--cost-file",
              str(costs), "--repeats", "1", tmp_cache=str(tmp_path))
    data = json.loads(costs.read_text())
    assert data["format"] == "hetero.costs/1" and len(data["entries"]) >= 6
    assert all("cpu:0" in k for k in data["entries"])  # simulated GPUs are not recorded
    # one row per saved entry: the two CPU workers share theirs
    rows = [ln.split() for ln in proc.stdout.splitlines() if re.match(r"^\w+_\d+\s", ln)]
    assert len(rows) == len(data["entries"])
    assert {r[2] for r in rows} == {"cpu:*"} and {r[5] for r in rows} == {"timed"}
    assert len({r[0] for r in rows}) == len(rows)
    assert f"timed {len(rows)} kernel(s) of probe" in proc.stdout
    assert "not measured: gpu:0 (simulated GPUs run no kernel here" in proc.stdout
    # a second run keeps them, and --include-sim adds the simulated durations, timing nothing
    proc = ok("calibrate", "--devices", "cpu:2,sim:1", "--no-progress", "--cost-file",
              str(costs), "--include-sim")
    assert f"timed 0 kernel(s) of probe on cpu:2,sim:1, recorded {len(rows)} simulated" \
        in proc.stdout
    assert f"; {len(rows)} already in the cost file" in proc.stdout
    sim_rows = [ln.split() for ln in proc.stdout.splitlines() if re.match(r"^\w+_\d+\s", ln)]
    assert {(r[2], r[5]) for r in sim_rows} == {("gpu:0", "simulated")}
    assert len(json.loads(costs.read_text())["entries"]) == 2 * len(rows)
    doc = json.loads(ok("place", ex("model.py") + ":mlp", "--input", "x=8x784", "--cost",
                        "measured", "--cost-file", str(costs), "--format", "json",
                        "--devices", "cpu:1", "--no-compare").stdout)
    jsonschema.validate(doc, report.schema(), cls=jsonschema.Draft202012Validator)


def test_run_with_measured_cost_records_the_profiled_run(tmp_path):
    costs = tmp_path / "costs.json"
    args = ("run", ex("cnn.onnx"), "--devices", "cpu:2", "--cost", "measured", "--cost-file",
            str(costs), "--repeat", "1")
    out = ok(*args, "--profile", str(tmp_path / "t.json")).stdout
    n = int(_field(r"^cost model: measured times for 0 of (\d+) node\(s\)", out))
    assert f"recorded {n} kernel time(s) of the profiled run into {costs} ({n} new" in out
    assert len(json.loads(costs.read_text())["entries"]) <= n  # CPU workers share entries
    out = ok(*args).stdout
    assert f"measured times for {n} of {n} node(s)" in out and "add --profile" in out
    args = ("place", ex("cnn.onnx"), "--devices", "cpu:2", "--cost", "measured", "--cost-file",
            str(costs), "--no-compare")
    doc = json.loads(ok(*args, "--format", "json").stdout)
    assert doc["cost_model"] == {"model": "measured", "path": str(costs), "nodes": n,
                                 "measured_nodes": n}
    assert f"cost model measured ({n} of {n} nodes from {costs})" in ok(*args).stdout


def test_calibrate_into_a_folder_fails_before_timing(tmp_path):
    proc = hetero_cmd("calibrate", "--devices", "cpu:1", "--cost-file", str(tmp_path))
    assert proc.returncode == 1
    _check_stderr(1, proc.stderr, "it is a folder")
    assert "calibrating" not in proc.stderr


def test_calibrate_with_model_shows_a_progress_bar(tmp_path):
    proc = ok("calibrate", "--devices", "cpu:1", ex("model.py") + ":mlp", "--input", "x=4x784",
              "--cost-file", str(tmp_path / "c.json"), "--repeats", "1")
    assert "calibrating" in proc.stderr and "/" in proc.stderr
    assert re.search(r"^timed \d+ kernel\(s\) of mlp", proc.stdout, re.M)


# ----------------------------------------------------------------------------------------------
# errors: exit status 2 for usage, 1 for model/placement; one line on stderr


# Through the entry point: bad MODEL path, bad SPEC, bad --input (syntax and meaning).
ERRORS = [
    (["place", "no/such/model.onnx"], 1, "no/such/model.onnx: no such model file"),
    (["place", ex("cnn.onnx"), "--devices", "cpu:2,tpu:1"], 2,
     "argument --devices: bad item 'tpu:1'"),
    (["place", ex("model.py") + ":mlp", "--input", "x=32by784"], 2,
     "argument --input: 'x=32by784': bad shape"),
    (["place", ex("model.py") + ":mlp"], 1, "needs a shape for argument 'x'"),
    (["frobnicate"], 2, "invalid choice"),
]

# The same ``main`` in this process (quicker): every other error path.
MORE_ERRORS = [
    (["place", ex("cnn.onnx"), "--devices", "sim:1@z80"], 2, "unknown card 'z80'"),
    (["place", ex("model.py") + ":mlp", "--input", "x=32x784:float99"], 2, "unknown dtype"),
    (["place", ex("model.py") + ":mlp", "--input", "x"], 2, "expected name=SHAPE"),
    (["place", ex("model.py") + ":mlp", "--input", "y=3x784"], 1, "has no argument 'y'"),
    (["place", ex("model.py") + ":mlp", "--input", "x=3x785"], 1, "do not align"),
    (["place", ex("model.py") + ":nope", "--input", "x=3x784"], 1,
     "no function 'nope' (functions: branches, mlp)"),
    (["place", ex("cnn.onnx"), "--input", "pixels=1x3x64x64"], 1, "no graph input named"),
    (["place", ex("cnn.onnx"), "--input", "image=8x3x64x64:int64"], 1,
     "has the model's dtype, float32 (--input may change its shape, not its dtype)"),
    (["place", ex("model.py")], 1, "path/to/file.py:function"),
    (["place", ex("build_examples.py") + ":cnn"], 1, "returned ModelProto"),
    (["place", ex("cnn.onnx"), "--format", "pdf"], 2, "invalid choice: 'pdf'"),
    (["run", ex("cnn.onnx"), "--repeat", "0"], 2, "must be at least 1"),
]


def _check_stderr(status: int, stderr: str, message: str) -> None:
    assert message in stderr
    assert "Traceback" not in stderr
    lines = stderr.strip().splitlines()
    if status == 1:
        assert len(lines) == 1 and lines[0].startswith("hetero: error: "), stderr
    else:  # argparse: the usage, then one error line
        assert lines[-1].startswith("hetero") and ": error: " in lines[-1]


@pytest.mark.parametrize("args,status,message", ERRORS,
                         ids=[" ".join(a[1:] if len(a) > 1 else a)[-40:] for a, _, _ in ERRORS])
def test_errors_have_exit_status_and_one_clear_line(args, status, message):
    proc = hetero_cmd(*args)
    assert proc.returncode == status, proc.stderr
    _check_stderr(status, proc.stderr, message)


@pytest.mark.parametrize("args,status,message", MORE_ERRORS,
                         ids=[" ".join(a[1:])[-40:] for a, _, _ in MORE_ERRORS])
def test_more_errors_in_process(args, status, message, capsys, monkeypatch):
    from hetero.cli import main

    monkeypatch.chdir(ROOT)
    try:
        code = main(args)
    except SystemExit as exc:  # argparse
        code = exc.code
    assert code == status
    _check_stderr(status, capsys.readouterr().err, message)


def test_not_an_onnx_file_and_unwritable_output(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"this is not a protobuf")
    proc = hetero_cmd("place", str(bad))
    assert proc.returncode == 1 and "not a valid ONNX model" in proc.stderr
    proc = hetero_cmd("place", ex("cnn.onnx"), "-o", str(tmp_path / "missing" / "r.txt"))
    assert proc.returncode == 1 and "cannot write" in proc.stderr
    assert not (tmp_path / "missing").exists()


def test_onnx_errors_speak_the_command_line(tmp_path, capsys):
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    def save(name, op, shape):
        x = helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)
        y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
        graph = helper.make_graph([helper.make_node(op, ["x"], ["y"])], name, [x], [y])
        onnx.save(helper.make_model(graph), str(tmp_path / f"{name}.onnx"))
        return str(tmp_path / f"{name}.onnx")

    # a symbolic batch dimension: planned at 1, saying so and how to plan for other sizes
    sym = save("sym", "Relu", ["N", 3])
    code, out, err = _main(["place", sym], capsys)
    assert code == 0 and "relu" in out.lower()
    assert "has symbolic dimensions; planned with x as 1x3 (N=1). Give --input x=SHAPE" in err
    code, out, err = _main(["run", sym, "--input", "x=5x3", "--repeat", "1"], capsys)
    assert code == 0 and "output y: float32[5, 3]" in out and "symbolic" not in err
    # two inputs sharing a dimension: the given one sizes the other; an unnamed one is 1
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", 3])
    z = helper.make_tensor_value_info("z", TensorProto.FLOAT, ["B", 3, None])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    two = helper.make_graph([helper.make_node("Unsqueeze", ["x", "ax"], ["u"]),
                             helper.make_node("Add", ["u", "z"], ["y"])], "two", [x, z], [y],
                            initializer=[helper.make_tensor("ax", TensorProto.INT64, [1], [2])])
    onnx.save(helper.make_model(two), str(tmp_path / "two.onnx"))
    code, out, err = _main(["run", str(tmp_path / "two.onnx"), "--input", "x=4x3",
                            "--repeat", "1"], capsys)
    assert code == 0 and "output y: float32[4, 3, 1]" in out
    assert "planned with z as 4x3x1 (B=4, unnamed=1)" in err
    # no shape at all: the checker refuses the model, in one line
    code, _, err = _main(["place", save("noshape", "Relu", None)], capsys)
    assert code == 1
    _check_stderr(1, err, "noshape.onnx")
    # a multi-line message keeps its list on the one line, not just its heading
    code, _, err = _main(["place", save("det", "Det", [3, 3])], capsys)
    assert code == 1
    _check_stderr(1, err, "1 unsupported ONNX op type(s): Det: ")
    assert "(run with --debug for the rest)" in err


def test_npy_input_of_wrong_shape_is_a_model_error(tmp_path):
    np.save(tmp_path / "img.npy", np.zeros((2, 3), np.float32))
    proc = hetero_cmd("run", ex("cnn.onnx"), "--input", f"image={tmp_path / 'img.npy'}")
    assert proc.returncode == 1
    assert "image" in proc.stderr and "Traceback" not in proc.stderr


def test_debug_shows_the_traceback():
    for args in (["--debug", "place", "nope.onnx"], ["place", "nope.onnx", "--debug"]):
        proc = hetero_cmd(*args)
        assert proc.returncode == 1
        assert "Traceback" in proc.stderr and "ModelError" in proc.stderr


def test_run_with_an_input_too_big_for_the_host_is_an_error_not_internal(capsys):
    code, _, err = _main(["run", ex("cnn.onnx"), "--input", "image=99999x3x9999x9999",
                          "--repeat", "1"], capsys)
    assert code == 1
    # refused when the plan is compiled: its arena alone could not fit in the host's memory
    assert "error: the host arena needs" in err and "more than its" in err
    assert "internal error" not in err


def test_an_input_given_twice_is_an_error(capsys):
    code, _, err = _main(["place", ex("cnn.onnx"), "--input", "image=1x3x64x64",
                          "--input", "image=2x3x64x64"], capsys)
    assert code == 1 and "--input image given more than once" in err


# ----------------------------------------------------------------------------------------------
# issue 13: inputs, outputs and saved plans


def _cli(capsys, *args: str) -> tuple[int, str, str]:
    from hetero.cli import main

    code = main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_an_input_of_the_wrong_rank_names_the_input_and_ranks(capsys):
    code, _, err = _cli(capsys, "place", ex("cnn.onnx"), "--input", "image=8x3x64",
                         "--devices", "cpu:1")
    assert code == 1
    assert "graph input 'image' has 4 dimension(s) (8x3x64x64), but the shape given for it, " \
           "8x3x64, has 3" in err


def test_comma_separated_dims_are_refused_with_the_right_spelling(capsys):
    with pytest.raises(SystemExit) as info:
        _cli(capsys, "place", ex("cnn.onnx"), "--input", "image=8,3,64,64")
    assert info.value.code == 2
    assert "dimensions are separated by 'x', not commas: image=8x3x64x64" in \
        capsys.readouterr().err


def test_an_onnx_input_dtype_cannot_be_changed_and_says_so(capsys):
    code, _, err = _cli(capsys, "place", ex("cnn.onnx"), "--input", "image=8x3x64x64:float16",
                         "--devices", "cpu:1")
    assert code == 1
    assert "gives dtype float16, but input 'image' of an ONNX model has the model's dtype, " \
           "float32 (--input may change its shape, not its dtype): drop ':float16'" in err
    code, out, _ = _cli(capsys, "place", ex("cnn.onnx"), "--input", "image=2x3x64x64",
                        "--devices", "cpu:1", "--no-compare", "--format", "json")
    assert code == 0  # the shape may change
    assert json.loads(out)["nodes"][0]["outputs"][0]["shape"] == [2, 3, 64, 64]


def test_more_cpu_workers_than_cores_warns(capsys):
    from hetero.threads import cpu_cores

    many = cpu_cores() + 1
    code, _, err = _cli(capsys, "place", ex("cnn.onnx"), "--devices", f"cpu:{many}",
                         "--no-compare")
    assert code == 0
    assert f"warning: cpu:{many} has {many} CPU workers but this host gives this process " \
           f"{cpu_cores()} core(s)" in err
    _, _, err = _cli(capsys, "place", ex("cnn.onnx"), "--devices", "cpu:1", "--no-compare")
    assert "warning" not in err


def test_unwritable_outputs_fail_before_the_work(capsys, tmp_path, monkeypatch):
    import hetero.cli as cli

    def no_compile(*a, **k):
        raise AssertionError("compiled before checking the output path")

    monkeypatch.setattr(cli, "_compile", no_compile)
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    for args in (("run", ex("cnn.onnx"), "--profile", str(blocker / "t.json")),
                 ("place", ex("cnn.onnx"), "-o", str(tmp_path)),
                 ("compile", ex("cnn.onnx"), "-o", str(blocker / "plan.json"))):
        code, _, err = _cli(capsys, *args, "--devices", "cpu:1")
        assert code == 1 and "cannot write" in err, (args, err)


def test_html_to_a_terminal_is_refused(capsys, monkeypatch):
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
    code, _, err = _cli(capsys, "place", ex("cnn.onnx"), "--format", "html", "--devices",
                         "cpu:1")
    assert code == 1 and "--format html writes a self-contained web page: give -o" in err


def test_calibrate_without_a_model_says_it_timed_the_probe(capsys, tmp_path):
    code, out, _ = _cli(capsys, "calibrate", "--devices", "cpu:1", "--no-progress",
                         "--repeats", "1", "--cost-file", str(tmp_path / "c.json"))
    assert code == 0
    text = " ".join(out.split())
    assert "only the probe graph's node kinds were measured" in text
    assert "to measure a model's nodes: hetero calibrate MODEL" in text
    code, out, _ = _cli(capsys, "run", ex("cnn.onnx"), "--devices", "cpu:1", "--repeat", "1",
                         "--cost", "measured", "--cost-file", str(tmp_path / "c.json"))
    assert code == 0 and (f"(time this model's kernels with: hetero calibrate {ex('cnn.onnx')} "
                          f"--devices cpu:1 --cost-file {tmp_path / 'c.json'})") in out


@pytest.mark.parametrize("spec", ["cpu:2", "cpu:2,sim:1"])
def test_compile_saves_a_plan_that_run_runs(capsys, tmp_path, spec):
    """Issue 13.18: hetero compile MODEL -o plan.json, then hetero run plan.json: the same
    outputs as compiling the model in the library."""
    import hetero.onnx as ho
    from hetero.cli import load_plan

    path = tmp_path / "cnn.plan.json"
    code, out, _ = _cli(capsys, "compile", ex("cnn.onnx"), "--devices", spec, "-o", str(path))
    assert code == 0 and f"run it with: hetero run {path}" in out
    plan = load_plan(str(path))
    direct = hetero.compile(ho.load(os.path.join(ROOT, ex("cnn.onnx"))), machine=spec)
    x = np.random.default_rng(0).standard_normal((8, 3, 64, 64)).astype(np.float32)
    for got, want in zip(plan.run(x), direct.run(x)):
        np.testing.assert_array_equal(got, want)
    np.save(tmp_path / "x.npy", x)
    code, out, _ = _cli(capsys, "run", str(path), "--input", f"image={tmp_path / 'x.npy'}",
                         "--repeat", "1", "--check")
    assert code == 0 and "output probs: float32[8, 10]" in out
    assert float(_field(r"max relative error (\S+)", out)) == 0.0


def test_a_broken_plan_file_is_a_clear_error(capsys, tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    code, _, err = _cli(capsys, "run", str(bad))
    assert code == 1 and "not a JSON file" in err
    bad.write_text('{"format": "something else"}')
    code, _, err = _cli(capsys, "run", str(bad))
    assert code == 1 and "not a hetero plan" in err


# ----------------------------------------------------------------------------------------------
# issue 13, second pass: what the first fixes left open


def test_probe_calibration_says_only_the_probe_kinds_were_measured(capsys, tmp_path,
                                                                    monkeypatch):
    """13.15: calibrating the probe graph does not invite '--cost measured' for a model as if
    its nodes were measured, and place then says how to measure them."""
    monkeypatch.chdir(ROOT)
    costs_file = str(tmp_path / "c.json")
    code, out, _ = _cli(capsys, "calibrate", "--devices", "cpu:1", "--no-progress",
                         "--repeats", "1", "--cost-file", costs_file)
    assert code == 0
    text = " ".join(out.split())
    assert "only the probe graph's node kinds were measured" in text
    assert f"to measure a model's nodes: hetero calibrate MODEL --devices cpu:1 --cost-file " \
           f"{costs_file}" in text
    assert "use it with: hetero place MODEL" not in text
    assert "nothing new to save" not in text
    code, _, err = _cli(capsys, "place", ex("cnn.onnx"), "--devices", "cpu:1", "--cost",
                        "measured", "--cost-file", costs_file, "--no-compare", "--format",
                        "json")
    assert code == 0
    assert f"measured times for 0 of 12 node(s) from {costs_file}" in err
    assert f"hetero calibrate {ex('cnn.onnx')} --devices cpu:1 --cost-file {costs_file}" in err


def test_model_calibration_names_the_place_command_and_saves_once(capsys, tmp_path,
                                                                  monkeypatch):
    monkeypatch.chdir(ROOT)
    costs_file = str(tmp_path / "c.json")
    args = ("calibrate", ex("model.py") + ":mlp", "--input", "x=4x784", "--devices", "cpu:1",
            "--no-progress", "--repeats", "1", "--cost-file", costs_file)
    code, out, _ = _cli(capsys, *args)
    assert code == 0
    assert "nothing new to save" not in out  # it has just saved them
    assert f"use it with: hetero place {ex('model.py')}:mlp --input x=4x784 --devices cpu:1 " \
           f"--cost measured --cost-file {costs_file}" in out
    code, out, _ = _cli(capsys, *args)
    assert code == 0 and f"nothing new to save: {costs_file} already holds every kernel" in out
    code, _, err = _cli(capsys, "place", ex("model.py") + ":mlp", "--input", "x=4x784",
                        "--devices", "cpu:1", "--cost", "measured", "--cost-file", costs_file,
                        "--no-compare")
    assert code == 0 and "hetero calibrate" not in err  # every node measured


def test_outputs_in_a_missing_folder_fail_before_the_work(capsys, tmp_path, monkeypatch):
    """13.16e: the folder of an output must exist; found out before compiling, not after the
    benchmark (the path check must not pass just because '/' is writable)."""
    import hetero.cli as cli

    def no_compile(*a, **k):
        raise AssertionError("compiled before checking the output path")

    monkeypatch.setattr(cli, "_compile", no_compile)
    missing = tmp_path / "missing"
    for args in (("run", ex("cnn.onnx"), "--profile", str(missing / "t.json")),
                 ("run", ex("cnn.onnx"), "-o", str(missing / "out.npz")),
                 ("place", ex("cnn.onnx"), "-o", str(missing / "r.txt")),
                 ("compile", ex("cnn.onnx"), "-o", str(missing / "plan.json"))):
        code, _, err = _cli(capsys, *args, "--devices", "cpu:1")
        assert code == 1, (args, err)
        assert f"cannot write {missing}/" in err and f"the folder {missing} does not exist" \
            in err, (args, err)
    assert not missing.exists()


def test_output_to_a_pipe_writes_into_it_not_over_it(capsys, tmp_path, monkeypatch):
    """``-o /dev/null`` or a named pipe is written in place: the atomic rename that protects a
    regular file would replace the device or pipe with a file."""
    import threading

    monkeypatch.chdir(ROOT)
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    got = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_text()), daemon=True)
    reader.start()
    code, _, err = _cli(capsys, "place", ex("cnn.onnx"), "--devices", "cpu:1", "--no-compare",
                        "--format", "json", "-o", str(fifo))
    reader.join(20)
    assert code == 0, err
    assert fifo.is_fifo() and json.loads(got[0])["model"]["name"] == "cnn"


@pytest.mark.parametrize("model,inputs,spec", [
    (ex("cnn.onnx"), (), "cpu:2"),
    (ex("cnn.onnx"), (), "cpu:2,sim:1@t4"),
    (ex("model.py") + ":branches", ("--input", "x=16x784"), "cpu:2,sim:1"),
])
def test_compile_then_run_plan_gives_the_outputs_of_running_the_model(capsys, tmp_path,
                                                                      monkeypatch, model,
                                                                      inputs, spec):
    """13.18 end to end through the command line: ``hetero compile -o plan.json`` then
    ``hetero run plan.json -o out.npz`` computes what ``hetero run MODEL -o out.npz`` computes
    from the same seed, bit for bit, and what the library computes from the same inputs."""
    monkeypatch.chdir(ROOT)
    plan_file, a, b = (str(tmp_path / n) for n in ("plan.json", "model.npz", "plan.npz"))
    code, out, _ = _cli(capsys, "compile", model, *inputs, "--devices", spec, "-o", plan_file)
    assert code == 0 and out.startswith("wrote the plan of ")
    code, out, _ = _cli(capsys, "run", model, *inputs, "--devices", spec, "--repeat", "1",
                        "--seed", "7", "-o", a)
    assert code == 0 and f"wrote the outputs of the last run to {a}" in out
    code, out, _ = _cli(capsys, "run", plan_file, "--repeat", "1", "--seed", "7", "-o", b)
    assert code == 0 and f"wrote the outputs of the last run to {b}" in out
    with np.load(a) as fa, np.load(b) as fb:
        assert sorted(fa.files) == sorted(fb.files) and fa.files
        for name in fa.files:
            np.testing.assert_array_equal(fa[name], fb[name])
        from hetero.cli import load_plan

        plan = load_plan(plan_file)
        rng = np.random.default_rng(7)  # the CLI's random inputs: standard normal per input
        xs = [rng.standard_normal(plan.graph.node(n).outputs[0].shape).astype(
            plan.graph.node(n).outputs[0].dtype) for n in plan.graph.inputs]
        direct = _in_process_plan(model, {"x": (16, 784)}, spec)  # hetero.compile
        for name, want in zip(fa.files, direct.run(*xs)):
            np.testing.assert_allclose(fa[name], want, rtol=1e-5, atol=1e-6)


def test_run_plan_refuses_options_that_only_apply_when_compiling(capsys, tmp_path,
                                                                 monkeypatch):
    monkeypatch.chdir(ROOT)
    plan_file = str(tmp_path / "plan.json")
    assert _cli(capsys, "compile", ex("cnn.onnx"), "--devices", "cpu:1", "-o", plan_file)[0] == 0
    np.save(tmp_path / "x.npy", np.zeros((8, 3, 64, 64), np.float32))
    for extra, message in (
            (("--policy", "gpu"), "--policy applies when compiling"),
            (("--cost", "measured"), "--cost applies when compiling"),
            (("--cost-file", "c.json"), "--cost-file applies when compiling"),
            (("--memory", "gpu:0=1GiB"), "--memory applies when compiling"),
            (("--input", f"pixels={tmp_path / 'x.npy'}"),
             "no input named 'pixels' (inputs: image)")):
        code, _, err = _cli(capsys, "run", plan_file, "--repeat", "1", *extra)
        assert code == 1, (extra, err)
        _check_stderr(1, err, message)


@pytest.mark.parametrize("sub", ["place", "compile", "calibrate"])
def test_a_plan_where_a_model_is_expected_points_to_run(capsys, tmp_path, monkeypatch, sub):
    monkeypatch.chdir(ROOT)
    plan_file = str(tmp_path / "plan.json")
    assert _cli(capsys, "compile", ex("cnn.onnx"), "--devices", "cpu:1", "-o", plan_file)[0] == 0
    extra = ["-o", str(tmp_path / "again.json")] if sub == "compile" else []
    code, _, err = _cli(capsys, sub, plan_file, *extra)
    assert code == 1
    _check_stderr(1, err, f"{plan_file}: a saved plan (hetero compile -o); run it with: "
                          f"hetero run {plan_file}")
