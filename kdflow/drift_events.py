"""The events a drift check emits when it decides to act: ``kdflow.drift.detected`` for a retrain (the retrain
deployment's trigger expects it) and ``kdflow.teacher.degraded`` for a teacher refresh (the teacher-refresh
deployment's). Plain data: the tasks emit them."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
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
    config_path: str, ref: registry.ModelRef, as_of: datetime, check: DriftCheck, decision: Decision
) -> DriftEvent:
    """The event announcing ``decision`` for the student ``ref``: ``kdflow.teacher.degraded`` for
    ``refresh_teacher``, else ``kdflow.drift.detected``; a deployment trigger on it starts the teacher-refresh or
    the retrain deployment with the payload's ``config_path`` (absolute), ``as_of`` and ``reason``."""
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
        },
    )
