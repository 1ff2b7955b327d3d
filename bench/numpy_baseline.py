"""The hand-written NumPy baseline: an MLP trained with explicit backprop over NumPy's BLAS.

Written the way the blog posts write it (Affine / activation / SoftmaxWithLoss layers, float32,
SGD with momentum), tuned only to avoid needless copies, so it is a fair peer for graphc.
"""

from __future__ import annotations

import numpy as np


class NumpyMLP:
    def __init__(self, sizes: list[int], act: str = "relu", lr: float = 0.1, momentum: float = 0.9,
                 seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        self.params = []
        for a, b in zip(sizes, sizes[1:]):
            w = (rng.normal(size=(a, b)) * np.sqrt(2.0 / a)).astype(np.float32)
            self.params += [w, np.zeros(b, np.float32)]
        self.vel = [np.zeros_like(p) for p in self.params]
        self.act, self.lr, self.mu = act, np.float32(lr), np.float32(momentum)

    def _act(self, z):
        return np.maximum(z, 0, out=z) if self.act == "relu" else np.reciprocal(1 + np.exp(-z), out=z)

    def _dact(self, h, g):
        return g * (h > 0) if self.act == "relu" else g * h * (1 - h)

    def step(self, x: np.ndarray, y: np.ndarray) -> float:
        hs = [x]
        n = len(self.params) // 2
        for i in range(n):
            z = hs[-1] @ self.params[2 * i] + self.params[2 * i + 1]
            hs.append(self._act(z) if i < n - 1 else z)
        z = hs[-1]
        z = z - z.max(axis=1, keepdims=True)
        e = np.exp(z)
        p = e / e.sum(axis=1, keepdims=True)
        b = len(y)
        loss = -np.log(p[np.arange(b), y] + 1e-12).mean()
        g = p
        g[np.arange(b), y] -= 1
        g /= b
        grads = [None] * len(self.params)
        for i in reversed(range(n)):
            grads[2 * i] = hs[i].T @ g
            grads[2 * i + 1] = g.sum(axis=0)
            if i:
                g = self._dact(hs[i], g @ self.params[2 * i].T)
        for p_, v, d in zip(self.params, self.vel, grads):
            v *= self.mu
            v += d
            p_ -= self.lr * v
        return float(loss)

    def accuracy(self, x: np.ndarray, y: np.ndarray) -> float:
        h = x
        n = len(self.params) // 2
        for i in range(n):
            h = h @ self.params[2 * i] + self.params[2 * i + 1]
            if i < n - 1:
                h = self._act(h)
        return float((h.argmax(axis=1) == y).mean())
