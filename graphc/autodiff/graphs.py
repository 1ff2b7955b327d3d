"""Builds the graphs a forward graph is run as: the training step, the gradient graph and inference."""

from __future__ import annotations

from graphc.autodiff.data_parallel import allreduce
from graphc.autodiff.grad import grad
from graphc.autodiff.optim import clip_by_global_norm, emit_optimizer
from graphc.autodiff.lr_schedule import scheduled_lr
from graphc.errors import GraphcError
from graphc.ir.graph import LR, Builder, Graph, Input, TensorType, Value
from graphc.ir.rewrite import rewrite
from graphc.ops import REGISTRY, Trait
from graphc.passes.dce import dce
from graphc.passes.reorder import reorder


def training_graph(fwd: Graph, optimizer: str, args: dict[str, float], schedule: str = "constant",
                   schedule_args: dict[str, float] | None = None, clip_norm: float | None = None,
                   ranks: int = 1) -> Graph:
    """Forward + backward + optimizer update, one graph. `fwd` must be bound (concrete dims).

    The gradients are clipped to global norm `clip_norm` when given; the optimizer steps with the
    learning rate of `schedule` (see graphc.autodiff.lr_schedule). With `ranks` > 1, `fwd` is one
    rank's share of the batch and the gradients, loss and metrics are averaged over the ranks
    first (graphc.autodiff.data_parallel)."""
    g = _copy(fwd, "step")
    dtype = g.loss_value().dtype
    lr = Value(LR, TensorType(dtype, ()))
    g.inputs.append(Input(lr, nograd=True))
    params = [p.value for p in g.params]
    grads = grad(g, params)
    pairs = [(p, grads[p]) for p in params]
    if ranks > 1:
        pairs = allreduce(g, pairs, ranks)
    if clip_norm:
        pairs = clip_by_global_norm(Builder(g, scope="clip"), pairs, clip_norm)
    emit_optimizer(g, pairs, optimizer, args, scheduled_lr(g, lr, schedule, schedule_args or {}))
    return g


def gradient_graph(fwd: Graph) -> Graph:
    """Forward + backward with every gradient as an output `d.NAME` (float inputs and params).

    A pure function of its inputs: state is read but not updated (no running statistics, the same
    dropout masks every run), so it can be checked against numerical differences."""
    g = _copy(fwd, "grad")
    g.updates = []
    wrt = [i.value for i in g.inputs if not i.nograd and i.value.type.is_float]
    wrt += [p.value for p in g.params]
    for v, d in grad(g, wrt).items():
        g.outputs[f"d.{v.name}"] = d
    return g


def inference_graph(fwd: Graph) -> Graph:
    """What the model predicts: its declared `output`s, else the prediction its loss reads (its
    first operand, named as the loss op names it: softmax_cross_entropy's logits). Pass the evaluation form (Program.eval_graph) for a model with
    dropout or batch norm. Nothing is updated, and the nodes, inputs (the labels), params and state
    that only the loss and metrics need are dropped."""
    outputs = [k for k in fwd.outputs if k != "loss" and k not in fwd.metrics]
    g = rewrite(fwd, name=f"{fwd.name}.infer")  # a copy; symbolic dims may stay (ONNX keeps them)
    if outputs:
        g.outputs = {k: g.outputs[k] for k in outputs}
    else:
        loss = g.outputs[g.loss].producer if g.loss else None
        if loss is None or Trait.LOSS not in REGISTRY[loss.op].traits:
            raise GraphcError(f"model {fwd.name} has no output to predict with: declare one with "
                              f"`output NAME = ...`")
        g.outputs = {REGISTRY[loss.op].operands[0]: loss.inputs[0]}
    g.loss, g.metrics, g.updates = None, (), []
    dce(g)
    read = {id(v) for n in g.nodes for v in n.inputs} | {id(v) for v in g.outputs.values()}
    g.inputs = [i for i in g.inputs if id(i.value) in read]
    g.params = [p for p in g.params if id(p.value) in read]
    g.state = [s for s in g.state if id(s.value) in read]
    return g


def _copy(fwd: Graph, suffix: str) -> Graph:
    from graphc.ir.bind import bind
    g = reorder(bind(fwd, {}))
    g.name = f"{fwd.name}.{suffix}"
    return g
