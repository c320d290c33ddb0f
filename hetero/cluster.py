"""Clusters of several machines (nodes) joined by a network, and plans that span them. No Dask
here: ``hetero.distributed`` runs what this plans, one node per Dask worker.

- ``parse_cluster("2x(cpu:2,sim:1@t4)")`` / ``parse_cluster("node0=cpu:2,sim:1;node1=cpu:4")``:
  a ``Cluster`` of per-node Machines joined by a network ``Link`` (default 10 Gb/s, 50 us;
  override with a trailing ``;net=25gbps/20us``) and a per-message cost of the runner
  (``;msg=500us``). Device names on node 0 stay unqualified ("cpu:0"); on node k they read
  "nodek/cpu:0" (``qualify``).
- ``place_nodes(graph, cluster, objective=...)``: which node runs each compute node, with the
  network in the costs. "throughput" (default): contiguous pipeline stages, the cuts that
  minimise the slowest stage including the network time into it (``stage_cuts``), so a
  pipelined ``map`` runs at the pace of the slowest node. "latency": HEFT list scheduling over
  every device of every node (``hetero.scheduling.heft``), a value between nodes costing
  ``Cluster.transfer_time`` (down to the host, the network and the message cost, up to the
  device), so independent branches may run on different nodes at once and a slow network keeps
  everything on one node. Every node gets a Reason saying why it is where it is.
- ``partition_cluster(graph, placement, cluster)``: the graph with an explicit ``transfer``
  node of kind "n2n" on every edge that crosses nodes (one per value and destination node).
- ``plan_cluster(graph, cluster, ...)``: a ``ClusterPlan``: that graph cut at its n2n transfers
  into stages, each stage a sub-plan compiled for its node's Machine by the ordinary pipeline
  (placement, device partitions, schedule, memory) whose cross-node values are its inputs and
  outputs; the estimated latency of one run and interval of a pipelined ``map``.
  ``split(...)`` is its list of stages.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import networkx as nx
import numpy as np

from hetero.builder import GraphBuilder
from hetero.compiler import compile as compile_graph
from hetero.cost import input_specs, resolve_cost
from hetero.devices import Link, Machine
from hetero.errors import DeviceError, PlacementError
from hetero.graph import Attrs, Graph, Node, NodeKind, Value
from hetero.report import fmt_time
from hetero.scheduling import heft, peft

#: The network between two nodes when the spec does not say: 10 Gb/s Ethernet, 50 us.
DEFAULT_NETWORK = Link(10e9 / 8, 50e-6)
#: Seconds of software a cross-node value costs beyond the network (Dask's message handling on
#: both ends; one value's trip on localhost measured 0.67 ms, scripts/bench_distributed.py).
MESSAGE_COST = 0.5e-3
#: What a cluster placement optimises (``place_nodes``).
OBJECTIVES = ("throughput", "latency")

CLUSTER_GRAMMAR = ("a cluster spec is NxMACHINE, e.g. '2x(cpu:2,sim:1@t4)', or NAME=MACHINE items "
                   "separated by ';', e.g. 'node0=cpu:2,sim:1;node1=cpu:4'; last items "
                   "'net=BW/LAT' (e.g. 'net=10gbps/50us') set the network between nodes "
                   "(default 10 Gb/s, 50 us) and 'msg=TIME' the software cost of one cross-node "
                   "message (default 500us)")

_REPEAT_RE = re.compile(r"^(\d+)\s*x\s*\((.*)\)$", re.S)
_NAME_RE = re.compile(r"^[a-z][a-z0-9_-]*$")
_BW_RE = re.compile(r"^([0-9.]+(?:e[+-]?\d+)?)\s*(gbps|mbps|gb/s|mb/s|gbit|mbit)?$")
_LAT_RE = re.compile(r"^([0-9.]+(?:e[+-]?\d+)?)\s*(us|ms|s|ns)?$")
_PER_SECOND = {"us": 1e6, "ms": 1e3, "s": 1.0, "ns": 1e9, None: 1e6}


# ----------------------------------------------------------------------------------------------
# Clusters of several nodes


def qualify(node_index: int, device: str, node_name: str | None = None) -> str:
    """The cluster-wide name of ``device`` on node ``node_index``: unchanged on node 0, else
    "NODE/device" (so single-node names never change)."""
    if node_index == 0:
        return device
    return f"{node_name or f'node{node_index}'}/{device}"


def split_name(name: str) -> tuple[str | None, str]:
    """("node1", "cpu:0") for "node1/cpu:0"; (None, "cpu:0") for an unqualified name."""
    node, sep, dev = name.partition("/")
    return (node, dev) if sep else (None, name)


def resources_of(machine: Machine) -> dict[str, float]:
    """The Dask worker resources a machine's devices need: GPU=n for its n real GPUs."""
    real = sum(d.backend == "cupy" for d in machine.gpus())
    return {"GPU": float(real)} if real else {}


