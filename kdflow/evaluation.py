"""Calibrating and evaluating a trained student: the calibrate and evaluate stages of the distill flow.

:func:`calibrate_student` fits the served temperature on the validation split (Guo et al. 2017);
:func:`evaluate_student` measures the served artifact (:mod:`kdflow.artifact`, the function that will be served,
loaded back in its serving runtime) against the (combined) teacher on the test split, after checking that its
probabilities match the in-memory module's (:func:`check_artifact`); :func:`fit_served_cascade` chooses the
confidence-fallback threshold on the validation split (:mod:`kdflow.selective`). Results are typed
(:class:`Calibration`, :class:`Evaluation`, :class:`~kdflow.selective.CascadeFit`); the SLA gate
(:mod:`kdflow.sla`) reads an :class:`Evaluation` by attribute, and the report keeps :meth:`Evaluation.as_dict`'s
keys.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import MISSING, asdict, dataclass, field, fields
from typing import Any

import numpy as np
import torch
from torch import nn

from kdflow import metrics
from kdflow.artifact import ArtifactError, ServedModel
from kdflow.calibration import (
    CalibrationMetrics,
    calibration_metrics,
    expected_calibration_error,
    fit_map,
    fit_temperature,
    probability_metrics,
    select_map,
)
from kdflow.config import CalibrationConfig, CascadeConfig, EvaluationConfig
from kdflow.data import Dataset
from kdflow.models import CalibratedClassifier, count_parameters
from kdflow.selective import CascadeFit, cascade_target, fit_cascade
from kdflow.train import predict_logits

MAX_ARTIFACT_DIFF = 1e-5  # max |p_artifact - p_module| on the test split before a run may register the artifact


@dataclass(frozen=True, eq=False)
class Calibration:
    """The served student (``softmax(z / temperature)``, or the chosen map after the temperature) and its
    validation calibration before (T=1) and after; ``map_kind`` is ``temperature``, ``vector`` or ``isotonic``
    and ``map_reason`` says why (the cross-fitted figures of every candidate in ``candidates``)."""

    served: CalibratedClassifier = field(repr=False)
    temperature: float
    before: CalibrationMetrics
    after: CalibrationMetrics
    n_bins: int
    val_logits: np.ndarray = field(repr=False)  # raw student logits on the validation split (reliability diagram)
    map_kind: str = "temperature"
    map_reason: str = ""
    after_temperature: CalibrationMetrics | None = None  # at the temperature alone (= after when no map is served)
    candidates: dict[str, dict[str, float]] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """The report's ``calibration`` section."""
        return {
            "temperature": self.temperature,
            "map": self.map_kind,
            "map_reason": self.map_reason,
            "before": self.before.as_dict(),
            "after": self.after.as_dict(),
            "after_temperature": (self.after_temperature or self.after).as_dict(),
            "candidates": self.candidates,
            "n_bins": self.n_bins,
        }

    def val_probabilities(self) -> np.ndarray:
        """The served (calibrated) probabilities on the validation split."""
        with torch.no_grad():
            return self.served.calibrate(torch.from_numpy(self.val_logits)).numpy()


def calibrate_student(
    model: nn.Module, val: Dataset, cfg: CalibrationConfig, device: torch.device | None = None
) -> Calibration:
    """Fit one temperature on ``val`` by NLL (:func:`kdflow.calibration.fit_temperature`) and measure ECE, MCE,
    NLL and Brier before and after it. When the ECE after it exceeds ``cfg.max_ece_after_temperature``, the
    maps ``cfg.maps`` are tried by cross-fitting (:func:`kdflow.calibration.select_map`) and the winner, refitted
    on the whole validation split after the temperature, is served. The student's validation logits are
    computed on ``device`` (default: where the model is); the fits run on the CPU."""
    logits = predict_logits(model, val.x, device=device)
    temperature = fit_temperature(logits, val.y, cfg.t_min, cfg.t_max, cfg.max_iter)
    at_t = calibration_metrics(logits, val.y, temperature, cfg.n_bins)
    limit = cfg.max_ece_after_temperature
    kind, reason, candidates, cal_map = "temperature", "temperature scaling only (no other map configured)", {}, None
    if limit is not None and at_t.ece <= limit:
        reason = f"validation ECE {at_t.ece:.4f} after temperature scaling is within {limit:g}"
    elif limit is not None and cfg.maps:
        z = np.asarray(logits, np.float64)
        choice = select_map(z, val.y, list(cfg.maps), (cfg.t_min, cfg.t_max, cfg.max_iter), cfg.folds,
                            cfg.select_by, cfg.n_bins)  # fmt: skip
        kind, candidates = choice.kind, choice.out_of_fold
        reason = f"validation ECE {at_t.ece:.4f} after temperature scaling exceeds {limit:g}; {choice.reason}"
        cal_map = fit_map(kind, z / temperature, val.y)
    served = CalibratedClassifier(model, temperature, cal_map)
    with torch.no_grad():
        after = probability_metrics(served.calibrate(torch.from_numpy(logits)).numpy(), val.y, cfg.n_bins)
    return Calibration(
        served=served,
        temperature=temperature,
        before=calibration_metrics(logits, val.y, 1.0, cfg.n_bins),
        after=after,
        n_bins=cfg.n_bins,
        val_logits=logits,
        map_kind=kind,
        map_reason=reason,
        after_temperature=at_t,
        candidates=candidates,
    )


