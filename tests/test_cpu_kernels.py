"""The compiled CPU kernels (hetero.backends.cpu) against the reference kernels: the same bits.

Every compiled kernel promises the values of the NumPy reference kernel it replaces, computed in
the same floating-point order, so the reference executor, a simulated GPU (reference kernels) and
a CPU worker (compiled kernels) agree exactly. These tests hold it to that on random shapes,
strides, paddings, dilations, channel multipliers and activations, special values included.
"""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hetero import threads
from hetero.backends import cpu
from hetero.ops import registry

numba = pytest.importorskip("numba", reason="the compiled CPU kernels need numba (hetero[cpu])")

from hetero.backends.cpu import kernels  # noqa: E402

ACTIVATIONS = [("none", ()), ("relu", ()), ("leaky_relu", (0.1,)), ("clip", (0.0, 6.0)),
               ("sigmoid", ()), ("tanh", ()), ("silu", ()), ("hard_swish", ()),
               ("hard_sigmoid", (0.2, 0.5)), ("hard_sigmoid", (1 / 6, 0.5))]


@pytest.fixture(autouse=True, scope="module")
def _installed():
    assert cpu.install(), cpu.status()


def _both(name, ins, attrs, out_shape, dtype, intra=1):
    op = registry.lookup(name)
    attrs = op.normalize_attrs(attrs)
    ref = np.empty(out_shape, dtype)
    got = np.full(out_shape, np.nan, dtype)
    op.kernel(np, ins, attrs, [ref])
    with threads.intra_op(intra):
        op.kernel_for("numpy")(np, ins, attrs, [got])
    return ref, got


def _same_bits(got, ref):
    """Equal values, NaN where NaN, and the same sign on every zero (a NaN's sign bit is not a
    value: NumPy's and LLVM's loops may set it differently)."""
    np.testing.assert_array_equal(got, ref)
    numbers = ~np.isnan(ref)
    assert (np.signbit(got) == np.signbit(ref))[numbers].all()


#: float32 silu is the one compiled activation that is not the reference's bits: its sigmoid
#: comes from a rational tanh (hetero.backends.cpu._loops.TANH_P), within this much of NumPy's
#: tanh, relative to max(1, |value|)
SILU_TOLERANCE = 4e-6


def _as_reference(got, ref, act, dtype):
    """The reference's bits, or for float32 silu the same specials and values within
    ``SILU_TOLERANCE``."""
    if act[0] != "silu" or dtype != np.float32:
        _same_bits(got, ref)
        return
    np.testing.assert_array_equal(np.isnan(got), np.isnan(ref))
    finite = np.isfinite(ref)
    np.testing.assert_array_equal(got[~finite & ~np.isnan(ref)], ref[~finite & ~np.isnan(ref)])
    err = np.abs(got[finite].astype(np.float64) - ref[finite])
    assert (err <= SILU_TOLERANCE * np.maximum(1.0, np.abs(ref[finite]))).all(), err.max()


@settings(max_examples=60, deadline=None)
@given(c=st.integers(1, 12), mult=st.sampled_from([1, 1, 2]), h=st.integers(1, 40),
       w=st.integers(1, 60), k=st.sampled_from([(1, 1), (3, 3), (5, 5), (3, 1), (2, 3)]),
       s=st.sampled_from([(1, 1), (2, 2), (1, 2)]), d=st.sampled_from([(1, 1), (2, 2)]),
       p=st.tuples(*[st.integers(0, 2)] * 4), act=st.sampled_from(ACTIVATIONS),
       bias=st.booleans(), residual=st.booleans(), n=st.integers(1, 2),
       dtype=st.sampled_from([np.float32, np.float64]), intra=st.sampled_from([1, 2]),
       seed=st.integers(0, 2**31))
