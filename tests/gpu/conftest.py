"""GPU test setup: skip every ``gpu``-marked test, with the reason, where CUDA is not usable.

A test is runnable when CuPy imports and ``cupy.cuda.runtime.getDeviceCount()`` reports at least
one device. Tests here that are not marked ``gpu`` (checks of the test tables themselves) always
run.
"""

from __future__ import annotations

import functools

import pytest


@functools.cache
def cuda_unavailable() -> str | None:
    """Why CUDA cannot be used here, or None when it can."""
    try:
        import cupy
    except Exception as exc:
        return f"CuPy is not installed ({type(exc).__name__}: {exc}); pip install 'hetero[gpu]'"
    try:
        count = int(cupy.cuda.runtime.getDeviceCount())
    except Exception as exc:
        return f"no usable CUDA driver ({type(exc).__name__}: {exc})"
    if count == 0:
        return "no CUDA device"
    return None


def pytest_collection_modifyitems(config, items):
    reason = cuda_unavailable()
    if reason is None:
        return
    skip = pytest.mark.skip(reason=f"needs a CUDA GPU: {reason}")
    for item in items:
        if item.get_closest_marker("gpu") is not None:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def gpu():
    """``CudaDevice`` for CUDA device 0."""
    from hetero.backends.cupy import CudaDevice

    dev = CudaDevice.from_index(0)
    yield dev
    dev.synchronize()


@pytest.fixture(scope="session")
def cp():
    import cupy

    return cupy
