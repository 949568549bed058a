"""Lifecycle: the library pieces (exact), then drift check -> retrain -> recalibration end to end through the
real flows (Prefect harness, MLflow on SQLite, logs on a local store) with simulated MNIST-1D traffic."""

from __future__ import annotations

from datetime import date, datetime, timezone
from pathlib import Path

import numpy as np
import pytest
from mlflow import MlflowClient
from scipy.special import softmax

from kdflow import registry
from kdflow.calibration import calibration_metrics, ece_improvement_confidence, fit_temperature
from kdflow.config import CalibrationConfig, ConfigError
from kdflow.lifecycle import (ids_from_request_ids, parse_as_of, recalibration_window, refit_temperature,
                              traffic_frames, window_bounds)
from tests.conftest import write_yaml


def test_parse_as_of_and_window():
    assert parse_as_of("2026-01-05") == datetime(2026, 1, 5, tzinfo=timezone.utc)
    assert parse_as_of("2026-01-05T03:00:00+02:00") == datetime(2026, 1, 5, 1, tzinfo=timezone.utc)
    start, end = window_bounds(parse_as_of("2026-03-01"), 30)
    assert (start, end) == (datetime(2026, 1, 30, tzinfo=timezone.utc), datetime(2026, 3, 1, tzinfo=timezone.utc))
    with pytest.raises(ConfigError, match="not an ISO 8601 date.*'yesterday'"):
        parse_as_of("yesterday")


def test_recalibration_window_starts_at_the_latest_bound():
    as_of = datetime(2026, 4, 1, 3, tzinfo=timezone.utc)
    month = datetime(2026, 3, 2, 3, tzinfo=timezone.utc)
    assert recalibration_window(as_of, 30) == (month, as_of)
    assert recalibration_window(as_of, 30, None, None) == (month, as_of)
    shift = datetime(2026, 3, 22, tzinfo=timezone.utc)
    reference = datetime(2026, 3, 25, tzinfo=timezone.utc)
    assert recalibration_window(as_of, 30, shift) == (shift, as_of)
    assert recalibration_window(as_of, 30, reference, shift) == (reference, as_of)
    assert recalibration_window(as_of, 30, datetime(2026, 1, 1, tzinfo=timezone.utc)) == (month, as_of)
    with pytest.raises(ValueError, match="empty"):
        recalibration_window(as_of, 30, as_of)


def test_traffic_frames_sample_inputs_and_keep_labeled_rows():
    rids = np.array([f"req-{i}" for i in range(100)])
    x = np.arange(400, dtype=np.float32).reshape(100, 4)
    labels = np.where(np.arange(100) % 4 == 0, np.arange(100) % 10, -1)
    inputs, labeled = traffic_frames(rids, x, labels, max_rows=30)
    assert len(inputs) == 30 and "label" not in inputs and inputs["id"].is_unique
    assert len(labeled) == 25 and labeled["label"].tolist() == [i % 10 for i in range(0, 100, 4)]
    assert labeled["id"].tolist() == ids_from_request_ids(rids[::4]).tolist()  # stable across calls
    assert (ids_from_request_ids(rids) >= 0).all()


