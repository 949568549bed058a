"""Temperature scaling and calibration metrics (Guo, Pleiss, Sun & Weinberger 2017,
"On Calibration of Modern Neural Networks"), and the maps tried when one temperature is not enough: vector
scaling (Guo et al. 2017) and per-class isotonic regression (Zadrozny & Elkan 2002), chosen by cross-fitting
(:func:`select_map`). Every map is an ``nn.Module`` of buffers that exports to pt2 and ONNX."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


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


# ------------------------------------------------------------------------------------------------ maps
EPS = 1e-6  # floor of an isotonic class score before normalising (a row whose scores are all 0 stays finite)


class VectorScaling(nn.Module):
    """``softmax(w * z + b)`` with a per-class scale ``w`` and bias ``b`` (Guo et al. 2017, "vector scaling"),
    applied to temperature-scaled logits ``z``; ``w = 1, b = 0`` is the temperature map itself."""

    kind = "vector"

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor):
        super().__init__()
        self.register_buffer("weight", torch.as_tensor(weight, dtype=torch.float32).clone())
        self.register_buffer("bias", torch.as_tensor(bias, dtype=torch.float32).clone())

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return torch.softmax(z * self.weight + self.bias, dim=-1)


class IsotonicMap(nn.Module):
    """Per-class isotonic regression (Zadrozny & Elkan 2002, one-vs-rest) on ``p = softmax(z)``, normalised:
    ``q_k = max(f_k(p_k), EPS)``, output ``q / sum_k q_k``.

    ``f_k`` is the piecewise-linear interpolation through knots ``(x[k, j], y[k, j])`` (``x`` non-decreasing,
    constant beyond the first and last knot), written as ``y[k, 0] + sum_j slope_kj * (clamp(p, x_j, x_j+1)
    - x_j)`` so that it is elementwise arithmetic only and exports to pt2 and ONNX. Classes with fewer knots
    are padded by repeating their last knot (zero-width segments add nothing). Computed in float64: adjacent
    knots of an isotonic fit can be very close, and a steep segment would amplify float32 rounding."""

    kind = "isotonic"

    def __init__(self, knots_x: torch.Tensor, knots_y: torch.Tensor):
        super().__init__()
        kx = torch.as_tensor(knots_x, dtype=torch.float64)
        ky = torch.as_tensor(knots_y, dtype=torch.float64)
        if kx.ndim != 2 or kx.shape != ky.shape or kx.shape[1] < 1:
            raise ValueError(
                f"isotonic knots must be two equal (C, K) arrays, got {tuple(kx.shape)}, {tuple(ky.shape)}"
            )
        self.register_buffer("knots_x", kx.clone())
        self.register_buffer("knots_y", ky.clone())

    def scores(self, p: torch.Tensor) -> torch.Tensor:
        """``f_k(p_k)`` per class (before the floor and normalisation)."""
        lo, hi = self.knots_x[:, :-1], self.knots_x[:, 1:]
        width = hi - lo
        slope = torch.where(width > 0, (self.knots_y[:, 1:] - self.knots_y[:, :-1]) / width.clamp(min=1e-12), 0.0)
        pc = p.unsqueeze(-1)  # (N, C, 1) against (C, K-1)
        ramps = torch.minimum(torch.maximum(pc, lo), hi) - lo
        return self.knots_y[:, 0] + (slope * ramps).sum(dim=-1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        q = self.scores(torch.softmax(z.to(torch.float64), dim=-1)).clamp(min=EPS)
        return (q / q.sum(dim=-1, keepdim=True)).to(z.dtype)


def fit_vector_scaling(logits: np.ndarray, labels: np.ndarray, max_iter: int = 200) -> VectorScaling:
    """``w, b`` minimising the NLL of ``softmax(w * z + b)`` on ``(logits, labels)`` by L-BFGS from ``w = 1,
    b = 0`` (so the result is never worse in NLL than the temperature it starts from)."""
    z = as_tensor(logits)
    y = as_tensor(labels, torch.long)
    c = z.shape[1]
    w = torch.ones(c, dtype=torch.float64, requires_grad=True)
    b = torch.zeros(c, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=0.5, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(z * w + b, y)
        loss.backward()
        return loss

    start = float(F.cross_entropy(z, y))
    opt.step(closure)
    with torch.no_grad():
        if not float(F.cross_entropy(z * w + b, y)) <= start:  # L-BFGS diverged: keep the identity
            w.fill_(1.0)
            b.zero_()
    return VectorScaling(w.detach(), b.detach())


def _pav(x: np.ndarray, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Knots of the isotonic (non-decreasing) least-squares fit of targets ``t`` on ``x``: scikit-learn's
    ``IsotonicRegression`` (pool-adjacent-violators), its thresholds as ``(x, y)``."""
    from sklearn.isotonic import IsotonicRegression

    iso = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip").fit(x, t)
    return np.asarray(iso.X_thresholds_, np.float64), np.asarray(iso.y_thresholds_, np.float64)


def spread_knots(x: np.ndarray, y: np.ndarray, min_gap: float) -> tuple[np.ndarray, np.ndarray]:
    """Drop knots closer than ``min_gap`` to the previous kept one (the last knot is always kept, replacing a
    too-close predecessor other than the first). The curve stays monotone and its slope is at most
    ``1 / min_gap``, so float32 rounding of the probabilities (~1e-7) moves the output by less than ~1e-5: the
    ONNX and pt2 copies agree with the module within the artifact check's tolerance."""
    keep = [0]
    for j in range(1, len(x)):
        if x[j] - x[keep[-1]] >= min_gap:
            keep.append(j)
    if keep[-1] != len(x) - 1:
        keep[-1 if len(keep) > 1 else len(keep) :] = [len(x) - 1]
    return x[keep], y[keep]


