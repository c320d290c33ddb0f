"""Scale out on Dask distributed: clusters of several nodes, and a runner that holds a plan in a
Dask actor on each worker.

- ``parse_cluster("2x(cpu:2,sim:1@t4)")`` / ``parse_cluster("node0=cpu:2,sim:1;node1=cpu:4")``:
  a ``Cluster`` of per-node Machines joined by a network ``Link`` (default 10 Gb/s, 50 us;
  override with a trailing ``;net=25gbps/20us``). Device names on node 0 stay unqualified
  ("cpu:0"); on node k they read "nodek/cpu:0" (``qualify``).
- ``connect(client_or_address)``: a ``Connection`` to a Dask cluster: a ``distributed.Client``,
  an address ("tcp://HOST:8786") or "local:N" (a LocalCluster of N worker processes here).
- ``Connection.runner(plan)``: a ``Runner`` with one replica of the plan per worker, each held by
  a Dask actor that loads the plan (executor, arenas, constants) once when it is created. ``run``
  sends one input set to one replica; ``map`` spreads independent inputs over all replicas and
  returns the outputs in input order. Inputs and outputs travel between the client and the
  actor's worker directly (actor calls), not through the scheduler.

Dask and distributed are imported inside functions only: ``import hetero`` does not load them.
"""

from __future__ import annotations

import itertools
import math
import os
import re
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from hetero.devices import Link, Machine
from hetero.errors import DeviceError, ExecutionError, HeteroError
from hetero.executor import Executor
from hetero.passes.memory import plan_memory
from hetero.threads import cpu_cores

#: The network between two nodes when the spec does not say: 10 Gb/s Ethernet, 50 us.
DEFAULT_NETWORK = Link(10e9 / 8, 50e-6)
#: Seconds one actor call may take before the runner gives up on its worker (ExecutionError).
DEFAULT_TIMEOUT = 60.0
#: Numbers the PipelineRunners of this process (their actors' keys).
_RUNNERS = itertools.count()
#: Seconds to wait for the workers of a cluster to come up.
CONNECT_TIMEOUT = 60.0

CLUSTER_GRAMMAR = ("a cluster spec is NxMACHINE, e.g. '2x(cpu:2,sim:1@t4)', or NAME=MACHINE items "
                   "separated by ';', e.g. 'node0=cpu:2,sim:1;node1=cpu:4'; a last item "
                   "'net=BW/LAT' (e.g. 'net=10gbps/50us') sets the network between nodes "
                   "(default 10 Gb/s, 50 us)")

_REPEAT_RE = re.compile(r"^(\d+)\s*x\s*\((.*)\)$", re.S)
_NAME_RE = re.compile(r"^[a-z][a-z0-9_-]*$")
_BW_RE = re.compile(r"^([0-9.]+(?:e[+-]?\d+)?)\s*(gbps|mbps|gb/s|mb/s|gbit|mbit)?$")
_LAT_RE = re.compile(r"^([0-9.]+(?:e[+-]?\d+)?)\s*(us|ms|s|ns)?$")


# ----------------------------------------------------------------------------------------------
# Clusters of several nodes


def qualify(node_index: int, device: str, node_name: str | None = None) -> str:
    """The cluster-wide name of ``device`` on node ``node_index``: unchanged on node 0, else
    "NODE/device" (so single-node names never change)."""
    if node_index == 0:
        return device
    return f"{node_name or f'node{node_index}'}/{device}"


def split_name(name: str) -> tuple[str | None, str]:
    """("node1", "cpu:0") for "node1/cpu:0"; (None, "cpu:0") for an unqualified name."""
    node, sep, dev = name.partition("/")
    return (node, dev) if sep else (None, name)


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


