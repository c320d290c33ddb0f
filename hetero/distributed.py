"""Scale out on Dask distributed: a runner that holds a plan in a Dask actor on each worker.

What runs where across several nodes is planned by ``hetero.cluster`` (clusters, the network-
aware node placement, n2n transfers, stages; re-exported here); this module runs it:

- ``connect(client_or_address)``: a ``Connection`` to a Dask cluster: a ``distributed.Client``,
  an address ("tcp://HOST:8786") or "local:N" (a LocalCluster of N worker processes here). The
  client talks to the workers directly, not through the scheduler.
- ``Connection.runner(plan)``: a ``Runner`` with one replica of the plan per worker, each held by
  a Dask actor that loads the plan (executor, arenas, constants) once when it is created. ``run``
  sends one input set to one replica; ``map`` spreads independent inputs over all replicas and
  returns the outputs in input order.
- ``PipelineRunner(conn, stages_or_cluster_plan)``: each stage of a split graph held by a
  ``StageActor`` on its node's worker; cross-node values go worker to worker as one-way messages
  on Dask's comms, never through the scheduler or the client.

Dask and distributed are imported inside functions only: ``import hetero`` does not load them.
"""

from __future__ import annotations

import itertools
import os
import re
import time
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from hetero.cluster import (
    CLUSTER_GRAMMAR,
    DEFAULT_NETWORK,
    MESSAGE_COST,
    OBJECTIVES,
    Cluster,
    ClusterPlan,
    NodePlacement,
    Stage,
    is_cluster_spec,
    parse_cluster,
    partition_cluster,
    place_nodes,
    plan_cluster,
    qualify,
    resources_of,
    run_stages,
    split,
    split_name,
    stage_cuts,
)
from hetero.errors import DeviceError, ExecutionError, HeteroError
from hetero.executor import Executor
from hetero.passes.memory import plan_memory
from hetero.threads import cpu_cores

#: Seconds one actor call may take before the runner gives up on its worker (ExecutionError).
DEFAULT_TIMEOUT = 60.0
#: Numbers the PipelineRunners of this process (their actors' keys).
_RUNNERS = itertools.count()
#: Seconds a scatter waits for its worker to be running (the scheduler may still list a worker
#: lost a moment ago; the runner then retries with the workers the scheduler has then).
SCATTER_TIMEOUT = 3.0
#: Seconds to wait for the workers of a cluster to come up.
CONNECT_TIMEOUT = 60.0


# ----------------------------------------------------------------------------------------------
# Workers and their threads


def _host(worker: str) -> str:
    """The host part of a Dask worker address (``tcp://10.0.0.5:40123`` -> ``10.0.0.5``)."""
    return worker.rsplit("://", 1)[-1].rsplit(":", 1)[0]


def _shares(workers: Sequence[str]) -> list[int]:
    """For each of ``workers``, how many of them run on its host: the actors of one runner on
    one host split its cores between them."""
    hosts = [_host(w) for w in workers]
    return [hosts.count(h) for h in hosts]


def _worker_threads() -> int | None:
    """The thread count of the Dask worker this runs on (None outside a worker)."""
    try:
        from distributed import get_worker

        worker = get_worker()
    except (ImportError, ValueError):
        return None
    state = getattr(worker, "state", None)
    n = getattr(state, "nthreads", None) or getattr(worker, "nthreads", None)
    return int(n) if n else None


