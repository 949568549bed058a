"""The four kdflow deployments, served from one process (``serve_all``) against a Prefect server.

- ``distill/kdflow-distill``: on demand.
- ``retrain/kdflow-retrain``: on demand, and on every ``kdflow.drift.detected`` event about a
  ``kdflow.model.*`` resource; its parameters are rendered from the event by the server.
- ``drift-check/kdflow-drift-check``: daily (``drift.cron``), emits the event instead of retraining itself.
- ``recalibrate/kdflow-recalibrate``: monthly (``recalibration.cron``).

Schedules and triggers need a running server (``prefect server start``; ``PREFECT_API_URL``): the ephemeral
API cannot schedule. ``prefect.yaml`` at the repository root declares the same set for a work pool.
Importing this module is cheap: Prefect and the flows are imported only when deployments are built.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from kdflow.config import DistillConfig, load_config

if TYPE_CHECKING:
    from prefect.deployments.runner import RunnerDeployment
    from prefect.events import DeploymentEventTrigger

DRIFT_EVENT = "kdflow.drift.detected"
MODEL_RESOURCE = "kdflow.model.*"
TIMEZONE = "UTC"

# The retrain run's parameters, rendered by the server from the triggering event. A string that is a single
# Jinja expression keeps the value's JSON type (Prefect wraps it as ``{{ ... | tojson }}``), so a null
# ``as_of`` arrives as None, not "None".
RETRAIN_ON_DRIFT_PARAMETERS = {
    "config_path": "{{ event.payload.config_path }}",
    "as_of": "{{ event.payload.as_of }}",
    "reason": "drift",
}


def drift_trigger() -> DeploymentEventTrigger:
    """The trigger that runs the retrain deployment once per ``kdflow.drift.detected`` event."""
    from prefect.events import DeploymentEventTrigger

    return DeploymentEventTrigger(
        name="kdflow-retrain-on-drift",
        description="Retrain the student when the drift check decides so (event kdflow.drift.detected).",
        expect={DRIFT_EVENT},
        match={"prefect.resource.id": MODEL_RESOURCE},
        posture="Reactive",
        threshold=1,
        parameters=dict(RETRAIN_ON_DRIFT_PARAMETERS),
    )


def deployments(config_path: str) -> list[RunnerDeployment]:
    """Build the four deployments for ``config_path`` (validated first; crons come from its drift and
    recalibration sections)."""
    cfg = load_config(config_path, DistillConfig)  # a bad config fails here, before the heavy imports

    from prefect.schedules import Cron
    from prefect.types.entrypoint import EntrypointType

    from flows.distill import distill_flow
    from flows.drift import drift_check_flow
    from flows.recalibrate import recalibration_flow
    from flows.retrain import retrain_flow

    # Module entrypoints (flows.retrain.retrain_flow) resolve from any working directory: the package is installed.
    common = {"parameters": {"config_path": config_path}, "entrypoint_type": EntrypointType.MODULE_PATH,
              "tags": ["kdflow", cfg.registry.student_name]}
    return [
        distill_flow.to_deployment(
            "kdflow-distill", description="Distil the configured teacher(s) into a registered student.", **common),
        retrain_flow.to_deployment(
            "kdflow-retrain", triggers=[drift_trigger()],
            description="Distil again with recent production inputs; started by kdflow.drift.detected.", **common),
        drift_check_flow.to_deployment(
            "kdflow-drift-check", schedules=[Cron(cfg.drift.cron, timezone=TIMEZONE)],
            description="Check recent inference logs for drift; emit kdflow.drift.detected when a retrain is due.",
            **{**common, "parameters": {"config_path": config_path, "retrain_via": "event"}}),
        recalibration_flow.to_deployment(
            "kdflow-recalibrate", schedules=[Cron(cfg.recalibration.cron, timezone=TIMEZONE)],
            description="Refit the champion's temperature on the recent labeled window.", **common),
    ]


def serve_all(config_path: str, limit: int | None = None) -> None:
    """Register the four deployments and execute their runs in this process until interrupted.

    ``limit`` caps concurrent flow runs (None: unlimited)."""
    from prefect import serve

    serve(*deployments(config_path), limit=limit)
