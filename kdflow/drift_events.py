"""The events a drift check emits when it decides to act: ``kdflow.drift.detected`` for a retrain (the retrain
deployment's trigger expects it) and ``kdflow.teacher.degraded`` for a teacher refresh (the teacher-refresh
deployment's). Plain data: the tasks emit them."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from kdflow import registry
from kdflow.drift import Decision, DriftCheck
from kdflow.events import DRIFT_EVENT, MODEL_RESOURCE_PREFIX, TEACHER_DEGRADED_EVENT


@dataclass(frozen=True)
class DriftEvent:
    """The event of a retrain or refresh decision: its name, resource (``kdflow.model.<name>``) and payload (the
    config to act with, ``as_of``, model, version, statistics, triggered signals, reason)."""

    event: str
    resource: dict[str, str]
    payload: dict[str, Any]


def drift_event(
    config_path: str,
    ref: registry.ModelRef,
    as_of: datetime,
    check: DriftCheck,
    decision: Decision,
    label_lag_days: float = 0.0,
) -> DriftEvent:
    """The event announcing ``decision`` for the student ``ref``: ``kdflow.teacher.degraded`` for
    ``refresh_teacher``, else ``kdflow.drift.detected``; a deployment trigger on it starts the teacher-refresh or
    the retrain deployment with the payload's ``config_path`` (absolute), ``as_of`` and ``reason`` (a refresh also
    ``since``: :func:`refresh_since`, with the drift config's ``label_lag_days``)."""
    return DriftEvent(
        TEACHER_DEGRADED_EVENT if decision.action == "refresh_teacher" else DRIFT_EVENT,
        {
            "prefect.resource.id": f"{MODEL_RESOURCE_PREFIX}{ref.name}",
            "kdflow.model": ref.name,
            "kdflow.version": str(ref.version),
        },
        {
            "config_path": str(Path(config_path).resolve()),
            "as_of": as_of.isoformat(),
            "model": ref.name,
            "version": str(ref.version),
            "statistics": {s.name: s.value for s in check.signals.values() if s.value is not None},
            "triggered": decision.triggered,
            "reason": decision.reason,
            **({"since": refresh_since(decision, label_lag_days)} if decision.action == "refresh_teacher" else {}),
        },
    )


def refresh_since(decision: Decision, label_lag_days: float) -> str:
    """Where the rows behind a ``refresh_teacher`` decision begin (ISO 8601; "" when unknown): the start of the
    first window of the ``teacher_accuracy`` streak, less ``label_lag_days`` (that check also scored the labeled
    rows of the lag days before its window). The refresh trains on rows from there on: the regime the teacher
    failed on."""
    start = decision.since.get("teacher_accuracy")
    if not start:
        return ""
    return (datetime.fromisoformat(start) - timedelta(days=label_lag_days)).isoformat()
