"""Figures of a training run, drawn with matplotlib's Agg backend (no display needed).

`plot_training_curves` reads a run's `metrics.csv` and draws the loss parts, the contrastive
accuracy against chance, the codebook perplexities against their bounds, the Gumbel temperature and
the learning rate. It knows the CSV columns (`train/metrics.py`), nothing about models.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 - the backend must be chosen first

from .train.metrics import read_metrics  # noqa: E402


def plot_training_curves(
    metrics_csv: str | Path,
    out_png: str | Path,
    *,
    num_negatives: int | None = None,
    latent_groups: int | None = None,
    latent_vars: int | None = None,
) -> Path:
    """Draw a 2 x 3 grid of training curves into `out_png`.

    `num_negatives` (K distractors per masked frame, same-clip + cross-sample) adds the chance
    accuracy 1 / (K + 1); `latent_groups` (G) and `latent_vars` (V) add the code perplexity's floor
    G (one code per group) and ceiling G * V (every code used equally).
    """
    rows = read_metrics(metrics_csv)
    if not rows:
        raise ValueError(f"{metrics_csv}: no rows to plot")

    def col(name: str) -> tuple[list[float], list[float]]:
        pairs = [(r["step"], r[name]) for r in rows if name in r]
        return [p[0] for p in pairs], [p[1] for p in pairs]

    fig, axes = plt.subplots(2, 3, figsize=(15, 8))
    ax = axes[0, 0]
    for name, label in (("loss", "total L"), ("contrastive", "contrastive $L_m$")):
        ax.plot(*col(name), label=label)
    ax.set(title="Loss", xlabel="update", ylabel="loss")
    ax.legend()

    ax = axes[0, 1]
    ax.plot(*col("diversity"), label="diversity $L_d$", color="tab:green")
    ax.set(title="Diversity and feature penalty", xlabel="update", ylabel="diversity $L_d$")
    twin = ax.twinx()
    twin.plot(*col("feature_penalty"), label="feature penalty", color="tab:red")
    twin.set_ylabel("feature penalty (mean $z^2$)")
    ax.legend(handles=ax.get_lines() + twin.get_lines(), loc="upper right")

    ax = axes[0, 2]
    ax.plot(*col("accuracy"), label="contrastive accuracy")
    if "chance_accuracy" in rows[-1]:
        ax.plot(*col("chance_accuracy"), ls="--", color="tab:orange",
                label="chance (distractors equal to the positive removed)")
    if num_negatives:
        ax.axhline(1.0 / (num_negatives + 1), ls="--", color="gray", label=f"chance 1/(K+1), K={num_negatives}")
    top = max([v for v in col("accuracy")[1] if v == v] + [1.0 / (num_negatives + 1) if num_negatives else 0.0])
    ax.set(title="Accuracy on masked frames", xlabel="update", ylabel="accuracy", ylim=(0, min(1.0, 1.6 * top + 0.02)))
    ax.legend(fontsize="small")

    ax = axes[1, 0]
    ax.plot(*col("code_perplexity"), label="code perplexity")
    ax.plot(*col("prob_perplexity"), label="softmax perplexity")
    if latent_groups:
        ax.axhline(latent_groups, ls="--", color="gray", label=f"G = {latent_groups} (collapsed)")
        if latent_vars:
            ax.axhline(latent_groups * latent_vars, ls=":", color="black",
                       label=f"G·V = {latent_groups * latent_vars} (all codes used)")
    ax.set(title="Codebook usage", xlabel="update", ylabel="perplexity")
    ax.legend()

    ax = axes[1, 1]
    ax.plot(*col("temperature"), color="tab:purple")
    ax.set(title="Gumbel temperature τ", xlabel="update", ylabel="τ")
    ax.ticklabel_format(axis="y", useOffset=False)

    ax = axes[1, 2]
    ax.plot(*col("lr"), color="tab:orange")
    ax.set(title="Learning rate", xlabel="update", ylabel="lr")
    ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))

    for a in axes.flat:
        a.grid(alpha=0.3)
    fig.tight_layout()
    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
