"""Lifecycle: the library pieces (exact), then drift check -> retrain -> recalibration end to end through the
real flows (Prefect harness, MLflow on SQLite, logs on a local store) with simulated MNIST-1D traffic."""

from __future__ import annotations

import dataclasses
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.special import softmax

from kdflow import registry
from kdflow.calibration import calibration_metrics, ece_improvement_confidence, fit_temperature
from kdflow.config import CalibrationConfig, ConfigError, DriftConfig, RecalibrationConfig, SLAConfig
from kdflow.data import Dataset
from kdflow.drift import Decision, DriftCheck, Signal, decide
from kdflow.lifecycle import (
    Recalibration,
    RecalibrationOutcome,
    ids_from_request_ids,
    judge_refit,
    parse_as_of,
    recalibration_window,
    refit_temperature,
    split_selection,
    traffic_frames,
    window_bounds,
)
from kdflow.models import CalibratedClassifier
from kdflow.monitor import Champion, DriftHistory, LabeledWindow, recalibrate, record_recalibration
from kdflow.train import predict_logits
from mlflow import MlflowClient
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


def test_split_selection_is_disjoint_stable_and_sized_by_the_fraction():
    _, labeled = traffic_frames(np.array([f"req-{i}" for i in range(2000)]), np.zeros((2000, 2)), np.zeros(2000), 10)
    select, gate = split_selection(labeled, 0.5)
    assert len(select) + len(gate) == 2000 and not set(select["id"]) & set(gate["id"])
    assert 900 < len(select) < 1100  # Binomial(2000, 0.5): 4.5 standard deviations either side
    # A row lands on the same side in a later window that shares it, and a larger fraction only adds rows.
    later_select, _ = split_selection(labeled.iloc[500:], 0.5)
    assert set(later_select["id"]) == set(select["id"]) & set(labeled["id"].iloc[500:])
    assert set(select["id"]) < set(split_selection(labeled, 0.8)[0]["id"])
    none, everything = split_selection(labeled, 0.0)
    assert len(none) == 0 and everything["id"].tolist() == labeled["id"].tolist()


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
    assert bad.improved and bad.ece_after < bad.ece_before / 3
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
        softmax(z / 0.5, axis=1), softmax(out_of_fold, axis=1), y, 15, seed=0
    )


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
    return simulate_traffic(
        registry.load_torch_model(ref),
        name,
        ref.version,
        cfg["logs"]["root"],
        start,
        days,
        rows_per_day,
        schedule,
        shadow_fraction=0.2,
        label_fraction=0.4,
        teacher=teacher,
        seed=seed,
    )


