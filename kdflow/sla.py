"""The SLA gate: thresholds from config applied to an :class:`~kdflow.evaluation.Evaluation`, and the comparison
with the current champion on the same test set (students: :func:`gate_candidate`; teachers:
:func:`judge_teacher_model`)."""

from __future__ import annotations

import json
import logging
import operator
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from torch import nn

from kdflow import registry
from kdflow.calibration import calibration_metrics
from kdflow.config import SLAConfig, TeacherGateConfig
from kdflow.data import Dataset
from kdflow.evaluation import Evaluation
from kdflow.metrics import accuracy, per_class_accuracy
from kdflow.train import predict_logits

# (Evaluation attribute, SLA field, comparison the value must satisfy)
CHECKS: list[tuple[str, str, str]] = [
    ("student_accuracy", "min_accuracy", ">="),
    ("teacher_gap", "max_teacher_gap", "<="),
    ("student_ece", "max_ece", "<="),
    ("flip_rate", "max_flip_rate", "<="),
    ("student_latency_p95_ms", "max_latency_p95_ms", "<="),
    ("size_ratio", "max_size_ratio", "<="),
]
_OPS = {">=": operator.ge, "<=": operator.le}
# The per-class SLA: the check's metric (the worst class's accuracy), its SLA field, the Evaluation field it reads.
CLASS_CHECK = ("worst_class_accuracy", "min_class_accuracy", "per_class_accuracy")
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SLACheck:
    """One threshold, the measured value and whether it passed."""

    name: str
    metric: str
    value: float
    op: str
    threshold: float
    passed: bool
    detail: str | None = None  # what the value summarises, e.g. the classes below min_class_accuracy

    def as_dict(self) -> dict[str, object]:
        """Plain dict for JSON reports."""
        return asdict(self)


def check_slas(evaluation: Evaluation | Mapping[str, Any], sla: SLAConfig) -> list[SLACheck]:
    """Apply every configured SLA threshold to ``evaluation``; thresholds set to ``None`` are skipped. A mapping
    (a report's ``evaluation`` section read back, possibly written by an older kdflow) needs only the metrics
    the configured SLAs read; a missing one is an error naming it. With ``sla.min_class_accuracy`` the per-class
    check (:func:`class_accuracy_check`) reads ``per_class_accuracy`` and comes last."""
    read = evaluation.get if isinstance(evaluation, Mapping) else lambda metric: getattr(evaluation, metric)
    needed = [metric for metric, name, _ in CHECKS if getattr(sla, name) is not None]
    if sla.min_class_accuracy is not None:
        needed.append(CLASS_CHECK[2])
    missing = [metric for metric in needed if read(metric) is None]
    if missing:
        raise KeyError(f"evaluation lacks metric(s) {', '.join(missing)} that the SLAs check")
    checks = []
    for metric, name, op in CHECKS:
        threshold = getattr(sla, name)
        if threshold is None:
            continue
        value = float(read(metric))
        checks.append(SLACheck(name, metric, value, op, float(threshold), bool(_OPS[op](value, threshold))))
    if sla.min_class_accuracy is not None:
        checks.append(class_accuracy_check(read(CLASS_CHECK[2]), sla.min_class_accuracy))
    return checks


def class_accuracy_check(per_class: Mapping[str, float], threshold: float) -> SLACheck:
    """The per-class SLA: ``min_c acc_c >= threshold`` over the classes with test rows (a NaN accuracy — a class
    absent from the test split — is not judged). ``detail`` names every class below the threshold with its
    accuracy, lowest first (or, when all pass, the worst class)."""
    measured = sorted(
        ((float(v), str(c)) for c, v in per_class.items() if v is not None and float(v) == float(v)),
        key=lambda vc: (vc[0], len(vc[1]), vc[1]),  # by accuracy, then class "2" before "10"
    )
    if not measured:
        raise KeyError("per_class_accuracy has no class with test rows; the per-class SLA cannot be checked")
    metric, name, _ = CLASS_CHECK
    worst = measured[0][0]
    below = [(v, c) for v, c in measured if v < threshold]
    if below:
        detail = f"{len(below)} class(es) below {threshold:g}: " + ", ".join(f"class {c} {v:.4f}" for v, c in below)
    else:
        detail = f"lowest: class {measured[0][1]} {worst:.4f}"
    return SLACheck(name, metric, worst, ">=", float(threshold), not below, detail)


