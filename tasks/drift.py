"""Drift-check tasks: statistics of a champion's window and of the teacher's health, the drift history and decision
in MLflow, and the ``kdflow.drift.detected`` / ``kdflow.teacher.degraded`` events (:mod:`kdflow.monitor`,
:mod:`kdflow.drift`, :mod:`kdflow.teacher_health`, :mod:`kdflow.drift_events`)."""

from __future__ import annotations

from datetime import datetime

from prefect import get_run_logger
from prefect.artifacts import create_markdown_artifact

from kdflow import drift_events, monitor, registry, teacher_health
from kdflow.config import DriftConfig, MlflowConfig, RetrainVia
from kdflow.drift import Decision, DriftCheck, decide
from kdflow.inference_logs import LogWindow
from kdflow.monitor import Champion, DriftHistory
from kdflow.served import ServedRows, VersionReference, served_rows, served_text
from tasks import kdflow_task


def _monitoring_experiment(mlflow: MlflowConfig, drift: DriftConfig) -> str:
    return registry.configure(mlflow.tracking_uri, drift.monitoring_experiment, mlflow.artifact_location)


@kdflow_task(name="served-versions")
def served_versions(window: LogWindow, champion: Champion, cfg: DriftConfig) -> ServedRows:
    """Rows per serving version in the checked days, and whose rows to check (:func:`kdflow.served.served_rows`):
    the champion's, or after a champion switch those of the version that served the window."""
    served = served_rows(window, champion.ref.version, cfg)
    get_run_logger().info("served: %s; %s", served_text(served.counts, champion.ref.version) or "no rows", served.scope)
    return served


@kdflow_task(name="check-drift")
def check_drift(served: ServedRows, reference: VersionReference, window: LogWindow, cfg: DriftConfig) -> DriftCheck:
    """Every drift statistic of the chosen version's rows against its own reference
    (:func:`kdflow.monitor.check_served`): drift, ok, or "cannot decide" with the reason."""
    check = monitor.check_served(served, reference, window, cfg)
    get_run_logger().info("drift check: %s", check.reason)
    return check


@kdflow_task(name="teacher-health", retries=1, retry_delay_seconds=2)
def teacher_health_check(
    tracking_uri: str,
    teacher_uri: str,
    window: LogWindow,
    check: DriftCheck,
    cfg: DriftConfig,
    input_shape: list[int] | None = None,
) -> DriftCheck:
    """``check`` with the ``teacher_accuracy`` signal: the registered teacher scored on every labeled row of
    ``window`` against its reference accuracy (:func:`kdflow.teacher_health.teacher_check`); a check that
    cannot decide is returned as is."""
    if check.status == "cannot_decide":
        return check
    signal, accuracy = teacher_health.teacher_check(tracking_uri, teacher_uri, window, cfg, input_shape)
    get_run_logger().info("teacher health: %s", signal.detail)
    return teacher_health.with_teacher(check, signal, accuracy)


@kdflow_task(name="drift-history", retries=1, retry_delay_seconds=2)
def drift_history(
    mlflow: MlflowConfig, drift: DriftConfig, ref: registry.ModelRef, as_of: datetime, refreshes: tuple[str, str]
) -> DriftHistory:
    """The decision of this version's last check before ``as_of``, when a retrain was last decided (monitoring
    experiment) and when the teacher was last refreshed (``refreshes``: the teacher-refresh experiment and the
    teacher's name; :func:`kdflow.monitor.drift_history`)."""
    return monitor.drift_history(_monitoring_experiment(mlflow, drift), ref.name, ref.version, as_of, refreshes)


@kdflow_task(name="decide-action")
def decide_action(history: DriftHistory, check: DriftCheck, cfg: DriftConfig, as_of: datetime) -> Decision:
    """Carry the signals' streaks on, apply the consecutive-window rule and the cool-down
    (:func:`kdflow.drift.decide`): refresh the teacher, retrain, recalibrate, none or cannot decide."""
    decision = decide(history.previous, check, cfg, history.last_retrain_at, as_of, history.last_refresh_at)
    get_run_logger().info("decision %s: %s", decision.action, decision.reason)
    return decision


@kdflow_task(name="record-drift-check", retries=1, retry_delay_seconds=2)
def record_drift_check(
    mlflow: MlflowConfig,
    drift: DriftConfig,
    ref: registry.ModelRef,
    as_of: datetime,
    check: DriftCheck,
    decision: Decision,
) -> str:
    """One MLflow run per check in the monitoring experiment (:func:`kdflow.monitor.record_drift_check`) and a
    Prefect markdown artifact. Returns the MLflow run id.

    Idempotent under retries: the run is keyed by this task run's id, which a retry keeps, so a retry completes
    the run its first attempt created instead of adding a second check to the drift history."""
    from prefect.runtime import task_run

    key = task_run.get_id()
    run_id = monitor.record_drift_check(
        _monitoring_experiment(mlflow, drift),
        f"record-drift-check:{key}" if key else None,
        ref,
        as_of,
        check,
        decision,
        drift,
    )
    create_markdown_artifact(
        markdown=monitor.drift_markdown(ref, as_of, check, decision),
        key="kdflow-drift-check",
        description=f"drift check of {ref.name} v{ref.version}: {decision.action}",
    )
    return run_id


@kdflow_task(name="emit-drift-event")
def emit_drift_event(
    config_path: str,
    ref: registry.ModelRef,
    as_of: datetime,
    check: DriftCheck,
    decision: Decision,
    label_lag_days: float = 0.0,
) -> str | None:
    """Emit ``kdflow.drift.detected`` for a retrain, ``kdflow.teacher.degraded`` for a teacher refresh
    (:func:`kdflow.drift_events.drift_event`); a deployment trigger on it starts the retrain or the teacher-refresh
    deployment. Returns the event id."""
    from prefect.events import emit_event

    event = drift_events.drift_event(config_path, ref, as_of, check, decision, label_lag_days)
    emitted = emit_event(event=event.event, resource=event.resource, payload=event.payload)
    get_run_logger().info("emitted %s for %s v%s", event.event, ref.name, ref.version)
    return str(emitted.id) if emitted is not None else None


def deployment_exists(flow: str) -> bool:
    """Whether a deployment of the flow named ``flow`` is registered on the Prefect API (then its event trigger
    acts on the drift check's event)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName

    try:
        with get_client(sync_client=True) as client:
            return bool(client.read_deployments(flow_filter=FlowFilter(name=FlowFilterName(any_=[flow]))))
    except Exception:
        return False


def retrain_route(retrain_via: RetrainVia, flow: str = "retrain") -> RetrainVia:
    """Who acts on a retrain (or, with ``flow="teacher-refresh"``, a teacher refresh) decision: ``retrain_via``,
    where ``auto`` means ``event`` when a deployment of ``flow`` exists on the Prefect API (its trigger on the
    event acts) and ``subflow`` otherwise."""
    if retrain_via != "auto":
        return retrain_via
    return "event" if deployment_exists(flow) else "subflow"
