"""Models with symbolic dimensions: hetero.onnx.compile specialises per input signature.

Models are built here with onnx.helper, with symbolic batch and sequence dimensions, as the
torch exporters write them with ``dynamic_axes``; every result is compared with onnxruntime.
"""

from __future__ import annotations

import logging
import warnings

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from onnx import TensorProto, helper, numpy_helper  # noqa: E402

import hetero.onnx as ho  # noqa: E402
from hetero.errors import ModelError  # noqa: E402

F = TensorProto.FLOAT
MACHINES = ["cpu:2", "cpu:2,sim:1"]


def ort_run(model, feeds):
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), opts,
                                providers=["CPUExecutionProvider"]).run(None, feeds)


def dynamic_cnn():
    """conv -> relu -> global pool -> flatten -> gemm, input ``batch x 3 x 16 x 16``."""
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((8, 3, 3, 3)).astype(np.float32), "w")
    fc = numpy_helper.from_array(rng.standard_normal((5, 8)).astype(np.float32), "fc")
    b = numpy_helper.from_array(rng.standard_normal(5).astype(np.float32), "b")
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1], name="conv"),
             helper.make_node("Relu", ["c"], ["r"], name="relu"),
             helper.make_node("GlobalAveragePool", ["r"], ["p"], name="pool"),
             helper.make_node("Flatten", ["p"], ["f"], name="flat"),
             helper.make_node("Gemm", ["f", "fc", "b"], ["y"], transB=1, name="fc")]
    graph = helper.make_graph(
        nodes, "dyn_cnn", [helper.make_tensor_value_info("x", F, ["batch", 3, 16, 16])],
        [helper.make_tensor_value_info("y", F, ["batch", 5])], initializer=[w, fc, b])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def dynamic_attention():
    """Scores of ``x @ x^T`` over a symbolic batch and sequence, a softmax, then a Reshape whose
    target is computed from Shape (it folds anew for every specialisation), and a mask input
    that shares the ``seq`` dimension."""
    nodes = [helper.make_node("Transpose", ["x"], ["xt"], perm=[0, 2, 1]),
             helper.make_node("MatMul", ["x", "xt"], ["s"]),
             helper.make_node("Add", ["s", "mask"], ["sm"]),
             helper.make_node("Softmax", ["sm"], ["a"], axis=-1),
             helper.make_node("MatMul", ["a", "x"], ["o"]),
             helper.make_node("Shape", ["x"], ["shape"]),
             helper.make_node("Constant", [], ["start"],
                              value=numpy_helper.from_array(np.array([0], np.int64))),
             helper.make_node("Constant", [], ["end"],
                              value=numpy_helper.from_array(np.array([1], np.int64))),
             helper.make_node("Slice", ["shape", "start", "end"], ["b"]),
             helper.make_node("Constant", [], ["minus1"],
                              value=numpy_helper.from_array(np.array([-1], np.int64))),
             helper.make_node("Concat", ["b", "minus1"], ["target"], axis=0),
             helper.make_node("Reshape", ["o", "target"], ["y"])]
    graph = helper.make_graph(
        nodes, "dyn_attn",
        [helper.make_tensor_value_info("x", F, ["batch", "seq", 8]),
         helper.make_tensor_value_info("mask", F, ["seq", "seq"])],
        [helper.make_tensor_value_info("y", F, ["batch", None])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("machine", MACHINES)
def test_a_dynamic_batch_model_runs_at_batch_1_and_4_from_one_compile(machine, caplog):
    proto = dynamic_cnn()
    model = ho.compile(proto, machine)
    assert model.plans == {}  # nothing to compile before a shape is known
    rng = np.random.default_rng(1)
    with caplog.at_level(logging.INFO, logger="hetero.onnx"):
        for batch in (1, 4, 1):
            x = rng.standard_normal((batch, 3, 16, 16)).astype(np.float32)
            (got,) = model(x)
            (want,) = ort_run(proto, {"x": x})
            assert got.shape == (batch, 5)
            np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    assert len(model.plans) == 2  # batch 1 compiled once, reused on the third run
    messages = [r.getMessage() for r in caplog.records if r.name == "hetero.onnx"]
    assert len(messages) == 2
    assert "first run" in messages[0]
    assert "input x: shape (1, 3, 16, 16) -> (4, 3, 16, 16) (batch 1 -> 4)" in messages[1]


@pytest.mark.parametrize("machine", MACHINES)
def test_symbolic_batch_and_sequence_with_a_shape_computed_reshape(machine):
    proto = dynamic_attention()
    model = ho.compile(proto, machine)
    rng = np.random.default_rng(2)
    for batch, seq in ((1, 5), (3, 7), (2, 1)):
        x = rng.standard_normal((batch, seq, 8)).astype(np.float32)
        mask = np.triu(np.full((seq, seq), -1e9, np.float32), 1)
        (got,) = model.run({"x": x, "mask": mask})
        (want,) = ort_run(proto, {"x": x, "mask": mask})
        assert got.shape == want.shape == (batch, seq * 8)
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    assert len(model.plans) == 3


def test_inputs_are_checked_against_the_declared_shapes_and_dims():
    model = ho.compile(dynamic_attention(), "cpu:1")
    x = np.zeros((2, 5, 8), np.float32)
    with pytest.raises(ModelError, match=r"input 'mask': dimension 'seq' is 4 here but 5 in "
                                         r"input 'x'"):
        model(x, np.zeros((4, 4), np.float32))
    with pytest.raises(ModelError, match=r"input 'x' has shape batchxseqx8: dimension 2 is 8"):
        model(np.zeros((2, 5, 7), np.float32), np.zeros((5, 5), np.float32))
    with pytest.raises(ModelError, match=r"input 'x' has shape batchxseqx8 \(rank 3\)"):
        model(np.zeros((5, 8), np.float32), np.zeros((5, 5), np.float32))
    with pytest.raises(ModelError, match=r"input 'x' is float32, got an array of float64"):
        model(np.zeros((2, 5, 8)), np.zeros((5, 5), np.float32))
    with pytest.raises(ModelError, match=r"takes 2 inputs \(x, mask\), got 1"):
        model(x)
    with pytest.raises(ModelError, match=r"missing mask"):
        model({"x": x})
    assert model.plans == {}  # nothing was compiled for refused inputs


def test_load_says_how_to_give_symbolic_dimensions():
    proto = dynamic_cnn()
    with pytest.raises(ModelError, match=r"symbolic dimension 'batch'.*dims=\{'batch': N\}.*"
                                         r"hetero.onnx.compile\(\)"):
        ho.load(proto)
    graph = ho.load(proto, dims={"batch": 2})
    assert graph.node("x").outputs[0].shape == (2, 3, 16, 16)
    assert ho.load(proto, input_shapes={"x": (3, 3, 16, 16)}).node("x").outputs[0].shape == \
        (3, 3, 16, 16)
    with pytest.raises(ModelError, match=r"dims\['batch'\] must be a non-negative int"):
        ho.load(proto, dims={"batch": -1})
    assert ho.input_dims(proto) == {"x": ("batch", 3, 16, 16)}
    assert ho.input_dims(dynamic_attention()) == {"x": ("batch", "seq", 8),
                                                  "mask": ("seq", "seq")}


def test_onnx_backend_prepare_works_on_a_symbolic_model():
    proto = dynamic_cnn()
    rep = ho.prepare(proto, machine="cpu:2")
    for batch in (2, 3):
        x = np.random.default_rng(batch).standard_normal((batch, 3, 16, 16)).astype(np.float32)
        (got,) = rep.run([x])
        np.testing.assert_allclose(got, ort_run(proto, {"x": x})[0], rtol=1e-4, atol=1e-5)
        (again,) = rep.run(x)
        np.testing.assert_array_equal(again, got)


def test_many_signatures_warn_once_past_max_plans(monkeypatch):
    monkeypatch.setattr(ho.Model, "max_plans", 2)
    model = ho.compile(dynamic_cnn(), "cpu:1")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for batch in (1, 2, 3):
            model(np.zeros((batch, 3, 16, 16), np.float32))
    texts = [str(w.message) for w in caught]
    assert len(texts) == 1 and "compiled for 3 input signatures" in texts[0]
    assert "(batch 1 -> 3)" in texts[0]  # the nearest signature compiled before
    assert caught[0].filename == __file__  # the warning points at the caller's line


def test_load_assuming_sizes_open_dimensions_from_the_given_inputs_or_the_default():
    proto = dynamic_attention()
    graph, assumed = ho.load_assuming(proto, input_shapes={"x": (2, 6, 8)})
    assert graph.node("mask").outputs[0].shape == (6, 6)
    assert assumed == {"mask": ((6, 6), {"seq": 6})}
    graph, assumed = ho.load_assuming(proto, default=3)
    assert assumed == {"x": ((3, 3, 8), {"batch": 3, "seq": 3}), "mask": ((3, 3), {"seq": 3})}
    graph, assumed = ho.load_assuming(dynamic_cnn(), input_shapes={"x": (5, 3, 16, 16)})
    assert assumed == {} and graph.node("x").outputs[0].shape == (5, 3, 16, 16)
