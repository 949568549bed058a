"""Calibration and evaluation tasks."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
from prefect import get_run_logger
from torch import nn

from kdflow.config import CalibrationConfig, EvaluationConfig
from kdflow.data import Dataset
from kdflow.evaluation import Calibration, Evaluation, calibrate_student, evaluate_student
from kdflow.models import CalibratedClassifier
from kdflow.plots import reliability_diagram
from tasks import kdflow_task
from tasks.tracking import log_artifact, log_metrics


@kdflow_task(name="calibrate")
def calibrate(model: nn.Module, val: Dataset, cfg: CalibrationConfig, run_id: str) -> Calibration:
    """:func:`kdflow.evaluation.calibrate_student`: one temperature fitted on the validation set by NLL; the
    served model, before/after metrics and a reliability diagram go to the MLflow run."""
    cal = calibrate_student(model, val, cfg)
    log_metrics(
        run_id,
        {
            "calibrated_temperature": cal.temperature,
            **cal.before.as_dict("val_before_"),
            **cal.after.as_dict("val_after_"),
        },
    )
    with tempfile.TemporaryDirectory() as tmp:  # a PNG file: MLflow uploads files
        png = reliability_diagram(
            cal.val_logits,
            val.y,
            {"uncalibrated": 1.0, "calibrated": cal.temperature},
            Path(tmp) / "reliability_diagram.png",
            cfg.n_bins,
        )
        log_artifact(run_id, png, "plots")
    get_run_logger().info(
        "calibrated temperature %.4f: val ECE %.4f -> %.4f, NLL %.4f -> %.4f",
        cal.temperature,
        cal.before.ece,
        cal.after.ece,
        cal.before.nll,
        cal.after.nll,
    )
    return cal


@kdflow_task(name="evaluate")
def evaluate(
    student: CalibratedClassifier,
    test: Dataset,
    teacher_test_logits: np.ndarray,
    teacher_profile: dict[str, float],
    num_classes: int,
    n_bins: int,
    cfg: EvaluationConfig,
    run_id: str,
) -> Evaluation:
    """:func:`kdflow.evaluation.evaluate_student` on the test split: accuracies, gap, flip rate, per-class
    accuracy, ECE at the served temperature, latency, throughput and size; logged as ``test_*`` metrics."""
    ev = evaluate_student(student, test, teacher_test_logits, teacher_profile, num_classes, n_bins, cfg)
    log_metrics(run_id, {f"test_{k}": v for k, v in ev.scalars().items()})
    get_run_logger().info(
        "test accuracy student %.4f teacher %.4f; flip rate %.4f; ECE %.4f",
        ev.student_accuracy,
        ev.teacher_accuracy,
        ev.flip_rate,
        ev.student_ece,
    )
    return ev
