"""Memory planning: where every stored value lives, and one arena for all intermediates.

Leaves (inputs, params, optimizer state) and graph outputs live in runtime-owned arrays. An in-place
update writes into its param's array; a view shares its source's buffer. Every other stored value
gets an offset in the arena; values whose lifetimes do not overlap share bytes.
"""

from __future__ import annotations

import bisect
import heapq
from collections import deque
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
    free = _Free()
    live: list[tuple[int, int, int, int]] = []  # a heap of (last step, when placed, offset, size)
    top = 0
    for placed, v in enumerate(sorted(first, key=lambda v: first[v])):
        step, size = first[v], -(-nbytes(v) // ALIGN) * ALIGN
        ended = []
        while live and live[0][0] < step:
            ended.append(heapq.heappop(live))
        for _, _, o, s in sorted(ended, key=lambda x: x[1]):  # freed in the order they were placed
            free.add(o, s)
        fit = free.take(size)
        if fit is None:
            offset, top = top, top + size
        else:
            offset = fit[0]
            if fit[1] > size:
                free.add(fit[0] + size, fit[1] - size)
        heapq.heappush(live, (last[v], placed, offset, size))
        plan.place[v] = (arena, offset)
    for v, r in root.items():
        if v not in plan.place:
            plan.place[v] = plan.place[r]
    plan.arena_bytes = top
    return plan


class _Free:
    """The arena's free blocks. `take` is best fit: a smallest block at least as large, the one freed
    first among equals; each call costs a search among the distinct sizes, not among all blocks."""

    def __init__(self) -> None:
        self.sizes: list[int] = []                    # the distinct sizes free, ascending
        self.blocks: dict[int, deque[int]] = {}       # size -> offsets, in the order freed

    def add(self, offset: int, size: int) -> None:
        if size not in self.blocks:
            bisect.insort(self.sizes, size)
            self.blocks[size] = deque()
        self.blocks[size].append(offset)

    def take(self, size: int) -> tuple[int, int] | None:
        """(offset, size) of the block chosen for `size` bytes, no longer free; None if none fits."""
        i = bisect.bisect_left(self.sizes, size)
        if i == len(self.sizes):
            return None
        fit = self.sizes[i]
        offsets = self.blocks[fit]
        offset = offsets.popleft()
        if not offsets:
            del self.blocks[fit]
            self.sizes.pop(i)
        return offset, fit
