"""Two model versions side by side on the same window of logged traffic (``kdflow models compare``).

Every logged row carries the version that answered it (``model_version``), so under a champion/challenger split
one window of inference logs holds both versions' traffic: different requests over the same period. Per version:
rows served; accuracy and ECE of its calibrated probabilities on the labeled rows (late labels joined); flip
rate against the shadow teacher on the shadow-scored rows; server latency p50/p95 from ``latency_ms``; deferral
rate (the share the teacher answered) on rows that record ``answered_by``. Each figure carries the count it rests
on and is ``n/a`` with the reason below ``min_rows`` rows. The one verdict is on accuracy, and only when the
interval of the difference excludes 0.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any, Callable

import numpy as np
from scipy.stats import norm

from kdflow import metrics as eval_metrics
from kdflow.calibration import expected_calibration_error
from kdflow.drift import deferral_rate
from kdflow.inference_logs import LogWindow
from kdflow.profile import ReferenceProfile


@dataclass(frozen=True)
class Figure:
    """One figure of one version: its value (None: not computed), the rows it rests on, and why it is n/a."""

    value: float | None
    n: int
    reason: str = ""

    def text(self, digits: int = 4) -> str:
        """``0.9125 (n=400)``, or ``n/a (reason)``."""
        return f"{self.value:.{digits}f} (n={self.n})" if self.value is not None else f"n/a ({self.reason})"


def _figure(n: int, min_rows: int, rows: str, compute: Callable[[], float]) -> Figure:
    """``compute()`` on ``n`` rows of kind ``rows``, or n/a when ``n < min_rows``."""
    if n < min_rows:
        return Figure(None, n, f"{n} {rows}, fewer than {min_rows}")
    return Figure(float(compute()), n)


@dataclass(frozen=True)
class VersionFigures:
    """What one version did in the window, next to its reference (validation) accuracy and deferral rate."""

    version: str
    role: str  # "champion", "challenger" or ""
    rows: int
    accuracy: Figure
    ece: Figure
    flip_rate: Figure
    latency_p50_ms: Figure
    latency_p95_ms: Figure
    deferral_rate: Figure
    reference_accuracy: float | None = None
    reference_deferral_rate: float | None = None

    @property
    def label(self) -> str:
        """``v3 (challenger)``."""
        return f"v{self.version}" + (f" ({self.role})" if self.role else "")


def version_figures(
    window: LogWindow,
    version: str,
    min_rows: int,
    n_bins: int = 15,
    role: str = "",
    profile: ReferenceProfile | None = None,
    reference_deferral_rate: float | None = None,
) -> VersionFigures:
    """The figures of ``version``'s rows in ``window``: accuracy and ECE (``n_bins`` equal-width bins,
    :func:`kdflow.calibration.expected_calibration_error`) of the logged probabilities on labeled rows; flip rate
    (student vs teacher arg-max) on shadow rows; p50/p95 of ``latency_ms`` (linear interpolation) on measured
    rows; deferral rate (:func:`kdflow.drift.deferral_rate`) when some row records ``answered_by``. A figure on
    fewer than ``min_rows`` rows is n/a."""
    rows = window.model_versions == str(version)
    probs = window.probs[rows].astype(np.float64)
    labels = window.labels[rows]
    labeled = labels >= 0
    shadow = window.shadow_mask[rows]
    latency = window.latency_ms[rows]
    latency = latency[~np.isnan(latency)]
    answered = window.answered_by[rows]
    n_labeled, n_shadow, n_latency = int(labeled.sum()), int(shadow.sum()), len(latency)
    if deferral_rate(answered) is None:
        deferral = Figure(None, 0, "no row records answered_by")
    else:
        deferral = _figure(int(rows.sum()), min_rows, "rows", lambda: deferral_rate(answered))
    return VersionFigures(
        version=str(version),
        role=role,
        rows=int(rows.sum()),
        accuracy=_figure(
            n_labeled, min_rows, "labeled rows", lambda: eval_metrics.accuracy(probs[labeled], labels[labeled])
        ),
        ece=_figure(
            n_labeled,
            min_rows,
            "labeled rows",
            lambda: expected_calibration_error(probs[labeled], labels[labeled], n_bins),
        ),
        flip_rate=_figure(
            n_shadow,
            min_rows,
            "shadow rows",
            lambda: eval_metrics.flip_rate(probs[shadow], window.teacher_logits[rows][shadow]),
        ),
        latency_p50_ms=_figure(n_latency, min_rows, "timed rows", lambda: np.percentile(latency, 50)),
        latency_p95_ms=_figure(n_latency, min_rows, "timed rows", lambda: np.percentile(latency, 95)),
        deferral_rate=deferral,
        reference_accuracy=None if profile is None else profile.accuracy,
        reference_deferral_rate=reference_deferral_rate,
    )


@dataclass(frozen=True)
class AccuracyDifference:
    """``b``'s accuracy minus ``a``'s, with its two-sided interval."""

    difference: float
    low: float
    high: float
    confidence: float


def accuracy_difference(a: Figure, b: Figure, confidence: float = 0.95) -> AccuracyDifference | None:
    """``p_b - p_a`` with the Agresti-Caffo interval (Agresti & Caffo 2000: add one success and one failure to
    each sample, then Wald): ``p~ = (x + 1) / (n + 2)``, ``(p~_b - p~_a) +- z sqrt(sum p~ (1 - p~) / (n + 2))``,
    ``z`` the normal ``(1 + confidence) / 2`` quantile. None unless both accuracies were computed."""
    if a.value is None or b.value is None:
        return None
    adjusted = [((f.value * f.n + 1) / (f.n + 2), f.n + 2) for f in (a, b)]
    (pa, na), (pb, nb) = adjusted
    half = norm.ppf((1 + confidence) / 2) * math.sqrt(pa * (1 - pa) / na + pb * (1 - pb) / nb)
    return AccuracyDifference(b.value - a.value, pb - pa - half, pb - pa + half, confidence)


def verdict(a: VersionFigures, b: VersionFigures, diff: AccuracyDifference | None) -> str:
    """One line: which version is more accurate, when the interval of the difference excludes 0; otherwise
    ``no verdict: ...`` with why."""
    if diff is None:
        missing = [f"{v.label}: accuracy {v.accuracy.text()}" for v in (a, b) if v.accuracy.value is None]
        return "no verdict: " + "; ".join(missing)
    interval = (
        f"{diff.confidence:.0%} interval {100 * diff.low:+.2f} to {100 * diff.high:+.2f} points; "
        f"{a.accuracy.n} and {b.accuracy.n} labeled rows"
    )
    if diff.low <= 0 <= diff.high:
        return f"no verdict: accuracy {b.label} minus {a.label} {100 * diff.difference:+.2f} points ({interval})"
    better, worse = (b, a) if diff.low > 0 else (a, b)
    return (
        f"{better.label} is more accurate than {worse.label}: {100 * abs(diff.difference):.2f} points "
        f"({b.label} minus {a.label} {100 * diff.difference:+.2f}; {interval})"
    )


@dataclass(frozen=True)
class Comparison:
    """Two versions' figures on one window of logs, the accuracy difference (``b - a``) and the verdict."""

    root: str
    start: datetime
    end: datetime
    missing_dates: list[str]
    a: VersionFigures
    b: VersionFigures
    accuracy_difference: AccuracyDifference | None
    verdict: str

    def as_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict (times as ISO strings)."""
        out = asdict(self)
        out.update(start=self.start.isoformat(), end=self.end.isoformat())
        return out

    def table(self) -> str:
        """The comparison as an aligned text table, with the window and the verdict."""
        rows = [
            ("", self.a.label, self.b.label),
            ("rows served", str(self.a.rows), str(self.b.rows)),
            ("accuracy", self.a.accuracy.text(), self.b.accuracy.text()),
            ("  reference accuracy", _plain(self.a.reference_accuracy), _plain(self.b.reference_accuracy)),
            ("ECE", self.a.ece.text(), self.b.ece.text()),
            ("flip rate vs teacher", self.a.flip_rate.text(), self.b.flip_rate.text()),
            ("latency p50 (ms)", self.a.latency_p50_ms.text(2), self.b.latency_p50_ms.text(2)),
            ("latency p95 (ms)", self.a.latency_p95_ms.text(2), self.b.latency_p95_ms.text(2)),
            ("deferral rate", self.a.deferral_rate.text(), self.b.deferral_rate.text()),
            (
                "  validation deferral rate",
                _plain(self.a.reference_deferral_rate),
                _plain(self.b.reference_deferral_rate),
            ),
        ]
        w0, w1 = (max(len(r[i]) for r in rows) for i in (0, 1))
        lines = [f"logs {self.root} [{self.start.isoformat()}, {self.end.isoformat()})"]
        if self.missing_dates:
            lines.append(f"missing log partitions: {', '.join(self.missing_dates)}")
        lines += [f"{r[0]:<{w0}}  {r[1]:<{w1}}  {r[2]}".rstrip() for r in rows]
        return "\n".join([*lines, f"verdict: {self.verdict}"])


def _plain(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def compare_versions(
    window: LogWindow,
    a: VersionFigures,
    b: VersionFigures,
    confidence: float = 0.95,
) -> Comparison:
    """The comparison of ``a`` and ``b`` (each from :func:`version_figures` on ``window``)."""
    diff = accuracy_difference(a.accuracy, b.accuracy, confidence)
    return Comparison(
        window.root,
        window.start,
        window.end,
        [d.isoformat() for d in window.missing_dates],
        a,
        b,
        diff,
        verdict(a, b, diff),
    )
