"""Intra-op splitting: convolutions cut into pieces that parallel_for runs on several threads.

Every cut convolution is compared with the same kernel run on one thread (bit for bit: the cut
depends only on the shapes), with a float64 reference, and, through the executor, with the
sequential reference executor.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from threadpoolctl import threadpool_limits

from hetero import reference
from hetero import threads as tpool
from hetero.devices import Machine
from hetero.errors import ExecutionError
from hetero.executor import Executor
from hetero.ops import linalg, nn
from hetero.ops.registry import lookup
from tests.graphs import Builder, cnn, inputs_for, mlp
from tests.test_memory import make_plan
from tests.test_ops_nn import ref_conv


@contextmanager
def small_pieces():
    """Cut even tiny convolutions, so that small test shapes take every path of the cut."""
    saved = (nn.SPLIT_MIN_FLOPS, nn.SPLIT_MIN_PIXELS, nn.SPLIT_MIN_CHANNELS,
             linalg.GEMM_MIN_COLUMNS, linalg.GEMM_BAND_ALIGN)
    nn.SPLIT_MIN_FLOPS, nn.SPLIT_MIN_PIXELS, nn.SPLIT_MIN_CHANNELS = 0, 8, 4
    linalg.GEMM_MIN_COLUMNS, linalg.GEMM_BAND_ALIGN = 3, 1
    try:
        yield
    finally:
        (nn.SPLIT_MIN_FLOPS, nn.SPLIT_MIN_PIXELS, nn.SPLIT_MIN_CHANNELS,
         linalg.GEMM_MIN_COLUMNS, linalg.GEMM_BAND_ALIGN) = saved


def reference_run(graph, xs, ex):
    """The reference executor with the BLAS threads of ``ex`` (BLAS results depend on them)."""
    with threadpool_limits(ex.blas_threads, "blas"):
        return reference.run(graph, xs)


def run_kernel(name, ins, threads, **attrs):
    op = lookup(name)
    attrs = op.normalize_attrs(attrs)
    from hetero.graph import TensorSpec

    specs = op.infer_specs(tuple(TensorSpec.of(a) for a in ins), attrs)
    out = np.full(specs[0].shape, np.nan, specs[0].dtype)
    with tpool.intra_op(threads):
        op.kernel_for("numpy")(np, list(ins), attrs, [out])
    return out


# ----------------------------------------------------------------------------------------------
# parallel_for


@settings(max_examples=25, deadline=None)
@given(count=st.integers(0, 40), threads=st.integers(1, 4))
def test_parallel_for_runs_every_piece_once(count, threads):
    seen = []
    lock = threading.Lock()

    def piece(i):
        with lock:
            seen.append(i)

    tpool.parallel_for(count, piece, threads=threads)
    assert sorted(seen) == list(range(count))


def test_parallel_for_reraises_the_first_error_after_every_piece_settled():
    done = []

    def piece(i):
        if i == 3:
            raise ValueError("piece 3")
        done.append(i)

    with pytest.raises(ValueError, match="piece 3"):
        tpool.parallel_for(8, piece, threads=2)
    tpool.parallel_for(4, done.append, threads=2)  # the helpers are still serving jobs
    assert sorted(done[-4:]) == [0, 1, 2, 3]


def test_nested_parallel_for_does_not_deadlock():
    total = []
    lock = threading.Lock()

    def inner(i):
        with lock:
            total.append(i)

    tpool.parallel_for(4, lambda i: tpool.parallel_for(5, inner, threads=2), threads=2)
    assert sorted(total) == sorted(list(range(5)) * 4)


def test_intra_op_is_scoped():
    assert tpool.intra_op_threads() == 1
    with tpool.intra_op(3):
        assert tpool.intra_op_threads() == 3
        with tpool.intra_op(0):
            assert tpool.intra_op_threads() == 1
        assert tpool.intra_op_threads() == 3
    assert tpool.intra_op_threads() == 1


# ----------------------------------------------------------------------------------------------
# Cut convolutions


conv_cases = st.fixed_dictionaries({
    "n": st.integers(1, 2), "c": st.integers(1, 12), "o": st.integers(1, 20),
    "groups": st.sampled_from([1, 1, 2, 3]),
    "h": st.integers(3, 14), "k": st.sampled_from([1, 3]), "s": st.integers(1, 2),
    "p": st.integers(0, 1), "act": st.sampled_from(["none", "relu", "sigmoid", "clip"]),
    "bias": st.booleans(), "residual": st.booleans(), "seed": st.integers(0, 2**16)})


@settings(max_examples=40, deadline=None)
@given(case=conv_cases)
def test_cut_conv_equals_one_thread_and_the_float64_reference(case):
    rng = np.random.default_rng(case["seed"])
    n, h, k, groups = case["n"], case["h"], case["k"], case["groups"]
    c, o = case["c"] * groups, case["o"] * groups
    x = rng.standard_normal((n, c, h, h)).astype(np.float32)
    w = rng.standard_normal((o, c // groups, k, k)).astype(np.float32)
    ins = [x, w] + ([rng.standard_normal(o).astype(np.float32)] if case["bias"] else [])
    params = (-0.5, 0.5) if case["act"] == "clip" else ()
    attrs = dict(strides=(case["s"],) * 2, pads=(case["p"],) * 4, activation=case["act"],
                 activation_params=params, groups=groups)
    name = "conv2d"
    if case["residual"]:
        if not case["bias"]:
            ins.append(np.zeros(o, np.float32))
        oh = (h + 2 * case["p"] - k) // case["s"] + 1
        ins.append(rng.standard_normal((n, o, oh, oh)).astype(np.float32))
        name = "conv2d_add"
    with small_pieces():
        one = run_kernel(name, ins, 1, **attrs)
        two = run_kernel(name, ins, 2, **attrs)
        three = run_kernel(name, ins, 3, **attrs)
    np.testing.assert_array_equal(two, one)
    np.testing.assert_array_equal(three, one)
    want = ref_conv(x, w, ins[2] if len(ins) > 2 else None, (case["s"],) * 2, (case["p"],) * 4,
                    (1, 1), groups)
    if case["residual"]:
        want = want + ins[3]
    if case["act"] == "relu":
        want = np.maximum(want, 0)
    elif case["act"] == "sigmoid":
        want = 1 / (1 + np.exp(-want))
    elif case["act"] == "clip":
        want = np.clip(want, -0.5, 0.5)
    np.testing.assert_allclose(one, want, rtol=1e-4, atol=1e-4 * (1 + np.abs(want).max()))


@settings(max_examples=20, deadline=None)
@given(n=st.integers(1, 2), c=st.integers(1, 40), o=st.integers(1, 40), h=st.integers(2, 13),
       pad=st.integers(0, 1), bias=st.booleans(), seed=st.integers(0, 2**16))
def test_cut_winograd_equals_one_thread_and_the_direct_conv(n, c, o, h, pad, bias, seed):
    rng = np.random.default_rng(seed)
    if h + 2 * pad < 3:
        h = 3
    x = rng.standard_normal((n, c, h, h)).astype(np.float32)
    w = rng.standard_normal((o, c, 3, 3)).astype(np.float32)
    b = [rng.standard_normal(o).astype(np.float32)] if bias else []
    u = nn.winograd_weights(w)
    with small_pieces():
        one = run_kernel("conv2d_winograd", [x, u, *b], 1, pads=(pad,) * 4, activation="relu")
        two = run_kernel("conv2d_winograd", [x, u, *b], 2, pads=(pad,) * 4, activation="relu")
    np.testing.assert_array_equal(two, one)
    want = np.maximum(ref_conv(x, w, b[0] if b else None, (1, 1), (pad,) * 4, (1, 1), 1), 0)
    np.testing.assert_allclose(one, want, rtol=1e-4, atol=1e-4 * (1 + np.abs(want).max()))


@settings(max_examples=30, deadline=None)
@given(m=st.integers(1, 5), k=st.integers(1, 30), n=st.integers(1, 40), trans_a=st.booleans(),
       trans_b=st.booleans(), c=st.sampled_from([None, "row", "column", "full", "scalar"]),
       alpha=st.sampled_from([1.0, 0.5]), beta=st.sampled_from([1.0, 0.0, -2.0]),
       seed=st.integers(0, 2**16))
def test_cut_gemm_equals_one_thread_and_float64(m, k, n, trans_a, trans_b, c, alpha, beta, seed):
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((k, m) if trans_a else (m, k)).astype(np.float32)
    b = rng.standard_normal((n, k) if trans_b else (k, n)).astype(np.float32)
    shapes = {"row": (n,), "column": (m, 1), "full": (m, n), "scalar": ()}
    ins = [a, b] + ([] if c is None else [rng.standard_normal(shapes[c]).astype(np.float32)])
    attrs = dict(trans_a=int(trans_a), trans_b=int(trans_b), alpha=alpha, beta=beta)
    with small_pieces():
        one = run_kernel("gemm", ins, 1, **attrs)
        two = run_kernel("gemm", ins, 2, **attrs)
    np.testing.assert_array_equal(two, one)
    want = alpha * (a.T if trans_a else a).astype(np.float64) @ (b.T if trans_b else b)
    if c is not None:
        want = want + beta * ins[2]
    np.testing.assert_allclose(one, want, rtol=1e-4, atol=1e-4 * (1 + np.abs(want).max()))


def test_batch_one_fully_connected_gemm_cut_equals_the_whole_product():
    """At the real thresholds a batch-1 FC layer is cut on 64-column edges, which OpenBLAS
    computes bit for bit as the uncut product (so imported models give what they gave)."""
    rng = np.random.default_rng(3)
    a = rng.standard_normal((1, 2048)).astype(np.float32)
    b = rng.standard_normal((1000, 2048)).astype(np.float32)
    c = rng.standard_normal(1000).astype(np.float32)
    got = run_kernel("gemm", [a, b, c], 2, trans_b=1)
    np.testing.assert_allclose(got, a.astype(np.float64) @ b.T + c, rtol=1e-5, atol=1e-4)
    uniform = np.full((1000, 2048), 0.02, np.float32)  # equal weights: equal logits
    same = run_kernel("gemm", [np.abs(a) * 1e6, uniform], 2, trans_b=1)
    assert (same == same[0, 0]).all()


@pytest.mark.parametrize("a_shape,b_shape", [
    ((1, 12, 197, 64), (1, 12, 64, 197)),  # ViT-B's attention scores, batch 1
    ((1, 1, 6, 197, 197), (6, 197, 64)),   # leading 1s, b without them
    ((1, 300, 64), (1, 64, 256)),          # batch 1 of one product: cut its columns
])
def test_batch_one_products_are_cut_below_the_leading_ones(a_shape, b_shape):
    """A batch of size 1 is cut over the next axis (heads) or the product itself, and the cut
    gives the bits of one thread and of NumPy's product of each piece on one BLAS thread."""
    rng = np.random.default_rng(5)
    a = rng.standard_normal(a_shape).astype(np.float32)
    b = rng.standard_normal(b_shape).astype(np.float32)
    out = np.empty(np.broadcast_shapes(a_shape[:-2], b_shape[:-2]) + (a_shape[-2], b_shape[-1]),
                   np.float32)
    pieces = linalg._pieces(a, b, out)
    assert pieces is not None and len(pieces) >= 2
    for _, _, po, index in pieces:
        assert np.shares_memory(po, out[index]) and po.shape == out[index].shape
    with tpool.blas_limit(1):  # what every executor run does
        two = run_kernel("matmul", [a, b], 2)
        np.testing.assert_array_equal(two, run_kernel("matmul", [a, b], 1))
    want = np.full_like(out, np.nan)
    with threadpool_limits(1, "blas"):
        for pa, pb, _, index in pieces:
            want[index] = np.matmul(pa, pb)
    np.testing.assert_array_equal(two, want)
    exact = np.matmul(a.astype(np.float64), b.astype(np.float64))
    assert np.max(np.abs(two - exact)) <= 1e-5 * np.max(np.abs(exact))


