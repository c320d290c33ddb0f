"""The placement report: what the scheduler decided, as a table, JSON, Graphviz DOT or HTML.

Design
------
``build(plan, ...)`` turns a compiled Plan into one plain, JSON-ready dict, the *report*; every
renderer reads only that dict, so the four formats can never disagree:

- ``render_table(report)``: fixed-width text for a terminal;
- ``render_json(report)``: the report itself, stable key order, documented by the JSON Schema
  ``hetero/schemas/placement.schema.json`` (``schema()`` loads it; ``schema_version`` in the
  document says which version of it applies);
- ``render_dot(report)``: Graphviz DOT, nodes filled with their device's colour, transfers drawn
  as dashed ``cds`` (arrow-shaped) nodes;
- ``render_html(report)``: one self-contained page (inline CSS, JS and SVG, nothing fetched): the
  graph laid out in layers by topological depth, a Gantt chart of the estimated schedule with a
  row per device lane (a GPU's copy engines get rows of their own), and the tables. The SVG is
  drawn here in Python; the page's script measures what the browser rendered, wires hover
  highlighting and sorting, and marks ``<body data-rendered="1">`` when done.

What the report holds: per node its op, device, lane, placement reason and estimated start,
finish and time; per transfer its direction, bytes and consumers; per device its busy time, copy
time and arena bytes; the estimated makespan next to the lower bound and to the makespans of the
"cpu" and "gpu" policies (``policy_makespans``); the cost model the estimates come from (for a
measured one, its file and how many nodes it had a measured time for). Constants are listed
only as totals: a plan uploads them once per memory space when it is built, so they cost nothing
per run.
"""

from __future__ import annotations

import html
import json
import math
from collections.abc import Mapping, Sequence
from importlib import resources
from typing import Any

from hetero.cost import MeasuredCost, RooflineCost, TableCost, input_specs
from hetero.errors import HeteroError
from hetero.graph import fmt_bytes, toposort
from hetero.passes.place import OFFLOAD_POLICIES
from hetero.pipeline import compare_policies
from hetero.spaces import lane_of
from hetero.version import __version__

__all__ = ["FORMATS", "SCHEMA_VERSION", "build", "device_colors", "policy_makespans",
           "cluster_schema", "fmt_bytes", "fmt_time", "layout_graph", "render", "render_cluster",
           "render_cluster_dot", "render_cluster_html", "render_dot", "render_html",
           "render_json", "render_table", "schema", "text_table"]

#: Version of the JSON document (and of ``hetero/schemas/placement.schema.json``). Bump the major
#: number when a field is removed or changes meaning; adding optional fields keeps it.
SCHEMA_VERSION = "1.1"  # 1.1: cost_model
SCHEMA_ID = "hetero.placement"

FORMATS = ("table", "json", "dot", "html", "svg")

_CPU_COLORS = ("#4e79a7", "#76b7b2", "#59a14f", "#a0cbe8", "#499894", "#8cd17d", "#86bcb6",
               "#2f6f9f")
_GPU_COLORS = ("#f28e2b", "#e15759", "#edc948", "#b07aa1", "#ff9da7", "#9c755f", "#d37295",
               "#fabfd2")
_TRANSFER_COLOR = "#d9d9d9"
_STREAMED_COLOR = "#9ecae1"  # a weight streamed from host memory on every run


# ----------------------------------------------------------------------------------------------
# Formatting


def fmt_time(seconds: float | None) -> str:
    """Seconds in a readable unit: ``"1.25 ms"``, ``"830 us"``; ``"-"`` for None.

    >>> fmt_time(0.00125), fmt_time(8.3e-4), fmt_time(2.5), fmt_time(None)
    ('1.25 ms', '830 us', '2.5 s', '-')
    """
    if seconds is None:
        return "-"
    if math.isinf(seconds):
        return "inf"
    a = abs(seconds)
    if a >= 1:
        return f"{seconds:.3g} s"
    if a >= 1e-3:
        return f"{seconds * 1e3:.3g} ms"
    if a >= 1e-6 or a == 0:
        return f"{seconds * 1e6:.3g} us"
    return f"{seconds * 1e9:.3g} ns"


def _finite(x: float | None) -> float | None:
    """JSON has no infinity: an unplaceable policy's makespan becomes None."""
    if x is None or math.isinf(x) or math.isnan(x):
        return None
    return float(x)


def device_colors(devices: Sequence[Any]) -> dict[str, str]:
    """A fill colour per device name: cool colours for CPU workers, warm ones for GPUs."""
    colors: dict[str, str] = {}
    ncpu = ngpu = 0
    for d in devices:
        if d.kind == "cpu":
            colors[d.name] = _CPU_COLORS[ncpu % len(_CPU_COLORS)]
            ncpu += 1
        else:
            colors[d.name] = _GPU_COLORS[ngpu % len(_GPU_COLORS)]
            ngpu += 1
    return colors


# ----------------------------------------------------------------------------------------------
# Policy comparison


def policy_makespans(graph: Any, machine: Any, cost: Any = None,
                     policies: Sequence[str] = ("cpu", "gpu")) -> dict[str, float | None]:
    """The report's comparison row: estimated makespan of the plan of ``graph`` (already
    optimized, as compile placed it) under each policy (``hetero.pipeline.compare_policies``:
    same pipeline and cost model as the reported plan). None where the policy does not apply
    (no GPU in the machine for "gpu") or cannot place the graph."""
    has_gpu = any(d.kind != "cpu" for d in machine.devices)
    wanted = [p for p in policies if p not in ("gpu", *OFFLOAD_POLICIES) or has_gpu]
    found = compare_policies(graph, machine, cost, wanted) if wanted else {}
    return {p: _finite(found[p]) if p in wanted else None for p in policies}


# ----------------------------------------------------------------------------------------------
# Building the report


def _spec_json(spec: Any) -> dict[str, Any]:
    return {"shape": [int(d) for d in spec.shape], "dtype": str(spec.dtype)}


