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
from hetero.tracing import apply, promote_operands, scalars_like

__all__ = [
    "add", "sub", "mul", "div", "pow", "maximum", "minimum",
    "equal", "not_equal", "greater", "less", "greater_equal", "less_equal",
    "neg", "abs", "exp", "log", "sqrt", "tanh", "sigmoid", "relu", "erf", "reciprocal",
    "floor", "ceil", "leaky_relu", "gelu", "clip", "cast", "where",
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


def _pow_kernel(xp, ins, attrs, outs):
    xp.power(ins[0], ins[1], out=outs[0])


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
    xp.maximum(ins[0], 0, out=outs[0])


register(Op("relu", _same_infer("relu"), _relu_kernel, cost=_elementwise_cost(1.0),
            doc="max(x, 0)"))


def _leaky_relu_kernel(xp, ins, attrs, outs):
    x, out = ins[0], outs[0]
    # x * (alpha if x < 0 else 1), written as max(x, alpha * x) only holds for alpha <= 1
    xp.multiply(x, attrs["alpha"], out=out)
    xp.copyto(out, x, where=x >= 0)


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


def _erf_into(xp, x, out):
    """``out = erf(x)`` (``out`` may not alias ``x``). Temporaries are allocated explicitly: a
    ufunc on a 0-d array returns a scalar, which ``out=`` cannot take."""
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


def _erf_kernel(xp, ins, attrs, outs):
    fn = _fast_special(xp, "erf")
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
        # 0.5 * x * (1 + tanh(sqrt(2/pi) * (x + 0.044715 x^3)))
        xp.multiply(x, x, out=out)
        out *= 0.044715
        out += 1
        out *= x
        out *= _SQRT_2_OVER_PI
        xp.tanh(out, out=out)
        out += 1
    else:
        # 0.5 * x * (1 + erf(x / sqrt(2))) == 0.5 * x * erfc(-x / sqrt(2)); erfc keeps the
        # relative precision of the tiny results for x << 0, where 1 + erf cancels
        fn = _fast_special(xp, "erfc")
        if fn is not None:
            xp.multiply(x, -1 / math.sqrt(2), out=out)
            fn(out, out=out)
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
