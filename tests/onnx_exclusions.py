"""The one place that says which onnx.backend.test tests hetero does not run, and why.

A backend test runs when every op of its model is one we claim (``CLAIMED_OPS``) and it is not
listed in ``EXCLUDED``. Two kinds of test do not run:

- tests whose model uses an op we do not claim: the reason names those ops (computed from the
  model, so the list stays exact as onnx adds tests);
- tests of claimed ops that use a feature we do not support (a dtype, 3-D convolution, training
  mode, ...): listed by name pattern in ``EXCLUDED`` with the reason.

Nothing is excluded to hide a wrong result: a claimed op that computes a wrong value fails. A
wrong result already traced to a bug is marked as an expected failure in ``KNOWN_FAILURES``
(it still runs, and shows up as XFAIL, or XPASS once fixed) with the bug it is waiting on.
"""

from __future__ import annotations

import re

#: ONNX op types hetero converts (hetero/onnx.py), checked against ``supported_ops()`` in tests.
CLAIMED_OPS = frozenset({
    "Abs", "Add", "And", "ArgMax", "ArgMin", "Attention", "AveragePool", "BatchNormalization",
    "Cast", "CastLike", "Ceil", "Celu", "Clip", "Concat", "Constant", "ConstantOfShape", "Conv",
    "ConvTranspose", "Cos", "CumSum", "Div", "Dropout", "Einsum", "Elu", "Equal", "Erf", "Exp",
    "Expand", "Flatten", "Floor", "Gather", "GatherElements", "GatherND", "Gelu", "Gemm",
    "GlobalAveragePool", "GlobalMaxPool", "Greater", "GreaterOrEqual", "HardSigmoid", "HardSwish",
    "Identity", "InstanceNormalization", "IsInf", "IsNaN", "LRN", "LayerNormalization",
    "LeakyRelu", "Less", "LessOrEqual", "Log", "LogSoftmax", "MatMul", "Max", "MaxPool", "Mean",
    "Min", "Mish", "Mod", "Mul", "Neg", "NonZero", "Not", "Or", "PRelu", "Pad", "Pow", "Range",
    "Reciprocal", "ReduceMax", "ReduceMean", "ReduceMin", "ReduceSum", "Relu", "Reshape", "Resize",
    "Round", "ScatterND", "Selu", "Shape", "Sigmoid", "Sign", "Sin", "Size", "Slice", "Softmax",
    "Softplus", "Softsign", "Split", "Sqrt", "Squeeze", "Sub", "Sum", "Tanh", "ThresholdedRelu",
    "Tile", "TopK", "Transpose", "Trilu", "Unsqueeze", "Upsample", "Where", "Xor",
})

_DTYPE = ("tensor type not supported: hetero has bool, int8-64, uint8-64 and float16/32/64; "
          "not bfloat16, float8, float4, int4/int2 or strings")
_TRAINING = "training mode (hetero runs inference only)"
_TYPES = "optional and sequence values are not supported (tensors only)"

#: Tests of claimed ops that use an unsupported feature: regex on the test name -> reason.
EXCLUDED: dict[str, str] = {
    r"^test_cast(like)?_.*(BFLOAT16|FLOAT8|FLOAT4|INT4|UINT4|INT2|UINT2|STRING)": _DTYPE,
    r"(?i)_(bf16|bfloat16)(_|$)": _DTYPE,
    r"^test_equal_string": _DTYPE,
    r"^test_training_dropout": _TRAINING,
    r"^test_batchnorm_.*training_mode": _TRAINING,
    r"^test_identity_(opt|sequence)": _TYPES,
    r"^test_nonzero_example": "NonZero of a graph input: its output shape depends on the data "
                              "(hetero folds NonZero of constants and shapes only)",
    r"^test_wrap_pad": "Pad mode 'wrap' is not supported (constant, reflect, edge are)",
}


#: Tests that run and are expected to fail (pytest xfail, not strict: reported as XPASS when they
#: pass), each with the cause: a known bug in hetero, or a test whose expected output only a
#: bitwise-identical computation reproduces. None is a missing feature.
KNOWN_FAILURES: dict[str, str] = {
    # Its constant weights make all 1000 logits ~6.8e9 and bitwise equal in onnxruntime's
    # reference, so one rounding difference between channels turns the softmax into 0 or 1/520.
    # hetero's bits do not depend on the thread count (products split by shape only, BLAS on one
    # thread), but they are the BLAS build's: OpenBLAS's SkylakeX sgemm rounds every row alike
    # and the test passes there (XPASS); its Haswell kernel (what DYNAMIC_ARCH picks on AMD EPYC
    # and AVX2 Xeons) rounds row tails differently: one np.matmul on one thread of 1000 equal
    # 512-wide rows by a (512, 169) map gives 502 rows whose bits differ from the first.
    r"^test_squeezenet": "logits bitwise equal only under a GEMM that rounds every row alike "
                         "(OpenBLAS's Haswell kernel does not; see tests/onnx_exclusions.py)",
}


def known_failure(name: str) -> str | None:
    """The bug that test ``name`` is known to fail on, or None."""
    for pattern, reason in KNOWN_FAILURES.items():
        if re.search(pattern, name):
            return reason
    return None


def model_ops(model) -> set[str]:
    """Op types of a model's main graph (``domain.op`` for other domains)."""
    return {n.op_type if n.domain in ("", "ai.onnx") else f"{n.domain}.{n.op_type}"
            for n in model.graph.node}


def exclusion_reason(name: str, model=None) -> str | None:
    """Why test ``name`` (with ``model``, if already loaded) is not run; None if it runs."""
    for pattern, reason in EXCLUDED.items():
        if re.search(pattern, name):
            return reason
    if model is not None:
        missing = model_ops(model) - CLAIMED_OPS
        if missing:
            return "uses ops hetero does not support: " + ", ".join(sorted(missing))
    return None
