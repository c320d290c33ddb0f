"""Shared helpers for the op tests: run an op eagerly and traced, compare with a NumPy reference.

``run_modes(fn, *arrays)`` returns the eager result and the result of the traced graph run by the
sequential reference executor (after the IR verifier has checked the graph), so every op test checks
both modes against one float64 NumPy reference.
"""

from __future__ import annotations

import numpy as np
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import hetero as ht
from hetero import reference

#: hypothesis settings for every op test: modest, no deadline (the first call traces)
SETTINGS = settings(max_examples=30, deadline=None)

seeds = st.integers(0, 2**32 - 1)


def shapes(min_dims: int = 0, max_dims: int = 4, min_side: int = 0, max_side: int = 4):
    """Shapes including size-1 and (by default) empty dimensions."""
    return hnp.array_shapes(min_dims=min_dims, max_dims=max_dims, min_side=min_side,
                            max_side=max_side)


def broadcast_pair(min_side: int = 0):
    """Two mutually broadcastable shapes."""
    return hnp.mutually_broadcastable_shapes(num_shapes=2, min_dims=0, max_dims=4,
                                             min_side=min_side, max_side=4)


def rand(seed: int, shape, dtype=np.float32, low: float = -3.0, high: float = 3.0) -> np.ndarray:
    """Reproducible random array of ``shape``."""
    rng = np.random.default_rng(seed)
    dtype = np.dtype(dtype)
    if dtype.kind == "b":
        out = rng.random(shape) < 0.5
    elif dtype.kind in "iu":
        out = rng.integers(int(low), int(high) + 1, size=shape)
    else:
        out = rng.uniform(low, high, size=shape)
    return np.asarray(out, dtype=dtype)  # a 0-d array, never a NumPy scalar


def _as_list(out):
    return list(out) if isinstance(out, (tuple, list)) else [out]


def run_modes(fn, *arrays: np.ndarray) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """(eager outputs, traced outputs) of ``fn`` on ``arrays``, as NumPy arrays."""
    eager = [o.numpy() for o in _as_list(fn(*[ht.tensor(a, dtype=a.dtype) for a in arrays]))]
    graph = ht.function(fn).graph(*arrays)
    ht.check(graph)
    traced = reference.run(graph, list(arrays))
    return eager, traced


def assert_matches(fn, ref, *arrays: np.ndarray, rtol: float = 1e-5, atol: float = 1e-6,
                   exact: bool = False) -> list[np.ndarray]:
    """Eager and traced ``fn`` equal ``ref`` on float64 copies of ``arrays`` (cast back to the
    op's dtype); both modes agree with each other bit for bit."""
    eager, traced = run_modes(fn, *arrays)
    hi = [a.astype(np.float64) if a.dtype.kind == "f" else a for a in arrays]
    want = _as_list(ref(*hi))
    assert len(eager) == len(want) == len(traced)
    for e, t, w in zip(eager, traced, want):
        w = np.asarray(w)
        assert e.shape == w.shape, (e.shape, w.shape)
        assert e.dtype == t.dtype
        np.testing.assert_array_equal(e, t)
        if exact or e.dtype.kind not in "fc":
            np.testing.assert_array_equal(e, w.astype(e.dtype))
        else:
            np.testing.assert_allclose(e, w, rtol=rtol, atol=atol)
    return eager


def run_onnxruntime(op_type: str, inputs: list[np.ndarray], attrs: dict | None = None,
                    constants: dict[str, np.ndarray] | None = None, n_outputs: int = 1,
                    opset: int = 18) -> list[np.ndarray]:
    """Outputs of one ONNX node run by onnxruntime: the external reference for ONNX semantics.

    Args:
        inputs: runtime inputs, named x0, x1, ...
        constants: extra inputs given as initializers (ONNX's starts/ends/pads/axes inputs), in
            the order the operator takes them after ``inputs``; a None value skips an optional
            input.
    """
    import onnxruntime as ort
    from onnx import helper, numpy_helper

    names = [f"x{i}" for i in range(len(inputs))]
    inits = []
    for name, arr in (constants or {}).items():
        if arr is None:
            names.append("")
            continue
        names.append(name)
        inits.append(numpy_helper.from_array(np.asarray(arr), name))
    outs = [f"y{i}" for i in range(n_outputs)]
    node = helper.make_node(op_type, names, outs, **(attrs or {}))
    graph = helper.make_graph(
        [node], "one_op",
        [helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(a.dtype), a.shape)
         for n, a in zip(names, inputs)],
        [helper.make_empty_tensor_value_info(o) for o in outs],
        initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, dict(zip(names, inputs)))
