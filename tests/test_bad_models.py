"""Malformed model files (tests/bad/*.net): each is answered with exactly the message in its
sibling .err file (the whole stderr: `file:line:col: error: ...`, the source line, a caret and a
hint where one helps) and exit status 2, never a traceback.

A file is run as `graphc ir FILE --grad` (parse, lower, train settings, the training step), or as
the command its `# run: CMD ARGS` line names (`train`, for data that does not fit the model). Runs
are in-process, from inside tests/bad, so messages name the file as `NAME.net`.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from graphc.cli import main

BAD = Path(__file__).resolve().parent / "bad"
FILES = sorted(BAD.glob("*.net"))


def command(path: Path) -> list[str]:
    run = re.search(r"^# run: (\S+)(.*)$", path.read_text(), re.MULTILINE)
    cmd, args = (run[1], run[2].split()) if run else ("ir", ["--grad"])
    return [cmd, path.name, *args]


def test_there_are_many_kinds_of_bad_files():
    kinds = {p.name.split("_")[0] for p in FILES}
    assert len(FILES) >= 40 and kinds >= {"lex", "syntax", "name", "dup", "arity", "attr", "shape",
                                          "recursion", "train", "data"}
    assert all(p.with_suffix(".err").exists() for p in FILES)


@pytest.mark.parametrize("path", FILES, ids=[p.stem for p in FILES])
def test_bad_file_gets_its_exact_message(path, capsys, monkeypatch):
    monkeypatch.chdir(BAD)
    assert main(command(path)) == 2
    err = capsys.readouterr().err
    assert err == path.with_suffix(".err").read_text()
    head = err.splitlines()[0]
    assert head.startswith(f"{path.name}:") or head.startswith("error:"), head


@pytest.mark.parametrize("args,message", [
    (["train", "--batch", "-5"], "argument --batch: must be at least 1, got -5"),
    (["train", "--lr", "nan"], "argument --lr: must be a positive number, got nan"),
    (["train", "--epochs", "two"], "argument --epochs: 'two' is not a whole number"),
    (["train", "--checkpoint-every", "5"], "--checkpoint-every needs a directory to write to"),
    (["ir", "--batch", "0"], "argument --batch: must be at least 1, got 0"),
])
def test_bad_command_line_numbers(args, message, capsys, monkeypatch):
    monkeypatch.chdir(BAD)
    cmd, *rest = args
    try:
        code = main([cmd, "../../models/digits.net", *rest])
    except SystemExit as e:  # argparse's own errors
        code = e.code
    assert code == 2 and message in capsys.readouterr().err
