"""A Sequential model as an ONNX model (opset 17), in inference form, with the trained weights
as initializers. ``onnx`` is imported here, on use.

Each layer becomes the ONNX nodes that compute what its eval-mode forward computes:

- Conv2d: Conv; Dense: Gemm on 2-D input, MatMul + Add on higher ranks (weight is in x out);
- ReLU, Tanh: Relu, Tanh; Flatten: Flatten(axis=1); MaxPool2d / AvgPool2d: MaxPool /
  AveragePool;
- LayerNorm: LayerNormalization over the last axis;
- BatchNorm: BatchNormalization with the running statistics (eval mode);
- Dropout: Identity (eval mode);
- Embedding: Gather of the weight's rows (the model's input is then int64 indices);
- MultiHeadAttention: the projections (MatMul + Add), Reshape/Transpose into heads, the scaled
  scores (MatMul, Mul), the causal mask as an added constant, Softmax, MatMul, and the heads
  joined and projected back.

The batch dimension of the input (and of the output) is symbolic ("N"); every other dimension is
the one given in ``input_shape``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from hetero.errors import ModelError
from hetero.nn.layers import (
    AvgPool2d,
    BatchNorm,
    Conv2d,
    Dense,
    Dropout,
    Embedding,
    Flatten,
    LayerNorm,
    MaxPool2d,
    MultiHeadAttention,
    ReLU,
    Sequential,
    Tanh,
)


class _Builder:
    """The nodes and initializers of the exported graph, with fresh names."""

    def __init__(self) -> None:
        from onnx import helper, numpy_helper

        self.helper, self.numpy_helper = helper, numpy_helper
        self.nodes: list[Any] = []
        self.inits: list[Any] = []
        self._n = 0

    def const(self, name: str, array: np.ndarray) -> str:
        self.inits.append(self.numpy_helper.from_array(np.asarray(array), name))
        return name

    def node(self, op: str, inputs: list[str], out: str | None = None, **attrs: Any) -> str:
        if out is None:
            self._n += 1
            out = f"t{self._n}"
        self.nodes.append(self.helper.make_node(op, inputs, [out], **attrs))
        return out


def _dense(b: _Builder, i: int, layer: Dense, cur: str, rank: int) -> str:
    w = b.const(f"{i}.weight", layer.params["weight"])
    bias = b.const(f"{i}.bias", layer.params["bias"])
    if rank == 2:
        return b.node("Gemm", [cur, w, bias])
    return b.node("Add", [b.node("MatMul", [cur, w]), bias])


def _attention(b: _Builder, i: int, layer: MultiHeadAttention, cur: str,
               shape: tuple[int, ...]) -> str:
    _, s, dim = shape
    h = layer.heads
    d = dim // h
    p = {k: b.const(f"{i}.{k}", v) for k, v in layer.params.items()}
    heads = b.const(f"{i}.heads_shape", np.array([0, 0, h, d], np.int64))  # 0: keep that dim
    joined = b.const(f"{i}.joined_shape", np.array([0, 0, dim], np.int64))

    def project(name: str, perm: list[int]) -> str:
        y = b.node("Add", [b.node("MatMul", [cur, p[f"{name}_weight"]]), p[f"{name}_bias"]])
        return b.node("Transpose", [b.node("Reshape", [y, heads])], perm=perm)

    q = project("q", [0, 2, 1, 3])
    k = project("k", [0, 2, 3, 1])
    v = project("v", [0, 2, 1, 3])
    scale = b.const(f"{i}.scale", np.array(1.0 / np.sqrt(d), np.float32))
    scores = b.node("Mul", [b.node("MatMul", [q, k]), scale])
    if layer.causal:
        mask = np.triu(np.full((s, s), layer._MASKED, np.float32), k=1)
        scores = b.node("Add", [scores, b.const(f"{i}.causal_mask", mask)])
    y = b.node("MatMul", [b.node("Softmax", [scores], axis=-1), v])
    y = b.node("Reshape", [b.node("Transpose", [y], perm=[0, 2, 1, 3]), joined])
    return b.node("Add", [b.node("MatMul", [y, p["out_weight"]]), p["out_bias"]])


def _layer(b: _Builder, i: int, layer: Any, cur: str, shape: tuple[int, ...]) -> str:
    if isinstance(layer, Conv2d):
        a = layer.attrs
        w = b.const(f"{i}.weight", layer.params["weight"])
        bias = b.const(f"{i}.bias", layer.params["bias"])
        return b.node("Conv", [cur, w, bias], strides=list(a["strides"]), pads=list(a["pads"]),
                      group=a["groups"])
    if isinstance(layer, Dense):
        return _dense(b, i, layer, cur, len(shape))
    if isinstance(layer, (ReLU, Tanh)):
        return b.node("Relu" if isinstance(layer, ReLU) else "Tanh", [cur])
    if isinstance(layer, Flatten):
        return b.node("Flatten", [cur], axis=1)
    if isinstance(layer, (MaxPool2d, AvgPool2d)):
        k, s = layer.k, layer.s
        return b.node("MaxPool" if isinstance(layer, MaxPool2d) else "AveragePool", [cur],
                      kernel_shape=[k, k], strides=[s, s])
    if isinstance(layer, LayerNorm):
        return b.node("LayerNormalization", [cur, b.const(f"{i}.scale", layer.params["scale"]),
                                             b.const(f"{i}.bias", layer.params["bias"])],
                      axis=-1, epsilon=float(layer.epsilon))
    if isinstance(layer, BatchNorm):
        names = [b.const(f"{i}.scale", layer.params["scale"]),
                 b.const(f"{i}.bias", layer.params["bias"]),
                 b.const(f"{i}.running_mean", layer.state["running_mean"]),
                 b.const(f"{i}.running_var", layer.state["running_var"])]
        return b.node("BatchNormalization", [cur, *names], epsilon=float(layer.epsilon))
    if isinstance(layer, Dropout):
        return b.node("Identity", [cur])
    if isinstance(layer, Embedding):
        return b.node("Gather", [b.const(f"{i}.weight", layer.params["weight"]), cur], axis=0)
    if isinstance(layer, MultiHeadAttention):
        return _attention(b, i, layer, cur, shape)
    raise ModelError(f"export_onnx: layer {i} ({type(layer).__name__}, made at {layer.where}) "
                     "has no ONNX form")


def export_onnx(model: Sequential, path: str | None, input_shape: tuple[int, ...]) -> Any:
    """Write ``model`` to ``path`` (or only return it when None) as an ``onnx.ModelProto`` with
    one input ``x`` of ``input_shape`` (the batch dimension left symbolic; float32, or int64
    indices when the first layer is an Embedding) and output ``y``: the model in eval mode (see
    the module docstring)."""
    import onnx
    from onnx import TensorProto, helper

    b = _Builder()
    integer = bool(model.layers) and model.layers[0].integer_input
    probe: Any = np.zeros((1, *input_shape[1:]), np.int64 if integer else np.float32)
    before = model._set_training(False)  # shapes of each layer's input, as predict sees them
    try:
        cur = "x"
        for i, layer in enumerate(model.layers):
            shape = tuple(np.shape(probe))
            cur = _layer(b, i, layer, cur, shape)
            out = layer(probe)
            probe = np.asarray(out.numpy() if hasattr(out, "numpy") else out)
    finally:
        model._restore(before)
    b.node("Identity", [cur], "y")
    graph = helper.make_graph(
        b.nodes, "hetero_sequential",
        [helper.make_tensor_value_info("x", TensorProto.INT64 if integer else TensorProto.FLOAT,
                                       ["N", *input_shape[1:]])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", *probe.shape[1:]])],
        b.inits)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(proto)
    if path is not None:
        onnx.save(proto, path)
    return proto
