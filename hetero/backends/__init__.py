"""Device backends: ``sim`` (simulated GPU), ``cupy`` (CUDA GPUs); CPU workers live in
``hetero.devices``. Each registers its device class with ``hetero.devices.register_backend``
here; the CUDA backend is loaded on first use, so nothing here imports CuPy unless a CuPy array is
already in hand or a CUDA GPU is asked for."""

from __future__ import annotations

import sys
from typing import Any

import numpy as np

from hetero.backends.sim import SimDevice
from hetero.devices import register_backend


def _cuda_device_class() -> Any:
    from hetero.backends.cupy import CudaDevice

    return CudaDevice


register_backend("sim", lambda: SimDevice)
register_backend("cupy", _cuda_device_class)


def array_namespace(*arrays: Any) -> Any:
    """The array module of ``arrays``: ``cupy`` for CuPy arrays, else ``numpy`` (NumPy arrays,
    simulated-GPU buffers, scalars). CuPy is only taken from ``sys.modules``, never imported."""
    for a in arrays:
        if (type(a).__module__ or "").startswith("cupy"):
            return sys.modules["cupy"]
    return np


__all__ = ["array_namespace"]