def _tempered_world(n: int, true_t: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Logits z and labels drawn from softmax(z / true_t): calibrated at ``true_t`` by construction."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0, 3, (n, 10))
    p = np.exp(z / true_t) / np.exp(z / true_t).sum(1, keepdims=True)
    return z, np.array([rng.choice(10, p=row) for row in p])


def test_refit_temperature_repairs_an_overconfident_temperature():
    """Logits whose true temperature is 2: served at T=0.5 they are overconfident; the refit finds ~2 and the
    out-of-fold ECE drops; served at the right T there is nothing to gain."""
    n = 4000
    z, y = _tempered_world(n, 2.0)
    bad = refit_temperature(z, y, 0.5, CalibrationConfig())
    assert bad.new_temperature == pytest.approx(2.0, rel=0.1)
    assert bad.improved and bad.ece_after < bad.ece_before / 3 and bad.fit_rows == bad.eval_rows == n
    assert bad.ece_before == pytest.approx(calibration_metrics(z, y, 0.5).ece)  # every row, at the current T
    # Cross-fitting, exactly: each half scored at the temperature fitted on the other half.
    halves = np.array_split(np.random.default_rng(0).permutation(n), [n // 2])
    t_a, t_b = (fit_temperature(z[h], y[h]) for h in halves)
    assert bad.fold_temperatures == pytest.approx((t_a, t_b))
    out_of_fold = np.empty_like(z)
    out_of_fold[halves[1]], out_of_fold[halves[0]] = z[halves[1]] / t_a, z[halves[0]] / t_b
    assert bad.ece_after == pytest.approx(calibration_metrics(out_of_fold, y, 1.0).ece)
    assert bad.new_temperature == pytest.approx(fit_temperature(z, y))  # served: fitted on every row
    good = refit_temperature(z, y, 2.0, CalibrationConfig(), min_improvement=0.01)
    assert not good.improved and "does not improve" in good.reason
    assert bad.improvement_confidence == 1.0 and bad.nll_after < bad.nll_before
    assert bad.improvement_confidence == ece_improvement_confidence(
        softmax(z / 0.5, axis=1), softmax(out_of_fold, axis=1), y, 15, seed=0)


def test_a_refit_within_the_noise_of_a_small_window_changes_nothing():
    """Served 5% off the true temperature, on 400 rows: ECE happens to improve, but within the window's noise."""
    z, y = _tempered_world(400, 2.0, seed=3)
    near = refit_temperature(z, y, 2.1, CalibrationConfig(), min_confidence=0.95)
    assert near.ece_after < near.ece_before and 0.2 < near.improvement_confidence < 0.95
    assert not near.improved and "within the window's noise" in near.reason
    assert refit_temperature(z, y, 2.1, CalibrationConfig(), min_confidence=0.0).improved  # without the gate


# --------------------------------------------------------------------------------------------- end to end
START = date(2026, 1, 1)


def _traffic(cfg: dict, name: str, start: date, days: int, schedule, seed: int, rows_per_day: int = 300) -> dict:
    from kdflow.simulate import simulate_traffic

    ref = registry.resolve(f"models:/{name}@champion")
    teacher = registry.load_torch_model(registry.resolve(cfg["teacher_uri"]))
    return simulate_traffic(registry.load_torch_model(ref), name, ref.version, cfg["logs"]["root"], start, days,
                            rows_per_day, schedule, shadow_fraction=0.2, label_fraction=0.4, teacher=teacher, seed=seed)


@pytest.fixture()
def lifecycle_config(distill_config, tmp_path) -> dict:
    cfg = distill_config
    cfg["logs"] = {"root": str(tmp_path / "logs")}
    # The tiny 4-epoch student (~50% accurate) already disagrees with the teacher on ~40% of rows and is
    # unconfident, so output-based signals are weak; its inputs' drift is what shows.
    cfg["drift"] = {"window_days": 1, "min_rows": 200, "min_labeled_rows": 30, "min_shadow_rows": 20,
                    "max_flip_rate": 0.6, "consecutive_windows": 2, "cooldown_days": 7,
                    "trigger_on": ["accuracy", "estimated_accuracy", "psi_confidence", "features"],
                    "monitoring_experiment": f"mon-{tmp_path.name}"}
    cfg["retrain"] = {"window_days": 3, "min_recent_labeled_rows": 50}
    cfg["recalibration"] = {"window_days": 30, "min_labeled_rows": 100}
    return cfg


@pytest.mark.slow
def test_drift_check_retrain_and_recalibration(lifecycle_config, tmp_path):
    from flows.distill import distill_flow
    from flows.drift import drift_check_flow
    from flows.recalibrate import recalibration_flow

    cfg = lifecycle_config
    name = cfg["registry"]["student_name"]
    path = str(write_yaml(tmp_path / "cfg.yaml", cfg))
    assert distill_flow(path)["registration"]["version"] == "1"
    tags = MlflowClient().get_model_version(name, "1").tags
    assert tags["kdflow.reference_profile"] == "reference/profile.json"

    _traffic(cfg, name, START, 3, "stable", seed=1)
    stable = drift_check_flow(path, "2026-01-03")
    assert stable["status"] == "ok" and stable["decision"]["action"] == "none", stable["decision"]["reason"]
    run = MlflowClient().get_run(stable["mlflow_run_id"])
    assert run.data.tags["kdflow.action"] == "none" and run.data.params["drift.psi_threshold"] == "0.2"
    assert {"signal_psi_confidence", "signal_features", "signal_flip_rate", "n_rows"} <= set(run.data.metrics)

    # A sudden shift: more noise and translation than the student was trained on.
    shifted = _traffic(cfg, name, date(2026, 1, 4), 3, [{"start_day": 0, "iid_noise_scale": 0.08,
                                                          "max_translation": 72}], seed=2)
    assert np.mean([d["accuracy"] for d in shifted["per_day"]]) < 0.8
    first = drift_check_flow(path, "2026-01-05")
    assert first["status"] == "drift" and first["decision"]["action"] == "none"  # 1 of 2 consecutive windows
    second = drift_check_flow(path, "2026-01-06")
    assert second["decision"]["action"] == "retrain" and second["retrain_via"] == "subflow"
    assert second["event_id"]
    retrained = second["retrain"]
    assert retrained["recent"]["recent_rows"] == 900 and retrained["recent"]["recent_labeled"]
    assert not list(Path(retrained["recent"]["recent"]).parent.glob("*.yaml"))  # no rewritten config
    report = retrained["report"]
    assert report["registration"]["version"] == "2" and report["promotion"]["version"] == "2"
    assert {"recent", "recent_labeled"} <= set(report["provenance"]["data_fingerprints"])
    assert "recent labeled traffic" in report["decision"]["reason"]
    # Its reference profile is the recent labeled traffic it was gated on: the three days before the retrain.
    v2 = MlflowClient().get_model_version(name, "2").tags
    assert v2["kdflow.reference"] == "production"
    assert (v2["kdflow.reference_window_start"], v2["kdflow.reference_window_end"]) == (
        "2026-01-03T00:00:00+00:00", "2026-01-06T00:00:00+00:00")

    # A further shift while the retrain cools down: two drifted checks of v2 recalibrate it instead, on the
    # labeled traffic since the streak began (2026-01-07; the labels of 01-08 arrive on 01-09).
    # 1,500 rows a day, so the refit is judged on 600 labeled rows: on 120 (300 a day) the bootstrap gate sat at
    # 92-96% against its 95% bar and flipped between machines. Each statistical decision here has a wide margin.
    _traffic(cfg, name, date(2026, 1, 7), 2, [{"start_day": 0, "iid_noise_scale": 0.15, "max_translation": 72,
                                               "shear_scale": 1.5}], seed=4, rows_per_day=1500)
    assert drift_check_flow(path, "2026-01-08")["decision"]["action"] == "none"  # v2's first drifted window
    cooling = drift_check_flow(path, "2026-01-09")
    decision = cooling["decision"]
    assert decision["action"] == "recalibrate" and decision["cooldown_until"], decision["reason"]
    assert decision["since"]["features"] == "2026-01-07T00:00:00+00:00"
    assert cooling["retrain"] is None and "event_id" not in cooling  # no retrain, no drift event
    recal = cooling["recalibration"]
    assert recal["trigger"] == "drift" and recal["parent_version"] == "2"
    assert recal["window"] == ["2026-01-07T00:00:00+00:00", "2026-01-09T00:00:00+00:00"]
    assert recal["labeled_rows"] == 600 and recal["result"] is not None, recal["reason"]  # 40% of 1,500 rows
    print("cool-down refit:", recal["reason"])
    assert recal["version"] == "3" and registry.alias_version(name, "champion") == "3", recal["reason"]
    v3 = MlflowClient().get_model_version(name, "3").tags
    assert v3["kdflow.recalibration_trigger"] == "drift" and v3["kdflow.parent_version"] == "2"
    assert v3["kdflow.reference_window_start"] == "2026-01-07T00:00:00+00:00"
    run = MlflowClient().get_run(cooling["mlflow_run_id"])
    assert run.data.tags["kdflow.action"] == "recalibrate"
    assert run.data.tags["kdflow.episode_start"] == "2026-01-07T00:00:00+00:00"

    # The shift ends (a known date: `kdflow recalibrate --since`): v3, refit on the shifted days, is now off.
    # With an SLA no temperature can meet, nothing is registered.
    _traffic(cfg, name, date(2026, 1, 10), 4, "stable", seed=5, rows_per_day=1000)
    before = registry.versions(name)
    strict = write_yaml(tmp_path / "strict.yaml", {**cfg, "sla": {**cfg["sla"], "min_accuracy": 0.9999}})
    outcome = recalibration_flow(str(strict), "2026-01-14", since="2026-01-10", trigger="manual")
    assert outcome["version"] is None and "min_accuracy" in outcome["reason"], outcome["reason"]
    assert registry.versions(name) == before
    champion_before = registry.alias_version(name, "champion")
    outcome = recalibration_flow(path, "2026-01-14", since="2026-01-10", trigger="manual")
    assert outcome["result"]["improved"], outcome["reason"]
    print("manual refit:", outcome["reason"])
    new = outcome["version"]
    assert new and registry.alias_version(name, "champion") == new
    new_tags = MlflowClient().get_model_version(name, new).tags
    assert new_tags["kdflow.parent_version"] == champion_before and new_tags["kdflow.trigger"] == "recalibration"
    assert float(new_tags["kdflow.calibrated_temperature"]) == pytest.approx(outcome["result"]["new_temperature"])
    served = registry.load_torch_model(registry.resolve(f"models:/{name}@champion"))
    assert float(served.temperature) == pytest.approx(outcome["result"]["new_temperature"])
    parent_tags = MlflowClient().get_model_version(name, champion_before).tags  # v3: itself a recalibration of v2
    assert new_tags["kdflow.report_run_id"] == parent_tags["kdflow.report_run_id"] == v2["kdflow.run_id"]
    # The new version's reference is the window it was refit on; a later recalibration starts no earlier.
    window_start = outcome["window"][0]
    assert (new_tags["kdflow.reference_window_start"], new_tags["kdflow.reference_window_end"]) == (
        "2026-01-10T00:00:00+00:00", "2026-01-14T00:00:00+00:00")
    assert new_tags["kdflow.recalibration_trigger"] == "manual"
    import json

    import mlflow.artifacts

    profile = json.loads(Path(mlflow.artifacts.download_artifacts(
        run_id=MlflowClient().get_model_version(name, new).run_id, artifact_path="reference/profile.json")).read_text())
    assert profile["n_rows"] == outcome["labeled_rows"]  # the labeled rows of the window, not the validation split
    # Recalibrating a recalibrated champion finds the distillation report through report_run_id.
    again = recalibration_flow(path, "2026-01-15")  # scheduled: 30 days back, but not before v4's reference
    assert again["result"] is not None and again["parent_version"] == new, again["reason"]
    assert again["window"] == [window_start, "2026-01-15T00:00:00+00:00"] and again["trigger"] == "schedule"


@pytest.mark.slow
def test_drift_check_without_a_champion_or_with_missing_logs(lifecycle_config, tmp_path):
    from flows.distill import distill_flow
    from flows.drift import drift_check_flow

    cfg = lifecycle_config
    path = str(write_yaml(tmp_path / "cfg.yaml", cfg))
    with pytest.raises(registry.RegistryError, match="champion"):
        drift_check_flow(path, "2026-01-02")
    distill_flow(path)
    _traffic(cfg, cfg["registry"]["student_name"], START, 1, "stable", seed=3)
    result = drift_check_flow(path, "2026-01-03")  # the window is 2026-01-02, which has no partition
    assert result["status"] == "cannot_decide" and result["decision"]["action"] == "cannot_decide"
    assert "missing log partition" in result["decision"]["reason"] and "2026-01-02" in result["decision"]["reason"]
    from flows.retrain import retrain_flow
    from kdflow.inference_logs import InferenceLogError

    with pytest.raises(InferenceLogError, match="no inference logs .* nothing to retrain on"):
        retrain_flow(path, "2025-06-01")  # no traffic in the 14 days before: one clear error, nothing trained
    # Only the label-lag day (2025-12-31) is missing: the check decides, with fewer labeled rows.
    first_day = drift_check_flow(path, "2026-01-02")
    assert first_day["status"] != "cannot_decide", first_day["decision"]["reason"]
    few_cfg = {**cfg, "drift": {**cfg["drift"], "min_rows": 1000, "label_lag_days": 0}}
    few = drift_check_flow(str(write_yaml(tmp_path / "few.yaml", few_cfg)), "2026-01-02")
    assert few["decision"]["action"] == "cannot_decide" and "fewer than min_rows=1000" in few["decision"]["reason"]
    # A part without the probabilities column: one error naming the file and the column; nothing recorded.
    import pyarrow.parquet as pq

    from kdflow.inference_logs import InferenceLogError

    part = next((tmp_path / "logs" / "date=2026-01-01").glob("part-*.parquet"))
    bad = part.with_name("part-bad.parquet")
    pq.write_table(pq.read_table(part).drop_columns(["probabilities"]), bad)
    runs_before = len(MlflowClient().search_runs(
        [MlflowClient().get_experiment_by_name(cfg["drift"]["monitoring_experiment"]).experiment_id]))
    with pytest.raises(InferenceLogError, match=r"part-bad\.parquet.*probabilities"):
        drift_check_flow(str(write_yaml(tmp_path / "few.yaml", few_cfg)), "2026-01-02")
    assert len(MlflowClient().search_runs(
        [MlflowClient().get_experiment_by_name(cfg["drift"]["monitoring_experiment"]).experiment_id])) == runs_before
