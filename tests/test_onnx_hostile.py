"""hetero.onnx.load on hostile and malformed files: every refusal is a ModelError naming what is
wrong, import never allocates past its folding budget, and external data is read only within the
file. Each test here is a finding of fuzzing mutated models (issue 12); the last test is a small
bounded fuzzer of its own: whatever a mutated model holds, ``load`` returns a Graph or raises a
HeteroError, never another exception.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

onnx = pytest.importorskip("onnx")

from onnx import TensorProto, helper, numpy_helper  # noqa: E402

import hetero.onnx as ho  # noqa: E402
from hetero import reference  # noqa: E402
from hetero.errors import HeteroError, ModelError  # noqa: E402

F = TensorProto.FLOAT


def make_model(nodes, inputs, outputs, inits=(), opset=17):
    graph = helper.make_graph(nodes, "m", inputs, outputs, initializer=list(inits))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def vi(name, shape, dtype=F):
    if shape is None:
        return helper.make_empty_tensor_value_info(name)
    return helper.make_tensor_value_info(name, dtype, shape)


def init(name, array):
    return numpy_helper.from_array(np.asarray(array), name)


# ----------------------------------------------------------------------------------------------
# Constant folding stays within its budget


def test_constant_of_shape_past_the_budget_is_a_model_error_naming_the_node():
    model = make_model([helper.make_node("ConstantOfShape", ["s"], ["y"], name="huge")], [],
                       [vi("y", None)], [init("s", np.array([2 ** 20, 2 ** 20], np.int64))])
    assert len(model.SerializeToString()) < 200
    with pytest.raises(ModelError, match=r"m.onnx:huge \(ConstantOfShape\): folding .*"
                                         r"4,398,046,511,104 bytes, more than"):
        ho.load(model)


def test_a_1_gib_constant_output_is_refused_and_the_budget_is_configurable():
    model = make_model([helper.make_node("ConstantOfShape", ["s"], ["y"], name="big")], [],
                       [vi("y", None)], [init("s", np.array([2 ** 28], np.int64))])
    with pytest.raises(ModelError, match=r"big \(ConstantOfShape\): .* 1,073,741,824 bytes, "
                                         "more than the import's limit for one folded"):
        ho.load(model)
    small = make_model([helper.make_node("ConstantOfShape", ["s"], ["y"], name="c")], [],
                       [vi("y", None)], [init("s", np.array([1000], np.int64))])
    assert ho.load(small, fold_budget=4000).outputs  # 4000 bytes: fits exactly
    with pytest.raises(ModelError, match="c .*3,999"):
        ho.load(small, fold_budget=3999)
    two = make_model([helper.make_node("ConstantOfShape", ["s"], ["y"], name="c1"),
                      helper.make_node("ConstantOfShape", ["s"], ["z"], name="c2")], [],
                     [vi("y", None), vi("z", None)],
                     [init("s", np.array([1000], np.int64))])
    with pytest.raises(ModelError, match=r"c2 .*past the import's constant-folding budget "
                                         r"\(4,000 of 6,000 bytes used\)"):
        ho.load(two, fold_budget=6000)  # each fits, both do not
    with pytest.raises(ModelError, match="fold_budget must be"):
        ho.load(small, fold_budget=-1)


def test_folding_an_op_of_constants_is_charged_before_its_kernel_runs():
    """Tile of a constant: the output spec is known before folding, so it is refused first."""
    model = make_model([helper.make_node("Tile", ["c", "r"], ["y"], name="tile")], [],
                       [vi("y", None)], [init("c", np.ones((4,), np.float32)),
                                          init("r", np.array([2 ** 40], np.int64))])
    with pytest.raises(ModelError, match=r"m.onnx:tile \(tile\): folding .*more than"):
        ho.load(model)


def test_range_past_the_budget_and_infinite_range():
    def model(limit, dtype=np.int64):
        return make_model([helper.make_node("Range", ["a", "b", "d"], ["y"], name="r")], [],
                          [vi("y", None)], [init("a", np.array(0, dtype)),
                                             init("b", np.array(limit, dtype)),
                                             init("d", np.array(1, dtype))])
    with pytest.raises(ModelError, match=r"r \(Range\): folding a range of 1,099,511,627,776 "
                                         "elements"):
        ho.load(model(2 ** 40))
    with pytest.raises(ModelError, match="no finite number"):
        ho.load(model(np.inf, np.float32))


def test_split_with_num_outputs_2_40_is_a_model_error():
    model = make_model([helper.make_node("Split", ["x"], ["a", "b"], num_outputs=2 ** 40,
                                         name="sp")], [vi("x", [4])], [vi("a", None)], opset=18)
    with pytest.raises(ModelError, match=r"sp \(Split\): num_outputs is 1099511627776, but the "
                                         "node has 2 outputs"):
        ho.load(model)


def test_dropout_mask_of_a_huge_input_is_not_built_at_import():
    """The mask of a run-time value is made at run time (an expanded one-element constant),
    so a huge declared input shape costs nothing at import."""
    model = make_model([helper.make_node("Dropout", ["x"], ["y", "mask"])],
                       [vi("x", [2 ** 20, 2 ** 20])], [vi("mask", [2 ** 20, 2 ** 20],
                                                          TensorProto.BOOL)])
    graph = ho.load(model)
    assert all(n.op != "constant" or n.outputs[0].size <= 1 for n in graph.nodes)
    small = make_model([helper.make_node("Dropout", ["x"], ["y", "mask"])], [vi("x", [2, 3])],
                       [vi("y", [2, 3]), vi("mask", [2, 3], TensorProto.BOOL)])
    x = np.random.default_rng(0).standard_normal((2, 3)).astype(np.float32)
    y, mask = reference.run(ho.load(small), [x])
    np.testing.assert_array_equal(y, x)
    assert mask.dtype == np.bool_ and mask.all() and mask.shape == (2, 3)


# ----------------------------------------------------------------------------------------------
# External data


def _save_external(folder, w):
    model = make_model([helper.make_node("Add", ["x", "w"], ["y"])], [vi("x", [4])],
                       [vi("y", [4])], [init("w", w)])
    folder.mkdir(exist_ok=True)
    onnx.save_model(model, str(folder / "m.onnx"), save_as_external_data=True,
                    all_tensors_to_one_file=True, location="w.bin", size_threshold=0)
    return folder / "m.onnx"


@pytest.mark.parametrize("key,value", [("offset", 2 ** 63), ("offset", 2 ** 62),
                                       ("length", 2 ** 40), ("length", 2 ** 63)])
def test_external_data_offset_and_length_checked_against_the_file(tmp_path, key, value):
    path = _save_external(tmp_path / "model", np.arange(4, dtype=np.float32))
    model = onnx.load(str(path), load_external_data=False)
    t = model.graph.initializer[0]
    entries = {e.key: e for e in t.external_data}
    if key in entries:
        entries[key].value = str(value)
    else:
        t.external_data.add(key=key, value=str(value))
    onnx.save_model(model, str(path))
    with pytest.raises(ModelError, match=r"m.onnx:w: external data file 'w.bin' holds 16 "
                                         rf"bytes; .* at offset {'[0-9,]+'} expected"):
        ho.load(str(path))


def test_external_data_model_loads_from_any_working_directory(tmp_path, monkeypatch):
    w = np.arange(4, dtype=np.float32)
    path = _save_external(tmp_path / "model", w)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    for cwd in (elsewhere, tmp_path, path.parent):
        monkeypatch.chdir(cwd)
        x = np.ones(4, np.float32)
        np.testing.assert_array_equal(reference.run(ho.load(str(path)), [x])[0], x + w)
        prepared = ho.prepare(os.path.relpath(path, cwd), machine="cpu:1")
        np.testing.assert_array_equal(prepared.run([x])[0], x + w)


# ----------------------------------------------------------------------------------------------
# The checker always runs; malformed values


def test_untyped_output_does_not_switch_off_the_checker():
    """An output without a type used to make load skip the checker; an Expand with one input
    after it then raised AttributeError."""
    model = make_model([helper.make_node("Expand", ["x"], ["y"], name="e")], [vi("x", [4])],
                       [vi("y", None)])
    with pytest.raises(ModelError, match="not a valid ONNX model: .*Expand.*input size 1"):
        ho.load(model)
    good = make_model([helper.make_node("Relu", ["x"], ["y"])], [vi("x", [4])], [vi("y", None)])
    assert ho.load(good).outputs


def test_a_missing_required_input_is_a_model_error():
    """Expand's shape given as an empty name (an absent optional input)."""
    model = make_model([helper.make_node("Expand", ["x", ""], ["y"], name="e")],
                       [vi("x", [4])], [vi("y", None)])
    with pytest.raises(ModelError, match="Name: e OpType: Expand"):
        ho.load(model)


