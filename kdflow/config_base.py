"""The config's building blocks shared by :mod:`kdflow.config`, :mod:`kdflow.config_lifecycle` and
:mod:`kdflow.config_methods`: the error type, every closed set of names the pipeline accepts, the strict base model
(unknown keys are errors) and the two small models several sections use (:class:`ModelSpec`,
:class:`TeacherGateConfig`)."""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class ConfigError(ValueError):
    """A configuration file is missing, unreadable or does not match its schema."""


# Every closed set of names the pipeline accepts, declared once: the config fields, the library functions and the
# flow parameters that take one of them use these aliases.
SplitName = Literal["train", "val", "test"]
Optimizer = Literal["adamw", "adam", "sgd"]
TaskRunnerKind = Literal["threads", "dask"]
TeacherWeighting = Literal["mean", "val_accuracy"]  # kdflow.ensemble.teacher_weights
Correction = Literal["holm", "bonferroni", "bh"]  # multiple-testing correction, kdflow.drift.correct_pvalues
RetrainVia = Literal["auto", "event", "subflow", "none"]  # how a drift check's retrain decision is carried out
RecalibrationTrigger = Literal["schedule", "drift", "manual"]  # what started a recalibration
DriftStatus = Literal["ok", "drift", "cannot_decide"]  # kdflow.drift.DriftCheck.status
DriftAction = Literal[
    "refresh_teacher", "retrain", "recalibrate", "none", "cannot_decide"
]  # kdflow.drift.Decision.action
LossKind = Literal["kd", "dkd", "dist"]  # kdflow.losses.distillation_loss
ServingRuntime = Literal["onnx", "torch"]  # which copy of the registered artifact a scoring server runs
TeacherRefreshMode = Literal["finetune", "retrain"]  # kdflow.teacher_refresh.refresh_model
PreprocessKind = Literal["standard", "robust", "none"]  # kdflow.preprocess
CalibrationMapKind = Literal["vector", "isotonic"]  # the maps tried after temperature scaling, kdflow.calibration
AutocastKind = Literal["none", "bf16"]  # teacher scoring precision, kdflow.device.score_logits
LrScaling = Literal["none", "linear", "sqrt"]  # learning rate vs batch size, kdflow.train.scaled_lr
DEVICE_PATTERN = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")


def check_device_spec(value: str, key: str = "device") -> str:
    """``value`` when it is ``auto``, ``cpu``, ``cuda`` or ``cuda:N``; else a :class:`ConfigError` naming ``key``
    (whether CUDA is present is checked where the work runs: :func:`kdflow.device.resolve_device`)."""
    if not isinstance(value, str) or not DEVICE_PATTERN.match(value):
        raise ConfigError(f"{key}: expected one of auto, cpu, cuda, cuda:N (N a GPU index), found {value!r}")
    return value


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class ModelSpec(_Strict):
    """An architecture from the registry (``mlp``, ``cnn1d``, ``cnn2d``) or ``package.module:build``."""

    arch: str
    args: dict[str, Any] = Field(default_factory=dict)
    # Input standardisation fitted on the train split and stored in the model (kdflow.preprocess):
    # robust (per-feature median/IQR), standard (mean/std) or none (raw inputs).
    preprocess: PreprocessKind = "robust"


class TeacherGateConfig(_Strict):
    """What a trained teacher must show on the test split before it may become ``champion``.

    ``min_accuracy``: absolute floor (recorded as the version's ``kdflow.sla_passed``). ``champion_tolerance``: if
    a champion exists, the new teacher's test accuracy may be at most this much below the champion's, both scored
    on the same test set (1,000 test rows give an accuracy standard error of about 0.008 near 0.94)."""

    min_accuracy: float = Field(default=0.85, ge=0.0, le=1.0)
    champion_tolerance: float = Field(default=0.01, ge=0.0, le=1.0)
