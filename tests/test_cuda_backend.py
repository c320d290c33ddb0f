"""The CUDA backend's logic without a GPU: host arrays of every rank, the order and lifetime of
peer copies, one cuDNN handle per stream, the strides cuDNN graphs declare, the cuDNN version
call, fallbacks counted in the profile, kernel launch arguments against the C parameters, and
what the ``gpu`` extra and scripts/gpu_check.sh install.

``FakeCupy`` stands in for CuPy: its "device" arrays are NumPy memory, its copies are
``memmove`` and every stream operation goes to a log, so ordering is checked as a sequence.
tests/gpu runs the same paths on a card.
"""

from __future__ import annotations

import ctypes
import itertools
import re
import subprocess
import sys
import threading
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from hetero.backends import cupy as backend
from hetero.graph import TensorSpec

ROOT = Path(__file__).resolve().parents[1]

# ----------------------------------------------------------------------------------------------
# A CuPy stand-in


class FakeArray:
    """A device array on fake GPU ``device``: NumPy memory, CuPy's attributes."""

    def __init__(self, a: np.ndarray, device: int) -> None:
        self.a = a
        self.device = SimpleNamespace(id=device)

    shape = property(lambda self: self.a.shape)
    dtype = property(lambda self: self.a.dtype)
    strides = property(lambda self: self.a.strides)
    itemsize = property(lambda self: self.a.itemsize)
    nbytes = property(lambda self: self.a.nbytes)
    flags = property(lambda self: self.a.flags)
    size = property(lambda self: self.a.size)
    ndim = property(lambda self: self.a.ndim)
    data = property(lambda self: SimpleNamespace(ptr=self.a.ctypes.data))
    T = property(lambda self: FakeArray(self.a.T, self.device.id))

    def transpose(self, *axes):
        return FakeArray(self.a.transpose(*axes), self.device.id)

    def __setitem__(self, key, value):
        self.a[key] = value.a if isinstance(value, FakeArray) else value


class FakeCupy:
    """The parts of CuPy the backend's copies, streams and cuDNN calls use, with a log."""

    def __init__(self) -> None:
        self.log: list[tuple] = []
        self._device = [0]
        self._stream: list = []
        self._ids = itertools.count(1)
        fake = self

        class Device:
            def __init__(self, index=None):
                self.id = fake._device[-1] if index is None else index

            def __enter__(self):
                fake._device.append(self.id)

            def __exit__(self, *exc):
                fake._device.pop()

        class Stream:
            def __init__(self, non_blocking=False):
                self.ptr = next(fake._ids) * 0x1000
                self.device = fake._device[-1]
                self.done = True

            def __enter__(self):
                fake._stream.append(self)

            def __exit__(self, *exc):
                fake._stream.pop()

            def wait_event(self, event):
                fake.log.append(("wait", self.ptr, event.id))

        class Event:
            def __init__(self, block=False, disable_timing=True):
                self.id = next(fake._ids)
                self.device = fake._device[-1]
                self.done = True

            def record(self, stream):
                assert stream.device == self.device, "event and stream on different GPUs"
                fake.log.append(("record", stream.ptr, self.id))

            def synchronize(self):
                pass

        def memcpy(dst, src, nbytes, kind, stream):
            fake.log.append(("memcpy", stream, nbytes))
            ctypes.memmove(dst, src, nbytes)

        def memcpy_peer(dst, dst_dev, src, src_dev, nbytes, stream):
            fake.log.append(("memcpy_peer", stream, dst_dev, src_dev))
            ctypes.memmove(dst, src, nbytes)

        legacy = SimpleNamespace(ptr=0, device=0)
        self.cuda = SimpleNamespace(
            Device=Device, Stream=Stream, Event=Event,
            get_current_stream=lambda: fake._stream[-1] if fake._stream else legacy,
            memory=SimpleNamespace(OutOfMemoryError=MemoryError),
            runtime=SimpleNamespace(memcpyAsync=memcpy, memcpyPeerAsync=memcpy_peer,
                                    memcpyHostToDevice=1, memcpyDeviceToHost=2,
                                    CUDARuntimeError=RuntimeError))
        self.ndarray = FakeArray

    def current_stream_ptr(self) -> int:
        return self.cuda.get_current_stream().ptr

    def empty(self, shape, dtype=np.float32):
        return FakeArray(np.empty(shape, dtype), self._device[-1])

    def empty_like(self, a):
        return self.empty(a.shape, a.dtype)

    def ascontiguousarray(self, a, dtype=None):
        if a.flags.c_contiguous and dtype in (None, a.dtype):
            return a
        self.log.append(("pack", self.current_stream_ptr(), self._device[-1]))
        return FakeArray(np.ascontiguousarray(a.a, dtype=dtype), self._device[-1])

    def get_default_memory_pool(self):
        return SimpleNamespace(used_bytes=lambda: 0)