@dataclass(frozen=True)
class Cluster:
    """Named nodes, each a Machine, joined by one network ``Link`` (every pair of nodes)."""

    names: tuple[str, ...]
    machines: tuple[Machine, ...]
    network: Link = DEFAULT_NETWORK
    spec: str = ""

    def __post_init__(self) -> None:
        if not self.machines:
            raise DeviceError(f"a cluster needs at least one node: {CLUSTER_GRAMMAR}")
        if len(set(self.names)) != len(self.names):
            raise DeviceError(f"cluster spec {self.spec!r} names a node twice")

    def __len__(self) -> int:
        return len(self.machines)

    def device_names(self) -> list[str]:
        """Every device of every node, by its cluster-wide name."""
        return [qualify(i, d.name, n) for i, (n, m) in enumerate(zip(self.names, self.machines))
                for d in m.devices]

    def node_of(self, name: str) -> int:
        """The index of the node a cluster-wide device name is on (DeviceError if none)."""
        node, dev = split_name(name)
        index = 0 if node is None else (self.names.index(node) if node in self.names else -1)
        if index < 0 or dev not in self.machines[index]:
            raise DeviceError(f"device {name!r} is not in cluster {self.spec!r} "
                              f"({', '.join(self.device_names())})")
        return index

    def transfer_time(self, nbytes: float, src: str, dst: str) -> float:
        """Seconds to move ``nbytes`` between two devices (cluster-wide names): the node's own
        link within a node; across nodes, down to the source node's host, over the network, and
        up to the destination device."""
        a, b = self.node_of(src), self.node_of(dst)
        sdev, ddev = split_name(src)[1], split_name(dst)[1]
        if a == b:
            return self.machines[a].transfer_time(nbytes, sdev, ddev)
        return (self.machines[a].transfer_time(nbytes, sdev, "host")
                + self.network.time(nbytes)
                + self.machines[b].transfer_time(nbytes, "host", ddev))

    def node_resources(self, index: int) -> dict[str, float]:
        """The Dask worker resources node ``index`` needs: GPU=n for its real GPUs."""
        return _resources_of(self.machines[index])

    def to_json(self) -> dict[str, Any]:
        return {"spec": self.spec, "network": self.network.to_json(),
                "nodes": [{"name": n, "machine": m.to_json()}
                          for n, m in zip(self.names, self.machines)]}

    def describe(self) -> str:
        rows = [f"cluster {self.spec}: {len(self)} node(s), network "
                f"{self.network.bandwidth * 8 / 1e9:.1f} Gb/s, {self.network.latency * 1e6:.0f} us"]
        for i, (n, m) in enumerate(zip(self.names, self.machines)):
            rows.append(f"  node {n}: {', '.join(qualify(i, d.name, n) for d in m.devices)}")
        return "\n".join(rows)


def _parse_network(text: str, spec: str) -> Link:
    bw_text, sep, lat_text = text.partition("/")
    bw = _BW_RE.match(bw_text.strip().lower())
    lat = _LAT_RE.match(lat_text.strip().lower()) if sep else None
    if bw is None or (sep and lat is None):
        raise DeviceError(f"bad network {text!r} in cluster spec {spec!r}: {CLUSTER_GRAMMAR}")
    scale = {"gbps": 1e9 / 8, "gb/s": 1e9 / 8, "gbit": 1e9 / 8, "mbps": 1e6 / 8, "mb/s": 1e6 / 8,
             "mbit": 1e6 / 8, None: 1e9 / 8}[bw.group(2)]
    bandwidth = float(bw.group(1)) * scale
    latency = DEFAULT_NETWORK.latency
    if lat is not None:
        latency = float(lat.group(1)) / {"us": 1e6, "ms": 1e3, "s": 1.0, "ns": 1e9,
                                         None: 1e6}[lat.group(2)]
    if not (bandwidth > 0 and math.isfinite(bandwidth)) or latency < 0:
        raise DeviceError(f"network {text!r} in cluster spec {spec!r}: the bandwidth must be "
                          "positive and the latency not negative")
    return Link(bandwidth, latency)


def is_cluster_spec(spec: str) -> bool:
    """Is ``spec`` a spec of several nodes (``2x(...)``, ``a=...;b=...``), not one machine's?"""
    text = spec.strip().lower()
    return bool(_REPEAT_RE.match(text.split(";")[0].strip())) or "=" in text or ";" in text


