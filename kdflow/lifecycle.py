"""Library side of the lifecycle flows: time windows, turning logged traffic into datasets, recalibration.

Everything here is plain computation on arrays and frames; the flows in ``flows/`` (drift check, retrain,
recalibration) compose it with the registry and the inference logs.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta, timezone

import numpy as np
import pandas as pd

from kdflow.calibration import calibration_metrics, fit_temperature
from kdflow.config import CalibrationConfig
from kdflow.data import to_frame


def parse_as_of(as_of: str | datetime | None) -> datetime:
    """The instant a check or retrain is "run at" (aware UTC). ``None``: now. Strings are ISO 8601 (a bare
    date means its midnight UTC); naive values are taken as UTC. Flows take it as a parameter so a backtest
    can replay days."""
    if as_of is None or as_of == "":
        return datetime.now(timezone.utc)
    value = as_of if isinstance(as_of, datetime) else datetime.fromisoformat(str(as_of))
    return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)


def window_bounds(as_of: datetime, days: int) -> tuple[datetime, datetime]:
    """``[as_of - days, as_of)``: the last ``days`` days before ``as_of``."""
    return as_of - timedelta(days=days), as_of


def ids_from_request_ids(request_ids: np.ndarray) -> np.ndarray:
    """Stable int64 ids for logged requests (first 8 bytes of SHA-256, 63 bits), so logged traffic can be a
    dataset split whose logits are stored and joined by id like any other."""
    return np.array([int.from_bytes(hashlib.sha256(r.encode()).digest()[:8], "big") >> 1 for r in request_ids],
                    dtype=np.int64)


def traffic_frames(request_ids: np.ndarray, x: np.ndarray, labels: np.ndarray, max_rows: int,
                   seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Recent traffic in kdflow's dataset layout: (inputs, unlabeled — at most ``max_rows``, a deterministic
    sample) and (the rows whose label is known, ``label >= 0``)."""
    ids = ids_from_request_ids(np.asarray(request_ids, dtype=str))
    keep = np.arange(len(ids))
    if len(keep) > max_rows:
        keep = np.sort(np.random.default_rng(seed).choice(len(ids), size=max_rows, replace=False))
    labeled = np.flatnonzero(np.asarray(labels) >= 0)
    return to_frame(ids[keep], x[keep]), to_frame(ids[labeled], x[labeled], np.asarray(labels)[labeled])


@dataclass
class Recalibration:
    """A temperature refit on a labeled production window, judged on a held-out half of it."""

    current_temperature: float
    new_temperature: float
    fit_rows: int
    eval_rows: int
    ece_before: float
    ece_after: float
    nll_before: float
    nll_after: float
    accuracy: float
    improved: bool
    reason: str

    def as_dict(self) -> dict[str, float | int | bool | str]:
        """Plain dict for MLflow and reports."""
        return asdict(self)


def refit_temperature(logits: np.ndarray, labels: np.ndarray, current_temperature: float, cfg: CalibrationConfig,
                      min_improvement: float = 0.0, seed: int = 0) -> Recalibration:
    """Refit the temperature by NLL (Guo et al. 2017) on a random half of the window and compare ECE at the
    current and the new temperature on the other half (fitting and judging on the same rows would flatter the
    new temperature). ``improved`` iff ``ECE_after < ECE_before - min_improvement``."""
    n = len(labels)
    if n < 4:
        raise ValueError(f"refit_temperature: {n} labeled rows are too few to fit and evaluate")
    perm = np.random.default_rng(seed).permutation(n)
    fit, held = perm[: n // 2], perm[n // 2:]
    new_t = fit_temperature(logits[fit], labels[fit], cfg.t_min, cfg.t_max, cfg.max_iter)
    before = calibration_metrics(logits[held], labels[held], current_temperature, cfg.n_bins)
    after = calibration_metrics(logits[held], labels[held], new_t, cfg.n_bins)
    improved = after.ece < before.ece - min_improvement
    reason = (f"held-out ECE {before.ece:.4f} at T={current_temperature:.4f} -> {after.ece:.4f} at T={new_t:.4f} "
              f"({'improves' if improved else 'does not improve'} by more than {min_improvement:g})")
    return Recalibration(float(current_temperature), float(new_t), len(fit), len(held), before.ece, after.ece,
                         before.nll, after.nll, before.accuracy, bool(improved), reason)
