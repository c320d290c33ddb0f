"""The long soak: thousands of random graphs on random machines and policies (tests/soak.py
says what one round runs and checks). Exits 1 on any mismatch, hang, leaked thread or error.

Usage::

    python scripts/soak.py [--graphs 5000] [--seconds 0] [--seed 0]
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from tests.soak import soak  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--graphs", type=int, default=5000, help="rounds to run (one graph each)")
    ap.add_argument("--seconds", type=float, default=0.0, help="stop after this long (0: never)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the first round")
    args = ap.parse_args()

    def progress(done: int, figures) -> None:
        if done % 500 == 0:
            print(f"  {done} rounds: {figures.mismatches} mismatches, {figures.hangs} hangs, "
                  f"{figures.errors} errors", flush=True)

    figures = soak(rounds=args.graphs, seconds=args.seconds or None, seed=args.seed,
                   progress=progress)
    print(figures)
    return 0 if figures.ok else 1


if __name__ == "__main__":
    sys.exit(main())
