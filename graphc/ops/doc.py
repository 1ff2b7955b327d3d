"""The op table of docs/language.md, generated from the registry (`python -m graphc.ops.doc` rewrites
the page's table; a test checks the page is current)."""

from __future__ import annotations

import sys
from pathlib import Path

from graphc.ops.registry import REGISTRY, OpDef, show

HEADER = "| op | tensor args | attributes | shape rule |\n|---|---|---|---|\n"


def _attributes(opdef: OpDef) -> str:
    names, required = opdef.attributes()
    words = [f"{n} (required)" for n in names if n in required]
    words += [f"{n}={show(opdef.defaults[n]).lower()}" for n in names if n not in required]
    return ", ".join(words) or "–"


def op_table() -> str:
    """Every registered op, in registration order: name, operand count, attributes, shape rule."""
    return HEADER + "".join(f"| `{o.name}` | {o.nargs or 'any'} | {_attributes(o)} | {o.doc} |\n" for o in REGISTRY.values())


def with_table(page: str) -> str:
    """`page` with its op table (from HEADER to the first blank line after it) replaced."""
    start = page.index(HEADER)
    end = page.index("\n\n", start)
    return page[:start] + op_table().rstrip("\n") + page[end:]


if __name__ == "__main__":
    path = Path(sys.argv[1] if len(sys.argv) > 1 else "docs/language.md")
    path.write_text(with_table(path.read_text()))
