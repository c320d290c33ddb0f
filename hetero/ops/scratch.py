"""Per-thread scratch for kernels that need a second value per element, chunk by chunk.

An activation such as SELU, a float32 erf or a fused SiLU gate needs one temporary the size of
what it computes. ``by_chunks`` runs such a kernel over chunks of its input and output through
one small buffer per thread and dtype, so a steady-state run allocates nothing
(tests/test_allocations.py) and the chunk stays in cache. The chunks only bound memory: each
kernel computes element by element, so the result is the same for any chunk size.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import numpy as np

__all__ = ["by_chunks"]

_LOCAL = threading.local()


def _buffer(dtype: Any, n: int) -> np.ndarray | None:
    """This thread's scratch of ``dtype``, at least ``n`` long; None while it is in use (a kernel
    that runs another chunked kernel inside its part gets a fresh buffer instead)."""
    if getattr(_LOCAL, "busy", False):
        return None
    bufs = getattr(_LOCAL, "bufs", None)
    if bufs is None:
        bufs = _LOCAL.bufs = {}
    dtype = np.dtype(dtype)
    buf = bufs.get(dtype)
    if buf is None or buf.size < n:
        buf = bufs[dtype] = np.empty(n, dtype)
    return buf


def by_chunks(xp: Any, part: Callable[[Any, Any, Any, Any], None], x: Any, out: Any, *,
              chunk: int, dtype: Any = None) -> None:
    """``part(xp, x, out, s)`` over matching chunks of ``x`` and ``out`` (``x`` may be ``out``),
    with a scratch ``s`` of the chunk's shape and ``dtype`` (default ``out``'s).

    On NumPy: whole when ``out`` has at most ``chunk`` elements; chunks of the flat arrays when
    both are C-contiguous; bands of rows of a 2-D ``out`` (a column band of an epilogue); else
    one scratch of the full size. Other namespaces get one scratch of the full size (a GPU runs
    one kernel per pass, and chunks would multiply the launches)."""
    dtype = out.dtype if dtype is None else np.dtype(dtype)
    n = out.size
    if xp.__name__ != "numpy":
        part(xp, x, out, xp.empty(out.shape, dtype))
        return
    buf = _buffer(dtype, chunk)
    if buf is None:
        part(np, x, out, np.empty(out.shape, dtype))
        return
    _LOCAL.busy = True
    try:
        if n <= chunk:
            part(np, x, out, buf[:n].reshape(out.shape))
        elif x.shape != out.shape:
            part(np, x, out, np.empty(out.shape, dtype))
        elif x.flags.c_contiguous and out.flags.c_contiguous:
            xf, of = x.reshape(-1), out.reshape(-1)
            for i in range(0, n, chunk):
                j = min(i + chunk, n)
                part(np, xf[i:j], of[i:j], buf[:j - i])
        elif out.ndim == 2 and out.shape[1] <= chunk:
            step = chunk // out.shape[1]
            for i in range(0, out.shape[0], step):
                dst = out[i:i + step]
                part(np, x[i:i + step], dst, buf[:dst.size].reshape(dst.shape))
        else:
            part(np, x, out, np.empty(out.shape, dtype))
    finally:
        _LOCAL.busy = False
