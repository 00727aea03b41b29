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


def pareto_front(
    front: tuple[Sequence[float], Sequence[float]],
    evaluated: tuple[Sequence[float], Sequence[float]],
    random: tuple[Sequence[float], Sequence[float]],
    chosen: tuple[Sequence[float], Sequence[float]],
    dense_accuracy: float,
    roulette: tuple[Sequence[float], Sequence[float]] | None,
    title: str,
    accuracy_label: str = "accuracy",
    cost_label: str = "FLOPs kept (ratio of dense)",
) -> Figure:
    """Validation accuracy vs a cost ratio (FLOPs or predicted latency): evaluated candidates, the Pareto front, random masks for
    contrast, the roulette-branch path, the chosen members and the dense model."""
    fig = Figure(figsize=(7, 4.8), layout="constrained")
    ax = fig.subplots()
    pct = lambda values: [100 * v for v in values]  # noqa: E731
    ax.scatter(evaluated[0], pct(evaluated[1]), s=6, color="0.8", label="evaluated candidates")
    ax.scatter(random[0], pct(random[1]), s=12, marker="x", color="tab:gray", label="random masks")
    order = sorted(range(len(front[0])), key=lambda i: front[0][i])
    ax.plot(
        [front[0][i] for i in order],
        pct([front[1][i] for i in order]),
        marker="o",
        ms=4,
        color="tab:blue",
        label="Pareto front",
    )
    if roulette is not None:
        ax.plot(roulette[0], pct(roulette[1]), marker="s", ms=4, color="tab:orange", label="roulette branch path")
    ax.scatter(
        chosen[0], pct(chosen[1]), s=110, facecolors="none", edgecolors="tab:red", label="chosen for fine-tuning"
    )
    ax.scatter([1.0], [100 * dense_accuracy], marker="*", s=150, color="black", label="dense")
    ax.set(xlabel=cost_label, ylabel=f"validation {accuracy_label} before fine-tuning (%)", title=title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    return fig


Series = tuple[Sequence[float], Sequence[float]]


def accuracy_after_finetuning(
    front_before: Series,
    variants: dict[str, Series],
    baselines: dict[str, Series],
    dense_accuracy: float,
    title: str,
) -> Figure:
    """Final-exit accuracy vs FLOPs ratio: the Pareto front before fine-tuning, every re-init variant's
    members after fine-tuning, the pruning baselines at the same budgets, and the dense model; the right
    panel zooms on the fine-tuned models."""
    fig = Figure(figsize=(12, 5), layout="constrained")
    axes = fig.subplots(1, 2)
    pct = lambda values: [100 * v for v in values]  # noqa: E731

    def line(ax, series: Series, **style: object) -> None:
        order = sorted(range(len(series[0])), key=lambda i: series[0][i])
        ax.plot([series[0][i] for i in order], pct([series[1][i] for i in order]), **style)

    for ax in axes:
        if ax is axes[0]:
            line(ax, front_before, marker=".", ms=4, color="0.6", lw=1, label="Pareto front before fine-tuning (val.)")
        for k, (name, series) in enumerate(variants.items()):
            line(ax, series, marker="o", ms=5, lw=1.2, color=f"C{k}", label=f"fine-tuned: {name}")
        for name, series in baselines.items():
            color = "black" if name == "l1" else "tab:brown"
            line(ax, series, marker="x", ms=7, lw=1.2, ls="--", color=color, label=f"baseline: {name}")
        ax.axhline(100 * dense_accuracy, color="black", lw=0.8, ls=":", label="dense")
        ax.set(xlabel="FLOPs kept (ratio of dense)", ylabel="test accuracy, final exit (%)")
        ax.grid(alpha=0.3)
    axes[0].set_title("front before and models after fine-tuning")
    axes[1].set_title("zoom: fine-tuned models and baselines")
    axes[0].legend(fontsize=7, loc="lower right")  # the left panel's lower right is empty by construction
    fig.suptitle(title)
    return fig


def variant_comparison(member_labels: Sequence[str], drops: dict[str, Sequence[float]], title: str) -> Figure:
    """Grouped bars: accuracy drop (points vs dense) of each member under each variant and baseline."""
    fig = Figure(figsize=(max(6.0, 1.6 * len(member_labels) + 3), 4.5), layout="constrained")
    ax = fig.subplots()
    width = 0.8 / max(len(drops), 1)
    for k, (name, values) in enumerate(drops.items()):
        xs = [i + (k - (len(drops) - 1) / 2) * width for i in range(len(member_labels))]
        ax.bar(xs, values, width, label=name, color=f"C{k}", hatch="//" if name.startswith("baseline") else None)
    ax.set_xticks(range(len(member_labels)), member_labels)
    ax.set(ylabel="test accuracy drop vs dense (points, lower is better)", title=title)
    ax.axhline(0.0, color="black", lw=0.8)
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=7, ncols=2)
    return fig