def test_depthwise_gives_the_reference_bits(c, mult, h, w, k, s, d, p, act, bias, residual, n,
                                             dtype, intra, seed):
    kh, kw = k
    oh = (h + p[0] + p[2] - d[0] * (kh - 1) - 1) // s[0] + 1
    ow = (w + p[1] + p[3] - d[1] * (kw - 1) - 1) // s[1] + 1
    if oh < 1 or ow < 1:
        return
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, c, h, w)).astype(dtype)
    wt = rng.standard_normal((c * mult, 1, kh, kw)).astype(dtype)
    ins = [x, wt]
    if bias or residual:
        ins.append(rng.standard_normal(c * mult).astype(dtype))
    name = "conv2d"
    if residual:
        name = "conv2d_add"
        ins.append(rng.standard_normal((n, c * mult, oh, ow)).astype(dtype))
    attrs = {"strides": s, "pads": p, "dilations": d, "groups": c, "activation": act[0],
             "activation_params": act[1]}
    ref, got = _both(name, ins, attrs, (n, c * mult, oh, ow), dtype, intra)
    _as_reference(got, ref, act, dtype)


def test_special_values_and_signed_zeros_as_the_reference():
    """Padding reads zero: 0 * inf is NaN and -0.0 sums stay -0.0 exactly as in the padded
    NumPy buffer."""
    x = np.zeros((1, 3, 6, 30), np.float32)
    x[0, 0, 2, 3] = np.inf
    x[0, 1] = -0.0
    x[0, 2, 1, 1] = np.nan
    w = np.array([-1.0, 2.0, np.inf]).astype(np.float32).reshape(3, 1, 1, 1) * np.ones(
        (3, 1, 3, 3), np.float32)
    w[1] = -0.0
    with np.errstate(invalid="ignore"):  # 0 * inf, as intended
        ref, got = _both("conv2d", [x, w], {"pads": (1, 1, 1, 1), "groups": 3},
                         (1, 3, 6, 30), np.float32)
    assert np.isnan(ref).any() and (np.signbit(ref) & (ref == 0)).any()
    _same_bits(got, ref)


def test_uncovered_cases_are_the_reference_kernel():
    """float16, narrow maps and ungrouped convolutions run the reference code itself."""
    op = registry.lookup("conv2d")
    rng = np.random.default_rng(1)
    for x, w, g in [(rng.standard_normal((1, 4, 8, 8)).astype(np.float16),
                     rng.standard_normal((4, 1, 3, 3)).astype(np.float16), 4),
                    (rng.standard_normal((1, 4, 8, 8)).astype(np.float32),
                     rng.standard_normal((4, 1, 3, 3)).astype(np.float32), 4),
                    (rng.standard_normal((1, 4, 30, 30)).astype(np.float32),
                     rng.standard_normal((6, 4, 3, 3)).astype(np.float32), 1)]:
        attrs = op.normalize_attrs({"pads": (1, 1, 1, 1), "groups": g})
        shape = (1, w.shape[0], x.shape[2], x.shape[3])
        ref, got = np.empty(shape, x.dtype), np.empty(shape, x.dtype)
        op.kernel(np, [x, w], attrs, [ref])
        op.kernel_for("numpy")(np, [x, w], attrs, [got])
        np.testing.assert_array_equal(got, ref)


def test_installed_ops_and_status():
    assert set(cpu.installed()) == set(kernels.KERNELS)
    assert "numba" in cpu.status()
    for name in kernels.KERNELS:
        op = registry.lookup(name)
        assert op.kernel_for("numpy") is not op.kernel  # CPU workers run the compiled one
        assert op.kernel_for("sim") is op.kernel  # a simulated GPU runs the reference


def test_off_switch_and_second_process_loads_the_cache(tmp_path):
    """HETERO_CPU_KERNELS=numpy keeps the reference kernels; a second process with the same
    cache folder loads the compiled loops instead of compiling them again."""
    code = ("import time, numpy as np\n"
            "from hetero.backends import cpu\n"
            "from hetero.ops import registry\n"
            "on = cpu.install()\n"
            "print(cpu.status())\n"
            "if on:\n"
            "    op = registry.lookup('conv2d')\n"
            "    x = np.ones((1, 2, 30, 30), np.float32); w = np.ones((2, 1, 3, 3), np.float32)\n"
            "    out = np.empty((1, 2, 28, 28), np.float32)\n"
            "    t = time.perf_counter()\n"
            "    op.kernel_for('numpy')(np, [x, w], op.normalize_attrs({'groups': 2}), [out])\n"
            "    print('first', time.perf_counter() - t)\n")
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path))
    off = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=dict(env, HETERO_CPU_KERNELS="numpy"), timeout=120)
    assert off.returncode == 0, off.stderr
    assert "off: HETERO_CPU_KERNELS=numpy" in off.stdout
    runs = []
    for _ in range(2):
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                              env=env, timeout=300)
        assert proc.returncode == 0, proc.stderr
        runs.append(float(proc.stdout.split("first")[1]))
    assert any(tmp_path.rglob("*.nbi")), "numba wrote no cache index"
    assert runs[1] < runs[0]  # loaded, not compiled again


