"""Teacher health and the choice among refresh_teacher, retrain and recalibrate: the decision on constructed checks
(exact), the teacher signal scored on constructed logs by a teacher registered in MLflow (SQLite under tmp_path),
and the drift-check flow deciding, announcing and cooling down a teacher refresh."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pytest
from scipy.special import softmax

from kdflow.config import DriftConfig
from kdflow.drift import Decision, DriftCheck, Signal, decide
from kdflow.drift_events import drift_event
from kdflow.events import DRIFT_EVENT, TEACHER_DEGRADED_EVENT
from kdflow.inference_logs import InferenceLogWriter, read_window
from kdflow.teacher_health import (
    SIGNAL,
    TeacherReference,
    check_teacher,
    reference_accuracy,
    teacher_check,
    teacher_signal,
    with_teacher,
)

CFG = DriftConfig()
NOW = datetime(2026, 3, 1, 2, tzinfo=timezone.utc)
DAY = timedelta(days=1)
C, D = 10, 40  # the packaged MNIST-1D config's classes and features (the log suite checks them)
MEANS = 3.0 * np.eye(C, D)


# ------------------------------------------------------------------------------- the decision (constructed checks)
def signal(name: str, exceeded: bool | None, value: float = 0.1) -> Signal:
    return Signal(name, None if exceeded is None else value, 0.02, exceeded, f"{name} detail")


def check(**exceeded: bool | None) -> DriftCheck:
    """A check whose signals are exceeded (True), within their threshold (False) or not computed (None)."""
    signals = {name: signal(name, e) for name, e in exceeded.items()}
    status = "drift" if any(exceeded.values()) else "ok"
    return DriftCheck(status, "constructed", 500, 500, 50, signals)


def twice(current: DriftCheck, cfg: DriftConfig = CFG, retrain_at=None, refresh_at=None) -> Decision:
    """The decision after two consecutive checks like ``current`` (the second at NOW)."""
    first = decide(None, current, cfg, retrain_at, NOW - DAY, refresh_at)
    return decide(first.to_dict(), current, cfg, retrain_at, NOW, refresh_at)


STABLE = check(accuracy=False, flip_rate=False, psi_confidence=False, estimated_accuracy=False, teacher_accuracy=False)
TEACHER_DEGRADED = check(
    accuracy=True, flip_rate=False, psi_confidence=True, estimated_accuracy=True, teacher_accuracy=True
)
STUDENT_DRIFTED = check(
    accuracy=True, flip_rate=True, psi_confidence=True, estimated_accuracy=False, teacher_accuracy=False
)
CALIBRATION_ONLY = check(
    accuracy=False, flip_rate=False, psi_confidence=True, estimated_accuracy=True, teacher_accuracy=False
)


def test_refresh_retrain_recalibrate_or_nothing():
    assert twice(STABLE).action == "none" and twice(STABLE).triggered == []
    refresh = twice(TEACHER_DEGRADED)
    assert refresh.action == "refresh_teacher" and "teacher_accuracy" in refresh.triggered
    assert (
        refresh.reason.startswith("refresh_teacher: ") and "teacher_accuracy: teacher_accuracy detail" in refresh.reason
    )
    retrain = twice(STUDENT_DRIFTED)  # the teacher is still good: distil again
    assert retrain.action == "retrain" and retrain.triggered == ["accuracy", "flip_rate", "psi_confidence"]
    calibration = twice(CALIBRATION_ONLY)  # labels say the accuracy held: only the probabilities are off
    assert calibration.action == "recalibrate" and calibration.cooldown_until is None
    assert calibration.triggered == ["estimated_accuracy", "psi_confidence"]
    assert calibration.reason.startswith("recalibrate: only the probabilities are off (labeled accuracy detail)")
    assert calibration.episode_start == NOW - 2 * DAY
    # Without labels the accuracy is not known to have held: the same output shift retrains.
    unlabeled = check(accuracy=None, psi_confidence=True, estimated_accuracy=True, teacher_accuracy=None)
    assert twice(unlabeled).action == "retrain"
    # The teacher signal triggers only when listed, like any other.
    only_student = DriftConfig(trigger_on=["accuracy", "flip_rate"])
    assert twice(TEACHER_DEGRADED, only_student).action == "retrain"


def test_teacher_refresh_needs_consecutive_checks_and_cools_down():
    degraded = check(accuracy=False, teacher_accuracy=True)
    first = decide(None, degraded, CFG, None, NOW - DAY)
    assert first.action == "none" and first.consecutive[SIGNAL] == 1
    assert f"{SIGNAL} ({SIGNAL} detail; 1 of 2 consecutive checks)" in first.reason
    # Hysteresis: a window within the threshold breaks the streak; one exceeded window then is 1 of 2 again.
    broken = decide(
        decide(first, check(accuracy=False, teacher_accuracy=False), CFG, None, NOW), degraded, CFG, None, NOW + DAY
    )
    assert broken.action == "none" and broken.consecutive[SIGNAL] == 1
    # A teacher not scored (too few labels) breaks it too, and says why.
    unscored = decide(first, check(accuracy=None, teacher_accuracy=None), CFG, None, NOW)
    assert unscored.action == "none" and unscored.consecutive[SIGNAL] == 0

    assert decide(first, degraded, CFG, None, NOW).action == "refresh_teacher"
    # The streak began at NOW - 2 days (the first check's window). A refresh that trained after that began answered
    # this streak: the cool-down holds the next one.
    refreshed = NOW - timedelta(hours=36)
    until = refreshed + timedelta(days=CFG.teacher_cooldown_days)
    held = decide(first, degraded, CFG, None, NOW, refreshed)
    assert held.action == "recalibrate" and held.cooldown_until == until.isoformat()
    assert held.reason.startswith(
        f"recalibrate: refresh_teacher suppressed: cool-down after the teacher refresh at {refreshed.isoformat()} "
        f"lasts until {until.isoformat()} (14 days); would trigger on {SIGNAL}"
    )
    quiet = decide(first, degraded, DriftConfig(recalibrate_during_cooldown=False), None, NOW, refreshed)
    assert (
        quiet.action == "none" and quiet.reason.startswith("refresh_teacher suppressed") and quiet.triggered == [SIGNAL]
    )
    # A streak that began after the last refresh is evidence against the refreshed teacher (a new shift): it acts
    # inside the cool-down; and any streak acts once the cool-down is over.
    assert decide(first, degraded, CFG, None, NOW, NOW - timedelta(days=5)).action == "refresh_teacher"
    assert decide(first, degraded, CFG, None, NOW, NOW - 2 * DAY).action == "refresh_teacher"
    assert decide(first, degraded, CFG, None, NOW + 14 * DAY, refreshed).action == "refresh_teacher"
    # A refresh retrains the student from the new teacher: it starts the retrain cool-down too.
    student = decide(None, STUDENT_DRIFTED, CFG, None, NOW - DAY)
    after_refresh = decide(student, STUDENT_DRIFTED, CFG, None, NOW, NOW - timedelta(days=3))
    assert after_refresh.action == "recalibrate" and "retrain suppressed: cool-down after the teacher refresh" in (
        after_refresh.reason
    )
    assert decide(student, STUDENT_DRIFTED, CFG, NOW - timedelta(days=8), NOW, NOW - timedelta(days=20)).action == (
        "retrain"
    )


def test_the_teacher_signal_and_the_check_it_joins():
    cfg = DriftConfig(max_teacher_accuracy_drop=0.03, min_labeled_rows=50)
    ok = teacher_signal(0.93, 600, 0.95, "kdflow.test_accuracy", cfg, "2")
    assert ok.value == pytest.approx(0.02) and ok.exceeded is False
    assert ok.detail == (
        "teacher v2 accuracy 0.9300 on 600 labeled rows vs its reference 0.9500 (test_accuracy): drop 0.0200 <= 0.03"
    )
    bad = teacher_signal(0.714, 600, 0.95, "kdflow.test_accuracy", cfg)
    assert bad.value == pytest.approx(0.236) and bad.exceeded is True
    few = teacher_signal(None, 49, 0.95, "kdflow.test_accuracy", cfg)
    assert few.value is None and few.detail == "teacher not scored: 49 labeled rows, fewer than min_labeled_rows=50"
    assert reference_accuracy({"kdflow.test_accuracy": "0.95"}) == (0.95, "kdflow.test_accuracy")
    assert reference_accuracy({"kdflow.test_accuracy": "0.95", "kdflow.reference_accuracy": "0.9"})[0] == 0.9
    assert reference_accuracy({})[0] is None

    base = DriftCheck("ok", "no signal exceeded its threshold", 500, 600, 0, {"accuracy": signal("accuracy", False)})
    joined = with_teacher(base, bad, 0.714)
    assert joined.status == "drift" and joined.reason == f"drift: {SIGNAL}: {bad.detail}"
    assert joined.metrics == {SIGNAL: 0.714} and joined.exceeded() == [SIGNAL]
    noted = with_teacher(base, few, None)
    assert noted.status == "ok" and noted.reason.endswith(f"; not computed: {SIGNAL} ({few.detail})")
    cannot = DriftCheck("cannot_decide", "too few rows", 10, 0, 0, {})
    assert with_teacher(cannot, bad, 0.714) is cannot


def test_the_refresh_event_is_the_teacher_degraded_event():
    from kdflow import registry

    ref = registry.ModelRef("models:/s@champion", "s", "3", "run-3")
    degraded = check(teacher_accuracy=True)
    refresh = Decision("refresh_teacher", "refresh_teacher: teacher", [SIGNAL], {SIGNAL: 2})
    event = drift_event("cfg.yaml", ref, NOW, degraded, refresh)
    assert event.event == TEACHER_DEGRADED_EVENT == "kdflow.teacher.degraded"
    assert event.resource["prefect.resource.id"] == "kdflow.model.s"
    assert event.payload["config_path"] == str(Path("cfg.yaml").resolve())
    assert (event.payload["as_of"], event.payload["reason"], event.payload["triggered"]) == (
        NOW.isoformat(),
        "refresh_teacher: teacher",
        [SIGNAL],
    )
    assert event.payload["since"] == ""  # no streak start recorded: the refresh reads its whole window
    # With the streak's start: the refresh reads the rows from there, less the label lag its first check scored.
    dated = Decision("refresh_teacher", "r", [SIGNAL], {SIGNAL: 2}, since={SIGNAL: (NOW - 2 * DAY).isoformat()})
    assert drift_event("cfg.yaml", ref, NOW, degraded, dated, 1.0).payload["since"] == (NOW - 3 * DAY).isoformat()
    retrain = Decision("retrain", "retrain: x", ["accuracy"], {"accuracy": 2})
    assert "since" not in drift_event("cfg.yaml", ref, NOW, degraded, retrain).payload
    assert drift_event("cfg.yaml", ref, NOW, degraded, retrain).event == DRIFT_EVENT


# ------------------------------------------------------------------------------- on logs, with registered models
def world(n: int, seed: int, concept_shift: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """x (n, D), labels (n,) and the nearest-mean posterior (n, C). ``concept_shift``: the same inputs now mean
    the next class (y + 1 mod C), so a model of the old regime is wrong on nearly every row."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, C, size=n)
    x = (MEANS[y] + rng.standard_normal((n, D))).astype(np.float32)
    probs = softmax(-0.5 * ((x[:, None, :] - MEANS[None]) ** 2).sum(-1), axis=1)
    return x, (y + 1) % C if concept_shift else y, probs


