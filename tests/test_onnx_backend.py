"""onnx's own backend conformance suite (``onnx.backend.test``) run against ``hetero.onnx.Backend``.

Suites: the node tests of every op hetero claims, ``pytorch-converted``, ``pytorch-operator``,
``simple``, and the light model architectures shipped under ``onnx/backend/test/data/light``
(the "real" suite: ResNet-50, Inception v1/v2, DenseNet-121, SqueezeNet, ShuffleNet, VGG-19,
AlexNet, ZFNet-512), whose expected outputs ship with onnx. Which tests do not run, and why, is
decided in one place: ``tests/onnx_exclusions.py``. Tests whose model uses an op hetero does not
claim are not collected; claimed-op tests that use an unsupported feature are skipped with the
reason.
"""

from __future__ import annotations

import os
import unittest
import warnings

import pytest

onnx = pytest.importorskip("onnx")

from onnx.backend.test.loader import DATA_DIR, load_model_tests  # noqa: E402

import hetero.onnx as ho  # noqa: E402
from tests.onnx_exclusions import CLAIMED_OPS, exclusion_reason, known_failure  # noqa: E402

_KINDS = {"Node": "node", "Real": "real", "Simple": "simple",
          "PyTorchConverted": "pytorch-converted", "PyTorchOperator": "pytorch-operator"}


def _model_of(case):
    """The ModelProto of a backend test case (node cases carry it; others are files)."""
    if case.model is not None:
        return case.model
    if case.model_dir is not None:
        path = os.path.join(case.model_dir, "model.onnx")
    elif case.url and case.url.startswith("onnx/backend/test/data/light/"):
        path = os.path.join(DATA_DIR, "light", os.path.basename(case.url))
    else:
        return None  # a model onnx would download: not run here (no network)
    return onnx.load(path, load_external_data=False)


def _build() -> tuple[dict[str, type], dict[str, int]]:
    backend = ho.Backend
    with warnings.catch_warnings():  # onnx's case generators overflow casts on purpose
        warnings.simplefilter("ignore", RuntimeWarning)
        suite = onnx.backend.test.BackendTest(backend, __name__)
        cases = {}
        for kind in _KINDS.values():
            for case in load_model_tests(kind=kind):
                cases[case.name] = case
    with_cuda = backend.supports_device("CUDA")
    counts = {"run": 0, "skipped": 0, "not_claimed": 0}
    classes = {}
    for cls_name, cls in suite.test_cases.items():
        for attr in [a for a in vars(cls) if a.startswith("test_")]:
            base, _, device = attr.rpartition("_")
            if device == "cuda" and not with_cuda:
                delattr(cls, attr)
                continue
            case = cases.get(base)
            model = _model_of(case) if case is not None else None
            reason = exclusion_reason(base, model)
            if model is None:
                reason = reason or "model is downloaded from the internet by onnx"
            if reason is None:
                counts["run"] += 1
                bug = known_failure(base)
                if bug is not None:
                    setattr(cls, attr, pytest.mark.xfail(reason=bug, strict=False)(
                        getattr(cls, attr)))
            elif reason.startswith("uses ops") or model is None:
                delattr(cls, attr)
                counts["not_claimed"] += 1
            else:
                setattr(cls, attr, unittest.skip(reason)(getattr(cls, attr)))
                counts["skipped"] += 1
            if cls_name.startswith("OnnxBackendReal") and hasattr(cls, attr):
                setattr(cls, attr, pytest.mark.slow(getattr(cls, attr)))
        classes[cls_name] = cls
    return classes, counts


_CLASSES, COUNTS = _build()
globals().update(_CLASSES)


@pytest.fixture(autouse=True, scope="module")
def _onnx_models_dir(tmp_path_factory):
    """The light-model tests write their input and expected output files under ONNX_MODELS."""
    mp = pytest.MonkeyPatch()
    mp.setenv("ONNX_MODELS", str(tmp_path_factory.mktemp("onnx_models")))
    yield
    mp.undo()


def test_claimed_ops_are_supported():
    """Every op the exclusion list claims is one the importer converts with registered ops."""
    assert CLAIMED_OPS <= set(ho.supported_ops()), CLAIMED_OPS - set(ho.supported_ops())


def test_suite_is_not_empty():
    assert COUNTS["run"] > 500, COUNTS
