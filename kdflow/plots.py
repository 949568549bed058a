"""Plots saved as PNG for MLflow artifacts: reliability diagrams, training curves, risk-coverage curves."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from kdflow.calibration import as_tensor, confidence_bins, expected_calibration_error


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(plt, fig, path: str | Path) -> Path:
    """Write ``fig`` as PNG at ``path`` (creating its folder) and close it."""
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def training_curves(history: list[dict[str, float]], path: str | Path) -> Path:
    """Loss (total, soft, hard) and validation accuracy per epoch as one PNG."""
    plt = _pyplot()
    epochs = [h["epoch"] for h in history]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    for key in ("loss", "soft_loss", "hard_loss"):
        ax_loss.plot(epochs, [h[key] for h in history], label=key)
    ax_loss.set(xlabel="epoch", ylabel="training loss", title="loss")
    ax_loss.legend()
    ax_acc.plot(epochs, [h["val_accuracy"] for h in history], marker="o")
    ax_acc.set(xlabel="epoch", ylabel="accuracy", title="validation accuracy")
    return _save(plt, fig, path)


def reliability_diagram(
    curves: dict[str, np.ndarray], labels: np.ndarray | torch.Tensor, path: str | Path, n_bins: int = 15
) -> Path:
    """Save a reliability diagram (accuracy vs confidence per equal-width bin) for each named set of
    probabilities ``(n, C)`` as PNG, with a histogram under each of how many rows every bin holds (log scale),
    so a bin of a handful of rows is not read as weighty as one holding most of the split."""
    plt = _pyplot()
    y = as_tensor(labels, torch.long)
    centers = (np.arange(n_bins) + 0.5) / n_bins
    fig, axes = plt.subplots(
        2, len(curves), figsize=(4.5 * len(curves), 5.6), squeeze=False, gridspec_kw={"height_ratios": [3, 1]},
        sharex=True,
    )  # fmt: skip
    for col, (name, probs) in enumerate(curves.items()):
        ax, hist = axes[0, col], axes[1, col]
        count, acc, _ = confidence_bins(as_tensor(probs), y, n_bins)
        ece = expected_calibration_error(probs, y, n_bins)
        ax.bar(centers, acc.numpy() * (count.numpy() > 0), width=1 / n_bins, edgecolor="black", label="accuracy")
        ax.plot([0, 1], [0, 1], "--", color="gray", label="perfect")
        ax.set(title=f"{name} (ECE={ece:.3f})", ylabel="accuracy", xlim=(0, 1), ylim=(0, 1))
        ax.legend(loc="upper left")
        hist.bar(centers, count.numpy(), width=1 / n_bins, edgecolor="black", color="gray")
        hist.set(xlabel="confidence", ylabel="rows per bin", yscale="symlog", xlim=(0, 1))
    return _save(plt, fig, path)


def risk_coverage(
    coverage: list[float], risk: list[float], threshold_coverage: float, aurc: float, path: str | Path
) -> Path:
    """The risk-coverage curve of selective classification (Geifman & El-Yaniv 2017): the student's error on the
    rows it keeps against the share it keeps, with the chosen threshold's coverage marked."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 4))
    ax.plot(coverage, risk, label=f"selective risk (AURC={aurc:.4f})")
    ax.axvline(threshold_coverage, linestyle="--", color="gray", label=f"threshold coverage {threshold_coverage:.3f}")
    ax.set(xlabel="coverage (student share)", ylabel="risk (student error on kept rows)", xlim=(0, 1), ylim=(0, None))
    ax.set_title("risk-coverage (validation)")
    ax.legend(loc="upper left")
    return _save(plt, fig, path)
