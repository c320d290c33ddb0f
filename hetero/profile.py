"""What really ran where and when: ``Profile`` of one run, and its Chrome trace / Perfetto export.

``plan.run(*inputs, profile=True)`` returns ``(outputs, profile)``. A profile holds one ``Span``
per node and transfer (device, stream, start and end in seconds from the start of the run).
CPU nodes are timed by their worker thread around the kernel call; GPU nodes by two time stamps
enqueued on the node's stream before and after it, so a span is when the stream ran it, not when
the host enqueued it.

``save("trace.json")`` writes the Chrome trace event format (open it in chrome://tracing or
https://ui.perfetto.dev): one process per device, one thread (track) per CPU worker and per GPU
stream, a complete event ("ph": "X") per span with the op, the source line and the placement
reason in its args, and flow arrows ("ph": "s" / "f") from each value's producer into a transfer
and from the transfer to its consumers. ``summary()`` gives per-device busy share, transfer
bytes, the share of transfer time that overlapped compute, and the measured against the estimated
makespan.

Simulated GPUs: a simulated GPU computes the real values with NumPy on this host and paces its
streams to the modelled card's durations (the roofline of ``hetero.cost``), so its measured spans
are *host* time: never faster than the host, whatever card it models. Each span also carries the
*modelled* time (``Span.modelled``: the plan's estimate of that node on the modelled device; None
for real devices), ``summary()`` gives each simulated device's modelled busy time next to the
measured one, ``table()`` says which times are host time, and the Chrome trace adds the modelled
timeline (what the modelled card would do: the plan's estimated schedule of the simulated
devices' nodes and copies) as its own processes, "gpu:0 (modelled)".
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from hetero.graph import TRANSFER
from hetero.spaces import lane_of

__all__ = ["Profile", "Span"]


@dataclass(frozen=True, slots=True)
class Span:
    """One node's execution: ``start`` and ``end`` in seconds from the start of the run."""

    node: str
    op: str
    device: str
    stream: str
    start: float
    end: float
    nbytes: int = 0  # bytes copied, for transfers
    #: seconds the modelled device takes for it (a simulated GPU's node or copy; the plan's
    #: estimate), None on real devices, where the measured time is the device's own
    modelled: float | None = None

    @property
    def duration(self) -> float:
        return self.end - self.start

    @property
    def is_transfer(self) -> bool:
        return self.op == TRANSFER


def _union(intervals: Iterable[tuple[float, float]]) -> list[tuple[float, float]]:
    merged: list[list[float]] = []
    for lo, hi in sorted(intervals):
        if merged and lo <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], hi)
        else:
            merged.append([lo, hi])
    return [(lo, hi) for lo, hi in merged]


def _length(intervals: Iterable[tuple[float, float]]) -> float:
    return sum(hi - lo for lo, hi in intervals)


def _overlap(a: list[tuple[float, float]], b: list[tuple[float, float]]) -> float:
    """Total length of the intersection of two sorted, disjoint interval lists."""
    i = j = 0
    total = 0.0
    while i < len(a) and j < len(b):
        lo, hi = max(a[i][0], b[j][0]), min(a[i][1], b[j][1])
        if hi > lo:
            total += hi - lo
        if a[i][1] < b[j][1]:
            i += 1
        else:
            j += 1
    return total


