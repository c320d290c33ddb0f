"""What a steady-state run allocates, op by op (issue 13.11).

The executor gives every value a planned place in its device's arena, so a run allocates only
the outputs it returns. A kernel may still allocate scratch memory of its own (NumPy temporaries:
an im2col matrix, a padded copy, an intermediate of a fused formula). This test runs one node of
every registry op on ``cpu:1``, at sizes where a tensor-sized temporary cannot hide in the slack,
and measures (tracemalloc) what its third run allocates beyond its output. Ops not in
``SCRATCH`` must stay within ``SLACK`` (NumPy's ufunc iteration buffers and Python objects); the
ops in ``SCRATCH`` need a temporary by their algorithm and are held to the bound written there,
in units of their output's size, with the reason. docs/executor.md prints the measured table.
"""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

from hetero.devices import Machine
from hetero.executor import Executor
from hetero.ops import registry
from hetero.ops.nn import winograd_weights
from tests.graphs import Builder
from tests.test_memory import make_plan

#: bytes a run may allocate beyond its outputs with no tensor-sized temporary (ufunc buffers of
#: 8192 elements, NumPy and Python objects); every test tensor below is larger than this
SLACK = 80 * 1024

N, C, H, W = 1, 16, 48, 48  # image inputs: 147 KiB in float32
ROWS, COLS = 192, 192  # matrix inputs: 147 KiB in float32

#: op -> (bound on the scratch bytes per run in units of the output's bytes, why). Measured
#: figures are in docs/executor.md; the bounds leave room for other NumPy versions' buffering.
SCRATCH: dict[str, tuple[float, str]] = {
    "conv2d": (8.5, "im2col workspace (C_in * kh * kw values per output pixel, built band by "
                    "band) and the zero-padded input"),
    "conv2d_add": (9.5, "as conv2d, and the residual added into the product's layout"),
    "conv2d_winograd": (21.0, "Winograd F(2x2,3x3): the transformed input tiles (16 per 2x2 "
                              "outputs) and their products before the output transform"),
    "depthwise": (5.5, "the zero-padded input and one product per filter tap"),
    "max_pool2d": (13.5, "the padded copy of the input (4x the output at stride 2)"),
    "avg_pool2d": (13.5, "the padded copy of the input (4x the output at stride 2)"),
    "gather": (1.6, "np.take buffers its output when it checks the indices (mode='raise'), so "
                    "an index out of range raises instead of wrapping"),
    "gather_nd": (2.0, "the flat offsets of every index tuple and the gathered copy"),
    "scatter_nd": (2.0, "the flat offsets of every index tuple"),
    "topk": (300.0, "a stable argsort of every row: int64 indices of the whole input"),
    "cumsum": (2.0, "the reversed or shifted copy of an exclusive or reverse sum"),
    "einsum": (2.0, "numpy.einsum's intermediate product"),
    "gather_elements": (8.5, "flat int64 offsets computed over the whole index tensor"),
    "instance_norm": (3.5, "the centred input and its square, for the statistics"),
    "layer_norm": (8.0, "float32 statistics (stash_type=1): the centred input, its square and "
                        "the normalised product"),
    "log_softmax": (1.6, "exp of the shifted values, to sum them"),
    "lrn": (2.0, "squares of the input and their windowed sums"),
    "pad": (1.6, "reflect and edge modes go through np.pad, which builds the padded tensor"),
    "conv_nd": (36.0, "the N-d reference's im2col columns (C_in * taps values per output "
                      "position: 27 for 3x3x3) and the zero-padded input"),
    "conv_transpose": (3.5, "every tap's product before the strided adds (col2im), and the "
                            "uncropped output"),
    "max_pool_nd": (7.0, "the padded copy of the input (4x the output at stride 2)"),
    "avg_pool_nd": (7.0, "the padded copy of the input (4x the output at stride 2)"),
    "resize": (7.0, "per resized axis, the gathered neighbours (2 for linear, 4 for cubic) and "
                    "their weighted products"),
    "attention": (15.0, "the scores, the mask bias, their exponentials and the probabilities "
                        "(heads x queries x keys each)"),
    "conv2d_weight_grad": (170.0, "the im2col matrix of every image side by side (C_in * kh * "
                                  "kw values per output pixel) and the cotangent transposed "
                                  "to (O, N * pixels): its output, the weights, is small"),
    "max_pool2d_grad": (4.0, "the -inf-padded input, the padded gradient it accumulates into "
                             "and the per-window tie counts and shares"),
}


def _image(b: Builder, c: int = C):
    return b.input((N, c, H, W))


def _matrix(b: Builder, rows: int = ROWS, cols: int = COLS):
    return b.input((rows, cols))


