"""Gate, registration and report tasks: the only place a flow touches the model registry."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from prefect import get_run_logger
from prefect.artifacts import create_markdown_artifact
from prefect.transactions import Transaction, get_transaction

from kdflow import registry
from kdflow.artifact import ServedSpec, log_served_model
from kdflow.config import SLAConfig, TeacherGateConfig
from kdflow.data import Dataset
from kdflow.evaluation import Evaluation
from kdflow.models import CalibratedClassifier
from kdflow.monitor import PROFILE_ARTIFACT
from kdflow.profile import build_profile
from kdflow.report import DistillReport, Registration, to_markdown, write_report
from kdflow.sla import Gate, SLACheck, gate_candidate, register_teacher_version
from kdflow.train import TrainResult, predict_logits
from tasks import kdflow_task
from tasks.tracking import log_artifact, log_dict, log_metrics


@kdflow_task(name="sla-gate", retries=1, retry_delay_seconds=2)
def sla_gate(
    evaluation: Evaluation,
    sla: SLAConfig,
    student_name: str,
    test: Dataset,
    run_id: str,
    student: CalibratedClassifier | None = None,
    recent: Dataset | None = None,
) -> Gate:
    """:func:`kdflow.sla.gate_candidate`: every SLA, and the comparison with the current champion on the same
    test set — and on the recent labeled production traffic ``recent`` when given (the retrain flow)."""
    gate = gate_candidate(evaluation, sla, student_name, test, student, recent)
    log_metrics(run_id, gate.metrics())
    get_run_logger().info("gate: %s", gate.decision.reason)
    return gate


@kdflow_task(name="reference-profile")
def reference_profile(
    student: CalibratedClassifier, reference: Dataset, teacher_logits: np.ndarray | None, n_bins: int
) -> dict[str, Any]:
    """The student's reference profile (:func:`kdflow.profile.build_profile`) on ``reference`` — the validation
    split, or for a retrained or recalibrated version the labeled production traffic it was fitted to: what
    the drift check compares production windows with."""
    logits = torch.from_numpy(predict_logits(student, reference.x))  # raw logits; served: temperature, then map
    with torch.no_grad():
        probs = student.calibrate(logits).numpy()
    return build_profile(probs, reference.x, reference.y, teacher_logits, n_bins=n_bins).to_dict()


@kdflow_task(name="log-served-student", retries=1, retry_delay_seconds=2)
def log_served_student(student: CalibratedClassifier, spec: ServedSpec, input_example: np.ndarray, run_id: str) -> str:
    """Log the served artifact of ``student`` (:func:`kdflow.artifact.log_served_model`: pt2 + ONNX + spec and
    weights, no pickle) into run ``run_id`` without registering it; return its model URI, which the evaluation
    loads back and :func:`register_student` registers. A retry reuses the run's complete logged model."""
    import mlflow

    model_uri = registry.logged_model_of_run(run_id)
    if model_uri is None:
        with mlflow.start_run(run_id=run_id):
            model_uri, _ = log_served_model(student, spec, input_example)
    get_run_logger().info("served artifact %s (T=%.4f) logged as %s", spec.arch, spec.temperature, model_uri)
    return model_uri


@kdflow_task(name="register-student", retries=1, retry_delay_seconds=2)
def register_student(
    model_uri: str,
    name: str,
    run_id: str,
    checks: list[SLACheck],
    register_failed: bool,
    tags: dict[str, Any],
    profile: dict[str, Any],
) -> Registration:
    """Register the served artifact ``model_uri`` logged in run ``run_id`` (:func:`log_served_student`) with its
    reference profile (``reference/profile.json``) and alias it ``challenger``; ``champion`` moves later, in
    :func:`tasks.promotion.promote_version`. A candidate that failed its SLAs is not registered unless
    ``register_failed`` is set. Inside a Prefect ``transaction()`` that then fails, the version is withdrawn
    again unless already champion (:func:`withdraw_on_rollback`).

    Idempotent under retries: the version is the one run ``run_id`` registered, if any
    (:func:`kdflow.registry.register_logged_model`); tags are rewritten with the same values, the profile
    artifact overwritten in place, and the alias moved (and recorded) only if it is not already on the version."""
    sla_passed = all(c.passed for c in checks)
    if not sla_passed and not register_failed:
        return Registration(name, reason="not registered: SLA gate failed")
    log_dict(run_id, profile, PROFILE_ARTIFACT)
    model_uri, version, _ = registry.register_logged_model(name, run_id, model_uri)
    get_transaction().set("registered", (name, version))
    registry.tag_version(
        name,
        version,
        {
            **tags,
            "sla_passed": sla_passed,
            "sla_checks": [c.as_dict() for c in checks],
            "run_id": run_id,
            "reference_profile": PROFILE_ARTIFACT,
        },
    )
    registry.ensure_alias(name, registry.CHALLENGER, version, reason="new candidate", actor="distill-flow")
    get_run_logger().info("registered %s version %s as challenger", name, version)
    return Registration(name, version, (registry.CHALLENGER,), model_uri)