@dataclass(frozen=True)
class Evaluation:
    """The served student against the (combined) teacher on the test split.

    Accuracies, gap, flip rate and ECE at the served temperature (and at T=1), parameter counts and size ratio,
    batch-1 latency p50/p95 (ms) and batch throughput (rows/s) of both, per-class accuracy of the student (and of
    the teacher, with each class's test rows: the report's per-class table; absent from older reports)."""

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
    runtime: str | None = None  # the served artifact's runtime these figures were measured with
    artifact_max_abs_diff: float | None = None  # max |p_artifact - p_module| on the test split
    calibration_map: str | None = None  # the served map after the temperature (temperature, vector, isotonic)
    teacher_per_class_accuracy: dict[str, float] | None = None  # by true class, as per_class_accuracy
    per_class_rows: dict[str, int] | None = None  # test rows of each true class

    def as_dict(self) -> dict[str, Any]:
        """The report's ``evaluation`` section (these field names are its keys)."""
        return asdict(self)

    def scalars(self) -> dict[str, float]:
        """Every numeric figure (all but the per-class accuracies and the runtime), for MLflow metrics."""
        return {k: v for k, v in self.as_dict().items() if isinstance(v, (int, float))}

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> Evaluation:
        """An evaluation read back from a report's ``evaluation`` section; extra keys are ignored, a missing one
        is an error naming every missing key (the optional artifact fields may be absent: older reports)."""
        required = [f.name for f in fields(cls) if f.default is MISSING]
        missing = [n for n in required if n not in values]
        if missing:
            raise KeyError(f"evaluation lacks metric(s) {', '.join(missing)}; found {sorted(values)}")
        return cls(**{f.name: values[f.name] for f in fields(cls) if f.name in values})


def module_probabilities(module: CalibratedClassifier, x: np.ndarray) -> np.ndarray:
    """The in-memory served module's probabilities on ``x`` (its temperature and map on batched raw logits)."""
    with torch.no_grad():
        return module.calibrate(torch.from_numpy(predict_logits(module, x))).numpy()


def check_artifact(
    served: ServedModel, module: CalibratedClassifier, x: np.ndarray, tolerance: float = MAX_ARTIFACT_DIFF
) -> tuple[np.ndarray, float]:
    """The artifact's probabilities on ``x`` and ``max |p_artifact - p_module|``; :class:`ArtifactError` when it
    exceeds ``tolerance`` (the registered artifact would not serve what was evaluated in memory)."""
    probs = served.predict(x)
    diff = float(np.abs(probs - module_probabilities(module, x)).max())
    if not diff <= tolerance:
        raise ArtifactError(
            f"the served artifact {served.uri} ({served.runtime}) differs from the in-memory student by "
            f"{diff:.3g} in probability on {len(x)} rows (max allowed {tolerance:g})"
        )
    return probs, diff


