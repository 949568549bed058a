"""Library side of the lifecycle flows: time windows, turning logged traffic into datasets, recalibration.

Everything here is plain computation on arrays and frames: the temperature refit and the rule that decides
whether a refit is registered (:func:`judge_refit`). :mod:`kdflow.monitor` composes it with the registry and
the inference logs for the flows in ``flows/`` (drift check, retrain, recalibration).
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from scipy.special import softmax

from kdflow.calibration import calibration_metrics, ece_improvement_confidence, fit_temperature
from kdflow.config import CalibrationConfig, CascadeConfig, ConfigError, RecalibrationTrigger, SLAConfig
from kdflow.data import to_frame
from kdflow.selective import CascadeFit, cascade_target, fit_cascade
from kdflow.sla import SLACheck, check_slas, sla_exception

if TYPE_CHECKING:
    from kdflow.models import CalibratedClassifier

log = logging.getLogger(__name__)


def parse_as_of(as_of: str | datetime | None) -> datetime:
    """The instant a check or retrain is "run at" (aware UTC). ``None``: now. Strings are ISO 8601 (a bare
    date means its midnight UTC); naive values are taken as UTC. Flows take it as a parameter so a backtest
    can replay days."""
    if as_of is None or as_of == "":
        return datetime.now(timezone.utc)
    try:
        value = as_of if isinstance(as_of, datetime) else datetime.fromisoformat(str(as_of))
    except ValueError as exc:
        raise ConfigError(
            f"not an ISO 8601 date or date-time: {as_of!r} (e.g. 2026-03-01 or 2026-03-01T03:00:00+00:00)"
        ) from exc
    return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)


def window_bounds(as_of: datetime, days: int) -> tuple[datetime, datetime]:
    """``[as_of - days, as_of)``: the last ``days`` days before ``as_of``."""
    return as_of - timedelta(days=days), as_of


def ids_from_request_ids(request_ids: np.ndarray) -> np.ndarray:
    """Stable int64 ids for logged requests (first 8 bytes of SHA-256, 63 bits), so logged traffic can be a
    dataset split whose logits are stored and joined by id like any other."""
    return np.array(
        [int.from_bytes(hashlib.sha256(r.encode()).digest()[:8], "big") >> 1 for r in request_ids], dtype=np.int64
    )


def hash_fraction(ids: np.ndarray, seed: int) -> np.ndarray:
    """A uniform number in [0, 1) per id: the first 8 bytes of SHA-256(``"<seed>:<id>"``) / 2**64. The same id
    lands in the same place for the same seed, whatever window it arrives in."""
    digests = (hashlib.sha256(f"{seed}:{i}".encode()).digest()[:8] for i in np.asarray(ids).tolist())
    return np.fromiter((int.from_bytes(d, "big") / 2.0**64 for d in digests), dtype=np.float64, count=len(ids))


def split_selection(labeled: pd.DataFrame, fraction: float, seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Recent labeled rows split by :func:`hash_fraction` of their ``id``: (selection — ``u < fraction``, what a
    retrain picks its best epoch and fits its temperature on — and gate — the rest, what the candidate is
    compared with the champion on). Disjoint, and the same row lands on the same side in every window."""
    u = hash_fraction(labeled["id"].to_numpy(), seed)
    pick = u < fraction
    return labeled[pick].reset_index(drop=True), labeled[~pick].reset_index(drop=True)


