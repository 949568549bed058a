"""Several teachers distilled into one student.

The combined teacher is the weighted mean of the teachers' *softened* probabilities (Hinton et al. 2015,
section 2; "multi-teacher" KD averages the teachers' soft targets):

    p_T(x) = sum_i w_i * softmax(z_i(x) / T),    sum_i w_i = 1.

It is expressed as logits so that nothing downstream changes: with ``z = T * log p_T`` we have
``softmax(z / T) = p_T`` exactly (``p_T`` already sums to 1), so :func:`kdflow.losses.kd_loss` applied to
``z`` at temperature ``T`` trains on ``p_T``. Evaluation (teacher accuracy, flip rate, teacher ECE)
uses the same combination at ``T = 1``, i.e. the usual probability-averaging ensemble.

Weights are uniform (``mean``) or proportional to each teacher's validation accuracy
(``val_accuracy``: ``w_i = acc_i / sum_j acc_j``). A single teacher's logits pass through unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from kdflow.config import TeacherWeighting
from kdflow.metrics import accuracy
from kdflow.registry import ModelRef


def teacher_weights(method: TeacherWeighting, val_accuracies: Sequence[float]) -> np.ndarray:
    """Normalised weights: uniform for ``mean``; ``acc_i / sum_j acc_j`` for ``val_accuracy``."""
    acc = np.asarray(val_accuracies, dtype=np.float64)
    if acc.ndim != 1 or len(acc) == 0:
        raise ValueError("need at least one teacher")
    if method == "mean":
        return np.full(len(acc), 1.0 / len(acc))
    if method == "val_accuracy":
        if not np.all(np.isfinite(acc)) or np.any(acc < 0) or acc.sum() <= 0:
            raise ValueError(f"validation accuracies must be finite, >= 0 and not all 0, got {acc.tolist()}")
        return acc / acc.sum()
    raise ValueError(f"unknown teacher weighting {method!r}: expected 'mean' or 'val_accuracy'")


def _log_softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def combine_logits(logits: Sequence[np.ndarray], weights: Sequence[float], temperature: float) -> np.ndarray:
    """``z = T * log(sum_i w_i softmax(z_i / T))`` (float32), so that ``softmax(z / T)`` is the weighted mean
    of the teachers' softened probabilities. Computed in log space (log-sum-exp) in float64, so very
    confident teachers do not underflow to ``log 0``. One teacher with weight 1 is returned as is."""
    if len(logits) != len(weights):
        raise ValueError(f"{len(logits)} teachers' logits but {len(weights)} weights")
    if len(logits) == 1 and float(weights[0]) == 1.0:
        return np.asarray(logits[0], dtype=np.float32)
    shapes = {np.shape(z) for z in logits}
    if len(shapes) != 1:
        raise ValueError(f"teachers' logits differ in shape: {sorted(shapes)}")
    t = float(temperature)
    w = np.asarray(weights, dtype=np.float64)
    stacked = np.stack([_log_softmax(np.asarray(z, dtype=np.float64) / t) for z in logits])  # (K, n, C)
    with np.errstate(divide="ignore"):
        terms = stacked + np.log(w)[:, None, None]
    top = terms.max(axis=0)
    log_p = top + np.log(np.exp(terms - top).sum(axis=0))
    return (t * log_p).astype(np.float32)


@dataclass(frozen=True)
class TeacherLogits:
    """One teacher's stored logits of the small evaluation splits (``val``, ``test``), read into memory by split
    name and aligned with those splits' rows. Training splits are streamed by the trainer instead."""

    teacher: ModelRef
    splits: dict[str, np.ndarray]

    def __getitem__(self, split: str) -> np.ndarray:
        return self.splits[split]


@dataclass
class TeacherEnsemble:
    """The teachers as one: weights, combined evaluation-split logits and the combined size/speed profile.

    ``train_logits`` are combined at the training temperature (what the student is trained towards, used for
    the validation soft loss); ``eval_logits`` at T=1 (teacher accuracy, flip rate, teacher ECE). One teacher:
    both are its own logits."""

    teachers: list[ModelRef]
    weights: list[float]
    val_accuracies: list[float]
    train_logits: dict[str, np.ndarray]
    eval_logits: dict[str, np.ndarray]
    profile: dict[str, float]

    @property
    def primary(self) -> ModelRef:
        """The first teacher named in the config (``teacher_uri``)."""
        return self.teachers[0]

    def describe(self) -> list[dict[str, object]]:
        """Per teacher: URI, version, weight and validation accuracy (for tags and the report)."""
        return [
            {"uri": t.uri, "version": t.version, "weight": w, "val_accuracy": a}
            for t, w, a in zip(self.teachers, self.weights, self.val_accuracies)
        ]


def combined_profile(profiles: Sequence[dict[str, float]]) -> dict[str, float]:
    """Serving every teacher for one request: parameters and latencies add, throughputs combine harmonically."""
    if len(profiles) == 1:
        return dict(profiles[0])
    out = {k: float(sum(p[k] for p in profiles)) for k in profiles[0] if k != "throughput"}
    out["throughput"] = 1.0 / sum(1.0 / p["throughput"] for p in profiles)
    return out


def combine_teachers(
    logits: Sequence[TeacherLogits],
    profiles: Sequence[dict[str, float]],
    val_labels: np.ndarray,
    weighting: TeacherWeighting,
    temperature: float,
) -> TeacherEnsemble:
    """Weight the teachers (:func:`teacher_weights` from their validation accuracy on ``val_labels``) and
    combine their evaluation logits split by split, at ``temperature`` for training and at T=1 for
    evaluation (:func:`combine_logits`)."""
    if not logits or len(logits) != len(profiles):
        raise ValueError(f"need one profile per teacher: {len(logits)} teachers' logits, {len(profiles)} profiles")
    accs = [accuracy(z["val"], val_labels) for z in logits]
    weights = teacher_weights(weighting, accs).tolist()
    splits = list(logits[0].splits)
    return TeacherEnsemble(
        teachers=[z.teacher for z in logits],
        weights=weights,
        val_accuracies=accs,
        train_logits={n: combine_logits([z[n] for z in logits], weights, temperature) for n in splits},
        eval_logits={n: combine_logits([z[n] for z in logits], weights, 1.0) for n in splits},
        profile=combined_profile(profiles),
    )
