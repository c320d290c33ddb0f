"""Example models written in Python, for the CLI:

    hetero place examples/model.py:mlp --input x=64x784:float32

Weights are made from a fixed seed, so the file runs anywhere without a download.
"""

from __future__ import annotations

import numpy as np

import hetero as ht
from hetero import ops

_rng = np.random.default_rng(7)


def _w(*shape: int) -> np.ndarray:
    return (_rng.standard_normal(shape) * 0.05).astype(np.float32)


W1, B1 = _w(784, 2048), _w(2048)
W2, B2 = _w(2048, 2048), _w(2048)
W3, B3 = _w(2048, 10), _w(10)


def mlp(x):
    """A three-layer perceptron; the classifier head is annotated to stay on the CPU."""
    h = ops.relu(x @ W1 + B1)
    h = ops.relu(h @ W2 + B2)
    with ht.device("cpu:0", soft=True):
        return ops.softmax(h @ W3 + B3, axis=-1)


def branches(x):
    """Two independent heavy branches that meet at the end."""
    left = ops.relu(x @ W1) @ W2
    right = ops.tanh(x @ W1) @ W2
    return (left + right).sum(axis=1)