@pytest.fixture()
def lifecycle_config(distill_config, tmp_path) -> dict:
    cfg = distill_config
    cfg["logs"] = {"root": str(tmp_path / "logs")}
    # The tiny 4-epoch student (~50% accurate) already disagrees with the teacher on ~40% of rows and is
    # unconfident, so output-based signals are weak; its inputs' drift is what shows.
    cfg["drift"] = {
        "window_days": 1,
        "min_rows": 200,
        "min_labeled_rows": 30,
        "min_shadow_rows": 20,
        "max_flip_rate": 0.6,
        "consecutive_windows": 2,
        "cooldown_days": 7,
        "trigger_on": ["accuracy", "estimated_accuracy", "psi_confidence", "features"],
        "monitoring_experiment": f"mon-{tmp_path.name}",
    }
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
    shifted = _traffic(
        cfg, name, date(2026, 1, 4), 3, [{"start_day": 0, "iid_noise_scale": 0.08, "max_translation": 72}], seed=2
    )
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
    assert {"recent", "recent_labeled", "recent_val"} <= set(report["provenance"]["data_fingerprints"])
    # The candidate picked its best epoch and temperature on half the recent labeled rows (the traffic it will
    # serve) and was gated on the other half: disjoint, together all of them.
    select, gate = (pd.read_parquet(retrained["recent"][k]) for k in ("recent_val", "recent_labeled"))
    assert len(select) + len(gate) == retrained["recent"]["labeled_rows"] and min(len(select), len(gate)) > 100
    assert not set(select["id"]) & set(gate["id"])
    run = MlflowClient().get_run(report["run_id"])
    assert run.data.tags["kdflow.selection_split"] == "recent_val"
    assert run.data.metrics["selection_rows"] == len(select)
    assert "recent labeled traffic" in report["decision"]["reason"]
    # Its reference profile is the recent labeled traffic it was gated on: the three days before the retrain.
    v2 = MlflowClient().get_model_version(name, "2").tags
    assert v2["kdflow.reference"] == "production"
    assert (v2["kdflow.reference_window_start"], v2["kdflow.reference_window_end"]) == (
        "2026-01-03T00:00:00+00:00",
        "2026-01-06T00:00:00+00:00",
    )

    # A further shift while the retrain cools down: two drifted checks of v2 recalibrate it instead, on the
    # labeled traffic since the streak began (2026-01-07; the labels of 01-08 arrive on 01-09).
    # 1,500 rows a day, so the refit is judged on 600 labeled rows: on 120 (300 a day) the bootstrap gate sat at
    # 92-96% against its 95% bar and flipped between machines. Each statistical decision here has a wide margin.
    _traffic(
        cfg,
        name,
        date(2026, 1, 7),
        2,
        [{"start_day": 0, "iid_noise_scale": 0.15, "max_translation": 72, "shear_scale": 1.5}],
        seed=4,
        rows_per_day=1500,
    )
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
        "2026-01-10T00:00:00+00:00",
        "2026-01-14T00:00:00+00:00",
    )
    assert new_tags["kdflow.recalibration_trigger"] == "manual"
    import json

    import mlflow.artifacts

    profile = json.loads(
        Path(
            mlflow.artifacts.download_artifacts(
                run_id=MlflowClient().get_model_version(name, new).run_id, artifact_path="reference/profile.json"
            )
        ).read_text()
    )
    assert profile["n_rows"] == outcome["labeled_rows"]  # the labeled rows of the window, not the validation split
    # Recalibrating a recalibrated champion finds the distillation report through report_run_id.
    again = recalibration_flow(path, "2026-01-15")  # scheduled: 30 days back, but not before v4's reference
    assert again["result"] is not None and again["parent_version"] == new, again["reason"]
    assert again["window"] == [window_start, "2026-01-15T00:00:00+00:00"] and again["trigger"] == "schedule"

    # A teacher refresh the drift check asks for while too few labels have arrived (min_labeled_rows 4,000) trains
    # nothing and recalibrates the student on the rows since the teacher degraded instead; asked by hand, it does not.
    from flows.teacher_refresh import teacher_refresh_flow

    champion = registry.alias_version(name, "champion")
    manual = teacher_refresh_flow(path, "2026-01-16", "manual", since="2026-01-10")
    assert manual["outcome"] == "skipped" and "recalibration" not in manual
    waiting = teacher_refresh_flow(path, "2026-01-16", "drift", since="2026-01-10", recalibrate_if_skipped=True)
    assert waiting["outcome"] == "skipped" and "< teacher_refresh.min_labeled_rows 4000" in waiting["outcome_reason"]
    recal = waiting["recalibration"]
    assert recal["trigger"] == "drift" and recal["parent_version"] == champion, recal["reason"]
    assert recal["window"][1] == "2026-01-16T00:00:00+00:00" and recal["labeled_rows"] > 0, recal["reason"]


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
    runs_before = len(
        MlflowClient().search_runs(
            [MlflowClient().get_experiment_by_name(cfg["drift"]["monitoring_experiment"]).experiment_id]
        )
    )
    with pytest.raises(InferenceLogError, match=r"part-bad\.parquet.*probabilities"):
        drift_check_flow(str(write_yaml(tmp_path / "few.yaml", few_cfg)), "2026-01-02")
    assert (
        len(
            MlflowClient().search_runs(
                [MlflowClient().get_experiment_by_name(cfg["drift"]["monitoring_experiment"]).experiment_id]
            )
        )
        == runs_before
    )


# ------------------------------------------------------------------------------- recalibration rule (exact)
def _refit(improved: bool, ece_after: float = 0.02) -> Recalibration:
    return Recalibration(
        current_temperature=1.5,
        new_temperature=2.0,
        ece_before=0.08,
        ece_after=ece_after,
        nll_before=0.9,
        nll_after=0.8,
        accuracy=0.9,
        improved=improved,
        reason="ECE 0.08 -> x",
        fold_temperatures=(1.9, 2.1),
        improvement_confidence=0.99,
    )