def profile_predict(
    predict: Callable[[np.ndarray], np.ndarray], x: np.ndarray, cfg: EvaluationConfig, warmup: int = 10
) -> dict[str, float]:
    """Batch-1 latency p50/p95 (ms, after ``warmup`` untimed calls) and rows/s at ``cfg.throughput_batch_size``
    (cycling over ``x``, after one untimed batch) of a scoring function, as :func:`kdflow.metrics.profile`
    measures a module."""
    one = np.ascontiguousarray(x[:1], dtype=np.float32)
    for _ in range(warmup):
        predict(one)
    times = np.empty(cfg.latency_batches)
    for i in range(cfg.latency_batches):
        t0 = time.perf_counter()
        predict(one)
        times[i] = (time.perf_counter() - t0) * 1e3
    reps = -(-cfg.throughput_batch_size // len(x))
    batch = np.ascontiguousarray(np.concatenate([x] * reps)[: cfg.throughput_batch_size], dtype=np.float32)
    predict(batch)
    t0 = time.perf_counter()
    for _ in range(cfg.throughput_batches):
        predict(batch)
    rows_per_s = cfg.throughput_batch_size * cfg.throughput_batches / (time.perf_counter() - t0)
    return {
        "latency_p50_ms": float(np.percentile(times, 50)),
        "latency_p95_ms": float(np.percentile(times, 95)),
        "throughput": rows_per_s,
    }


def evaluate_student(
    served: ServedModel,
    module: CalibratedClassifier,
    test: Dataset,
    teacher_logits: np.ndarray,
    teacher_profile: Mapping[str, float],
    n_bins: int,
    cfg: EvaluationConfig,
) -> Evaluation:
    """Score the served artifact ``served`` on ``test`` against the teacher's test logits (T=1) and the teacher's
    size/speed ``teacher_profile`` (:func:`kdflow.metrics.profile`).

    Accuracy, per-class accuracy, flip rate, ECE, latency and throughput come from the artifact's probabilities
    in its runtime, after :func:`check_artifact` (its probabilities within :data:`MAX_ARTIFACT_DIFF` of
    ``module``'s); the uncalibrated ECE (T=1) and the parameter count come from ``module``. All of it runs on
    the CPU whatever the ``device`` setting: what is judged is the artifact as served, and a GPU's kernels
    (TF32 convolutions) do not promise the 1e-5 agreement the artifact check asks for."""
    probs, diff = check_artifact(served, module, test.x)
    student_acc = metrics.accuracy(probs, test.y)
    teacher_acc = metrics.accuracy(teacher_logits, test.y)
    speed = profile_predict(served.predict, test.x, cfg)
    params = count_parameters(module)
    return Evaluation(
        student_accuracy=student_acc,
        teacher_accuracy=teacher_acc,
        teacher_gap=teacher_acc - student_acc,
        flip_rate=metrics.flip_rate(probs, teacher_logits),
        student_ece=expected_calibration_error(probs, test.y, n_bins),
        student_ece_uncalibrated=calibration_metrics(predict_logits(module, test.x), test.y, 1.0, n_bins).ece,
        teacher_ece=calibration_metrics(teacher_logits, test.y, 1.0, n_bins).ece,
        served_temperature=float(module.temperature),
        student_params=params,
        teacher_params=int(teacher_profile["params"]),
        size_ratio=params / teacher_profile["params"],
        per_class_accuracy={
            str(k): v for k, v in metrics.per_class_accuracy(probs, test.y, served.num_classes).items()
        },
        test_rows=len(test),
        student_latency_p50_ms=speed["latency_p50_ms"],
        student_latency_p95_ms=speed["latency_p95_ms"],
        student_throughput=speed["throughput"],
        teacher_latency_p50_ms=teacher_profile["latency_p50_ms"],
        teacher_latency_p95_ms=teacher_profile["latency_p95_ms"],
        teacher_throughput=teacher_profile["throughput"],
        runtime=served.runtime,
        artifact_max_abs_diff=diff,
        calibration_map=module.map_kind,
        teacher_per_class_accuracy={
            str(k): v for k, v in metrics.per_class_accuracy(teacher_logits, test.y, served.num_classes).items()
        },
        per_class_rows={
            str(k): int(n)
            for k, n in enumerate(np.bincount(test.y, minlength=served.num_classes)[: served.num_classes])
        },
    )


def fit_served_cascade(
    served: ServedModel, val: Dataset, teacher_val_logits: np.ndarray, cfg: CascadeConfig
) -> CascadeFit:
    """The confidence-fallback threshold on the validation split (:func:`kdflow.selective.fit_cascade`): the
    artifact's probabilities, the teacher's predictions (``argmax`` of its validation logits) and the target
    :func:`kdflow.selective.cascade_target` (``cfg.target_accuracy``, else the teacher's validation accuracy
    minus ``cfg.max_accuracy_loss``)."""
    teacher_pred = np.asarray(teacher_val_logits).argmax(axis=1)
    target = cascade_target(cfg.target_accuracy, cfg.max_accuracy_loss, float((teacher_pred == val.y).mean()))
    return fit_cascade(served.predict(val.x), teacher_pred, val.y, target)
