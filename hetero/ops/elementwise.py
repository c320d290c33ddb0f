"""Elementwise ops: NumPy broadcasting, ONNX semantics (the inputs of an op share one dtype).

The public functions accept plain NumPy arrays and Python numbers next to tensors and fit them to
the tensors' dtype (``hetero.tracing.promote_operands``); two tensors of different dtypes are an
error that asks for a cast.

Every kernel is written once against the array namespace ``xp`` (NumPy or CuPy) and writes into
the preallocated output, in place where the math allows (``sigmoid`` runs as four in-place passes
over the output, with no temporaries). Binary ops broadcast like NumPy; comparisons produce
``bool``. ``erf`` has no NumPy function, so it is evaluated here from two fitted polynomials
(one for ``erf(x) / x`` below 1.5, one for ``erfc(x) * exp(x**2)`` in ``1/x`` above), accurate
to about 1e-15 in float64, with shorter ones for float32; where SciPy (or ``cupyx.scipy``) is
installed its ``erf`` ufunc runs instead, and the polynomials are the fallback.
"""

from __future__ import annotations

import math

import numpy as np

from hetero.errors import ShapeError
from hetero.graph import TensorSpec
from hetero.ops.registry import Cost, Op, broadcast_shapes, register, require_float, same_dtype
from hetero.ops.scratch import by_chunks
from hetero.tracing import apply, promote_operands, scalars_like

__all__ = [
    "add", "sub", "mul", "div", "pow", "maximum", "minimum",
    "equal", "not_equal", "greater", "less", "greater_equal", "less_equal",
    "neg", "abs", "exp", "log", "sqrt", "tanh", "sigmoid", "relu", "erf", "reciprocal",
    "floor", "ceil", "leaky_relu", "gelu", "clip", "cast", "where", "isnan", "isinf",
]

_BOOL = np.dtype(bool)


def _elementwise_cost(flops_per_element: float):
    def cost(ins, outs, attrs):
        return Cost(flops=flops_per_element * sum(s.size for s in outs),
                    bytes=float(sum(s.nbytes for s in ins) + sum(s.nbytes for s in outs)))
    return cost


# ----------------------------------------------------------------------------------------------
# Binary ops


def _binary_infer(name: str, *, bool_ok: bool, result: np.dtype | None = None):
    def infer(ins, attrs):
        dtype = same_dtype(ins, f"the inputs of {name}")
        if not bool_ok and dtype == _BOOL:
            raise ShapeError(f"{name} does not take bool inputs; cast them first")
        try:
            shape = broadcast_shapes(*(s.shape for s in ins))
        except ShapeError as exc:
            raise ShapeError(f"{name}: {exc}") from None
        return (TensorSpec(shape, dtype if result is None else result),)
    return infer


def _binary(name: str, ufunc: str, doc: str, *, bool_ok: bool = True, compare: bool = False,
            flops: float = 1.0) -> None:
    def kernel(xp, ins, attrs, outs):
        getattr(xp, ufunc)(ins[0], ins[1], out=outs[0])

    register(Op(name, _binary_infer(name, bool_ok=bool_ok, result=_BOOL if compare else None),
                kernel, arity=(2, 2), cost=_elementwise_cost(flops), doc=doc))


_binary("add", "add", "a + b")
_binary("sub", "subtract", "a - b", bool_ok=False)
_binary("mul", "multiply", "a * b")
_binary("maximum", "maximum", "elementwise max(a, b); NaN propagates")
_binary("minimum", "minimum", "elementwise min(a, b); NaN propagates")
_binary("equal", "equal", "a == b (bool)", compare=True)
_binary("not_equal", "not_equal", "a != b (bool)", compare=True)
_binary("greater", "greater", "a > b (bool)", compare=True)
_binary("less", "less", "a < b (bool)", compare=True)
_binary("greater_equal", "greater_equal", "a >= b (bool)", compare=True)
_binary("less_equal", "less_equal", "a <= b (bool)", compare=True)


