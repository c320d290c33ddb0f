"""hetero.nn BatchNorm and Dropout: training/eval modes against NumPy (and PyTorch where
installed), running statistics, gradients against finite differences, masks fresh per step of
a traced fit, errors naming the layer."""

from __future__ import annotations

import numpy as np
import pytest

import hetero.nn as nn
import hetero.optim as optim
from hetero.autodiff import grad
from hetero.errors import HeteroError, ShapeError
from hetero.function import function
from hetero.tracing import Tensor


def _np(y):
    return np.asarray(y.numpy() if isinstance(y, Tensor) else y)


def _ref_bn(x, scale, bias, eps=1e-5):
    x = x.astype(np.float64)
    axes = (0,) + tuple(range(2, x.ndim))
    chan = (1, x.shape[1]) + (1,) * (x.ndim - 2)
    mean, var = x.mean(axes), x.var(axes)
    y = (x - mean.reshape(chan)) / np.sqrt(var.reshape(chan) + eps)
    return y * scale.reshape(chan) + bias.reshape(chan), mean, var


@pytest.mark.parametrize("shape", [(8, 3, 5, 4), (16, 3)])
def test_batchnorm_training_forward_matches_numpy(shape):
    rng = np.random.default_rng(0)
    x = (rng.standard_normal(shape) * 2 + 1).astype(np.float32)
    bn = nn.BatchNorm(3)
    bn.params["scale"] = rng.standard_normal(3).astype(np.float32)
    bn.params["bias"] = rng.standard_normal(3).astype(np.float32)
    ref, _, _ = _ref_bn(x, bn.params["scale"], bn.params["bias"])
    np.testing.assert_allclose(_np(bn(x)), ref, rtol=1e-4, atol=1e-5)


def test_batchnorm_matches_torch():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(1)
    tb = torch.nn.BatchNorm2d(4, momentum=0.1, eps=1e-5)
    with torch.no_grad():
        tb.weight.copy_(torch.tensor(rng.standard_normal(4)))
        tb.bias.copy_(torch.tensor(rng.standard_normal(4)))
    bn = nn.BatchNorm(4)
    bn.params = {"scale": tb.weight.detach().numpy().astype(np.float32),
                 "bias": tb.bias.detach().numpy().astype(np.float32)}
    for _ in range(3):
        x = (rng.standard_normal((6, 4, 3, 3)) * 3 - 1).astype(np.float32)
        ours = _np(bn(x))
        theirs = tb(torch.tensor(x)).detach().numpy()
        np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(bn.state["running_mean"], tb.running_mean.numpy(), rtol=1e-5,
                               atol=1e-6)
    np.testing.assert_allclose(bn.state["running_var"], tb.running_var.numpy(), rtol=1e-5,
                               atol=1e-6)
    bn.training = False
    tb.eval()
    x = rng.standard_normal((2, 4, 3, 3)).astype(np.float32)
    np.testing.assert_allclose(_np(bn(x)), tb(torch.tensor(x)).detach().numpy(), rtol=1e-4,
                               atol=1e-4)


