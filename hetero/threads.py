"""The CPU thread policy: cores, BLAS thread limits and the intra-op pool, in one place.

Every stage that cares how many threads a CPU kernel uses asks this module: the executor (how many
BLAS and intra-op threads a plan's runs get), the measured cost model (under which condition a
kernel was timed) and the kernels themselves (how many pieces a convolution may run at once).

Policy (``choose``)
    A run uses ``w`` host compute threads (CPU workers plus simulated GPUs, whose kernels run on
    the host). BLAS gets ``free // w`` threads (threadpoolctl), so workers x BLAS threads <= cores;
    ``free`` is the cores less those that other processes keep busy when a plan is loaded
    (``busy_elsewhere``): multithreaded OpenBLAS on an oversubscribed host slows down 20-100x,
    waiting on descheduled helper threads. When a CPU worker runs a splitting kernel (an op whose
    registry entry has ``splits``: convolutions, large GEMMs), those kernels cut their own work
    over ``cores // w`` intra-op threads instead and BLAS runs one thread: the pieces are handed
    out dynamically, so a core that other processes hold costs at most a piece, where OpenBLAS's
    threads wait for each other at a barrier.

Intra-op pool (``intra_op``, ``parallel_for``)
    ``intra_op(threads)`` lets splitting kernels use ``threads`` threads meanwhile;
    ``parallel_for(count, fn)`` hands the pieces ``fn(0) .. fn(count - 1)`` to the calling thread
    and persistent helper threads. The cut is the kernel's, made from shapes only, so results do
    not depend on how many threads ran the pieces.
"""

from __future__ import annotations

import itertools
import os
import queue
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, NamedTuple

__all__ = ["Threads", "blas_limit", "blas_threads", "busy_elsewhere", "choose", "cpu_cores",
           "intra_op", "intra_op_threads", "parallel_for"]