@settings(max_examples=60, deadline=None)
@given(name=st.sampled_from(["max_pool2d", "avg_pool2d"]), c=st.integers(1, 10),
       h=st.integers(1, 30), w=st.integers(1, 30), k=st.sampled_from([(1, 1), (2, 2), (3, 3),
                                                                      (3, 2), (5, 5)]),
       s=st.sampled_from([(1, 1), (2, 2), (1, 2), (3, 3)]), d=st.sampled_from([(1, 1), (2, 1)]),
       p=st.tuples(*[st.integers(0, 1)] * 4), ceil=st.integers(0, 1), include=st.integers(0, 1),
       n=st.integers(1, 2), dtype=st.sampled_from([np.float32, np.float64]),
       intra=st.sampled_from([1, 2]), special=st.booleans(), seed=st.integers(0, 2**31))
def test_pools_give_the_reference_bits(name, c, h, w, k, s, d, p, ceil, include, n, dtype, intra,
                                       special, seed):
    op = registry.lookup(name)
    attrs = {"kernel_shape": k, "strides": s, "pads": p, "dilations": d, "ceil_mode": ceil}
    if name == "avg_pool2d":
        if d != (1, 1):
            return
        attrs.pop("dilations")
        attrs["count_include_pad"] = include
    if p[0] >= k[0] or p[1] >= k[1] or p[2] >= k[0] or p[3] >= k[1]:
        return  # ONNX: pads smaller than the window
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, c, h, w)).astype(dtype)
    if special:  # signed zeros, NaN and infinities where windows meet
        x.reshape(-1)[rng.integers(0, x.size, 8)] = rng.choice(
            np.array([0.0, -0.0, np.nan, np.inf, -np.inf], dtype), 8)
    from hetero.graph import TensorSpec

    try:
        (spec,) = op.infer_specs((TensorSpec(x.shape, x.dtype),), op.normalize_attrs(attrs))
    except Exception:
        return  # a window larger than the padded input
    with np.errstate(invalid="ignore"):
        ref, got = _both(name, [x], attrs, spec.shape, dtype, intra)
    _same_bits(got, ref)


@settings(max_examples=40, deadline=None)
@given(shape=st.sampled_from([(1, 3, 5, 7), (2, 8, 4, 4), (1, 16, 1, 1), (3, 4), (1, 5, 9)]),
       act=st.sampled_from(ACTIVATIONS), dtype=st.sampled_from([np.float32, np.float64]),
       special=st.booleans(), seed=st.integers(0, 2**31))
def test_batch_norm_gives_the_reference_bits(shape, act, dtype, special, seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape).astype(dtype)
    if special:
        x.reshape(-1)[rng.integers(0, x.size, 3)] = np.array([np.nan, -0.0, np.inf], dtype)
    c = shape[1]
    ins = [x, rng.standard_normal(c).astype(dtype), rng.standard_normal(c).astype(dtype),
           rng.standard_normal(c).astype(dtype), rng.random(c).astype(dtype) + 0.1]
    with np.errstate(invalid="ignore"):
        ref, got = _both("batch_norm", ins, {"activation": act[0], "activation_params": act[1]},
                         shape, dtype)
    _as_reference(got, ref, act, dtype)


SPECIALS = [0.0, -0.0, np.nan, np.inf, -np.inf, -3.0, 3.0]


def _specials(x, rng, count):
    """``x`` with ``count`` entries replaced by signed zeros, NaN, infinities and the hard
    gates' corners (-3 and 3: hard_sigmoid(1/6, 1/2) exactly 0 and 1)."""
    x.reshape(-1)[rng.integers(0, x.size, count)] = rng.choice(np.array(SPECIALS, x.dtype), count)
    return x


