"""Recalibration (monthly, or asked for by a drift check): refit the champion's temperature on its recent labeled
traffic; register and promote the same weights with the new temperature (a new served artifact, its cascade
threshold refitted when the window has enough shadow-scored labeled rows) only if ECE improves and every SLA still
passes. The new version's reference profile is that traffic: drift is then measured against the regime it was
refit on."""

from __future__ import annotations

from typing import Any

from prefect import flow
from prefect.transactions import transaction

from kdflow.artifact import ServedSpec
from kdflow.config import DistillConfig, RecalibrationTrigger, load_config
from kdflow.lifecycle import parse_as_of, recalibration_window
from tasks.evaluate import verify_served
from tasks.monitoring import load_champion
from tasks.preflight import check_outputs
from tasks.promotion import promote_version
from tasks.recalibration import labeled_window, record_recalibration, refit_and_judge
from tasks.registry import log_served_student, reference_profile, register_student
from tasks.tracking import flatten, mlflow_run


@flow(name="recalibrate", log_prints=True)
def recalibration_flow(
    config_path: str, as_of: str | None = None, since: str | None = None, trigger: RecalibrationTrigger = "schedule"
) -> dict[str, Any]:
    """Recalibrate ``registry.student_name``'s champion at ``as_of`` (default: now) on the labeled traffic of the
    last ``recalibration.window_days``, starting no earlier than ``since`` (the drift episode a drift check
    recalibrates for) nor than the traffic the champion's reference profile describes."""
    cfg = load_config(config_path, DistillConfig)
    check_outputs(cfg, ("mlflow",))  # fail before compute: every output writable
    when, not_before = parse_as_of(as_of), parse_as_of(since) if since else None
    name = cfg.registry.student_name
    params = flatten("recalibration", cfg.recalibration.model_dump(mode="json"))
    tags = {"kdflow.flow": "recalibrate", "kdflow.as_of": when.isoformat(), "kdflow.recalibration_trigger": trigger}
    # As in the distill flow: one MLflow run, and one transaction whose rollback (register_student's hook)
    # withdraws a version registered by a run that then fails before it is champion.
    with mlflow_run(cfg.mlflow, cfg.registry.experiment, params, tags) as run_id, transaction():
        champion = load_champion(cfg.mlflow.tracking_uri, name)
        window = labeled_window(
            cfg.logs,
            cfg.validation,
            cfg.data.num_classes,
            *recalibration_window(when, cfg.recalibration.window_days, champion.reference_window_start, not_before),
        )
        outcome = refit_and_judge(
            champion,
            window,
            trigger,
            cfg.recalibration,
            cfg.calibration,
            cfg.sla,
            cfg.serving.cascade,
            cfg.drift.min_shadow_rows,
        )
        if outcome.register:
            t_new = outcome.result.new_temperature
            spec = ServedSpec.of(cfg.student, window.labeled.input_shape, cfg.data.num_classes, t_new)
            model_uri = log_served_student(outcome.served, spec, window.labeled.x[:5], run_id)
            verify_served(model_uri, cfg.serving.runtime, outcome.served, window.labeled.x, run_id)
            profile = reference_profile(outcome.served, window.labeled, None, cfg.drift.psi_bins)
            outcome.version = register_student(
                model_uri, name, run_id, outcome.sla_checks, outcome.sla_alert is not None, outcome.tags, profile
            ).version
        record_recalibration(run_id, name, when, outcome)
        if outcome.version:
            outcome.promotion = promote_version(name, outcome.version, outcome.reason, f"recalibrate-flow ({trigger})")
        return outcome.as_dict()
