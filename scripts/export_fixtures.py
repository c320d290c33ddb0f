"""Export the small ONNX fixtures of tests/test_onnx_fixtures.py, with both torch exporters.

One tiny-width model per family of issue 12, built from the same blocks as the torchvision and
transformers originals (scripts/export_zoo.py and scripts/check_transformers.py hold the blocks,
at full width there): ResNet, MobileNet v2 and v3, EfficientNet, RegNet, ConvNeXt, DenseNet,
GoogLeNet, ShuffleNet, SqueezeNet, ViT, Swin, a BERT-like encoder (padding mask), GPT-2-like
decoders (causal; and with an attention mask and past keys/values in, present keys/values out),
a detection/segmentation head (ConvTranspose, nearest / bilinear / bicubic Resize,
align_corners) and a 3-D conv net (Conv3d, MaxPool3d, AvgPool3d, ConvTranspose3d). Random
weights from a fixed seed, batch-norm statistics random too.

Each model is exported twice: by the TorchScript exporter (``dynamo=False``, opset 17) and by
the dynamo exporter (``dynamo=True``, its default opset; it needs ``onnxscript``, which is not a
hetero dependency). The models that call ``scaled_dot_product_attention`` (BERT, GPT-2) are also
exported by the dynamo exporter at opset 23, where it becomes ONNX's Attention op (onnxruntime
1.32 refuses BERT's (B, 1, 1, T) padding mask there, so that one is left out: no reference).
``resnet_dyn`` has a symbolic batch dimension and gets reference outputs at batch 1 and 4.

Per model the folder gets ``NAME.onnx`` and ``NAME.npz`` (inputs ``in:<name>``, onnxruntime's
outputs ``out:<i>``; ``NAME.b4.npz`` for the second batch), and ``manifest.json`` lists them with
family, exporter and opset. It then times hetero (cpu:2) and onnxruntime (two threads) on each,
medians in the same run, checks the relative error max|a-b| / max|b|, and prints the table of
docs/onnx.md.

Needs torch, onnxscript and onnxruntime. Usage:
    python scripts/export_fixtures.py [--out tests/fixtures/models] [--only resnet,gpt2_past]
                                      [--repeat 20] [--no-time]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import time
import warnings

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

sys.path[:0] = [os.path.dirname(os.path.abspath(__file__)),
                os.path.dirname(os.path.dirname(os.path.abspath(__file__)))]
import check_transformers as ct  # noqa: E402
import export_zoo as zoo  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_DIR = os.path.join(ROOT, "tests", "fixtures", "models")
RTOL = 1e-4
conv_bn = zoo.conv_bn


# ----------------------------------------------------------------------------------------------
# Tiny models of every family


class TinyResNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(conv_bn(3, 8, 3, 2), nn.MaxPool2d(3, 2, 1))
        self.blocks = nn.Sequential(zoo.BasicBlock(8, 8, 1), zoo.BasicBlock(8, 16, 2))
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(self.blocks(self.stem(x)), 1), 1))


class TinyMobileNetV2(nn.Module):
    def __init__(self):
        super().__init__()
        ir = zoo.InvertedResidual
        self.features = nn.Sequential(
            conv_bn(3, 8, 3, 2, act=nn.ReLU6), ir(8, 8, 8, 3, 1, nn.ReLU6),
            ir(8, 48, 16, 3, 2, nn.ReLU6), ir(16, 96, 16, 3, 1, nn.ReLU6),
            conv_bn(16, 64, 1, act=nn.ReLU6))
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(64, 10))

    def forward(self, x):
        return self.classifier(torch.flatten(F.adaptive_avg_pool2d(self.features(x), 1), 1))


class TinyMobileNetV3(nn.Module):
    def __init__(self):
        super().__init__()
        ir, se = zoo.InvertedResidual, zoo.SqueezeExcite
        self.features = nn.Sequential(
            conv_bn(3, 8, 3, 2, act=nn.Hardswish),
            ir(8, 8, 8, 3, 2, nn.ReLU, se(8, 8, gate=nn.Hardsigmoid)),
            ir(8, 32, 16, 5, 2, nn.Hardswish, se(32, 8, gate=nn.Hardsigmoid)),
            ir(16, 48, 16, 5, 1, nn.Hardswish, se(48, 16, gate=nn.Hardsigmoid)),
            conv_bn(16, 48, 1, act=nn.Hardswish))
        self.classifier = nn.Sequential(nn.Linear(48, 64), nn.Hardswish(), nn.Linear(64, 10))

    def forward(self, x):
        return self.classifier(torch.flatten(F.adaptive_avg_pool2d(self.features(x), 1), 1))


class TinyEfficientNet(nn.Module):
    def __init__(self):
        super().__init__()
        ir, se = zoo.InvertedResidual, zoo.SqueezeExcite
        self.features = nn.Sequential(
            conv_bn(3, 8, 3, 2, act=nn.SiLU), ir(8, 8, 8, 3, 1, nn.SiLU, se(8, 2, nn.SiLU)),
            ir(8, 48, 16, 3, 2, nn.SiLU, se(48, 2, nn.SiLU)),
            ir(16, 96, 16, 5, 1, nn.SiLU, se(96, 4, nn.SiLU)), conv_bn(16, 64, 1, act=nn.SiLU))
        self.fc = nn.Linear(64, 10)

    def forward(self, x):
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(self.features(x), 1), 1))


class RegNetBlock(nn.Module):
    """torchvision's ResBottleneckBlock: 1x1, grouped 3x3 (group width 8), squeeze-excite, 1x1."""

    def __init__(self, cin: int, cout: int, stride: int, group_width: int = 8):
        super().__init__()
        self.a = conv_bn(cin, cout, 1)
        self.b = conv_bn(cout, cout, 3, stride, groups=cout // group_width)
        self.se = zoo.SqueezeExcite(cout, max(cin // 4, 1))
        self.c = conv_bn(cout, cout, 1, act=None)
        self.proj = (conv_bn(cin, cout, 1, stride, act=None)
                     if stride != 1 or cin != cout else nn.Identity())

    def forward(self, x):
        return F.relu(self.proj(x) + self.c(self.se(self.b(self.a(x)))))


class TinyRegNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = conv_bn(3, 8, 3, 2)
        self.trunk = nn.Sequential(RegNetBlock(8, 16, 2), RegNetBlock(16, 16, 1),
                                   RegNetBlock(16, 32, 2))
        self.fc = nn.Linear(32, 10)

    def forward(self, x):
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(self.trunk(self.stem(x)), 1), 1))


class TinyConvNeXt(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 4, 4), zoo.LayerNorm2d(16, eps=1e-6))
        self.stage1 = zoo.ConvNeXtBlock(16)
        self.down = nn.Sequential(zoo.LayerNorm2d(16, eps=1e-6), nn.Conv2d(16, 32, 2, 2))
        self.stage2 = zoo.ConvNeXtBlock(32)
        self.norm = nn.LayerNorm(32, eps=1e-6)
        self.fc = nn.Linear(32, 10)

    def forward(self, x):
        x = self.stage2(self.down(self.stage1(self.stem(x))))
        return self.fc(self.norm(x.mean((-2, -1))))


class TinyDenseNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(conv_bn(3, 16, 3, 2), nn.MaxPool2d(3, 2, 1))
        self.block1 = nn.Sequential(zoo.DenseLayer(16, 8, 2), zoo.DenseLayer(24, 8, 2))
        self.trans = nn.Sequential(nn.BatchNorm2d(32), nn.ReLU(), nn.Conv2d(32, 16, 1, bias=False),
                                   nn.AvgPool2d(2, 2))
        self.block2 = nn.Sequential(zoo.DenseLayer(16, 8, 2), zoo.DenseLayer(24, 8, 2))
        self.norm = nn.BatchNorm2d(32)
        self.fc = nn.Linear(32, 10)

    def forward(self, x):
        x = self.norm(self.block2(self.trans(self.block1(self.stem(x)))))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(F.relu(x), 1), 1))


class Inception(nn.Module):
    """torchvision's GoogLeNet Inception block (its "5x5" branch is a 3x3 there too)."""

    def __init__(self, cin, c1, c3r, c3, c5r, c5, pool):
        super().__init__()
        self.b1 = conv_bn(cin, c1, 1)
        self.b2 = nn.Sequential(conv_bn(cin, c3r, 1), conv_bn(c3r, c3, 3))
        self.b3 = nn.Sequential(conv_bn(cin, c5r, 1), conv_bn(c5r, c5, 3))
        self.b4 = nn.Sequential(nn.MaxPool2d(3, 1, 1, ceil_mode=True), conv_bn(cin, pool, 1))

    def forward(self, x):
        return torch.cat([self.b1(x), self.b2(x), self.b3(x), self.b4(x)], 1)


class TinyGoogLeNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(conv_bn(3, 16, 7, 2), nn.MaxPool2d(3, 2, ceil_mode=True))
        self.i3a = Inception(16, 8, 8, 16, 4, 8, 8)
        self.pool = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.i4a = Inception(40, 16, 8, 16, 4, 8, 8)
        self.fc = nn.Linear(48, 10)

    def forward(self, x):
        x = self.i4a(self.pool(self.i3a(self.stem(x))))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class TinyShuffleNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(conv_bn(3, 8, 3, 2), nn.MaxPool2d(3, 2, 1))
        self.stages = nn.Sequential(zoo.ShuffleUnit(8, 16, 2), zoo.ShuffleUnit(16, 16, 1),
                                    zoo.ShuffleUnit(16, 32, 2))
        self.fc = nn.Linear(32, 10)

    def forward(self, x):
        return self.fc(self.stages(self.stem(x)).mean((2, 3)))


class TinySqueezeNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 16, 3, 2), nn.ReLU(), nn.MaxPool2d(3, 2, ceil_mode=True),
            zoo.Fire(16, 4, 8), zoo.Fire(16, 4, 8), nn.MaxPool2d(3, 2, ceil_mode=True),
            zoo.Fire(16, 8, 16))
        self.classifier = nn.Sequential(nn.Dropout(0.5), nn.Conv2d(32, 10, 1), nn.ReLU(),
                                        nn.AdaptiveAvgPool2d(1))

    def forward(self, x):
        return torch.flatten(self.classifier(self.features(x)), 1)


class TinyViT(nn.Module):
    def __init__(self, dim: int = 32, heads: int = 4, patch: int = 8, image: int = 32):
        super().__init__()
        self.patch = nn.Conv2d(3, dim, patch, patch)
        self.cls = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
        self.pos = nn.Parameter(torch.randn(1, (image // patch) ** 2 + 1, dim) * 0.02)
        self.blocks = nn.Sequential(zoo.ViTBlock(dim, heads), zoo.ViTBlock(dim, heads))
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.head = nn.Linear(dim, 10)

    def forward(self, x):
        x = self.patch(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], 1) + self.pos
        return self.head(self.norm(self.blocks(x))[:, 0])


class Gpt2Past(nn.Module):
    """A GPT-2-like decoder step with a KV cache: ids (B, T), attention_mask (B, P + T) over
    the past and the new tokens, past keys and values (layers, B, heads, P, head size) in;
    logits and the present keys and values (P + T long) out."""

    def __init__(self, vocab=50, dim=16, heads=2, layers=2, max_len=32):
        super().__init__()
        self.heads = heads
        self.tok, self.pos = nn.Embedding(vocab, dim), nn.Embedding(max_len, dim)
        self.layers = nn.ModuleList(nn.ModuleDict({
            "n1": nn.LayerNorm(dim), "qkv": nn.Linear(dim, 3 * dim), "out": nn.Linear(dim, dim),
            "n2": nn.LayerNorm(dim),
            "ff": nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(approximate="tanh"),
                                nn.Linear(4 * dim, dim)),
        }) for _ in range(layers))
        self.norm = nn.LayerNorm(dim)

    def forward(self, ids, attention_mask, past_key, past_value):
        b, t = ids.shape
        p = past_key.shape[3]
        x = self.tok(ids) + self.pos(torch.arange(p, p + t).unsqueeze(0))
        causal = torch.ones(t, p + t, dtype=torch.bool).tril(diagonal=p)
        keep = causal[None, None] & attention_mask.bool()[:, None, None, :]
        keys, values = [], []
        for i, layer in enumerate(self.layers):
            h = layer["n1"](x)
            c = h.shape[-1]
            q, k, v = layer["qkv"](h).view(b, t, 3, self.heads, c // self.heads).permute(
                2, 0, 3, 1, 4)
            k = torch.cat([past_key[i], k], 2)
            v = torch.cat([past_value[i], v], 2)
            keys.append(k)
            values.append(v)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=keep)
            x = x + layer["out"](y.transpose(1, 2).reshape(b, t, c))
            x = x + layer["ff"](layer["n2"](x))
        return self.norm(x) @ self.tok.weight.T, torch.stack(keys), torch.stack(values)