@dataclass(frozen=True)
class Cluster:
    """Named nodes, each a Machine, joined by one network ``Link`` (every pair of nodes); a
    value that crosses it also costs ``message`` seconds of the runner's software."""

    names: tuple[str, ...]
    machines: tuple[Machine, ...]
    network: Link = DEFAULT_NETWORK
    spec: str = ""
    message: float = MESSAGE_COST

    def __post_init__(self) -> None:
        if not self.machines:
            raise DeviceError(f"a cluster needs at least one node: {CLUSTER_GRAMMAR}")
        if len(set(self.names)) != len(self.names):
            raise DeviceError(f"cluster spec {self.spec!r} names a node twice")

    def __len__(self) -> int:
        return len(self.machines)

    def devices_of(self, index: int) -> list[str]:
        """The cluster-wide names of node ``index``'s devices."""
        return [qualify(index, d.name, self.names[index]) for d in self.machines[index].devices]

    def device_names(self) -> list[str]:
        """Every device of every node, by its cluster-wide name."""
        return [name for i in range(len(self)) for name in self.devices_of(i)]

    def node_of(self, name: str) -> int:
        """The index of the node a cluster-wide device name is on (DeviceError if none)."""
        node, dev = split_name(name)
        index = 0 if node is None else (self.names.index(node) if node in self.names else -1)
        if index < 0 or dev not in self.machines[index]:
            raise DeviceError(f"device {name!r} is not in cluster {self.spec!r} "
                              f"({', '.join(self.device_names())})")
        return index

    def network_time(self, nbytes: float) -> float:
        """Seconds for one value of ``nbytes`` from one node's host to another's: the network
        link plus the message cost."""
        return self.network.time(nbytes) + self.message

    def transfer_time(self, nbytes: float, src: str, dst: str) -> float:
        """Seconds to move ``nbytes`` between two devices (cluster-wide names): the node's own
        link within a node; across nodes, down to the source node's host, over the network
        (``network_time``), and up to the destination device."""
        a, b = self.node_of(src), self.node_of(dst)
        sdev, ddev = split_name(src)[1], split_name(dst)[1]
        if a == b:
            return self.machines[a].transfer_time(nbytes, sdev, ddev)
        return (self.machines[a].transfer_time(nbytes, sdev, "host")
                + self.network_time(nbytes)
                + self.machines[b].transfer_time(nbytes, "host", ddev))

    def node_resources(self, index: int) -> dict[str, float]:
        """The Dask worker resources node ``index`` needs: GPU=n for its real GPUs."""
        return resources_of(self.machines[index])

    def to_json(self) -> dict[str, Any]:
        return {"spec": self.spec, "network": self.network.to_json(), "message": self.message,
                "nodes": [{"name": n, "machine": m.to_json()}
                          for n, m in zip(self.names, self.machines)]}

    def describe(self) -> str:
        rows = [f"cluster {self.spec}: {len(self)} node(s), network "
                f"{self.network.bandwidth * 8 / 1e9:.1f} Gb/s, {self.network.latency * 1e6:.0f} us"
                f", {self.message * 1e6:.0f} us a message"]
        for i, n in enumerate(self.names):
            rows.append(f"  node {n}: {', '.join(self.devices_of(i))}")
        return "\n".join(rows)


def _parse_time(text: str, what: str, spec: str) -> float:
    m = _LAT_RE.match(text.strip().lower())
    if m is None:
        raise DeviceError(f"bad {what} {text!r} in cluster spec {spec!r}: {CLUSTER_GRAMMAR}")
    return float(m.group(1)) / _PER_SECOND[m.group(2)]


def _parse_network(text: str, spec: str) -> Link:
    bw_text, sep, lat_text = text.partition("/")
    bw = _BW_RE.match(bw_text.strip().lower())
    if bw is None:
        raise DeviceError(f"bad network {text!r} in cluster spec {spec!r}: {CLUSTER_GRAMMAR}")
    scale = {"gbps": 1e9 / 8, "gb/s": 1e9 / 8, "gbit": 1e9 / 8, "mbps": 1e6 / 8, "mb/s": 1e6 / 8,
             "mbit": 1e6 / 8, None: 1e9 / 8}[bw.group(2)]
    bandwidth = float(bw.group(1)) * scale
    latency = _parse_time(lat_text, "network", spec) if sep else DEFAULT_NETWORK.latency
    if not (bandwidth > 0 and math.isfinite(bandwidth)) or latency < 0:
        raise DeviceError(f"network {text!r} in cluster spec {spec!r}: the bandwidth must be "
                          "positive and the latency not negative")
    return Link(bandwidth, latency)


def is_cluster_spec(spec: str) -> bool:
    """Is ``spec`` a spec of several nodes (``2x(...)``, ``a=...;b=...``), not one machine's?"""
    text = spec.strip().lower()
    return bool(_REPEAT_RE.match(text.split(";")[0].strip())) or "=" in text or ";" in text


