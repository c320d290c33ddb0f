"""The IR and its verifier: immutability, and graphs broken on purpose."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import hetero as ht
from hetero.graph import Attrs, Graph, Node, TensorSpec, Value


def small_graph() -> Graph:
    """
        x   y
         \\ /
         add_0
           |
         mul_1 (add_0 * y)
    """
    f32 = TensorSpec((2, 3), np.float32)
    x = Node("x", "input", outputs=(f32,))
    y = Node("y", "input", outputs=(f32,))
    add = Node("add_0", "add", (Value("x"), Value("y")), outputs=(f32,), where="model.py:10")
    mul = Node("mul_1", "mul", (Value("add_0"), Value("y")), outputs=(f32,), where="model.py:11")
    return Graph((x, y, add, mul), ("x", "y"), (Value("mul_1"),), name="small")


def test_valid_graph_passes_check():
    ht.check(small_graph())


def test_nodes_and_specs_are_frozen():
    g = small_graph()
    with pytest.raises(dataclasses.FrozenInstanceError):
        g.nodes[2].op = "sub"
    with pytest.raises(dataclasses.FrozenInstanceError):
        g.nodes[0].outputs[0].shape = (1,)
    with pytest.raises(dataclasses.FrozenInstanceError):
        g.nodes = ()
    assert not hasattr(g.nodes[2], "__dict__"), "Node must be slotted"


def test_replace_returns_new_node_and_leaves_original():
    g = small_graph()
    n = g.node("add_0")
    m = n.replace(device="gpu:0")
    assert m.device == "gpu:0" and n.device is None
    assert g.node("add_0").device is None


def test_attrs_are_immutable_and_hashable():
    a = Attrs({"axes": [0, 1], "keepdims": np.int64(1)})
    assert a["axes"] == (0, 1) and a["keepdims"] == 1 and type(a["keepdims"]) is int
    assert hash(a) == hash(Attrs({"keepdims": 1, "axes": (0, 1)}))
    with pytest.raises(TypeError):
        a["axes"] = (2,)  # type: ignore[index]


def test_constants_are_read_only_copies():
    arr = np.ones((2,), np.float32)
    c = Node("c", "constant", outputs=(TensorSpec((2,), np.float32),))
    g = Graph((c,), (), (Value("c"),), {"c": arr})
    arr[0] = 5
    assert g.constants["c"][0] == 1
    with pytest.raises(ValueError):
        g.constants["c"][0] = 3


def test_to_networkx_edges_carry_values_and_bytes():
    nxg = small_graph().to_networkx()
    assert set(nxg.edges) == {("x", "add_0"), ("y", "add_0"), ("add_0", "mul_1"), ("y", "mul_1")}
    assert nxg["add_0"]["mul_1"]["nbytes"] == 2 * 3 * 4
    assert nxg.nodes["mul_1"]["node"].op == "mul"


def _replace_node(g: Graph, name: str, node: Node) -> Graph:
    return g.replace(nodes=tuple(node if n.name == name else n for n in g.nodes))


def test_check_dangling_input_names_node_op_and_line():
    g = small_graph()
    bad = _replace_node(g, "mul_1", g.node("mul_1").replace(inputs=(Value("add_0"), Value("zz"))))
    with pytest.raises(ht.GraphError) as e:
        ht.check(bad)
    msg = str(e.value)
    assert "mul_1 (mul, from model.py:11)" in msg
    assert "dangling input" in msg and "%zz" in msg
    assert ">> %mul_1" in msg  # the neighbourhood is printed, the culprit marked


def test_check_wrong_spec():
    g = small_graph()
    wrong = g.node("add_0").replace(outputs=(TensorSpec((3, 2), np.float32),))
    with pytest.raises(ht.GraphError, match=r"add_0 \(add, from model.py:10\): wrong output spec: "
                                            r"node says f32\[3,2\] but add of .* gives f32\[2,3\]"):
        ht.check(_replace_node(g, "add_0", wrong))


def test_check_cycle():
    g = small_graph()
    cyc = g.node("add_0").replace(inputs=(Value("x"), Value("mul_1")))
    with pytest.raises(ht.GraphError, match=r"cycle: add_0 -> mul_1 -> add_0"):
        ht.check(_replace_node(g, "add_0", cyc))


def test_check_out_of_order_without_cycle():
    g = small_graph()
    swapped = g.replace(nodes=(g.nodes[0], g.nodes[1], g.nodes[3], g.nodes[2]))
    with pytest.raises(ht.GraphError, match="not in topological order"):
        ht.check(swapped)


def test_check_unknown_op():
    g = small_graph()
    bad = _replace_node(g, "mul_1", g.node("mul_1").replace(op="mull"))
    with pytest.raises(ht.UnknownOpError, match=r"mul_1 \(mull, from model.py:11\): unknown op "
                                                r"'mull'; did you mean mul"):
        ht.check(bad)


def test_check_output_index_out_of_range():
    g = small_graph()
    bad = _replace_node(g, "mul_1", g.node("mul_1").replace(inputs=(Value("add_0", 3), Value("y"))))
    with pytest.raises(ht.GraphError, match="reads output 3 of add_0"):
        ht.check(bad)


def test_check_duplicate_names_and_bad_outputs():
    g = small_graph()
    dup = g.replace(nodes=g.nodes + (g.nodes[3],))
    with pytest.raises(ht.GraphError, match="more than once"):
        ht.check(dup)
    with pytest.raises(ht.GraphError, match="produced by no node"):
        ht.check(g.replace(outputs=(Value("nope"),)))


def test_check_constant_spec_mismatch():
    c = Node("c", "constant", outputs=(TensorSpec((3,), np.float32),))
    g = Graph((c,), (), (Value("c"),), {"c": np.zeros((2,), np.float32)})
    with pytest.raises(ht.GraphError, match="constant array is f32\\[2\\]"):
        ht.check(g)


def test_graph_prints_readably():
    text = str(small_graph())
    assert "graph small(%x: f32[2,3], %y: f32[2,3])" in text
    assert "%add_0: f32[2,3] = add(%x, %y)  # model.py:10" in text
    assert "return %mul_1" in text


def test_check_unlisted_and_repeated_inputs():
    g = small_graph()
    with pytest.raises(ht.GraphError, match=r"y \(input\): input node is not listed"):
        ht.check(g.replace(inputs=("x",)))
    with pytest.raises(ht.GraphError, match="listed more than once"):
        ht.check(g.replace(inputs=("x", "y", "x")))


def test_check_malformed_device_annotation_names_the_node():
    g = small_graph()
    bad = g.replace(nodes=tuple(n.replace(device="tpu:0") if n.name == "add_0" else n
                                for n in g.nodes))
    with pytest.raises(ht.GraphError, match=r"add_0 \(add, from model.py:10\): device "
                                            r"annotation 'tpu:0'"):
        ht.check(bad)
    ok = g.replace(nodes=tuple(n.replace(device="gpu:1") if n.name == "add_0" else n
                               for n in g.nodes))
    ht.check(ok)


def test_no_check_or_trace_mutates_its_input():
    g = small_graph()
    before = (g.nodes, g.inputs, g.outputs, dict(g.constants))
    ht.check(g)
    g.to_networkx()
    str(g)
    assert (g.nodes, g.inputs, g.outputs, dict(g.constants)) == before
    with pytest.raises(dataclasses.FrozenInstanceError):
        g.nodes = ()  # type: ignore[misc]


@pytest.mark.parametrize("obj", [None, "graph", 3])
def test_check_of_a_non_graph_is_a_graph_error(obj):
    with pytest.raises(ht.GraphError, match="check\\(\\) takes a Graph or a Plan"):
        ht.check(obj)


def test_spec_sizes_are_exact_and_impossible_sizes_are_refused():
    """Issue 13.7: int64 np.prod wrapped: f32[2^62,4].nbytes was 0, a 256-byte arena was
    planned and the run raised a raw ValueError."""
    from hetero.errors import ShapeError

    big = TensorSpec((2**31, 2**29), np.float32)
    assert big.size == 2**60 and big.nbytes == 2**62  # exact, past int32 and float53
    with pytest.raises(ShapeError, match="more than any machine can address"):
        TensorSpec((2**31, 2**30), np.float32)  # 2^63 bytes: one past int64
    with pytest.raises(ShapeError, match=r"f32\[4611686018427387904,4\] tensor would be "
                                         r"73,786,976,294,838,206,464 bytes"):
        TensorSpec((2**62, 4), np.float32)
    assert TensorSpec((2**62, 1), np.int8).nbytes == 2**62
    assert TensorSpec((0, 2**70), np.float32).nbytes == 0


def test_an_op_whose_output_is_impossibly_large_names_the_node():
    from hetero import ops
    from hetero.errors import ShapeError

    x = np.ones((1, 1), np.float32)
    with pytest.raises(ShapeError, match=r"expand_0 \(expand, from .*test_graph.py:\d+\): a "
                                         r"f32\[1099511627776,1073741824\] tensor would be"):
        ht.function(lambda x: ops.expand(x, (2**40, 2**30))).graph(x)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.lists(st.sampled_from([0, 1, 2, 3]), max_size=4), min_size=1, max_size=3))
def test_broadcast_shapes_is_numpys(shapes):
    from hetero.errors import ShapeError
    from hetero.ops.registry import broadcast_shapes

    shapes = [tuple(s) for s in shapes]
    try:
        want = np.broadcast_shapes(*shapes)
    except ValueError:
        with pytest.raises(ShapeError, match="cannot be broadcast together"):
            broadcast_shapes(*shapes)
    else:
        assert broadcast_shapes(*shapes) == want