def test_resnet_sized_conv_is_cut_and_matches_one_thread(monkeypatch):
    """ResNet-50 shapes at the real thresholds: row bands of a 28x28 map, channel bands of a
    7x7 one."""
    pieces = []
    original = tpool.parallel_for

    def counting(count, fn, threads=None):
        pieces.append(count)
        original(count, fn, threads)

    monkeypatch.setattr(nn, "parallel_for", counting)
    monkeypatch.setattr(linalg, "parallel_for", counting)
    rng = np.random.default_rng(1)
    for c, h, o in ((128, 28, 128), (256, 7, 512)):
        x = rng.standard_normal((1, c, h, h)).astype(np.float32)
        w = rng.standard_normal((o, c, 3, 3)).astype(np.float32)
        b = rng.standard_normal(o).astype(np.float32)
        one = run_kernel("conv2d", [x, w, b], 1, pads=(1, 1, 1, 1), activation="relu")
        two = run_kernel("conv2d", [x, w, b], 2, pads=(1, 1, 1, 1), activation="relu")
        np.testing.assert_array_equal(two, one)
        want = np.maximum(ref_conv(x, w, b, (1, 1), (1, 1, 1, 1), (1, 1), 1), 0)
        np.testing.assert_allclose(one, want, rtol=1e-4, atol=1e-3)
    # 28 rows // (256 px / 28) -> 3 bands, made 4 by nn._even_bands; 512 channels -> 4
    assert pieces == [4, 4, 4, 4]


