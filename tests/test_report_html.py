"""The HTML placement report, opened in headless Chromium.

``--dump-dom`` gives the DOM after the page's script ran: the script measures every graph node and
schedule bar the browser laid out (``getBBox``) and marks ``<body data-rendered="1">`` only when
all of them have a visible size. ``--screenshot`` must give a PNG that is not one flat colour.
Skips, saying why, where Chromium is not installed (CI installs Debian's chromium package).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import struct
import subprocess
import sys
import zlib

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIM = "cpu:2,sim:1@h100"


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return "/usr/bin/chromium" if os.path.exists("/usr/bin/chromium") else None


CHROMIUM = _chromium()
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="headless Chromium is not installed (apt-get install chromium; "
                             ".ci/run installs it)")


def _browser(page: str, profile: str, *flags: str) -> subprocess.CompletedProcess:
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
           "--no-first-run", "--disable-background-networking", "--disable-component-update",
           "--disable-sync", f"--user-data-dir={profile}", *flags, f"file://{page}"]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=90)


def _hetero(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, "-m", "hetero.cli", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc


def png_pixels(data: bytes) -> tuple[int, int, list[bytes]]:
    """(width, height, rows of raw pixel bytes) of an 8-bit RGB or RGBA PNG."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, idat, width = 8, b"", 0
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos:pos + 4])
        kind, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + length]
        if kind == b"IHDR":
            width, height, depth, color = struct.unpack(">IIBB", body[:10])
            assert depth == 8 and color in (2, 6), (depth, color)
            bpp = 3 if color == 2 else 4
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    raw = zlib.decompress(idat)
    stride = width * bpp
    rows, prev = [], bytearray(stride)
    for y in range(height):
        line = raw[y * (stride + 1):(y + 1) * (stride + 1)]
        ftype, cur = line[0], bytearray(line[1:])
        for i in range(stride):
            a = cur[i - bpp] if i >= bpp else 0
            b = prev[i]
            c = prev[i - bpp] if i >= bpp else 0
            if ftype == 1:
                cur[i] = (cur[i] + a) & 255
            elif ftype == 2:
                cur[i] = (cur[i] + b) & 255
            elif ftype == 3:
                cur[i] = (cur[i] + (a + b) // 2) & 255
            elif ftype == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                pred = a if pa <= pb and pa <= pc else (b if pb <= pc else c)
                cur[i] = (cur[i] + pred) & 255
        rows.append(bytes(cur))
        prev = cur
    return width, height, rows


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    folder = tmp_path_factory.mktemp("html")
    html = folder / "cnn.html"
    _hetero("place", "examples/cnn.onnx", "--devices", SIM, "--format", "html", "-o", str(html))
    doc = json.loads(_hetero("place", "examples/cnn.onnx", "--devices", SIM, "--format", "json",
                             "--no-compare").stdout)
    return html, doc, folder


def test_page_script_draws_graph_and_gantt_chart(page):
    html, doc, folder = page
    proc = _browser(str(html), str(folder / "profile-dom"), "--dump-dom")
    assert proc.returncode == 0, proc.stderr[-2000:]
    dom = proc.stdout
    body = re.search(r"<body[^>]*>", dom).group(0)
    nodes = len(doc["nodes"]) + len(doc["transfers"])
    bars = len([n for n in doc["nodes"] if n["op"] != "input"]) + len(doc["transfers"])
    assert doc["transfers"], "the example should move data to the simulated GPU"
    assert f'data-graph-nodes="{nodes}"' in body
    assert f'data-gantt-bars="{bars}"' in body
    assert f'data-drawn="{nodes + bars}"' in body
    assert 'data-rendered="1"' in body
    assert f"rendered {nodes} graph nodes and {bars} schedule bars" in dom
    for n in doc["nodes"] + doc["transfers"]:
        assert f'data-node="{n["name"]}"' in dom
    for lane in ("cpu:0", "cpu:1", "gpu:0", "gpu:0/h2d", "gpu:0/d2h"):
        assert re.search(rf'<text class="lane"[^>]*>{re.escape(lane)}</text>', dom), lane


def test_screenshot_is_not_blank(page):
    html, doc, folder = page
    shot = folder / "shot.png"
    proc = _browser(str(html), str(folder / "profile-shot"), f"--screenshot={shot}",
                    "--window-size=1200,900", "--hide-scrollbars")
    assert proc.returncode == 0 and shot.exists(), proc.stderr[-2000:]
    width, height, rows = png_pixels(shot.read_bytes())
    assert (width, height) == (1200, 900)
    colours = set()
    for row in rows[::4]:
        bpp = len(row) // width
        colours.update(row[i:i + 3] for i in range(0, len(row), bpp))
    assert len(colours) > 20, f"the screenshot has only {len(colours)} colours"
    # the simulated GPU's colour fills its bars and boxes in the visible part of the page
    gpu = next(d["color"] for d in doc["machine"]["devices"] if d["name"] == "gpu:0")
    assert bytes.fromhex(gpu[1:]) in colours


def test_resnet50_sized_page_renders(tmp_path):
    """A graph of ResNet-50's size (onnx's light model, about 90 nodes after optimization) on
    four CPU workers and two simulated GPUs: every box and bar laid out."""
    onnx = pytest.importorskip("onnx")
    model = os.path.join(os.path.dirname(onnx.__file__), "backend", "test", "data", "light",
                         "light_resnet50.onnx")
    if not os.path.isfile(model):
        pytest.skip(f"onnx does not ship {model}")
    spec = "cpu:4,sim:2@t4"
    html = tmp_path / "resnet50.html"
    _hetero("place", model, "--devices", spec, "--format", "html", "-o", str(html),
            "--no-compare")
    doc = json.loads(_hetero("place", model, "--devices", spec, "--format", "json",
                             "--no-compare").stdout)
    assert doc["summary"]["nodes"] > 80
    proc = _browser(str(html), str(tmp_path / "profile"), "--dump-dom")
    assert proc.returncode == 0, proc.stderr[-2000:]
    body = re.search(r"<body[^>]*>", proc.stdout).group(0)
    nodes = len(doc["nodes"]) + len(doc["transfers"])
    bars = len([n for n in doc["nodes"] if n["op"] != "input"]) + len(doc["transfers"])
    assert f'data-graph-nodes="{nodes}"' in body and f'data-gantt-bars="{bars}"' in body
    assert 'data-rendered="1"' in body


def test_a_plan_with_streamed_weights_renders(tmp_path):
    """Under a memory budget the page draws every streamed weight's copy (blue, on the h2d
    lane) and the graph with their order-only edges, and its script finishes."""
    model = tmp_path / "dec.py"
    model.write_text(f"import sys\nsys.path.insert(0, {ROOT!r})\n"
                     "from examples.gpt_offload import decoder_weights, make_decoder\n"
                     "f = make_decoder(decoder_weights(4, 128))\n")
    html = tmp_path / "dec.html"
    common = ("--input", "x=32x128:float32", "--devices", "cpu:2,sim:1@t4", "--memory",
              "gpu:0=1MiB")
    _hetero("place", f"{model}:f", *common, "--format", "html", "-o", str(html))
    doc = json.loads(_hetero("place", f"{model}:f", *common, "--format", "json",
                             "--no-compare").stdout)
    streamed = [t for t in doc["transfers"] if t.get("streamed")]
    assert streamed
    proc = _browser(str(html), str(tmp_path / "profile"), "--dump-dom")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert 'data-rendered="1"' in re.search(r"<body[^>]*>", proc.stdout).group(0)
    assert proc.stdout.count('class="bar transfer streamed"') == len(streamed)
