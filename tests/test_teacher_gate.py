"""The teacher gate: a teacher becomes champion only with test accuracy >= gate.min_accuracy and not worse than
the current champion on the same test set (within gate.champion_tolerance); otherwise it is challenger only,
with the reason on the version and the MLflow run, and ``kdflow teacher train`` exits 3."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from app.cli import GATE_FAILED_EXIT, app
from kdflow import registry
from kdflow.config import TeacherConfig, TeacherGateConfig, load_config
from mlflow import MlflowClient
from tests.conftest import write_yaml


@pytest.mark.parametrize(
    "acc, champion, champ_acc, error, passed, promote, says",
    [
        (0.80, None, None, None, False, False, "< gate.min_accuracy 0.85"),
        (0.90, None, None, None, True, True, "no champion yet"),
        (0.90, "3", 0.92, None, True, True, "within 0.05 of champion version 3's 0.9200"),
        (0.86, "3", 0.92, None, True, False, "below champion version 3's 0.9200 by more than gate.champion_tolerance"),
        (0.95, "3", None, "RuntimeError: shape", True, False, "could not be scored on this test set (RuntimeError"),
    ],
)
def test_judge_teacher(acc, champion, champ_acc, error, passed, promote, says):
    verdict = registry.judge_teacher(acc, 0.85, 0.05, champion, champ_acc, error)
    assert (verdict.passed, verdict.promote) == (passed, promote) and says in verdict.reason
    assert verdict.tags()["sla_passed"] is passed and verdict.tags()["gate_reason"] == verdict.reason


def test_gate_defaults_and_the_packaged_config_document_it():
    from kdflow.config import packaged_config

    path = packaged_config("mnist1d_teacher.yaml")
    assert load_config(path, TeacherConfig).gate == TeacherGateConfig(min_accuracy=0.85, champion_tolerance=0.01)
    assert "gate:" in path.read_text() and "min_accuracy" in path.read_text()


@pytest.fixture()
def gate_config(teacher_config, tmp_path, request) -> dict[str, Any]:
    """The shrunk teacher config with its own registry name and MLflow database, and 2 epochs."""
    cfg = copy.deepcopy(teacher_config)
    cfg["registry_name"] = f"gate-{request.node.name}"[:60]
    cfg["train"].update(epochs=2)
    cfg["gate"] = {"min_accuracy": 0.0, "champion_tolerance": 0.01}
    cfg["mlflow"] = {"tracking_uri": f"sqlite:///{tmp_path}/mlflow.db", "artifact_location": str(tmp_path / "art")}
    return cfg


def _train(cfg: dict[str, Any], path: Path) -> dict[str, Any]:
    from flows.teacher import teacher_flow

    return teacher_flow(str(write_yaml(path, cfg)))


def _version_tags(name: str, version: str) -> dict[str, str]:
    return MlflowClient().get_model_version(name, version).tags


@pytest.mark.slow
def test_teacher_below_min_accuracy_is_challenger_only_and_the_cli_exits_3(
    prefect_harness, gate_config, tmp_path, monkeypatch
):
    name = gate_config["registry_name"]
    first = _train(gate_config, tmp_path / "first.yaml")
    assert first["promoted"] and first["uri"] == f"models:/{name}@champion" and first["version"] == "1"

    strict = {**gate_config, "gate": {"min_accuracy": 0.999, "champion_tolerance": 1.0}}
    monkeypatch.setenv("PREFECT_HOME", str(tmp_path / "prefect"))
    result = CliRunner().invoke(
        app, ["teacher", "train", "--config", str(write_yaml(tmp_path / "strict.yaml", strict))]
    )
    assert result.exit_code == GATE_FAILED_EXIT, result.output
    assert "gate FAILED: not promoted: test accuracy" in result.output and "< gate.min_accuracy 0.999" in result.output

    assert registry.alias_version(name, registry.CHAMPION) == "1"  # champion unchanged
    assert registry.alias_version(name, registry.CHALLENGER) == "2"
    assert [e.version for e in registry.history(name, registry.CHAMPION)] == ["1"]
    tags = _version_tags(name, "2")
    assert tags["kdflow.sla_passed"] == "False" and "< gate.min_accuracy 0.999" in tags["kdflow.gate_reason"]
    run = MlflowClient().get_run(tags["kdflow.run_id"])
    assert run.info.status == "FINISHED" and run.data.tags["kdflow.gate_reason"] == tags["kdflow.gate_reason"]
    assert run.data.tags["kdflow.promote"] == "False"


@pytest.mark.slow
def test_a_teacher_worse_than_the_champion_is_not_promoted_and_a_good_one_is(prefect_harness, gate_config, tmp_path):
    name = gate_config["registry_name"]
    strong = {**gate_config, "train": {**gate_config["train"], "epochs": 4}}
    first = _train(strong, tmp_path / "strong.yaml")
    assert first["promoted"] and registry.alias_version(name, registry.CHAMPION) == "1"

    # Barely trained (lr 1e-7): near chance, far below the champion but above the (zero) floor.
    weak = {**gate_config, "train": {**gate_config["train"], "epochs": 1, "lr": 1e-7}}
    second = _train(weak, tmp_path / "weak.yaml")
    assert second["champion_version"] == "1" and second["champion_accuracy"] == pytest.approx(first["test_accuracy"])
    assert second["test_accuracy"] < first["test_accuracy"] - 0.01  # the premise: clearly worse on the same test set
    assert not second["promoted"] and second["gate_passed"] and second["uri"] == f"models:/{name}@challenger"
    assert "below champion version 1's" in second["reason"]
    assert registry.alias_version(name, registry.CHAMPION) == "1" and registry.alias_version(name, "challenger") == "2"
    assert _version_tags(name, "2")["kdflow.gate_champion_version"] == "1"

    # The same strong config again (same seed): as good as the champion, so it is promoted.
    third = _train(strong, tmp_path / "strong-again.yaml")
    assert third["promoted"] and third["champion_accuracy"] == pytest.approx(first["test_accuracy"])
    assert registry.alias_version(name, registry.CHAMPION) == third["version"] == "3"
    assert [(e.previous, e.version) for e in registry.history(name, registry.CHAMPION)] == [(None, "1"), ("1", "3")]
    assert _version_tags(name, "3")["kdflow.sla_passed"] == "True"
