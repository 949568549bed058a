"""Temperature scaling and calibration metrics (Guo, Pleiss, Sun & Weinberger 2017,
"On Calibration of Modern Neural Networks")."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F


def as_tensor(x: np.ndarray | torch.Tensor, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """``x`` as a tensor of ``dtype`` (float64 by default, so metrics do not lose precision)."""
    return x.to(dtype) if isinstance(x, torch.Tensor) else torch.tensor(np.asarray(x), dtype=dtype)


def nll(logits: np.ndarray | torch.Tensor, labels: np.ndarray | torch.Tensor, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood ``-mean(log softmax(z/T)[y])``."""
    z = as_tensor(logits)
    y = as_tensor(labels, torch.long)
    return float(F.cross_entropy(z / temperature, y))


def fit_temperature(
    logits: np.ndarray | torch.Tensor,
    labels: np.ndarray | torch.Tensor,
    t_min: float = 0.05,
    t_max: float = 20.0,
    max_iter: int = 200,
) -> float:
    """The temperature ``T`` minimising validation NLL of ``softmax(z/T)`` (Guo et al. 2017, sec. 4.2).

    NLL(T) is smooth in ``log T``; we run L-BFGS on ``log T`` from ``T=1`` and clamp to ``[t_min, t_max]``.
    If L-BFGS fails to improve on a coarse log-spaced grid, the best grid point wins, so the result is
    never worse than the grid.
    """
    z = as_tensor(logits)
    y = as_tensor(labels, torch.long)
    if z.ndim != 2 or z.shape[0] != y.shape[0] or z.shape[0] == 0:
        raise ValueError(
            f"fit_temperature: need logits (n, C) and labels (n,), got {tuple(z.shape)} and {tuple(y.shape)}"
        )
    lo, hi = math.log(t_min), math.log(t_max)

    grid = torch.linspace(lo, hi, 61, dtype=torch.float64)
    grid_nll = torch.stack([F.cross_entropy(z / g.exp(), y) for g in grid])
    best_log_t = float(grid[int(torch.argmin(grid_nll))])

    log_t = torch.tensor([best_log_t], dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([log_t], lr=0.5, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(z / log_t.clamp(lo, hi).exp(), y)
        loss.backward()
        return loss

    opt.step(closure)
    refined = float(log_t.detach().clamp(lo, hi))
    if F.cross_entropy(z / math.exp(refined), y) <= grid_nll.min():
        best_log_t = refined
    return math.exp(best_log_t)


@dataclass(frozen=True)
class CalibrationMetrics:
    """Top-label calibration summary of one set of probabilities."""

    ece: float
    mce: float
    nll: float
    brier: float
    accuracy: float

    def as_dict(self, prefix: str = "") -> dict[str, float]:
        """Metrics as a flat dict with an optional key prefix (for MLflow)."""
        return {f"{prefix}{k}": v for k, v in asdict(self).items()}


def _bin_index(conf: torch.Tensor, n_bins: int) -> torch.Tensor:
    """The equal-width confidence bin of each row: this matches torchmetrics' ``bucketize(right=True) - 1``."""
    edges = torch.linspace(0, 1, n_bins + 1, dtype=torch.float64)
    return (torch.bucketize(conf, edges, right=True) - 1).clamp(0, n_bins - 1)


def confidence_bins(
    probs: torch.Tensor, labels: torch.Tensor, n_bins: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-bin (count, accuracy, mean confidence) over equal-width bins of top-label confidence."""
    conf, pred = probs.max(dim=1)
    correct = (pred == labels).to(torch.float64)
    idx = _bin_index(conf, n_bins)
    count = torch.zeros(n_bins, dtype=torch.float64).scatter_add_(0, idx, torch.ones_like(conf))
    acc_sum = torch.zeros(n_bins, dtype=torch.float64).scatter_add_(0, idx, correct)
    conf_sum = torch.zeros(n_bins, dtype=torch.float64).scatter_add_(0, idx, conf)
    safe = count.clamp(min=1)
    return count, acc_sum / safe, conf_sum / safe


def expected_calibration_error(
    probs: np.ndarray | torch.Tensor, labels: np.ndarray | torch.Tensor, n_bins: int = 15
) -> float:
    """ECE = sum_m |B_m|/n * |acc(B_m) - conf(B_m)| over ``n_bins`` equal-width confidence bins."""
    p = as_tensor(probs)
    y = as_tensor(labels, torch.long)
    count, acc, conf = confidence_bins(p, y, n_bins)
    return float((count / count.sum() * (acc - conf).abs()).sum())


def calibration_metrics(
    logits: np.ndarray | torch.Tensor, labels: np.ndarray | torch.Tensor, temperature: float = 1.0, n_bins: int = 15
) -> CalibrationMetrics:
    """ECE, MCE (max over non-empty bins of |acc - conf|), NLL, multi-class Brier and accuracy at ``T``."""
    z = as_tensor(logits)
    y = as_tensor(labels, torch.long)
    probs = torch.softmax(z / temperature, dim=1)
    count, acc, conf = confidence_bins(probs, y, n_bins)
    gaps = (acc - conf).abs()
    onehot = F.one_hot(y, num_classes=probs.shape[1]).to(torch.float64)
    return CalibrationMetrics(
        ece=float((count / count.sum() * gaps).sum()),
        mce=float(gaps[count > 0].max()),
        nll=float(F.cross_entropy(z / temperature, y)),
        brier=float(((probs - onehot) ** 2).sum(dim=1).mean()),
        accuracy=float((probs.argmax(1) == y).to(torch.float64).mean()),
    )


def bin_gaps(probs: np.ndarray, labels: np.ndarray, n_bins: int) -> tuple[np.ndarray, np.ndarray]:
    """Per row: its confidence bin (as in :func:`confidence_bins`) and ``correct - confidence``."""
    conf, pred = as_tensor(probs).max(dim=1)
    gaps = (pred == as_tensor(labels, torch.long)).to(torch.float64) - conf
    return _bin_index(conf, n_bins).numpy(), gaps.numpy()


def weighted_ece(bins: np.ndarray, gaps: np.ndarray, weights: np.ndarray, n_bins: int) -> np.ndarray:
    """ECE under row weights: ``sum_m |sum_{i in B_m} w_i (correct_i - conf_i)| / sum_i w_i`` — the ECE of the
    rows repeated ``w_i`` times. ``weights`` (n,) or (R, n) for R resamples at once; returns () or (R,)."""
    w = np.atleast_2d(np.asarray(weights, dtype=np.float64))
    onehot = np.zeros((len(bins), n_bins))
    onehot[np.arange(len(bins)), bins] = gaps
    ece = np.abs(w @ onehot).sum(axis=1) / w.sum(axis=1)
    return ece if np.ndim(weights) == 2 else ece[0]


def ece_improvement_confidence(
    probs_before: np.ndarray,
    probs_after: np.ndarray,
    labels: np.ndarray,
    n_bins: int = 15,
    replicates: int = 400,
    seed: int = 0,
) -> float:
    """Share of paired bootstrap resamples of the rows in which ECE(after) < ECE(before) (Efron & Tibshirani
    1993; Poisson(1) row weights, the "Poisson bootstrap" of Hanley & MacGibbon 2006): how sure one can be
    that the improvement is not an accident of this sample. ~0.5 for a change that is noise, -> 1 for a real
    gain."""
    bins_b, gaps_b = bin_gaps(probs_before, labels, n_bins)
    bins_a, gaps_a = bin_gaps(probs_after, labels, n_bins)
    weights = np.random.default_rng(seed).poisson(1.0, size=(replicates, len(bins_b))).astype(np.float64)
    weights[weights.sum(axis=1) == 0] = 1.0  # an all-zero resample (only for tiny n) counts every row once
    return float(np.mean(weighted_ece(bins_a, gaps_a, weights, n_bins) < weighted_ece(bins_b, gaps_b, weights, n_bins)))
