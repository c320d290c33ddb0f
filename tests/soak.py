"""The soak: random graphs on random machines and policies, each plan run in every way a user
can run it, at once, checked against the sequential reference and against itself.

One round (``soak_round``) draws a graph (random ops on random shapes: products, convolutions,
elementwise chains, reductions, transposes; device annotations on some nodes), a machine and a
policy, compiles a plan and then:

- runs it node by node (``sync=True``) on three inputs: the expected outputs, which must match
  ``reference.run`` within float32 tolerance;
- runs the same plan from three threads at once, each with its own input, ``outputs`` "host" or
  "device" and sync or concurrent: every result must equal the expected bits exactly (the thread
  policy makes a result independent of what else runs; see ``hetero.threads``);
- meanwhile runs the previous round's plan from another thread (different plans at once), also
  bit-exact.

A run that does not finish within ``timeout`` seconds is a hang; executor threads
(``hetero-cpu:N``, ``hetero-gpu:N``) alive after a round are leaks. ``soak(...)`` runs rounds
until a count or a time budget and returns the figures (tests/test_soak.py runs a bounded one;
``scripts/soak.py`` a long one).
"""

from __future__ import annotations

import random
import re
import threading
import time
import traceback
from dataclasses import dataclass, field
from typing import Any

import numpy as np

import hetero as ht
from hetero import reference
from hetero.graph import Graph
from tests.graphs import Builder, inputs_for

MACHINES = ("cpu:1", "cpu:2", "cpu:4", "cpu:1,sim:1", "cpu:2,sim:1", "cpu:2,sim:2",
            "cpu:1,sim:1@t4", "cpu:2,sim:2@t4", "cpu:2,sim:1@h100")
POLICIES = ("heft", "peft", "cpu", "gpu", "annotated")
_EXECUTOR_THREAD = re.compile(r"^hetero-(cpu|gpu):\d+$")
RTOL, ATOL = 2e-4, 2e-5


@dataclass
class Figures:
    """What a soak saw."""

    graphs: int = 0
    runs: int = 0
    concurrent_runs: int = 0
    mismatches: int = 0
    hangs: int = 0
    leaked_threads: int = 0
    errors: int = 0
    seconds: float = 0.0
    by_machine: dict[str, int] = field(default_factory=dict)
    by_policy: dict[str, int] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.mismatches or self.hangs or self.leaked_threads or self.errors)

    def fail(self, kind: str, message: str) -> None:
        setattr(self, kind, getattr(self, kind) + 1)
        if len(self.failures) < 20:
            self.failures.append(f"{kind}: {message}")

    def __str__(self) -> str:
        lines = [f"{self.graphs} graphs, {self.runs} runs ({self.concurrent_runs} from threads at "
                 f"once) in {self.seconds:.1f} s: {self.mismatches} mismatches, {self.hangs} "
                 f"hangs, {self.leaked_threads} leaked threads, {self.errors} errors",
                 "machines: " + ", ".join(f"{k} {v}" for k, v in sorted(self.by_machine.items())),
                 "policies: " + ", ".join(f"{k} {v}" for k, v in sorted(self.by_policy.items()))]
        return "\n".join(lines + self.failures)


# ----------------------------------------------------------------------------------------------
# Random graphs