def _div_kernel(xp, ins, attrs, outs):
    a, b = ins
    out = outs[0]
    if out.dtype.kind == "f":
        xp.divide(a, b, out=out)
        return
    # ONNX integer division truncates toward zero; floor_divide rounds down, so correct the
    # quotients of inexact divisions whose operands have opposite signs.
    xp.floor_divide(a, b, out=out)
    out += (xp.remainder(a, b) != 0) & ((a < 0) != (b < 0))


register(Op("div", _binary_infer("div", bool_ok=False), _div_kernel, arity=(2, 2),
            cost=_elementwise_cost(1.0), doc="a / b (integers: truncated toward zero)"))


def _constant_exponent(b):
    """The value of exponent ``b`` when it is one number (size 1, or an all-zero-stride broadcast
    of one) held on the host; None otherwise. Reading a device array's value would synchronise
    the stream, and a GPU's ``power`` is not slow, so only NumPy arrays are looked at."""
    if not isinstance(b, np.ndarray) or b.size == 0 or (b.size != 1 and any(b.strides)):
        return None
    return b.reshape(-1)[:1].item() if b.size == 1 else b.flat[0].item()


def _pow_kernel(xp, ins, attrs, outs):
    a, b, out = ins[0], ins[1], outs[0]
    e = _constant_exponent(b) if out.size else None
    if e is not None and (out.dtype in (np.float32, np.float64) or out.dtype.kind in "iu"):
        # a constant exponent that is a small integer or +-1/2: multiplications, sqrt and
        # reciprocal instead of power (NumPy's float32 power is ~50x slower for negative bases),
        # keeping power's special values (+-0, +-inf, nan); x**3 and x**4 round twice where
        # power rounds once, so they may differ from it in the last bit
        floating = out.dtype.kind == "f"
        e = float(e)
        if e == 0:
            out.fill(1)  # power(x, 0) is 1 for every x, nan included
            return
        if e.is_integer() and abs(e) <= 4 and (e > 0 or floating):
            n = int(abs(e))
            if e > 0:
                if n == 1:
                    xp.copyto(out, a)
                else:
                    xp.multiply(a, a, out=out)
                    if n == 3:
                        out *= a
                    elif n == 4:
                        out *= out
                return
            # (1/x)**2, (1/x)**2 / x and (1/x**2)**2 rather than 1 / x**n: an intermediate
            # overflows or underflows only where the result does
            if n == 4:
                xp.multiply(a, a, out=out)
                xp.reciprocal(out, out=out)
            else:
                xp.reciprocal(a, out=out)
            if n >= 2:
                out *= out
                if n == 3:
                    out /= a
            return
        if floating and e == 0.5:
            xp.sqrt(a, out=out)  # what NumPy's power does for 0.5 (-0 -> -0, -inf -> nan)
            return
        if floating and e == -0.5 and not np.fmin.reduce(a, axis=None) == -np.inf:
            # power(-0, -0.5) is +inf where 1 / sqrt(-0) is -inf (adding 0 turns -0 into +0);
            # power(-inf, -0.5) is 0 where 1 / sqrt(-inf) is nan, so an input holding -inf
            # takes the general path
            xp.sqrt(a, out=out)
            out += 0
            xp.reciprocal(out, out=out)
            return
    xp.power(a, b, out=out)


register(Op("pow", _binary_infer("pow", bool_ok=False), _pow_kernel, arity=(2, 2),
            cost=_elementwise_cost(8.0), doc="a ** b"))


# ----------------------------------------------------------------------------------------------
# Unary ops


def _same_infer(name: str, *, float_only: bool = False, bool_ok: bool = False):
    def infer(ins, attrs):
        (x,) = ins
        if float_only:
            require_float(x, name)
        elif not bool_ok and x.dtype == _BOOL:
            raise ShapeError(f"{name} does not take bool inputs; cast them first")
        return (TensorSpec(x.shape, x.dtype),)
    return infer


