"""Training curves: loss and metrics per epoch from the trainer's history, drawn with matplotlib
(a language model's validation bits per byte is one of its metrics).

matplotlib is an optional extra (graphc[plot]); `check_plot_path` says what is missing before a
run starts, so a long training never ends in an error about its picture.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from graphc.errors import GraphcError

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def _figure_class() -> type["Figure"]:
    try:
        from matplotlib.figure import Figure  # the object API: no pyplot state, no GUI backend
    except ImportError:
        raise GraphcError("--plot needs matplotlib: pip install 'graphc[plot]'") from None
    return Figure


def check_plot_path(path: Path) -> None:
    """Raise now if `path` cannot be drawn later: matplotlib missing, or a format it cannot write."""
    formats = _figure_class()().canvas.get_supported_filetypes()
    if path.suffix.lstrip(".").lower() not in formats:
        raise GraphcError(f"{path}: unknown picture format '{path.suffix}' "
                          f"(use one of {', '.join('.' + f for f in sorted(formats))})")


def curves(history: list[dict], title: str) -> "Figure":
    """Loss per epoch (train, and the split each epoch evaluates: validation where there is one,
    else test) on the left, that split's metrics per epoch on the right (a language model's bits
    per byte among them)."""
    from matplotlib.ticker import MaxNLocator
    epochs = [r["epoch"] for r in history]
    prefix, split = ("val_", "validation") if "val_loss" in history[0] else ("test_", "test")
    metrics = [k for k in history[0] if k.startswith(prefix) and k != prefix + "loss"]
    fig = _figure_class()(figsize=(9 if metrics else 5, 3.6), dpi=120, layout="constrained")
    axes = fig.subplots(1, 2 if metrics else 1, squeeze=False)[0]
    for key, label in (("train_loss", "train"), (prefix + "loss", split)):
        axes[0].plot(epochs, [r[key] for r in history], marker="o", markersize=3, label=label)
    axes[0].set(title="loss", xlabel="epoch")
    for key in metrics:
        values = [r[key] for r in history]
        axes[1].plot(epochs, values, marker="o", markersize=3, label=key.removeprefix(prefix))
        axes[1].annotate(f"{values[-1]:.4f}", (epochs[-1], values[-1]), textcoords="offset points",
                         xytext=(0, 6), ha="right", fontsize=8)
    if metrics:
        axes[1].set(title=f"{split} " + ", ".join(k.removeprefix(prefix) for k in metrics), xlabel="epoch")
    for ax in axes:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    return fig


def write_curves(history: list[dict], paths: list[Path], title: str) -> None:
    """Draw `history` (one record per epoch, as graphc train logs it) once, into each picture of `paths`."""
    if not history:
        raise GraphcError("no epochs to plot")
    figure = curves(history, title)
    for path in paths:
        try:  # into an existing directory: the CLI checked it before training
            figure.savefig(path)
        except OSError as e:
            raise GraphcError(f"cannot write {path}: {e.strerror or e}") from None
