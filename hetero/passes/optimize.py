"""Graph optimisation: ``optimize(graph) -> Graph``, a pure rewrite that keeps every value the
graph returns.

The pass is a fixed sequence of sweeps, each a pure ``Graph -> Graph`` function, repeated until
nothing changes:

1. ``fold_constants``: a node whose inputs are all constants runs once, now, through its NumPy
   kernel, and becomes a constant (outputs above ``MAX_FOLD_BYTES`` are left alone).
2. ``fold_batch_norm``: ``batch_norm(conv2d(x, w, b))`` with constant parameters becomes one
   ``conv2d`` with scaled weights ``w * a`` and bias ``b * a + (beta - mean * a)``, where
   ``a = scale / sqrt(var + eps)``.
3. ``fold_channel_affine``: ``mul`` or ``add`` by a per-channel constant after a ``batch_norm``
   with constant parameters goes into its scale and bias (Caffe2 exports write every batch norm
   as ``BatchNormalization(1, 0)`` followed by such a mul and add), and a ``mul`` after a conv
   scales its weights and bias.
4. ``fuse_bias``: ``add(conv2d(x, w), c)`` with a per-channel constant ``c`` becomes the conv's
   bias; ``add(gemm(a, b[, c]), d)`` and ``add(matmul(a, b), d)`` (2-D) with a constant ``d``
   become one ``gemm`` with ``d`` in its ``c``.
5. ``fuse_activation``: ``relu``, ``leaky_relu``, ``sigmoid``, ``tanh``, ``clip``,
   ``hard_swish`` or ``hard_sigmoid`` of a conv2d or batch_norm output becomes its ``activation``
   (DenseNet's batch_norm -> relu before each conv: one pass over the map and one node fewer; a
   batch_norm that later folds into a conv hands its activation on), and so does SiLU, exported
   as ``mul(y, sigmoid(y))`` (EfficientNet: two nodes and two passes over the map fewer).
6. ``eliminate_dead``: nodes no graph output depends on are dropped (graph inputs stay).

With ``residual=True`` (also for CPUs: a GPU runs conv2d through cuDNN), ``fuse_residual`` turns
``add(conv2d(x, w, b), z)`` or ``add_n`` of the two (``z`` any value of the same spec, the shortcut
of a residual block) into ``conv2d_add``, placed where the add was, and the relu that usually
follows then fuses as its activation.

Then, with ``winograd=True`` (for graphs that run on CPUs: a GPU has cuDNN's own algorithms),
``use_winograd`` turns each 3x3, stride-1, ungrouped conv2d with constant weights where it pays
(at least ``WINOGRAD_MIN_CHANNELS`` in and out, ``WINOGRAD_MIN_PIXELS`` to
``WINOGRAD_MAX_PIXELS`` output pixels, not annotated to a GPU) into ``conv2d_winograd`` with
weights transformed once, here, instead of on every call.

A producer is merged with its consumer only when the consumer is its sole reader and the producer's
value is not itself a graph output, and only when both carry the same device annotation and no
conflicting colocation group: the merged node keeps the producer's name and source line (``where``),
the shared device annotation (hard if either was hard) and the colocation group of either. The
consumer's value is renamed to the merged node's, so every later reader and graph output follows.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping

import numpy as np

from hetero.builder import GraphBuilder, frozen
from hetero.errors import HeteroError
from hetero.graph import CONSTANT, Graph, Node, TensorSpec, Value
from hetero.ops.nn import winograd_weights
from hetero.ops.registry import lookup

__all__ = ["optimize", "fold_constants", "fold_batch_norm", "fuse_bias", "fuse_activation",
           "fuse_residual", "fold_channel_affine", "eliminate_dead", "use_winograd",
           "MAX_FOLD_BYTES", "WINOGRAD_MIN_CHANNELS", "WINOGRAD_MIN_PIXELS",
           "WINOGRAD_MAX_PIXELS"]

#: Constant folding leaves nodes whose outputs would take more bytes than this (a broadcast of a
#: small constant to a huge one is cheaper to compute than to store).
MAX_FOLD_BYTES = 64 << 20

#: Winograd F(2x2,3x3) beat im2col + GEMM on the ResNet-50 shapes with 128 and 256 channels
#: (14x14 to 28x28 maps) by 18-28 %, tied at 512 channels on 7x7 and lost at 64 channels on 56x56
#: with AVX-512 OpenBLAS (scripts/bench_conv.py, docs/nn.md).
WINOGRAD_MIN_CHANNELS = 128
WINOGRAD_MIN_PIXELS = 100
#: ... and lost on large maps, where its three tile-sized temporaries (16 x channels x tiles
#: each) outgrow the caches and fault in fresh pages on every call: VGG-19's 128-channel 3x3 at
#: 112x112 took 38.2 ms as Winograd (1,814 page faults per call) against 31.8 ms direct, on two
#: intra-op threads; 256 channels at 56x56 19.1 against 24.7, 512 at 28x28 15.3 against 30.2.
WINOGRAD_MAX_PIXELS = 4096

_CONVS = frozenset({"conv2d", "conv2d_winograd"})
_ACTIVATED = _CONVS | {"conv2d_add", "batch_norm"}  # ops with a fused ``activation`` attribute


def optimize(graph: Graph, *, residual: bool = False, winograd: bool = False,
             max_rounds: int = 8) -> Graph:
    """Fold constants and batch-norms, fuse biases and activations, drop dead nodes; with
    ``residual``, fuse residual adds into the conv before them; with ``winograd``, run the 3x3
    convolutions where it pays as Winograd F(2x2, 3x3). (The last two suit CPUs; on a GPU cuDNN
    runs conv2d.)

    Returns a new Graph computing the same outputs; ``graph`` is not changed.
    """
    sweeps = (fold_constants, fold_batch_norm, fold_channel_affine, fuse_bias,
              *((fuse_residual,) if residual else ()), fuse_activation)
    current = eliminate_dead(graph)
    for _ in range(max_rounds):
        before = current
        for sweep in sweeps:
            current = sweep(current)
        current = eliminate_dead(current)
        if current.nodes == before.nodes:
            break
    if winograd:
        current = eliminate_dead(use_winograd(current))
    return current


# ----------------------------------------------------------------------------------------------
# Building a rewritten graph


class _Rewrite:
    """The edits of one sweep: nodes replaced (with constants inserted before them), nodes
    removed, and values renamed; ``build`` applies them all at once through a ``GraphBuilder``
    (whose ``fresh`` names the new constants)."""

    def __init__(self, graph: Graph) -> None:
        self.graph = graph
        self.replaced: dict[str, list[Node]] = {}
        self.removed: set[str] = set()
        self.alias: dict[Value, Value] = {}
        self.constants: dict[str, np.ndarray] = {}
        self.taken: set[str] = set()
        self.builder = GraphBuilder(graph.name, taken=(n.name for n in graph.nodes))

    def constant(self, like: Node, array: np.ndarray, base: str, *, exact: bool = False) -> Node:
        """A new constant node holding ``array``, annotated like ``like`` (named ``base`` itself
        with ``exact``, for a node that the constant replaces)."""
        array = frozen(array, copy=False)
        name = base if exact else self.builder.fresh(base)
        node = Node(name, CONSTANT, outputs=(TensorSpec.of(array),),
                    device=like.device, soft=like.soft, colocate=like.colocate, where=like.where)
        self.constants[node.name] = array
        return node

    def merge(self, producer: Node, consumer: Node, merged: Node, new_consts=()) -> None:
        """``merged`` (named like ``producer``) replaces both; readers of ``consumer`` follow."""
        self.replaced[producer.name] = [*new_consts, merged]
        self.removed.add(consumer.name)
        for i in range(len(consumer.outputs)):
            self.alias[Value(consumer.name, i)] = Value(merged.name, i)
        self.taken.update((producer.name, consumer.name))

    def changed(self) -> bool:
        return bool(self.replaced or self.removed)

    def build(self) -> Graph:
        if not self.changed():
            return self.graph

        def resolve(v: Value) -> Value:
            while v in self.alias:
                v = self.alias[v]
            return v

        arrays = {**self.graph.constants, **self.constants}
        out = self.builder
        for node in self.graph.nodes:
            if node.name in self.removed:
                continue
            for new in self.replaced.get(node.name, [node]):
                inputs = tuple(resolve(v) for v in new.inputs)
                new = new if inputs == new.inputs else new.replace(inputs=inputs)
                if new.is_constant:
                    out.add_constant(new, arrays[new.name])
                else:
                    out.add(new)
        return out.build(tuple(resolve(v) for v in self.graph.outputs), inputs=self.graph.inputs)


def _mergeable(producer: Node, consumer: Node) -> bool:
    """May these two become one node without changing any annotation's meaning?"""
    if producer.device != consumer.device:
        return False
    return (producer.colocate is None or consumer.colocate is None
            or producer.colocate == consumer.colocate)


