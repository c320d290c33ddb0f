"""``ht.nn``: layers with named parameters, Sequential models and Keras' compile/fit/evaluate.

A layer is a ``Module``: its parameters are NumPy float32 arrays held by name
(``model.parameters()`` gives ``{"0.weight": ..., ...}``); ``module(x)`` runs its forward
function on Tensors through the ordinary ops, so it runs eagerly or inside a trace. The training
step (``Sequential.fit``) differentiates the loss with ``hetero.autodiff`` and, in graph mode,
traces loss, gradients and the optimizer's update into one ``@ht.function`` graph.
"""

from hetero.nn.layers import (
    AvgPool2d,
    BatchNorm,
    Conv2d,
    Dense,
    Dropout,
    DropoutTraceError,
    Embedding,
    Flatten,
    LayerNorm,
    MaxPool2d,
    Module,
    MultiHeadAttention,
    ReLU,
    Sequential,
    Tanh,
    cross_entropy,
)
from hetero.nn.onnx_export import export_onnx

__all__ = ["AvgPool2d", "BatchNorm", "Conv2d", "Dense", "Dropout", "DropoutTraceError",
           "Embedding", "Flatten", "LayerNorm", "MaxPool2d", "Module", "MultiHeadAttention",
           "ReLU", "Sequential", "Tanh", "cross_entropy", "export_onnx"]