def parse_cluster(spec: str | Cluster) -> Cluster:
    """A Cluster from ``"2x(cpu:2,sim:1@t4)"`` or ``"node0=cpu:2,sim:1;node1=cpu:4"`` (plus
    optional ``";net=10gbps/50us"`` and ``";msg=500us"``); a plain machine spec is a cluster of
    one node."""
    if isinstance(spec, Cluster):
        return spec
    if not isinstance(spec, str) or not spec.strip():
        raise DeviceError(f"bad cluster spec {spec!r}: {CLUSTER_GRAMMAR}")
    items = [s.strip() for s in spec.strip().split(";") if s.strip()]
    network, message = DEFAULT_NETWORK, MESSAGE_COST
    while items and items[-1].lower().startswith(("net=", "msg=")):
        item = items.pop()
        if item.lower().startswith("net="):
            network = _parse_network(item[4:], spec)
        else:
            message = _parse_time(item[4:], "message cost", spec)
    if not items:
        raise DeviceError(f"cluster spec {spec!r} has no node: {CLUSTER_GRAMMAR}")
    names: list[str] = []
    machines: list[Machine] = []
    repeat = _REPEAT_RE.match(items[0]) if len(items) == 1 else None
    if repeat:
        n = int(repeat.group(1))
        if not 1 <= n <= 256:
            raise DeviceError(f"cluster spec {spec!r} asks for {n} nodes (1 to 256)")
        for i in range(n):
            names.append(f"node{i}")
            machines.append(Machine.parse(repeat.group(2)))
    else:
        for item in items:
            name, sep, body = item.partition("=")
            if not sep:
                if len(items) > 1:
                    raise DeviceError(f"item {item!r} of cluster spec {spec!r} has no node "
                                      f"name: {CLUSTER_GRAMMAR}")
                name, body = "node0", item
            name = name.strip().lower()
            if not _NAME_RE.match(name):
                raise DeviceError(f"bad node name {name!r} in cluster spec {spec!r}: "
                                  f"{CLUSTER_GRAMMAR}")
            names.append(name)
            machines.append(Machine.parse(body))
    return Cluster(tuple(names), tuple(machines), network, spec.strip(), message)


# ----------------------------------------------------------------------------------------------
# Placing a graph over the nodes


@dataclass(frozen=True)
class NodePlacement:
    """Which node, and there which device, each compute node of a graph was planned for.

    Attributes:
        objective: "throughput" or "latency" (``OBJECTIVES``).
        node_of: compute node name -> index of its cluster node.
        device: compute node name -> the cluster-wide device the cluster's estimate put it on
            (each node's own compile then places within the node).
        reasons: compute node name -> why it is on that node, with the figures compared.
        estimate: the objective's estimated seconds: the slowest stage (throughput) or the
            cluster schedule's makespan (latency).
        single: the node whose single-node schedule was estimated fastest (latency: the
            placement ``plan_cluster`` weighs a spread placement against).
    """

    objective: str
    node_of: dict[str, int]
    device: dict[str, str]
    reasons: dict[str, str]
    estimate: float
    single: int = 0


def _compute_table(graph: Any, cluster: Cluster, cost: Any) -> dict[str, dict[str, float]]:
    """Compute node -> cluster-wide device -> estimated seconds (inf: no kernel there)."""

    table: dict[str, dict[str, float]] = {n.name: {} for n in graph.nodes if n.computes}
    by_spec: dict[str, dict[tuple[str, str], float]] = {}  # nodes of one machine spec: once
    for k, m in enumerate(cluster.machines):
        times = by_spec.get(m.spec)
        if times is None:
            model = resolve_cost(cost, m, graph)
            times = by_spec[m.spec] = {
                (node.name, d.name): float(model.compute(node, d, input_specs(graph, node)))
                for node in graph.nodes if node.computes for d in m.devices}
        for (name, dev), t in times.items():
            table[name][qualify(k, dev, cluster.names[k])] = t
    return table


def _edge_bytes(graph: Any) -> dict[tuple[str, str], int]:
    """(producer, reader) compute-node pairs -> bytes of the producer's values the reader
    reads (each value counted once)."""
    computes = {n.name for n in graph.nodes if n.computes}
    out: dict[tuple[str, str], int] = {}
    for node in graph.nodes:
        if node.name not in computes:
            continue
        for v in set(node.inputs):
            if v.node in computes:
                key = (v.node, node.name)
                out[key] = out.get(key, 0) + graph.spec(v).nbytes
    return out


def stage_cuts(graph: Any, cluster: Cluster, cost: Any = None) -> list[int]:
    """Where to cut the compute nodes of ``graph`` (in graph order) into one contiguous run per
    node: the cuts that minimise the slowest stage, a stage's time being its nodes' times on the
    node's fastest device for each plus the network time of the values crossing into it (so a
    pipelined ``map`` runs at the pace of the slowest node). ``cost`` is the cost model, per
    node's machine as ``compile`` takes it: "roofline" (default), "measured" (the kernel
    times ``hetero calibrate`` cached; a kernel not measured keeps its roofline time) or an
    object."""
    return _stage_cuts(graph, cluster, _compute_table(graph, cluster, cost))[0]


