"""The distill and teacher flows end to end on tiny MNIST-1D, through Prefect, MLflow (SQLite) and the store."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from kdflow import registry
from kdflow.config import ConfigError
from kdflow.data import DataError
from kdflow.models import CalibratedClassifier, ModelSpecError
from kdflow.registry import RegistryError
from mlflow import MlflowClient
from tests.conftest import write_yaml

pytestmark = pytest.mark.slow


def run_distill(cfg: dict, tmp_path: Path, name: str = "distill.yaml") -> dict:
    from flows.distill import distill_flow

    return distill_flow(str(write_yaml(tmp_path / name, cfg)))


def versions(name: str) -> list[str]:
    return sorted(str(v.version) for v in MlflowClient().search_model_versions(f"name='{name}'"))


def test_teacher_flow_registers_champion(teacher):
    ref = registry.resolve(teacher["uri"])
    assert ref.version == teacher["version"] and teacher["uri"].endswith("@champion")
    assert teacher["test_accuracy"] > 0.5
    tags = MlflowClient().get_model_version(ref.name, ref.version).tags
    assert float(tags["kdflow.test_accuracy"]) == pytest.approx(teacher["test_accuracy"])


def test_distill_registers_calibrated_student_with_provenance(distill_config, tmp_path, teacher):
    report = run_distill(distill_config, tmp_path)
    name = distill_config["registry"]["student_name"]
    reg = report["registration"]
    assert report["gate_passed"] and reg["version"] == "1" and reg["aliases"] == ["challenger", "champion"]
    assert registry.alias_version(name, "champion") == "1" == registry.alias_version(name, "challenger")

    tags = MlflowClient().get_model_version(name, "1").tags
    assert tags["kdflow.teacher_uri"] == teacher["uri"] and tags["kdflow.teacher_version"] == teacher["version"]
    assert tags["kdflow.sla_passed"] == "True" and len(tags["kdflow.config_hash"]) == 64
    assert set(json.loads(tags["kdflow.data_fingerprints"])) == {"train", "val", "test", "transfer"}
    assert all("logits/" in uri for uri in json.loads(tags["kdflow.logit_store_keys"]).values())
    assert {c["name"] for c in json.loads(tags["kdflow.sla_checks"])} >= {"min_accuracy", "max_ece"}
    assert json.loads(tags["kdflow.alias.champion.event"])["previous"] is None

    ev = report["evaluation"]
    assert 0 <= ev["flip_rate"] <= 1 and ev["teacher_gap"] == pytest.approx(
        ev["teacher_accuracy"] - ev["student_accuracy"]
    )
    assert ev["size_ratio"] == pytest.approx(ev["student_params"] / ev["teacher_params"])
    assert len(ev["per_class_accuracy"]) == 10 and ev["student_latency_p95_ms"] > 0 and ev["teacher_throughput"] > 0
    assert Path(report["paths"]["json"]).is_file() and "SLA gate" in Path(report["paths"]["markdown"]).read_text()
    artifacts = {a.path for a in MlflowClient().list_artifacts(report["run_id"], "plots")}
    assert {"plots/reliability_diagram.png", "plots/student_training_curves.png"} <= artifacts
    page = Path(report["paths"]["html"]).read_text()  # the run's plots embedded in the readable report
    assert page.count('<img src="data:image/png;base64,') >= 2 and "Gate PASSED" in page
    history = MlflowClient().get_metric_history(report["run_id"], "student_soft_loss")
    assert len(history) == distill_config["train"]["epochs"]


def test_served_model_applies_calibrated_temperature_not_training_one(distill_config, tmp_path, tiny_data):
    import mlflow.pyfunc

    report = run_distill(distill_config, tmp_path)
    name = distill_config["registry"]["student_name"]
    t_cal = report["calibration"]["temperature"]
    assert t_cal != pytest.approx(distill_config["train"]["temperature"])
    model = registry.load_torch_model(registry.resolve(f"models:/{name}@champion"))
    assert isinstance(model, CalibratedClassifier) and float(model.temperature) == pytest.approx(t_cal)
    x = np.stack(pd.read_parquet(tiny_data["test"])["x"].to_numpy()).astype(np.float32)[:32]
    with torch.no_grad():
        expected = torch.softmax(model.logits(torch.from_numpy(x)) / t_cal, dim=1).numpy()
    served = np.asarray(mlflow.pyfunc.load_model(f"models:/{name}@champion").predict(x))
    assert np.allclose(served, expected, atol=1e-6) and np.allclose(served.sum(1), 1.0, atol=1e-5)


def test_second_run_reuses_stored_logits_without_the_teacher(distill_config, tmp_path):
    distill_config["store"]["root"] = str(tmp_path / "fresh-store")
    first = run_distill(distill_config, tmp_path, "a.yaml")
    assert first["teacher"]["loaded"] and sum(s["rows_computed"] for s in first["logits"].values()) == 2400
    shards = sorted((tmp_path / "fresh-store").rglob("*.npz"))
    mtimes = [p.stat().st_mtime_ns for p in shards]
    second = run_distill(distill_config, tmp_path, "b.yaml")
    assert not second["teacher"]["loaded"]
    assert all(s["reused"] and s["rows_computed"] == 0 for s in second["logits"].values())
    assert [p.stat().st_mtime_ns for p in shards] == mtimes
    assert second["provenance"]["logit_store_keys"] == first["provenance"]["logit_store_keys"]
    # Seeded end to end (initial weights included): the same config gives the same student.
    assert second["evaluation"]["student_accuracy"] == first["evaluation"]["student_accuracy"]
    assert second["calibration"]["temperature"] == pytest.approx(first["calibration"]["temperature"], rel=1e-9)


def test_failing_sla_leaves_champion_unchanged(distill_config, tmp_path):
    name = distill_config["registry"]["student_name"]
    assert run_distill(distill_config, tmp_path, "ok.yaml")["registration"]["aliases"][-1] == "champion"
    distill_config["sla"]["min_accuracy"] = 0.9999
    failed = run_distill(distill_config, tmp_path, "strict.yaml")
    assert not failed["gate_passed"] and failed["registration"]["version"] is None
    assert versions(name) == ["1"] and registry.alias_version(name, "champion") == "1"
    distill_config["registry"]["register_failed_candidates"] = True
    kept = run_distill(distill_config, tmp_path, "keep.yaml")
    assert kept["registration"] == {**kept["registration"], "version": "2", "aliases": ["challenger"]}
    assert registry.alias_version(name, "champion") == "1" and registry.alias_version(name, "challenger") == "2"
    assert MlflowClient().get_model_version(name, "2").tags["kdflow.sla_passed"] == "False"


def test_candidate_worse_than_champion_is_not_promoted(distill_config, tmp_path):
    name = distill_config["registry"]["student_name"]
    run_distill(distill_config, tmp_path, "first.yaml")
    distill_config["sla"]["champion_tolerance"] = 0.0
    distill_config["train"].update(epochs=1, max_steps=1)  # one step: certainly worse than the champion
    weak = run_distill(distill_config, tmp_path, "weak.yaml")
    assert weak["registration"]["version"] is None or weak["registration"]["aliases"] == ["challenger"]
    assert registry.alias_version(name, "champion") == "1"


@pytest.mark.parametrize(
    "case", ["unknown_key", "teacher_missing", "label_out_of_range", "width_mismatch", "cuda_without_cuda"]
)
def test_bad_input_stops_the_flow_with_one_clear_error_and_registers_nothing(case, distill_config, tmp_path, tiny_data):
    name = distill_config["registry"]["student_name"]
    if case == "unknown_key":
        distill_config["train"]["temprature"] = 3
        expected, match = ConfigError, r"train\.temprature: Extra inputs"
    elif case == "teacher_missing":
        distill_config["teacher_uri"] = "models:/no-such-teacher@champion"
        expected, match = RegistryError, "models:/no-such-teacher@champion does not resolve"
    elif case == "label_out_of_range":
        df = pd.read_parquet(tiny_data["train"])
        df.loc[3, "label"] = 10
        bad = tmp_path / "train_bad.parquet"
        df.to_parquet(bad)
        distill_config["data"]["train"] = str(bad)
        expected, match = DataError, r"train_bad.parquet: 1 label\(s\) outside \[0, 10\)"
    elif case == "cuda_without_cuda":
        if torch.cuda.is_available():
            pytest.skip("a CUDA device is present: device: cuda is valid here")
        distill_config["device"] = "cuda"
        expected, match = ConfigError, r"^device: 'cuda' was asked for but this machine has no usable CUDA"
    else:
        distill_config["student"] = {"arch": "tests.user_models:build_fixed_width", "args": {"width": 64}}
        expected, match = ModelSpecError, r"cannot take inputs of shape \[40\]"
    with pytest.raises(expected, match=match):
        run_distill(distill_config, tmp_path)
    assert versions(name) == []


@pytest.mark.parametrize("runner", ["threads", "dask"])
def test_precompute_shards_run_as_parallel_tasks(runner, distill_config, tmp_path, teacher):
    from flows.logits import precompute_flow
    from kdflow.config import StoreConfig
    from tasks.logits import task_runner_for

    distill_config["store"].update(root=str(tmp_path / "store"), rows_per_shard=256, task_runner=runner, workers=2)
    path = write_yaml(tmp_path / "pre.yaml", distill_config)
    flow = precompute_flow.with_options(task_runner=task_runner_for(StoreConfig(**distill_config["store"])))
    result = flow(str(path))
    assert result["teacher_loaded"]
    assert result["stats"]["transfer"]["shards_total"] == 5 and result["stats"]["transfer"]["rows_computed"] == 1200
    from kdflow.logits import LogitStore, verify
    from kdflow.store import open_store

    store = open_store(str(tmp_path / "store"))
    for uri in result["stores"].values():
        assert verify(LogitStore(store, uri.split("/store/", 1)[1])) == []
    again = flow(str(path))
    assert not again["teacher_loaded"] and all(s["reused"] for s in again["stats"].values())


def test_teacher_with_wrong_number_of_classes_is_named_before_training(distill_config, tmp_path):
    from kdflow.validation import DataValidationError

    distill_config["store"]["root"] = str(tmp_path / "store")
    distill_config["data"]["num_classes"] = 12  # the registered teacher has 10 outputs
    distill_config["validation"] = {"require_all_classes": []}  # let the data through to the teacher check
    with pytest.raises(DataValidationError, match=r"val teacher logits.*\(300, 12\)"):
        run_distill(distill_config, tmp_path)
    assert versions(distill_config["registry"]["student_name"]) == []


def test_two_teachers_weighted_by_validation_accuracy(distill_config, teacher_config, teacher, tmp_path):
    """A second (weaker, MLP) teacher: both stores are built, weights follow validation accuracy, and the
    evaluated teacher is the T=1 mixture of the two stored logit sets."""
    from flows.teacher import teacher_flow
    from kdflow.ensemble import combine_logits
    from kdflow.logits import LogitStore, store_key, teacher_profile_key
    from kdflow.metrics import accuracy
    from kdflow.store import open_store

    second_cfg = {
        **teacher_config,
        "registry_name": "teacher-mlp",
        "model": {"arch": "mlp", "args": {"width": 64, "depth": 1}},
        "train": {**teacher_config["train"], "epochs": 4},
    }
    second = teacher_flow(str(write_yaml(tmp_path / "teacher2.yaml", second_cfg)))
    distill_config.update(extra_teachers=[second["uri"]], teacher_weighting="val_accuracy")
    report = run_distill(distill_config, tmp_path)

    teachers = report["teachers"]
    assert [t["uri"] for t in teachers] == [distill_config["teacher_uri"], second["uri"]]
    accs = [t["val_accuracy"] for t in teachers]
    assert [t["weight"] for t in teachers] == pytest.approx([a / sum(accs) for a in accs])
    assert accs[0] != accs[1]
    tags = MlflowClient().get_model_version(distill_config["registry"]["student_name"], "1").tags
    assert [t["version"] for t in json.loads(tags["kdflow.teachers"])] == [t["version"] for t in teachers]

    test = pd.read_parquet(distill_config["data"]["test"])
    store = open_store(distill_config["store"]["root"])
    fingerprint = report["provenance"]["data_fingerprints"]["test"]
    per_teacher = [
        LogitStore(store, store_key(name, t["version"], fingerprint)).read_aligned(
            test["id"].to_numpy(), t["version"], fingerprint
        )
        for name, t in zip((teacher["name"], second["name"]), teachers)
    ]
    mixture = combine_logits(per_teacher, [t["weight"] for t in teachers], 1.0)
    assert report["evaluation"]["teacher_accuracy"] == pytest.approx(accuracy(mixture, test["label"].to_numpy()))
    profiles = [
        json.loads(store.get(teacher_profile_key(n, t["version"])))
        for n, t in zip((teacher["name"], second["name"]), teachers)
    ]
    assert report["evaluation"]["teacher_params"] == sum(int(p["params"]) for p in profiles)


def test_a_run_failing_after_registering_withdraws_its_version_unless_champion(distill_config, tmp_path, monkeypatch):
    """The flow's transaction rolls back register_student: a failed run leaves no registered challenger, and
    its MLflow run ends FAILED; a version already promoted to champion stays. Writing the report is made to
    fail by a patched write_report (a full disk cannot be caused portably after the preflight's probe)."""
    import tasks.registry

    name = distill_config["registry"]["student_name"]

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(tasks.registry, "write_report", disk_full)
    distill_config["registry"]["experiment"] = f"withdraw-{name}"  # this test's runs only
    distill_config["sla"]["min_accuracy"] = 0.9999  # fails the gate: registered (as asked) but never promoted
    distill_config["registry"]["register_failed_candidates"] = True
    with pytest.raises(OSError, match="No space left"):
        run_distill(distill_config, tmp_path, "failed.yaml")
    assert versions(name) == []
    runs = MlflowClient().search_runs([MlflowClient().get_experiment_by_name(f"withdraw-{name}").experiment_id])
    assert [r.info.status for r in runs] == ["FAILED"]
    distill_config["sla"]["min_accuracy"] = 0.5  # passes: promoted before the report fails, so it stays
    with pytest.raises(OSError, match="No space left"):
        run_distill(distill_config, tmp_path, "promoted.yaml")
    assert versions(name) == ["2"] and registry.alias_version(name, "champion") == "2"  # MLflow never reuses "1"
