"""Learning-rate schedules as IR: the effective learning rate of a step, from the base `lr` input and
the step counter, as scalar nodes that fuse into the update.

lr_t = lr * warm(t) * decay(k), with t the updates done so far (state, so a resumed run continues
the schedule exactly) and k = max(t - warmup, 0) the steps after the warm-up:
- warm(t) = min(1, (t + 1) / warmup): linear warm-up, the full lr from step warmup - 1 on;
- constant: decay = 1; step: gamma ** floor(k / every); cosine: from 1 to `final` over the rest of
  the run, final + (1 - final) * (1 + cos(pi * min(1, k / (total_steps - warmup)))) / 2.

Durations are steps (`warmup`, `every`) or epochs (`warmup_epochs`, `every_epochs`). The run's
length is not part of the graph: cosine reads the runtime input `total_steps` and an epoch-based
duration reads `epoch_steps`, which the trainer feeds (see `horizon`). So the step graph does not
depend on the data set's size or the number of epochs, `graphc ir` needs no data, and a longer run
reuses the compiled step.
"""

from __future__ import annotations

import math

from graphc.ir.graph import Builder, Graph, Input, Param, TensorType, Value

COUNTER = "schedule.t"  # the state value counting the updates done
EPOCHS = "_epochs"  # the suffix of a duration's epoch form: warmup / warmup_epochs

# name -> {argument: default}; a duration defaults to None (not given)
SCHEDULES: dict[str, dict[str, float | None]] = {
    "constant": {"warmup": None, "warmup_epochs": None},
    "step": {"every": None, "every_epochs": None, "gamma": 0.1, "warmup": None, "warmup_epochs": None},
    "cosine": {"final": 0.0, "warmup": None, "warmup_epochs": None},
}
DURATIONS = ("warmup", "every")  # each also has its epoch form; `every` is required by `step`

# the runtime inputs a schedule may add: name -> what it holds
INPUTS = {"total_steps": "the training run's length in steps, fed by the trainer",
          "epoch_steps": "the steps per epoch, fed by the trainer"}


def horizon(steps_per_epoch: int, epochs: int) -> dict[str, float]:
    """The values of the schedule inputs for a run (feed those a compiled step has)."""
    return {"total_steps": float(steps_per_epoch * epochs), "epoch_steps": float(steps_per_epoch)}


def step_counter(b: Builder, g: Graph, dtype: str) -> Value:
    """The updates done before this step: one state scalar per graph (shared by the schedule and
    dropout's masks), which the step increments. Being state, it is saved and restored with the
    rest, so a resumed run continues its schedule exactly (f32 counts exactly up to 2**24 steps)."""
    for s in g.state:
        if s.value.name == COUNTER:
            return s.value
    t = Value(COUNTER, TensorType(dtype, ()))
    g.state.append(Param(t, "zeros"))
    g.updates.append((t, b.add(t, 1.0)))
    return t


def scheduled_lr(g: Graph, lr: Value, name: str, given: dict[str, float]) -> Value:
    """Append the nodes computing schedule `name`'s learning rate of this step from `lr` and the step
    counter; returns `lr` itself for a constant schedule without warm-up."""
    args: dict[str, float | None] = {**SCHEDULES[name], **given}
    b = Builder(g, scope="schedule")
    warmup = _duration(b, g, lr, args, "warmup")
    if name == "constant" and warmup is None:
        return lr
    t = step_counter(b, g, lr.dtype)
    t_next = next(new for old, new in g.updates if old is t)
    factor = None
    if warmup is not None:
        factor = b.minimum(b.div(t_next, warmup), 1.0)
        t = b.maximum(b.sub(t, warmup), 0.0)  # steps since the warm-up ended
    decay = _decay(b, g, lr, name, args, t, warmup)
    if decay is not None:
        factor = decay if factor is None else b.mul(factor, decay)
    return b.mul(lr, factor)


def _decay(b: Builder, g: Graph, lr: Value, name: str, args: dict, k: Value,
           warmup: Value | None) -> Value | None:
    if name == "step":
        every = _duration(b, g, lr, args, "every")
        return b.pow(b.const(args["gamma"], lr.dtype), b.floor(b.div(k, every)))
    if name == "cosine":
        total = _input(g, "total_steps", lr.dtype)
        span = b.maximum(b.sub(total, warmup) if warmup is not None else total, 1.0)
        # (1 + cos(pi * k / span)) / 2 as sin(pi/2 * (span - k) / span)^2: no cancellation near the
        # end, where the factor is small, and span - k is exact
        left = b.div(b.maximum(b.sub(span, k), 0.0), span)
        wave = b.sin(b.mul(left, math.pi / 2))
        final = args["final"]
        return b.add(b.mul(b.mul(wave, wave), 1.0 - final), final) if final else b.mul(wave, wave)
    return None


def _duration(b: Builder, g: Graph, lr: Value, args: dict, key: str) -> Value | None:
    """A duration in steps: a literal, or epochs times the `epoch_steps` input; None when not given."""
    if args.get(key):
        return b.const(args[key], lr.dtype)
    epochs = args.get(key + EPOCHS)
    if epochs:
        steps = _input(g, "epoch_steps", lr.dtype)
        return steps if epochs == 1 else b.mul(steps, epochs)
    return None


def _input(g: Graph, name: str, dtype: str) -> Value:
    """The graph's scalar input `name`, added (nograd) the first time it is asked for."""
    for i in g.inputs:
        if i.value.name == name:
            return i.value
    v = Value(name, TensorType(dtype, ()))
    g.inputs.append(Input(v, nograd=True))
    return v