EVALUATION = {
    "student_accuracy": 0.9,
    "teacher_gap": 0.01,
    "student_ece": 0.2,
    "flip_rate": 0.05,
    "student_latency_p95_ms": 1.0,
    "size_ratio": 0.1,
}
WHEN = (datetime(2026, 3, 1, tzinfo=timezone.utc), datetime(2026, 3, 31, tzinfo=timezone.utc))


def test_judge_refit_registers_only_an_improvement_that_keeps_every_sla():
    outcome = RecalibrationOutcome("4", "drift", *WHEN, rows=1000, labeled_rows=400)
    sla = SLAConfig(max_ece=0.05)
    passed = judge_refit(outcome, _refit(True), EVALUATION, sla)
    assert passed.register and passed.reason == "recalibrated: ECE 0.08 -> x; every SLA passes"
    # The parent's evaluation with the refit's out-of-fold ECE: 0.02 <= 0.05 passes, whatever the parent had.
    assert [(c.name, c.value, c.passed) for c in passed.sla_checks] == [
        ("min_accuracy", 0.9, True),
        ("max_teacher_gap", 0.01, True),
        ("max_ece", 0.02, True),
        ("max_flip_rate", 0.05, True),
        ("max_latency_p95_ms", 1.0, True),
        ("max_size_ratio", 0.1, True),
    ]
    assert outcome.result is None and not outcome.register  # the input is left as it was
    same = judge_refit(outcome, _refit(False), EVALUATION, sla)
    assert not same.register and same.reason == "nothing changed: ECE 0.08 -> x"
    failing = judge_refit(outcome, _refit(True, ece_after=0.06), {**EVALUATION, "student_accuracy": 0.5}, sla)
    assert not failing.register
    assert failing.reason == "nothing changed: the recalibrated model would fail SLA(s) min_accuracy, max_ece"


def test_a_strict_calibration_gain_replaces_a_champion_that_already_misses_the_ece_sla(caplog):
    """ECE 0.0669 -> 0.0317 with max_ece 0.03 was refused, leaving the worse-calibrated champion serving: it is now
    registered, with an alert that the SLA is still missed."""
    outcome = RecalibrationOutcome("4", "manual", *WHEN, rows=1000, labeled_rows=400)
    refit = dataclasses.replace(_refit(True, ece_after=0.0317), ece_before=0.0669)
    with caplog.at_level("WARNING", logger="kdflow.lifecycle"):
        judged = judge_refit(outcome, refit, EVALUATION, SLAConfig(max_ece=0.03))
    alert = (
        "SLA alert: promoted as strictly better than a champion that already misses the same SLA(s), still missed: "
        "max_ece 0.0317 (champion 0.0669; needs <= 0.03)"
    )
    assert judged.register and judged.sla_alert == alert and judged.reason == f"recalibrated: ECE 0.08 -> x; {alert}"
    assert [r.getMessage() for r in caplog.records] == [alert] and judged.as_dict()["sla_alert"] == alert
    assert [c.name for c in judged.sla_checks if not c.passed] == ["max_ece"]
    # A champion that meets the SLA is not replaced by a refit that misses it, however the ECE moved.
    meets = dataclasses.replace(refit, ece_before=0.025, ece_after=0.0317)
    assert not judge_refit(outcome, meets, EVALUATION, SLAConfig(max_ece=0.03)).register
    # Other SLAs the champion misses (accuracy) are unchanged by a temperature: not strictly better, refused.
    missed = judge_refit(outcome, refit, EVALUATION, SLAConfig(max_ece=0.03, min_accuracy=0.95))
    assert not missed.register and missed.sla_alert is None
    assert missed.reason == "nothing changed: the recalibrated model would fail SLA(s) min_accuracy, max_ece"


