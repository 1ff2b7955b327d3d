"""Shared test set-up: a private object cache per test session, so tests never read a stale one;
the `graphc` command the subprocess tests run (GRAPHC, imported by them)."""

import sys
from pathlib import Path

import pytest

# the installed command, since from the repository `python -m graphc.cli` may import the source
# tree, where runtime/ is not yet graphc/runtime; the module only where no command is installed
_EXE = Path(sys.executable).parent / "graphc"
GRAPHC = [str(_EXE)] if _EXE.exists() else [sys.executable, "-m", "graphc.cli"]


@pytest.fixture(autouse=True, scope="session")
def _private_cache(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    mp.setenv("GRAPHC_CACHE_DIR", str(tmp_path_factory.mktemp("graphc-cache")))
    yield
    mp.undo()
