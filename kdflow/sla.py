"""The SLA gate: thresholds from config applied to evaluation metrics, and the champion comparison."""

from __future__ import annotations

import operator
from dataclasses import asdict, dataclass

from kdflow.config import SLAConfig

# (metric key in the evaluation, SLA field, comparison the value must satisfy)
CHECKS: list[tuple[str, str, str]] = [
    ("student_accuracy", "min_accuracy", ">="),
    ("teacher_gap", "max_teacher_gap", "<="),
    ("student_ece", "max_ece", "<="),
    ("flip_rate", "max_flip_rate", "<="),
    ("student_latency_p95_ms", "max_latency_p95_ms", "<="),
    ("size_ratio", "max_size_ratio", "<="),
]
_OPS = {">=": operator.ge, "<=": operator.le}


@dataclass(frozen=True)
class SLACheck:
    """One threshold, the measured value and whether it passed."""

    name: str
    metric: str
    value: float
    op: str
    threshold: float
    passed: bool

    def as_dict(self) -> dict[str, object]:
        """Plain dict for JSON reports."""
        return asdict(self)


def check_slas(metrics: dict[str, float], sla: SLAConfig) -> list[SLACheck]:
    """Apply every configured SLA threshold to ``metrics``; thresholds set to ``None`` are skipped."""
    checks = []
    for metric, field, op in CHECKS:
        threshold = getattr(sla, field)
        if threshold is None:
            continue
        if metric not in metrics:
            raise KeyError(f"SLA {field} needs metric {metric!r}, which the evaluation did not produce")
        value = float(metrics[metric])
        checks.append(SLACheck(field, metric, value, op, float(threshold), bool(_OPS[op](value, threshold))))
    return checks


@dataclass(frozen=True)
class PromotionDecision:
    """Whether a candidate becomes champion, and why."""

    promote: bool
    reason: str
    champion_version: str | None
    champion_accuracy: float | None


def decide_promotion(
    checks: list[SLACheck], candidate_accuracy: float, champion_version: str | None,
    champion_accuracy: float | None, tolerance: float,
    recent: tuple[float, float] | None = None,
) -> PromotionDecision:
    """Promote iff every SLA passed and, when a champion exists, the candidate's accuracy on the same test
    set is at least ``champion_accuracy - tolerance`` — and, when ``recent`` = (candidate, champion) accuracy
    on recent labeled production traffic is given, there too. The first model is judged on SLAs alone."""
    failed = [c.name for c in checks if not c.passed]
    if failed:
        return PromotionDecision(False, f"SLA gate failed: {', '.join(failed)}", champion_version, champion_accuracy)
    if champion_version is None or champion_accuracy is None:
        return PromotionDecision(True, "SLAs passed; no current champion", None, None)
    if candidate_accuracy + 1e-12 < champion_accuracy - tolerance:
        return PromotionDecision(
            False,
            f"worse than champion v{champion_version}: accuracy {candidate_accuracy:.4f} < "
            f"{champion_accuracy:.4f} - tolerance {tolerance}",
            champion_version, champion_accuracy,
        )
    reason = f"SLAs passed; accuracy {candidate_accuracy:.4f} vs champion v{champion_version} {champion_accuracy:.4f}"
    if recent is not None:
        cand, champ = recent
        if cand + 1e-12 < champ - tolerance:
            return PromotionDecision(
                False, f"worse than champion v{champion_version} on recent labeled traffic: accuracy {cand:.4f} < "
                       f"{champ:.4f} - tolerance {tolerance}", champion_version, champion_accuracy)
        reason += f"; on recent labeled traffic {cand:.4f} vs {champ:.4f}"
    return PromotionDecision(True, reason, champion_version, champion_accuracy)