def parse_cluster(spec: str | Cluster) -> Cluster:
    """A Cluster from ``"2x(cpu:2,sim:1@t4)"`` or ``"node0=cpu:2,sim:1;node1=cpu:4"`` (plus an
    optional ``";net=10gbps/50us"``); a plain machine spec is a cluster of one node."""
    if isinstance(spec, Cluster):
        return spec
    if not isinstance(spec, str) or not spec.strip():
        raise DeviceError(f"bad cluster spec {spec!r}: {CLUSTER_GRAMMAR}")
    items = [s.strip() for s in spec.strip().split(";") if s.strip()]
    network = DEFAULT_NETWORK
    if items and items[-1].lower().startswith("net="):
        network = _parse_network(items.pop()[4:], spec)
    if not items:
        raise DeviceError(f"cluster spec {spec!r} has no node: {CLUSTER_GRAMMAR}")
    names: list[str] = []
    machines: list[Machine] = []
    repeat = _REPEAT_RE.match(items[0]) if len(items) == 1 else None
    if repeat:
        n = int(repeat.group(1))
        if not 1 <= n <= 256:
            raise DeviceError(f"cluster spec {spec!r} asks for {n} nodes (1 to 256)")
        for i in range(n):
            names.append(f"node{i}")
            machines.append(Machine.parse(repeat.group(2)))
    else:
        for item in items:
            name, sep, body = item.partition("=")
            if not sep:
                if len(items) > 1:
                    raise DeviceError(f"item {item!r} of cluster spec {spec!r} has no node "
                                      f"name: {CLUSTER_GRAMMAR}")
                name, body = "node0", item
            name = name.strip().lower()
            if not _NAME_RE.match(name):
                raise DeviceError(f"bad node name {name!r} in cluster spec {spec!r}: "
                                  f"{CLUSTER_GRAMMAR}")
            names.append(name)
            machines.append(Machine.parse(body))
    return Cluster(tuple(names), tuple(machines), network, spec.strip())


# ----------------------------------------------------------------------------------------------
# Connecting to Dask


class Connection:
    """A Dask client, and the LocalCluster it started (``close`` stops both)."""

    def __init__(self, client: Any, cluster: Any = None) -> None:
        self.client = client
        self._cluster = cluster

    def workers(self, at_least: int = 0, timeout: float = CONNECT_TIMEOUT) -> list[str]:
        """The addresses of the workers, sorted (node k of a cluster runs on the k-th); waits up
        to ``timeout`` seconds for ``at_least`` of them (a worker being restarted)."""
        if at_least and len(self.client.scheduler_info()["workers"]) < at_least:
            try:
                self.client.wait_for_workers(at_least, timeout=timeout)
            except TimeoutError:
                pass  # the caller says how many it has and needs
        return sorted(self.client.scheduler_info()["workers"])

    def resources(self, address: str) -> dict[str, float]:
        info = self.client.scheduler_info()["workers"].get(address, {})
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
PUT_HANDLER = "hetero_stage_put"  # the rpc attribute below spells it out
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


#: Arrays up to this many bytes travel inside the message itself (msgpack bytes); larger ones
#: as Dask-serialized frames of their own (no copy). Measured on localhost: a round trip of a
#: 1 KiB array 0.67-0.85 ms inline against 1.27-1.38 ms as frames.
INLINE_BYTES = 64 * 1024


def _pack(arrays: Iterable[Any]) -> list[Any]:
    """Arrays for a message: small ones as (dtype, shape, bytes), the rest as frames."""
    from distributed.protocol import to_serialize

    out: list[Any] = []
    for a in arrays:
        a = np.asarray(a)
        if a.nbytes <= INLINE_BYTES and a.dtype.kind in "biufc":
            out.append([a.dtype.str, list(a.shape), np.ascontiguousarray(a).tobytes()])
        else:
            out.append(to_serialize(a))
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
        #: perf_counter at the arrival of each cross-node value (batch, name); the clock is
        #: the host's monotonic clock, shared by the processes of one machine (benchmarks)
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
                    self.arrivals[(batch, name)] = now
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
            self.departures[(batch, name)] = now

        async def send() -> None:
            try:
                await self._worker.rpc(address).hetero_stage_put(
                    reply=False, key=key, batch=batch, names=list(names),
                    arrays=_pack(arrays), why=why)
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
                    return list(done), _pack(done.values())
                if batch in self._failed:
                    raise ExecutionError(self._failed.pop(batch))
                fut = loop.create_future()
                self._waiters[batch] = (loop, fut)
            await fut


