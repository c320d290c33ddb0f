"""Devices and machines: spec grammar, detection, card table, links, copies, JSON round trip."""

from __future__ import annotations

import math
import os
import subprocess
import sys
import types

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import hetero as ht
from hetero import devices as dv
from hetero.devices import CARDS, Link, Machine, SimSpec
from hetero.errors import DeviceError
from hetero.graph import TensorSpec
from hetero.ops.registry import OP_CLASSES, Cost, lookup

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# ----------------------------------------------------------------------------------------------
# Spec grammar


def test_parse_cpu_and_sim():
    m = Machine.parse("cpu:2,sim:1")
    assert [d.name for d in m.devices] == ["cpu:0", "cpu:1", "gpu:0"]
    assert [d.backend for d in m.devices] == ["numpy", "numpy", "sim"]
    assert m.memory_spaces == ("host", "gpu:0")
    assert [d.name for d in m.cpus()] == ["cpu:0", "cpu:1"]
    assert [d.name for d in m.gpus()] == ["gpu:0"]
    assert m.device("gpu:0").memory_space == "gpu:0"
    assert all(d.memory_space == "host" for d in m.cpus())
    assert m.spec == "cpu:2,sim:1"


def test_parse_card_uses_published_rates():
    m = Machine.parse("cpu:1,sim:2@h100,sim:1@t4")
    h, h2, t = m.gpus()
    assert (h.name, h2.name, t.name) == ("gpu:0", "gpu:1", "gpu:2")
    assert h.peak_flops["matmul"] == CARDS["h100"].fp32
    assert h.mem_bandwidth == 3.35e12
    assert h.capacity == 80 * 2**30
    assert t.mem_bandwidth == 320e9
    # two H100s talk over NVLink; an H100 and a T4 over the slower of their PCIe peer links
    assert m.link("gpu:0", "gpu:1").bandwidth == CARDS["h100"].peer_link
    assert m.link("gpu:0", "gpu:2").bandwidth == min(CARDS["h100"].peer_link,
                                                     CARDS["t4"].peer_link)
    assert m.link("host", "gpu:2").bandwidth == CARDS["t4"].host_link


def test_parse_defaults_to_one_worker_per_core():
    m = Machine.parse("sim:1")
    assert len(m.cpus()) == dv.cpu_cores()


@pytest.mark.parametrize("spec, fragment", [
    ("", "machine spec is items"),
    ("tpu:1", "bad item 'tpu:1'"),
    ("cpu:2,,sim:1", "bad item ''"),
    ("cpu:x", "bad item"),
    ("cpu:2,sim:1@z80", "unknown card 'z80'"),
    ("cpu:2,gpu:1@h100", "only simulated GPUs take a card"),
    ("cpu:2,cpu:1", "'cpu' appears twice"),
    ("cpu:0,sim:1", "at least one CPU worker"),
    ("gpu:1,gpu:1", "'gpu' appears twice"),
    ("sim:1@", "bad item 'sim:1@'"),
])
def test_parse_errors_show_the_grammar(spec, fragment):
    with pytest.raises(DeviceError) as info:
        Machine.parse(spec)
    assert fragment in str(info.value)
    assert "sim[:N][@CARD]" in str(info.value)  # every refusal shows the grammar


def test_parse_bad_item_lists_grammar_and_cards():
    with pytest.raises(DeviceError) as info:
        Machine.parse("cpu:2,gpux")
    msg = str(info.value)
    assert "sim[:N][@CARD]" in msg and "h100" in msg and "t4" in msg


def test_real_gpu_request_without_gpu_fails(monkeypatch):
    monkeypatch.setattr(dv, "detect_gpus", lambda: [])
    with pytest.raises(DeviceError, match="asks for 1 real GPU"):
        Machine.parse("cpu:2,gpu")
    with pytest.raises(DeviceError, match="asks for 1 real GPU.*found 0"):
        Machine.parse("cpu:2,gpu:1")


