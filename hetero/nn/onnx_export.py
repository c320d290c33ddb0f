"""A Sequential model as an ONNX model (opset 17): Conv, Relu, Tanh, MaxPool, AveragePool,
Flatten and Gemm nodes with the trained weights as initializers. ``onnx`` is imported here, on
use."""

from __future__ import annotations

from typing import Any

import numpy as np

from hetero.errors import ModelError
from hetero.nn.layers import AvgPool2d, Conv2d, Dense, Flatten, MaxPool2d, ReLU, Sequential, Tanh


def export_onnx(model: Sequential, path: str | None, input_shape: tuple[int, ...]) -> Any:
    """Write ``model`` to ``path`` (or only return it when None) as an ``onnx.ModelProto`` with one
    float32 input ``x`` of ``input_shape`` (the batch dimension left symbolic) and output
    ``y``."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    nodes, inits = [], []
    cur = "x"
    for i, layer in enumerate(model.layers):
        out = f"l{i}"
        if isinstance(layer, Conv2d):
            a = layer.attrs
            for k in ("weight", "bias"):
                inits.append(numpy_helper.from_array(layer.params[k], f"{i}.{k}"))
            nodes.append(helper.make_node("Conv", [cur, f"{i}.weight", f"{i}.bias"], [out],
                                          strides=list(a["strides"]), pads=list(a["pads"]),
                                          group=a["groups"]))
        elif isinstance(layer, Dense):
            for k in ("weight", "bias"):
                inits.append(numpy_helper.from_array(layer.params[k], f"{i}.{k}"))
            nodes.append(helper.make_node("Gemm", [cur, f"{i}.weight", f"{i}.bias"], [out]))
        elif isinstance(layer, (ReLU, Tanh)):
            nodes.append(helper.make_node("Relu" if isinstance(layer, ReLU) else "Tanh",
                                          [cur], [out]))
        elif isinstance(layer, Flatten):
            nodes.append(helper.make_node("Flatten", [cur], [out], axis=1))
        elif isinstance(layer, (MaxPool2d, AvgPool2d)):
            k, s = layer.k, layer.s
            nodes.append(helper.make_node("MaxPool" if isinstance(layer, MaxPool2d)
                                          else "AveragePool", [cur], [out],
                                          kernel_shape=[k, k], strides=[s, s]))
        else:
            raise ModelError(f"export_onnx: layer {i} ({type(layer).__name__}, made at "
                             f"{layer.where}) has no ONNX form")
        cur = out
    nodes.append(helper.make_node("Identity", [cur], ["y"]))
    out_shape = model.predict(np.zeros((1, *input_shape[1:]), np.float32)).shape[1:]
    graph = helper.make_graph(
        nodes, "hetero_sequential",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", *input_shape[1:]])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", *out_shape])], inits)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(proto)
    if path is not None:
        onnx.save(proto, path)
    return proto


