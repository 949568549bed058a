"""Retried Prefect tasks with a side effect do it once: registration, the flow's MLflow run, promotion, drift record.

Each test injects a failure right after the task's first write. That fault (a crash or lost connection between two
registry calls) cannot be caused otherwise, so the call after the write is monkeypatched to raise once; the task
then runs through Prefect (``prefect_harness``), whose real retry runs it again.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

import numpy as np
import pytest
from prefect import flow
from torch import nn

from kdflow import promotion, registry
from kdflow.data import Dataset
from kdflow.train import TrainResult
from mlflow import MlflowClient


class FailOnce:
    """Wrap ``fn``: call it, then raise on the first call only (the injected fault after a write)."""

    def __init__(self, fn, before: bool = False):
        self.fn, self.before, self.calls = fn, before, 0

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.calls += 1
        if self.before and self.calls == 1:
            raise ConnectionError("injected: connection lost before this call")
        out = self.fn(*args, **kwargs)
        if not self.before and self.calls == 1:
            raise ConnectionError("injected: connection lost after this call")
        return out


@pytest.fixture()
def tracking(tmp_path) -> str:
    """A fresh SQLite MLflow database (and artifact folder) for one test; tracking and registry point at it."""
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    registry.configure(uri, "idempotency", str(tmp_path / "artifacts"))
    return uri


def _test_split(n: int = 40) -> Dataset:
    rng = np.random.default_rng(0)
    return Dataset(
        "test", "memory://test", np.arange(n), rng.normal(size=(n, 4)).astype(np.float32), rng.integers(0, 3, size=n)
    )


def _run_id(tracking: str) -> str:
    exp = MlflowClient().get_experiment_by_name("idempotency").experiment_id
    return MlflowClient().create_run(exp).info.run_id


def _versions(name: str) -> list:
    return MlflowClient().search_model_versions(f"name='{name}'")


def test_retried_register_teacher_creates_one_version(prefect_harness, tracking, monkeypatch):
    from tasks.registry import register_teacher

    run_id, test = _run_id(tracking), _test_split()
    tag = FailOnce(registry.tag_version)  # the version exists when tagging it fails
    monkeypatch.setattr(registry, "tag_version", tag)

    @flow
    def register() -> dict[str, Any]:
        return register_teacher(
            nn.Linear(4, 3), {"test": test}, "idem-teacher", "champion", run_id, TrainResult(), None
        )

    result = register()
    assert tag.calls == 2  # the first attempt failed after registering, Prefect retried once
    versions = _versions("idem-teacher")
    assert [(str(v.version), v.run_id) for v in versions] == [("1", run_id)] and result["version"] == "1"
    assert versions[0].tags["kdflow.run_id"] == run_id and "kdflow.gate_reason" in versions[0].tags
    assert registry.alias_version("idem-teacher", registry.CHALLENGER) == "1"
    assert len(registry.history("idem-teacher", registry.CHALLENGER)) == 1  # the alias was recorded once


def test_retried_register_student_creates_one_version(prefect_harness, tracking, monkeypatch):
    import mlflow
    from kdflow.artifact import ServedSpec, log_served_model
    from kdflow.models import CalibratedClassifier, build_model
    from kdflow.sla import SLACheck
    from tasks.registry import register_student

    run_id = _run_id(tracking)
    spec = ServedSpec("mlp", {"width": 8, "depth": 1}, (4,), 3, 1.5)
    with mlflow.start_run(run_id=run_id):  # the served artifact, logged (not registered) as the distill flow does
        model_uri, _ = log_served_model(
            CalibratedClassifier(build_model(spec.arch, spec.args, (4,), 3), 1.5), spec, np.zeros((2, 4), np.float32)
        )
    alias = FailOnce(registry.ensure_alias)  # version registered and tagged, then the alias call is lost
    monkeypatch.setattr(registry, "ensure_alias", alias)
    checks = [SLACheck("min_accuracy", "accuracy", 0.9, ">=", 0.8, True)]

    @flow
    def register() -> dict[str, Any]:
        return register_student(model_uri, "idem-student", run_id, checks, False, {"trigger": "test"}, {"rows": 2})

    result = register()
    assert alias.calls == 2
    assert [(str(v.version), v.run_id) for v in _versions("idem-student")] == [("1", run_id)] and result.version == "1"
    assert result.model_uri == model_uri  # exactly the logged artifact was registered
    assert len(registry.history("idem-student", registry.CHALLENGER)) == 1
    # One logged model in the run as well: the retry reused the registered version, it logged nothing again.
    exp = MlflowClient().get_run(run_id).info.experiment_id
    assert len(MlflowClient().search_logged_models([exp], filter_string=f"source_run_id='{run_id}'")) == 1


def test_retried_log_served_student_logs_one_artifact(prefect_harness, tracking, monkeypatch):
    """The served artifact is logged, then the task fails: the retry returns the run's logged model."""
    from kdflow import artifact
    from kdflow.artifact import ServedSpec
    from kdflow.models import CalibratedClassifier, build_model
    from tasks import registry as registry_tasks

    run_id = _run_id(tracking)
    logged = FailOnce(artifact.log_served_model)
    monkeypatch.setattr(registry_tasks, "log_served_model", logged)
    spec = ServedSpec("mlp", {"width": 8, "depth": 1}, (4,), 3, 1.5)
    student = CalibratedClassifier(build_model(spec.arch, spec.args, (4,), 3), 1.5)

    @flow
    def log() -> str:
        return registry_tasks.log_served_student(student, spec, np.zeros((2, 4), np.float32), run_id)

    model_uri = log()
    assert logged.calls == 1  # the retry found the complete logged model and did not log another
    exp = MlflowClient().get_run(run_id).info.experiment_id
    found = MlflowClient().search_logged_models([exp], filter_string=f"source_run_id='{run_id}'")
    assert [m.model_uri for m in found] == [model_uri]
    assert not MlflowClient().search_model_versions(f"run_id='{run_id}'")  # logged, not registered