def _executor(plan: Any, share: int) -> Executor:
    """The executor an actor runs its plan with: its splitting kernels use the cores of its
    host over the ``share`` actors of the runner there (two replicas on a 2-core host get one
    core each, rather than both cutting every conv in two and fighting for the same cores), and
    no more threads than its Dask worker declares (``threads_per_worker``: Dask's own account
    of what a worker may use, so a cluster of N one-thread workers on N cores is not
    oversubscribed by one of them)."""
    loaded = plan if plan.memory is not None else plan_memory(plan)
    threads = max(1, cpu_cores() // max(1, share))
    declared = _worker_threads()
    if declared is not None:
        threads = max(1, min(threads, declared))
    return Executor(loaded, intra_op_threads=threads)


# ----------------------------------------------------------------------------------------------
# Connecting to Dask


class Connection:
    """A Dask client, and the LocalCluster it started (``close`` stops both)."""

    def __init__(self, client: Any, cluster: Any = None) -> None:
        self.client = client
        self._cluster = cluster

    def workers(self, at_least: int = 0, timeout: float = CONNECT_TIMEOUT, *,
                running: bool = True) -> list[str]:
        """The addresses of the workers, sorted (node k of a cluster runs on the k-th), as the
        scheduler knows them now (the client's own copy of the list lags by seconds, and lists
        a worker just lost): those running (``running``: ready for actors), else every worker
        the scheduler has (a paused one is alive); waits up to ``timeout`` seconds for
        ``at_least`` of them (a worker being restarted)."""
        ask = self.client.scheduler.ncores_running if running else self.client.scheduler.ncores
        deadline = time.monotonic() + timeout
        while True:
            running_now = sorted(self.client.sync(ask))
            if len(running_now) >= at_least or time.monotonic() > deadline:
                return running_now  # the caller says how many it has and needs
            time.sleep(0.1)

    def resources(self, address: str) -> dict[str, float]:
        """The Dask resources worker ``address`` offers (asked of the scheduler now: a worker
        that was just restarted is not in the client's copy yet)."""
        info = self.client.sync(self.client.scheduler.identity)["workers"].get(address, {})
        return dict(info.get("resources") or {})

    def runner(self, plan: Any, *, timeout: float = DEFAULT_TIMEOUT,
               replicas: int | None = None) -> Runner:
        """A Runner of ``plan`` with one replica per worker (or the first ``replicas``)."""
        return Runner(self, plan, timeout=timeout, replicas=replicas)

    def close(self) -> None:
        self.client.close()
        if self._cluster is not None:
            self._cluster.close()

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def connect(target: Any, *, threads_per_worker: int = 1,
            resources: dict[str, float] | None = None, direct: bool = True) -> Connection:
    """A Connection to ``target``: a ``distributed.Client``, an address such as
    "tcp://HOST:8786", or "local:N" (a LocalCluster of N worker processes on this machine, each
    with ``threads_per_worker`` threads and the given worker ``resources``).

    With ``direct`` (the default) the client talks to the actors' workers directly: a Dask
    client otherwise sends every actor call (inputs and outputs included) through the
    scheduler, which costs a hop each way (measured on localhost: 2.8 ms from the client to a
    worker, against about 1 ms direct). A given Client is switched to it
    (``direct_to_workers``); pass ``direct=False`` where the workers cannot be reached from the
    client."""
    try:
        from distributed import Client, LocalCluster
    except ImportError:
        raise HeteroError("the Dask runner needs distributed: pip install 'hetero[dask]'") from None
    if isinstance(target, Client):
        if direct:
            target.direct_to_workers = True
        return Connection(target)
    if not isinstance(target, str) or not target.strip():
        raise HeteroError(f"connect takes a distributed.Client, an address or 'local:N', "
                          f"got {target!r}")
    text = target.strip()
    m = re.fullmatch(r"local(?::(\d+))?", text)
    if m:
        n = int(m.group(1) or 2)
        if not 1 <= n <= 64:
            raise HeteroError(f"--dask {text!r}: 1 to 64 local workers")
        cluster = LocalCluster(n_workers=n, threads_per_worker=threads_per_worker,
                               processes=True, dashboard_address=":0",
                               resources=resources, silence_logs=40)
        client = Client(cluster, direct_to_workers=direct)
        client.wait_for_workers(n, timeout=CONNECT_TIMEOUT)
        return Connection(client, cluster)
    try:
        client = Client(text, timeout=CONNECT_TIMEOUT, direct_to_workers=direct)
    except OSError as exc:
        raise HeteroError(f"could not reach the Dask scheduler at {text!r}: {exc}") from None
    return Connection(client)


# ----------------------------------------------------------------------------------------------
# The actor that holds a loaded plan on a worker


class _Held:
    """What both actors answer about themselves (tests and diagnostics)."""

    executor: Executor

    def pid(self) -> int:
        return os.getpid()

    def threads(self) -> int:
        """The intra-op threads this actor's executor runs with."""
        return self.executor.intra_op_threads


class PlanActor(_Held):
    """Lives on one Dask worker: reads the plan (JSON, with its constants) once, loads its
    executor at creation (arenas allocated, constants uploaded), then runs it per call."""

    def __init__(self, plan_json: dict[str, Any], warm_inputs: list[np.ndarray] | None,
                 share: int = 1) -> None:
        from hetero.plan import Plan

        self.plan = Plan.from_json(plan_json)
        self.executor = _executor(self.plan, share)  # arenas allocated, constants uploaded
        self.runs = 0
        if warm_inputs is not None:  # first touches
            self.executor.run(list(warm_inputs))

    def run(self, *inputs: np.ndarray) -> list[np.ndarray]:
        """The plan's outputs on ``inputs`` (each array its own argument, so Dask sends each
        as its own frames)."""
        outs = self.executor.run(list(inputs))
        self.runs += 1
        return [np.array(o, copy=True) for o in outs]

    def slow_run(self, seconds: float, *inputs: np.ndarray) -> list[np.ndarray]:
        """``run`` after ``seconds`` of sleep (tests kill a worker in the gap)."""
        time.sleep(seconds)
        return self.run(*inputs)


#: The Dask worker handler that carries cross-node values (``StageActor``): one-way messages.
PUT_HANDLER = "hetero_stage_put"
#: Seconds under which a StageActor runs its sub-plan on the worker's event loop.
INLINE_SECONDS = 0.5e-3
#: The StageActors of this worker process, by key (the handler finds its receiver here).
_STAGES: Any = None


def _stages() -> Any:
    global _STAGES
    if _STAGES is None:
        import weakref

        _STAGES = weakref.WeakValueDictionary()
    return _STAGES


#: How many departure and arrival times a StageActor keeps (the latest; a long stream of
#: batches does not grow them).
TIMINGS_KEPT = 4096


def _stamp(times: dict[Any, float], key: Any, when: float) -> None:
    times[key] = when
    if len(times) > TIMINGS_KEPT:
        del times[next(iter(times))]  # the oldest: dicts keep insertion order


#: Arrays up to this many bytes travel inside the message itself (msgpack bytes); larger ones
#: as Dask-serialized frames of their own (no copy). Measured on localhost: a round trip of a
#: 1 KiB array 0.67-0.85 ms inline against 1.27-1.38 ms as frames.
INLINE_BYTES = 64 * 1024


def _pack(arrays: Iterable[Any], *, frames: bool = True) -> list[Any]:
    """Arrays for a message: small ones as (dtype, shape, bytes), the rest as frames of their
    own (``frames``: in a message hetero writes) or as they are (in the value an actor call
    returns, which Dask serializes whole: a frame marker inside it would arrive unopened)."""
    from distributed.protocol import to_serialize

    out: list[Any] = []
    for a in arrays:
        a = np.asarray(a)
        if a.nbytes <= INLINE_BYTES and a.dtype.kind in "biufc":
            out.append([a.dtype.str, list(a.shape), np.ascontiguousarray(a).tobytes()])
        else:
            out.append(to_serialize(a) if frames else a)
    return out


def _unpack(items: Iterable[Any]) -> list[np.ndarray]:
    """The arrays of a message made by ``_pack`` (writable: the executor may reuse them)."""
    out = []
    for item in items:
        if isinstance(item, (list, tuple)) and len(item) == 3 and isinstance(item[2], bytes):
            dtype, shape, data = item
            out.append(np.frombuffer(bytearray(data), dtype=np.dtype(dtype)).reshape(shape))
        else:
            out.append(np.asarray(item))
    return out


async def _put(rpc: Any, key: str, batch: int, names: Sequence[str], arrays: Iterable[Any],
               why: str | None = None) -> None:
    """Send one ``PUT_HANDLER`` message (no reply) over ``rpc``, a pooled Dask rpc to the
    receiving worker: the client's inputs and the actors' cross-node values alike."""
    await getattr(rpc, PUT_HANDLER)(reply=False, key=key, batch=batch, names=list(names),
                                    arrays=_pack(arrays), why=why)


async def _on_put(key: str = "", batch: int = 0, names: Sequence[str] = (),
                  arrays: Sequence[Any] = (), why: str | None = None) -> None:
    """The worker handler of ``PUT_HANDLER``: hands a message to the StageActor it is for (a
    message for an actor made again since is dropped: its batch failed with the old one)."""
    actor = _stages().get(key)
    if actor is not None:
        actor.receive(batch, dict(zip(names, _unpack(arrays))), why)


class StageActor(_Held):
    """Lives on the worker of one cluster node: holds that node's sub-plan, loaded once (arenas
    allocated, constants uploaded), and runs it for each batch as soon as every input of the
    batch has arrived, from the client (graph inputs, an actor call) or straight from the
    actors of other nodes (cross-node values). Outputs other nodes need are sent to their
    workers as one-way messages on the workers' pooled Dask comms (``PUT_HANDLER``, answered
    on the receiving worker's event loop: no reply waited for, no actor-call round trip, no
    scheduler); graph outputs wait here for the client's ``take``. Runs happen one after another
    on a thread of the actor's own, off the worker's event loop."""

    def __init__(self, plan_json: dict[str, Any], index: int, node: str,
                 inputs: list[tuple[Any, ...]], outputs: list[str],
                 sends: dict[int, list[str]], results: list[tuple[int, str]],
                 warm_inputs: list[np.ndarray], share: int = 1, key: str = "") -> None:
        import threading
        from concurrent.futures import ThreadPoolExecutor

        from distributed import get_worker

        from hetero.plan import Plan

        self.plan = Plan.from_json(plan_json)
        self.index, self.node, self.key = index, node, key or f"stage-{index}-{id(self)}"
        self.inputs, self.outputs = inputs, outputs
        self.sends, self.results = sends, results
        self.peers: dict[int, tuple[str, str]] = {}  # stage -> (worker address, actor key)
        self._lock = threading.Lock()
        self._pending: dict[int, dict[str, np.ndarray]] = {}
        self._done: dict[int, dict[int, np.ndarray]] = {}
        self._failed: dict[int, str] = {}
        self._waiters: dict[int, tuple[Any, Any]] = {}
        self._names = [src[2] if src[0] == "stage" else f"__graph{src[1]}" for src in inputs]
        #: perf_counter at the arrival of each cross-node value (batch, name), the latest
        #: TIMINGS_KEPT; the clock is the host's monotonic clock, shared by the processes of one
        #: machine (benchmarks)
        self.arrivals: dict[tuple[int, str], float] = {}
        self.departures: dict[tuple[int, str], float] = {}
        self._worker = get_worker()
        self._worker.handlers.setdefault(PUT_HANDLER, _on_put)
        _stages()[self.key] = self
        self._pool = ThreadPoolExecutor(1, thread_name_prefix=f"hetero-{node}")
        self.executor = _executor(self.plan, share)  # loaded once: arenas, constants
        self.executor.run(list(warm_inputs))
        t0 = time.perf_counter()
        self.executor.run(list(warm_inputs))
        #: a sub-plan that runs in well under a millisecond runs on the worker's event loop
        #: (two thread hand-offs a batch cost more than the run); longer ones on the thread
        self.inline = time.perf_counter() - t0 < INLINE_SECONDS

    def wire(self, peers: dict[int, tuple[str, str]]) -> None:
        """Where the other stages live: stage index -> (Dask worker address, actor key)."""
        self.peers = {int(k): (str(a), str(b)) for k, (a, b) in peers.items()}

    async def put(self, batch: int, names: list[str], *arrays: np.ndarray) -> None:
        """Graph inputs of ``batch`` from the client ("__graphI"), each array its own argument
        (so Dask sends each as its own frames)."""
        self.receive(batch, dict(zip(names, arrays)), None)

    def receive(self, batch: int, values: dict[str, Any], why: str | None) -> None:
        """Values of ``batch`` arrived (or, with ``why``, the batch failed upstream); once all
        of its inputs are here its run is queued on the actor's thread. Called on the event
        loop: it only files what came."""
        if why is not None:
            self._pool.submit(self.fail, batch, why)
            return
        now = time.perf_counter()
        with self._lock:
            for name in values:
                if not name.startswith("__graph"):
                    _stamp(self.arrivals, (batch, name), now)
            have = self._pending.setdefault(batch, {})
            have.update(values)
            if batch in self._failed or any(n not in have for n in self._names):
                return
            args = [have[n] for n in self._names]
            del self._pending[batch]
        if self.inline:
            self._run(batch, args)
        else:
            self._pool.submit(self._run, batch, args)

    def _run(self, batch: int, args: list[Any]) -> None:
        try:
            outs = self.executor.run(list(args))
            made = {name: np.array(o, copy=True) for name, o in zip(self.outputs, outs)}
        except Exception as exc:  # noqa: BLE001 - reported to the client and downstream nodes
            self.fail(batch, f"node {self.node}, partition {self.plan.graph.name!r}: "
                             f"{type(exc).__name__}: {exc}")
            return
        for peer, names in self.sends.items():
            self._message(peer, batch, names, [made[n] for n in names])
        if self.results:
            self._finish(batch, {i: made[name] for i, name in self.results}, None)

    def _message(self, peer: int, batch: int, names: Sequence[str], arrays: Sequence[Any],
                 why: str | None = None) -> None:
        """One one-way message to stage ``peer``'s worker, sent from the worker's event loop
        (a peer that is gone is noticed by the client's liveness checks, not here)."""
        import asyncio

        address, key = self.peers[peer]
        now = time.perf_counter()
        for name in names:
            _stamp(self.departures, (batch, name), now)

        async def send() -> None:
            try:
                await _put(self._worker.rpc(address), key, batch, names, arrays, why)
            except Exception:  # noqa: BLE001, S110 - the peer's worker left: the client says so
                pass

        loop = self._worker.loop.asyncio_loop
        try:
            on_loop = asyncio.get_running_loop() is loop
        except RuntimeError:
            on_loop = False
        if on_loop:
            loop.create_task(send())
        else:
            asyncio.run_coroutine_threadsafe(send(), loop)

    def timings(self) -> dict[str, dict[str, float]]:
        """The departure and arrival clock of every cross-node value sent or received here,
        keyed "batch/name" (scripts/bench_distributed.py)."""
        with self._lock:
            return {"sent": {f"{b}/{n}": t for (b, n), t in self.departures.items()},
                    "arrived": {f"{b}/{n}": t for (b, n), t in self.arrivals.items()}}

    def fail(self, batch: int, why: str) -> None:
        """``batch`` failed upstream or here: nothing of it is run or returned."""
        with self._lock:
            if batch in self._failed:
                return
            self._pending.pop(batch, None)
        for peer in self.sends:
            self._message(peer, batch, (), (), why)
        self._finish(batch, None, why)

    def _finish(self, batch: int, results: dict[int, np.ndarray] | None,
                why: str | None) -> None:
        with self._lock:
            if why is not None:
                self._failed[batch] = why
            else:
                self._done[batch] = results or {}
            waiter = self._waiters.pop(batch, None)
        if waiter is not None:
            loop, fut = waiter
            loop.call_soon_threadsafe(lambda: fut.done() or fut.set_result(None))

    async def take(self, batch: int) -> tuple[list[int], list[Any]]:
        """The graph outputs this node made for ``batch``, once made (an error if it failed):
        their positions among the graph's outputs, and the arrays packed as in messages."""
        import asyncio

        loop = asyncio.get_running_loop()
        while True:
            with self._lock:
                if batch in self._done:
                    done = self._done.pop(batch)
                    return list(done), _pack(done.values(), frames=False)
                if batch in self._failed:
                    raise ExecutionError(self._failed.pop(batch))
                fut = loop.create_future()
                self._waiters[batch] = (loop, fut)
            await fut


class PipelineRunner:
    """A graph split over the nodes of a cluster (``hetero.cluster.plan_cluster``), one node per
    Dask worker (node k on the k-th worker in address order), each stage's sub-plan held by a
    ``StageActor`` on its node's worker (a node that runs several stages holds several).

    ``run(*inputs)`` runs one input set; ``map(batches)`` sends every batch in at once, so node
    0 works on batch k+1 while node 1 works on batch k, and returns the outputs in order. A
    worker that dies, or a run that takes more than ``timeout`` seconds, gives an ExecutionError
    naming the node and its partition within ``timeout`` (the liveness of the workers is checked
    every ``poll`` seconds meanwhile); no output of a failed batch is returned, and the next call
    makes every actor again.
    """

    def __init__(self, conn: Connection, stages: Sequence[Stage] | ClusterPlan, *,
                 timeout: float = DEFAULT_TIMEOUT, poll: float = 0.5,
                 needs: Sequence[dict[str, float]] | None = None) -> None:
        self.conn = conn
        #: the ClusterPlan the stages come from, where one was given
        self.plan = stages if isinstance(stages, ClusterPlan) else None
        self.stages = list(stages.stages if isinstance(stages, ClusterPlan) else stages)
        #: how many cluster nodes (Dask workers) the stages need: node k runs on the k-th
        self.nodes = max(st.node_index for st in self.stages) + 1
        #: the Dask worker resources each node needs (default GPU=n for its n real GPUs)
        self.needs = [dict(n) for n in needs] if needs is not None else [
            resources_of(st.plan.machine) for st in self.stages]
        self.timeout, self.poll = float(timeout), float(poll)
        self._jsons = [st.plan.to_json() for st in self.stages]
        self._actors: list[Any] | None = None
        self._workers: list[str] = []
        self._batch = itertools.count()
        self._id = f"hetero-{os.getpid()}-{next(_RUNNERS)}"
        self._generation = itertools.count()
        self._start()

    def _start(self) -> None:
        """Make the node actors; a worker that died a moment ago may still be listed by the
        scheduler (the scatter to it fails), so a failure of Dask's own retries until the
        timeout; hetero's errors (a resource mismatch, a load that failed) do not."""
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                return self._start_once()
            except HeteroError:
                raise
            except Exception as exc:  # noqa: BLE001 - a worker that left, a closed comm
                if time.monotonic() > deadline:
                    raise ExecutionError(f"starting the actors of {len(self.stages)} cluster "
                                         f"node(s) failed within {self.timeout:g} s: "
                                         f"{type(exc).__name__}: {exc}") from None
                time.sleep(self.poll)

    def _start_once(self) -> None:
        nodes = self.conn.workers(at_least=self.nodes, timeout=self.timeout)
        if len(nodes) < self.nodes:
            raise ExecutionError(f"{self.nodes} cluster node(s) need as many Dask workers; "
                                 f"the cluster has {len(nodes)}")
        nodes = nodes[:self.nodes]
        workers = [nodes[st.node_index] for st in self.stages]  # each stage's worker
        node_share = dict(zip(nodes, _shares(nodes)))
        for st, w, needs in zip(self.stages, workers, self.needs):
            have = self.conn.resources(w)
            short = {k: v for k, v in needs.items() if have.get(k, 0) < v}
            if short:
                want = " ".join(f"{k}={v:g}" for k, v in short.items())
                offer = " ".join(f"{k}={v:g}" for k, v in have.items()) or "none"
                raise DeviceError(f"node {st.node} (machine {st.plan.machine.spec!r}) needs Dask "
                                  f"worker resources {want}, but its worker {w} offers {offer}; "
                                  f"start that worker with --resources \"{want}\" (nothing was "
                                  "run)")
        futs = []
        key = f"{self._id}.{next(self._generation)}"  # a message for lost actors finds none
        self._key = key
        for st, js, w in zip(self.stages, self._jsons, workers):
            share = node_share[w]
            warm = [np.zeros(s.shape, s.dtype) for s in st.plan.graph.input_specs]
            # the sub-plan (weights included) goes straight to its worker, not via the scheduler
            # a worker lost a moment ago may still be listed: give up on it soon and retry
            [data] = self.conn.client.scatter([js], workers=[w], direct=True, hash=False,
                                              timeout=SCATTER_TIMEOUT)
            futs.append(self.conn.client.submit(
                StageActor, data, st.index, st.node, list(st.inputs), list(st.outputs),
                {k: list(v) for k, v in st.sends.items()}, list(st.results), warm, share,
                f"{key}-{st.index}", actor=True, workers=[w], allow_other_workers=False,
                pure=False))
        actors = []
        for st, w, fut in zip(self.stages, workers, futs):
            try:
                actors.append(fut.result(timeout=self.timeout))
            except Exception as exc:  # noqa: BLE001 - every cause becomes one error
                raise ExecutionError(f"node {st.node} (Dask worker {w}): loading partition "
                                     f"{st.plan.graph.name!r} failed: "
                                     f"{type(exc).__name__}: {exc}") from None
        for st, w, a in zip(self.stages, workers, actors):
            try:
                a.wire({i: (w2, f"{key}-{i}") for i, w2 in enumerate(workers)}).result(
                    timeout=self.timeout)
            except Exception as exc:  # noqa: BLE001 - the worker died between load and wiring
                raise ExecutionError(f"node {st.node} (Dask worker {w}), partition "
                                     f"{st.plan.graph.name!r}: wiring the node's actors failed: "
                                     f"{type(exc).__name__}: {exc}") from None
        self._actors, self._workers = actors, workers

    def _send(self, batch: int, inputs: Sequence[Any]) -> None:
        assert self._actors is not None
        arrays = [np.asarray(a) for a in inputs]
        for st, actor, w in zip(self.stages, self._actors, self._workers):
            mine = {f"__graph{src[1]}": arrays[src[1]] for src in st.inputs if src[0] == "graph"}
            if mine or not any(src[0] == "stage" for src in st.inputs):
                try:
                    if self.conn.client.direct_to_workers:
                        self._message(w, f"{self._key}-{st.index}", batch, mine)
                    else:  # the scheduler relays the client's calls: an actor call
                        actor.put(batch, list(mine), *mine.values())
                except Exception as exc:  # noqa: BLE001 - the worker is gone or its comm closed
                    self._lost(st, w, f"{type(exc).__name__}: {exc}")

    def _message(self, worker: str, key: str, batch: int, values: dict[str, Any]) -> None:
        """The inputs of ``batch`` to a node's actor as one one-way message on the client's
        direct comm to its worker (the handler the actors use between nodes): no reply comes
        back, so the node starts as soon as it arrives and sends nothing to the client until its
        results are taken. A worker that is gone is noticed by ``_take``'s liveness checks."""
        import asyncio

        client = self.conn.client
        asyncio.run_coroutine_threadsafe(
            _put(client.rpc(worker), key, batch, list(values), list(values.values())),
            client.loop.asyncio_loop)

    def _take(self, batch: int) -> list[np.ndarray]:
        assert self._actors is not None
        results: dict[int, np.ndarray] = {}
        deadline = time.monotonic() + self.timeout
        for st, actor, w in zip(self.stages, self._actors, self._workers):
            if not st.results:
                continue
            try:
                call = actor.take(batch)
            except Exception as exc:  # noqa: BLE001 - Dask raises on a lost actor's attribute
                self._lost(st, w, f"{type(exc).__name__}: {exc}")
            while True:
                try:
                    where, arrays = call.result(timeout=self.poll)
                    results.update(zip(where, _unpack(arrays)))
                    break
                except ExecutionError:
                    raise
                except Exception as exc:  # noqa: BLE001 - a timeout of one poll, or a lost worker
                    if not isinstance(exc, TimeoutError):
                        self._lost(st, w, f"{type(exc).__name__}: {exc}")
                alive = set(self.conn.workers(running=False))
                missing = [(st2, w2) for st2, w2 in zip(self.stages, self._workers)
                           if w2 not in alive]
                if missing:  # confirmed a poll later: the scheduler's list can lag a restart
                    time.sleep(self.poll)
                    alive = set(self.conn.workers(running=False))
                    for st2, w2 in missing:
                        if w2 not in alive:
                            self._lost(st2, w2, "its Dask worker died")
                if time.monotonic() > deadline:
                    self._lost(st, w, f"no result within {self.timeout:g} s")
        return [results[i] for i in sorted(results)]

    def _lost(self, st: Stage, worker: str, why: str) -> None:
        self._actors = None
        raise ExecutionError(f"node {st.node} (Dask worker {worker}), partition "
                             f"{st.plan.graph.name!r}: {why}; the node's actors are made again "
                             "on the next run")

    def _ensure(self) -> None:
        if self._actors is None:
            self._start()

    def run(self, *inputs: Any) -> list[np.ndarray]:
        """The whole graph's outputs on ``inputs``."""
        self._ensure()
        batch = next(self._batch)
        self._send(batch, inputs)
        return self._take(batch)

    def map(self, batches: Iterable[Sequence[Any]]) -> list[list[np.ndarray]]:
        """The outputs of every input set of ``batches``, in order, pipelined over the nodes."""
        self._ensure()
        ids = []
        for inputs in batches:
            ids.append(next(self._batch))
            self._send(ids[-1], inputs)
        return [self._take(b) for b in ids]


# ----------------------------------------------------------------------------------------------
# The runner


class Runner:
    """One replica of a plan per Dask worker. ``run(*inputs)`` runs one input set on the next
    replica; ``map(batches)`` runs many, spread over every replica, outputs in input order.

    A worker that dies or does not answer within ``timeout`` seconds gives an ExecutionError
    naming the worker and the plan; its actor is dropped and made again on the next call, and
    the outputs of a failed call are never returned.
    """

    def __init__(self, conn: Connection, plan: Any, *, timeout: float = DEFAULT_TIMEOUT,
                 replicas: int | None = None) -> None:
        self.conn = conn
        self.plan = plan
        self.timeout = float(timeout)
        workers = conn.workers(at_least=replicas or 1)
        if not workers:
            raise ExecutionError("the Dask cluster has no worker")
        self.workers = workers[:replicas] if replicas else workers
        self._check_resources()
        self._json = plan.to_json()
        self._actors: dict[str, Any] = {}
        self._turn = itertools.cycle(range(len(self.workers)))
        for w in self.workers:
            self._actor(w)

    def _check_resources(self) -> None:
        need = resources_of(self.plan.machine).get("GPU", 0)
        if not need:
            return
        for w in self.workers:
            have = self.conn.resources(w).get("GPU", 0)
            if have < need:
                raise DeviceError(f"Dask worker {w} offers GPU={have:g} but the plan's machine "
                                  f"{self.plan.machine.spec!r} has {need} real GPU(s); start the "
                                  f"worker with --resources GPU={need}, or plan for this "
                                  "worker's devices")

    def _actor(self, worker: str) -> Any:
        actor = self._actors.get(worker)
        if actor is None:
            if worker not in self.conn.workers():
                raise ExecutionError(f"Dask worker {worker} has left the cluster; the plan "
                                     f"{self.plan.graph.name!r} cannot run there")
            warm = [np.zeros(s.shape, s.dtype) for s in self.plan.graph.input_specs]
            share = _shares(self.workers)[self.workers.index(worker)]
            try:
                [data] = self.conn.client.scatter([self._json], workers=[worker], direct=True,
                                                  hash=False, timeout=SCATTER_TIMEOUT)
                fut = self.conn.client.submit(PlanActor, data, warm, share, actor=True,
                                              workers=[worker], allow_other_workers=False,
                                              pure=False)
                actor = fut.result(timeout=self.timeout)
            except Exception as exc:  # noqa: BLE001 - every cause becomes one error
                raise ExecutionError(f"Dask worker {worker}: loading the plan "
                                     f"{self.plan.graph.name!r} failed: "
                                     f"{type(exc).__name__}: {exc}") from None
            self._actors[worker] = actor
        return actor

    def _call(self, worker: str, method: str, *args: Any) -> Any:
        """The future of ``method(*args)`` on ``worker``'s replica; Dask raises a plain
        RuntimeError on the attribute of an actor whose worker is gone, made an ExecutionError
        here like every other loss."""
        actor = self._actor(worker)
        try:
            return getattr(actor, method)(*args)
        except Exception as exc:  # noqa: BLE001 - the worker holding the actor was lost
            self._actors.pop(worker, None)
            raise ExecutionError(f"node {worker} (Dask worker), partition: the whole plan "
                                 f"{self.plan.graph.name!r}, {method}: "
                                 f"{type(exc).__name__}: {exc}; the replica is made again "
                                 "on the next run") from None

    def _collect(self, worker: str, call: Any, what: str) -> list[np.ndarray]:
        try:
            return call.result(timeout=self.timeout)
        except HeteroError:
            raise
        except Exception as exc:  # noqa: BLE001 - a lost worker, a timeout, a comm error
            self._actors.pop(worker, None)
            why = ("no answer within " f"{self.timeout:g} s" if isinstance(exc, TimeoutError)
                   else f"{type(exc).__name__}: {exc}")
            raise ExecutionError(f"node {worker} (Dask worker), partition: the whole plan "
                                 f"{self.plan.graph.name!r}, {what}: {why}; the replica is "
                                 "made again on the next run") from None

    def run(self, *inputs: Any) -> list[np.ndarray]:
        """The outputs of the plan on ``inputs``, from the next replica."""
        worker = self.workers[next(self._turn)]
        arrays = [np.asarray(a) for a in inputs]
        return self._collect(worker, self._call(worker, "run", *arrays), "run")

    def map(self, batches: Iterable[Sequence[Any]]) -> list[list[np.ndarray]]:
        """The outputs for each input set of ``batches``, in order; all replicas work at once
        (each runs its calls one after another)."""
        pending = []
        for batch in batches:
            worker = self.workers[next(self._turn)]
            arrays = [np.asarray(a) for a in batch]
            pending.append((worker, self._call(worker, "run", *arrays)))
        results = []
        for i, (worker, call) in enumerate(pending):
            results.append(self._collect(worker, call, f"map input {i}"))
        return results

    def _slow_run(self, seconds: float, *inputs: Any) -> list[np.ndarray]:
        worker = self.workers[next(self._turn)]
        arrays = [np.asarray(a) for a in inputs]
        return self._collect(worker, self._call(worker, "slow_run", seconds, *arrays),
                             "run")


#: hetero.cluster's planning API is re-exported: ``hd.split(...)`` then ``hd.PipelineRunner``.
__all__ = ["CLUSTER_GRAMMAR", "DEFAULT_NETWORK", "DEFAULT_TIMEOUT", "MESSAGE_COST", "OBJECTIVES",
           "Cluster", "ClusterPlan", "Connection", "NodePlacement", "PipelineRunner", "PlanActor",
           "Runner", "Stage", "StageActor", "connect", "is_cluster_spec", "parse_cluster",
           "partition_cluster", "place_nodes", "plan_cluster", "qualify", "resources_of",
           "run_stages", "split", "split_name", "stage_cuts"]