def test_from_spec_overrides():
    m = Machine.from_spec(cpus=1, sims=[SimSpec(speed={c: 1e9 for c in OP_CLASSES},
                                                link_bandwidth=1e9, latency=1e-3, capacity=1024),
                                        SimSpec(card="a100", capacity=2048), "l4"],
                          cpu_peak_flops=5e9)
    g0, g1, g2 = m.gpus()
    assert g0.peak_flops == {c: 1e9 for c in OP_CLASSES}
    assert g0.capacity == 1024
    assert m.link("host", "gpu:0") == Link(1e9, 1e-3)
    assert g1.peak_flops["matmul"] == CARDS["a100"].fp32 and g1.capacity == 2048
    assert g2.model.endswith("NVIDIA L4")
    assert m.device("cpu:0").peak_flops["matmul"] == 5e9


def test_link_overrides_and_same_space():
    m = Machine.from_spec(cpus=2, sims=2, links={("gpu:0", "gpu:1"): Link(1e6, 0.5)})
    assert m.link("gpu:0", "gpu:1") == Link(1e6, 0.5)
    assert m.link("cpu:0", "cpu:1") == dv.SAME_SPACE  # device names work, same space is free
    assert math.isinf(m.link("host", "host").bandwidth)
    assert m.transfer_time(1e6, "gpu:0", "gpu:1") == pytest.approx(1.5)
    with pytest.raises(DeviceError, match="neither a memory space"):
        m.link("host", "gpu:7")
    with pytest.raises(DeviceError, match="not in this machine"):
        Machine.from_spec(cpus=1, links={("host", "gpu:3"): Link(1.0)})


def test_unknown_device_lists_the_machine():
    m = Machine.parse("cpu:2,sim:1")
    with pytest.raises(DeviceError) as info:
        m.device("gpu:3")
    assert "cpu:0, cpu:1, gpu:0" in str(info.value)
    with pytest.raises(DeviceError, match="unknown device string"):
        m.device("tpu:0")


def test_duplicate_device_names_and_shared_gpu_spaces_refused():
    with pytest.raises(DeviceError, match="appear twice"):
        Machine([dv.CpuDevice(0), dv.CpuDevice(0)])
    from hetero.backends.sim import SimDevice

    a, b = SimDevice(0), SimDevice(1)
    b.memory_space = "gpu:0"
    with pytest.raises(DeviceError, match="memory space 'gpu:0' is not its own"):
        Machine([dv.CpuDevice(0), a, b])


# ----------------------------------------------------------------------------------------------
# Rates


def test_cpu_device_rates_cover_every_op_class():
    cpu = dv.CpuDevice(0)
    assert set(cpu.peak_flops) == set(OP_CLASSES)
    assert cpu.peak_flops["matmul"] > cpu.peak_flops["elementwise"]
    assert cpu.kind == "cpu" and cpu.memory_space == "host" and cpu.backend == "numpy"
    assert cpu.capacity > 0


def test_roofline_is_launch_plus_the_larger_of_compute_and_memory():
    m = Machine.from_spec(cpus=1, sims=[SimSpec(speed=1e9, mem_bandwidth=1e6,
                                                launch_overhead=1e-3)])
    g = m.device("gpu:0")
    assert g.roofline(Cost(flops=2e9, bytes=3e6), "matmul") == pytest.approx(1e-3 + 3)
    assert g.roofline(Cost(flops=5e9, bytes=3e6), "matmul") == pytest.approx(1e-3 + 5)
    with pytest.raises(DeviceError, match="unknown op class"):
        g.roofline(Cost(1, 1), "quantum")
    op = lookup("add")
    a = TensorSpec((10,), np.float32)
    assert g.kernel_time(op, [a, a], [a], ht.Attrs()) == pytest.approx(1e-3 + 120 / 1e6)


def test_bad_rates_refused():
    with pytest.raises(DeviceError, match="lacks op class"):
        Machine.from_spec(cpus=1, sims=[SimSpec(speed={"matmul": 1e12})])
    with pytest.raises(DeviceError, match="must be positive"):
        Machine.from_spec(cpus=1, sims=[SimSpec(speed=0.0)])