def _withdraw(name: str, version: str, why: str) -> None:
    from mlflow import MlflowClient

    MlflowClient().delete_model_version(name, version)
    get_run_logger().warning("withdrew %s version %s: %s", name, version, why)


def withdraw_on_rollback(txn: Transaction) -> None:
    """Rollback hook of a registering task (it ``set("registered", (name, version))`` on its transaction; used by
    :func:`register_student` and the born-again and online flows' registering tasks): the flow's transaction
    failed, so a failed run leaves no registered model — except a version that already became champion (serving
    it must not break; the failure came after promotion)."""
    registered = txn.get("registered", None)
    if not registered:
        return
    name, version = registered
    if registry.alias_version(name, registry.CHAMPION) == version:
        get_run_logger().warning("kept %s version %s although the run failed: it is already champion", name, version)
        return
    _withdraw(name, version, "the run failed after registering it")


register_student.on_rollback(withdraw_on_rollback)


def _fetch_plots(run_id: str, directory: Path) -> None:
    """Copy the run's ``plots/`` artifacts (reliability diagram, training curves, risk-coverage) into
    ``directory/plots`` for report.html; nothing when the run has none."""
    from mlflow.artifacts import download_artifacts

    from mlflow import MlflowClient

    if any(a.path.endswith(".png") for a in MlflowClient().list_artifacts(run_id, "plots")):
        directory.mkdir(parents=True, exist_ok=True)
        download_artifacts(run_id=run_id, artifact_path="plots", dst_path=str(directory))


@kdflow_task(name="publish-report")
def publish_report(report: DistillReport, output_dir: str) -> dict[str, Any]:
    """Write report.json / report.md / report.html (with the run's plots, fetched into ``plots/`` beside it) under
    ``output_dir/<run id>``, attach them to the MLflow run and as a Prefect markdown artifact; return the report
    (:meth:`DistillReport.as_dict`) with its file paths."""
    data = report.as_dict()
    directory = Path(output_dir) / report.run_id
    _fetch_plots(report.run_id, directory)
    json_path, md_path, html_path = write_report(data, directory)
    for path in (json_path, md_path, html_path):
        log_artifact(report.run_id, path, "report")
    log_metrics(report.run_id, {"gate_passed": float(report.gate.passed)})
    create_markdown_artifact(
        markdown=to_markdown(data), key="kdflow-distill-report", description=f"SLA report for {report.student_name}"
    )
    paths = {"json": json_path, "markdown": md_path, "html": html_path}
    return {**data, "paths": {k: str(p.resolve()) for k, p in paths.items()}}


@kdflow_task(name="register-teacher", retries=1, retry_delay_seconds=2)
def register_teacher(
    model,
    datasets: dict[str, Dataset],
    name: str,
    alias: str,
    run_id: str,
    training: TrainResult,
    gate: TeacherGateConfig | None = None,
) -> dict[str, Any]:
    """Register the teacher as ``challenger`` with its gate verdict (:func:`kdflow.sla.register_teacher_version`);
    the flow promotes ``result["promote"]`` teachers through :func:`tasks.promotion.promote_version`. Idempotent
    under retries, like :func:`register_student`."""
    verdict, model_uri, version, aliases = register_teacher_version(model, datasets, name, alias, run_id, gate)
    uri_alias = alias if verdict.promote else registry.CHALLENGER
    (get_run_logger().info if verdict.promote else get_run_logger().warning)(
        "teacher %s version %s (test accuracy %.4f): %s", name, version, verdict.test_accuracy, verdict.reason
    )
    return {
        "name": name, "version": version, "alias": uri_alias, "aliases": aliases, "uri": f"models:/{name}@{uri_alias}",
        "model_uri": model_uri, "test_accuracy": verdict.test_accuracy,
        "best_val_accuracy": training.best_val_accuracy, "run_id": run_id, "promote": verdict.promote,
        "gate_passed": verdict.passed, "reason": verdict.reason, "champion_version": verdict.champion_version,
        "champion_accuracy": verdict.champion_accuracy,
    }  # fmt: skip
