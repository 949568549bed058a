"""Gate, registration and report tasks: the only place a flow touches the model registry."""

from __future__ import annotations

import json
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from kdflow import registry
from kdflow.config import DistillConfig, SLAConfig, TeacherGateConfig, config_hash
from kdflow.data import Dataset
from kdflow.metrics import accuracy
from kdflow.models import CalibratedClassifier
from kdflow.profile import build_profile
from kdflow.report import to_markdown, write_report
from kdflow.sla import PromotionDecision, SLACheck, check_slas, decide_promotion
from kdflow.train import TrainResult, predict_logits
from tasks.logits import TeacherEnsemble, TeacherOutputs
from tasks.tracking import log_artifact, log_metrics

PROFILE_ARTIFACT = "reference/profile.json"


@task(name="sla-gate", retries=1, retry_delay_seconds=2, cache_policy=NO_CACHE)
def sla_gate(evaluation: dict[str, Any], sla: SLAConfig, student_name: str, test: Dataset, run_id: str,
             student: CalibratedClassifier | None = None,
             recent: Dataset | None = None) -> tuple[list[SLACheck], PromotionDecision]:
    """Check every SLA and compare with the current champion on the same test set — and on the recent
    labeled production traffic ``recent`` when given (the retrain flow)."""
    checks = check_slas(evaluation, sla)
    champion_version = registry.alias_version(student_name, registry.CHAMPION)
    champion_accuracy, recent_pair = None, None
    if champion_version is not None:
        champion = registry.load_torch_model(
            registry.ModelRef(f"models:/{student_name}@{registry.CHAMPION}", student_name, champion_version, None))
        champion_accuracy = accuracy(predict_logits(champion, test.x), test.y)
        if recent is not None and student is not None:
            recent_pair = (accuracy(predict_logits(student, recent.x), recent.y),
                           accuracy(predict_logits(champion, recent.x), recent.y))
            log_metrics(run_id, {"recent_accuracy": recent_pair[0], "recent_champion_accuracy": recent_pair[1]})
    decision = decide_promotion(checks, evaluation["student_accuracy"], champion_version, champion_accuracy,
                                sla.champion_tolerance, recent_pair)
    log_metrics(run_id, {"sla_passed": float(all(c.passed for c in checks)), "promote": float(decision.promote)})
    get_run_logger().info("gate: %s", decision.reason)
    return checks, decision


@task(name="reference-profile", cache_policy=NO_CACHE)
def reference_profile(student: CalibratedClassifier, reference: Dataset, teacher_logits: np.ndarray | None,
                      n_bins: int) -> dict[str, Any]:
    """The student's reference profile (:func:`kdflow.profile.build_profile`) on ``reference`` — the validation
    split, or for a retrained or recalibrated version the labeled production traffic it was fitted to: what
    the drift check compares production windows with."""
    logits = torch.from_numpy(predict_logits(student, reference.x))  # raw logits; served: softmax(z / T_calibrated)
    probs = torch.softmax(logits / float(student.temperature), dim=1).numpy()
    return build_profile(probs, reference.x, reference.y, teacher_logits, n_bins=n_bins).to_dict()


@task(name="register-student", retries=1, retry_delay_seconds=2, cache_policy=NO_CACHE)
def register_student(student: CalibratedClassifier, input_example: np.ndarray, name: str, run_id: str,
                     checks: list[SLACheck], register_failed: bool, tags: dict[str, Any],
                     profile: dict[str, Any]) -> dict[str, Any]:
    """Log and register the served model with its reference profile (``reference/profile.json``) and alias it
    ``challenger``. ``champion`` moves later, in :func:`tasks.promotion.promote_version`, as the flow's last
    step. A candidate that failed its SLAs is not registered unless ``register_failed`` is set.

    Idempotent under retries: the version is the one run ``run_id`` registered, if any
    (:func:`kdflow.registry.register_run_model`); tags are rewritten with the same values, the profile artifact
    overwritten in place, and the alias moved (and recorded) only if it is not already on the version."""
    sla_passed = all(c.passed for c in checks)
    if not sla_passed and not register_failed:
        return {"version": None, "aliases": [], "reason": "not registered: SLA gate failed"}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "profile.json"
        path.write_text(json.dumps(profile))
        log_artifact(run_id, path, "reference")
    model_uri, version, _ = registry.register_run_model(student, input_example, name, run_id)
    registry.tag_version(name, version, {**tags, "sla_passed": sla_passed, "sla_checks": [c.as_dict() for c in checks],
                                         "run_id": run_id, "reference_profile": PROFILE_ARTIFACT})
    registry.ensure_alias(name, registry.CHALLENGER, version, reason="new candidate", actor="distill-flow")
    get_run_logger().info("registered %s version %s as challenger", name, version)
    return {"version": version, "aliases": [registry.CHALLENGER], "model_uri": model_uri, "name": name}