def _unary(name: str, ufunc: str, doc: str, *, float_only: bool = False,
           flops: float = 1.0) -> None:
    def kernel(xp, ins, attrs, outs):
        getattr(xp, ufunc)(ins[0], out=outs[0])

    register(Op(name, _same_infer(name, float_only=float_only), kernel,
                cost=_elementwise_cost(flops), doc=doc))


_unary("neg", "negative", "-x")
_unary("abs", "absolute", "|x|")
_unary("exp", "exp", "e ** x", float_only=True, flops=4.0)
_unary("log", "log", "natural logarithm", float_only=True, flops=4.0)
_unary("sqrt", "sqrt", "square root", float_only=True, flops=2.0)
_unary("tanh", "tanh", "hyperbolic tangent", float_only=True, flops=6.0)
_unary("reciprocal", "reciprocal", "1 / x", float_only=True)
_unary("floor", "floor", "round down", float_only=True)
_unary("ceil", "ceil", "round up", float_only=True)


def _sigmoid_kernel(xp, ins, attrs, outs):
    # 1 / (1 + exp(-x)) == 0.5 * tanh(0.5 * x) + 0.5: no overflow for large |x|, no temporaries
    out = outs[0]
    xp.multiply(ins[0], 0.5, out=out)
    xp.tanh(out, out=out)
    out *= 0.5
    out += 0.5


register(Op("sigmoid", _same_infer("sigmoid", float_only=True), _sigmoid_kernel,
            cost=_elementwise_cost(8.0), doc="1 / (1 + exp(-x))"))


def _relu_kernel(xp, ins, attrs, outs):
    if outs[0].dtype.kind == "f":
        # NumPy's clip between two finite-or-infinite floats is a SIMD loop, 5x faster than
        # maximum(x, 0) (which also handles nan, as clip does)
        xp.clip(ins[0], 0, math.inf, out=outs[0])
    else:
        xp.maximum(ins[0], 0, out=outs[0])


register(Op("relu", _same_infer("relu"), _relu_kernel, cost=_elementwise_cost(1.0),
            doc="max(x, 0)"))


def _leaky_relu_kernel(xp, ins, attrs, outs):
    x, out = ins[0], outs[0]
    alpha = attrs["alpha"]
    # x * (alpha if x < 0 else 1) is max(x, alpha * x) for alpha <= 1 and min(x, alpha * x)
    # above: alpha * x as the formula rounds it, without a masked copy (~5 ns an element)
    xp.multiply(x, alpha, out=out)
    if alpha == 0:  # 0 * inf is nan, which max would keep for x = +inf
        xp.copyto(out, x, where=x >= 0)
    else:
        (xp.minimum if alpha > 1 else xp.maximum)(out, x, out=out)


register(Op("leaky_relu", _same_infer("leaky_relu", float_only=True), _leaky_relu_kernel,
            attrs={"alpha": 0.01}, cost=_elementwise_cost(2.0), doc="x if x >= 0 else alpha * x"))


