"""Recalibration (monthly, or asked for by a drift check): refit the champion's temperature on its recent labeled
traffic; register and promote the same weights with the new temperature only if ECE improves and every SLA still
passes. The new version's reference profile is that traffic: drift is then measured against the regime it was
refit on."""

from __future__ import annotations

from typing import Any

from prefect import flow

from kdflow.config import DistillConfig, RecalibrationTrigger, load_config
from kdflow.lifecycle import parse_as_of, recalibration_window
from kdflow.models import CalibratedClassifier
from tasks.monitoring import (judge_recalibration, labeled_window, load_champion, parent_evaluation,
                              recalibration_tags, record_recalibration, reference_window_start,
                              refit_champion_temperature)
from tasks.preflight import check_outputs
from tasks.promotion import promote_version
from tasks.registry import reference_profile, register_student, withdraw_version
from tasks.tracking import end_mlflow_run, flatten, start_mlflow_run


@flow(name="recalibrate", log_prints=True)
def recalibration_flow(config_path: str, as_of: str | None = None, since: str | None = None,
                       trigger: RecalibrationTrigger = "schedule") -> dict[str, Any]:
    """Recalibrate ``registry.student_name``'s champion at ``as_of`` (default: now) on the labeled traffic of the
    last ``recalibration.window_days``, starting no earlier than ``since`` (the drift episode a drift check
    recalibrates for) nor than the traffic the champion's reference profile describes."""
    cfg = load_config(config_path, DistillConfig)
    check_outputs(cfg, ("mlflow",))  # fail before compute: every output writable
    when, not_before = parse_as_of(as_of), parse_as_of(since) if since else None
    name = cfg.registry.student_name
    run_id = start_mlflow_run(cfg.mlflow.tracking_uri, cfg.registry.experiment, cfg.mlflow.artifact_location,
                              flatten("recalibration", cfg.recalibration.model_dump(mode="json")),
                              {"kdflow.flow": "recalibrate", "kdflow.as_of": when.isoformat(),
                               "kdflow.recalibration_trigger": trigger})
    status, outcome = "FAILED", {"version": None}
    try:
        champion = load_champion(cfg.mlflow.tracking_uri, name)
        start, end = recalibration_window(when, cfg.recalibration.window_days, reference_window_start(champion),
                                          not_before)
        labeled, rows = labeled_window(cfg, start, end)
        outcome = {"parent_version": champion.ref.version, "trigger": trigger,
                   "window": [start.isoformat(), end.isoformat()], "rows": rows, "labeled_rows": len(labeled),
                   "version": None, "result": None}
        if len(labeled) < cfg.recalibration.min_labeled_rows:
            outcome["reason"] = (f"cannot decide: {len(labeled)} labeled rows in the window, fewer than "
                                 f"recalibration.min_labeled_rows={cfg.recalibration.min_labeled_rows}")
        else:
            result = refit_champion_temperature(champion, labeled.x, labeled.y, cfg)
            checks, register, outcome["reason"] = judge_recalibration(result, parent_evaluation(champion), cfg.sla)
            outcome.update(result=result.as_dict(), sla_checks=[c.as_dict() for c in checks])
            if register:
                served = CalibratedClassifier(champion.model.model, result.new_temperature)
                profile = reference_profile(served, labeled, None, cfg.drift.psi_bins)
                registration = register_student(served, labeled.x[:5], name, run_id, checks, False,
                                                recalibration_tags(champion, result, start, end, trigger), profile)
                outcome["version"] = registration["version"]
                record_recalibration(run_id, champion, when, outcome)
                outcome["promotion"] = promote_version(name, registration["version"], outcome["reason"],
                                                       f"recalibrate-flow ({trigger})")
        if not outcome["version"]:
            record_recalibration(run_id, champion, when, outcome)
        status = "FINISHED"
        return outcome
    except BaseException as exc:
        if outcome.get("version") and "promotion" not in outcome:
            withdraw_version(name, outcome["version"], f"the recalibration run failed: {exc!r}")
        raise
    finally:
        end_mlflow_run(run_id, status)