def test_default_policies_let_a_drift_triggered_recalibration_act():
    """With the defaults — daily checks, two in a row, labels a day late — the recalibration a drift check asks
    for reads the episode since its first drifted window: two days, of which only the first has its labels, so
    about 200 labeled rows at 200 labels a day. recalibration.min_labeled_rows must be within reach."""
    drift, recal = DriftConfig(), RecalibrationConfig()
    signals = {"psi_confidence": Signal("psi_confidence", 0.5, 0.2, True, "PSI")}
    drifted = DriftCheck("drift", "drift", 1000, 200, 100, signals)
    now = datetime(2026, 3, 3, tzinfo=timezone.utc)
    first = decide(None, drifted, drift, None, now - timedelta(days=drift.window_days))
    second = decide(first, drifted, drift, now - timedelta(days=3), now)  # in the retrain cool-down
    assert second.action == "recalibrate" and second.episode_start == now - timedelta(days=2)
    start, end = recalibration_window(now, recal.window_days, None, second.episode_start)
    labeled_days = (end - start).days - drift.label_lag_days  # the last label_lag_days have no labels yet
    assert labeled_days == drift.consecutive_windows - drift.label_lag_days == 1
    assert labeled_days * 200 >= recal.min_labeled_rows == 150


def test_recalibration_outcome_as_dict_metrics_and_markdown():
    outcome = RecalibrationOutcome("4", "manual", *WHEN, rows=1000, labeled_rows=400, reason="cannot decide: few")
    assert outcome.as_dict() == {
        "parent_version": "4",
        "trigger": "manual",
        "window": ["2026-03-01T00:00:00+00:00", "2026-03-31T00:00:00+00:00"],
        "rows": 1000,
        "labeled_rows": 400,
        "version": None,
        "result": None,
        "reason": "cannot decide: few",
    }
    assert outcome.metrics() == {"labeled_rows": 400.0, "registered": 0.0}
    judged = judge_refit(outcome, _refit(True), EVALUATION, SLAConfig(max_ece=0.05))
    judged.version, judged.promotion = "5", {"version": "5"}
    d = judged.as_dict()
    assert d["version"] == "5" and d["promotion"] == {"version": "5"} and len(d["sla_checks"]) == 6
    assert d["result"]["new_temperature"] == 2.0 and d["result"]["fold_temperatures"] == (1.9, 2.1)
    assert judged.metrics() == {
        "labeled_rows": 400.0,
        "registered": 1.0,
        "current_temperature": 1.5,
        "new_temperature": 2.0,
        "ece_before": 0.08,
        "ece_after": 0.02,
        "nll_before": 0.9,
        "nll_after": 0.8,
        "accuracy": 0.9,
        "improved": 1.0,
        "improvement_confidence": 0.99,
    }
    assert judged.markdown("s", WHEN[1]) == (
        f"# Recalibration of s v4 at 2026-03-31T00:00:00+00:00\n\n{judged.reason}\n\nNew version: 5"
    )


def test_recalibrate_with_too_few_labeled_rows_cannot_decide():
    """Nothing is refit (the champion's module is never called) and no report is read."""
    champion = Champion(registry.ModelRef("models:/s@champion", "s", "4", "run-4"), model=None, profile=None)
    labeled = Dataset("recalibration_window", "logs", np.arange(3), np.zeros((3, 4), np.float32), np.array([0, 1, 2]))
    outcome = recalibrate(
        champion,
        LabeledWindow(*WHEN, labeled, rows=10),
        "schedule",
        RecalibrationConfig(),
        CalibrationConfig(),
        SLAConfig(),
    )
    assert (outcome.parent_version, outcome.rows, outcome.labeled_rows, outcome.result, outcome.register) == (
        "4",
        10,
        3,
        None,
        False,
    )
    assert outcome.reason == (
        "cannot decide: 3 labeled rows in the window, fewer than recalibration.min_labeled_rows=150"
    )


def test_champion_tags_say_where_its_reference_and_report_are():
    ref = registry.ModelRef("models:/s@champion", "s", "4", "run-4")
    distilled = Champion(ref, None, None, {"kdflow.run_id": "run-4"})
    assert distilled.reference_window_start is None and distilled.report_run_id == "run-4"
    recalibrated = Champion(
        ref,
        None,
        None,
        {
            "kdflow.run_id": "run-4",
            "kdflow.report_run_id": "run-1",
            "kdflow.reference_window_start": "2026-01-07T00:00:00+00:00",
        },
    )
    assert recalibrated.reference_window_start == datetime(2026, 1, 7, tzinfo=timezone.utc)
    assert recalibrated.report_run_id == "run-1"
    assert Champion(ref, None, None, {}).report_run_id == "run-4"  # untagged: the run that logged the model


