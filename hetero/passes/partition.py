"""Partition a placed graph: make every edge device-local with explicit transfer nodes.

``partition(graph, placement)`` returns a new Graph in which

- every node's ``device`` is its placed device (graph inputs on the host, "cpu:0");
- a value read in another memory space goes through one ``transfer`` node per (value,
  destination memory space), shared by every consumer in that space. Its attrs are
  ``{"src": device, "dst": device, "kind": "h2d" | "d2h" | "d2d"}`` and its own ``device`` is the
  device whose queue issues the copy: the GPU involved (``dst`` for h2d and d2d, ``src`` for d2h);
- edges between CPU workers stay as they are: the workers share the host memory space, so they
  need a synchronisation (an event in the executor), not a copy;
- a constant is duplicated into each memory space that uses it (named ``<const>@<space>``), so it
  is uploaded once when the plan is built, not copied on every run;
- graph outputs produced outside the host come back through a d2h transfer.

The stage's invariant (no op reads a value from another memory space) is registered with
``hetero.graph.check``: it runs on every fully placed graph when a machine is given, or when the
graph has transfer nodes.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from hetero.errors import GraphError
from hetero.graph import _GRAPH_CHECKS, Attrs, Graph, Node, TensorSpec, Value, neighbourhood
from hetero.ops import registry

HOST = "host"
INPUT_DEVICE = "cpu:0"


def memory_space(device: str, machine: Any = None) -> str:
    """The memory space of a device name: "host" for every CPU worker, the GPU's name for a GPU."""
    if machine is not None:
        try:
            return machine.device(device).memory_space
        except Exception:  # an unknown device is reported by the caller with the node's name
            pass
    return HOST if device.startswith("cpu") else device


def transfer_kind(src_space: str, dst_space: str) -> str:
    """``"h2d"``, ``"d2h"`` or ``"d2d"`` for a copy between two different memory spaces."""
    if src_space == HOST:
        return "h2d"
    if dst_space == HOST:
        return "d2h"
    return "d2d"


def _issuer(src: str, dst: str, kind: str) -> str:
    # the GPU involved drives the copy from its copy stream
    return src if kind == "d2h" else dst


def _ensure_transfer_op() -> None:
    """Register the structural "transfer" op (identity on the spec) unless an op module did."""
    registry._ensure_loaded()
    if "transfer" in registry.REGISTRY:
        return

    def infer(ins: tuple[TensorSpec, ...], attrs: Attrs) -> tuple[TensorSpec, ...]:
        return (ins[0],)

    def kernel(xp, ins, attrs, outs) -> None:
        outs[0][...] = ins[0]

    registry.register(registry.Op(
        "transfer", infer, kernel, arity=(1, 1),
        attrs={"src": registry.REQUIRED, "dst": registry.REQUIRED, "kind": registry.REQUIRED},
        cost=lambda ins, outs, attrs: registry.Cost(0.0, float(ins[0].nbytes)),
        op_class="data", doc="copy one value between memory spaces (inserted by partition)"))


_ensure_transfer_op()


def _placed(placement: Any) -> Mapping[str, str]:
    return placement.device if hasattr(placement, "device") else placement


