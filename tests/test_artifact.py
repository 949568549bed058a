"""The registered student is a self-contained served artifact (pt2 + ONNX, no pickle): the distill flow evaluates
and registers exactly that artifact, with its cascade threshold; recalibration registers a new one; pickled
teachers still load. Real stack: Prefect, MLflow on SQLite, onnxruntime, a subprocess without kdflow."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import date, datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from kdflow import artifact, registry
from kdflow.calibration import fit_map
from kdflow.config import ModelSpec
from kdflow.lifecycle import RecalibrationOutcome, refit_cascade
from kdflow.models import CalibratedClassifier, build_for_training, build_model
from kdflow.monitor import Champion, recalibration_tags
from kdflow.report import cascade_section, to_markdown
from kdflow.selective import fit_cascade
from kdflow.train import predict_logits
from mlflow import MlflowClient
from tests.conftest import write_yaml

# Loads a registered student where kdflow cannot be imported: through MLflow's pyfunc (the pt2 program) and
# through onnxruntime on the version's ONNX copy. Writes both probability matrices next to the inputs.
NO_KDFLOW_SCRIPT = """
import sys
sys.modules["kdflow"] = None  # any import of kdflow now raises ImportError
try:
    import kdflow
except ImportError:
    pass
else:
    raise SystemExit("kdflow is importable")
import numpy as np
import mlflow, mlflow.artifacts, mlflow.pyfunc
import onnxruntime as ort