SLA_ALERT_TAG = f"{registry.TAG_PREFIX}sla_alert"  # on a version promoted although it still misses an SLA


def _better(candidate: SLACheck, champion: SLACheck) -> bool:
    """The candidate's value is strictly on the right side of the champion's (higher for ``>=``, lower for ``<=``)."""
    return candidate.value > champion.value if candidate.op == ">=" else candidate.value < champion.value


def sla_exception(candidate: list[SLACheck], champion: list[SLACheck] | None) -> str | None:
    """The alert when a candidate that misses SLAs may still replace a champion that already misses them, else
    None: every SLA the candidate fails, the champion fails too and the candidate is strictly better on it, and
    on every other SLA both were measured on the candidate is not worse. Serving the strictly better of two
    models that both miss an SLA beats keeping the worse one; the alert says the SLA is still missed."""
    failed = [c for c in candidate if not c.passed]
    theirs = {c.name: c for c in champion or []}
    if not failed or any(
        c.name not in theirs or theirs[c.name].passed or not _better(c, theirs[c.name]) for c in failed
    ):
        return None
    if any(c.name in theirs and _better(theirs[c.name], c) for c in candidate if c.passed):
        return None
    misses = ", ".join(
        f"{c.name} {c.value:.4g} (champion {theirs[c.name].value:.4g}; needs {c.op} {c.threshold:g})" for c in failed
    )
    return f"SLA alert: promoted as strictly better than a champion that already misses the same SLA(s), still missed: {misses}"


@dataclass(frozen=True)
class PromotionDecision:
    """Whether a candidate becomes champion, and why; ``alert``: the SLA(s) it still misses when it replaced a
    champion that missed them too (:func:`sla_exception`)."""

    promote: bool
    reason: str
    champion_version: str | None
    champion_accuracy: float | None
    alert: str | None = None


def decide_promotion(
    checks: list[SLACheck],
    candidate_accuracy: float,
    champion_version: str | None,
    champion_accuracy: float | None,
    tolerance: float,
    recent: tuple[float, float] | None = None,
    champion_checks: list[SLACheck] | None = None,
    min_recent_improvement: float = 0.0,
    max_forgetting: float = 0.0,
) -> PromotionDecision:
    """Promote iff every SLA passed — or the champion's own ``champion_checks`` miss the same SLAs and the
    candidate is strictly better there and not worse elsewhere (:func:`sla_exception`; promoted with an alert) —
    and, when a champion exists, the candidate's accuracy on the same test set is at least
    ``champion_accuracy - tolerance``. When ``recent`` = (candidate, champion) accuracy on the recent labeled
    traffic a retrain was triggered by is given, the candidate must be better there:
    ``candidate > champion + min_recent_improvement`` (within ``tolerance`` is not enough: the retrain exists
    to do better on that traffic), and on the test set — the regime before the drift — it may then be up to
    ``max(tolerance, max_forgetting)`` below the champion (a student distilled from a refreshed teacher, or fitted
    to the shifted traffic, gives up a little of the old regime, as the refreshed teacher may). The first model is
    judged on SLAs alone."""
    failed = [c.name + (f" ({c.detail})" if c.detail else "") for c in checks if not c.passed]
    alert = sla_exception(checks, champion_checks) if failed and champion_version is not None else None
    if failed and alert is None:
        return PromotionDecision(False, f"SLA gate failed: {', '.join(failed)}", champion_version, champion_accuracy)
    if champion_version is None or champion_accuracy is None:
        return PromotionDecision(True, "SLAs passed; no current champion", None, None)
    tolerance = max(tolerance, max_forgetting) if recent is not None else tolerance
    if candidate_accuracy + 1e-12 < champion_accuracy - tolerance:
        return PromotionDecision(
            False,
            f"worse than champion v{champion_version}: accuracy {candidate_accuracy:.4f} < "
            f"{champion_accuracy:.4f} - tolerance {tolerance}",
            champion_version,
            champion_accuracy,
        )
    passed = alert or "SLAs passed"
    reason = f"{passed}; accuracy {candidate_accuracy:.4f} vs champion v{champion_version} {champion_accuracy:.4f}"
    if recent is not None:
        cand, champ = recent
        if not cand > champ + min_recent_improvement:
            return PromotionDecision(
                False,
                f"not better than champion v{champion_version} on the recent labeled traffic: accuracy {cand:.4f} "
                f"<= {champ:.4f} + min_recent_improvement {min_recent_improvement:g} (a retrain must beat the "
                "champion there, not merely come within champion_tolerance)",
                champion_version,
                champion_accuracy,
            )
        reason += f"; better on recent labeled traffic: {cand:.4f} vs {champ:.4f}"
    if alert is not None:
        log.warning("%s", alert)
    return PromotionDecision(True, reason, champion_version, champion_accuracy, alert)


