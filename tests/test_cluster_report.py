"""``hetero place --format dot|html`` for a cluster of several nodes: one DOT subgraph (one HTML
section) per node holding that node's plan as the single-machine report draws it, plus the
node-to-node (n2n) transfers between them; and the single-machine DOT and HTML left as they were.

The CLI runs in this process (``main``). DOT is checked structurally always (balanced braces,
every edge endpoint declared, every ID unique), parsed back with pydot where it is installed and
rendered by Graphviz ``dot`` where that is on PATH.
"""

from __future__ import annotations

import html.parser
import json
import os
import re
import shutil
import subprocess
import sys

import pytest

from hetero import report
from hetero.cli import main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CNN = os.path.join(ROOT, "examples", "cnn.onnx")
TWO_TOWER = os.path.join(ROOT, "examples", "two_tower.onnx")
REPEATED = "2x(cpu:1,sim:1@t4)"
NAMED = "node0=cpu:1;node1=cpu:1,sim:1"
CASES = [(CNN, REPEATED), (TWO_TOWER, NAMED), (CNN, NAMED)]

_ID = r'"(?:[^"\\]|\\.)*"'
_DECL = re.compile(rf"^\s*({_ID}) \[")
_EDGE = re.compile(rf"^\s*({_ID}) -> ({_ID})")