def _merged_annotations(producer: Node, consumer: Node) -> dict:
    return {"soft": producer.soft and consumer.soft,
            "colocate": producer.colocate or consumer.colocate}


def _sole_reader(graph: Graph, readers: Mapping[str, list[str]], producer: Node) -> Node | None:
    """The one node reading ``producer`` (which has one output and is no graph output)."""
    if len(producer.outputs) != 1 or any(v.node == producer.name for v in graph.outputs):
        return None
    names = readers.get(producer.name, [])
    if len(names) != 1:
        return None
    reader = graph.node(names[0])
    if sum(v.node == producer.name for v in reader.inputs) != 1:
        return None
    return reader


def _const(graph: Graph, value: Value) -> np.ndarray | None:
    node = graph.node(value.node)
    return graph.constants.get(node.name) if node.is_constant else None


def _infers(node: Node, ins: tuple[TensorSpec, ...]) -> bool:
    """Does ``node`` (a rewrite's product) infer exactly its recorded outputs from ``ins``?"""
    try:
        return lookup(node.op).infer_specs(ins, node.attrs) == node.outputs
    except HeteroError:
        return False


# ----------------------------------------------------------------------------------------------
# Sweeps


def fold_constants(graph: Graph) -> Graph:
    """Run every node whose inputs are all constants and make its outputs constants."""
    rw = _Rewrite(graph)
    known: dict[Value, np.ndarray] = {
        Value(n.name): graph.constants[n.name] for n in graph.nodes if n.is_constant}
    for node in graph.nodes:
        if not node.computes or not node.inputs:
            continue
        if not all(v in known for v in node.inputs):
            continue
        if sum(s.nbytes for s in node.outputs) > MAX_FOLD_BYTES:
            continue
        op = lookup(node.op, node)
        if not op.has_kernel("numpy"):
            continue
        try:
            outs = op.evaluate([known[v] for v in node.inputs], node.attrs, node.outputs)
        except Exception:  # noqa: BLE001  (left in the graph; it fails, with its label, at run time)
            continue
        new = []
        for i, arr in enumerate(outs):
            if len(outs) == 1:  # the constant takes the node's name: readers need no renaming
                c = rw.constant(node, arr, node.name, exact=True)
            else:
                c = rw.constant(node, arr, f"{node.name}_{i}")
                rw.alias[Value(node.name, i)] = c.value()
            known[Value(node.name, i)] = rw.constants[c.name]
            new.append(c)
        rw.replaced[node.name] = new
    return rw.build()