def test_a_failing_piece_fails_the_node_with_its_name(monkeypatch):
    g = cnn(batch=1, channels=(3, 16, 32), hw=16)
    plan = make_plan(g, Machine.parse("cpu:1"), lambda n: "cpu:0")
    ex = Executor(plan, intra_op_threads=2)

    def broken(*args, **kwargs):
        raise RuntimeError("BLAS went away")

    with small_pieces():
        monkeypatch.setattr(nn.np, "matmul", broken)
        with pytest.raises(ExecutionError, match="conv2d"):
            ex.run(inputs_for(g))
        monkeypatch.undo()
        np.testing.assert_array_equal(ex.run(inputs_for(g))[0],
                                      reference_run(g, inputs_for(g), ex)[0])


# ----------------------------------------------------------------------------------------------
# Executor policy


def test_a_one_worker_conv_plan_splits_convs_and_equals_the_reference(monkeypatch):
    from hetero import threads as executor

    monkeypatch.setattr(executor, "cpu_cores", lambda: 2)
    g = cnn(batch=2, channels=(3, 16, 32), hw=24)
    plan = make_plan(g, Machine.parse("cpu:1"), lambda n: "cpu:0")
    ex = Executor(plan)
    assert ex.intra_op_threads == 2 and ex.blas_threads == 1
    xs = inputs_for(g)
    with small_pieces():
        want = reference_run(g, xs, ex)
        for sync in (False, True):
            for got, ref in zip(ex.run(xs, sync=sync), want):
                np.testing.assert_array_equal(got, ref)
    assert tpool.intra_op_threads() == 1  # restored after the run