def test_card_table_figures_are_sane():
    for key in ("h100", "a100", "l4", "t4"):
        c = CARDS[key]
        assert c.fp32 <= c.tf32 <= c.fp16
        assert c.host_link <= c.peer_link
        assert c.memory >= 16 * 2**30
    assert CARDS["h100"].fp32 > CARDS["a100"].fp32 > CARDS["t4"].fp32
    assert dv.card_for_model("NVIDIA H100 80GB HBM3").key == "h100"
    assert dv.card_for_model("NVIDIA H100 PCIe").key == "h100-pcie"
    assert dv.card_for_model("Tesla T4").key == "t4"
    assert dv.card_for_model("NVIDIA A100-SXM4-80GB").key == "a100"
    assert dv.card_for_model("GeForce GTX 480") is None
    with pytest.raises(DeviceError, match="unknown GPU card"):
        dv.card("z80")


# ----------------------------------------------------------------------------------------------
# Detection


def test_detect_without_gpu_is_cpu_only_fast_and_light():
    """In a fresh interpreter: detection finds only CPU workers and never imports CuPy."""
    code = ("import sys, time; t = time.perf_counter(); import hetero as ht; "
            "m = ht.Machine.detect(); dt = time.perf_counter() - t; "
            "print(len(m.gpus()), len(m.cpus()), 'cupy' in sys.modules, dt)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=ROOT).stdout.split()
    if int(out[0]):
        pytest.skip("this host has a usable CUDA GPU")
    assert int(out[1]) == dv.cpu_cores()
    assert out[2] == "False"
    assert [d.name for d in Machine.detect(cpus=3).devices] == ["cpu:0", "cpu:1", "cpu:2"]


class _Err:
    def __init__(self, name):
        self.name = name

    def __eq__(self, other):
        return isinstance(other, _Err) and other.name == self.name

    def __hash__(self):
        return hash(self.name)


def _fake_driver(models):
    ok = _Err("CUDA_SUCCESS")
    attrs = types.SimpleNamespace(CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT="sm",
                                  CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR="major",
                                  CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR="minor",
                                  CU_DEVICE_ATTRIBUTE_CLOCK_RATE="clock")
    values = {"sm": 132, "major": 9, "minor": 0, "clock": 1_980_000}
    return types.SimpleNamespace(
        CUresult=types.SimpleNamespace(CUDA_SUCCESS=ok), CUdevice_attribute=attrs,
        cuInit=lambda flags: (ok,), cuDeviceGetCount=lambda: (ok, len(models)),
        cuDeviceGet=lambda i: (ok, i),
        cuDeviceGetName=lambda n, d: (ok, models[d].encode() + b"\0\0"),
        cuDeviceTotalMem=lambda d: (ok, 80 * 2**30),
        cuDeviceGetAttribute=lambda a, d: (ok, values[a]))


def _install_fake_cuda(monkeypatch, models):
    driver = _fake_driver(models)
    bindings = types.ModuleType("cuda.bindings")
    bindings.driver = driver
    cuda = types.ModuleType("cuda")
    cuda.bindings = bindings
    monkeypatch.setitem(sys.modules, "cuda", cuda)
    monkeypatch.setitem(sys.modules, "cuda.bindings", bindings)
    monkeypatch.setitem(sys.modules, "cuda.bindings.driver", driver)
    monkeypatch.setattr(dv, "_cuda_driver_present", lambda: True)


def test_detect_gpus_reads_the_driver(monkeypatch):
    _install_fake_cuda(monkeypatch, ["NVIDIA H100 80GB HBM3", "Mystery GPU"])
    infos = dv.detect_gpus()
    assert [i.model for i in infos] == ["NVIDIA H100 80GB HBM3", "Mystery GPU"]
    assert infos[0].sm_count == 132 and infos[0].compute_capability == (9, 0)
    assert infos[0].total_memory == 80 * 2**30 and infos[0].clock_hz == 1.98e9
    rates = dv.rates_for(infos[0])
    assert rates["peak_flops"]["matmul"] == CARDS["h100"].fp32
    assert rates["peak_flops"]["conv"] == CARDS["h100"].tf32  # cuDNN uses TF32 on sm_80+
    guess = dv.rates_for(infos[1])  # not in the table: estimated from SMs and clock
    assert guess["peak_flops"]["matmul"] == pytest.approx(132 * 128 * 2 * 1.98e9)


def test_without_a_driver_cuda_python_is_not_asked(monkeypatch):
    _install_fake_cuda(monkeypatch, ["NVIDIA H100 80GB HBM3"])
    monkeypatch.setattr(dv, "_cuda_driver_present", lambda: False)
    assert dv.detect_gpus() == []


def test_detect_builds_cuda_devices_and_skips_unusable_ones(monkeypatch, caplog):
    _install_fake_cuda(monkeypatch, ["NVIDIA H100 80GB HBM3", "Tesla T4"])

    class FakeCuda(dv.Device):
        broken = 1

        @classmethod
        def from_index(cls, index, *, name=None, capacity=None):
            if index == cls.broken:
                raise DeviceError("cannot open device 1")
            dev = cls.__new__(cls)
            for k, v in dict(name=name, kind="gpu", memory_space=f"gpu:{index}", backend="cupy",
                             capacity=123, peak_flops=dict.fromkeys(OP_CLASSES, 1.0),
                             mem_bandwidth=1.0, launch_overhead=0.0, index=index).items():
                object.__setattr__(dev, k, v)
            return dev

    fake = types.ModuleType("hetero.backends.cupy")
    fake.CudaDevice = FakeCuda
    monkeypatch.setitem(sys.modules, "hetero.backends.cupy", fake)
    m = Machine.detect(cpus=2)
    assert [d.name for d in m.devices] == ["cpu:0", "cpu:1", "gpu:0"]
    g = m.device("gpu:0")
    assert g.peak_flops["matmul"] == CARDS["h100"].fp32  # published figures replace estimates
    assert g.capacity == 123 and g.info["sm_count"] == 132
    assert m.link("host", "gpu:0").bandwidth == CARDS["h100"].host_link
    assert "skipping CUDA GPU 1" in caplog.text
    assert Machine.parse("cpu:1,gpu:1,sim:1").device("gpu:1").backend == "sim"
    FakeCuda.broken = 0  # devices keep their CUDA ordinal; simulated GPUs come after them
    m = Machine.parse("cpu:1,gpu,sim:1")
    assert [(d.name, d.memory_space, d.backend) for d in m.gpus()] == \
           [("gpu:1", "gpu:1", "cupy"), ("gpu:2", "gpu:2", "sim")]


def test_detect_without_cupy_logs_and_reports_cpu(monkeypatch, caplog):
    _install_fake_cuda(monkeypatch, ["Tesla T4"])
    monkeypatch.setitem(sys.modules, "hetero.backends.cupy", None)  # import fails
    m = Machine.detect(cpus=1)
    assert [d.name for d in m.devices] == ["cpu:0"]
    assert "cannot use them" in caplog.text


# ----------------------------------------------------------------------------------------------
# Copies and JSON


def test_machine_copy_between_every_pair_of_spaces():
    m = Machine.parse("cpu:2,sim:2")
    host = np.arange(12, dtype=np.float32).reshape(3, 4)
    g0 = m.copy(host, "cpu:0", "gpu:0")
    assert m.device("gpu:0").owns(g0) and not m.device("cpu:0").owns(g0)
    g1 = m.copy(g0, "gpu:0", "gpu:1")
    assert g1.memory_space == "gpu:1"
    back = m.copy(g1, "gpu:1", "cpu:1")
    assert type(back) is np.ndarray
    np.testing.assert_array_equal(back, host)
    assert m.copy(host, "cpu:0", "cpu:1") is host  # one space: no copy
    with pytest.raises(DeviceError, match="lives in memory space 'gpu:0'"):
        m.copy(g0, "gpu:1", "cpu:0")


def test_machine_json_round_trip():
    m = Machine.from_spec(cpus=2, sims=[SimSpec(card="a100"), SimSpec(speed=1e12)],
                          links={("gpu:1", "host"): Link(1e9, 1e-4)})
    data = m.to_json()
    import json

    back = Machine.from_json(json.loads(json.dumps(data)))
    assert [d.name for d in back.devices] == [d.name for d in m.devices]
    for a, b in zip(m.devices, back.devices):
        assert (a.backend, a.capacity, a.peak_flops, a.mem_bandwidth) == \
               (b.backend, b.capacity, b.peak_flops, b.mem_bandwidth)
    for s in m.memory_spaces:
        for t in m.memory_spaces:
            assert back.link(s, t) == m.link(s, t)
    assert back.spec == m.spec


def test_describe_names_every_device():
    text = Machine.parse("cpu:1,sim:1@l4").describe()
    assert "cpu:0" in text and "gpu:0" in text and "NVIDIA L4" in text and "GB/s" in text


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 4), st.lists(st.sampled_from([None, *CARDS]), max_size=4))
def test_spec_strings_round_trip(cpus, cards):
    spec = ",".join([f"cpu:{cpus}"] + [f"sim:1@{c}" if c else "sim:1" for c in cards])
    m = Machine.parse(spec)
    assert [d.name for d in m.devices] == ([f"cpu:{i}" for i in range(cpus)] +
                                           [f"gpu:{i}" for i in range(len(cards))])
    again = Machine.parse(m._spec_string())
    assert [(d.name, d.peak_flops, d.capacity) for d in again.devices] == \
           [(d.name, d.peak_flops, d.capacity) for d in m.devices]
    for s in m.memory_spaces:
        for t in m.memory_spaces:
            assert m.link(s, t) == m.link(t, s)
            assert again.link(s, t) == m.link(s, t)


