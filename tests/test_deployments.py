"""Deployments against a REAL Prefect server (``prefect server start`` in a subprocess, its own SQLite database):
``kdflow serve`` (``flows.deployments.serve_all``) registers the five deployments with their schedules and event triggers, a
``kdflow.drift.detected`` event starts the retrain deployment, whose run completes and registers a student, and a
``kdflow.teacher.degraded`` event starts the teacher refresh, whose run registers a refreshed teacher.

Every client call names this module's server URL explicitly, and ``PREFECT_API_URL`` is pointed at it for each
test's duration only (function scope, so it nests inside the session-wide ``prefect_harness`` when that is active).
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any, TypeVar

import pytest

from tests.conftest import free_port, write_yaml

BIN = Path(sys.executable).parent
DEPLOYMENTS = {
    "distill": "distill/kdflow-distill",
    "retrain": "retrain/kdflow-retrain",
    "drift": "drift-check/kdflow-drift-check",
    "recalibrate": "recalibrate/kdflow-recalibrate",
    "refresh": "teacher-refresh/kdflow-teacher-refresh",
}
STARTUP_TIMEOUT_S = 180
T = TypeVar("T")


@dataclass
class Process:
    """A subprocess started by these tests, in its own session so its whole process group can be stopped."""

    name: str
    popen: subprocess.Popen
    log: Path

    def tail(self, lines: int = 60) -> str:
        """The last ``lines`` lines of the process' log."""
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return f"--- {self.name} (pid {self.popen.pid}, exit {self.popen.poll()}), {self.log}:\n" + "\n".join(
            text.splitlines()[-lines:]
        )

    def stop(self, grace_s: float = 20.0) -> None:
        """SIGTERM the process group, SIGKILL whatever is left after ``grace_s``."""
        for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 10.0)):
            try:
                os.killpg(self.popen.pid, sig)  # start_new_session: the group id is the leader's pid
            except ProcessLookupError:
                break
            try:
                self.popen.wait(timeout=wait_s)
            except subprocess.TimeoutExpired:
                continue
            if sig is signal.SIGTERM:  # the leader is gone; children it left behind are still in the group
                try:
                    os.killpg(self.popen.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            break


def start_process(name: str, args: list[str], log: Path, env: dict[str, str], cwd: Path) -> Process:
    """Start ``args`` in a new session with stdout and stderr appended to ``log``."""
    with log.open("ab") as out:
        popen = subprocess.Popen(
            args,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            cwd=cwd,
            start_new_session=True,
        )
    return Process(name, popen, log)


@contextmanager
def explained(*processes: Process) -> Iterator[None]:
    """On any failure inside the block, print the processes' log tails (pytest shows them with the failure)."""
    try:
        yield
    except BaseException:
        for p in processes:
            print(p.tail())
        raise


def wait_for(what: str, probe: Callable[[], T | None], timeout_s: float, *watch: Process, every_s: float = 1.0) -> T:
    """Call ``probe`` until it returns something truthy; fail naming ``what`` on timeout or if a watched process
    exits."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = probe()
        if value:
            return value
        for p in watch:
            if p.popen.poll() is not None:
                pytest.fail(f"{p.name} exited ({p.popen.returncode}) while waiting for {what}")
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(every_s)


def healthy(api_url: str) -> bool:
    """Whether the Prefect API at ``api_url`` answers its health check."""
    try:
        with urllib.request.urlopen(f"{api_url}/health", timeout=5) as response:
            return response.status == 200
    except OSError:
        return False


def client_env(api_url: str, home: Path) -> dict[str, str]:
    """The environment of a Prefect client process (serve) talking to ``api_url``, with its own PREFECT_HOME."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API_")}
    env.update(PREFECT_API_URL=api_url, PREFECT_HOME=str(home), PREFECT_SERVER_ANALYTICS_ENABLED="false")
    return env


@dataclass
class PrefectServer:
    """A running ``prefect server start`` subprocess."""

    api_url: str
    process: Process
    root: Path