def test_intra_op_threads_policy(monkeypatch):
    from hetero import threads as executor

    monkeypatch.setattr(executor, "cpu_cores", lambda: 4)
    conv = cnn(batch=1, channels=(3, 8), hw=8)
    one = make_plan(conv, Machine.parse("cpu:1"), lambda n: "cpu:0")
    assert Executor(one).intra_op_threads == 4
    assert Executor(one, blas_threads=2).intra_op_threads == 1  # the caller chose BLAS threads
    assert Executor(one, intra_op_threads=3).intra_op_threads == 3
    dense = mlp(batch=4, sizes=(8, 8, 4))  # products split too
    plain = Executor(make_plan(dense, Machine.parse("cpu:1"), lambda n: "cpu:0"))
    assert (plain.intra_op_threads, plain.blas_threads) == (4, 1)
    two = make_plan(conv, Machine.parse("cpu:2"),
                    lambda n: "cpu:1" if n.op == "conv2d" else "cpu:0")
    assert Executor(two).intra_op_threads == 2  # 4 cores over 2 workers


def test_residual_conv_chain_through_compile_equals_the_reference(monkeypatch):
    """conv2d_add and conv2d_winograd in a compiled plan (one worker, split on 2 threads)."""
    import hetero as ht
    from hetero import threads as executor
    from hetero.passes.optimize import optimize

    monkeypatch.setattr(executor, "cpu_cores", lambda: 2)
    rng = np.random.default_rng(2)
    b = Builder("block")
    x = b.input((1, 128, 12, 12))
    w1 = b.const((0.05 * rng.standard_normal((128, 128, 3, 3))).astype(np.float32))
    w2 = b.const((0.05 * rng.standard_normal((128, 128, 1, 1))).astype(np.float32))
    bias = b.const(rng.standard_normal(128).astype(np.float32))
    y = b.op("relu", b.op("conv2d", x, w1, bias, pads=(1, 1, 1, 1)))
    y = b.op("relu", b.op("add", b.op("conv2d", y, w2, bias), x))
    g = optimize(b.build(y), residual=True, winograd=True)
    assert {n.op for n in g.nodes} >= {"conv2d_winograd", "conv2d_add"}
    plan = ht.compile(g, Machine.parse("cpu:1"), optimize=False)
    ex = Executor(plan)
    assert ex.intra_op_threads == 2
    xs = inputs_for(g)
    with small_pieces():
        np.testing.assert_array_equal(ex.run(xs)[0], reference_run(g, xs, ex)[0])


