"""Specializes a graph: binds symbolic dims to sizes and optionally switches its float dtype."""

from __future__ import annotations

from typing import Any

from graphc.errors import GraphcError
from graphc.ir.graph import OPS, Builder, Graph, Node, TensorType, Value
from graphc.ir.rewrite import rewrite


def bind(g: Graph, dims: dict[str, int], float_dtype: str | None = None) -> Graph:
    """A copy of `g` with symbolic dims replaced by `dims` and (if given) floats as `float_dtype`."""

    def sub(x: Any) -> Any:
        if isinstance(x, str) and x in dims:
            return dims[x]
        if isinstance(x, dict):
            return {k: sub(v) for k, v in x.items()}
        if isinstance(x, (tuple, list)):
            return type(x)(sub(e) for e in x)
        return x

    def leaf_type(t: TensorType) -> TensorType:
        shape = tuple(sub(d) for d in t.shape)
        free = [d for d in shape if isinstance(d, str)]
        if free:
            raise GraphcError(f"dim {free[0]} is not bound (bound: {', '.join(sorted(dims)) or 'none'})")
        return TensorType(float_dtype if (float_dtype and t.is_float) else t.dtype, shape).check_size()

    def rule(b: Builder, n: Node, args: list[Value], attrs: dict) -> Value | None:
        """An op whose attribute names a float output dtype follows the graph's."""
        key = OPS[n.op].dtype_attr
        if float_dtype is None or key is None or attrs.get(key) not in ("f32", "f64"):
            return None
        return b.op(n.op, *args, name_out=n.out.name, **{**attrs, key: float_dtype})

    out = rewrite(g, rule, leaf_type=leaf_type, attr_map=sub)
    out.dims.update(dims)
    return out
