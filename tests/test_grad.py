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


# max/min reductions, pow, maximum/minimum, strided slices and gather on any axis
EXTRA = {
    "max": lambda x: F.max(x, axes=(1,), keepdims=0),
    "min": lambda x: F.min(x, axes=(0,), keepdims=1),
    "max_all": lambda x: F.max(x),
    "pow": lambda x: F.pow(F.add(F.mul(x, x), 0.5), 1.5),
    "pow_int_exponent": lambda x: F.pow(x, 3.0),
    "pow_of_x": lambda x: F.pow(2.5, x),
    "maximum": lambda x: F.maximum(x, np.linspace(-1, 1, x.shape[-1])),
    "minimum": lambda x: F.minimum(x, F.tanh(x)),
    "slice_step": lambda x: F.slice(x, starts=(0, -1), ends=(10, -100), axes=(0, 1),
                                    steps=(2, -1)),
    "gather_axis1": lambda x: F.gather(x, np.array([[1, -1], [0, 0]]), axis=1),
    "gather_axis0_2d": lambda x: F.gather(x, np.array([[0, 1], [1, 0]]), axis=0),
    "abs": lambda x: F.abs(x), "sin": lambda x: F.sin(x), "cos": lambda x: F.cos(x),
    "erf": lambda x: F.erf(x), "softplus": lambda x: F.softplus(x),
    "leaky_relu": lambda x: F.leaky_relu(x, 0.2), "elu": lambda x: F.elu(x, 0.7),
    "clip": lambda x: F.clip(x, -0.5, 0.8), "clip_min": lambda x: F.clip(x, min=0.1),
    "add_n": lambda x: F.add_n(x, F.mul(x, x), F.tanh(x)),
    "pad_crop": lambda x: F.pad(x, (1, -1, 0, 2), value=0.5),
    "tile": lambda x: F.tile(x, (2, 3)),
    "global_pools": lambda x: F.add(F.global_avg_pool(F.reshape(x, shape=(1, 1) + x.shape)),
                                    F.global_max_pool(F.reshape(x, shape=(1, 1) + x.shape))),
}


@pytest.mark.parametrize("name", sorted(EXTRA))
@settings(max_examples=8, deadline=None)
@given(shape=st.tuples(st.integers(2, 4), st.integers(2, 4)), seed=st.integers(0, 1000))
def test_reduction_pow_and_indexing_rules_match_finite_differences(name, shape, seed):
    x = np.random.default_rng(seed).standard_normal(shape)
    loss = _weighted(EXTRA[name], seed + 1)
    np.testing.assert_allclose(grad(loss)(x).numpy(), _fd(loss, x), rtol=1e-5, atol=1e-6)


def test_max_and_max_pool_share_the_cotangent_among_ties():
    x = np.array([[1.0, 3.0, 3.0], [2.0, 2.0, 2.0]])
    g = grad(lambda x: F.sum(F.max(x, axes=(1,), keepdims=0)))(x).numpy()
    np.testing.assert_allclose(g, [[0, 0.5, 0.5], [1 / 3, 1 / 3, 1 / 3]])
    # a window of equal values passes on its cotangent once, not once per tied input
    g = grad(lambda x: F.sum(F.max_pool2d(x, (2, 2), (2, 2))))(np.zeros((1, 1, 4, 4))).numpy()
    np.testing.assert_allclose(g, np.full((1, 1, 4, 4), 0.25))
    # away from ties, max_pool2d's gradient is PyTorch's
    torch = pytest.importorskip("torch")
    xr = np.random.default_rng(4).standard_normal((2, 3, 6, 5))
    g = grad(lambda x: F.sum(F.mul(F.max_pool2d(x, (3, 2), (2, 1), (1, 0, 1, 0)), 2.0)))(xr)
    tx = torch.tensor(xr, requires_grad=True)
    (2 * torch.nn.functional.max_pool2d(tx, (3, 2), (2, 1), (1, 0))).sum().backward()
    np.testing.assert_allclose(g.numpy(), tx.grad.numpy())


def test_pow_gradient_at_zero_base_is_finite():
    assert np.array_equal(grad(lambda x: F.sum(F.pow(x, 2.0)))(np.zeros(3)).numpy(), np.zeros(3))
    assert np.array_equal(grad(lambda x: F.sum(F.pow(x, 0.0)))(np.zeros(3)).numpy(), np.zeros(3))