# ----------------------------------------------------------------------------------------------
# channel bands: depthwise convolutions and pools


@settings(max_examples=20, deadline=None)
@given(n=st.integers(1, 2), c=st.integers(1, 40), mult=st.integers(1, 2), h=st.integers(3, 12),
       s=st.integers(1, 2), threads=st.integers(2, 4))
def test_depthwise_and_pools_cut_into_channel_bands(n, c, mult, h, s, threads):
    """Cut into channel bands (any work size here), each equals its one-thread run exactly."""
    saved = nn.CHANNEL_SPLIT_MIN_TAPS
    nn.CHANNEL_SPLIT_MIN_TAPS = 1
    try:
        x, w = np.random.rand(n, c, h, h).astype(np.float32), np.random.rand(c * mult, 1, 3, 3)
        w = w.astype(np.float32)
        conv = dict(strides=(s, s), pads=(1, 1, 1, 1), groups=c)
        pool = dict(kernel_shape=(3, 3), strides=(s, s), pads=(1, 0, 1, 1))
        cases = [("conv2d", [x, w], conv), ("max_pool2d", [x], pool), ("avg_pool2d", [x], pool),
                 ("avg_pool2d", [x], dict(pool, count_include_pad=1, ceil_mode=1))]
        with tpool.intra_op(threads):
            assert (nn._channel_bands(np, c, 10 ** 6) > 1) == (c >= 16)
        assert nn._channel_bands(np, c, 10 ** 6) == 1  # no intra-op threads outside a run
        for name, ins, attrs in cases:
            got = run_kernel(name, ins, threads, **attrs)
            np.testing.assert_array_equal(got, run_kernel(name, ins, 1, **attrs))
        np.testing.assert_allclose(run_kernel("conv2d", [x, w], threads, **conv),
                                   ref_conv(x, w, **conv), rtol=1e-5, atol=1e-5)
    finally:
        nn.CHANNEL_SPLIT_MIN_TAPS = saved


@settings(max_examples=15, deadline=None)
@given(n=st.integers(1, 2), o=st.integers(1, 70), h=st.integers(3, 16), threads=st.integers(2, 4),
       bias=st.booleans())
def test_stacked_tap_conv_bands_equal_one_thread(n, o, h, threads, bias):
    """The stacked-tap conv cuts output channels into bands by shape only: any thread count
    gives the one-thread result bit for bit."""
    saved = nn.STACKED_MIN_PIXELS
    nn.STACKED_MIN_PIXELS = 1
    try:
        x = np.random.rand(n, 2 * o, h, h).astype(np.float32)
        w = np.random.rand(o, 2 * o, 3, 3).astype(np.float32)
        ins = [x, w, np.random.rand(o).astype(np.float32)] if bias else [x, w]
        attrs = dict(pads=(1, 1, 1, 1), activation="relu")
        got = run_kernel("conv2d", ins, threads, **attrs)
        np.testing.assert_array_equal(got, run_kernel("conv2d", ins, 1, **attrs))
        want = np.maximum(ref_conv(*ins, pads=(1, 1, 1, 1)), 0)
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-3)
    finally:
        nn.STACKED_MIN_PIXELS = saved
