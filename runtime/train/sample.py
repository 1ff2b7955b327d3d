"""Text generation: a trained byte-level language model continues a prompt, a byte at a time.

`generate(prog, params, prompt, tokens)` compiles the model's inference graph (its `output`s, else
the logits its loss reads; the evaluation form) at batch 1 and runs it once per byte on a sliding
window of the last T bytes, T fixed by the model's i32[B, T] input. A context shorter than T sits
at the start of the window, the rest of which is zeros, and the next byte comes from the logits at
its last position: a causal model's earlier positions never read later ones. The byte is drawn
from softmax(logits / temperature) by a generator seeded with `seed`; temperature 0 takes the
likeliest byte.
"""

from __future__ import annotations

from typing import Callable, Iterator

import numpy as np

from graphc.autodiff.graphs import inference_graph
from graphc.driver import compile_graph, forward
from graphc.errors import GraphcError
from graphc.frontend import Program
from graphc.runtime.train.feeds import fed_inputs, window_length

VOCAB = 256  # a byte-level model scores every byte value


def generate(prog: Program, params: dict[str, np.ndarray], prompt: bytes, tokens: int,
             temperature: float = 1.0, seed: int = 0, threads: int | None = None) -> Iterator[bytes]:
    """The `tokens` bytes the model writes after `prompt` (at least one byte), one at a time; the
    model and prompt are checked, and the step compiled, before the first is asked for."""
    if not prompt:
        raise GraphcError("the prompt is empty: give at least one character (each byte is predicted "
                          "from the bytes before it)")
    g = inference_graph(forward(prog, 1, training=False))
    inputs, name = fed_inputs(g), prog.graph.name
    declared = {i.value.name: i for i in prog.graph.inputs}
    if len(inputs) != 1 or window_length(declared[inputs[0].value.name].value.type) is None:
        shown = ", ".join(f"{i.value.name} : {declared[i.value.name].value.type}" for i in inputs)
        raise GraphcError(f"model {name} is not a byte-level language model: its prediction reads "
                          f"{shown or 'no input'}; sampling needs one input i32[B, T], T a number "
                          "(a window of bytes)", inputs[0].loc if inputs else None)
    window = np.zeros(inputs[0].value.dims, np.int32)
    length = window.shape[1]
    logits = [k for k, v in g.outputs.items() if tuple(v.dims) == (len(window), length, VOCAB)]
    if not logits:
        shown = ", ".join(f"{k} {v.type}" for k, v in g.outputs.items())
        raise GraphcError(f"model {name} is not a byte-level language model: it predicts {shown}; "
                          f"sampling needs logits [B, {length}, {VOCAB}] (a score per byte value at "
                          "each position)")
    step = compile_graph(g, params, threads=threads).step
    return _continue(lambda w: step.run(**{inputs[0].value.name: w})[logits[0]], window, prompt,
                     tokens, temperature, np.random.default_rng(seed))


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
