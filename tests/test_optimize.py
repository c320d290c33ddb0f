"""optimize(): the rewritten graph computes what the original computes, with fewer nodes."""

from __future__ import annotations

import numpy as np
import pytest

import hetero as ht
from hetero import reference
from hetero.graph import Graph, Node, TensorSpec, Value
from hetero.ops.registry import lookup
from hetero.passes.optimize import (
    eliminate_dead,
    fold_batch_norm,
    fold_constants,
    fuse_activation,
    fuse_bias,
    fuse_residual,
    optimize,
)
from hetero.verify import check

RNG = np.random.default_rng(1)


def rand(*shape):
    return RNG.standard_normal(shape).astype(np.float32)


class GraphBuilder:
    """Hand-built graphs, so each test states exactly which nodes and annotations it has."""

    def __init__(self):
        self.nodes, self.constants, self.inputs = [], {}, []

    def input(self, name, shape):
        node = Node(name, "input", outputs=(TensorSpec(shape, np.float32),))
        self.nodes.append(node)
        self.inputs.append(name)
        return node.value()

    def const(self, name, array, **ann):
        array = np.asarray(array)
        node = Node(name, "constant", outputs=(TensorSpec.of(array),), **ann)
        self.nodes.append(node)
        self.constants[name] = array
        return node.value()

    def op(self, name, op, inputs, *, where=None, **kw):
        ann = {k: kw.pop(k) for k in ("device", "soft", "colocate") if k in kw}
        entry = lookup(op)
        attrs = entry.normalize_attrs(kw)
        specs = tuple(self.spec(v) for v in inputs)
        node = Node(name, op, tuple(inputs), attrs, entry.infer_specs(specs, attrs),
                    where=where or f"model.py:{len(self.nodes)}", **ann)
        self.nodes.append(node)
        return node.value()

    def spec(self, v):
        return next(n for n in self.nodes if n.name == v.node).outputs[v.index]

    def graph(self, *outputs):
        return Graph(tuple(self.nodes), tuple(self.inputs), tuple(outputs), self.constants)


def small_cnn(device=None):
    """x -> conv -> bn -> relu -> max_pool -> conv -> add(bias) -> bn -> relu -> global_avg_pool
    -> flatten -> matmul -> add -> out, plus an unused branch and a foldable constant chain."""
    g = GraphBuilder()
    ann = {"device": device} if device else {}
    x = g.input("x", (2, 3, 12, 12))

    def bn_params(prefix, c):
        return [g.const(f"{prefix}_scale", rand(c)), g.const(f"{prefix}_bias", rand(c)),
                g.const(f"{prefix}_mean", rand(c)),
                g.const(f"{prefix}_var", np.abs(rand(c)) + 0.5)]

    y = g.op("conv1", "conv2d", [x, g.const("w1", rand(8, 3, 3, 3)), g.const("b1", rand(8))],
             pads=(1, 1, 1, 1), **ann)
    y = g.op("bn1", "batch_norm", [y, *bn_params("bn1", 8)], epsilon=1e-3, **ann)
    y = g.op("relu1", "relu", [y], **ann)
    y = g.op("pool1", "max_pool2d", [y], kernel_shape=(2, 2), strides=(2, 2), **ann)
    y = g.op("conv2", "conv2d", [y, g.const("w2", rand(16, 8, 3, 3))], strides=(2, 2),
             pads=(1, 1, 1, 1), **ann)
    y = g.op("bias2", "add", [y, g.const("b2", rand(1, 16, 1, 1))], **ann)
    y = g.op("bn2", "batch_norm", [y, *bn_params("bn2", 16)], **ann)
    y = g.op("relu2", "relu", [y], **ann)
    g.op("unused", "tanh", [y], **ann)
    y = g.op("gap", "global_avg_pool", [y], **ann)
    y = g.op("flat", "flatten", [y], **ann)
    # weights stored transposed, as ONNX exporters often do: transpose(w) folds to a constant
    wt = g.op("wt", "transpose", [g.const("fc_w_t", rand(10, 16))], **ann)
    y = g.op("fc", "matmul", [y, wt], **ann)
    y = g.op("fc_bias", "add", [y, g.const("fc_b", rand(10))], **ann)
    return g.graph(y), [rand(2, 3, 12, 12)]


