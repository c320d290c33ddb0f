"""The CPU thread policy: cores, BLAS thread limits and the intra-op pool, in one place.

Every stage that cares how many threads a CPU kernel uses asks this module: the executor (how many
threads a plan's runs get), the measured cost model (under which condition a kernel was timed) and
the kernels themselves (how many pieces a convolution or a product may run at once).

Policy (``choose``)
    BLAS runs one thread. A run's ``w`` host compute threads (CPU workers plus simulated GPUs,
    whose kernels run on the host) share the cores, and a CPU worker's heavy kernels (ops whose
    registry entry ``splits``: products, convolutions) cut their own work into pieces that
    ``cores // w`` intra-op threads take in turn. The cut depends on the shapes only, never on
    the thread count, so a result is the same bits whatever ran it: one thread or four, this plan
    alone or next to others, on an idle host or a loaded one. Nothing here is a process-wide
    setting one run could change under another: the intra-op count is the running thread's own
    (``intra_op``), and every run wants BLAS at one thread (``blas_limit``). Pieces are handed
    out dynamically, so a core that other processes hold costs at most a piece, where
    multithreaded OpenBLAS waits at a barrier for its descheduled helper threads (measured: a
    5 ms CNN took 250-800 ms per run next to two busy processes on 2 cores).

BLAS limits (``blas_limit``)
    The BLAS thread count is process-wide, so runs share one limit: the first run that enters
    sets it, the last one to leave restores it. A run that asks for another count (an executor
    given ``blas_threads``) waits until the runs under the current count are done, so no run ever
    computes under a count it did not ask for.

Intra-op pool (``intra_op``, ``parallel_for``)
    ``intra_op(threads)`` lets the splitting kernels the calling thread runs use ``threads``
    threads meanwhile; ``parallel_for(count, fn)`` hands the pieces ``fn(0) .. fn(count - 1)`` to
    the calling thread and persistent helper threads (shared by every run of the process).
"""

from __future__ import annotations

import itertools
import os
import queue
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, NamedTuple

__all__ = ["Threads", "blas_limit", "choose", "cores_per_worker", "cpu_cores", "intra_op",
           "intra_op_threads", "parallel_for"]


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


