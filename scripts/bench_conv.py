"""Time hetero's conv2d kernel against onnxruntime's Conv on the 53 convolutions of ResNet-50.

Batch 1, 224x224, torchvision's ResNet-50 (v1.5: the stride of a down-sampling block sits on its
3x3 conv). Every conv has a bias, as after batch-norm folding. Both sides run on the same inputs in
the same process with the same number of threads (``--threads``, default: every core); each shape
is timed ``--repeat`` times and the median is kept. Identical shapes are timed once and counted as
many times as the network has them.

    python scripts/bench_conv.py [--threads 2] [--repeat 7] [--stat median|min] [--activation relu]
                                 [--coretype SkylakeX] [--model]

``--model`` times the whole network instead: a ResNet-50 ONNX model with random weights (conv,
batch-norm, relu, residual adds, pools, gemm) in onnxruntime against hetero's import ->
``optimize(residual=True, winograd=True)`` -> ``compile`` for one CPU worker -> ``plan.run``,
outputs compared.

OpenBLAS picks its kernels per CPU, or as ``OPENBLAS_CORETYPE`` says (this machine's environment
pins ``Haswell``, the AVX2 kernels). On an AVX-512 CPU, ``--coretype SkylakeX`` selects the AVX-512
kernels, which onnxruntime's MLAS uses as a matter of course; it must be set before NumPy loads
OpenBLAS, so the script sets it first thing. The header line says which kernels ran.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections import Counter

# must happen before NumPy is imported: OpenBLAS reads it once, when it loads
if "--coretype" in sys.argv[:-1]:
    os.environ["OPENBLAS_CORETYPE"] = sys.argv[sys.argv.index("--coretype") + 1]

import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def resnet50_convs() -> list[tuple[int, int, int, int, int, int]]:
    """The 53 convs as ``(C, H, O, K, stride, pad)`` (square inputs and kernels)."""
    convs = [(3, 224, 64, 7, 2, 3)]
    size, cin = 56, 64
    for width, blocks, stride in ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)):
        for i in range(blocks):
            s = stride if i == 0 else 1
            convs.append((cin, size, width, 1, 1, 0))
            convs.append((width, size, width, 3, s, 1))
            out_size = size // s
            convs.append((width, out_size, 4 * width, 1, 1, 0))
            if i == 0:
                convs.append((cin, size, 4 * width, 1, s, 0))
            cin, size = 4 * width, out_size
    assert len(convs) == 53
    return convs


def median_ms(fns, repeat: int, stat=statistics.median) -> list[float]:
    """Median (or ``stat``) wall time of each function, the runs interleaved so that a burst of
    load from elsewhere on the machine hits every side alike."""
    times: list[list[float]] = [[] for _ in fns]
    for fn in fns:
        fn()  # warm up (first-call allocations, onnxruntime's weight prepacking)
    for _ in range(repeat):
        for fn, ts in zip(fns, times):
            t = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t)
    return [stat(ts) * 1e3 for ts in times]


def ort_conv(x, w, b, stride, pad, threads):
    import onnx
    import onnxruntime as ort
    from onnx import helper, numpy_helper

    node = helper.make_node("Conv", ["x", "w", "b"], ["y"], strides=[stride, stride],
                            pads=[pad] * 4)
    graph = helper.make_graph(
        [node], "conv", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, x.shape)],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    # idle onnxruntime threads would otherwise spin on the cores while hetero is being timed
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    sess = ort.InferenceSession(model.SerializeToString(), opts,
                                providers=["CPUExecutionProvider"])
    return lambda: sess.run(None, {"x": x})[0]


def _winograd_variant(c, h, o, k, s, p, x, w, b, activation):
    """hetero's kernel for this conv after ``optimize(graph, winograd=True)``: conv2d_winograd
    with weights transformed beforehand, or None where the pass keeps conv2d."""
    from hetero.ops.nn import winograd_weights
    from hetero.ops.registry import lookup
    from hetero.passes.optimize import WINOGRAD_MIN_CHANNELS, WINOGRAD_MIN_PIXELS

    oh = (h + 2 * p - k) // s + 1
    if (k, s) != (3, 1) or min(c, o) < WINOGRAD_MIN_CHANNELS or oh * oh < WINOGRAD_MIN_PIXELS:
        return None
    op = lookup("conv2d_winograd")
    attrs = op.normalize_attrs({"pads": (p,) * 4, "activation": activation})
    u, out = winograd_weights(w), np.empty((1, o, oh, oh), np.float32)
    kernel = op.kernel_for("numpy")

    def run():
        kernel(np, [x, u, b], attrs, [out])
        return out
    return run


def resnet50_onnx(seed: int = 0):
    """ResNet-50 v1.5 as an ONNX ModelProto with random weights (He-scaled, so activations stay
    bounded), batch-norms with random statistics, input ``x`` (1, 3, 224, 224)."""
    import onnx
    from onnx import helper, numpy_helper

    rng = np.random.default_rng(seed)
    nodes, inits = [], []
    count = iter(range(10_000))

    def const(array):
        name = f"p{next(count)}"
        inits.append(numpy_helper.from_array(np.asarray(array, np.float32), name))
        return name

    def conv_bn(x, cin, cout, k, stride, relu):
        y = f"t{next(count)}"
        w = rng.standard_normal((cout, cin, k, k)) * np.sqrt(2.0 / (cin * k * k))
        nodes.append(helper.make_node("Conv", [x, const(w)], [y], kernel_shape=[k, k],
                                      strides=[stride, stride], pads=[k // 2] * 4))
        z = f"t{next(count)}"
        bn = [const(rng.uniform(0.5, 1.0, cout)), const(rng.normal(0, 0.1, cout)),
              const(rng.normal(0, 0.1, cout)), const(rng.uniform(0.5, 1.5, cout))]
        nodes.append(helper.make_node("BatchNormalization", [y, *bn], [z], epsilon=1e-5))
        if not relu:
            return z
        r = f"t{next(count)}"
        nodes.append(helper.make_node("Relu", [z], [r]))
        return r

    x = conv_bn("x", 3, 64, 7, 2, True)
    pooled = f"t{next(count)}"
    nodes.append(helper.make_node("MaxPool", [x], [pooled], kernel_shape=[3, 3], strides=[2, 2],
                                  pads=[1, 1, 1, 1]))
    x, cin = pooled, 64
    for width, blocks, stride in ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)):
        for i in range(blocks):
            s = stride if i == 0 else 1
            y = conv_bn(x, cin, width, 1, 1, True)
            y = conv_bn(y, width, width, 3, s, True)
            y = conv_bn(y, width, 4 * width, 1, 1, False)
            short = conv_bn(x, cin, 4 * width, 1, s, False) if i == 0 else x
            added, out = f"t{next(count)}", f"t{next(count)}"
            nodes.append(helper.make_node("Add", [y, short], [added]))
            nodes.append(helper.make_node("Relu", [added], [out]))
            x, cin = out, 4 * width
    gap, flat = f"t{next(count)}", f"t{next(count)}"
    nodes.append(helper.make_node("GlobalAveragePool", [x], [gap]))
    nodes.append(helper.make_node("Flatten", [gap], [flat]))
    fc_w = const(rng.standard_normal((1000, 2048)) * np.sqrt(1.0 / 2048))
    nodes.append(helper.make_node("Gemm", [flat, fc_w, const(np.zeros(1000))], ["y"], transB=1))
    graph = helper.make_graph(
        nodes, "resnet50", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT,
                                                          [1, 3, 224, 224])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 1000])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model


def bench_model(args, stat) -> None:
    """Whole ResNet-50: onnxruntime against hetero (import, optimize, compile for one CPU worker,
    plan.run: kernels into the planned arena)."""
    import onnxruntime as ort
    from threadpoolctl import threadpool_limits

    import hetero as ht
    from hetero import onnx as hetero_onnx
    from hetero.passes.optimize import optimize

    model = resnet50_onnx()
    graph = hetero_onnx.load(model)
    t = time.perf_counter()
    optimized = optimize(graph, residual=True, winograd=True)
    t_opt = time.perf_counter() - t
    machine = ht.Machine.parse("cpu:1")
    plan = ht.compile(optimized, machine)
    plain = ht.compile(graph, machine, optimize=False)
    x = np.random.default_rng(1).standard_normal((1, 3, 224, 224)).astype(np.float32)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = args.threads
    opts.inter_op_num_threads = 1
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    sess = ort.InferenceSession(model.SerializeToString(), opts,
                                providers=["CPUExecutionProvider"])
    from hetero.executor import Executor

    # the same plan three ways: the default executor (on a multi-core box the convs split their
    # own work over the cores, BLAS one thread each), BLAS with --threads threads and no split,
    # and one thread
    split = Executor(plan)
    blas = Executor(plan, blas_threads=args.threads)
    single = Executor(plan, blas_threads=1)
    with threadpool_limits(limits=args.threads, user_api="blas"):
        want = sess.run(None, {"x": x})[0]
        got = np.asarray(split.run([x])[0])
        err = float(np.abs(got - want).max() / np.abs(want).max())
        assert err < 1e-3, f"hetero and onnxruntime differ: {err}"
        for other in (blas, single):
            np.testing.assert_allclose(np.asarray(other.run([x])[0]), got, rtol=1e-4, atol=1e-5)
        names = [f"hetero split ({split.intra_op_threads} threads)",
                 f"hetero BLAS {args.threads} threads", "hetero 1 thread", "hetero unoptimized",
                 "onnxruntime"]
        runs = times_ms([lambda: split.run([x]), lambda: blas.run([x]), lambda: single.run([x]),
                         lambda: plain.run(x), lambda: sess.run(None, {"x": x})], args.repeat)
    compute = [n for n in optimized.nodes if n.op not in ("input", "constant")]
    print(f"ResNet-50 batch 1, {args.threads} threads, {args.repeat} runs each (interleaved), "
          f"load average {' '.join(f'{v:.1f}' for v in os.getloadavg())}: "
          f"graph {sum(n.op not in ('input', 'constant') for n in graph.nodes)} compute nodes -> "
          f"{len(compute)} after optimize ({t_opt * 1e3:.0f} ms; "
          f"{sum(n.op == 'conv2d_winograd' for n in compute)} Winograd convs, "
          f"{sum(n.op == 'conv2d_add' for n in compute)} residual adds fused)")
    ort_med, ort_min = statistics.median(runs[-1]), min(runs[-1])
    print(f"{'':28s} {'median ms':>10s} {'min ms':>8s} {'ratio (med)':>12s} {'ratio (min)':>12s}")
    for name, ts in zip(names, runs):
        med, best = statistics.median(ts), min(ts)
        print(f"{name:28s} {med:10.1f} {best:8.1f} {med / ort_med:12.2f} {best / ort_min:12.2f}")
    print(f"max relative difference to onnxruntime {err:.1e}")


def times_ms(fns, repeat: int) -> list[list[float]]:
    """Every wall time of each function in ms, the runs interleaved (after one warm-up each)."""
    times: list[list[float]] = [[] for _ in fns]
    for fn in fns:
        fn()
    for _ in range(repeat):
        for fn, ts in zip(fns, times):
            t = time.perf_counter()
            fn()
            ts.append((time.perf_counter() - t) * 1e3)
    return times


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--activation", default="none")
    parser.add_argument("--stat", choices=("median", "min"), default="median",
                        help="min (best of the runs) is steadier on a machine shared with others")
    parser.add_argument("--coretype", help="OpenBLAS kernels to use (OPENBLAS_CORETYPE)")
    parser.add_argument("--model", action="store_true", help="time the whole ResNet-50 instead")
    args = parser.parse_args(argv)

    from threadpoolctl import threadpool_info, threadpool_limits

    from hetero.graph import TensorSpec
    from hetero.ops.registry import lookup

    stat = statistics.median if args.stat == "median" else min
    if args.model:
        bench_model(args, stat)
        return
    op = lookup("conv2d")
    rng = np.random.default_rng(0)
    counts = Counter(resnet50_convs())
    blas = next((f"{i['internal_api']} {i.get('version')} ({i.get('architecture')} kernels)"
                 for i in threadpool_info() if i["user_api"] == "blas"), "unknown BLAS")
    print(f"ResNet-50 convs, batch 1, {args.threads} threads, {args.stat} of {args.repeat}, "
          f"{blas}")
    print("hetero: conv2d kernel; +wino: conv2d_winograd where optimize(winograd=True) uses it; "
          "ratio and GFLOP/s (direct-conv flops) of the latter")
    print(f"{'C':>5} {'HxW':>7} {'O':>5} {'k':>2} {'s':>2} {'n':>3} {'GFLOP':>7} "
          f"{'hetero ms':>10} {'+wino ms':>9} {'ort ms':>8} {'ratio':>6} {'GFLOP/s':>8}")
    tot_h = tot_w = tot_o = tot_f = 0.0
    with threadpool_limits(limits=args.threads):
        for (c, h, o, k, s, p), n in counts.items():
            x = rng.standard_normal((1, c, h, h), dtype=np.float32)
            w = (rng.standard_normal((o, c, k, k), dtype=np.float32) * 0.05).astype(np.float32)
            b = rng.standard_normal(o, dtype=np.float32)
            attrs = op.normalize_attrs({"strides": (s, s), "pads": (p,) * 4,
                                        "activation": args.activation})
            spec = op.infer_specs((TensorSpec.of(x), TensorSpec.of(w), TensorSpec.of(b)),
                                  attrs)[0]
            out = np.empty(spec.shape, spec.dtype)
            kernel = op.kernel_for("numpy")
            flops = op.cost_of((TensorSpec.of(x), TensorSpec.of(w)), (spec,), attrs).flops

            def ours(x=x, w=w, b=b, attrs=attrs, out=out, kernel=kernel):
                kernel(np, [x, w, b], attrs, [out])
                return out

            theirs = ort_conv(x, w, b, s, p, args.threads)
            if args.activation == "none":
                ref = theirs()
                got = ours()
                err = float(np.abs(got - ref).max() / max(1.0, np.abs(ref).max()))
                assert err < 1e-3, f"mismatch {err} on {(c, h, o, k, s, p)}"
            wino = _winograd_variant(c, h, o, k, s, p, x, w, b, args.activation)
            if wino is not None:
                err = float(np.abs(wino() - ours()).max() / max(1.0, np.abs(ours()).max()))
                assert err < 1e-3, f"winograd mismatch {err} on {(c, h, o, k, s, p)}"
                th, tw, to = median_ms([ours, wino, theirs], args.repeat, stat)
            else:
                th, to = median_ms([ours, theirs], args.repeat, stat)
                tw = th
            tot_h, tot_o, tot_f = tot_h + n * th, tot_o + n * to, tot_f + n * flops
            tot_w += n * tw
            wcol = f"{tw:9.2f}" if wino is not None else f"{'':9}"
            print(f"{c:5d} {h:4d}x{h:<3d}{o:5d} {k:2d} {s:2d} {n:3d} {flops / 1e9:7.3f} "
                  f"{th:10.2f} {wcol} {to:8.2f} {tw / to:6.2f} {flops / tw / 1e6:8.1f}")
    print(f"total with winograd (optimize(winograd=True)): hetero {tot_w:.1f} ms, "
          f"ratio {tot_w / tot_o:.2f}")
    print(f"total (53 convs, {tot_f / 1e9:.2f} GFLOP): hetero {tot_h:.1f} ms "
          f"({tot_f / tot_h / 1e6:.0f} GFLOP/s), onnxruntime {tot_o:.1f} ms "
          f"({tot_f / tot_o / 1e6:.0f} GFLOP/s), ratio {tot_h / tot_o:.2f}")


if __name__ == "__main__":
    main()
