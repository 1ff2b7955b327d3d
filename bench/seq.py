"""Sequence-model benchmark: graphc's training step on models/gpt.net and models/lstm.net against
the same models in PyTorch (eager and torch.compile) and JAX.

Run from the repository root:

    python bench/seq.py                      # both models, 5 rounds of 10 steps per framework
    python bench/seq.py --reps 9             # more rounds: medians steadier on a noisy machine
    python bench/seq.py --threads 1          # every framework on one thread
    python bench/seq.py --nets gpt           # only some models (gpt, lstm)
    python bench/seq.py --frameworks graphc  # only some frameworks
    python bench/seq.py --smoke              # 1 round of 2 steps: checks that everything runs
    python bench/seq.py --agree              # 300 steps of graphc, PyTorch eager (and JAX) side by side

A framework that is not installed is skipped with a line saying so. Each framework trains the same
model (twins written here, built at the sizes the .net file's params have: for PyTorch, nanoGPT's
model for gpt.net and torch.nn.LSTM for lstm.net, whose gate order i, f, g, o is graphc's slice
order of z = x·Wx + b + h·Wh; for JAX, the .net files' lines in jax.numpy, the recurrence a
lax.scan, Adam written out as torch.optim writes it) from the same initial weights (graphc's
initializers, copied in; graphc stores a dense weight [in, out], torch.nn.Linear [out, in]), with
the model's own train block (gpt.net: AdamW lr 1e-3, weight decay 0; lstm.net: Adam lr 2e-3 with the
gradients clipped to global norm 1.0), in float32, on the same batches: B = 32 random windows of
T + 1 = 65 bytes of the bundled Jargon File's training 90%, drawn as `graphc train` draws them
(np.random.default_rng(seed + 1).integers over the windows). torch.nn.LSTM's second bias (b_hh)
is held at zero and not trained: graphc's cell has one bias. torch.compile leaves torch.nn.LSTM to
eager PyTorch (TorchDynamo's default, allow_rnn=False; so only the LSTM model's optimizer step is
compiled): with allow_rnn=True it compiled the 64 unrolled steps in 153 s, and the step ran slower
than eager (100 vs 83 ms here).

This file is separate from bench/run.py because everything but the machine differs: run.py's
frameworks are built from bench/netspec.py's dense/conv layer lists and train epochs over MNIST
with SGD momentum, while these are hand-written twins of two fixed architectures, trained by the
models' own optimizers on random text windows. The machine (CPU, FMA peak, thread setting) is
run.py's, imported.

Timing: frameworks alternate round by round within one process (each round: every framework trains
the same `STEPS_PER_REP` batches), so the machine's load changes hit all of them alike; the table
shows the median of the timed steps' wall times (each step's loss read back as a float), after
warm-up steps that JIT-compile (torch.compile) and fault pages in.

Training FLOPs per step (multiply-adds x 2; forward, gradient of the inputs and of the weights of
each matmul: 3 x the forward; the embedding gather, softmax, layer norm, GELU, the LSTM's gate
nonlinearities and the optimizer are not counted; attention counted over the full T x T scores,
as graphc computes them, not the causal half):
    gpt:  6·B·T·(L·(4·D² + 2·D·F + 2·T·D) + D·V)
          (per token and block: q, k, v and the output projection 4·D², the MLP 2·D·F, the scores
          q·kᵀ and p·v T·D each; the tied output embedding D·V)
          = 10.87 GFLOP at B = 32, T = 64, L = 4, D = 128, F = 512, V = 256
    lstm: 6·B·T·(E·4H + H·4H + H·V)   (input projection, recurrent matmul, output layer)
          = 4.83 GFLOP at B = 32, T = 64, E = 64, H = 256, V = 256
% of peak is against the FP32 FMA peak measured here with a generated kernel on all threads used.

Agreement (--agree): graphc and PyTorch eager (and JAX, if installed) train AGREE_STEPS steps
from the same weights on the same batches (those of `graphc train`'s first epoch); the losses every
50 steps, the differences at the end, and each one's validation loss on the validation split's
first VAL_WINDOWS non-overlapping windows (the windows graphc train evaluates on).
"""

from __future__ import annotations

import os
import sys

# torch.compile's compiler otherwise works in a pool of subprocesses, which may still be busy while
# the timed steps run; on one thread it compiles in this process, before the timing starts
os.environ.setdefault("TORCHINDUCTOR_COMPILE_THREADS", "1")

import run  # noqa: E402,F401  (it reads --threads into the BLAS/OpenMP settings before NumPy loads)