def nearest_mean():
    """A linear model whose arg-max is the nearest class mean: ``x . m_c`` (the ``-|m_c|^2 / 2`` terms are equal)."""
    import torch

    model = torch.nn.Linear(D, C)
    with torch.no_grad():
        model.weight.copy_(torch.from_numpy(MEANS.astype(np.float32)))
        model.bias.zero_()
    return model


def register(tracking_uri: str, artifacts: str) -> float:
    """Register the teacher ``t`` (champion, tagged with its test accuracy on a fresh sample of the world) and the
    student ``s`` (champion v1, a calibrated nearest-mean model with its reference profile). Returns the
    teacher's test accuracy."""
    from kdflow import registry
    from kdflow.metrics import accuracy
    from kdflow.models import CalibratedClassifier
    from kdflow.profile import build_profile
    from kdflow.train import predict_logits
    from mlflow import MlflowClient

    exp = registry.configure(tracking_uri, "models", artifacts)
    x, y, p = world(1000, seed=99)
    teacher = nearest_mean()
    test_accuracy = accuracy(predict_logits(teacher, x), y)
    for name, model, tags in (
        ("t", teacher, {"test_accuracy": test_accuracy}),
        ("s", CalibratedClassifier(nearest_mean(), 1.0), {"reference_profile": "reference/profile.json"}),
    ):
        run_id, _ = registry.open_run(exp, None, name, {})
        MlflowClient().log_dict(run_id, build_profile(p, x, y, n_bins=10).to_dict(), "reference/profile.json")
        _, version, _ = registry.register_run_model(model, x[:2], name, run_id)
        registry.tag_version(name, version, tags)
        MlflowClient().set_registered_model_alias(name, "champion", version)
        MlflowClient().set_terminated(run_id, "FINISHED")
    return test_accuracy