def cpu_cores() -> int:
    """Cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


# ----------------------------------------------------------------------------------------------
# Policy


class Threads(NamedTuple):
    """Threads per CPU worker during a run: BLAS threads and intra-op threads."""

    blas: int
    intra: int


def blas_threads(workers: int, cores: int | None = None, busy: int = 0) -> int:
    """BLAS threads per worker so that workers x BLAS threads <= the cores not ``busy`` with
    other processes' threads (at least one)."""
    cores = cores or cpu_cores()
    free = max(1, cores - max(0, busy))
    return max(1, min(cores, free) // max(1, workers))


def choose(host_compute: int, splits: bool, *, busy: int = 0, fixed_blas: int | None = None,
           fixed_intra: int | None = None, cores: int | None = None) -> Threads:
    """The (BLAS, intra-op) threads per worker of a run with ``host_compute`` host compute
    threads, ``splits`` telling whether a CPU worker runs a splitting kernel, ``busy`` cores held
    by other processes. A fixed BLAS count (the caller's) turns intra-op splitting off unless
    ``fixed_intra`` is given too; above one intra-op thread, BLAS runs one."""
    cores = cores or cpu_cores()
    if fixed_blas is not None:
        blas = max(1, int(fixed_blas))
    else:
        blas = blas_threads(host_compute, cores, busy)
    if fixed_intra is not None:
        intra = max(1, int(fixed_intra))
    elif fixed_blas is not None or not splits:
        intra = 1
    else:
        intra = blas_threads(host_compute, cores)
    return Threads(1 if intra > 1 else blas, intra)


def _runnable_threads(path: str) -> int:
    with open(path, "rb") as f:
        data = f.read()
    return 1 if data[data.rfind(b")") + 2:data.rfind(b")") + 3] == b"R" else 0


def busy_elsewhere(samples: int = 3, gap_s: float = 5e-4) -> int:
    """Threads of other processes running or ready to run (Linux ``/proc``; 0 where it cannot
    tell): the median of a few samples of the system's runnable count less this process's own.
    """
    counts = []
    for k in range(samples):
        if k:
            time.sleep(gap_s)
        try:
            with open("/proc/loadavg") as f:
                running = int(f.read().split()[3].split("/")[0])
            own = 0
            for tid in os.listdir("/proc/self/task"):
                try:
                    own += _runnable_threads(f"/proc/self/task/{tid}/stat")
                except OSError:  # the thread ended meanwhile
                    pass
        except (OSError, ValueError, IndexError):
            return 0
        counts.append(max(0, running - own))
    counts.sort()
    return counts[len(counts) // 2]


def busy_cores() -> int:
    """``busy_elsewhere`` shared out over the cores this process may use (``/proc/loadavg``
    counts every CPU of the host)."""
    cores = cpu_cores()
    busy = busy_elsewhere() * cores / max(cores, os.cpu_count() or cores)
    return int(busy + 0.5)


# ----------------------------------------------------------------------------------------------
# BLAS limits

_controller: Any = None


def blas_limit(threads: int) -> Any:
    """A context manager that limits BLAS to ``threads`` (threadpoolctl), or None if BLAS
    already uses no more."""
    global _controller
    try:
        if _controller is None:
            from threadpoolctl import ThreadpoolController

            _controller = ThreadpoolController()
        current = max((i["num_threads"] for i in _controller.info()
                       if i["user_api"] == "blas"), default=0)
    except Exception:  # threadpoolctl cannot see this BLAS: nothing to coordinate
        return None
    if current <= threads:
        return None
    return _controller.limit(limits=threads, user_api="blas")


# ----------------------------------------------------------------------------------------------
# The intra-op pool

_intra = 1  # threads a splitting kernel may use; set by the executor through intra_op()
_helpers: list[threading.Thread] = []
_jobs: queue.SimpleQueue = queue.SimpleQueue()
_helpers_lock = threading.Lock()


def intra_op_threads() -> int:
    """Threads a splitting kernel uses now (1 outside an executor run that sets more)."""
    return _intra


@contextmanager
def intra_op(threads: int) -> Iterator[None]:
    """Let splitting kernels use ``threads`` threads (the caller's plus helpers) meanwhile."""
    global _intra
    before, _intra = _intra, max(1, int(threads))
    try:
        yield
    finally:
        _intra = before


class _Job:
    """One ``parallel_for``: pieces are taken in order by whichever thread asks first."""

    __slots__ = ("fn", "count", "next", "lock", "left", "finished", "error")

    def __init__(self, fn: Callable[[int], Any], count: int) -> None:
        self.fn, self.count = fn, count
        self.next = itertools.count()  # next() is atomic under the GIL
        self.lock = threading.Lock()
        self.left = count
        self.finished = threading.Event()
        self.error: BaseException | None = None

    def work(self) -> None:
        while True:
            i = next(self.next)
            if i >= self.count:
                return
            try:
                if self.error is None:
                    self.fn(i)
            except BaseException as exc:  # re-raised by the caller of parallel_for
                self.error = self.error or exc
            finally:
                with self.lock:
                    self.left -= 1
                    if self.left == 0:
                        self.finished.set()


#: After a piece, a helper polls for the next job this long before it sleeps: the convs of a
#: chain come back to back, and a sleeping helper on a loaded host may wait a time slice or more
#: for a core, while a polling one (it yields the GIL and the core between polls) keeps its own.
HELPER_SPIN_S = 2e-3


def _helper_loop() -> None:
    while True:
        job = None
        if HELPER_SPIN_S > 0:
            deadline = time.perf_counter() + HELPER_SPIN_S
            while job is None and time.perf_counter() < deadline:
                try:
                    job = _jobs.get_nowait()
                except queue.Empty:
                    time.sleep(0)  # lets the GIL go
        if job is None:
            job = _jobs.get()
        job.work()


def parallel_for(count: int, fn: Callable[[int], Any], threads: int | None = None) -> None:
    """Call ``fn(i)`` for ``i`` in ``range(count)`` on up to ``threads`` threads (default
    ``intra_op_threads()``): the calling thread and persistent helper threads take pieces as they
    come free, so a helper that gets no core leaves its pieces to the others. Re-raises the
    first exception of any piece."""
    threads = min(count, _intra if threads is None else threads)
    if threads <= 1:
        for i in range(count):
            fn(i)
        return
    with _helpers_lock:
        while len(_helpers) < threads - 1:
            t = threading.Thread(target=_helper_loop, name=f"hetero-intra-{len(_helpers)}",
                                 daemon=True)
            t.start()
            _helpers.append(t)
    job = _Job(fn, count)
    for _ in range(threads - 1):
        _jobs.put(job)
    job.work()
    job.finished.wait()
    if job.error is not None:
        raise job.error