import argparse  # noqa: E402
import importlib.util  # noqa: E402
import math  # noqa: E402
import re  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from typing import Any, Callable, Protocol  # noqa: E402

import numpy as np  # noqa: E402

from run import ROOT, cores, fma_peak, machine  # noqa: E402
from graphc.driver import compile_graph, forward, load, train_graph  # noqa: E402
from graphc.ir.init import init_params  # noqa: E402
from graphc.runtime.train.data import load_dataset  # noqa: E402
from graphc.runtime.train.feeds import bind, feeder, rows  # noqa: E402

STEPS_PER_REP = 10
WARMUP_STEPS = 3      # torch.compile compiles on the first call, its optimizer step on the first two
SMOKE_STEPS = 2
AGREE_STEPS = 300
AGREE_EVERY = 50
AGREE_TARGET = 0.02   # nats: issue #19's bound on the difference after 300 steps
VAL_WINDOWS = 2048    # validation windows (64 batches of 32) for --agree's validation losses
HEADS = 4             # gpt.net's attention heads (`attn(..., heads=4)`: not visible in the params)


@dataclass(frozen=True)
class SeqNet:
    name: str   # what --nets selects
    model: str  # path relative to the repository root
    batch: int = 32

    @property
    def label(self) -> str:
        return f"{self.model.rsplit('/', 1)[-1]} b{self.batch}"


NETS = [SeqNet("gpt", "models/gpt.net"), SeqNet("lstm", "models/lstm.net")]


# ---- the problem every framework solves -----------------------------------------------------

@dataclass
class Problem:
    """One model at one batch size: its program, initial weights, train block and text windows."""

    net: SeqNet
    prog: Any                        # graphc Program
    init: dict[str, np.ndarray]      # graphc's initial params by name
    train: dict[str, np.ndarray]     # input name -> training windows [N, T] (views of the bytes)
    val: dict[str, np.ndarray]       # input name -> non-overlapping validation windows
    inputs: tuple[str, str]          # the token input and the next-token input (x, y)
    T: int

    @property
    def batch(self) -> int:
        return self.net.batch

    @property
    def optimizer(self) -> str:
        return self.prog.train.optimizer

    @property
    def opt_args(self) -> dict[str, float]:
        return dict(self.prog.train.opt_args)

    @property
    def clip_norm(self) -> float | None:
        return self.prog.train.clip_norm

    def batches(self, seed: int, steps: int) -> list[np.ndarray]:
        """`steps` batches of window indices, drawn as `graphc train`'s epoch draws them."""
        n = len(next(iter(self.train.values())))
        order = np.random.default_rng(seed).integers(n, size=steps * self.batch)
        return [order[i * self.batch:(i + 1) * self.batch] for i in range(steps)]

    def window(self, idx: np.ndarray, split: str = "train") -> tuple[np.ndarray, np.ndarray]:
        """(x, y) of the windows `idx` as int64 arrays [B, T]."""
        src = self.train if split == "train" else self.val
        return tuple(np.take(src[k], idx, axis=0).astype(np.int64) for k in self.inputs)  # type: ignore

    def flops_per_step(self) -> float:
        """The formula of the module docstring, at the sizes of this model's params."""
        p, bt = self.init, self.batch * self.T
        if self.net.name == "gpt":
            V, D = p["wte"].shape
            blocks = [k for k in p if k.endswith(".fc.W")]
            F = p[blocks[0]].shape[1]
            return 6 * bt * (len(blocks) * (4 * D * D + 2 * D * F + 2 * self.T * D) + D * V)
        E, G = p["Wx"].shape
        H, V = p["Wo"].shape
        return 6 * bt * (E * G + H * G + H * V)


def make_problem(net: SeqNet, data: Any) -> Problem:
    prog = load(ROOT / net.model)
    g = forward(prog, net.batch)
    step_graph = train_graph(prog, net.batch)
    model_state = {s.value.name for s in prog.graph.state}
    init = init_params(step_graph.params + [s for s in step_graph.state if s.value.name in model_state],
                       prog.train.seed)
    train = bind(prog, g, data.train, {}, data.name, "train", True)
    val = bind(prog, g, data.validation, {}, data.name, "validation", True)
    ints = [i.value for i in g.inputs if i.value.dtype == "i32"]
    x, y = ints[0].name, ints[1].name  # declared in that order: tokens, then the next tokens
    return Problem(net, prog, init, train, val, (x, y), int(ints[0].dims[1]))


# ---- the frameworks -------------------------------------------------------------------------

class Unsupported(Exception):
    """A framework that cannot train this model (the others still run)."""


