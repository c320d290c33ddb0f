"""Memory budgets (``hetero.budget``): sizes parse, bad budgets are clear errors, and a decoder
whose weights are 3x the simulated GPU's budget plans and runs within it under every policy,
with the outputs of the CPU-only plan and of the sequential reference executor."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import hetero as ht
from examples.gpt_offload import decoder_weights, make_decoder, weight_bytes
from hetero import reference
from hetero.budget import MemoryBudgetError, apply_budget, parse_memory, parse_size
from hetero.compiler import as_graph
from hetero.devices import Machine
from hetero.errors import HeteroError
from hetero.passes.place import POLICIES
from hetero.pipeline import compare_policies, optimize_for
from hetero.plan import Plan

MACHINE = "cpu:2,sim:1@t4"


@pytest.mark.parametrize("text,nbytes", [
    ("512MiB", 512 * 2**20), ("2GiB", 2 * 2**30), ("1.5GB", 1_500_000_000), ("3g", 3 * 2**30),
    ("100", 100), (" 64 KiB ", 65536), (4096, 4096), ("0.5kb", 500)])
def test_sizes_parse(text, nbytes):
    assert parse_size(text) == nbytes


@pytest.mark.parametrize("bad", ["", "2 GiBs", "-1GiB", "0", "GiB", "1e3MB", True, None, 1.5,
                                 float("nan"), "2..0GB"])
def test_bad_sizes_are_errors(bad):
    with pytest.raises(MemoryBudgetError, match="bad"):
        parse_size(bad)


@given(st.integers(1, 2**40), st.sampled_from(["B", "KiB", "MiB", "GiB", "KB", "MB", "GB"]))
def test_whole_sizes_round_trip(n, unit):
    scale = {"B": 1, "KiB": 2**10, "MiB": 2**20, "GiB": 2**30, "KB": 10**3, "MB": 10**6,
             "GB": 10**9}[unit]
    assert parse_size(f"{n}{unit}") == n * scale


def test_memory_forms_agree():
    want = {"gpu:0": 2 * 2**30, "cpu:1": 2**20}
    assert parse_memory({"gpu": "2GiB", "cpu:1": "1MiB"}) == want
    assert parse_memory("gpu:0=2GiB,cpu:1=1MiB") == want
    assert parse_memory(["gpu:0=2GiB", "cpu:1=1MiB"]) == want
    with pytest.raises(MemoryBudgetError, match="DEVICE=SIZE"):
        parse_memory(["gpu:0:2GiB"])
    with pytest.raises(MemoryBudgetError, match="tpu"):
        parse_memory({"tpu:0": "1GiB"})


def test_budget_lowers_capacity_only():
    m = Machine.parse(MACHINE)
    b = apply_budget(m, {"gpu:0": "64MiB"})
    assert b.device("gpu:0").capacity == 64 * 2**20
    assert m.device("gpu:0").capacity > 64 * 2**20  # the original is untouched
    assert [d.name for d in b.devices] == [d.name for d in m.devices]
    assert b.device("gpu:0").mem_bandwidth == m.device("gpu:0").mem_bandwidth
    assert apply_budget(m, None) is m
    with pytest.raises(MemoryBudgetError, match="not a device"):
        apply_budget(m, {"gpu:1": "1GiB"})
    with pytest.raises(MemoryBudgetError, match="more than its capacity"):
        apply_budget(m, {"gpu:0": "1TiB"})


@pytest.fixture(scope="module")
def decoder():
    weights = decoder_weights(layers=4, width=128)
    x = np.random.default_rng(3).standard_normal((32, 128)).astype(np.float32)
    return make_decoder(weights), x, weight_bytes(weights)


@pytest.mark.parametrize("policy", POLICIES)
def test_every_policy_runs_within_the_budget(decoder, policy):
    fn, x, nbytes = decoder
    budget = nbytes // 3  # weights are 3x the budget
    try:
        plan = ht.compile(fn, MACHINE, policy=policy, example_inputs=(x,),
                          memory={"gpu:0": budget})
    except HeteroError as exc:  # only "gpu" may refuse: every weight would have to be resident
        assert policy == "gpu", exc
        assert "does not fit" in str(exc) or "memory" in str(exc)
        return
    gpu = plan.machine.device("gpu:0")
    assert gpu.capacity == budget
    gpu.reset_peak()
    (out,) = plan.run(x)  # OutOfMemoryError past the budget would fail here
    predicted = plan.peak_memory["gpu:0"]
    assert gpu.peak_allocated <= predicted <= budget  # measured <= predicted <= budget
    if any(d == "gpu:0" for d in plan.placement.device.values()):
        assert gpu.peak_allocated == predicted  # weights and arena live for the whole run
    (cpu_only,) = ht.compile(fn, "cpu:2", policy="cpu", example_inputs=(x,)).run(x)
    np.testing.assert_allclose(np.asarray(out), cpu_only, rtol=1e-5, atol=1e-5)
    graph = as_graph(fn, (x,))
    (ref,) = reference.run(graph, [x])
    np.testing.assert_allclose(np.asarray(out), ref, rtol=1e-4, atol=1e-4)


def test_budget_moves_work_to_the_gpu_that_fits(decoder):
    """With the budget the plan still uses the GPU (for what fits) and the simulated GPU's
    measured peak reaches into the budget; without one, the same plan would not fit."""
    fn, x, nbytes = decoder
    budget = nbytes // 3
    plan = ht.compile(fn, MACHINE, example_inputs=(x,), memory={"gpu:0": budget})
    on_gpu = [n for n, d in plan.placement.device.items() if d == "gpu:0"]
    gpu = plan.machine.device("gpu:0")
    gpu.reset_peak()
    plan.run(x)
    if on_gpu:
        assert 0 < gpu.peak_allocated <= budget
    graph = optimize_for(as_graph(fn, (x,)), plan.machine)
    est = compare_policies(graph, MACHINE, memory={"gpu:0": budget})
    assert est["gpu"] == float("inf")  # all weights resident cannot fit 1/3 of them
    assert est["heft"] <= est["cpu"] * (1 + 1e-9)
    assert est["lower_bound"] <= est["heft"]


def test_cli_memory_flag(tmp_path):
    model = tmp_path / "m.py"
    model.write_text("import hetero as ht\n\ndef f(x):\n    return ht.ops.relu(x) + 1.0\n")
    ok = subprocess.run([sys.executable, "-m", "hetero", "place", f"{model}:f",
                         "--input", "x=64x64:float32", "--devices", MACHINE,
                         "--memory", "gpu:0=1MiB", "--no-compare"],
                        capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0, ok.stderr
    bad = subprocess.run([sys.executable, "-m", "hetero", "place", f"{model}:f",
                          "--input", "x=64x64:float32", "--devices", MACHINE,
                          "--memory", "gpu:0=lots"], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 1
    assert "bad memory budget for gpu:0 'lots'" in bad.stderr
    assert "Traceback" not in bad.stderr


def test_peak_memory_in_plan_json(decoder):
    fn, x, nbytes = decoder
    plan = ht.compile(fn, MACHINE, example_inputs=(x,), memory={"gpu:0": nbytes // 3})
    data = plan.to_json()
    assert data["peak_memory"] == plan.peak_memory
    assert data["machine"]["devices"][-1]["capacity"] == nbytes // 3
    again = Plan.from_json(data)
    assert again.machine.device("gpu:0").capacity == nbytes // 3
    assert again.peak_memory == plan.peak_memory
