"""Device backends: ``sim`` (simulated GPU), ``cupy`` (CUDA GPUs); CPU workers live in
``hetero.devices``. Nothing here imports CuPy unless a CuPy array is already in hand."""

from __future__ import annotations

import sys
from typing import Any

import numpy as np


def array_namespace(*arrays: Any) -> Any:
    """The array module of ``arrays``: ``cupy`` for CuPy arrays, else ``numpy`` (NumPy arrays,
    simulated-GPU buffers, scalars). CuPy is only taken from ``sys.modules``, never imported."""
    for a in arrays:
        if (type(a).__module__ or "").startswith("cupy"):
            return sys.modules["cupy"]
    return np


__all__ = ["array_namespace"]
