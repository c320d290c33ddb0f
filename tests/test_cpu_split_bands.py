"""Issue 11's per-node and split changes to the convolution: the memoized window attributes and
the even row bands, against the reference kernels and a float64 NumPy convolution."""

from __future__ import annotations

import numpy as np
import pytest
from threadpoolctl import threadpool_limits

from hetero import threads
from hetero.errors import ShapeError
from hetero.graph import Attrs
from hetero.ops import nn, registry


def _conv64(x, w, b, stride, pad):
    """A float64 direct convolution (NCHW, OIHW), the independent reference."""
    x64 = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    n, c, h, wd = x64.shape
    o, _, kh, kw = w.shape
    oh, ow = (h - kh) // stride + 1, (wd - kw) // stride + 1
    out = np.zeros((n, o, oh, ow))
    for i in range(kh):
        for j in range(kw):
            patch = x64[:, :, i:i + stride * oh:stride, j:j + stride * ow:stride]
            out += np.einsum("nchw,oc->nohw", patch, w[:, :, i, j].astype(np.float64))
    return out + b.reshape(1, o, 1, 1)


def test_window_attrs_memo_gives_the_checked_values():
    attrs = Attrs({"strides": (2, 1), "pads": (1, 0, 2, 1), "dilations": (1, 2)})
    first = nn._window_attrs(attrs, "conv2d", (3, 3))
    assert first == ((2, 1), (1, 0, 2, 1), (1, 2))
    assert nn._window_attrs(Attrs(dict(attrs)), "conv2d", (3, 3)) is first  # equal attrs: memo
    assert nn._window_attrs(dict(attrs), "conv2d", (3, 3)) == first  # a plain dict: no memo


def test_window_attrs_memo_raises_on_every_call():
    bad = Attrs({"strides": (0, 1), "pads": (0, 0, 0, 0)})
    for _ in range(3):
        with pytest.raises(ShapeError, match="strides"):
            nn._window_attrs(bad, "conv2d", (3, 3))
    assert (bad, "conv2d", (3, 3)) not in nn._WINDOW_ATTRS


def test_even_bands_rule():
    big = nn.EVEN_BANDS_MIN_FLOPS
    assert nn._even_bands(3, 28, big) == 4
    assert nn._even_bands(3, 28, big / 2) == 3  # small convs keep three bands
    assert nn._even_bands(3, 3, big) == 3  # not more bands than output rows
    assert [nn._even_bands(b, 56, big) for b in (1, 2, 4)] == [1, 2, 4]


@pytest.mark.parametrize("c, h, o, k, stride, pad", [
    (64, 28, 64, 3, 1, 1),   # 784 pixels: three bands of 256 -> four
    (64, 56, 96, 3, 2, 1),   # 3x3/2 to 28x28
    (256, 28, 128, 1, 1, 0),  # 1x1 at 28x28
])
@pytest.mark.parametrize("intra", [1, 2])
def test_four_band_conv_against_references(c, h, o, k, stride, pad, intra, monkeypatch):
    rng = np.random.default_rng(c + o + k)
    x = rng.standard_normal((1, c, h, h)).astype(np.float32)
    w = (rng.standard_normal((o, c, k, k)) / np.sqrt(c * k * k)).astype(np.float32)
    b = rng.standard_normal(o).astype(np.float32)
    oh = (h + 2 * pad - k) // stride + 1
    flops = 2.0 * o * oh * oh * c * k * k
    assert nn._even_bands(3, oh, flops) == 4  # the case under test takes four bands
    op = registry.lookup("conv2d")
    attrs = op.normalize_attrs({"strides": (stride, stride), "pads": (pad,) * 4,
                                "activation": "relu"})
    ref = np.empty((1, o, oh, oh), np.float32)
    counts = []

    def recording(count, fn, threads=None):
        counts.append(count)
        return threads_parallel_for(count, fn, threads)

    threads_parallel_for = nn.parallel_for
    monkeypatch.setattr(nn, "parallel_for", recording)
    op.kernel(np, [x, w, b], attrs, [ref])  # the reference kernel, one thread
    assert counts == [4]
    got = np.full_like(ref, np.nan)
    with threads.intra_op(intra):
        op.kernel_for("numpy")(np, [x, w, b], attrs, [got])  # the CPU worker's kernel
    np.testing.assert_array_equal(got, ref)
    want = np.maximum(_conv64(x, w, b, stride, pad), 0.0)
    assert np.max(np.abs(ref - want)) <= 1e-5 * np.max(np.abs(want))


@pytest.mark.parametrize("m, k, n, bands", [(196, 1536, 384, 2), (128, 768, 448, 2),
                                            (196, 384, 1536, 4), (64, 256, 256, 2)])
