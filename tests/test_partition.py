"""Partitioning: explicit transfer nodes, one per (value, destination memory space), device-local
edges everywhere else, outputs back on the host; the verifier catches a missing transfer."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import hetero as ht
from hetero import reference
from hetero.errors import GraphError
from hetero.graph import Graph, Value
from hetero.passes.partition import partition
from hetero.pipeline import place
from hetero.spaces import device_space as memory_space
from tests import graphs as G


@pytest.fixture(scope="module")
def machine():
    return ht.Machine.parse("cpu:2,sim:1")


def fan_out_graph():
    """One host value read by three GPU nodes and two CPU workers::

        x -> relu(r, cpu:0) -+-> a (gpu:0) -.
                             +-> b (gpu:0) --+-> add ... (gpu:0) -> out
                             +-> c (gpu:0) -'
                             +-> d (cpu:1) -> e (cpu:0) -> out
    """
    b = G.Builder("fan_out")
    x = b.input((16, 16), name="x")
    r = b.op("relu", x, node_name="r", device="cpu:0")
    a = b.op("neg", r, node_name="a", device="gpu:0")
    bb = b.op("exp", r, node_name="b", device="gpu:0")
    c = b.op("abs", r, node_name="c", device="gpu:0")
    s = b.op("add", b.op("add", a, bb, device="gpu:0", node_name="s1"), c, device="gpu:0",
             node_name="s2")
    d = b.op("neg", r, node_name="d", device="cpu:1")
    e = b.op("abs", d, node_name="e", device="cpu:0")
    return b.build(s, e)


def test_one_transfer_per_value_and_space(machine):
    g = fan_out_graph()
    parted = partition(g, place(g, machine), machine)
    ht.check(parted, machine=machine)
    transfers = [n for n in parted.nodes if n.op == "transfer"]
    h2d = [t for t in transfers if t.attrs["kind"] == "h2d"]
    d2h = [t for t in transfers if t.attrs["kind"] == "d2h"]
    assert len(h2d) == 1 and h2d[0].inputs == (Value("r"),)
    assert h2d[0].device == "gpu:0" and h2d[0].attrs["dst"] == "gpu:0"
    for name in ("a", "b", "c"):
        assert parted.node(name).inputs == (h2d[0].value(),)
    # CPU workers share the host: d (cpu:1) reads r (cpu:0) directly
    assert parted.node("d").inputs == (Value("r"),)
    # the GPU result comes back to the host, issued by the GPU
    assert len(d2h) == 1 and d2h[0].device == "gpu:0" and d2h[0].attrs["src"] == "gpu:0"
    assert parted.outputs[0] == d2h[0].value() and parted.outputs[1] == Value("e")
    assert all(n.device is not None for n in parted.nodes)


def test_constants_are_duplicated_per_space_not_transferred(machine):
    b = G.Builder("shared_const")
    x = b.input((8,), name="x")
    c = b.const(np.arange(8, dtype=np.float32), name="c")
    y = b.op("add", x, c, device="gpu:0", node_name="on_gpu")
    z = b.op("mul", x, c, device="cpu:1", node_name="on_cpu")
    g = b.build(y, z)
    parted = partition(g, place(g, machine), machine)
    consts = {n.name: n.device for n in parted.nodes if n.op == "constant"}
    assert len(consts) == 2
    assert {memory_space(d) for d in consts.values()} == {"host", "gpu:0"}
    assert not any(n.op == "transfer" and n.inputs[0].node.startswith("c")
                   for n in parted.nodes)
    for name in consts:
        np.testing.assert_array_equal(parted.constants[name], g.constants["c"])


def test_graph_input_output_on_gpu_goes_through_host(machine):
    b = G.Builder("gpu_only")
    x = b.input((4, 4), name="x")
    g = b.build(b.op("relu", x, device="gpu:0", node_name="r"))
    parted = partition(g, place(g, machine), machine)
    kinds = [n.attrs["kind"] for n in parted.nodes if n.op == "transfer"]
    assert kinds == ["h2d", "d2h"]
    assert parted.node("x").device == "cpu:0"


def assert_partition_invariants(g: Graph, parted: Graph, devices, machine) -> None:
    """Every cross-space edge of ``g`` goes through exactly one transfer of its (value, space),
    shared by all consumers there, and no transfer exists without such an edge."""
    def space(name):
        node = g.node(name)
        return "host" if node.op == "input" else memory_space(devices[name], machine)

    needed: set[tuple[Value, str]] = set()
    for node in g.nodes:
        if node.op in ("input", "constant"):
            continue
        for v in node.inputs:
            if g.node(v.node).op == "constant":
                continue
            if space(v.node) != space(node.name):
                needed.add((v, space(node.name)))
    for v in g.outputs:
        if g.node(v.node).op != "constant" and space(v.node) != "host":
            needed.add((v, "host"))
    transfers = [n for n in parted.nodes if n.op == "transfer"]
    made = [(t.inputs[0], memory_space(t.attrs["dst"], machine)) for t in transfers]
    assert len(made) == len(set(made)), "a (value, space) pair is copied twice"
    assert set(made) == needed
    for node in g.nodes:
        if node.op in ("input", "constant"):
            continue
        new = parted.node(node.name)
        assert new.device == devices[node.name]
        for old_v, new_v in zip(node.inputs, new.inputs):
            if g.node(old_v.node).op == "constant":
                continue
            if space(old_v.node) == space(node.name):
                assert new_v == old_v
            else:
                t = parted.node(new_v.node)
                assert t.op == "transfer" and t.inputs[0] == old_v


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 10_000), assignment_seed=st.integers(0, 10_000))
def test_random_placements_partition_correctly(seed, assignment_seed):
    m = ht.Machine.parse("cpu:2,sim:2")
    g = G.random_layered(seed, layers=4, width=3, n=8)
    rng = np.random.default_rng(assignment_seed)
    names = [d.name for d in m.devices]
    devices = {n.name: ("cpu:0" if n.op == "input" else str(rng.choice(names)))
               for n in g.nodes}
    parted = partition(g, devices, m)
    ht.check(parted, machine=m)
    assert_partition_invariants(g, parted, devices, m)
    x = G.inputs_for(g, seed)
    for a, b in zip(reference.run(g, x), reference.run(parted, x)):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("family", ["mlp", "cnn", "tiled_cholesky", "parallel_branches"])
def test_results_after_partitioning_equal_the_reference(family, machine):
    g = {"mlp": G.mlp, "cnn": G.cnn, "tiled_cholesky": lambda: G.tiled_cholesky(3, 32),
         "parallel_branches": lambda: G.parallel_branches(n=128)}[family]()
    for policy in ("heft", "gpu", "cpu"):
        p = place(g, machine, policy=policy)
        parted = partition(g, p, machine)
        ht.check(parted, machine=machine)
        assert_partition_invariants(g, parted, p.device, machine)
        x = G.inputs_for(g)
        for a, b in zip(reference.run(g, x), reference.run(parted, x)):
            np.testing.assert_array_equal(a, b)


def test_verifier_catches_a_removed_transfer(machine):
    g = fan_out_graph()
    parted = partition(g, place(g, machine), machine)
    t = next(n for n in parted.nodes if n.op == "transfer" and n.attrs["kind"] == "h2d")
    src = t.inputs[0]
    nodes = [n.replace(inputs=tuple(src if v == t.value() else v for v in n.inputs))
             for n in parted.nodes if n.name != t.name]
    broken = parted.replace(nodes=tuple(nodes))
    with pytest.raises(GraphError, match=r"a \(neg, from graphs.py:fan_out\): input 0 reads %r "
                                         r"from host .*transfer node is missing"):
        ht.check(broken, machine=machine)
    # without the machine the verifier still knows the graph is partitioned (it has transfers)
    with pytest.raises(GraphError, match="transfer node is missing"):
        ht.check(broken)


def test_verifier_catches_duplicate_and_malformed_transfers(machine):
    g = fan_out_graph()
    parted = partition(g, place(g, machine), machine)
    t = next(n for n in parted.nodes if n.op == "transfer" and n.attrs["kind"] == "h2d")
    dup = t.replace(name=t.name + "_again")
    i = parted.position(t.name)
    nodes = list(parted.nodes)
    nodes.insert(i + 1, dup)
    with pytest.raises(GraphError, match="already copied to gpu:0"):
        ht.check(parted.replace(nodes=tuple(nodes)), machine=machine)
    wrong_kind = t.replace(attrs=t.attrs.set(kind="d2h"))
    nodes = [wrong_kind if n.name == t.name else n for n in parted.nodes]
    with pytest.raises(GraphError, match="is h2d, not d2h"):
        ht.check(parted.replace(nodes=tuple(nodes)), machine=machine)
    on_gpu_out = parted.replace(outputs=(Value("s2"),) + parted.outputs[1:])
    with pytest.raises(GraphError, match="outputs must come back to the host"):
        ht.check(on_gpu_out, machine=machine)


def test_unpartitioned_annotated_graph_is_not_flagged():
    """A traced graph whose nodes are all annotated is not yet partitioned: check() without a
    machine accepts it."""
    g = fan_out_graph()
    ht.check(g)