class PipelineRunner:
    """A graph split over the nodes of a cluster, one node per Dask worker (node k on the k-th
    worker in address order), each node's sub-plan held by a ``StageActor``.

    ``run(*inputs)`` runs one input set; ``map(batches)`` sends every batch in at once, so node
    0 works on batch k+1 while node 1 works on batch k, and returns the outputs in order. A
    worker that dies, or a run that takes more than ``timeout`` seconds, gives an ExecutionError
    naming the node and its partition within ``timeout`` (the liveness of the workers is checked
    every ``poll`` seconds meanwhile); no output of a failed batch is returned, and the next call
    makes every actor again.
    """

    def __init__(self, conn: Connection, stages: Sequence[Stage], *,
                 timeout: float = DEFAULT_TIMEOUT, poll: float = 0.5,
                 needs: Sequence[dict[str, float]] | None = None) -> None:
        self.conn = conn
        self.stages = list(stages)
        #: the Dask worker resources each node needs (default GPU=n for its n real GPUs)
        self.needs = [dict(n) for n in needs] if needs is not None else [
            _resources_of(st.plan.machine) for st in self.stages]
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
        workers = self.conn.workers(at_least=len(self.stages), timeout=self.timeout)
        if len(workers) < len(self.stages):
            raise ExecutionError(f"{len(self.stages)} cluster node(s) need as many Dask workers; "
                                 f"the cluster has {len(workers)}")
        workers = workers[:len(self.stages)]
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
        for st, js, w, share in zip(self.stages, self._jsons, workers, _shares(workers)):
            warm = [np.zeros(s.shape, s.dtype) for s in st.plan.graph.input_specs]
            # the sub-plan (weights included) goes straight to its worker, not via the scheduler
            [data] = self.conn.client.scatter([js], workers=[w], direct=True, hash=False)
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

        async def send() -> None:
            await client.rpc(worker).hetero_stage_put(
                reply=False, key=key, batch=batch, names=list(values),
                arrays=_pack(values.values()), why=None)

        asyncio.run_coroutine_threadsafe(send(), client.loop.asyncio_loop)

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
                alive = set(self.conn.workers())
                missing = [(st2, w2) for st2, w2 in zip(self.stages, self._workers)
                           if w2 not in alive]
                if missing:  # confirmed a poll later: the scheduler's list can lag a restart
                    time.sleep(self.poll)
                    alive = set(self.conn.workers())
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
        need = _resources_of(self.plan.machine).get("GPU", 0)
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
            [data] = self.conn.client.scatter([self._json], workers=[worker], direct=True,
                                              hash=False)
            share = _shares(self.workers)[self.workers.index(worker)]
            fut = self.conn.client.submit(PlanActor, data, warm, share, actor=True,
                                          workers=[worker], allow_other_workers=False, pure=False)
            try:
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


# ----------------------------------------------------------------------------------------------
# Splitting a graph over the nodes of a cluster


@dataclass(frozen=True)
class Stage:
    """One node's share of a split graph: its sub-plan, and where its values come and go.

    Attributes:
        index, node: the node's position and name in the cluster.
        plan: the node's sub-plan (compiled for the node's Machine by the ordinary pipeline:
            placement, partitioning into device partitions, schedule, memory).
        inputs: for each input of the sub-plan, in order, ``("graph", i)`` (the i-th input of
            the whole graph) or ``("stage", j, name)`` (output ``name`` of stage j, a
            cross-node value).
        outputs: the names of the sub-plan's outputs, in its output order.
        sends: stage index -> names of this stage's outputs that stage needs.
        results: (position in the whole graph's outputs, name of this stage's output).
    """

    index: int
    node: str
    plan: Any
    inputs: tuple[tuple[Any, ...], ...]
    outputs: tuple[str, ...]
    sends: dict[int, tuple[str, ...]]
    results: tuple[tuple[int, str], ...]


def _resources_of(machine: Machine) -> dict[str, float]:
    """The Dask worker resources a machine's devices need: GPU=n for its n real GPUs."""
    real = sum(d.backend == "cupy" for d in machine.gpus())
    return {"GPU": float(real)} if real else {}