def _stage_cuts(graph: Any, cluster: Cluster,
                table: Mapping[str, Mapping[str, float]]) -> tuple[list[int], list[float]]:
    compute = [n for n in graph.nodes if n.computes]
    k, n = len(cluster), len(compute)
    if n < k:
        raise DeviceError(f"graph {graph.name!r} has {n} compute node(s), fewer than the "
                          f"{k} nodes of cluster {cluster.spec!r}")
    pos = {node.name: i for i, node in enumerate(compute)}
    prefix = []
    for s in range(k):
        devices = cluster.devices_of(s)
        acc = [0.0]
        for node in compute:
            t = min(table[node.name][d] for d in devices)
            acc.append(acc[-1] + (t if math.isfinite(t) else 1.0))
        prefix.append(acc)
    # bytes crossing a cut before compute position p (produced before p, read at or after p)
    crossing = [0.0] * (n + 1)
    last_use: dict[Any, int] = {}
    for node in compute:
        for v in node.inputs:
            if v.node in pos:
                last_use[v] = max(last_use.get(v, -1), pos[node.name])
    for v, last in last_use.items():
        nbytes = graph.spec(v).nbytes
        for p in range(pos[v.node] + 1, last + 1):
            crossing[p] += nbytes
    inf = math.inf
    best = [[inf] * (n + 1) for _ in range(k + 1)]
    back = [[0] * (n + 1) for _ in range(k + 1)]
    best[0][0] = 0.0
    for s in range(1, k + 1):
        for b in range(s, n - (k - s) + 1):
            for a in range(s - 1, b):
                if best[s - 1][a] == inf:
                    continue
                t = prefix[s - 1][b] - prefix[s - 1][a]
                if a > 0:
                    t += cluster.network_time(crossing[a])
                cand = max(best[s - 1][a], t)
                if cand < best[s][b]:
                    best[s][b], back[s][b] = cand, a
    cuts, b = [], n
    for s in range(k, 0, -1):
        b = back[s][b]
        cuts.append(b)
    cuts = sorted(cuts)[1:]  # the first stage starts at 0
    bounds = [0, *cuts, n]
    times = [prefix[s][bounds[s + 1]] - prefix[s][bounds[s]]
             + (cluster.network_time(crossing[bounds[s]]) if s else 0.0) for s in range(k)]
    return cuts, times


def place_nodes(graph: Any, cluster: Cluster | str, *, objective: str = "throughput",
                cost: Any = None, cuts: Sequence[int] | None = None) -> NodePlacement:
    """Which node runs each compute node of ``graph`` (see the module docstring for the two
    objectives); ``cuts`` fixes the throughput objective's stage boundaries."""
    cluster = parse_cluster(cluster)
    if objective not in OBJECTIVES:
        raise PlacementError(f"unknown cluster objective {objective!r} (known: "
                             f"{', '.join(OBJECTIVES)})")
    compute = [n for n in graph.nodes if n.computes]
    if not compute:
        raise PlacementError(f"graph {graph.name!r} has no compute node to place")
    table = _compute_table(graph, cluster, cost)
    edges = _edge_bytes(graph)
    dag = nx.DiGraph()
    dag.add_nodes_from(n.name for n in compute)
    dag.add_edges_from(edges)

    def comm(u: str, v: str, p: str, q: str) -> float:
        return 0.0 if p == q else cluster.transfer_time(edges.get((u, v), 0), p, q)

    def run_time(t: str, d: str) -> float:
        return table[t][d]

    reasons: dict[str, str] = {}
    if objective == "throughput":
        if cuts is None:
            cuts, times = _stage_cuts(graph, cluster, table)
        else:
            times = []
        bounds = [0, *cuts, len(compute)]
        if len(bounds) != len(cluster) + 1 or any(a >= b for a, b in zip(bounds, bounds[1:])):
            raise DeviceError(f"cuts {list(cuts)} do not split the {len(compute)} compute nodes "
                              f"of {graph.name!r} into {len(cluster)} non-empty runs")
        node_of = {node.name: s for s in range(len(cluster))
                   for node in compute[bounds[s]:bounds[s + 1]]}
        sched = heft(dag, cluster.device_names(), run_time, comm,
                     allowed=lambda t: cluster.devices_of(node_of[t]))
        slowest = max(times) if times else 0.0
        for s in range(len(cluster)):
            first, last = compute[bounds[s]], compute[bounds[s + 1] - 1]
            why = (f"pipeline stage {s + 1} of {len(cluster)} (compute nodes {bounds[s]} to "
                   f"{bounds[s + 1] - 1}, {first.name} .. {last.name})")
            if times:
                why += (f": the cuts minimise the slowest stage, estimated "
                        f"{fmt_time(times[s])} here (with the network into it), the slowest "
                        f"{fmt_time(slowest)}")
            else:
                why += ": the cuts were given"
            for node in compute[bounds[s]:bounds[s + 1]]:
                reasons[node.name] = why
        return NodePlacement(objective, node_of, dict(sched.device), reasons, slowest)
    # candidates, each list-scheduled by the same engine: HEFT and PEFT over every device of
    # every node, and the whole graph on each single node; the smallest makespan wins
    everything = cluster.device_names()
    candidates = {"heft": heft(dag, everything, run_time, comm),
                  "peft": peft(dag, everything, run_time, comm)}
    for k in range(len(cluster)):
        try:
            candidates[f"{cluster.names[k]} alone"] = heft(
                dag, everything, run_time, comm, allowed=lambda t, k=k: cluster.devices_of(k))
        except PlacementError:
            pass  # an op without a kernel on that node
    chosen = min(candidates, key=lambda c: (round(candidates[c].makespan, 12),
                                            list(candidates).index(c)))
    sched = candidates[chosen]
    compared = ", ".join(f"{c} {fmt_time(x.makespan)}" for c, x in candidates.items())
    node_of = {t: cluster.node_of(d) for t, d in sched.device.items()}
    spread = len(set(node_of.values())) > 1
    for t, d in sched.device.items():
        here = node_of[t]
        finish = {o[0]: o[3] for o in sched.options.get(t, ())}
        ready = {o[0]: o[1] for o in sched.options.get(t, ())}
        why = (f"on {cluster.names[here]} ({d}): the {chosen} schedule is estimated "
               f"{fmt_time(sched.makespan)} for one run ({compared})")
        elsewhere = [(f, dev) for dev, f in finish.items() if cluster.node_of(dev) != here]
        if spread and elsewhere:
            f, dev = min(elsewhere)
            why += (f"; done at {fmt_time(finish.get(d, sched.finish[t]))} here, against "
                    f"{fmt_time(f)} at best on {cluster.names[cluster.node_of(dev)]} "
                    f"(its inputs there at {fmt_time(ready[dev])})")
        reasons[t] = why
    alone = [k for k in range(len(cluster)) if f"{cluster.names[k]} alone" in candidates]
    single = min(alone, key=lambda k: candidates[f"{cluster.names[k]} alone"].makespan,
                 default=0)
    return NodePlacement(objective, node_of, dict(sched.device), reasons, sched.makespan, single)