class Trainer(Protocol):
    def step(self, idx: np.ndarray) -> float:
        """One training step on the windows `idx`; returns its loss."""

    def val_loss(self, windows: int) -> float:
        """Mean loss over the first `windows` validation windows (forward only)."""


class Graphc:
    """The training step `graphc train` compiles (train block's optimizer and clipping), fed as it
    feeds it."""

    def __init__(self, p: Problem, threads: int | None) -> None:
        self.p = p
        g = train_graph(p.prog, p.batch)
        self.params = {k: a.copy() for k, a in p.init.items()}
        c = compile_graph(g, self.params, threads=threads)
        self.first = c.seconds
        self.compiled, self.threads = c.step, threads
        self.compiled.inputs["lr"][...] = p.opt_args["lr"]
        self.feed = feeder(c.step, p.train)
        self.loss = p.prog.graph.loss_name()

    def step(self, idx: np.ndarray) -> float:
        self.feed(idx)
        return float(self.compiled.run()[self.loss])

    def val_loss(self, windows: int) -> float:
        ev = compile_graph(forward(self.p.prog, self.p.batch, training=False), self.params,
                           threads=self.threads).step
        B, losses = self.p.batch, []
        for s in range(0, windows, B):
            out = ev(**{k: rows(src, "i32", s, s + B) for k, src in self.p.val.items()})
            losses.append(float(out[self.loss]))
        return float(np.mean(losses))


def _check_names(p: Problem, used: set[str]) -> None:
    if set(p.init) != used:
        raise Unsupported(f"the PyTorch twin of {p.net.model} takes params {sorted(used - set(p.init))[:4]} "
                          f"the model lacks, or the model has params {sorted(set(p.init) - used)[:4]} "
                          "the twin lacks: the twin no longer matches the .net file")


def _check_names_gpt(p: Problem, blocks: int) -> None:
    _check_names(p, {"wte", "wpe", "lnf.gamma", "lnf.beta"} | {
        f"b{i + 1}.{n}" for i in range(blocks) for n in
        ["ln1.gamma", "ln1.beta", "ln2.gamma", "ln2.beta", "fc.W", "fc.b", "proj.W", "proj.b"]
        + [f"attn.{m}.{wb}" for m in ("q", "k", "v", "proj") for wb in "Wb"]})