def test_batchnorm_running_stats_follow_pytorch_rule_and_eval_uses_them():
    rng = np.random.default_rng(2)
    bn = nn.BatchNorm(2, momentum=0.3)
    rm, rv = np.zeros(2), np.ones(2)
    for _ in range(4):
        x = (rng.standard_normal((5, 2, 2, 3)) * 1.5 + 0.7).astype(np.float32)
        bn(x)
        n = 5 * 2 * 3
        x64 = x.astype(np.float64)
        rm = 0.7 * rm + 0.3 * x64.mean((0, 2, 3))
        rv = 0.7 * rv + 0.3 * x64.var((0, 2, 3)) * n / (n - 1)
    np.testing.assert_allclose(bn.state["running_mean"], rm, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(bn.state["running_var"], rv, rtol=1e-5, atol=1e-6)
    assert set(bn.params) == {"scale", "bias"}  # the running stats are state, not params
    bn.training = False
    x = rng.standard_normal((3, 2, 2, 3)).astype(np.float32)
    before = {k: v.copy() for k, v in bn.state.items()}
    want = (x - rm.reshape(1, 2, 1, 1)) / np.sqrt(rv.reshape(1, 2, 1, 1) + 1e-5)
    np.testing.assert_allclose(_np(bn(x)), want, rtol=1e-4, atol=1e-5)
    for k in before:  # eval mode leaves the statistics alone
        np.testing.assert_array_equal(bn.state[k], before[k])


def test_batchnorm_gradients_match_finite_differences():
    rng = np.random.default_rng(3)
    bn = nn.BatchNorm(3)
    x = rng.standard_normal((4, 3, 2, 2))
    p = {"scale": rng.standard_normal(3), "bias": rng.standard_normal(3)}
    w = rng.standard_normal((4, 3, 2, 2))  # a loss that does not just sum the normalised x

    def loss(args):
        xx, scale, bias = args
        return nn.layers.F.sum(nn.layers.F.mul(bn.forward({"scale": scale, "bias": bias}, xx), w))

    bn._collect = []  # keep the running statistics out of it
    got = grad(loss)([x, p["scale"], p["bias"]])

    def f(args):
        return float((_ref_bn(args[0], args[1], args[2])[0] * w).sum())

    h = 1e-6
    for i, a in enumerate([x, p["scale"], p["bias"]]):
        num = np.zeros_like(a)
        for j in np.ndindex(a.shape):
            args = [x.copy(), p["scale"].copy(), p["bias"].copy()]
            args[i][j] += h
            up = f(args)
            args[i][j] -= 2 * h
            num[j] = (up - f(args)) / (2 * h)
        np.testing.assert_allclose(_np(got[i]), num, rtol=1e-5, atol=1e-6)


def test_batchnorm_bad_shape_names_the_layer():
    bn = nn.BatchNorm(3)
    with pytest.raises(ShapeError, match="BatchNorm layer made at .*3 channels"):
        bn(np.zeros((2, 4, 3, 3), np.float32))
    with pytest.raises(ShapeError, match="BatchNorm layer made at"):
        bn(np.zeros((2, 3, 3), np.float32))
    m = nn.Sequential(nn.Flatten(), nn.BatchNorm(5))
    with pytest.raises(ShapeError, match="BatchNorm layer made at"):
        m.predict(np.zeros((2, 1, 2, 2), np.float32))


def test_dropout_eval_is_identity_and_training_scales_kept():
    x = np.ones((200, 50), np.float32)
    d = nn.Dropout(0.3, seed=0)
    d.training = False
    np.testing.assert_array_equal(_np(d(x)), x)
    d.training = True
    y = _np(d(x))
    kept = y != 0
    assert abs(kept.mean() - 0.7) < 0.02
    np.testing.assert_allclose(y[kept], 1 / 0.7, rtol=1e-6)
    assert not np.array_equal(kept, _np(d(x)) != 0)  # a fresh mask each call
    with pytest.raises(ShapeError):
        nn.Dropout(1.0)


def test_dropout_refuses_to_bake_a_mask_into_a_traced_function():
    d = nn.Dropout(0.5)

    @function
    def f(x):
        return d(x)

    with pytest.raises(nn.DropoutTraceError, match="Dropout layer made at") as info:
        f(np.ones((4, 4), np.float32))
    assert isinstance(info.value, HeteroError)
    d.training = False
    np.testing.assert_array_equal(_np(f(np.ones((4, 4), np.float32))), np.ones((4, 4)))


def _data(n=96, seed=0):
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((n, 2, 4, 4)) * 3 + 2).astype(np.float32)
    y = (x[:, 0].mean((1, 2)) > x[:, 1].mean((1, 2))).astype(np.int64)
    return x, y


@pytest.mark.parametrize("graph", [True, False])
def test_fit_with_batchnorm_and_dropout_trains_and_evaluates_in_eval_mode(graph):
    x, y = _data()
    bn, drop = nn.BatchNorm(4), nn.Dropout(0.25, seed=1)
    m = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1, seed=1), bn, nn.ReLU(), nn.Flatten(), drop,
                      nn.Dense(64, 2, seed=2))
    m.compile(optim.Adam(0.01), graph=graph)
    assert not any(k.startswith("1.running") for k in m.params)
    h = m.fit(x, y, epochs=4, batch_size=32, verbose=False)
    assert h["loss"][-1] < h["loss"][0]
    assert not np.allclose(bn.state["running_mean"], 0)  # updated from the traced step
    assert bn.training and drop.training  # fit and evaluate put the modes back
    # evaluate runs in eval mode: deterministic, and equal to a NumPy forward on running stats
    p1, p2 = m.predict(x[:8]), m.predict(x[:8])
    np.testing.assert_array_equal(p1, p2)
    for layer in m.layers:
        layer.training = False
    want = _np(m(x[:8]))
    np.testing.assert_allclose(p1, want, rtol=1e-5, atol=1e-6)
    r = m.evaluate(x, y)
    assert r["accuracy"] == pytest.approx(float((m.predict(x).argmax(1) == y).mean()))


