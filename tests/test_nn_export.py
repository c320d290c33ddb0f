"""ONNX export of every layer (``hetero.nn.export_onnx``): a trained model's predictions in
onnxruntime and in hetero (the exported file loaded back) equal ``model.predict`` within 1e-5,
for a CNN with BatchNorm and Dropout and a sequence model with Embedding, causal
MultiHeadAttention, LayerNorm and a Dense over 3-D input."""

from __future__ import annotations

import numpy as np
import pytest

import hetero as ht
from hetero import nn, optim

ort = pytest.importorskip("onnxruntime", reason="onnxruntime compares the exported model")
onnx = pytest.importorskip("onnx", reason="the onnx extra writes the model")


def _check(model, x, tmp_path, dtype=np.float32):
    path = str(tmp_path / "model.onnx")
    nn.export_onnx(model, path, x.shape)
    ours = model.predict(x)
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    theirs = sess.run(None, {"x": x.astype(dtype)})[0]
    np.testing.assert_allclose(theirs, ours, rtol=1e-5, atol=1e-5)
    back = ht.onnx.load(path, input_shapes={"x": x.shape})
    again = ht.onnx.runner(back)(x.astype(dtype))[0]
    np.testing.assert_allclose(np.asarray(again), ours, rtol=1e-5, atol=1e-5)
    # the batch dimension stays symbolic: another batch size runs in onnxruntime
    other = sess.run(None, {"x": x[:3].astype(dtype)})[0]
    np.testing.assert_allclose(other, model.predict(x[:3]), rtol=1e-5, atol=1e-5)


def test_trained_cnn_with_batchnorm_and_dropout(tmp_path):
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((64, 2, 6, 6)) * 2 + 1).astype(np.float32)
    y = (x[:, 0].mean((1, 2)) > x[:, 1].mean((1, 2))).astype(np.int64)
    bn = nn.BatchNorm(4)
    m = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1, seed=1), bn, nn.ReLU(),
                      nn.MaxPool2d(2), nn.Flatten(), nn.Dropout(0.3, seed=2),
                      nn.Dense(36, 8, seed=3), nn.BatchNorm(8), nn.Tanh(), nn.Dense(8, 2, seed=4))
    m.compile(optim.Adam(0.01))
    m.fit(x, y, epochs=2, batch_size=16, verbose=False)
    assert not np.allclose(bn.state["running_mean"], 0)  # the export carries trained state
    _check(m, x[:16], tmp_path)


@pytest.mark.parametrize("causal", [True, False])
def test_trained_attention_model(tmp_path, causal):
    rng = np.random.default_rng(1)
    x = rng.integers(0, 7, (48, 5)).astype(np.int64)
    y = (x[:, 0] > 3).astype(np.int64)
    m = nn.Sequential(nn.Embedding(7, 8, seed=1), nn.MultiHeadAttention(8, 2, causal=causal,
                                                                        seed=2),
                      nn.LayerNorm(8), nn.Dense(8, 4, seed=3), nn.ReLU(), nn.Flatten(),
                      nn.Dense(20, 2, seed=4))
    m.compile(optim.Adam(0.02))
    m.fit(x, y, epochs=2, batch_size=16, verbose=False)
    _check(m, x[:12], tmp_path, dtype=np.int64)


def test_a_layer_without_an_onnx_form_is_named(tmp_path):
    class Odd(nn.ReLU):
        pass

    class Custom(nn.Module):
        def forward(self, p, x):
            return x

    m = nn.Sequential(nn.Dense(3, 3), Custom())
    with pytest.raises(ht.errors.ModelError, match="layer 1 \\(Custom, made at .*test_nn_export"):
        nn.export_onnx(m, None, (2, 3))
    nn.export_onnx(nn.Sequential(Odd()), None, (2, 3))  # a subclass keeps its parent's form