def torch_gpt(p: Problem) -> Any:
    """nanoGPT's model at gpt.net's sizes: token + position embeddings, pre-LN blocks (causal
    self-attention by F.scaled_dot_product_attention, a GELU-tanh MLP), a final layer norm and the
    output tied to the token embedding; q, k and v as one [3D, D] Linear (Adam(W) is elementwise,
    so one stacked param trains as three)."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    init = p.init
    V, D = init["wte"].shape
    L = len([k for k in init if k.endswith(".fc.W")])
    Fh = init["b1.fc.W"].shape[1]
    t = lambda a: torch.tensor(np.ascontiguousarray(a))  # noqa: E731

    def linear(w: np.ndarray, b: np.ndarray) -> nn.Linear:
        m = nn.Linear(*w.shape)
        with torch.no_grad():
            m.weight.copy_(t(w.T))
            m.bias.copy_(t(b))
        return m

    def layernorm(prefix: str) -> nn.LayerNorm:
        m = nn.LayerNorm(D, eps=1e-5)
        with torch.no_grad():
            m.weight.copy_(t(init[f"{prefix}.gamma"]))
            m.bias.copy_(t(init[f"{prefix}.beta"]))
        return m

    class Block(nn.Module):
        def __init__(self, i: int) -> None:
            super().__init__()
            a = f"b{i}.attn"
            self.ln1, self.ln2 = layernorm(f"b{i}.ln1"), layernorm(f"b{i}.ln2")
            self.c_attn = linear(np.concatenate([init[f"{a}.{n}.W"] for n in "qkv"], axis=1),
                                 np.concatenate([init[f"{a}.{n}.b"] for n in "qkv"]))
            self.c_proj = linear(init[f"{a}.proj.W"], init[f"{a}.proj.b"])
            self.fc = linear(init[f"b{i}.fc.W"], init[f"b{i}.fc.b"])
            self.proj = linear(init[f"b{i}.proj.W"], init[f"b{i}.proj.b"])

        def forward(self, x: Any) -> Any:
            B, T, _ = x.shape
            q, k, v = self.c_attn(self.ln1(x)).split(D, dim=2)
            q, k, v = (z.view(B, T, HEADS, D // HEADS).transpose(1, 2) for z in (q, k, v))
            o = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            x = x + self.c_proj(o.transpose(1, 2).reshape(B, T, D))
            return x + self.proj(F.gelu(self.fc(self.ln2(x)), approximate="tanh"))

    class GPT(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.wte = nn.Embedding(V, D)
            self.wpe = nn.Parameter(t(init["wpe"]))
            with torch.no_grad():
                self.wte.weight.copy_(t(init["wte"]))
            self.blocks = nn.ModuleList(Block(i + 1) for i in range(L))
            self.ln_f = layernorm("lnf")

        def forward(self, x: Any, y: Any) -> Any:
            h = self.wte(x) + self.wpe
            for block in self.blocks:
                h = block(h)
            logits = F.linear(self.ln_f(h), self.wte.weight)  # tied
            return F.cross_entropy(logits.view(-1, V), y.view(-1))

    _check_names_gpt(p, L)
    return GPT()


def torch_lstm(p: Problem) -> Any:
    """lstm.net: an embedding, torch.nn.LSTM (one layer; gates i, f, g, o as graphc slices them;
    weight_ih = Wxᵀ, weight_hh = Whᵀ, bias_ih = b, bias_hh = 0 and frozen), a Linear to the logits."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    init = p.init
    V, E = init["emb"].shape
    H, G = init["lstm.Wh"].shape
    if G != 4 * H or init["Wx"].shape != (E, G):
        raise Unsupported(f"lstm.net's Wx {init['Wx'].shape} / Wh {init['lstm.Wh'].shape} are not an "
                          "LSTM's [E, 4H] / [H, 4H]")
    t = lambda a: torch.tensor(np.ascontiguousarray(a))  # noqa: E731

    class LSTM(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.emb = nn.Embedding(V, E)
            self.lstm = nn.LSTM(E, H, batch_first=True)
            self.out = nn.Linear(H, init["Wo"].shape[1])
            with torch.no_grad():
                self.emb.weight.copy_(t(init["emb"]))
                self.lstm.weight_ih_l0.copy_(t(init["Wx"].T))
                self.lstm.weight_hh_l0.copy_(t(init["lstm.Wh"].T))
                self.lstm.bias_ih_l0.copy_(t(init["b"]))
                self.lstm.bias_hh_l0.zero_()
            self.lstm.bias_hh_l0.requires_grad_(False)
            with torch.no_grad():
                self.out.weight.copy_(t(init["Wo"].T))
                self.out.bias.copy_(t(init["bo"]))

        def forward(self, x: Any, y: Any) -> Any:
            h, _ = self.lstm(self.emb(x))
            logits = self.out(h)
            return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))

    _check_names(p, {"emb", "Wx", "b", "lstm.Wh", "Wo", "bo"})
    return LSTM()


TWINS: dict[str, Callable[[Problem], Any]] = {"gpt": torch_gpt, "lstm": torch_lstm}


class Torch:
    """The twin, trained by torch.optim's Adam/AdamW (and clip_grad_norm_ where the train block
    clips), eager or with its loss and optimizer step under torch.compile."""

    def __init__(self, p: Problem, compiled: bool, threads: int | None) -> None:
        import torch

        if threads:
            torch.set_num_threads(threads)
        self.torch, self.p = torch, p
        self.model = TWINS[p.net.name](p)
        params = [q for q in self.model.parameters() if q.requires_grad]
        args = p.opt_args
        betas = (args.get("beta1", 0.9), args.get("beta2", 0.999))
        eps = args.get("eps", 1e-8)
        if p.optimizer == "adamw":
            self.opt = torch.optim.AdamW(params, lr=args["lr"], betas=betas, eps=eps,
                                         weight_decay=args.get("weight_decay", 0.01))
        elif p.optimizer == "adam":
            self.opt = torch.optim.Adam(params, lr=args["lr"], betas=betas, eps=eps,
                                        weight_decay=args.get("weight_decay", 0.0))
        else:
            raise Unsupported(f"optimizer {p.optimizer}: the twin knows adam and adamw")
        if p.prog.train.schedule != "constant":
            raise Unsupported(f"schedule {p.prog.train.schedule}: the twin trains at a constant lr")
        self.params, self.clip = params, p.clip_norm
        self.loss_fn = torch.compile(self.model) if compiled else self.model
        self.update = torch.compile(self.opt.step) if compiled else self.opt.step
        self.first: float | None = None

    def step(self, idx: np.ndarray) -> float:
        t0 = time.perf_counter()
        x, y = (self.torch.from_numpy(a) for a in self.p.window(idx))
        loss = self.loss_fn(x, y)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        if self.clip:
            self.torch.nn.utils.clip_grad_norm_(self.params, self.clip)
        self.update()
        out = float(loss.detach())
        if self.first is None:
            self.first = time.perf_counter() - t0
        return out

    def val_loss(self, windows: int) -> float:
        B, losses = self.p.batch, []
        self.model.eval()
        with self.torch.no_grad():
            for s in range(0, windows, B):
                x, y = (self.torch.from_numpy(a) for a in self.p.window(np.arange(s, s + B), "val"))
                losses.append(float(self.model(x, y)))
        self.model.train()
        return float(np.mean(losses))


