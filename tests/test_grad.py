"""hetero.grad: every vjp rule against float64 central finite differences and PyTorch."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import hetero as ht
from hetero.autodiff import GradError, grad, value_and_grad

F = ht.ops

# name -> a function of one float64 input exercising that op's rule
UNARY = {
    "exp": lambda x: F.exp(x), "log": lambda x: F.log(F.add(F.mul(x, x), 1.0)),
    "sqrt": lambda x: F.sqrt(F.add(F.mul(x, x), 1.0)), "neg": lambda x: F.neg(x),
    "reciprocal": lambda x: F.reciprocal(F.add(F.mul(x, x), 1.0)),
    "relu": lambda x: F.relu(x), "sigmoid": lambda x: F.sigmoid(x), "tanh": lambda x: F.tanh(x),
    "gelu": lambda x: F.gelu(x), "gelu_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "softmax": lambda x: F.softmax(x, axis=-1),
    "log_softmax": lambda x: F.log_softmax(x, axis=-1),
    "mean": lambda x: F.mean(x, axes=(0,), keepdims=1),
    "transpose": lambda x: F.transpose(x, perm=(1, 0)),
    "reshape": lambda x: F.reshape(x, shape=(-1,)),
}


def _fd(f, x, eps=1e-6):
    g = np.zeros_like(x)
    for i in np.ndindex(x.shape):
        xp, xm = x.copy(), x.copy()
        xp[i] += eps
        xm[i] -= eps
        g[i] = (float(np.asarray(f(xp))) - float(np.asarray(f(xm)))) / (2 * eps)
    return g


def _weighted(fn, wseed):
    def loss(x):
        y = fn(x)
        w = np.random.default_rng(wseed).standard_normal(y.shape)
        return F.sum(F.mul(y, w))
    return loss


shapes = st.tuples(st.integers(1, 4), st.integers(1, 4))


@pytest.mark.parametrize("name", sorted(UNARY))
@settings(max_examples=8, deadline=None)
@given(shape=shapes, seed=st.integers(0, 1000))
def test_unary_rules_match_finite_differences(name, shape, seed):
    x = np.random.default_rng(seed).standard_normal(shape)
    if name == "relu":
        x = np.where(np.abs(x) < 1e-3, 0.5, x)  # away from the kink
    loss = _weighted(UNARY[name], seed + 1)
    np.testing.assert_allclose(grad(loss)(x).numpy(), _fd(loss, x), rtol=1e-5, atol=1e-6)


BINARY = {"add": F.add, "sub": F.sub, "mul": F.mul, "div": F.div}


@pytest.mark.parametrize("name", sorted(BINARY))
@settings(max_examples=8, deadline=None)
@given(shape=shapes, bcast=st.sampled_from(["same", "row", "scalar"]), seed=st.integers(0, 1000))
def test_binary_rules_broadcast_match_finite_differences(name, shape, bcast, seed):
    rng = np.random.default_rng(seed)
    a = rng.standard_normal(shape)
    bshape = {"same": shape, "row": (1, shape[1]), "scalar": ()}[bcast]
    b = np.asarray(rng.standard_normal(bshape) + (3.0 if name == "div" else 0.0))
    w = rng.standard_normal(shape)

    def loss(a, b):
        return F.sum(F.mul(BINARY[name](a, b), w))
    ga, gb = grad(loss, argnums=(0, 1))(a, b)
    np.testing.assert_allclose(ga.numpy(), _fd(lambda a_: loss(a_, b), a), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(gb.numpy(), _fd(lambda b_: loss(a, b_), b), rtol=1e-5, atol=1e-6)


@settings(max_examples=10, deadline=None)
@given(m=st.integers(1, 4), k=st.integers(1, 4), n=st.integers(1, 4), batch=st.booleans(),
       seed=st.integers(0, 1000))
def test_matmul_rule_matches_finite_differences(m, k, n, batch, seed):
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((2, m, k) if batch else (m, k))
    b = rng.standard_normal((k, n))

    def loss(a, b):
        return F.sum(F.tanh(F.matmul(a, b)))
    ga, gb = grad(loss, (0, 1))(a, b)
    np.testing.assert_allclose(ga.numpy(), _fd(lambda a_: loss(a_, b), a), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(gb.numpy(), _fd(lambda b_: loss(a, b_), b), rtol=1e-5, atol=1e-6)


def test_where_rule_and_pytrees():
    rng = np.random.default_rng(0)
    params = {"a": rng.standard_normal((3, 4)), "b": [rng.standard_normal((3, 4))]}
    cond = rng.standard_normal((3, 4)) > 0

    def loss(p):
        return F.sum(F.mul(F.where(cond, p["a"], p["b"][0]), p["a"]))
    v, g = value_and_grad(loss)(params)
    a, b = params["a"], params["b"][0]
    np.testing.assert_allclose(v.numpy(), np.sum(np.where(cond, a, b) * a))
    np.testing.assert_allclose(g["a"].numpy(), np.where(cond, 2 * a, b))
    np.testing.assert_allclose(g["b"][0].numpy(), np.where(cond, 0.0, a))


def test_against_pytorch_mlp_loss():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(1)
    x, w1, w2 = (rng.standard_normal(s) for s in [(5, 6), (6, 7), (7, 3)])
    labels = rng.integers(0, 3, 5)
    onehot = np.eye(3)[labels]

    def loss(w1, w2):
        h = F.gelu(F.matmul(x, w1))
        logp = F.log_softmax(F.matmul(F.sigmoid(h), w2), axis=-1)
        return F.neg(F.mean(F.sum(F.mul(logp, onehot), axes=(1,))))
    v, (g1, g2) = value_and_grad(loss, (0, 1))(w1, w2)
    t1, t2 = (torch.tensor(w, requires_grad=True) for w in (w1, w2))
    tl = torch.nn.functional.cross_entropy(
        torch.sigmoid(torch.nn.functional.gelu(torch.tensor(x) @ t1)) @ t2,
        torch.tensor(labels))
    tl.backward()
    np.testing.assert_allclose(v.numpy(), tl.item(), rtol=1e-10)
    np.testing.assert_allclose(g1.numpy(), t1.grad.numpy(), rtol=1e-8, atol=1e-12)
    np.testing.assert_allclose(g2.numpy(), t2.grad.numpy(), rtol=1e-8, atol=1e-12)


def test_graph_mode_gradients_equal_eager():
    rng = np.random.default_rng(2)
    x, w = rng.standard_normal((4, 5)), rng.standard_normal((5, 3))

    def loss(w, x):
        return F.sum(F.softmax(F.tanh(F.matmul(x, w)), axis=-1))

    @ht.function
    def step(w, x):
        return grad(loss)(w, x)
    eager = grad(loss)(w, x).numpy()
    np.testing.assert_allclose(np.asarray(step(w, x)), eager, rtol=1e-12)


def test_errors_name_the_line_and_op():
    x = np.ones((2, 3))
    with pytest.raises(GradError, match=r"test_grad.py:\d+.*non-scalar"):
        grad(lambda x: F.tanh(x))(x)
    with pytest.raises(GradError, match="only float inputs"):
        grad(lambda x: F.sum(x))(np.ones(3, np.int64))
    with pytest.raises(GradError, match=r"test_grad.py:\d+: op floor .*no gradient"):
        grad(lambda x: F.sum(F.floor(x)))(x)


def test_compiled_gradients_on_cpu2_sim1_equal_cpu1():
    from hetero.compiler import compile

    rng = np.random.default_rng(3)
    x = rng.standard_normal((8, 6)).astype(np.float32)
    w1 = rng.standard_normal((6, 16)).astype(np.float32)
    w2 = rng.standard_normal((16, 4)).astype(np.float32)

    def loss(w1, w2, x):
        return F.mean(F.log_softmax(F.matmul(F.relu(F.matmul(x, w1)), w2), axis=-1))

    def train_grads(w1, w2, x):
        return grad(loss, (0, 1))(w1, w2, x)
    one = compile(train_grads, "cpu:1", example_inputs=(w1, w2, x))
    two = compile(train_grads, "cpu:2,sim:1", example_inputs=(w1, w2, x))
    a = [np.asarray(t) for t in one.run(w1, w2, x)]
    b = [np.asarray(t) for t in two.run(w1, w2, x)]
    eager = [t.numpy() for t in grad(loss, (0, 1))(w1, w2, x)]
    assert len({n.device for n in two.graph.nodes if n.computes}) >= 2  # really spread
    for u, v, e in zip(a, b, eager, strict=True):
        np.testing.assert_allclose(u, e, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(v, e, rtol=1e-5, atol=1e-6)


MORE = {
    "gemm_t": lambda x: F.gemm(x, x, np.ones((1,)), alpha=0.5, beta=2.0, trans_b=1),
    "concat": lambda x: F.concat([x, F.mul(x, x)], axis=1),
    "split": lambda x: F.split(F.concat([x, F.exp(x)], axis=0), sizes=2, axis=0)[1],
    "slice": lambda x: F.slice(x, starts=(1,), ends=(10,), axes=(1,)),
    "layer_norm": lambda x: F.layer_norm(F.mul(x, 3.0), np.linspace(0.5, 1.5, x.shape[-1]),
                                         np.linspace(-1, 1, x.shape[-1])),
    "flatten": lambda x: F.flatten(F.unsqueeze(x, axes=(0,)), axis=1),
    "expand": lambda x: F.expand(F.sum(x, axes=(1,), keepdims=1), shape=x.shape),
    "gather": lambda x: F.gather(x, np.array([0, 0, x.shape[0] - 1]), axis=0),
}


@pytest.mark.parametrize("name", sorted(MORE))
@settings(max_examples=8, deadline=None)
@given(shape=st.tuples(st.integers(1, 4), st.integers(2, 4)), seed=st.integers(0, 1000))
def test_structural_and_norm_rules_match_finite_differences(name, shape, seed):
    x = np.random.default_rng(seed).standard_normal(shape)
    loss = _weighted(MORE[name], seed + 1)
    ref = loss
    if name == "layer_norm":  # its kernel keeps statistics in float32 (ONNX stash_type=1),
        def ref(x):            # too coarse to difference: difference a float64 NumPy version
            y = 3.0 * x
            xc = y - y.mean(-1, keepdims=True)
            y = xc / np.sqrt((xc * xc).mean(-1, keepdims=True) + 1e-5)
            y = y * np.linspace(0.5, 1.5, x.shape[-1]) + np.linspace(-1, 1, x.shape[-1])
            w = np.random.default_rng(seed + 1).standard_normal(y.shape)
            return np.sum(y * w)
    np.testing.assert_allclose(grad(loss)(x).numpy(), _fd(ref, x), rtol=1e-5, atol=1e-6)


@settings(max_examples=12, deadline=None)
@given(groups=st.sampled_from([1, 2]), stride=st.integers(1, 2), dil=st.integers(1, 2),
       pads=st.tuples(st.integers(0, 1), st.integers(0, 1), st.integers(0, 1), st.integers(0, 1)),
       hw=st.integers(4, 6), bias=st.booleans(), seed=st.integers(0, 1000))
def test_conv2d_rule_matches_finite_differences(groups, stride, dil, pads, hw, bias, seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((2, 2 * groups, hw, hw + 1))
    w = rng.standard_normal((2 * groups, 2, 2, 3))
    b = rng.standard_normal(2 * groups)
    attrs = {"strides": (stride, stride), "dilations": (dil, dil), "pads": pads, "groups": groups}

    def loss(x, w, b):
        y = F.conv2d(x, w, b if bias else None, **attrs)
        return F.sum(F.mul(y, np.random.default_rng(seed).standard_normal(y.shape)))
    gx, gw, gb = grad(loss, (0, 1, 2))(x, w, b)
    np.testing.assert_allclose(gx.numpy(), _fd(lambda x_: loss(x_, w, b), x), rtol=1e-5,
                               atol=1e-6)
    np.testing.assert_allclose(gw.numpy(), _fd(lambda w_: loss(x, w_, b), w), rtol=1e-5,
                               atol=1e-6)
    if bias:
        np.testing.assert_allclose(gb.numpy(), _fd(lambda b_: loss(x, w, b_), b), rtol=1e-5,
                                   atol=1e-6)


def test_conv2d_rule_matches_pytorch():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(5)
    x, w = rng.standard_normal((3, 4, 9, 8)), rng.standard_normal((6, 2, 3, 3))
    gx, gw = grad(lambda x, w: F.sum(F.tanh(F.conv2d(x, w, strides=(2, 1), pads=(1, 0, 1, 1),
                                                     dilations=(1, 2), groups=2))), (0, 1))(x, w)
    tx, tw = torch.tensor(x, requires_grad=True), torch.tensor(w, requires_grad=True)
    tp = torch.nn.functional.pad(tx, (0, 1, 1, 1))  # (left, right, top, bottom)
    torch.tanh(torch.nn.functional.conv2d(tp, tw, stride=(2, 1), dilation=(1, 2),
                                          groups=2)).sum().backward()
    np.testing.assert_allclose(gx.numpy(), tx.grad.numpy(), rtol=1e-9, atol=1e-10)
    np.testing.assert_allclose(gw.numpy(), tw.grad.numpy(), rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("pool", ["max_pool2d", "avg_pool2d"])
@settings(max_examples=10, deadline=None)
@given(k=st.integers(1, 3), stride=st.integers(1, 2), pad=st.integers(0, 1),
       seed=st.integers(0, 1000))
def test_pool_rules_match_finite_differences(pool, k, stride, pad, seed):
    pad = min(pad, k // 2)
    x = np.random.default_rng(seed).standard_normal((2, 3, 5, 6))
    kw = {"kernel_shape": (k, k), "strides": (stride, stride), "pads": (pad,) * 4}
    if pool == "avg_pool2d":
        kw["count_include_pad"] = 1
    loss = _weighted(lambda x: getattr(F, pool)(x, **kw), seed + 1)
    np.testing.assert_allclose(grad(loss)(x).numpy(), _fd(loss, x), rtol=1e-5, atol=1e-6)
