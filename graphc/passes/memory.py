"""Memory planning: where every stored value lives, and one arena for all intermediates.

Leaves (inputs, params, optimizer state) and graph outputs live in runtime-owned arrays. An in-place
update writes into its param's array; a view shares its source's buffer. Every other stored value
gets an offset in the arena; values whose lifetimes do not overlap share bytes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from graphc.ir.graph import NP_DTYPES, Graph, Value
from graphc.passes.fuse import Kernel, KernelKind

ALIGN = 64


@dataclass(frozen=True)
class Buffer:
    role: str   # "input" | "param" | "state" | "output" | "arena"
    name: str


@dataclass
class Plan:
    buffers: list[Buffer]                                  # the step's pointer table, in order
    place: dict[Value, tuple[int, int]] = field(default_factory=dict)  # value -> (buffer, byte offset)
    arena_bytes: int = 0


def nbytes(v: Value) -> int:
    return v.type.size() * np.dtype(NP_DTYPES[v.dtype]).itemsize


def plan_memory(g: Graph, kernels: list[Kernel]) -> Plan:
    buffers = ([Buffer("input", i.value.name) for i in g.inputs]
               + [Buffer("param", p.value.name) for p in g.params]
               + [Buffer("state", s.value.name) for s in g.state])
    plan = Plan(buffers)
    index = {}
    for i, v in enumerate(g.leaves()):
        plan.place[v] = (i, 0)
        index[v] = i
    updated = {new: index[target] for target, new in g.updates}
    for name, v in g.outputs.items():
        if v not in plan.place and v not in updated:
            plan.place[v] = (len(buffers), 0)
            buffers.append(Buffer("output", name))
    for new, i in updated.items():
        plan.place[new] = (i, 0)

    # lifetimes of arena values, in kernel steps; a view extends its source's life
    root: dict[Value, Value] = {}
    first: dict[Value, int] = {}
    last: dict[Value, int] = {}
    for step, k in enumerate(kernels):
        for v in k.inputs:
            r = root.get(v, v)
            last[r] = step
        for v in k.outputs:
            if k.kind is KernelKind.VIEW:
                root[v] = root.get(k.nodes[0].inputs[0], k.nodes[0].inputs[0])
            elif v not in plan.place:
                root[v] = v
                first[v] = last[v] = step
            else:
                root[v] = v
    arena = len(buffers)
    buffers.append(Buffer("arena", "arena"))
    free: list[tuple[int, int, int]] = []  # (offset, size, free from step)
    live: list[tuple[int, int, int]] = []  # (offset, size, last step)
    top = 0
    for v in sorted(first, key=lambda v: first[v]):
        step, size = first[v], -(-nbytes(v) // ALIGN) * ALIGN
        free += [(o, s, e) for o, s, e in live if e < step]
        live = [x for x in live if x[2] >= step]
        fit = next((x for x in sorted(free, key=lambda x: x[1]) if x[1] >= size), None)
        if fit:
            free.remove(fit)
            offset = fit[0]
            if fit[1] > size:
                free.append((fit[0] + size, fit[1] - size, fit[2]))
        else:
            offset, top = top, top + size
        live.append((offset, size, last[v]))
        plan.place[v] = (arena, offset)
    for v, r in root.items():
        if v not in plan.place:
            plan.place[v] = plan.place[r]
    plan.arena_bytes = top
    return plan
