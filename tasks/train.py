"""Training tasks: the student from stored teacher logits, the teacher from hard labels."""

from __future__ import annotations

import tempfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np
from prefect import get_run_logger
from torch import nn

from kdflow.checkpoint import Checkpoints, training_key
from kdflow.config import DistillConfig, ModelSpec, StoreConfig, TrainConfig
from kdflow.data import Dataset, Datasets
from kdflow.device import resolve_device
from kdflow.ensemble import TeacherEnsemble
from kdflow.models import build_for_training, count_parameters
from kdflow.plots import training_curves
from kdflow.store import open_store
from kdflow.stream import ArraySource, StreamingSource
from kdflow.student import prepare_student_training
from kdflow.train import TrainResult, fit, scaled_lr, seed_everything
from tasks import kdflow_task
from tasks.tracking import log_artifact, log_dict, log_metrics


@kdflow_task(name="train-student")
def train_student(
    cfg: DistillConfig, ensemble: TeacherEnsemble, datasets: Datasets, run_id: str
) -> tuple[nn.Module, TrainResult]:
    """Distil a fresh student from the stored logits (no teacher runs here): the model, its streamed input and
    its checkpoints come from :func:`kdflow.student.prepare_student_training`; the best epoch is picked on
    ``datasets.selection`` (a retrain's recent labeled rows; its name is the run tag ``kdflow.selection_split``
    and its rows the metric ``selection_rows``). Curves go to MLflow, and with
    ``hard_examples.enabled`` the selection (``hard_examples_*`` metrics, ``hard_examples/selection.json``)."""
    training = prepare_student_training(cfg, ensemble, datasets)
    get_run_logger().info(training.describe(cfg.student.arch))
    from mlflow import MlflowClient

    hard, selection = training.hard_examples, datasets.selection
    get_run_logger().info("best epoch chosen on %s (%d rows)", selection.name, len(selection))
    MlflowClient().set_tag(run_id, "kdflow.selection_split", selection.name)
    log_metrics(run_id, {"selection_rows": len(selection)})
    try:
        if hard is not None:  # selected rows, their mean entropy, the mode (also the param hard_examples.mode)
            get_run_logger().info(hard.describe())
            log_metrics(run_id, hard.metrics())
            log_dict(run_id, hard.as_dict(), "hard_examples/selection.json")
        result = _fit(
            training.model, cfg.train, training.source, selection, ensemble.train_logits[selection.name], run_id,
            "student", training.checkpoints, cfg.device,
        )  # fmt: skip
        result.hard_examples = hard.as_dict() if hard is not None else None
        return training.model, result
    finally:
        training.source.close()


@kdflow_task(name="train-teacher")
def train_teacher(
    spec: ModelSpec,
    train_cfg: TrainConfig,
    num_classes: int,
    datasets: Mapping[str, Dataset],
    run_id: str,
    store: StoreConfig | None = None,
    device: str = "auto",
) -> tuple[nn.Module, TrainResult]:
    """Train a teacher on the labeled train split with cross-entropy (its input preprocessing fitted on that
    split first, :func:`kdflow.models.build_for_training`) on ``device``, checkpointing to ``store`` (when given)
    so a re-run of the same training resumes. The model comes back on the CPU."""
    seed_everything(train_cfg.seed)
    model = build_for_training(spec, datasets["train"].x, num_classes)  # preprocessing fitted on train
    get_run_logger().info(
        "teacher %s: %d parameters, %s input preprocessing", spec.arch, count_parameters(model), spec.preprocess
    )
    ds = datasets["train"]
    checkpoints = None
    if store is not None:
        key = training_key(
            "teacher", spec, train_cfg, num_classes, ds.input_shape, {n: d.fingerprint for n, d in datasets.items()}
        )
        checkpoints = Checkpoints(open_store(store.root, store.endpoint_url), key, train_cfg.checkpoint_every_epochs)
    source = ArraySource(ds.x, ds.y)
    return model, _fit(model, train_cfg, source, datasets["val"], None, run_id, "teacher", checkpoints, device)


def _fit(
    model: nn.Module,
    cfg: TrainConfig,
    source: ArraySource | StreamingSource,
    val: Dataset,
    z_val: np.ndarray | None,
    run_id: str,
    who: str,
    checkpoints: Checkpoints | None,
    device: str = "auto",
) -> TrainResult:
    logger = get_run_logger()
    if checkpoints is not None and checkpoints.enabled:
        logger.info(
            "%s training %s: checkpoints every %d epoch(s) at %s",
            who,
            checkpoints.key,
            checkpoints.every_epochs,
            checkpoints.store.url(checkpoints.prefix),
        )

    def on_epoch(m: dict[str, float]) -> None:
        log_metrics(run_id, {f"{who}_{k}": v for k, v in m.items() if k != "epoch"}, step=int(m["epoch"]))
        logger.info(
            "%s epoch %d: loss %.4f (soft %.4f, hard %.4f) val_acc %.4f (%.1fs, %.1fs of it waiting for input)",
            who,
            int(m["epoch"]),
            m["loss"],
            m["soft_loss"],
            m["hard_loss"],
            m["val_accuracy"],
            m["epoch_seconds"],
            m["input_wait_seconds"],
        )

    where = resolve_device(device)
    logger.info("%s training on %s at batch %d (lr %.4g)", who, where, cfg.batch_size, scaled_lr(cfg))
    result = fit(model, source, val.x, val.y, cfg, z_val, on_epoch, checkpoints=checkpoints, device=where)
    if result.resumed_from_epoch:
        logger.info("%s resumed from the checkpoint after epoch %d", who, result.resumed_from_epoch)
        for m in result.history[: result.resumed_from_epoch]:  # this run's curves cover the restored epochs too
            log_metrics(run_id, {f"{who}_{k}": v for k, v in m.items() if k != "epoch"}, step=int(m["epoch"]))
    log_metrics(
        run_id,
        {
            f"{who}_best_epoch": result.best_epoch,
            f"{who}_best_val_accuracy": result.best_val_accuracy,
            f"{who}_resumed_from_epoch": result.resumed_from_epoch,
        },
    )
    with tempfile.TemporaryDirectory() as tmp:  # a PNG file: MLflow uploads files
        log_artifact(run_id, training_curves(result.history, Path(tmp) / f"{who}_training_curves.png"), "plots")
    return result