@settings(max_examples=40, deadline=None)
@given(c=st.integers(1, 6), o=st.integers(1, 9), h=st.integers(1, 20), w=st.integers(1, 20),
       k=st.sampled_from([(1, 1), (3, 3)]), act=st.sampled_from(ACTIVATIONS),
       residual=st.booleans(), dtype=st.sampled_from([np.float32, np.float64]),
       intra=st.sampled_from([1, 2]), seed=st.integers(0, 2**31))
def test_conv_epilogue_gives_the_reference_bits(c, o, h, w, k, act, residual, dtype, intra,
                                                 seed):
    """Ungrouped conv2d / conv2d_add: the compiled epilogue (bias, residual, activation; sigmoid,
    tanh and float64 silu through NumPy's passes on each band) against the reference kernel."""
    rng = np.random.default_rng(seed)
    pad = k[0] // 2
    ins = [(rng.standard_normal((1, c, h, w)) * 3).astype(dtype),
           rng.standard_normal((o, c, *k)).astype(dtype), rng.standard_normal(o).astype(dtype)]
    name = "conv2d"
    if residual:
        name = "conv2d_add"
        ins.append(rng.standard_normal((1, o, h, w)).astype(dtype))
    attrs = {"pads": (pad,) * 4, "activation": act[0], "activation_params": act[1]}
    ref, got = _both(name, ins, attrs, (1, o, h, w), dtype, intra)
    _as_reference(got, ref, act, dtype)


@settings(max_examples=60, deadline=None)
@given(name=st.sampled_from(["hard_swish", "hard_sigmoid"]),
       shape=st.sampled_from([(7,), (1, 3, 5, 7), (2, 16, 9, 9), (1, 40, 56, 56)]),
       alpha=st.sampled_from([0.2, 1 / 6, -0.5]), beta=st.sampled_from([0.5, 0.0, -0.0, 0.7]),
       dtype=st.sampled_from([np.float32, np.float64]), special=st.booleans(),
       seed=st.integers(0, 2**31))
def test_hard_gates_give_the_reference_bits(name, shape, alpha, beta, dtype, special, seed):
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal(shape) * 4).astype(dtype)
    if special:
        _specials(x, rng, 6)
    attrs = {"alpha": alpha, "beta": beta} if name == "hard_sigmoid" else {}
    with np.errstate(invalid="ignore"):
        ref, got = _both(name, [x], attrs, shape, dtype)
    _same_bits(got, ref)


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 2), c=st.integers(1, 40), h=st.integers(1, 30), w=st.integers(1, 30),
       gate=st.sampled_from(["n", "1", "chw"]), swap=st.booleans(),
       dtype=st.sampled_from([np.float32, np.float64]), special=st.booleans(),
       seed=st.integers(0, 2**31))
