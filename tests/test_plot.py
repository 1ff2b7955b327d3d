"""graphc train --plot: loss and metric curves per epoch, in the given file and the --out directory."""

from __future__ import annotations

import builtins

import numpy as np
import pytest

from graphc.errors import GraphcError
from test_cli import graphc

pytest.importorskip("matplotlib")

from graphc.runtime.train.plot import check_plot_path, curves, write_curves  # noqa: E402

HISTORY = [{"epoch": e, "seconds": 0.1, "train_loss": 2.0 / e, "test_loss": 2.2 / e,
            "test_accuracy": 0.5 + 0.08 * e} for e in range(1, 6)]


def test_curves_draw_every_epoch():
    fig = curves(HISTORY, "m")
    loss, acc = fig.axes
    lines = {ln.get_label(): ln for ln in loss.get_lines()}
    np.testing.assert_allclose(lines["train"].get_ydata(), [2.0 / e for e in range(1, 6)])
    np.testing.assert_allclose(lines["test"].get_ydata(), [2.2 / e for e in range(1, 6)])
    (line,) = acc.get_lines()
    assert line.get_label() == "accuracy" and list(line.get_xdata()) == [1, 2, 3, 4, 5]
    np.testing.assert_allclose(line.get_ydata(), [0.5 + 0.08 * e for e in range(1, 6)])


def test_with_a_validation_split_its_curves_are_drawn():
    """Each epoch reports validation; the test split, evaluated once at the end, is not a curve."""
    history = [{"epoch": r["epoch"], "train_loss": r["train_loss"], "val_loss": r["test_loss"],
                "val_accuracy": r["test_accuracy"]} for r in HISTORY]
    history[-1].update({"test_loss": 0.5, "test_accuracy": 0.9})
    loss, acc = curves(history, "m").axes
    assert [ln.get_label() for ln in loss.get_lines()] == ["train", "validation"]
    assert [ln.get_label() for ln in acc.get_lines()] == ["accuracy"] and acc.get_title() == "validation accuracy"


def test_without_metrics_only_the_loss_is_drawn():
    fig = curves([{k: v for k, v in r.items() if k != "test_accuracy"} for r in HISTORY], "m")
    assert [ax.get_title() for ax in fig.axes] == ["loss"]


def test_formats_and_missing_matplotlib(tmp_path, monkeypatch):
    write_curves(HISTORY, [tmp_path / "c.svg"], "m")
    assert "<svg" in (tmp_path / "c.svg").read_text()
    with pytest.raises(GraphcError, match="sub/c.svg: No such file or directory"):
        write_curves(HISTORY, [tmp_path / "sub" / "c.svg"], "m")  # no parents made
    assert not (tmp_path / "sub").exists()
    with pytest.raises(GraphcError, match=r"unknown picture format '\.txt'"):
        check_plot_path(tmp_path / "c.txt")
    real_import = builtins.__import__

    def no_matplotlib(name, *args, **kwargs):
        if name.startswith("matplotlib"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    with pytest.raises(GraphcError, match=r"pip install 'graphc\[plot\]'"):
        check_plot_path(tmp_path / "c.png")


def test_train_plots_into_the_file_and_the_out_directory(tmp_path):
    out = graphc("train", "models/digits.net", "--epochs", "2", "--no-progress", "--plot",
                 str(tmp_path / "curves.png"), "--out", str(tmp_path / "run")).stdout
    assert out.count("curves plotted to") == 2
    for png in (tmp_path / "curves.png", tmp_path / "run" / "curves.png"):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    bad = graphc("train", "models/digits.net", "--epochs", "1", "--plot", str(tmp_path / "c.txt"),
                 check=False)
    assert bad.returncode == 2 and "unknown picture format" in bad.stderr and "epoch 1" not in bad.stdout
