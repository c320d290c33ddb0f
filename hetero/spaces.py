"""Where values live and what runs a node: the one answer every stage asks.

- A device's *memory space*: "host" for every CPU worker (they share it), the GPU's own name for a
  GPU (``device_space``).
- A copy between two spaces is of *kind* "h2d", "d2h" or "d2d" (``transfer_kind``) and is issued
  by the GPU involved, from its copy stream: the destination for h2d and d2d, the source for d2h
  (``transfer_issuer``).
- A node's outputs live in the space of its device; a transfer's in its destination's
  (``output_space``, ``output_device``); a transfer reads in its source's (``input_device``).
  Graph inputs arrive, and outputs leave, on the host's first worker (``INPUT_DEVICE``).
- The sequential *stream* a node runs on: "worker" on a CPU; on a GPU "compute", or for a copy
  "h2d" / "d2h" (a d2d copy runs on the receiving GPU's h2d stream) (``stream_of``). The
  schedule's *lane* of a node is its device's compute lane, a GPU copy engine
  ("gpu:0/h2d"), or "inputs" (``lane_of``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from hetero.errors import GraphError
from hetero.graph import Node, NodeKind

HOST = "host"
#: The device graph inputs arrive on and graph outputs are read from.
INPUT_DEVICE = "cpu:0"
#: The schedule lane of graph inputs (they take no time).
INPUT_LANE = "inputs"

__all__ = ["HOST", "INPUT_DEVICE", "INPUT_LANE", "device_space", "input_device", "lane_of",
           "output_device", "output_space", "stream_of", "transfer_issuer", "transfer_kind"]


def device_space(device: str, machine: Any = None) -> str:
    """The memory space of a device name: the machine's answer where it knows the device, else
    "host" for "cpu:*" and the GPU's own name for a GPU."""
    if machine is not None and device in machine:
        return machine.device(device).memory_space
    return HOST if device.startswith("cpu") else device


def transfer_kind(src_space: str, dst_space: str) -> str:
    """``"h2d"``, ``"d2h"`` or ``"d2d"`` for a copy between two different memory spaces."""
    if src_space == HOST:
        return "h2d"
    if dst_space == HOST:
        return "d2h"
    return "d2d"


def transfer_issuer(src: str, dst: str, kind: str) -> str:
    """The device whose queue issues a copy: the GPU involved drives it from its copy stream."""
    return src if kind == "d2h" else dst


def _end_device(node: Node, end: str) -> str:
    if node.kind is NodeKind.TRANSFER:
        return node.attrs[end]
    if node.kind is NodeKind.INPUT:
        return INPUT_DEVICE
    return node.device  # type: ignore[return-value]


def output_device(node: Node) -> str:
    """The device in whose memory a node's outputs live (a transfer's destination)."""
    return _end_device(node, "dst")


def input_device(node: Node) -> str:
    """The device in whose memory a node reads its inputs (a transfer's source)."""
    return _end_device(node, "src")


def output_space(node: Node, spaces: Mapping[str, str]) -> str:
    """The memory space of a node's outputs; ``spaces`` maps device names to memory spaces (a
    node without a device is on the host)."""
    if node.kind is not NodeKind.TRANSFER and node.device is None:
        return HOST
    return spaces[output_device(node)]


def copy_engine(node: Node) -> str:
    """The copy stream of a transfer: "d2h" for device-to-host copies, else "h2d"."""
    return "d2h" if node.attrs["kind"] == "d2h" else "h2d"


def stream_of(node: Node, device_kind: str) -> str:
    """The sequential stream a node runs on, on a device of ``device_kind``."""
    if device_kind != "gpu":
        return "worker"
    if node.kind is NodeKind.TRANSFER:
        return copy_engine(node)
    return "compute"


def lane_of(node: Node) -> str:
    """The schedule lane a node occupies: "inputs", a device's compute lane (its name), or a
    GPU's copy engine ("gpu:0/h2d", "gpu:0/d2h")."""
    if node.kind is NodeKind.INPUT:
        return INPUT_LANE
    if node.device is None:
        raise GraphError(f"{node.label}: has no device; partition the graph before scheduling")
    if node.kind is NodeKind.TRANSFER:
        return f"{node.device}/{copy_engine(node)}"
    return node.device