@pytest.fixture(scope="module")
def prefect_server(tmp_path_factory) -> Iterator[PrefectServer]:
    """A real Prefect server on a free loopback port with its own PREFECT_HOME and SQLite database."""
    root = tmp_path_factory.mktemp("prefect-server")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_API_", "PREFECT_SERVER_DATABASE_"))}
    env.update(
        PREFECT_HOME=str(root / "home"),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_API_DATABASE_CONNECTION_URL=f"sqlite+aiosqlite:///{root}/prefect.db",
        PREFECT_UI_ENABLED="false",
    )
    process = start_process(
        "prefect server",
        [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        root / "server.log",
        env,
        root,
    )
    api_url = f"http://127.0.0.1:{port}/api"
    try:
        with explained(process):
            wait_for(f"{api_url}/health", lambda: healthy(api_url), STARTUP_TIMEOUT_S, process)
        yield PrefectServer(api_url, process, root)
    finally:
        process.stop()


@pytest.fixture()
def server_api(prefect_server) -> Iterator[str]:
    """``PREFECT_API_URL`` pointed at the test server for one test; the previous settings come back after."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: prefect_server.api_url}):
        yield prefect_server.api_url


@contextmanager
def serving(config_path: Path, api_url: str, workdir: Path) -> Iterator[Process]:
    """``kdflow serve --config config_path`` (``flows.deployments.serve_all``) in a subprocess, stopped after."""
    workdir.mkdir(parents=True, exist_ok=True)
    process = start_process(
        "kdflow serve",
        [str(BIN / "kdflow"), "serve", "--config", str(config_path)],
        workdir / "serve.log",
        client_env(api_url, workdir / "prefect-home"),
        workdir,
    )
    try:
        yield process
    finally:
        process.stop()


def sync_client(api_url: str):
    """A synchronous Prefect client bound to ``api_url`` (never to whatever the settings say)."""
    from prefect.client.orchestration import SyncPrefectClient

    return SyncPrefectClient(api_url)


def read_deployments(api_url: str, config_path: Path) -> dict[str, Any] | None:
    """The five deployments once all are registered with ``config_path`` as their parameter, else None."""
    from prefect.exceptions import ObjectNotFound

    with sync_client(api_url) as client:
        try:
            found = {key: client.read_deployment_by_name(name) for key, name in DEPLOYMENTS.items()}
        except ObjectNotFound:
            return None
    return found if all(d.parameters.get("config_path") == str(config_path) for d in found.values()) else None


def retrain_automations(api_url: str, deployment_id) -> list:
    """The automations a deployment owns (its triggers)."""
    with sync_client(api_url) as client:
        return client.read_resource_related_automations(f"prefect.deployment.{deployment_id}")


def tiny_config(tmp_path: Path) -> Path:
    """A valid distill config with non-default crons (nothing in it is read until a flow runs)."""
    cfg = {
        "data": {
            "train": str(tmp_path / "train.parquet"),
            "val": str(tmp_path / "val.parquet"),
            "test": str(tmp_path / "test.parquet"),
            "num_classes": 10,
        },
        "teacher_uri": "models:/teacher@champion",
        "student": {"arch": "cnn1d"},
        "registry": {"student_name": "deploy-student"},
        "drift": {"cron": "15 4 * * *"},
        "recalibration": {"cron": "30 5 2 * *"},
    }
    return write_yaml(tmp_path / "deploy.yaml", cfg)


def test_committed_prefect_yaml_is_the_generated_one(monkeypatch):
    """prefect.yaml is `kdflow deployments export` (default: the production config, infra/kdflow-production.yaml),
    as its header says: the deployments are declared once, in flows/deployments.py, and the file cannot drift."""
    from typer.testing import CliRunner

    from app.cli import app
    from flows.deployments import PRODUCTION_CONFIG, prefect_yaml

    repo = Path(__file__).resolve().parents[1]
    monkeypatch.chdir(repo)  # the config path is written as the worker sees it: relative to the checkout
    committed = (repo / "prefect.yaml").read_text()
    assert committed == prefect_yaml(PRODUCTION_CONFIG), (
        f"prefect.yaml is out of date: run `kdflow deployments export --config {PRODUCTION_CONFIG} > prefect.yaml`"
    )
    assert f"kdflow deployments export --config {PRODUCTION_CONFIG} > prefect.yaml" in committed.split("\nname:")[0]
    result = CliRunner().invoke(app, ["deployments", "export"])  # the default is the production config
    assert result.exit_code == 0 and result.output == committed, result.output[-2000:]


def test_deployments_export_takes_crons_and_path_from_the_config(tmp_path):
    """`kdflow deployments export --config`: the config's crons (not the defaults), its path on every deployment,
    the drift trigger on retrain only; a bad config is one line and exit 2."""
    import yaml
    from typer.testing import CliRunner

    from app.cli import app

    config_path = tiny_config(tmp_path)
    result = CliRunner().invoke(app, ["deployments", "export", "--config", str(config_path)])
    assert result.exit_code == 0, result.output
    doc = yaml.safe_load(result.output)
    found = {d["name"]: d for d in doc["deployments"]}
    assert list(found) == [name.split("/")[1] for name in DEPLOYMENTS.values()]
    assert {name: d["parameters"]["config_path"] for name, d in found.items()} == dict.fromkeys(found, str(config_path))
    assert {name: d["schedules"] for name, d in found.items()} == {
        "kdflow-distill": [],
        "kdflow-retrain": [],
        "kdflow-drift-check": [{"cron": "15 4 * * *", "timezone": "UTC"}],
        "kdflow-recalibrate": [{"cron": "30 5 2 * *", "timezone": "UTC"}],
        "kdflow-teacher-refresh": [],
    }
    assert [name for name, d in found.items() if "triggers" in d] == ["kdflow-retrain", "kdflow-teacher-refresh"]
    assert found["kdflow-retrain"]["triggers"][0]["expect"] == ["kdflow.drift.detected"]
    assert found["kdflow-teacher-refresh"]["triggers"][0]["expect"] == ["kdflow.teacher.degraded"]
    assert found["kdflow-drift-check"]["entrypoint"] == "flows/drift.py:drift_check_flow"

    bad = CliRunner().invoke(app, ["deployments", "export", "--config", str(tmp_path / "missing.yaml")])
    assert bad.exit_code == 2 and f"config file not found: {tmp_path / 'missing.yaml'}" in bad.output


@pytest.mark.slow
def test_serve_all_registers_five_deployments(prefect_server, server_api, tmp_path):
    """Schedules from the config's crons in UTC, the drift-check's retrain_via=event, and the retrain trigger."""
    config_path = tiny_config(tmp_path)
    with serving(config_path, server_api, tmp_path / "serve") as serve, explained(serve, prefect_server.process):
        deployments = wait_for(
            "the five deployments",
            lambda: read_deployments(server_api, config_path),
            STARTUP_TIMEOUT_S,
            serve,
            every_s=2.0,
        )
        retrain_id = deployments["retrain"].id
        automations = wait_for("the retrain trigger", lambda: retrain_automations(server_api, retrain_id), 60, serve)

    assert {key: d.flow_id is not None and not d.paused for key, d in deployments.items()} == dict.fromkeys(
        DEPLOYMENTS, True
    )
    assert not any(deployments[key].schedules for key in ("distill", "retrain", "refresh"))
    for key, cron in (("drift", "15 4 * * *"), ("recalibrate", "30 5 2 * *")):
        [schedule] = deployments[key].schedules
        assert (schedule.schedule.cron, schedule.schedule.timezone, schedule.active) == (cron, "UTC", True)
    [refresh] = wait_for("the refresh trigger", lambda: retrain_automations(server_api, deployments["refresh"].id), 60)
    assert refresh.trigger.expect == {"kdflow.teacher.degraded"}
    assert refresh.actions[0].parameters == {
        "config_path": "{{ event.payload.config_path }}",
        "as_of": "{{ event.payload.as_of }}",
        "reason": "teacher-degraded",
        "since": "{{ event.payload.since }}",
        "recalibrate_if_skipped": True,
    }
    assert deployments["drift"].parameters == {"config_path": str(config_path), "retrain_via": "event"}
    assert deployments["recalibrate"].parameters == {"config_path": str(config_path)}

    [automation] = automations
    trigger = automation.trigger
    assert automation.enabled and trigger.expect == {"kdflow.drift.detected"}
    assert trigger.match.model_dump() == {"prefect.resource.id": "kdflow.model.*"}
    assert (trigger.posture.value, trigger.threshold) == ("Reactive", 1)
    [action] = automation.actions
    assert (action.type, action.source, action.deployment_id) == ("run-deployment", "selected", retrain_id)
    assert action.parameters == {
        "config_path": "{{ event.payload.config_path }}",
        "as_of": "{{ event.payload.as_of }}",
        "reason": "drift",
    }


def emit_drift_event(
    api_url: str, config_path: Path, model: str, as_of: str, kind: str = "kdflow.drift.detected", **extra: str
) -> str:
    """Send ``kind`` (the drift flow's resource and payload) straight to ``api_url``'s events endpoint; returns
    the event id."""
    from prefect.events import Event
    from prefect.events.clients import PrefectEventsClient

    event = Event(
        event=kind,
        resource={"prefect.resource.id": f"kdflow.model.{model}", "kdflow.model": model, "kdflow.version": "1"},
        payload={
            "config_path": str(config_path),
            "as_of": as_of,
            "model": model,
            "version": "1",
            "statistics": {"psi_confidence": 0.31, "flip_rate": 0.18},
            "triggered": ["flip_rate"],
            "reason": "flip_rate above 0.1 on 2 consecutive windows",
            **extra,
        },
    )

    async def send() -> None:
        async with PrefectEventsClient(api_url=api_url) as events:
            await events.emit(event)

    asyncio.run(send())
    return str(event.id)


def retrain_runs(api_url: str, deployment_id, config_path: Path) -> list:
    """Flow runs of the deployment (retrain, or another) for ``config_path``."""
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

    with sync_client(api_url) as client:
        runs = client.read_flow_runs(deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id])))
    return [r for r in runs if r.parameters.get("config_path") == str(config_path)]


def finished_run(api_url: str, flow_run_id):
    """The flow run once it is in a final state, else None."""
    with sync_client(api_url) as client:
        run = client.read_flow_run(flow_run_id)
    return run if run.state is not None and run.state.is_final() else None


def write_traffic(cfg: dict[str, Any], start: date, days: int) -> dict[str, Any]:
    """``days`` days of stable MNIST-1D traffic "served" by the teacher (softmax of its logits) into the logs."""
    from torch import nn

    import mlflow
    from kdflow import registry
    from kdflow.simulate import simulate_traffic

    mlflow.set_tracking_uri(cfg["mlflow"]["tracking_uri"])
    teacher = registry.load_torch_model(registry.resolve(cfg["teacher_uri"]))
    served = nn.Sequential(teacher, nn.Softmax(dim=1)).eval()
    return simulate_traffic(
        served,
        cfg["registry"]["student_name"],
        "0",
        cfg["logs"]["root"],
        start,
        days,
        300,
        "stable",
        shadow_fraction=0.0,
        label_fraction=0.4,
        seed=7,
    )


@pytest.mark.slow
def test_drift_event_runs_the_retrain_deployment(prefect_server, server_api, distill_config, tmp_path):
    """The event's payload becomes the retrain run's parameters; the run completes and registers a student."""
    from mlflow import MlflowClient

    cfg = distill_config
    cfg["logs"] = {"root": str(tmp_path / "logs")}
    cfg["retrain"] = {"window_days": 3, "min_recent_labeled_rows": 50}
    name = cfg["registry"]["student_name"]
    traffic = write_traffic(cfg, date(2026, 1, 1), 3)
    config_path = write_yaml(tmp_path / "retrain.yaml", cfg)
    as_of = "2026-01-04T00:00:00+00:00"

    with serving(config_path, server_api, tmp_path / "serve") as serve, explained(serve, prefect_server.process):
        deployments = wait_for(
            "the five deployments",
            lambda: read_deployments(server_api, config_path),
            STARTUP_TIMEOUT_S,
            serve,
            every_s=2.0,
        )
        retrain_id = deployments["retrain"].id
        wait_for("the retrain trigger", lambda: retrain_automations(server_api, retrain_id), 60, serve)
        emit_drift_event(server_api, config_path, name, as_of)
        [run] = wait_for("a retrain flow run", lambda: retrain_runs(server_api, retrain_id, config_path), 120, serve)
        assert run.parameters == {"config_path": str(config_path), "as_of": as_of, "reason": "drift"}
        final = wait_for(
            f"retrain run {run.name} to finish", lambda: finished_run(server_api, run.id), 900, serve, every_s=3.0
        )
        assert final.state.is_completed(), (
            f"retrain run {run.name} ended {final.state.type.value}: {final.state.message}"
        )

    mlflow_client = MlflowClient(cfg["mlflow"]["tracking_uri"])
    versions = mlflow_client.search_model_versions(f"name = '{name}'")
    assert [str(v.version) for v in versions] == ["1"], f"expected one registered version of {name}"
    # The registered student was distilled with the logged traffic as an extra transfer split.
    params = mlflow_client.get_run(versions[0].run_id).data.params
    assert params["data.recent"].endswith("recent.parquet") and traffic["rows"] == 900
    assert len(retrain_runs(server_api, retrain_id, config_path)) == 1  # one event, one run


@pytest.mark.slow
def test_prefect_yaml_deploys_to_the_work_pool(prefect_server, server_api, tmp_path):
    """``prefect deploy --all`` accepts the repository's prefect.yaml: the same five deployments on kdflow-pool,
    the default crons in UTC, the retrain trigger, and a pull step into the checkout that deployed them."""
    repo = Path(__file__).resolve().parents[1]
    env = client_env(server_api, tmp_path / "prefect-home")

    def prefect(*args: str) -> None:
        done = subprocess.run(
            [str(BIN / "prefect"), *args], cwd=repo, env=env, capture_output=True, text=True, timeout=300
        )
        assert done.returncode == 0, f"prefect {' '.join(args)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"

    with explained(prefect_server.process):
        prefect("work-pool", "create", "kdflow-pool", "--type", "process", "--overwrite")
        prefect("--no-prompt", "deploy", "--all")
        with sync_client(server_api) as client:
            found = {key: client.read_deployment_by_name(name) for key, name in DEPLOYMENTS.items()}
            automations = client.read_resource_related_automations(f"prefect.deployment.{found['retrain'].id}")

    config = "infra/kdflow-production.yaml"
    for key, d in found.items():
        assert (d.work_pool_name, d.parameters["config_path"]) == ("kdflow-pool", config), key
        assert d.pull_steps == [{"prefect.deployments.steps.set_working_directory": {"directory": str(repo)}}]
    assert found["retrain"].entrypoint == "flows/retrain.py:retrain_flow"
    assert found["drift"].parameters == {"config_path": config, "retrain_via": "event"}
    assert not found["distill"].schedules and not found["retrain"].schedules
    for key, cron in (("drift", "0 2 * * *"), ("recalibrate", "0 3 1 * *")):
        [schedule] = found[key].schedules
        assert (schedule.schedule.cron, schedule.schedule.timezone) == (cron, "UTC")
    [automation] = automations
    assert automation.trigger.expect == {"kdflow.drift.detected"}
    assert automation.actions[0].parameters == {
        "config_path": "{{ event.payload.config_path }}",
        "as_of": "{{ event.payload.as_of }}",
        "reason": "drift",
    }


@pytest.mark.slow
def test_teacher_degraded_event_runs_the_teacher_refresh_deployment(
    prefect_server, server_api, distill_config, teacher_config, tmp_path
):
    """A ``kdflow.teacher.degraded`` event's payload becomes the teacher refresh's parameters; the run completes
    and registers a refreshed teacher recording the trigger (its own teacher: the session's is not touched)."""
    from mlflow import MlflowClient
    from tests.test_teacher_refresh import AS_OF, refresh_config, train_own_teacher

    name = "deploy-refresh-teacher"
    train_own_teacher(teacher_config, name, tmp_path / "teacher.yaml")
    cfg = refresh_config(distill_config, tmp_path, name, retrain_student=False)
    config_path = write_yaml(tmp_path / "refresh.yaml", cfg)

    with serving(config_path, server_api, tmp_path / "serve") as serve, explained(serve, prefect_server.process):
        deployments = wait_for(
            "the five deployments",
            lambda: read_deployments(server_api, config_path),
            STARTUP_TIMEOUT_S,
            serve,
            every_s=2.0,
        )
        refresh_id = deployments["refresh"].id
        wait_for("the refresh trigger", lambda: retrain_automations(server_api, refresh_id), 60, serve)
        since = "2026-03-02T00:00:00+00:00"  # where the teacher's degradation began: the refresh reads from there
        student = cfg["registry"]["student_name"]
        emit_drift_event(server_api, config_path, student, AS_OF, "kdflow.teacher.degraded", since=since)
        [run] = wait_for("a refresh flow run", lambda: retrain_runs(server_api, refresh_id, config_path), 120, serve)
        assert run.parameters == {
            "config_path": str(config_path),
            "as_of": AS_OF,
            "reason": "teacher-degraded",
            "since": since,
            "recalibrate_if_skipped": True,
        }
        final = wait_for(
            f"refresh run {run.name} to finish", lambda: finished_run(server_api, run.id), 900, serve, every_s=3.0
        )
        assert final.state.is_completed(), (
            f"refresh run {run.name} ended {final.state.type.value}: {final.state.message}"
        )

    client = MlflowClient(cfg["mlflow"]["tracking_uri"])
    tags = client.get_model_version(name, "2").tags
    assert tags["kdflow.refresh_reason"] == "teacher-degraded" and tags["kdflow.refresh_as_of"] == AS_OF
    assert tags["kdflow.refresh_window"] == f'["{since}", "{AS_OF}"]'
    assert len(retrain_runs(server_api, refresh_id, config_path)) == 1  # one event, one run