def test_infinite_loss_and_unused_outputs_do_not_poison_the_gradient():
    x = np.array([0.0, 1.0, 2.0])

    def f(x):
        return F.sum(F.log(x))  # -inf: graph mode must not seed with loss * 0 + 1 (NaN)

    @ht.function
    def graph_grad(x):
        return grad(f)(x)
    with np.errstate(divide="ignore"):
        eager = grad(f)(x).numpy()
        graph = np.asarray(graph_grad(x))
    np.testing.assert_array_equal(eager, [np.inf, 1.0, 0.5])
    np.testing.assert_array_equal(graph, eager)
    # the unused piece of a split holds inf: its zero cotangent must stay zero
    y = np.array([1.0, 2.0, np.inf, 3.0])

    def first_half(y):
        return F.sum(F.split(y, sizes=(2, 2), axis=0)[0])

    @ht.function
    def graph_split(y):
        return grad(first_half)(y)
    np.testing.assert_array_equal(grad(first_half)(y).numpy(), [1.0, 1.0, 0.0, 0.0])
    np.testing.assert_array_equal(np.asarray(graph_split(y)), [1.0, 1.0, 0.0, 0.0])


def test_against_pytorch_transformer_block():
    """A pre-norm single-head attention block with a GELU MLP, residuals and a softmax
    cross-entropy head: every parameter's gradient equals torch.autograd's."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(5)
    t, d, h, c = 5, 8, 16, 3
    x = rng.standard_normal((t, d))
    labels = rng.integers(0, c, t)
    shapes = {"ln1": (d,), "b1": (d,), "wq": (d, d), "wk": (d, d), "wv": (d, d), "wo": (d, d),
              "ln2": (d,), "w1": (d, h), "bh": (h,), "w2": (h, d), "head": (d, c)}
    params = {k: rng.standard_normal(s) * (0.5 if len(s) == 2 else 1.0) + (1.0 if k[:2] == "ln"
                                                                          else 0.0)
              for k, s in shapes.items()}

    def block(p, x, ops, softmax, ln, gelu, onehot_loss):
        a = ln(x, p["ln1"], p["b1"])
        q, k, v = (ops.matmul(a, p[n]) for n in ("wq", "wk", "wv"))
        kt = ops.transpose(k, (1, 0)) if ops is not torch else k.T
        att = softmax(ops.mul(ops.matmul(q, kt), 1.0 / np.sqrt(d)))
        x = ops.add(x, ops.matmul(ops.matmul(att, v), p["wo"]))
        m = gelu(ops.add(ops.matmul(ln(x, p["ln2"], None), p["w1"]), p["bh"]))
        x = ops.add(x, ops.matmul(m, p["w2"]))
        return onehot_loss(ops.matmul(x, p["head"]))

    def ht_loss(p):
        return block(
            p, x, F, lambda z: F.softmax(z, axis=-1), F.layer_norm, F.gelu,
            lambda z: F.neg(F.mean(F.sum(F.mul(F.log_softmax(z, axis=-1), np.eye(c)[labels]),
                                         axes=(1,)))))
    value, g = value_and_grad(ht_loss)(params)

    tp = {k: torch.tensor(v, requires_grad=True) for k, v in params.items()}
    nnf = torch.nn.functional
    tl = block(tp, torch.tensor(x), torch, lambda z: torch.softmax(z, -1),
               lambda z, s, b: nnf.layer_norm(z, (d,), s, b), nnf.gelu,
               lambda z: nnf.cross_entropy(z, torch.tensor(labels)))
    tl.backward()
    # hetero's layer_norm kernel keeps its statistics in float32 (ONNX stash_type=1)
    np.testing.assert_allclose(value.numpy(), tl.item(), rtol=1e-6)
    for k in shapes:
        np.testing.assert_allclose(g[k].numpy(), tp[k].grad.numpy(), rtol=1e-5, atol=1e-6,
                                   err_msg=k)


@settings(max_examples=8, deadline=None)
@given(k=st.integers(2, 3), stride=st.integers(1, 2), top=st.integers(0, 1), left=st.integers(0, 1),
       seed=st.integers(0, 1000))
def test_avg_pool_rule_without_counting_padding_matches_finite_differences(k, stride, top, left,
                                                                           seed):
    x = np.random.default_rng(seed).standard_normal((1, 2, 5, 6))
    kw = {"kernel_shape": (k, k), "strides": (stride, stride), "pads": (top, left, 1, 0),
          "count_include_pad": 0}  # ONNX's default: a window divides by the inputs it covers
    loss = _weighted(lambda x: F.avg_pool2d(x, **kw), seed + 1)
    np.testing.assert_allclose(grad(loss)(x).numpy(), _fd(loss, x), rtol=1e-5, atol=1e-6)


def test_closures_over_enclosing_traced_values_and_second_order():
    rng = np.random.default_rng(6)
    x, w = rng.standard_normal((4, 3)), rng.standard_normal((3, 2))

    @ht.function
    def step(w, x):
        h = F.tanh(x)  # traced by step, read by the loss from its closure
        return grad(lambda w: F.sum(F.tanh(F.matmul(h, w))))(w)
    hx = np.tanh(x)
    np.testing.assert_allclose(np.asarray(step(w, x)), hx.T @ (1 - np.tanh(hx @ w) ** 2),
                               rtol=1e-12)

    v = np.array([0.5, -1.0, 2.0])

    def outer(x):  # d/dx sum(d/dy sum(x * y * y) at y = x) = d/dx sum(2 x^2) = 4 x
        return F.sum(grad(lambda y: F.sum(F.mul(F.mul(x, y), y)))(x))

    @ht.function
    def second(x):
        return grad(outer)(x)
    np.testing.assert_allclose(grad(outer)(v).numpy(), 4 * v)
    np.testing.assert_allclose(np.asarray(second(v)), 4 * v)


def test_device_pins_inside_the_differentiated_function_hold_for_forward_and_backward():
    from hetero.compiler import compile

    rng = np.random.default_rng(7)
    x, w = rng.standard_normal((4, 3)), rng.standard_normal((3, 2))

    def loss(w, x):
        h = F.matmul(x, w)
        with ht.device("cpu:1"):
            h = F.tanh(h)
        return F.sum(h)

    def step(w, x):
        return grad(loss)(w, x)
    c = compile(step, "cpu:2", example_inputs=(w, x))
    dev = {n.op: n.device for n in c.graph.nodes if n.computes}
    assert dev["tanh"] == "cpu:1"
    assert dev["sub"] == "cpu:1"  # tanh's rule, 1 - y * y, runs where tanh did
    out = c.run(w, x)
    out = out[0] if isinstance(out, (list, tuple)) else out
    np.testing.assert_allclose(np.asarray(out), x.T @ (1 - np.tanh(x @ w) ** 2), rtol=1e-12)


def test_vjp_takes_an_explicit_cotangent_for_a_non_scalar_output():
    rng = np.random.default_rng(8)
    x, w, ct = rng.standard_normal((4, 3)), rng.standard_normal((3, 2)), rng.standard_normal((4, 2))
    out, back = ht.vjp(lambda x, w: F.tanh(F.matmul(x, w)), x, w)
    np.testing.assert_allclose(out.numpy(), np.tanh(x @ w))
    gx, gw = back(ct)
    d = ct * (1 - np.tanh(x @ w) ** 2)
    np.testing.assert_allclose(gx.numpy(), d @ w.T, rtol=1e-12)
    np.testing.assert_allclose(gw.numpy(), x.T @ d, rtol=1e-12)
    with pytest.raises(GradError, match=r"cotangent has shape \(2,\), the output \(4, 2\)"):
        back(np.ones(2))

    @ht.function
    def traced(x, w, ct):
        return ht.vjp(lambda p: F.tanh(F.matmul(x, p["w"])), {"w": w})[1](ct)[0]["w"]
    np.testing.assert_allclose(np.asarray(traced(x, w, ct)), x.T @ d, rtol=1e-12)


@settings(max_examples=6, deadline=None)
@given(n=st.integers(1, 3), c=st.integers(1, 3), seed=st.integers(0, 1000))
def test_batch_norm_rule_matches_finite_differences_for_all_five_inputs(n, c, seed):
    rng = np.random.default_rng(seed)
    x, s, b, m = (rng.standard_normal(sh) for sh in [(n, c, 2, 3), (c,), (c,), (c,)])
    v = rng.random(c) + 0.5
    w = rng.standard_normal(x.shape)

    def loss(x, s, b, m, v):
        return F.sum(F.mul(F.batch_norm(x, s, b, m, v), w))
    args = [x, s, b, m, v]
    for i, g in enumerate(grad(loss, (0, 1, 2, 3, 4))(*args)):
        def f(a, i=i):
            return loss(*(a if j == i else args[j] for j in range(5)))
        np.testing.assert_allclose(g.numpy(), _fd(f, args[i]), rtol=1e-5, atol=1e-6)


def test_batch_norm_with_batch_statistics_from_ops_is_pytorch_training_mode():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(9)
    x, s, b = rng.standard_normal((4, 3, 2, 5)), rng.standard_normal(3), rng.standard_normal(3)
    w = rng.standard_normal(x.shape)

    def loss(x, s, b):
        mu = F.mean(x, axes=(0, 2, 3), keepdims=0)
        xc = F.sub(x, F.reshape(mu, shape=(1, 3, 1, 1)))
        var = F.mean(F.mul(xc, xc), axes=(0, 2, 3), keepdims=0)
        return F.sum(F.mul(F.batch_norm(x, s, b, mu, var), w))
    ours = grad(loss, (0, 1, 2))(x, s, b)
    t = [torch.tensor(a, requires_grad=True) for a in (x, s, b)]
    y = torch.nn.functional.batch_norm(t[0], None, None, t[1], t[2], training=True)
    (y * torch.tensor(w)).sum().backward()
    for g, tt in zip(ours, t, strict=True):
        np.testing.assert_allclose(g.numpy(), tt.grad.numpy(), rtol=1e-10, atol=1e-12)


def test_has_aux_returns_the_auxiliary_pytree_eagerly_and_traced():
    rng = np.random.default_rng(10)
    x, w = rng.standard_normal((4, 3)), rng.standard_normal((3, 2))

    def loss(w, x):
        logits = F.matmul(x, w)
        return F.sum(F.tanh(logits)), {"logits": logits, "n": 4}
    (v, aux), g = value_and_grad(loss, has_aux=True)(w, x)
    g2, aux2 = grad(loss, has_aux=True)(w, x)
    np.testing.assert_allclose(aux["logits"].numpy(), x @ w)
    assert aux["n"] == 4 and aux2["n"] == 4
    np.testing.assert_allclose(v.numpy(), np.tanh(x @ w).sum())
    expect = x.T @ (1 - np.tanh(x @ w) ** 2)
    np.testing.assert_allclose(g.numpy(), expect)
    np.testing.assert_allclose(g2.numpy(), expect)

    @ht.function
    def step(w, x):
        g, aux = grad(loss, has_aux=True)(w, x)
        return g, aux["logits"]
    tg, tl = step(w, x)
    np.testing.assert_allclose(np.asarray(tg), expect, rtol=1e-12)
    np.testing.assert_allclose(np.asarray(tl), x @ w, rtol=1e-12)
    with pytest.raises(GradError, match="must return a pair"):
        grad(lambda w: F.sum(w), has_aux=True)(w)


@pytest.mark.parametrize("groups,stride,pad,dil,opad", [(2, 2, 1, 1, 1), (3, 1, 1, 2, 0),
                                                        (1, 3, 0, 1, 2)])
def test_conv_transpose_rule_and_second_order_conv_match_pytorch(groups, stride, pad, dil, opad):
    torch = pytest.importorskip("torch")
    tf = torch.nn.functional
    rng = np.random.default_rng(11)
    x = rng.standard_normal((2, 6, 4, 5))
    w, b = rng.standard_normal((6, 6 // groups, 3, 3)), rng.standard_normal(6)
    geo = {"strides": (stride, stride), "pads": (pad,) * 4, "dilations": (dil, dil)}

    def loss(x, w, b):
        y = F.conv_transpose(x, w, b, output_padding=(opad, 0), groups=groups, **geo)
        return F.sum(F.mul(y, F.tanh(y)))
    ours = grad(loss, (0, 1, 2))(x, w, b)
    t = [torch.tensor(a, requires_grad=True) for a in (x, w, b)]
    y = tf.conv_transpose2d(t[0], t[1], t[2], stride=stride, padding=pad,
                            output_padding=(opad, 0), groups=groups, dilation=dil)
    (y * torch.tanh(y)).sum().backward()
    for g, tt in zip(ours, t, strict=True):
        np.testing.assert_allclose(g.numpy(), tt.grad.numpy(), rtol=1e-10, atol=1e-10)

    # a gradient of conv2d's weight gradient runs conv_transpose's rule
    def inner(w, x):
        y = F.conv2d(x, w, groups=groups, **geo)
        return F.sum(F.mul(y, y))

    def outer(x, w):
        gw = grad(inner)(w, x)
        return F.sum(F.mul(gw, gw))
    wc = rng.standard_normal((6, 6 // groups, 3, 3))
    tx, tw = torch.tensor(x, requires_grad=True), torch.tensor(wc)
    tw.requires_grad_(True)
    yy = tf.conv2d(tx, tw, stride=stride, padding=pad, dilation=dil, groups=groups)
    (gw,) = torch.autograd.grad((yy * yy).sum(), tw, create_graph=True)
    (gw * gw).sum().backward()
    np.testing.assert_allclose(grad(outer)(x, wc).numpy(), tx.grad.numpy(), rtol=1e-9)