# ----------------------------------------------------------------------------------------------
# Node-to-node transfers, stages and the cluster plan


def _value_name(v: Any) -> str:
    return v.node if v.index == 0 else f"{v.node}__out{v.index}"


def partition_cluster(graph: Any, placement: NodePlacement, cluster: Cluster | str) -> Any:
    """``graph`` with a ``transfer`` node of kind "n2n" on every edge between compute nodes on
    different nodes: one per (value, destination node), shared by that node's readers; its
    attrs name the cluster-wide devices at both ends (the producer's and the first reader's),
    and its ``device`` is the sending one. Graph inputs and constants are not transferred: the
    client sends each node the inputs it reads, and a constant is uploaded to every node that
    reads it. The result runs like ``graph`` (the transfer is the identity)."""
    cluster = parse_cluster(cluster)
    out = GraphBuilder(graph.name, taken=(n.name for n in graph.nodes))
    node_of = placement.node_of

    def device(name: str) -> str:  # the node's first device where the placement names none
        return placement.device.get(name) or cluster.devices_of(node_of[name])[0]

    copies: dict[tuple[Any, int], Any] = {}
    for node in graph.nodes:
        if node.is_input:
            out.add(node)
            continue
        if node.is_constant:
            out.add_constant(node, graph.constants[node.name])
            continue
        here = node_of.get(node.name)
        ins = []
        for v in node.inputs:
            there = node_of.get(v.node)
            if there is None or here is None or there == here:
                ins.append(v)
                continue
            key = (v, here)
            if key not in copies:
                name = out.fresh(f"{_value_name(v)}_to_{cluster.names[here]}")
                t = out.add(Node(name, "transfer", (v,), outputs=(graph.spec(v),),
                                 attrs=Attrs({"src": device(v.node),
                                              "dst": device(node.name), "kind": "n2n"}),
                                 device=device(v.node)))
                copies[key] = Value(t.name, 0)
            ins.append(copies[key])
        out.add(node.replace(inputs=tuple(ins)))
    return out.build(tuple(graph.outputs), inputs=graph.inputs)


