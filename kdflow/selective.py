"""Selective classification for the confidence-fallback cascade (Geifman & El-Yaniv 2017).

The student answers a row when its calibrated confidence ``c = max_k p_k`` is at or above a threshold ``tau``;
the teacher answers the rest. On rows sorted by decreasing confidence, keeping the top ``m`` of ``n``:

- coverage ``m / n`` (the student's share), deferral rate ``1 - m / n`` (the teacher-call share);
- selective risk ``r(m) = (1/m) * sum_{i<=m} 1[student wrong on i]`` (the student's error on what it keeps);
- system accuracy ``(sum_{i<=m} 1[student right] + sum_{i>m} 1[teacher right]) / n``;
- AURC, the area under the risk-coverage curve, ``(1/n) * sum_{m=1..n} r(m)`` (Geifman et al., "Bias-Reduced
  Uncertainty Estimation for Deep Neural Classifiers", ICLR 2019): lower is better; it does not depend on ``tau``.

:func:`fit_cascade` picks the largest coverage whose system accuracy is at or above a target. Ties in
confidence are kept together: a threshold keeps every row at or above it, so only coverages that end between
two distinct confidences are attainable.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass(frozen=True)
class CascadeFit:
    """The chosen threshold and what it gives on the data it was fitted on, plus the curves behind it.

    ``threshold``: the student answers when ``max p >= threshold`` (0: always the student; above 1: always the
    teacher). ``target_met`` is False when no coverage reaches ``target_accuracy``; the threshold is then the
    one with the highest system accuracy (the largest coverage among ties)."""

    threshold: float
    coverage: float
    deferral_rate: float
    system_accuracy: float
    student_accuracy: float
    teacher_accuracy: float
    target_accuracy: float
    target_met: bool
    aurc: float
    rows: int
    curve_coverage: list[float] = field(default_factory=list, repr=False)
    curve_risk: list[float] = field(default_factory=list, repr=False)
    curve_system_accuracy: list[float] = field(default_factory=list, repr=False)

    def tags(self) -> dict[str, Any]:
        """What a registered version records (``kdflow.cascade_*`` tags)."""
        return {
            "cascade_threshold": self.threshold,
            "cascade_coverage": self.coverage,
            "cascade_deferral_rate": self.deferral_rate,
            "cascade_system_accuracy": self.system_accuracy,
            "cascade_target_accuracy": self.target_accuracy,
            "cascade_target_met": self.target_met,
            "cascade_aurc": self.aurc,
        }

    def summary(self) -> dict[str, Any]:
        """Every scalar (no curves), for reports and MLflow metrics."""
        return {k: v for k, v in self.__dict__.items() if not k.startswith("curve_")}


def risk_coverage(confidence: np.ndarray, student_correct: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """Coverage ``m/n`` and selective risk ``r(m)`` for ``m = 1..n`` (rows by decreasing confidence, stable),
    and the AURC ``mean_m r(m)``."""
    conf = np.asarray(confidence, dtype=np.float64)
    correct = np.asarray(student_correct, dtype=bool)
    n = len(conf)
    if n == 0 or len(correct) != n:
        raise ValueError(f"need as many correctness flags as confidences (n={n}), got {len(correct)}")
    order = np.argsort(-conf, kind="stable")
    m = np.arange(1, n + 1)
    risk = np.cumsum(~correct[order]) / m
    return m / n, risk, float(risk.mean())


def fit_cascade(
    student_probs: np.ndarray, teacher_pred: np.ndarray, labels: np.ndarray, target_accuracy: float
) -> CascadeFit:
    """Choose the cascade threshold on labeled data: the largest coverage whose system accuracy is at least
    ``target_accuracy`` (see the module docstring for the formulas)."""
    probs = np.asarray(student_probs, dtype=np.float64)
    y = np.asarray(labels).astype(np.int64)
    t_pred = np.asarray(teacher_pred).astype(np.int64)
    n = len(y)
    if probs.ndim != 2 or len(probs) != n or len(t_pred) != n or n == 0:
        raise ValueError(f"student_probs (n, C), teacher_pred (n,) and labels (n,) must match; got {probs.shape}, "
                         f"{t_pred.shape}, {y.shape}")  # fmt: skip
    conf = probs.max(axis=1)
    s_ok = probs.argmax(axis=1) == y
    t_ok = t_pred == y
    coverage, risk, aurc = risk_coverage(conf, s_ok)
    order = np.argsort(-conf, kind="stable")
    sorted_conf = conf[order]
    # system accuracy when the top m rows go to the student (m = 0..n)
    s_kept = np.concatenate([[0], np.cumsum(s_ok[order])])
    t_rest = np.concatenate([[0], np.cumsum(t_ok[order][::-1])])[::-1]
    system = (s_kept + t_rest) / n
    # attainable m: 0, n, and every m where the next row has a strictly lower confidence
    attainable = np.zeros(n + 1, dtype=bool)
    attainable[0] = attainable[n] = True
    attainable[1:n] = sorted_conf[:-1] > sorted_conf[1:]
    candidates = np.flatnonzero(attainable)
    meets = candidates[system[candidates] >= target_accuracy - 1e-12]
    if len(meets):
        m, met = int(meets.max()), True
    else:
        best = system[candidates].max()
        m, met = int(candidates[system[candidates] >= best - 1e-12].max()), False
    if m == n:
        threshold = 0.0
    elif m == 0:
        threshold = float(np.nextafter(sorted_conf[0], np.inf))  # above every confidence: always the teacher
    else:
        threshold = float(sorted_conf[m - 1])  # keeps rows >= it; the next row is strictly lower
    return CascadeFit(
        threshold=threshold,
        coverage=m / n,
        deferral_rate=1 - m / n,
        system_accuracy=float(system[m]),
        student_accuracy=float(s_ok.mean()),
        teacher_accuracy=float(t_ok.mean()),
        target_accuracy=float(target_accuracy),
        target_met=met,
        aurc=aurc,
        rows=n,
        curve_coverage=coverage.tolist(),
        curve_risk=risk.tolist(),
        curve_system_accuracy=system[1:].tolist(),
    )


def cascade_target(target_accuracy: float | None, max_accuracy_loss: float, teacher_accuracy: float) -> float:
    """The system-accuracy target: ``target_accuracy`` when set, else ``teacher_accuracy - max_accuracy_loss``."""
    return float(target_accuracy) if target_accuracy is not None else float(teacher_accuracy) - max_accuracy_loss


def route(confidence: np.ndarray, threshold: float) -> np.ndarray:
    """True where the teacher answers: ``max p < threshold``."""
    return np.asarray(confidence) < threshold