def test_register_run_model_registers_a_logged_but_unregistered_model(tracking):
    """An attempt that logged the model and died before registering it: the retry registers that logged model."""
    import mlflow

    run_id = _run_id(tracking)
    with mlflow.start_run(run_id=run_id):
        logged_uri, none = registry.log_torch_model(nn.Linear(4, 3), np.zeros((2, 4), np.float32), None)
    assert none is None and not _versions("idem-logged")
    uri, version, reused = registry.register_run_model(
        nn.Linear(4, 3), np.zeros((2, 4), np.float32), "idem-logged", run_id
    )
    assert (uri, version, reused) == (logged_uri, "1", False)
    again = registry.register_run_model(nn.Linear(4, 3), np.zeros((2, 4), np.float32), "idem-logged", run_id)
    assert again == (logged_uri, "1", True) and len(_versions("idem-logged")) == 1
    exp = MlflowClient().get_run(run_id).info.experiment_id
    assert len(MlflowClient().search_logged_models([exp], filter_string=f"source_run_id='{run_id}'")) == 1


def test_retried_start_mlflow_run_creates_one_run(prefect_harness, tmp_path, monkeypatch):
    from tasks.tracking import start_mlflow_run

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    batch = FailOnce(MlflowClient.log_batch)  # the run exists when logging its params fails
    monkeypatch.setattr(MlflowClient, "log_batch", lambda self, *a, **kw: batch(self, *a, **kw))

    @flow
    def start() -> str:
        return start_mlflow_run(
            uri, "idem-runs", str(tmp_path / "artifacts"), {"a": 1, "b.c": "x"}, {"kdflow.flow": "test"}
        )

    run_id = start()
    assert batch.calls == 2
    client = MlflowClient()
    runs = client.search_runs([client.get_experiment_by_name("idem-runs").experiment_id])
    assert [r.info.run_id for r in runs] == [run_id]
    assert runs[0].data.params == {"a": "1", "b.c": "x"} and runs[0].data.tags["kdflow.flow"] == "test"