class SegHead(nn.Module):
    """A detection/segmentation head: an encoder, an FPN-style top-down path (nearest 2x
    upsampling, lateral 1x1 convolutions), a ConvTranspose decoder and Resizes in the modes
    exporters emit (bilinear with and without align_corners, bicubic, nearest to a size)."""

    def __init__(self):
        super().__init__()
        self.c1 = conv_bn(3, 8, 3, 2)
        self.c2 = conv_bn(8, 16, 3, 2)
        self.c3 = conv_bn(16, 16, 3, 2)
        self.lat2, self.lat1 = nn.Conv2d(16, 16, 1), nn.Conv2d(8, 16, 1)
        self.up = nn.ConvTranspose2d(16, 8, 4, 2, 1)
        self.up_group = nn.ConvTranspose2d(8, 8, 3, 2, 1, output_padding=1, groups=2)
        self.cls = nn.Conv2d(8, 5, 1)
        self.box = nn.Conv2d(16, 4, 3, padding=1)

    def forward(self, x):
        f1 = self.c1(x)
        f2 = self.c2(f1)
        f3 = self.c3(f2)
        p2 = self.lat2(f2) + F.interpolate(f3, scale_factor=2.0, mode="nearest")
        p1 = self.lat1(f1) + F.interpolate(p2, size=f1.shape[-2:], mode="bilinear",
                                           align_corners=False)
        seg = self.cls(self.up_group(F.relu(self.up(p1))))
        seg = seg + F.interpolate(self.cls(F.relu(self.up(p2))), size=seg.shape[-2:],
                                  mode="bilinear", align_corners=True)
        fine = F.interpolate(seg, scale_factor=0.75, mode="bicubic", align_corners=False)
        return seg, self.box(p2), fine