@pytest.fixture
def fake_cp(monkeypatch):
    cp = FakeCupy()
    monkeypatch.setattr(backend, "_cupy", lambda: cp)
    monkeypatch.setattr(backend, "_PACK_STREAMS", {})
    return cp


def _device(index: int) -> backend.CudaDevice:
    """A CudaDevice on the fake CuPy (its __init__ asks a real driver for properties)."""
    dev = object.__new__(backend.CudaDevice)
    backend._set(dev, name=f"gpu:{index}", kind="gpu", memory_space=f"gpu:{index}",
                 backend="cupy", capacity=1 << 30, index=index, _streams=None,
                 _lock=threading.Lock())
    return dev


# ----------------------------------------------------------------------------------------------
# Defect 1: 0-d host arrays


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16, np.int64, np.int8,
                                   np.bool_])
def test_host_contiguous_keeps_the_shape(dtype):
    for value in (np.array(3, dtype), np.zeros((0,), dtype), np.ones((3, 4), dtype).T):
        host = backend.host_contiguous(value)
        assert host.shape == value.shape and host.flags.c_contiguous
        np.testing.assert_array_equal(host, value)
    assert backend.host_contiguous(np.float32(2.5)).shape == ()
    plain = np.ones((2, 3))
    assert backend.host_contiguous(plain) is plain  # no copy when there is nothing to fix


@pytest.mark.parametrize("shape", [(), (0,), (7,), (3, 5)], ids=str)
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16, np.int64, np.int8,
                                   np.bool_])
def test_from_host_and_copy_from_host_keep_0d(shape, dtype, fake_cp):
    gpu = _device(0)
    host = (np.arange(int(np.prod(shape))).reshape(shape) % 3).astype(dtype)
    dev = gpu.from_host(host)
    assert dev.shape == shape and dev.dtype == host.dtype
    np.testing.assert_array_equal(dev.a, host)
    dst = gpu.empty(TensorSpec(shape, dtype))
    gpu.copy_from_host(dst, host, gpu.h2d_stream)  # raised "float32[] ... float32[1]" before
    np.testing.assert_array_equal(dst.a, host)


# ----------------------------------------------------------------------------------------------
# Defect 7: a non-contiguous peer copy


def test_non_contiguous_peer_copy_is_ordered_and_keeps_its_buffer(fake_cp):
    """src on gpu:1 (a transposed view), dst on gpu:0, the copy on gpu:0's h2d stream, which
    the caller has made wait for src's producer. The pack must run on a gpu:1 stream that
    waits for the copy stream first, the copy must wait for the pack, and the pack stream must
    wait for the copy before it can reuse the packed buffer."""
    a, b = _device(1), _device(0)
    host = np.arange(6 * 5, dtype=np.float32).reshape(6, 5)
    with fake_cp.cuda.Device(1):
        src = FakeArray(host.copy(), 1).T
    dst = b.empty(TensorSpec((5, 6), np.float32))
    stream = b.h2d_stream
    fake_cp.log.clear()
    b.copy_peer(dst, src, stream)
    np.testing.assert_array_equal(dst.a, host.T)
    pack = backend._PACK_STREAMS[1]
    assert pack.device_index == 1 and a.index == 1
    log = fake_cp.log
    ops = [entry[0] for entry in log]
    assert ops == ["record", "wait", "pack", "record", "wait", "memcpy_peer", "record", "wait"]
    (_, s0, e0), (_, w0, we0), (_, p, pdev), (_, s1, e1), (_, w1, we1) = log[:5]
    assert (s0, w0, we0) == (stream.ptr, pack.ptr, e0), "pack does not wait for the producer"
    assert (p, pdev) == (pack.ptr, 1), "packed on the wrong stream (the legacy stream?)"
    assert (s1, w1, we1) == (pack.ptr, stream.ptr, e1), "copy does not wait for the pack"
    assert log[5][1] == stream.ptr and log[5][2:] == (0, 1)
    (_, s2, e2), (_, w2, we2) = log[6:]
    assert (s2, w2, we2) == (stream.ptr, pack.ptr, e2), "buffer reusable before the copy ran"


