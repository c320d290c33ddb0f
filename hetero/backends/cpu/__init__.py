"""Compiled CPU kernels: LLVM loops (numba) for the data movement NumPy does slowly.

``install()`` puts them into ``Op.kernels["numpy"]``, the kernels CPU workers run; the executor
calls it when it binds a plan's CPU kernels, so numba is imported (about 0.3 s) only by a
process that runs something on a CPU worker. The loops are compiled on first use and cached on
disk (numba's cache, beside this package or in ``NUMBA_CACHE_DIR``), so a second process loads
them instead of compiling again.

What is compiled and why (docs/cpu-kernels.md has the measurements): the depthwise
convolution (``conv2d`` with one input channel per group: MobileNet, EfficientNet, ShuffleNet),
a direct loop per channel and tap, NCHW in and out, where NumPy needs a channels-last copy and a
pass over the whole tensor per tap (3-3.5x faster on one core at MobileNet's 3x3 shapes); on maps
narrower than 14 (24 when strided) one loop over NumPy's channels-last copy instead. Ungrouped
convolutions stay NumPy's im2col and OpenBLAS's GEMM: measured here, their time is the GEMM's,
and compiled im2col packing and epilogues were no faster than NumPy's copies (same doc).

Each compiled kernel computes the very values of the reference kernel (``hetero.ops``) in the same
floating-point order: tests/test_cpu_kernels.py checks them bit for bit, so the reference
executor, the simulated GPU (which runs the reference kernels) and a CPU worker agree exactly.
Where a case is not covered (float16, non-contiguous buffers, an activation without a compiled
form) the kernel hands the call to the reference kernel.

``HETERO_CPU_KERNELS=numpy`` turns them off (the reference kernels run); without numba they are
off and ``status()`` says why.
"""

from __future__ import annotations

import os
import threading
from typing import Any

from hetero.ops import registry

__all__ = ["install", "installed", "status"]

_lock = threading.Lock()
_state: dict[str, Any] = {"done": False, "ops": (), "why": "not installed yet"}


def install() -> bool:
    """Install the compiled CPU kernels (once per process); True when they are in use."""
    if _state["done"]:
        return bool(_state["ops"])
    with _lock:
        if _state["done"]:
            return bool(_state["ops"])
        try:
            ops = _install()
            _state.update(ops=tuple(ops), why="numba " + _numba_version())
        except _Off as exc:
            _state.update(ops=(), why=str(exc))
        _state["done"] = True
    return bool(_state["ops"])


def installed() -> tuple[str, ...]:
    """The ops whose CPU kernel is compiled (empty before ``install()`` or when off)."""
    return _state["ops"]


def status() -> str:
    """One line: which compiled CPU kernels run, or why none do."""
    if _state["ops"]:
        return f"compiled CPU kernels ({_state['why']}): {', '.join(_state['ops'])}"
    return f"compiled CPU kernels off: {_state['why']}"


class _Off(Exception):
    pass


def _numba_version() -> str:
    import numba

    return numba.__version__


def _install() -> list[str]:
    choice = os.environ.get("HETERO_CPU_KERNELS", "compiled").strip().lower()
    if choice in ("numpy", "reference", "off", "0"):
        raise _Off("HETERO_CPU_KERNELS=numpy")
    try:
        from hetero.backends.cpu import kernels
    except ImportError as exc:  # numba (or its llvmlite) missing or broken
        raise _Off(f"numba is not importable ({exc}); pip install 'hetero[cpu]'") from None
    names = []
    for name, make in kernels.KERNELS.items():
        op = registry.lookup(name)
        shared = op.kernels.get("numpy", op.kernel)
        op.kernels["numpy"] = make(shared)
        names.append(name)
    return names
