"""Text generation: a trained byte-level language model continues a prompt, a byte at a time.

`language_model(prog)` checks that a model is one and gives its inference graph (its `output`s,
else the logits its loss reads; the evaluation form) at batch 1; `generate(lm, params, prompt,
tokens)` compiles it and runs it once per byte on a sliding window of the last T bytes, T fixed by
the model's i32[B, T] input. A context shorter than T sits at the start of the window, the rest of
which is zeros, and the next byte comes from the logits at its last position: a causal model's
earlier positions never read later ones. That is checked, not assumed: a model whose logits at a
position change with a later byte is refused. The byte is drawn from softmax(logits / temperature) by a
generator seeded with `seed`; temperature 0 takes the likeliest byte.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np

from graphc.autodiff.graphs import inference_graph
from graphc.driver import compile_graph, forward
from graphc.errors import GraphcError
from graphc.frontend import Program
from graphc.ir.graph import Graph
from graphc.runtime.train.feeds import fed_inputs, window_length

VOCAB = 256  # a byte-level model scores every byte value


@dataclass
class LanguageModel:
    """A byte-level language model's prediction at batch 1: its graph, the input that takes the
    window of bytes and the output holding its logits."""

    graph: Graph
    input: str
    logits: str


def language_model(prog: Program) -> LanguageModel:
    """The model's prediction (the evaluation form) at batch 1, checked to be a byte-level language
    model's: one input i32[B, T] (T a number) and logits [B, T, 256]."""
    g = inference_graph(forward(prog, 1, training=False))
    inputs, name = fed_inputs(g), prog.graph.name
    declared = {i.value.name: i for i in prog.graph.inputs}
    length = window_length(declared[inputs[0].value.name].value.type) if len(inputs) == 1 else None
    if length is None:
        shown = ", ".join(f"{i.value.name} : {declared[i.value.name].value.type}" for i in inputs)
        raise GraphcError(f"model {name} is not a byte-level language model: its prediction reads "
                          f"{shown or 'no input'}; sampling needs one input i32[B, T], T a number "
                          "(a window of bytes)", inputs[0].loc if inputs else None)
    batch = inputs[0].value.dims[0]
    logits = [k for k, v in g.outputs.items() if tuple(v.dims) == (batch, length, VOCAB)]
    if not logits:
        shown = ", ".join(f"{k} {v.type}" for k, v in g.outputs.items())
        raise GraphcError(f"model {name} is not a byte-level language model: it predicts {shown}; "
                          f"sampling needs logits [B, {length}, {VOCAB}] (a score per byte value at "
                          "each position)")
    return LanguageModel(g, inputs[0].value.name, logits[0])


def generate(lm: LanguageModel, params: dict[str, np.ndarray], prompt: bytes, tokens: int,
             temperature: float = 1.0, seed: int = 0, threads: int | None = None) -> Iterator[bytes]:
    """The `tokens` bytes the model writes after `prompt` (at least one byte), one at a time; the
    prompt is checked, and the step compiled, before the first is asked for."""
    if not prompt:
        raise GraphcError("the prompt is empty: give at least one character (each byte is predicted "
                          "from the bytes before it)")
    step = compile_graph(lm.graph, params, threads=threads).step
    window = np.zeros(step.inputs[lm.input].shape, np.int32)
    run = lambda w: step.run(**{lm.input: w})[lm.logits]
    _check_causal(run, window.shape, lm.graph.name)
    return _continue(run, window, prompt, tokens, temperature, np.random.default_rng(seed))


def _check_causal(run: Callable[[np.ndarray], np.ndarray], shape: tuple[int, ...], name: str) -> None:
    """Refuse a model whose logits at a position read a later byte: a sliding window that pads the
    positions not yet written would feed it bytes that are not the text."""
    rng = np.random.default_rng(0)
    window = rng.integers(0, VOCAB, shape).astype(np.int32)
    base = run(window).copy()
    for p in range(1, shape[1]):
        changed = window.copy()
        changed[0, p] = (changed[0, p] + 1) % VOCAB
        if not np.allclose(run(changed)[0, :p], base[0, :p], rtol=1e-5, atol=1e-6):
            raise GraphcError(f"model {name} is not causal: its logits before position {p} change with "
                              f"the byte at {p}, so a sliding window of generated text cannot feed it")


def _continue(run: Callable[[np.ndarray], np.ndarray], window: np.ndarray, prompt: bytes,
              tokens: int, temperature: float, rng: np.random.Generator) -> Iterator[bytes]:
    """The bytes after `prompt`, each from the logits `run` computes for the window of the last
    ones (checked, compiled and seeded by generate)."""
    context, length = bytearray(prompt), window.shape[1]
    for _ in range(tokens):
        recent = context[-length:]
        window[0, :len(recent)] = np.frombuffer(recent, np.uint8)
        window[0, len(recent):] = 0
        scores = run(window)[0, len(recent) - 1]
        byte = int(np.argmax(scores)) if temperature == 0 else _draw(scores, temperature, rng)
        context.append(byte)
        yield bytes([byte])


def _draw(scores: np.ndarray, temperature: float, rng: np.random.Generator) -> int:
    """A byte drawn from softmax(scores / temperature), in float64."""
    z = scores.astype(np.float64) / temperature
    p = np.exp(z - z.max())
    return int(rng.choice(VOCAB, p=p / p.sum()))