def test_invalid_utf8_in_a_name_is_a_model_error(tmp_path):
    model = make_model([helper.make_node("Relu", ["x"], ["y"], name="NODENAME")],
                       [vi("x", [4])], [vi("y", [4])])
    raw = model.SerializeToString()
    assert raw.count(b"NODENAME") == 1
    path = tmp_path / "bad.onnx"
    path.write_bytes(raw.replace(b"NODENAME", b"NODE\xff\xfeME"))
    with pytest.raises(ModelError, match=r"bad.onnx: .*node name b'NODE\\xff\\xfeME' is not "
                                         "valid UTF-8"):
        ho.load(str(path))
    # the node's output name (field 2) and the graph output's (field 1), both length 1
    assert raw.count(b"\x12\x01y") == 1 and raw.count(b"\x0a\x01y") == 1
    path.write_bytes(raw.replace(b"\x12\x01y", b"\x12\x01\xff").replace(b"\x0a\x01y",
                                                                             b"\x0a\x01\xff"))
    with pytest.raises(ModelError, match=r"bad.onnx: .*name b'\\xff' is not valid UTF-8"):
        ho.load(str(path))


@pytest.mark.parametrize("opset,dtype", [(17, TensorProto.INT64), (2, TensorProto.INT64),
                                         (17, TensorProto.INT32)])
