"""Scaled dot-product attention with ONNX semantics (the ``Attention`` op of opset 23, and the
``nonpad_kv_seqlen`` input and sliding window of opset 24).

``attention(q, k, v, [mask], [past_key, past_value], [nonpad_kv_seqlen])``: queries, keys and
values are (batch, heads, seq, head_size), or (batch, seq, heads * head_size) with
``q_num_heads`` and ``kv_num_heads`` given. Keys and values are appended to the past cache
(``present_key``/``present_value``), fewer key/value heads than query heads are shared by groups
of query heads (GQA), a boolean mask keeps the positions where it is true and a float mask is
added to the scores, ``is_causal`` aligns the causal frontier bottom-right (a query at position
``i`` sees keys up to ``i + past length``), ``softcap`` bounds the scores by ``c * tanh(s / c)``,
and a row that every mask hides yields zeros rather than NaN. Which optional inputs are present
is in the attributes (``has_mask``, ``has_past``, ``has_nonpad``; ``scale`` 0 means ONNX's
default ``1 / sqrt(head size)``), the number of outputs
(Y, present_key, present_value, qk_matmul_output) in ``outputs``. Where the spec and
``onnx.reference`` differ on ``qk_matmul_output_mode``, this follows the reference: modes 0 and 1
give the (soft-capped) scores, 2 the scores plus the mask, 3 the softmax.

The kernel is written once against the array namespace ``xp``; float16 inputs are computed in
float32.
"""

from __future__ import annotations

import math

import numpy as np

from hetero.errors import ShapeError
from hetero.graph import TensorSpec
from hetero.ops.registry import Cost, Op, register
from hetero.tracing import apply

__all__ = ["attention"]


def _layout(spec: TensorSpec, heads: int, what: str) -> tuple[int, int, int, int]:
    """(batch, heads, seq, head_size) of a 3-D or 4-D q/k/v."""
    if spec.ndim == 4:
        return spec.shape
    if spec.ndim != 3:
        raise ShapeError(f"attention: {what} must be 3-D or 4-D, got {spec.shape}")
    if heads < 1 or spec.shape[2] % heads:
        raise ShapeError(f"attention: a 3-D {what} {spec.shape} needs its number of heads "
                         f"(q_num_heads / kv_num_heads) dividing {spec.shape[2]}; got {heads}")
    return spec.shape[0], heads, spec.shape[1], spec.shape[2] // heads


def _parts(ins, attrs):
    q, k, v = ins[:3]
    rest = list(ins[3:])
    mask = rest.pop(0) if attrs["has_mask"] else None
    past = (rest.pop(0), rest.pop(0)) if attrs["has_past"] else None
    nonpad = rest.pop(0) if attrs["has_nonpad"] else None
    if rest:
        raise ShapeError(f"attention: {len(ins)} inputs do not match has_mask/has_past/"
                         "has_nonpad")
    return q, k, v, mask, past, nonpad


