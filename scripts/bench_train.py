"""Time per epoch of examples/train_digits.py's CNN: hetero graph mode, hetero eager, PyTorch CPU.

    python3 scripts/bench_train.py [--epochs N] [--threads T]

Same model, batch size (32), optimizer (Adam 3e-3) and data; the median epoch time of each after
the first (which includes tracing and compiling) is printed, and the ratios.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "examples"))

from train_digits import data, model  # noqa: E402

import hetero.optim as optim  # noqa: E402


def hetero_epochs(graph: bool, epochs: int) -> list[float]:
    xtr, ytr, _, _ = data()
    m = model()
    m.compile(optim.Adam(3e-3), graph=graph)
    return m.fit(xtr, ytr, epochs=epochs, batch_size=32, verbose=False)["time"]


def torch_epochs(epochs: int, threads: int) -> list[float]:
    import torch

    torch.set_num_threads(threads)
    xtr, ytr, _, _ = data()
    net = torch.nn.Sequential(
        torch.nn.Conv2d(1, 16, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Conv2d(16, 32, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Flatten(), torch.nn.Linear(128, 10))
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    x, y = torch.tensor(xtr), torch.tensor(ytr)
    n = len(x) - len(x) % 32
    times = []
    for _ in range(epochs):
        t0 = time.perf_counter()
        order = torch.randperm(len(x))[:n]
        for b in range(n // 32):
            idx = order[b * 32:(b + 1) * 32]
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(net(x[idx]), y[idx])
            loss.backward()
            opt.step()
        times.append(time.perf_counter() - t0)
    return times


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    rows = {"hetero graph": hetero_epochs(True, args.epochs),
            "hetero eager": hetero_epochs(False, args.epochs),
            "pytorch cpu": torch_epochs(args.epochs, args.threads)}
    med = {k: statistics.median(v[1:] or v) for k, v in rows.items()}
    for k, v in med.items():
        print(f"{k:13s} {1000 * v:8.1f} ms/epoch  ({v / med['hetero graph']:.2f}x graph)")


if __name__ == "__main__":
    main()