def test_infinite_pad_value_for_an_integer_tensor_is_a_model_error(opset, dtype):
    np_dtype = np.int64 if dtype == TensorProto.INT64 else np.int32
    if opset >= 11:
        node = helper.make_node("Pad", ["x", "p", "v"], ["y"], name="pad")
        inits = [init("p", np.array([1, 1], np.int64)), init("v", np.array(np.inf, np.float32))]
    else:
        node = helper.make_node("Pad", ["x"], ["y"], name="pad", pads=[1, 1], value=np.inf)
        inits = []
    model = make_model([node], [vi("x", [4], dtype)], [vi("y", [6], dtype)], inits, opset=opset)
    with pytest.raises(ModelError, match=r"pad \(Pad\): constant value inf is not a int"):
        ho.load(model)
    del np_dtype


def test_infinite_pad_amounts_are_a_model_error():
    model = make_model([helper.make_node("Pad", ["x", "p"], ["y"], name="pad")],
                       [vi("x", [4])], [vi("y", None)],
                       [init("p", np.array([np.inf, 1], np.float32))])
    with pytest.raises(ModelError, match=r"pad \(Pad\)"):
        ho.load(model)


def test_infinite_pad_value_of_a_float_tensor_is_padding_with_inf():
    model = make_model([helper.make_node("Pad", ["x", "p", "v"], ["y"])], [vi("x", [2])],
                       [vi("y", [4])], [init("p", np.array([1, 1], np.int64)),
                                         init("v", np.array(-np.inf, np.float32))])
    x = np.array([1, 2], np.float32)
    np.testing.assert_array_equal(reference.run(ho.load(model), [x])[0], [-np.inf, 1, 2, -np.inf])


# ----------------------------------------------------------------------------------------------
# A small bounded fuzzer


