"""Reads the grammar files shipped with graphc, from the installed package or a source checkout."""

from __future__ import annotations

import importlib.resources

from graphc.about import PACKAGE_DIR


def grammar(name: str) -> str:
    """The text of grammar/NAME (graphc.lark: the .net language; ir.lark: the text IR)."""
    try:
        return (importlib.resources.files("graphc.grammar") / name).read_text()
    except ModuleNotFoundError:  # running from a source checkout without the package mapping
        return (PACKAGE_DIR.parent / "grammar" / name).read_text()