def test_same_gpu_peer_copy_packs_on_the_copy_stream(fake_cp):
    gpu = _device(0)
    host = np.arange(12, dtype=np.float64).reshape(3, 4)
    src = gpu.from_host(host).T
    dst = gpu.empty(TensorSpec((4, 3), np.float64))
    fake_cp.log.clear()
    gpu.copy_peer(dst, src, gpu.d2h_stream)
    assert [e[:2] for e in fake_cp.log] == [("pack", gpu.d2h_stream.ptr),
                                           ("memcpy_peer", gpu.d2h_stream.ptr)]
    np.testing.assert_array_equal(dst.a, host.T)


# ----------------------------------------------------------------------------------------------
# Defects 5 and 6: cuDNN graphs (strides, handles per stream)


class FakeCudnn:
    """The frontend calls the backend makes, recorded."""

    def __init__(self, refuse: bool = False) -> None:
        self.handles: list = []
        self.graphs: list = []
        self.refuse = refuse
        self.data_type = SimpleNamespace(FLOAT="FLOAT", HALF="HALF", DOUBLE="DOUBLE")
        self.heur_mode = SimpleNamespace(A="A", FALLBACK="FALLBACK")

    def backend_version(self):
        return 91400

    def create_handle(self):
        handle = SimpleNamespace(stream=None, executed=[])
        self.handles.append(handle)
        return handle

    def set_stream(self, handle, stream):
        assert handle.stream is None, "a handle moved to another stream"
        handle.stream = stream

    def pygraph(self, **kwargs):
        graph = FakeGraph(self, kwargs)
        self.graphs.append(graph)
        return graph


class FakeTensor:
    def __init__(self, **kw):
        self.kw = kw

    def set_output(self, flag):
        self.kw["output"] = flag

    def set_data_type(self, dt):
        self.kw["data_type"] = dt

    def set_dim(self, dim):
        self.kw["dim"] = dim

    def set_stride(self, stride):
        self.kw["stride"] = stride


class FakeGraph:
    def __init__(self, cudnn: FakeCudnn, kwargs: dict) -> None:
        self.cudnn, self.kwargs, self.ops = cudnn, kwargs, []

    def tensor(self, **kw):
        return FakeTensor(**kw)

    def conv_fprop(self, **kw):
        self.ops.append(("conv_fprop", kw))
        return FakeTensor()

    def batchnorm_inference(self, **kw):
        self.ops.append(("batchnorm_inference", kw))
        return FakeTensor()

    def validate(self):
        if self.cudnn.refuse:
            raise RuntimeError("No valid engine configs")

    build_operation_graph = check_support = build_plans = lambda self: None

    def create_execution_plans(self, modes):
        assert modes == ["A", "FALLBACK"]

    def get_workspace_size(self):
        return 64

    def execute(self, bindings, workspace, handle):
        handle.executed.append((self, backend._cupy().current_stream_ptr(), id(workspace)))
        for tensor, array in bindings.items():
            if tensor.kw.get("output"):
                stride = tensor.kw["stride"]
                assert backend._elem_strides(array) == stride or array.size <= 1
                array.a[...] = 0.5


@pytest.fixture
def fake_cudnn(monkeypatch, fake_cp):
    cudnn = FakeCudnn()
    monkeypatch.setitem(sys.modules, "cudnn", cudnn)
    monkeypatch.setattr(backend, "_CUDNN", backend._CudnnState())
    monkeypatch.setattr(backend, "CUDNN_FALLBACKS", {})
    monkeypatch.setattr(backend, "CUDNN_COUNTS", backend.Counter())
    backend.cudnn_unavailable.cache_clear()
    yield cudnn
    backend.cudnn_unavailable.cache_clear()