def partition(graph: Graph, placement: Any, machine: Any = None) -> Graph:
    """A new graph whose every edge stays inside one memory space (see the module docstring).

    Args:
        graph: the graph that was placed.
        placement: a Placement (or a plain mapping node name -> device name).
        machine: gives each device's memory space; without it "cpu:*" is "host" and a GPU is its
            own space.
    """
    devices = _placed(placement)
    missing = [n for n in graph.nodes if n.name not in devices and n.op != "input"]
    if missing:
        raise GraphError(f"{missing[0].label}: the placement gives it no device")

    def device_of(node: Node) -> str:
        return INPUT_DEVICE if node.op == "input" else devices[node.name]

    def space(dev: str) -> str:
        return memory_space(dev, machine)

    names = {n.name for n in graph.nodes}
    out: list[Node] = []
    constants = dict(graph.constants)
    value_space: dict[str, str] = {}       # node name in the new graph -> its memory space
    new_device: dict[str, str] = {}
    copies: dict[tuple[Value, str], Value] = {}  # (value, destination space) -> local value

    def fresh(base: str) -> str:
        name, k = base, 1
        while name in names:
            name, k = f"{base}_{k}", k + 1
        names.add(name)
        return name

    def local(v: Value, dst_dev: str) -> Value:
        """``v`` as readable in the memory space of ``dst_dev`` (a transfer or a constant copy)."""
        dst_space = space(dst_dev)
        src_space = value_space[v.node]
        if src_space == dst_space:
            return v
        key = (v, dst_space)
        if key in copies:
            return copies[key]
        producer = graph.node(v.node) if v.node in graph else None
        if producer is not None and producer.op == "constant":
            name = fresh(f"{v.node}@{dst_space.replace(':', '')}")
            constants[name] = graph.constants[v.node]
            node = producer.replace(name=name, device=dst_dev)
            value_space[name] = dst_space
        else:
            src_dev = new_device[v.node]
            kind = transfer_kind(src_space, dst_space)
            name = fresh(f"{v.node}{'' if v.index == 0 else f'_{v.index}'}"
                         f"_to_{dst_space.replace(':', '')}")
            node = Node(name=name, op="transfer", inputs=(v,),
                        attrs=Attrs({"src": src_dev, "dst": dst_dev, "kind": kind}),
                        outputs=(graph.spec(v),), device=_issuer(src_dev, dst_dev, kind),
                        where=producer.where if producer is not None else None)
            value_space[name] = dst_space
        new_device[name] = node.device  # type: ignore[assignment]
        out.append(node)
        copies[key] = Value(name, 0)
        return copies[key]

    for node in graph.nodes:
        dev = device_of(node)
        inputs = tuple(local(v, dev) for v in node.inputs)
        new = node.replace(device=dev, inputs=inputs)
        out.append(new)
        new_device[node.name] = dev
        value_space[node.name] = space(dev)

    outputs = tuple(local(v, INPUT_DEVICE) for v in graph.outputs)
    # constants that are used only through their copies need not stay on their original device
    used = {v.node for n in out for v in n.inputs} | {v.node for v in outputs}
    kept = []
    for n in out:
        if n.op == "constant" and n.name not in used:
            constants.pop(n.name, None)
            continue
        kept.append(n)
    return Graph(tuple(kept), graph.inputs, outputs, constants, name=graph.name)


# ----------------------------------------------------------------------------------------------
# Verifier: no op reads a value from another memory space


def _is_partitioned(graph: Graph, machine: Any) -> bool:
    if any(n.device is None for n in graph.nodes):
        return False
    return machine is not None or any(n.op == "transfer" for n in graph.nodes)


def _fail(graph: Graph, node: Node, message: str) -> GraphError:
    near = neighbourhood(graph, node.name)
    return GraphError(f"{node.label}: {message}" + (f"\n{near}" if near else ""))


def check_partitioned(graph: Graph, machine: Any = None) -> None:
    """Raise GraphError unless every op reads only values in its own memory space, every transfer
    is well formed, no (value, space) pair is copied twice, and every output is on the host."""
    if not _is_partitioned(graph, machine):
        return
    known = {d.name for d in machine.devices} if machine is not None else None
    spaces: dict[str, str] = {}
    seen: dict[tuple[Value, str], str] = {}
    for node in graph.nodes:
        if known is not None and node.device not in known:
            raise _fail(graph, node, f"is placed on {node.device}, which is not in the machine "
                                     f"({', '.join(sorted(known))})")
        here = memory_space(node.device, machine)  # type: ignore[arg-type]
        if node.op == "transfer":
            src, dst, kind = node.attrs["src"], node.attrs["dst"], node.attrs["kind"]
            s_space, d_space = memory_space(src, machine), memory_space(dst, machine)
            if s_space == d_space:
                raise _fail(graph, node, f"transfer within one memory space ({s_space})")
            if kind != transfer_kind(s_space, d_space):
                raise _fail(graph, node, f"transfer from {s_space} to {d_space} is "
                                         f"{transfer_kind(s_space, d_space)}, not {kind}")
            if node.device != _issuer(src, dst, kind):
                raise _fail(graph, node, f"a {kind} transfer is issued by "
                                         f"{_issuer(src, dst, kind)}, not {node.device}")
            v = node.inputs[0]
            if spaces[v.node] != s_space:
                raise _fail(graph, node, f"copies {v} from {s_space} but it lives in "
                                         f"{spaces[v.node]}")
            key = (v, d_space)
            if key in seen:
                raise _fail(graph, node, f"{v} is already copied to {d_space} by {seen[key]} "
                                         "(one transfer per value and memory space)")
            seen[key] = node.name
            spaces[node.name] = d_space
            continue
        for pos, v in enumerate(node.inputs):
            if spaces[v.node] != here:
                producer = graph.node(v.node)
                raise _fail(graph, node, f"input {pos} reads {v} from {spaces[v.node]} "
                            f"({producer.label} on {producer.device}) but runs on "
                            f"{node.device} in {here}: a transfer node is missing")
        spaces[node.name] = here
    for v in graph.outputs:
        if spaces[v.node] != HOST:
            raise GraphError(f"graph output {v} stays in {spaces[v.node]}; outputs must come "
                             "back to the host")


if check_partitioned not in _GRAPH_CHECKS:
    _GRAPH_CHECKS.append(check_partitioned)
