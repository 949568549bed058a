"""Models made from other models in one flow run (born-again generations, a co-trained teacher): each gets an MLflow
run nested under the flow's run (tag ``mlflow.parentRunId``, as MLflow's UI groups child runs), and its registered
version records where it came from in ``kdflow.*`` tags."""

from __future__ import annotations

from typing import Any

from kdflow import registry
from kdflow.served import PROFILE_ARTIFACT
from kdflow.sla import SLACheck

PARENT_RUN_TAG = "mlflow.parentRunId"


def open_child_run(
    parent_run_id: str, run_key: str | None, run_name: str, tags: dict[str, str], params: dict[str, Any] | None = None
) -> str:
    """An MLflow run nested under ``parent_run_id``, in its experiment, with ``tags`` and ``params``. Idempotent by
    ``run_key`` (:func:`kdflow.registry.open_run`): a retry returns the run its first attempt created."""
    from mlflow import MlflowClient

    experiment_id = MlflowClient().get_run(parent_run_id).info.experiment_id
    run_id, _ = registry.open_run(experiment_id, run_key, run_name, {**tags, PARENT_RUN_TAG: parent_run_id}, params)
    return run_id


def register_with_record(
    name: str, run_id: str, model_uri: str, checks: list[SLACheck], tags: dict[str, Any], profile: dict[str, Any]
) -> tuple[str, str]:
    """Register the served artifact ``model_uri`` logged in run ``run_id`` as a version of ``name`` (idempotent:
    :func:`kdflow.registry.register_logged_model`) with its reference profile (``reference/profile.json``), its SLA
    record (``kdflow.sla_passed``, ``kdflow.sla_checks``: what promotion re-checks) and ``tags``; no alias.
    Returns ``(model_uri, version)``."""
    from mlflow import MlflowClient

    MlflowClient().log_dict(run_id, profile, PROFILE_ARTIFACT)
    model_uri, version, _ = registry.register_logged_model(name, run_id, model_uri)
    record = {
        "sla_passed": all(c.passed for c in checks),
        "sla_checks": [c.as_dict() for c in checks],
        "run_id": run_id,
        "reference_profile": PROFILE_ARTIFACT,
    }
    registry.tag_version(name, version, {**tags, **record})
    return model_uri, version