def build(plan: Any, *, source: str | None = None,
          policies: Mapping[str, float | None] | None = None) -> dict[str, Any]:
    """The report of a compiled plan as a JSON-ready dict (see ``schema()``).

    Args:
        plan: a Plan from ``hetero.compile``.
        source: where the model came from (a file, ``file.py:function``), for the header.
        policies: estimated makespans of other policies (``policy_makespans``); None: not shown.
    """

    graph, machine = plan.graph, plan.machine
    est = plan.estimates
    reasons = plan.placement.reason
    consumers = graph.consumers()
    colors = device_colors(machine.devices)

    def times(name: str) -> tuple[float, float]:
        s, f = est.get(name, (0.0, 0.0))
        return float(s), float(f)

    nodes, transfers = [], []
    const_count, const_bytes = 0, 0
    streamed, streamed_bytes = 0, 0
    kept_on_host = {n.inputs[0].node for n in graph.nodes  # streamed weights: not uploaded
                    if n.is_transfer and n.attrs.get("streamed")}
    for node in graph.nodes:
        if node.is_constant:
            if node.name in kept_on_host:
                continue
            const_count += 1
            const_bytes += sum(s.nbytes for s in node.outputs)
            continue
        s, f = times(node.name)
        if node.is_transfer:
            a = node.attrs
            entry = {
                "name": node.name, "value": node.inputs[0].node,
                "direction": a["kind"], "src": a["src"], "dst": a["dst"],
                "device": node.device, "lane": lane_of(node),
                "bytes": int(sum(sp.nbytes for sp in node.outputs)),
                "consumers": list(consumers.get(node.name, [])),
                "start": s, "finish": f, "time": f - s}
            if a.get("streamed"):
                entry["streamed"] = True
                streamed += 1
                streamed_bytes += entry["bytes"]
                why = reasons.get(node.inputs[0].node)
                if why is not None and why.kind == "streamed":
                    entry["reason"] = why.to_json()
            transfers.append(entry)
            continue
        reason = reasons.get(node.name)
        if reason is None:
            reason_json = {"kind": "input" if node.is_input else "default", "detail": ""}
        else:
            reason_json = reason.to_json()
        nodes.append({
            "name": node.name, "op": node.op, "device": node.device, "lane": lane_of(node),
            "reason": reason_json, "start": s, "finish": f, "time": f - s,
            "where": node.where,
            "inputs": [v.node for v in node.inputs if not graph.node(v.node).is_constant],
            "outputs": [_spec_json(sp) for sp in node.outputs]})

    shown = {n["name"] for n in nodes} | {t["name"] for t in transfers}
    edges = []
    for node in graph.nodes:
        if node.name not in shown:
            continue
        seen: set[str] = set()
        for v in node.inputs:
            if v.node in shown and v.node not in seen:
                seen.add(v.node)
                edges.append({"src": v.node, "dst": node.name,
                              "bytes": int(graph.spec(v).nbytes)})

    memory = []
    arenas: dict[str, int] = {}
    if plan.memory is not None:
        for space, arena in plan.memory.arenas.items():
            arenas[space] = int(arena.arena_bytes)
            memory.append({"space": space, "arena_bytes": int(arena.arena_bytes),
                           "lower_bound_bytes": int(arena.lower_bound_bytes),
                           "naive_bytes": int(arena.naive_bytes)})

    makespan = float(plan.makespan)
    devices = []
    for d in machine.devices:
        queue = plan.queues.get(d.name, ())
        compute = [n for n in queue if graph.node(n).computes]
        copies = [n for n in queue if graph.node(n).is_transfer]
        busy = sum(times(n)[1] - times(n)[0] for n in compute)
        copy_busy = sum(times(n)[1] - times(n)[0] for n in copies)
        devices.append({
            "name": d.name, "kind": d.kind, "backend": d.backend,
            "memory_space": d.memory_space, "color": colors[d.name],
            "nodes": len(compute), "busy": busy,
            "utilization": busy / makespan if makespan > 0 else 0.0,
            "transfers": len(copies), "copy_busy": copy_busy,
            "arena_bytes": arenas.get(d.memory_space)})

    comparison = {k: _finite(v) for k, v in (policies or {}).items()}
    cost_model = _cost_model_json(plan)
    return {
        "schema": SCHEMA_ID,
        "schema_version": SCHEMA_VERSION,
        "generator": f"hetero {__version__}",
        "model": {
            "name": graph.name, "source": source,
            "inputs": [{"name": n, **_spec_json(graph.node(n).outputs[0])} for n in graph.inputs],
            "outputs": [{"name": _produced_by(graph, v), **_spec_json(graph.spec(v))}
                        for v in graph.outputs]},
        "machine": {"spec": machine.spec, "devices": [_device_json(d, colors) for d in
                                                      machine.devices]},
        "policy": plan.policy,
        **({"cost_model": cost_model} if cost_model is not None else {}),
        "summary": {
            "makespan": makespan, "lower_bound": float(plan.lower_bound),
            "policies": comparison,
            "nodes": len(nodes), "transfers": len(transfers),
            "transfer_bytes": int(sum(t["bytes"] for t in transfers)),
            "constants": const_count, "constant_bytes": int(const_bytes),
            "streamed": streamed, "streamed_bytes": int(streamed_bytes),
            "peak_memory": {k: int(v) for k, v in plan.peak_memory.items()}},
        "nodes": nodes,
        "transfers": transfers,
        "edges": edges,
        "devices": devices,
        "memory": memory,
    }


def _cost_model_json(plan: Any) -> dict[str, Any] | None:
    """Which cost model the estimates come from; for a measured one, its file and how many of
    the plan's computing nodes it had a measured time for (the roofline costs the others)."""
    cost = plan.cost
    if cost is None:
        return None
    kinds = ((MeasuredCost, "measured"), (RooflineCost, "roofline"), (TableCost, "table"))
    kind = next((k for cls, k in kinds if isinstance(cost, cls)), type(cost).__name__)
    doc: dict[str, Any] = {"model": kind}
    if isinstance(cost, MeasuredCost):
        graph = plan.graph
        nodes = [n for n in graph.nodes if n.computes]
        doc["path"] = cost.path
        doc["nodes"] = len(nodes)
        doc["measured_nodes"] = sum(bool(cost.has(n, n.device, input_specs(graph, n)))
                                    for n in nodes)
    return doc


def _cost_model_text(cost: Mapping[str, Any] | None) -> str:
    if cost is None:
        return ""
    if cost["model"] != "measured":
        return f"cost model {cost['model']}"
    rest = "" if cost["measured_nodes"] == cost["nodes"] else ", roofline for the rest"
    return (f"cost model measured ({cost['measured_nodes']} of {cost['nodes']} nodes from "
            f"{cost['path']}{rest})")


def _produced_by(graph: Any, v: Any) -> str:
    """The node that computes an output (not the transfer that brings it to the host)."""
    node = graph.node(v.node)
    while node.is_transfer:
        node = graph.node(node.inputs[0].node)
    return node.name


def _device_json(d: Any, colors: Mapping[str, str]) -> dict[str, Any]:
    return {"name": d.name, "kind": d.kind, "backend": d.backend,
            "memory_space": d.memory_space, "capacity": int(d.capacity),
            "peak_flops": {k: float(v) for k, v in d.peak_flops.items()},
            "mem_bandwidth": float(d.mem_bandwidth),
            "launch_overhead": float(d.launch_overhead),
            "model": str(d.model or ""), "color": colors[d.name]}


