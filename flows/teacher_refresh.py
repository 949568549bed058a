"""Teacher refresh: when the teacher itself has degraded on production traffic, refit it on recent labeled traffic
mixed with a replay of its original training data, gate it against the champion teacher (held-out recent slice,
forgetting on the old test split), promote it through the serialized, audited promotion, then retrain the student
from it (the retrain flow; the new teacher version gives its logits a new store key)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from prefect import flow
from prefect.transactions import transaction

from flows.recalibrate import recalibration_flow
from flows.retrain import retrain_flow
from kdflow.config import DistillConfig, TeacherRefreshMode, load_config
from kdflow.lifecycle import parse_as_of
from kdflow.teacher_refresh import (
    FLOW_TAG,
    PROMOTED,
    REFUSED,
    SKIPPED,
    TEACHER_TAG,
    Phases,
    champion_teacher_uri,
    lineage_tags,
    refresh_window,
    teacher_spec,
    with_mode,
)
from tasks.data import validate_inputs
from tasks.logits import resolve_teacher
from tasks.preflight import check_outputs
from tasks.promotion import promote_version
from tasks.teacher_refresh import (
    collect_refresh_window,
    gate_refreshed_teacher,
    record_refresh_outcome,
    register_refreshed_teacher,
    split_refresh_data,
    train_refreshed_teacher,
)
from tasks.tracking import flatten, mlflow_run


@flow(name="teacher-refresh", log_prints=True)
def teacher_refresh_flow(
    config_path: str,
    as_of: datetime | None = None,
    reason: str = "manual",
    mode: TeacherRefreshMode | None = None,
    since: str | None = None,
    recalibrate_if_skipped: bool = False,
) -> dict[str, Any]:
    """Refresh ``teacher_uri``'s teacher at ``as_of`` (default: now) from the student's logs (``logs.root``) by
    ``teacher_refresh`` (see :class:`kdflow.config.TeacherRefreshConfig`; ``mode`` overrides its mode) on the
    labeled rows of the last ``window_days``, from ``since`` (ISO 8601) on when given: the drift check passes where
    the rows of the teacher's degradation begin (an empty string: not given); ``reason`` is recorded.

    ``result["outcome"]``: ``skipped`` (too few labeled rows: no refresh; with ``recalibrate_if_skipped``, as the
    drift check and the deployment ask, and ``drift.recalibrate_during_cooldown``, the champion student is
    recalibrated on the window's rows instead, ``result["recalibration"]``: honest probabilities while labels
    accumulate), ``refused`` (the gate said no: the version stays ``challenger`` with the reason; both champions
    untouched) or ``promoted`` (then ``retrain`` is the student retrain's result). ``phases`` holds each phase's wall time. Everything after the window is read
    is one transaction: a refresh that fails anywhere withdraws its teacher version, or rolls the teacher
    champion back if it had already been promoted."""
    cfg = load_config(config_path, DistillConfig)
    rc = with_mode(cfg.teacher_refresh, mode)
    name = champion_teacher_uri(cfg.teacher_uri)
    spec, base = teacher_spec(rc.teacher_config, name)
    check_outputs(cfg, ("reports", "mlflow"))  # fail before compute: every output writable
    when = parse_as_of(as_of)
    window = refresh_window(when, rc.window_days, parse_as_of(since) if since else None)
    phases = Phases()
    params = {
        "config_path": config_path,
        "as_of": when.isoformat(),
        **flatten("teacher_refresh", rc.model_dump(mode="json")),
    }
    tags = {
        "kdflow.flow": FLOW_TAG,
        "kdflow.as_of": when.isoformat(),
        "kdflow.refresh_trigger": reason,
        TEACHER_TAG: name,
    }
    with mlflow_run(cfg.mlflow, rc.experiment, params, tags) as run_id:
        parent = resolve_teacher(cfg.teacher_uri, cfg.mlflow.tracking_uri)
        result: dict[str, Any] = {
            "as_of": when.isoformat(), "reason": reason, "run_id": run_id, "teacher": name, "mode": rc.mode,
            "parent_version": parent.version, "window": [t.isoformat() for t in window], "phases": phases.seconds,
        }  # fmt: skip
        with phases.phase("collect"):
            labeled, path = collect_refresh_window(cfg, window)
        if path is None:
            why = (
                f"no refresh: {len(labeled.labeled)} labeled rows in [{window[0]:%Y-%m-%d %H:%M}, "
                f"{window[1]:%Y-%m-%d %H:%M}) < teacher_refresh.min_labeled_rows {rc.min_labeled_rows}"
            )
            record_refresh_outcome(run_id, SKIPPED, why, phases.metrics())
            result.update(outcome=SKIPPED, outcome_reason=why, rows={"recent_labeled": len(labeled.labeled)})
            if recalibrate_if_skipped and cfg.drift.recalibrate_during_cooldown:
                result["recalibration"] = recalibration_flow(
                    config_path, when.isoformat(), window[0].isoformat(), "drift"
                )
            return result
        with transaction():
            with phases.phase("validate"):
                data_cfg = cfg.data.model_copy(update={"recent_labeled": path, "recent": None, "transfer": None})
                shape_spec = spec or cfg.student  # validation builds it once to check the feature shape
                datasets = validate_inputs(data_cfg, shape_spec, cfg.store.endpoint_url, False, run_id, cfg.validation)
                data = split_refresh_data(datasets, rc)
            with phases.phase("train"):
                model, training = train_refreshed_teacher(rc, parent, spec, base, data, cfg.data.num_classes, run_id)
            with phases.phase("gate"):
                verdict = gate_refreshed_teacher(model, parent, data.holdout, datasets.test, rc, run_id)
            with phases.phase("register"):
                lineage = lineage_tags(parent, window, data.rows, rc, when, reason, run_id)
                fingerprints = {d.name: d.fingerprint for d in (data.train, data.val, data.holdout, datasets.test)}
                version_tags = {**lineage, **verdict.tags(), "data_fingerprints": fingerprints}
                registered = register_refreshed_teacher(model, data.holdout, name, run_id, version_tags)
            result.update(
                rows=data.rows, version=registered["version"], verdict=verdict.metrics(),
                best_epoch=training.best_epoch, outcome_reason=verdict.reason,
            )  # fmt: skip
            if not verdict.promote:
                record_refresh_outcome(run_id, REFUSED, verdict.reason, phases.metrics())
                return {**result, "outcome": REFUSED}
            with phases.phase("promote"):
                result["promotion"] = promote_version(
                    name, registered["version"], verdict.reason, "teacher-refresh-flow"
                )
            if rc.retrain_student:
                with phases.phase("retrain_student"):
                    why = f"teacher refresh: {name} v{parent.version} -> v{registered['version']} ({reason})"
                    result["retrain"] = retrain_flow(config_path, when.isoformat(), why)
            record_refresh_outcome(run_id, PROMOTED, verdict.reason, phases.metrics())
            return {**result, "outcome": PROMOTED}