def test_op_classes_agree_with_the_registry():
    assert dv.OP_CLASSES == OP_CLASSES


def test_parse_ignores_spaces_and_case():
    m = Machine.parse(" CPU:2 , sim:1 @ H100, sim : 1 ")
    assert [d.name for d in m.devices] == ["cpu:0", "cpu:1", "gpu:0", "gpu:1"]
    assert m.device("gpu:0").peak_flops["matmul"] == CARDS["h100"].fp32
    assert m.device("gpu:1").info["card"] is None


def test_speed_factor_scales_some_op_classes_of_a_card():
    m = Machine.from_spec(cpus=1, sims=[SimSpec(card="h100", speed_factor={"conv": 0.5}),
                                        SimSpec(speed=1e12, speed_factor=2)])
    g0, g1 = m.gpus()
    assert g0.peak_flops["conv"] == CARDS["h100"].fp32 / 2
    assert g0.peak_flops["matmul"] == CARDS["h100"].fp32
    assert g1.peak_flops == {c: 2e12 for c in OP_CLASSES}
    for bad in ({"tensor": 2.0}, 0.0, {"conv": -1}):
        with pytest.raises(DeviceError, match="speed_factor"):
            SimSpec(speed_factor=bad).device_kwargs()


def test_link_and_simspec_are_exported():
    import hetero as ht

    assert ht.Link is Link and ht.SimSpec is SimSpec


