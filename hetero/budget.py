"""Memory budgets per device: ``memory={"gpu:0": "2GiB"}`` (``ht.compile``) and
``--memory gpu:0=2GiB`` (every ``hetero`` subcommand that plans).

A budget is not a parallel mechanism: ``apply_budget(machine, memory)`` returns a copy of the
machine whose budgeted devices have ``capacity`` equal to the budget (never above the card's
own capacity), so everything that already honours capacity honours the budget: placement moves
nodes off a device whose planned peak exceeds it (``hetero.passes.place``), the memory planner
refuses an arena larger than it (``hetero.passes.memory``), and a simulated GPU raises
OutOfMemoryError when a run allocates past it (``hetero.backends.sim``). The copy is rebuilt
from the machine's JSON (``Machine.to_json`` / ``from_json``, the path a saved plan takes), so
names, rates and links are those of the original.

Sizes: an integer number of bytes, or a number with a unit: B, KB/MB/GB/TB (powers of 1000),
KiB/MiB/GiB/TiB (powers of 1024), K/M/G/T (powers of 1024, as ``ls -h`` prints). Case does not
matter: "512MiB", "2GiB", "1.5GB", "3g".
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from fractions import Fraction
from typing import Any

from hetero.devices import Machine, normalize_device
from hetero.errors import HeteroError

__all__ = ["MemoryBudgetError", "apply_budget", "parse_memory", "parse_size"]


class MemoryBudgetError(HeteroError):
    """A memory budget that cannot be understood or applied."""


_UNITS = {"": 1, "b": 1,
          "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
          "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40,
          "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}
_SIZE = re.compile(r"^\s*([0-9]+(?:\.[0-9]*)?|\.[0-9]+)\s*([a-zA-Z]*)\s*$")


def parse_size(text: Any, what: str = "memory size") -> int:
    """Bytes of a size such as "512MiB", "2GiB", "1.5GB" or 1048576 (see the module docstring).

    Raises MemoryBudgetError for anything else, or a size that is not positive."""
    if isinstance(text, bool):
        raise MemoryBudgetError(f"bad {what} {text!r}: expected bytes or a size like '2GiB'")
    if isinstance(text, int | float):
        value = float(text)
        if not math.isfinite(value) or value <= 0 or value != int(value):
            raise MemoryBudgetError(f"bad {what} {text!r}: expected a positive whole number of "
                                    "bytes, or a size like '512MiB', '2GiB', '1.5GB'")
        return int(value)
    if not isinstance(text, str):
        raise MemoryBudgetError(f"bad {what} {text!r}: expected bytes or a size like '2GiB'")
    m = _SIZE.match(text)
    unit = m.group(2).lower() if m else ""
    if m is None or unit not in _UNITS:
        raise MemoryBudgetError(f"bad {what} {text!r}: expected a number and a unit, like "
                                f"'512MiB', '2GiB' or '1.5GB' (units: B, KB, MB, GB, TB, KiB, "
                                f"MiB, GiB, TiB)")
    nbytes = int(Fraction(m.group(1)) * _UNITS[unit])  # exact: no float rounding
    if nbytes <= 0:
        raise MemoryBudgetError(f"bad {what} {text!r}: a budget must be more than 0 bytes")
    return nbytes


def parse_memory(memory: Mapping[str, Any] | Iterable[str] | str | None) -> dict[str, int]:
    """Device name -> budget in bytes from ``{"gpu:0": "2GiB"}``, ``"gpu:0=2GiB,cpu:0=8GiB"``
    or a list of such ``DEVICE=SIZE`` strings (repeated ``--memory`` flags)."""
    if memory is None:
        return {}
    if isinstance(memory, str):
        memory = [part for part in memory.split(",") if part.strip()]
    if isinstance(memory, Mapping):
        items = list(memory.items())
    else:
        items = []
        for entry in memory:
            if not isinstance(entry, str) or "=" not in entry:
                raise MemoryBudgetError(f"bad memory budget {entry!r}: expected DEVICE=SIZE, "
                                        "like 'gpu:0=2GiB'")
            name, size = entry.split("=", 1)
            items.append((name.strip(), size.strip()))
    out: dict[str, int] = {}
    for name, size in items:
        try:
            device = normalize_device(name)
        except HeteroError as exc:
            raise MemoryBudgetError(f"bad memory budget for {name!r}: {exc}") from None
        out[device] = parse_size(size, f"memory budget for {device}")
    return out


def apply_budget(machine: Machine, memory: Mapping[str, Any] | Iterable[str] | str | None
                 ) -> Machine:
    """``machine`` with each budgeted device's capacity set to its budget (see the module
    docstring); the machine itself when there is no budget.

    Raises MemoryBudgetError for a device the machine does not have, or a budget above the
    device's own capacity (a budget can only lower what a device holds)."""
    budgets = parse_memory(memory)
    if not budgets:
        return machine
    names = {d.name: d for d in machine.devices}
    data = machine.to_json()
    for name, nbytes in budgets.items():
        dev = names.get(name)
        if dev is None:
            raise MemoryBudgetError(f"memory budget for {name}, which is not a device of "
                                    f"{machine!r} (devices: {', '.join(names)})")
        if nbytes > dev.capacity:
            raise MemoryBudgetError(f"memory budget for {name} is {_fmt(nbytes)}, more than its "
                                    f"capacity of {_fmt(dev.capacity)}")
        if dev.backend == "cupy":
            raise MemoryBudgetError(f"memory budget for {name}: budgets on real GPUs are not "
                                    "supported yet (simulated GPUs and CPU workers are)")
    for d in data["devices"]:
        if d["name"] in budgets:
            d["capacity"] = budgets[d["name"]]
    budgeted = Machine.from_json(data)
    return budgeted


def _fmt(nbytes: float) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if nbytes >= scale:
            return f"{nbytes / scale:.2f} {unit}"
    return f"{int(nbytes)} B"