def fit_isotonic(logits: np.ndarray, labels: np.ndarray, min_gap: float = 0.02) -> IsotonicMap:
    """One isotonic regression per class of ``1[y = k]`` on ``softmax(z)_k`` (one-vs-rest), its knots at least
    ``min_gap`` apart (:func:`spread_knots`; 0 keeps scikit-learn's thresholds exactly), as an
    :class:`IsotonicMap`."""
    p = torch.softmax(as_tensor(logits), dim=1).numpy()
    y = np.asarray(labels)
    knots = [spread_knots(*_pav(p[:, k], (y == k).astype(np.float64)), min_gap) for k in range(p.shape[1])]
    width = max(len(kx) for kx, _ in knots)
    kx = np.stack([np.pad(a, (0, width - len(a)), mode="edge") for a, _ in knots])
    ky = np.stack([np.pad(b, (0, width - len(b)), mode="edge") for _, b in knots])
    return IsotonicMap(torch.from_numpy(kx), torch.from_numpy(ky))


MAP_FITTERS = {"vector": fit_vector_scaling, "isotonic": fit_isotonic}


def fit_map(kind: str, logits: np.ndarray, labels: np.ndarray) -> nn.Module | None:
    """The ``kind`` map fitted on temperature-scaled ``logits`` (``None`` for ``temperature``: nothing more)."""
    return None if kind == "temperature" else MAP_FITTERS[kind](logits, labels)


def map_probabilities(calibration_map: nn.Module | None, logits: np.ndarray) -> np.ndarray:
    """``softmax(z)`` (no map) or ``calibration_map(z)`` of temperature-scaled ``logits``, float64."""
    z = as_tensor(logits, torch.float32)
    with torch.no_grad():
        p = torch.softmax(z, dim=1) if calibration_map is None else calibration_map(z)
    return p.to(torch.float64).numpy()


def probability_metrics(probs: np.ndarray, labels: np.ndarray, n_bins: int = 15) -> CalibrationMetrics:
    """:func:`calibration_metrics` of probabilities (rows summing to 1): ``softmax(log p) = p``."""
    return calibration_metrics(np.log(np.clip(np.asarray(probs, np.float64), 1e-12, 1.0)), labels, 1.0, n_bins)


@dataclass(frozen=True)
class MapChoice:
    """The map chosen by cross-fitting, its out-of-fold figures per candidate, and why."""

    kind: str
    out_of_fold: dict[str, dict[str, float]]
    reason: str


def select_map(
    logits: np.ndarray,
    labels: np.ndarray,
    kinds: list[str],
    cfg_t: tuple[float, float, int],
    folds: int = 5,
    select_by: str = "ece",
    n_bins: int = 15,
    seed: int = 0,
) -> MapChoice:
    """Choose among ``temperature`` and ``kinds`` by ``folds``-fold cross-fitting on the validation rows: for
    each fold, the temperature (``cfg_t`` = ``(t_min, t_max, max_iter)``) and then each map on the
    temperature-scaled logits are fitted on the other folds and score the held-out one, so every row is scored
    by maps fitted without it. ``select_by="nll"``: the lowest out-of-fold NLL wins. ``select_by="ece"``: the
    lowest out-of-fold ECE among the candidates whose out-of-fold NLL is no worse than the temperature's (NLL
    is a proper scoring rule; ECE alone rewards a map that is right on average per bin and confidently wrong
    per row). The temperature wins ties, so a map is served only when it beats the temperature out of
    sample."""
    z = np.asarray(logits, np.float64)
    y = np.asarray(labels)
    n = len(y)
    if n < 2 * folds:
        raise ValueError(f"select_map: {n} validation rows are too few for {folds}-fold cross-fitting")
    fold_of = np.random.default_rng(seed).permutation(n) % folds
    candidates = ["temperature", *kinds]
    oof = {k: np.zeros((n, z.shape[1])) for k in candidates}
    for f in range(folds):
        fit, held = fold_of != f, fold_of == f
        t = fit_temperature(z[fit], y[fit], *cfg_t)
        for kind in candidates:
            oof[kind][held] = map_probabilities(fit_map(kind, z[fit] / t, y[fit]), z[held] / t)
    scores = {k: probability_metrics(p, y, n_bins) for k, p in oof.items()}
    figures = {k: {"ece": m.ece, "nll": m.nll, "accuracy": m.accuracy} for k, m in scores.items()}
    eligible = [k for k in candidates if select_by == "nll" or figures[k]["nll"] <= figures["temperature"]["nll"]]
    best = min(eligible, key=lambda k: (figures[k][select_by], k != "temperature"))
    summary = ", ".join(f"{k} {figures[k]['ece']:.4f}/{figures[k]['nll']:.4f}" for k in candidates)
    rule = "lowest nll" if select_by == "nll" else "lowest ece with nll no worse than temperature's"
    reason = f"{folds}-fold cross-fitted ECE/NLL on {n} validation rows: {summary}; {rule}: {best}"
    return MapChoice(best, figures, reason)