def fold_batch_norm(graph: Graph) -> Graph:
    """``batch_norm(conv2d(x, w[, b]))`` with constant w, b and parameters -> one conv2d (also
    for conv2d_winograd, whose transformed weights are linear in w per output channel)."""
    rw = _Rewrite(graph)
    readers = graph.consumers()
    for conv in graph.nodes:
        if conv.op not in _CONVS or conv.name in rw.taken or conv.attrs["activation"] != "none":
            continue
        bn = _sole_reader(graph, readers, conv)
        if bn is None or bn.op != "batch_norm" or bn.inputs[0] != conv.value():
            continue
        if not _mergeable(conv, bn):
            continue
        w = _const(graph, conv.inputs[1])
        b = _const(graph, conv.inputs[2]) if len(conv.inputs) == 3 else None
        params = [_const(graph, v) for v in bn.inputs[1:]]
        if w is None or (len(conv.inputs) == 3 and b is None) or any(p is None for p in params):
            continue
        scale, beta, mean, var = (p.astype(np.float64) for p in params)
        a = scale / np.sqrt(var + bn.attrs["epsilon"])
        bias = beta - mean * a + (b.astype(np.float64) * a if b is not None else 0.0)
        w_node = graph.node(conv.inputs[1].node)
        per_channel = a.reshape(-1, 1, 1, 1) if conv.op == "conv2d" else a.reshape(1, -1, 1)
        new_w = rw.constant(w_node, (w * per_channel).astype(w.dtype), f"{conv.name}_w")
        new_b = rw.constant(w_node, bias.astype(w.dtype), f"{conv.name}_b")
        act = {k: bn.attrs[k] for k in ("activation", "activation_params") if k in bn.attrs}
        attrs = conv.attrs.set(**act) if act.get("activation", "none") != "none" else conv.attrs
        merged = conv.replace(inputs=(conv.inputs[0], new_w.value(), new_b.value()), attrs=attrs,
                              **_merged_annotations(conv, bn))
        rw.merge(conv, bn, merged, (new_w, new_b))
    return rw.build()