def write_days(root: Path, first: datetime, days: int, concept_shift: bool, rows: int = 300) -> None:
    """``rows`` predictions of student v1 a day (every other one labeled at once), from ``first`` on."""
    writer = InferenceLogWriter(str(root), "s", "1")
    for d in range(days):
        x, y, p = world(rows, seed=int((first + d * DAY).timestamp()) % 10_000, concept_shift=concept_shift)
        start = first + d * DAY
        labels = np.where(np.arange(rows) % 2 == 0, y, -1)
        writer.log(x, p, [start + timedelta(minutes=4 * i) for i in range(rows)], labels=labels)
    writer.flush()


JAN1 = datetime(2026, 1, 1, tzinfo=timezone.utc)


def test_teacher_scored_on_every_labeled_row_of_the_window(tmp_path):
    """Two stable days, then two where the teacher is wrong: scored on the window's 300 labeled rows (both days:
    the label lag), whichever version served them."""
    from kdflow import registry
    from kdflow.metrics import accuracy

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    reference = register(uri, str(tmp_path / "art"))
    write_days(tmp_path / "logs", JAN1, 2, concept_shift=False)
    write_days(tmp_path / "logs", JAN1 + 2 * DAY, 2, concept_shift=True)
    cfg = DriftConfig(min_labeled_rows=100)
    stable = read_window(str(tmp_path / "logs"), JAN1, JAN1 + 2 * DAY)
    signal_ok, acc_ok = teacher_check(uri, "models:/t@champion", stable, cfg)
    known = stable.labels >= 0
    assert int(known.sum()) == 300
    expected = accuracy(
        nearest_mean()(__import__("torch").from_numpy(stable.x[known])).detach().numpy(), stable.labels[known]
    )
    assert acc_ok == pytest.approx(expected) and signal_ok.value == pytest.approx(reference - expected)
    assert signal_ok.exceeded is False and "teacher v1 accuracy" in signal_ok.detail
    shifted = read_window(str(tmp_path / "logs"), JAN1 + 2 * DAY, JAN1 + 4 * DAY)
    signal_bad, acc_bad = teacher_check(uri, "models:/t@champion", shifted, cfg)
    assert acc_bad < 0.05 and signal_bad.exceeded is True and signal_bad.value == pytest.approx(reference - acc_bad)
    # Too few labels: not scored, and why; an unknown teacher: not loaded, and why (the student's check goes on).
    few, none = teacher_check(uri, "models:/t@champion", shifted, DriftConfig(min_labeled_rows=301))
    assert few.value is None and none is None and "300 labeled rows, fewer than min_labeled_rows=301" in few.detail
    missing, _ = teacher_check(uri, "models:/nope@champion", shifted, cfg)
    assert missing.value is None and missing.detail.startswith("teacher models:/nope@champion not loaded")
    teacher = TeacherReference(registry.resolve("models:/t@champion"), nearest_mean(), None, "no tag")
    assert check_teacher(teacher, shifted, cfg) == (Signal(SIGNAL, None, 0.03, None, "no tag"), None)