def _infer(ins, attrs):
    if not math.isfinite(attrs["scale"]):
        raise ShapeError(f"attention: scale must be finite, got {attrs['scale']}")
    q, k, v, mask, past, nonpad = _parts(ins, attrs)
    if q.ndim != k.ndim or q.ndim != v.ndim:
        raise ShapeError(f"attention: q {q.shape}, k {k.shape} and v {v.shape} differ in rank")
    for s in (q, k, v) + (past or ()):
        if s.dtype != q.dtype or s.dtype.kind != "f":
            raise ShapeError(f"attention: q, k, v and the past cache must share one float "
                             f"dtype (got {s.dtype.name} with {q.dtype.name})")
    b, hq, sq, d = _layout(q, attrs["q_num_heads"], "q")
    bk, hk, sk, dk = _layout(k, attrs["kv_num_heads"], "k")
    bv, hv, sv, dv = _layout(v, attrs["kv_num_heads"], "v")
    if not (b == bk == bv) or hk != hv or sk != sv or d != dk:
        raise ShapeError(f"attention: q {q.shape}, k {k.shape} and v {v.shape} do not fit "
                         "(batch, heads, sequence and head sizes)")
    if hq % hk:
        raise ShapeError(f"attention: {hq} query heads are not a multiple of {hk} key heads")
    total = sk
    if past is not None:
        pk, pv = past
        if (pk.ndim != 4 or pv.ndim != 4 or pk.shape[:2] != (b, hk) or pk.shape[3] != d
                or pv.shape[:3] != pk.shape[:3] or pv.shape[3] != dv):
            raise ShapeError(f"attention: past_key {pk.shape} and past_value {pv.shape} do not "
                             f"fit keys {(b, hk, sk, d)} and values {(b, hk, sk, dv)}")
        total += pk.shape[2]
    if mask is not None:
        if mask.dtype.kind not in "bf":
            raise ShapeError(f"attention: the mask must be bool or float, got {mask.dtype.name}")
        if mask.ndim > 4 or (mask.ndim and mask.shape[-1] > total):
            raise ShapeError(f"attention: a mask of shape {mask.shape} does not fit "
                             f"{(b, hq, sq, total)}")
        padded = mask.shape[:-1] + (total,) if mask.ndim else ()
        try:
            np.broadcast_shapes(padded, (b, hq, sq, total))
        except ValueError:
            raise ShapeError(f"attention: a mask of shape {mask.shape} does not broadcast to "
                             f"{(b, hq, sq, total)}") from None
    if nonpad is not None and (nonpad.dtype.kind not in "iu" or nonpad.shape != (b,)):
        raise ShapeError(f"attention: nonpad_kv_seqlen must be {b} integers, got {nonpad}")
    y = (b, sq, hq * dv) if q.ndim == 3 else (b, hq, sq, dv)
    specs = [TensorSpec(y, q.dtype), TensorSpec((b, hk, total, d), q.dtype),
             TensorSpec((b, hk, total, dv), q.dtype), TensorSpec((b, hq, sq, total), q.dtype)]
    n = attrs["outputs"]
    if not 1 <= n <= 4:
        raise ShapeError(f"attention: outputs must be 1 to 4, got {n}")
    return tuple(specs[:n])