def _value_name(v: Any) -> str:
    return v.node if v.index == 0 else f"{v.node}__out{v.index}"


def stage_cuts(graph: Any, cluster: Cluster, cost: Any = None) -> list[int]:
    """Where to cut the compute nodes of ``graph`` (in graph order) into one contiguous run per
    node: the cuts that minimise the slowest stage, a stage's time being its nodes' times on the
    node's fastest device for each plus the network time of the values crossing into it (so a
    pipelined ``map`` runs at the pace of the slowest node). ``cost`` is the cost model, per
    node's machine as ``compile`` takes it: "roofline" (default), "measured" (the kernel
    times ``hetero calibrate`` cached; a kernel not measured keeps its roofline time) or an
    object."""
    from hetero.cost import input_specs, resolve_cost

    compute = [n for n in graph.nodes if n.computes]
    k, n = len(cluster), len(compute)
    if n < k:
        raise DeviceError(f"graph {graph.name!r} has {n} compute node(s), fewer than the "
                          f"{k} nodes of cluster {cluster.spec!r}")
    pos = {node.name: i for i, node in enumerate(compute)}
    prefix = []
    for m in cluster.machines:
        model = resolve_cost(cost, m, graph)
        acc = [0.0]
        for node in compute:
            ins = input_specs(graph, node)
            t = min(model.compute(node, d, ins) for d in m.devices)
            acc.append(acc[-1] + (t if math.isfinite(t) else 1.0))
        prefix.append(acc)
    # bytes crossing a cut before compute position p (produced before p, read at or after p)
    crossing = [0.0] * (n + 1)
    last_use: dict[Any, int] = {}
    for node in compute:
        for v in node.inputs:
            if v.node in pos:
                last_use[v] = max(last_use.get(v, -1), pos[node.name])
    for v, last in last_use.items():
        nbytes = graph.spec(v).nbytes
        for p in range(pos[v.node] + 1, last + 1):
            crossing[p] += nbytes
    inf = math.inf
    best = [[inf] * (n + 1) for _ in range(k + 1)]
    back = [[0] * (n + 1) for _ in range(k + 1)]
    best[0][0] = 0.0
    for s in range(1, k + 1):
        for b in range(s, n - (k - s) + 1):
            for a in range(s - 1, b):
                if best[s - 1][a] == inf:
                    continue
                t = prefix[s - 1][b] - prefix[s - 1][a]
                if a > 0:
                    t += cluster.network.time(crossing[a])
                cand = max(best[s - 1][a], t)
                if cand < best[s][b]:
                    best[s][b], back[s][b] = cand, a
    cuts, b = [], n
    for s in range(k, 0, -1):
        b = back[s][b]
        cuts.append(b)
    return sorted(cuts)[1:]  # the first stage starts at 0


def split(graph: Any, cluster: Cluster | str, *, cuts: Sequence[int] | None = None,
          **compile_options: Any) -> list[Stage]:
    """``graph`` split over the nodes of ``cluster``: each node gets a contiguous run of the
    compute nodes (``cuts``: the compute-node positions where node 1, 2, ... begin; by default
    ``stage_cuts`` under the ``cost`` model of ``compile_options``), compiled into a sub-plan
    for that node's Machine whose cross-node inputs and outputs are explicit graph inputs and
    outputs."""

    cluster = parse_cluster(cluster)
    compute = [n for n in graph.nodes if n.computes]
    cuts = list(stage_cuts(graph, cluster, compile_options.get("cost"))
                if cuts is None else cuts)
    bounds = [0, *cuts, len(compute)]
    if len(bounds) != len(cluster) + 1 or any(a >= b for a, b in zip(bounds, bounds[1:])):
        raise DeviceError(f"cuts {cuts} do not split the {len(compute)} compute nodes of "
                          f"{graph.name!r} into {len(cluster)} non-empty runs")
    stage_of = {node.name: s for s in range(len(cluster))
                for node in compute[bounds[s]:bounds[s + 1]]}
    # which stages read each value made by a compute node, and where graph outputs come from
    readers: dict[Any, set[int]] = {}
    for node in compute:
        for v in node.inputs:
            if v.node in stage_of and stage_of[v.node] != stage_of[node.name]:
                readers.setdefault(v, set()).add(stage_of[node.name])
    return [_stage(s, graph, cluster, stage_of, readers, compile_options)
            for s in range(len(cluster))]