def test_channel_gate_mul_gives_the_reference_bits(n, c, h, w, gate, swap, dtype, special, seed):
    """``mul`` of a map by a squeeze-excite gate ((N, C, 1, 1), (1, C, 1, 1) or (C, 1, 1)),
    either operand first; other shapes (a full-size second operand) run NumPy's."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, c, h, w)).astype(dtype)
    g_shape = {"n": (n, c, 1, 1), "1": (1, c, 1, 1), "chw": (c, 1, 1)}[gate]
    g = rng.standard_normal(g_shape).astype(dtype)
    if special:
        _specials(x, rng, 5)
        _specials(g, rng, 1)
    ins = [g, x] if swap else [x, g]
    with np.errstate(invalid="ignore"):
        ref, got = _both("mul", ins, {}, x.shape, dtype)
        _same_bits(got, ref)
        ref, got = _both("mul", [x, x[::-1].copy()], {}, x.shape, dtype)
    _same_bits(got, ref)


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 2), c=st.integers(1, 30), hw=st.sampled_from(
           [(1, 1), (1, 7), (3, 3), (7, 7), (9, 13), (14, 14), (16, 25), (20, 20), (28, 28)]),
       scale=st.sampled_from([1.0, 1e4]), dtype=st.sampled_from([np.float32, np.float64]),
       special=st.booleans(), seed=st.integers(0, 2**31))
def test_global_avg_pool_gives_the_reference_bits(n, c, hw, scale, dtype, special, seed):
    """NumPy's pairwise sum (8 running sums up to 128 terms, halves above) and its float64
    division by the count, bit for bit, on the maps the compiled loop takes and the larger ones
    it hands back."""
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((n, c, *hw)) * scale + 1).astype(dtype)
    if special:
        _specials(x, rng, 3)
    with np.errstate(invalid="ignore"):
        ref, got = _both("global_avg_pool", [x], {}, (n, c, 1, 1), dtype)
    _same_bits(got, ref)


def test_all_negative_zero_mean_and_sum_signs_as_the_reference():
    x = np.full((1, 3, 4, 4), -0.0, np.float32)
    ref, got = _both("global_avg_pool", [x], {}, (1, 3, 1, 1), np.float32)
    _same_bits(got, ref)


def test_compiled_silu_against_the_reference_over_the_float32_range():
    """Every region of the rational tanh (small, around the clamp, saturated), special values
    as the reference has them (silu(-inf) is NaN in both: -inf * 0)."""
    x = np.concatenate([np.linspace(-40, 40, 400_001), np.geomspace(1e-30, 1e38, 2000),
                        -np.geomspace(1e-30, 1e38, 2000),
                        [0.0, -0.0, np.inf, -np.inf, np.nan]]).astype(np.float32)
    x = x.reshape(1, 1, 1, -1)
    w = np.ones((1, 1, 1, 1), np.float32)
    with np.errstate(invalid="ignore", over="ignore"):
        ref, got = _both("conv2d", [x, w], {"activation": "silu"}, x.shape, np.float32)
    _as_reference(got, ref, ("silu", ()), np.float32)
    assert np.isnan(ref[0, 0, 0, -2]) and np.isnan(got[0, 0, 0, -2])
    assert (got != ref).any()  # the compiled loop ran, not the reference's passes


@settings(max_examples=60, deadline=None)
@given(name=st.sampled_from(["erf", "gelu"]),
       shape=st.sampled_from([(7,), (1, 3, 5, 7), (2, 16, 9, 9), (1, 40, 56, 56), (70001,)]),
       scale=st.sampled_from([0.5, 3.0, 30.0]), dtype=st.sampled_from([np.float32, np.float64]),
       special=st.booleans(), intra=st.sampled_from([1, 2, 3]), seed=st.integers(0, 2**31))
def test_float32_erf_and_gelu_give_the_reference_bits(name, shape, scale, dtype, special, intra,
                                                      seed):
    """The compiled polynomial pass (and float64, which the reference keeps) over any cut."""
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal(shape) * scale).astype(dtype)
    if special:
        _specials(x, rng, 6)
    attrs = {"approximate": "none"} if name == "gelu" else {}
    with np.errstate(invalid="ignore", over="ignore"):
        ref, got = _both(name, [x], attrs, shape, dtype, intra)
    _same_bits(got, ref)


def test_tanh_gelu_is_the_reference_kernel():
    x = np.linspace(-5, 5, 1001, dtype=np.float32)
    ref, got = _both("gelu", [x], {"approximate": "tanh"}, x.shape, np.float32, 2)
    _same_bits(got, ref)


@settings(max_examples=60, deadline=None)
@given(shape=st.sampled_from([(1, 7), (3, 1), (2, 5, 8), (9, 127), (4, 128), (3, 129),
                              (2, 3, 768), (70, 1000), (2, 3000)]),
       bias=st.booleans(), scale=st.sampled_from([1.0, 1e3]),
       dtype=st.sampled_from([np.float32, np.float64]), special=st.booleans(),
       intra=st.sampled_from([1, 2, 3]), seed=st.integers(0, 2**31))
def test_layer_norm_gives_the_reference_bits(shape, bias, scale, dtype, special, intra, seed):
    """Every output (y, mean, 1/std) over the last axis: NumPy's pairwise sums, its float64
    division by the count, over any cut; float64 and other axes are the reference's."""
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal(shape) * scale + 1).astype(dtype)
    if special:
        _specials(x, rng, 2)
    params = [rng.standard_normal(shape[-1]).astype(dtype) for _ in range(1 + bias)]
    op = registry.lookup("layer_norm")
    for axis in (-1, 0):
        attrs = op.normalize_attrs({"axis": axis})
        norm = shape[axis % len(shape):]
        if axis == 0:
            params = [rng.standard_normal(norm).astype(dtype) for _ in range(1 + bias)]
        stats = shape[:axis % len(shape)] + (1,) * len(norm)
        shapes = [shape, stats, stats]
        want = [np.empty(s, dtype if i == 0 else np.float32) for i, s in enumerate(shapes)]
        got = [np.full(s, np.nan, w.dtype) for s, w in zip(shapes, want)]
        with np.errstate(invalid="ignore", over="ignore"):
            op.kernel(np, [x, *params], attrs, want)
            with threads.intra_op(intra):
                op.kernel_for("numpy")(np, [x, *params], attrs, got)
        for g, w in zip(got, want):
            _same_bits(g, w)