def _heads(xp, x, heads: int):
    """(batch, heads, seq, head_size) view of a 3-D or 4-D array."""
    if x.ndim == 4:
        return x
    b, s, hidden = x.shape
    return xp.transpose(x.reshape(b, s, heads, hidden // heads), (0, 2, 1, 3))


def _kernel(xp, ins, attrs, outs):
    q, k, v, mask, past, nonpad = _parts(ins, attrs)
    rank3 = q.ndim == 3
    ctype = np.float32 if q.dtype.itemsize < 4 else q.dtype.type
    q = _heads(xp, q, attrs["q_num_heads"]).astype(ctype, copy=False)
    k = _heads(xp, k, attrs["kv_num_heads"]).astype(ctype, copy=False)
    v = _heads(xp, v, attrs["kv_num_heads"]).astype(ctype, copy=False)
    b, hq, sq, d = q.shape
    offset = 0
    if past is not None:
        offset = past[0].shape[2]
        k = xp.concatenate([past[0].astype(ctype, copy=False), k], axis=2)
        v = xp.concatenate([past[1].astype(ctype, copy=False), v], axis=2)
    if len(outs) > 1:
        outs[1][...] = k
    if len(outs) > 2:
        outs[2][...] = v
    total = k.shape[2]
    neg = ctype(-np.inf)
    bias = xp.zeros((sq, total), dtype=ctype)
    if mask is not None:
        if mask.ndim and mask.shape[-1] < total:  # a short mask hides the keys it lacks
            fill = xp.full(mask.shape[:-1] + (total - mask.shape[-1],),
                           False if mask.dtype.kind == "b" else -np.inf, dtype=mask.dtype)
            mask = xp.concatenate([mask, fill], axis=-1)
        bias = bias + (xp.where(mask, ctype(0), neg) if mask.dtype.kind == "b"
                       else mask.astype(ctype, copy=False))
    i = xp.arange(sq).reshape(sq, 1)
    j = xp.arange(total).reshape(1, total)
    if nonpad is not None and past is None:
        frontier = i + (nonpad.astype(xp.int64).reshape(-1, 1, 1, 1) - sq)
    else:
        frontier = i + offset
    if attrs["is_causal"]:
        bias = bias + xp.where(j <= frontier, ctype(0), neg)
    left, right = attrs["left_window_size"], attrs["right_window_size"]
    if left >= 0:
        bias = bias + xp.where(frontier - j <= left, ctype(0), neg)
    if right >= 0:
        bias = bias + xp.where(j - frontier <= right, ctype(0), neg)
    if nonpad is not None:
        keep = j.reshape(1, 1, 1, total) < nonpad.astype(xp.int64).reshape(-1, 1, 1, 1)
        bias = bias + xp.where(keep, ctype(0), neg)
    groups = hq // k.shape[1]
    if groups > 1:
        k = xp.repeat(k, groups, axis=1)
        v = xp.repeat(v, groups, axis=1)
    scale = attrs["scale"] or 1.0 / math.sqrt(d)  # 0: ONNX's default, 1 / sqrt(head size)
    root = ctype(math.sqrt(scale))
    scores = xp.matmul(q * root, xp.swapaxes(k * root, -1, -2))
    cap = attrs["softcap"]
    if cap > 0:
        scores = xp.tanh(scores / ctype(cap)) * ctype(cap)
    biased = scores + bias
    top = xp.max(biased, axis=-1, keepdims=True)
    top = xp.where(xp.isneginf(top), ctype(0), top)
    e = xp.exp(biased - top)
    total_e = xp.sum(e, axis=-1, keepdims=True)
    probs = e / xp.where(total_e == 0, ctype(1), total_e)
    hidden = xp.isneginf(xp.max(xp.broadcast_to(bias, biased.shape), axis=-1, keepdims=True))
    probs = xp.where(hidden, ctype(0), probs)
    if len(outs) > 3:
        mode = attrs["qk_matmul_output_mode"]
        outs[3][...] = {2: biased, 3: probs}.get(mode, scores)
    y = xp.matmul(probs, v)
    if rank3:
        y = xp.transpose(y, (0, 2, 1, 3)).reshape(outs[0].shape)
    outs[0][...] = y


def _cost(ins, outs, attrs):
    q = outs[-1] if len(outs) > 3 else None
    b_h_sq_total = q.size if q is not None else 0
    if not b_h_sq_total:
        y = outs[0]
        total = ins[1].shape[-2] if ins[1].ndim == 4 else ins[1].shape[1]
        b_h_sq_total = y.size // max(y.shape[-1], 1) * total
    d = ins[0].shape[-1] if ins[0].ndim == 4 else ins[0].shape[-1] // max(attrs["q_num_heads"], 1)
    return Cost(flops=4.0 * b_h_sq_total * d + 5.0 * b_h_sq_total,
                bytes=float(sum(s.nbytes for s in ins) + sum(s.nbytes for s in outs)))


register(Op("attention", _infer, _kernel, arity=(3, 7), attrs={
    "has_mask": 0, "has_past": 0, "has_nonpad": 0, "is_causal": 0, "scale": 0.0,
    "q_num_heads": 0, "kv_num_heads": 0, "softcap": 0.0, "qk_matmul_output_mode": 0,
    "left_window_size": -1, "right_window_size": -1, "outputs": 1},
    cost=_cost, op_class="matmul",
    doc="scaled dot-product attention with masks, causal, past cache, GQA and softcap "
        "(ONNX Attention)"))


def attention(q, k, v, mask=None, past_key=None, past_value=None, *, is_causal=False,
              scale=None, q_num_heads=0, kv_num_heads=0, softcap=0.0, outputs=1, device=None):
    """Scaled dot-product attention (ONNX Attention); returns Y, or the first ``outputs`` of
    (Y, present_key, present_value, qk_matmul_output)."""
    ins = [q, k, v]
    if mask is not None:
        ins.append(mask)
    if past_key is not None:
        ins += [past_key, past_value]
    return apply("attention", ins, {
        "has_mask": int(mask is not None), "has_past": int(past_key is not None),
        "is_causal": int(is_causal), "scale": 0.0 if scale is None else float(scale),
        "q_num_heads": int(q_num_heads), "kv_num_heads": int(kv_num_heads),
        "softcap": float(softcap), "outputs": int(outputs)}, device=device)
