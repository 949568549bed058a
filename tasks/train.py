"""Training tasks: the student from stored teacher logits, the teacher from hard labels."""

from __future__ import annotations

import functools
import tempfile
from pathlib import Path

import numpy as np
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from torch import nn

from kdflow.config import DistillConfig, ModelSpec, TrainConfig
from kdflow.data import Dataset
from kdflow.ensemble import combine_logits
from kdflow.models import build_model, count_parameters
from kdflow.plots import training_curves
from kdflow.stream import ArraySource, StreamingSource
from kdflow.train import TrainResult, fit, seed_everything
from tasks.logits import TeacherEnsemble, logit_stores
from tasks.tracking import log_artifact, log_metrics


@task(name="train-student", cache_policy=NO_CACHE)
def train_student(cfg: DistillConfig, ensemble: TeacherEnsemble, datasets: dict[str, Dataset],
                  run_id: str) -> tuple[nn.Module, TrainResult]:
    """Distil a fresh student from the stored logits, streamed shard by shard with the labeled train rows and
    the unlabeled transfer (and, when retraining, recent production) rows (no teacher runs here); several teachers' logits are combined per batch
    (:func:`kdflow.ensemble.combine_logits`). Curves go to MLflow."""
    seed_everything(cfg.train.seed)  # the initial weights too: same config, same student
    model = build_model(cfg.student.arch, cfg.student.args, datasets["train"].input_shape, cfg.data.num_classes)
    per_teacher = [logit_stores(cfg, t, datasets) for t in ensemble.teachers]
    splits = [("train", cfg.data.train, True)] + [(n, getattr(cfg.data, n), False) for n in ("transfer", "recent")
                                                  if getattr(cfg.data, n)]
    parts = [(name, uri, [stores[name] for stores in per_teacher], labeled) for name, uri, labeled in splits]
    combine = (functools.partial(combine_logits, weights=ensemble.weights, temperature=cfg.train.temperature)
               if len(ensemble.teachers) > 1 else None)
    source = StreamingSource(parts, cfg.data, [t.version for t in ensemble.teachers],
                             {n: d.fingerprint for n, d in datasets.items()}, cfg.store.endpoint_url, combine=combine)
    get_run_logger().info("student %s: %d parameters, %d training rows streamed from %d row groups",
                          cfg.student.arch, count_parameters(model), len(source), len(source.chunks))
    try:
        return model, _fit(model, cfg.train, source, datasets["val"], ensemble.train_logits["val"], run_id, "student")
    finally:
        source.close()


@task(name="train-teacher", cache_policy=NO_CACHE)
def train_teacher(spec: ModelSpec, train_cfg: TrainConfig, num_classes: int, datasets: dict[str, Dataset],
                  run_id: str) -> tuple[nn.Module, TrainResult]:
    """Train a teacher on the labeled train split with cross-entropy."""
    seed_everything(train_cfg.seed)
    model = build_model(spec.arch, spec.args, datasets["train"].input_shape, num_classes)
    get_run_logger().info("teacher %s: %d parameters", spec.arch, count_parameters(model))
    ds = datasets["train"]
    return model, _fit(model, train_cfg, ArraySource(ds.x, ds.y), datasets["val"], None, run_id, "teacher")


def _fit(model: nn.Module, cfg: TrainConfig, source: ArraySource | StreamingSource, val: Dataset,
         z_val: np.ndarray | None, run_id: str, who: str) -> TrainResult:
    logger = get_run_logger()

    def on_epoch(m: dict[str, float]) -> None:
        log_metrics(run_id, {f"{who}_{k}": v for k, v in m.items() if k != "epoch"}, step=int(m["epoch"]))
        logger.info("%s epoch %d: loss %.4f (soft %.4f, hard %.4f) val_acc %.4f (%.1fs)", who, int(m["epoch"]),
                    m["loss"], m["soft_loss"], m["hard_loss"], m["val_accuracy"], m["epoch_seconds"])

    result = fit(model, source, val.x, val.y, cfg, teacher_val_logits=z_val, on_epoch=on_epoch)
    log_metrics(run_id, {f"{who}_best_epoch": result.best_epoch, f"{who}_best_val_accuracy": result.best_val_accuracy})
    with tempfile.TemporaryDirectory() as tmp:
        log_artifact(run_id, training_curves(result.history, Path(tmp) / f"{who}_training_curves.png"), "plots")
    return result