# erf, from two polynomials fitted (least squares at Chebyshev nodes, against math.erf/erfc):
#   |x| < 1.5:  erf(x) = x * S(u),            u = x^2 * (2 / 2.25) - 1 in [-1, 1]
#   |x| >= 1.5: erf(x) = 1 - exp(-x^2) * L(v), v = (1/|x| - 1/6.5) / (1/1.5 - 1/6.5) * 2 - 1
# (beyond 6.5, erfc underflows in float64 and L only has to stay finite). float64 uses degrees 13
# and 18 (max error 5e-16 relative / 5e-17 absolute); float32 and float16 use degrees 7 and 8
# (2e-8 / 3e-10), half the passes over the data.
_ERF_SPLIT = 1.5
_ERFC_LO, _ERFC_HI = 1 / 6.5, 1 / 1.5
_ERF_SMALL_F64 = (
    0.8168361747839195, -0.22525254703530098, 0.06590879382583918, -0.01628751368588874,
    0.003385064146595556, -0.0006015929078522353, 9.302925980688712e-05, -1.2707918034291389e-05,
    1.5529334546169149e-06, -1.7156427687107972e-07, 1.728320054570586e-08,
    -1.6000624841743939e-09, 1.4004337280573347e-10, -1.1237076033155966e-11,
)
_ERF_SMALL_F32 = (
    0.8168361623440596, -0.22525254086466903, 0.06590919128170465, -0.016287595844295115,
    0.0033830820209668168, -0.0006012978364234797, 9.618421711510882e-05, -1.3099488088954888e-05,
)
_ERFC_LARGE_F64 = (
    0.21555247915117762, 0.11815907883231919, -0.012351336894384881, -0.00013992312579911588,
    0.0004818143100789835, -0.00013381641258475118, 1.538819069731445e-05, 3.7367541229388494e-06,
    -2.7056285600829773e-06, 8.315451401756641e-07, -1.2285689212343084e-07,
    -2.4454501478136923e-08, 2.4840515204588435e-08, -9.995544302255079e-09, 2.494192315431036e-09,
    -1.4285248674591059e-10, -2.912038882512967e-10, 1.7441139703604837e-10,
    -3.601415278030498e-11,
)
_ERFC_LARGE_F32 = (
    0.2155524790636944, 0.11815905308176394, -0.012351332194822474, -0.00013957620569777265,
    0.000481772843353609, -0.00013508573504212193, 1.552211424844583e-05, 5.47929301841581e-06,
    -2.8984895588826455e-06,
)


def _horner(coeffs, t, out):
    """``out = sum(coeffs[i] * t**i)`` in place."""
    out.fill(coeffs[-1])
    for c in coeffs[-2::-1]:
        out *= t
        out += c


def _erf_into_two_piece(xp, x, out):
    """``out = erf(x)`` from the two polynomials above (``out`` may not alias ``x``); the float64
    path. Temporaries are allocated explicitly: a ufunc on a 0-d array returns a scalar, which
    ``out=`` cannot take."""
    wide = out.dtype.itemsize >= 8
    small_poly = _ERF_SMALL_F64 if wide else _ERF_SMALL_F32
    large_poly = _ERFC_LARGE_F64 if wide else _ERFC_LARGE_F32
    ax = xp.abs(x, out=xp.empty_like(out))
    small = xp.less(ax, _ERF_SPLIT, out=xp.empty(out.shape, dtype=bool))
    # large branch, with |x| clamped into the fitted range
    t = xp.maximum(ax, _ERF_SPLIT, out=xp.empty_like(out))
    xp.reciprocal(t, out=t)
    t -= _ERFC_LO
    t *= 2 / (_ERFC_HI - _ERFC_LO)
    t -= 1
    _horner(large_poly, t, out)
    xp.square(ax, out=t)
    xp.negative(t, out=t)
    xp.exp(t, out=t)
    out *= t
    xp.subtract(1, out, out=out)
    xp.copysign(out, x, out=out)
    # small branch, kept only where |x| < 1.5 (no data-dependent branch: on a GPU asking whether
    # any element is small would synchronise the stream)
    u = xp.square(x, out=ax)
    u *= 2 / 2.25
    u -= 1
    _horner(small_poly, u, t)
    t *= x
    xp.copyto(out, t, where=small)


