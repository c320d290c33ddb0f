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
- graph outputs produced outside the host come back through a d2h transfer;
- an ``assign`` (a donated input written in place) gets its value and target in its own space;
  its order-only inputs stay where they are (it waits for them, it reads nothing from them);
- a constant that ``offload`` streams (``hetero.passes.offload``) stays in host memory and its
  readers in a GPU space get a ``transfer`` with ``streamed=True`` each instead of a resident
  copy: a host-to-device copy on every run, whose extra input (the reader of an earlier
  streamed use) only orders it, so its buffer can take the place of one already consumed.

The stage's invariant (no op reads a value from another memory space) is checked by
``hetero.verify.check``: on every fully placed graph when a machine is given, or when the graph
has transfer nodes. Memory spaces, copy kinds and issuers are ``hetero.spaces``'s answers.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from hetero.builder import GraphBuilder
from hetero.errors import GraphError
from hetero.graph import Attrs, Graph, Node, NodeKind, Value
from hetero.passes.offload import Offload, order_inputs
from hetero.spaces import INPUT_DEVICE, device_space, transfer_issuer, transfer_kind


def _placed(placement: Any) -> Mapping[str, str]:
    return placement.device if hasattr(placement, "device") else placement


def partition(graph: Graph, placement: Any, machine: Any = None,
              offload: Offload | None = None) -> Graph:
    """A new graph whose every edge stays inside one memory space (see the module docstring).

    Args:
        graph: the graph that was placed.
        placement: a Placement (or a plain mapping node name -> device name).
        machine: gives each device's memory space; without it "cpu:*" is "host" and a GPU is its
            own space.
        offload: constants to stream instead of uploading them (default: the placement's
            ``offload``, if it has one).
    """
    devices = _placed(placement)
    if offload is None:
        offload = getattr(placement, "offload", None)
    streamed = offload.streamed if offload else frozenset()
    after = order_inputs(graph, offload, devices, machine) if streamed else {}
    missing = [n for n in graph.nodes if n.name not in devices and not n.is_input]
    if missing:
        raise GraphError(f"{missing[0].label}: the placement gives it no device")

    def device_of(node: Node) -> str:
        return INPUT_DEVICE if node.is_input or node.name in streamed else devices[node.name]

    def space(dev: str) -> str:
        return device_space(dev, machine)

    out = GraphBuilder(graph.name, taken=(n.name for n in graph.nodes))
    value_space: dict[str, str] = {}       # node name in the new graph -> its memory space
    new_device: dict[str, str] = {}
    copies: dict[tuple[Value, str], Value] = {}  # (value, destination space) -> local value

    def local(v: Value, dst_dev: str, reader: str) -> Value:
        """``v`` as readable in the memory space of ``dst_dev`` (a transfer or a constant copy)
        for node ``reader``."""
        dst_space = space(dst_dev)
        src_space = value_space[v.node]
        if src_space == dst_space:
            return v
        # one copy per (value, space); a streamed weight one per reader, each on its own turn
        key = (v, dst_space, reader) if v.node in streamed else (v, dst_space)
        if key in copies:
            return copies[key]
        producer = graph.node(v.node) if v.node in graph else None
        if producer is not None and producer.kind is NodeKind.CONSTANT and \
                v.node not in streamed:
            name = out.fresh(f"{v.node}@{dst_space.replace(':', '')}")
            node = out.add_constant(producer.replace(name=name, device=dst_dev),
                                    graph.constants[v.node])
        else:
            src_dev = new_device[v.node]
            kind = transfer_kind(src_space, dst_space)
            name = out.fresh(f"{v.node}{'' if v.index == 0 else f'_{v.index}'}"
                             f"_to_{dst_space.replace(':', '')}")
            attrs = {"src": src_dev, "dst": dst_dev, "kind": kind}
            inputs = (v,)
            if v.node in streamed:
                attrs["streamed"] = True
                inputs += after.get((v.node, reader), ())
            node = out.add(Node(name=name, op="transfer", inputs=inputs, attrs=Attrs(attrs),
                                outputs=(graph.spec(v),),
                                device=transfer_issuer(src_dev, dst_dev, kind),
                                where=producer.where if producer is not None else None))
        value_space[name] = dst_space
        new_device[name] = node.device  # type: ignore[assignment]
        copies[key] = Value(name, 0)
        return copies[key]

    for node in graph.nodes:
        dev = device_of(node)
        # an assign's order-only inputs (after the two it reads) wait for their producers
        # wherever they run: no copy
        reads = len(node.reads)
        inputs = tuple(local(v, dev, node.name) if i < reads else v
                       for i, v in enumerate(node.inputs))
        if node.kind is NodeKind.CONSTANT:
            out.add_constant(node.replace(device=dev, inputs=inputs), graph.constants[node.name])
        else:
            out.add(node.replace(device=dev, inputs=inputs))
        new_device[node.name] = dev
        value_space[node.name] = space(dev)

    outputs = tuple(local(v, INPUT_DEVICE, "") for v in graph.outputs)
    # constants that are used only through their copies need not stay on their original device
    return out.build(outputs, prune=True, inputs=graph.inputs)