def _graph(name: str):
    """A one-op graph of registry op ``name`` (plus the constants it needs)."""
    rng = np.random.default_rng(0)
    b = Builder(f"alloc_{name}")

    def const(*shape, dtype=np.float32, positive=False):
        arr = rng.standard_normal(shape).astype(dtype)
        return b.const(np.abs(arr) + 0.5 if positive else arr)

    x = _image(b)
    special = {
        "conv2d": lambda: b.op("conv2d", x, const(C, C, 3, 3), pads=(1, 1, 1, 1)),
        "conv2d_add": lambda: b.op("conv2d_add", x, const(C, C, 3, 3), const(C),
                                   b.input((N, C, H, W)), pads=(1, 1, 1, 1)),
        "conv2d_winograd": lambda: b.op(
            "conv2d_winograd", x,
            b.const(winograd_weights(rng.standard_normal((C, C, 3, 3)).astype(np.float32))),
            pads=(1, 1, 1, 1)),
        "depthwise": lambda: b.op("conv2d", x, const(C, 1, 3, 3), pads=(1, 1, 1, 1), groups=C),
        "max_pool2d": lambda: b.op("max_pool2d", x, kernel_shape=(3, 3), strides=(2, 2),
                                   pads=(1, 1, 1, 1)),
        "avg_pool2d": lambda: b.op("avg_pool2d", x, kernel_shape=(3, 3), strides=(2, 2),
                                   pads=(1, 1, 1, 1)),
        "batch_norm": lambda: b.op("batch_norm", x, const(C), const(C), const(C),
                                   const(C, positive=True)),
        "instance_norm": lambda: b.op("instance_norm", x, const(C), const(C)),
        "layer_norm": lambda: b.op("layer_norm", _matrix(b), const(COLS), const(COLS)),
        "lrn": lambda: b.op("lrn", x, size=5),
        "matmul": lambda: b.op("matmul", _matrix(b), _matrix(b)),
        "gemm": lambda: b.op("gemm", _matrix(b), _matrix(b), const(COLS)),
        "prelu": lambda: b.op("prelu", x, const(C, 1, 1)),
        "where": lambda: b.op("where", b.input((N, C, H, W), dtype=bool), x, _image(b)),
        "gather_nd": lambda: b.op("gather_nd", _matrix(b),
                                  b.const(rng.integers(0, ROWS, (150, 1)).astype(np.int64))),
        "scatter_nd": lambda: b.op("scatter_nd", _matrix(b),
                                   b.const(np.arange(4, dtype=np.int64).reshape(4, 1)),
                                   b.const(np.ones((4, COLS), np.float32))),
        "topk": lambda: b.op("topk", _matrix(b), k=3),
        "cumsum": lambda: b.op("cumsum", _matrix(b), axis=1),
        "einsum": lambda: b.op("einsum", _matrix(b), equation="ij->ji"),
        "gather": lambda: b.op("gather", _matrix(b),
                               b.const(rng.integers(0, ROWS, 150).astype(np.int64)), axis=0),
        "gather_elements": lambda: b.op(
            "gather_elements", _matrix(b),
            b.const(rng.integers(0, ROWS, (ROWS, COLS)).astype(np.int64)), axis=0),
        "concat": lambda: b.op("concat", x, _image(b), axis=1),
        "split": lambda: b.op_multi("split", x, sizes=(8, 8), axis=1)[0],
        "slice": lambda: b.op("slice", x, starts=(0, 2), ends=(C, H - 2), axes=(1, 2)),
        "pad": lambda: b.op("pad", x, pads=(0, 0, 2, 2, 0, 0, 2, 2), mode="reflect"),
        "reshape": lambda: b.op("reshape", x, shape=(N, C * H * W)),
        "flatten": lambda: b.op("flatten", x, axis=1),
        "expand": lambda: b.op("expand", b.input((1, C, H, 1)), shape=(N, C, H, W)),
        "tile": lambda: b.op("tile", b.input((N, C, H, W // 2)), repeats=(1, 1, 1, 2)),
        "transpose": lambda: b.op("transpose", x, perm=(0, 2, 3, 1)),
        "squeeze": lambda: b.op("squeeze", b.input((N, C, H, W, 1)), axes=(4,)),
        "unsqueeze": lambda: b.op("unsqueeze", x, axes=(4,)),
        "trilu": lambda: b.op("trilu", _matrix(b)),
        "cast": lambda: b.op("cast", x, to="float16"),
        "add_n": lambda: b.op("add_n", x, _image(b), _image(b)),
        "max": lambda: b.op("max", x, axes=(3,)),
        "min": lambda: b.op("min", x, axes=(3,)),
        "sum": lambda: b.op("sum", x, axes=(3,)),
        "mean": lambda: b.op("mean", x, axes=(3,)),
        "argmax": lambda: b.op("argmax", x, axis=3),
        "argmin": lambda: b.op("argmin", x, axis=3),
        "softmax": lambda: b.op("softmax", x, axis=-1),
        "log_softmax": lambda: b.op("log_softmax", x, axis=-1),
        "global_avg_pool": lambda: b.op("global_avg_pool", x),
        "global_max_pool": lambda: b.op("global_max_pool", x),
        "pow": lambda: b.op("pow", b.op("abs", x), const(1, 1, 1, 1, positive=True)),
        "mod": lambda: b.op("mod", x, const(1, 1, 1, 1, positive=True)),
        "clip": lambda: b.op("clip", x, min=-1.0, max=1.0),
        "conv_nd": lambda: b.op("conv_nd", b.input((N, 8, 8, 12, 12)), const(8, 8, 3, 3, 3),
                                pads=(1,) * 6),
        "conv_transpose": lambda: b.op("conv_transpose", b.input((N, C, H // 2, W // 2)),
                                       const(C, C, 2, 2), strides=(2, 2)),
        "max_pool_nd": lambda: b.op("max_pool_nd", x, kernel_shape=(3, 3), strides=(2, 2),
                                    pads=(1, 1, 1, 1)),
        "avg_pool_nd": lambda: b.op("avg_pool_nd", x, kernel_shape=(3, 3), strides=(2, 2),
                                    pads=(1, 1, 1, 1)),
        "resize": lambda: b.op("resize", b.input((N, C, H // 2, W // 2)), sizes=(N, C, H, W),
                               scales=(1.0, 1.0, 2.0, 2.0), mode="linear"),
        "attention": lambda: b.op("attention", b.input((1, 2, 64, 32)), b.input((1, 2, 64, 32)),
                                  b.input((1, 2, 64, 32)), is_causal=1),
        "conv2d_weight_grad": lambda: b.op("conv2d_weight_grad", x, b.input((N, C, H, W)),
                                           kernel_shape=(3, 3), pads=(1, 1, 1, 1)),
        "max_pool2d_grad": lambda: b.op("max_pool2d_grad", x, b.input((N, C, H // 2, W // 2)),
                                        b.input((N, C, H // 2, W // 2)), kernel_shape=(3, 3),
                                        strides=(2, 2), pads=(1, 1, 1, 1)),
    }
    logical = {"logical_and", "logical_or", "logical_xor"}
    if name in special:
        out = special[name]()
    elif name == "logical_not":
        out = b.op(name, b.input((N, C, H, W), dtype=bool))
    elif name in logical:
        out = b.op(name, b.input((N, C, H, W), dtype=bool), b.input((N, C, H, W), dtype=bool))
    else:
        try:
            out = b.op(name, x)  # unary
        except Exception:
            out = b.op(name, x, _image(b))  # binary
    return b.build(out)


#: the ops measured: every registry op (transfer is a structural node: partition inserts it)
OPS = sorted(set(registry.REGISTRY) - {"transfer"}) + ["depthwise"]


def _inputs(graph):
    rng = np.random.default_rng(1)
    out = []
    for spec in graph.input_specs:
        if spec.dtype == bool:
            out.append(rng.random(spec.shape) < 0.5)
        else:
            out.append((rng.standard_normal(spec.shape) + 0.1).astype(spec.dtype))
    return out


def scratch_bytes(name: str) -> tuple[int, int]:
    """(bytes a steady-state run of op ``name``'s graph allocates beyond its outputs, its
    output bytes) on cpu:1."""
    graph = _graph(name)
    ex = Executor(make_plan(graph, Machine.parse("cpu:1"), lambda n: "cpu:0"))
    xs = _inputs(graph)
    with np.errstate(all="ignore"):
        ex.run(xs)
        ex.run(xs)
        out_bytes = sum(s.nbytes for s in graph.output_specs)
        tracemalloc.start()
        try:
            tracemalloc.reset_peak()
            before, _ = tracemalloc.get_traced_memory()
            ex.run(xs)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    return max(0, peak - before - out_bytes), out_bytes


def test_every_registry_op_is_measured():
    assert set(OPS) >= set(registry.REGISTRY) - {"transfer"}
    assert set(SCRATCH) <= set(OPS)


@pytest.mark.parametrize("name", OPS)
def test_steady_state_run_allocates_at_most_its_documented_scratch(name):
    extra, out_bytes = scratch_bytes(name)
    if name in SCRATCH:
        bound, why = SCRATCH[name]
        assert extra <= SLACK + bound * out_bytes, (name, extra, out_bytes, why)
    else:
        assert extra <= SLACK, (f"{name} allocates {extra:,} bytes per run beyond its output "
                                f"({out_bytes:,} bytes); add it to SCRATCH with the reason "
                                "or give the kernel its buffers")
