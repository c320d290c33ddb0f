"""The ops the backward pass emits (``hetero.ops.grads``) against float64 NumPy references:
``conv2d_weight_grad`` (groups, strides, pads, dilations; float16 accumulated in float32) and
``max_pool2d_grad`` (ties shared equally, padding), and their own VJP rules (a gradient of a
gradient) against finite differences."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

import hetero.ops as F
from hetero.autodiff import grad
from hetero.tracing import apply


def _np(t):
    return np.asarray(t.numpy() if hasattr(t, "numpy") else t)


def _weight_grad_ref(x, g, kernel, s, p, d, groups):
    n, c, h, w = x.shape
    _, o, oh, ow = g.shape
    kh, kw = kernel
    xp = np.pad(x, ((0, 0), (0, 0), (p[0], p[2] + kh * d[0]), (p[1], p[3] + kw * d[1])))
    cg, og = c // groups, o // groups
    out = np.zeros((o, cg, kh, kw))
    for oo in range(o):
        grp = oo // og
        for cc in range(cg):
            for i in range(kh):
                for j in range(kw):
                    win = xp[:, grp * cg + cc, i * d[0]:i * d[0] + s[0] * (oh - 1) + 1:s[0],
                             j * d[1]:j * d[1] + s[1] * (ow - 1) + 1:s[1]]
                    out[oo, cc, i, j] = np.sum(win * g[:, oo])
    return out


geometry = dict(groups=st.sampled_from([1, 2, 3]), s=st.integers(1, 2), d=st.integers(1, 2),
                pads=st.tuples(*[st.integers(0, 2)] * 4), hw=st.integers(3, 7),
                kh=st.integers(1, 3), kw=st.integers(1, 3), seed=st.integers(0, 999))


@settings(max_examples=30, deadline=None)
@given(**geometry)
def test_conv2d_weight_grad_matches_numpy(groups, s, d, pads, hw, kh, kw, seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((2, 2 * groups, hw, hw + 1))
    w = rng.standard_normal((2 * groups, 2, kh, kw))
    attrs = {"strides": (s, s), "dilations": (d, d), "pads": pads, "groups": groups}
    try:
        y = F.conv2d(x, w, **attrs)
    except Exception:  # a window larger than the padded input: no such convolution
        return
    g = rng.standard_normal(tuple(y.shape))
    got = apply("conv2d_weight_grad", [x, g], {"kernel_shape": (kh, kw), **attrs})
    want = _weight_grad_ref(x, g, (kh, kw), (s, s), pads, (d, d), groups)
    np.testing.assert_allclose(_np(got), want, rtol=1e-10, atol=1e-10)


def test_conv2d_weight_grad_float16_accumulates_in_float32():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((8, 4, 9, 9)).astype(np.float16)
    g = rng.standard_normal((8, 6, 9, 9)).astype(np.float16)
    got = _np(apply("conv2d_weight_grad", [x, g], {"kernel_shape": (3, 3), "pads": (1, 1, 1, 1)}))
    want = _weight_grad_ref(x.astype(np.float64), g.astype(np.float64), (3, 3), (1, 1),
                            (1, 1, 1, 1), (1, 1), 1)
    assert got.dtype == np.float16
    np.testing.assert_allclose(got, want, rtol=2e-3, atol=2e-2)


def _pool_grad_ref(x, y, g, kernel, s, p, d):
    n, c, h, w = x.shape
    oh, ow = y.shape[2:]
    kh, kw = kernel
    xp = np.pad(x, ((0, 0), (0, 0), (p[0], p[2] + kh * d[0]), (p[1], p[3] + kw * d[1])),
                constant_values=-np.inf)
    dx = np.zeros(xp.shape)
    for a in range(oh):
        for b in range(ow):
            rows = [a * s[0] + i * d[0] for i in range(kh)]
            cols = [b * s[1] + j * d[1] for j in range(kw)]
            win = xp[:, :, rows][:, :, :, cols]
            hit = win == y[:, :, a, b][:, :, None, None]
            share = g[:, :, a, b] / hit.sum((2, 3))
            for i, r in enumerate(rows):
                for j, cc in enumerate(cols):
                    dx[:, :, r, cc] += np.where(hit[:, :, i, j], share, 0.0)
    return dx[:, :, p[0]:p[0] + h, p[1]:p[1] + w]


@settings(max_examples=30, deadline=None)
@given(s=st.integers(1, 3), d=st.integers(1, 2), pads=st.tuples(*[st.integers(0, 1)] * 4),
       hw=st.integers(4, 8), kh=st.integers(1, 3), kw=st.integers(1, 3), ties=st.booleans(),
       seed=st.integers(0, 999))
def test_max_pool2d_grad_matches_numpy(s, d, pads, hw, kh, kw, ties, seed):
    if max(pads[0], pads[2]) >= kh or max(pads[1], pads[3]) >= kw:
        return  # ONNX: a pad must be smaller than the kernel
    if d * (kh - 1) + 1 > hw + pads[0] + pads[2] or d * (kw - 1) + 1 > hw + 1 + pads[1] + pads[3]:
        return  # the window does not fit: no such pooling
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((2, 3, hw, hw + 1))
    if ties:
        x = np.round(x)  # many equal maxima
    attrs = {"strides": (s, s), "dilations": (d, d), "pads": pads}
    y = _np(F.max_pool2d(x, (kh, kw), **attrs))
    g = rng.standard_normal(y.shape)
    got = apply("max_pool2d_grad", [x, y, g], {"kernel_shape": (kh, kw), **attrs})
    want = _pool_grad_ref(x, y, g, (kh, kw), (s, s), pads, (d, d))
    np.testing.assert_allclose(_np(got), want, rtol=1e-12, atol=1e-12)


def _fd(f, x, eps=1e-6):
    g = np.zeros_like(x)
    flat = g.reshape(-1)
    for i in range(x.size):
        e = np.zeros_like(x)
        e.reshape(-1)[i] = eps
        flat[i] = (float(_np(f(x + e))) - float(_np(f(x - e)))) / (2 * eps)
    return g


def test_second_derivatives_through_the_gradient_ops():
    rng = np.random.default_rng(4)
    x = rng.standard_normal((2, 2, 5, 5))
    w = rng.standard_normal((3, 2, 3, 3))

    def conv_outer(x):  # d/dx of |dL/dw|^2 runs conv2d_weight_grad's rule
        gw = grad(lambda w_: F.sum(F.mul(F.tanh(F.conv2d(x, w_, pads=(1, 1, 1, 1))),
                                         np.linspace(-1, 1, 75).reshape(1, 3, 5, 5))))(w)
        return F.sum(F.mul(gw, gw))
    np.testing.assert_allclose(_np(grad(conv_outer)(x)), _fd(conv_outer, x), rtol=1e-5,
                               atol=1e-6)

    c = rng.standard_normal((2, 2, 3, 3))

    def pool_outer(c):  # d/dc of a function of max_pool2d's gradient runs max_pool2d_grad's
        gx = grad(lambda x_: F.sum(F.mul(F.max_pool2d(x_, (3, 3), (2, 2), (1, 1, 1, 1)),
                                         c)))(x)
        return F.sum(F.mul(gx, gx))
    np.testing.assert_allclose(_np(grad(pool_outer)(c)), _fd(pool_outer, c), rtol=1e-5,
                               atol=1e-6)
