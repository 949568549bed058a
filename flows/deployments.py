"""The five kdflow deployments, declared once (``DEPLOYMENTS``) and built two ways from that declaration:

- ``serve_all`` (``kdflow serve``) registers them against a Prefect server and runs their flows in one process;
- ``prefect_yaml`` (``kdflow deployments export``) writes them as ``prefect.yaml`` for a work pool
  (``prefect deploy --all``). The repository's prefect.yaml is its output for ``PRODUCTION_CONFIG``, and
  tests/test_deployments.py fails when the two differ.

The set:

- ``distill/kdflow-distill``: on demand.
- ``retrain/kdflow-retrain``: on demand, and on every ``kdflow.drift.detected`` event about a
  ``kdflow.model.*`` resource; its parameters are rendered from the event by the server.
- ``drift-check/kdflow-drift-check``: daily (``drift.cron``), emits the event instead of retraining itself.
- ``recalibrate/kdflow-recalibrate``: monthly (``recalibration.cron``).
- ``teacher-refresh/kdflow-teacher-refresh``: on demand, and on every ``kdflow.teacher.degraded`` event about a
  ``kdflow.model.*`` resource (the drift check's ``refresh_teacher`` decision); parameters from the event.

Schedules and triggers need a running server (``prefect server start``; ``PREFECT_API_URL``): the ephemeral
API cannot schedule. Importing this module is cheap: Prefect and the flows are imported only when deployments
are built.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import yaml

from kdflow.config import DistillConfig, load_config
from kdflow.events import DRIFT_EVENT, MODEL_RESOURCE_PREFIX, TEACHER_DEGRADED_EVENT

if TYPE_CHECKING:
    import psutil
    from prefect.deployments.runner import RunnerDeployment
    from prefect.events import DeploymentEventTrigger

MODEL_RESOURCE = MODEL_RESOURCE_PREFIX + "*"
TIMEZONE = "UTC"
WORK_POOL = "kdflow-pool"

# The retrain run's parameters, rendered by the server from the triggering event. A string that is a single
# Jinja expression keeps the value's JSON type (Prefect wraps it as ``{{ ... | tojson }}``), so a null
# ``as_of`` arrives as None, not "None".
RETRAIN_ON_DRIFT_PARAMETERS = {
    "config_path": "{{ event.payload.config_path }}",
    "as_of": "{{ event.payload.as_of }}",
    "reason": "drift",
}

# The retrain deployment's trigger, in prefect.yaml's form; ``event_trigger`` builds the Prefect object from it.
DRIFT_TRIGGER: dict[str, Any] = {
    "type": "event",
    "name": "kdflow-retrain-on-drift",
    "description": f"Retrain the student when the drift check decides so (event {DRIFT_EVENT}).",
    "enabled": True,
    "expect": [DRIFT_EVENT],
    "match": {"prefect.resource.id": MODEL_RESOURCE},
    "posture": "Reactive",
    "threshold": 1,
    "parameters": RETRAIN_ON_DRIFT_PARAMETERS,
}


# The teacher refresh's parameters and trigger, in the same form.
REFRESH_ON_DEGRADED_PARAMETERS = {
    "config_path": "{{ event.payload.config_path }}",
    "as_of": "{{ event.payload.as_of }}",
    "reason": "teacher-degraded",
    "since": "{{ event.payload.since }}",
    "recalibrate_if_skipped": True,  # too few labels yet: recalibrate the student (drift.recalibrate_during_cooldown)
}
TEACHER_DEGRADED_TRIGGER: dict[str, Any] = {
    "type": "event",
    "name": "kdflow-teacher-refresh-on-degraded",
    "description": f"Refresh the teacher when the drift check finds it degraded (event {TEACHER_DEGRADED_EVENT}).",
    "enabled": True,
    "expect": [TEACHER_DEGRADED_EVENT],
    "match": {"prefect.resource.id": MODEL_RESOURCE},
    "posture": "Reactive",
    "threshold": 1,
    "parameters": REFRESH_ON_DEGRADED_PARAMETERS,
}


@dataclass(frozen=True)
class DeploymentSpec:
    """One deployment: its flow (module and function, imported only when built), what it does, the config
    section whose ``cron`` schedules it (None: on demand), parameters besides ``config_path``, and the event
    trigger that starts it (prefect.yaml's form; None: none)."""

    name: str
    module: str
    function: str
    description: str
    cron_from: str | None = None
    parameters: dict[str, Any] = field(default_factory=dict)
    trigger: dict[str, Any] | None = None

    @property
    def entrypoint(self) -> str:
        """The flow as a file entrypoint relative to the checkout (prefect.yaml's form)."""
        return f"{self.module.replace('.', '/')}.py:{self.function}"

    def cron(self, cfg: DistillConfig) -> str | None:
        """The cron schedule from the config (``<cron_from>.cron``), or None for an on-demand deployment."""
        return getattr(cfg, self.cron_from).cron if self.cron_from else None


DEPLOYMENTS = (
    DeploymentSpec(
        "kdflow-distill",
        "flows.distill",
        "distill_flow",
        "Distil the configured teacher(s) into a registered student (on demand).",
    ),
    DeploymentSpec(
        "kdflow-retrain",
        "flows.retrain",
        "retrain_flow",
        f"Distil again with recent production inputs; started by every {DRIFT_EVENT} event.",
        trigger=DRIFT_TRIGGER,
    ),
    DeploymentSpec(
        "kdflow-drift-check",
        "flows.drift",
        "drift_check_flow",
        f"Check recent inference logs for drift; emit {DRIFT_EVENT} when a retrain is due.",
        cron_from="drift",
        parameters={"retrain_via": "event"},
    ),
    DeploymentSpec(
        "kdflow-recalibrate",
        "flows.recalibrate",
        "recalibration_flow",
        "Refit the champion's temperature on the recent labeled window.",
        cron_from="recalibration",
    ),
    DeploymentSpec(
        "kdflow-teacher-refresh",
        "flows.teacher_refresh",
        "teacher_refresh_flow",
        f"Refit the teacher on recent labels, then retrain the student; started by every {TEACHER_DEGRADED_EVENT} event.",
        trigger=TEACHER_DEGRADED_TRIGGER,
    ),
)


def event_trigger(spec: dict[str, Any] = DRIFT_TRIGGER) -> DeploymentEventTrigger:
    """The Prefect trigger for ``spec`` (default: the retrain deployment's, once per ``kdflow.drift.detected``)."""
    from prefect.events import DeploymentTriggerTypes
    from pydantic import TypeAdapter

    # Parsed as `prefect deploy` parses prefect.yaml's triggers, so both ways build the same trigger.
    return TypeAdapter(DeploymentTriggerTypes).validate_python(spec)


def deployments(config_path: str) -> list[RunnerDeployment]:
    """Build the five deployments for ``config_path`` (validated first; crons come from its drift and
    recalibration sections)."""
    cfg = load_config(config_path, DistillConfig)  # a bad config fails here, before the heavy imports

    from prefect.schedules import Cron
    from prefect.types.entrypoint import EntrypointType

    built = []
    for spec in DEPLOYMENTS:
        flow = getattr(importlib.import_module(spec.module), spec.function)
        cron = spec.cron(cfg)
        # Module entrypoints (flows.retrain.retrain_flow) resolve from any working directory: the package is
        # installed.
        built.append(
            flow.to_deployment(
                spec.name,
                description=spec.description,
                parameters={"config_path": config_path, **spec.parameters},
                entrypoint_type=EntrypointType.MODULE_PATH,
                tags=["kdflow", cfg.registry.student_name],
                schedules=[Cron(cron, timezone=TIMEZONE)] if cron else None,
                triggers=[event_trigger(spec.trigger)] if spec.trigger else None,
            )
        )
    return built


PRODUCTION_CONFIG = "infra/kdflow-production.yaml"  # what the repository's prefect.yaml deploys

PREFECT_YAML_HEADER = """\
# kdflow deployments for a work pool (production set-up; see infra/README.md).
# GENERATED from flows/deployments.py by
#   kdflow deployments export --config {config_path} > prefect.yaml
# do not edit by hand.
#
#   prefect work-pool create kdflow-pool --type process     # once
#   prefect deploy --all                                    # from this directory, PREFECT_API_URL set
#   kdflow worker --pool kdflow-pool                        # executes the runs (infra/worker.sh does all three)
#
# The same five deployments as `kdflow serve`, each run with the config above (config_path); the crons are
# that config's drift.cron and recalibration.cron, in UTC. To point the deployments at another config:
# `kdflow deployments export --config PATH > prefect.yaml` (PATH relative to this checkout, or absolute), then
# `prefect deploy --all` again.
#
# `build` records the checkout that ran `prefect deploy`, and `pull` runs every flow from it: the worker's
# process starts in this checkout, so the `flows` and `tasks` packages import and relative paths in the config
# resolve as they do for `kdflow` commands.
"""


class _NoAliasDumper(yaml.SafeDumper):
    """Writes a repeated value in full instead of an anchor and alias."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def prefect_yaml(config_path: str) -> str:
    """``prefect.yaml`` text declaring ``DEPLOYMENTS`` on the ``kdflow-pool`` work pool, each run with
    ``config_path`` (as the worker sees it: relative to the checkout, or absolute); crons from that config."""
    cfg = load_config(config_path, DistillConfig)
    work_pool = {"name": WORK_POOL, "work_queue_name": "default", "job_variables": {}}
    entries = []
    for spec in DEPLOYMENTS:
        cron = spec.cron(cfg)
        entry: dict[str, Any] = {
            "name": spec.name,
            "description": spec.description,
            "entrypoint": spec.entrypoint,
            "tags": ["kdflow", cfg.registry.student_name],
            "parameters": {"config_path": config_path, **spec.parameters},
            "schedules": [{"cron": cron, "timezone": TIMEZONE}] if cron else [],
        }
        if spec.trigger:
            entry["triggers"] = [spec.trigger]
        entries.append({**entry, "work_pool": work_pool})
    document = {
        "name": "kdflow",
        "build": [
            {"prefect.deployments.steps.run_shell_script": {"id": "checkout", "script": "pwd", "stream_output": False}}
        ],
        "push": None,
        "pull": [{"prefect.deployments.steps.set_working_directory": {"directory": "{{ checkout.stdout }}"}}],
        "deployments": entries,
    }
    body = yaml.dump(document, Dumper=_NoAliasDumper, sort_keys=False, width=120, allow_unicode=True)
    return PREFECT_YAML_HEADER.format(config_path=config_path) + body


def serve_all(config_path: str, limit: int | None = None) -> None:
    """Register the five deployments and execute their runs in this process until interrupted.

    ``limit`` caps concurrent flow runs (None: unlimited)."""
    from prefect import serve

    serve(*deployments(config_path), limit=limit)


def _running(process: psutil.Process) -> bool:
    """Whether ``process`` still runs (a zombie, exited but not yet reaped, does not)."""
    import psutil

    try:
        return process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def run_worker(pool: str = WORK_POOL, limit: int | None = None, name: str | None = None, grace_s: float = 20.0) -> None:
    """Run a Prefect process worker on ``pool`` until SIGTERM or SIGINT, then stop within seconds.

    ``prefect worker start`` (Prefect 3.9) turns a SIGTERM into a SIGINT to itself whose handler re-registers
    itself before the re-sent signal is handled, so the worker never sees it and polls on until a second
    signal's SIGKILL (a supervisor's stop timeout: 90 s under systemd's default). Here the first signal sends
    SIGTERM to the worker's flow-run processes (each in its own session; Prefect's engine then reports the run
    Crashed, "aborted by a termination signal", instead of leaving it Running), waits up to ``grace_s`` for them
    and cancels the worker; a second signal cancels at once. ``limit`` caps concurrent flow runs (None:
    unlimited)."""
    import asyncio
    import signal

    import psutil
    from prefect.workers.process import ProcessWorker

    async def stop_runs_then(task: asyncio.Task) -> None:
        runs = psutil.Process().children()  # the flow-run processes
        for run in runs:
            try:
                run.terminate()
            except psutil.NoSuchProcess:
                pass
        deadline = asyncio.get_running_loop().time() + grace_s
        while any(_running(run) for run in runs) and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.2)  # polled: waiting on them here would reap them before Prefect does
        task.cancel()

    async def main() -> None:
        task = asyncio.current_task()
        loop = asyncio.get_running_loop()
        stopping: list[asyncio.Task] = []

        def on_signal() -> None:
            if stopping:  # a second signal: stop now
                task.cancel()
            else:
                stopping.append(loop.create_task(stop_runs_then(task)))

        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, on_signal)
        worker = ProcessWorker(work_pool_name=pool, limit=limit, name=name)
        try:
            await worker.start(printer=print)
        except asyncio.CancelledError:
            print(f"Worker {worker.name!r} stopped on a signal.", flush=True)

    asyncio.run(main())
