"""Teacher health: the registered teacher's accuracy on recent labeled production traffic against its own reference
accuracy. It tells a teacher that has degraded (distilling from it again is pointless: refresh the teacher) from a
student that drifted away from a still-good teacher (retrain the student); :func:`kdflow.drift.decide` chooses.

The reference is the teacher version's registered test accuracy (tag ``kdflow.test_accuracy``, written when it was
trained and gated), or ``kdflow.reference_accuracy`` when a version records one (a refreshed teacher measured on
the regime it was refreshed for). Not the student's reference profile: that is rebuilt on production traffic at
every retrain and recalibration, so after a shift it would describe the degraded regime and hide the drop; the
teacher's own test accuracy stays the measure of what the teacher can do on the traffic it was built for, and a
test split drawn like the training data is what production traffic looks like before any drift.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from kdflow import metrics as eval_metrics
from kdflow import registry
from kdflow.config import DriftConfig
from kdflow.drift import DriftCheck, Signal
from kdflow.inference_logs import LogWindow

SIGNAL = "teacher_accuracy"
_P = registry.TAG_PREFIX
REFERENCE_TAGS = (f"{_P}reference_accuracy", f"{_P}test_accuracy")  # first present wins


@dataclass(frozen=True)
class TeacherReference:
    """The teacher a drift check scores: its pinned version, the loaded module, its reference accuracy (None:
    no tag records one) and which tag it came from."""

    ref: registry.ModelRef
    model: Any  # torch.nn.Module
    accuracy: float | None
    source: str


def reference_accuracy(tags: dict[str, str]) -> tuple[float | None, str]:
    """The first of :data:`REFERENCE_TAGS` present in the version ``tags`` as a number, and its tag name; (None,
    why) when none is."""
    for tag in REFERENCE_TAGS:
        try:
            return float(tags[tag]), tag
        except (KeyError, ValueError):
            continue
    return None, f"the teacher version has no reference accuracy (tags {', '.join(REFERENCE_TAGS)})"


def teacher_name(uri: str) -> str:
    """The registered model's name in ``models:/<name>@<alias>`` or ``models:/<name>/<version>`` (else ``uri``)."""
    return uri.removeprefix("models:/").split("@")[0].split("/")[0]


def load_teacher(tracking_uri: str, uri: str) -> TeacherReference:
    """Resolve and load the teacher ``uri`` (``models:/<name>@<alias>`` or ``/<version>``) with its reference
    accuracy from its version tags."""
    from mlflow import MlflowClient

    registry.configure_tracking(tracking_uri)
    ref = registry.resolve(uri)
    tags = dict(MlflowClient().get_model_version(ref.name, ref.version).tags or {})
    accuracy, source = reference_accuracy(tags)
    return TeacherReference(ref, registry.load_torch_model(ref), accuracy, source)


def teacher_signal(
    accuracy: float | None, n_labeled: int, reference: float | None, source: str, cfg: DriftConfig, version: str = ""
) -> Signal:
    """``teacher_accuracy``: the drop ``reference - accuracy`` of the teacher's accuracy on ``n_labeled`` labeled
    rows below its reference accuracy, exceeded when above ``cfg.max_teacher_accuracy_drop``; not computed (value
    None, with the reason) without a reference or with fewer than ``cfg.min_labeled_rows`` labeled rows."""
    threshold = cfg.max_teacher_accuracy_drop
    if reference is None:
        return Signal(SIGNAL, None, threshold, None, source)
    if accuracy is None or n_labeled < cfg.min_labeled_rows:
        why = f"{n_labeled} labeled rows, fewer than min_labeled_rows={cfg.min_labeled_rows}"
        return Signal(SIGNAL, None, threshold, None, f"teacher not scored: {why}")
    drop = reference - accuracy
    exceeded = drop > threshold
    teacher = f"teacher v{version}" if version else "teacher"
    return Signal(
        SIGNAL,
        float(drop),
        float(threshold),
        bool(exceeded),
        f"{teacher} accuracy {accuracy:.4f} on {n_labeled} labeled rows vs its reference {reference:.4f} "
        f"({source.removeprefix(_P)}): drop {drop:.4f} {'>' if exceeded else '<='} {threshold:g}",
    )


def score_teacher(model: Any, x: np.ndarray, labels: np.ndarray, input_shape: list[int] | None = None) -> float:
    """The teacher's accuracy on logged inputs ``x`` (n, d) — reshaped to ``(n, *input_shape)`` when the model
    takes shaped inputs — against ``labels``."""
    from kdflow.train import predict_logits

    inputs = np.asarray(x, dtype=np.float32)
    if input_shape:
        inputs = inputs.reshape(len(inputs), *input_shape)
    return eval_metrics.accuracy(predict_logits(model, inputs), np.asarray(labels, dtype=np.int64))


def check_teacher(
    teacher: TeacherReference, window: LogWindow, cfg: DriftConfig, input_shape: list[int] | None = None
) -> tuple[Signal, float | None]:
    """The ``teacher_accuracy`` signal on every labeled row of ``window`` (whichever student version served it,
    the label-lag days included: the teacher's accuracy does not depend on who answered), and that accuracy."""
    known = window.label_mask
    n = int(known.sum())
    accuracy = None
    if teacher.accuracy is not None and n >= cfg.min_labeled_rows:
        accuracy = score_teacher(teacher.model, window.x[known], window.labels[known], input_shape)
    return teacher_signal(accuracy, n, teacher.accuracy, teacher.source, cfg, teacher.ref.version), accuracy


def teacher_check(
    tracking_uri: str, uri: str, window: LogWindow, cfg: DriftConfig, input_shape: list[int] | None = None
) -> tuple[Signal, float | None]:
    """:func:`check_teacher` of the registered teacher ``uri``; a teacher that cannot be resolved or loaded gives
    the signal not computed, with the reason (the student's check goes on)."""
    try:
        teacher = load_teacher(tracking_uri, uri)
    except registry.RegistryError as exc:
        return Signal(SIGNAL, None, cfg.max_teacher_accuracy_drop, None, f"teacher {uri} not loaded: {exc}"), None
    return check_teacher(teacher, window, cfg, input_shape)


def with_teacher(check: DriftCheck, signal: Signal, accuracy: float | None) -> DriftCheck:
    """``check`` with the teacher signal added (and ``metrics["teacher_accuracy"]``); an exceeded signal makes
    the status ``drift``, one not computed is named in the reason. A check that cannot decide is returned
    unchanged."""
    if check.status == "cannot_decide":
        return check
    signals = {**check.signals, SIGNAL: signal}
    metrics = {**check.metrics, **({SIGNAL: accuracy} if accuracy is not None else {})}
    if signal.exceeded:
        drift = f"{SIGNAL}: {signal.detail}"
        reason = f"{check.reason}; {drift}" if check.status == "drift" else f"drift: {drift}"
        return replace(check, status="drift", reason=reason, signals=signals, metrics=metrics)
    missing = "" if signal.value is not None else f"; not computed: {SIGNAL} ({signal.detail})"
    return replace(check, reason=check.reason + missing, signals=signals, metrics=metrics)
