"""Shape ops and getitem against NumPy, eager and traced."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from op_reference import SETTINGS, assert_matches, rand, run_modes, seeds, shapes

import hetero as ht
from hetero import reference
from hetero.ops.registry import REGISTRY

ops = ht.ops


@st.composite
def shape_and_reshape(draw):
    shape = draw(shapes())
    size = math.prod(shape)
    # a random factorisation of size (or any shape with a zero when size is 0)
    if size == 0:
        new = draw(st.permutations([0] + draw(st.lists(st.integers(0, 3), max_size=2))))
    else:
        new, rest = [], size
        for p in (2, 3, 2, 5):
            if rest % p == 0 and draw(st.booleans()):
                new.append(p)
                rest //= p
        new.append(rest)
        new = draw(st.permutations(new))
        if draw(st.booleans()):
            new[draw(st.integers(0, len(new) - 1))] = -1
    return shape, tuple(new)


@SETTINGS
@given(case=shape_and_reshape(), seed=seeds)
def test_reshape(case, seed):
    shape, new = case
    x = rand(seed, shape)
    assert_matches(lambda t: ops.reshape(t, new), lambda a: a.reshape(new), x, exact=True)
    assert_matches(lambda t: t.reshape(*new), lambda a: a.reshape(new), x, exact=True)


def test_reshape_of_a_strided_input():
    x = rand(0, (4, 6))

    def fn(t):
        return ops.reshape(ops.transpose(t), (3, 8))

    assert_matches(fn, lambda a: a.T.reshape(3, 8), x, exact=True)


@SETTINGS
@given(shape=shapes(), data=st.data(), seed=seeds)
def test_transpose(shape, data, seed):
    perm = tuple(data.draw(st.permutations(range(len(shape)))))
    x = rand(seed, shape)
    assert_matches(lambda t: ops.transpose(t, perm), lambda a: a.transpose(perm), x, exact=True)
    assert_matches(lambda t: t.T, lambda a: a.T, x, exact=True)


@SETTINGS
@given(shape=shapes(min_dims=1), data=st.data(), seed=seeds)
def test_concat(shape, data, seed):
    axis = data.draw(st.integers(-len(shape), len(shape) - 1))
    n = data.draw(st.integers(1, 3))
    xs = []
    for i in range(n):
        s = list(shape)
        s[axis] = data.draw(st.integers(0, 3))
        xs.append(rand(seed + i, tuple(s)))
    assert_matches(lambda *ts: ops.concat(*ts, axis=axis),
                   lambda *a: np.concatenate(a, axis=axis), *xs, exact=True)


@SETTINGS
@given(shape=shapes(min_dims=1), data=st.data(), seed=seeds)
def test_split(shape, data, seed):
    axis = data.draw(st.integers(-len(shape), len(shape) - 1))
    dim = shape[axis]
    cuts = sorted(data.draw(st.lists(st.integers(0, dim), max_size=3)))
    sizes = tuple(np.diff([0, *cuts, dim]).tolist())
    x = rand(seed, shape)
    outs = assert_matches(lambda t: ops.split(t, sizes, axis=axis),
                          lambda a: np.split(a, cuts, axis=axis), x, exact=True)
    assert len(outs) == len(sizes)


def test_split_into_equal_pieces():
    x = rand(0, (7, 2))
    parts = ops.split(x, 3)
    assert [p.shape for p in parts] == [(3, 2), (3, 2), (1, 2)]
    np.testing.assert_array_equal(np.concatenate([p.numpy() for p in parts]), x)


@st.composite
def slice_case(draw):
    shape = draw(shapes(min_dims=1))
    ndim = len(shape)
    axes = draw(st.lists(st.integers(-ndim, ndim - 1), min_size=1, max_size=ndim,
                         unique_by=lambda a: a % ndim))
    big = st.integers(-8, 8) | st.sampled_from([2**31 - 1, -(2**31), 2**63 - 1, -(2**63)])
    starts = [draw(big) for _ in axes]
    ends = [draw(big) for _ in axes]
    steps = [draw(st.integers(-3, 3).filter(bool)) for _ in axes]
    return shape, starts, ends, axes, steps


def _onnx_slice_reference(a, starts, ends, axes, steps):
    """ONNX Slice written from the operator spec's text, as gathers of explicit index lists."""
    for start, end, axis, step in zip(starts, ends, axes, steps):
        dim = a.shape[axis]
        start = start + dim if start < 0 else start
        end = end + dim if end < 0 else end
        if step > 0:
            start, end = np.clip(start, 0, dim), np.clip(end, 0, dim)
        else:
            start, end = np.clip(start, 0, dim - 1), np.clip(end, -1, dim - 1)
        idx = list(range(int(start), int(end), step)) if dim else []
        a = np.take(a, np.array(idx, dtype=np.int64), axis=axis)
    return a