def test_small_cnn_same_results_fewer_nodes():
    graph, inputs = small_cnn()
    before = reference.run(graph, inputs)
    opt = optimize(graph)
    check(opt)
    after = reference.run(opt, inputs)
    np.testing.assert_allclose(after[0], before[0], rtol=1e-4, atol=1e-4)
    ops = [n.op for n in opt.nodes if n.op not in ("input", "constant")]
    assert ops == ["conv2d", "max_pool2d", "conv2d", "global_avg_pool", "flatten", "gemm"]
    assert len([n for n in opt.nodes if n.op != "constant"]) < \
        len([n for n in graph.nodes if n.op != "constant"])
    conv1, conv2 = (n for n in opt.nodes if n.op == "conv2d")
    assert conv1.attrs["activation"] == conv2.attrs["activation"] == "relu"
    assert len(conv1.inputs) == len(conv2.inputs) == 3
    assert conv1.where == graph.node("conv1").where  # the merged node keeps its source line
    assert set(opt.constants) == {n.name for n in opt.nodes if n.op == "constant"}


def test_optimize_is_pure():
    graph, inputs = small_cnn()
    snapshot = (graph.nodes, dict(graph.constants), graph.outputs)
    optimize(graph)
    assert (graph.nodes, dict(graph.constants), graph.outputs) == snapshot
    check(graph)


def test_traced_function_graph_mode_equal():
    w, b = rand(4, 3, 3, 3), rand(4)
    scale, shift, mean, var = rand(4), rand(4), rand(4), np.abs(rand(4)) + 0.5

    @ht.function
    def model(x):
        y = ht.ops.conv2d(x, w, b, pads=(1, 1, 1, 1))
        y = ht.ops.batch_norm(y, scale, shift, mean, var)
        y = ht.ops.relu(y)
        return ht.ops.avg_pool2d(y, (2, 2), (2, 2))

    x = rand(1, 3, 8, 8)
    graph = model.graph(x)
    opt = optimize(graph)
    check(opt)
    assert [n.op for n in opt.nodes if n.op not in ("input", "constant")] == \
        ["conv2d", "avg_pool2d"]
    np.testing.assert_allclose(reference.run(opt, [x])[0], np.asarray(model(x)),
                               rtol=1e-4, atol=1e-5)


def test_device_annotations_kept_and_not_fused_across():
    graph, inputs = small_cnn(device="gpu:0")
    opt = optimize(graph)
    check(opt)
    assert all(n.device == "gpu:0" for n in opt.nodes if n.op not in ("input", "constant"))

    g = GraphBuilder()
    x = g.input("x", (1, 2, 5, 5))
    y = g.op("conv", "conv2d", [x, g.const("w", rand(3, 2, 3, 3))], device="cpu:0")
    y = g.op("relu", "relu", [y], device="gpu:0")
    graph = g.graph(y)
    assert [n.op for n in optimize(graph).nodes] == ["input", "constant", "conv2d", "relu"]


def test_colocation_kept_and_conflicts_not_fused():
    g = GraphBuilder()
    x = g.input("x", (1, 2, 5, 5))
    y = g.op("conv", "conv2d", [x, g.const("w", rand(3, 2, 3, 3))], colocate="a")
    y = g.op("relu", "relu", [y])
    opt = optimize(g.graph(y))
    (conv,) = [n for n in opt.nodes if n.op == "conv2d"]
    assert conv.colocate == "a" and conv.attrs["activation"] == "relu"

    g = GraphBuilder()
    x = g.input("x", (1, 2, 5, 5))
    y = g.op("conv", "conv2d", [x, g.const("w", rand(3, 2, 3, 3))], colocate="a")
    y = g.op("relu", "relu", [y], colocate="b")
    assert [n.op for n in optimize(g.graph(y)).nodes][-1] == "relu"


def test_no_fusion_when_conv_output_is_read_twice_or_returned():
    g = GraphBuilder()
    x = g.input("x", (1, 2, 5, 5))
    c = g.op("conv", "conv2d", [x, g.const("w", rand(3, 2, 3, 3))])
    r = g.op("relu", "relu", [c])
    graph = g.graph(r, c)
    opt = optimize(graph)
    assert [n.op for n in opt.nodes] == [n.op for n in graph.nodes]
    inputs = [rand(1, 2, 5, 5)]
    for a, b in zip(reference.run(opt, inputs), reference.run(graph, inputs)):
        np.testing.assert_array_equal(a, b)