def _register_passing_versions(name: str, run_id: str, n: int) -> None:
    import mlflow

    with mlflow.start_run(run_id=run_id):
        model_uri, _ = registry.log_torch_model(nn.Linear(4, 3), np.zeros((2, 4), np.float32), None)
    for _ in range(n):
        version = str(mlflow.register_model(model_uri, name).version)
        registry.tag_version(name, version, {"sla_passed": True})


@pytest.mark.parametrize("where", ["between recording and moving", "after the whole promotion"])
def test_retried_promote_version_moves_and_records_once(prefect_harness, tracking, monkeypatch, where):
    from tasks.promotion import promote_version

    name = f"idem-promote-{where.split()[0]}"
    _register_passing_versions(name, _run_id(tracking), 2)
    registry.promote(name, "1", "first", "tester")
    if where == "between recording and moving":
        fault = FailOnce(promotion._apply_move, before=True)  # history has the event, the alias has not moved
        monkeypatch.setattr(promotion, "_apply_move", fault)
    else:
        fault = FailOnce(registry.promote)  # moved and recorded, then the response is lost
        monkeypatch.setattr(registry, "promote", fault)

    @flow
    def promote() -> dict[str, Any]:
        return promote_version(name, "2", "better", "tester")

    result = promote()
    assert fault.calls == 2 and result["version"] == "2" and result["previous"] == "1" and result["changed"]
    assert registry.alias_version(name, registry.CHAMPION) == "2"
    events = registry.history(name, registry.CHAMPION)
    assert [(e.previous, e.version) for e in events] == [(None, "1"), ("1", "2")]  # one event for the retried move
    tags = MlflowClient().get_model_version(name, "2").tags
    assert '"previous": "1"' in tags["kdflow.alias.champion.event"]


def test_retried_record_drift_check_creates_one_run(prefect_harness, tmp_path, monkeypatch):
    from kdflow.config import DistillConfig, MlflowConfig, load_config, packaged_config
    from kdflow.drift import Decision, DriftCheck, Signal
    from tasks.drift import record_drift_check

    mlflow_cfg = MlflowConfig(
        tracking_uri=f"sqlite:///{tmp_path}/mlflow.db", artifact_location=str(tmp_path / "artifacts")
    )
    cfg = load_config(packaged_config("mnist1d_distill.yaml"), DistillConfig).model_copy(update={"mlflow": mlflow_cfg})
    # record_drift_check reads only the champion's ref: no model or profile is needed to record a check.
    ref = registry.ModelRef("models:/s@champion", "s", "3", None)
    check = DriftCheck(
        "drift",
        "psi exceeded",
        500,
        100,
        50,
        {"psi": Signal("psi", 0.4, 0.2, True, "max feature PSI")},
        metrics={"accuracy": 0.9},
    )
    decision = Decision("none", "one check so far", [], {"psi": 1})
    metrics = FailOnce(MlflowClient.log_batch, before=True)  # the run exists, its first log_batch fails
    monkeypatch.setattr(MlflowClient, "log_batch", lambda self, *a, **kw: metrics(self, *a, **kw))

    @flow
    def record() -> str:
        return record_drift_check(
            cfg.mlflow, cfg.drift, ref, datetime(2026, 3, 1, tzinfo=timezone.utc), check, decision
        )

    run_id = record()
    assert metrics.calls >= 2
    client = MlflowClient()
    runs = client.search_runs([client.get_experiment_by_name(cfg.drift.monitoring_experiment).experiment_id])
    assert [r.info.run_id for r in runs] == [run_id]
    run = runs[0]
    assert run.info.status == "FINISHED" and run.data.metrics["signal_psi"] == pytest.approx(0.4)
    assert {a.path for a in client.list_artifacts(run_id)} == {"check.json", "decision.json"}
