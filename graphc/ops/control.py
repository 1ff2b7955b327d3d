"""A loop over a body graph: `scan`, the recurrence of RNNs and LSTMs (JAX's `lax.scan`).

    scan(init_1..init_K, xs_1..xs_M, const_1..const_P; body, carries=K, xs=M, reverse, result)

The body is a graph whose inputs are K carries, one step of each of the M sequences (their axis 0
dropped) and the P loop-invariant operands (the weights a recurrent cell shares across time); its
outputs are the K new carries, then per-step values y_1..y_Y. Step t runs the body on the carries
of step t - 1 (the inits at the first step) and xs[t], from t = 0 up, or down where `reverse`. The
scan's results are the K final carries, then each y stacked along a new axis 0 ([T, ...]). A node
is one result (`result` indexes them); the nodes of one scan share its inputs and body, and codegen
runs them as one loop, so the body is compiled once whatever the sequence length.

Its vjp is a scan too, running the other way: its carries are the cotangents of the forward carries
and the gradients of the loop-invariant operands, summed over the steps. The forward loop saves
each step's carries and contractions (results of the same scan: the body is extended with them);
the backward step reads them, recomputes the elementwise work between them and pulls the
cotangents back through the body (graphc.ops.backprop). A weight's cotangent that is a contraction
of two per-step values is summed as one contraction over all steps, after the loop.
"""

from __future__ import annotations

import numpy as np

from graphc.ir.graph import Builder, Graph, Input, Node, TensorType, Value
from graphc.ir.rewrite import inline
from graphc.ops.backprop import backprop
from graphc.ops.lowering import Contraction, Described, Loop
from graphc.ops.reference import evaluate
from graphc.ops.registry import REGISTRY, OpDef, is_int, lowered, register, require


def _parts(xs: list, attrs: dict) -> tuple[list, list, list]:
    """Split a scan's operands (or their types) into carries, sequences and loop invariants."""
    k, m = attrs["carries"], attrs["xs"]
    return xs[:k], xs[k:k + m], xs[k + m:]


def _step_type(t: TensorType) -> TensorType:
    return TensorType(t.dtype, t.shape[1:])


def _shape(ts: list[TensorType], attrs: dict) -> TensorType:
    body, k, m, r = attrs["body"], attrs["carries"], attrs["xs"], attrs["result"]
    require(isinstance(body, Graph), "body must be a graph")
    require(is_int(k) and k >= 0 and is_int(m) and m >= 1, "a scan has carries >= 0 and at least one sequence")
    ins = [i.value.type for i in body.inputs]
    require(not body.params and not body.state, "a scan's body takes its weights as inputs")
    require(len(ts) == len(ins), f"the body takes {len(ins)} operands, the scan has {len(ts)}")
    inits, seqs, consts = _parts(ts, attrs)
    require(all(t.rank >= 1 for t in seqs), "a sequence has a step axis (axis 0)")
    steps = {t.shape[0] for t in seqs}
    require(len(steps) == 1, f"the sequences differ in length: {sorted(map(str, steps))}")
    for i, (got, want) in enumerate(zip(inits + [_step_type(t) for t in seqs] + consts, ins)):
        require(got == want, f"operand {i} is {got} but the body's input {body.inputs[i].value.name} is {want}")
    outs = [v.type for v in body.outputs.values()]
    require(outs[:k] == ins[:k], f"the body's new carries {[str(t) for t in outs[:k]]} must have "
                                 f"the carries' types {[str(t) for t in ins[:k]]}")
    require(is_int(r) and 0 <= r < len(outs), f"result {r} of {len(outs)}")
    return outs[r] if r < k else TensorType(outs[r].dtype, (seqs[0].shape[0], *outs[r].shape))


def _ref(*arrays: np.ndarray, body: Graph, carries: int, xs: int, reverse: bool, result: int) -> np.ndarray:
    inits, seqs, consts = _parts(list(arrays), {"carries": carries, "xs": xs})
    steps = range(len(seqs[0]))
    ys: dict[int, list[np.ndarray]] = {}
    for t in reversed(steps) if reverse else steps:
        outs = evaluate(body, [*inits, *(s[t] for s in seqs), *consts])
        inits, ys[t] = outs[:carries], outs[carries:]
    return inits[result] if result < carries else np.stack([ys[t][result - carries] for t in steps])