# float32 (and float16, computed in float32): one polynomial over the whole range,
#   log(erfc(t)) = P(t) for t = min(|x|, 4) (beyond 4, erfc(t) < 2e-8 rounds away next to 1)
# with the linear coefficient fixed to -2/sqrt(pi), so that small x keep their relative accuracy,
# fitted minimax (Lawson's iteration on Chebyshev nodes, weight max(erfc(t), 0.01): absolute
# error in erf, relative error in erfc). Then
#   erf(x) = copysign(-expm1(P(t)), x)       (copysign takes |expm1(P)|, so no negation)
#   gelu(x) = max(x, 0) - |x| * exp(P(|x| / sqrt(2)) - log(2))
# both without a data-dependent select (a masked copy costs ~5 ns an element on random signs,
# ~20 arithmetic passes' worth). Evaluated in float32 (degree 10: 2 + 19 passes + expm1 +
# copysign): max abs error of erf 1.1e-7 against a float64 erf on 2M float32 points in [0, 5]
# (fit error 1.3e-8, the rest float32 rounding), relative error of erfc 3e-6 below t = 3.5.
_LOG_ERFC_BOUND = 4.0
_LOG_ERFC_F32 = (
    0.0, -1.1283791670955126, -0.636615479269153, -0.10281324693435502, 0.01926649249537418,
    -8.501194494416256e-06, -0.0015442914036847357, 0.0005968524774866459,
    -0.00012100603735466035, 1.3399520074437348e-05, -6.367205381353303e-07,
)
# P(a / sqrt(2)) - log(2), for gelu's argument a = |x|
_GELU_BOUND = _LOG_ERFC_BOUND * math.sqrt(2)
_GELU_F32 = (-math.log(2),) + tuple(c * 2 ** (-k / 2) for k, c in enumerate(_LOG_ERFC_F32) if k)

#: elements per chunk of the float32 evaluations (hetero.ops.scratch): their scratch stays in
#: the L2 cache, and a run allocates nothing
_CHUNK = 1 << 16


def _log_erfc_into(xp, x, out, s, coeffs, bound) -> None:
    """``out = sum(coeffs[k] * t**k)`` for ``t = min(|x|, bound)``, left in ``s``."""
    xp.clip(x, -bound, bound, out=s)  # two-sided clip: NumPy's fast path (and nan stays nan)
    xp.abs(s, out=s)
    xp.multiply(s, coeffs[-1], out=out)
    for c in coeffs[-2:0:-1]:
        out += c
        out *= s
    if coeffs[0]:
        out += coeffs[0]


def _erf32_part(xp, x, out, s) -> None:
    _log_erfc_into(xp, x, out, s, _LOG_ERFC_F32, _LOG_ERFC_BOUND)
    xp.expm1(out, out=out)  # -erf(|x|)
    xp.copysign(out, x, out=out)


def _gelu32_part(xp, x, out, s) -> None:
    _log_erfc_into(xp, x, out, s, _GELU_F32, _GELU_BOUND)
    xp.exp(out, out=out)  # erfc(|x| / sqrt(2)) / 2
    out *= s  # |x| clamped: beyond the bound the product is < 5e-8, below float32's ulp of x
    xp.clip(x, 0, math.inf, out=s)  # max(x, 0)
    xp.subtract(s, out, out=out)


def _float32_into(xp, part, x, out) -> None:
    """``part`` (a float32 evaluation) into ``out`` of dtype float32 or float16."""
    if out.dtype == np.float32 and x.dtype == np.float32:
        by_chunks(xp, part, x, out, chunk=_CHUNK, dtype=np.float32)
    else:  # float16: float32 arithmetic, rounded once at the end
        o32 = xp.empty(out.shape, np.float32)
        by_chunks(xp, part, x.astype(np.float32), o32, chunk=_CHUNK, dtype=np.float32)
        out[...] = o32


def _erf_into(xp, x, out):
    """``out = erf(x)`` without a library ufunc (``out`` may not alias ``x``)."""
    if out.dtype.itemsize >= 8:
        _erf_into_two_piece(xp, x, out)
    else:
        _float32_into(xp, _erf32_part, x, out)


_FAST_SPECIAL: dict = {}


def _fast_special(xp, name: str):
    """The library ufunc ``name`` ("erf", "erfc") where one exists (SciPy for NumPy,
    ``cupyx.scipy.special`` for CuPy), imported on first use and remembered per namespace; None
    where there is none."""
    key = (xp.__name__, name)
    try:
        return _FAST_SPECIAL[key]
    except KeyError:
        pass
    fn = None
    try:
        if xp.__name__ == "numpy":
            import scipy.special as special
        elif xp.__name__ == "cupy":
            import cupyx.scipy.special as special
        else:
            special = None
        fn = getattr(special, name, None)
    except ImportError:
        fn = None
    _FAST_SPECIAL[key] = fn
    return fn