def test_batch_norm_not_folded_with_variable_weights():
    g = GraphBuilder()
    x = g.input("x", (1, 2, 5, 5))
    w = g.input("w", (3, 2, 1, 1))
    c = g.op("conv", "conv2d", [x, w])
    y = g.op("bn", "batch_norm", [c] + [g.const(f"p{i}", np.ones(3, np.float32))
                                        for i in range(4)])
    assert fold_batch_norm(g.graph(y)).nodes == g.graph(y).nodes


def test_fold_constants_and_dead_code():
    g = GraphBuilder()
    x = g.input("x", (3,))
    a = g.op("a", "add", [g.const("c1", np.ones(3, np.float32)),
                          g.const("c2", np.full(3, 2, np.float32))])
    b = g.op("b", "mul", [a, a])
    g.op("dead", "exp", [x])
    y = g.op("y", "add", [x, b])
    graph = g.graph(y)
    folded = fold_constants(graph)
    check(folded)
    assert folded.node("b").op == "constant"
    np.testing.assert_array_equal(folded.constants["b"], np.full(3, 9, np.float32))
    clean = eliminate_dead(folded)
    check(clean)
    assert [n.name for n in clean.nodes] == ["x", "b", "y"]
    np.testing.assert_array_equal(reference.run(clean, [np.ones(3, np.float32)])[0],
                                  np.full(3, 10, np.float32))


def test_fold_constants_multi_output_and_outputs_renamed():
    g = GraphBuilder()
    x = g.input("x", (2,))
    parts = g.op("s", "split", [g.const("c", np.arange(4, dtype=np.float32))], axis=0,
                 sizes=(2, 2))
    y = g.op("y", "add", [x, Value(parts.node, 1)])
    graph = g.graph(y, Value(parts.node, 0))
    opt = optimize(graph)
    check(opt)
    assert all(n.op in ("input", "constant", "add") for n in opt.nodes)
    inputs = [np.zeros(2, np.float32)]
    for a, b in zip(reference.run(opt, inputs), reference.run(graph, inputs)):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("act, kw", [("leaky_relu", {"alpha": 0.3}), ("sigmoid", {}),
                                     ("tanh", {}), ("clip", {"min": -0.2, "max": 0.4}),
                                     ("clip", {"max": 0.1})])
def test_fuse_activation_variants(act, kw):
    g = GraphBuilder()
    x = g.input("x", (1, 2, 6, 6))
    c = g.op("conv", "conv2d", [x, g.const("w", rand(4, 2, 3, 3))], pads=(1, 1, 1, 1))
    y = g.op("act", act, [c], **kw)
    graph = g.graph(y)
    fused = fuse_activation(graph)
    check(fused)
    assert [n.op for n in fused.nodes] == ["input", "constant", "conv2d"]
    inputs = [rand(1, 2, 6, 6)]
    np.testing.assert_allclose(reference.run(fused, inputs)[0], reference.run(graph, inputs)[0],
                               rtol=1e-5, atol=1e-6)


def test_fuse_bias_into_gemm_with_c_and_beta():
    g = GraphBuilder()
    a = g.input("a", (4, 5))
    y = g.op("g", "gemm", [a, g.const("b", rand(6, 5)), g.const("c", rand(6))], beta=0.5,
             alpha=2.0, trans_b=1)
    y = g.op("add", "add", [g.const("d", rand(4, 6)), y])
    graph = g.graph(y)
    fused = fuse_bias(graph)
    check(fused)
    assert [n.op for n in fused.nodes if n.op != "constant"] == ["input", "gemm"]
    inputs = [rand(4, 5)]
    np.testing.assert_allclose(reference.run(fused, inputs)[0], reference.run(graph, inputs)[0],
                               rtol=1e-5, atol=1e-5)


def test_non_channel_add_is_not_a_bias():
    g = GraphBuilder()
    x = g.input("x", (1, 2, 4, 4))
    c = g.op("conv", "conv2d", [x, g.const("w", rand(3, 2, 1, 1))])
    y = g.op("add", "add", [c, g.const("full", rand(1, 3, 4, 4))])
    graph = g.graph(y)
    assert fuse_bias(graph).nodes == graph.nodes


