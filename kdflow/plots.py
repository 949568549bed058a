"""Plots saved as PNG for MLflow artifacts: reliability diagrams, training curves, risk-coverage curves."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from kdflow.calibration import as_tensor, calibration_metrics, confidence_bins


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
    logits: np.ndarray | torch.Tensor,
    labels: np.ndarray | torch.Tensor,
    temperatures: dict[str, float],
    path: str | Path,
    n_bins: int = 15,
) -> Path:
    """Save a reliability diagram (accuracy vs confidence per bin) for each named temperature as PNG."""
    plt = _pyplot()
    z = as_tensor(logits)
    y = as_tensor(labels, torch.long)
    centers = (np.arange(n_bins) + 0.5) / n_bins
    fig, axes = plt.subplots(1, len(temperatures), figsize=(4.5 * len(temperatures), 4.2), squeeze=False)
    for ax, (name, t) in zip(axes[0], temperatures.items()):
        count, acc, _ = confidence_bins(torch.softmax(z / t, dim=1), y, n_bins)
        ece = calibration_metrics(z, y, t, n_bins).ece
        ax.bar(centers, acc.numpy() * (count.numpy() > 0), width=1 / n_bins, edgecolor="black", label="accuracy")
        ax.plot([0, 1], [0, 1], "--", color="gray", label="perfect")
        ax.set(
            title=f"{name} (T={t:.3g}, ECE={ece:.3f})", xlabel="confidence", ylabel="accuracy", xlim=(0, 1), ylim=(0, 1)
        )
        ax.legend(loc="upper left")
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
