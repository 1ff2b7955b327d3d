"""Data-parallel training as IR: what a training step run by N ranks adds, and how one rank differs.

Each rank computes the loss, metrics and gradients of its `batch / N` rows. They are packed into one
buffer (`pack`: the memory plan lets the GEMMs and reductions write the gradients straight into it)
with a stop vote, summed over the ranks by one external call (slot `allreduce`, bound by the
runtime: MPI's allreduce; a C program binds its own), and unpacked in place. The gradients, loss
and metrics are then divided by N: for a loss that is a mean over the rows (every built-in loss,
`mean`) plus terms that do not depend on the rows (weight decay), that is the gradient, loss and
metric of the global batch, as one process computes them up to the order of summation. A loss that
sums over the rows (`sum(...)` of per-row terms) would be averaged too: write it as a mean.

Every rank then applies the same update to the same params. The stop vote (input `stop_vote`,
output `stop_votes`: how many ranks voted) lets a Ctrl-C on any rank stop all of them after the
same step. Dropout masks differ per rank: `for_rank` mixes the rank into their seeds.
"""

from __future__ import annotations

from graphc.errors import GraphcError
from graphc.ir.graph import Builder, Graph, Input, Node, TensorType, Value
from graphc.ir.rewrite import rewrite
from graphc.ops.rng import mix_seed

SLOT = "allreduce"  # the extern_call slot the runtime binds to a sum over the ranks
VOTE, VOTES = "stop_vote", "stop_votes"  # the stop vote's input and its sum's output

Pairs = list[tuple[Value, Value]]  # (param, its gradient)


def allreduce(g: Graph, pairs: Pairs, ranks: int) -> Pairs:
    """Sums the gradients in `pairs`, the loss and the metrics of `g` over `ranks` ranks and
    divides them by `ranks` (see the module doc); returns the pairs with the reduced gradients.
    A gradient that is a constant (a param the loss does not reach) is the same on every rank and
    is not sent."""
    loss = g.loss_value()
    dtype = loss.dtype
    shown = [g.loss_name(), *g.metrics]
    for name in g.metrics:
        if g.outputs[name].dtype != dtype:
            raise GraphcError(f"data-parallel training averages the metrics over the ranks in the "
                              f"loss's dtype {dtype}; metric {name} is {g.outputs[name].type}")
    vote = Value(VOTE, TensorType(dtype, ()))
    g.inputs.append(Input(vote, nograd=True, default=0.0))
    sent = [dw for _, dw in pairs if dw.const is None] + [g.outputs[k] for k in shown] + [vote]
    b = Builder(g, scope="allreduce")
    summed = b.extern_call(b.pack(*sent), slot=SLOT)
    parts: dict[Value, Value] = {}
    offset = 0
    for v in sent:
        part = b.unpack(summed, offset=offset, shape=v.shape)
        parts[v] = part if v is vote else b.mul(part, 1.0 / ranks)
        offset += v.type.size()
    for k in shown:
        g.outputs[k] = parts[g.outputs[k]]
    g.outputs[VOTES] = parts[vote]
    return [(w, parts.get(dw, dw)) for w, dw in pairs]


def for_rank(g: Graph, rank: int) -> Graph:
    """The step rank `rank` runs: `g` with the rank mixed into every random op's seed (dropout),
    so that ranks draw different masks, each reproducible from its rank."""
    def reseed(b: Builder, n: Node, args: list[Value], attrs: dict) -> Value | None:
        if "seed" not in attrs:
            return None
        return b.op(n.op, *args, name_out=n.out.name, **{**attrs, "seed": mix_seed(attrs["seed"], rank)})

    return rewrite(g, reseed)
