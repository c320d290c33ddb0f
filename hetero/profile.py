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
streams to the modelled card's durations, so its measured spans are *host* time: never faster
than the host, whatever card it models. Each span on one also carries the *modelled* time
(``Span.modelled``): what the modelled card takes for it, by the very model the simulated GPU
paces itself with (``Device.kernel_time``, the roofline of the card's rates, for a kernel; the
machine's link for a copy), whatever cost model the plan was placed with; None on real devices.
``modelled_timeline()`` lays the run out as the modelled machine would run it: every span in its
stream's order (the plan's queues), after the spans whose values it reads, lasting its modelled
time on a simulated GPU and its measured time on a real device. ``summary()`` gives each
simulated device's modelled busy time and the modelled makespan next to the measured ones,
``table()`` says which times are host time (in the words of ``hetero run``), and the Chrome
trace adds the simulated devices' part of the modelled timeline as processes of their own,
"gpu:0 (modelled)", one track per stream.
"""

from __future__ import annotations

import json
import textwrap
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from hetero.backends import cupy as cuda_backend
from hetero.graph import TRANSFER
from hetero.ops.registry import lookup
from hetero.scheduling import interval_length, interval_overlap, merge_intervals

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
    #: seconds the modelled card takes for it (a simulated GPU's kernel or copy, by the model the
    #: simulated GPU paces itself with), None on real devices, whose measured time is their own
    modelled: float | None = None

    @property
    def duration(self) -> float:
        return self.end - self.start

    @property
    def is_transfer(self) -> bool:
        return self.op == TRANSFER


class Profile:
    """The spans of one run of a plan.

    Attributes:
        plan: the Plan that ran.
        spans: one Span per node and transfer that ran, in start order.
        wall: seconds from the start to the end of the run (host side, including joins).
        peak_memory: GPU memory space -> the most bytes its device held during the run: the
            simulated GPU's high-water mark, CuPy's memory pool on CUDA (what the pool held by
            the end of the run, after its unused blocks were released before it); compare
            with ``plan.peak_memory``, the prediction.
    """

    def __init__(self, plan: Any, spans: list[Span], wall: float,
                 peak_memory: Mapping[str, int] | None = None) -> None:
        self.plan = plan
        self.spans = sorted(spans, key=lambda s: (s.start, s.device, s.stream))
        self.wall = wall
        self.peak_memory = dict(peak_memory or {})

    @classmethod
    def from_run(cls, plan: Any, trace: list[tuple], t0: float, t1: float,
                 kept: frozenset[str] = frozenset(),
                 peak_memory: Mapping[str, int] | None = None) -> Profile:
        """Build a profile from the executor's raw records ``(node index, device, stream,
        start, end)``; a GPU record carries a two-element list of stream time stamps as start
        and None as end. ``kept``: device-to-host transfers that copied within the GPU instead
        (``outputs="device"``); they moved no bytes over a link."""
        graph = plan.graph
        simulated = _simulated(plan)
        spans = []
        for index, device, stream, start, end in trace:
            if end is None:
                start, end = start
            node = graph.nodes[index]
            nbytes = sum(s.nbytes for s in node.outputs) if node.is_transfer else 0
            if node.name in kept:
                nbytes = 0
            modelled = None
            if device in simulated:
                modelled = _modelled_time(plan, node, device, node.name in kept)
            spans.append(Span(node.name, node.op, device, stream, start - t0,
                              max(end, start) - t0, nbytes, modelled))
        return cls(plan, spans, t1 - t0, peak_memory)

    # -- figures -----------------------------------------------------------------------------

    @property
    def makespan(self) -> float:
        """Measured seconds from the first span's start to the last span's end."""
        if not self.spans:
            return 0.0
        return max(s.end for s in self.spans) - min(s.start for s in self.spans)

    def modelled_timeline(self) -> dict[str, tuple[float, float]]:
        """The run as the modelled machine would run it: node -> (start, end) in seconds from the
        start of the run, for every span.

        Each span keeps its stream's order (the plan's queue order) and starts once the previous
        span of its stream and every span whose values it reads have ended (the only waits the
        executor makes); it lasts ``Span.modelled`` on a simulated GPU and its measured time on a
        real device. The first spans start where the measured run's first span did."""
        graph = self.plan.graph
        by_node = {s.node: s for s in self.spans}
        position = {n: i for q in self.plan.queues.values() for i, n in enumerate(q)}
        lanes: dict[tuple[str, str], list[Span]] = {}
        for sp in self.spans:
            lanes.setdefault((sp.device, sp.stream), []).append(sp)
        preds: dict[str, set[str]] = {n: set() for n in by_node}
        for lane in lanes.values():
            lane.sort(key=lambda x: (position.get(x.node, len(position)), x.start))
            for a, b in zip(lane, lane[1:]):
                preds[b.node].add(a.node)
        for n in by_node:
            if n in graph:
                preds[n].update(v.node for v in graph.node(n).inputs if v.node in by_node)
        succs: dict[str, list[str]] = {n: [] for n in by_node}
        for n, ps in preds.items():
            for q in ps:
                succs[q].append(n)
        waiting = {n: len(ps) for n, ps in preds.items()}
        origin = min((sp.start for sp in self.spans), default=0.0)
        ready = [n for n, k in waiting.items() if k == 0]
        times: dict[str, tuple[float, float]] = {}
        while ready:
            n = ready.pop()
            sp = by_node[n]
            begin = max([origin] + [times[q][1] for q in preds[n]])
            times[n] = (begin, begin + (sp.modelled if sp.modelled is not None else sp.duration))
            for m in succs[n]:
                waiting[m] -= 1
                if waiting[m] == 0:
                    ready.append(m)
        for n, sp in by_node.items():  # (a cycle: spans that contradict the plan) as measured
            times.setdefault(n, (sp.start, sp.end))
        return times

    def summary(self) -> dict[str, Any]:
        """Per-device busy share, transfer bytes, overlap of transfers with compute, makespans.

        Returns a dict: ``devices`` (device -> ``busy`` share of the measured makespan,
        ``busy_s``, ``nodes``; a simulated device also ``modelled_busy_s``), ``transfer_bytes``,
        ``transfer_s``, ``transfer_overlap`` (share of transfer time during which some device
        computed), ``measured_makespan``, ``estimated_makespan`` (the plan's), ``wall``,
        ``simulated`` (the simulated devices, whose measured times are host time) and, where
        there are any, ``modelled_makespan`` (of ``modelled_timeline()``); ``peak_memory``
        (measured, per GPU memory space) beside ``predicted_peak_memory`` (the plan's).
        """
        span = self.makespan or 1e-12
        devices: dict[str, dict[str, float]] = {}
        compute_all: list[tuple[float, float]] = []
        transfers: list[tuple[float, float]] = []
        tbytes = 0
        simulated = _simulated(self.plan)
        for dev in sorted({s.device for s in self.spans}):
            busy = merge_intervals((s.start, s.end) for s in self.spans
                          if s.device == dev and not s.is_transfer)
            compute_all.extend(busy)
            n = sum(1 for s in self.spans if s.device == dev)
            busy_s = interval_length(busy)
            devices[dev] = {"busy": busy_s / span, "busy_s": busy_s, "nodes": n}
            if dev in simulated:  # host time above; what the modelled card would be busy
                devices[dev]["modelled_busy_s"] = sum(
                    s.modelled or 0.0 for s in self.spans
                    if s.device == dev and not s.is_transfer)
        for s in self.spans:
            if s.is_transfer:
                transfers.append((s.start, s.end))
                tbytes += s.nbytes
        compute_u = merge_intervals(compute_all)
        transfer_u = merge_intervals(transfers)
        t_time = interval_length(transfer_u)
        overlapped = interval_overlap(transfer_u, compute_u)
        out = {
            "devices": devices,
            "transfer_bytes": tbytes,
            "transfer_s": t_time,
            "transfer_overlap": overlapped / t_time if t_time > 0 else 0.0,
            "measured_makespan": self.makespan,
            "estimated_makespan": float(self.plan.makespan),
            "wall": self.wall,
            "simulated": sorted(simulated),
            "peak_memory": dict(self.peak_memory),
            "predicted_peak_memory": {k: v for k, v in
                                      getattr(self.plan, "peak_memory", {}).items()
                                      if k in self.peak_memory},
        }
        if simulated and self.spans:
            times = self.modelled_timeline().values()
            out["modelled_makespan"] = max(e for _, e in times) - min(b for b, _ in times)
        if _cuda(self.plan):  # process-wide counts: a fallback is visible, not only warned
            out["cudnn"] = cuda_backend.cudnn_report()
        return out

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
        measured = f"measured {s['measured_makespan'] * 1e3:.3f} ms"
        if sim:
            measured += f" (host time: {', '.join(sim)} simulated)"
            if "modelled_makespan" in s:
                measured += f", modelled {s['modelled_makespan'] * 1e3:.3f} ms"
        lines.append(f"makespan: {measured}, estimated {s['estimated_makespan'] * 1e3:.3f} ms "
                     f"(wall {s['wall'] * 1e3:.3f} ms)")
        if sim:
            lines += textwrap.wrap(_simulated_note(sim), width=100, subsequent_indent="  ")
        if "cudnn" in s:
            dnn = s["cudnn"]
            lines.append(f"cuDNN (this process): {dnn['executed']} graph runs, "
                         f"{dnn['fallback']} fallbacks to the shared CUDA kernel")
            lines += [f"  refused {key[0]} {key[2:]}: {why}" for key, why in dnn["refused"].items()]
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
        """The simulated devices' part of ``modelled_timeline()``: one process "gpu:N (modelled)"
        each, one track per stream that ran something, an event per kernel and copy."""
        simulated = _simulated(self.plan)
        spans = [s for s in self.spans if s.device in simulated]
        if not spans:
            return []
        times = self.modelled_timeline()
        est = self.plan.estimates
        pid = {d: first_pid + i for i, d in enumerate(sorted({s.device for s in spans}))}
        stream_rank = {"compute": 0, "h2d": 1, "d2h": 2}
        events: list[dict[str, Any]] = []
        for dev, p in pid.items():
            events.append({"ph": "M", "name": "process_name", "pid": p, "tid": 0,
                           "args": {"name": f"{dev} (modelled)"}})
            events.append({"ph": "M", "name": "process_sort_index", "pid": p, "tid": 0,
                           "args": {"sort_index": p}})
            for st in sorted({s.stream for s in spans if s.device == dev},
                             key=lambda x: (stream_rank.get(x, 9), x)):
                events.append({"ph": "M", "name": "thread_name", "pid": p,
                               "tid": stream_rank.get(st, 9),
                               "args": {"name": f"{dev} {st} stream (modelled)"}})
        for s in spans:
            start, end = times[s.node]
            args: dict[str, Any] = {"op": s.op, "modelled_ms": (end - start) * 1e3,
                                    "measured_ms": s.duration * 1e3,
                                    "reason": self._reason(s.node)}
            if s.node in est:
                args["estimated_start_ms"] = est[s.node][0] * 1e3
                args["estimated_end_ms"] = est[s.node][1] * 1e3
            if s.is_transfer:
                args["bytes"] = s.nbytes
            events.append({"ph": "X", "name": s.node, "cat": "modelled", "pid": pid[s.device],
                           "tid": stream_rank.get(s.stream, 9), "ts": start * 1e6,
                           "dur": max((end - start) * 1e6, 0.001), "args": args})
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