def _stacked(b: Builder, n: Node, values: list[Value]) -> list[Value]:
    """Each of `values` (values of n's body) at every step, [T, ...]: results of n's scan, the body
    returning those it does not yet as per-step values. The body is extended in place: the nodes
    of the scan share it, their results keep their places, and codegen runs one loop for them all."""
    body, k = n.attrs["body"], n.attrs["carries"]
    for v in values:
        if v not in list(body.outputs.values())[k:]:
            body.outputs[f"saved{len(body.outputs)}"] = v
    outs = list(body.outputs.values())
    result = lambda r: n.out if r == n.attrs["result"] else b.op("scan", *n.inputs, **{**n.attrs, "result": r})
    return [result(outs.index(v, k)) for v in values]


def _saved(body: Graph) -> list[Value]:
    """What the backward pass reads from the forward loop rather than recomputes: each step's
    contractions (JAX's `dots_saveable` policy); the elementwise work around them is recomputed."""
    return [n.out for n in body.nodes if _contraction(n) is not None]


def _contraction(n: Node) -> Contraction | None:
    d = lowered(n) if isinstance(REGISTRY[n.op].lowering, Described) else None
    return d if isinstance(d, Contraction) else None


def _hoistable(c: Value | None, step_values: set[Value]) -> Node | None:
    """The contraction A^T G that computes a weight's cotangent in one step, where A and G both
    change from step to step: summed over the steps it is one contraction over all of their rows,
    done after the loop instead of a small one and an accumulation per step."""
    node = c.producer if c is not None else None
    d = _contraction(node) if node is not None else None
    if node is None or d is None or not d.ta or d.tb or d.batch:
        return None
    return node if all(v in step_values for v in node.inputs) else None


def _previous(b: Builder, init: Value, stacked: Value, reverse: bool) -> Value:
    """The carry each step starts from: init at the first step, then the one the step before made."""
    t = stacked.dims[0]
    first = b.reshape(init, shape=(1, *init.shape))
    if t == 1:
        return first
    rest = b.slice(stacked, axis=0, start=1, stop=t) if reverse else b.slice(stacked, axis=0, start=0, stop=t - 1)
    return b.concat(rest, first, axis=0) if reverse else b.concat(first, rest, axis=0)