@SETTINGS
@given(case=slice_case(), seed=seeds, give_axes=st.booleans())
def test_slice(case, seed, give_axes):
    shape, starts, ends, axes, steps = case
    x = rand(seed, shape)
    if not give_axes:  # without axes: the first len(starts) axes
        axes = list(range(len(starts)))
    assert_matches(lambda t: ops.slice(t, starts, ends, axes if give_axes else None, steps),
                   lambda a: _onnx_slice_reference(a, starts, ends, axes, steps), x, exact=True)


def test_slice_clamps_like_onnx_not_like_python():
    # ONNX clamps a negative-step start below 0 up to 0; Python would give an empty result
    x = np.array([5.0], np.float32)
    assert ops.slice(x, [-2], [-2], steps=[-1]).numpy().tolist() == [5.0]
    assert ops.slice(x, [0], [2**63 - 1]).numpy().tolist() == [5.0]


@SETTINGS
@given(shape=shapes(), data=st.data(), seed=seeds)
def test_flatten(shape, data, seed):
    axis = data.draw(st.integers(-len(shape), len(shape)))
    x = rand(seed, shape)
    a = axis + len(shape) if axis < 0 else axis  # ONNX: -r means 0
    want = (math.prod(shape[:a]), math.prod(shape[a:]))
    assert_matches(lambda t: ops.flatten(t, axis), lambda v: v.reshape(want), x, exact=True)


@SETTINGS
@given(shape=shapes(min_side=0, max_side=2), data=st.data(), seed=seeds)
def test_squeeze_unsqueeze(shape, data, seed):
    x = rand(seed, shape)
    ones = [i for i, d in enumerate(shape) if d == 1]
    assert_matches(ops.squeeze, np.squeeze, x, exact=True)
    if ones:
        axes = data.draw(st.lists(st.sampled_from(ones), min_size=1, unique=True))
        axes = [a - len(shape) if data.draw(st.booleans()) else a for a in axes]
        assert_matches(lambda t: ops.squeeze(t, axes), lambda v: np.squeeze(v, tuple(axes)), x,
                       exact=True)
    rank = len(shape) + data.draw(st.integers(1, 2))
    new = data.draw(st.lists(st.integers(-rank, rank - 1), min_size=rank - len(shape),
                             max_size=rank - len(shape), unique_by=lambda a: a % rank))
    assert_matches(lambda t: ops.unsqueeze(t, new), lambda v: np.expand_dims(v, tuple(new)), x,
                   exact=True)


