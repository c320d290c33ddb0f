"""Export a zoo of modern architectures from PyTorch to ONNX, at random weights, batch 1.

For ``scripts/bench_models.py --zoo``. Needs torch (not a hetero dependency: install it by hand;
a CPU build is enough). torchvision is not used: the architectures are small faithful
re-implementations (layer shapes, ops and activations of the torchvision / GPT-2 originals), so
only torch is needed and the exported op mix is the one those models give: ResNet-18,
MobileNet v2, MobileNet v3-small (HardSwish, HardSigmoid, squeeze-excite), EfficientNet-B0
(depthwise, squeeze-excite, SiLU), ShuffleNet v2 x1.0 (channel shuffle, split), SqueezeNet 1.1,
DenseNet-121, ConvNeXt-T (depthwise 7x7, LayerNorm, erf GELU, layer scale), ViT-B/16 (MatMul,
Softmax, LayerNorm, erf GELU), an MLP, a text CNN (Embedding, Conv1d, max over time) and a small
GPT-2-like decoder (causal mask, tanh GELU with a pow 3).

Every model is built from a fixed seed (``--seed``); batch-norm statistics and affine parameters
are random too (not the identity), so every layer changes the answer. Per model ``NAME`` the
output folder gets ``NAME.onnx`` (legacy TorchScript exporter, ``dynamo=False``: the dynamo one
needs onnxscript), ``NAME.pt`` (the state dict, so the benchmark rebuilds the eager module with
``build(NAME)`` and loads it) and ``NAME.input.npy`` (the one input all engines get).

Usage: python scripts/export_zoo.py [--out ~/.cache/hetero/zoo] [--models resnet18,vit_b16]
       [--opset 17]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

DEFAULT_DIR = os.path.join(os.path.expanduser("~"), ".cache", "hetero", "zoo")


# ----------------------------------------------------------------------------------------------
# CNNs


def conv_bn(cin: int, cout: int, k: int, stride: int = 1, groups: int = 1,
            act: type[nn.Module] | None = nn.ReLU) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False),
                               nn.BatchNorm2d(cout)]
    if act is not None:
        layers.append(act())
    return nn.Sequential(*layers)


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = conv_bn(cin, cout, 3, stride)
        self.conv2 = conv_bn(cout, cout, 3, act=None)
        self.down = (conv_bn(cin, cout, 1, stride, act=None)
                     if stride != 1 or cin != cout else nn.Identity())

    def forward(self, x):
        return F.relu(self.conv2(self.conv1(x)) + self.down(x))


class ResNet18(nn.Module):
    def __init__(self, classes: int = 1000):
        super().__init__()
        self.stem = nn.Sequential(conv_bn(3, 64, 7, 2), nn.MaxPool2d(3, 2, 1))
        blocks, cin = [], 64
        for cout, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
            blocks += [BasicBlock(cin, cout, stride), BasicBlock(cout, cout, 1)]
            cin = cout
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(512, classes)

    def forward(self, x):
        x = self.blocks(self.stem(x))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class InvertedResidual(nn.Module):
    """The MobileNet v2/v3 and EfficientNet block: 1x1 expand (when ``hidden != cin``), kxk
    depthwise, an optional squeeze-excite, 1x1 project; a residual add when the shapes allow."""

    def __init__(self, cin: int, hidden: int, cout: int, k: int, stride: int,
                 act: type[nn.Module], se: nn.Module | None = None):
        super().__init__()
        layers: list[nn.Module] = []
        if hidden != cin:
            layers.append(conv_bn(cin, hidden, 1, act=act))
        layers.append(conv_bn(hidden, hidden, k, stride, groups=hidden, act=act))
        if se is not None:
            layers.append(se)
        layers.append(conv_bn(hidden, cout, 1, act=None))
        self.body = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x):
        return x + self.body(x) if self.residual else self.body(x)


class MobileNetV2(nn.Module):
    SETTINGS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
                (6, 160, 3, 2), (6, 320, 1, 1))

    def __init__(self, classes: int = 1000):
        super().__init__()
        layers: list[nn.Module] = [conv_bn(3, 32, 3, 2, act=nn.ReLU6)]
        cin = 32
        for t, c, n, s in self.SETTINGS:
            for i in range(n):
                layers.append(InvertedResidual(cin, cin * t, c, 3, s if i == 0 else 1, nn.ReLU6))
                cin = c
        layers.append(conv_bn(cin, 1280, 1, act=nn.ReLU6))
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(1280, classes))

    def forward(self, x):
        x = F.adaptive_avg_pool2d(self.features(x), 1)
        return self.classifier(torch.flatten(x, 1))


def _divisible(v: float, d: int = 8) -> int:
    n = max(d, int(v + d / 2) // d * d)
    return n + d if n < 0.9 * v else n


class SqueezeExcite(nn.Module):
    def __init__(self, channels: int, squeeze: int, act: type[nn.Module] = nn.ReLU,
                 gate: type[nn.Module] = nn.Sigmoid):
        super().__init__()
        self.fc1 = nn.Conv2d(channels, squeeze, 1)
        self.fc2 = nn.Conv2d(squeeze, channels, 1)
        self.act, self.gate = act(), gate()

    def forward(self, x):
        s = F.adaptive_avg_pool2d(x, 1)
        return x * self.gate(self.fc2(self.act(self.fc1(s))))


class MobileNetV3Small(nn.Module):
    # kernel, expanded, out, SE, hard-swish, stride (torchvision's mobilenet_v3_small)
    SETTINGS = ((3, 16, 16, True, False, 2), (3, 72, 24, False, False, 2),
                (3, 88, 24, False, False, 1), (5, 96, 40, True, True, 2),
                (5, 240, 40, True, True, 1), (5, 240, 40, True, True, 1),
                (5, 120, 48, True, True, 1), (5, 144, 48, True, True, 1),
                (5, 288, 96, True, True, 2), (5, 576, 96, True, True, 1),
                (5, 576, 96, True, True, 1))

    def __init__(self, classes: int = 1000):
        super().__init__()
        layers: list[nn.Module] = [conv_bn(3, 16, 3, 2, act=nn.Hardswish)]
        cin = 16
        for k, exp, cout, se, hs, s in self.SETTINGS:
            gate = SqueezeExcite(exp, _divisible(exp // 4), gate=nn.Hardsigmoid) if se else None
            layers.append(InvertedResidual(cin, exp, cout, k, s,
                                           nn.Hardswish if hs else nn.ReLU, gate))
            cin = cout
        layers.append(conv_bn(cin, 576, 1, act=nn.Hardswish))
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.Linear(576, 1024), nn.Hardswish(), nn.Dropout(0.2),
                                        nn.Linear(1024, classes))

    def forward(self, x):
        x = F.adaptive_avg_pool2d(self.features(x), 1)
        return self.classifier(torch.flatten(x, 1))


class EfficientNetB0(nn.Module):
    SETTINGS = ((1, 3, 1, 32, 16, 1), (6, 3, 2, 16, 24, 2), (6, 5, 2, 24, 40, 2),
                (6, 3, 2, 40, 80, 3), (6, 5, 1, 80, 112, 3), (6, 5, 2, 112, 192, 4),
                (6, 3, 1, 192, 320, 1))

    def __init__(self, classes: int = 1000):
        super().__init__()
        layers: list[nn.Module] = [conv_bn(3, 32, 3, 2, act=nn.SiLU)]
        for t, k, s, cin, cout, n in self.SETTINGS:
            for i in range(n):
                c = cin if i == 0 else cout
                se = SqueezeExcite(c * t, max(1, c // 4), act=nn.SiLU)
                layers.append(InvertedResidual(c, c * t, cout, k, s if i == 0 else 1, nn.SiLU, se))
        layers.append(conv_bn(320, 1280, 1, act=nn.SiLU))
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(1280, classes))

    def forward(self, x):
        x = F.adaptive_avg_pool2d(self.features(x), 1)
        return self.classifier(torch.flatten(x, 1))


def channel_shuffle(x, groups: int):
    n, c, h, w = x.shape
    x = x.view(n, groups, c // groups, h, w).transpose(1, 2).contiguous()
    return x.view(n, c, h, w)


class ShuffleUnit(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.stride = stride
        half = cout // 2
        if stride > 1:
            self.branch1 = nn.Sequential(conv_bn(cin, cin, 3, stride, groups=cin, act=None),
                                         conv_bn(cin, half, 1))
        branch_in = cin if stride > 1 else half
        self.branch2 = nn.Sequential(conv_bn(branch_in, half, 1),
                                     conv_bn(half, half, 3, stride, groups=half, act=None),
                                     conv_bn(half, half, 1))

    def forward(self, x):
        if self.stride == 1:
            x1, x2 = x.chunk(2, dim=1)
            out = torch.cat((x1, self.branch2(x2)), dim=1)
        else:
            out = torch.cat((self.branch1(x), self.branch2(x)), dim=1)
        return channel_shuffle(out, 2)


class ShuffleNetV2(nn.Module):
    def __init__(self, classes: int = 1000):
        super().__init__()
        self.stem = nn.Sequential(conv_bn(3, 24, 3, 2), nn.MaxPool2d(3, 2, 1))
        layers, cin = [], 24
        for cout, repeats in ((116, 4), (232, 8), (464, 4)):
            layers.append(ShuffleUnit(cin, cout, 2))
            layers += [ShuffleUnit(cout, cout, 1) for _ in range(repeats - 1)]
            cin = cout
        self.stages = nn.Sequential(*layers)
        self.conv5 = conv_bn(cin, 1024, 1)
        self.fc = nn.Linear(1024, classes)

    def forward(self, x):
        x = self.conv5(self.stages(self.stem(x)))
        return self.fc(x.mean([2, 3]))


class Fire(nn.Module):
    def __init__(self, cin: int, squeeze: int, expand: int):
        super().__init__()
        self.squeeze = nn.Conv2d(cin, squeeze, 1)
        self.e1 = nn.Conv2d(squeeze, expand, 1)
        self.e3 = nn.Conv2d(squeeze, expand, 3, padding=1)

    def forward(self, x):
        x = F.relu(self.squeeze(x))
        return torch.cat((F.relu(self.e1(x)), F.relu(self.e3(x))), 1)


class SqueezeNet11(nn.Module):
    def __init__(self, classes: int = 1000):
        super().__init__()
        pool = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.features = nn.Sequential(
            nn.Conv2d(3, 64, 3, 2), nn.ReLU(), pool, Fire(64, 16, 64), Fire(128, 16, 64), pool,
            Fire(128, 32, 128), Fire(256, 32, 128), pool, Fire(256, 48, 192),
            Fire(384, 48, 192), Fire(384, 64, 256), Fire(512, 64, 256))
        self.classifier = nn.Sequential(nn.Dropout(0.5), nn.Conv2d(512, classes, 1), nn.ReLU(),
                                        nn.AdaptiveAvgPool2d(1))

    def forward(self, x):
        return torch.flatten(self.classifier(self.features(x)), 1)


class DenseLayer(nn.Module):
    def __init__(self, cin: int, growth: int = 32, bn_size: int = 4):
        super().__init__()
        self.body = nn.Sequential(
            nn.BatchNorm2d(cin), nn.ReLU(), nn.Conv2d(cin, bn_size * growth, 1, bias=False),
            nn.BatchNorm2d(bn_size * growth), nn.ReLU(),
            nn.Conv2d(bn_size * growth, growth, 3, padding=1, bias=False))

    def forward(self, x):
        return torch.cat((x, self.body(x)), 1)


class DenseNet121(nn.Module):
    def __init__(self, classes: int = 1000, growth: int = 32):
        super().__init__()
        layers: list[nn.Module] = [conv_bn(3, 64, 7, 2), nn.MaxPool2d(3, 2, 1)]
        c = 64
        for i, n in enumerate((6, 12, 24, 16)):
            for _ in range(n):
                layers.append(DenseLayer(c, growth))
                c += growth
            if i < 3:
                layers += [nn.BatchNorm2d(c), nn.ReLU(), nn.Conv2d(c, c // 2, 1, bias=False),
                           nn.AvgPool2d(2, 2)]
                c //= 2
        layers += [nn.BatchNorm2d(c), nn.ReLU()]
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(c, classes)

    def forward(self, x):
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(self.features(x), 1), 1))


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of an NCHW tensor (ConvNeXt's stem and downsamplers)."""

    def forward(self, x):
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class ConvNeXtBlock(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.dw = nn.Conv2d(dim, dim, 7, padding=3, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.fc1 = nn.Linear(dim, 4 * dim)
        self.fc2 = nn.Linear(4 * dim, dim)
        self.gamma = nn.Parameter(torch.full((dim,), 0.5))  # layer scale (1e-6 at init)

    def forward(self, x):
        y = self.dw(x).permute(0, 2, 3, 1)
        y = self.fc2(F.gelu(self.fc1(self.norm(y))))
        return x + (self.gamma * y).permute(0, 3, 1, 2)


class ConvNeXtTiny(nn.Module):
    def __init__(self, classes: int = 1000, depths=(3, 3, 9, 3), dims=(96, 192, 384, 768)):
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(3, dims[0], 4, 4), LayerNorm2d(dims[0], eps=1e-6)]
        for i, (depth, dim) in enumerate(zip(depths, dims)):
            if i:
                layers += [LayerNorm2d(dims[i - 1], eps=1e-6), nn.Conv2d(dims[i - 1], dim, 2, 2)]
            layers += [ConvNeXtBlock(dim) for _ in range(depth)]
        self.features = nn.Sequential(*layers)
        self.norm = LayerNorm2d(dims[-1], eps=1e-6)
        self.fc = nn.Linear(dims[-1], classes)

    def forward(self, x):
        x = self.norm(F.adaptive_avg_pool2d(self.features(x), 1))
        return self.fc(torch.flatten(x, 1))


# ----------------------------------------------------------------------------------------------
# Transformers, MLP, text


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int, causal_len: int = 0):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        if causal_len:
            self.register_buffer("mask", torch.tril(torch.ones(causal_len, causal_len,
                                                               dtype=torch.bool)))
        else:
            self.mask = None

    def forward(self, x):
        b, t, c = x.shape
        q, k, v = (self.qkv(x).reshape(b, t, 3, self.heads, c // self.heads)
                   .permute(2, 0, 3, 1, 4).unbind(0))
        att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(c // self.heads))
        if self.mask is not None:
            att = att.masked_fill(~self.mask[:t, :t], float("-inf"))
        y = att.softmax(-1) @ v
        return self.proj(y.transpose(1, 2).reshape(b, t, c))


class ViTBlock(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(dim, eps=1e-6), nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, heads)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, x):
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class ViTB16(nn.Module):
    def __init__(self, classes: int = 1000, dim: int = 768, depth: int = 12, heads: int = 12,
                 image: int = 224, patch: int = 16):
        super().__init__()
        self.patch = nn.Conv2d(3, dim, patch, patch)
        self.cls = nn.Parameter(0.02 * torch.randn(1, 1, dim))
        self.pos = nn.Parameter(0.02 * torch.randn(1, (image // patch) ** 2 + 1, dim))
        self.blocks = nn.Sequential(*[ViTBlock(dim, heads) for _ in range(depth)])
        self.ln = nn.LayerNorm(dim, eps=1e-6)
        self.head = nn.Linear(dim, classes)

    def forward(self, x):
        x = self.patch(x).flatten(2).transpose(1, 2)
        x = torch.cat((self.cls.expand(x.shape[0], -1, -1), x), 1) + self.pos
        return self.head(self.ln(self.blocks(x))[:, 0])


class MLP(nn.Module):
    def __init__(self, sizes=(1024, 4096, 4096, 1000)):
        super().__init__()
        layers: list[nn.Module] = []
        for a, b in zip(sizes[:-1], sizes[1:]):
            layers += [nn.Linear(a, b), nn.ReLU()]
        self.net = nn.Sequential(*layers[:-1])

    def forward(self, x):
        return self.net(x)


class TextCNN(nn.Module):
    """Kim (2014): embedding, Conv1d of widths 3/4/5, max over time, linear."""

    def __init__(self, vocab: int = 20000, dim: int = 300, filters: int = 100, classes: int = 2):
        super().__init__()
        self.emb = nn.Embedding(vocab, dim)
        self.convs = nn.ModuleList(nn.Conv1d(dim, filters, k) for k in (3, 4, 5))
        self.fc = nn.Linear(3 * filters, classes)

    def forward(self, tokens):
        x = self.emb(tokens).transpose(1, 2)
        return self.fc(torch.cat([F.relu(c(x)).amax(-1) for c in self.convs], 1))


def gelu_tanh(x):
    """GPT-2's GELU, written as in the original (a pow 3, not the fused approximation)."""
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * torch.pow(x, 3))))


class GPT2Block(nn.Module):
    def __init__(self, dim: int, heads: int, ctx: int):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = Attention(dim, heads, causal_len=ctx)
        self.fc, self.proj = nn.Linear(dim, 4 * dim), nn.Linear(4 * dim, dim)

    def forward(self, x):
        x = x + self.attn(self.ln1(x))
        return x + self.proj(gelu_tanh(self.fc(self.ln2(x))))


class GPT2Small(nn.Module):
    """GPT-2 small's width (768, 12 heads) at 6 layers, an 8k vocabulary, 128 tokens."""

    def __init__(self, vocab: int = 8192, ctx: int = 128, dim: int = 768, depth: int = 6,
                 heads: int = 12):
        super().__init__()
        self.wte, self.wpe = nn.Embedding(vocab, dim), nn.Embedding(ctx, dim)
        self.blocks = nn.Sequential(*[GPT2Block(dim, heads, ctx) for _ in range(depth)])
        self.ln = nn.LayerNorm(dim)

    def forward(self, tokens):
        pos = torch.arange(tokens.shape[1], device=tokens.device).unsqueeze(0)
        x = self.blocks(self.wte(tokens) + self.wpe(pos))
        return self.ln(x) @ self.wte.weight.t()  # tied output embedding


# ----------------------------------------------------------------------------------------------
# Registry

IMAGE = ((1, 3, 224, 224), "float32")
# name: (constructor, (input shape, dtype), vocabulary size for token inputs)
ZOO: dict[str, tuple[type[nn.Module], tuple[tuple[int, ...], str], int]] = {
    "resnet18": (ResNet18, IMAGE, 0),
    "mobilenet_v2": (MobileNetV2, IMAGE, 0),
    "mobilenet_v3_small": (MobileNetV3Small, IMAGE, 0),
    "efficientnet_b0": (EfficientNetB0, IMAGE, 0),
    "shufflenet_v2": (ShuffleNetV2, IMAGE, 0),
    "squeezenet1_1": (SqueezeNet11, IMAGE, 0),
    "densenet121": (DenseNet121, IMAGE, 0),
    "convnext_tiny": (ConvNeXtTiny, IMAGE, 0),
    "vit_b16": (ViTB16, IMAGE, 0),
    "mlp": (MLP, ((1, 1024), "float32"), 0),
    "text_cnn": (TextCNN, ((1, 256), "int64"), 20000),
    "gpt2_6l": (GPT2Small, ((1, 128), "int64"), 8192),
}


def build(name: str, seed: int = 0) -> nn.Module:
    """The eval-mode module ``name`` with random weights from ``seed`` (batch-norm statistics
    and affine parameters random too)."""
    torch.manual_seed(seed)
    model = ZOO[name][0]()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0.0, 0.1)
                m.running_mean.normal_(0.0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
            elif isinstance(m, nn.LayerNorm):
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0.0, 0.1)
    return model.eval()