def schema() -> dict[str, Any]:
    """The JSON Schema of the report (``hetero/schemas/placement.schema.json``)."""

    text = resources.files("hetero").joinpath("schemas/placement.schema.json").read_text("utf-8")
    return json.loads(text)


def cluster_schema() -> dict[str, Any]:
    """The JSON Schema of a cluster's report (``hetero/schemas/cluster-placement.schema.json``,
    each stage's report checked against ``schema()``, embedded under ``$defs``)."""
    path = resources.files("hetero").joinpath("schemas/cluster-placement.schema.json")
    doc = json.loads(path.read_text("utf-8"))
    doc["$defs"]["placement"] = schema()
    return doc


# ----------------------------------------------------------------------------------------------
# Table


def text_table(headers: Sequence[str], rows: Sequence[Sequence[str]],
           right: Sequence[int] = ()) -> list[str]:
    """Lines of a fixed-width table: header, rule, rows (columns in ``right`` right-aligned)."""
    widths = [len(h) for h in headers]
    for r in rows:
        widths = [max(w, len(c)) for w, c in zip(widths, r)]

    def line(cells: Sequence[str]) -> str:
        out = []
        for i, (c, w) in enumerate(zip(cells, widths)):
            out.append(c.rjust(w) if i in right else c.ljust(w))
        return "  ".join(out).rstrip()

    return [line(headers), line(["-" * w for w in widths])] + [line(r) for r in rows]


def _reason_text(reason: Mapping[str, str]) -> str:
    return f"{reason['kind']}: {reason['detail']}" if reason.get("detail") else reason["kind"]


def render_table(report: Mapping[str, Any]) -> str:
    """The report as fixed-width text: nodes, transfers, devices, memory, summary."""
    out: list[str] = []
    model, summary = report["model"], report["summary"]
    src = f" ({model['source']})" if model.get("source") else ""
    cost = report.get("cost_model")
    short = cost is not None and cost["model"] != "measured"  # the long form names a file
    out.append(f"model {model['name']}{src}  machine {report['machine']['spec']}  "
               f"policy {report['policy']}" + (f"  cost {cost['model']}" if short else ""))
    if cost is not None and not short:
        out.append(_cost_model_text(cost))
    out.append("")
    # in the order they run: estimated start, then graph order (the JSON keeps graph order)
    by_start = sorted(enumerate(report["nodes"]), key=lambda p: (p[1]["start"], p[0]))
    rows = [[n["name"], n["op"], n["device"], fmt_time(n["start"]), fmt_time(n["finish"]),
             fmt_time(n["time"]), _reason_text(n["reason"])] for _, n in by_start]
    out += text_table(["node", "op", "device", "start", "finish", "time", "reason"], rows,
                  right=(3, 4, 5))
    out.append("")
    if report["transfers"]:
        rows = [[t["name"], t["direction"] + ("*" if t.get("streamed") else ""),
                 f"{t['src']} -> {t['dst']}", fmt_bytes(t["bytes"]),
                 fmt_time(t["start"]), fmt_time(t["time"]), ", ".join(t["consumers"]) or
                 "(graph output)"] for t in report["transfers"]]
        out += text_table(["transfer", "dir", "route", "bytes", "start", "time", "consumers"], rows,
                      right=(3, 4, 5))
        why = next((t["reason"]["detail"] for t in report["transfers"] if "reason" in t), None)
        if why is not None:
            out.append(f"* a weight streamed from host memory on every run; the first: {why}")
    else:
        out.append("no transfers: every value stays in one memory space")
    out.append("")
    rows = [[d["name"], d["kind"], str(d["nodes"]), fmt_time(d["busy"]),
             f"{d['utilization'] * 100:.0f}%", str(d["transfers"]), fmt_time(d["copy_busy"]),
             f"{fmt_bytes(d['arena_bytes'])} ({d['memory_space']})"]
            for d in report["devices"]]
    out += text_table(["device", "kind", "nodes", "busy", "util", "copies", "copy time",
                   "arena"], rows, right=(2, 3, 4, 5, 6))
    out.append("")
    if report["memory"]:
        rows = [[m["space"], fmt_bytes(m["arena_bytes"]), fmt_bytes(m["lower_bound_bytes"]),
                 fmt_bytes(m["naive_bytes"])] for m in report["memory"]]
        out += text_table(["memory", "arena", "lower bound", "no reuse"], rows, right=(1, 2, 3))
        out.append("")
    out.append(f"estimated makespan {fmt_time(summary['makespan'])} ({report['policy']})   "
               f"lower bound {fmt_time(summary['lower_bound'])}")
    if summary["policies"]:
        parts = [f"{p} policy {fmt_time(v) if v is not None else 'n/a'}"
                 for p, v in summary["policies"].items()]
        out.append("compare: " + "   ".join(parts))
    out.append(f"{summary['nodes']} nodes, {summary['transfers']} transfers "
               f"({fmt_bytes(summary['transfer_bytes'])} per run), {summary['constants']} "
               f"constants ({fmt_bytes(summary['constant_bytes'])}, uploaded once)"
               + (f", {summary['streamed']} streamed weight copies "
                  f"({fmt_bytes(summary['streamed_bytes'])} per run)"
                  if summary.get("streamed") else ""))
    return "\n".join(out) + "\n"


def render_json(report: Mapping[str, Any]) -> str:
    """The report as indented JSON (keys in a fixed order)."""
    return json.dumps(report, indent=2) + "\n"


# ----------------------------------------------------------------------------------------------
# DOT


def _dot_id(text: str) -> str:
    """A double-quoted DOT ID; a newline in ``text`` becomes DOT's centred line break."""
    escaped = text.replace("\\", "\\\\").replace('"', '\\"')
    return '"' + escaped.replace("\n", "\\n") + '"'


def render_dot(report: Mapping[str, Any]) -> str:
    """Graphviz DOT: nodes filled by device colour, transfers as dashed ``cds`` nodes, a legend."""
    lines = [f"digraph {_dot_id(report['model']['name'])} {{",
             "  rankdir=TB;",
             '  node [shape=box, style="rounded,filled", fontname="Helvetica", fontsize=10];',
             '  edge [fontname="Helvetica", fontsize=8, color="#555555"];']
    lines += _dot_statements(report)
    lines.append("}")
    return "\n".join(lines) + "\n"