def _stage(s: int, graph: Any, cluster: Cluster, stage_of: dict[str, int],
           readers: dict[Any, set[int]], compile_options: dict[str, Any]) -> Stage:
    from hetero.compiler import compile as compile_graph
    from hetero.graph import Graph, Node, Value

    by_name = {node.name: node for node in graph.nodes}
    graph_inputs = {name: i for i, name in enumerate(graph.inputs)}
    mine = [node for node in graph.nodes if stage_of.get(node.name) == s]
    nodes: list[Any] = []
    inputs: list[tuple[Any, ...]] = []
    in_names: list[str] = []
    consts: dict[str, np.ndarray] = {}
    seen: set[str] = set()
    remap: dict[Any, Any] = {}

    def need(v: Any) -> Any:
        if v in remap:
            return remap[v]
        src = by_name[v.node]
        if src.is_input:
            if src.name not in seen:
                nodes.append(src)
                seen.add(src.name)
                in_names.append(src.name)
                inputs.append(("graph", graph_inputs[src.name]))
            remap[v] = v
        elif src.is_constant:
            if src.name not in seen:
                nodes.append(src)
                seen.add(src.name)
                consts[src.name] = graph.constants[src.name]
            remap[v] = v
        else:  # made on another node: a cross-node input
            name = _value_name(v)
            nodes.append(Node(name, "input", outputs=(graph.spec(v),), where=src.where))
            in_names.append(name)
            inputs.append(("stage", stage_of[v.node], name))
            remap[v] = Value(name, 0)
        return remap[v]

    for node in mine:
        ins = tuple(need(v) for v in node.inputs)
        nodes.append(node.replace(inputs=ins))
        for i in range(len(node.outputs)):
            remap[Value(node.name, i)] = Value(node.name, i)
    outs: list[Any] = []
    out_names: list[str] = []
    sends: dict[int, list[str]] = {}
    results = []
    for v, who in sorted(readers.items(), key=lambda kv: (kv[0].node, kv[0].index)):
        if stage_of[v.node] == s:
            out_names.append(_value_name(v))
            outs.append(v)
            for r in sorted(who):
                sends.setdefault(r, []).append(_value_name(v))
    for i, v in enumerate(graph.outputs):
        src = by_name[v.node]
        if stage_of.get(v.node, 0 if not src.computes else -1) == s:
            name = f"__result{i}"
            outs.append(need(v) if not src.computes else v)
            out_names.append(name)
            results.append((i, name))
    sub_inputs = tuple(in_names)
    sub = Graph(tuple(nodes), sub_inputs, tuple(outs), consts,
                name=f"{graph.name}@{cluster.names[s]}")
    plan = compile_graph(sub, cluster.machines[s], **compile_options)
    return Stage(s, cluster.names[s], plan, tuple(inputs), tuple(out_names),
                 {r: tuple(v) for r, v in sends.items()}, tuple(results))


def run_stages(stages: Sequence[Stage], inputs: Sequence[Any]) -> list[np.ndarray]:
    """The whole graph's outputs from running its stages one after another in this process
    (the in-process counterpart of ``PipelineRunner.run``)."""
    made: dict[tuple[int, str], np.ndarray] = {}
    results: dict[int, np.ndarray] = {}
    for st in stages:
        args = [inputs[src[1]] if src[0] == "graph" else made[(src[1], src[2])]
                for src in st.inputs]
        outs = st.plan.run(*args)
        for name, out in zip(st.outputs, outs):
            made[(st.index, name)] = np.array(out, copy=True)
        for i, name in st.results:
            results[i] = made[(st.index, name)]
    return [results[i] for i in sorted(results)]


__all__ = ["CLUSTER_GRAMMAR", "DEFAULT_NETWORK", "DEFAULT_TIMEOUT", "Cluster", "Connection",
           "PipelineRunner", "PlanActor", "Runner", "Stage", "StageActor", "connect",
           "is_cluster_spec", "parse_cluster", "qualify", "run_stages", "split", "split_name",
           "stage_cuts"]