@dataclass(frozen=True)
class Stage:
    """One stage of a graph split over a cluster: the sub-plan one node runs, and where its
    values come and go. A node runs one stage, or more where the placement goes back and forth
    between nodes (a stage's inputs must all come from earlier stages).

    Attributes:
        index: the stage's position (stages are in an order their dependencies respect).
        node: the name of the cluster node that runs it; ``node_index`` its position.
        plan: the stage's sub-plan (compiled for the node's Machine by the ordinary pipeline:
            placement, partitioning into device partitions, schedule, memory).
        inputs: for each input of the sub-plan, in order, ``("graph", i)`` (the i-th input of
            the whole graph) or ``("stage", j, name)`` (output ``name`` of stage j, a
            cross-node value).
        outputs: the names of the sub-plan's outputs, in its output order.
        sends: stage index -> names of this stage's outputs that stage needs.
        results: (position in the whole graph's outputs, name of this stage's output).
        label: the stage's name in reports: the node's, with ".k" where it runs several.
    """

    index: int
    node: str
    plan: Any
    inputs: tuple[tuple[Any, ...], ...]
    outputs: tuple[str, ...]
    sends: dict[int, tuple[str, ...]]
    results: tuple[tuple[int, str], ...]
    node_index: int = 0
    label: str = ""


def _stage_keys(graph: Any, node_of: Mapping[str, int], objective: str) -> dict[str, int]:
    """Compute node -> stage index. A stage runs once all of its inputs are there, so for the
    latency objective a node's work splits at each value from another node (a compute node's
    level: how many node changes lead to it; the work that waits for nothing from elsewhere
    runs before the values from elsewhere arrive). For throughput, where a node is busy with
    another batch meanwhile, one stage per node where the nodes' dependencies are acyclic
    (contiguous cuts always are), else by level too. Stages depend only on earlier ones."""
    compute = [n for n in graph.nodes if n.computes]
    if objective == "latency":
        return _level_keys(compute, node_of)
    quotient = nx.DiGraph()
    quotient.add_nodes_from(sorted(set(node_of.values())))
    for node in compute:
        for v in node.inputs:
            if v.node in node_of and node_of[v.node] != node_of[node.name]:
                quotient.add_edge(node_of[v.node], node_of[node.name])
    if nx.is_directed_acyclic_graph(quotient):
        order = list(nx.lexicographical_topological_sort(quotient))
        index = {k: i for i, k in enumerate(order)}
        return {n.name: index[node_of[n.name]] for n in compute}
    return _level_keys(compute, node_of)


def _level_keys(compute: Sequence[Any], node_of: Mapping[str, int]) -> dict[str, int]:
    level: dict[str, int] = {}
    for node in compute:  # graph order is topological
        level[node.name] = max([level[v.node] + (node_of[v.node] != node_of[node.name])
                                for v in node.inputs if v.node in level], default=0)
    keys = sorted({(level[n.name], node_of[n.name]) for n in compute})
    index = {k: i for i, k in enumerate(keys)}
    return {n.name: index[(level[n.name], node_of[n.name])] for n in compute}


@dataclass(frozen=True)
class ClusterPlan:
    """A graph planned over a cluster: the stages each node runs, the graph with its n2n
    transfers, and estimates.

    Attributes:
        cluster, placement: the cluster and the node placement (with its reasons).
        graph: ``partition_cluster``'s graph (the n2n transfers explicit).
        stages: the stages, in dependency order.
        transfers: one dict per n2n transfer: value (the name the receiving stage knows it
            by), transfer (the n2n node's name), src / dst (stage labels), src_device /
            dst_device, kind "n2n", bytes, seconds; then one per value handed between two
            stages of one node (kind "stage", transfer None: a message on that node's worker,
            no network).
        latency: estimated seconds of one run (the longest path through the stages' planned
            makespans and the network time of the values between them).
        interval: estimated seconds between results of a pipelined ``map``: the busiest node
            (the planned makespans of its stages) or the busiest network link, the larger.
    """

    cluster: Cluster
    placement: NodePlacement
    graph: Any
    stages: tuple[Stage, ...]
    transfers: tuple[dict[str, Any], ...] = field(default=())
    latency: float = 0.0
    interval: float = 0.0

    def to_json(self) -> dict[str, Any]:
        """The plan's summary (the sub-plans' reports are ``hetero.report``'s)."""
        return {"objective": self.placement.objective,
                "estimate": {"latency": self.latency, "interval": self.interval,
                             "placement": self.placement.estimate},
                "placement": {name: {"node": self.cluster.names[k],
                                     "device": self.placement.device.get(name),
                                     "reason": self.placement.reasons.get(name, "")}
                              for name, k in self.placement.node_of.items()},
                "stages": [{"index": st.index, "label": st.label, "node": st.node,
                            "makespan": st.plan.makespan} for st in self.stages],
                "transfers": [dict(t) for t in self.transfers]}