def _library(xp, name: str, dtype):
    """The library ufunc to run for ``name`` at ``dtype``, or None for the polynomials: CuPy's
    always (a fused kernel); SciPy's only for float64, where the float32 polynomial does not
    apply (SciPy evaluates float32 in double precision: 16 ms per million elements, where the
    polynomial takes ~2.5 ms; scripts/bench_elementwise.py)."""
    if xp.__name__ == "numpy" and dtype.itemsize < 8:
        return None
    return _fast_special(xp, name)


def _erf_kernel(xp, ins, attrs, outs):
    fn = _library(xp, "erf", outs[0].dtype)
    if fn is not None:
        fn(ins[0], out=outs[0])
    else:
        _erf_into(xp, ins[0], outs[0])


register(Op("erf", _same_infer("erf", float_only=True), _erf_kernel, cost=_elementwise_cost(60.0),
            doc="error function"))


_SQRT_2_OVER_PI = math.sqrt(2 / math.pi)


def _gelu_kernel(xp, ins, attrs, outs):
    x, out = ins[0], outs[0]
    if attrs["approximate"] == "tanh":
        # 0.5 * x * (1 + tanh(sqrt(2/pi) * (x + 0.044715 x^3))), the constant folded in
        xp.multiply(x, x, out=out)
        out *= 0.044715 * _SQRT_2_OVER_PI
        out += _SQRT_2_OVER_PI
        out *= x
        xp.tanh(out, out=out)
        out += 1
    else:
        # 0.5 * x * (1 + erf(x / sqrt(2))) == 0.5 * x * erfc(-x / sqrt(2)); erfc keeps the
        # relative precision of the tiny results for x << 0, where 1 + erf cancels
        fn = _library(xp, "erfc", out.dtype)
        if fn is not None:
            xp.multiply(x, -1 / math.sqrt(2), out=out)
            fn(out, out=out)
        elif out.dtype.itemsize < 8:
            # max(x, 0) - |x| * erfc(|x| / sqrt(2)) / 2 from the float32 log-erfc polynomial
            _float32_into(xp, _gelu32_part, x, out)
            return
        else:
            _erf_into(xp, xp.multiply(x, 1 / math.sqrt(2), out=xp.empty_like(out)), out)
            out += 1
    out *= x
    out *= 0.5


def _gelu_infer(ins, attrs):
    if attrs["approximate"] not in ("none", "tanh"):
        raise ShapeError(f"gelu approximate must be 'none' or 'tanh', got {attrs['approximate']!r}")
    return _same_infer("gelu", float_only=True)(ins, attrs)


register(Op("gelu", _gelu_infer, _gelu_kernel, attrs={"approximate": "none"},
            cost=_elementwise_cost(20.0), doc="Gaussian error linear unit"))


def _clip_infer(ins, attrs):
    (x,) = ins
    if x.dtype == _BOOL:
        raise ShapeError("clip does not take bool inputs")
    lo, hi = attrs["min"], attrs["max"]
    for name, v in (("min", lo), ("max", hi)):
        if v is not None and not isinstance(v, (int, float, np.number)):
            raise ShapeError(f"clip {name} must be a number or None, got {v!r}")
    return (TensorSpec(x.shape, x.dtype),)


def _clip_kernel(xp, ins, attrs, outs):
    x, out = ins[0], outs[0]
    lo, hi = attrs["min"], attrs["max"]
    src = x
    if lo is not None:
        xp.maximum(src, out.dtype.type(lo), out=out)
        src = out
    if hi is not None:
        xp.minimum(src, out.dtype.type(hi), out=out)
        src = out
    if src is x:
        out[...] = x


register(Op("clip", _clip_infer, _clip_kernel, attrs={"min": None, "max": None},
            cost=_elementwise_cost(2.0), doc="min(max(x, min), max)"))