def fold_channel_affine(graph: Graph) -> Graph:
    """``mul``/``add`` by a per-channel constant after a batch_norm -> its scale and bias;
    ``mul`` by one after a conv2d (no activation) -> its weights and bias."""
    rw = _Rewrite(graph)
    readers = graph.consumers()
    for node in graph.nodes:
        if node.op not in ("batch_norm", *_CONVS) or node.name in rw.taken:
            continue
        if node.attrs.get("activation", "none") != "none":
            continue  # the mul or add comes after the activation
        follower = _sole_reader(graph, readers, node)
        if follower is None or follower.op not in ("mul", "add") or not _mergeable(node, follower):
            continue
        if node.op in _CONVS and follower.op == "add":
            continue  # fuse_bias's job
        other = follower.inputs[1] if follower.inputs[0] == node.value() else follower.inputs[0]
        c = _const(graph, other)
        vec = None if c is None else _channel_vector(c, node.outputs[0])
        if vec is None or follower.outputs != node.outputs:
            continue
        vec = vec.astype(np.float64)
        params = [_const(graph, v) for v in node.inputs[1:]]
        if any(p is None for p in params):
            continue
        params64 = [p.astype(np.float64) for p in params]
        if node.op == "batch_norm":
            scale, bias = params64[0], params64[1]
            new = ([scale * vec, bias * vec] if follower.op == "mul" else [scale, bias + vec])
            changed = {1: new[0], 2: new[1]}
        else:  # a conv's weights scale per output channel (axis 0 of OIHW, axis 1 of (16, O, C))
            w = params64[0]
            shape = (-1, 1, 1, 1) if node.op == "conv2d" else (1, -1, 1)
            changed = {1: w * vec.reshape(shape)}
            if len(params64) == 2:
                changed[2] = params64[1] * vec
        inputs, consts = list(node.inputs), []
        for pos, arr in changed.items():
            old = params[pos - 1]
            const = rw.constant(graph.node(node.inputs[pos].node), arr.astype(old.dtype),
                                f"{node.name}_p{pos}")
            inputs[pos] = const.value()
            consts.append(const)
        merged = node.replace(inputs=tuple(inputs), **_merged_annotations(node, follower))
        rw.merge(node, follower, merged, consts)
    return rw.build()


def _channel_vector(c: np.ndarray, out: TensorSpec) -> np.ndarray | None:
    """``c`` as a per-channel ``(O,)`` vector if adding it to an NCHW ``out`` is a bias add."""
    o = out.shape[1]
    if c.ndim > out.ndim or c.dtype != out.dtype:
        return None
    full = (1,) * (out.ndim - c.ndim) + c.shape
    if any(d != 1 for i, d in enumerate(full) if i != 1) or full[1] not in (1, o):
        return None
    return np.broadcast_to(c.reshape(-1), (o,))


def fuse_bias(graph: Graph) -> Graph:
    """A constant added to a conv2d, gemm or 2-D matmul output becomes that node's bias."""
    rw = _Rewrite(graph)
    readers = graph.consumers()
    for node in graph.nodes:
        if node.op not in ("conv2d", "conv2d_winograd", "gemm", "matmul") or node.name in rw.taken:
            continue
        add = _sole_reader(graph, readers, node)
        if add is None or add.op != "add" or not _mergeable(node, add):
            continue
        other = add.inputs[1] if add.inputs[0] == node.value() else add.inputs[0]
        c = _const(graph, other)
        if c is None or add.outputs != node.outputs:
            continue
        const_node = graph.node(other.node)
        if node.op in _CONVS:
            merged = _conv_with_bias(graph, rw, node, c, const_node)
        else:
            merged = _gemm_with_bias(graph, rw, node, c, const_node)
        if merged is not None:
            new_node, new_consts = merged
            new_node = new_node.replace(**_merged_annotations(node, add))
            rw.merge(node, add, new_node, new_consts)
    return rw.build()


def _conv_with_bias(graph, rw, conv, c, const_node):
    if conv.attrs["activation"] != "none":
        return None
    vec = _channel_vector(c, conv.outputs[0])
    if vec is None:
        return None
    if len(conv.inputs) == 3:
        old = _const(graph, conv.inputs[2])
        if old is None:
            return None
        vec = old + vec
    bias = rw.constant(const_node, vec.astype(conv.outputs[0].dtype), f"{conv.name}_b")
    return conv.replace(inputs=(conv.inputs[0], conv.inputs[1], bias.value())), [bias]