def plan_cluster(graph: Any, cluster: Cluster | str, *, objective: str = "throughput",
                 cuts: Sequence[int] | None = None, placement: NodePlacement | None = None,
                 **compile_options: Any) -> ClusterPlan:
    """``graph`` planned over the nodes of ``cluster``: ``place_nodes`` (``objective``,
    ``cuts``, the ``cost`` of ``compile_options``; or the ``placement`` given), then
    ``partition_cluster``, then one sub-plan per stage compiled for its node's Machine with
    ``compile_options``."""
    cluster = parse_cluster(cluster)
    if placement is None:
        placement = place_nodes(graph, cluster, objective=objective,
                                cost=compile_options.get("cost"), cuts=cuts)
        if objective == "latency" and len(set(placement.node_of.values())) > 1:
            # the node-level schedule guesses each node's devices; once each stage is compiled
            # for its node, the spread placement is weighed against the whole graph on the
            # best single node, and the faster of the two plans is kept
            spread = plan_cluster(graph, cluster, placement=placement, **compile_options)
            k = placement.single
            one = NodePlacement("latency", {n: k for n in placement.node_of},
                                {n: cluster.devices_of(k)[0] for n in placement.node_of},
                                {}, placement.estimate, k)
            alone = plan_cluster(graph, cluster, placement=one, **compile_options)
            if alone.latency < spread.latency:
                why = (f"on {cluster.names[k]}: the whole graph on {cluster.names[k]} is planned "
                       f"{fmt_time(alone.latency)} a run, the spread placement "
                       f"{fmt_time(spread.latency)} once each node's devices are placed (its "
                       f"node-level estimate was {fmt_time(placement.estimate)})")
                return replace(alone, placement=replace(
                    one, reasons={n: why for n in placement.node_of}))
            return spread
    else:
        objective = placement.objective
        computes = {n.name for n in graph.nodes if n.computes}
        wrong = sorted(n for n in computes if not 0 <= placement.node_of.get(n, -1) < len(cluster))
        if wrong:
            raise PlacementError(f"the placement gives compute node {wrong[0]!r} no node of "
                                 f"cluster {cluster.spec!r}")
    cgraph = partition_cluster(graph, placement, cluster)
    stage_of = _stage_keys(graph, placement.node_of, objective)
    count = max(stage_of.values()) + 1
    node_index = [0] * count
    for name, s in stage_of.items():
        node_index[s] = placement.node_of[name]
    per_node = [node_index.count(k) for k in range(len(cluster))]
    seen: dict[int, int] = {}
    labels = []
    for s in range(count):
        k = node_index[s]
        seen[k] = seen.get(k, 0) + 1
        labels.append(cluster.names[k] if per_node[k] == 1 else f"{cluster.names[k]}.{seen[k]}")
    # which stages read each value made by a compute node of another stage
    readers: dict[Any, set[int]] = {}
    for node in graph.nodes:
        if node.name not in stage_of:
            continue
        for v in node.inputs:
            if v.node in stage_of and stage_of[v.node] != stage_of[node.name]:
                readers.setdefault(v, set()).add(stage_of[node.name])
    stages = tuple(_stage(s, graph, cluster, node_index[s], labels[s], stage_of, readers,
                          compile_options) for s in range(count))
    transfers = []
    for t in cgraph.nodes:
        if t.kind is not NodeKind.TRANSFER or t.attrs.get("kind") != "n2n":
            continue
        v = t.inputs[0]
        src = stage_of[v.node]
        nbytes = cgraph.spec(v).nbytes
        dst_node = cluster.node_of(t.attrs["dst"])
        for dst in sorted(readers.get(v, ())):
            if node_index[dst] != dst_node:
                continue
            transfers.append({"value": _value_name(v), "transfer": t.name,
                              "src": labels[src], "dst": labels[dst],
                              "src_device": t.attrs["src"], "dst_device": t.attrs["dst"],
                              "kind": "n2n", "bytes": nbytes,
                              "seconds": cluster.network_time(nbytes)})
    # values handed between two stages of one node: a message on that node's worker
    for v, who in sorted(readers.items(), key=lambda kv: (kv[0].node, kv[0].index)):
        src = stage_of[v.node]
        for dst in sorted(who):
            if node_index[dst] == node_index[src]:
                here = cluster.devices_of(node_index[src])[0]
                transfers.append({"value": _value_name(v), "transfer": None,
                                  "src": labels[src], "dst": labels[dst],
                                  "src_device": placement.device.get(v.node) or here,
                                  "dst_device": here, "kind": "stage",
                                  "bytes": cgraph.spec(v).nbytes, "seconds": cluster.message})
    latency, interval = _estimates(stages, cluster)
    return ClusterPlan(cluster, placement, cgraph, stages, tuple(transfers), latency, interval)


def _estimates(stages: Sequence[Stage], cluster: Cluster) -> tuple[float, float]:
    """(latency, interval) of a split, from its stages' planned makespans and the network."""
    finish: list[float] = []
    busy = [0.0] * len(cluster)
    link: dict[tuple[int, int], float] = {}
    for st in stages:
        ready = 0.0
        for src in st.inputs:
            if src[0] != "stage":
                continue
            j = src[1]
            nbytes = st.plan.graph.spec(st.plan.graph.node(src[2]).value()).nbytes
            if stages[j].node_index == st.node_index:  # a message on the node's own worker
                hop = cluster.message
            else:
                hop = cluster.network_time(nbytes)
                key = (stages[j].node_index, st.node_index)
                link[key] = link.get(key, 0.0) + hop
            ready = max(ready, finish[j] + hop)
        finish.append(ready + st.plan.makespan)
        busy[st.node_index] += st.plan.makespan
    return max(finish), max([*busy, *link.values()])