class Conv3dNet(nn.Module):
    """A small video/volume net: Conv3d + BatchNorm3d, MaxPool3d, a strided Conv3d, AvgPool3d,
    ConvTranspose3d back up, and a classifier over the global average."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Sequential(nn.Conv3d(2, 8, 3, padding=1), nn.BatchNorm3d(8), nn.ReLU())
        self.pool = nn.MaxPool3d(2, 2)
        self.c2 = nn.Sequential(nn.Conv3d(8, 16, 3, stride=(1, 2, 2), padding=1, groups=2),
                                nn.ReLU())
        self.avg = nn.AvgPool3d(3, 1, 1, count_include_pad=False)
        self.up = nn.ConvTranspose3d(16, 4, 2, 2)
        self.fc = nn.Linear(16, 6)

    def forward(self, x):
        x = self.avg(self.c2(self.pool(self.c1(x))))
        return self.fc(x.mean((2, 3, 4))), self.up(x)


# ----------------------------------------------------------------------------------------------
# The fixture list


def _image(rng, batch=1, size=32):
    return [rng.standard_normal((batch, 3, size, size)).astype(np.float32)]


def _tokens(rng):
    ids = rng.integers(0, 50, (2, 8)).astype(np.int64)
    seg = (np.arange(8)[None, :] >= 4).astype(np.int64).repeat(2, 0)
    mask = np.ones((2, 8), np.int64)
    mask[1, 6:] = 0  # the second row is padded
    return [ids, seg, mask]


def _past(rng):
    ids = rng.integers(0, 50, (2, 3)).astype(np.int64)
    mask = np.ones((2, 8), np.int64)
    mask[1, :2] = 0  # the second row's first two cached tokens are padding
    shape = (2, 2, 2, 5, 8)  # layers, batch, heads, past length, head size
    return [ids, mask, rng.standard_normal(shape).astype(np.float32),
            rng.standard_normal(shape).astype(np.float32)]


#: name -> (family, builder, inputs(rng), input names, output names, opset-23 dynamo export too)
FAMILIES = {
    "resnet": ("ResNet", TinyResNet, _image, ["x"], ["y"], False),
    "mobilenet_v2": ("MobileNet v2", TinyMobileNetV2, _image, ["x"], ["y"], False),
    "mobilenet_v3": ("MobileNet v3", TinyMobileNetV3, _image, ["x"], ["y"], False),
    "efficientnet": ("EfficientNet", TinyEfficientNet, _image, ["x"], ["y"], False),
    "regnet": ("RegNet", TinyRegNet, _image, ["x"], ["y"], False),
    "convnext": ("ConvNeXt", TinyConvNeXt, _image, ["x"], ["y"], False),
    "densenet": ("DenseNet", TinyDenseNet, _image, ["x"], ["y"], False),
    "googlenet": ("GoogLeNet", TinyGoogLeNet, lambda r: _image(r, size=48), ["x"], ["y"], False),
    "shufflenet": ("ShuffleNet", TinyShuffleNet, _image, ["x"], ["y"], False),
    "squeezenet": ("SqueezeNet", TinySqueezeNet, _image, ["x"], ["y"], False),
    "vit": ("ViT", TinyViT, _image, ["x"], ["y"], False),
    "swin": ("Swin", lambda: ct.SwinBlocks(dim=16, window=4, heads=2),
             lambda r: [r.standard_normal((1, 8, 8, 16)).astype(np.float32)], ["x"], ["y"], False),
    "bert": ("BERT-like (padding mask)", lambda: ct.Bert(vocab=50, dim=16, heads=2, layers=2),
             _tokens, ["input_ids", "token_type_ids", "attention_mask"],
             ["hidden", "pooled"], True),
    "gpt2": ("GPT-2-like (causal)", lambda: ct.Gpt2(vocab=50, dim=16, heads=2, layers=2),
             lambda r: _tokens(r)[:1], ["input_ids"], ["logits"], True),
    "gpt2_past": ("GPT-2-like (mask, past key/values)", Gpt2Past, _past,
                  ["input_ids", "attention_mask", "past_key", "past_value"],
                  ["logits", "present_key", "present_value"], True),
    "seg_head": ("detection/segmentation head", SegHead, lambda r: _image(r, size=32),
                 ["x"], ["seg", "box", "fine"], False),
    "conv3d": ("3-D conv net", Conv3dNet,
               lambda r: [r.standard_normal((1, 2, 8, 16, 16)).astype(np.float32)], ["x"],
               ["y", "up"], False),
}
#: models with a symbolic batch: (name, family, builder, input(rng, batch)), run at batch 1 and 4
DYNAMIC = {"resnet_dyn": ("ResNet (dynamic batch)", TinyResNet)}


def build(builder, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    module = builder().eval()
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.copy_(torch.randn(m.num_features, generator=gen) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=gen) * 0.1)
    return module


def export(module, arrays, in_names, out_names, path, exporter, opset=None, dynamic=False):
    args = tuple(torch.from_numpy(a) for a in arrays)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if exporter == "torchscript":
            kw = {}
            if dynamic:
                kw["dynamic_axes"] = {n: {0: "batch"} for n in in_names + out_names}
            torch.onnx.export(module, args, path, input_names=in_names, output_names=out_names,
                              opset_version=opset or 17, dynamo=False, **kw)
        else:
            kw = {}
            if dynamic:
                batch = torch.export.Dim("batch", min=1, max=64)
                kw["dynamic_shapes"] = {"x": {0: batch}}
            if opset:
                kw["opset_version"] = opset
            program = torch.onnx.export(module, args, input_names=in_names,
                                        output_names=out_names, dynamo=True, verbose=False,
                                        **kw)
            program.save(path, external_data=False)
    import onnx

    model = onnx.load(path)
    return model.opset_import[0].version if model.opset_import else 0, sorted(
        {n.op_type for n in model.graph.node})


def ort_run(path, feeds, threads=2):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
    return sess, sess.run(None, feeds)


def rel_error(a, b) -> float:
    b = np.asarray(b, np.float64)
    return float(np.max(np.abs(np.asarray(a, np.float64) - b), initial=0.0)
                 / max(np.max(np.abs(b), initial=0.0), 1e-30))


def save_case(path, names, arrays, outputs) -> None:
    np.savez_compressed(path, **{f"in:{n}": a for n, a in zip(names, arrays)},
                        **{f"out:{i}": np.asarray(o) for i, o in enumerate(outputs)})


def median_ms(fn, repeat: int) -> float:
    fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def jobs(only):
    """(fixture name, family key, exporter, opset or None, dynamic)"""
    for key, (*_, opset23) in FAMILIES.items():
        variants = [("torchscript", None), ("dynamo", None)] + ([("dynamo", 23)] if opset23
                                                                else [])
        for exporter, opset in variants:
            name = f"{key}.{'ts' if exporter == 'torchscript' else 'dynamo'}"
            name += f".op{opset}" if opset else ""
            if not only or key in only:
                yield name, key, exporter, opset, False
    for key in DYNAMIC:
        for exporter in ("torchscript", "dynamo"):
            if not only or key in only:
                yield f"{key}.{'ts' if exporter == 'torchscript' else 'dynamo'}", key, \
                    exporter, None, True


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=DEFAULT_DIR)
    ap.add_argument("--only", default="", help="comma-separated family keys")
    ap.add_argument("--repeat", type=int, default=20)
    ap.add_argument("--no-time", action="store_true")
    args = ap.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)  # "torchvision is not installed"
    only = {s for s in args.only.split(",") if s}
    import hetero.onnx as ho

    manifest_path = os.path.join(args.out, "manifest.json")
    manifest = {}
    if os.path.exists(manifest_path):
        with open(manifest_path) as f:
            manifest = {e["name"]: e for e in json.load(f)}
    worst = 0.0
    for name, key, exporter, opset, dynamic in jobs(only):
        if dynamic:
            family, builder = DYNAMIC[key]
            in_names, out_names = ["x"], ["y"]
            rng = np.random.default_rng(0)
            batches = [_image(rng, batch=1), _image(rng, batch=4)]
        else:
            family, builder, make, in_names, out_names, _ = FAMILIES[key]
            batches = [make(np.random.default_rng(0))]
        module = build(builder)
        path = os.path.join(args.out, f"{name}.onnx")
        got_opset, ops = export(module, batches[0], in_names, out_names, path, exporter, opset,
                                dynamic)
        entry = {"name": name, "family": family, "exporter": exporter, "opset": got_opset,
                 "file": f"{name}.onnx", "inputs": in_names, "cases": [],
                 "bytes": os.path.getsize(path), "ops": ops}
        try:
            ort_run(path, dict(zip(in_names, batches[0])))
        except Exception as exc:  # noqa: BLE001 - no reference, so no fixture
            print(f"{name:28s} opset {got_opset:2d}  skipped: onnxruntime cannot run it: "
                  f"{str(exc).splitlines()[0][:300]}", flush=True)
            manifest.pop(name, None)
            os.remove(path)
            continue
        model = ho.compile(path, "cpu:2")
        errors = []
        for i, arrays in enumerate(batches):
            feeds = dict(zip(in_names, arrays))
            sess, ref = ort_run(path, feeds)
            with torch.no_grad():
                eager = module(*(torch.from_numpy(a) for a in arrays))
            eager = [eager] if isinstance(eager, torch.Tensor) else list(eager)
            torch_err = max(rel_error(ref[j], e.numpy()) for j, e in enumerate(eager))
            case = f"{name}.npz" if i == 0 else f"{name}.b{arrays[0].shape[0]}.npz"
            save_case(os.path.join(args.out, case), in_names, arrays, ref)
            entry["cases"].append(case)
            outs = model(*arrays)
            err = max(rel_error(o, r) for o, r in zip(outs, ref))
            errors.append(err)
            entry["torch_rel_error"] = max(entry.get("torch_rel_error", 0.0), torch_err)
            if i == 0 and not args.no_time:
                entry["hetero_ms"] = median_ms(lambda a=arrays, m=model: m(*a), args.repeat)
                entry["ort_ms"] = median_ms(lambda f=feeds, s=sess: s.run(None, f), args.repeat)
        entry["rel_error"] = max(errors)
        worst = max(worst, entry["rel_error"])
        manifest[name] = entry
        timing = (f"  hetero {entry['hetero_ms']:.2f} ms  ort {entry['ort_ms']:.2f} ms"
                  if "hetero_ms" in entry else "")
        print(f"{name:28s} opset {got_opset:2d}  {entry['bytes'] / 1024:7.1f} KiB  rel err "
              f"{entry['rel_error']:.1e} (torch vs ort {entry['torch_rel_error']:.1e}){timing}",
              flush=True)
    with open(manifest_path, "w") as f:
        json.dump(sorted(manifest.values(), key=lambda e: e["name"]), f, indent=1)
        f.write("\n")
    print_table(sorted(manifest.values(), key=lambda e: e["name"]))
    return 0 if worst <= RTOL else 1


def print_table(entries) -> None:
    print("\n| family | exporter | opset | status | rel. error | hetero ms | onnxruntime ms "
          "| hetero / ort |")
    print("|---|---|---:|---|---:|---:|---:|---:|")
    for e in entries:
        status = "matches" if e["rel_error"] <= RTOL else "MISMATCH"
        if "hetero_ms" in e:
            t = (f"{e['hetero_ms']:.2f} | {e['ort_ms']:.2f} | "
                 f"{e['hetero_ms'] / e['ort_ms']:.2f}")
        else:
            t = "- | - | -"
        print(f"| {e['family']} | {e['exporter']} | {e['opset']} | {status} | "
              f"{e['rel_error']:.1e} | {t} |")


if __name__ == "__main__":
    sys.exit(main())
