"""Calibrating and evaluating a trained student: the calibrate and evaluate stages of the distill flow.

:func:`calibrate_student` fits the served temperature on the validation split (Guo et al. 2017);
:func:`evaluate_student` measures the served student against the (combined) teacher on the test split. Their
results are typed (:class:`Calibration`, :class:`Evaluation`); the SLA gate (:mod:`kdflow.sla`) reads an
:class:`Evaluation` by attribute, and the report keeps :meth:`Evaluation.as_dict`'s keys.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import numpy as np
from torch import nn

from kdflow import metrics
from kdflow.calibration import CalibrationMetrics, calibration_metrics, fit_temperature
from kdflow.config import CalibrationConfig, EvaluationConfig
from kdflow.data import Dataset
from kdflow.models import CalibratedClassifier
from kdflow.train import predict_logits


@dataclass(frozen=True, eq=False)
class Calibration:
    """The served student (``softmax(z / temperature)``) and its validation calibration before (T=1) and after."""

    served: CalibratedClassifier = field(repr=False)
    temperature: float
    before: CalibrationMetrics
    after: CalibrationMetrics
    n_bins: int
    val_logits: np.ndarray = field(repr=False)  # raw student logits on the validation split (reliability diagram)

    def as_dict(self) -> dict[str, Any]:
        """The report's ``calibration`` section."""
        return {
            "temperature": self.temperature,
            "before": self.before.as_dict(),
            "after": self.after.as_dict(),
            "n_bins": self.n_bins,
        }


def calibrate_student(model: nn.Module, val: Dataset, cfg: CalibrationConfig) -> Calibration:
    """Fit one temperature on ``val`` by NLL (:func:`kdflow.calibration.fit_temperature`) and measure ECE, MCE,
    NLL and Brier before and after it."""
    logits = predict_logits(model, val.x)
    temperature = fit_temperature(logits, val.y, cfg.t_min, cfg.t_max, cfg.max_iter)
    return Calibration(
        served=CalibratedClassifier(model, temperature),
        temperature=temperature,
        before=calibration_metrics(logits, val.y, 1.0, cfg.n_bins),
        after=calibration_metrics(logits, val.y, temperature, cfg.n_bins),
        n_bins=cfg.n_bins,
        val_logits=logits,
    )


@dataclass(frozen=True)
class Evaluation:
    """The served student against the (combined) teacher on the test split.

    Accuracies, gap, flip rate and ECE at the served temperature (and at T=1), parameter counts and size ratio,
    batch-1 latency p50/p95 (ms) and batch throughput (rows/s) of both, per-class accuracy of the student."""

    student_accuracy: float
    teacher_accuracy: float
    teacher_gap: float
    flip_rate: float
    student_ece: float
    student_ece_uncalibrated: float
    teacher_ece: float
    served_temperature: float
    student_params: int
    teacher_params: int
    size_ratio: float
    per_class_accuracy: dict[str, float]
    test_rows: int
    student_latency_p50_ms: float
    student_latency_p95_ms: float
    student_throughput: float
    teacher_latency_p50_ms: float
    teacher_latency_p95_ms: float
    teacher_throughput: float

    def as_dict(self) -> dict[str, Any]:
        """The report's ``evaluation`` section (these field names are its keys)."""
        return asdict(self)

    def scalars(self) -> dict[str, float]:
        """Every numeric figure (all but the per-class accuracies), for MLflow metrics."""
        return {k: v for k, v in self.as_dict().items() if isinstance(v, (int, float))}

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> Evaluation:
        """An evaluation read back from a report's ``evaluation`` section; extra keys are ignored, a missing one
        is an error naming every missing key."""
        names = [f.name for f in fields(cls)]
        missing = [n for n in names if n not in values]
        if missing:
            raise KeyError(f"evaluation lacks metric(s) {', '.join(missing)}; found {sorted(values)}")
        return cls(**{n: values[n] for n in names})


def evaluate_student(
    student: CalibratedClassifier,
    test: Dataset,
    teacher_logits: np.ndarray,
    teacher_profile: Mapping[str, float],
    num_classes: int,
    n_bins: int,
    cfg: EvaluationConfig,
) -> Evaluation:
    """Score ``student`` on ``test`` against the teacher's test logits (T=1) and the teacher's size/speed
    ``teacher_profile`` (:func:`kdflow.metrics.profile`); ECE at the served temperature and at T=1."""
    z_s = predict_logits(student.model, test.x)
    t_served = float(student.temperature)
    student_profile = metrics.profile(
        student, test.x, cfg.latency_batches, cfg.throughput_batch_size, cfg.throughput_batches
    )
    student_acc = metrics.accuracy(z_s, test.y)
    teacher_acc = metrics.accuracy(teacher_logits, test.y)
    return Evaluation(
        student_accuracy=student_acc,
        teacher_accuracy=teacher_acc,
        teacher_gap=teacher_acc - student_acc,
        flip_rate=metrics.flip_rate(z_s, teacher_logits),
        student_ece=calibration_metrics(z_s, test.y, t_served, n_bins).ece,
        student_ece_uncalibrated=calibration_metrics(z_s, test.y, 1.0, n_bins).ece,
        teacher_ece=calibration_metrics(teacher_logits, test.y, 1.0, n_bins).ece,
        served_temperature=t_served,
        student_params=int(student_profile["params"]),
        teacher_params=int(teacher_profile["params"]),
        size_ratio=student_profile["params"] / teacher_profile["params"],
        per_class_accuracy={str(k): v for k, v in metrics.per_class_accuracy(z_s, test.y, num_classes).items()},
        test_rows=len(test),
        student_latency_p50_ms=student_profile["latency_p50_ms"],
        student_latency_p95_ms=student_profile["latency_p95_ms"],
        student_throughput=student_profile["throughput"],
        teacher_latency_p50_ms=teacher_profile["latency_p50_ms"],
        teacher_latency_p95_ms=teacher_profile["latency_p95_ms"],
        teacher_throughput=teacher_profile["throughput"],
    )