@pytest.mark.slow
def test_recalibrate_refits_judges_and_tags_against_the_parent_report(tmp_path):
    """The refit on the champion's raw logits, the SLA with the parent's report (read from MLflow), and the
    registration material: same weights at the new temperature, the parent's provenance plus the window."""
    import torch

    registry.configure_tracking(f"sqlite:///{tmp_path}/mlflow.db")
    exp = registry.configure(f"sqlite:///{tmp_path}/mlflow.db", "recal", str(tmp_path / "art"))
    run_id, _ = registry.open_run(exp, None, "distill", {})
    MlflowClient().log_dict(run_id, {"evaluation": EVALUATION}, "report/report.json")
    torch.manual_seed(0)
    inner = torch.nn.Linear(4, 3)
    tags = {
        "kdflow.run_id": run_id,
        "kdflow.teacher_uri": "models:/t@champion",
        "kdflow.sla_passed": "True",
        "kdflow.alias.champion.event": "{}",
        "kdflow.reference_profile": "reference/profile.json",
        "other": "x",
    }
    champion = Champion(
        registry.ModelRef("models:/s@champion", "s", "2", run_id), CalibratedClassifier(inner, 0.25), None, tags
    )
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 4)).astype(np.float32)
    z = predict_logits(inner, x).astype(np.float64)
    y = np.array([rng.choice(3, p=p) for p in softmax(z, axis=1)])  # calibrated at T=1; served at 0.25: overconfident
    window = LabeledWindow(*WHEN, Dataset("recalibration_window", "logs", np.arange(400), x, y), rows=1000)
    cfg = RecalibrationConfig(min_labeled_rows=100, min_improvement_confidence=0.5)
    outcome = recalibrate(champion, window, "drift", cfg, CalibrationConfig(), SLAConfig(max_ece=0.2))
    expected = refit_temperature(z, y, 0.25, CalibrationConfig(), 0.0, 0.5)
    assert outcome.result == expected and expected.improved, expected.reason
    assert outcome.register and outcome.reason == f"recalibrated: {expected.reason}; every SLA passes"
    assert outcome.served.model is inner and float(outcome.served.temperature) == pytest.approx(
        expected.new_temperature
    )
    assert outcome.tags == {
        "teacher_uri": "models:/t@champion",
        "parent_version": "2",
        "trigger": "recalibration",
        "report_run_id": run_id,
        "recalibration_trigger": "drift",
        "recalibration_window": "[2026-03-01T00:00:00+00:00, 2026-03-31T00:00:00+00:00)",
        "reference": "production",
        "reference_window_start": "2026-03-01T00:00:00+00:00",
        "reference_window_end": "2026-03-31T00:00:00+00:00",
        "calibrated_temperature": expected.new_temperature,
        "previous_temperature": 0.25,
    }
    record_recalibration(run_id, outcome)
    metrics = MlflowClient().get_run(run_id).data.metrics
    assert metrics["registered"] == 0.0 and metrics["new_temperature"] == pytest.approx(expected.new_temperature)
    missing = Champion(champion.ref, champion.model, None, {"kdflow.run_id": "no-such-run"})
    with pytest.raises(registry.RegistryError, match="models:/s/2: its distillation report is missing"):
        recalibrate(missing, window, "drift", cfg, CalibrationConfig(), SLAConfig())


# ------------------------------------------------------------------------------- drift check of a champion
def _two_versions_logs(root: Path, days: list[date]) -> None:
    """100 rows a day at 00:00-09:54 UTC: even rows served by version 3, odd by version 4; every 4th labeled."""
    from kdflow.inference_logs import InferenceLogWriter

    rng = np.random.default_rng(0)
    for version in ("3", "4"):
        with InferenceLogWriter(str(root), "s", version) as writer:
            for day in days:
                t0 = datetime(day.year, day.month, day.day, tzinfo=timezone.utc)
                rows = np.arange({"3": 0, "4": 1}[version], 100, 2)
                x = rng.normal(size=(len(rows), 8)).astype(np.float32)
                writer.log(
                    x,
                    softmax(rng.normal(size=(len(rows), 3)), axis=1),
                    [t0 + timedelta(minutes=6 * int(r)) for r in rows],
                    request_ids=[f"{day}-{r}" for r in rows],
                    labels=np.where(rows % 4 == 0, rows % 3, -1),
                )