class Profile:
    """The spans of one run of a plan.

    Attributes:
        plan: the Plan that ran.
        spans: one Span per node and transfer that ran, in start order.
        wall: seconds from the start to the end of the run (host side, including joins).
    """

    def __init__(self, plan: Any, spans: list[Span], wall: float) -> None:
        self.plan = plan
        self.spans = sorted(spans, key=lambda s: (s.start, s.device, s.stream))
        self.wall = wall

    @classmethod
    def from_run(cls, plan: Any, trace: list[tuple], t0: float, t1: float,
                 kept: frozenset[str] = frozenset()) -> Profile:
        """Build a profile from the executor's raw records ``(node index, device, stream,
        start, end)``; a GPU record carries a two-element list of stream time stamps as start
        and None as end. ``kept``: device-to-host transfers that copied within the GPU instead
        (``outputs="device"``); they moved no bytes over a link."""
        graph = plan.graph
        simulated = _simulated(plan)
        est = plan.estimates
        spans = []
        for index, device, stream, start, end in trace:
            if end is None:
                start, end = start
            node = graph.nodes[index]
            nbytes = sum(s.nbytes for s in node.outputs) if node.is_transfer else 0
            if node.name in kept:
                nbytes = 0
            modelled = None
            if node.name in est and _on_simulated(node, simulated):
                modelled = est[node.name][1] - est[node.name][0]
            spans.append(Span(node.name, node.op, device, stream, start - t0,
                              max(end, start) - t0, nbytes, modelled))
        return cls(plan, spans, t1 - t0)

    # -- figures -----------------------------------------------------------------------------

    @property
    def makespan(self) -> float:
        """Measured seconds from the first span's start to the last span's end."""
        if not self.spans:
            return 0.0
        return max(s.end for s in self.spans) - min(s.start for s in self.spans)

    def summary(self) -> dict[str, Any]:
        """Per-device busy share, transfer bytes, overlap of transfers with compute, makespans.

        Returns a dict: ``devices`` (device -> ``busy`` share of the measured makespan,
        ``busy_s``, ``nodes``), ``transfer_bytes``, ``transfer_s``, ``transfer_overlap`` (share of
        transfer time during which some device computed), ``measured_makespan``,
        ``estimated_makespan``, ``wall``.
        """
        span = self.makespan or 1e-12
        devices: dict[str, dict[str, float]] = {}
        compute_all: list[tuple[float, float]] = []
        transfers: list[tuple[float, float]] = []
        tbytes = 0
        simulated = _simulated(self.plan)
        for dev in sorted({s.device for s in self.spans}):
            busy = _union((s.start, s.end) for s in self.spans
                          if s.device == dev and not s.is_transfer)
            compute_all.extend(busy)
            n = sum(1 for s in self.spans if s.device == dev)
            devices[dev] = {"busy": _length(busy) / span, "busy_s": _length(busy), "nodes": n}
            if dev in simulated:  # host time above; what the modelled card would be busy
                devices[dev]["modelled_busy_s"] = sum(
                    s.modelled or 0.0 for s in self.spans
                    if s.device == dev and not s.is_transfer)
        for s in self.spans:
            if s.is_transfer:
                transfers.append((s.start, s.end))
                tbytes += s.nbytes
        compute_u = _union(compute_all)
        transfer_u = _union(transfers)
        t_time = _length(transfer_u)
        overlapped = _overlap(transfer_u, compute_u)
        return {
            "devices": devices,
            "transfer_bytes": tbytes,
            "transfer_s": t_time,
            "transfer_overlap": overlapped / t_time if t_time > 0 else 0.0,
            "measured_makespan": self.makespan,
            "estimated_makespan": float(self.plan.makespan),
            "wall": self.wall,
            "simulated": sorted(simulated),
        }

    def table(self) -> str:
        """``summary()`` as text."""
        s = self.summary()
        sim = s["simulated"]
        lines = [f"{'device':<8} {'nodes':>6} {'busy':>7} {'busy ms':>9}"
                 + (f" {'modelled ms':>12}" if sim else "")]
        for dev, d in s["devices"].items():
            row = (f"{dev:<8} {int(d['nodes']):>6} {d['busy']:>6.1%} "
                   f"{d['busy_s'] * 1e3:>9.3f}")
            if "modelled_busy_s" in d:
                row += f" {d['modelled_busy_s'] * 1e3:>12.3f}"
            lines.append(row)
        lines.append(f"transfers: {s['transfer_bytes']:,} bytes in {s['transfer_s'] * 1e3:.3f} ms, "
                     f"{s['transfer_overlap']:.0%} overlapped with compute")
        lines.append(f"makespan: measured {s['measured_makespan'] * 1e3:.3f} ms, "
                     f"estimated {s['estimated_makespan'] * 1e3:.3f} ms "
                     f"(wall {s['wall'] * 1e3:.3f} ms)")
        if sim:
            what = "is a simulated GPU" if len(sim) == 1 else "are simulated GPUs"
            lines.append(f"note: {', '.join(sim)} {what}: it computes with NumPy on this "
                         "host, so its measured times are host time, no faster than the host "
                         "whatever card it models; 'modelled ms' and the estimate are what the "
                         "modelled card would take (the Chrome trace shows that timeline as "
                         "its own tracks)")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.table()

    def feed(self, cost: Any, threads: tuple[int, int] | None = None) -> int:
        """Record every measured compute time into a measured cost model (``cost.record``);
        returns how many were recorded (a model may decline some: ``MeasuredCost`` keeps a
        simulated GPU's simulated durations, not what the host observed). ``threads``: the
        (BLAS, intra-op) threads per CPU worker the run used (the executor passes its own), so
        that a model that keeps CPU times per thread condition files them under it."""
        graph = self.plan.graph
        extra = {"threads": threads} if threads is not None and _takes(cost.record,
                                                                       "threads") else {}
        n = 0
        for s in self.spans:
            if s.is_transfer:
                continue
            node = graph.node(s.node)
            ins = tuple(graph.spec(v) for v in node.inputs)
            if cost.record(node, s.device, s.duration, ins, **extra) is not False:
                n += 1
        return n

    # -- Chrome trace ------------------------------------------------------------------------

    def _reason(self, name: str) -> str:
        node = self.plan.graph.node(name)
        if node.is_transfer:
            a = node.attrs
            return f"transfer inserted by partition: {a['src']} -> {a['dst']} ({a['kind']})"
        reasons = self.plan.placement.reason
        base = name.split("@", 1)[0]
        r = reasons.get(name) or reasons.get(base)
        return str(r) if r is not None else ""

    def to_chrome(self) -> dict[str, Any]:
        """The Chrome trace event format as a dict (``save`` writes it as JSON)."""
        graph = self.plan.graph
        est = self.plan.estimates
        devices = sorted({s.device for s in self.spans},
                         key=lambda d: (not d.startswith("cpu"), d))
        pid = {d: i + 1 for i, d in enumerate(devices)}
        stream_rank = {"worker": 0, "compute": 0, "h2d": 1, "d2h": 2}
        events: list[dict[str, Any]] = []
        for d in devices:
            events.append({"ph": "M", "name": "process_name", "pid": pid[d], "tid": 0,
                           "args": {"name": d}})
            events.append({"ph": "M", "name": "process_sort_index", "pid": pid[d], "tid": 0,
                           "args": {"sort_index": pid[d]}})
            for st in sorted({s.stream for s in self.spans if s.device == d},
                             key=lambda x: stream_rank.get(x, 9)):
                tid = stream_rank.get(st, 9)
                label = "worker" if st == "worker" else f"{st} stream"
                events.append({"ph": "M", "name": "thread_name", "pid": pid[d], "tid": tid,
                               "args": {"name": f"{d} {label}"}})
        where: dict[str, Span] = {}
        for s in self.spans:
            where[s.node] = s
            node = graph.node(s.node)
            args: dict[str, Any] = {"op": s.op, "reason": self._reason(s.node)}
            if node.where:
                args["where"] = node.where
            if s.node in est:
                args["estimated_start_ms"] = est[s.node][0] * 1e3
                args["estimated_end_ms"] = est[s.node][1] * 1e3
            if s.is_transfer:
                args["bytes"] = s.nbytes
            events.append({"ph": "X", "name": s.node, "cat": "transfer" if s.is_transfer
                           else "compute", "pid": pid[s.device],
                           "tid": stream_rank.get(s.stream, 9), "ts": s.start * 1e6,
                           "dur": max(s.duration * 1e6, 0.001), "args": args})
        consumers = graph.consumers()
        flow = 0
        for s in self.spans:
            if not s.is_transfer:
                continue
            src = graph.node(s.node).inputs[0].node
            pairs = []
            if src in where:
                pairs.append((where[src], s))
            pairs += [(s, where[c]) for c in consumers.get(s.node, []) if c in where]
            for a, b in pairs:
                flow += 1
                common = {"name": "transfer", "cat": "flow", "id": flow}
                events.append({**common, "ph": "s", "pid": pid[a.device],
                               "tid": stream_rank.get(a.stream, 9),
                               "ts": max(a.start, a.end - 1e-9) * 1e6})
                events.append({**common, "ph": "f", "bp": "e", "pid": pid[b.device],
                               "tid": stream_rank.get(b.stream, 9), "ts": b.start * 1e6})
        events += self._modelled_events(len(devices) + 1)
        return {"traceEvents": events, "displayTimeUnit": "ms",
                "otherData": {"graph": graph.name, "summary": _jsonable(self.summary())}}

    def _modelled_events(self, first_pid: int) -> list[dict[str, Any]]:
        """The modelled timeline of the simulated devices: one process "gpu:N (modelled)" each,
        one track per stream, the plan's estimated start and finish of every node and copy they
        run (copies on the stream that issues them), shifted to start with the measured run."""
        plan = self.plan
        simulated = _simulated(plan)
        if not simulated:
            return []
        graph, est = plan.graph, plan.estimates
        measured = {s.node: s for s in self.spans}
        origin = min((s.start for s in self.spans), default=0.0)
        events: list[dict[str, Any]] = []
        tids: dict[tuple[str, str], int] = {}
        pid = {d: first_pid + i for i, d in enumerate(sorted(simulated))}
        for dev, p in pid.items():
            events.append({"ph": "M", "name": "process_name", "pid": p, "tid": 0,
                           "args": {"name": f"{dev} (modelled)"}})
            events.append({"ph": "M", "name": "process_sort_index", "pid": p, "tid": 0,
                           "args": {"sort_index": p}})
        for node in graph.nodes:
            if node.name not in est or not (node.computes or node.is_transfer) or \
                    not _on_simulated(node, simulated):
                continue  # (constants and inputs are there before a run starts)
            lane = lane_of(node)  # "gpu:0" or "gpu:0/h2d"
            dev, _, stream = lane.partition("/")
            if dev not in pid:
                dev = node.attrs["src"] if node.is_transfer and node.attrs["src"] in pid \
                    else node.attrs.get("dst", dev)
            stream = stream or "compute"
            key = (dev, stream)
            if key not in tids:
                tids[key] = {"compute": 0, "h2d": 1, "d2h": 2}.get(stream, 3 + len(tids))
                events.append({"ph": "M", "name": "thread_name", "pid": pid[dev],
                               "tid": tids[key],
                               "args": {"name": f"{dev} {stream} stream (modelled)"}})
            start, finish = est[node.name]
            args: dict[str, Any] = {"op": node.op, "modelled_ms": (finish - start) * 1e3,
                                    "reason": self._reason(node.name)}
            if node.name in measured:
                args["measured_ms"] = measured[node.name].duration * 1e3
            events.append({"ph": "X", "name": node.name, "cat": "modelled", "pid": pid[dev],
                           "tid": tids[key], "ts": (origin + start) * 1e6,
                           "dur": max((finish - start) * 1e6, 0.001), "args": args})
        return events

    def save(self, path: str) -> None:
        """Write the Chrome trace / Perfetto JSON to ``path``."""
        with open(path, "w", encoding="utf-8") as f:
            json.dump(self.to_chrome(), f)

    def __repr__(self) -> str:
        return (f"Profile({self.plan.graph.name!r}, {len(self.spans)} spans, "
                f"{self.makespan * 1e3:.3f} ms)")


def _simulated(plan: Any) -> set[str]:
    """Names of the plan's simulated devices."""
    machine = plan.machine
    return {d.name for d in machine.devices if d.backend == "sim"} if machine else set()


def _on_simulated(node: Any, simulated: set[str]) -> bool:
    """Does a simulated device run ``node`` (or, for a copy, is one of its ends simulated)?"""
    if node.is_transfer:
        return node.attrs["src"] in simulated or node.attrs["dst"] in simulated
    return node.device in simulated


def _takes(fn: Any, name: str) -> bool:
    """Whether ``fn`` accepts the keyword argument ``name``."""
    import inspect

    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.name == name or p.kind is p.VAR_KEYWORD for p in params)


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, float) and x != x:
        return None
    return x