def traffic_frames(
    request_ids: np.ndarray, x: np.ndarray, labels: np.ndarray, max_rows: int, seed: int = 0
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Recent traffic in kdflow's dataset layout: (inputs, unlabeled — at most ``max_rows``, a deterministic
    sample) and (the rows whose label is known, ``label >= 0``)."""
    ids = ids_from_request_ids(np.asarray(request_ids, dtype=str))
    keep = np.arange(len(ids))
    if len(keep) > max_rows:
        keep = np.sort(np.random.default_rng(seed).choice(len(ids), size=max_rows, replace=False))
    labeled = np.flatnonzero(np.asarray(labels) >= 0)
    return to_frame(ids[keep], x[keep]), to_frame(ids[labeled], x[labeled], np.asarray(labels)[labeled])


def recalibration_window(as_of: datetime, days: int, *not_before: datetime | None) -> tuple[datetime, datetime]:
    """``[start, as_of)``: the last ``days`` days, starting no earlier than any bound in ``not_before`` (None:
    no bound) — the start of the traffic the champion's reference profile describes, and the first window of
    the drift episode that asked for the recalibration. A temperature fitted across a shift fits neither side
    of it, so traffic from before the current regime is left out."""
    start = as_of - timedelta(days=days)
    for bound in not_before:
        if bound is not None and bound > start:
            start = bound
    if start >= as_of:
        raise ValueError(f"recalibration window [{start.isoformat()}, {as_of.isoformat()}) is empty")
    return start, as_of


@dataclass
class Recalibration:
    """A temperature refit on a labeled production window, judged out of sample by 2-fold cross-fitting."""

    current_temperature: float
    new_temperature: float
    ece_before: float
    ece_after: float
    nll_before: float
    nll_after: float
    accuracy: float
    improved: bool
    reason: str
    fold_temperatures: tuple[float, float] = (float("nan"), float("nan"))
    improvement_confidence: float = float("nan")  # share of bootstrap resamples in which ECE improved

    def as_dict(self) -> dict[str, Any]:
        """Plain dict for MLflow and reports."""
        return asdict(self)


def refit_temperature(
    logits: np.ndarray,
    labels: np.ndarray,
    current_temperature: float,
    cfg: CalibrationConfig,
    min_improvement: float = 0.0,
    min_confidence: float = 0.0,
    seed: int = 0,
    current_probs: np.ndarray | None = None,
) -> Recalibration:
    """Refit the temperature by NLL (Guo et al. 2017) on the whole window, and judge the refit out of sample.

    2-fold cross-fitting: the rows are split at random into halves A and B; A is scored at the temperature
    fitted on B and B at the one fitted on A. ECE and NLL of these out-of-fold probabilities (every row, none
    scored by a temperature fitted on it) are compared with the current temperature's on the same rows.
    Fitting and judging on the same rows would flatter the refit; judging on one held-out half only would
    leave ECE, whose sampling noise grows as 1/sqrt(rows), on half the rows.

    ``improved`` iff ``ECE_after < ECE_before - min_improvement`` and ECE is lower in at least ``min_confidence``
    of paired bootstrap resamples of the window (:func:`kdflow.calibration.ece_improvement_confidence`): a
    gain within the window's noise does not replace the temperature in production.

    ``current_probs``: the champion's served probabilities when it serves a map after its temperature (vector
    scaling or isotonic, :mod:`kdflow.calibration`); the refit (a temperature alone) is judged against them."""
    z = np.asarray(logits, dtype=np.float64)
    y = np.asarray(labels)
    n = len(y)
    if n < 4:
        raise ValueError(f"refit_temperature: {n} labeled rows are too few to fit and evaluate")
    perm = np.random.default_rng(seed).permutation(n)
    halves = (perm[: n // 2], perm[n // 2 :])
    out_of_fold = np.empty_like(z)
    fold_t = []
    for fit, held in (halves, halves[::-1]):
        t = fit_temperature(z[fit], y[fit], cfg.t_min, cfg.t_max, cfg.max_iter)
        out_of_fold[held] = z[held] / t
        fold_t.append(float(t))
    new_t = fit_temperature(z, y, cfg.t_min, cfg.t_max, cfg.max_iter)
    current = softmax(z / current_temperature, axis=1) if current_probs is None else np.asarray(current_probs)
    before = calibration_metrics(np.log(np.clip(current, 1e-12, 1.0)), y, 1.0, cfg.n_bins)
    after = calibration_metrics(out_of_fold, y, 1.0, cfg.n_bins)
    confidence = ece_improvement_confidence(current, softmax(out_of_fold, axis=1), y, cfg.n_bins, seed=seed)
    ece_better = after.ece < before.ece - min_improvement
    improved = ece_better and confidence >= min_confidence
    verdict = (
        "improves" if improved else "does not improve" if not ece_better else "the gain is within the window's noise"
    )
    reason = (
        f"ECE {before.ece:.4f} at T={current_temperature:.4f} -> {after.ece:.4f} out of fold at T={new_t:.4f} "
        f"on {n} labeled rows (lower in {confidence:.0%} of bootstrap resamples): {verdict} (needs a gain "
        f"> {min_improvement:g} in at least {min_confidence:.0%})"
    )
    return Recalibration(
        float(current_temperature),
        float(new_t),
        before.ece,
        after.ece,
        before.nll,
        after.nll,
        before.accuracy,
        bool(improved),
        reason,
        (fold_t[0], fold_t[1]),
        confidence,
    )


@dataclass
class RecalibrationOutcome:
    """What one recalibration of a champion found and did: the window it looked at, the refit (None when it
    could not decide), the SLA checks of the recalibrated model, whether to register it and why; the flow adds
    the registered ``version`` and the ``promotion``."""

    parent_version: str
    trigger: RecalibrationTrigger
    start: datetime
    end: datetime
    rows: int  # every logged row in the window
    labeled_rows: int
    reason: str = ""
    result: Recalibration | None = None
    sla_checks: list[SLACheck] | None = None
    register: bool = False
    version: str | None = None
    promotion: dict[str, Any] | None = None
    served: CalibratedClassifier | None = field(default=None, repr=False)  # to register: same weights, new T
    tags: dict[str, Any] = field(default_factory=dict)  # the version tags to register it with
    cascade: CascadeFit | None = field(default=None, repr=False)  # the threshold refitted at the new T
    cascade_reason: str | None = None  # why it was (not) refitted; None: serving.cascade disabled
    sla_alert: str | None = None  # registered although it still misses an SLA the champion missed worse

    def as_dict(self) -> dict[str, Any]:
        """The JSON-able outcome the recalibration flow returns and records (``recalibration.json``)."""
        out: dict[str, Any] = {
            "parent_version": self.parent_version,
            "trigger": self.trigger,
            "window": [self.start.isoformat(), self.end.isoformat()],
            "rows": self.rows,
            "labeled_rows": self.labeled_rows,
            "version": self.version,
            "result": self.result.as_dict() if self.result else None,
            "reason": self.reason,
        }
        if self.sla_checks is not None:
            out["sla_checks"] = [c.as_dict() for c in self.sla_checks]
        if self.promotion is not None:
            out["promotion"] = self.promotion
        if self.sla_alert is not None:
            out["sla_alert"] = self.sla_alert
        if self.cascade_reason is not None:
            out["cascade"] = {**(self.cascade.summary() if self.cascade else {}), "reason": self.cascade_reason}
        return out

    def metrics(self) -> dict[str, float]:
        """MLflow metrics: row counts, whether a version was registered, and every number of the refit."""
        result = self.result.as_dict() if self.result else {}
        return {
            "labeled_rows": float(self.labeled_rows),
            "registered": float(bool(self.version)),
            **{k: float(v) for k, v in result.items() if isinstance(v, (int, float))},
            **{f"cascade_{k}": float(v) for k, v in (self.cascade.summary() if self.cascade else {}).items()},
        }

    def markdown(self, name: str, as_of: datetime) -> str:
        """A short markdown summary: what changed, or why nothing did."""
        return (
            f"# Recalibration of {name} v{self.parent_version} at {as_of.isoformat()}\n\n{self.reason}\n\n"
            f"New version: {self.version or 'none'}"
        )


def judge_refit(
    outcome: RecalibrationOutcome, result: Recalibration, evaluation: dict[str, Any], sla: SLAConfig
) -> RecalibrationOutcome:
    """Whether to register the refit: only if its out-of-fold ECE improved (``result.improved``) and every SLA
    still passes on the recalibrated model — the parent's ``evaluation`` (accuracy, gap, flip rate, latency,
    size: unchanged by a temperature) with the new ECE and temperature. A refit that misses SLAs the champion
    (the same evaluation at the current ECE on the same rows) misses too, strictly better on each and worse on
    none, is registered with an alert (:func:`kdflow.sla.sla_exception`; ``outcome.sla_alert``, logged as a
    warning): it replaces a worse champion. Returns ``outcome`` with the refit, the SLA checks, the verdict
    and why."""
    checks = check_slas(
        {**evaluation, "student_ece": result.ece_after, "served_temperature": result.new_temperature}, sla
    )
    failed = [c.name for c in checks if not c.passed]
    alert = None
    if result.improved and failed:
        current = {**evaluation, "student_ece": result.ece_before, "served_temperature": result.current_temperature}
        alert = sla_exception(checks, check_slas(current, sla))
    if not result.improved:
        register, reason = False, f"nothing changed: {result.reason}"
    elif failed and alert is None:
        register, reason = False, f"nothing changed: the recalibrated model would fail SLA(s) {', '.join(failed)}"
    elif alert is not None:
        register, reason = True, f"recalibrated: {result.reason}; {alert}"
        log.warning("%s", alert)
    else:
        register, reason = True, f"recalibrated: {result.reason}; every SLA passes"
    return replace(outcome, result=result, sla_checks=checks, register=register, reason=reason, sla_alert=alert)


def refit_cascade(
    logits: np.ndarray,
    labels: np.ndarray,
    teacher_logits: np.ndarray | None,
    temperature: float,
    cfg: CascadeConfig,
    min_rows: int,
) -> tuple[CascadeFit | None, str]:
    """Refit the confidence-fallback threshold (:func:`kdflow.selective.fit_cascade`) at ``temperature`` on the
    labeled rows that also carry shadow teacher logits (non-NaN rows of ``teacher_logits``): student
    probabilities ``softmax(z / T)``, teacher predictions ``argmax`` of its logits, target
    :func:`kdflow.selective.cascade_target` with the teacher's accuracy on those rows. Fewer than ``min_rows``
    such rows: ``None`` and why (the caller keeps the previous threshold)."""
    if teacher_logits is None:
        shadow = np.zeros(len(labels), dtype=bool)
    else:
        shadow = ~np.isnan(np.asarray(teacher_logits, dtype=np.float64)).any(axis=1)
    n = int(shadow.sum())
    if n < min_rows:
        return None, (
            f"threshold not refitted: {n} labeled rows with shadow teacher logits in the window, fewer than "
            f"drift.min_shadow_rows={min_rows}"
        )
    y = np.asarray(labels)[shadow]
    teacher_pred = np.asarray(teacher_logits)[shadow].argmax(axis=1)
    target = cascade_target(cfg.target_accuracy, cfg.max_accuracy_loss, float((teacher_pred == y).mean()))
    fit = fit_cascade(softmax(np.asarray(logits, np.float64)[shadow] / temperature, axis=1), teacher_pred, y, target)
    return fit, f"threshold refitted at T={temperature:.4f} on {n} labeled rows with shadow teacher logits"
