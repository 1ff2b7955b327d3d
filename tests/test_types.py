"""mypy finds no type errors in the package (graphc/ and runtime/, as pyproject.toml's [tool.mypy]
configures it)."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.slow  # the full tier: README's test command runs it, `-m "not slow"` skips it


@pytest.mark.skipif(importlib.util.find_spec("mypy") is None,
                    reason="mypy is not installed (it comes with the test extra: pip install -e '.[test]')")
def test_mypy_is_clean(tmp_path):
    """Checked as installed: runtime/ is the package graphc.runtime (pyproject's package-dir), a
    mapping mypy cannot follow in the source tree, so the test lays the package out that way."""
    shutil.copytree(ROOT / "graphc", tmp_path / "graphc", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(ROOT / "runtime", tmp_path / "graphc" / "runtime", ignore=shutil.ignore_patterns("__pycache__"))
    r = subprocess.run([sys.executable, "-m", "mypy", "--config-file", str(ROOT / "pyproject.toml"), "graphc"],
                       cwd=tmp_path, capture_output=True, text=True)
    assert r.returncode == 0, f"mypy exited with {r.returncode}:\n{r.stdout}{r.stderr}"
