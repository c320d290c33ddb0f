"""The soak in the suite: bounded in time (scripts/soak.py runs the long one)."""

from __future__ import annotations

import numpy as np

from tests.soak import soak


def test_soak_random_graphs_machines_and_policies():
    """Random graphs on random machines and policies; each plan run sync and concurrent, from
    threads at once, with outputs on the host and on the device, beside another plan: no
    mismatch, no hang, no leaked thread (issue 13's must-show)."""
    figures = soak(rounds=150, seconds=60, seed=1000)
    assert figures.ok, str(figures)
    assert figures.graphs >= 50 and figures.concurrent_runs > figures.graphs
    assert len(figures.by_machine) >= 5 and len(figures.by_policy) == 5


def test_the_soak_sees_a_wrong_copy(monkeypatch):
    """The soak can fail: a device-to-host copy that corrupts one value in a hundred runs is
    seen as a mismatch."""
    from hetero.backends import sim

    real = sim.SimDevice.copy_to_host
    count = [0]

    def corrupting(self, dst, src, stream):
        real(self, dst, src, stream)
        count[0] += 1
        if count[0] % 100 == 0:
            stream.launch(np.negative, sim.raw(dst), sim.raw(dst))

    monkeypatch.setattr(sim.SimDevice, "copy_to_host", corrupting)
    figures = soak(rounds=60, seed=2000)
    assert figures.mismatches > 0, str(figures)