@pytest.mark.parametrize("spec", ["sim:0", "cpu:2,gpu:0", "cpu:1,sim:0@h100"])
def test_zero_gpus_in_a_spec_is_refused_as_a_count_not_an_index(spec):
    with pytest.raises(ht.DeviceError, match="count, not an index"):
        ht.Machine.parse(spec)


@pytest.mark.parametrize("spec", ["cpu:99999999", "cpu:2,sim:5000", "gpu:100000"])
def test_parse_refuses_absurd_device_counts(spec):
    with pytest.raises(ht.DeviceError, match="at most 1024 of a kind"):
        ht.Machine.parse(spec)


@pytest.mark.parametrize("bad", [{"capacity": 0}, {"capacity": -1}, {"mem_bandwidth": 0},
                                 {"link_bandwidth": -5.0}, {"latency": -1e-6},
                                 {"launch_overhead": float("nan")}, {"capacity": "4GB"},
                                 {"precision": "fp8"}])
def test_impossible_sim_specs_are_refused_up_front(bad):
    """Issue 13.12: SimSpec(capacity=0) was accepted by placement and failed at the first run."""
    from hetero.devices import SimSpec

    key = next(iter(bad))
    with pytest.raises(DeviceError, match=f"SimSpec {key}"):
        SimSpec(**bad)


def test_a_device_with_no_memory_is_refused():
    from hetero.devices import CpuDevice, SimSpec

    with pytest.raises(DeviceError, match="cpu:0: memory capacity must be a positive"):
        CpuDevice(0, capacity=0)
    assert SimSpec(capacity=np.int64(2**30), latency=0).device_kwargs()["capacity"] == 2**30
