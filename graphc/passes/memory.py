"""Memory planning: where every stored value lives, and one arena for all intermediates.

Leaves (inputs, params, optimizer state) and graph outputs live in runtime-owned arrays. An in-place
update writes into its param's array. Some values share another's bytes (`Plan.aliased`): a view
its source's, from the view's offset on; an operand of a pack its place inside the pack, where its
producer writes it (an intermediate, packed once); an external call's result its operand's, where
nothing reads the operand after the call. Every other stored value gets an offset in the arena;
values whose lifetimes do not overlap share bytes.
"""

from __future__ import annotations

import bisect
import heapq
import itertools
from dataclasses import dataclass, field

import numpy as np

from graphc.ir.graph import NP_DTYPES, Graph, Value
from graphc.ops.lowering import View
from graphc.ops.registry import lowered
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
    aliased: set[Value] = field(default_factory=set)       # values in another's bytes: nothing writes them


def nbytes(v: Value) -> int:
    return v.type.size() * np.dtype(NP_DTYPES[v.dtype]).itemsize


def pack_offsets(k: Kernel) -> list[int]:
    """Where each operand of pack kernel `k` starts in its output, in bytes."""
    return list(itertools.accumulate((nbytes(v) for v in k.nodes[0].inputs), initial=0))[:-1]


class _Aliases:
    """Which values share another's bytes: v -> (the value it lies in, byte offset)."""

    def __init__(self) -> None:
        self.parent: dict[Value, tuple[Value, int]] = {}

    def root(self, v: Value) -> tuple[Value, int]:
        """The value whose bytes hold v's, which lies in no other, and v's offset in it."""
        offset = 0
        while v in self.parent:
            v, o = self.parent[v]
            offset += o
        return v, offset


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
    aliases = _alias(kernels, plan.place)

    # lifetimes of the arena's values (those no other lies in), in kernel steps
    first: dict[Value, int] = {}
    last: dict[Value, int] = {}
    for step, k in enumerate(kernels):
        for v in k.outputs:
            r = aliases.root(v)[0]
            if r not in plan.place:
                first.setdefault(r, step)
                last[r] = step
        for v in k.inputs:
            last[aliases.root(v)[0]] = step
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
    for v in aliases.parent:
        if v not in plan.place:
            r, offset = aliases.root(v)
            buf, at = plan.place[r]
            plan.place[v] = (buf, at + offset)
            plan.aliased.add(v)
    plan.arena_bytes = top
    return plan


def _alias(kernels: list[Kernel], placed: dict[Value, tuple[int, int]]) -> _Aliases:
    """Decides which values share another's bytes (see the module doc). An operand goes into a
    pack only if it is an intermediate that lies in nothing else yet, whole; an external call
    updates its operand in place only if that is an intermediate nothing reads afterwards."""
    aliases = _Aliases()
    for k in kernels:
        if k.kind is KernelKind.VIEW and k.outputs[0] not in placed:
            n = k.nodes[0]
            view = lowered(n)
            assert isinstance(view, View), n.op
            aliases.parent[n.out] = (n.inputs[0], view.offset * np.dtype(NP_DTYPES[n.out.dtype]).itemsize)
        elif k.kind is KernelKind.PACK and k.outputs[0] not in placed:
            n = k.nodes[0]
            for v, offset in zip(n.inputs, pack_offsets(k)):
                r, at = aliases.root(v)
                if r not in placed and r is not n.out and at == 0 and nbytes(r) == nbytes(v) \
                        and r.producer is not None:
                    aliases.parent[r] = (n.out, offset)
    last: dict[Value, int] = {}  # the last step reading each root
    for step, k in enumerate(kernels):
        for v in k.inputs:
            last[aliases.root(v)[0]] = step
    for step, k in enumerate(kernels):
        if k.kind is KernelKind.EXTERN and k.outputs[0] not in placed:
            out = k.nodes[0].out
            r, at = aliases.root(k.nodes[0].inputs[0])
            if out not in aliases.parent and r not in placed and last.get(r) == step:
                aliases.parent[out] = (r, at)
                last[r] = max(step, last.get(out, step))
    return aliases


class _Free:
    """The arena's free blocks. `take` is best fit: a smallest block at least as large, the one freed
    last among equals (the likeliest to be in cache still: gpt.net's step 4% faster than taking the
    one freed first); each call costs a search among the distinct sizes, not among all blocks."""

    def __init__(self) -> None:
        self.sizes: list[int] = []                    # the distinct sizes free, ascending
        self.blocks: dict[int, list[int]] = {}        # size -> offsets, in the order freed

    def add(self, offset: int, size: int) -> None:
        if size not in self.blocks:
            bisect.insort(self.sizes, size)
            self.blocks[size] = []
        self.blocks[size].append(offset)

    def take(self, size: int) -> tuple[int, int] | None:
        """(offset, size) of the block chosen for `size` bytes, no longer free; None if none fits."""
        i = bisect.bisect_left(self.sizes, size)
        if i == len(self.sizes):
            return None
        fit = self.sizes[i]
        offsets = self.blocks[fit]
        offset = offsets.pop()
        if not offsets:
            del self.blocks[fit]
            self.sizes.pop(i)
        return offset, fit