def sparse_training(histories: dict[str, dict[str, Sequence[float]]], title: str) -> Figure:
    """Per epoch of dynamic sparse training, one column per mode: validation accuracy, and the share kept
    overall and per layer (``kept_share`` and ``kept.<layer>`` series of each history)."""
    fig = Figure(figsize=(5 * len(histories), 7), layout="constrained")
    axes = fig.subplots(2, len(histories), squeeze=False)
    for column, (mode, history) in enumerate(histories.items()):
        ax_acc, ax_kept = axes[0][column], axes[1][column]
        accuracy = history.get("val_accuracy", [])
        ax_acc.plot(range(1, len(accuracy) + 1), [100 * a for a in accuracy], marker="o", color="tab:green")
        ax_acc.set(xlabel="epoch", ylabel="validation accuracy (%)", title=f"{mode}: accuracy")
        for key, values in history.items():
            if key.startswith("kept."):
                ax_kept.plot(range(1, len(values) + 1), [100 * v for v in values], lw=1, label=key[len("kept.") :])
        overall = history.get("kept_share", [])
        ax_kept.plot(range(1, len(overall) + 1), [100 * v for v in overall], lw=2.5, color="black", label="overall")
        kept_what = "FLOPs" if mode == "structured" else "weights"
        ax_kept.set(xlabel="epoch", ylabel=f"kept (%; overall = {kept_what})", title=f"{mode}: kept per layer")
        ax_kept.legend(fontsize=6, ncol=2)
        for ax in (ax_acc, ax_kept):
            ax.grid(alpha=0.3)
    fig.suptitle(title)
    return fig


def hidden_state_sparsity(
    sparsity: dict[str, Sequence[float]], accuracy: dict[str, Sequence[float]], dense_accuracy: float, title: str
) -> Figure:
    """Test accuracy against the measured hidden-state sparsity, one line per series (e.g. with and without
    fine-tuning), the dense network's accuracy as a reference line."""
    fig = Figure(figsize=(5.5, 4), layout="constrained")
    ax = fig.subplots()
    for name, xs in sparsity.items():
        ax.plot([100 * x for x in xs], [100 * a for a in accuracy[name]], marker="o", label=name)
    ax.axhline(100 * dense_accuracy, color="grey", linestyle="--", label="dense")
    ax.set(xlabel="hidden-state elements zeroed (%)", ylabel="test accuracy (%)", title=title)
    ax.grid(alpha=0.3)
    ax.legend()
    return fig


def latency_validation(
    predicted: Sequence[float], measured: Sequence[float], kinds: Sequence[str], title: str
) -> Figure:
    """Predicted vs measured latency ratio (of the dense network's), one point per pruned network, with the
    identity and the +-10% band."""
    fig = Figure(figsize=(5.5, 5), layout="constrained")
    ax = fig.subplots()
    if len(predicted):
        low, high = min(*predicted, *measured), max(*predicted, *measured)
        line = [0.95 * low, 1.05 * high]
        ax.plot(line, line, color="black", lw=1, label="predicted = measured")
        ax.fill_between(line, [v / 1.1 for v in line], [v * 1.1 for v in line], color="0.9", label="+-10%")
        for kind, colour in (("random", "tab:gray"), ("member", "tab:red")):
            idx = [i for i, k in enumerate(kinds) if k == kind]
            ax.scatter([measured[i] for i in idx], [predicted[i] for i in idx], s=18, color=colour, label=kind)
        ax.legend(fontsize=8, loc="upper left")
    else:
        ax.text(0.5, 0.5, "no latency tables for this network", ha="center", va="center", transform=ax.transAxes)
    ax.set(xlabel="measured latency (ratio of dense)", ylabel="predicted latency (ratio of dense)", title=title)
    ax.grid(alpha=0.3)
    return fig


def criteria_on_targets(rows: Sequence[dict], title: str) -> Figure:
    """Test accuracy against the FLOPs ratio, one panel per target and one line per method, with each target's
    dense accuracy (rows as ``scoring_net.transfer_scoring_net`` returns them); without fine-tuning, and in a
    second row of panels after it when the rows have ``finetuned_accuracy``."""
    targets = list(dict.fromkeys(r["target"] for r in rows))
    stages = [("test_accuracy", "no fine-tuning")]
    if rows and "finetuned_accuracy" in rows[0]:
        stages.append(("finetuned_accuracy", "fine-tuned"))
    fig = Figure(figsize=(4.2 * max(len(targets), 1), 3.8 * len(stages)), layout="constrained")
    grid = fig.subplots(len(stages), max(len(targets), 1), squeeze=False)
    for (column, stage), axes in zip(stages, grid, strict=True):
        for ax, target in zip(axes, targets, strict=False):
            mine = [r for r in rows if r["target"] == target]
            for method in dict.fromkeys(r["method"] for r in mine):
                points = sorted((r["flops_ratio"], r[column]) for r in mine if r["method"] == method)
                ax.plot([100 * x for x, _ in points], [100 * y for _, y in points], marker="o", label=method)
            ax.axhline(100 * mine[0]["dense_accuracy"], color="grey", linestyle="--", label="dense")
            ax.set(xlabel="FLOPs kept (%)", ylabel=f"test accuracy, {stage} (%)", title=target)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
    fig.suptitle(title)
    return fig
