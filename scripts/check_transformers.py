"""Export three small transformer blocks from PyTorch and match hetero against onnxruntime.

The models are the three of issue 12 that did not import: a Swin-like block (shifted-window
attention whose mask is built from shapes and constants with slice assignments, exported as
ScatterND, plus torch.roll and a relative-position-bias Gather), a BERT-like encoder (token,
position and segment embeddings, a padding mask through F.scaled_dot_product_attention, a pooled
output picked per row at the last real token: GatherND fed by the inputs) and a GPT-2-like decoder
(causal SDPA, tanh GELU). Random weights from a fixed seed, fixed shapes, the TorchScript exporter
(``dynamo=False``) at opset 17.

For each model and machine it prints the relative error max|a-b| / max|b| of every output
against onnxruntime and fails (exit 1) past 1e-4. Needs torch (not a hetero dependency).

Usage: python scripts/check_transformers.py [--out DIR] [--machines cpu:2,cpu:2+sim:1]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

RTOL = 1e-4


# ----------------------------------------------------------------------------------------------
# Swin-like block


class WindowAttention(nn.Module):
    """torchvision's shifted_window_attention, for one (B, H, W, C) stage."""

    def __init__(self, dim: int, window: int, heads: int, shift: int) -> None:
        super().__init__()
        self.window, self.heads, self.shift = window, heads, shift
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.table = nn.Parameter(torch.randn((2 * window - 1) ** 2, heads) * 0.02)
        coords = torch.stack(torch.meshgrid(torch.arange(window), torch.arange(window),
                                            indexing="ij")).flatten(1)
        rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + window - 1
        self.register_buffer("index", (rel[:, :, 0] * (2 * window - 1) + rel[:, :, 1])
                             .flatten())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, h, w, c = x.shape
        ws, s = self.window, self.shift
        if s:
            x = torch.roll(x, shifts=(-s, -s), dims=(1, 2))
        nw = (h // ws) * (w // ws)
        x = x.view(b, h // ws, ws, w // ws, ws, c).permute(0, 1, 3, 2, 4, 5)
        x = x.reshape(b * nw, ws * ws, c)
        qkv = self.qkv(x).reshape(x.size(0), x.size(1), 3, self.heads, c // self.heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)
        attn = (q * (c // self.heads) ** -0.5) @ k.transpose(-2, -1)
        bias = self.table[self.index].view(ws * ws, ws * ws, -1).permute(2, 0, 1)
        attn = attn + bias.unsqueeze(0)
        if s:
            mask = x.new_zeros((h, w))
            slices = ((0, -ws), (-ws, -s), (-s, None))
            count = 0
            for hs in slices:
                for wsl in slices:
                    mask[hs[0]:hs[1], wsl[0]:wsl[1]] = count
                    count += 1
            mask = mask.view(h // ws, ws, w // ws, ws).permute(0, 2, 1, 3).reshape(nw, ws * ws)
            mask = mask.unsqueeze(1) - mask.unsqueeze(2)
            mask = mask.masked_fill(mask != 0, -100.0).masked_fill(mask == 0, 0.0)
            attn = attn.view(x.size(0) // nw, nw, self.heads, x.size(1), x.size(1))
            attn = (attn + mask.unsqueeze(1).unsqueeze(0)).view(-1, self.heads, x.size(1),
                                                               x.size(1))
        x = (attn.softmax(-1) @ v).transpose(1, 2).reshape(x.size(0), x.size(1), c)
        x = self.proj(x).view(b, h // ws, w // ws, ws, ws, c).permute(0, 1, 3, 2, 4, 5)
        x = x.reshape(b, h, w, c)
        if s:
            x = torch.roll(x, shifts=(s, s), dims=(1, 2))
        return x


class SwinBlocks(nn.Module):
    """Two Swin blocks (unshifted, then shifted), each attention + MLP with pre-LayerNorm."""

    def __init__(self, dim: int = 32, window: int = 4, heads: int = 2) -> None:
        super().__init__()
        self.blocks = nn.ModuleList()
        for shift in (0, window // 2):
            self.blocks.append(nn.ModuleDict({
                "norm1": nn.LayerNorm(dim), "attn": WindowAttention(dim, window, heads, shift),
                "norm2": nn.LayerNorm(dim),
                "mlp": nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim)),
            }))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for blk in self.blocks:
            x = x + blk["attn"](blk["norm1"](x))
            x = x + blk["mlp"](blk["norm2"](x))
        return x


# ----------------------------------------------------------------------------------------------
# BERT-like encoder and GPT-2-like decoder


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, x, mask=None, causal=False):
        b, t, c = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal)
        return self.out(y.transpose(1, 2).reshape(b, t, c))


class Bert(nn.Module):
    def __init__(self, vocab=100, dim=32, heads=4, layers=2, max_len=16) -> None:
        super().__init__()
        self.tok, self.pos, self.seg = (nn.Embedding(vocab, dim), nn.Embedding(max_len, dim),
                                        nn.Embedding(2, dim))
        self.norm = nn.LayerNorm(dim)
        self.layers = nn.ModuleList(nn.ModuleDict({
            "attn": Attention(dim, heads), "n1": nn.LayerNorm(dim), "n2": nn.LayerNorm(dim),
            "ff": nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim)),
        }) for _ in range(layers))
        self.pool = nn.Linear(dim, dim)

    def forward(self, ids, segments, attention_mask):
        b, t = ids.shape
        pos = torch.arange(t, device=ids.device).unsqueeze(0)
        x = self.norm(self.tok(ids) + self.pos(pos) + self.seg(segments))
        keep = attention_mask.bool()[:, None, None, :]  # (B, 1, 1, T): True attends
        for layer in self.layers:
            x = layer["n1"](x + layer["attn"](x, mask=keep))
            x = layer["n2"](x + layer["ff"](x))
        last = attention_mask.sum(-1) - 1  # the last real token of each row
        pooled = torch.tanh(self.pool(x[torch.arange(b), last]))
        return x, pooled


class Gpt2(nn.Module):
    def __init__(self, vocab=100, dim=32, heads=4, layers=2, max_len=16) -> None:
        super().__init__()
        self.tok, self.pos = nn.Embedding(vocab, dim), nn.Embedding(max_len, dim)
        self.layers = nn.ModuleList(nn.ModuleDict({
            "n1": nn.LayerNorm(dim), "attn": Attention(dim, heads), "n2": nn.LayerNorm(dim),
            "ff": nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(approximate="tanh"),
                                nn.Linear(4 * dim, dim)),
        }) for _ in range(layers))
        self.norm = nn.LayerNorm(dim)

    def forward(self, ids):
        t = ids.shape[1]
        x = self.tok(ids) + self.pos(torch.arange(t, device=ids.device).unsqueeze(0))
        for layer in self.layers:
            x = x + layer["attn"](layer["n1"](x), causal=True)
            x = x + layer["ff"](layer["n2"](x))
        return self.norm(x) @ self.tok.weight.T


# ----------------------------------------------------------------------------------------------


def cases(seed: int = 0):
    """(name, module, example inputs as NumPy arrays, input names)."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    swin = SwinBlocks().eval()
    x = rng.standard_normal((2, 8, 8, 32)).astype(np.float32)
    bert = Bert().eval()
    ids = rng.integers(0, 100, (2, 12)).astype(np.int64)
    seg = (np.arange(12)[None, :] >= 6).astype(np.int64).repeat(2, 0)
    mask = np.ones((2, 12), np.int64)
    mask[1, 8:] = 0  # the second row is padded
    gpt = Gpt2().eval()
    return [("swin_block", swin, [x], ["x"]),
            ("bert_encoder", bert, [ids, seg, mask], ["input_ids", "token_type_ids",
                                                      "attention_mask"]),
            ("gpt2_decoder", gpt, [ids], ["input_ids"])]


def export(module, arrays, names, path: str, opset: int = 17) -> None:
    with torch.no_grad():
        torch.onnx.export(module, tuple(torch.from_numpy(a) for a in arrays), path,
                          input_names=names, opset_version=opset, dynamo=False)


def rel_error(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.max(np.abs(a.astype(np.float64) - b)) / max(np.max(np.abs(b)), 1e-30))


def main(argv=None) -> int:
    import onnx
    import onnxruntime as ort

    import hetero
    import hetero.onnx as ho

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=None, help="folder for the .onnx files (default: a temp)")
    ap.add_argument("--machines", default="cpu:2,cpu:2+sim:1",
                    help="machine specs separated by commas, '+' inside a spec")
    args = ap.parse_args(argv)
    out = args.out or tempfile.mkdtemp(prefix="hetero_transformers_")
    os.makedirs(out, exist_ok=True)
    machines = [m.replace("+", ",") for m in args.machines.split(",")]
    worst = 0.0
    for name, module, arrays, names in cases():
        path = os.path.join(out, f"{name}.onnx")
        export(module, arrays, names, path)
        model = onnx.load(path)
        ops = sorted({n.op_type for n in model.graph.node})
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        sess = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
        feeds = dict(zip([i.name for i in sess.get_inputs()], arrays))
        want = sess.run(None, feeds)
        with torch.no_grad():
            eager = module(*(torch.from_numpy(a) for a in arrays))
        eager = [t.numpy() for t in (eager if isinstance(eager, tuple) else (eager,))]
        graph = ho.load(path)
        left = sorted({n.op for n in graph.nodes if n.op in ("scatter_nd",)})
        print(f"{name}: {len(model.graph.node)} ONNX nodes, ops {', '.join(ops)}; "
              f"hetero graph {len(graph.nodes)} nodes"
              + (f" (unfolded: {', '.join(left)})" if left else ""))
        print("  onnxruntime vs torch: "
              + ", ".join(f"{rel_error(w, e):.1e}" for w, e in zip(want, eager)))
        inputs = [feeds[n] for n in graph.inputs]
        for spec in machines:
            plan = hetero.compile(graph, machine=hetero.Machine.parse(spec))
            got = plan.run(*inputs)
            errs = [rel_error(g, w) for g, w in zip(got, want)]
            shapes_ok = all(g.shape == w.shape for g, w in zip(got, want))
            worst = max(worst, *errs) if shapes_ok else float("inf")
            print(f"  hetero on {spec}: relative error "
                  + ", ".join(f"{e:.1e}" for e in errs) + ("" if shapes_ok else " SHAPES DIFFER"))
    print(f"worst relative error {worst:.1e} (limit {RTOL:.0e}); models in {out}")
    return 0 if worst <= RTOL else 1


if __name__ == "__main__":
    sys.exit(main())