def jax_gpt(p: Problem) -> Callable[[dict, Any, Any], Any]:
    """gpt.net in jax.numpy, written as the .net file writes it (params in graphc's layout)."""
    import jax
    import jax.numpy as jnp

    L = len([k for k in p.init if k.endswith(".fc.W")])
    _check_names_gpt(p, L)

    def ln(x: Any, P: dict, name: str) -> Any:
        m = x.mean(-1, keepdims=True)
        v = ((x - m) ** 2).mean(-1, keepdims=True)
        return (x - m) / jnp.sqrt(v + 1e-5) * P[f"{name}.gamma"] + P[f"{name}.beta"]

    def loss(P: dict, x: Any, y: Any) -> Any:
        B, T = x.shape
        D = P["wte"].shape[1]
        causal = jnp.tril(jnp.ones((T, T), bool))
        h = P["wte"][x] + P["wpe"]
        for i in range(1, L + 1):
            a, pre = ln(h, P, f"b{i}.ln1"), f"b{i}.attn"
            q, k, v = ((a @ P[f"{pre}.{n}.W"] + P[f"{pre}.{n}.b"]).reshape(B, T, HEADS, -1).transpose(0, 2, 1, 3)
                       for n in "qkv")
            s = jnp.where(causal, q @ k.transpose(0, 1, 3, 2) / math.sqrt(D // HEADS), -1e9)
            o = (jax.nn.softmax(s, axis=-1) @ v).transpose(0, 2, 1, 3).reshape(B, T, D)
            h = h + o @ P[f"{pre}.proj.W"] + P[f"{pre}.proj.b"]
            f = jax.nn.gelu(ln(h, P, f"b{i}.ln2") @ P[f"b{i}.fc.W"] + P[f"b{i}.fc.b"], approximate=True)
            h = h + f @ P[f"b{i}.proj.W"] + P[f"b{i}.proj.b"]
        logits = ln(h, P, "lnf") @ P["wte"].T
        return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), y[..., None], axis=-1))
    return loss


def jax_lstm(p: Problem) -> Callable[[dict, Any, Any], Any]:
    """lstm.net in jax.numpy: the recurrence a lax.scan over time, as the .net file's scan."""
    import jax
    import jax.numpy as jnp
    from jax import lax

    _check_names(p, {"emb", "Wx", "b", "lstm.Wh", "Wo", "bo"})
    H = p.init["lstm.Wh"].shape[0]

    def loss(P: dict, x: Any, y: Any) -> Any:
        gx = (P["emb"][x] @ P["Wx"] + P["b"]).transpose(1, 0, 2)  # [T, B, 4H]

        def cell(carry: tuple, g: Any) -> tuple:
            h, c = carry
            z = g + h @ P["lstm.Wh"]
            i, f, u, o = (z[:, j * H:(j + 1) * H] for j in range(4))
            c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(u)
            h = jax.nn.sigmoid(o) * jnp.tanh(c)
            return (h, c), h

        zeros = jnp.zeros((x.shape[0], H), jnp.float32)
        _, hs = lax.scan(cell, (zeros, zeros), gx)
        logits = hs.transpose(1, 0, 2) @ P["Wo"] + P["bo"]
        return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), y[..., None], axis=-1))
    return loss


JAX_LOSSES: dict[str, Callable[[Problem], Callable[[dict, Any, Any], Any]]] = {"gpt": jax_gpt, "lstm": jax_lstm}


