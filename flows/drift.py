"""The daily drift check: champion + its reference profile -> a window of logs -> statistics -> decision
-> MLflow + Prefect artifact -> on drift, the ``kdflow.drift.detected`` event and a retrain, or (while a
retrain is cooling down) a recalibration on the traffic since the drift began."""

from __future__ import annotations

from typing import Any

from prefect import flow

from flows.recalibrate import recalibration_flow
from flows.retrain import retrain_flow
from kdflow.config import DistillConfig, RetrainVia, load_config
from kdflow.lifecycle import parse_as_of, window_bounds
from tasks.monitoring import (check_drift, decide_action, drift_history, emit_drift_event, load_champion, read_logs,
                              record_drift_check, retrain_deployment_exists)
from tasks.preflight import check_outputs


@flow(name="drift-check", log_prints=True)
def drift_check_flow(config_path: str, as_of: str | None = None,
                     retrain_via: RetrainVia = "auto") -> dict[str, Any]:
    """Check the champion's last ``drift.window_days`` of traffic at ``as_of`` (default: now).

    On a retrain decision the event is always emitted; ``retrain_via`` says who retrains: ``event`` (a
    deployment trigger on a Prefect server), ``subflow`` (here, the embedded default), ``none``, or ``auto``
    (``event`` when a retrain deployment exists on the API, else ``subflow``). A recalibrate decision runs the
    recalibration flow here as a sub-flow (seconds of work), except with ``none``, which only records."""
    cfg = load_config(config_path, DistillConfig)
    check_outputs(cfg, ("mlflow",))  # fail before compute: every output writable
    when = parse_as_of(as_of)
    champion = load_champion(cfg.mlflow.tracking_uri, cfg.registry.student_name)
    window = read_logs(cfg, *window_bounds(when, cfg.drift.window_days + cfg.drift.label_lag_days))
    check = check_drift(champion, window, cfg.drift)
    previous, last_retrain = drift_history(cfg, champion, when)
    decision = decide_action(previous, check, cfg.drift, last_retrain, when)
    run_id = record_drift_check(cfg, champion, when, check, decision)
    result: dict[str, Any] = {"model": champion.ref.name, "version": champion.ref.version, "as_of": when.isoformat(),
                              "status": check.status, "decision": decision.to_dict(), "mlflow_run_id": run_id,
                              "signals": {n: s.value for n, s in check.signals.items()}, "retrain": None,
                              "recalibration": None}
    if decision.action == "retrain":
        result["event_id"] = emit_drift_event(config_path, champion, when, check, decision)
        via = retrain_via if retrain_via != "auto" else ("event" if retrain_deployment_exists() else "subflow")
        result["retrain_via"] = via
        if via == "subflow":
            result["retrain"] = retrain_flow(config_path, when.isoformat(), reason=decision.reason)
    elif decision.action == "recalibrate" and retrain_via != "none":
        result["recalibration"] = recalibration_flow(config_path, when.isoformat(),
                                                     since=decision.episode_start.isoformat(), trigger="drift")
    return result