@dataclass(frozen=True)
class Gate:
    """A candidate student's gate: every SLA check, the promotion decision, and (a retrain) the candidate's and
    the champion's accuracy on recent labeled production traffic."""

    checks: list[SLACheck]
    decision: PromotionDecision
    recent_accuracy: float | None = None
    recent_champion_accuracy: float | None = None

    @property
    def passed(self) -> bool:
        """Every SLA check passed (the champion comparison aside)."""
        return all(c.passed for c in self.checks)

    def metrics(self) -> dict[str, float]:
        """What the gate logs to the MLflow run."""
        out = {
            "sla_passed": float(self.passed),
            "promote": float(self.decision.promote),
            "sla_alert": float(self.decision.alert is not None),
        }
        if self.recent_accuracy is not None and self.recent_champion_accuracy is not None:
            out.update(recent_accuracy=self.recent_accuracy, recent_champion_accuracy=self.recent_champion_accuracy)
        return out


def _champion(name: str) -> tuple[str | None, nn.Module | None]:
    """``name@champion``'s version and model; ``(None, None)`` when there is no champion."""
    version = registry.alias_version(name, registry.CHAMPION)
    if version is None:
        return None, None
    return version, registry.load_torch_model(
        registry.ModelRef(f"models:/{name}@{registry.CHAMPION}", name, version, None)
    )


def gate_candidate(
    evaluation: Evaluation,
    sla: SLAConfig,
    student_name: str,
    test: Dataset,
    student: nn.Module | None = None,
    recent: Dataset | None = None,
) -> Gate:
    """Check every SLA and compare with ``student_name``'s current champion on the same test set — and on the
    recent labeled production traffic ``recent`` (scoring ``student`` there) when given (a retrain)."""
    checks = check_slas(evaluation, sla)
    champion_version, champion = _champion(student_name)
    champion_accuracy, recent_pair, champion_checks = None, None, None
    if champion is not None:
        champion_accuracy = accuracy(predict_logits(champion, test.x), test.y)
        if recent is not None and student is not None:
            recent_pair = (
                accuracy(predict_logits(student, recent.x), recent.y),
                accuracy(predict_logits(champion, recent.x), recent.y),
            )
        if not all(c.passed for c in checks):
            champion_checks = champion_sla_checks(student_name, champion_version, champion, test, sla)
    decision = decide_promotion(
        checks,
        evaluation.student_accuracy,
        champion_version,
        champion_accuracy,
        sla.champion_tolerance,
        recent_pair,
        champion_checks,
        sla.min_recent_improvement,
        sla.max_forgetting,
    )
    return Gate(checks, decision, *(recent_pair or (None, None)))


def champion_sla_checks(
    name: str, version: str, champion: nn.Module, test: Dataset, sla: SLAConfig, n_bins: int = 15
) -> list[SLACheck]:
    """The champion's SLA checks, to compare a candidate that misses an SLA with (:func:`sla_exception`):
    accuracy and ECE (at its served temperature, ``n_bins`` bins) measured on the candidate's ``test`` set, the
    other metrics as recorded at its registration (version tag ``kdflow.sla_checks``); a metric known neither
    way is left out."""
    from mlflow import MlflowClient

    tags = MlflowClient().get_model_version(name, version).tags or {}
    values = {c["metric"]: c["value"] for c in json.loads(tags.get(f"{registry.TAG_PREFIX}sla_checks", "[]"))}
    logits = predict_logits(champion, test.x)
    values["student_accuracy"] = accuracy(logits, test.y)
    temperature = float(getattr(champion, "temperature", 1.0))
    values["student_ece"] = calibration_metrics(logits, test.y, temperature, n_bins).ece
    values[CLASS_CHECK[2]] = {str(c): v for c, v in per_class_accuracy(logits, test.y, logits.shape[1]).items()}
    return check_slas(values, sla.model_copy(update=_unmeasured(values, sla)))


