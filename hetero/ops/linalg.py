"""Matrix products: ``matmul`` (NumPy semantics, batch broadcasting) and ``gemm`` (ONNX Gemm).

Both kernels call ``xp.matmul(..., out=)`` so the BLAS (or cuBLAS) writes straight into the
preallocated output; transposes are strided views, never copies made here. ``gemm`` applies
``alpha`` and adds ``beta * c`` in place on the output, skipping the passes for ``alpha == 1``,
``beta == 1`` and a missing ``c``.

On the CPU a large product is cut into pieces that ``hetero.threads.parallel_for`` runs on the
intra-op threads the executor grants, each one single-threaded GEMM writing its own slice of the
output (``_pieces``): bands of output columns where the product is wide (a fully connected
layer's features, a transformer's projections), bands of rows where it is tall, slices of the
batch of a batched product (below leading axes of size 1: attention's ``(1, heads, S, d)``
products are cut over the heads). A Linear layer on a 3-D input, ``(B, S, K) @ (K, N)``, is one
``(B*S, K) @ (K, N)`` product. The cut depends on the shapes only, so the result does not depend
on how many threads ran it. Band edges fall on multiples of 64 columns or 16 rows, where
OpenBLAS's SkylakeX kernel computes every element as the whole product does; its Haswell kernel
(AMD EPYC) rounds row and column tails differently even within one call, so there a band's bits
can differ from the whole product's by an ulp (never from one run or thread count to another).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from hetero.errors import ShapeError
from hetero.graph import TensorSpec
from hetero.ops import nn
from hetero.ops.registry import Cost, Op, broadcast_shapes, register, same_dtype
from hetero.threads import parallel_for
from hetero.tracing import apply, promote_operands

__all__ = ["matmul", "gemm"]


def _matmul_shapes(a: tuple[int, ...], b: tuple[int, ...], name: str) -> tuple[int, ...]:
    """Output shape of NumPy matmul; a ShapeError that shows both shapes."""
    if not a or not b:
        raise ShapeError(f"{name} needs inputs of rank >= 1, got shapes {a} and {b}")
    a2 = (1,) + a if len(a) == 1 else a
    b2 = b + (1,) if len(b) == 1 else b
    if a2[-1] != b2[-2]:
        raise ShapeError(f"shapes {a} and {b} do not align for {name} "
                         f"({a2[-1]} (dim {len(a) - 1}) != {b2[-2]} (dim {max(len(b) - 2, 0)}))")
    try:
        batch = broadcast_shapes(a2[:-2], b2[:-2])
    except ShapeError:
        raise ShapeError(f"{name}: batch dimensions of shapes {a} and {b} cannot be broadcast "
                         "together") from None
    out = batch + (a2[-2], b2[-1])
    if len(a) == 1:
        out = out[:-2] + out[-1:]
    if len(b) == 1:
        out = out[:-1]
    return out


def _matmul_infer(ins, attrs):
    a, b = ins
    dtype = same_dtype(ins, "the inputs of matmul")
    if dtype.kind not in "fiuc":
        raise ShapeError(f"matmul does not take {dtype.name} inputs")
    return (TensorSpec(_matmul_shapes(a.shape, b.shape, "matmul"), dtype),)


def _matmul_cost(ins, outs, attrs):
    k = ins[0].shape[-1]
    return Cost(flops=2.0 * outs[0].size * k,
                bytes=float(ins[0].nbytes + ins[1].nbytes + outs[0].nbytes))


def _gemm_infer(ins, attrs):
    a, b = ins[0], ins[1]
    dtype = same_dtype(ins, "the inputs of gemm")
    if dtype.kind not in "fiuc":
        raise ShapeError(f"gemm does not take {dtype.name} inputs")
    if a.ndim != 2 or b.ndim != 2:
        raise ShapeError(f"gemm needs 2-D a and b, got shapes {a.shape} and {b.shape}")
    for flag in ("trans_a", "trans_b"):
        if attrs[flag] not in (0, 1, True, False):
            raise ShapeError(f"gemm {flag} must be 0 or 1, got {attrs[flag]!r}")
    m, ka = a.shape[::-1] if attrs["trans_a"] else a.shape
    kb, n = b.shape[::-1] if attrs["trans_b"] else b.shape
    if ka != kb:
        raise ShapeError(f"shapes {a.shape} and {b.shape} do not align for gemm with "
                         f"trans_a={int(attrs['trans_a'])}, trans_b={int(attrs['trans_b'])} "
                         f"({ka} != {kb})")
    if len(ins) == 3:
        c = ins[2]
        try:
            full = broadcast_shapes(c.shape, (m, n))
        except ShapeError:
            full = None
        if full != (m, n):
            raise ShapeError(f"gemm: c of shape {c.shape} cannot be broadcast to the product's "
                             f"shape {(m, n)}")
    return (TensorSpec((m, n), dtype),)


def _gemm_cost(ins, outs, attrs):
    a = ins[0]
    k = a.shape[0] if attrs["trans_a"] else a.shape[1]
    mn = outs[0].size
    extra = (mn if attrs["alpha"] != 1 else 0) + (2 * mn if len(ins) == 3 else 0)
    return Cost(flops=2.0 * mn * k + extra,
                bytes=float(sum(s.nbytes for s in ins) + outs[0].nbytes))


#: A product is cut into column bands of at least this many output columns, or row bands of at
#: least ``GEMM_MIN_ROWS`` rows, and only when it has at least ``nn.SPLIT_MIN_FLOPS``.
GEMM_MIN_COLUMNS = 128
GEMM_MIN_ROWS = 64
#: Band edges fall on multiples of these.
GEMM_BAND_ALIGN = 64
GEMM_ROW_ALIGN = 16


def _edges(size: int, bands: int, align: int) -> list[int]:
    return [0, *(i * size // bands // align * align for i in range(1, bands)), size]


def _pieces(a, b, out) -> list[tuple[Any, Any, Any, tuple[slice, ...]]] | None:
    """The product ``out = a @ b`` (NumPy, float) cut into ``(a piece, b piece, out piece,
    index)`` by the shapes alone (see the module docstring), or None to run it whole."""
    if out.dtype.kind != "f" or a.ndim == 0 or b.ndim == 0 or out.size == 0:
        return None
    k = a.shape[-1]
    if 2.0 * out.size * k < nn.SPLIT_MIN_FLOPS:
        return None
    if a.ndim > 2 and b.ndim == 2 and out.flags.c_contiguous:
        rows = a.reshape(-1, k)  # a view when a is contiguous; a copy is worth the split
        return _pieces(rows, b, out.reshape(-1, out.shape[-1]))
    if out.ndim > 2 and out.shape[0] == 1:  # batch 1 (attention's (1, heads, S, S)): cut below
        def drop(x):
            return x[0] if x.ndim == out.ndim else x

        inner = _pieces(drop(a), drop(b), out[0])
        return None if inner is None else [(pa, pb, po, (0, *ix)) for pa, pb, po, ix in inner]
    if out.ndim > 2:  # a batch of products: slices of the leading axis
        bands = min(nn.SPLIT_MAX_PIECES, out.shape[0])
        if bands < 2:
            return None
        edges = _edges(out.shape[0], bands, 1)
        lead = [slice(edges[i], edges[i + 1]) for i in range(bands)]

        def part(x, s):
            return x[s] if x.ndim == out.ndim and x.shape[0] == out.shape[0] else x

        return [(part(a, s), part(b, s), out[s], (s,)) for s in lead]
    if a.ndim != 2 or b.ndim != 2:
        return None
    m, n = out.shape
    if n >= m and n // GEMM_MIN_COLUMNS >= 2:
        bands = min(nn.SPLIT_MAX_PIECES, n // GEMM_MIN_COLUMNS)
        # three column bands (384-511 columns) become two: three pieces left one of two
        # threads idle for a third of the product, and four would cut 384 columns into
        # 64-aligned bands of 64 and 128. (196, 1536) @ (1536, 384) (ConvNeXt-T's stage 3), two
        # threads, interleaved medians of 41: three bands 1.57 ms, two 1.26, four 1.64
        # (docs/cpu-kernels.md)
        bands = 2 if bands == 3 else bands
        edges = _edges(n, bands, GEMM_BAND_ALIGN)
        cols = [slice(edges[i], edges[i + 1]) for i in range(bands)]
        return [(a, b[:, c], out[:, c], (slice(None), c)) for c in cols]
    if m // GEMM_MIN_ROWS >= 2:
        bands = min(nn.SPLIT_MAX_PIECES, m // GEMM_MIN_ROWS)
        edges = _edges(m, bands, GEMM_ROW_ALIGN)
        rows = [slice(edges[i], edges[i + 1]) for i in range(bands)]
        return [(a[r], b, out[r], (r,)) for r in rows]
    return None


def _matmul_kernel(xp, ins, attrs, outs):
    a, b, out = ins[0], ins[1], outs[0]
    pieces = _pieces(a, b, out) if xp is np else None
    if pieces is None:
        xp.matmul(a, b, out=out)
        return
    parallel_for(len(pieces), lambda i: np.matmul(pieces[i][0], pieces[i][1],
                                                  out=pieces[i][2]))


register(Op("matmul", _matmul_infer, _matmul_kernel, arity=(2, 2), cost=_matmul_cost,
            op_class="matmul", splits=True,
            doc="matrix product with NumPy semantics (batched, broadcast)"))


def _gemm_kernel(xp, ins, attrs, outs):
    out = outs[0]
    a, b = ins[0], ins[1]
    a, b = a.T if attrs["trans_a"] else a, b.T if attrs["trans_b"] else b
    c = ins[2] if len(ins) == 3 else None
    pieces = _pieces(a, b, out) if xp is np else None
    if pieces is None:
        xp.matmul(a, b, out=out)
        _gemm_epilogue(out, c, attrs)
        return
    # each piece's epilogue runs while its slice of the output is still in cache
    full_c = None if c is None else np.broadcast_to(c, out.shape)

    def piece(i):
        pa, pb, dst, index = pieces[i]
        np.matmul(pa, pb, out=dst)
        _gemm_epilogue(dst, None if full_c is None else full_c[index], attrs)

    parallel_for(len(pieces), piece)


def _gemm_epilogue(out, c, attrs):
    alpha = attrs["alpha"]
    if alpha != 1:
        out *= out.dtype.type(alpha)
    if c is not None:
        beta = attrs["beta"]
        if beta == 1:
            out += c
        elif beta != 0:
            # beta * c costs one pass over c only (c is usually a bias row, much smaller)
            out += c * c.dtype.type(beta)


register(Op("gemm", _gemm_infer, _gemm_kernel, arity=(2, 3), cost=_gemm_cost, op_class="matmul",
            splits=True, attrs={"alpha": 1.0, "beta": 1.0, "trans_a": 0, "trans_b": 0},
            doc="alpha * a' @ b' + beta * c (ONNX Gemm)"))


def matmul(a, b, *, device=None):
    """Matrix product with NumPy semantics: 1-D operands are promoted, batch dims broadcast."""
    return apply("matmul", promote_operands(a, b), device=device)


def gemm(a, b, c=None, *, alpha=1.0, beta=1.0, trans_a=False, trans_b=False, device=None):
    """``alpha * a' @ b' + beta * c`` for 2-D ``a``, ``b`` (ONNX Gemm).

    Args:
        c: optional addend, broadcast to the product's shape.
        trans_a, trans_b: use the transpose of ``a`` / ``b``.
    """
    attrs = {"alpha": float(alpha), "beta": float(beta), "trans_a": int(bool(trans_a)),
             "trans_b": int(bool(trans_b))}
    ins = promote_operands(a, b) if c is None else promote_operands(a, b, c)
    return apply("gemm", ins, attrs, device=device)