def cores_per_worker(workers: int, cores: int | None = None) -> int:
    """The cores each of ``workers`` host compute threads may use (at least one)."""
    return max(1, (cores or cpu_cores()) // max(1, workers))


def choose(host_compute: int, splits: bool, *, fixed_blas: int | None = None,
           fixed_intra: int | None = None, cores: int | None = None) -> Threads:
    """The (BLAS, intra-op) threads per worker of a run with ``host_compute`` host compute
    threads, ``splits`` telling whether a CPU worker runs a splitting kernel (see the module
    docstring). A caller's fixed BLAS count turns intra-op splitting off unless ``fixed_intra``
    is given too; above one intra-op thread, BLAS runs one."""
    if fixed_blas is not None:
        blas = max(1, int(fixed_blas))
        intra = 1 if fixed_intra is None else max(1, int(fixed_intra))
        return Threads(1 if intra > 1 else blas, intra)
    if fixed_intra is not None:
        return Threads(1, max(1, int(fixed_intra)))
    return Threads(1, cores_per_worker(host_compute, cores) if splits else 1)


# ----------------------------------------------------------------------------------------------
# BLAS limits

_controller: Any = None
_controller_modules = -1  # len(sys.modules) when _controller looked for BLAS libraries
_lease = threading.Condition()
_lease_threads = 0  # the BLAS thread count of the runs now inside blas_limit (0: none)
_lease_holders = 0
_lease_limit: Any = None  # threadpoolctl's limiter while a lease holds, to restore at the end


def _blas_controller() -> Any:
    """threadpoolctl's view of the loaded BLAS libraries. It lists them once, when made, and
    an import since then may have loaded another (SciPy brings its own OpenBLAS), so it is made
    again whenever modules were imported since: a limit then reaches every BLAS of the process.
    (Listing takes about 0.4 ms, too long to repeat for every run.)"""
    global _controller, _controller_modules
    if _controller is None or len(sys.modules) != _controller_modules:
        from threadpoolctl import ThreadpoolController

        _controller_modules = len(sys.modules)
        _controller = ThreadpoolController()
        _controller_modules = len(sys.modules)
    return _controller


def _release_openblas_control() -> None:
    """threadpoolctl (3.8 and later) lets only one thread, the first to set a limit, change a
    pthreads OpenBLAS's process-wide count, and silently ignores the others; the lease below is
    that coordination already, so whichever thread opens or closes it must be able to set."""
    try:
        from threadpoolctl import OpenBLASController
    except ImportError:  # pragma: no cover - threadpoolctl without that class
        return
    clear = getattr(OpenBLASController, "clear_controlling_thread", None)
    if clear is not None:
        clear(force=True)


def _blas_at(threads: int) -> bool:
    """Does every BLAS library of the process run ``threads`` threads already? (A direct call
    into each library: a few microseconds, where setting and restoring a limit through
    threadpoolctl costs about 80 us a run.)"""
    libs = [c for c in _blas_controller().lib_controllers if c.user_api == "blas"]
    return bool(libs) and all(c.get_num_threads() == threads for c in libs)


@contextmanager
def blas_limit(threads: int) -> Iterator[None]:
    """BLAS limited to ``threads`` meanwhile (threadpoolctl), shared by every run of the process
    that asks for the same count; a run asking for another count waits until those are done
    (see the module docstring)."""
    global _lease_threads, _lease_holders, _lease_limit
    threads = max(1, int(threads))
    with _lease:
        while _lease_holders and _lease_threads != threads:
            _lease.wait()
        if _lease_holders == 0:
            _lease_threads = threads
            try:
                if _blas_at(threads):
                    _lease_limit = None  # already there (a Dask worker's BLAS): nothing to undo
                else:
                    _release_openblas_control()
                    _lease_limit = _blas_controller().limit(limits=threads, user_api="blas")
            except Exception:  # threadpoolctl cannot see this BLAS: nothing to coordinate
                _lease_limit = None
        _lease_holders += 1
    try:
        yield
    finally:
        with _lease:
            _lease_holders = max(0, _lease_holders - 1)  # (reset to 0 in a forked child)
            if _lease_holders == 0:
                if _lease_limit is not None:
                    _release_openblas_control()
                    _lease_limit.restore_original_limits()
                    _release_openblas_control()
                _lease_limit, _lease_threads = None, 0
                _lease.notify_all()


# ----------------------------------------------------------------------------------------------
# The intra-op pool

_local = threading.local()  # .intra: threads the splitting kernels of this thread may use
_helpers: list[threading.Thread] = []
_jobs: queue.SimpleQueue = queue.SimpleQueue()
_helpers_lock = threading.Lock()


def _restart_after_fork() -> None:
    """In a forked child: only the forking thread exists, so the helpers and any lease that
    other threads held are gone, and a lock they held would stay held forever."""
    global _lease, _lease_threads, _lease_holders, _lease_limit, _jobs, _helpers_lock
    _helpers.clear()
    _jobs = queue.SimpleQueue()
    _helpers_lock = threading.Lock()
    _lease = threading.Condition()
    _lease_threads, _lease_holders, _lease_limit = 0, 0, None


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_restart_after_fork)


def intra_op_threads() -> int:
    """Threads a splitting kernel run by this thread uses now (1 outside a run that sets more)."""
    return getattr(_local, "intra", 1)


@contextmanager
def intra_op(threads: int) -> Iterator[None]:
    """Let the splitting kernels this thread runs use ``threads`` threads (this one plus
    helpers) meanwhile."""
    before = intra_op_threads()
    _local.intra = max(1, int(threads))
    try:
        yield
    finally:
        _local.intra = before


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
#: Each poll takes the GIL, though, which slows the calling thread's own Python between kernels;
#: once compiled kernels made those stretches a larger share, 0.2 ms measured best of 0, 0.2 and
#: 2 ms (interleaved, medians of 48 runs, ms: DenseNet-121 78 / 85 / 84, ResNet-50 82 / 78 / 83,
#: ShuffleNet 13.3 / 11.0 / 11.5, Inception v1 45 / 44 / 46; the machine's noise is about 5%).
HELPER_SPIN_S = 2e-4


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
    threads = min(count, intra_op_threads() if threads is None else threads)
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
