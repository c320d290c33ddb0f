"""Layers, the Sequential model and Keras-style training (see ``hetero.nn``)."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np

import hetero.ops as F
from hetero.autodiff import _GradTrace, value_and_grad
from hetero.errors import ShapeError, TraceError
from hetero.tracing import Tensor, _traces, current_annotation, device, user_line


class Module:
    """A layer: named parameters and a forward function. ``where`` is the user's line that made
    it, so shape errors name it; ``device`` the ``ht.device`` scope it was made in (it runs
    there)."""

    integer_input = False  # whether the layer takes integer input (indices), kept as given

    def __init__(self) -> None:
        self.params: dict[str, np.ndarray] = {}
        self.state: dict[str, np.ndarray] = {}  # layer state that is not trained (BatchNorm's)
        self.where = user_line()
        self.device = current_annotation()[0]
        self.training = True

    def forward(self, p: dict[str, Any], x: Any) -> Any:
        raise NotImplementedError

    def check(self, x: Any) -> None:
        """Refuse an input this layer cannot take, naming it and where it was made."""

    def __call__(self, x: Any, p: dict[str, Any] | None = None) -> Any:
        try:
            self.check(x)
        except ShapeError as exc:
            raise ShapeError(f"{type(self).__name__} layer made at {self.where}: {exc}") from None
        p = self.params if p is None else p
        if self.device is not None:
            with device(self.device):
                return self.forward(p, x)
        return self.forward(p, x)

    def __repr__(self) -> str:
        shapes = ", ".join(f"{k}={v.shape}" for k, v in self.params.items())
        return f"{type(self).__name__}({shapes})"


def _init(rng: np.random.Generator, fan_in: int, shape: tuple[int, ...]) -> np.ndarray:
    return (rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)).astype(np.float32)


class Dense(Module):
    """``x @ weight + bias`` over the last axis (weight is in x out)."""

    def __init__(self, units_in: int, units_out: int, seed: int = 0) -> None:
        super().__init__()
        rng = np.random.default_rng(seed)
        self.params = {"weight": _init(rng, units_in, (units_in, units_out)),
                       "bias": np.zeros(units_out, np.float32)}

    def check(self, x):
        if x.shape[-1] != self.params["weight"].shape[0]:
            raise ShapeError(f"expects {self.params['weight'].shape[0]} input features, got "
                             f"input of shape {tuple(x.shape)}")

    def forward(self, p, x):
        return F.add(F.matmul(x, p["weight"]), p["bias"])


class Conv2d(Module):
    """2-D convolution over NCHW input (ONNX Conv attributes)."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int = 1, padding: int = 0,
                 groups: int = 1, seed: int = 0) -> None:
        super().__init__()
        rng = np.random.default_rng(seed)
        fan = c_in // groups * kernel * kernel
        self.params = {"weight": _init(rng, fan, (c_out, c_in // groups, kernel, kernel)),
                       "bias": np.zeros(c_out, np.float32)}
        self.attrs = {"strides": (stride, stride), "pads": (padding,) * 4, "groups": groups}

    def check(self, x):
        c = self.params["weight"].shape[1] * self.attrs["groups"]
        if len(x.shape) != 4 or x.shape[1] != c:
            raise ShapeError(f"expects NCHW input with {c} channels, got shape {tuple(x.shape)}")

    def forward(self, p, x):
        return F.conv2d(x, p["weight"], p["bias"], **self.attrs)


class LayerNorm(Module):
    """Normalisation over the last axis, then ``* scale + bias`` (the layer_norm op)."""

    def __init__(self, features: int, epsilon: float = 1e-5) -> None:
        super().__init__()
        self.epsilon = epsilon
        self.params = {"scale": np.ones(features, np.float32),
                       "bias": np.zeros(features, np.float32)}

    def check(self, x):
        if x.shape[-1] != self.params["scale"].shape[0]:
            raise ShapeError(f"expects {self.params['scale'].shape[0]} features on the last "
                             f"axis, got shape {tuple(x.shape)}")

    def forward(self, p, x):
        return F.layer_norm(x, p["scale"], p["bias"], epsilon=self.epsilon)


class Embedding(Module):
    """Rows of ``weight`` (num_embeddings x dim) picked by an integer index tensor of any shape;
    the output has shape ``indices.shape + (dim,)``."""

    integer_input = True

    def __init__(self, num_embeddings: int, dim: int, seed: int = 0) -> None:
        super().__init__()
        rng = np.random.default_rng(seed)
        self.params = {"weight": rng.standard_normal((num_embeddings, dim)).astype(np.float32)}

    def check(self, x):
        if isinstance(x, Tensor):
            dtype, shape = x.dtype, tuple(x.shape)
        else:
            dtype, shape = np.asarray(x).dtype, np.shape(x)
        if dtype.kind not in "iu":
            raise ShapeError(f"expects integer indices, got {dtype.name} input of shape {shape}")

    def forward(self, p, x):
        return F.gather(p["weight"], x, axis=0)


class MultiHeadAttention(Module):
    """Self-attention over (batch, seq, dim) input: ``dim`` split into ``heads`` heads, scaled
    dot-product scores softmaxed over the keys (with ``causal``, a query sees only keys at or
    before its position), the heads joined and projected back to ``dim``. Weights are in x out
    (``x @ q_weight + q_bias``), as in ``Dense``."""

    _MASKED = -1e9  # added to the scores a causal query may not see

    def __init__(self, dim: int, heads: int, causal: bool = False, seed: int = 0) -> None:
        super().__init__()
        if heads < 1 or dim % heads:
            raise ShapeError(f"MultiHeadAttention: dim {dim} is not divisible by heads {heads}")
        self.dim, self.heads, self.causal = dim, heads, causal
        rng = np.random.default_rng(seed)
        for name in ("q", "k", "v", "out"):
            self.params[f"{name}_weight"] = _init(rng, dim, (dim, dim))
            self.params[f"{name}_bias"] = np.zeros(dim, np.float32)

    def check(self, x):
        if len(x.shape) != 3 or x.shape[-1] != self.dim:
            raise ShapeError(f"expects (batch, seq, {self.dim}) input, got shape "
                             f"{tuple(x.shape)}")

    def forward(self, p, x):
        b, s, _ = x.shape
        h, d = self.heads, self.dim // self.heads

        def project(name, perm):
            y = F.add(F.matmul(x, p[f"{name}_weight"]), p[f"{name}_bias"])
            return F.transpose(F.reshape(y, (b, s, h, d)), perm)

        q = project("q", (0, 2, 1, 3))  # (b, h, s, d)
        k = project("k", (0, 2, 3, 1))  # (b, h, d, s)
        v = project("v", (0, 2, 1, 3))
        scores = F.mul(F.matmul(q, k), float(1.0 / np.sqrt(d)))
        if self.causal:
            mask = np.triu(np.full((s, s), self._MASKED, np.float32), k=1)
            scores = F.add(scores, mask)
        y = F.matmul(F.softmax(scores, axis=-1), v)  # (b, h, s, d)
        y = F.reshape(F.transpose(y, (0, 2, 1, 3)), (b, s, self.dim))
        return F.add(F.matmul(y, p["out_weight"]), p["out_bias"])


class DropoutTraceError(TraceError):
    """A Dropout in training mode inside a cached trace (``@ht.function``) with no mask fed in:
    a mask drawn while tracing would be baked into the graph and reused at every call."""


class BatchNorm(Module):
    """Batch normalisation over axis 1 of (N, C) or NCHW input, then ``* scale + bias``.

    Trained params: ``scale``, ``bias``. Layer state (``self.state``, not in ``params``, so no
    optimizer touches it): ``running_mean``, ``running_var``.

    Training mode (``self.training``): normalises with the batch's statistics over every axis
    but 1 (biased variance), computed with differentiable ops (mean, sub, mul) feeding the
    batch_norm op, so gradients flow through them. The running statistics follow PyTorch:
    ``running = (1 - momentum) * running + momentum * batch_stat``, the variance's batch
    statistic being the unbiased one (``var * n / (n - 1)``). Eval mode: normalises with the
    running statistics.

    How the running statistics are updated: eagerly (a plain ``layer(x)`` call on arrays) the
    layer updates them itself, in NumPy. In ``Sequential.fit``'s traced train step the layer
    instead hands its batch mean and variance to the step (``_collect``), which returns them as
    extra outputs; ``fit`` then applies the update in NumPy after every step. Inside any other
    trace (your own ``@ht.function`` or ``value_and_grad``) nothing is updated in training
    mode: the statistics are graph values, not numbers, there.
    """

    def __init__(self, channels: int, momentum: float = 0.1, epsilon: float = 1e-5) -> None:
        super().__init__()
        if not 0.0 <= momentum <= 1.0:
            raise ShapeError(f"BatchNorm: momentum must be in [0, 1], got {momentum}")
        self.channels, self.momentum, self.epsilon = channels, momentum, epsilon
        self.params = {"scale": np.ones(channels, np.float32),
                       "bias": np.zeros(channels, np.float32)}
        self.state = {"running_mean": np.zeros(channels, np.float32),
                      "running_var": np.ones(channels, np.float32)}
        self._collect: list[tuple[Any, Any, int]] | None = None

    def check(self, x):
        shape = tuple(x.shape)
        if len(shape) not in (2, 4) or shape[1] != self.channels:
            raise ShapeError(f"expects (N, {self.channels}) or NCHW input with {self.channels} "
                             f"channels, got shape {shape}")

    def update_running(self, mean: np.ndarray, var: np.ndarray, n: int) -> None:
        """Fold one batch's mean and biased variance (``n`` values a channel) into the running
        statistics (PyTorch's rule, unbiased variance)."""
        m = self.momentum
        unbiased = np.asarray(var, np.float64) * (n / max(n - 1, 1))
        rm, rv = self.state["running_mean"], self.state["running_var"]
        self.state["running_mean"] = ((1 - m) * rm + m * np.asarray(mean, np.float64)
                                      ).astype(np.float32)
        self.state["running_var"] = ((1 - m) * rv + m * unbiased).astype(np.float32)

    def forward(self, p, x):
        eps = self.epsilon
        dtype = np.dtype(x.dtype)
        if not self.training:
            return F.batch_norm(x, p["scale"], p["bias"],
                                np.asarray(self.state["running_mean"], dtype),
                                np.asarray(self.state["running_var"], dtype), epsilon=eps)
        shape = tuple(x.shape)
        axes = (0,) + tuple(range(2, len(shape)))
        n = int(np.prod([shape[a] for a in axes]))
        chan = (1, shape[1]) + (1,) * (len(shape) - 2)
        mean = F.mean(x, axis=axes)
        xc = F.sub(x, F.reshape(mean, chan))
        var = F.mean(F.mul(xc, xc), axis=axes)
        y = F.batch_norm(x, p["scale"], p["bias"], mean, var, epsilon=eps)
        if self._collect is not None:
            self._collect.append((mean, var, n))
        elif not (isinstance(mean, Tensor) and mean.is_traced):
            self.update_running(np.asarray(mean.numpy() if isinstance(mean, Tensor) else mean),
                                np.asarray(var.numpy() if isinstance(var, Tensor) else var), n)
        return y


class Dropout(Module):
    """Training mode: ``x * keep / (1 - rate)``, ``keep`` a fresh Bernoulli(1 - rate) mask each
    call; eval mode: the identity.

    The library has no random op, so a mask cannot be drawn inside a graph. In
    ``Sequential.fit``'s traced step the mask is therefore an input of the step: ``fit`` draws a
    new one in NumPy for every step and feeds it in (``_mask``). Eagerly, and inside a one-shot
    ``value_and_grad`` trace, the layer draws it itself. Inside any other trace (your own
    ``@ht.function``) with no mask fed in it raises ``DropoutTraceError`` rather than bake one
    mask into the graph.
    """

    def __init__(self, rate: float, seed: int | None = None) -> None:
        super().__init__()
        if not 0.0 <= rate < 1.0:
            raise ShapeError(f"Dropout: rate must be in [0, 1), got {rate}")
        self.rate = float(rate)
        self.rng = np.random.default_rng(seed)
        self._mask: Any = None  # fed by fit's traced step
        self.last_shape: tuple[int, ...] | None = None

    def make_mask(self, shape: tuple[int, ...], dtype: Any = np.float32) -> np.ndarray:
        """A fresh keep-mask already scaled by ``1 / (1 - rate)``."""
        keep = self.rng.random(shape) >= self.rate
        return (keep / (1.0 - self.rate)).astype(dtype)

    def forward(self, p, x):
        self.last_shape = tuple(x.shape)
        if not self.training or self.rate == 0.0:
            return x
        if self._mask is not None:
            return F.mul(x, self._mask)
        if any(not isinstance(t, _GradTrace) for t in _traces()):
            raise DropoutTraceError(
                f"Dropout layer made at {self.where}: in training mode inside a traced "
                "function a mask drawn now would be reused at every call; feed one (as "
                "Sequential.fit does), or set training = False")
        return F.mul(x, self.make_mask(tuple(x.shape), np.dtype(x.dtype)))


class _Stateless(Module):
    def __init__(self, fn: Callable[[Any], Any]) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, p, x):
        return self.fn(x)


class ReLU(_Stateless):
    def __init__(self) -> None:
        super().__init__(F.relu)


class Tanh(_Stateless):
    def __init__(self) -> None:
        super().__init__(F.tanh)


class Flatten(_Stateless):
    def __init__(self) -> None:
        super().__init__(lambda x: F.flatten(x, axis=1))


class MaxPool2d(_Stateless):
    def __init__(self, k: int, stride: int | None = None) -> None:
        self.k, self.s = k, stride or k
        s = self.s
        super().__init__(lambda x: F.max_pool2d(x, kernel_shape=(k, k), strides=(s, s)))


class AvgPool2d(_Stateless):
    def __init__(self, k: int, stride: int | None = None) -> None:
        self.k, self.s = k, stride or k
        s = self.s
        super().__init__(lambda x: F.avg_pool2d(x, kernel_shape=(k, k), strides=(s, s)))


def cross_entropy(logits: Any, onehot: Any) -> Any:
    """Mean over the batch of ``-sum(onehot * log_softmax(logits))``."""
    return F.neg(F.mean(F.sum(F.mul(F.log_softmax(logits, axis=-1), onehot), axes=(1,))))


class Sequential(Module):
    """Layers applied in order; parameters are named ``"<index>.<name>"``."""

    def __init__(self, *layers: Module) -> None:
        super().__init__()
        self.layers = list(layers)
        self.params = {f"{i}.{k}": v for i, m in enumerate(layers) for k, v in m.params.items()}
        self._step = None

    def forward(self, p, x):
        for i, m in enumerate(self.layers):
            x = m(x, {k: p[f"{i}.{k}"] for k in m.params})
        return x

    # -- weights ------------------------------------------------------------------------------

    def _states(self) -> dict[str, dict[str, np.ndarray]]:
        """Each layer's untrained state (BatchNorm's running statistics) by layer index."""
        return {str(i): m.state for i, m in enumerate(self.layers) if m.state}

    def save_weights(self, path: str) -> None:
        """Parameters and layer state (saved as ``state.<index>.<name>``) in one npz."""
        state = {f"state.{i}.{k}": v for i, st in self._states().items() for k, v in st.items()}
        np.savez(path, **self.params, **state)

    def load_weights(self, path: str) -> None:
        with np.load(path) as data:
            missing = sorted(set(self.params) - set(data.files))
            if missing:
                raise ShapeError(f"{path}: no weights for {', '.join(missing)}")
            for k in self.params:
                if data[k].shape != self.params[k].shape:
                    raise ShapeError(f"{path}: weight {k} has shape {data[k].shape}, the model "
                                     f"{self.params[k].shape}")
            new = {k: np.array(data[k], np.float32) for k in self.params}
            states = {}
            for i, st in self._states().items():
                for k, v in st.items():
                    key = f"state.{i}.{k}"
                    if key in data.files:  # files saved before layers had state lack it
                        if data[key].shape != v.shape:
                            raise ShapeError(f"{path}: state {i}.{k} has shape "
                                             f"{data[key].shape}, the model {v.shape}")
                        states[(i, k)] = np.array(data[key], np.float32)
        self._set(new)
        for (i, k), v in states.items():
            self.layers[int(i)].state[k] = v

    def _set(self, new: dict[str, np.ndarray]) -> None:
        self.params = new
        for i, m in enumerate(self.layers):
            m.params = {k: new[f"{i}.{k}"] for k in m.params}

    def _input(self, x: np.ndarray) -> np.ndarray:
        """A batch as the first layer takes it: float32, or integers kept for an Embedding."""
        if self.layers and self.layers[0].integer_input and np.asarray(x).dtype.kind in "iu":
            return np.asarray(x)
        return np.asarray(x).astype(np.float32)

    # -- Keras conventions --------------------------------------------------------------------

    def compile(self, optimizer: Any, loss: str = "cross_entropy",
                metrics: tuple[str, ...] = ("accuracy",), graph: bool = True) -> None:
        if loss != "cross_entropy":
            raise ShapeError(f"unknown loss {loss!r} (known: cross_entropy)")
        self.optimizer, self.metrics, self.graph = optimizer, tuple(metrics), graph
        self._step = None

    def _walk(self) -> list[Module]:
        """Every layer, nested Sequentials' included."""
        out: list[Module] = []
        for m in self.layers:
            out.append(m)
            if isinstance(m, Sequential):
                out.extend(m._walk())
        return out

    def _set_training(self, training: bool) -> dict[int, bool]:
        """Put every layer in training or eval mode; returns the modes before, for
        ``_restore``."""
        before = {id(m): m.training for m in [self, *self._walk()]}
        for m in [self, *self._walk()]:
            m.training = training
        return before

    def _restore(self, before: dict[int, bool]) -> None:
        for m in [self, *self._walk()]:
            m.training = before.get(id(m), m.training)

    def _build_step(self) -> Callable[..., Any]:
        names = list(self.params)
        opt = self.optimizer
        norms = [m for m in self._walk() if isinstance(m, BatchNorm)]
        drops = [m for m in self._walk() if isinstance(m, Dropout) and m.rate > 0]

        def loss_fn(params, x, y, masks):
            for m in norms:
                m._collect = []
            for m, mask in zip(drops, masks, strict=True):
                m._mask = mask
            try:
                logits = self.forward(dict(zip(names, params, strict=True)), x)
                stats = [v for m in norms for (mean, var, _n) in m._collect for v in (mean, var)]
                self._norm_counts[tuple(x.shape)] = [c[2] for m in norms for c in m._collect]
            finally:
                for m in norms:
                    m._collect = None
                for m in drops:
                    m._mask = None
            return cross_entropy(logits, y), stats

        vg = value_and_grad(loss_fn, has_aux=True)

        def step(t, x, y, *flat):
            n, k = len(names), len(flat) - len(drops)
            params, state, masks = list(flat[:n]), list(flat[n:k]), list(flat[k:])
            (loss, stats), grads = vg(params, x, y, masks)
            new_params, new_state = opt.update(params, grads, state, t)
            return (loss, *new_params, *new_state, *stats)

        self._norms, self._drops = norms, drops
        self._norm_counts: dict[tuple[int, ...], list[int]] = {}
        if self.graph:
            from hetero.function import function

            # parameters and optimizer state are donated: the compiled step writes the new
            # values into their arrays in place (arguments t, x, y, params, state, masks;
            # outputs loss, params, state, statistics)
            n, k = len(names), len(self._state)
            donate = {3 + i: 1 + i for i in range(n + k)}
            return function(step, donate=donate)
        return step

    def _masks(self, xb: np.ndarray) -> list[np.ndarray]:
        """Fresh dropout masks for one step of ``fit`` (their shapes found once, by an eager
        eval-mode forward pass of the batch)."""
        if not self._drops:
            return []
        if self._mask_shapes.get(xb.shape) is None:
            before = self._set_training(False)
            try:
                self(xb)
            finally:
                self._restore(before)
            self._mask_shapes[xb.shape] = [m.last_shape for m in self._drops]
        return [m.make_mask(s) for m, s in zip(self._drops, self._mask_shapes[xb.shape],
                                               strict=True)]

    def fit(self, x: np.ndarray, y: np.ndarray, epochs: int = 1, batch_size: int = 32,
            validation_data: tuple[np.ndarray, np.ndarray] | None = None, seed: int = 0,
            verbose: bool = True) -> dict[str, list[float]]:
        """Train; ``y`` are integer class labels. Returns the per-epoch history."""
        if self._step is None:
            self._state = self.optimizer.init(list(self.params.values()))
            self._step = self._build_step()
            self._t = 0
            self._mask_shapes: dict[tuple[int, ...], list[tuple[int, ...]]] = {}
        classes = self.layers[-1].params["bias"].shape[0] if self.layers[-1].params else \
            int(y.max()) + 1
        rng = np.random.default_rng(seed)
        history: dict[str, list[float]] = {"loss": [], "accuracy": [], "time": []}
        if validation_data is not None:
            history["val_accuracy"] = []
        n = len(x) - len(x) % batch_size  # whole batches only: one traced shape
        for epoch in range(epochs):
            order = rng.permutation(len(x))[:n]
            t0, losses = time.perf_counter(), []
            steps = n // batch_size
            for b in range(steps):
                idx = order[b * batch_size:(b + 1) * batch_size]
                xb = self._input(x[idx])
                yb = np.eye(classes, dtype=np.float32)[y[idx]]
                self._t += 1
                masks = self._masks(xb)
                before = self._set_training(True)
                try:
                    out = self._step(np.float32(self._t), xb, yb, *self.params.values(),
                                     *self._state, *masks)
                finally:
                    self._restore(before)
                out = [np.asarray(o.numpy() if isinstance(o, Tensor) else o) for o in out]
                k, s = len(self.params), len(out) - 2 * len(self._norms)
                if not self.graph:  # graph mode updated the arrays in place (donated)
                    self._set(dict(zip(self.params, out[1:1 + k], strict=True)))
                    self._state = out[1 + k:s]
                counts = self._norm_counts[tuple(xb.shape)]
                for j, m in enumerate(self._norms):
                    m.update_running(out[s + 2 * j], out[s + 2 * j + 1], counts[j])
                losses.append(float(out[0]))
                if verbose:
                    _bar(epoch, epochs, b + 1, steps, float(np.mean(losses)), t0)
            dt = time.perf_counter() - t0
            acc = self.evaluate(x, y)["accuracy"]
            history["loss"].append(float(np.mean(losses)))
            history["accuracy"].append(acc)
            history["time"].append(dt)
            line = f" - accuracy {acc:.4f}"
            if validation_data is not None:
                va = self.evaluate(*validation_data)["accuracy"]
                history["val_accuracy"].append(va)
                line += f" - val_accuracy {va:.4f}"
            if verbose:
                sys.stdout.write(line + f" - {dt:.2f}s\n")
                sys.stdout.flush()
        return history

    def predict(self, x: np.ndarray, batch_size: int = 256) -> np.ndarray:
        """The model's outputs, in eval mode (Dropout off, BatchNorm on running statistics)."""
        outs = []
        before = self._set_training(False)
        try:
            for i in range(0, len(x), batch_size):
                y = self(self._input(x[i:i + batch_size]))
                outs.append(np.asarray(y.numpy() if isinstance(y, Tensor) else y))
        finally:
            self._restore(before)
        return np.concatenate(outs)

    def evaluate(self, x: np.ndarray, y: np.ndarray) -> dict[str, float]:
        logits = self.predict(x)
        z = logits - logits.max(1, keepdims=True)
        logp = z - np.log(np.exp(z).sum(1, keepdims=True))
        return {"loss": float(-logp[np.arange(len(y)), y].mean()),
                "accuracy": float((logits.argmax(1) == y).mean())}


def _bar(epoch: int, epochs: int, step: int, steps: int, loss: float, t0: float) -> None:
    width = 30
    done = int(width * step / steps)
    bar = "=" * max(done - 1, 0) + (">" if done < width else "=") + "." * (width - done)
    sys.stdout.write(f"\rEpoch {epoch + 1}/{epochs} {step}/{steps} [{bar}] "
                     f"{time.perf_counter() - t0:.1f}s - loss {loss:.4f}")
    sys.stdout.flush()
