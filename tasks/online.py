"""Online (mutual) distillation tasks: co-train teacher and student, register the co-trained teacher."""

from __future__ import annotations

import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from prefect import get_run_logger
from prefect.transactions import get_transaction

from kdflow.config import DistillConfig, OnlineConfig
from kdflow.data import Dataset
from kdflow.models import count_parameters
from kdflow.mutual import OnlineTraining, train_online
from kdflow.plots import training_curves
from kdflow.registry import tag_version
from kdflow.sla import register_teacher_version
from tasks import kdflow_task
from tasks.registry import withdraw_on_rollback
from tasks.tracking import log_artifact, log_metrics


@kdflow_task(name="co-train")
def co_train(cfg: DistillConfig, datasets: Mapping[str, Dataset], run_id: str) -> OnlineTraining:
    """:func:`kdflow.mutual.train_online`: teacher and student trained together on the labeled train split; each
    epoch's figures go to the MLflow run as ``student_*`` / ``teacher_*`` metrics, both training curves as plots."""
    logger = get_run_logger()

    def on_epoch(who: str, m: dict[str, float]) -> None:
        log_metrics(run_id, {f"{who}_{k}": v for k, v in m.items() if k != "epoch"}, step=int(m["epoch"]))
        logger.info(
            "%s epoch %d: loss %.4f (CE %.4f, KL %.4f) val_acc %.4f agreement %.4f", who, int(m["epoch"]), m["loss"],
            m["hard_loss"], m["soft_loss"], m["val_accuracy"], m["val_agreement"],
        )  # fmt: skip

    pair = train_online(cfg, datasets, on_epoch=on_epoch)
    for who, result in (("student", pair.result.student), ("teacher", pair.result.teacher)):
        log_metrics(
            run_id, {f"{who}_best_epoch": result.best_epoch, f"{who}_best_val_accuracy": result.best_val_accuracy}
        )
        with tempfile.TemporaryDirectory() as tmp:  # a PNG file: MLflow uploads files
            log_artifact(run_id, training_curves(result.history, Path(tmp) / f"{who}_training_curves.png"), "plots")
    logger.info(
        "co-trained: student %d parameters (best val %.4f), teacher %d (best val %.4f)",
        count_parameters(pair.student), pair.result.student.best_val_accuracy,
        count_parameters(pair.teacher), pair.result.teacher.best_val_accuracy,
    )  # fmt: skip
    return pair


@kdflow_task(name="register-cotrained-teacher", retries=1, retry_delay_seconds=2)
def register_cotrained_teacher(
    pair: OnlineTraining, datasets: Mapping[str, Dataset], name: str, alias: str, run_id: str, online: OnlineConfig,
    lineage: dict[str, Any],
) -> dict[str, Any]:  # fmt: skip
    """:func:`kdflow.sla.register_teacher_version`: judge the co-trained teacher by ``online.teacher_gate``, register
    it from its own run ``run_id`` as ``challenger`` (``alias`` too when it passes and is not ``champion``: the flow
    promotes), with ``lineage`` tags. Idempotent under retries; withdrawn again if the flow's transaction fails."""
    verdict, model_uri, version, aliases = register_teacher_version(
        pair.teacher, datasets, name, alias, run_id, online.teacher_gate
    )
    get_transaction().set("registered", (name, version))
    tag_version(name, version, lineage)
    (get_run_logger().info if verdict.promote else get_run_logger().warning)(
        "co-trained teacher %s version %s (test accuracy %.4f): %s",
        name,
        version,
        verdict.test_accuracy,
        verdict.reason,
    )
    return {
        "name": name, "version": version, "alias": alias, "aliases": aliases, "model_uri": model_uri,
        "run_id": run_id, "test_accuracy": verdict.test_accuracy, "promote": verdict.promote, "reason": verdict.reason,
        "best_val_accuracy": pair.result.teacher.best_val_accuracy, "params": count_parameters(pair.teacher),
    }  # fmt: skip


register_cotrained_teacher.on_rollback(withdraw_on_rollback)