def _seed_models():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((3, 2, 3, 3)).astype(np.float32)
    conv = make_model(
        [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
         helper.make_node("Relu", ["c"], ["r"]),
         helper.make_node("Shape", ["r"], ["s"]),
         helper.make_node("ConstantOfShape", ["s"], ["z"],
                          value=numpy_helper.from_array(np.array([0.5], np.float32))),
         helper.make_node("Add", ["r", "z"], ["y"])],
        [vi("x", [1, 2, 4, 4])], [vi("y", None)], [init("w", w)])
    shapes = make_model(
        [helper.make_node("Reshape", ["x", "shape"], ["a"]),
         helper.make_node("Split", ["a"], ["b", "c"], axis=1, num_outputs=2),
         helper.make_node("Pad", ["b", "pads"], ["d"]),
         helper.make_node("Range", ["r0", "r1", "r2"], ["e"]),
         helper.make_node("Expand", ["e", "eshape"], ["f"]),
         helper.make_node("Dropout", ["c"], ["g", "m"])],
        [vi("x", [2, 4])], [vi("d", None), vi("f", None), vi("m", None)],
        [init("shape", np.array([2, 4], np.int64)), init("pads", np.array([0, 1, 0, 1],
                                                                           np.int64)),
         init("r0", np.array(0, np.int64)), init("r1", np.array(3, np.int64)),
         init("r2", np.array(1, np.int64)), init("eshape", np.array([2, 3], np.int64))],
        opset=18)
    return [conv.SerializeToString(), shapes.SerializeToString()]


_SEEDS = _seed_models()
_INTERESTING = [0, 1, 0x7F, 0x80, 0xFF, 0xFE]


@st.composite
def _mutants(draw):
    data = bytearray(_SEEDS[draw(st.integers(0, len(_SEEDS) - 1))])
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["set", "flip", "cut", "dup", "varint"]))
        i = draw(st.integers(0, len(data) - 1))
        if kind == "set":
            data[i] = draw(st.sampled_from(_INTERESTING + [draw(st.integers(0, 255))]))
        elif kind == "flip":
            data[i] ^= 1 << draw(st.integers(0, 7))
        elif kind == "cut":
            del data[i:i + draw(st.integers(1, 8))]
        elif kind == "dup":
            data[i:i] = data[i:i + draw(st.integers(1, 8))]
        else:  # a large varint where a small number was: huge dims, offsets, counts
            data[i:i + 1] = bytes([0xFF] * draw(st.integers(1, 9)) + [0x01])
        if not data:
            data = bytearray(b"\x00")
    return bytes(data)


_EXTREMES = [0, -1, 1, 3, 2 ** 20, 2 ** 31, 2 ** 40, 2 ** 62, 2 ** 63 - 1, -2 ** 63]


@st.composite
def _field_mutants(draw):
    """A seed model with some integers that shapes, sizes and counts are made of (attribute
    ints, int64 initializers, declared input dims) set to extreme values."""
    model = onnx.ModelProto()
    model.ParseFromString(_SEEDS[draw(st.integers(0, len(_SEEDS) - 1))])
    g = model.graph
    targets = [("attr", a) for n in g.node for a in n.attribute
               if a.type in (onnx.AttributeProto.INT, onnx.AttributeProto.INTS)]
    targets += [("init", t) for t in g.initializer if t.data_type == TensorProto.INT64]
    targets += [("dim", d) for v in g.input for d in v.type.tensor_type.shape.dim]
    for _ in range(draw(st.integers(1, 3))):
        kind, target = targets[draw(st.integers(0, len(targets) - 1))]
        value = draw(st.sampled_from(_EXTREMES))
        if kind == "dim":
            target.dim_value = value
        elif kind == "attr" and target.type == onnx.AttributeProto.INT:
            target.i = value
        elif kind == "attr":
            if target.ints:
                target.ints[draw(st.integers(0, len(target.ints) - 1))] = value
        else:
            arr = numpy_helper.to_array(target).copy()
            if arr.size:
                arr.reshape(-1)[draw(st.integers(0, arr.size - 1))] = value
                target.CopyFrom(numpy_helper.from_array(arr, target.name))
    return model.SerializeToString()


@settings(max_examples=300, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(_mutants(), _field_mutants()))
def test_fuzzed_models_load_or_raise_a_hetero_error(tmp_path_factory, raw):
    path = tmp_path_factory.getbasetemp() / "fuzz.onnx"
    path.write_bytes(raw)
    try:
        ho.load(str(path), fold_budget=1 << 24)
    except HeteroError:
        pass