@st.composite
def pad_case(draw):
    shape = draw(shapes(max_dims=3))
    mode = draw(st.sampled_from(["constant", "reflect", "edge"]))
    begins, ends = [], []
    for d in shape:
        if mode == "constant":
            lo = -(d // 2)  # crops of both ends together never pass the axis
            b, e = draw(st.integers(lo, 3)), draw(st.integers(lo, 3))
        elif mode == "reflect":
            b = draw(st.integers(0, max(d - 1, 0)))
            e = draw(st.integers(0, max(d - 1, 0)))
        else:
            b, e = (draw(st.integers(0, 3)), draw(st.integers(0, 3))) if d else (0, 0)
        begins.append(b)
        ends.append(e)
    return shape, tuple(begins + ends), mode


@SETTINGS
@given(case=pad_case(), seed=seeds, value=st.sampled_from([0.0, -1.5]))
def test_pad(case, seed, value):
    shape, pads, mode = case
    x = rand(seed, shape)
    n = len(shape)

    def ref(a):
        if n == 0:
            return a  # np.pad refuses an empty pad_width
        crop = tuple(slice(max(-pads[i], 0), a.shape[i] - max(-pads[i + n], 0)) for i in range(n))
        width = [(max(pads[i], 0), max(pads[i + n], 0)) for i in range(n)]
        if mode == "constant":
            return np.pad(a[crop], width, mode="constant", constant_values=value)
        return np.pad(a[crop], width, mode=mode)

    assert_matches(lambda t: ops.pad(t, pads, mode, value), ref, x, exact=True)


@SETTINGS
@given(shape=shapes(min_dims=1, min_side=1), ishape=shapes(max_dims=2), data=st.data(),
       seed=seeds, itype=st.sampled_from([np.int64, np.int32]))
def test_gather(shape, ishape, data, seed, itype):
    axis = data.draw(st.integers(-len(shape), len(shape) - 1))
    dim = shape[axis]
    idx = rand(seed + 1, ishape, itype, -dim, dim - 1)
    x = rand(seed, shape)
    assert_matches(lambda t, i: ops.gather(t, i, axis), lambda a, i: np.take(a, i, axis=axis),
                   x, idx, exact=True)


@SETTINGS
@given(shape=shapes(max_dims=3, max_side=5), data=st.data(), seed=seeds)
def test_getitem(shape, data, seed):
    key = data.draw(hnp.basic_indices(shape, min_dims=0, allow_newaxis=True, allow_ellipsis=True))
    x = rand(seed, shape)
    (out,) = assert_matches(lambda t: t[key], lambda a: np.asarray(a[key]), x, exact=True)
    assert out.shape == np.asarray(x[key]).shape


def test_getitem_lowers_to_slice_and_reshape():
    graph = ht.function(lambda t: t[1, ::-2, None]).graph(rand(0, (3, 5)))
    assert [n.op for n in graph.nodes] == ["input", "slice", "reshape"]
    assert graph.output_specs[0].shape == (3, 1)
    graph = ht.function(lambda t: t[:, ...]).graph(rand(0, (3, 5)))
    assert [n.op for n in graph.nodes] == ["input"]  # a full index is the tensor itself


def test_getitem_with_an_integer_array_gathers():
    x = rand(0, (4, 3))
    assert_matches(lambda t: t[np.array([3, -1, 0])], lambda a: a[[3, -1, 0]], x, exact=True)
    assert_matches(lambda t: t[[1, 1]], lambda a: a[[1, 1]], x, exact=True)


@SETTINGS
@given(shape=shapes(min_dims=1, max_dims=3, min_side=1, max_side=4), data=st.data(), seed=seeds)
def test_getitem_mixing_basic_indices_and_one_integer_array(shape, data, seed):
    """NumPy's rule: the array's dimensions replace the axis it indexes, or go first when a slice,
    ``...`` or ``None`` separates it from an integer index."""
    axis = data.draw(st.integers(0, len(shape) - 1))
    rest = shape[:axis] + shape[axis + 1:]
    basic = data.draw(hnp.basic_indices(rest, min_dims=0, allow_newaxis=True,
                                        allow_ellipsis=False))
    basic = basic if isinstance(basic, tuple) else (basic,)
    basic += (slice(None),) * (len(rest) - sum(k is not None for k in basic))
    pos = consumed = 0
    while consumed < axis:  # the array goes where the basic part reaches axis `axis`
        consumed += basic[pos] is not None
        pos += 1
    nones = 0
    while pos + nones < len(basic) and basic[pos + nones] is None:
        nones += 1
    pos += data.draw(st.integers(0, nones))
    dim = shape[axis]
    idx = rand(seed + 1, data.draw(shapes(max_dims=2, max_side=3)), np.int64, -dim, dim - 1)
    key = basic[:pos] + (idx,) + basic[pos:]
    x = rand(seed, shape)
    want = np.asarray(x[key])
    (out,) = assert_matches(lambda t: t[key], lambda a: np.asarray(a[key]), x, exact=True)
    assert out.shape == want.shape


def test_getitem_refuses_two_integer_arrays():
    with pytest.raises(ht.ShapeError, match="at most one integer array"):
        ht.tensor(np.zeros((2, 3), np.float32))[[0, 1], [1, 2]]


def test_iterating_a_tensor():
    x = rand(0, (3, 2))
    rows = list(ht.tensor(x))
    assert len(rows) == 3
    np.testing.assert_array_equal(rows[2].numpy(), x[2])


def test_constant_eager_and_traced():
    c = ops.constant([1.0, 2.0])
    assert not c.is_traced and c.dtype == np.float32
    assert ops.constant(np.arange(3)).dtype == np.int64

    def fn(t):
        return t * ops.constant(np.array([2.0, 3.0], np.float32))

    x = np.ones((2, 2), np.float32)
    graph = ht.function(fn).graph(x)
    assert "constant" in [n.op for n in graph.nodes]
    assert reference.run(graph, [x])[0].tolist() == [[2, 3], [2, 3]]
    eager, traced = run_modes(fn, x)
    np.testing.assert_array_equal(eager[0], traced[0])


# ----------------------------------------------------------------------------------------------
# Errors


@pytest.mark.parametrize("call, message", [
    (lambda x: ops.reshape(x, (4, 2)), r"cannot reshape \(2, 3\) \(size 6\) into \(4, 2\)"),
    (lambda x: ops.reshape(x, (-1, -1)), "at most one -1"),
    (lambda x: ops.reshape(x, (4, -1)), "cannot reshape"),
    (lambda x: ops.transpose(x, (0, 0)), "not a permutation"),
    (lambda x: ops.concat(x, ops.transpose(x), axis=0), "does not match input 0"),
    (lambda x: ops.split(x, (1, 1), axis=1), "add up to 3"),
    (lambda x: ops.slice(x, [0], [1], steps=[0]), "step cannot be 0"),
    (lambda x: ops.slice(x, [0], [1], axes=[2]), "slice axis 2 is out of range"),
    (lambda x: ops.squeeze(x, (0,)), "cannot remove axis 0"),
    (lambda x: ops.unsqueeze(x, (0, -4)), "repeat an axis"),
    (lambda x: ops.pad(x, (1, 1)), "2 \\* rank = 4"),
    (lambda x: ops.pad(x, (0, 3, 0, 0), mode="reflect"), "smaller than the axis"),
    (lambda x: ops.pad(x, (0, 0, 0, 0), mode="wrap"), "mode must be one of"),
    (lambda x: ops.pad(x, (-3, 0, 0, 0)), "below zero"),
    (lambda x: ops.gather(x, np.array([0.0])), "indices must be integers"),
    (lambda x: ops.flatten(x, 3), "out of range"),
    (lambda x: x[2], "index 2 is out of bounds for axis 0 with size 2"),
    (lambda x: x[0, 0, 0], "too many indices"),
    (lambda x: x[..., ...], "single ellipsis"),
    (lambda x: x["a"], "unsupported index"),
])
def test_bad_inputs(call, message):
    x = ht.tensor(np.zeros((2, 3), np.float32))
    with pytest.raises(ht.ShapeError, match=message):
        call(x)


def test_traced_error_names_the_user_line():
    @ht.function
    def f(a):
        return ops.reshape(a, (5, 5))

    with pytest.raises(ht.ShapeError,
                       match=r"reshape_\d+ \(reshape, from test_ops_shape\.py:\d+\): cannot"):
        f.graph(np.ones((2, 3), np.float32))


def test_registry_entries_and_cost():
    names = ["reshape", "transpose", "concat", "split", "slice", "flatten", "squeeze",
             "unsqueeze", "pad", "gather"]
    for name in names:
        op = REGISTRY[name]
        assert op.op_class == "data"
        assert getattr(ops, name).__doc__ and name in ops.shape.__all__
    spec = ht.TensorSpec((4, 4), np.float32)
    op = REGISTRY["transpose"]
    cost = op.cost_of((spec,), (spec,), op.normalize_attrs({}))
    assert cost.flops == 0 and cost.bytes == 128


# ----------------------------------------------------------------------------------------------
# onnxruntime as the external reference for the ONNX semantics


def _i64(values):
    return np.asarray(values, dtype=np.int64)


@SETTINGS
@given(case=slice_case(), seed=seeds)
def test_slice_matches_onnxruntime(case, seed):
    pytest.importorskip("onnxruntime")
    from op_reference import run_onnxruntime

    shape, starts, ends, axes, steps = case
    # onnxruntime reads an INT_MAX end with a negative step as "through index 0", against the
    # spec's clamping to dim - 1 (and against ONNX's own shape inference); we follow the spec
    assume(not any(st_ < 0 and e in (2**31 - 1, 2**63 - 1) for e, st_ in zip(ends, steps)))
    x = rand(seed, shape)
    (want,) = run_onnxruntime("Slice", [x], constants={
        "starts": _i64(starts), "ends": _i64(ends), "axes": _i64(axes), "steps": _i64(steps)})
    np.testing.assert_array_equal(ops.slice(x, starts, ends, axes, steps).numpy(), want)


@SETTINGS
@given(case=pad_case(), seed=seeds)
def test_pad_matches_onnxruntime(case, seed):
    pytest.importorskip("onnxruntime")
    from op_reference import run_onnxruntime

    shape, pads, mode = case
    assume(shape != ())  # onnxruntime refuses to pad a 0-d tensor
    x = rand(seed, shape)
    (want,) = run_onnxruntime("Pad", [x], {"mode": mode}, constants={
        "pads": _i64(pads), "value": np.asarray(2.5, np.float32)})
    np.testing.assert_array_equal(ops.pad(x, pads, mode, 2.5).numpy(), want)


@pytest.mark.parametrize("shape, indices, axis", [
    ((5, 3), [[0, -1], [4, -5]], 0),
    ((2, 4, 3), [-1, 1, -4], 1),
    ((2, 4), 3, -1),
    ((3,), [], 0),
])
def test_gather_matches_onnxruntime(shape, indices, axis):
    pytest.importorskip("onnxruntime")
    from op_reference import run_onnxruntime

    x = rand(0, shape)
    idx = _i64(indices)
    (want,) = run_onnxruntime("Gather", [x, idx], {"axis": axis})
    np.testing.assert_array_equal(ops.gather(x, idx, axis).numpy(), want)


@pytest.mark.parametrize("shape, axis, sizes", [((7, 2), 0, (3, 0, 4)), ((2, 6), -1, (6,))])
def test_split_and_flatten_match_onnxruntime(shape, axis, sizes):
    pytest.importorskip("onnxruntime")
    from op_reference import run_onnxruntime

    x = rand(0, shape)
    want = run_onnxruntime("Split", [x], {"axis": axis}, constants={"split": _i64(sizes)},
                           n_outputs=len(sizes))
    for got, w in zip(ops.split(x, sizes, axis), want):
        np.testing.assert_array_equal(got.numpy(), w)
    for a in range(-len(shape), len(shape) + 1):
        (w,) = run_onnxruntime("Flatten", [x], {"axis": a})
        np.testing.assert_array_equal(ops.flatten(x, a).numpy(), w)


def test_hostile_getitem_cast_and_empty_pool_are_shape_errors():
    x = ht.tensor(np.ones((2, 3), np.float32))
    with pytest.raises(ht.ShapeError, match="slice step cannot be zero"):
        x[::0]
    for dtype in (np.complex64, object, "U"):
        with pytest.raises(ht.ShapeError, match=r"cast \(cast, from test_ops_shape.py"):
            ops.cast(x, dtype)
    with pytest.raises(ht.ShapeError, match="maximum of an empty map"):
        ops.global_max_pool(ht.tensor(np.ones((1, 2, 0, 0), np.float32)))
    with pytest.raises(TypeError, match="rank-0 integer tensor"):
        [1, 2, 3][ht.tensor(np.float32(1))]
    assert [1, 2, 3][ht.tensor(np.int64(1))] == 2