def _gemm_with_bias(graph, rw, node, d, const_node):
    if node.op == "matmul":
        if any(graph.spec(v).ndim != 2 for v in node.inputs):
            return None
        attrs, c, beta = lookup("gemm").normalize_attrs({}), None, 1.0
    else:
        attrs, beta = node.attrs, float(node.attrs["beta"])
        c = None
        if len(node.inputs) == 3:
            c = _const(graph, node.inputs[2])
            if c is None or beta == 0:
                return None
    out = node.outputs[0]
    if c is None:
        new_c, attrs = d, attrs.set(beta=1.0)
    else:
        # beta * c_new = beta * c + d; dividing by beta = 1 is exact
        new_c = c + d if beta == 1.0 else c + d / np.asarray(beta, d.dtype)
    if new_c.dtype != out.dtype or new_c.ndim > 2:
        return None
    const = rw.constant(const_node, new_c, f"{node.name}_c")
    gemm = node.replace(op="gemm", inputs=(node.inputs[0], node.inputs[1], const.value()),
                        attrs=attrs)
    ins = tuple(graph.spec(v) for v in node.inputs[:2]) + (TensorSpec.of(new_c),)
    return (gemm, [const]) if _infers(gemm, ins) else None


#: follower op -> (activation name, attrs -> activation_params)
_ACTIVATIONS: dict[str, tuple[str, Callable]] = {
    "relu": ("relu", lambda a: ()),
    "leaky_relu": ("leaky_relu", lambda a: (float(a["alpha"]),)),
    "sigmoid": ("sigmoid", lambda a: ()),
    "tanh": ("tanh", lambda a: ()),
    "clip": ("clip", lambda a: (a["min"], a["max"])),
    "hard_swish": ("hard_swish", lambda a: ()),
    "hard_sigmoid": ("hard_sigmoid", lambda a: (float(a["alpha"]), float(a["beta"]))),
}


def fuse_activation(graph: Graph) -> Graph:
    """``relu(conv2d(...))`` (and leaky_relu, sigmoid, tanh, clip, hard_swish, hard_sigmoid; also
    of a batch_norm) -> the producer with that activation; ``mul(y, sigmoid(y))`` of such a ``y``
    (SiLU, as exporters write it) -> the producer with activation ``silu``."""
    rw = _Rewrite(graph)
    readers = graph.consumers()
    for conv in graph.nodes:
        if (conv.op not in _ACTIVATED or conv.name in rw.taken
                or conv.attrs.get("activation", "none") != "none"):
            continue
        silu = _silu_of(graph, readers, conv)
        if silu is not None:
            sigmoid, mul = silu
            merged = conv.replace(attrs=conv.attrs.set(activation="silu", activation_params=()),
                                  **_merged_annotations(conv, mul))
            rw.replaced[conv.name] = [merged]
            rw.removed.update((sigmoid.name, mul.name))
            rw.alias[mul.value()] = merged.value()
            rw.taken.update((conv.name, sigmoid.name, mul.name))
            continue
        act = _sole_reader(graph, readers, conv)
        if act is None or act.op not in _ACTIVATIONS or not _mergeable(conv, act):
            continue
        if act.outputs != conv.outputs:
            continue
        name, params = _ACTIVATIONS[act.op]
        p = params(act.attrs)
        if any(v is not None and not math.isfinite(float(v)) for v in p):
            continue
        merged = conv.replace(attrs=conv.attrs.set(activation=name, activation_params=p),
                              **_merged_annotations(conv, act))
        rw.merge(conv, act, merged)
    return rw.build()