@task(name="withdraw-version", cache_policy=NO_CACHE)
def withdraw_version(name: str, version: str, why: str) -> None:
    """Delete a version registered by a run that then failed: a failed run leaves no registered model."""
    from mlflow import MlflowClient

    MlflowClient().delete_model_version(name, version)
    get_run_logger().warning("withdrew %s version %s: %s", name, version, why)


def describe_provenance(cfg: DistillConfig, ensemble: TeacherEnsemble, datasets: dict[str, Dataset],
                        teacher_outs: list[TeacherOutputs], calibration: dict[str, Any]) -> dict[str, Any]:
    """What produced this student: teacher version(s) and weights, data fingerprints, logit stores, config hash,
    temperatures."""
    primary = ensemble.teachers[0]
    provenance = {
        "teacher_uri": primary.uri, "teacher_version": primary.version, "config_hash": config_hash(cfg),
        "data_fingerprints": {n: d.fingerprint for n, d in datasets.items()},
        "logit_store_keys": teacher_outs[0].store_uris,
        "calibrated_temperature": calibration["temperature"], "training_temperature": cfg.train.temperature,
        "reference": "validation",
    }
    if "recent_labeled" in datasets:  # a retrain: the reference profile is the recent labeled traffic
        provenance["reference"] = "production"
        if cfg.data.recent_window:
            provenance["reference_window_start"], provenance["reference_window_end"] = cfg.data.recent_window
    if len(ensemble.teachers) > 1:
        provenance["teachers"] = [{**d, "logit_store_keys": out.store_uris}
                                  for d, out in zip(ensemble.describe(), teacher_outs)]
        provenance["teacher_weighting"] = cfg.teacher_weighting
    return provenance


@task(name="publish-report", cache_policy=NO_CACHE)
def publish_report(cfg: DistillConfig, run_id: str, ensemble: TeacherEnsemble, teacher_outs: list[TeacherOutputs],
                   training: TrainResult, calibration: dict[str, Any], evaluation: dict[str, Any],
                   checks: list[SLACheck], decision: PromotionDecision, registration: dict[str, Any],
                   provenance: dict[str, Any]) -> dict[str, Any]:
    """Assemble the report; write report.json / report.md, attach them to the MLflow run and as a Prefect
    markdown artifact; return the report with its file paths."""
    teacher = ensemble.teachers[0]
    report = {
        "student_name": cfg.registry.student_name, "run_id": run_id,
        "teacher": {"uri": teacher.uri, "name": teacher.name, "version": teacher.version,
                    "loaded": any(out.teacher_loaded for out in teacher_outs)},
        "teachers": [{**d, "loaded": out.teacher_loaded, "logits": {n: asdict(s) for n, s in out.stats.items()}}
                     for d, out in zip(ensemble.describe(), teacher_outs)],
        "logits": {n: asdict(s) for n, s in teacher_outs[0].stats.items()},
        "training": {"best_epoch": training.best_epoch, "best_val_accuracy": training.best_val_accuracy,
                     "steps": training.steps, "history": training.history},
        "calibration": calibration, "evaluation": evaluation,
        "sla_checks": [c.as_dict() for c in checks], "gate_passed": all(c.passed for c in checks),
        "decision": asdict(decision), "registration": registration, "provenance": provenance,
    }
    json_path, md_path = write_report(report, Path(cfg.output_dir) / run_id)
    for path in (json_path, md_path):
        log_artifact(run_id, path, "report")
    log_metrics(run_id, {"gate_passed": float(report["gate_passed"])})
    create_markdown_artifact(markdown=to_markdown(report), key="kdflow-distill-report",
                             description=f"SLA report for {report['student_name']}")
    report["paths"] = {"json": str(json_path.resolve()), "markdown": str(md_path.resolve())}
    return report