def make_input(name: str, seed: int = 0) -> np.ndarray:
    _, (shape, dtype), vocab = ZOO[name]
    rng = np.random.default_rng(seed)
    if vocab:
        return rng.integers(0, vocab, shape).astype(dtype)
    return rng.standard_normal(shape).astype(dtype)


def export(name: str, out: str, seed: int = 0, opset: int = 17) -> dict:
    model = build(name, seed)
    x = make_input(name, seed)
    path = os.path.join(out, f"{name}.onnx")
    t0 = time.perf_counter()
    with torch.inference_mode():
        torch.onnx.export(model, (torch.from_numpy(x),), path, dynamo=False,
                          opset_version=opset, input_names=["input"], output_names=["output"],
                          do_constant_folding=True)
    torch.save(model.state_dict(), os.path.join(out, f"{name}.pt"))
    np.save(os.path.join(out, f"{name}.input.npy"), x)
    return {"name": name, "seed": seed, "opset": opset, "input": list(x.shape),
            "dtype": str(x.dtype), "export_s": round(time.perf_counter() - t0, 2),
            "params": sum(p.numel() for p in model.parameters()),
            "onnx_bytes": os.path.getsize(path)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default=DEFAULT_DIR)
    parser.add_argument("--models", default=",".join(ZOO))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--opset", type=int, default=17)
    args = parser.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    manifest_path = os.path.join(args.out, "manifest.json")
    manifest = {}
    if os.path.exists(manifest_path):
        with open(manifest_path) as f:
            manifest = json.load(f)
    for name in args.models.split(","):
        info = export(name, args.out, args.seed, args.opset)
        manifest[name] = info
        print(f"{name:<20} {info['params'] / 1e6:6.1f} M params  "
              f"{info['onnx_bytes'] / 2**20:6.1f} MiB  {info['export_s']:5.1f} s", flush=True)
    with open(manifest_path, "w") as f:
        json.dump(manifest, f, indent=1)
    print(f"wrote {len(args.models.split(','))} models to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
