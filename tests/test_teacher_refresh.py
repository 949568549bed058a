"""The teacher refresh (flows/teacher_refresh.py, ``kdflow teacher refresh``) on tiny MNIST-1D against the embedded
Prefect API: production traffic of a shifted regime (the signals time-reversed: the tiny teacher scores near chance
there) is logged with labels; the refresh fine-tunes the teacher on it with a replay of its training data, gates,
promotes and retrains the student from it — or refuses, or records that there were too few labels — and a refresh
that fails after promoting leaves both champions as they were.

Each test's teacher is its own registered model (``refresh-teacher-*``), trained by the real teacher flow, so the
session's shared teacher is never touched."""

from __future__ import annotations

import copy
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from kdflow.generators import mnist1d_arrays
from kdflow.inference_logs import InferenceLogWriter, write_labels
from tests.conftest import write_yaml

START = date(2026, 3, 1)
DAYS = 3
AS_OF = "2026-03-04T00:00:00+00:00"
runner = CliRunner()


def shifted_regime(rows: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """MNIST-1D rows of the shifted regime: fresh default samples, time-reversed (same value range, other shapes)."""
    x, y = mnist1d_arrays(rows, seed=seed)
    return np.ascontiguousarray(x[:, ::-1], dtype=np.float32), y


def write_shifted_logs(root: str, model: str, start: date, days: int, rows_per_day: int, seed: int = 11) -> int:
    """``days`` days of shifted traffic logged for ``model`` (uniform probabilities: what the student answered does
    not matter to a refresh) with every label arriving an hour later; returns the number of rows."""
    writer = InferenceLogWriter(root, model, "1")
    for day in range(days):
        x, y = shifted_regime(rows_per_day, seed + day)
        today = start + timedelta(days=day)
        midnight = pd.Timestamp(datetime(today.year, today.month, today.day, tzinfo=timezone.utc))
        stamps = midnight + pd.to_timedelta(np.linspace(0, 80_000, rows_per_day), unit="s")
        ids = [f"shift-{today:%Y%m%d}-{i:05d}" for i in range(rows_per_day)]
        writer.log(x, np.full((rows_per_day, 10), 0.1, dtype=np.float32), stamps, request_ids=ids)
        writer.flush()
        write_labels(root, ids, y, stamps + pd.Timedelta(hours=1))
    return days * rows_per_day


def train_own_teacher(teacher_config: dict[str, Any], name: str, path: Path) -> Path:
    """Train and register a teacher named ``name`` (the real teacher flow); returns its config's path."""
    from flows.teacher import teacher_flow

    cfg = copy.deepcopy(teacher_config)
    cfg["registry_name"] = name
    written = write_yaml(path, cfg)
    assert teacher_flow(str(written))["promoted"]
    return written


def refresh_config(distill_config: dict[str, Any], tmp_path: Path, teacher: str, **refresh: Any) -> dict[str, Any]:
    """The tiny distill config pointed at ``teacher`` and at shifted logs in ``tmp_path/logs``."""
    cfg = copy.deepcopy(distill_config)
    cfg["teacher_uri"] = f"models:/{teacher}@champion"
    cfg["serving"] = {"teacher": f"models:/{teacher}@champion"}
    cfg["logs"] = {"root": str(tmp_path / "logs")}
    cfg["retrain"] = {"window_days": DAYS, "min_recent_labeled_rows": 50}
    cfg["teacher_refresh"] = {
        "window_days": DAYS,
        "min_labeled_rows": 500,
        "finetune_epochs": 8,
        "finetune_lr": 1e-3,
        "max_forgetting": 0.1,  # 300 test rows: one standard error of accuracy is about 0.03
        **refresh,
    }
    write_shifted_logs(cfg["logs"]["root"], cfg["registry"]["student_name"], START, DAYS, 400)
    return cfg


def aliases(client, name: str) -> dict[str, str]:
    """``{alias: version}`` of a registered model."""
    return {a: str(v) for a, v in (client.get_registered_model(name).aliases or {}).items()}


@pytest.mark.slow
def test_too_few_labels_is_a_recorded_no_refresh(
    prefect_harness, distill_config, teacher_config, tmp_path, monkeypatch
):
    """Below min_labeled_rows nothing is trained or registered; the run records why; the command exits 0."""
    from app.cli import app
    from mlflow import MlflowClient

    monkeypatch.setenv("PREFECT_HOME", str(tmp_path / "prefect"))
    name = "refresh-teacher-few"
    train_own_teacher(teacher_config, name, tmp_path / "teacher.yaml")
    cfg = refresh_config(distill_config, tmp_path, name, min_labeled_rows=5000)
    path = write_yaml(tmp_path / "refresh.yaml", cfg)
    client = MlflowClient(cfg["mlflow"]["tracking_uri"])
    before = aliases(client, name)

    result = runner.invoke(app, ["teacher", "refresh", "--config", str(path), "--as-of", AS_OF])
    assert result.exit_code == 0, result.output
    assert ": skipped" in result.output
    assert "no refresh: 1200 labeled rows" in result.output and "min_labeled_rows 5000" in result.output
    assert aliases(client, name) == before and len(client.search_model_versions(f"name='{name}'")) == 1
    [run] = client.search_runs(
        [client.get_experiment_by_name("kdflow-teacher").experiment_id],
        filter_string="tags.`kdflow.flow` = 'teacher-refresh' and tags.`kdflow.refresh_outcome` = 'skipped' "
        f"and tags.`kdflow.teacher` = '{name}'",  # the session's tracking store holds other tests' refreshes
    )
    assert "min_labeled_rows 5000" in run.data.tags["kdflow.refresh_reason"]
    # --since (the drift check passes where the teacher's degradation began) narrows the window inside window_days.
    args = ["teacher", "refresh", "--config", str(path), "--as-of", AS_OF, "--since", "2026-03-03"]
    narrowed = runner.invoke(app, args)
    assert narrowed.exit_code == 0, narrowed.output
    assert "no refresh: 400 labeled rows in [2026-03-03 00:00, 2026-03-04 00:00)" in narrowed.output


@pytest.mark.slow
def test_forgetting_guard_refuses_and_leaves_both_champions(
    prefect_harness, distill_config, teacher_config, tmp_path, monkeypatch
):
    """A teacher retrained from scratch on the shifted regime alone (no replay) is better on the held-out recent
    slice but forgets the old regime: refused (exit 3), the reason on the version and the run, champions kept."""
    from app.cli import GATE_FAILED_EXIT, app
    from mlflow import MlflowClient

    monkeypatch.setenv("PREFECT_HOME", str(tmp_path / "prefect"))
    name = "refresh-teacher-forget"
    teacher_path = train_own_teacher(teacher_config, name, tmp_path / "teacher.yaml")
    cfg = refresh_config(
        distill_config, tmp_path, name, replay_fraction=0.0, teacher_config=str(teacher_path), max_forgetting=0.05
    )
    path = write_yaml(tmp_path / "refresh.yaml", cfg)
    client = MlflowClient(cfg["mlflow"]["tracking_uri"])
    before = aliases(client, name)

    result = runner.invoke(app, ["teacher", "refresh", "--config", str(path), "--as-of", AS_OF, "--mode", "retrain"])
    assert result.exit_code == GATE_FAILED_EXIT, result.output
    assert ": refused" in result.output and "forgetting: old-regime test accuracy" in result.output
    assert "held-out recent accuracy" not in result.output.split("refused:")[1]  # better on the new regime
    assert aliases(client, name) == {**before, "challenger": "2"}  # champion unchanged
    tags = client.get_model_version(name, "2").tags
    assert tags["kdflow.sla_passed"] == "False" and "forgetting" in tags["kdflow.gate_reason"]
    assert tags["kdflow.refresh_mode"] == "retrain" and '"replay_train": 0' in tags["kdflow.refresh_rows"]
    assert not client.search_registered_models(f"name='{cfg['registry']['student_name']}'")  # no student touched

    bad = runner.invoke(app, ["teacher", "refresh", "--config", str(path), "--mode", "distil"])
    assert bad.exit_code == 2 and "--mode must be finetune or retrain" in bad.output


@pytest.mark.slow
def test_refresh_promotes_the_teacher_then_retrains_the_student(
    prefect_harness, distill_config, teacher_config, tmp_path
):
    """Fine-tune with replay: the new teacher beats the champion on the held-out shifted slice without forgetting,
    is promoted through the audited promotion with its lineage, and a student is distilled from it (its logits
    under the new teacher version's store key)."""
    from flows.teacher_refresh import teacher_refresh_flow
    from kdflow import registry
    from mlflow import MlflowClient

    name = "refresh-teacher-e2e"
    train_own_teacher(teacher_config, name, tmp_path / "teacher.yaml")
    cfg = refresh_config(distill_config, tmp_path, name)
    path = write_yaml(tmp_path / "refresh.yaml", cfg)
    client = MlflowClient(cfg["mlflow"]["tracking_uri"])

    result = teacher_refresh_flow(str(path), datetime.fromisoformat(AS_OF), "test")

    assert result["outcome"] == "promoted", result["outcome_reason"]
    verdict = result["verdict"]
    assert verdict["holdout_accuracy"] > verdict["champion_holdout_accuracy"]
    assert verdict["test_accuracy"] >= verdict["champion_test_accuracy"] - 0.1
    assert aliases(client, name) == {"champion": "2", "challenger": "2"}
    assert result["promotion"]["previous"] == "1" and result["promotion"]["version"] == "2"
    [event] = [e for e in registry.history(name, "champion") if e.version == "2"]
    assert "teacher-refresh-flow" in event.actor
    rows = result["rows"]
    assert rows["recent_labeled"] == 1200 and rows["holdout"] > 0 and rows["replay_train"] > 0
    assert rows["recent_train"] + rows["recent_val"] + rows["holdout"] == 1200
    tags = client.get_model_version(name, "2").tags
    assert tags["kdflow.refresh_parent_version"] == "1" and tags["kdflow.refresh_mode"] == "finetune"
    assert float(tags["kdflow.reference_accuracy"]) == pytest.approx(verdict["holdout_accuracy"])
    assert tags["kdflow.refresh_as_of"] == AS_OF and tags["kdflow.refresh_reason"] == "test"
    assert tags["kdflow.refresh_window"] == '["2026-03-01T00:00:00+00:00", "2026-03-04T00:00:00+00:00"]'
    assert set(result["phases"]) >= {"collect", "validate", "train", "gate", "register", "promote", "retrain_student"}

    # The student retrain distilled the NEW teacher version.
    registration = result["retrain"]["report"]["registration"]
    assert registration["version"] == "1"
    student_tags = client.get_model_version(cfg["registry"]["student_name"], "1").tags
    assert student_tags["kdflow.teacher_version"] == "2"
    assert f"logits/{name}/v2/" in student_tags["kdflow.logit_store_keys"]
    run = client.get_run(result["run_id"])
    assert run.data.tags["kdflow.flow"] == "teacher-refresh" and run.data.tags["kdflow.refresh_outcome"] == "promoted"
    assert run.data.metrics["refresh_seconds"] > 0 and "holdout_accuracy" in run.data.metrics


@pytest.mark.slow
def test_a_refresh_that_fails_after_promoting_leaves_both_champions(
    prefect_harness, distill_config, teacher_config, tmp_path, monkeypatch
):
    """The student retrain raises after the new teacher was promoted (the one fault mocked: a crash we cannot
    cause otherwise at that point): the teacher champion is rolled back, the student champion never moved."""
    import flows.teacher_refresh
    from flows.teacher_refresh import teacher_refresh_flow
    from kdflow import registry
    from mlflow import MlflowClient

    def crash(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("injected: the student retrain crashed")

    name = "refresh-teacher-fail"
    train_own_teacher(teacher_config, name, tmp_path / "teacher.yaml")
    cfg = refresh_config(distill_config, tmp_path, name)
    path = write_yaml(tmp_path / "refresh.yaml", cfg)
    client = MlflowClient(cfg["mlflow"]["tracking_uri"])
    monkeypatch.setattr(flows.teacher_refresh, "retrain_flow", crash)

    with pytest.raises(RuntimeError, match="injected"):
        teacher_refresh_flow(str(path), datetime.fromisoformat(AS_OF), "test")

    assert aliases(client, name)["champion"] == "1"
    moves = [(e.previous, e.version) for e in registry.history(name, "champion")]
    assert moves[-2:] == [("1", "2"), ("2", "1")]  # promoted, then rolled back: both audited
    assert client.get_model_version(name, "2").tags["kdflow.refresh_outcome"] == "rolled back"
    assert not client.search_registered_models(f"name='{cfg['registry']['student_name']}'")
    [run] = client.search_runs(
        [client.get_experiment_by_name("kdflow-teacher").experiment_id],
        filter_string=f"tags.`kdflow.flow` = 'teacher-refresh' and tags.`kdflow.as_of` = '{AS_OF}' "
        f"and attributes.status = 'FAILED'",
    )
    assert run.info.status == "FAILED"


def test_split_is_by_id_and_replay_is_the_configured_share():
    """Library: a row's side depends on its id only (the same in any window), and replay rows are the configured
    share of the mix; the gate is strict on improvement and bounded on forgetting."""
    from kdflow.config import ConfigError, TeacherRefreshConfig
    from kdflow.data import Dataset
    from kdflow.teacher_refresh import (
        champion_teacher_uri,
        judge_refresh,
        prepare_refresh_data,
        refresh_window,
        split_recent,
        with_mode,
    )

    ids = np.arange(2000, dtype=np.int64)
    ds = Dataset("recent", "mem", ids, np.zeros((2000, 4), np.float32), np.zeros(2000, np.int64))
    whole = split_recent(ds, 0.2, 0.1, seed=0)
    half = split_recent(Dataset("r", "mem", ids[:1000], ds.x[:1000], ds.y[:1000]), 0.2, 0.1, seed=0)
    assert set(half.holdout.ids) == set(whole.holdout.ids) & set(ids[:1000])
    assert abs(len(whole.holdout) - 400) < 60 and abs(len(whole.val) - 160) < 45
    old = Dataset("train", "mem", np.arange(5000), np.ones((5000, 4), np.float32), np.ones(5000, np.int64))
    data = prepare_refresh_data(ds, old, old, TeacherRefreshConfig(replay_fraction=0.25))
    assert data.rows["replay_train"] == round(data.rows["recent_train"] / 3)
    assert len(data.train) == data.rows["recent_train"] + data.rows["replay_train"]

    end = datetime.fromisoformat(AS_OF)
    assert refresh_window(end, 14, None) == (end - timedelta(days=14), end)
    assert refresh_window(end, 14, end - timedelta(days=3)) == (end - timedelta(days=3), end)  # since the episode
    assert refresh_window(end, 14, end - timedelta(days=30)) == (end - timedelta(days=14), end)  # at most window_days
    assert refresh_window(end, 14, end + timedelta(days=1)) == (end - timedelta(days=14), end)  # a future since: none
    assert not judge_refresh((0.80, 0.80), (0.9, 0.9), 0.0, 0.02).promote  # equal is not better
    assert judge_refresh((0.81, 0.80), (0.885, 0.9), 0.0, 0.02).promote
    refused = judge_refresh((0.81, 0.80), (0.87, 0.9), 0.0, 0.02)
    assert not refused.promote and "forgetting" in refused.reason and "held-out" not in refused.reason

    assert champion_teacher_uri("models:/t@champion") == "t"
    with pytest.raises(ConfigError, match="champion alias"):
        champion_teacher_uri("models:/t/3")  # a pinned teacher would keep the student on the old version
    with pytest.raises(ConfigError, match="set teacher_config"):
        with_mode(TeacherRefreshConfig(), "retrain")
