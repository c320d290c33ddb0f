"""hetero.nn and hetero.optim: optimizers against PyTorch, graph-mode training equal to eager,
weights round trip, errors naming the layer."""

from __future__ import annotations

import numpy as np
import pytest

import hetero.nn as nn
import hetero.optim as optim
from hetero.errors import ShapeError


def _data(n=64, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 1, 6, 6)).astype(np.float32)
    y = (x[:, 0, :3].sum((1, 2)) > x[:, 0, 3:].sum((1, 2))).astype(np.int64)
    return x, y


def _model():
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1, seed=1), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Flatten(), nn.Dense(36, 2, seed=2))


@pytest.mark.parametrize("make", [lambda: optim.SGD(0.1, momentum=0.9), lambda: optim.Adam(0.01),
                                  lambda: optim.AdamW(0.01, weight_decay=0.1)])
def test_graph_mode_training_equals_eager(make):
    x, y = _data()
    params = []
    for graph in (True, False):
        m = nn.Sequential(*_model().layers[:4], nn.LayerNorm(36), nn.Tanh(), nn.Dense(36, 2))
        m.compile(make(), graph=graph)
        m.fit(x, y, epochs=2, batch_size=16, verbose=False)
        params.append(m.params)
    for k in params[0]:
        np.testing.assert_allclose(params[0][k], params[1][k], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", ["sgd", "adam", "adamw"])
def test_optimizers_match_pytorch(name):
    torch = pytest.importorskip("torch")
    x, y = _data(32)
    ours = _model()
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.ReLU(),
                              torch.nn.MaxPool2d(2), torch.nn.Flatten(), torch.nn.Linear(36, 2))
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor(ours.params["0.weight"]))
        net[0].bias.copy_(torch.tensor(ours.params["0.bias"]))
        net[4].weight.copy_(torch.tensor(ours.params["4.weight"].T))
        net[4].bias.copy_(torch.tensor(ours.params["4.bias"]))
    mine, theirs = {
        "sgd": (optim.SGD(0.05, momentum=0.9), torch.optim.SGD(net.parameters(), 0.05, 0.9)),
        "adam": (optim.Adam(0.01), torch.optim.Adam(net.parameters(), 0.01)),
        "adamw": (optim.AdamW(0.01, weight_decay=0.1),
                  torch.optim.AdamW(net.parameters(), 0.01, weight_decay=0.1)),
    }[name]
    ours.compile(mine)
    ours.fit(x, y, epochs=1, batch_size=32, verbose=False, seed=0)
    ours.fit(x, y, epochs=1, batch_size=32, verbose=False, seed=0)
    for _ in range(2):  # whole batch, so the order fit shuffles into does not matter
        theirs.zero_grad()
        torch.nn.functional.cross_entropy(net(torch.tensor(x)), torch.tensor(y)).backward()
        theirs.step()
    np.testing.assert_allclose(ours.params["0.weight"], net[0].weight.detach().numpy(),
                               rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(ours.params["4.weight"], net[4].weight.detach().numpy().T,
                               rtol=1e-4, atol=1e-5)


def test_fit_learns_and_weights_round_trip(tmp_path):
    x, y = _data(256)
    m = _model()
    m.compile(optim.Adam(0.02))
    before = m.evaluate(x, y)["accuracy"]
    hist = m.fit(x, y, epochs=6, batch_size=32, verbose=False, validation_data=(x[:64], y[:64]))
    assert hist["loss"][-1] < hist["loss"][0]
    assert m.evaluate(x, y)["accuracy"] > max(before, 0.85)
    m.save_weights(tmp_path / "w.npz")
    fresh = _model()
    fresh.load_weights(tmp_path / "w.npz")
    np.testing.assert_array_equal(fresh.predict(x), m.predict(x))


def test_shape_mismatch_names_the_layer_and_line():
    m = nn.Sequential(nn.Flatten(), nn.Dense(5, 2))
    with pytest.raises(ShapeError, match=r"Dense layer made at test_nn.py:\d+: expects 5"):
        m.predict(np.ones((2, 6), np.float32))


def test_trained_model_exported_to_onnx_matches_onnxruntime_and_loads_back(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    import hetero as ht

    x, y = _data(64)
    m = _model()
    m.compile(optim.Adam(0.02))
    m.fit(x, y, epochs=2, batch_size=32, verbose=False)
    path = str(tmp_path / "m.onnx")
    nn.export_onnx(m, path, x.shape)
    ours = m.predict(x)
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    theirs = sess.run(None, {"x": x})[0]
    np.testing.assert_allclose(theirs, ours, rtol=1e-5, atol=1e-5)
    back = ht.onnx.load(path, input_shapes={"x": x.shape})
    again = ht.onnx.runner(back)(x)[0]
    np.testing.assert_allclose(np.asarray(again), ours, rtol=1e-5, atol=1e-5)


def test_a_layer_made_under_a_device_scope_runs_there():
    import hetero as ht

    with ht.device("gpu:0"):
        dense = nn.Dense(3, 2)
    relu = nn.ReLU()
    plan = ht.compile(lambda x: relu(dense(x)), "cpu:1,sim:1", policy="annotated",
                      example_inputs=(np.ones((4, 3), np.float32),))
    placed = {n.op: n.device for n in plan.graph.nodes if n.computes}
    assert placed["gemm"] == "gpu:0" and placed["relu"] == "cpu:0"
