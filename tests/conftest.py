"""Test-wide settings: a hypothesis profile sized for CI's 2 cores, and the GPU marker's skip."""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci",
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    derandomize=True,
)
settings.register_profile("dev", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("ci" if os.environ.get("CI") else "dev")


try:  # the compiled CPU kernels' modules import numba (the "cpu" extra); without it they are off
    import numba  # noqa: F401
except ImportError:
    collect_ignore = ["../hetero/backends/cpu/kernels.py", "../hetero/backends/cpu/_loops.py"]
