"""A graphc model read as the layer sequence that the benchmark's peer frameworks build.

The peers (NumPy, PyTorch, JAX) do not read .net files. Each builds the same network from this
description, which is read from the model's bound forward graph, so it cannot drift from the model:
dense layers (h @ W + b) and conv layers (stride-1 conv2d plus a per-channel bias), each optionally
followed by an activation and a max pool, then softmax cross-entropy on the last layer's output.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from graphc.ir.graph import Graph, Node

ACTIVATIONS = ("relu", "sigmoid")


@dataclass(frozen=True)
class Layer:
    kind: str                     # "dense" | "conv"
    W: str                        # param names in the model
    b: str
    w_shape: tuple[int, ...]      # dense [in, out]; conv [out, in, k, k] (OIHW, as PyTorch's)
    out_shape: tuple[int, ...]    # per sample, before pooling: dense (out,); conv (out, H, W)
    padding: tuple[int, int] = (0, 0)
    act: str | None = None        # one of ACTIVATIONS, or none
    pool: tuple[int, int] | None = None  # max-pool window, stride equal to it

    @property
    def macs(self) -> int:
        """Multiply-adds per sample of the layer's forward contraction."""
        reduced = self.w_shape[0] if self.kind == "dense" else math.prod(self.w_shape[1:])
        return math.prod(self.out_shape) * reduced

    def __str__(self) -> str:
        words = [self.kind, "x".join(map(str, self.w_shape[:1] + self.w_shape[2:])) if self.kind == "conv"
                 else str(self.w_shape[1])]
        if any(self.padding):
            words.append("pad {}x{}".format(*self.padding))
        if self.act:
            words.append(self.act)
        if self.pool:
            words.append("pool {}x{}".format(*self.pool))
        return " ".join(words)


@dataclass(frozen=True)
class NetSpec:
    input_shape: tuple[int, ...]  # per sample, as the first layer takes it (the model's leading reshape done)
    layers: tuple[Layer, ...]

    def flops_per_sample(self) -> float:
        """Training FLOPs of the contractions: forward, weight gradients, and input gradients of every
        layer but the first (no framework computes the gradient of the data). Elementwise work, pooling
        and the loss are not counted."""
        macs = [layer.macs for layer in self.layers]
        return 2.0 * (3 * sum(macs) - macs[0])

    @property
    def is_mlp(self) -> bool:
        return all(layer.kind == "dense" for layer in self.layers)

    def __str__(self) -> str:
        return f"{list(self.input_shape)} -> " + " -> ".join(map(str, self.layers))


def _pair(v: int | tuple[int, int] | list[int]) -> tuple[int, int]:
    """An op's int-or-pair attribute (padding, kernel, ...) as (rows, cols)."""
    return (v, v) if isinstance(v, int) else (v[0], v[1])


def _unsupported(g: Graph, n: Node, why: str) -> SystemExit:
    where = f"{n.loc.file}:{n.loc.line}" if n.loc else g.name
    return SystemExit(f"{where}: {n.op}: {why}; the benchmark's peers build dense and stride-1 conv layers "
                      f"with optional {'/'.join(ACTIVATIONS)} and max pooling, then softmax_cross_entropy")


def read_spec(g: Graph) -> NetSpec:
    """The layers of `g` (a forward graph with its batch bound), or SystemExit saying what does not fit."""
    params = {p.value.name for p in g.params}
    x = g.inputs[0].value
    input_shape, layers, cur = tuple(x.shape[1:]), [], x.name
    for n in g.nodes:
        if n.op == "accuracy":  # a metric: not part of the training step's work
            continue
        if not n.inputs or n.inputs[0].name != cur:
            raise _unsupported(g, n, "the network is not a single chain of layers")
        last = layers[-1] if layers else None
        if n.op == "reshape" and not layers:
            input_shape = tuple(n.out.shape[1:])
        elif n.op == "flatten" and last:
            pass  # peers flatten where a dense layer follows a conv layer
        elif n.op in ("matmul", "conv2d") and n.inputs[1].name in params:
            a = n.attrs
            if n.op == "matmul":
                plain = not (a["ta"] or a["tb"])
            else:
                plain = _pair(a["stride"]) == _pair(a["dilation"]) == (1, 1) and a["groups"] == 1
            if not plain:
                raise _unsupported(g, n, f"attributes {a}")
            layers.append(Layer("dense" if n.op == "matmul" else "conv", n.inputs[1].name, "",
                                tuple(n.inputs[1].shape), tuple(n.out.shape[1:]), _pair(a.get("padding", 0))))
        elif (n.op == "add" and last and not last.b and n.inputs[1].name in params
              and math.prod(n.inputs[1].shape) == last.out_shape[0]):  # one bias per unit or channel
            layers[-1] = replace(last, b=n.inputs[1].name)
        elif n.op in ACTIVATIONS and last and last.b and not last.act and not last.pool:
            layers[-1] = replace(last, act=n.op)
        elif (n.op == "max_pool2d" and last and last.kind == "conv" and not last.pool
              and _pair(n.attrs["padding"]) == (0, 0)
              and (n.attrs["stride"] is None or _pair(n.attrs["stride"]) == _pair(n.attrs["kernel"]))):
            layers[-1] = replace(last, pool=_pair(n.attrs["kernel"]))
        elif n.op == "softmax_cross_entropy" and last and last.b:
            return NetSpec(input_shape, tuple(layers))
        else:
            raise _unsupported(g, n, "not a step of a dense or conv layer here")
        cur = n.out.name
    raise SystemExit(f"{g.name}: the benchmark needs a softmax_cross_entropy loss on the last layer")
