"""Safety: model files cannot run code, and a corrupted object-cache entry is rebuilt, not run."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from graphc import driver
from graphc.codegen.cache import cache_dir
from graphc.errors import DataError, GraphcError
from graphc.frontend import load_source
from graphc.runtime.train.checkpoint import load_arrays

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("line", [
    '__import__("os").system("touch {marker}")',
    'h = eval("open(\'{marker}\', \'w\')")',
    'h = exec("import os")',
    'h = x.__class__',
    'h = mean(x, __globals__=1)',
    'train {{ data = "{marker}" optimizer = __import__(lr=1) }}',
])
def test_model_files_cannot_run_code(line, tmp_path):
    marker = tmp_path / "pwned"
    src = "net t\ndim B\ninput x : f32[B, 3]\n" + line.format(marker=marker) + "\nloss = mean(x)\n"
    with pytest.raises(GraphcError):
        load_source(src, "evil.net")
    assert not marker.exists()


def test_no_code_path_evaluates_or_unpickles():
    """graphc reads models with a grammar, data and checkpoints with allow_pickle=False: nothing in
    its source evaluates text, unpickles or imports by name."""
    banned = re.compile(r"(?<![.\w])(eval|exec|compile)\(|\bpickle\.|import pickle|allow_pickle=True|"
                        r"\bmarshal\b|\bshelve\b|import_module|__import__|yaml\.load")
    sources = [p for d in ("graphc", "runtime", "grammar") for p in (ROOT / d).rglob("*.py")]
    hits = [f"{p.relative_to(ROOT)}:{n}" for p in sources
            for n, line in enumerate(p.read_text().splitlines(), 1) if banned.search(line)]
    assert sources and not hits


def test_pickled_checkpoint_is_refused(tmp_path):
    path = tmp_path / "evil.npz"
    np.savez(path, **{"params/w": np.array([object()], dtype=object)})
    with pytest.raises(DataError, match="evil.npz: cannot read checkpoint"):
        load_arrays(path)


def _compile_apples():
    prog = driver.load(ROOT / "models" / "apples.net")
    compiled = driver.compile_graph(driver.forward(prog), threads=1)
    total = float(compiled.step(apple=100, apple_count=5, orange=150, orange_count=3, tax=1.08)["total"])
    return compiled, total


@pytest.mark.parametrize("damage", ["flip a byte", "truncate"])
def test_corrupted_cache_entry_is_rebuilt(damage):
    _compile_apples()
    first, total = _compile_apples()
    assert first.cache_hit and total == pytest.approx(1026.0)
    entries = sorted(cache_dir().glob("*.o"), key=lambda p: p.stat().st_mtime)
    entry = entries[-1]
    data = bytearray(entry.read_bytes())
    if damage == "truncate":
        data = data[: len(data) // 2]
    else:
        data[len(data) // 2] ^= 0xFF  # in the code: still a loadable object, but not the one built
    entry.write_bytes(bytes(data))
    rebuilt, total = _compile_apples()
    assert not rebuilt.cache_hit and total == pytest.approx(1026.0)
    assert _compile_apples()[0].cache_hit  # the entry was written again, intact