def _cast_infer(ins, attrs):
    try:
        dtype = np.dtype(attrs["to"])
    except TypeError:
        raise ShapeError(f"cast: {attrs['to']!r} is not a dtype name") from None
    if dtype.kind not in "biuf":
        raise ShapeError(f"cast to {dtype.name} is not supported (hetero tensors are bool, "
                         "integer or floating-point)")
    return (TensorSpec(ins[0].shape, dtype),)


def _cast_kernel(xp, ins, attrs, outs):
    outs[0][...] = ins[0]


register(Op("cast", _cast_infer, _cast_kernel, attrs={"to": "float32"}, op_class="data",
            cost=_elementwise_cost(0.0), doc="convert to dtype `to`"))


def _where_infer(ins, attrs):
    cond, a, b = ins
    if cond.dtype != _BOOL:
        raise ShapeError(f"where needs a bool condition, got {cond.dtype.name}")
    dtype = same_dtype((a, b), "the two branches of where")
    try:
        shape = broadcast_shapes(cond.shape, a.shape, b.shape)
    except ShapeError as exc:
        raise ShapeError(f"where: {exc}") from None
    return (TensorSpec(shape, dtype),)


def _where_kernel(xp, ins, attrs, outs):
    cond, a, b = ins
    out = outs[0]
    xp.copyto(out, b)
    xp.copyto(out, a, where=cond)


register(Op("where", _where_infer, _where_kernel, arity=(3, 3), cost=_elementwise_cost(1.0),
            doc="a where cond else b"))


def _float_test_infer(name: str):
    def infer(ins, attrs):
        require_float(ins[0], name)
        return (TensorSpec(ins[0].shape, _BOOL),)
    return infer


def _isnan_kernel(xp, ins, attrs, outs):
    xp.isnan(ins[0], out=outs[0])


def _isinf_kernel(xp, ins, attrs, outs):
    x, out = ins[0], outs[0]
    pos, neg = attrs["detect_positive"], attrs["detect_negative"]
    if pos and neg:
        xp.isinf(x, out=out)
    elif pos or neg:
        xp.equal(x, xp.asarray(math.inf if pos else -math.inf, dtype=x.dtype), out=out)
    else:
        out[...] = False


register(Op("isnan", _float_test_infer("isnan"), _isnan_kernel, cost=_elementwise_cost(1.0),
            doc="x is NaN (bool)"))
register(Op("isinf", _float_test_infer("isinf"), _isinf_kernel,
            attrs={"detect_positive": 1, "detect_negative": 1}, cost=_elementwise_cost(1.0),
            doc="x is +inf or -inf (bool); detect_positive/detect_negative pick the signs"))


# ----------------------------------------------------------------------------------------------
# Public functions


def add(a, b, *, device=None):
    """Elementwise ``a + b`` with NumPy broadcasting."""
    return apply("add", promote_operands(a, b), device=device)


def sub(a, b, *, device=None):
    """Elementwise ``a - b`` with NumPy broadcasting."""
    return apply("sub", promote_operands(a, b), device=device)


def mul(a, b, *, device=None):
    """Elementwise ``a * b`` with NumPy broadcasting."""
    return apply("mul", promote_operands(a, b), device=device)


def div(a, b, *, device=None):
    """Elementwise ``a / b``; integer division truncates toward zero (ONNX Div)."""
    return apply("div", promote_operands(a, b), device=device)


def pow(a, b, *, device=None):
    """Elementwise ``a ** b``."""
    return apply("pow", promote_operands(a, b), device=device)


def maximum(a, b, *, device=None):
    """Elementwise maximum; NaN propagates."""
    return apply("maximum", promote_operands(a, b), device=device)


def minimum(a, b, *, device=None):
    """Elementwise minimum; NaN propagates."""
    return apply("minimum", promote_operands(a, b), device=device)


def equal(a, b, *, device=None):
    """Elementwise ``a == b`` as a bool tensor."""
    return apply("equal", promote_operands(a, b), device=device)


