"""Algebraic simplification and common-subexpression elimination.

Folds elementwise ops on scalar constants, drops multiplications by one and additions of zero that
do not broadcast, and reuses an identical earlier node instead of computing it twice.
"""

from __future__ import annotations

import numpy as np

from graphc.ir.graph import Builder, Graph, NP_DTYPES, Value
from graphc.ir.rewrite import rewrite
from graphc.ops import REGISTRY
from graphc.ops.lowering import Elementwise

_IDENTITY = {"mul": 1.0, "add": 0.0}


def _key(v):
    return ("const", v.const, v.dtype) if v.const is not None else id(v)


def simplify(g: Graph) -> Graph:
    seen: dict[tuple, Value] = {}

    def rule(b: Builder, n, args, attrs):
        opdef = REGISTRY[n.op]
        out_type = opdef.shape([a.type for a in args], attrs)
        if isinstance(opdef.lower, Elementwise) and args and all(a.const is not None for a in args) \
                and out_type.shape == ():
            x = opdef.ref(*[np.array(a.const, NP_DTYPES[a.dtype]) for a in args], **attrs)
            return b.const(float(x), out_type.dtype)
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

    return rewrite(g, rule)

