"""The born-again and online distillation flows end to end on tiny MNIST-1D (Prefect test harness, MLflow on
SQLite in tmp, the local logit store), and their configuration errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from app.cli import app
from kdflow import registry
from kdflow.config import ConfigError, DistillConfig, load_config
from kdflow.config_methods import online_teacher
from kdflow.logits import LogitStore
from kdflow.store import open_store
from mlflow import MlflowClient
from tests.conftest import write_yaml


def _tags(name: str, version: str) -> dict[str, str]:
    return MlflowClient().get_model_version(name, version).tags


@pytest.mark.slow
def test_two_born_again_generations_are_registered_with_lineage_and_one_is_gated(distill_config, tmp_path, teacher):
    from flows.self_distill import self_distill_flow

    distill_config["self_distill"] = {"generations": 2, "select": "best_val"}
    name = distill_config["registry"]["student_name"]
    report = self_distill_flow(str(write_yaml(tmp_path / "ban.yaml", distill_config)))

    section = report["self_distill"]
    rows = section["table"]
    assert section["generations"] == 2 and [r["generation"] for r in rows] == [1, 2]
    assert [r["version"] for r in rows] == ["1", "2"]
    first, second = rows
    assert (first["parent_uri"], first["parent_version"]) == (teacher["uri"], teacher["version"])
    assert (second["parent_uri"], second["parent_version"], second["parent_run_id"]) == (
        f"models:/{name}/1",
        "1",
        first["run_id"],
    )
    assert first["parent_agreement"] == pytest.approx(first["teacher_agreement"])  # generation 1's parent: the teacher
    for r in rows:
        assert 0 <= r["test_ece"] <= 1 and 0 <= r["teacher_agreement"] <= 1 and 0 <= r["val_accuracy"] <= 1
    # Selected by validation accuracy, the earliest on a tie; the gate and the report are that generation's.
    best = max(rows, key=lambda r: (r["val_accuracy"], -r["generation"]))
    assert [r["selected"] for r in rows] == [r is best for r in rows] and section["selected_version"] == best["version"]
    assert report["registration"]["version"] == best["version"] and report["run_id"] == best["run_id"]
    assert report["evaluation"]["student_accuracy"] == best["test_accuracy"] and report["gate_passed"]
    assert registry.alias_version(name, "challenger") == best["version"] == registry.alias_version(name, "champion")

    # Every generation is a registered version with its lineage and SLA record, in a run nested under the flow's.
    flow_run = section["flow_run_id"]
    for r in rows:
        tags = _tags(name, r["version"])
        assert tags["kdflow.generation"] == str(r["generation"]) and tags["kdflow.generations"] == "2"
        assert tags["kdflow.parent_version"] == r["parent_version"] and tags["kdflow.run_id"] == r["run_id"]
        assert tags["kdflow.lineage_root_uri"] == f"models:/{teacher['name']}/{teacher['version']}"
        assert tags["kdflow.sla_passed"] == str(r["sla_passed"]) and tags["kdflow.self_distill_run_id"] == flow_run
        assert tags["kdflow.generation_selected"] == str(r["selected"])
        assert MlflowClient().get_run(r["run_id"]).data.tags["mlflow.parentRunId"] == flow_run
    assert _tags(name, "2")["kdflow.parent_run_id"] == first["run_id"]
    history = MlflowClient().get_metric_history(flow_run, "generation_test_accuracy")
    assert sorted((m.step, m.value) for m in history) == [(r["generation"], r["test_accuracy"]) for r in rows]

    # Generation 1's logits are in the logit store under its own version: distinct from the teacher's, reusable.
    store = open_store(distill_config["store"]["root"])
    keys = json.loads(_tags(name, "2")["kdflow.logit_store_keys"])
    assert set(keys) == {"train", "val", "test", "transfer"} and all(f"/logits/{name}/v1/" in k for k in keys.values())
    manifest = LogitStore(store, keys["test"].split("/store/", 1)[1]).require_manifest()
    assert (manifest.teacher_uri, manifest.teacher_version) == (f"models:/{name}/1", "1")
    assert not any(f"/logits/{name}/" in k for k in json.loads(_tags(name, "1")["kdflow.logit_store_keys"]).values())
    assert "## Born-again generations" in Path(report["paths"]["markdown"]).read_text()
    assert "Born-again generations" in Path(report["paths"]["html"]).read_text()


@pytest.mark.slow
def test_a_born_again_run_that_fails_withdraws_every_generation_it_registered(distill_config, tmp_path, monkeypatch):
    """The flow's transaction rolls back each register-generation: a run failing after both generations were
    registered (here: writing the report) leaves no version behind, and its MLflow run ends FAILED."""
    import tasks.methods
    from flows.self_distill import self_distill_flow

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(tasks.methods, "write_report", disk_full)
    name = distill_config["registry"]["student_name"]
    distill_config["self_distill"] = {"generations": 2}
    distill_config["sla"]["min_accuracy"] = 0.9999  # no promotion: nothing becomes champion, everything is withdrawn
    distill_config["train"].update(epochs=1, max_steps=3)
    distill_config["registry"]["experiment"] = f"withdraw-{name}"
    with pytest.raises(OSError, match="No space left"):
        self_distill_flow(str(write_yaml(tmp_path / "fails.yaml", distill_config)))
    assert MlflowClient().search_model_versions(f"name='{name}'") == []
    experiment = MlflowClient().get_experiment_by_name(f"withdraw-{name}").experiment_id
    flow_runs = MlflowClient().search_runs([experiment], filter_string="tags.`kdflow.flow` = 'self-distill'")
    assert [r.info.status for r in flow_runs if "mlflow.parentRunId" not in r.data.tags] == ["FAILED"]


@pytest.mark.slow
def test_online_flow_co_trains_and_registers_teacher_and_student(distill_config, tmp_path, prefect_harness):
    from flows.online import online_flow

    name = distill_config["registry"]["student_name"]
    teacher_name = f"online-teacher-{name}"
    distill_config["teacher_uri"] = f"models:/{teacher_name}@champion"
    distill_config["online"] = {
        "teacher": {"arch": "cnn1d", "args": {"channels": 32, "depth": 3, "kernel_size": 5}, "preprocess": "none"},
        "beta": 0.3,
        "teacher_gate": {"min_accuracy": 0.2},
    }
    distill_config["train"].update(epochs=6)
    report = online_flow(str(write_yaml(tmp_path / "online.yaml", distill_config)))
    flow_run = report["run_id"]

    teacher = report["online"]["teacher"]
    assert (teacher["name"], teacher["version"], teacher["promoted"]) == (teacher_name, "1", True)
    assert registry.resolve(distill_config["teacher_uri"]).version == "1"  # later runs and drift checks find it
    tags = _tags(teacher_name, "1")
    assert tags["kdflow.co_trained_with"] == name and tags["kdflow.online_run_id"] == flow_run
    assert float(tags["kdflow.test_accuracy"]) == pytest.approx(teacher["test_accuracy"])
    assert MlflowClient().get_run(teacher["run_id"]).data.tags["mlflow.parentRunId"] == flow_run
    # The student: gated against the co-trained teacher, registered and promoted as the distill flow does.
    reg = report["registration"]
    assert report["gate_passed"] and reg["version"] == "1" and reg["aliases"] == ["challenger", "champion"]
    assert report["teacher"]["uri"] == f"models:/{teacher_name}/1"
    assert report["evaluation"]["teacher_accuracy"] == pytest.approx(teacher["test_accuracy"], abs=0.01)
    student_tags = _tags(name, "1")
    assert student_tags["kdflow.distillation"] == "online" and student_tags["kdflow.teacher_version"] == "1"
    # Both networks' curves, every epoch; the teacher's logits stored for later runs.
    epochs = report["online"]["epochs"]
    for who in ("student", "teacher"):
        assert len(MlflowClient().get_metric_history(flow_run, f"{who}_val_accuracy")) == epochs
    keys = json.loads(student_tags["kdflow.logit_store_keys"])
    assert all(f"/logits/{teacher_name}/v1/" in k for k in keys.values())
    assert "## Online (mutual) distillation" in Path(report["paths"]["markdown"]).read_text()


@pytest.mark.parametrize(
    ("section", "match"),
    [
        (
            {"self_distill": {"generations": 0}},
            r"self_distill\.generations: Input should be greater than or equal to 1",
        ),
        ({"self_distill": {"generations": 2, "select": "best"}}, r"self_distill\.select: Input should be 'best_val'"),
        ({"self_distill": {"generation": 2}}, r"self_distill\.generation: Extra inputs are not permitted"),
        ({"online": {"beta": 0.3}}, r"online\.teacher: Field required"),
        ({"online": {"teacher": {"arch": "mlp"}, "beta": -0.1}}, r"online\.beta: Input should be greater than"),
        ({"online": {"teacher": {"arch": "mlp"}, "teacher_lr_ratio": 0}}, r"online\.teacher_lr_ratio"),
    ],
)
def test_bad_method_sections_are_one_error_naming_the_key(section, match, tmp_path):
    raw = {
        "data": {"train": "a", "val": "b", "test": "c", "num_classes": 10},
        "teacher_uri": "models:/t@champion",
        "student": {"arch": "mlp"},
        "registry": {"student_name": "s"},
        **section,
    }
    with pytest.raises(ConfigError, match=match):
        load_config(write_yaml(tmp_path / "bad.yaml", raw), DistillConfig)


def test_a_config_that_cannot_run_online_says_why(tmp_path, monkeypatch):
    base = {
        "data": {"train": "a", "val": "b", "test": "c", "num_classes": 10},
        "teacher_uri": "models:/t@champion",
        "student": {"arch": "mlp"},
        "registry": {"student_name": "s"},
    }
    online = {"teacher": {"arch": "mlp", "args": {"width": 256}}}
    assert online_teacher(DistillConfig.model_validate({**base, "online": online}))[1:] == ("t", "champion")
    cases = [
        ({}, "needs an 'online:' section"),
        ({"online": online, "teacher_uri": "models:/t/3"}, "teacher_uri must be models:/<name>@<alias>"),
        ({"online": online, "extra_teachers": ["models:/u@champion"]}, "extra_teachers must be empty"),
        ({"online": online, "self_distill": {"generations": 2}}, "self_distill.generations must be 1"),
    ]
    for update, match in cases:
        with pytest.raises(ConfigError, match=match):
            online_teacher(DistillConfig.model_validate({**base, **update}), "c.yaml")
    # At the command line: one line, exit 2, before Prefect starts.
    monkeypatch.setenv("PREFECT_HOME", str(tmp_path / "prefect"))  # the CLI sets it only if unset
    path = write_yaml(tmp_path / "plain.yaml", base)
    result = CliRunner().invoke(app, ["distill-online", "--config", str(path)])
    assert result.exit_code == 2 and "needs an 'online:' section" in result.output
    bad = write_yaml(tmp_path / "gen0.yaml", {**base, "self_distill": {"generations": 0}})
    result = CliRunner().invoke(app, ["distill", "--config", str(bad)])
    assert result.exit_code == 2 and "self_distill.generations" in result.output


def test_the_packaged_online_config_can_run_online():
    from kdflow.config import packaged_config

    cfg = load_config(packaged_config("mnist1d_online.yaml"), DistillConfig)
    online, name, alias = online_teacher(cfg)
    assert (name, alias) == ("mnist1d-online-teacher", "champion") and online.teacher.arch == "cnn1d"
    assert (
        cfg.registry.student_name
        != load_config(packaged_config("mnist1d_distill.yaml"), DistillConfig).registry.student_name
    )


def test_kdflow_distill_runs_the_born_again_flow_only_for_several_generations(tmp_path):
    from app.commands_methods import distill_flow_for
    from flows.distill import distill_flow
    from flows.self_distill import self_distill_flow

    base = {
        "data": {"train": "a", "val": "b", "test": "c", "num_classes": 10},
        "teacher_uri": "models:/t@champion",
        "student": {"arch": "mlp"},
        "registry": {"student_name": "s"},
    }
    assert distill_flow_for(write_yaml(tmp_path / "one.yaml", base)) is distill_flow
    many = write_yaml(tmp_path / "three.yaml", {**base, "self_distill": {"generations": 3}})
    assert distill_flow_for(many) is self_distill_flow
