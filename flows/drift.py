"""The daily drift check: champion + its reference profile -> a window of logs -> statistics and the teacher's
health -> decision -> MLflow + Prefect artifact -> when the teacher degraded, the ``kdflow.teacher.degraded`` event
and a teacher refresh; when the student drifted, the ``kdflow.drift.detected`` event and a retrain; when only the
probabilities are off (or a retrain is cooling down), a recalibration on the traffic since the drift began."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from prefect import flow

from flows.recalibrate import recalibration_flow
from flows.retrain import retrain_flow
from kdflow.config import DistillConfig, DriftConfig, RetrainVia, load_config
from kdflow.drift import Decision
from kdflow.drift_events import refresh_since
from kdflow.lifecycle import parse_as_of
from kdflow.monitor import DriftCheckResult, drift_window
from kdflow.teacher_health import teacher_name
from tasks.drift import (
    check_drift,
    decide_action,
    drift_history,
    emit_drift_event,
    record_drift_check,
    retrain_route,
    served_versions,
    teacher_health_check,
)
from tasks.monitoring import load_champion, load_reference, read_logs
from tasks.preflight import check_outputs


@flow(name="drift-check", log_prints=True)
def drift_check_flow(config_path: str, as_of: str | None = None, retrain_via: RetrainVia = "auto") -> dict[str, Any]:
    """Check the champion's last ``drift.window_days`` of traffic at ``as_of`` (default: now) — or, when the
    champion served fewer than ``drift.min_rows`` of them (it was just promoted), the rows of the version that
    served the window against that version's own reference; the decision is the champion's either way.

    On a retrain or refresh_teacher decision its event is always emitted; ``retrain_via`` says who acts:
    ``event`` (a deployment trigger on a Prefect server), ``subflow`` (here: the retrain flow, or the teacher
    refresh flow, which retrains the student from the new teacher), ``none`` (record only), or ``auto``
    (``event`` when a retrain / teacher-refresh deployment exists on the API, else ``subflow``). A recalibrate
    decision runs the recalibration flow here as a sub-flow (seconds of work), except with ``none``."""
    cfg = load_config(config_path, DistillConfig)
    check_outputs(cfg, ("mlflow",))  # fail before compute: every output writable
    when = parse_as_of(as_of)
    champion = load_champion(cfg.mlflow.tracking_uri, cfg.registry.student_name)
    window = read_logs(cfg.logs, cfg.validation, cfg.data.num_classes, *drift_window(when, cfg.drift))
    served = served_versions(window, champion, cfg.drift)  # after a champion switch: who served the window
    reference = load_reference(cfg.mlflow.tracking_uri, champion, served.checked)
    check = check_drift(served, reference, window, cfg.drift)
    check = teacher_health_check(
        cfg.mlflow.tracking_uri, cfg.teacher_uri, window, check, cfg.drift, cfg.data.features.shape
    )
    refreshes = (cfg.teacher_refresh.experiment, teacher_name(cfg.teacher_uri))
    history = drift_history(cfg.mlflow, cfg.drift, champion.ref, when, refreshes)
    decision = decide_action(history, check, cfg.drift, when)
    result = DriftCheckResult(
        champion.ref,
        when,
        check,
        decision,
        record_drift_check(cfg.mlflow, cfg.drift, champion.ref, when, check, decision),
    )
    if decision.action == "refresh_teacher":
        lag = cfg.drift.label_lag_days
        result.event_id = emit_drift_event(config_path, champion.ref, when, check, decision, lag)
        result.retrain_via = retrain_route(retrain_via, "teacher-refresh")
        if result.retrain_via == "subflow":
            result.teacher_refresh = refresh_teacher(config_path, when, decision, cfg.drift)
    elif decision.action == "retrain":
        result.event_id = emit_drift_event(config_path, champion.ref, when, check, decision)
        result.retrain_via = retrain_route(retrain_via)
        if result.retrain_via == "subflow":
            result.retrain = retrain_flow(config_path, when.isoformat(), reason=decision.reason)
    elif decision.action == "recalibrate" and retrain_via != "none":
        result.recalibration = recalibration_flow(
            config_path, when.isoformat(), since=decision.episode_start.isoformat(), trigger="drift"
        )
    return result.as_dict()


def refresh_teacher(config_path: str, as_of: datetime, decision: Decision, drift: DriftConfig) -> dict[str, Any]:
    """Run the teacher-refresh flow as a sub-flow on the rows since the teacher degraded, as the event's
    deployment would; while too few labels have arrived it recalibrates the student instead (when
    ``drift.recalibrate_during_cooldown``). Imported here: it lives in ``flows.teacher_refresh``."""
    from flows.teacher_refresh import teacher_refresh_flow

    since = refresh_since(decision, drift.label_lag_days)
    return teacher_refresh_flow(
        config_path,
        as_of=as_of,
        reason=decision.reason,
        since=since,
        recalibrate_if_skipped=True,
    )
