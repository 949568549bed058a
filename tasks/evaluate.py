"""Calibration and evaluation tasks."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import torch
from prefect import get_run_logger
from torch import nn

from kdflow.artifact import load_served
from kdflow.config import CalibrationConfig, CascadeConfig, EvaluationConfig, ServingRuntime
from kdflow.data import Dataset
from kdflow.device import resolve_device
from kdflow.evaluation import (
    Calibration,
    Evaluation,
    calibrate_student,
    check_artifact,
    evaluate_student,
    fit_served_cascade,
)
from kdflow.models import CalibratedClassifier
from kdflow.plots import reliability_diagram, risk_coverage
from kdflow.selective import CascadeFit
from tasks import kdflow_task
from tasks.tracking import log_artifact, log_metrics


@kdflow_task(name="calibrate")
def calibrate(model: nn.Module, val: Dataset, cfg: CalibrationConfig, run_id: str, device: str = "auto") -> Calibration:
    """:func:`kdflow.evaluation.calibrate_student`: one temperature fitted on the validation set by NLL, and a
    vector-scaling or isotonic map after it when cross-fitting prefers one; the served model, before/after
    metrics, the chosen map (run tag ``kdflow.calibration_map``) and a reliability diagram go to the MLflow run.
    The validation logits are computed on ``device`` (:func:`kdflow.device.resolve_device`)."""
    from mlflow import MlflowClient

    cal = calibrate_student(model, val, cfg, resolve_device(device))
    log_metrics(
        run_id,
        {
            "calibrated_temperature": cal.temperature,
            **cal.before.as_dict("val_before_"),
            **cal.after.as_dict("val_after_"),
        },
    )
    MlflowClient().set_tag(run_id, "kdflow.calibration_map", cal.map_kind)
    z = torch.from_numpy(cal.val_logits)
    curves = {"uncalibrated": torch.softmax(z, dim=1).numpy(), f"T={cal.temperature:.3g}": torch.softmax(z / cal.temperature, dim=1).numpy()}  # fmt: skip
    if cal.map_kind != "temperature":
        curves[f"served: {cal.map_kind}"] = cal.val_probabilities()
    with tempfile.TemporaryDirectory() as tmp:  # a PNG file: MLflow uploads files
        png = reliability_diagram(curves, val.y, Path(tmp) / "reliability_diagram.png", cfg.n_bins)
        log_artifact(run_id, png, "plots")
    get_run_logger().info(
        "calibrated temperature %.4f, map %s (%s): val ECE %.4f -> %.4f, NLL %.4f -> %.4f",
        cal.temperature, cal.map_kind, cal.map_reason, cal.before.ece, cal.after.ece, cal.before.nll, cal.after.nll,
    )  # fmt: skip
    return cal


@kdflow_task(name="evaluate")
def evaluate(
    model_uri: str,
    runtime: ServingRuntime,
    module: CalibratedClassifier,
    test: Dataset,
    teacher_test_logits: np.ndarray,
    teacher_profile: dict[str, float],
    n_bins: int,
    cfg: EvaluationConfig,
    run_id: str,
) -> Evaluation:
    """:func:`kdflow.evaluation.evaluate_student` on the test split, of the served artifact ``model_uri`` loaded
    back in its serving ``runtime`` (checked against the in-memory ``module`` first): accuracies, gap, flip rate,
    per-class accuracy, ECE, latency, throughput and size; logged as ``test_*`` metrics, the artifact and
    runtime as run tags."""
    ev = evaluate_student(load_served(model_uri, runtime), module, test, teacher_test_logits, teacher_profile,
                          n_bins, cfg)  # fmt: skip
    from mlflow import MlflowClient

    log_metrics(run_id, {f"test_{k}": v for k, v in ev.scalars().items()})
    for key, value in {"evaluated_model_uri": model_uri, "evaluated_runtime": runtime}.items():
        MlflowClient().set_tag(run_id, f"kdflow.{key}", value)
    get_run_logger().info(
        "test (%s artifact, max |dp| %.2g vs module): accuracy student %.4f teacher %.4f; flip rate %.4f; ECE %.4f",
        runtime, ev.artifact_max_abs_diff, ev.student_accuracy, ev.teacher_accuracy, ev.flip_rate, ev.student_ece,
    )  # fmt: skip
    return ev


@kdflow_task(name="fit-cascade")
def fit_cascade_threshold(
    model_uri: str, runtime: ServingRuntime, val: Dataset, teacher_val_logits: np.ndarray, cfg: CascadeConfig,
    run_id: str,
) -> CascadeFit | None:  # fmt: skip
    """The confidence-fallback threshold on the validation split (:func:`kdflow.evaluation.fit_served_cascade`,
    the artifact's probabilities); its summary logged as ``cascade_*`` metrics and its risk-coverage curve as
    ``plots/risk_coverage.png``. ``None`` (nothing recorded) when ``serving.cascade`` is disabled."""
    if not cfg.enabled:
        return None
    fit = fit_served_cascade(load_served(model_uri, runtime), val, teacher_val_logits, cfg)
    log_metrics(run_id, {f"cascade_{k}": float(v) for k, v in fit.summary().items()})
    with tempfile.TemporaryDirectory() as tmp:
        png = risk_coverage(fit.curve_coverage, fit.curve_risk, fit.coverage, fit.aurc, Path(tmp) / "risk_coverage.png")
        log_artifact(run_id, png, "plots")
    get_run_logger().info(
        "cascade threshold %.4f: coverage %.4f, system accuracy %.4f (target %.4f %s)", fit.threshold, fit.coverage,
        fit.system_accuracy, fit.target_accuracy, "met" if fit.target_met else "NOT met",
    )  # fmt: skip
    return fit


@kdflow_task(name="verify-served")
def verify_served(
    model_uri: str, runtime: ServingRuntime, module: CalibratedClassifier, x: np.ndarray, run_id: str
) -> float:
    """:func:`kdflow.evaluation.check_artifact`: the served artifact ``model_uri`` in ``runtime`` gives the
    in-memory ``module``'s probabilities on ``x`` (max abs difference logged as ``artifact_max_abs_diff``)."""
    _, diff = check_artifact(load_served(model_uri, runtime), module, x)
    log_metrics(run_id, {"artifact_max_abs_diff": diff})
    return diff
