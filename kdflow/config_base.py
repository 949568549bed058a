"""The config's building blocks shared by :mod:`kdflow.config` and :mod:`kdflow.config_lifecycle`: the error type,
every closed set of names the pipeline accepts, and the strict base model (unknown keys are errors)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict


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


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())
