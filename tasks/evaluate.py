"""Calibration and evaluation tasks."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from torch import nn

from kdflow import metrics
from kdflow.calibration import calibration_metrics, fit_temperature
from kdflow.config import CalibrationConfig, EvaluationConfig
from kdflow.data import Dataset
from kdflow.models import CalibratedClassifier
from kdflow.plots import reliability_diagram
from kdflow.train import predict_logits
from tasks.tracking import log_artifact, log_metrics


@task(name="calibrate", cache_policy=NO_CACHE)
def calibrate(model: nn.Module, val: Dataset, cfg: CalibrationConfig, run_id: str) -> tuple[CalibratedClassifier, dict[str, Any]]:
    """Fit one temperature on the validation set by NLL; return the served model and before/after metrics."""
    logits = predict_logits(model, val.x)
    temperature = fit_temperature(logits, val.y, cfg.t_min, cfg.t_max, cfg.max_iter)
    before = calibration_metrics(logits, val.y, 1.0, cfg.n_bins)
    after = calibration_metrics(logits, val.y, temperature, cfg.n_bins)
    log_metrics(run_id, {"calibrated_temperature": temperature, **before.as_dict("val_before_"), **after.as_dict("val_after_")})
    with tempfile.TemporaryDirectory() as tmp:
        png = reliability_diagram(logits, val.y, {"uncalibrated": 1.0, "calibrated": temperature},
                                  Path(tmp) / "reliability_diagram.png", cfg.n_bins)
        log_artifact(run_id, png, "plots")
    get_run_logger().info("calibrated temperature %.4f: val ECE %.4f -> %.4f, NLL %.4f -> %.4f",
                          temperature, before.ece, after.ece, before.nll, after.nll)
    result = {"temperature": temperature, "before": before.as_dict(), "after": after.as_dict(), "n_bins": cfg.n_bins}
    return CalibratedClassifier(model, temperature), result


@task(name="evaluate", cache_policy=NO_CACHE)
def evaluate(student: CalibratedClassifier, test: Dataset, teacher_test_logits: np.ndarray,
             teacher_profile: dict[str, float], num_classes: int, n_bins: int, cfg: EvaluationConfig,
             run_id: str) -> dict[str, Any]:
    """Test-set accuracy of student and teacher, gap, flip rate, per-class accuracy, ECE at the served
    temperature, batch-1 latency and batch-256 throughput, parameter counts and size ratio."""
    z_s = predict_logits(student.model, test.x)
    t_served = float(student.temperature)
    student_profile = metrics.profile(student, test.x, cfg.latency_batches, cfg.throughput_batch_size, cfg.throughput_batches)
    student_acc = metrics.accuracy(z_s, test.y)
    teacher_acc = metrics.accuracy(teacher_test_logits, test.y)
    result: dict[str, Any] = {
        "student_accuracy": student_acc,
        "teacher_accuracy": teacher_acc,
        "teacher_gap": teacher_acc - student_acc,
        "flip_rate": metrics.flip_rate(z_s, teacher_test_logits),
        "student_ece": calibration_metrics(z_s, test.y, t_served, n_bins).ece,
        "student_ece_uncalibrated": calibration_metrics(z_s, test.y, 1.0, n_bins).ece,
        "teacher_ece": calibration_metrics(teacher_test_logits, test.y, 1.0, n_bins).ece,
        "served_temperature": t_served,
        "student_params": int(student_profile["params"]),
        "teacher_params": int(teacher_profile["params"]),
        "size_ratio": student_profile["params"] / teacher_profile["params"],
        "per_class_accuracy": {str(k): v for k, v in metrics.per_class_accuracy(z_s, test.y, num_classes).items()},
        "test_rows": len(test),
    }
    for who, prof in (("student", student_profile), ("teacher", teacher_profile)):
        result.update({f"{who}_latency_p50_ms": prof["latency_p50_ms"], f"{who}_latency_p95_ms": prof["latency_p95_ms"],
                       f"{who}_throughput": prof["throughput"]})
    log_metrics(run_id, {f"test_{k}": v for k, v in result.items() if isinstance(v, (int, float))})
    get_run_logger().info("test accuracy student %.4f teacher %.4f; flip rate %.4f; ECE %.4f",
                          student_acc, teacher_acc, result["flip_rate"], result["student_ece"])
    return result