def test_channels_last_strides_and_copies():
    assert backend.channels_last_strides((2, 3, 4, 5)) == [60, 1, 15, 3]
    x = np.arange(2 * 3 * 4 * 5, dtype=np.float32).reshape(2, 3, 4, 5)
    cl = backend.channels_last(np, x)
    assert cl.shape == x.shape and backend._elem_strides(cl) == [60, 1, 15, 3]
    np.testing.assert_array_equal(cl, x)
    one = np.ones((2, 1, 4, 5))  # C == 1: NCHW memory already is channels-last, no copy
    assert np.shares_memory(backend.channels_last(np, one), one)
    assert backend._is_channels_last(one) and not backend._is_channels_last(x)


@pytest.mark.parametrize("dtype,compute", [(np.float32, "FLOAT"), (np.float64, "DOUBLE")])
def test_conv_graph_declares_channels_last_and_the_compute_type(dtype, compute, fake_cudnn):
    graph, (tx, tw, ty) = backend.conv2d_graph(fake_cudnn, None, (2, 3, 8, 8), (4, 3, 3, 3),
                                               (2, 4, 8, 8), dtype, (1, 1, 1, 1), (1, 1), (1, 1))
    assert tx.kw["stride"] == [192, 1, 24, 3] and tw.kw["stride"] == [27, 1, 9, 3]
    assert ty.kw["stride"] == [256, 1, 32, 4] and ty.kw["dim"] == [2, 4, 8, 8]
    assert graph.kwargs["compute_data_type"] == compute
    assert graph.ops[0][1]["compute_data_type"] == compute
    assert "handle" not in graph.kwargs


def test_batch_norm_graph_declares_channels_last(fake_cudnn):
    graph, tensors = backend.batch_norm_graph(fake_cudnn, "h", (2, 3, 4, 5), np.float32)
    tx, *params, ty = tensors
    assert tx.kw["stride"] == ty.kw["stride"] == [60, 1, 15, 3]
    assert all(p.kw["dim"] == [1, 3, 1, 1] and p.kw["stride"] == [3, 1, 3, 3] for p in params)
    assert graph.kwargs["handle"] == "h"


def test_graph_builders_pass_the_real_frontend():
    """The real frontend (where installed) accepts every call and keyword of the builders, and
    its graph holds the strides declared; validate() needs a driver, so it stops before."""
    cudnn = pytest.importorskip("cudnn", reason="nvidia-cudnn-frontend is not installed "
                                                "(hetero[gpu]; not in dev, see pyproject)")
    import json

    graph, _ = backend.conv2d_graph(cudnn, None, (2, 3, 8, 8), (4, 3, 3, 3), (2, 4, 8, 8),
                                    np.float64, (1, 1, 1, 1), (1, 1), (1, 1))
    desc = json.loads(str(graph))
    assert desc["context"]["compute_data_type"] == "data_type.DOUBLE"
    strides = sorted(t["stride"] for t in desc["tensors"].values())
    assert strides == sorted([[192, 1, 24, 3], [256, 1, 32, 4], [27, 1, 9, 3]])
    graph, _ = backend.batch_norm_graph(cudnn, None, (2, 3, 4, 5), np.float32)
    desc = json.loads(str(graph))
    assert desc["nodes"][0]["type"] == "BATCHNORM_INFERENCE"
    assert all(t["stride"][1] == 1 for t in desc["tensors"].values())


def _conv_on(gpu, stream):
    x = gpu.from_host(np.ones((1, 3, 5, 5), np.float32))
    w = gpu.from_host(np.ones((2, 3, 3, 3), np.float32))
    out = gpu.empty(TensorSpec((1, 2, 5, 5), np.float32))
    ok = stream.launch(backend._conv2d_cudnn, x, w, out, {"pads": (1, 1, 1, 1)})
    return ok, out


def test_one_cudnn_handle_per_stream(fake_cudnn, fake_cp):
    gpu = _device(0)
    for stream in (gpu.compute_stream, gpu.h2d_stream, gpu.compute_stream, gpu.h2d_stream):
        ok, out = _conv_on(gpu, stream)
        assert ok and np.all(out.a == 0.5)
    handles = fake_cudnn.handles
    assert len(handles) == 2, "one handle per stream, created once"
    assert {h.stream for h in handles} == {gpu.compute_stream.ptr, gpu.h2d_stream.ptr}
    for h in handles:  # each handle only ever ran on the stream it is bound to
        assert len(h.executed) == 2 and {ptr for _, ptr, _ in h.executed} == {h.stream}
    workspaces = {ws for h in handles for _, _, ws in h.executed}
    assert len(workspaces) == 2, "two streams share a workspace"
    assert backend.cudnn_report()["executed"] == 4