def _cuda(plan: Any) -> bool:
    """Does the plan run on a CUDA device?"""
    machine = plan.machine
    return bool(machine) and any(d.backend == "cupy" for d in machine.devices)


def _simulated_note(sim: list[str]) -> str:
    """What the measured and the modelled times of a profile with simulated GPUs are. Its second
    sentence is the note ``hetero run`` prints for a simulated GPU."""
    what = "is a simulated GPU" if len(sim) == 1 else "are simulated GPUs"
    tracks = ", ".join(f'"{d} (modelled)"' for d in sim)
    return (f"note: {', '.join(sim)} {what}. A simulated GPU computes with NumPy on this host, "
            "so it runs no faster than the host does, whatever card it simulates: its measured "
            "times ('busy ms', the measured makespan) are host time. 'modelled ms' and the "
            "modelled makespan are what the modelled card would take (its kernels and copies at "
            "the card's modelled durations, CPU work as measured); the Chrome trace shows that "
            f"timeline as {tracks}.")


def _modelled_time(plan: Any, node: Any, device: str, kept: bool) -> float:
    """Seconds the simulated GPU ``device`` models for ``node``, as it paces it (the executor's
    ``_gpu_launch``, ``SimDevice.copy_*``): a kernel's ``kernel_time`` on the node's specs; a copy
    the machine's link for its bytes, or, ``kept`` (copied within the GPU), reading and writing
    them at the GPU's memory bandwidth."""
    machine, graph = plan.machine, plan.graph
    dev = machine.device(device)
    if node.is_transfer:
        nbytes = sum(s.nbytes for s in node.outputs)
        if kept:
            return 2.0 * nbytes / dev.mem_bandwidth
        return float(machine.link(node.attrs["src"], node.attrs["dst"]).time(nbytes))
    ins = [graph.spec(v) for v in node.inputs]
    return float(dev.kernel_time(lookup(node.op, node), ins, list(node.outputs), node.attrs))


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
