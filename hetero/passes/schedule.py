"""Schedule a partitioned graph: one queue per device in estimated execution order.

``schedule(graph, machine, cost) -> DeviceSchedule``. The device of every node is already fixed
(``partition`` set it), so this is list scheduling of a fixed assignment
(``hetero.scheduling.schedule_fixed``, the same insertion-based engine the placer uses), on
*lanes*:

- each device's compute lane (its name) runs its compute nodes and constants (constants take no
  time: they are uploaded when the plan is built);
- each GPU's copy engines are lanes of their own, ``"<gpu>/h2d"`` and ``"<gpu>/d2h"`` (a d2d copy
  uses the destination's h2d engine), because copies run on separate streams and overlap
  compute. A transfer lasts ``cost.transfer(bytes, src, dst)``;
- graph inputs sit on an "inputs" lane and take no time;
- an edge between two CPU workers costs ``cost.transfer`` (a synchronisation); an edge inside one
  device costs nothing.

Queues: a device's queue lists its nodes from every lane it owns, ordered by estimated start and
then by graph position. Every dependency starts no earlier than its producer, and ties follow
the graph's topological order, so the queue orders of all devices together with the data edges
form no cycle: running each queue in order cannot deadlock.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from hetero import scheduling
from hetero.config import resolve_machine
from hetero.cost import RooflineCost, input_specs
from hetero.graph import Graph, NodeKind
from hetero.spaces import input_device, lane_of, output_device


@dataclass(frozen=True)
class DeviceSchedule:
    """Per device: node names in execution order; per node: (estimated start, finish) and lane."""

    queues: Mapping[str, tuple[str, ...]]
    estimates: Mapping[str, tuple[float, float]]
    makespan: float
    lanes: Mapping[str, str]


def schedule(graph: Graph, machine: Any = None, cost: Any = None) -> DeviceSchedule:
    """Estimate when every node of a partitioned graph runs, and order each device's queue.

    Args:
        graph: a partitioned graph (every node's ``device`` set).
        machine: the Machine (default ``config.machine``).
        cost: the cost model (default ``RooflineCost(machine)``); use the one placement used.
    """
    machine = resolve_machine(machine)
    cost = cost if cost is not None else RooflineCost(machine)
    dag = graph.to_networkx()
    lanes = {n.name: lane_of(n) for n in graph.nodes}
    durations: dict[str, float] = {}
    for node in graph.nodes:
        if node.kind in (NodeKind.INPUT, NodeKind.CONSTANT):
            durations[node.name] = 0.0
        elif node.kind is NodeKind.TRANSFER:
            nbytes = sum(s.nbytes for s in node.outputs)
            durations[node.name] = float(cost.transfer(nbytes, node.attrs["src"],
                                                       node.attrs["dst"]))
        else:
            durations[node.name] = float(cost.compute(node, node.device,
                                                      input_specs(graph, node)))

    def compute(task: str, lane: str) -> float:
        return durations[task]

    def comm(u: str, v: str, p: str, q: str) -> float:
        consumer = graph.node(v)
        if all(r.node != u for r in consumer.reads):
            return 0.0  # an order-only input (a streamed copy's, an assign's): a wait, no data
        src = output_device(graph.node(u))
        dst = input_device(consumer)
        if src == dst:
            return 0.0
        return float(cost.transfer(dag[u][v]["nbytes"], src, dst))

    lane_list = list(dict.fromkeys(lanes[n.name] for n in graph.nodes))
    sched = scheduling.schedule_fixed(dag, lanes, compute, comm, devices=lane_list)
    position = {n.name: i for i, n in enumerate(graph.nodes)}
    queues: dict[str, list[str]] = {d.name: [] for d in machine.devices}
    for node in graph.nodes:
        if not node.is_input:
            queues.setdefault(node.device, []).append(node.name)  # type: ignore[arg-type]
    ordered = {d: tuple(sorted(q, key=lambda n: (sched.start[n], position[n])))
               for d, q in queues.items()}
    estimates = {n: (sched.start[n], sched.finish[n]) for n in sched.start}
    return DeviceSchedule(queues=ordered, estimates=estimates, makespan=sched.makespan,
                          lanes=lanes)
