"""Small models of every common family, exported by both torch exporters, against onnxruntime.

The fixtures in tests/fixtures/models were made by scripts/export_fixtures.py (torch and
onnxscript are not needed here): per model an ``.onnx`` file and ``.npz`` files holding the
inputs and onnxruntime's outputs. Each model runs through one ``hetero.onnx.compile`` on
``cpu:2`` and on ``cpu:2,sim:1`` and must match within 1e-4 relative error (max|a-b| / max|b|
per output). The dynamic-batch models run at batch 1 and batch 4 from one compile.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

pytest.importorskip("onnx")

import hetero.onnx as ho  # noqa: E402

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "models")
MACHINES = ("cpu:2", "cpu:2,sim:1")
RTOL = 1e-4

with open(os.path.join(FIXTURES, "manifest.json")) as _f:
    MANIFEST = json.load(_f)

#: the families issue 12 names: every one must be there, from both exporters
FAMILIES = ("ResNet", "MobileNet v2", "MobileNet v3", "EfficientNet", "RegNet", "ConvNeXt",
            "DenseNet", "GoogLeNet", "ShuffleNet", "SqueezeNet", "ViT", "Swin",
            "BERT-like (padding mask)", "GPT-2-like (causal)",
            "GPT-2-like (mask, past key/values)", "detection/segmentation head", "3-D conv net",
            "ResNet (dynamic batch)")


def rel_error(got: np.ndarray, want: np.ndarray) -> float:
    want = want.astype(np.float64)
    return float(np.max(np.abs(got.astype(np.float64) - want), initial=0.0)
                 / max(np.max(np.abs(want), initial=0.0), 1e-30))


def test_every_family_from_both_exporters():
    have = {(e["family"], e["exporter"]) for e in MANIFEST}
    missing = [(f, x) for f in FAMILIES for x in ("torchscript", "dynamo") if (f, x) not in have]
    assert not missing, missing
    assert any(e["opset"] >= 23 and "Attention" in e["ops"] for e in MANIFEST)


@pytest.mark.parametrize("machine", MACHINES)
@pytest.mark.parametrize("entry", MANIFEST, ids=[e["name"] for e in MANIFEST])
def test_fixture_matches_onnxruntime(entry, machine):
    model = ho.compile(os.path.join(FIXTURES, entry["file"]), machine)
    for case in entry["cases"]:
        with np.load(os.path.join(FIXTURES, case)) as data:
            inputs = [data[f"in:{n}"] for n in entry["inputs"]]
            want = [data[f"out:{i}"] for i in range(sum(k.startswith("out:") for k in data))]
        got = model(*inputs)
        assert len(got) == len(want)
        for i, (g, w) in enumerate(zip(got, want)):
            assert g.shape == w.shape and g.dtype == w.dtype, (case, i, g.shape, w.shape)
            err = rel_error(g, w)
            assert err <= RTOL, f"{case} output {i}: relative error {err:.2e}"
    # one plan per input signature: the dynamic-batch models compiled twice from one compile
    assert len(model.plans) == len(entry["cases"])


@pytest.mark.parametrize("name", ["resnet_dyn.ts", "resnet_dyn.dynamo"])
def test_dynamic_batch_through_onnx_backend_prepare(name):
    """``onnx.backend``'s prepare on a model with a symbolic batch: one BackendRep, run at
    batch 1 and batch 4."""
    import onnx

    entry = next(e for e in MANIFEST if e["name"] == name)
    rep = ho.prepare(onnx.load(os.path.join(FIXTURES, entry["file"])), "CPU")
    for case in entry["cases"]:
        with np.load(os.path.join(FIXTURES, case)) as data:
            (got,) = rep.run([data["in:x"]])
            assert got.shape == data["out:0"].shape
            assert rel_error(got, data["out:0"]) <= RTOL
