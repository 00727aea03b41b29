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


def exit_accuracy_vs_flops(
    flops: Sequence[float], accuracy: Sequence[float], labels: Sequence[str], title: str
) -> Figure:
    """Test accuracy of each exit against the FLOPs needed to reach it."""
    fig = Figure(figsize=(5.5, 4), layout="constrained")
    ax = fig.subplots()
    mflops = [f / 1e6 for f in flops]
    ax.plot(mflops, [100 * a for a in accuracy], marker="o")
    for x, y, label in zip(mflops, accuracy, labels, strict=True):
        ax.annotate(label, (x, 100 * y), textcoords="offset points", xytext=(5, -12))
    ax.set(xlabel="MFLOPs per image to reach the exit", ylabel="test accuracy (%)", title=title)
    ax.grid(alpha=0.3)
    return fig


def early_exit_tradeoff(
    expected_flops: Sequence[float],
    accuracy: Sequence[float],
    thresholds: Sequence[float],
    final_flops: float,
    final_accuracy: float,
    operating_threshold: float,
    title: str,
) -> Figure:
    """Accuracy vs expected FLOPs of confidence-threshold early exiting, one point per threshold."""
    fig = Figure(figsize=(6, 4.2), layout="constrained")
    ax = fig.subplots()
    x = [f / 1e6 for f in expected_flops]
    ax.plot(x, [100 * a for a in accuracy], marker=".", label="early exit (thresholds)")
    for xi, yi, t in zip(x, accuracy, thresholds, strict=True):
        ax.annotate(f"{t:g}", (xi, 100 * yi), textcoords="offset points", xytext=(3, 3), fontsize=7)
    op = thresholds.index(operating_threshold)
    ax.scatter(
        [x[op]],
        [100 * accuracy[op]],
        s=90,
        facecolors="none",
        edgecolors="tab:red",
        label=f"operating point (t={operating_threshold:g})",
    )
    ax.scatter([final_flops / 1e6], [100 * final_accuracy], marker="*", s=120, color="black", label="final exit only")
    ax.set(xlabel="expected MFLOPs per image", ylabel="test accuracy (%)", title=title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return fig
