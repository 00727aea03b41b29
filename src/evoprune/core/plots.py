"""Figures (matplotlib objects only; saving goes through the Kedro catalog)."""

from __future__ import annotations

from collections.abc import Sequence

from matplotlib.figure import Figure


def training_curves(train_loss: Sequence[float], val_accuracy: Sequence[float], title: str) -> Figure:
    """Train loss and validation accuracy per epoch, side by side."""
    fig = Figure(figsize=(9, 3.5), layout="constrained")
    ax_loss, ax_acc = fig.subplots(1, 2)
    epochs = range(1, len(train_loss) + 1)
    ax_loss.plot(epochs, train_loss, marker="o")
    ax_loss.set(xlabel="epoch", ylabel="train loss", title="training loss")
    if val_accuracy:
        ax_acc.plot(range(1, len(val_accuracy) + 1), [100 * a for a in val_accuracy], marker="o", color="tab:green")
    ax_acc.set(xlabel="epoch", ylabel="validation accuracy (%)", title="validation accuracy")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    return fig