uri, work = sys.argv[1], sys.argv[2]
x = np.load(f"{work}/x.npy")
np.save(f"{work}/pyfunc.npy", np.asarray(mlflow.pyfunc.load_model(uri).predict(x)))
onnx = mlflow.artifacts.download_artifacts(artifact_uri=uri) + "/extra_files/model.onnx"
session = ort.InferenceSession(onnx, providers=["CPUExecutionProvider"])
np.save(f"{work}/onnx.npy", session.run(["probabilities"], {"x": x})[0])
assert "kdflow" not in {m.split(".")[0] for m, mod in sys.modules.items() if mod is not None}
"""


def _test_x(tiny_data, n: int = 64) -> np.ndarray:
    return np.stack(pd.read_parquet(tiny_data["test"])["x"].to_numpy()).astype(np.float32)[:n]


def _run_distill(cfg: dict, tmp_path: Path, name: str = "distill.yaml") -> dict:
    from flows.distill import distill_flow

    return distill_flow(str(write_yaml(tmp_path / name, cfg)))


@pytest.mark.slow
def test_distilled_student_serves_without_kdflow_and_was_evaluated_as_served(distill_config, tmp_path, tiny_data):
    distill_config["student"]["preprocess"] = "robust"  # the packaged MNIST-1D config pins none: serve the layer too
    report = _run_distill(distill_config, tmp_path)
    name, version = distill_config["registry"]["student_name"], report["registration"]["version"]
    assert version == "1" and "champion" in report["registration"]["aliases"]
    ref = registry.resolve(f"models:/{name}@champion")
    expected_model = registry.load_torch_model(ref)  # rebuilt from the artifact's spec and weights
    assert isinstance(expected_model, CalibratedClassifier)
    assert float(expected_model.temperature) == pytest.approx(report["calibration"]["temperature"])
    x = _test_x(tiny_data)
    with torch.no_grad():
        expected = expected_model(torch.from_numpy(x)).numpy()

    work = tmp_path / "no-kdflow"
    work.mkdir()
    np.save(work / "x.npy", x)
    tracking = distill_config["mlflow"]["tracking_uri"]
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking, "MLFLOW_REGISTRY_URI": tracking}
    done = subprocess.run(
        [sys.executable, "-c", NO_KDFLOW_SCRIPT, f"models:/{name}@champion", str(work)],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    for runtime in ("pyfunc", "onnx"):
        served = np.load(work / f"{runtime}.npy")
        assert served.shape == (len(x), 10)
        assert np.abs(served - expected).max() <= 1e-5, runtime

    directory = artifact.model_dir(ref.version_uri)
    requirements = (directory / "requirements.txt").read_text().split()
    assert sorted(r.split("==")[0] for r in requirements) == ["mlflow", "numpy", "onnxruntime", "torch"]
    assert all("==" in r and r.split("==")[1] for r in requirements)
    mlmodel = yaml.safe_load((directory / "MLmodel").read_text())
    assert (directory / "data" / "model.pt2").is_file() and not list(directory.rglob("*.pth"))
    assert mlmodel["flavors"]["pytorch"]["model_data"] == "data"
    files = [p for p in directory.rglob("*") if p.is_file()]
    assert all(p.read_bytes()[:1] != b"\x80" for p in files)  # no pickle stream (protocol 2+ starts with 0x80)
    assert not any(p.suffix in (".pkl", ".pickle") for p in files)
    spec = json.loads((directory / "extra_files" / "kdflow_model.json").read_text())
    assert spec["arch"] == distill_config["student"]["arch"] and spec["input_shape"] == [40]
    assert spec["preprocess"] == "robust" and spec["calibration_map"] == report["calibration"]["map"]
    assert expected_model.map_kind == report["calibration"]["map"] == report["evaluation"]["calibration_map"]

    # The gate's evaluation was computed from this very artifact, in the configured serving runtime.
    run = MlflowClient().get_run(report["run_id"])
    assert run.data.tags["kdflow.evaluated_model_uri"] == report["registration"]["model_uri"]
    assert run.data.tags["kdflow.evaluated_runtime"] == "onnx" == report["evaluation"]["runtime"]
    assert 0 <= run.data.metrics["test_artifact_max_abs_diff"] <= 1e-5
    assert report["evaluation"]["artifact_max_abs_diff"] == run.data.metrics["test_artifact_max_abs_diff"]
    assert MlflowClient().get_model_version(name, version).source == report["registration"]["model_uri"]
    test = pd.read_parquet(tiny_data["test"])
    onnx_probs = artifact.load_served(ref.version_uri, "onnx").predict(
        np.stack(test["x"].to_numpy()).astype(np.float32)
    )
    accuracy = float((onnx_probs.argmax(1) == test["label"].to_numpy()).mean())
    assert report["evaluation"]["student_accuracy"] == pytest.approx(accuracy)

    # The cascade threshold: on the version, in the run's metrics and plots, and in the report.
    tags = MlflowClient().get_model_version(name, version).tags
    cascade = report["cascade"]
    assert float(tags["kdflow.cascade_threshold"]) == pytest.approx(cascade["threshold"])
    assert float(tags["kdflow.cascade_coverage"]) == pytest.approx(cascade["coverage"])
    assert tags["kdflow.cascade_target_met"] == str(cascade["target_met"])
    assert run.data.metrics["cascade_threshold"] == pytest.approx(cascade["threshold"])
    assert cascade["rows"] == 300 and len(cascade["teacher_share_table"]) == 6
    assert cascade["teacher_share_table"][0]["system_accuracy"] == pytest.approx(cascade["student_accuracy"])
    artifacts = {a.path for a in MlflowClient().list_artifacts(report["run_id"], "plots")}
    assert "plots/risk_coverage.png" in artifacts
    markdown = Path(report["paths"]["markdown"]).read_text()
    assert "## Confidence fallback" in markdown and f"{cascade['threshold']:.4f}" in markdown


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["temperature", "vector", "isotonic"])
def test_preprocessing_and_each_calibration_map_serve_without_kdflow(kind, tmp_path):
    """A model with fitted standardisation on raw-scale inputs, served with each map: the pt2 program and the
    ONNX copy loaded where kdflow cannot be imported, and kdflow's rebuild from spec and weights, all give the
    in-memory module's probabilities within 1e-5."""
    import mlflow

    rng = np.random.default_rng(0)
    x = (rng.normal(size=(300, 6)) * [1.0, 10.0, 100.0, 1000.0, 0.01, 5.0] + [0, 5, 50, 500, 1, -3]).astype(np.float32)
    y = rng.integers(0, 3, 300)
    spec = ModelSpec(arch="mlp", args={"width": 16, "depth": 1})
    torch.manual_seed(0)
    model = build_for_training(spec, x, 3)
    z = predict_logits(model, x)
    cal_map = None if kind == "temperature" else fit_map(kind, z / 0.8, y)
    served = CalibratedClassifier(model, 0.8, cal_map).eval()
    with torch.no_grad():
        expected = served(torch.from_numpy(x)).numpy()
    tracking = f"sqlite:///{tmp_path}/mlflow.db"
    previous = mlflow.get_tracking_uri(), mlflow.get_registry_uri()  # other tests' stores: put back after
    mlflow.set_tracking_uri(tracking)
    mlflow.set_registry_uri(tracking)
    try:
        experiment = mlflow.create_experiment(f"maps-{kind}", artifact_location=str(tmp_path / "artifacts"))
        with mlflow.start_run(experiment_id=experiment):
            served_spec = artifact.ServedSpec.of(spec, (6,), 3, 0.8, kind)
            _, version = artifact.log_served_model(served, served_spec, x[:5], registered_name=f"maps-{kind}")
        uri = f"models:/maps-{kind}/{version}"
        directory = artifact.model_dir(uri)
    finally:
        mlflow.set_tracking_uri(previous[0])
        mlflow.set_registry_uri(previous[1])
    assert artifact.read_spec(directory) == served_spec and served_spec.preprocess == "robust"
    rebuilt = artifact.load_calibrated(directory)
    assert rebuilt.map_kind == kind
    with torch.no_grad():
        assert np.abs(rebuilt(torch.from_numpy(x)).numpy() - expected).max() <= 1e-6
    np.save(tmp_path / "x.npy", x)
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking, "MLFLOW_REGISTRY_URI": tracking}
    done = subprocess.run([sys.executable, "-c", NO_KDFLOW_SCRIPT, uri, str(tmp_path)], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    for runtime in ("pyfunc", "onnx"):
        probs = np.load(tmp_path / f"{runtime}.npy")
        assert probs.shape == (300, 3) and np.abs(probs - expected).max() <= 1e-5, runtime


def test_the_spec_records_the_modules_own_preprocessing(tmp_path):
    """A champion built without preprocessing, recalibrated under a config whose default is robust: the
    written spec says none, so kdflow rebuilds exactly the served weights."""
    spec = ModelSpec(arch="mlp", args={"width": 4, "depth": 1})
    served = CalibratedClassifier(build_model("mlp", spec.args, (3,), 2, "none"), 1.2)
    artifact.write_extra_files(served, artifact.ServedSpec.of(spec, (3,), 2, 1.2), np.zeros((2, 3), np.float32),
                               tmp_path)  # fmt: skip
    written = json.loads((tmp_path / artifact.SPEC_FILE).read_text())
    assert (
        spec.preprocess == "robust" and written["preprocess"] == "none" and written["calibration_map"] == "temperature"
    )


@pytest.mark.slow
def test_cascade_disabled_records_nothing(distill_config, tmp_path):
    distill_config["serving"] = {"cascade": {"enabled": False}, "runtime": "torch"}
    report = _run_distill(distill_config, tmp_path)
    name = distill_config["registry"]["student_name"]
    tags = MlflowClient().get_model_version(name, report["registration"]["version"]).tags
    assert not [k for k in tags if k.startswith("kdflow.cascade_")] and "cascade" not in report
    run = MlflowClient().get_run(report["run_id"])
    assert not [k for k in run.data.metrics if k.startswith("cascade_")]
    assert run.data.tags["kdflow.evaluated_runtime"] == "torch"
    assert "Confidence fallback" not in Path(report["paths"]["markdown"]).read_text()


@pytest.mark.slow
def test_recalibrated_version_is_a_served_artifact_with_a_refitted_threshold(distill_config, tmp_path):
    from flows.recalibrate import recalibration_flow
    from kdflow.simulate import simulate_traffic

    cfg = distill_config
    cfg["logs"] = {"root": str(tmp_path / "logs")}
    cfg["drift"] = {**cfg.get("drift", {}), "min_shadow_rows": 50}
    cfg["recalibration"] = {"window_days": 30, "min_labeled_rows": 100}
    name = cfg["registry"]["student_name"]
    path = str(write_yaml(tmp_path / "cfg.yaml", cfg))
    assert _run_distill(cfg, tmp_path)["registration"]["version"] == "1"
    parent = registry.resolve(f"models:/{name}@champion")
    # Noisier, shifted inputs than the student was trained on: its calibrated temperature is off there.
    simulate_traffic(
        registry.load_torch_model(parent),
        name,
        parent.version,
        cfg["logs"]["root"],
        date(2026, 1, 7),
        2,
        1500,
        [{"start_day": 0, "iid_noise_scale": 0.15, "max_translation": 72, "shear_scale": 1.5}],
        shadow_fraction=0.2,
        label_fraction=0.4,
        teacher=registry.load_torch_model(registry.resolve(cfg["teacher_uri"])),
        seed=4,
    )
    outcome = recalibration_flow(path, "2026-01-09", trigger="manual")
    assert outcome["version"] == "2", outcome["reason"]
    new_t = outcome["result"]["new_temperature"]
    directory = artifact.model_dir(f"models:/{name}/2")
    assert artifact.is_served_artifact(directory) and artifact.read_spec(directory).temperature == pytest.approx(new_t)
    served = artifact.load_served(f"models:/{name}/2", "onnx")
    reloaded = registry.load_torch_model(registry.resolve(f"models:/{name}/2"))
    x = np.random.default_rng(0).normal(size=(16, 40)).astype(np.float32)
    with torch.no_grad():
        assert np.abs(served.predict(x) - reloaded(torch.from_numpy(x)).numpy()).max() <= 1e-5
    assert float(reloaded.temperature) == pytest.approx(new_t)
    tags = MlflowClient().get_model_version(name, "2").tags
    assert tags["kdflow.cascade_refit"] == "True", tags.get("kdflow.cascade_reason")
    assert float(tags["kdflow.cascade_threshold"]) == pytest.approx(outcome["cascade"]["threshold"])
    assert outcome["cascade"]["rows"] >= 50 and "refitted at T=" in tags["kdflow.cascade_reason"]
    run = MlflowClient().get_run(MlflowClient().get_model_version(name, "2").run_id)
    assert 0 <= run.data.metrics["artifact_max_abs_diff"] <= 1e-5
    assert run.data.metrics["cascade_threshold"] == pytest.approx(outcome["cascade"]["threshold"])


def test_refit_cascade_uses_only_shadow_scored_rows_and_needs_enough_of_them():
    rng = np.random.default_rng(1)
    n = 200
    logits = rng.normal(size=(n, 3)) * 2
    labels = rng.integers(0, 3, n)
    teacher = rng.normal(size=(n, 3))
    teacher[::2] = np.nan  # every other row was not shadow-scored
    fit, reason = refit_cascade(logits, labels, teacher, 1.5, _cascade_cfg(), min_rows=100)
    shadow = slice(1, None, 2)
    z = logits[shadow] / 1.5
    probs = np.exp(z - z.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    teacher_pred = teacher[shadow].argmax(1)
    target = float((teacher_pred == labels[shadow]).mean()) - 0.005
    expected = fit_cascade(probs, teacher_pred, labels[shadow], target)
    assert fit is not None and fit.threshold == pytest.approx(expected.threshold) and fit.rows == 100
    assert fit.target_accuracy == pytest.approx(target) and "on 100 labeled rows" in reason
    none, why = refit_cascade(logits, labels, teacher, 1.5, _cascade_cfg(), min_rows=101)
    assert none is None and "100 labeled rows with shadow teacher logits" in why and "min_shadow_rows=101" in why
    assert refit_cascade(logits, labels, None, 1.5, _cascade_cfg(), 1)[0] is None


def _cascade_cfg():
    from kdflow.config import CascadeConfig

    return CascadeConfig()


def test_recalibration_tags_carry_the_parents_threshold_over_when_not_refitted():
    from kdflow.lifecycle import Recalibration

    when = (datetime(2026, 3, 1, tzinfo=timezone.utc), datetime(2026, 3, 31, tzinfo=timezone.utc))
    parent_tags = {
        "kdflow.run_id": "r1",
        "kdflow.cascade_threshold": "0.71",
        "kdflow.cascade_coverage": "0.9",
        "kdflow.cascade_refit": "True",
        "kdflow.cascade_reason": "old",
    }
    champion = Champion(registry.ModelRef("models:/s@champion", "s", "4", "r1"), None, None, parent_tags)
    result = Recalibration(0.5, 0.8, 0.1, 0.05, 1.0, 0.9, 0.6, True, "better")
    outcome = RecalibrationOutcome("4", "drift", *when, rows=10, labeled_rows=10, result=result)
    assert not [k for k in recalibration_tags(champion, outcome) if k.startswith("cascade_")]  # cascade disabled
    outcome.cascade_reason = "threshold not refitted: 3 labeled rows with shadow teacher logits"
    tags = recalibration_tags(champion, outcome)
    assert tags["cascade_threshold"] == "0.71" and tags["cascade_coverage"] == "0.9"
    assert tags["cascade_refit"] is False and tags["cascade_reason"].endswith("carried over from version 4")
    fit = fit_cascade(np.array([[0.9, 0.1], [0.6, 0.4]]), np.array([0, 1]), np.array([0, 1]), 1.0)
    outcome.cascade, outcome.cascade_reason = fit, "threshold refitted at T=0.8000 on 2 labeled rows"
    tags = recalibration_tags(champion, outcome)
    assert tags["cascade_threshold"] == fit.threshold == 0.9 and tags["cascade_refit"] is True
    assert outcome.as_dict()["cascade"]["threshold"] == 0.9 and outcome.metrics()["cascade_threshold"] == 0.9


def test_cascade_report_section_reads_system_accuracy_off_the_curve():
    # 10 rows by decreasing confidence; the student is wrong on the 2 least confident, the teacher always right.
    conf = np.linspace(0.95, 0.5, 10)
    probs = np.stack([conf, 1 - conf], axis=1)
    labels = np.array([0] * 8 + [1] * 2)
    fit = fit_cascade(probs, labels, labels, target_accuracy=1.0)
    section = cascade_section(fit)
    table = {row["teacher_share"]: row["system_accuracy"] for row in section["teacher_share_table"]}
    assert table[0.0] == pytest.approx(0.8) and table[0.2] == pytest.approx(1.0) and table[0.1] == pytest.approx(0.9)
    assert section["coverage"] == pytest.approx(0.8) and section["target_met"]
    markdown = "\n".join(_cascade_lines(section))
    assert "| 20% | 0.8000 | 1.0000 |" in markdown and "AURC" in markdown


def _cascade_lines(section: dict) -> list[str]:
    report = {
        "student_name": "s",
        "teacher": {"uri": "models:/t@champion", "version": "1"},
        "evaluation": {
            **dict.fromkeys(("student_accuracy", "teacher_accuracy", "student_ece", "teacher_ece"), 0.9),
            **dict.fromkeys(("flip_rate", "teacher_gap", "size_ratio"), 0.1),
            **dict.fromkeys(("student_latency_p50_ms", "teacher_latency_p50_ms"), 1.0),
            **dict.fromkeys(("student_latency_p95_ms", "teacher_latency_p95_ms"), 2.0),
            **dict.fromkeys(("student_throughput", "teacher_throughput"), 1e4),
            "student_params": 10,
            "teacher_params": 100,
        },
        "calibration": {
            "temperature": 1.2,
            **{k: dict.fromkeys(("ece", "mce", "nll", "brier"), 0.1) for k in ("before", "after")},
        },
        "sla_checks": [],
        "gate_passed": True,
        "decision": {"reason": "ok"},
        "registration": {"version": "1", "aliases": ["challenger"]},
        "cascade": section,
    }
    return to_markdown(report).splitlines()


@pytest.mark.slow
def test_a_user_registered_pickled_teacher_still_loads(teacher, tiny_data):
    ref = registry.resolve(teacher["uri"])
    directory = artifact.model_dir(ref.version_uri)
    assert not artifact.is_served_artifact(directory)
    model = registry.load_torch_model(ref)
    assert not isinstance(model, CalibratedClassifier) and not model.training
    with torch.no_grad():
        logits = model(torch.from_numpy(_test_x(tiny_data, 8))).numpy()
    assert logits.shape == (8, 10) and np.isfinite(logits).all()
