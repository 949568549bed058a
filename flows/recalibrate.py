"""Monthly recalibration: refit the champion's temperature on the recent labeled window; register and promote
the same weights with the new temperature only if ECE improves and every SLA still passes."""

from __future__ import annotations

from typing import Any

from prefect import flow

from kdflow.config import DistillConfig, load_config
from kdflow.lifecycle import parse_as_of, window_bounds
from kdflow.models import CalibratedClassifier
from tasks.data import validate_inputs
from tasks.monitoring import (judge_recalibration, labeled_window, load_champion, parent_evaluation,
                              recalibration_tags, record_recalibration, refit_champion_temperature)
from tasks.promotion import promote_version
from tasks.registry import reference_profile, register_student, withdraw_version
from tasks.tracking import end_mlflow_run, flatten, start_mlflow_run


@flow(name="recalibrate", log_prints=True)
def recalibration_flow(config_path: str, as_of: str | None = None) -> dict[str, Any]:
    """Recalibrate ``registry.student_name``'s champion at ``as_of`` (default: now)."""
    cfg = load_config(config_path, DistillConfig)
    when = parse_as_of(as_of)
    start, end = window_bounds(when, cfg.recalibration.window_days)
    name = cfg.registry.student_name
    run_id = start_mlflow_run(cfg.mlflow.tracking_uri, cfg.registry.experiment, cfg.mlflow.artifact_location,
                              flatten("recalibration", cfg.recalibration.model_dump(mode="json")),
                              {"kdflow.flow": "recalibrate", "kdflow.as_of": when.isoformat()})
    status, outcome = "FAILED", {"version": None}
    try:
        champion = load_champion(cfg.mlflow.tracking_uri, name)
        x, y, rows = labeled_window(cfg, when, cfg.recalibration.window_days)
        outcome = {"parent_version": champion.ref.version, "window": [start.isoformat(), end.isoformat()],
                   "rows": rows, "labeled_rows": len(y), "version": None, "result": None}
        if len(y) < cfg.recalibration.min_labeled_rows:
            outcome["reason"] = (f"cannot decide: {len(y)} labeled rows in the window, fewer than "
                                 f"recalibration.min_labeled_rows={cfg.recalibration.min_labeled_rows}")
        else:
            result = refit_champion_temperature(champion, x, y, cfg)
            checks, register, outcome["reason"] = judge_recalibration(result, parent_evaluation(champion), cfg.sla)
            outcome.update(result=result.as_dict(), sla_checks=[c.as_dict() for c in checks])
            if register:
                served = CalibratedClassifier(champion.model.model, result.new_temperature)
                val = validate_inputs(cfg.data, cfg.student, cfg.store.endpoint_url, with_transfer=False,
                                      run_id=run_id, validation=cfg.validation)["val"]
                profile = reference_profile(served, val, None, cfg.drift.psi_bins)
                registration = register_student(served, val.x[:5], name, run_id, checks, False,
                                                recalibration_tags(champion, result, start, end), profile)
                outcome["version"] = registration["version"]
                record_recalibration(run_id, champion, when, outcome)
                outcome["promotion"] = promote_version(name, registration["version"], outcome["reason"],
                                                       "recalibrate-flow")
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