class Jax:
    """One jitted step: the loss and its gradient (jax.value_and_grad), clipping where the train
    block clips, and Adam/AdamW written out as torch.optim writes them (params and moments donated,
    updated in place)."""

    def __init__(self, p: Problem, threads: int | None) -> None:
        import jax
        import jax.numpy as jnp

        if p.optimizer not in ("adam", "adamw") or p.prog.train.schedule != "constant":
            raise Unsupported(f"optimizer {p.optimizer}, schedule {p.prog.train.schedule}: the JAX twin "
                              "knows adam and adamw at a constant lr")
        self.jnp, self.p = jnp, p
        args = p.opt_args
        lr, b1, b2, eps = args["lr"], args.get("beta1", 0.9), args.get("beta2", 0.999), args.get("eps", 1e-8)
        wd = args.get("weight_decay", 0.01 if p.optimizer == "adamw" else 0.0)
        decoupled, clip = p.optimizer == "adamw", p.clip_norm
        loss_fn = JAX_LOSSES[p.net.name](p)

        def step(P: dict, m: dict, v: dict, t: Any, x: Any, y: Any) -> tuple:
            loss, g = jax.value_and_grad(loss_fn)(P, x, y)
            if clip:
                norm = jnp.sqrt(sum(jnp.sum(d * d) for d in jax.tree.leaves(g)))
                g = jax.tree.map(lambda d: d * jnp.minimum(clip / (norm + 1e-6), 1.0), g)
            if wd and not decoupled:
                g = jax.tree.map(lambda d, w: d + wd * w, g, P)
            t = t + 1
            m = jax.tree.map(lambda a, d: b1 * a + (1 - b1) * d, m, g)
            v = jax.tree.map(lambda a, d: b2 * a + (1 - b2) * d * d, v, g)
            c1, c2 = 1 - b1 ** t, 1 - b2 ** t

            def update(w: Any, a: Any, s: Any) -> Any:
                if wd and decoupled:
                    w = w * (1 - lr * wd)
                return w - lr / c1 * a / (jnp.sqrt(s) / jnp.sqrt(c2) + eps)
            return jax.tree.map(update, P, m, v), m, v, t, loss

        self._step = jax.jit(step, donate_argnums=(0, 1, 2))
        self._loss = jax.jit(loss_fn)
        self.P = {k: jnp.asarray(a) for k, a in p.init.items()}
        self.m = jax.tree.map(jnp.zeros_like, self.P)
        self.v = jax.tree.map(jnp.zeros_like, self.P)
        self.t = jnp.asarray(0.0, jnp.float32)
        self.first: float | None = None

    def step(self, idx: np.ndarray) -> float:
        t0 = time.perf_counter()
        # fresh arrays each step: JAX on CPU may read a NumPy array in place while the step runs
        x, y = (a.astype(np.int32) for a in self.p.window(idx))
        self.P, self.m, self.v, self.t, loss = self._step(self.P, self.m, self.v, self.t, x, y)
        out = float(loss)
        if self.first is None:
            self.first = time.perf_counter() - t0
        return out

    def val_loss(self, windows: int) -> float:
        B = self.p.batch
        return float(np.mean([float(self._loss(self.P, *(a.astype(np.int32) for a in
                                                          self.p.window(np.arange(s, s + B), "val"))))
                               for s in range(0, windows, B)]))


Factory = Callable[[Problem, int | None], Trainer]
FRAMEWORKS: dict[str, tuple[str | None, Factory]] = {
    "graphc": (None, Graphc),
    "pytorch": ("torch", lambda p, t: Torch(p, False, t)),
    "torch.compile": ("torch", lambda p, t: Torch(p, True, t)),
    "jax": ("jax", Jax),
}


def missing(name: str) -> str | None:
    """Why framework `name` cannot run here, or None."""
    module = FRAMEWORKS[name][0]
    if module and importlib.util.find_spec(module) is None:
        return f"{module} is not installed (pip install {module})"
    return None


# ---- measuring ------------------------------------------------------------------------------

@dataclass
class Result:
    framework: str
    times: list[float] = field(default_factory=list)  # seconds of each timed step
    losses: list[float] = field(default_factory=list)
    first_loss: float = math.nan   # the loss of the first warm-up step (the same batch for all)
    first_s: float | None = None   # graphc: compile (or cache load); torch: the first step

    @property
    def ms(self) -> float:
        return statistics.median(self.times) * 1e3