def _vjp(b: Builder, n: Node, g: Value) -> list[Value | None]:
    body, k, r = n.attrs["body"], n.attrs["carries"], n.attrs["result"]
    inits, seqs, consts = _parts(n.inputs, n.attrs)
    ins = [i.value for i in body.inputs]
    saved = _saved(body)
    stacked = _stacked(b, n, list(body.outputs.values())[:k] + saved)
    prevs = [_previous(b, init, s, n.attrs["reverse"]) for init, s in zip(inits, stacked)]
    # The backward body. Its carries: the cotangents of the carries, and the gradient sums of the
    # loop invariants that are accumulated step by step; its steps: the carries each forward step
    # started from, that step's xs and saved contractions, and the cotangent of its y; then the
    # invariants. It recomputes the forward step but for the saved contractions, then pulls the
    # cotangents back through it.
    back = Graph(f"{body.name}.vjp")
    d_carry = [Value(f"d.{v.name}", v.type) for v in ins[:k]]
    prev = [Value(v.name, v.type) for v in ins[:k]]
    step = [Value(v.name, v.type) for v in ins[k:k + len(seqs)]]
    kept = [Value(f"saved{i}", v.type) for i, v in enumerate(saved)]
    d_y = [Value("d.y", _step_type(g.type))] if r >= k else []
    inv = [Value(v.name, v.type) for v in ins[k + len(seqs):]]
    bb = Builder(back, n.loc, n.scope)
    copies = inline(bb, body, prev + step + inv)
    fwd = [v if v.const is not None else copies[v] for v in body.outputs.values()]
    seeds: dict[Value, Value] = {}  # the new carries' cotangents, and the y's (one value may be both)
    for v, d in [*zip(fwd, d_carry), *((fwd[r], d_y[0]) for _ in d_y)]:
        seeds[v] = bb.add(seeds[v], d) if v in seeds else d
    trained = [j for j, c in enumerate(consts) if c.type.is_float]  # loop invariants with a gradient
    cot = backprop(back, seeds, prev + step + inv)
    # the saved contractions are read, not recomputed: no vjp reads a contraction's own result, so
    # once its uses read the saved value, its recomputation is dead code
    read = {copies[v]: s for v, s in zip(saved, kept)}
    for bn in back.nodes:
        bn.inputs = [read.get(v, v) for v in bn.inputs]
    varying = set(d_carry + prev + step + kept + d_y)  # what changes from step to step
    for bn in back.nodes:
        if any(v in varying for v in bn.inputs):
            varying.add(bn.out)
    hoisted = {j: h for j in trained if (h := _hoistable(cot[inv[j]], varying)) is not None}
    summed = [j for j in trained if j not in hoisted]
    sums = [Value(f"d.{inv[j].name}", consts[j].type) for j in summed]
    zeros = lambda v: bb.broadcast_to(bb.const(0.0, v.dtype), shape=v.shape)
    new_carries = [cot[v] or zeros(v) for v in prev]
    new_sums = [s if (c := cot[inv[j]]) is None else bb.add(s, c) for s, j in zip(sums, summed)]
    d_steps = [cot[v] or zeros(v) for v in step]
    # A and G of each hoisted contraction at every step: a step operand is already stacked outside
    zero = lambda v: b.const(0.0, v.dtype, v.shape)
    outside = dict(zip(prev + step + kept + d_y, prevs + seqs + stacked[k:] + ([g] if r >= k else [])))
    made = list(dict.fromkeys(v for j in hoisted for v in hoisted[j].inputs if v not in outside))
    back.inputs = [Input(v) for v in d_carry + sums + prev + step + kept + d_y + inv]
    back.outputs = {f"c{i}": v for i, v in enumerate(new_carries + new_sums)} | \
                   {f"y{i}": v for i, v in enumerate(d_steps + made)}
    operands = ([g if i == r else zero(v) for i, v in enumerate(inits)] + [zero(consts[j]) for j in summed]
                + prevs + seqs + stacked[k:] + ([g] if r >= k else []) + consts)
    attrs = {"body": back, "carries": k + len(summed), "xs": k + len(seqs) + len(saved) + (r >= k),
             "reverse": not n.attrs["reverse"]}
    result = lambda i: b.op("scan", *operands, **attrs, result=i)
    d_consts: list[Value | None] = [None] * len(consts)
    for i, j in enumerate(summed):
        d_consts[j] = result(k + i)
    first = k + len(summed) + len(seqs)  # the results holding what the body made of A and G
    stacked_at = lambda v: outside[v] if v in outside else result(first + made.index(v))
    rows = lambda x: b.reshape(x, shape=(-1, x.shape[-1]))  # [T, rows, cols] -> [T * rows, cols]
    for j, h in hoisted.items():
        a, gs = (rows(stacked_at(v)) for v in h.inputs)
        d_consts[j] = b.matmul(a, gs, ta=True)
    d_inits: list[Value | None] = [result(i) if v.type.is_float else None for i, v in enumerate(inits)]
    d_seqs: list[Value | None] = [result(k + len(summed) + i) if v.type.is_float else None
                                  for i, v in enumerate(seqs)]
    return d_inits + d_seqs + d_consts


def _loop(n: Node) -> Loop:
    a = n.attrs
    return Loop(a["body"], a["carries"], a["xs"], a["reverse"])


register(OpDef(
    "scan", 0, _shape, _vjp, _ref, Described(_loop),
    {"carries": 1, "xs": 1, "reverse": False, "result": 0},
    "init..., xs..., invariants...; body, carries, xs, reverse, result -> the final carries, then "
    "the body's per-step values stacked on a new axis 0 (written `scan(cell, xs, init)` in .net)"))

