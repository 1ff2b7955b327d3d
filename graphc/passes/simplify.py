"""Algebraic simplification and common-subexpression elimination.

Folds ops on constants (elementwise math, reshapes and broadcasts, reductions), drops
multiplications by one and additions of zero that do not broadcast, and reuses an identical
earlier node instead of computing it twice.
"""

from __future__ import annotations

import numpy as np

from graphc.ir.graph import Builder, Graph, NP_DTYPES, Value
from graphc.ir.rewrite import rewrite
from graphc.ops import REGISTRY

_IDENTITY = {"mul": 1.0, "add": 0.0}


def _key(v):
    return ("const", v.const, v.dtype) if v.const is not None else id(v)


def simplify(g: Graph) -> Graph:
    seen: dict[tuple, Value] = {}

    def rule(b: Builder, n, args, attrs):
        opdef = REGISTRY[n.op]
        out_type = opdef.shape([a.type for a in args], attrs)
        if args and all(a.const is not None for a in args):
            folded = _fold(opdef, args, attrs, out_type)
            if folded is not None:
                return b.const(folded, out_type.dtype, out_type.shape)
        unit = _IDENTITY.get(n.op)
        if unit is not None:
            for keep, other in ((args[0], args[1]), (args[1], args[0])):
                if other.const == unit and keep.type == out_type:
                    return keep
        key = (n.op, tuple(_key(a) for a in args), repr(sorted(attrs.items())))
        if key in seen:
            return seen[key]
        seen[key] = v = b.op(n.op, *args, name_out=n.out.name, **attrs)
        return v

    out = rewrite(g, rule)
    # an update whose new value simplified to the old one (a zero gradient) is no update
    out.updates = [(t, v) for t, v in out.updates if v is not t]
    return out



def _fold(opdef, args: list[Value], attrs: dict, out_type) -> float | None:
    """The value of an op whose operands are all constants, if it is again one constant: the
    op's NumPy reference decides, so every op folds the same way."""
    if not all(isinstance(d, int) for a in args for d in a.shape):
        return None
    y = np.asarray(opdef.ref(*[np.full(a.dims, a.const, dtype=NP_DTYPES[a.dtype]) for a in args], **attrs))
    flat = y.reshape(-1)
    return float(flat[0]) if flat.size and np.all(flat == flat[0]) else None