def bench_net(p: Problem, names: list[str], reps: int, steps: int, warmup: int, threads: int | None,
              skip: Callable[[str, str], None]) -> dict[str, Result]:
    """Build each framework, warm it up on the same batches, then time `reps` rounds of `steps` steps
    each, alternating between frameworks round by round (the same batches for all)."""
    trainers: dict[str, Trainer] = {}
    results: dict[str, Result] = {}
    warm = p.batches(p.prog.train.seed + 1, warmup)
    for name in names:
        t0 = time.perf_counter()
        try:
            fw = FRAMEWORKS[name][1](p, threads)
            first = fw.step(warm[0])
            for idx in warm[1:]:
                fw.step(idx)
        except Unsupported as e:
            print(f"skipped {name} on {p.net.label}: {e}")
            continue
        except Exception as e:  # a peer that fails (torch.compile without a C++ compiler) is skipped
            if name == "graphc":
                raise
            skip(name, f"failed on {p.net.label}: {type(e).__name__}: {str(e).strip().splitlines()[0][:160]}")
            continue
        trainers[name] = fw
        results[name] = Result(name, first_loss=first, first_s=getattr(fw, "first", None))
        print(f"  {name}: built and warmed up in {time.perf_counter() - t0:.1f} s", flush=True)
    for rep in range(reps):
        batches = p.batches(1000 + rep, steps)
        for name, fw in trainers.items():
            for idx in batches:
                t0 = time.perf_counter()
                loss = fw.step(idx)
                results[name].times.append(time.perf_counter() - t0)
                results[name].losses.append(loss)
    return results


def agree(p: Problem, peers: list[str], threads: int | None, steps: int, every: int,
          val_windows: int) -> dict[str, Any]:
    """graphc and `peers` (PyTorch eager, JAX) trained side by side on `graphc train`'s first batches:
    the last step's losses, the mean of the last `every` steps' and the validation losses, by name."""
    fws: dict[str, Trainer] = {"graphc": Graphc(p, threads)}
    fws.update({name: FRAMEWORKS[name][1](p, threads) for name in peers})
    losses: dict[str, list[float]] = {name: [] for name in fws}
    print(f"{'step':>6} " + " ".join(f"{n:>9}" for n in fws) + " " + " ".join(
        f"{'graphc-' + n:>14}" for n in peers))
    for i, idx in enumerate(p.batches(p.prog.train.seed + 1, steps), 1):
        for name, fw in fws.items():
            losses[name].append(fw.step(idx))
        if i == 1 or i % every == 0 or i == steps:
            last = {k: v[-1] for k, v in losses.items()}
            print(f"{i:6d} " + " ".join(f"{v:9.4f}" for v in last.values()) + " " + " ".join(
                f"{last['graphc'] - last[n]:+14.4f}" for n in peers), flush=True)
    tail = min(every, steps)
    return {"final": {k: v[-1] for k, v in losses.items()}, "tail_steps": tail,
            "tail": {k: float(np.mean(v[-tail:])) for k, v in losses.items()},
            "val": {k: fw.val_loss(val_windows) for k, fw in fws.items()}}


# ---- reporting ------------------------------------------------------------------------------

