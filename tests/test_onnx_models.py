"""The light ONNX model architectures with random weights and inputs, against onnxruntime.

onnx ships ResNet-50, Inception v1/v2, DenseNet-121, SqueezeNet, ShuffleNet, VGG-19, AlexNet and
ZFNet-512 under ``onnx/backend/test/data/light`` with every weight made by a ConstantOfShape (a
constant fill, so every class gets the same score). Here each such fill becomes a random
initializer of the same shape (He-scaled weights, positive batch-norm variances), and hetero's
compiled plan must match onnxruntime within 1e-4 relative error (max|a-b| / max|b|) on one CPU
worker, two CPU workers, and two CPU workers plus a simulated GPU.
"""

from __future__ import annotations

import math
import os

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

import hetero  # noqa: E402
import hetero.onnx as ho  # noqa: E402

LIGHT_DIR = os.path.join(os.path.dirname(onnx.__file__), "backend", "test", "data", "light")
MODELS = ("bvlc_alexnet", "densenet121", "inception_v1", "inception_v2", "resnet50",
          "shufflenet", "squeezenet", "vgg19", "zfnet512")
MACHINES = ("cpu:1", "cpu:2", "cpu:2,sim:1")
RTOL = 1e-4


def light_model_with_random_weights(name: str, seed: int = 0):
    """The light model ``name`` with every ConstantOfShape fill replaced by a random
    initializer; returns (ModelProto, {input name: random input})."""
    from onnx import helper, numpy_helper

    model = onnx.load(os.path.join(LIGHT_DIR, f"light_{name}.onnx"))
    rng = np.random.default_rng(seed)
    g = model.graph
    inits = {t.name: numpy_helper.to_array(t) for t in g.initializer}
    role: dict[str, tuple[str, int]] = {}
    for node in g.node:
        for i, name_in in enumerate(node.input):
            role.setdefault(name_in, (node.op_type, i))
    new_nodes, new_inits = [], []
    for node in g.node:
        if node.op_type != "ConstantOfShape":
            new_nodes.append(node)
            continue
        shape = tuple(int(d) for d in inits[node.input[0]])
        new_inits.append(numpy_helper.from_array(_random(rng, shape, role.get(node.output[0])),
                                                 node.output[0]))
    for t in g.initializer:  # small float initializers (biases, bn scales) become random too
        arr = inits[t.name]
        if arr.dtype == np.float32 and t.name in role:
            t.CopyFrom(numpy_helper.from_array(_random(rng, arr.shape, role[t.name]), t.name))
    del g.node[:]
    g.node.extend(new_nodes)
    g.initializer.extend(new_inits)
    g.input.extend(helper.make_tensor_value_info(t.name, onnx.TensorProto.FLOAT, t.dims)
                   for t in new_inits)  # IR 3 lists every initializer among the inputs
    # the logits are outputs too: a saturated softmax alone would hide errors
    outputs = {vo.name for vo in g.output}
    for node in g.node:
        if node.op_type == "Softmax" and node.output[0] in outputs:
            g.output.append(helper.make_tensor_value_info(node.input[0], onnx.TensorProto.FLOAT,
                                                          None))
    names = {t.name for t in g.initializer}
    feeds = {}
    for vi in g.input:
        if vi.name not in names:
            shape = [d.dim_value for d in vi.type.tensor_type.shape.dim]
            feeds[vi.name] = rng.standard_normal(shape).astype(np.float32)
    return model, feeds


def _random(rng, shape, role) -> np.ndarray:
    op, index = role or ("", 0)
    if op == "BatchNormalization" and index in (1, 4):  # scale and variance: positive
        return rng.uniform(0.5, 1.5, shape).astype(np.float32)
    x = rng.standard_normal(shape, dtype=np.float32)
    if len(shape) >= 2:
        fan_in = math.prod(shape[1:]) if op == "Conv" else max(shape)  # Gemm: K is the larger
        x *= np.float32(math.sqrt(2.0 / fan_in))
    else:
        x *= np.float32(0.1)
    return x


def onnxruntime_outputs(model, feeds, threads: int = 0) -> list[np.ndarray]:
    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    sess = ort.InferenceSession(model.SerializeToString(), opts,
                                providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


def rel_error(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-30))


@pytest.fixture(scope="module")
def cases():
    return {}


def _case(cases, name):
    if name not in cases:
        model, feeds = light_model_with_random_weights(name)
        cases[name] = (ho.load(model), model, feeds, onnxruntime_outputs(model, feeds))
    return cases[name]


@pytest.mark.slow
@pytest.mark.parametrize("name", MODELS)
def test_light_model_matches_onnxruntime(cases, name):
    graph, model, feeds, expected = _case(cases, name)
    hetero.check(graph)
    assert graph.inputs == tuple(feeds)
    assert len(expected) == len(graph.outputs)
    # the fills were the only weights: none of them may survive as a graph op
    assert not any(n.op in ("constant_of_shape",) for n in graph.nodes)
    inputs = [feeds[n] for n in graph.inputs]
    for spec in MACHINES:
        plan = hetero.compile(graph, machine=hetero.Machine.parse(spec))
        outs = plan.run(*inputs)
        assert len(outs) == len(expected)
        for got, want in zip(outs, expected):
            assert got.shape == want.shape and got.dtype == want.dtype
            err = rel_error(got, want)
            assert err <= RTOL, f"{name} on {spec}: relative error {err:.2e}"


def test_random_weights_change_the_answer():
    """The random fills matter: the light models' constant weights give a flat softmax, ours
    does not (so the comparison above can fail)."""
    model, feeds = light_model_with_random_weights("squeezenet")
    out = onnxruntime_outputs(model, feeds)[0]
    assert out.std() > 1e-4