def test_fit_running_stats_match_pytorch_rule_and_masks_differ_between_steps():
    x, y = _data(64, seed=4)
    bn, drop = nn.BatchNorm(2, momentum=0.2), nn.Dropout(0.5, seed=3)
    m = nn.Sequential(bn, nn.Flatten(), drop, nn.Dense(32, 2, seed=2))
    m.compile(optim.SGD(0.0))  # no learning: the batches' statistics are the inputs'
    seen = []
    make = drop.make_mask
    drop.make_mask = lambda shape, dtype=np.float32: seen.append(make(shape, dtype)) or seen[-1]
    m.fit(x, y, epochs=1, batch_size=16, seed=5, verbose=False)
    assert len(seen) == 4 and seen[0].shape == (16, 32)
    assert not np.array_equal(seen[0], seen[1])
    order = np.random.default_rng(5).permutation(64)
    rm, rv = np.zeros(2), np.ones(2)
    for b in range(4):
        xb = x[order[b * 16:(b + 1) * 16]].astype(np.float64)
        n = 16 * 16
        rm = 0.8 * rm + 0.2 * xb.mean((0, 2, 3))
        rv = 0.8 * rv + 0.2 * xb.var((0, 2, 3)) * n / (n - 1)
    np.testing.assert_allclose(bn.state["running_mean"], rm, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(bn.state["running_var"], rv, rtol=1e-5, atol=1e-5)


def test_fit_applies_the_fed_mask_in_the_traced_step():
    x, y = _data(32, seed=6)
    drop, dense = nn.Dropout(0.5, seed=7), nn.Dense(32, 2, seed=2)
    m = nn.Sequential(nn.Flatten(), drop, dense)
    m.compile(optim.SGD(0.0))
    seen = []
    make = drop.make_mask
    drop.make_mask = lambda shape, dtype=np.float32: seen.append(make(shape, dtype)) or seen[-1]
    losses = []
    for epoch in range(2):
        losses.append(m.fit(x, y, epochs=1, batch_size=32, seed=epoch, verbose=False)["loss"][0])
    for loss, mask, seed in zip(losses, seen, (0, 1), strict=True):
        order = np.random.default_rng(seed).permutation(32)
        xb, yb = x[order].reshape(32, -1).astype(np.float64), y[order]
        z = (xb * mask) @ dense.params["weight"] + dense.params["bias"]
        z = z - z.max(1, keepdims=True)
        logp = z - np.log(np.exp(z).sum(1, keepdims=True))
        assert loss == pytest.approx(-logp[np.arange(32), yb].mean(), rel=1e-4)
    assert losses[0] != pytest.approx(losses[1])


def test_running_statistics_are_saved_and_loaded(tmp_path):
    """save_weights keeps BatchNorm's running statistics; load_weights restores them."""
    from hetero import nn

    rng = np.random.default_rng(3)
    model = nn.Sequential(nn.Dense(4, 3), nn.BatchNorm(3))
    bn = model.layers[1]
    bn(np.asarray(model.layers[0](rng.standard_normal((8, 4)).astype(np.float32)).numpy()))
    saved = {k: v.copy() for k, v in bn.state.items()}
    assert not np.allclose(saved["running_mean"], 0.0)
    model.save_weights(str(tmp_path / "w.npz"))
    other = nn.Sequential(nn.Dense(4, 3, seed=1), nn.BatchNorm(3))
    other.load_weights(str(tmp_path / "w.npz"))
    for k, v in saved.items():
        np.testing.assert_array_equal(other.layers[1].state[k], v)
    x = rng.standard_normal((5, 4)).astype(np.float32)
    np.testing.assert_array_equal(other.predict(x), model.predict(x))