def champion_test_accuracy(name: str, test: Dataset) -> tuple[str | None, float | None, str | None]:
    """``(version, test accuracy, error)`` of ``name@champion`` scored on ``test``; all ``None`` without a
    champion; ``error`` says why a champion that exists could not be scored (it then blocks promotion)."""
    version = registry.alias_version(name, registry.CHAMPION)
    if version is None:
        return None, None, None
    try:
        champion = registry.load_torch_model(
            registry.ModelRef(f"models:/{name}@{registry.CHAMPION}", name, version, None))
        return version, accuracy(predict_logits(champion, test.x), test.y), None
    except Exception as exc:  # another architecture or input width: no comparison possible
        return version, None, f"{type(exc).__name__}: {exc}"[:500]


@task(name="register-teacher", retries=1, retry_delay_seconds=2, cache_policy=NO_CACHE)
def register_teacher(model, datasets: dict[str, Dataset], name: str, alias: str, run_id: str,
                     training: TrainResult, gate: TeacherGateConfig | None = None) -> dict[str, Any]:
    """Log the teacher (raw logits out) with its test accuracy, register it as ``challenger`` and judge it
    with ``gate`` (:func:`kdflow.registry.judge_teacher`): its test accuracy against ``gate.min_accuracy`` and
    against the current champion's on the same test set. The verdict and reason are recorded as version tags
    (``kdflow.sla_passed``, ``kdflow.gate_reason``) and run tags (``kdflow.gate_reason``, ``kdflow.promote``).

    Moves no ``champion``: the flow promotes ``result["promote"]`` teachers through
    :func:`tasks.promotion.promote_version` (serialized, SLA re-checked). Any other ``alias`` is set here when
    the gate passed. Idempotent under retries, like :func:`register_student`."""
    from mlflow import MlflowClient

    gate = gate or TeacherGateConfig()
    test = datasets["test"]
    test_accuracy = accuracy(predict_logits(model, test.x), test.y)
    log_metrics(run_id, {"teacher_test_accuracy": test_accuracy})
    champion_version, champion_accuracy, champion_error = champion_test_accuracy(name, test)
    verdict = registry.judge_teacher(test_accuracy, gate.min_accuracy, gate.champion_tolerance,
                                     champion_version, champion_accuracy, champion_error)
    if champion_accuracy is not None:
        log_metrics(run_id, {"champion_test_accuracy": champion_accuracy})
    model_uri, version, _ = registry.register_run_model(model, test.x[:5], name, run_id)
    registry.tag_version(name, version, {"test_accuracy": test_accuracy, "run_id": run_id,
                                         "data_fingerprints": {n: d.fingerprint for n, d in datasets.items()},
                                         **verdict.tags()})
    client = MlflowClient()
    client.set_tag(run_id, registry.GATE_REASON_TAG, verdict.reason[:5000])
    client.set_tag(run_id, f"{registry.TAG_PREFIX}promote", str(verdict.promote))
    registry.ensure_alias(name, registry.CHALLENGER, version, reason=f"trained teacher, test accuracy "
                          f"{test_accuracy:.4f}", actor="train-teacher-flow")
    aliases = [registry.CHALLENGER]
    if verdict.promote and alias not in (registry.CHAMPION, registry.CHALLENGER):
        registry.ensure_alias(name, alias, version, reason=verdict.reason, actor="train-teacher-flow")
        aliases.append(alias)
    log = get_run_logger()
    (log.info if verdict.promote else log.warning)("teacher %s version %s (test accuracy %.4f): %s",
                                                   name, version, test_accuracy, verdict.reason)
    uri_alias = alias if verdict.promote else registry.CHALLENGER
    return {"name": name, "version": version, "alias": uri_alias, "aliases": aliases,
            "uri": f"models:/{name}@{uri_alias}", "model_uri": model_uri, "test_accuracy": test_accuracy,
            "best_val_accuracy": training.best_val_accuracy, "run_id": run_id, "promote": verdict.promote,
            "gate_passed": verdict.passed,
            "reason": verdict.reason, "champion_version": champion_version, "champion_accuracy": champion_accuracy}
