"""Weight streaming on a real CUDA GPU: a decoder whose weights are 3x a memory budget runs with
its weights copied from page-locked host memory on every run, within the budget (CuPy's pool),
with the CPU-only plan's outputs."""

from __future__ import annotations

import gc

import numpy as np
import pytest

pytestmark = pytest.mark.gpu


def test_streamed_decoder_on_cuda():
    import cupy as cp

    import hetero as ht
    from examples.gpt_offload import decoder_weights, make_decoder, weight_bytes
    from hetero.devices import Machine

    weights = decoder_weights(layers=6, width=512)
    x = np.random.default_rng(3).standard_normal((64, 512)).astype(np.float32)
    fn = make_decoder(weights)
    (want,) = ht.compile(fn, "cpu:1", example_inputs=(x,)).run(x)
    machine = Machine.detect()
    gc.collect()
    pool = cp.get_default_memory_pool()
    pool.free_all_blocks()
    before = int(pool.total_bytes())  # what other tests' live arrays hold
    budget = weight_bytes(weights) // 3
    plan = ht.compile(fn, machine, example_inputs=(x,), memory={"gpu:0": budget})
    streamed = [n for n in plan.transfers() if n.attrs.get("streamed")]
    assert streamed, plan.placement.table()
    (out,) = plan.run(x)
    np.testing.assert_allclose(np.asarray(out), want, rtol=2e-3, atol=2e-3)  # TF32 matmuls
    _, prof = plan.run(x, profile=True)
    peak = prof.summary()["peak_memory"]["gpu:0"] - before
    assert 0 < peak <= budget + (2 << 20)  # CuPy rounds blocks up
    cp.cuda.runtime.deviceSynchronize()
