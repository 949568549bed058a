"""Recalibration tasks: the labeled window, the refit judged against ECE and every SLA, and its record
(:mod:`kdflow.monitor`, :mod:`kdflow.lifecycle`)."""

from __future__ import annotations

from datetime import datetime

from prefect import get_run_logger
from prefect.artifacts import create_markdown_artifact

from kdflow import monitor
from kdflow.config import (
    CalibrationConfig,
    CascadeConfig,
    LogsConfig,
    RecalibrationConfig,
    RecalibrationTrigger,
    SLAConfig,
    ValidationConfig,
)
from kdflow.lifecycle import RecalibrationOutcome
from kdflow.monitor import Champion, LabeledWindow
from tasks import kdflow_task


@kdflow_task(name="labeled-window")
def labeled_window(
    logs: LogsConfig, validation: ValidationConfig, num_classes: int, start: datetime, end: datetime
) -> LabeledWindow:
    """The labeled rows of the validated logs in ``[start, end)`` (:func:`kdflow.monitor.read_labeled_window`)."""
    window = monitor.read_labeled_window(logs, validation, num_classes, start, end)
    get_run_logger().info(
        "labeled window [%s, %s): %d of %d rows labeled",
        start.isoformat(),
        end.isoformat(),
        len(window.labeled),
        window.rows,
    )
    return window


@kdflow_task(name="refit-and-judge")
def refit_and_judge(
    champion: Champion,
    window: LabeledWindow,
    trigger: RecalibrationTrigger,
    cfg: RecalibrationConfig,
    calibration: CalibrationConfig,
    sla: SLAConfig,
    cascade: CascadeConfig,
    min_shadow_rows: int,
) -> RecalibrationOutcome:
    """Refit the champion's temperature on the labeled window and judge it against ECE and every SLA; refit the
    cascade threshold at the new temperature (:func:`kdflow.monitor.recalibrate`)."""
    outcome = monitor.recalibrate(champion, window, trigger, cfg, calibration, sla, cascade, min_shadow_rows)
    get_run_logger().info("recalibration of %s v%s: %s", champion.ref.name, champion.ref.version, outcome.reason)
    if outcome.cascade_reason:
        get_run_logger().info("cascade: %s", outcome.cascade_reason)
    return outcome


@kdflow_task(name="record-recalibration", retries=1, retry_delay_seconds=2)
def record_recalibration(run_id: str, name: str, as_of: datetime, outcome: RecalibrationOutcome) -> None:
    """Metrics, ``recalibration.json`` (:func:`kdflow.monitor.record_recalibration`) and a Prefect markdown
    artifact saying what changed, or why nothing did.

    A repeat is harmless, so it is retried as is: it creates no run and no version; the markdown artifact is
    written last, so an attempt that created it did not fail before it."""
    monitor.record_recalibration(run_id, outcome)
    create_markdown_artifact(
        key="kdflow-recalibration",
        markdown=outcome.markdown(name, as_of),
        description=f"recalibration of {name} v{outcome.parent_version}",
    )
    get_run_logger().info("recalibration: %s", outcome.reason)
