"""Training tasks: the student from stored teacher logits, the teacher from hard labels."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from torch import nn

from kdflow.config import ModelSpec, TrainConfig
from kdflow.data import Dataset
from kdflow.models import build_model, count_parameters
from kdflow.plots import training_curves
from kdflow.train import TrainResult, train_classifier
from tasks.tracking import log_artifact, log_metrics


def student_training_set(datasets: dict[str, Dataset], logits: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Labeled train rows plus the unlabeled transfer rows (label -1), with their teacher logits."""
    parts = ["train"] + (["transfer"] if "transfer" in datasets else [])
    x = np.concatenate([datasets[p].x for p in parts])
    y = np.concatenate([datasets[p].y if datasets[p].y is not None else np.full(len(datasets[p]), -1) for p in parts])
    z = np.concatenate([logits[p] for p in parts])
    return x, y, z


@task(name="train-student", cache_policy=NO_CACHE)
def train_student(spec: ModelSpec, train_cfg: TrainConfig, num_classes: int, datasets: dict[str, Dataset],
                  logits: dict[str, np.ndarray], run_id: str) -> tuple[nn.Module, TrainResult]:
    """Distil a fresh student from the stored logits (the teacher never runs here); log curves to MLflow."""
    model = build_model(spec.arch, spec.args, datasets["train"].input_shape, num_classes)
    x, y, z = student_training_set(datasets, logits)
    get_run_logger().info("student %s: %d parameters, %d training rows (%d labeled)",
                          spec.arch, count_parameters(model), len(x), int((y >= 0).sum()))
    return model, _fit(model, train_cfg, x, y, z, datasets["val"], logits["val"], run_id, "student")


@task(name="train-teacher", cache_policy=NO_CACHE)
def train_teacher(spec: ModelSpec, train_cfg: TrainConfig, num_classes: int, datasets: dict[str, Dataset],
                  run_id: str) -> tuple[nn.Module, TrainResult]:
    """Train a teacher on the labeled train split with cross-entropy."""
    model = build_model(spec.arch, spec.args, datasets["train"].input_shape, num_classes)
    get_run_logger().info("teacher %s: %d parameters", spec.arch, count_parameters(model))
    ds = datasets["train"]
    return model, _fit(model, train_cfg, ds.x, ds.y, None, datasets["val"], None, run_id, "teacher")


def _fit(model: nn.Module, cfg: TrainConfig, x: np.ndarray, y: np.ndarray, z: np.ndarray | None, val: Dataset,
         z_val: np.ndarray | None, run_id: str, who: str) -> TrainResult:
    logger = get_run_logger()

    def on_epoch(m: dict[str, float]) -> None:
        log_metrics(run_id, {f"{who}_{k}": v for k, v in m.items() if k != "epoch"}, step=int(m["epoch"]))
        logger.info("%s epoch %d: loss %.4f (soft %.4f, hard %.4f) val_acc %.4f (%.1fs)", who, int(m["epoch"]),
                    m["loss"], m["soft_loss"], m["hard_loss"], m["val_accuracy"], m["epoch_seconds"])

    result = train_classifier(model, x, y, val.x, val.y, cfg, teacher_logits=z, teacher_val_logits=z_val, on_epoch=on_epoch)
    log_metrics(run_id, {f"{who}_best_epoch": result.best_epoch, f"{who}_best_val_accuracy": result.best_val_accuracy})
    with tempfile.TemporaryDirectory() as tmp:
        log_artifact(run_id, training_curves(result.history, Path(tmp) / f"{who}_training_curves.png"), "plots")
    return result
