"""Runs the passes in order: a bound whole-step graph in, a Schedule (kernels over buffers) out.

A scan kernel's body graph gets a schedule of its own, which codegen runs once per step of the loop.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from graphc.ir.graph import Graph
from graphc.ir.printer import node_line
from graphc.ir.verify import verify
from graphc.passes.dce import dce
from graphc.passes.decompose import decompose
from graphc.ops.lowering import Loop
from graphc.ops.registry import lowered
from graphc.passes.fuse import Kernel, KernelKind, fuse
from graphc.passes.materialize import materialize
from graphc.passes.memory import Plan, plan_memory
from graphc.passes.simplify import simplify


@dataclass
class Schedule:
    graph: Graph          # the lowered graph the kernels are made of
    kernels: list[Kernel]
    plan: Plan
    bodies: dict[int, "Schedule"] = field(default_factory=dict)  # scan kernel index -> its body's

    def every_kernel(self) -> list[Kernel]:
        """This schedule's kernels, then its bodies' (each in kernel order): how codegen numbers
        them where they report (faults, profiles)."""
        return self.kernels + [k for i in sorted(self.bodies) for k in self.bodies[i].every_kernel()]


def schedule(g: Graph) -> Schedule:
    verify(g, bound=True)
    g = materialize(dce(simplify(decompose(g))))
    verify(g, bound=True)
    kernels = fuse(g)
    bodies = {i: schedule(loop(k).body) for i, k in enumerate(kernels) if k.kind is KernelKind.SCAN}
    return Schedule(g, kernels, plan_memory(g, kernels), bodies)


def loop(k: Kernel) -> Loop:
    """The loop a scan kernel runs."""
    d = lowered(k.nodes[0])
    assert isinstance(d, Loop), k.nodes[0].op
    return d


def print_schedule(s: Schedule) -> str:
    """The fused stage: each kernel with its members, what it reads and what it stores."""
    place = s.plan.place
    where = lambda v: f"{v.name}@{s.plan.buffers[place[v][0]].name}+{place[v][1]}"
    lines = [f"schedule {s.graph.name}: {len(s.kernels)} kernels, arena {s.plan.arena_bytes} bytes"]
    for i, k in enumerate(s.kernels):
        lines.append(f"kernel {i} {k.kind.value} over [{','.join(map(str, k.space))}]"
                     f" ({len(k.nodes)} ops fused)")
        lines.append("  reads  " + (", ".join(where(v) for v in k.inputs) or "-"))
        lines.append("  writes " + (", ".join(where(v) for v in k.outputs) or "-"))
        lines += ["  " + node_line(n) for n in k.nodes]
    return "\n".join(lines)
