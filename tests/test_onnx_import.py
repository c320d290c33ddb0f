"""hetero.onnx.load: attribute mapping, constant folding, errors, external data; misc ops.

Every numeric check compares against onnxruntime (the models are built here with
onnx.helper) or against NumPy in float64.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from onnx import TensorProto, helper, numpy_helper  # noqa: E402

import hetero  # noqa: E402
import hetero.onnx as ho  # noqa: E402
from hetero import reference  # noqa: E402
from hetero.errors import ModelError  # noqa: E402

F = TensorProto.FLOAT


def make_model(nodes, inputs, outputs, inits=(), opset=17, name="m"):
    graph = helper.make_graph(nodes, name, inputs, outputs, initializer=list(inits))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def vi(name, shape, dtype=F):
    if shape is None:  # an output whose type the model leaves to inference
        return helper.make_empty_tensor_value_info(name)
    return helper.make_tensor_value_info(name, dtype, shape)


def init(name, array):
    return numpy_helper.from_array(np.asarray(array), name)


def ort_run(model, feeds):
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), opts,
                                providers=["CPUExecutionProvider"]).run(None, feeds)


def check_against_ort(model, feeds, rtol=1e-5):
    graph = ho.load(model)
    hetero.check(graph)
    got = reference.run(graph, [feeds[n] for n in graph.inputs])
    want = ort_run(model, feeds)
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g.shape == w.shape and g.dtype == w.dtype
        np.testing.assert_allclose(g, w, rtol=rtol, atol=1e-6)
    return graph


rng = np.random.default_rng(0)


def randn(*shape):
    return rng.standard_normal(shape).astype(np.float32)


# ----------------------------------------------------------------------------------------------
# Attribute mapping


@pytest.mark.parametrize("auto_pad", ["SAME_UPPER", "SAME_LOWER", "VALID"])
@pytest.mark.parametrize("stride", [1, 2])
def test_conv_and_pool_auto_pad_resolved_to_pads(auto_pad, stride):
    w = randn(4, 3, 3, 3)
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], auto_pad=auto_pad, strides=[stride, stride],
                         name="conv"),
        helper.make_node("MaxPool", ["c"], ["p"], auto_pad=auto_pad, kernel_shape=[2, 2],
                         strides=[stride, stride], name="pool"),
    ]
    model = make_model(nodes, [vi("x", [1, 3, 9, 10])], [vi("p", None)], [init("w", w)])
    graph = check_against_ort(model, {"x": randn(1, 3, 9, 10)})
    conv = next(n for n in graph.nodes if n.op == "conv2d")
    assert len(conv.attrs["pads"]) == 4


def test_gemm_batchnorm_lrn_softmax_model():
    nodes = [
        helper.make_node("BatchNormalization", ["x", "s", "b", "m", "v"], ["bn"], epsilon=1e-3),
        helper.make_node("LRN", ["bn"], ["l"], size=3, alpha=2e-4, beta=0.7, bias=1.5),
        helper.make_node("AveragePool", ["l"], ["ap"], kernel_shape=[3, 3], pads=[1, 1, 1, 1],
                         count_include_pad=1),
        helper.make_node("Flatten", ["ap"], ["f"], axis=1),
        helper.make_node("Gemm", ["f", "wt", "c"], ["g"], transB=1, alpha=0.5, beta=2.0),
        helper.make_node("Softmax", ["g"], ["y"], axis=1),
    ]
    inits = [init("s", rng.uniform(0.5, 1.5, 3).astype(np.float32)), init("b", randn(3)),
             init("m", randn(3)), init("v", rng.uniform(0.5, 1.5, 3).astype(np.float32)),
             init("wt", randn(7, 3 * 5 * 5)), init("c", randn(7))]
    model = make_model(nodes, [vi("x", [2, 3, 5, 5])], [vi("y", None)], inits)
    check_against_ort(model, {"x": randn(2, 3, 5, 5)})


@pytest.mark.parametrize("opset", [11, 13])
@pytest.mark.parametrize("axis", [0, 1, 2, -1])
def test_softmax_flattens_before_opset_13(opset, axis):
    """Before opset 13 Softmax normalises over all dims from `axis` on; from 13 over `axis`."""
    model = make_model([helper.make_node("Softmax", ["x"], ["y"], axis=axis)],
                       [vi("x", [2, 3, 4])], [vi("y", None)], opset=opset)
    check_against_ort(model, {"x": randn(2, 3, 4)})


def test_clip_inputs_become_attributes():
    nodes = [helper.make_node("Clip", ["x", "lo", "hi"], ["y"], name="clip")]
    model = make_model(nodes, [vi("x", [3, 4])], [vi("y", None)],
                       [init("lo", np.float32(-0.5)), init("hi", np.float32(0.25))])
    graph = check_against_ort(model, {"x": randn(3, 4)})
    clip = next(n for n in graph.nodes if n.op == "clip")
    assert clip.attrs["min"] == -0.5 and clip.attrs["max"] == 0.25
    assert len(clip.inputs) == 1


def test_reshape_zero_copies_dims_and_shape_subgraphs_fold():
    """Shape -> Gather -> Unsqueeze -> Concat -> Reshape folds to a single reshape node."""
    nodes = [
        helper.make_node("Shape", ["x"], ["s"]),
        helper.make_node("Gather", ["s", "zero"], ["n"], axis=0),
        helper.make_node("Unsqueeze", ["n", "ax"], ["n1"]),
        helper.make_node("Concat", ["n1", "minus1"], ["target"], axis=0),
        helper.make_node("Reshape", ["x", "target"], ["r"]),
        helper.make_node("Reshape", ["r", "keep"], ["y"]),
    ]
    inits = [init("zero", np.int64(0)), init("ax", np.array([0], np.int64)),
             init("minus1", np.array([-1], np.int64)), init("keep", np.array([0, 3, -1]))]
    model = make_model(nodes, [vi("x", [2, 3, 4, 5])], [vi("y", None)], inits)
    graph = check_against_ort(model, {"x": randn(2, 3, 4, 5)})
    ops = [n.op for n in graph.nodes if n.op not in ("input", "constant")]
    assert ops == ["reshape", "reshape"]
    assert graph.output_specs[0].shape == (2, 3, 20)


def test_constant_and_constant_of_shape_fold():
    nodes = [
        helper.make_node("Constant", [], ["shape"], value=numpy_helper.from_array(
            np.array([2, 3], np.int64))),
        helper.make_node("ConstantOfShape", ["shape"], ["ones"],
                         value=numpy_helper.from_array(np.array([1.5], np.float32))),
        helper.make_node("Add", ["x", "ones"], ["y"]),
    ]
    model = make_model(nodes, [vi("x", [2, 3])], [vi("y", None)])
    graph = check_against_ort(model, {"x": randn(2, 3)})
    assert [n.op for n in graph.nodes] == ["input", "constant", "add"]


def test_legacy_opset6_broadcast_and_sum_and_dropout():
    nodes = [
        helper.make_node("Add", ["x", "b"], ["a"], broadcast=1, axis=1),
        helper.make_node("Dropout", ["a"], ["d"], is_test=1),
        helper.make_node("Sum", ["d", "x", "a"], ["y"]),
    ]
    model = make_model(nodes, [vi("x", [2, 3, 4])], [vi("y", None)], [init("b", randn(3))],
                       opset=6)
    graph = ho.load(model)
    x = randn(2, 3, 4)
    b = numpy_helper.to_array(model.graph.initializer[0])
    a = x + b[None, :, None]
    np.testing.assert_allclose(reference.run(graph, [x])[0], a + x + a, rtol=1e-6)
    assert "add_n" in [n.op for n in graph.nodes]


def test_conv1d_runs_as_2d():
    w = randn(4, 3, 3)
    nodes = [helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 2], strides=[2])]
    model = make_model(nodes, [vi("x", [2, 3, 11])], [vi("y", None)], [init("w", w)])
    check_against_ort(model, {"x": randn(2, 3, 11)})


def test_graph_input_names_kept_and_where_names_onnx_node():
    nodes = [helper.make_node("Relu", ["image"], ["y"], name="first_relu")]
    model = make_model(nodes, [vi("image", [2, 2])], [vi("y", None)])
    graph = ho.load(model)
    assert graph.inputs == ("image",)
    relu = next(n for n in graph.nodes if n.op == "relu")
    assert relu.where == "m.onnx:first_relu"


def test_where_is_the_file_name(tmp_path):
    nodes = [helper.make_node("Relu", ["x"], ["y"], name="r")]
    path = tmp_path / "net.onnx"
    onnx.save(make_model(nodes, [vi("x", [2])], [vi("y", None)]), str(path))
    graph = ho.load(str(path))
    assert next(n for n in graph.nodes if n.op == "relu").where == "net.onnx:r"


# ----------------------------------------------------------------------------------------------
# Errors


def test_every_unsupported_op_listed_in_one_error():
    nodes = [
        helper.make_node("Relu", ["x"], ["a"], name="ok"),
        helper.make_node("Tan", ["a"], ["b"], name="tan1"),
        helper.make_node("Hardmax", ["b"], ["c"], name="hm"),
        helper.make_node("Tan", ["c"], ["y"], name="tan2"),
    ]
    model = make_model(nodes, [vi("x", [4])], [vi("y", None)], [init("k", np.array([2]))])
    with pytest.raises(ModelError) as e:
        ho.load(model)
    msg = str(e.value)
    assert "2 unsupported ONNX op type(s)" in msg
    assert "Tan: tan1, tan2" in msg and "Hardmax: hm" in msg


def test_unsupported_model_fails_in_prepare_before_running():
    nodes = [helper.make_node("Tan", ["x"], ["y"], name="c")]
    model = make_model(nodes, [vi("x", [4])], [vi("y", None)])
    with pytest.raises(ModelError, match="Tan: c"):
        ho.prepare(model)


def test_conv_without_spatial_axes_is_a_clear_error():
    nodes = [helper.make_node("Conv", ["x", "w"], ["y"], name="conv0d")]
    model = make_model(nodes, [vi("x", [1, 2])], [vi("y", None)], [init("w", randn(2, 2))])
    with pytest.raises(ModelError, match=r"m.onnx:conv0d \(Conv\).*rank-2.*spatial axis"):
        ho.load(model)


def test_shape_error_names_the_onnx_node():
    nodes = [helper.make_node("Add", ["x", "z"], ["y"], name="bad_add")]
    model = make_model(nodes, [vi("x", [2, 3]), vi("z", [4])], [vi("y", None)])
    with pytest.raises(ModelError, match="m.onnx:bad_add"):
        ho.load(model)


def test_malformed_models(tmp_path):
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\x08\x07garbage that is not a protobuf \xff\xff")
    with pytest.raises(ModelError, match="junk.onnx"):
        ho.load(str(junk))
    with pytest.raises(ModelError, match="no such model file"):
        ho.load(str(tmp_path / "missing.onnx"))
    with pytest.raises(ModelError):
        ho.load(42)
    dangling = make_model([helper.make_node("Relu", ["nowhere"], ["y"])], [vi("x", [2])],
                          [vi("y", None)])
    with pytest.raises(ModelError, match="not a valid ONNX model: .*input 'nowhere' of node"):
        ho.load(dangling)  # the checker's words
    no_graph = onnx.ModelProto()
    no_graph.ir_version = 8
    with pytest.raises(ModelError, match="no graph"):
        ho.load(no_graph)
    bad_attr = make_model([helper.make_node("Relu", ["x"], ["y"], bogus=3)], [vi("x", [2])],
                          [vi("y", [2])])
    with pytest.raises(ModelError, match="not a valid ONNX model"):
        ho.load(bad_attr)


def test_malformed_node_is_a_model_error_naming_it():
    """A node the checker lets through but the converter cannot use (Range with delta 0)."""
    nodes = [helper.make_node("Range", ["s", "l", "d"], ["r"], name="bad_range"),
             helper.make_node("Add", ["x", "r"], ["y"])]
    inits = [init("s", np.float32(0)), init("l", np.float32(4)), init("d", np.float32(0))]
    model = make_model(nodes, [vi("x", [4])], [vi("y", None)], inits)
    with pytest.raises(ModelError, match=r"m.onnx:bad_range \(Range\): delta is 0"):
        ho.load(model)


def test_symbolic_dims_need_input_shapes():
    model = make_model([helper.make_node("Relu", ["x"], ["y"])], [vi("x", ["batch", 3])],
                       [vi("y", None)])
    with pytest.raises(ModelError, match="input_shapes"):
        ho.load(model)
    graph = ho.load(model, input_shapes={"x": (5, 3)})
    assert graph.input_specs[0].shape == (5, 3)
    # the Backend compiles per input shape instead
    x = randn(7, 3)
    np.testing.assert_array_equal(ho.prepare(model).run([x])[0], np.maximum(x, 0))


def test_shape_parameter_given_as_graph_input_becomes_static():
    nodes = [helper.make_node("Reshape", ["x", "shape"], ["y"])]
    model = make_model(nodes, [vi("x", [2, 6]), vi("shape", [2], TensorProto.INT64)],
                       [vi("y", None)])
    with pytest.raises(ho.StaticInputError, match="shape") as e:
        ho.load(model)
    assert e.value.inputs == {"shape"}
    rep = ho.prepare(model)
    x = randn(2, 6)
    assert rep.run([x, np.array([3, 4])])[0].shape == (3, 4)
    assert rep.run([x, np.array([4, 3])])[0].shape == (4, 3)  # a new value recompiles


# ----------------------------------------------------------------------------------------------
# External data


def _save_external(tmp_path, location="weights.bin"):
    w = randn(4, 4)
    tensor = init("w", w)
    model = make_model([helper.make_node("MatMul", ["x", "w"], ["y"])], [vi("x", [2, 4])],
                       [vi("y", None)], [tensor])
    folder = tmp_path / "model"
    folder.mkdir()
    onnx.save_model(model, str(folder / "m.onnx"), save_as_external_data=True,
                    all_tensors_to_one_file=True, location=location, size_threshold=0)
    return folder, w


def _rewrite_location(folder, location):
    model = onnx.load(str(folder / "m.onnx"), load_external_data=False)
    for t in model.graph.initializer:
        for entry in t.external_data:
            if entry.key == "location":
                entry.value = location
    onnx.save_model(model, str(folder / "m.onnx"))


def test_external_data_inside_the_folder_loads(tmp_path):
    folder, w = _save_external(tmp_path)
    graph = ho.load(str(folder / "m.onnx"))
    x = randn(2, 4)
    np.testing.assert_allclose(reference.run(graph, [x])[0], x @ w, rtol=1e-5)


@pytest.mark.parametrize("location", ["../secret.bin", "/etc/passwd", "sub/../../secret.bin"])
def test_external_data_path_traversal_refused(tmp_path, location):
    folder, _ = _save_external(tmp_path)
    (tmp_path / "secret.bin").write_bytes(os.urandom(64))
    _rewrite_location(folder, location)
    with pytest.raises(ModelError, match="refusing external data location"):
        ho.load(str(folder / "m.onnx"))


def test_external_data_symlink_leaving_the_folder_refused(tmp_path):
    folder, _ = _save_external(tmp_path)
    outside = tmp_path / "outside.bin"
    os.replace(folder / "weights.bin", outside)
    os.symlink(outside, folder / "weights.bin")
    with pytest.raises(ModelError, match="outside the model's folder"):
        ho.load(str(folder / "m.onnx"))


@pytest.mark.parametrize("key,value,message", [
    ("offset", "-8", "invalid offset"), ("length", "abc", "invalid offset"),
    ("length", "4096", "holds 64 bytes; 4,096 bytes at offset 0 expected"),
])
def test_external_data_bad_offset_or_length(tmp_path, key, value, message):
    folder, _ = _save_external(tmp_path)
    model = onnx.load(str(folder / "m.onnx"), load_external_data=False)
    for t in model.graph.initializer:
        entries = {e.key: e for e in t.external_data}
        if key in entries:
            entries[key].value = value
        else:
            t.external_data.add(key=key, value=value)
    onnx.save_model(model, str(folder / "m.onnx"))
    with pytest.raises(ModelError, match=message):
        ho.load(str(folder / "m.onnx"))


def test_external_data_needs_a_folder(tmp_path):
    folder, _ = _save_external(tmp_path)
    model = onnx.load(str(folder / "m.onnx"), load_external_data=False)
    with pytest.raises(ModelError, match="load it from its path"):
        ho.load(model)


# ----------------------------------------------------------------------------------------------
# Backend API and compiled runs


def test_backend_run_node_and_supports_device():
    node = helper.make_node("Elu", ["x"], ["y"], alpha=0.5)
    x = randn(3, 4)
    (y,) = ho.Backend.run_node(node, [x])
    np.testing.assert_allclose(y, np.where(x > 0, x, 0.5 * np.expm1(x)), rtol=1e-6)
    assert ho.Backend.supports_device("CPU")
    assert not ho.Backend.supports_device("TPU")


def test_prepare_on_a_machine_with_a_simulated_gpu():
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Relu", ["h"], ["y"])]
    w = randn(16, 8)
    model = make_model(nodes, [vi("x", [4, 16])], [vi("y", None)], [init("w", w)])
    rep = ho.prepare(model, machine="cpu:2,sim:1")
    x = randn(4, 16)
    np.testing.assert_allclose(rep.run({"x": x})[0], np.maximum(x @ w, 0), rtol=1e-5)


@settings(max_examples=15, deadline=None)
@given(shape=st.lists(st.integers(1, 4), min_size=1, max_size=4),
       data=st.data())
def test_reduce_and_transpose_match_onnxruntime(shape, data):
    nd = len(shape)
    axes = data.draw(st.lists(st.integers(-nd, nd - 1), unique_by=lambda a: a % nd,
                              max_size=nd))
    keep = data.draw(st.integers(0, 1))
    perm = data.draw(st.permutations(range(nd)))
    nodes = [helper.make_node("Transpose", ["x"], ["t"], perm=list(perm)),
             helper.make_node("ReduceMean", ["t"] + (["axes"] if axes else []), ["y"],
                              keepdims=keep)]
    inits = [init("axes", np.array(axes, np.int64))] if axes else []
    model = make_model(nodes, [vi("x", shape)], [vi("y", None)], inits, opset=18)
    check_against_ort(model, {"x": randn(*shape)})


# ----------------------------------------------------------------------------------------------
# misc ops against NumPy float64


def _f64(x):
    return x.astype(np.float64)


MISC = {
    "elu": (lambda x: hetero.ops.elu(x, 0.7), lambda x: np.where(x > 0, x, 0.7 * np.expm1(x))),
    "selu": (hetero.ops.selu,
             lambda x: 1.0507009873554805 * np.where(x > 0, x, 1.6732632423543772 * np.expm1(x))),
    "hard_sigmoid": (hetero.ops.hard_sigmoid, lambda x: np.clip(0.2 * x + 0.5, 0, 1)),
    "softplus": (hetero.ops.softplus, lambda x: np.log1p(np.exp(x))),
    "softsign": (hetero.ops.softsign, lambda x: x / (1 + np.abs(x))),
    "sign": (hetero.ops.sign, np.sign),
    "identity": (hetero.ops.identity, lambda x: x),
    "hard_swish": (hetero.ops.hard_swish, lambda x: x * np.clip(x / 6 + 0.5, 0, 1)),
    "mish": (hetero.ops.mish, lambda x: x * np.tanh(np.log1p(np.exp(x)))),
    "celu": (lambda x: hetero.ops.celu(x, 0.5),
             lambda x: np.maximum(x, 0) + np.minimum(0, 0.5 * np.expm1(x / 0.5))),
    "thresholded_relu": (lambda x: hetero.ops.thresholded_relu(x, 0.3),
                         lambda x: np.where(x > 0.3, x, 0)),
    "round": (hetero.ops.round, np.round),
    "sin": (hetero.ops.sin, np.sin),
    "cos": (hetero.ops.cos, np.cos),
    "dropout": (hetero.ops.dropout, lambda x: x),
}


@pytest.mark.parametrize("name", sorted(MISC))
def test_misc_unary_ops_against_float64(name):
    fn, ref = MISC[name]
    x = randn(5, 7) * 4
    got = fn(x).numpy()
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, ref(_f64(x)), rtol=1e-5, atol=1e-6)


def test_misc_other_ops_against_numpy():
    x, s = randn(2, 3, 4, 5), randn(3, 1, 1)
    np.testing.assert_allclose(hetero.ops.prelu(x, s).numpy(), np.where(x < 0, x * s, x))
    xs = [randn(3, 4) for _ in range(4)]
    np.testing.assert_allclose(hetero.ops.add_n(*xs).numpy(), sum(_f64(v) for v in xs),
                               rtol=1e-5)
    np.testing.assert_array_equal(hetero.ops.expand(randn(3, 1)[:, :], (2, 3, 4)).shape,
                                  (2, 3, 4))
    t = randn(2, 3)
    np.testing.assert_array_equal(hetero.ops.tile(t, (2, 3)).numpy(), np.tile(t, (2, 3)))
    scale, bias = randn(3), randn(3)
    mean = _f64(x).mean(axis=(2, 3), keepdims=True)
    var = _f64(x).var(axis=(2, 3), keepdims=True)
    want = (_f64(x) - mean) / np.sqrt(var + 1e-5) * scale[:, None, None] + bias[:, None, None]
    np.testing.assert_allclose(hetero.ops.instance_norm(x, scale, bias).numpy(), want,
                               rtol=1e-4, atol=1e-5)
    ties = np.array([[1, 3, 3], [2, 2, 0]], np.float32)
    np.testing.assert_array_equal(hetero.ops.argmax(ties, axis=1).numpy(), [[1], [0]])
    np.testing.assert_array_equal(
        hetero.ops.argmax(ties, axis=1, keepdims=False, select_last_index=True).numpy(), [2, 1])
    np.testing.assert_array_equal(hetero.ops.argmin(ties, axis=0, keepdims=False).numpy(),
                                  [0, 1, 1])
    idx = np.array([[2, -1, 0], [1, 0, -3]], np.int64)
    src = randn(2, 3)
    np.testing.assert_array_equal(hetero.ops.gather_elements(src, idx, axis=1).numpy(),
                                  np.take_along_axis(src, idx % 3, axis=1))
    m = randn(2, 4, 5)
    np.testing.assert_array_equal(hetero.ops.trilu(m, upper=False, k=1).numpy(), np.tril(m, 1))
    with pytest.raises(hetero.ShapeError, match="one shape"):
        hetero.ops.add_n(randn(2), randn(3))


@pytest.mark.parametrize("op_type,attrs,extra_in", [
    ("Softmax", {"axis": 7}, []), ("LogSoftmax", {"axis": -3}, []),
    ("ArgMax", {"axis": 2}, []), ("Concat", {"axis": 5}, ["x"]),
])
def test_out_of_range_axis_is_a_model_error_not_wrapped(op_type, attrs, extra_in):
    node = helper.make_node(op_type, ["x"] + extra_in, ["y"], **attrs)
    model = make_model([node], [vi("x", (2, 3))], [vi("y", None)])
    with pytest.raises(ModelError, match=rf"{op_type}#0 \({op_type}\): axis -?\d+ is out of "
                                         r"range for rank 2"):
        ho.load(model)


def test_directory_truncated_and_empty_files_are_model_errors(tmp_path):
    with pytest.raises(ModelError, match="is a directory"):
        ho.load(tmp_path)
    model = make_model([helper.make_node("Relu", ["x"], ["y"])], [vi("x", (2, 3))],
                       [vi("y", (2, 3))])
    data = model.SerializeToString()
    (tmp_path / "cut.onnx").write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelError, match="cut.onnx: not a valid ONNX model"):
        ho.load(tmp_path / "cut.onnx")
    (tmp_path / "empty.onnx").write_bytes(b"")
    with pytest.raises(ModelError, match="empty.onnx"):
        ho.load(tmp_path / "empty.onnx")


@pytest.mark.parametrize("shapes,match", [
    ({"nope": (1, 3)}, "no graph input named 'nope'"), ({"x": "abc"}, "tuple of non-negative ints"),
    ({"x": (-1, 3)}, "tuple of non-negative ints"), ({"x": (2.5, 3)}, "non-negative ints"),
])
def test_bad_input_shapes_are_model_errors(shapes, match):
    model = make_model([helper.make_node("Relu", ["x"], ["y"])], [vi("x", ("N", 3))],
                       [vi("y", None)])
    with pytest.raises(ModelError, match=match):
        ho.load(model, input_shapes=shapes)
    assert ho.load(model, input_shapes={"x": (4, 3)}).spec(ho.load(
        model, input_shapes={"x": (4, 3)}).outputs[0]).shape == (4, 3)