def _flow_config(tmp_path) -> dict:
    import yaml

    from kdflow.config import packaged_config

    cfg = yaml.safe_load(packaged_config("mnist1d_distill.yaml").read_text())
    cfg["teacher_uri"] = "models:/t@champion"
    cfg["registry"]["student_name"] = "s"
    cfg["mlflow"] = {"tracking_uri": f"sqlite:///{tmp_path}/mlflow.db", "artifact_location": str(tmp_path / "art")}
    cfg["logs"] = {"root": str(tmp_path / "logs")}
    cfg["drift"] = {
        "min_rows": 200,
        "min_labeled_rows": 100,
        "trigger_on": ["accuracy", "teacher_accuracy"],  # the labeled signals: exact on these constructed days
        "monitoring_experiment": "monitoring",
    }
    cfg["output_dir"] = str(tmp_path / "reports")
    return cfg


@pytest.mark.slow
def test_drift_check_flow_decides_announces_and_cools_down_a_teacher_refresh(prefect_harness, tmp_path):
    from flows.drift import drift_check_flow
    from kdflow import registry
    from mlflow import MlflowClient
    from tests.conftest import write_yaml

    cfg = _flow_config(tmp_path)
    register(cfg["mlflow"]["tracking_uri"], cfg["mlflow"]["artifact_location"])
    write_days(tmp_path / "logs", JAN1, 2, concept_shift=False)
    write_days(tmp_path / "logs", JAN1 + 2 * DAY, 4, concept_shift=True)
    path = str(write_yaml(tmp_path / "cfg.yaml", cfg))

    stable = drift_check_flow(path, "2026-01-03", retrain_via="event")
    assert stable["decision"]["action"] == "none" and stable["signals"][SIGNAL] < 0.03, stable["decision"]["reason"]
    first = drift_check_flow(path, "2026-01-04", retrain_via="event")  # 1 of 2: no refresh yet
    assert first["decision"]["action"] == "none" and first["decision"]["consecutive"][SIGNAL] == 1
    assert f"{SIGNAL} (teacher v1 accuracy" in first["decision"]["reason"]
    second = drift_check_flow(path, "2026-01-05", retrain_via="event")
    decision = second["decision"]
    assert decision["action"] == "refresh_teacher" and SIGNAL in decision["triggered"], decision["reason"]
    assert second["retrain_via"] == "event" and second["event_id"] and "teacher_refresh" not in second
    assert second["retrain"] is None and second["recalibration"] is None
    run = MlflowClient().get_run(second["mlflow_run_id"])
    assert run.data.tags["kdflow.action"] == "refresh_teacher" and run.data.metrics["refresh_teacher"] == 1.0
    assert run.data.metrics[f"signal_{SIGNAL}"] == pytest.approx(second["signals"][SIGNAL])
    # The next day the teacher is still degraded. Nothing acted on the event (no refresh trained): no cool-down,
    # the check asks again (retrain_via none: nothing is carried out).
    again = drift_check_flow(path, "2026-01-06", retrain_via="none")["decision"]
    assert again["action"] == "refresh_teacher" and again["cooldown_until"] is None, again["reason"]
    # A refresh that trained (here refused by its gate) on 01-05 answered this streak (begun 01-03): the cool-down
    # holds the next one, and its reason says so. The refresh's run is what the teacher-refresh flow records.
    client = MlflowClient()
    exp = registry.configure(cfg["mlflow"]["tracking_uri"], "kdflow-teacher", cfg["mlflow"]["artifact_location"])
    run = client.create_run(exp, tags={"kdflow.flow": "teacher-refresh", "kdflow.teacher": "t",
                                       "kdflow.as_of": "2026-01-05T00:00:00+00:00",
                                       "kdflow.refresh_outcome": "refused"})  # fmt: skip
    client.set_terminated(run.info.run_id)
    held = drift_check_flow(path, "2026-01-07", retrain_via="none")["decision"]
    assert held["action"] == "recalibrate" and held["cooldown_until"] == "2026-01-19T00:00:00+00:00"
    assert (
        "refresh_teacher suppressed: cool-down after the teacher refresh at 2026-01-05T00:00:00+00:00"
        in (held["reason"])
    )


