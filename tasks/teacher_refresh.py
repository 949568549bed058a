"""Teacher-refresh tasks (:mod:`kdflow.teacher_refresh`): the recent labeled window, the training data, training,
the gate, the registration of the refreshed teacher (undone when the refresh fails) and the run's outcome."""

from __future__ import annotations

from datetime import datetime

from prefect import get_run_logger
from prefect.transactions import Transaction, get_transaction
from torch import nn

from kdflow import monitor, registry, teacher_refresh
from kdflow.config import DistillConfig, ModelSpec, TeacherRefreshConfig, TrainConfig
from kdflow.data import Dataset, Datasets, to_frame, write_parquet
from kdflow.monitor import LabeledWindow
from kdflow.stream import ArraySource
from kdflow.teacher_refresh import RefreshData, RefreshVerdict
from kdflow.train import TrainResult, fit
from tasks import kdflow_task
from tasks.promotion import promotion_slot, run_actor
from tasks.registry import _withdraw
from tasks.tracking import log_metrics


@kdflow_task(name="collect-refresh-window", retries=1, retry_delay_seconds=2)
def collect_refresh_window(cfg: DistillConfig, window: tuple[datetime, datetime]) -> tuple[LabeledWindow, str | None]:
    """The labeled rows of ``window`` (:func:`kdflow.teacher_refresh.refresh_window`; logs validated with the
    inference-log suite, labels known by its end), written as Parquet for the dataset suites when there are at
    least ``teacher_refresh.min_labeled_rows`` (else the path is None: no refresh)."""
    start, end = window
    labeled_window = monitor.read_labeled_window(cfg.logs, cfg.validation, cfg.data.num_classes, start, end)
    labeled = labeled_window.labeled
    get_run_logger().info("refresh window [%s, %s): %d rows, %d labeled", start, end, labeled_window.rows, len(labeled))
    if len(labeled) < cfg.teacher_refresh.min_labeled_rows:
        return labeled_window, None
    out = teacher_refresh.refresh_dir(cfg.output_dir, end) / "recent_labeled.parquet"
    return labeled_window, str(write_parquet(to_frame(labeled.ids, labeled.x, labeled.y), out))


@kdflow_task(name="split-refresh-data")
def split_refresh_data(datasets: Datasets, cfg: TeacherRefreshConfig) -> RefreshData:
    """Held-out, validation and training parts of the recent rows, with replay (:func:`prepare_refresh_data`)."""
    data = teacher_refresh.prepare_refresh_data(datasets["recent_labeled"], datasets.train, datasets.val, cfg)
    get_run_logger().info("refresh data: %s", data.rows)
    return data


@kdflow_task(name="train-refreshed-teacher")
def train_refreshed_teacher(
    cfg: TeacherRefreshConfig,
    parent: registry.ModelRef,
    spec: ModelSpec | None,
    base: TrainConfig,
    data: RefreshData,
    num_classes: int,
    run_id: str,
) -> tuple[nn.Module, TrainResult]:
    """Fine-tune the parent teacher (loaded afresh) or train its architecture from scratch on the mix."""
    model = teacher_refresh.refresh_model(
        cfg.mode, registry.load_torch_model(parent), spec, data.train.input_shape, num_classes
    )
    train_cfg = teacher_refresh.refresh_train_config(cfg, base)
    logger = get_run_logger()
    logger.info(
        "%s teacher %s v%s: %d epochs at lr %g", cfg.mode, parent.name, parent.version, train_cfg.epochs, train_cfg.lr
    )

    def on_epoch(m: dict[str, float]) -> None:
        log_metrics(run_id, {f"teacher_{k}": v for k, v in m.items() if k != "epoch"}, step=int(m["epoch"]))

    source = ArraySource(data.train.x, data.train.y)
    result = fit(model, source, data.val.x, data.val.y, train_cfg, on_epoch=on_epoch, progress=False)
    log_metrics(
        run_id, {"teacher_best_epoch": result.best_epoch, "teacher_best_val_accuracy": result.best_val_accuracy}
    )
    logger.info("best epoch %d, validation accuracy %.4f", result.best_epoch, result.best_val_accuracy)
    return model, result


@kdflow_task(name="gate-refreshed-teacher", retries=1, retry_delay_seconds=2)
def gate_refreshed_teacher(
    model: nn.Module, parent: registry.ModelRef, holdout: Dataset, test: Dataset, cfg: TeacherRefreshConfig, run_id: str
) -> RefreshVerdict:
    """New vs champion teacher on the held-out recent slice and the old test split (:func:`score_refresh`)."""
    verdict = teacher_refresh.score_refresh(model, registry.load_torch_model(parent), holdout, test, cfg)
    log_metrics(run_id, verdict.metrics())
    (get_run_logger().info if verdict.promote else get_run_logger().warning)("refresh gate: %s", verdict.reason)
    return verdict


@kdflow_task(name="register-refreshed-teacher", retries=1, retry_delay_seconds=2)
def register_refreshed_teacher(
    model: nn.Module, dataset: Dataset, name: str, run_id: str, tags: dict[str, object]
) -> dict[str, str]:
    """Register the refreshed teacher as ``challenger`` with its lineage and verdict (idempotent under retries).
    Inside a ``transaction()`` that then fails, :func:`_undo_on_rollback` undoes it."""
    model_uri, version = teacher_refresh.register_refreshed(model, dataset.x[:5], name, run_id, tags)
    get_transaction().set("registered", (name, version))
    get_run_logger().info("registered refreshed teacher %s version %s as challenger", name, version)
    return {"name": name, "version": version, "model_uri": model_uri}


@register_refreshed_teacher.on_rollback
def _undo_on_rollback(txn: Transaction) -> None:
    """The refresh failed after registering: a version that became champion is rolled back (the previous
    teacher serves again; the version stays, tagged, for the audit trail), any other version is withdrawn."""
    registered = txn.get("registered", None)
    if not registered:
        return
    name, version = registered
    if registry.alias_version(name, registry.CHAMPION) != version:
        _withdraw(name, version, "the teacher refresh failed after registering it")
        return
    who, flow_run = run_actor("teacher-refresh-flow")
    why = "the teacher refresh failed after promoting it"
    back = registry.rollback(name, why, who, lock=promotion_slot(name), flow_run=flow_run)
    registry.tag_version(name, version, {teacher_refresh.OUTCOME_TAG: "rolled back"})
    get_run_logger().warning("%s: champion rolled back %s -> %s: %s", name, version, back.version, why)


@kdflow_task(name="record-refresh-outcome", retries=1, retry_delay_seconds=2)
def record_refresh_outcome(run_id: str, outcome: str, reason: str, metrics: dict[str, float]) -> None:
    """Tag the refresh's MLflow run with its outcome and reason; log the phase times."""
    teacher_refresh.record_outcome(run_id, outcome, reason, metrics)
    get_run_logger().info("teacher refresh %s: %s", outcome, reason)