def test_onnx_example_cnn_optimized_matches_onnxruntime():
    """The example CNN (conv-bn-relu-pool x3, gemm) through import, optimize and the reference
    executor gives what onnxruntime gives."""
    import os

    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    from hetero import onnx as hetero_onnx

    path = os.path.join(os.path.dirname(__file__), os.pardir, "examples", "cnn.onnx")
    if not os.path.exists(path):
        pytest.skip("examples/cnn.onnx is not built")
    graph = hetero_onnx.load(path)
    opt = optimize(graph)
    check(opt)
    assert not any(n.op in ("batch_norm", "relu") for n in opt.nodes)
    assert len(opt.nodes) < len(graph.nodes)
    inputs = [RNG.standard_normal(s.shape).astype(s.dtype) for s in graph.input_specs]
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    feeds = {i.name: x for i, x in zip(sess.get_inputs(), inputs)}
    for got, want in zip(reference.run(opt, inputs), sess.run(None, feeds)):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_winograd_rewrite_keeps_results():
    """conv(128->128, 3x3) -> bn -> relu on a 10x10 map becomes conv2d_winograd with bias and relu;
    a GPU-annotated or 64-channel conv stays conv2d."""
    g = GraphBuilder()
    x = g.input("x", (1, 128, 10, 10))
    y = g.op("conv", "conv2d", [x, g.const("w", rand(128, 128, 3, 3) * 0.05)], pads=(1, 1, 1, 1))
    y = g.op("bn", "batch_norm", [y, g.const("s", rand(128)), g.const("b", rand(128)),
                                  g.const("m", rand(128)),
                                  g.const("v", np.abs(rand(128)) + 0.5)])
    y = g.op("relu", "relu", [y])
    y = g.op("gpu_conv", "conv2d", [y, g.const("w2", rand(128, 128, 3, 3) * 0.05)],
             pads=(1, 1, 1, 1), device="gpu:0")
    y = g.op("small", "conv2d", [y, g.const("w3", rand(64, 128, 3, 3) * 0.05)])
    graph = g.graph(y)
    opt = optimize(graph, winograd=True)
    check(opt)
    ops = {n.name: n.op for n in opt.nodes}
    assert ops["conv"] == "conv2d_winograd"
    assert opt.node("conv").attrs["activation"] == "relu" and len(opt.node("conv").inputs) == 3
    assert ops["gpu_conv"] == ops["small"] == "conv2d"
    assert not any(n.op in ("batch_norm", "relu") for n in opt.nodes)
    inputs = [rand(1, 128, 10, 10)]
    np.testing.assert_allclose(reference.run(opt, inputs)[0], reference.run(graph, inputs)[0],
                               rtol=1e-3, atol=1e-3)
    # a second optimize over the rewritten graph changes nothing
    assert optimize(opt, winograd=True).nodes == opt.nodes


def test_winograd_keeps_to_its_map_sizes():
    """Below WINOGRAD_MIN_PIXELS and above WINOGRAD_MAX_PIXELS output pixels the conv stays
    conv2d (measured slower there); in between it becomes conv2d_winograd."""
    from hetero.passes.optimize import WINOGRAD_MAX_PIXELS, WINOGRAD_MIN_PIXELS

    for side, want in ((int(WINOGRAD_MIN_PIXELS ** 0.5) - 1, "conv2d"), (32, "conv2d_winograd"),
                       (int(WINOGRAD_MAX_PIXELS ** 0.5) + 1, "conv2d")):
        g = GraphBuilder()
        x = g.input("x", (1, 128, side, side))
        y = g.op("conv", "conv2d", [x, g.const("w", rand(128, 128, 3, 3) * 0.05)],
                 pads=(1, 1, 1, 1))
        assert optimize(g.graph(y), winograd=True).node("conv").op == want, side