def _dot_statements(report: Mapping[str, Any], prefix: str = "",
                    indent: str = "  ") -> list[str]:
    """The statements of one plan's drawing (nodes, transfers, edges, the legend), every node ID
    and the legend's subgraph name starting with ``prefix`` (a cluster's drawing holds several
    plans, whose names would otherwise collide)."""
    colors = {d["name"]: d["color"] for d in report["machine"]["devices"]}
    lines = []
    for n in report["nodes"]:
        shape = "ellipse" if n["op"] == "input" else "box"
        label = f"{n['name']}\n{n['op']} on {n['device']}\n{fmt_time(n['time'])}"
        tip = _reason_text(n["reason"])
        lines.append(f"{indent}{_dot_id(prefix + n['name'])} [label={_dot_id(label)}, "
                     f"shape={shape}, fillcolor={_dot_id(colors.get(n['device'], '#ffffff'))}, "
                     f"tooltip={_dot_id(tip)}];")
    for t in report["transfers"]:
        label = f"{t['direction']} {fmt_bytes(t['bytes'])}\n{t['src']} -> {t['dst']}"
        lines.append(f"{indent}{_dot_id(prefix + t['name'])} [label={_dot_id(label)}, shape=cds, "
                     f'style="filled,dashed", fillcolor={_dot_id(_TRANSFER_COLOR)}, '
                     f"color={_dot_id(colors.get(t['device'], '#000000'))}, penwidth=2];")
    for e in report["edges"]:
        lines.append(f"{indent}{_dot_id(prefix + e['src'])} -> {_dot_id(prefix + e['dst'])} "
                     f"[tooltip={_dot_id(fmt_bytes(e['bytes']))}];")
    lines.append(f"{indent}subgraph {_dot_id('cluster_' + prefix + 'legend')} {{")
    lines.append(f'{indent}  label="devices"; fontname="Helvetica"; style=dashed;')
    for d in report["machine"]["devices"]:
        lines.append(f"{indent}  {_dot_id(prefix + 'legend ' + d['name'])} "
                     f"[label={_dot_id(d['name'])}, fillcolor={_dot_id(d['color'])}];")
    lines.append(f"{indent}  {_dot_id(prefix + 'legend transfer')} [label=\"transfer\", "
                 f'shape=cds, style="filled,dashed", fillcolor={_dot_id(_TRANSFER_COLOR)}];')
    lines.append(f"{indent}}}")
    return lines


# ----------------------------------------------------------------------------------------------
# Graph layout (for the HTML page)

BOX_W, BOX_H, GAP_X, GAP_Y, MARGIN = 150, 38, 24, 44, 16


def layout_graph(report: Mapping[str, Any]) -> dict[str, tuple[float, float]]:
    """Top-left corner of each node's box: layers by longest path from the inputs (topological
    depth), order inside a layer by the mean position of the node's predecessors (a few
    barycentre sweeps, which removes most edge crossings in layered drawings)."""
    names = [n["name"] for n in report["nodes"]] + [t["name"] for t in report["transfers"]]
    preds: dict[str, list[str]] = {n: [] for n in names}
    for e in report["edges"]:
        if e["src"] in preds and e["dst"] in preds:
            preds[e["dst"]].append(e["src"])
    order = _topological(names, preds)
    depth: dict[str, int] = {}
    for n in order:
        depth[n] = 1 + max((depth[p] for p in preds[n]), default=-1)
    layers: dict[int, list[str]] = {}
    for n in order:
        layers.setdefault(depth[n], []).append(n)
    succs: dict[str, list[str]] = {n: [] for n in names}
    for n, ps in preds.items():
        for p in ps:
            succs[p].append(n)
    pos = {n: float(i) for layer in layers.values() for i, n in enumerate(layer)}
    keys = sorted(layers)
    for sweep in range(4):
        seq = keys if sweep % 2 == 0 else list(reversed(keys))
        near = preds if sweep % 2 == 0 else succs
        for k in seq:
            layer = layers[k]
            bary = {n: (sum(pos[p] for p in near[n]) / len(near[n]) if near[n] else pos[n])
                    for n in layer}
            layer.sort(key=lambda n: (bary[n], pos[n]))
            for i, n in enumerate(layer):
                pos[n] = float(i)
    widest = max((len(v) for v in layers.values()), default=1)
    coords: dict[str, tuple[float, float]] = {}
    for k in keys:
        layer = layers[k]
        offset = (widest - len(layer)) * (BOX_W + GAP_X) / 2
        for i, n in enumerate(layer):
            coords[n] = (MARGIN + offset + i * (BOX_W + GAP_X), MARGIN + k * (BOX_H + GAP_Y))
    return coords


def _topological(names: Sequence[str], preds: Mapping[str, list[str]]) -> list[str]:
    """``names`` in a topological order of ``preds``, ties by position."""
    at = {n: i for i, n in enumerate(names)}
    succs: list[set[int]] = [set() for _ in names]
    for n in names:
        for p in preds[n]:
            succs[at[p]].add(at[n])
    order = toposort(len(names), succs)
    return list(names) if order is None else [names[i] for i in order]  # plans are acyclic


# ----------------------------------------------------------------------------------------------
# HTML


def _esc(text: Any) -> str:
    return html.escape(str(text), quote=True)


def _clip(text: str, chars: int) -> str:
    return text if len(text) <= chars else text[:chars - 1] + "\u2026"