def split(graph: Any, cluster: Cluster | str, *, cuts: Sequence[int] | None = None,
          objective: str = "throughput", **compile_options: Any) -> list[Stage]:
    """The stages of ``plan_cluster(graph, cluster, ...)``: with the default objective each
    node gets a contiguous run of the compute nodes (``cuts``: the compute-node positions where
    node 1, 2, ... begin; by default ``stage_cuts`` under the ``cost`` model of
    ``compile_options``), compiled into a sub-plan for that node's Machine whose cross-node
    inputs and outputs are explicit graph inputs and outputs."""
    return list(plan_cluster(graph, cluster, objective=objective, cuts=cuts,
                             **compile_options).stages)


def _stage(s: int, graph: Any, cluster: Cluster, node: int, label: str,
           stage_of: dict[str, int], readers: dict[Any, set[int]],
           compile_options: dict[str, Any]) -> Stage:
    by_name = {n.name: n for n in graph.nodes}
    graph_inputs = {name: i for i, name in enumerate(graph.inputs)}
    mine = [n for n in graph.nodes if stage_of.get(n.name) == s]
    nodes: list[Any] = []
    inputs: list[tuple[Any, ...]] = []
    in_names: list[str] = []
    consts: dict[str, np.ndarray] = {}
    seen: set[str] = set()
    remap: dict[Any, Any] = {}

    def need(v: Any) -> Any:
        if v in remap:
            return remap[v]
        src = by_name[v.node]
        if src.is_input:
            if src.name not in seen:
                nodes.append(src)
                seen.add(src.name)
                in_names.append(src.name)
                inputs.append(("graph", graph_inputs[src.name]))
            remap[v] = v
        elif src.is_constant:
            if src.name not in seen:
                nodes.append(src)
                seen.add(src.name)
                consts[src.name] = graph.constants[src.name]
            remap[v] = v
        else:  # made by another stage: a cross-node input
            name = _value_name(v)
            nodes.append(Node(name, "input", outputs=(graph.spec(v),), where=src.where))
            in_names.append(name)
            inputs.append(("stage", stage_of[v.node], name))
            remap[v] = Value(name, 0)
        return remap[v]

    for n in mine:
        ins = tuple(need(v) for v in n.inputs)
        nodes.append(n.replace(inputs=ins))
        for i in range(len(n.outputs)):
            remap[Value(n.name, i)] = Value(n.name, i)
    outs: list[Any] = []
    out_names: list[str] = []
    sends: dict[int, list[str]] = {}
    results = []
    for v, who in sorted(readers.items(), key=lambda kv: (kv[0].node, kv[0].index)):
        if stage_of[v.node] == s:
            out_names.append(_value_name(v))
            outs.append(v)
            for r in sorted(who):
                sends.setdefault(r, []).append(_value_name(v))
    for i, v in enumerate(graph.outputs):
        src = by_name[v.node]
        if stage_of.get(v.node, 0 if not src.computes else -1) == s:
            name = f"__result{i}"
            outs.append(need(v) if not src.computes else v)
            out_names.append(name)
            results.append((i, name))
    sub = Graph(tuple(nodes), tuple(in_names), tuple(outs), consts,
                name=f"{graph.name}@{label}")
    plan = compile_graph(sub, cluster.machines[node], **compile_options)
    return Stage(s, cluster.names[node], plan, tuple(inputs), tuple(out_names),
                 {r: tuple(v) for r, v in sends.items()}, tuple(results), node, label)


def run_stages(stages: Sequence[Stage], inputs: Sequence[Any]) -> list[np.ndarray]:
    """The whole graph's outputs from running its stages one after another in this process
    (the in-process counterpart of ``PipelineRunner.run``)."""
    made: dict[tuple[int, str], np.ndarray] = {}
    results: dict[int, np.ndarray] = {}
    for st in stages:
        args = [inputs[src[1]] if src[0] == "graph" else made[(src[1], src[2])]
                for src in st.inputs]
        outs = st.plan.run(*args)
        for name, out in zip(st.outputs, outs):
            made[(st.index, name)] = np.array(out, copy=True)
        for i, name in st.results:
            results[i] = made[(st.index, name)]
    return [results[i] for i in sorted(results)]


__all__ = ["CLUSTER_GRAMMAR", "DEFAULT_NETWORK", "MESSAGE_COST", "OBJECTIVES", "Cluster",
           "ClusterPlan", "NodePlacement", "Stage", "is_cluster_spec", "parse_cluster",
           "partition_cluster", "place_nodes", "plan_cluster", "qualify", "resources_of",
           "run_stages", "split", "split_name", "stage_cuts"]