def _cli(capsys, *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


def _place(capsys, model: str, devices: str, fmt: str, *extra: str) -> str:
    code, out, err = _cli(capsys, "place", model, "--devices", devices, "--format", fmt, *extra)
    assert code == 0, err
    return out


def _unquote(dot_id: str) -> str:
    return dot_id[1:-1].replace('\\"', '"').replace("\\\\", "\\")


def _structure(text: str) -> tuple[set[str], list[tuple[str, str]], list[str]]:
    """(declared node IDs, edges, subgraph names) of DOT written one statement a line; asserts
    balanced braces outside quoted strings, unique IDs and declared edge endpoints."""
    depth = 0
    for line in text.splitlines():
        bare = re.sub(_ID, '""', line)
        for ch in bare:
            depth += {"{": 1, "}": -1}.get(ch, 0)
            assert depth >= 0, line
    assert depth == 0
    declared: list[str] = []
    edges = []
    subgraphs = []
    for line in text.splitlines():
        if m := _EDGE.match(line):
            edges.append((_unquote(m.group(1)), _unquote(m.group(2))))
        elif m := _DECL.match(line):
            declared.append(_unquote(m.group(1)))
        elif m := re.match(rf"^\s*subgraph ({_ID}) \{{", line):
            subgraphs.append(_unquote(m.group(1)))
    assert len(declared) == len(set(declared)), "a node ID is declared twice"
    undeclared = [e for e in edges if e[0] not in declared or e[1] not in declared]
    assert undeclared == []
    return set(declared), edges, subgraphs


def _cluster_doc(capsys, model: str, devices: str) -> dict:
    doc = json.loads(_place(capsys, model, devices, "json"))
    assert len(doc["nodes"]) == 2 and doc["transfers"]
    return doc


@pytest.mark.parametrize(("model", "devices"), CASES)
def test_cluster_dot_has_a_subgraph_per_node_and_the_n2n_edges(capsys, model, devices):
    doc = _cluster_doc(capsys, model, devices)
    text = _place(capsys, model, devices, "dot")
    assert text.startswith("digraph ")
    declared, edges, subgraphs = _structure(text)
    for node in doc["nodes"]:
        name, rep = node["name"], node["report"]
        assert f"cluster_{name}" in subgraphs
        assert f"cluster_{name}/legend" in subgraphs
        for n in rep["nodes"]:  # every op of the partition, under the node's prefix
            assert f"{name}/{n['name']}" in declared
            assert f"{n['op']} on {n['device']}" in text
        for t in rep["transfers"]:
            assert f"{name}/{t['name']}" in declared
        for e in rep["edges"]:
            assert (f"{name}/{e['src']}", f"{name}/{e['dst']}") in edges
    for t in doc["transfers"]:
        assert (f"{t['src']}/{t['value']}", f"{t['dst']}/{t['value']}") in edges
        assert f"{report.fmt_bytes(t['bytes'])}, {report.fmt_time(t['seconds'])}" in text
        assert f"{t['value']} (n2n)" in text


def _pydot_nodes_and_edges(graph) -> tuple[set[str], set[tuple[str, str]]]:
    nodes = {n.get_name() for n in graph.get_nodes()}
    edges = {(e.get_source(), e.get_destination()) for e in graph.get_edges()}
    for sub in graph.get_subgraphs():
        n, e = _pydot_nodes_and_edges(sub)
        nodes |= n
        edges |= e
    return nodes, edges


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # pydot's use of pyparsing
@pytest.mark.parametrize(("model", "devices"), CASES[:2])
def test_cluster_dot_parses_back_with_pydot(capsys, model, devices):
    pydot = pytest.importorskip("pydot")
    doc = _cluster_doc(capsys, model, devices)
    (graph,) = pydot.graph_from_dot_data(_place(capsys, model, devices, "dot"))
    assert {s.get_name() for s in graph.get_subgraphs()} == \
        {f'"cluster_{n["name"]}"' for n in doc["nodes"]}
    nodes, edges = _pydot_nodes_and_edges(graph)
    for node in doc["nodes"]:
        for n in node["report"]["nodes"]:
            assert f'"{node["name"]}/{n["name"]}"' in nodes
    for t in doc["transfers"]:
        assert (f'"{t["src"]}/{t["value"]}"', f'"{t["dst"]}/{t["value"]}"') in edges


@pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz dot is not on PATH")
def test_cluster_dot_renders_with_graphviz(capsys, tmp_path):
    out = tmp_path / "cluster.dot"
    code, _, err = _cli(capsys, "place", CNN, "--devices", REPEATED, "--format", "dot",
                        "-o", str(out))
    assert code == 0 and "wrote dot report of 2 cluster node(s)" in err
    proc = subprocess.run(["dot", "-Tsvg", str(out)], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "<svg" in proc.stdout


class _Page(html.parser.HTMLParser):
    """Sections, table rows (as cell texts) and iframe srcdocs of a page."""

    def __init__(self) -> None:
        super().__init__()
        self.sections: list[str] = []
        self.rows: list[list[str]] = []
        self.srcdocs: list[str] = []
        self.fetches: list[str] = []
        self._cell: list[str] | None = None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "section":
            self.sections.append(a.get("data-cluster-node", ""))
        elif tag == "tr":
            self.rows.append([])
        elif tag in ("td", "th"):
            self._cell = []
        elif tag == "iframe":
            self.srcdocs.append(a.get("srcdoc", ""))
        for key in ("src", "href"):
            if a.get(key):
                self.fetches.append(a[key])

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self.rows[-1].append("".join(self._cell))
            self._cell = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)


@pytest.mark.parametrize(("model", "devices"), CASES[:2])
def test_cluster_html_has_a_section_per_node_and_the_n2n_table(capsys, tmp_path, model,
                                                                 devices):
    doc = _cluster_doc(capsys, model, devices)
    out = tmp_path / "cluster.html"
    code, stdout, err = _cli(capsys, "place", model, "--devices", devices, "--format", "html",
                             "-o", str(out))
    assert code == 0 and stdout == "" and "wrote html report" in err
    page = _Page()
    page.feed(out.read_text())
    assert page.fetches == []  # self-contained
    assert page.sections == [n["name"] for n in doc["nodes"]]
    assert len(page.srcdocs) == len(doc["nodes"])
    for node, srcdoc in zip(doc["nodes"], page.srcdocs):
        assert srcdoc == report.render_html(node["report"])  # the single-machine page itself
        for n in node["report"]["nodes"]:
            assert [n["name"], n["op"], n["device"], report.fmt_time(n["time"])] in page.rows
    for t in doc["transfers"]:
        assert [t["value"], "n2n", f"{t['src']} \u2192 {t['dst']}",
                report.fmt_bytes(t["bytes"]), report.fmt_time(t["seconds"])] in page.rows


def test_cluster_html_to_a_terminal_is_refused(capsys, monkeypatch):
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
    code, _, err = _cli(capsys, "place", CNN, "--format", "html", "--devices", REPEATED)
    assert code == 1 and "--format html writes a self-contained web page: give -o" in err


def test_cluster_table_and_json_still_work(capsys):
    doc = _cluster_doc(capsys, CNN, REPEATED)
    assert doc["format"] == "hetero.cluster-placement/1"
    text = _place(capsys, CNN, REPEATED, "table")
    assert "node-to-node transfers (kind n2n):" in text and "== node node1 ==" in text


@pytest.mark.parametrize("model", [CNN, TWO_TOWER])
def test_single_machine_dot_and_html_are_unchanged(capsys, tmp_path, model):
    """One machine: no cluster subgraphs, no prefixes; the CLI's DOT and HTML are exactly the
    renderers' output for the report that ``--format json`` gives."""
    devices = "cpu:1,sim:1"
    rep = json.loads(_place(capsys, model, devices, "json"))
    dot = _place(capsys, model, devices, "dot")
    assert dot == report.render_dot(rep)
    declared, edges, subgraphs = _structure(dot)
    assert subgraphs == ["cluster_legend"]
    assert {n["name"] for n in rep["nodes"]} <= declared
    out = tmp_path / "one.html"
    code, _, err = _cli(capsys, "place", model, "--devices", devices, "--format", "html",
                        "-o", str(out))
    assert code == 0, err
    assert out.read_text() == report.render_html(rep)
    assert "data-cluster-node" not in out.read_text()


def test_an_n2n_value_without_a_node_of_its_name_gets_declared_stand_ins(capsys):
    doc = _cluster_doc(capsys, CNN, REPEATED)
    doc["transfers"] = [dict(doc["transfers"][0], value="ghost", bytes=8, seconds=1e-4)]
    declared, edges, _ = _structure(report.render_cluster_dot(doc))
    assert ("node0/send ghost", "node1/receive ghost") in edges
    assert {"node0/send ghost", "node1/receive ghost"} <= declared
    with pytest.raises(Exception, match="no cluster renderer"):
        report.render_cluster(doc, "table")