def _graph_svg(report: Mapping[str, Any]) -> str:
    coords = layout_graph(report)
    colors = {d["name"]: d["color"] for d in report["machine"]["devices"]}
    width = max((x for x, _ in coords.values()), default=0) + BOX_W + MARGIN
    height = max((y for _, y in coords.values()), default=0) + BOX_H + MARGIN
    parts = [f'<svg id="graph" xmlns="http://www.w3.org/2000/svg" width="{width:.0f}" '
             f'height="{height:.0f}" viewBox="0 0 {width:.0f} {height:.0f}">',
             '<defs><marker id="arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="7" '
             'markerHeight="7" orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z" '
             'fill="#666"/></marker></defs>', '<g class="edges">']
    for e in report["edges"]:
        if e["src"] not in coords or e["dst"] not in coords:
            continue
        x1, y1 = coords[e["src"]]
        x2, y2 = coords[e["dst"]]
        ax, ay, bx, by = x1 + BOX_W / 2, y1 + BOX_H, x2 + BOX_W / 2, y2
        mid = (ay + by) / 2
        parts.append(f'<path class="edge" data-src="{_esc(e["src"])}" data-dst="{_esc(e["dst"])}"'
                     f' d="M{ax:.1f},{ay:.1f} C{ax:.1f},{mid:.1f} {bx:.1f},{mid:.1f} {bx:.1f},'
                     f'{by:.1f}" marker-end="url(#arrow)"><title>{_esc(e["src"])} -&gt; '
                     f'{_esc(e["dst"])}: {_esc(fmt_bytes(e["bytes"]))}</title></path>')
    parts.append('</g><g class="nodes">')
    for n in report["nodes"]:
        x, y = coords[n["name"]]
        rx = BOX_H / 2 if n["op"] == "input" else 6
        tip = (f"{n['name']} ({n['op']}) on {n['device']}\n{_reason_text(n['reason'])}\n"
               f"start {fmt_time(n['start'])}, time {fmt_time(n['time'])}")
        parts.append(
            f'<g class="node" data-node="{_esc(n["name"])}" data-device="{_esc(n["device"])}" '
            f'transform="translate({x:.1f},{y:.1f})"><title>{_esc(tip)}</title>'
            f'<rect width="{BOX_W}" height="{BOX_H}" rx="{rx}" '
            f'fill="{colors.get(n["device"], "#fff")}"/>'
            f'<text x="{BOX_W / 2}" y="15">{_esc(_clip(n["name"], 22))}</text>'
            f'<text class="sub" x="{BOX_W / 2}" y="30">{_esc(_clip(n["op"], 12))} · '
            f'{_esc(n["device"])}</text></g>')
    for t in report["transfers"]:
        x, y = coords[t["name"]]
        w, h = BOX_W, BOX_H
        arrow = (f"M0,0 L{w - 14},0 L{w},{h / 2} L{w - 14},{h} L0,{h} L10,{h / 2} z")
        tip = (f"{t['name']}: {t['direction']} {t['src']} -> {t['dst']}, "
               f"{fmt_bytes(t['bytes'])}\nconsumers: {', '.join(t['consumers']) or 'output'}")
        parts.append(
            f'<g class="node transfer" data-node="{_esc(t["name"])}" '
            f'data-device="{_esc(t["device"])}" transform="translate({x:.1f},{y:.1f})">'
            f'<title>{_esc(tip)}</title><path d="{arrow}" fill="{_TRANSFER_COLOR}" '
            f'stroke="{colors.get(t["device"], "#000")}"/>'
            f'<text x="{w / 2}" y="15">{_esc(t["direction"])} {_esc(fmt_bytes(t["bytes"]))}'
            f'</text><text class="sub" x="{w / 2}" y="30">{_esc(t["src"])} \u2192 '
            f'{_esc(t["dst"])}</text></g>')
    parts.append("</g></svg>")
    return "".join(parts)


def _nice_step(span: float, ticks: int = 8) -> float:
    raw = span / max(ticks, 1)
    if raw <= 0:
        return 1.0
    mag = 10 ** math.floor(math.log10(raw))
    for m in (1, 2, 2.5, 5, 10):
        if m * mag >= raw:
            return m * mag
    return 10 * mag


def _lanes(report: Mapping[str, Any]) -> list[str]:
    used = {n["lane"] for n in report["nodes"] if n["op"] != "input"}
    used |= {t["lane"] for t in report["transfers"]}
    lanes = []
    for d in report["machine"]["devices"]:
        for lane in (d["name"], f"{d['name']}/h2d", f"{d['name']}/d2h"):
            if lane in used or lane == d["name"]:
                lanes.append(lane)
    return lanes


def _gantt_svg(report: Mapping[str, Any]) -> str:
    colors = {d["name"]: d["color"] for d in report["machine"]["devices"]}
    summary = report["summary"]
    lanes = _lanes(report)
    left, right, top, row, bar = 110, 24, 26, 30, 20
    width = 1100
    span = max([summary["makespan"], summary["lower_bound"]]
               + [n["finish"] for n in report["nodes"]]
               + [t["finish"] for t in report["transfers"]]) or 1e-6
    scale = (width - left - right) / span
    height = top + row * len(lanes) + 34
    y_of = {lane: top + i * row for i, lane in enumerate(lanes)}
    parts = [f'<svg id="gantt" xmlns="http://www.w3.org/2000/svg" width="{width}" '
             f'height="{height}" viewBox="0 0 {width} {height}">']
    step = _nice_step(span)
    k = 0
    while k * step <= span * 1.0001:
        x = left + k * step * scale
        parts.append(f'<line class="tick" x1="{x:.1f}" y1="{top - 6}" x2="{x:.1f}" '
                     f'y2="{height - 30}"/><text class="axis" x="{x:.1f}" y="{height - 14}">'
                     f'{_esc(fmt_time(k * step))}</text>')
        k += 1
    for lane in lanes:
        y = y_of[lane]
        parts.append(f'<text class="lane" x="{left - 8}" y="{y + bar / 2 + 4}">{_esc(lane)}'
                     f'</text><rect class="lane-bg" x="{left}" y="{y}" '
                     f'width="{width - left - right}" height="{bar}"/>')
    items = [(n, False) for n in report["nodes"] if n["op"] != "input"]
    items += [(t, True) for t in report["transfers"]]
    for item, is_transfer in items:
        lane = item["lane"]
        if lane not in y_of:
            continue
        x = left + item["start"] * scale
        w = max(item["time"] * scale, 1.0)
        y = y_of[lane]
        streamed = is_transfer and item.get("streamed", False)
        fill = (_STREAMED_COLOR if streamed else _TRANSFER_COLOR) if is_transfer \
            else colors.get(item["device"], "#999")
        label = item["name"]
        what = (f"{'streamed weight, ' if streamed else ''}{item['direction']} "
                f"{fmt_bytes(item['bytes'])}" if is_transfer else f"{item['op']}")
        tip = (f"{label} ({what}) on {lane}\nstart {fmt_time(item['start'])}, "
               f"finish {fmt_time(item['finish'])}, time {fmt_time(item['time'])}")
        cls = ("bar transfer streamed" if streamed else "bar transfer") if is_transfer \
            else "bar"
        stroke = f' stroke="{colors.get(item["device"], "#000")}"' if is_transfer else ""
        parts.append(f'<g class="{cls}" data-node="{_esc(label)}" '
                     f'data-device="{_esc(item["device"])}"><title>{_esc(tip)}</title>'
                     f'<rect x="{x:.2f}" y="{y}" width="{w:.2f}" height="{bar}" fill="{fill}"'
                     f'{stroke}/>')
        if w > 7 * min(len(label), 18):
            parts.append(f'<text x="{x + 3:.1f}" y="{y + 14}">{_esc(_clip(label, 18))}</text>')
        parts.append("</g>")
    for value, cls, name in ((summary["makespan"], "makespan", "makespan"),
                             (summary["lower_bound"], "bound", "lower bound")):
        x = left + value * scale
        parts.append(f'<line class="{cls}" x1="{x:.1f}" y1="{top - 10}" x2="{x:.1f}" '
                     f'y2="{height - 30}"><title>{name} {_esc(fmt_time(value))}</title></line>')
    parts.append(f'<text class="axis-title" x="{left}" y="14">estimated time from the start of '
                 f'a run (makespan {_esc(fmt_time(summary["makespan"]))}, lower bound '
                 f'{_esc(fmt_time(summary["lower_bound"]))})</text>')
    parts.append("</svg>")
    return "".join(parts)