def not_equal(a, b, *, device=None):
    """Elementwise ``a != b`` as a bool tensor."""
    return apply("not_equal", promote_operands(a, b), device=device)


def greater(a, b, *, device=None):
    """Elementwise ``a > b`` as a bool tensor."""
    return apply("greater", promote_operands(a, b), device=device)


def less(a, b, *, device=None):
    """Elementwise ``a < b`` as a bool tensor."""
    return apply("less", promote_operands(a, b), device=device)


def greater_equal(a, b, *, device=None):
    """Elementwise ``a >= b`` as a bool tensor."""
    return apply("greater_equal", promote_operands(a, b), device=device)


def less_equal(a, b, *, device=None):
    """Elementwise ``a <= b`` as a bool tensor."""
    return apply("less_equal", promote_operands(a, b), device=device)


def neg(x, *, device=None):
    """Elementwise ``-x``."""
    return apply("neg", (x,), device=device)


def abs(x, *, device=None):
    """Elementwise absolute value."""
    return apply("abs", (x,), device=device)


def exp(x, *, device=None):
    """Elementwise ``e ** x``."""
    return apply("exp", (x,), device=device)


def log(x, *, device=None):
    """Elementwise natural logarithm."""
    return apply("log", (x,), device=device)


def sqrt(x, *, device=None):
    """Elementwise square root."""
    return apply("sqrt", (x,), device=device)


def tanh(x, *, device=None):
    """Elementwise hyperbolic tangent."""
    return apply("tanh", (x,), device=device)


def sigmoid(x, *, device=None):
    """Elementwise logistic function ``1 / (1 + exp(-x))``."""
    return apply("sigmoid", (x,), device=device)


def relu(x, *, device=None):
    """Elementwise ``max(x, 0)``."""
    return apply("relu", (x,), device=device)


def erf(x, *, device=None):
    """Elementwise error function."""
    return apply("erf", (x,), device=device)


def reciprocal(x, *, device=None):
    """Elementwise ``1 / x``."""
    return apply("reciprocal", (x,), device=device)


def floor(x, *, device=None):
    """Elementwise round down."""
    return apply("floor", (x,), device=device)


def ceil(x, *, device=None):
    """Elementwise round up."""
    return apply("ceil", (x,), device=device)


def leaky_relu(x, alpha=0.01, *, device=None):
    """Elementwise ``x if x >= 0 else alpha * x``."""
    return apply("leaky_relu", (x,), {"alpha": alpha}, device=device)


def gelu(x, approximate="none", *, device=None):
    """Gaussian error linear unit; ``approximate="tanh"`` uses the tanh formula."""
    return apply("gelu", (x,), {"approximate": approximate}, device=device)


def clip(x, min=None, max=None, *, device=None):
    """Elementwise ``min(max(x, min), max)``; a bound of None is not applied."""
    return apply("clip", (x,), {"min": min, "max": max}, device=device)


def cast(x, dtype, *, device=None):
    """``x`` converted to ``dtype`` (a NumPy dtype or its name); float to bool is ``x != 0``."""
    try:
        name = np.dtype(dtype).name
    except (TypeError, ValueError):
        raise ShapeError(f"cast: {dtype!r} is not a dtype") from None
    return apply("cast", (x,), {"to": name}, device=device)


def where(cond, a, b, *, device=None):
    """``a`` where ``cond`` is true, else ``b`` (all three broadcast)."""
    a, b = scalars_like(promote_operands(a, b), "where")
    return apply("where", (cond, a, b), device=device)


def isnan(x, *, device=None):
    """Which elements of the floating-point ``x`` are NaN (bool)."""
    return apply("isnan", (x,), device=device)


def isinf(x, detect_positive: bool = True, detect_negative: bool = True, *, device=None):
    """Which elements of the floating-point ``x`` are infinite (bool), of the signs asked for."""
    return apply("isinf", (x,), {"detect_positive": int(detect_positive),
                                 "detect_negative": int(detect_negative)}, device=device)
