"""hetero.nn Embedding and MultiHeadAttention: forward against NumPy float64 references (eager
and traced), gradients against central finite differences, PyTorch agreement, training inside a
Sequential, and errors naming the layer."""

from __future__ import annotations

import numpy as np
import pytest

import hetero as ht
import hetero.nn as nn
import hetero.optim as optim
from hetero.autodiff import value_and_grad
from hetero.errors import ShapeError
from hetero.tracing import Tensor


def _np(x):
    return np.asarray(x.numpy() if isinstance(x, Tensor) else x)


def _embedding_ref(p, idx):
    return np.asarray(p["weight"], np.float64)[idx]


def _mha_ref(p, x, heads, causal):
    p = {k: np.asarray(v, np.float64) for k, v in p.items()}
    x = np.asarray(x, np.float64)
    b, s, dim = x.shape
    d = dim // heads

    def split(name):
        y = x @ p[f"{name}_weight"] + p[f"{name}_bias"]
        return y.reshape(b, s, heads, d).transpose(0, 2, 1, 3)

    q, k, v = split("q"), split("k"), split("v")
    scores = q @ k.transpose(0, 1, 3, 2) / np.sqrt(d)
    if causal:
        scores = np.where(np.triu(np.ones((s, s), bool), 1), -np.inf, scores)
    scores = scores - scores.max(-1, keepdims=True)
    w = np.exp(scores)
    w /= w.sum(-1, keepdims=True)
    y = (w @ v).transpose(0, 2, 1, 3).reshape(b, s, dim)
    return y @ p["out_weight"] + p["out_bias"]


def _random_params(layer, seed):
    """The layer's parameters replaced by random ones (biases too, so their gradients show)."""
    rng = np.random.default_rng(seed)
    return {k: (rng.standard_normal(v.shape) * 0.5).astype(np.float32)
            for k, v in layer.params.items()}


def test_embedding_forward_eager_and_traced():
    emb = nn.Embedding(7, 4, seed=3)
    assert emb.params["weight"].shape == (7, 4) and emb.params["weight"].dtype == np.float32
    idx = np.array([[0, 6, 2], [2, 2, 5]], np.int64)
    want = _embedding_ref(emb.params, idx)
    got = _np(emb(idx))
    assert got.shape == (2, 3, 4)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
    traced = ht.function(lambda i: emb(i))
    np.testing.assert_allclose(_np(traced(idx)), want, rtol=1e-6, atol=1e-6)
    one = np.array([1, 3], np.int32)
    np.testing.assert_allclose(_np(emb(one)), _embedding_ref(emb.params, one), rtol=1e-6)


@pytest.mark.parametrize("causal", [False, True])
def test_attention_forward_eager_and_traced(causal):
    mha = nn.MultiHeadAttention(8, 2, causal=causal, seed=1)
    p = _random_params(mha, 5)
    mha.params = p
    x = np.random.default_rng(0).standard_normal((2, 5, 8)).astype(np.float32)
    want = _mha_ref(p, x, 2, causal)
    got = _np(mha(x))
    assert got.shape == (2, 5, 8)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    traced = ht.function(lambda a: mha(a))
    np.testing.assert_allclose(_np(traced(x)), want, rtol=1e-4, atol=1e-4)


def test_causal_attention_ignores_the_future():
    mha = nn.MultiHeadAttention(4, 2, causal=True, seed=2)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((1, 4, 4)).astype(np.float32)
    y = x.copy()
    y[:, 2:] = rng.standard_normal((1, 2, 4))
    np.testing.assert_allclose(_np(mha(x))[:, :2], _np(mha(y))[:, :2], rtol=1e-5, atol=1e-6)


def _check_grads(loss_lib, loss_ref, params, eps=1e-5, rtol=1e-3, atol=1e-4):
    value, grads = value_and_grad(loss_lib)(params)
    p64 = {k: np.asarray(v, np.float64) for k, v in params.items()}
    np.testing.assert_allclose(float(_np(value)), loss_ref(p64), rtol=1e-4, atol=1e-4)
    for k, v in p64.items():
        num = np.zeros_like(v)
        for i in np.ndindex(v.shape):
            hi, lo = dict(p64), dict(p64)
            hi[k], lo[k] = v.copy(), v.copy()
            hi[k][i] += eps
            lo[k][i] -= eps
            num[i] = (loss_ref(hi) - loss_ref(lo)) / (2 * eps)
        np.testing.assert_allclose(_np(grads[k]), num, rtol=rtol, atol=atol, err_msg=k)