def _silu_of(graph: Graph, readers: Mapping[str, list[str]], node: Node):
    """``(sigmoid, mul)`` when ``node``'s value is read by exactly these two, as ``mul(y,
    sigmoid(y))`` (either operand order) with the sigmoid read by the mul alone, none of the three
    a graph output and all three under one annotation; else None."""
    if len(node.outputs) != 1 or any(v.node == node.name for v in graph.outputs):
        return None
    names = readers.get(node.name, [])
    if len(names) != 2 or names[0] == names[1]:
        return None
    a, b = (graph.node(n) for n in names)
    sigmoid, mul = (a, b) if a.op == "sigmoid" else (b, a)
    y = node.value()
    if sigmoid.op != "sigmoid" or mul.op != "mul" or sigmoid.inputs != (y,):
        return None
    if set(mul.inputs) != {y, sigmoid.value()} or len(mul.inputs) != 2:
        return None
    reader = _sole_reader(graph, readers, sigmoid)
    if reader is None or reader.name != mul.name:
        return None
    if sigmoid.outputs != node.outputs or mul.outputs != node.outputs:
        return None
    if not (_mergeable(node, sigmoid) and _mergeable(node, mul) and _mergeable(sigmoid, mul)):
        return None
    return sigmoid, mul


def fuse_residual(graph: Graph) -> Graph:
    """``add(conv2d(x, w[, b]), z)`` -> ``conv2d_add(x, w, b, z)`` where the add was (``z`` may
    be produced after the conv; the add comes after both); ``add_n`` of two values counts as an
    add."""
    rw = _Rewrite(graph)
    readers = graph.consumers()
    for add in graph.nodes:
        # add_n of two values (ONNX Sum, what Caffe2 exports write for a residual add) is an add
        if (add.op not in ("add", "add_n") or len(add.inputs) != 2 or add.name in rw.taken
                or add.inputs[0].node == add.inputs[1].node):
            continue
        for pos in (0, 1):
            conv, other = graph.node(add.inputs[pos].node), add.inputs[1 - pos]
            if conv.op != "conv2d" or conv.name in rw.taken or conv.attrs["activation"] != "none":
                continue
            reader = _sole_reader(graph, readers, conv)
            if reader is None or reader.name != add.name or not _mergeable(conv, add):
                continue
            if graph.spec(other) != conv.outputs[0] or add.outputs != conv.outputs:
                continue
            new_consts = []
            if len(conv.inputs) == 3:
                bias = conv.inputs[2]
            else:
                spec = conv.outputs[0]
                zero = rw.constant(graph.node(conv.inputs[1].node),
                                   np.zeros(spec.shape[1], spec.dtype), f"{conv.name}_b")
                new_consts, bias = [zero], zero.value()
            merged = conv.replace(op="conv2d_add",
                                  inputs=(conv.inputs[0], conv.inputs[1], bias, other),
                                  **_merged_annotations(conv, add))
            rw.replaced[add.name] = [*new_consts, merged]
            rw.removed.add(conv.name)
            rw.alias[add.value()] = merged.value()
            rw.taken.update((conv.name, add.name))
            break
    return rw.build()


def use_winograd(graph: Graph) -> Graph:
    """3x3 stride-1 conv2d nodes with constant weights -> conv2d_winograd, where it pays."""
    rw = _Rewrite(graph)
    for conv in graph.nodes:
        if conv.op != "conv2d" or (conv.device or "").startswith("gpu"):
            continue
        a = conv.attrs
        if a["strides"] != (1, 1) or a["dilations"] != (1, 1) or a["groups"] != 1:
            continue
        w = _const(graph, conv.inputs[1])
        out = conv.outputs[0]
        if w is None or w.shape[2:] != (3, 3) or out.dtype.kind != "f":
            continue
        o, c = w.shape[:2]
        pixels = out.shape[2] * out.shape[3]
        if min(o, c) < WINOGRAD_MIN_CHANNELS or not WINOGRAD_MIN_PIXELS <= pixels <= \
                WINOGRAD_MAX_PIXELS:
            continue
        u = rw.constant(graph.node(conv.inputs[1].node), winograd_weights(w), f"{conv.name}_u")
        new = conv.replace(op="conv2d_winograd",
                           inputs=(conv.inputs[0], u.value(), *conv.inputs[2:]),
                           attrs={"pads": a["pads"], "activation": a["activation"],
                                  "activation_params": a["activation_params"]})
        rw.replaced[conv.name] = [u, new]
    return rw.build()


def eliminate_dead(graph: Graph) -> Graph:
    """Drop every node that no graph output depends on (graph inputs always stay)."""
    live = {v.node for v in graph.outputs} | set(graph.inputs)
    for node in reversed(graph.nodes):
        if node.name in live:
            live.update(v.node for v in node.inputs)
    if len(live) == len(graph.nodes):
        return graph
    nodes = tuple(n for n in graph.nodes if n.name in live)
    constants = {k: v for k, v in graph.constants.items() if k in live}
    return graph.replace(nodes=nodes, constants=constants)
