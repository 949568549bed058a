"""The SLA gate: thresholds from config applied to an :class:`~kdflow.evaluation.Evaluation`, and the comparison
with the current champion on the same test set (students: :func:`gate_candidate`; teachers:
:func:`judge_teacher_model`)."""

from __future__ import annotations

import operator
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from torch import nn

from kdflow import registry
from kdflow.config import SLAConfig, TeacherGateConfig
from kdflow.data import Dataset
from kdflow.evaluation import Evaluation
from kdflow.metrics import accuracy
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


def check_slas(evaluation: Evaluation | Mapping[str, Any], sla: SLAConfig) -> list[SLACheck]:
    """Apply every configured SLA threshold to ``evaluation``; thresholds set to ``None`` are skipped. A mapping
    (a report's ``evaluation`` section read back, possibly written by an older kdflow) needs only the metrics
    the configured SLAs read; a missing one is an error naming it."""
    read = evaluation.get if isinstance(evaluation, Mapping) else lambda metric: getattr(evaluation, metric)
    needed = [metric for metric, name, _ in CHECKS if getattr(sla, name) is not None]
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
    return checks


@dataclass(frozen=True)
class PromotionDecision:
    """Whether a candidate becomes champion, and why."""

    promote: bool
    reason: str
    champion_version: str | None
    champion_accuracy: float | None


def decide_promotion(
    checks: list[SLACheck],
    candidate_accuracy: float,
    champion_version: str | None,
    champion_accuracy: float | None,
    tolerance: float,
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
            champion_version,
            champion_accuracy,
        )
    reason = f"SLAs passed; accuracy {candidate_accuracy:.4f} vs champion v{champion_version} {champion_accuracy:.4f}"
    if recent is not None:
        cand, champ = recent
        if cand + 1e-12 < champ - tolerance:
            return PromotionDecision(
                False,
                f"worse than champion v{champion_version} on recent labeled traffic: accuracy {cand:.4f} < "
                f"{champ:.4f} - tolerance {tolerance}",
                champion_version,
                champion_accuracy,
            )
        reason += f"; on recent labeled traffic {cand:.4f} vs {champ:.4f}"
    return PromotionDecision(True, reason, champion_version, champion_accuracy)


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
        out = {"sla_passed": float(self.passed), "promote": float(self.decision.promote)}
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
    champion_accuracy, recent_pair = None, None
    if champion is not None:
        champion_accuracy = accuracy(predict_logits(champion, test.x), test.y)
        if recent is not None and student is not None:
            recent_pair = (
                accuracy(predict_logits(student, recent.x), recent.y),
                accuracy(predict_logits(champion, recent.x), recent.y),
            )
    decision = decide_promotion(
        checks, evaluation.student_accuracy, champion_version, champion_accuracy, sla.champion_tolerance, recent_pair
    )
    return Gate(checks, decision, *(recent_pair or (None, None)))


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
