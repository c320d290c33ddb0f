"""Train a small CNN on scikit-learn's bundled 8x8 digits (nothing downloaded), in graph mode.

    python3 examples/train_digits.py [--eager] [--epochs N]

Each training step (forward, loss, gradients from the registry's vjp rules, Adam's update) is one
traced ``@ht.function`` graph; ``--eager`` runs the same step op by op instead.
"""

from __future__ import annotations

import argparse

import numpy as np

import hetero.nn as nn
import hetero.optim as optim


def model() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1, seed=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1, seed=2), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Dense(32 * 2 * 2, 10, seed=3))


def data() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.images / 16.0).astype(np.float32)[:, None]
    order = np.random.default_rng(0).permutation(len(x))
    x, y = x[order], d.target[order]
    return x[:1440], y[:1440], x[1440:], y[1440:]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--eager", action="store_true", help="run the train step op by op")
    ap.add_argument("--epochs", type=int, default=15)
    args = ap.parse_args()
    xtr, ytr, xte, yte = data()
    m = model()
    m.compile(optim.Adam(3e-3), loss="cross_entropy", metrics=("accuracy",),
              graph=not args.eager)
    m.fit(xtr, ytr, epochs=args.epochs, batch_size=32, validation_data=(xte, yte))
    print(f"test accuracy: {100 * m.evaluate(xte, yte)['accuracy']:.1f}%")


if __name__ == "__main__":
    main()