def test_batch_norm_folds_into_winograd_conv():
    from hetero.ops.nn import winograd_weights

    g = GraphBuilder()
    x = g.input("x", (1, 3, 6, 6))
    w = rand(4, 3, 3, 3)
    y = g.op("conv", "conv2d_winograd", [x, g.const("u", winograd_weights(w))],
             pads=(1, 1, 1, 1))
    y = g.op("bn", "batch_norm", [y, g.const("s", rand(4)), g.const("b", rand(4)),
                                  g.const("m", rand(4)), g.const("v", np.abs(rand(4)) + 0.5)])
    y = g.op("act", "tanh", [y])
    graph = g.graph(y)
    opt = optimize(graph)
    check(opt)
    assert [n.op for n in opt.nodes if n.op != "constant"] == ["input", "conv2d_winograd"]
    inputs = [rand(1, 3, 6, 6)]
    np.testing.assert_allclose(reference.run(opt, inputs)[0], reference.run(graph, inputs)[0],
                               rtol=1e-4, atol=1e-5)


def test_residual_block_fuses_into_conv2d_add():
    """x -> conv-bn-relu -> conv-bn --(+)--> relu, with a shortcut conv-bn emitted *after* the
    main branch: the add and the relu fuse into the main branch's last conv, which moves to where
    the add was."""
    g = GraphBuilder()
    x = g.input("x", (1, 4, 6, 6))

    def conv_bn(name, v, cin, cout, k):
        y = g.op(name, "conv2d", [v, g.const(f"{name}_w", rand(cout, cin, k, k))],
                 pads=(k // 2,) * 4)
        return g.op(f"{name}_bn", "batch_norm",
                    [y, g.const(f"{name}_s", rand(cout)), g.const(f"{name}_b", rand(cout)),
                     g.const(f"{name}_m", rand(cout)),
                     g.const(f"{name}_v", np.abs(rand(cout)) + 0.5)])

    y = g.op("r1", "relu", [conv_bn("c1", x, 4, 4, 3)])
    y = conv_bn("c2", y, 4, 8, 1)
    short = conv_bn("sc", x, 4, 8, 1)
    y = g.op("sum", "add", [y, short])
    y = g.op("out", "relu", [y])
    graph = g.graph(y)
    plain = optimize(graph)
    fused = optimize(graph, residual=True)
    check(fused)
    ops = [n.op for n in fused.nodes if n.op not in ("input", "constant")]
    assert ops == ["conv2d", "conv2d", "conv2d_add"], ops
    last = [n for n in fused.nodes if n.op == "conv2d_add"][0]
    assert last.attrs["activation"] == "relu" and last.inputs[3].node == "sc"
    assert len(fused.nodes) < len(plain.nodes)
    inputs = [rand(1, 4, 6, 6)]
    want = reference.run(graph, inputs)[0]
    np.testing.assert_allclose(reference.run(fused, inputs)[0], want, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(reference.run(plain, inputs)[0], want, rtol=1e-4, atol=1e-5)


def test_residual_not_fused_across_devices_or_broadcasts():
    g = GraphBuilder()
    x = g.input("x", (1, 2, 4, 4))
    c = g.op("conv", "conv2d", [x, g.const("w", rand(2, 2, 1, 1))], device="cpu:0")
    y = g.op("sum", "add", [c, x], device="gpu:0")
    assert fuse_residual(g.graph(y)).nodes == g.graph(y).nodes

    g = GraphBuilder()
    x = g.input("x", (1, 2, 4, 4))
    z = g.input("z", (1, 2, 1, 4))
    c = g.op("conv", "conv2d", [x, g.const("w", rand(2, 2, 1, 1))])
    y = g.op("sum", "add", [c, z])
    assert fuse_residual(g.graph(y)).nodes == g.graph(y).nodes


@pytest.mark.parametrize("inputs", [2, 3])
def test_residual_add_n_of_two_fuses(inputs):
    """ONNX Sum (add_n), how Caffe2 exports (ResNet-50, ShuffleNet) write the residual add, fuses
    like add when it sums two values; a sum of three is left alone."""
    g = GraphBuilder()
    x = g.input("x", (1, 4, 5, 5))
    c = g.op("conv", "conv2d", [x, g.const("w", rand(4, 4, 3, 3))], pads=(1, 1, 1, 1))
    y = g.op("sum", "add_n", [c, x, x][:inputs])
    y = g.op("out", "relu", [y])
    graph = g.graph(y)
    fused = optimize(graph, residual=True)
    check(fused)
    ops = [n.op for n in fused.nodes if n.op not in ("input", "constant")]
    assert ops == (["conv2d_add"] if inputs == 2 else ["conv2d", "add_n", "relu"]), ops
    xs = [rand(1, 4, 5, 5)]
    np.testing.assert_allclose(reference.run(fused, xs)[0], reference.run(graph, xs)[0],
                               rtol=1e-4, atol=1e-5)


def test_batch_norm_relu_fuses_and_hands_activation_to_a_conv():
    """DenseNet: concat -> batch_norm -> relu -> conv becomes batch_norm(relu) -> conv; a
    conv -> batch_norm(relu) pair folds into one conv with the relu."""
    g = GraphBuilder()
    x = g.input("x", (1, 4, 5, 5))

    def bn(name, v, c):
        return g.op(name, "batch_norm", [v, g.const(f"{name}_s", rand(c)),
                                         g.const(f"{name}_b", rand(c)),
                                         g.const(f"{name}_m", rand(c)),
                                         g.const(f"{name}_v", np.abs(rand(c)) + 0.5)])

    y = g.op("r1", "relu", [bn("bn1", x, 4)])
    y = g.op("conv", "conv2d", [y, g.const("w", rand(6, 4, 3, 3))], pads=(1, 1, 1, 1))
    y = g.op("r2", "relu", [bn("bn2", y, 6)])
    y = g.op("out", "mul", [bn("bn3", y, 6), g.const("k", rand(1, 6, 1, 1))])
    graph = g.graph(y)
    opt = optimize(graph)
    check(opt)
    nodes = [n for n in opt.nodes if n.op not in ("input", "constant")]
    assert [n.op for n in nodes] == ["batch_norm", "conv2d", "batch_norm"], nodes
    assert nodes[0].attrs["activation"] == "relu" and nodes[1].attrs["activation"] == "relu"
    assert nodes[2].attrs.get("activation", "none") == "none"  # its mul folded, no relu after
    xs = [rand(1, 4, 5, 5)]
    np.testing.assert_allclose(reference.run(opt, xs)[0], reference.run(graph, xs)[0],
                               rtol=1e-4, atol=1e-5)


def test_mul_after_an_activated_batch_norm_does_not_fold():
    g = GraphBuilder()
    x = g.input("x", (1, 3, 4, 4))
    y = g.op("bn", "batch_norm", [x, g.const("s", rand(3)), g.const("b", rand(3)),
                                  g.const("m", rand(3)), g.const("v", np.abs(rand(3)) + 0.5)],
             activation="relu")
    y = g.op("out", "mul", [y, g.const("k", -np.abs(rand(1, 3, 1, 1)))])
    graph = g.graph(y)
    opt = optimize(graph)
    assert [n.op for n in opt.nodes if n.op not in ("input", "constant")] == ["batch_norm", "mul"]
    xs = [rand(1, 3, 4, 4)]
    np.testing.assert_allclose(reference.run(opt, xs)[0], reference.run(graph, xs)[0],
                               rtol=1e-5, atol=1e-6)


def test_caffe2_batch_norm_mul_add_fold():
    """DenseNet-style: batch_norm(1, 0) -> mul(s [C,1,1]) -> add(b [C,1,1]) -> relu -> conv ->
    mul(s2) becomes batch_norm(relu) -> conv (weights scaled)."""
    g = GraphBuilder()
    x = g.input("x", (1, 4, 5, 5))
    ones, zeros = np.ones(4, np.float32), np.zeros(4, np.float32)
    y = g.op("bn", "batch_norm", [x, g.const("s", ones), g.const("b", zeros),
                                  g.const("m", rand(4)), g.const("v", np.abs(rand(4)) + 0.5)])
    y = g.op("scale", "mul", [y, g.const("k", rand(4, 1, 1))])
    y = g.op("shift", "add", [g.const("t", rand(1, 4, 1, 1)), y])
    y = g.op("relu", "relu", [y])
    y = g.op("conv", "conv2d", [y, g.const("w", rand(3, 4, 3, 3)), g.const("cb", rand(3))])
    y = g.op("scale2", "mul", [y, g.const("k2", rand(3, 1, 1))])
    graph = g.graph(y)
    opt = optimize(graph)
    check(opt)
    nodes = [n for n in opt.nodes if n.op not in ("input", "constant")]
    assert [n.op for n in nodes] == ["batch_norm", "conv2d"]  # the relu fused into the bn
    assert nodes[0].attrs["activation"] == "relu"
    inputs = [rand(1, 4, 5, 5)]
    np.testing.assert_allclose(reference.run(opt, inputs)[0], reference.run(graph, inputs)[0],
                               rtol=1e-4, atol=1e-5)

    # a mul whose constant is not per-channel stays
    g = GraphBuilder()
    x = g.input("x", (1, 4, 5, 5))
    y = g.op("bn", "batch_norm", [x] + [g.const(f"p{i}", np.ones(4, np.float32))
                                        for i in range(4)])
    y = g.op("scale", "mul", [y, g.const("k", rand(5))])
    assert [n.op for n in optimize(g.graph(y)).nodes][-1] == "mul"


@pytest.mark.parametrize("machine", ["cpu:1", "cpu:2,sim:1"])
def test_folding_keeps_a_0d_constant_0d(machine):
    """Issue 13.4: folding turned a 0-d constant into shape (1,): a wrong output shape, or an
    ExecutionError in a later add."""
    from hetero import ops

    c = np.asarray(np.float32(-.5))
    x = np.random.default_rng(0).standard_normal((4, 5)).astype(np.float32)
    g = ht.function(lambda x: (ops.abs(c), x / (ops.abs(c) + 1.0),
                               ops.neg(ops.abs(c)) * x)).graph(x)
    plan = ht.compile(g, machine=machine)
    got = plan.run(x)
    assert [a.shape for a in got] == [(), (4, 5), (4, 5)]
    want = [np.float32(.5), x / np.float32(1.5), np.float32(-.5) * x]
    for a, w in zip(got, want):
        np.testing.assert_allclose(a, w, rtol=1e-6)
    for node in plan.graph.nodes:
        if node.is_constant:
            assert plan.graph.constants[node.name].shape == node.outputs[0].shape


def _silu_graph(*, producer="conv2d", order=(0, 1), device=None):
    """x -> conv (or batch_norm) -> y; s = sigmoid(y); out = mul(y, s) (operands in ``order``)."""
    g = GraphBuilder()
    ann = {"device": device} if device else {}
    x = g.input("x", (2, 3, 9, 9))
    if producer == "conv2d":
        y = g.op("conv", "conv2d", [x, g.const("w", rand(6, 3, 3, 3)), g.const("b", rand(6))],
                 pads=(1, 1, 1, 1), **ann)
    else:
        y = g.op("bn", "batch_norm", [x, g.const("s", rand(3)), g.const("o", rand(3)),
                                      g.const("m", rand(3)), g.const("v", np.abs(rand(3)) + .5)],
                 **ann)
    s = g.op("sig", "sigmoid", [y], **ann)
    pair = (y, s)
    out = g.op("silu", "mul", [pair[order[0]], pair[order[1]]], **ann)
    return g, out


@pytest.mark.parametrize("producer, order", [("conv2d", (0, 1)), ("conv2d", (1, 0)),
                                             ("batch_norm", (0, 1))])
def test_silu_fuses_into_the_producer_with_the_same_bits(producer, order):
    """``mul(y, sigmoid(y))`` (SiLU as exporters write it) -> activation ``silu``: two nodes
    fewer, the same values (the NumPy reference's silu has the very bits of the two ops:
    tests/test_ops_nn.py; the compiled CPU one is within 4e-6: tests/test_cpu_kernels.py)."""
    g, out = _silu_graph(producer=producer, order=order)
    graph = g.graph(out)
    fused = fuse_activation(graph)
    check(fused)
    ops = [n.op for n in fused.nodes if n.computes]
    assert ops == [producer]
    (node,) = (n for n in fused.nodes if n.computes)
    assert node.attrs["activation"] == "silu" and node.name == ("conv" if producer == "conv2d"
                                                                 else "bn")
    assert fused.outputs == (node.value(),)
    inputs = [(rand(2, 3, 9, 9) * 4).astype(np.float32)]
    np.testing.assert_allclose(reference.run(fused, inputs)[0], reference.run(graph, inputs)[0],
                               rtol=4e-6, atol=4e-6)


def test_silu_not_fused_when_a_reader_or_output_needs_the_parts():
    """The conv's value or the sigmoid read by a third node, or returned, keeps the three nodes;
    ``mul(y, sigmoid(z))`` of another value is no SiLU."""
    for extra in ("conv", "sig"):
        g, out = _silu_graph()
        other = g.op("other", "relu", [Value(extra)])
        graph = g.graph(out, other)
        assert "mul" in [n.op for n in fuse_activation(graph).nodes]
        g, out = _silu_graph()
        graph = g.graph(out, Value(extra))
        assert "mul" in [n.op for n in fuse_activation(graph).nodes]
    g = GraphBuilder()
    x = g.input("x", (1, 2, 5, 5))
    y = g.op("conv", "conv2d", [x, g.const("w", rand(2, 2, 1, 1))])
    z = g.op("conv_z", "conv2d", [x, g.const("wz", rand(2, 2, 1, 1))])
    s = g.op("sig", "sigmoid", [z])
    out = g.op("m", "mul", [y, s])
    fused = fuse_activation(g.graph(out))
    assert [n.op for n in fused.nodes if n.computes].count("mul") == 1
    assert all(n.attrs.get("activation", "none") != "silu" for n in fused.nodes)


def test_silu_not_fused_across_devices():
    g, _ = _silu_graph()
    g.nodes[-1] = g.nodes[-1].replace(device="gpu:0")  # the mul annotated elsewhere
    graph = g.graph(g.nodes[-1].value())
    assert "mul" in [n.op for n in fuse_activation(graph).nodes]


@pytest.mark.parametrize("act, kw", [("hard_swish", {}), ("hard_sigmoid", {}),
                                     ("hard_sigmoid", {"alpha": 0.3, "beta": 0.4})])
def test_hard_activations_fuse_with_the_same_bits(act, kw):
    g = GraphBuilder()
    x = g.input("x", (1, 2, 6, 6))
    c = g.op("conv", "conv2d", [x, g.const("w", rand(4, 2, 3, 3)), g.const("b", rand(4))],
             pads=(1, 1, 1, 1))
    graph = g.graph(g.op("act", act, [c], **kw))
    fused = fuse_activation(graph)
    check(fused)
    assert [n.op for n in fused.nodes if n.computes] == ["conv2d"]
    inputs = [(rand(1, 2, 6, 6) * 8).astype(np.float32)]
    np.testing.assert_array_equal(reference.run(fused, inputs)[0], reference.run(graph, inputs)[0])


@pytest.mark.parametrize("machine, device", [("cpu:1", None), ("cpu:2", None),
                                             ("cpu:1,sim:1", "gpu:0")])
@pytest.mark.parametrize("act", ["silu", "hard_swish", "hard_sigmoid"])
def test_fused_activations_run_on_cpu_workers_and_the_simulated_gpu(machine, device, act):
    """The fused conv (compiled epilogue on a CPU worker, the reference kernel on the simulated
    GPU) against the unfused graph run by the reference executor."""
    g = GraphBuilder()
    ann = {"device": device} if device else {}
    x = g.input("x", (1, 8, 20, 20))
    y = g.op("conv", "conv2d", [x, g.const("w", rand(16, 8, 3, 3)), g.const("b", rand(16))],
             pads=(1, 1, 1, 1), **ann)
    dw = g.op("dw", "conv2d", [y, g.const("wd", rand(16, 1, 3, 3))], pads=(1, 1, 1, 1),
              groups=16, **ann)
    if act == "silu":
        out = g.op("m", "mul", [dw, g.op("s", "sigmoid", [dw], **ann)], **ann)
        y2 = g.op("m0", "mul", [g.op("s0", "sigmoid", [y], **ann), y], **ann)
        out = g.op("sum", "add", [out, g.op("pool", "max_pool2d", [y2], kernel_shape=(1, 1),
                                            **ann)], **ann)
    else:
        out = g.op("a", act, [dw], **ann)
    graph = g.graph(out)
    inputs = [(rand(1, 8, 20, 20) * 3).astype(np.float32)]
    want = reference.run(graph, inputs)[0]
    plan = ht.compile(graph, machine=machine)
    assert act in {n.attrs.get("activation") for n in plan.graph.nodes}
    np.testing.assert_allclose(plan.run(*inputs)[0], want, rtol=1e-5, atol=1e-5)
