"""The CUDA C kernels without a GPU: they compile to PTX, ship in the wheel, and their NumPy twins
compute what ONNX (onnxruntime) and the shared CPU kernels compute.

On a GPU, tests/gpu/test_gpu_ops.py then checks each CUDA kernel against the same NumPy twin.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from fnmatch import fnmatch
from pathlib import Path

import numpy as np
import pytest

from hetero.backends import cupy as cuda_backend
from hetero.errors import DeviceError
from hetero.ops.registry import lookup

ROOT = Path(__file__).resolve().parents[1]
KERNEL_DIR = ROOT / "kernels"
SOURCES = sorted(KERNEL_DIR.glob("*.cu"))
ARCHS = ("sm_80", "sm_90")


def test_kernel_sources_exist():
    assert SOURCES, f"no CUDA sources in {KERNEL_DIR}"
    assert [p.name for p in SOURCES] == sorted(cuda_backend.kernel_sources())


# ----------------------------------------------------------------------------------------------
# nvcc: every kernel compiles to PTX for Ampere and Hopper without a warning


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("source", SOURCES, ids=lambda p: p.name)
def test_compiles_to_ptx(source: Path, arch: str, tmp_path: Path):
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        pytest.skip("nvcc is not on PATH (install the CUDA toolkit to compile-check kernels)")
    out = tmp_path / f"{source.stem}_{arch}.ptx"
    proc = subprocess.run(
        [nvcc, "-ptx", f"-arch={arch}", "-Werror", "all-warnings",
         "-o", str(out), str(source)],
        capture_output=True, text=True, timeout=120)
    log = (proc.stdout + proc.stderr).strip()
    assert proc.returncode == 0, f"nvcc failed for {source.name} ({arch}):\n{log}"
    assert "warning" not in log.lower(), f"nvcc warned for {source.name} ({arch}):\n{log}"
    ptx = out.read_text()
    for symbol in re.findall(r'extern "C" __global__ void (\w+)', source.read_text()):
        assert f".entry {symbol}(" in ptx, f"{symbol} missing from the PTX of {source.name}"


# ----------------------------------------------------------------------------------------------
# NVRTC: the run-time compiler CuPy uses (no headers, its own builtins) accepts every kernel


def _find_nvrtc() -> str | None:
    import ctypes.util
    import glob
    import site

    name = ctypes.util.find_library("nvrtc")
    if name:
        return name
    roots = [*site.getsitepackages(), site.getusersitepackages(), "/usr/local/cuda/lib64"]
    for root in roots:
        for pattern in ("nvidia/cu1*/lib/libnvrtc.so*", "nvidia/cuda_nvrtc/lib/libnvrtc.so*",
                        "libnvrtc.so*"):
            hits = sorted(p for p in glob.glob(f"{root}/{pattern}") if "builtins" not in p)
            if hits:
                return hits[0]
    return None


@pytest.mark.parametrize("arch", ["compute_80", "compute_90"])
@pytest.mark.parametrize("source", SOURCES, ids=lambda p: p.name)
def test_compiles_with_nvrtc(source: Path, arch: str):
    import ctypes

    path = _find_nvrtc()
    if path is None:
        pytest.skip("libnvrtc not found (pip install nvidia-cuda-nvrtc to check NVRTC builds)")
    lib = ctypes.CDLL(path)
    prog = ctypes.c_void_p()
    assert lib.nvrtcCreateProgram(ctypes.byref(prog), source.read_bytes(), source.name.encode(),
                                  0, None, None) == 0
    try:
        opts = [f"--gpu-architecture={arch}".encode()]
        rc = lib.nvrtcCompileProgram(prog, len(opts), (ctypes.c_char_p * len(opts))(*opts))
        size = ctypes.c_size_t()
        lib.nvrtcGetProgramLogSize(prog, ctypes.byref(size))
        log = ctypes.create_string_buffer(size.value)
        lib.nvrtcGetProgramLog(prog, log)
    finally:
        lib.nvrtcDestroyProgram(ctypes.byref(prog))
    text = log.value.decode(errors="replace").strip()
    assert rc == 0, f"NVRTC failed for {source.name} ({arch}):\n{text}"
    assert "warning" not in text.lower(), f"NVRTC warned for {source.name} ({arch}):\n{text}"


# ----------------------------------------------------------------------------------------------
# Packaging and NVRTC compatibility (static)


def test_every_kernel_is_package_data():
    """Each kernels/*.cu is a file under hetero/kernels that pyproject's package-data ships."""
    try:
        import tomllib
    except ImportError:  # Python 3.10
        tomllib = pytest.importorskip("tomli")
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())
    globs = data["tool"]["setuptools"]["package-data"]["hetero"]
    package = ROOT / "hetero"
    for source in SOURCES:
        real = source.resolve()
        assert real.is_relative_to(package.resolve()), f"{source} is not inside hetero/"
        rel = real.relative_to(package.resolve()).as_posix()
        assert any(fnmatch(rel, g) for g in globs), f"{rel} matches no package-data glob {globs}"
        assert cuda_backend.kernel_source(source.name) == source.read_text()


@pytest.mark.parametrize("source", SOURCES, ids=lambda p: p.name)
def test_no_headers(source: Path):
    """NVRTC (what CuPy compiles with) has no system headers: the kernels must not need any."""
    assert "#include" not in source.read_text()


def test_symbols_the_backend_launches_exist():
    symbols = set()
    for source in SOURCES:
        symbols |= set(re.findall(r'extern "C" __global__ void (\w+)', source.read_text()))
    launched = {f"{stem}_{sfx}" for stem in ("bias_act", "lrn", "pool2d", "softmax")
                for sfx in ("f32", "f64")}
    assert launched <= symbols, f"missing kernels: {sorted(launched - symbols)}"


def test_activation_codes_match_the_kernel():
    text = (KERNEL_DIR / "bias_act.cu").read_text()
    for name, code in cuda_backend.ACTIVATIONS.items():
        if code:
            assert text.count(f"case {code}:") == 2, f"{name} (code {code}) not in both switches"


def test_import_hetero_does_not_import_cupy():
    code = ("import sys, hetero, hetero.backends.cupy as m; m.register_kernels(); "
            "bad = [n for n in ('cupy', 'cudnn', 'cupyx') if n in sys.modules]; "
            "assert not bad, bad")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr


def test_no_cuda_means_a_device_error():
    if cuda_backend.cuda_device_count() > 0:
        pytest.skip("this machine has a CUDA device")
    with pytest.raises(DeviceError):
        cuda_backend.CudaDevice.from_index(0)


# ----------------------------------------------------------------------------------------------
# The NumPy twins against onnxruntime


def _ort(node_kwargs: dict, inputs: dict[str, np.ndarray], opset: int = 20) -> np.ndarray:
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    from onnx import TensorProto, helper

    names = list(inputs)
    node = helper.make_node(inputs=names, outputs=["y"], **node_kwargs)
    graph = helper.make_graph(
        [node], "g",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, list(a.shape))
         for n, a in inputs.items()],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, list(inputs[names[0]].shape))])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = min(model.ir_version, 10)
    onnx.checker.check_model(model)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, inputs)[0]


RNG = np.random.default_rng(7)


@pytest.mark.parametrize("size", [1, 3, 5])  # onnxruntime implements odd sizes only
def test_ref_lrn_matches_onnxruntime(size: int):
    x = RNG.standard_normal((2, 7, 3, 4)).astype(np.float32)
    want = _ort({"op_type": "LRN", "size": size, "alpha": 0.3, "beta": 0.6, "bias": 1.5}, {"x": x})
    got = cuda_backend.ref_lrn(x, size, alpha=0.3, beta=0.6, bias=1.5)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("log", [False, True])
def test_ref_softmax_matches_onnxruntime(log: bool):
    x = (RNG.standard_normal((3, 5, 33)) * 10).astype(np.float32)
    want = _ort({"op_type": "LogSoftmax" if log else "Softmax", "axis": -1}, {"x": x})
    np.testing.assert_allclose(cuda_backend.ref_softmax(x, log=log), want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_ref_gelu_matches_onnxruntime(approximate: str):
    x = (RNG.standard_normal((4, 50)) * 3).astype(np.float32)
    want = _ort({"op_type": "Gelu", "approximate": approximate}, {"x": x})
    act = "gelu_tanh" if approximate == "tanh" else "gelu"
    np.testing.assert_allclose(cuda_backend.ref_bias_act(x, None, act), want, rtol=1e-5,
                               atol=1e-6)


def test_ref_erf_matches_onnxruntime():
    x = (RNG.standard_normal((4, 50)) * 2).astype(np.float32)
    want = _ort({"op_type": "Erf"}, {"x": x})
    np.testing.assert_allclose(cuda_backend.ref_bias_act(x, None, "erf"), want, rtol=1e-5,
                               atol=1e-6)


@pytest.mark.parametrize("op_type,activation", [
    ("Relu", "relu"), ("Sigmoid", "sigmoid"), ("Tanh", "tanh"), ("LeakyRelu", "leaky_relu")])
def test_ref_bias_act_matches_onnxruntime(op_type: str, activation: str):
    x = RNG.standard_normal((2, 6, 3, 5)).astype(np.float32)
    b = RNG.standard_normal(6).astype(np.float32)
    biased = (x.astype(np.float64) + b.reshape(1, 6, 1, 1)).astype(np.float32)
    kwargs = {"op_type": op_type, **({"alpha": 0.2} if op_type == "LeakyRelu" else {})}
    want = _ort(kwargs, {"x": biased})
    got = cuda_backend.ref_bias_act(x, b, activation, alpha=0.2)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------------------------
# The NumPy twins against the shared kernels (what the CPU runs), and the override dispatch


def _shared(name: str, ins, attrs=None):
    op = lookup(name)
    attrs = op.normalize_attrs(attrs or {})
    spec = op.infer_specs(tuple(_spec(a) for a in ins), attrs)[0]
    out = np.empty(spec.shape, spec.dtype)
    op.kernel(np, ins, attrs, [out])
    return out


def _spec(a):
    from hetero.graph import TensorSpec

    return TensorSpec.of(a)


def test_twins_match_the_shared_kernels():
    x = RNG.standard_normal((2, 6, 4, 5))
    for size in (1, 2, 3, 4, 7):  # even sizes: the window is one longer above than below
        np.testing.assert_allclose(cuda_backend.ref_lrn(x, size, 1e-2, 0.7, 2.0),
                                   _shared("lrn", [x], {"size": size, "alpha": 1e-2, "beta": 0.7,
                                                        "bias": 2.0}), rtol=1e-12)
    for name, log in (("softmax", False), ("log_softmax", True)):
        np.testing.assert_allclose(cuda_backend.ref_softmax(x, log=log), _shared(name, [x]),
                                   rtol=1e-12, atol=1e-14)
    for approx, act in (("none", "gelu"), ("tanh", "gelu_tanh")):
        np.testing.assert_allclose(cuda_backend.ref_bias_act(x, None, act),
                                   _shared("gelu", [x], {"approximate": approx}),
                                   rtol=1e-7, atol=1e-7)
    np.testing.assert_allclose(cuda_backend.ref_bias_act(x, None, "erf"), _shared("erf", [x]),
                               rtol=1e-7, atol=1e-7)


POOLS = [
    ("max_pool2d", {"kernel_shape": (3, 3), "strides": (2, 2), "pads": (1, 1, 1, 1)}),
    ("max_pool2d", {"kernel_shape": (2, 3), "strides": (2, 1), "pads": (0, 1, 1, 0),
                    "dilations": (2, 1), "ceil_mode": 1}),
    ("avg_pool2d", {"kernel_shape": (3, 3), "strides": (2, 2), "pads": (1, 1, 1, 1)}),
    ("avg_pool2d", {"kernel_shape": (3, 3), "strides": (2, 2), "pads": (1, 0, 1, 2),
                    "ceil_mode": 1, "count_include_pad": 1}),
    ("avg_pool2d", {"kernel_shape": (2, 2), "strides": (3, 3), "ceil_mode": 1}),
]


@pytest.mark.parametrize("name,attrs", POOLS)
def test_pool_twin_matches_the_shared_kernel(name: str, attrs: dict):
    x = RNG.standard_normal((2, 3, 8, 7))
    want = _shared(name, [x], attrs)
    mode = "max"
    if name == "avg_pool2d":
        mode = "avg_include_pad" if attrs.get("count_include_pad") else "avg"
    got = cuda_backend.ref_pool2d(x, want.shape[2:], attrs["kernel_shape"],
                                  attrs.get("strides", (1, 1)), attrs.get("pads", (0, 0, 0, 0)),
                                  attrs.get("dilations", (1, 1)), mode)
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("activation,params", [
    ("none", ()), ("relu", ()), ("leaky_relu", (0.3,)), ("sigmoid", ()), ("tanh", ()),
    ("clip", (-0.5, 0.7))])
def test_conv_epilogue_matches_the_shared_conv(activation: str, params: tuple):
    """conv2d on the GPU = cuDNN convolution + bias_act epilogue; the epilogue's twin applied to
    a bias-free shared convolution must equal the shared fused convolution."""
    x = RNG.standard_normal((2, 3, 6, 6))
    w = RNG.standard_normal((4, 3, 3, 3))
    b = RNG.standard_normal(4)
    plain = _shared("conv2d", [x, w], {"pads": (1, 1, 1, 1)})
    fused = _shared("conv2d", [x, w, b], {"pads": (1, 1, 1, 1), "activation": activation,
                                          "activation_params": params})
    act, alpha, beta = cuda_backend._conv_activation(
        {"activation": activation, "activation_params": params})
    np.testing.assert_allclose(cuda_backend.ref_bias_act(plain, b, act, alpha, beta), fused,
                               rtol=1e-10, atol=1e-12)


def test_overrides_are_registered_and_fall_back_on_what_they_do_not_handle():
    """Inputs the CUDA overrides do not take go to the shared kernel, untouched by CuPy (so this
    runs on NumPy arrays)."""
    names = cuda_backend.register_kernels()
    assert {"gemm", "matmul", "conv2d", "softmax", "lrn", "max_pool2d"} <= set(names)
    for name in names:
        assert "cupy" in lookup(name).kernels, name
    cases = [
        ("softmax", [RNG.standard_normal((3, 4)).astype(np.float32)], {"axis": 0}),
        ("lrn", [RNG.integers(0, 5, (1, 3, 2, 2)).astype(np.float16)], {"size": 3}),
        ("matmul", [RNG.standard_normal((2, 3, 4)), RNG.standard_normal((2, 4, 5))], {}),
        ("gemm", [RNG.integers(0, 5, (3, 4)), RNG.integers(0, 5, (4, 2))], {}),
        ("gelu", [RNG.standard_normal(5).astype(np.float16)], {}),
        ("max_pool2d", [RNG.standard_normal((1, 2, 4, 4)).astype(np.float16)],
         {"kernel_shape": (2, 2)}),
        ("conv2d", [RNG.standard_normal((1, 2, 5, 5)).astype(np.float16),
                    RNG.standard_normal((3, 2, 3, 3)).astype(np.float16)], {}),
        ("batch_norm", [RNG.standard_normal((2, 3, 4)), *(RNG.random(3) + 0.5 for _ in range(4))],
         {}),
    ]
    for name, ins, attrs in cases:
        op = lookup(name)
        attrs = op.normalize_attrs(attrs)
        spec = op.infer_specs(tuple(_spec(a) for a in ins), attrs)[0]
        got = np.empty(spec.shape, spec.dtype)
        op.kernels["cupy"](np, ins, attrs, [got])
        want = _shared(name, ins, dict(attrs))
        np.testing.assert_array_equal(got, want, err_msg=name)