def _html_table(table_id: str, headers: Sequence[str], rows: Sequence[Sequence[Any]],
                keys: Sequence[str] = (), numeric: Sequence[int] = ()) -> str:
    head = "".join(f'<th data-col="{i}"{" class=num" if i in numeric else ""}>{_esc(h)}</th>'
                   for i, h in enumerate(headers))
    body = []
    for r, key in zip(rows, list(keys) + [""] * (len(rows) - len(keys))):
        cells = []
        for c in r:
            if isinstance(c, tuple):  # (shown text, sort key)
                cells.append(f'<td data-sort="{c[1]}" class="num">{_esc(c[0])}</td>')
            else:
                cells.append(f"<td>{_esc(c)}</td>")
        attr = f' data-node="{_esc(key)}"' if key else ""
        body.append(f"<tr{attr}>{''.join(cells)}</tr>")
    return (f'<table id="{table_id}" class="sortable"><thead><tr>{head}</tr></thead>'
            f'<tbody>{"".join(body)}</tbody></table>')


_CSS = """
body{font:14px/1.4 system-ui,-apple-system,'Segoe UI',Helvetica,Arial,sans-serif;margin:20px;
 color:#222;background:#fafafa}
h1{font-size:20px;margin:0 0 4px}h2{font-size:16px;margin:22px 0 8px}
.meta{color:#555}.cards{display:flex;gap:12px;flex-wrap:wrap;margin:12px 0}
.card{background:#fff;border:1px solid #ddd;border-radius:6px;padding:8px 12px;min-width:130px}
.card b{display:block;font-size:18px}.card span{color:#666;font-size:12px}
.legend{display:flex;gap:10px;flex-wrap:wrap;margin:6px 0}
.legend span{cursor:pointer;padding:2px 8px;border-radius:4px;border:1px solid #bbb}
.scroll{overflow:auto;max-height:640px;border:1px solid #ddd;background:#fff;border-radius:6px}
svg text{font-size:11px;text-anchor:middle;fill:#111;pointer-events:none}
svg text.sub{font-size:10px;fill:#333}
.node rect,.node path{stroke:#333;stroke-width:1}.node.transfer path{stroke-dasharray:4 2;
 stroke-width:2}
.edge{fill:none;stroke:#888;stroke-width:1.2}
#gantt text{text-anchor:start;font-size:10px}#gantt text.lane{text-anchor:end;font-size:11px}
#gantt text.axis{text-anchor:middle}#gantt text.axis-title{font-size:12px;fill:#444}
#gantt .tick{stroke:#e6e6e6}#gantt .lane-bg{fill:#f3f3f3}
#gantt .bar rect{stroke:#333;stroke-width:.5}#gantt .bar.transfer rect{stroke-width:1.5;
 stroke-dasharray:3 2}
#gantt .makespan{stroke:#c00;stroke-width:1.5}#gantt .bound{stroke:#06c;stroke-width:1.5;
 stroke-dasharray:5 3}
.hl rect,.hl path{stroke:#000!important;stroke-width:3!important}tr.hl{background:#fff3b0}
.dim{opacity:.15}
table{border-collapse:collapse;background:#fff;font-size:12px}
th,td{border:1px solid #ddd;padding:3px 7px;text-align:left;vertical-align:top}
th{background:#eee;cursor:pointer;position:sticky;top:0}td.num,th.num{text-align:right}
.swatch{display:inline-block;width:10px;height:10px;border:1px solid #555;margin-right:5px}
"""

_JS = """
(function(){
  function all(sel){return Array.prototype.slice.call(document.querySelectorAll(sel));}
  var graphNodes=all('#graph .node'), bars=all('#gantt .bar'), drawn=0;
  graphNodes.concat(bars).forEach(function(el){
    var b=el.getBBox(); if(b.width>0&&b.height>0){drawn++;}
  });
  function mark(name,on){
    all('[data-node]').forEach(function(el){
      if(el.getAttribute('data-node')===name){el.classList.toggle('hl',on);}
    });
  }
  all('[data-node]').forEach(function(el){
    el.addEventListener('mouseenter',function(){mark(el.getAttribute('data-node'),true);});
    el.addEventListener('mouseleave',function(){mark(el.getAttribute('data-node'),false);});
  });
  var only=null;
  all('.legend span[data-device]').forEach(function(sw){
    sw.addEventListener('click',function(){
      var dev=sw.getAttribute('data-device'); only=(only===dev)?null:dev;
      all('#graph .node, #gantt .bar').forEach(function(el){
        el.classList.toggle('dim',only!==null&&el.getAttribute('data-device')!==only);
      });
    });
  });
  all('table.sortable').forEach(function(table){
    all('#'+table.id+' th').forEach(function(th){
      th.addEventListener('click',function(){
        var col=+th.getAttribute('data-col'), body=table.tBodies[0];
        var dir=th.getAttribute('data-dir')==='asc'?-1:1;
        th.setAttribute('data-dir',dir>0?'asc':'desc');
        var rows=Array.prototype.slice.call(body.rows);
        rows.sort(function(a,b){
          var x=a.cells[col],y=b.cells[col];
          var p=x.getAttribute('data-sort'),q=y.getAttribute('data-sort');
          if(p!==null&&q!==null){return dir*(parseFloat(p)-parseFloat(q));}
          return dir*x.textContent.localeCompare(y.textContent);
        });
        rows.forEach(function(r){body.appendChild(r);});
      });
    });
  });
  var body=document.body;
  body.setAttribute('data-graph-nodes',String(graphNodes.length));
  body.setAttribute('data-gantt-bars',String(bars.length));
  body.setAttribute('data-drawn',String(drawn));
  var status=document.getElementById('status');
  status.textContent='rendered '+graphNodes.length+' graph nodes and '+bars.length+
    ' schedule bars ('+drawn+' with a visible size)';
  body.setAttribute('data-rendered', drawn===graphNodes.length+bars.length?'1':'0');
})();
"""