def _unmeasured(values: dict[str, Any], sla: SLAConfig) -> dict[str, None]:
    """The SLA thresholds whose metric is not in ``values``, switched off."""
    off: dict[str, None] = {name: None for metric, name, _ in CHECKS if metric not in values}
    if CLASS_CHECK[2] not in values:
        off[CLASS_CHECK[1]] = None
    return off


def champion_test_accuracy(name: str, test: Dataset) -> tuple[str | None, float | None, str | None]:
    """``(version, test accuracy, error)`` of ``name@champion`` scored on ``test``; all ``None`` without a
    champion; ``error`` says why a champion that exists could not be scored (it then blocks promotion)."""
    version = registry.alias_version(name, registry.CHAMPION)
    if version is None:
        return None, None, None
    try:
        champion = registry.load_torch_model(
            registry.ModelRef(f"models:/{name}@{registry.CHAMPION}", name, version, None)
        )
        return version, accuracy(predict_logits(champion, test.x), test.y), None
    except Exception as exc:  # another architecture or input width: no comparison possible
        return version, None, f"{type(exc).__name__}: {exc}"[:500]


def judge_teacher_model(
    model: nn.Module, test: Dataset, name: str, gate: TeacherGateConfig | None = None
) -> registry.TeacherVerdict:
    """Gate a trained teacher (:func:`kdflow.registry.judge_teacher`): its test accuracy against
    ``gate.min_accuracy`` and against ``name``'s current champion scored on the same ``test``."""
    gate = gate or TeacherGateConfig()
    champion_version, champion_accuracy, champion_error = champion_test_accuracy(name, test)
    return registry.judge_teacher(
        accuracy(predict_logits(model, test.x), test.y),
        gate.min_accuracy,
        gate.champion_tolerance,
        champion_version,
        champion_accuracy,
        champion_error,
    )


def register_teacher_version(
    model: nn.Module,
    datasets: Mapping[str, Dataset],
    name: str,
    alias: str,
    run_id: str,
    gate: TeacherGateConfig | None = None,
) -> tuple[registry.TeacherVerdict, str, str, list[str]]:
    """Judge a trained teacher (:func:`judge_teacher_model`), register it from ``run_id`` as ``challenger``
    (idempotent: :func:`kdflow.registry.register_run_model`), and record the verdict as version tags
    (``kdflow.sla_passed``, ``kdflow.gate_reason``, ...) and run tags (``kdflow.gate_reason``, ``kdflow.promote``).
    Moves no ``champion`` (the caller promotes through the serialized promotion); any other ``alias`` is set here
    when the gate passed. Returns the verdict, the model URI, the version and its aliases."""
    from mlflow import MlflowClient

    test = datasets["test"]
    verdict = judge_teacher_model(model, test, name, gate)
    metrics = {"teacher_test_accuracy": verdict.test_accuracy}
    if verdict.champion_accuracy is not None:
        metrics["champion_test_accuracy"] = verdict.champion_accuracy
    for key, value in metrics.items():
        MlflowClient().log_metric(run_id, key, value)
    model_uri, version, _ = registry.register_run_model(model, test.x[:5], name, run_id)
    fingerprints = {n: d.fingerprint for n, d in datasets.items()}
    tags = {
        "test_accuracy": verdict.test_accuracy,
        "run_id": run_id,
        **verdict.tags(),
        "data_fingerprints": fingerprints,
    }
    registry.tag_version(name, version, tags)
    MlflowClient().set_tag(run_id, registry.GATE_REASON_TAG, verdict.reason[:5000])
    MlflowClient().set_tag(run_id, f"{registry.TAG_PREFIX}promote", str(verdict.promote))
    why = f"trained teacher, test accuracy {verdict.test_accuracy:.4f}"
    registry.ensure_alias(name, registry.CHALLENGER, version, reason=why, actor="train-teacher-flow")
    aliases = [registry.CHALLENGER]
    if verdict.promote and alias not in (registry.CHAMPION, registry.CHALLENGER):
        registry.ensure_alias(name, alias, version, reason=verdict.reason, actor="train-teacher-flow")
        aliases.append(alias)
    return verdict, model_uri, version, aliases
