"""``ht.optim``: SGD with momentum, Adam and AdamW as pure updates over Tensors.

``update(params, grads, state, t)`` returns new parameters and state built with the ordinary ops,
so inside a traced train step the update is part of the one graph (``hetero.nn``).
"""

from __future__ import annotations

from typing import Any

import numpy as np

import hetero.ops as F

__all__ = ["SGD", "Adam", "AdamW"]


class SGD:
    def __init__(self, lr: float = 0.01, momentum: float = 0.0) -> None:
        self.lr, self.momentum = lr, momentum

    def init(self, params: list[np.ndarray]) -> list[np.ndarray]:
        return [np.zeros_like(p) for p in params] if self.momentum else []

    def update(self, params, grads, state, t) -> tuple[list[Any], list[Any]]:
        if not self.momentum:
            return [F.sub(p, F.mul(g, self.lr)) for p, g in zip(params, grads, strict=True)], []
        vs = [F.add(F.mul(v, self.momentum), g) for v, g in zip(state, grads, strict=True)]
        return [F.sub(p, F.mul(v, self.lr)) for p, v in zip(params, vs, strict=True)], vs


class Adam:
    decoupled = False

    def __init__(self, lr: float = 1e-3, beta1: float = 0.9, beta2: float = 0.999,
                 eps: float = 1e-8, weight_decay: float = 0.0) -> None:
        self.lr, self.b1, self.b2, self.eps, self.wd = lr, beta1, beta2, eps, weight_decay

    def init(self, params: list[np.ndarray]) -> list[np.ndarray]:
        return [np.zeros_like(p) for p in params] + [np.zeros_like(p) for p in params]

    def update(self, params, grads, state, t) -> tuple[list[Any], list[Any]]:
        n = len(params)
        ms, vs = state[:n], state[n:]
        new_p, new_m, new_v = [], [], []
        # bias corrections 1 - beta^t, from the step number t (a float scalar input)
        c1 = F.sub(1.0, F.exp(F.mul(t, float(np.log(self.b1)))))
        c2 = F.sub(1.0, F.exp(F.mul(t, float(np.log(self.b2)))))
        for p, g, m, v in zip(params, grads, ms, vs, strict=True):
            if self.wd and not self.decoupled:
                g = F.add(g, F.mul(p, self.wd))
            m = F.add(F.mul(m, self.b1), F.mul(g, 1.0 - self.b1))
            v = F.add(F.mul(v, self.b2), F.mul(F.mul(g, g), 1.0 - self.b2))
            step = F.div(F.div(m, c1), F.add(F.sqrt(F.div(v, c2)), self.eps))
            if self.wd and self.decoupled:
                step = F.add(step, F.mul(p, self.wd))
            new_p.append(F.sub(p, F.mul(step, self.lr)))
            new_m.append(m)
            new_v.append(v)
        return new_p, new_m + new_v


class AdamW(Adam):
    """Adam with decoupled weight decay (Loshchilov and Hutter)."""

    decoupled = True

    def __init__(self, lr: float = 1e-3, beta1: float = 0.9, beta2: float = 0.999,
                 eps: float = 1e-8, weight_decay: float = 0.01) -> None:
        super().__init__(lr, beta1, beta2, eps, weight_decay)