def _write_world_splits(root: Path) -> dict[str, str]:
    """The teacher's original data, drawn from the stable world: train/val/test labeled, transfer unlabeled."""
    from kdflow.data import to_frame, write_parquet

    paths = {}
    for i, (split, n) in enumerate((("train", 1200), ("val", 300), ("test", 300), ("transfer", 1200))):
        x, y, _ = world(n, seed=500 + i)
        ids = np.arange(i * 10_000, i * 10_000 + n, dtype=np.int64)  # kdflow's dataset ids are int64
        paths[split] = str(
            write_parquet(to_frame(ids, x, None if split == "transfer" else y), root / f"{split}.parquet")
        )
    return paths


@pytest.mark.slow
def test_drift_check_subflow_refreshes_the_teacher_then_retrains_the_student(prefect_harness, tmp_path):
    """retrain_via=subflow: two shifted checks in a row decide refresh_teacher, and the same drift check runs the
    teacher refresh flow: the teacher fine-tuned on the shifted labeled days (held-out slice better than the
    champion's) is promoted with ``kdflow.reference_accuracy`` = its held-out accuracy, a student is distilled
    from the new version, and the drift check's result carries the refresh's result."""
    import yaml

    from flows.drift import drift_check_flow
    from kdflow.config import packaged_config
    from mlflow import MlflowClient
    from tests.conftest import write_yaml

    cfg = _flow_config(tmp_path)
    cfg["data"].update(_write_world_splits(tmp_path / "data"))
    cfg["train"].update(epochs=3, early_stopping_patience=None, batch_size=128, schedule={"warmup_steps": 10})
    cfg["sla"] = {"min_accuracy": 0.0, "max_teacher_gap": 1.0, "max_ece": 1.0, "max_flip_rate": 1.0,
                  "max_latency_p95_ms": 1000.0, "max_size_ratio": None, "champion_tolerance": 1.0}  # fmt: skip
    cfg["evaluation"] = {"latency_batches": 5, "throughput_batches": 1}
    cfg["store"] = {"root": str(tmp_path / "store"), "rows_per_shard": 512}
    cfg["retrain"] = {"window_days": 2, "min_recent_labeled_rows": 100}
    # The shifted days only (2026-01-03 and -04: 300 labeled rows). A concept shift relabels the same inputs, so
    # the old regime's labels contradict the new ones: no replay, and the forgetting guard opened (replay and the
    # guard have their own tests in test_teacher_refresh.py).
    # The teacher's own config gives the optimisation settings: small batches, no warm-up (240 training rows).
    teacher_cfg = yaml.safe_load(packaged_config("mnist1d_teacher.yaml").read_text())
    teacher_cfg["data"].update({k: cfg["data"][k] for k in ("train", "val", "test")})
    teacher_cfg["train"].update(batch_size=32, schedule={"warmup_steps": 0})
    teacher_cfg.update(registry_name="t", mlflow=cfg["mlflow"])
    cfg["teacher_refresh"] = {"window_days": 2, "min_labeled_rows": 200, "finetune_epochs": 40, "finetune_lr": 0.1,
                              "replay_fraction": 0.0, "max_forgetting": 1.0,
                              "teacher_config": str(write_yaml(tmp_path / "teacher.yaml", teacher_cfg))}  # fmt: skip
    register(cfg["mlflow"]["tracking_uri"], cfg["mlflow"]["artifact_location"])
    write_days(tmp_path / "logs", JAN1, 2, concept_shift=False)
    write_days(tmp_path / "logs", JAN1 + 2 * DAY, 3, concept_shift=True)
    path = str(write_yaml(tmp_path / "cfg.yaml", cfg))

    assert drift_check_flow(path, "2026-01-04", retrain_via="subflow")["decision"]["action"] == "none"
    result = drift_check_flow(path, "2026-01-05", retrain_via="subflow")

    assert result["decision"]["action"] == "refresh_teacher", result["decision"]["reason"]
    assert result["retrain_via"] == "subflow" and result["retrain"] is None
    refresh = result["teacher_refresh"]
    assert refresh["outcome"] == "promoted", refresh.get("outcome_reason")
    assert refresh["as_of"] == "2026-01-05T00:00:00+00:00" and refresh["reason"] == result["decision"]["reason"]
    assert refresh["parent_version"] == "1" and refresh["version"] == "2" and refresh["rows"]["recent_labeled"] == 300
    verdict = refresh["verdict"]
    assert verdict["holdout_accuracy"] > verdict["champion_holdout_accuracy"] + 0.3, verdict
    client = MlflowClient(cfg["mlflow"]["tracking_uri"])
    assert {a: str(v) for a, v in client.get_registered_model("t").aliases.items()}["champion"] == "2"
    tags = client.get_model_version("t", "2").tags
    assert float(tags["kdflow.reference_accuracy"]) == pytest.approx(verdict["holdout_accuracy"])
    # The student retrained from the new teacher version (its logits under v2's store key).
    report = refresh["retrain"]["report"]
    student = client.get_model_version("s", report["registration"]["version"]).tags
    assert student["kdflow.teacher_version"] == "2" and "logits/t/v2/" in student["kdflow.logit_store_keys"]
    assert set(refresh["phases"]) >= {"collect", "validate", "train", "gate", "register", "promote", "retrain_student"}

    # The health signal now scores v2 against the reference of the regime it was refreshed for: on the shifted days
    # it is not flagged (v1's drop against its old test accuracy was above 0.8): the signal can clear.
    shifted = read_window(str(tmp_path / "logs"), JAN1 + 2 * DAY, JAN1 + 5 * DAY)
    signal, _ = teacher_check(
        cfg["mlflow"]["tracking_uri"], "models:/t@champion", shifted, DriftConfig(min_labeled_rows=100)
    )
    assert "teacher v2 accuracy" in signal.detail and "(reference_accuracy)" in signal.detail, signal.detail
    assert f"its reference {verdict['holdout_accuracy']:.4f}" in signal.detail and signal.exceeded is False
    assert result["signals"][SIGNAL] > 0.8  # v1's drop that decided the refresh