def test_check_version_uses_the_versions_rows_and_cannot_decide_on_a_missing_day(tmp_path):
    from kdflow.drift import check_window
    from kdflow.inference_logs import read_window
    from kdflow.monitor import check_version, drift_window, version_rows
    from kdflow.profile import build_profile

    _two_versions_logs(tmp_path, [date(2026, 1, 1), date(2026, 1, 2), date(2026, 1, 4)])
    cfg = DriftConfig(window_days=1, label_lag_days=1, min_rows=10, min_labeled_rows=5)
    start, end = drift_window(datetime(2026, 1, 3, tzinfo=timezone.utc), cfg)
    assert (start, end) == (datetime(2026, 1, 1, tzinfo=timezone.utc), datetime(2026, 1, 3, tzinfo=timezone.utc))
    window = read_window(str(tmp_path), start, end, require_all_partitions=False)
    v3 = version_rows(window, "3")
    assert len(v3.probs) == 100 and int((v3.labels >= 0).sum()) == 50  # rows 0, 4, 8, ... of either day
    recent = version_rows(window, "3", since=datetime(2026, 1, 2, tzinfo=timezone.utc))
    np.testing.assert_array_equal(recent.x, v3.x[50:])
    profile = build_profile(v3.probs, v3.x, v3.labels)
    check = check_version(profile, "3", window, cfg)
    assert check == check_window(profile, recent, cfg, labeled_window=v3) and check.n_rows == 50
    assert check.n_labeled == 50  # labels of the label-lag day count too
    # 2026-01-03 has no partition: the check of the window [01-02, 01-04) cannot decide, and says why.
    gap = read_window(
        str(tmp_path), *drift_window(datetime(2026, 1, 4, tzinfo=timezone.utc), cfg), require_all_partitions=False
    )
    missing = check_version(profile, "3", gap, cfg)
    assert (missing.status, missing.n_rows, missing.signals) == ("cannot_decide", 100, {})
    assert missing.reason == f"cannot decide: 1 missing log partition(s) in {gap.root}: 2026-01-03"
    # Only the label-lag day (01-03) missing: the check of [01-04, 01-05) decides.
    lag = read_window(
        str(tmp_path), *drift_window(datetime(2026, 1, 5, tzinfo=timezone.utc), cfg), require_all_partitions=False
    )
    assert lag.missing_dates == [date(2026, 1, 3)] and check_version(profile, "3", lag, cfg).status != "cannot_decide"


def _signal_check(status: str, psi: float | None, exceeded: bool | None) -> DriftCheck:
    return DriftCheck(
        status,
        f"{status} check",
        500,
        100,
        50,
        {
            "psi_confidence": Signal("psi_confidence", psi, 0.2, exceeded, "PSI of confidence"),
            "flip_rate": Signal("flip_rate", None, 0.1, None, "too few shadow rows"),
        },
        metrics={"accuracy": 0.9},
    )


def _teacher_check(exceeded: bool) -> DriftCheck:
    signal = Signal("teacher_accuracy", 0.08 if exceeded else 0.0, 0.05, exceeded, "teacher 0.08 below its reference")
    return DriftCheck("drift" if exceeded else "ok", "teacher", 500, 100, 50, {"teacher_accuracy": signal})


REF = registry.ModelRef("models:/s@champion", "s", "3", "run-3")
DAY1 = datetime(2026, 3, 1, 2, tzinfo=timezone.utc)