def render_html(report: Mapping[str, Any]) -> str:
    """One self-contained HTML page: summary, legend, graph and Gantt chart (SVG), tables."""
    model, summary = report["model"], report["summary"]
    title = f"hetero placement: {model['name']}"
    cards = [("estimated makespan", fmt_time(summary["makespan"])),
             ("lower bound", fmt_time(summary["lower_bound"]))]
    for p, v in summary["policies"].items():
        cards.append((f"{p} policy", fmt_time(v) if v is not None else "n/a"))
    cards += [("transfers", f"{summary['transfers']} ({fmt_bytes(summary['transfer_bytes'])})"),
              ("nodes", str(summary["nodes"]))]
    card_html = "".join(f'<div class="card"><span>{_esc(k)}</span><b>{_esc(v)}</b></div>'
                        for k, v in cards)
    legend = "".join(f'<span data-device="{_esc(d["name"])}" style="background:{d["color"]}" '
                     f'title="click: show only this device">{_esc(d["name"])} '
                     f'({_esc(d["backend"])})</span>' for d in report["machine"]["devices"])
    legend += f'<span style="background:{_TRANSFER_COLOR};border-style:dashed">transfer</span>'
    node_rows = [[n["name"], n["op"], n["device"], (fmt_time(n["start"]), n["start"]),
                  (fmt_time(n["finish"]), n["finish"]), (fmt_time(n["time"]), n["time"]),
                  _reason_text(n["reason"]), n.get("where") or ""] for n in report["nodes"]]
    transfer_rows = [[t["name"], t["direction"], f"{t['src']} \u2192 {t['dst']}",
                      (fmt_bytes(t["bytes"]), t["bytes"]), (fmt_time(t["start"]), t["start"]),
                      (fmt_time(t["time"]), t["time"]),
                      ", ".join(t["consumers"]) or "(graph output)"]
                     for t in report["transfers"]]
    device_rows = [[d["name"], d["kind"], d["nodes"], (fmt_time(d["busy"]), d["busy"]),
                    (f"{d['utilization'] * 100:.0f}%", d["utilization"]), d["transfers"],
                    (fmt_time(d["copy_busy"]), d["copy_busy"]),
                    (fmt_bytes(d["arena_bytes"]), d["arena_bytes"] or 0), d["memory_space"]]
                   for d in report["devices"]]
    src = f" from {_esc(model['source'])}" if model.get("source") else ""
    return "".join([
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">",
        f"<title>{_esc(title)}</title><style>{_CSS}</style></head>",
        '<body data-rendered="0">',
        f"<h1>{_esc(title)}</h1>",
        f'<div class="meta">model <b>{_esc(model["name"])}</b>{src} · machine '
        f'<b>{_esc(report["machine"]["spec"])}</b> · policy <b>{_esc(report["policy"])}</b> · '
        + (f'{_esc(_cost_model_text(report.get("cost_model")))} · '
           if report.get("cost_model") else "")
        + f'{_esc(report["generator"])} · report schema {_esc(report["schema_version"])}</div>',
        f'<div class="cards">{card_html}</div>',
        f'<div class="legend">{legend}</div>',
        '<div class="meta" id="status">(the page script has not run)</div>',
        "<h2>Schedule (estimated)</h2>",
        f'<div class="scroll">{_gantt_svg(report)}</div>',
        '<div class="meta">one row per device and GPU copy engine; dashed grey bars are '
        'transfers; red line: estimated makespan; dashed blue line: lower bound. Hover a bar, '
        'box or table row to highlight the node everywhere; click a device above to show only '
        'its nodes.</div>',
        "<h2>Graph, coloured by device</h2>",
        f'<div class="scroll">{_graph_svg(report)}</div>',
        "<h2>Nodes</h2>",
        _html_table("nodes", ["node", "op", "device", "start", "finish", "time", "reason",
                              "source"], node_rows, [n["name"] for n in report["nodes"]],
                    numeric=(3, 4, 5)),
        "<h2>Transfers</h2>",
        _html_table("transfers", ["transfer", "dir", "route", "bytes", "start", "time",
                                  "consumers"], transfer_rows,
                    [t["name"] for t in report["transfers"]], numeric=(3, 4, 5))
        if transfer_rows else "<p>No transfers: every value stays in one memory space.</p>",
        "<h2>Devices</h2>",
        _html_table("devices", ["device", "kind", "nodes", "busy", "util", "copies",
                                "copy time", "arena", "memory space"], device_rows,
                    numeric=(2, 3, 4, 5, 6, 7)),
        f"<script>{_JS}</script></body></html>\n",
    ])


# ----------------------------------------------------------------------------------------------
# A cluster of several nodes (DOT and HTML)
#
# The cluster document is plain data, the one ``hetero place --format json`` writes for a cluster:
# ``{"cluster": {"spec", "network", ...}, "transfers": [{"value", "src", "dst", "kind",
# "bytes", "seconds"}], "nodes": [{"name", "report"}]}``, each ``report`` one node's placement
# report from ``build``. The renderers below draw every node's report the way the single-machine
# renderers do and add the node-to-node (n2n) transfers between them.


def _cluster_endpoint(report: Mapping[str, Any], value: str, *, sending: bool) -> str | None:
    """The node of ``report`` that sends (computes) or receives (takes as input) ``value``."""
    names = [n["name"] for n in report["nodes"] if n["name"] == value
             and (n["op"] == "input") != sending]
    names = names or [n["name"] for n in report["nodes"] if n["name"] == value]
    return names[0] if names else None


def _network_text(cluster: Mapping[str, Any]) -> str:
    net = cluster.get("network") or {}
    if not net.get("bandwidth"):
        return "network (unknown)"
    return (f"network {net['bandwidth'] * 8 / 1e9:.4g} Gb/s, "
            f"{fmt_time(net.get('latency') or 0.0)}")


def _objective_text(doc: Mapping[str, Any]) -> str:
    """" · objective latency: estimated 52.1 ms a run, 48.2 ms between pipelined results"
    (empty for a document without the placement's estimates)."""
    est = doc.get("estimate")
    if not est:
        return ""
    return (f" \u00b7 objective {doc.get('objective', '?')}: estimated "
            f"{fmt_time(est['latency'])} a run, {fmt_time(est['interval'])} between pipelined "
            "results")