def random_graph(seed: int, gpus: int) -> Graph:
    """A random graph: a matrix family (products, elementwise, softmax, reductions, transposes)
    or an image family (convolutions, pools, elementwise), some nodes annotated with a device."""
    rnd = random.Random(seed)
    rng = np.random.default_rng(seed)
    b = Builder(f"soak_{seed}")
    devices = ["cpu:0"] + [f"gpu:{i}" for i in range(gpus)]

    def annotate() -> None:
        b.annotate(rnd.choice(devices) if rnd.random() < 0.3 else None)

    if rnd.random() < 0.3:
        c = rnd.choice((3, 4, 8))
        hw = rnd.choice((8, 12, 16))
        y = b.input((rnd.randint(1, 2), c, hw, hw))
        pool = [y]
        for _ in range(rnd.randint(2, 6)):
            annotate()
            a = rnd.choice(pool[-3:])
            cin = b.spec(a).shape[1]
            kind = rnd.random()
            if kind < 0.45:
                cout = rnd.choice((4, 8, 16))
                k = rnd.choice((1, 3))
                w = b.const((rng.standard_normal((cout, cin, k, k)) / np.sqrt(cin * k * k))
                            .astype(np.float32))
                y = b.op("conv2d", a, w, pads=(k // 2,) * 4)
            elif kind < 0.7:
                y = b.op(rnd.choice(("relu", "tanh", "sigmoid", "neg")), a)
            elif kind < 0.85:
                others = [p for p in pool if b.spec(p).shape == b.spec(a).shape]
                y = b.op(rnd.choice(("add", "mul", "maximum")), a, rnd.choice(others))
            else:
                y = b.op("max_pool2d", a, kernel_shape=(2, 2), strides=(2, 2)) \
                    if b.spec(a).shape[2] % 2 == 0 and b.spec(a).shape[2] > 2 else b.op("abs", a)
            pool.append(y)
        b.annotate()
        head = b.op("global_avg_pool", pool[-1])
        outs = [head] + ([pool[rnd.randrange(1, len(pool))]] if rnd.random() < 0.5 else [])
        return b.build(*dict.fromkeys(outs))
    n = rnd.choice((4, 8, 16, 33, 64, 130))
    pool = [b.input((n, n), name=f"x{i}") for i in range(rnd.randint(1, 3))]
    pool.append(b.const((rng.standard_normal((n, n)) * 0.5).astype(np.float32), name="w"))
    scale = b.const(np.full((n, n), 1.0 / n, np.float32), name="scale")
    for _ in range(rnd.randint(3, 16)):
        annotate()
        a, c = rnd.choice(pool[-4:]), rnd.choice(pool)
        kind = rnd.random()
        if kind < 0.3:
            y = b.op(rnd.choice(("add", "sub", "mul", "maximum", "minimum")), a, c)
        elif kind < 0.55:
            y = b.op(rnd.choice(("relu", "tanh", "neg", "abs", "sigmoid")), a)
        elif kind < 0.8:
            y = b.op("mul", b.op("matmul", a, c), scale)
        elif kind < 0.88:
            y = b.op("softmax", a, axis=-1)
        elif kind < 0.94:
            y = b.op("transpose", a, perm=(1, 0))
        else:
            y = b.op("add", a, b.op("sum", c, axes=(1,), keepdims=1))
        pool.append(y)
    b.annotate()
    consumed = {v.node for node in b.nodes for v in node.inputs}
    op_of = {node.name: node.op for node in b.nodes}
    sinks = [v for v in pool if v.node not in consumed and op_of[v.node] not in
             ("input", "constant")]
    if rnd.random() < 0.3:  # an output that is also read further on
        inner = [v for v in pool if op_of[v.node] not in ("input", "constant")]
        sinks.append(rnd.choice(inner))
    return b.build(*dict.fromkeys(sinks or [pool[-1]]))


# ----------------------------------------------------------------------------------------------
# Runs


def _host(plan: Any, arr: Any) -> np.ndarray:
    for dev in plan.machine.devices:
        if dev.kind == "gpu" and dev.owns(arr):
            return np.asarray(dev.to_host(arr))
    return np.asarray(arr)


def _same(got: list, want: list, plan: Any) -> bool:
    return len(got) == len(want) and all(
        np.array_equal(_host(plan, g), w, equal_nan=True) for g, w in zip(got, want))


def _executor_threads() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if _EXECUTOR_THREAD.match(t.name)}


class _Job:
    """Runs of one plan on one thread: ``(inputs, expected, outputs, sync)`` each."""

    def __init__(self, plan: Any, runs: list[tuple[list, list, str, bool]]) -> None:
        self.plan, self.runs = plan, runs
        self.bad: list[str] = []
        self.error: str | None = None
        self.thread = threading.Thread(target=self._main, daemon=True, name="soak-run")

    def _main(self) -> None:
        try:
            for xs, want, outputs, sync in self.runs:
                got = self.plan.run(*xs, outputs=outputs, sync=sync)
                if not _same(got, want, self.plan):
                    self.bad.append(f"outputs={outputs} sync={sync}")
        except Exception:
            self.error = traceback.format_exc(limit=4)


def soak_round(seed: int, figures: Figures, previous: tuple | None = None,
               timeout: float = 60.0) -> tuple | None:
    """One round (see the module docstring); returns ``(plan, runs)`` for the next round's
    concurrent use, or None if this round failed."""
    rnd = random.Random(seed)
    machine = rnd.choice(MACHINES)
    policy = rnd.choice(POLICIES)
    gpus = machine.count("sim") and int(machine.split("sim:")[1][0])
    if policy == "gpu" and not gpus:
        policy = "heft"
    graph = random_graph(seed, gpus)
    where = f"seed {seed}: {graph.name} on {machine}, policy {policy}"
    try:
        plan = ht.compile(graph, machine=machine, policy=policy)
    except Exception:
        figures.fail("errors", f"{where}: compile: {traceback.format_exc(limit=3)}")
        return None
    figures.graphs += 1
    figures.by_machine[machine] = figures.by_machine.get(machine, 0) + 1
    figures.by_policy[policy] = figures.by_policy.get(policy, 0) + 1
    inputs = [inputs_for(graph, seed=seed * 7 + i) for i in range(3)]
    expected = []
    for xs in inputs:
        try:
            want = plan.run(*xs, sync=True)
            ref = reference.run(graph, xs)
        except Exception:
            figures.fail("errors", f"{where}: {traceback.format_exc(limit=3)}")
            return None
        figures.runs += 1
        for got, r in zip(want, ref):
            if not np.allclose(got, r, rtol=RTOL, atol=ATOL, equal_nan=True):
                figures.fail("mismatches", f"{where}: differs from the reference by "
                             f"{float(np.max(np.abs(got - r))):.3g}")
                return None
        expected.append(want)
    jobs = []
    for t in range(3):
        runs = [(inputs[(t + k) % 3], expected[(t + k) % 3], rnd.choice(("host", "device")),
                 rnd.random() < 0.3) for k in range(3)]
        jobs.append(_Job(plan, runs))
    if previous is not None:
        jobs.append(_Job(*previous))
    for job in jobs:
        job.thread.start()
    deadline = time.monotonic() + timeout
    for job in jobs:
        job.thread.join(max(0.0, deadline - time.monotonic()))
    for job in jobs:
        label = where if job.plan is plan else f"{where} (beside the previous round's plan)"
        if job.thread.is_alive():
            figures.fail("hangs", f"{label}: a run did not finish in {timeout:.0f} s")
            return None
        figures.runs += len(job.runs)
        figures.concurrent_runs += len(job.runs)
        if job.error:
            figures.fail("errors", f"{label}: {job.error}")
        for bad in job.bad:
            figures.fail("mismatches", f"{label}: {bad} differs from the sync run's bits")
    return plan, [(xs, want, "host", False) for xs, want in zip(inputs, expected)][:2]


def soak(rounds: int | None = None, seconds: float | None = None, seed: int = 0,
         progress: Any = None) -> Figures:
    """Rounds until ``rounds`` are done or ``seconds`` have passed; then the leak check."""
    figures = Figures()
    before = _executor_threads()
    t0 = time.monotonic()
    previous = None
    i = 0
    while (rounds is None or i < rounds) and (seconds is None or time.monotonic() - t0 < seconds):
        previous = soak_round(seed + i, figures, previous)
        if figures.hangs:
            break  # a hung run holds its plan's lock: the rest would only repeat it
        i += 1
        if progress is not None and i % 100 == 0:
            progress(i, figures)
    deadline = time.monotonic() + 5.0
    while _executor_threads() - before and time.monotonic() < deadline:
        time.sleep(0.05)
    leaked = _executor_threads() - before
    if leaked:
        figures.fail("leaked_threads", ", ".join(sorted(t.name for t in leaked)))
        figures.leaked_threads = len(leaked)
    figures.seconds = time.monotonic() - t0
    return figures