def test_refused_graphs_are_recorded_counted_and_shown_in_the_profile(fake_cudnn, fake_cp):
    fake_cudnn.refuse = True
    gpu = _device(0)
    with pytest.warns(RuntimeWarning, match="No valid engine configs"):
        ok, _ = _conv_on(gpu, gpu.compute_stream)
    assert not ok
    (key, reason), = backend.CUDNN_FALLBACKS.items()
    assert key[0] == "conv2d" and "No valid engine configs" in reason
    calls = []
    kernel = backend._conv2d_override(lambda xp, ins, attrs, outs: calls.append(1))
    x, w = np.ones((1, 3, 5, 5), np.float32), np.ones((2, 3, 3, 3), np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the refusal was warned once already
        gpu.compute_stream.launch(kernel, fake_cp, [x, w], {"pads": (1, 1, 1, 1)},
                                  [np.empty((1, 2, 5, 5), np.float32)])
    assert calls == [1] and backend.cudnn_report()["fallback"] == 1

    from hetero.profile import Profile

    plan = SimpleNamespace(machine=SimpleNamespace(devices=[
        SimpleNamespace(name="gpu:0", backend="cupy")]), makespan=0.0)
    profile = Profile(plan, [], 0.0)
    assert profile.summary()["cudnn"]["fallback"] == 1
    table = profile.table()
    assert "0 graph runs, 1 fallbacks" in table and "No valid engine configs" in table


def test_missing_cudnn_is_a_recorded_fallback(monkeypatch, fake_cp):
    monkeypatch.setitem(sys.modules, "cudnn", None)  # import cudnn raises ImportError
    monkeypatch.setattr(backend, "CUDNN_FALLBACKS", {})
    monkeypatch.setattr(backend, "_WARNED", set())
    backend.cudnn_unavailable.cache_clear()
    try:
        gpu = _device(0)
        with pytest.warns(RuntimeWarning, match="frontend does not import"):
            ok, _ = _conv_on(gpu, gpu.compute_stream)
        assert not ok and "frontend does not import" in next(iter(
            backend.CUDNN_FALLBACKS.values()))
        assert backend.cudnn_version() is None
    finally:
        backend.cudnn_unavailable.cache_clear()


# ----------------------------------------------------------------------------------------------
# Defect 3: the cuDNN version through the frontend


def test_cudnn_version_asks_the_frontend(fake_cudnn, monkeypatch):
    assert backend.cudnn_version() == "9.14.0" and backend.cudnn_unavailable() is None
    assert backend.format_cudnn_version(8902) == "8.9.2"

    def missing():
        raise RuntimeError("Unable to find symbol cudnnGetVersion")

    monkeypatch.setattr(fake_cudnn, "backend_version", missing)
    backend.cudnn_unavailable.cache_clear()
    assert backend.cudnn_version() is None
    assert "libcudnn does not load" in backend.cudnn_unavailable()


# ----------------------------------------------------------------------------------------------
# Kernel launches against the C parameters of kernels/*.cu

_C_TYPES = {"float*": np.float32, "double*": np.float64, "long long": np.int64,
            "int": np.int32, "float": np.float32, "double": np.float64}


def _c_params() -> dict[str, list[str]]:
    out = {}
    for source in sorted((ROOT / "kernels").glob("*.cu")):
        text = source.read_text()
        for name, params in re.findall(r'extern "C" __global__ void (\w+)\(([^)]*)\)', text):
            types = []
            for param in params.split(","):
                words = param.replace("__restrict__", "").replace("const", "").split()
                ctype = " ".join(words[:-1]) + ("*" if "*" in param else "")
                types.append(ctype.replace(" *", "*").replace("**", "*"))
            out[name] = types
    return out


def _check_args(symbol: str, args: tuple, allow_null: set[int] = frozenset()) -> None:
    params = _c_params()[symbol]
    assert len(args) == len(params), f"{symbol}: {len(args)} arguments for {len(params)}"
    for i, (arg, ctype) in enumerate(zip(args, params)):
        want = _C_TYPES[ctype]
        if ctype.endswith("*"):
            if i in allow_null and isinstance(arg, np.uint64):
                continue
            assert isinstance(arg, np.ndarray) and arg.dtype == want, (symbol, i, ctype, arg)
        else:
            assert type(arg) is want, f"{symbol} argument {i}: {type(arg).__name__} for {ctype}"


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_kernel_launch_arguments_match_the_c_parameters(dtype, monkeypatch):
    launches = []

    def function(filename, symbol):
        return lambda grid, block, args, **kw: launches.append((symbol, args))

    monkeypatch.setattr(backend, "_function", function)
    monkeypatch.setattr(backend, "_cupy", lambda: np)
    x = np.ones((2, 3, 6, 6), dtype)
    out = np.empty_like(x)
    backend.bias_act(x, np.ones(3, dtype), out, "relu")
    backend.bias_act(x, None, out, "clip", -1.0, 1.0)
    backend.lrn(x, out, 3)
    backend.pool2d(x, np.empty((2, 3, 3, 3), dtype), (2, 2), (2, 2), (0, 0, 0, 0), (1, 1), "max")
    backend.softmax(x, out, log=True)
    suffix = backend._suffix(np.dtype(dtype))
    assert [s for s, _ in launches] == [f"{k}_{suffix}" for k in
                                        ("bias_act", "bias_act", "lrn", "pool2d", "softmax")]
    for i, (symbol, args) in enumerate(launches):
        _check_args(symbol, args, allow_null={1} if i == 1 else set())


# ----------------------------------------------------------------------------------------------
# Defect 2: what the gpu extra, the dev extra and gpu_check.sh install


def _extras() -> dict[str, list[str]]:
    try:
        import tomllib
    except ImportError:
        tomllib = pytest.importorskip("tomli")
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"]


def test_gpu_extra_brings_every_cuda_library_a_driver_only_machine_lacks():
    names = {re.match(r"[\w.\-]+(\[[\w,]+\])?", r).group(0) for r in _extras()["gpu"]}
    # [ctk]: CUDA headers, cuBLAS, cuRAND, NVRTC; the frontend does not bring libcudnn
    assert {"cupy-cuda13x[ctk]", "cuda-python", "nvidia-cudnn-frontend",
            "nvidia-cudnn-cu13"} <= names, names


def test_dev_extra_has_the_driverless_cuda_packages():
    names = {re.match(r"[\w.\-]+", r).group(0) for r in _extras()["dev"]}
    assert {"cupy-cuda13x", "cuda-python"} <= names


SCRIPT = ROOT / "scripts" / "gpu_check.sh"


def test_gpu_check_installs_the_gpu_extra_and_asks_the_frontend_for_cudnn():
    text = SCRIPT.read_text()
    assert ".[gpu,dev]" in text
    assert "cupy.cuda.cudnn" not in text and "cudnn_version()" in text
    proc = subprocess.run(["bash", "-n", str(SCRIPT)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_gpu_check_without_a_gpu_exits_2_before_installing(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("bash", "dirname", "date", "cat", "mkdir"):
        path = subprocess.run(["bash", "-c", f"command -v {tool}"], capture_output=True,
                              text=True).stdout.strip()
        if path:
            (bin_dir / tool).symlink_to(path)
    proc = subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, timeout=60,
                          env={"PATH": str(bin_dir), "OUT_DIR": str(tmp_path / "out")})
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "no NVIDIA GPU" in proc.stderr and "installing" not in proc.stdout


def test_default_capacity_is_free_memory_less_a_margin():
    gib = 2**30
    # an H100 with 80 GiB, 79 free: 5% of the card (4 GiB) stays free
    assert backend.default_capacity(79 * gib, 80 * gib) == 75 * gib
    # what this process's pool already holds is still ours to use
    assert backend.default_capacity(70 * gib, 80 * gib, held=9 * gib) == 75 * gib
    # a small card keeps at least 256 MiB back; a full one still has a positive capacity
    assert backend.default_capacity(2 * gib, 2 * gib) == 2 * gib - 256 * 2**20
    assert backend.default_capacity(0, 16 * gib) == 1
    assert backend.default_capacity(80 * gib, 80 * gib, held=80 * gib) == 80 * gib