def render_cluster_dot(doc: Mapping[str, Any]) -> str:
    """Graphviz DOT for a cluster: one ``cluster_<node>`` subgraph per node holding that node's
    plan as ``render_dot`` draws it (IDs prefixed ``<node>/``), and a bold edge per node-to-node
    transfer labelled with its value, bytes and estimated network time."""
    cluster = doc["cluster"]
    title = f"{cluster['spec']} - {_network_text(cluster)}{_objective_text(doc)}"
    lines = [f"digraph {_dot_id('cluster ' + cluster['spec'])} {{",
             "  rankdir=TB; compound=true;",
             f"  label={_dot_id(title)}; "
             'labelloc=t; fontname="Helvetica";',
             '  node [shape=box, style="rounded,filled", fontname="Helvetica", fontsize=10];',
             '  edge [fontname="Helvetica", fontsize=8, color="#555555"];']
    reports = {n["name"]: n["report"] for n in doc["nodes"]}
    extra: dict[str, list[str]] = {name: [] for name in reports}
    edges = []
    for t in doc["transfers"]:
        ends = []
        for node, sending in ((t["src"], True), (t["dst"], False)):
            found = _cluster_endpoint(reports[node], t["value"], sending=sending) \
                if node in reports else None
            if found is None:  # drawn as a stand-in so that the edge has two declared ends
                found = ("send " if sending else "receive ") + t["value"]
                extra.setdefault(node, []).append(
                    f"    {_dot_id(node + '/' + found)} [label={_dot_id(found)}, "
                    'shape=plaintext, style=""];')
            ends.append(f"{node}/{found}")
        label = f"{t['value']} ({t.get('kind', 'n2n')})\n{fmt_bytes(t['bytes'])}, " \
                f"{fmt_time(t['seconds'])}"
        style = ('color="#c00000", fontcolor="#c00000", penwidth=2, style=bold'
                 if t.get("kind", "n2n") == "n2n" else  # a hand-off between stages of a node
                 'color="#777777", fontcolor="#777777", style=dashed')
        edges.append(f"  {_dot_id(ends[0])} -> {_dot_id(ends[1])} [label={_dot_id(label)}, "
                     f"{style}];")
    node_of = {n["name"]: n.get("node", n["name"]) for n in doc["nodes"]}
    for name, report in reports.items():
        machine = report["machine"]["spec"]
        title = f"node {node_of[name]}" + (f", stage {name}" if name != node_of[name] else "")
        lines.append(f"  subgraph {_dot_id('cluster_' + name)} {{")
        lines.append(f"    label={_dot_id(f'{title}: {machine}')}; style=rounded; "
                     'color="#888888";')
        lines += _dot_statements(report, prefix=f"{name}/", indent="    ")
        lines += extra.get(name, [])
        lines.append("  }")
    lines += edges
    lines.append("}")
    return "\n".join(lines) + "\n"


def render_cluster_html(doc: Mapping[str, Any]) -> str:
    """One self-contained HTML page for a cluster: the node-to-node transfers, then a section per
    node with its summary and nodes table and that node's full ``render_html`` page embedded
    (``<iframe srcdoc>``: the page is inline, nothing is fetched, and its script and element IDs
    stay its own)."""
    cluster = doc["cluster"]
    title = f"hetero cluster placement: {cluster['spec']}"
    crossing = [[t["value"], t.get("kind", "n2n"), f"{t['src']} \u2192 {t['dst']}",
                 (fmt_bytes(t["bytes"]), t["bytes"]), (fmt_time(t["seconds"]), t["seconds"])]
                for t in doc["transfers"]]
    parts = ["<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">",
             f"<title>{_esc(title)}</title><style>{_CSS}"
             "iframe{width:100%;height:900px;border:1px solid #ddd;background:#fff}"
             "section{margin-top:28px}</style></head><body>",
             f"<h1>{_esc(title)}</h1>",
             f'<div class="meta">{len(doc["nodes"])} stage(s) · '
             f'{_esc(_network_text(cluster))}{_esc(_objective_text(doc))}</div>',
             "<h2>Values between stages (kind n2n: over the network; stage: within a "
             "node)</h2>",
             _html_table("n2n", ["value", "kind", "route", "bytes", "time"], crossing,
                         numeric=(3, 4)) if crossing
             else "<p>No node-to-node transfers: no value crosses the network.</p>"]
    for i, node in enumerate(doc["nodes"]):
        report, name = node["report"], node["name"]
        summary = report["summary"]
        cards = [("machine", report["machine"]["spec"]),
                 ("estimated makespan", fmt_time(summary["makespan"])),
                 ("lower bound", fmt_time(summary["lower_bound"])),
                 ("transfers", f"{summary['transfers']} "
                               f"({fmt_bytes(summary['transfer_bytes'])})"),
                 ("nodes", str(summary["nodes"]))]
        rows = [[n["name"], n["op"], n["device"], (fmt_time(n["time"]), n["time"])]
                for n in report["nodes"]]
        parts += [f'<section id="node-{i}" data-cluster-node="{_esc(name)}">',
                  f"<h2>Node {_esc(name)}</h2>",
                  '<div class="cards">' + "".join(
                      f'<div class="card"><span>{_esc(k)}</span><b>{_esc(v)}</b></div>'
                      for k, v in cards) + "</div>",
                  _html_table(f"nodes-{i}", ["node", "op", "device", "time"], rows,
                              numeric=(3,)),
                  f"<h2>Placement report of node {_esc(name)}</h2>",
                  f'<iframe title="placement report of node {_esc(name)}" '
                  f'sandbox="allow-scripts" srcdoc="{_esc(render_html(report))}"></iframe>',
                  "</section>"]
    parts.append("</body></html>\n")
    return "".join(parts)


CLUSTER_RENDERERS = {"dot": render_cluster_dot, "html": render_cluster_html}


def render_cluster(doc: Mapping[str, Any], fmt: str) -> str:
    """A cluster document (see above) as DOT or HTML."""
    renderer = CLUSTER_RENDERERS.get(fmt)
    if renderer is None:
        raise HeteroError(f"no cluster renderer for format {fmt!r} "
                          f"(known: {', '.join(CLUSTER_RENDERERS)})")
    return renderer(doc)


def render_svg(report: Mapping[str, Any]) -> str:
    """The report's timeline alone (the HTML page's Gantt chart: every node and copy on its
    lane at its estimated start; streamed weights' copies in blue) as a standalone SVG."""
    rules = "".join(line for line in _CSS.splitlines(keepends=True)
                    if line.startswith(("#gantt", " stroke-dasharray", "svg text")))
    svg = _gantt_svg(report)
    head, rest = svg.split(">", 1)
    return (f'<?xml version="1.0" encoding="UTF-8"?>\n{head}><style>{rules}'
            f'#gantt{{font-family:Helvetica,Arial,sans-serif;background:#fff}}</style>{rest}\n')


RENDERERS = {"table": render_table, "json": render_json, "dot": render_dot,
             "html": render_html, "svg": render_svg}


def render(report: Mapping[str, Any], fmt: str) -> str:
    """The report in one of ``FORMATS``."""
    renderer = RENDERERS.get(fmt)
    if renderer is None:
        raise HeteroError(f"unknown report format {fmt!r} (known: {', '.join(FORMATS)})")
    return renderer(report)
