"""The ops: importing this package registers every op definition."""

from graphc.ops import elementwise, structural, reduce, linalg, nn, conv, rng, indexing, control  # noqa: F401  (registration)
from graphc.ops.registry import REGISTRY, OpDef, ShapeError, Trait

__all__ = ["REGISTRY", "OpDef", "ShapeError", "Trait"]