def test_drift_event_result_and_markdown_of_a_check(tmp_path):
    from kdflow.drift_events import drift_event
    from kdflow.events import DRIFT_EVENT
    from kdflow.monitor import DriftCheckResult, drift_markdown, drift_metrics

    check = _signal_check("drift", 0.4, True)
    decision = Decision(
        "retrain",
        "retrain: psi",
        ["psi_confidence"],
        {"psi_confidence": 2, "flip_rate": 0},
        since={"psi_confidence": "2026-02-28T02:00:00+00:00"},
    )
    event = drift_event("cfg.yaml", REF, DAY1, check, decision)
    assert event.event == DRIFT_EVENT == "kdflow.drift.detected"
    assert event.resource == {"prefect.resource.id": "kdflow.model.s", "kdflow.model": "s", "kdflow.version": "3"}
    assert event.payload == {
        "config_path": str(Path("cfg.yaml").resolve()),
        "as_of": "2026-03-01T02:00:00+00:00",
        "model": "s",
        "version": "3",
        "statistics": {"psi_confidence": 0.4},
        "triggered": ["psi_confidence"],
        "reason": "retrain: psi",
    }
    assert drift_metrics(DAY1, check, decision) == {
        "as_of_ts": DAY1.timestamp(),
        "n_rows": 500,
        "n_labeled": 100,
        "n_shadow": 50,
        "retrain": 1.0,
        "refresh_teacher": 0.0,
        "signal_psi_confidence": 0.4,
        "exceeded_psi_confidence": 1.0,
        "window_accuracy": 0.9,
    }
    result = DriftCheckResult(REF, DAY1, check, decision, "run-1", event_id="e-1", retrain_via="event")
    assert result.as_dict() == {
        "model": "s",
        "version": "3",
        "as_of": "2026-03-01T02:00:00+00:00",
        "status": "drift",
        "decision": decision.to_dict(),
        "mlflow_run_id": "run-1",
        "signals": {"psi_confidence": 0.4, "flip_rate": None},
        "retrain": None,
        "recalibration": None,
        "event_id": "e-1",
        "retrain_via": "event",
    }
    none = Decision("none", "no retrain", [], {"psi_confidence": 0, "flip_rate": 0})
    assert set(DriftCheckResult(REF, DAY1, check, none, "run-1").as_dict()) == {
        "model",
        "version",
        "as_of",
        "status",
        "decision",
        "mlflow_run_id",
        "signals",
        "retrain",
        "recalibration",
    }
    assert drift_markdown(REF, DAY1, check, decision).splitlines() == [
        "# Drift check: s v3 at 2026-03-01T02:00:00+00:00",
        "",
        "**Decision: retrain** — retrain: psi",
        "",
        "500 rows, 100 labeled, 50 shadow-scored.",
        "",
        "| signal | value | threshold | exceeded | detail |",
        "|---|---|---|---|---|",
        "| psi_confidence | 0.4 | 0.2 | True | PSI of confidence |",
        "| flip_rate | n/a | 0.1 | None | too few shadow rows |",
    ]