def test_matmul_column_bands_even(m, k, n, bands):
    """384-511 output columns are cut into two bands, not three, with 64-aligned edges; the
    product is each band's one-thread BLAS product, whatever the thread count (whether a band's
    bits equal the whole product's is the BLAS build's business: OpenBLAS's Haswell/Zen sgemm
    rounds column tails differently, its SkylakeX kernel does not)."""
    from hetero.ops import linalg

    rng = np.random.default_rng(m + n)
    a = rng.standard_normal((m, k)).astype(np.float32)
    b = rng.standard_normal((k, n)).astype(np.float32)
    out = np.full((m, n), np.nan, np.float32)
    pieces = linalg._pieces(a, b, out)
    assert pieces is not None and len(pieces) == bands
    assert all(p[1].shape[1] % linalg.GEMM_BAND_ALIGN == 0 for p in pieces[:-1])
    op = registry.lookup("matmul")
    with threads.blas_limit(1), threads.intra_op(2):  # what every executor run does
        op.kernel_for("numpy")(np, [a, b], op.normalize_attrs({}), [out])
    one = np.full_like(out, np.nan)
    with threads.blas_limit(1), threads.intra_op(1):
        op.kernel_for("numpy")(np, [a, b], op.normalize_attrs({}), [one])
    np.testing.assert_array_equal(out, one)
    with threadpool_limits(1, "blas"):
        bands = np.concatenate([np.matmul(pa, pb) for pa, pb, _, _ in pieces], axis=1)
    np.testing.assert_array_equal(out, bands)
    want = a.astype(np.float64) @ b.astype(np.float64)
    assert np.max(np.abs(out - want)) <= 1e-5 * np.max(np.abs(want))


@pytest.mark.parametrize("c, h, k, s, d, p", [
    (24, 14, 5, 2, 1, 2),   # EfficientNet / MobileNet v3: 5x5/2 to 7x7
    (40, 13, 3, 2, 1, 1),   # odd map, 3x3/2
    (32, 7, 5, 1, 1, 2),    # stride 1 at 7x7
    (16, 9, 3, 1, 2, 2),    # dilated
    (8, 11, 3, 3, 1, 0),    # stride 3, no padding
])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("intra", [1, 2])
def test_channels_last_depthwise_gives_the_reference_bits(c, h, k, s, d, p, dtype, intra,
                                                          monkeypatch):
    pytest.importorskip("numba")
    from hetero.backends import cpu
    from hetero.backends.cpu import _loops, kernels

    assert cpu.install(), cpu.status()
    calls = []
    original = _loops.depthwise_nhwc

    def counting(*args):
        calls.append(args[-2:])
        return original(*args)

    monkeypatch.setattr(_loops, "depthwise_nhwc", counting)
    rng = np.random.default_rng(c * h + k)
    x = rng.standard_normal((2, c, h, h)).astype(dtype)
    x.reshape(-1)[rng.choice(x.size, 6, replace=False)] = [np.nan, np.inf, -np.inf, -0.0, 0.0,
                                                            1e30]
    w = rng.standard_normal((c, 1, k, k)).astype(dtype)
    w.reshape(-1)[0] = -0.0
    b = rng.standard_normal(c).astype(dtype)
    oh = (h + 2 * p - d * (k - 1) - 1) // s + 1
    assert oh < kernels.DEPTHWISE_NHWC_MAX_WIDTH
    zres = rng.standard_normal((2, c, oh, oh)).astype(dtype)
    for name, ins, act in (("conv2d", [x, w, b], "hard_swish"), ("conv2d", [x, w], "relu"),
                           ("conv2d_add", [x, w, b, zres], "relu")):
        op = registry.lookup(name)
        attrs = op.normalize_attrs({"strides": (s, s), "pads": (p,) * 4, "dilations": (d, d),
                                    "groups": c, "activation": act})
        ref = np.empty((2, c, oh, oh), dtype)
        with np.errstate(all="ignore"):  # inf - inf, 0 * inf: NaN, as intended
            op.kernel(np, ins, attrs, [ref])
        got = np.full_like(ref, 7.0)
        calls.clear()
        with threads.intra_op(intra):
            op.kernel_for("numpy")(np, ins, attrs, [got])
        assert calls, "the channels-last loop did not run"
        assert sorted(calls)[0][0] == 0 and max(r1 for _, r1 in calls) == oh
        np.testing.assert_array_equal(got, ref)
        numbers = ~np.isnan(ref)
        assert (np.signbit(got) == np.signbit(ref))[numbers].all()
    clean = np.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0)
    clean.reshape(-1)[np.abs(clean.reshape(-1)) > 1e6] = 0.0
    op = registry.lookup("conv2d")
    attrs = op.normalize_attrs({"strides": (s, s), "pads": (p,) * 4, "dilations": (d, d),
                                "groups": c})
    got = np.empty((2, c, oh, oh), dtype)
    op.kernel_for("numpy")(np, [clean, w, b], attrs, [got])
    x64 = np.pad(clean.astype(np.float64), ((0, 0), (0, 0), (p, p), (p, p)))
    want = np.zeros((2, c, oh, oh)) + b.reshape(1, c, 1, 1)
    for i in range(k):
        for j in range(k):
            want += (x64[:, :, i * d:i * d + s * (oh - 1) + 1:s, j * d:j * d + s * (oh - 1) + 1:s]
                     * w[:, 0, i, j].astype(np.float64).reshape(1, c, 1, 1))
    tol = 1e-5 if dtype == np.float32 else 1e-12
    assert np.max(np.abs(got - want)) <= tol * np.max(np.abs(want))
