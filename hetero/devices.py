"""Devices and machines (minimal CPU-only version; the devices issue grows this module).

Contract used by eager mode (hetero/tracing.py) and later stages:

- ``Device``: ``name`` ("cpu:0", "gpu:0"), ``kind`` ("cpu" | "gpu"), ``memory_space`` ("host" for
  every CPU worker), ``backend`` ("numpy" | "cupy" | "sim"), ``xp`` (array namespace),
  ``empty(spec)``, ``from_host(ndarray)``, ``to_host(array)``, ``owns(array)``,
  ``run_kernel(op, ins, attrs, outs)`` (synchronous; eager mode uses it).
- ``Machine``: ``devices`` (tuple), ``device(name)`` (DeviceError for an unknown name),
  ``Machine.detect()``, ``Machine.parse(spec)``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from hetero.errors import DeviceError

_DEVICE_RE = re.compile(r"^(cpu|gpu)(?::(\d+))?$")


def normalize_device(name: str) -> str:
    """``"gpu"`` -> ``"gpu:0"``; refuses strings that are not ``cpu[:N]`` or ``gpu[:N]``."""
    if not isinstance(name, str):
        raise DeviceError(f"a device is a string like 'cpu:0' or 'gpu:1', got {name!r}")
    m = _DEVICE_RE.match(name.strip().lower())
    if not m:
        raise DeviceError(f"unknown device string {name!r}: expected 'cpu:N' or 'gpu:N' "
                          "(e.g. 'cpu:0', 'gpu:1')")
    return f"{m.group(1)}:{int(m.group(2) or 0)}"


@dataclass(eq=False)
class Device:
    name: str
    kind: str = "cpu"
    memory_space: str = "host"
    backend: str = "numpy"
    capacity: int = 0
    specs: dict[str, Any] = field(default_factory=dict)

    @property
    def xp(self):
        return np

    def empty(self, spec):
        return np.empty(spec.shape, spec.dtype)

    def from_host(self, array: np.ndarray) -> np.ndarray:
        return np.asarray(array)

    def to_host(self, array: Any) -> np.ndarray:
        return np.asarray(array)

    def owns(self, array: Any) -> bool:
        return isinstance(array, np.ndarray)

    def run_kernel(self, op, ins, attrs, outs) -> None:
        op.kernel_for(self.backend)(np, ins, attrs, outs)

    def __repr__(self) -> str:
        return f"Device({self.name}, {self.backend})"


@dataclass(eq=False)
class Machine:
    devices: tuple[Device, ...]

    def device(self, name: str) -> Device:
        name = normalize_device(name)
        for d in self.devices:
            if d.name == name:
                return d
        raise DeviceError(f"device {name!r} is not in this machine "
                          f"({', '.join(d.name for d in self.devices)})")

    @classmethod
    def detect(cls) -> Machine:
        return cls((Device("cpu:0"),))