def print_table(rows: list[tuple[Problem, dict[str, Result]]], peak: float) -> None:
    head = (f"{'model':14} {'framework':14} {'ms/step':>9} {'x eager':>8} {'x graphc':>9} {'GFLOP/s':>8} "
            f"{'% peak':>7} {'loss@1':>7} {'loss':>7} {'first s':>8}")
    print(head)
    print("-" * len(head))
    for p, results in rows:
        base = results["graphc"].ms if "graphc" in results else None
        eager = results["pytorch"].ms if "pytorch" in results else None
        for r in results.values():
            gflops = p.flops_per_step() / (r.ms / 1e3) / 1e9
            x_eager = f"{r.ms / eager:8.2f}" if eager else f"{'-':>8}"
            x_graphc = f"{r.ms / base:9.2f}" if base else f"{'-':>9}"
            first = f"{r.first_s:8.2f}" if r.first_s is not None else f"{'-':>8}"
            print(f"{p.net.label:14} {r.framework:14} {r.ms:9.1f} {x_eager} {x_graphc} {gflops:8.1f} "
                  f"{100 * gflops / peak:6.1f}% {r.first_loss:7.4f} {np.mean(r.losses):7.4f} {first}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reps", type=int, default=5,
                    help=f"timed rounds of {STEPS_PER_REP} steps per framework and model (default 5)")
    ap.add_argument("--threads", type=int, default=None,
                    help="threads for graphc and every peer (default: all cores)")
    ap.add_argument("--nets", default=",".join(n.name for n in NETS),
                    help="models, comma-separated: " + ", ".join(f"{n.name} ({n.label})" for n in NETS))
    ap.add_argument("--frameworks", default=",".join(FRAMEWORKS),
                    help="frameworks, comma-separated: " + ", ".join(FRAMEWORKS) + " (default: all)")
    ap.add_argument("--smoke", action="store_true",
                    help=f"1 round of {SMOKE_STEPS} steps after 1 warm-up step: checks that everything runs")
    ap.add_argument("--agree", action="store_true",
                    help=f"train graphc and PyTorch eager {AGREE_STEPS} steps side by side and compare "
                         "their losses (no timing)")
    ap.add_argument("--agree-steps", type=int, default=AGREE_STEPS, help=argparse.SUPPRESS)
    args = ap.parse_args()
    chosen = [s.strip() for s in re.split(r"[,\s]+", args.nets) if s.strip()]
    bad = [n for n in chosen if n not in {n.name for n in NETS}]
    wanted = [s.strip() for s in re.split(r"[,\s]+", args.frameworks) if s.strip()]
    bad += [f for f in wanted if f not in FRAMEWORKS]
    if bad:
        ap.error(f"unknown: {', '.join(bad)} (models: {', '.join(n.name for n in NETS)}; "
                 f"frameworks: {', '.join(FRAMEWORKS)})")
    nets = [n for n in NETS if n.name in chosen]
    threads_used = args.threads or cores()
    peak = machine(threads_used, args.smoke)

    names = [n for n in FRAMEWORKS if n in wanted]
    if "graphc" not in names:
        ap.error("--frameworks must include graphc (the table is relative to it)")

    def skip(name: str, why: str) -> None:
        print(f"skipped {name}: {why}")
        names.remove(name)

    for name in list(names):
        if why := missing(name):
            skip(name, why)

    data = load_dataset("jargon")
    if args.agree:
        if "pytorch" not in names:
            sys.exit("--agree compares graphc with PyTorch eager: " + (missing("pytorch") or "not selected"))
        peers = [n for n in names if n in ("pytorch", "jax")]
        steps = SMOKE_STEPS if args.smoke else args.agree_steps
        val_windows = 2 * nets[0].batch if args.smoke else VAL_WINDOWS
        for net in nets:
            p = make_problem(net, data)
            print(f"\n{net.label}: {p.optimizer} {p.opt_args}, clip_norm {p.clip_norm}; {steps} steps on "
                  "graphc train's first batches", flush=True)
            r = agree(p, peers, args.threads, steps, AGREE_EVERY, val_windows)
            for key, what in (("final", f"loss after {steps} steps"),
                              ("tail", f"mean loss of the last {r['tail_steps']} steps"),
                              ("val", f"validation loss ({val_windows} windows of {p.T} bytes)")):
                v = r[key]
                diffs = ", ".join(f"graphc - {n} {v['graphc'] - v[n]:+.4f}" for n in peers)
                ok = (" (" + ", ".join(f"{'within' if abs(v['graphc'] - v[n]) <= AGREE_TARGET else 'NOT within'}"
                                       f" {AGREE_TARGET} of {n}" for n in peers) + ")") if key == "final" else ""
                print(f"{what}: " + ", ".join(f"{n} {x:.4f}" for n, x in v.items()) + f"; {diffs} nats{ok}")
        return

    reps = 1 if args.smoke else args.reps
    steps = SMOKE_STEPS if args.smoke else STEPS_PER_REP
    warmup = 1 if args.smoke else WARMUP_STEPS
    rows = []
    for net in nets:
        p = make_problem(net, data)
        print(f"{net.label}: {p.optimizer} {p.opt_args}, clip_norm {p.clip_norm}, "
              f"{p.flops_per_step() / 1e9:.2f} GFLOP/step ...", flush=True)
        rows.append((p, bench_net(p, list(names), reps, steps, warmup, args.threads, skip)))
    # measured again after the runs: a busy neighbour can only lower a measurement, so the best counts
    peak = max(peak, fma_peak([threads_used], seconds=0.05 if args.smoke else 0.2)[threads_used])
    print(f"\nmedian of {reps * steps} step{'s' * (reps * steps > 1)} ({reps} round{'s' * (reps > 1)} of "
          f"{steps}, alternating) after {warmup} warm-up; % of the {threads_used}-thread peak {peak:.1f} "
          f"GFLOP/s; x eager / x graphc = ms ÷ PyTorch eager's / graphc's; loss@1: the first warm-up "
          "step's loss (same weights, same batch); loss: mean of the timed steps; first s: graphc's "
          "compile (cache load if cached), PyTorch's first step (torch.compile's compile)")
    print_table(rows, peak)
    print("\ngraphc's ms/step as a fraction of each peer's (below 1: graphc is faster):")
    for p, results in rows:
        base = results["graphc"].ms
        peers = [f"{name} {base / r.ms:.2f}" for name, r in results.items() if name != "graphc"]
        print(f"  {p.net.label:14} " + ("  ".join(peers) or "(no peer ran)"))


if __name__ == "__main__":
    main()
