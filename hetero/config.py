"""Process-wide settings: ``ht.config.transfer_guard = "log"`` and friends."""

from __future__ import annotations

import os
from typing import Any

from hetero.devices import Machine
from hetero.errors import HeteroError

_GUARDS = ("allow", "log", "disallow")


class Config:
    """Settings read by every stage. Attributes:

    transfer_guard: what an implicit copy between memory spaces in eager mode does:
        "allow" (default), "log" (log it) or "disallow" (raise TransferGuardError); the
        environment variable ``HETERO_TRANSFER_GUARD`` sets the initial value (as
        ``JAX_TRANSFER_GUARD`` does).
    strict_placement: turn a soft-placement fallback (an op with no kernel on its annotated
        device) into a PlacementError, like ONNX Runtime's disable_cpu_ep_fallback.
    checks: run the verifier after every pass (``HETERO_CHECKS=1``).
    log_device_placement: log node, device and reason as placement happens
        (``HETERO_LOG_DEVICE_PLACEMENT=1``).
    machine: the Machine eager mode and ``@function`` use; ``Machine.detect()`` when unset. A
        machine set here (a Machine or a spec string) also makes ``@function`` compile its
        graphs for it (place, partition, schedule) and run them on the executor.
    """

    def __init__(self) -> None:
        self._transfer_guard = "allow"
        self.transfer_guard = os.environ.get("HETERO_TRANSFER_GUARD", "") or "allow"
        self.strict_placement = False
        self.checks = os.environ.get("HETERO_CHECKS", "") not in ("", "0")
        env = os.environ.get("HETERO_LOG_DEVICE_PLACEMENT", "")
        self.log_device_placement = env not in ("", "0")
        self._machine: Any = None
        self._detected: Any = None  # what Machine.detect() found, once asked

    @property
    def transfer_guard(self) -> str:
        return self._transfer_guard

    @transfer_guard.setter
    def transfer_guard(self, value: str) -> None:
        if value not in _GUARDS:
            raise HeteroError(f"transfer_guard (or HETERO_TRANSFER_GUARD) must be one of "
                              f"{', '.join(_GUARDS)}, got {value!r}")
        self._transfer_guard = value

    @property
    def machine(self) -> Any:
        if self._machine is None:
            self._machine = self._detected = Machine.detect()
        return self._machine

    @property
    def _machine_detected(self) -> bool:
        """Is the current machine the one ``Machine.detect()`` found (not one the user set)?
        Tied to the machine object, so restoring ``_machine`` restores the answer too."""
        return self._machine is not None and self._machine is self._detected

    @_machine_detected.setter
    def _machine_detected(self, value: bool) -> None:
        self._detected = self._machine if value else None

    @machine.setter
    def machine(self, value: Any) -> None:
        if isinstance(value, str):
            value = Machine.parse(value)
        self._machine = value


config = Config()


def resolve_machine(machine: Any) -> Machine:
    """A Machine from ``None`` (``config.machine``), a spec string, or a Machine."""
    if machine is None:
        return config.machine
    return Machine.parse(machine)