@pytest.mark.slow
def test_drift_history_reads_back_what_record_drift_check_stored(tmp_path):
    """Each check is one run; the history of a version is its last check before as_of, the cool-down counts
    from the last retrain of any version; a repeated record with the same key adds no run."""
    from kdflow.monitor import drift_history, record_drift_check

    exp = registry.configure(f"sqlite:///{tmp_path}/mlflow.db", "monitoring", str(tmp_path / "art"))
    cfg = DriftConfig()
    assert drift_history(exp, "s", "3", DAY1) == DriftHistory(None, None)
    first = Decision("none", "1 of 2", [], {"psi_confidence": 1}, since={"psi_confidence": "2026-02-28T02:00:00+00:00"})
    second = Decision(
        "retrain",
        "retrain: psi",
        ["psi_confidence"],
        {"psi_confidence": 2},
        since={"psi_confidence": "2026-02-28T02:00:00+00:00"},
    )
    day2, day3 = DAY1 + timedelta(days=1), DAY1 + timedelta(days=2)
    run1 = record_drift_check(exp, "k1", REF, DAY1, _signal_check("drift", 0.4, True), first, cfg)
    assert record_drift_check(exp, "k1", REF, DAY1, _signal_check("drift", 0.4, True), first, cfg) == run1
    run2 = record_drift_check(exp, "k2", REF, day2, _signal_check("drift", 0.5, True), second, cfg)
    v4 = registry.ModelRef("models:/s@champion", "s", "4", "run-4")
    record_drift_check(exp, "k3", v4, day3, _signal_check("ok", 0.1, False), Decision("none", "ok", [], {}), cfg)
    assert drift_history(exp, "s", "3", day2) == DriftHistory(first, None)  # strictly before as_of
    assert drift_history(exp, "s", "3", day3) == DriftHistory(second, day2)
    assert drift_history(exp, "s", "4", day3) == DriftHistory(None, day2)  # v4's first check; v3's retrain counts
    assert drift_history(exp, "other", "3", day3) == DriftHistory(None, None)
    # The teacher's streak runs across student versions: v5, registered after v4's check, carries it on.
    day4, day5 = day3 + timedelta(days=1), day3 + timedelta(days=2)
    teacher_since = {"teacher_accuracy": "2026-03-02T02:00:00+00:00"}
    ill = Decision("none", "teacher 1 of 2", [], {"psi_confidence": 0, "teacher_accuracy": 1}, since=teacher_since)
    record_drift_check(exp, "k4", v4, day4, _signal_check("drift", 0.1, False), ill, cfg)
    v5_history = drift_history(exp, "s", "5", day5)
    assert v5_history.previous.consecutive == {"teacher_accuracy": 1} and v5_history.previous.since == teacher_since
    assert drift_history(exp, "s", "3", day5).previous == dataclasses.replace(
        second, consecutive={"psi_confidence": 2, "teacher_accuracy": 1}, since={**second.since, **teacher_since}
    )  # v3's own streaks, the teacher's from v4's check
    decision = decide(v5_history.previous, _teacher_check(True), cfg, None, day5)
    assert (
        decision.action == "refresh_teacher" and decision.since["teacher_accuracy"] == teacher_since["teacher_accuracy"]
    )
    record_drift_check(exp, "k5", v4, day5, _signal_check("ok", 0.1, False), Decision("none", "ok", [], {}), cfg)
    assert drift_history(exp, "s", "3", day5 + timedelta(hours=1)).previous == second  # the teacher's streak ended
    # The last teacher refresh that trained (promoted or refused; not skipped for too few labels) is read back from
    # the teacher-refresh runs, for its own cool-down; the teacher's other runs and other teachers do not count.
    refreshes = registry.configure(f"sqlite:///{tmp_path}/mlflow.db", "kdflow-teacher", str(tmp_path / "art"))
    for hours, outcome, teacher in ((1, "refused", "t"), (2, "skipped", "t"), (3, "promoted", "other")):
        at = (day3 + timedelta(hours=hours)).isoformat()
        tags = {"kdflow.flow": "teacher-refresh", "kdflow.teacher": teacher, "kdflow.as_of": at}
        MlflowClient().create_run(refreshes, tags={**tags, "kdflow.refresh_outcome": outcome})
    MlflowClient().create_run(refreshes, tags={"kdflow.flow": "teacher", "kdflow.as_of": day3.isoformat()})
    later = day3 + timedelta(hours=4)
    assert drift_history(exp, "s", "4", later, ("kdflow-teacher", "t")).last_refresh_at == day3 + timedelta(hours=1)
    assert drift_history(exp, "s", "4", day3, ("kdflow-teacher", "t")).last_refresh_at is None  # before as_of only
    assert drift_history(exp, "s", "4", later, ("no-such-experiment", "t")).last_refresh_at is None
    run = MlflowClient().get_run(run1)
    assert run.info.status == "FINISHED" and run.data.params["drift.psi_threshold"] == "0.2"
    assert "kdflow.episode_start" not in run.data.tags  # nothing triggered yet
    tags = MlflowClient().get_run(run2).data.tags
    assert (tags["kdflow.action"], tags["kdflow.triggered"], tags["kdflow.episode_start"]) == (
        "retrain",
        "psi_confidence",
        "2026-02-28T02:00:00+00:00",
    )
    assert {a.path for a in MlflowClient().list_artifacts(run1)} == {"check.json", "decision.json"}
    assert run.data.metrics == pytest.approx(
        {
            "as_of_ts": DAY1.timestamp(),
            "n_rows": 500,
            "n_labeled": 100,
            "n_shadow": 50,
            "retrain": 0.0,
            "refresh_teacher": 0.0,
            "signal_psi_confidence": 0.4,
            "exceeded_psi_confidence": 1.0,
            "window_accuracy": 0.9,
        }
    )
    assert len(MlflowClient().search_runs([exp])) == 5  # the five checks: the repeated record added none
