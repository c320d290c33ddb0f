"""Build the example ONNX models shipped in examples/ (deterministic: fixed seed).

    python examples/build_examples.py

- ``cnn.onnx``: a small image classifier (conv-bn-relu blocks, pooling, two heads that share the
  trunk), batch 8 of 3x64x64 images.
- ``two_tower.onnx``: a recommender-style model with two independent towers of large matmuls that
  meet at the end: the kind of graph where a CPU and a GPU are both worth using.
"""

from __future__ import annotations

import os

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

HERE = os.path.dirname(os.path.abspath(__file__))
RNG = np.random.default_rng(2026)


def _init(name: str, *shape: int, scale: float = 0.1) -> onnx.TensorProto:
    return numpy_helper.from_array((RNG.standard_normal(shape) * scale).astype(np.float32), name)


def cnn() -> onnx.ModelProto:
    nodes, inits = [], []
    channels = [3, 16, 32, 64]
    x = "image"
    for i in range(3):
        c_in, c_out = channels[i], channels[i + 1]
        inits += [_init(f"conv{i}.w", c_out, c_in, 3, 3), _init(f"conv{i}.b", c_out),
                  numpy_helper.from_array(np.abs(RNG.standard_normal(c_out)).astype(np.float32)
                                          + 0.5, f"bn{i}.scale"),
                  _init(f"bn{i}.bias", c_out), _init(f"bn{i}.mean", c_out),
                  numpy_helper.from_array(np.abs(RNG.standard_normal(c_out)).astype(np.float32)
                                          + 0.5, f"bn{i}.var")]
        nodes += [
            helper.make_node("Conv", [x, f"conv{i}.w", f"conv{i}.b"], [f"c{i}"], name=f"conv{i}",
                             pads=[1, 1, 1, 1]),
            helper.make_node("BatchNormalization", [f"c{i}", f"bn{i}.scale", f"bn{i}.bias",
                                                    f"bn{i}.mean", f"bn{i}.var"], [f"n{i}"],
                             name=f"bn{i}"),
            helper.make_node("Relu", [f"n{i}"], [f"r{i}"], name=f"relu{i}"),
            helper.make_node("MaxPool", [f"r{i}"], [f"p{i}"], name=f"pool{i}",
                             kernel_shape=[2, 2], strides=[2, 2]),
        ]
        x = f"p{i}"
    nodes += [helper.make_node("GlobalAveragePool", [x], ["gap"], name="gap"),
              helper.make_node("Flatten", ["gap"], ["feat"], name="flatten")]
    inits += [_init("cls.w", 64, 10), _init("cls.b", 10), _init("emb.w", 64, 32)]
    nodes += [
        helper.make_node("Gemm", ["feat", "cls.w", "cls.b"], ["logits"], name="classifier"),
        helper.make_node("Softmax", ["logits"], ["probs"], name="softmax", axis=1),
        helper.make_node("MatMul", ["feat", "emb.w"], ["emb"], name="embedding"),
        helper.make_node("Tanh", ["emb"], ["embedding"], name="emb_tanh"),
    ]
    graph = helper.make_graph(
        nodes, "cnn",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, [8, 3, 64, 64])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, [8, 10]),
         helper.make_tensor_value_info("embedding", TensorProto.FLOAT, [8, 32])],
        inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)],
                             producer_name="hetero-examples")


def two_tower() -> onnx.ModelProto:
    nodes, inits = [], []
    width = 512
    towers = []
    for side in ("user", "item"):
        x = side
        for layer in range(3):
            inits += [_init(f"{side}{layer}.w", width, width, scale=0.03),
                      _init(f"{side}{layer}.b", width, scale=0.01)]
            nodes += [
                helper.make_node("MatMul", [x, f"{side}{layer}.w"], [f"{side}{layer}.mm"],
                                 name=f"{side}_fc{layer}"),
                helper.make_node("Add", [f"{side}{layer}.mm", f"{side}{layer}.b"],
                                 [f"{side}{layer}.z"], name=f"{side}_bias{layer}"),
                helper.make_node("Relu", [f"{side}{layer}.z"], [f"{side}{layer}.h"],
                                 name=f"{side}_relu{layer}"),
            ]
            x = f"{side}{layer}.h"
        towers.append(x)
    nodes += [
        helper.make_node("Mul", towers, ["joint"], name="interaction"),
        helper.make_node("ReduceSum", ["joint", "axes"], ["score"], name="score", keepdims=0),
        helper.make_node("Sigmoid", ["score"], ["prob"], name="prob"),
    ]
    inits.append(numpy_helper.from_array(np.array([1], np.int64), "axes"))
    graph = helper.make_graph(
        nodes, "two_tower",
        [helper.make_tensor_value_info("user", TensorProto.FLOAT, [2048, width]),
         helper.make_tensor_value_info("item", TensorProto.FLOAT, [2048, width])],
        [helper.make_tensor_value_info("prob", TensorProto.FLOAT, [2048])],
        inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)],
                             producer_name="hetero-examples")


def main() -> None:
    for name, build in (("cnn", cnn), ("two_tower", two_tower)):
        model = build()
        onnx.checker.check_model(model)
        path = os.path.join(HERE, f"{name}.onnx")
        onnx.save(model, path)
        print(f"wrote {path} ({os.path.getsize(path) / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()