@settings(max_examples=40, deadline=None)
@given(op=st.sampled_from(kernels.SPLIT_ELEMENTWISE),
       shapes=st.sampled_from([((1, 9, 5), (1, 9, 5)), ((1, 9, 5), (5,)), ((1, 1, 7, 3), (7, 1)),
                               ((4, 6), (1, 6)), ((1, 6, 4, 4), (1, 6, 1, 1)), ((3,), ()),
                               ((1, 1), (1, 1)), ((2, 8), (2, 1))]),
       dtype=st.sampled_from([np.float32, np.float64]), intra=st.sampled_from([1, 2, 3]),
       seed=st.integers(0, 2**31))
def test_split_elementwise_gives_the_reference_bits(op, shapes, dtype, intra, seed):
    """An elementwise op cut over the intra-op threads (any cut, broadcast inputs whole) gives
    the reference kernel's bits."""
    rng = np.random.default_rng(seed)
    entry = registry.lookup(op)
    arity = 1 if op == "sigmoid" else 2
    if op == "where":
        ins = [rng.random(shapes[0]) > 0.5, rng.standard_normal(shapes[1]).astype(dtype),
               rng.standard_normal(shapes[0]).astype(dtype)]
    else:
        ins = [rng.standard_normal(s).astype(dtype) for s in shapes[:arity]]
        if op == "sqrt":
            ins[0] = np.abs(ins[0])
    out_shape = np.broadcast_shapes(*(a.shape for a in ins))
    attrs = entry.normalize_attrs({})
    want = np.empty(out_shape, dtype)
    got = np.full(out_shape, np.nan, dtype)
    with np.errstate(all="ignore"), pytest.MonkeyPatch.context() as mp:
        mp.setattr(kernels, "SPLIT_MIN_ELEMENTS", 4)
        entry.kernel(np, ins, attrs, [want])
        with threads.intra_op(intra):
            entry.kernel_for("numpy")(np, ins, attrs, [got])
    _same_bits(got, want)


@settings(max_examples=30, deadline=None)
@given(op=st.sampled_from(["softmax", "log_softmax"]),
       shape=st.sampled_from([(1, 12, 7, 9), (5, 129), (3, 1), (1, 1, 300), (2, 3, 4)]),
       axis=st.sampled_from([-1, 0, 1]), dtype=st.sampled_from([np.float32, np.float64]),
       intra=st.sampled_from([1, 2, 3]), special=st.booleans(), seed=st.integers(0, 2**31))
def test_split_softmax_gives_the_reference_bits(op, shape, axis, dtype, intra, special, seed):
    """softmax / log_softmax with their rows cut over the intra-op threads (last axis; other
    axes take the reference) give the reference kernel's bits."""
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal(shape) * 10).astype(dtype)
    if special:
        _specials(x, rng, 2)
    entry = registry.lookup(op)
    attrs = entry.normalize_attrs({"axis": axis % len(shape) if axis == -1 else axis})
    want = np.empty(shape, dtype)
    got = np.full(shape, np.nan, dtype)
    with np.errstate(all="ignore"), pytest.MonkeyPatch.context() as mp:
        mp.setattr(kernels, "SPLIT_MIN_ELEMENTS", 4)
        entry.kernel(np, [x], attrs, [want])
        with threads.intra_op(intra):
            entry.kernel_for("numpy")(np, [x], attrs, [got])
    _same_bits(got, want)