def test_embedding_gradient_matches_finite_differences():
    emb = nn.Embedding(5, 3, seed=0)
    idx = np.array([[0, 3, 3], [4, 0, 3]], np.int64)  # repeats must add up; row 1, 2 unused
    r = np.random.default_rng(2).standard_normal((2, 3, 3))

    def loss(p):
        return ht.ops.sum(ht.ops.mul(emb(idx, p), r.astype(np.float32)))

    _check_grads(loss, lambda p: float((_embedding_ref(p, idx) * r).sum()), emb.params)


@pytest.mark.parametrize("causal", [False, True])
def test_attention_gradient_matches_finite_differences(causal):
    mha = nn.MultiHeadAttention(4, 2, causal=causal, seed=4)
    p = _random_params(mha, 6)
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 3, 4)).astype(np.float32)
    r = rng.standard_normal((2, 3, 4))

    def loss(params):
        return ht.ops.sum(ht.ops.mul(mha(x, params), r.astype(np.float32)))

    _check_grads(loss, lambda q: float((_mha_ref(q, x, 2, causal) * r).sum()), p)


@pytest.mark.parametrize("causal", [False, True])
def test_attention_matches_pytorch(causal):
    torch = pytest.importorskip("torch")
    dim, heads, s = 8, 2, 5
    mha = nn.MultiHeadAttention(dim, heads, causal=causal, seed=7)
    p = _random_params(mha, 8)
    mha.params = p
    x = np.random.default_rng(4).standard_normal((3, s, dim)).astype(np.float32)
    net = torch.nn.MultiheadAttention(dim, heads, batch_first=True)
    with torch.no_grad():  # torch computes x @ W.T + b; ours x @ W + b
        net.in_proj_weight.copy_(torch.tensor(np.concatenate(
            [p["q_weight"].T, p["k_weight"].T, p["v_weight"].T])))
        net.in_proj_bias.copy_(torch.tensor(np.concatenate(
            [p["q_bias"], p["k_bias"], p["v_bias"]])))
        net.out_proj.weight.copy_(torch.tensor(p["out_weight"].T))
        net.out_proj.bias.copy_(torch.tensor(p["out_bias"]))
        t = torch.tensor(x)
        mask = torch.triu(torch.ones(s, s, dtype=torch.bool), 1) if causal else None
        theirs = net(t, t, t, attn_mask=mask, need_weights=False)[0].numpy()
    np.testing.assert_allclose(_np(mha(x)), theirs, rtol=1e-4, atol=1e-5)


def test_embedding_then_dense_trains_in_a_sequential():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 6, 64).astype(np.int64)
    y = (x % 2).astype(np.int64)  # parity of the token: learnable from its embedding
    m = nn.Sequential(nn.Embedding(6, 4, seed=1), nn.Dense(4, 2, seed=2))
    m.compile(optim.Adam(0.05))
    before = m.evaluate(x, y)["loss"]
    hist = m.fit(x, y, epochs=3, batch_size=16, verbose=False)
    assert hist["loss"][-1] < hist["loss"][0]
    assert m.evaluate(x, y)["loss"] < before


def test_attention_in_a_sequential_trains_eagerly_and_in_graph_mode_alike():
    rng = np.random.default_rng(1)
    x = rng.integers(0, 5, (32, 3)).astype(np.int64)
    y = (x[:, 0] > 2).astype(np.int64)
    params = []
    for graph in (True, False):
        m = nn.Sequential(nn.Embedding(5, 4, seed=1), nn.MultiHeadAttention(4, 2, seed=2),
                          nn.Flatten(), nn.Dense(12, 2, seed=3))
        m.compile(optim.SGD(0.1), graph=graph)
        m.fit(x, y, epochs=1, batch_size=16, verbose=False)
        params.append(m.params)
    for k in params[0]:
        np.testing.assert_allclose(params[0][k], params[1][k], rtol=1e-4, atol=1e-5)


def test_bad_inputs_name_the_layer():
    mha = nn.MultiHeadAttention(8, 2)
    with pytest.raises(ShapeError, match=r"MultiHeadAttention layer made at "
                                         r"test_nn_layers_extra.py:\d+: expects \(batch, seq, 8\)"):
        mha(np.ones((2, 3, 6), np.float32))
    with pytest.raises(ShapeError, match=r"MultiHeadAttention layer made at"):
        mha(np.ones((3, 8), np.float32))
    emb = nn.Embedding(4, 2)
    with pytest.raises(ShapeError, match=r"Embedding layer made at "
                                         r"test_nn_layers_extra.py:\d+: expects integer"):
        emb(np.zeros((2, 3), np.float32))
    with pytest.raises(ShapeError, match="not divisible"):
        nn.MultiHeadAttention(6, 4)
