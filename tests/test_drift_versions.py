"""The drift check reads a scoring server's logs as they are: rows of several serving versions (after a champion
switch), who answered each row (the confidence fallback's deferral rate). Exact values on constructed logs, then
the drift-check flow on versions registered in MLflow (SQLite under tmp_path)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import numpy as np
import pytest
from scipy.special import softmax

from kdflow.config import DriftConfig
from kdflow.drift import WindowData, check_window, decide, deferral_rate
from kdflow.inference_logs import InferenceLogWriter, read_window
from kdflow.monitor import check_served, check_version, drift_markdown, drift_metrics
from kdflow.profile import ReferenceProfile, build_profile
from kdflow.served import DEFERRAL_RATE_TAG, VersionReference, served_rows

C, D = 10, 40  # the packaged MNIST-1D config's classes and features (the log suite checks them)
SWITCH = datetime(2026, 1, 1, 12, tzinfo=timezone.utc)  # v2 became champion at noon
CFG = DriftConfig(window_days=1, label_lag_days=1, min_rows=100, min_labeled_rows=20, min_shadow_rows=10)


def world(n: int, seed: int, shift: float = 0.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """x (n, D), labels (n,) and calibrated-ish probabilities (n, C) of a nearest-mean world."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, C, size=n)
    x = (3.0 * np.eye(C, D)[y] + rng.standard_normal((n, D)) + shift).astype(np.float32)
    return x, y, softmax(-0.5 * ((x[:, None, :] - 3.0 * np.eye(C, D)[None]) ** 2).sum(-1), axis=1)


def write_switch_logs(root, teacher_share: float = 0.2) -> dict[str, np.ndarray]:
    """2025-12-31 (the label-lag day): 200 rows of v1. 2026-01-01: v1 serves 300 rows until noon (every 5th
    answered by the teacher, every 3rd labeled), then v2 serves 40 (answered_by not recorded)."""
    writer = InferenceLogWriter(str(root), "s", "1")
    x0, y0, p0 = world(200, seed=0)
    day0 = datetime(2025, 12, 31, tzinfo=timezone.utc)
    writer.log(x0, p0, [day0 + timedelta(minutes=5 * i) for i in range(200)], labels=y0, request_ids=range(200))
    x1, y1, p1 = world(300, seed=1)
    answered = np.where(np.arange(300) < int(round(300 * teacher_share)), "teacher", "student").astype(object)
    answered[::7] = None  # not recorded on some rows: counts as the student's answer (the log format)
    labels = np.where(np.arange(300) % 3 == 0, y1, -1)
    day1 = datetime(2026, 1, 1, tzinfo=timezone.utc)
    writer.log(
        x1,
        p1,
        [day1 + timedelta(minutes=2 * i) for i in range(300)],
        labels=labels,
        answered_by=list(answered),
        request_ids=[f"a{i}" for i in range(300)],
    )
    x2, y2, p2 = world(40, seed=2)
    writer.log(x2, p2, [SWITCH + timedelta(minutes=10 * i) for i in range(40)], model_version="2", labels=y2)
    writer.flush()
    return {"answered": answered, "x1": x1, "p1": p1}


def profiles() -> dict[str, ReferenceProfile]:
    """Each version's own reference: v1's of the unshifted world, v2's of a shifted one."""
    out = {}
    for version, shift in (("1", 0.0), ("2", 0.5)):
        x, y, p = world(1000, seed=10 + int(version), shift=shift)
        out[version] = build_profile(p, x, y, n_bins=CFG.psi_bins)
    return out


# ------------------------------------------------------------------------------- which versions served (exact)
def test_served_rows_after_a_champion_switch(tmp_path):
    write_switch_logs(tmp_path)
    window = read_window(str(tmp_path), datetime(2025, 12, 31), datetime(2026, 1, 2), require_all_partitions=False)
    days = "[2026-01-01T00:00:00+00:00, 2026-01-02T00:00:00+00:00)"
    served = served_rows(window, "2", CFG)  # the label-lag day's 200 rows of v1 are not counted
    assert served.counts == {"1": 300, "2": 40} and list(served.counts) == ["1", "2"]
    assert served.checked == "1"
    assert served.scope == (
        f"checked v1's 300 rows in {days} against v1's own reference profile: the champion v2 served 40 rows, "
        "fewer than min_rows=100"
    )
    enough = served_rows(window, "2", CFG.model_copy(update={"min_rows": 40}))
    assert (
        enough.checked == "2"
        and enough.scope == f"checked the champion v2's 40 rows in {days} (also served: v1 300 rows)"
    )
    none = served_rows(window, "2", CFG.model_copy(update={"min_rows": 301}))
    assert none.checked is None and none.scope == (
        f"cannot decide: every serving version has fewer than min_rows=301 rows in {days}: "
        "v1 300 rows, v2 (champion) 40 rows"
    )
    empty = read_window(str(tmp_path), datetime(2026, 1, 5), datetime(2026, 1, 6), require_all_partitions=False)
    nothing = served_rows(empty, "2", CFG)
    assert nothing.counts == {} and nothing.checked is None
    assert nothing.scope.endswith(
        "rows in [2026-01-05T00:00:00+00:00, 2026-01-06T00:00:00+00:00): no rows at all (the champion is v2)"
    )


def test_served_rows_tie_goes_to_the_higher_version(tmp_path):
    x, _, p = world(200, seed=3)
    with InferenceLogWriter(str(tmp_path), "s", "9") as writer:
        for i, version in enumerate(["9", "10"]):
            writer.log(x[100 * i : 100 * (i + 1)], p[:100], datetime(2026, 1, 1, i + 1), model_version=version)
    window = read_window(str(tmp_path), datetime(2026, 1, 1), datetime(2026, 1, 2))
    served = served_rows(window, "11", CFG)
    assert served.counts == {"10": 100, "9": 100} and served.checked == "10"  # numeric order, not "9" > "10"


# ------------------------------------------------------------------------------- the deferral signal (exact)
def test_deferral_rate_signal_exact_values():
    assert deferral_rate(["teacher", "student", None, "teacher"]) == 0.5  # a null counts as the student
    assert deferral_rate([None, None]) is None and deferral_rate([]) is None
    x, y, p = world(1000, seed=4)
    profile = build_profile(p, x, y, n_bins=CFG.psi_bins)
    answered = np.array(["teacher"] * 200 + ["student"] * 700 + [None] * 100, dtype=object)
    rows = WindowData(p, x, y, answered_by=answered)
    high = check_window(profile, rows, CFG, deferral_reference=0.1).signals["deferral_rate"]
    assert (high.value, high.threshold, high.exceeded) == (0.2 - 0.1, 0.05, True)
    assert (
        high.detail
        == "deferral rate 0.2000 (200 of 1000 rows answered by the teacher) vs validation 0.1000: rise 0.1000 > 0.05"
    )
    low = check_window(profile, rows, CFG, deferral_reference=0.18)
    assert (low.signals["deferral_rate"].value, low.signals["deferral_rate"].exceeded) == (0.2 - 0.18, False)
    assert low.metrics["deferral_rate"] == 0.2
    untagged = check_window(profile, rows, CFG)  # the version has no kdflow.cascade_deferral_rate tag
    signal = untagged.signals["deferral_rate"]
    assert (signal.value, signal.exceeded) == (None, None) and "kdflow.cascade_deferral_rate" in signal.detail
    assert untagged.metrics["deferral_rate"] == 0.2  # still reported as a raw window metric
    unrecorded = check_window(profile, WindowData(p, x, y, answered_by=np.full(1000, None, object)), CFG, None, 0.1)
    assert unrecorded.signals["deferral_rate"].value is None and "deferral_rate" not in unrecorded.metrics
    assert "no row records answered_by" in unrecorded.signals["deferral_rate"].detail

    # Reported, but it acts only when listed in trigger_on (it is not there by default).
    assert "deferral_rate" not in DriftConfig().trigger_on
    assert high.exceeded and check_window(profile, rows, CFG, deferral_reference=0.1).exceeded() == ["deferral_rate"]
    check = check_window(profile, rows, CFG, deferral_reference=0.1)
    now = datetime(2026, 1, 2, tzinfo=timezone.utc)
    assert decide(None, check, CFG.model_copy(update={"consecutive_windows": 1}), None, now).action == "none"
    listed = CFG.model_copy(update={"consecutive_windows": 1, "trigger_on": ["deferral_rate"]})
    assert decide(None, check, listed, None, now).action == "retrain"


# ------------------------------------------------------------------------------- the check of the served rows
def test_check_served_checks_the_previous_version_against_its_own_profile(tmp_path):
    logged = write_switch_logs(tmp_path)
    refs = {v: VersionReference(v, prof, {DEFERRAL_RATE_TAG: "0.1"}) for v, prof in profiles().items()}
    window = read_window(str(tmp_path), datetime(2025, 12, 31), datetime(2026, 1, 2), require_all_partitions=False)
    served = served_rows(window, "2", CFG)
    check = check_served(served, refs["1"], window, CFG)
    expected = check_version(refs["1"].profile, "1", window, CFG, 0.1)
    assert check.status == expected.status != "cannot_decide"
    assert check.signals == expected.signals and check.n_rows == 300
    assert check.n_labeled == 200 + 100  # the label-lag day's rows and every 3rd of the checked day
    assert check.served == {"1": 300, "2": 40} and check.checked_version == "1" and check.scope == served.scope
    assert check.reason == f"{served.scope}; {expected.reason}"
    # Rows 0-59 answered by the teacher except every 7th (not recorded: counts as the student's answer).
    teacher = int(np.sum(logged["answered"] == "teacher"))
    assert teacher == 51 and check.metrics["deferral_rate"] == 51 / 300
    assert check.signals["deferral_rate"].value == pytest.approx(teacher / 300 - 0.1, abs=1e-15)
    with pytest.raises(ValueError, match="the reference is v2's, the checked rows are v1's"):
        check_served(served, refs["2"], window, CFG)

    few = CFG.model_copy(update={"min_rows": 301})
    blocked = check_served(served_rows(window, "2", few), refs["2"], window, few)
    assert blocked.status == "cannot_decide" and blocked.checked_version is None and blocked.n_rows == 40
    assert blocked.reason.startswith("cannot decide: every serving version has fewer than min_rows=301")
    assert blocked.reason.endswith("v1 300 rows, v2 (champion) 40 rows") and "has 0 rows" not in blocked.reason
    assert {s.detail for s in blocked.signals.values()} == {blocked.reason}

    as_of = datetime(2026, 1, 2, tzinfo=timezone.utc)
    metrics = drift_metrics(as_of, check, decide(None, check, CFG, None, as_of))
    assert (metrics["served_rows_v1"], metrics["served_rows_v2"], metrics["n_rows"]) == (300, 40, 300)
    from kdflow.registry import ModelRef

    markdown = drift_markdown(
        ModelRef("models:/s@champion", "s", "2", "r"), as_of, check, decide(None, check, CFG, None, as_of)
    )
    assert "Rows by serving version: v1 300 rows, v2 (champion) 40 rows." in markdown.splitlines()
    assert f"Scope: {served.scope}" in markdown.splitlines()


def test_a_missing_day_still_cannot_decide_and_says_who_served(tmp_path):
    write_switch_logs(tmp_path)
    two_days = CFG.model_copy(update={"window_days": 2, "label_lag_days": 0})
    window = read_window(str(tmp_path), datetime(2026, 1, 1), datetime(2026, 1, 3), require_all_partitions=False)
    served = served_rows(window, "2", two_days)  # 2026-01-02 has no partition
    assert served.counts == {"1": 300, "2": 40} and served.checked == "1"
    check = check_served(served, VersionReference("1", profiles()["1"]), window, two_days)
    assert check.status == "cannot_decide" and check.checked_version is None and check.signals == {}
    assert (
        check.reason
        == check.scope
        == (
            f"cannot decide: 1 missing log partition(s) in {window.root}: 2026-01-02 "
            "(rows by serving version on the days present: v1 300 rows, v2 (champion) 40 rows)"
        )
    )
    assert check.served == {"1": 300, "2": 40}


# ------------------------------------------------------------------------------- registered versions, the flow
def register_versions(tracking_uri: str, artifacts: str, name: str, refs: dict[str, ReferenceProfile], tags: dict):
    """Register one tiny calibrated student per profile (versions 1, 2, ... in order) with its reference
    profile at reference/profile.json of its run, and ``tags`` on every version."""
    import torch

    from kdflow import registry
    from kdflow.models import CalibratedClassifier
    from mlflow import MlflowClient

    exp = registry.configure(tracking_uri, "students", artifacts)
    for version, profile in refs.items():
        run_id, _ = registry.open_run(exp, None, f"v{version}", {})
        MlflowClient().log_dict(run_id, profile.to_dict(), "reference/profile.json")
        torch.manual_seed(int(version))
        model = CalibratedClassifier(torch.nn.Linear(D, C), 1.0)
        _, registered, _ = registry.register_run_model(model, np.zeros((2, D), np.float32), name, run_id)
        assert registered == version
        registry.tag_version(name, version, {"reference_profile": "reference/profile.json", **tags})
        MlflowClient().set_terminated(run_id, "FINISHED")


def drift_config(tmp_path, name: str) -> dict:
    """The packaged distill config pointed at tmp_path (MLflow on SQLite, logs) with a small drift window."""
    import yaml

    from kdflow.config import packaged_config

    cfg = yaml.safe_load(packaged_config("mnist1d_distill.yaml").read_text())
    cfg["registry"]["student_name"] = name
    cfg["mlflow"] = {"tracking_uri": f"sqlite:///{tmp_path}/mlflow.db", "artifact_location": str(tmp_path / "art")}
    cfg["logs"] = {"root": str(tmp_path / "logs")}
    cfg["drift"] = {
        **CFG.model_dump(include={"window_days", "label_lag_days", "min_rows", "min_labeled_rows", "min_shadow_rows"}),
        "monitoring_experiment": "monitoring",
    }
    cfg["output_dir"] = str(tmp_path / "reports")
    return cfg


@pytest.mark.slow
def test_drift_check_after_a_champion_switch_checks_who_served(prefect_harness, tmp_path):
    """Before: "cannot decide: the window has 0 rows" while v1 had served the day. Now the flow checks v1's rows
    against v1's reference, names both versions, and records the check under the champion v2."""
    from typer.testing import CliRunner

    from app.cli import app
    from flows.drift import drift_check_flow
    from mlflow import MlflowClient
    from tests.conftest import write_yaml

    cfg = drift_config(tmp_path, "s")
    register_versions(
        cfg["mlflow"]["tracking_uri"],
        cfg["mlflow"]["artifact_location"],
        "s",
        profiles(),
        {"cascade_deferral_rate": 0.1},
    )
    MlflowClient().set_registered_model_alias("s", "champion", "2")
    write_switch_logs(tmp_path / "logs")
    path = str(write_yaml(tmp_path / "cfg.yaml", cfg))

    result = drift_check_flow(path, "2026-01-02")
    assert result["version"] == "2" and result["status"] != "cannot_decide", result["decision"]["reason"]
    assert result["served"] == {"1": 300, "2": 40} and result["checked_version"] == "1"
    assert result["scope"].startswith("checked v1's 300 rows in [2026-01-01T00:00:00+00:00, 2026-01-02T00:00:00+00:00)")
    assert "against v1's own reference profile: the champion v2 served 40 rows" in result["scope"]
    # Rows 0-59 answered by the teacher, except every 7th (not recorded: the student's), so 51 of 300.
    assert result["signals"]["deferral_rate"] == pytest.approx(51 / 300 - 0.1, abs=1e-12)
    assert result["decision"]["action"] in ("none", "retrain") and "has 0 rows" not in result["decision"]["reason"]
    run = MlflowClient().get_run(result["mlflow_run_id"])
    tags = run.data.tags
    assert (tags["kdflow.model_version"], tags["kdflow.checked_version"], tags["kdflow.served"]) == (
        "2",
        "1",
        "1=300,2=40",
    )
    assert (run.data.metrics["served_rows_v1"], run.data.metrics["served_rows_v2"], run.data.metrics["n_rows"]) == (
        300,
        40,
        300,
    )

    # The CLI prints who served and which rows were checked.
    out = CliRunner().invoke(app, ["drift", "check", "--config", path, "--as-of", "2026-01-02"])
    assert out.exit_code == 0, out.output
    assert "s v2 at 2026-01-02T00:00:00+00:00" in out.output
    assert "served: v1 300 rows, v2 (champion) 40 rows" in out.output and "against v1's own reference" in out.output

    # With more rows required than any version served: cannot decide, naming both versions and their rows.
    strict = str(write_yaml(tmp_path / "strict.yaml", {**cfg, "drift": {**cfg["drift"], "min_rows": 1000}}))
    blocked = drift_check_flow(strict, "2026-01-02")
    assert blocked["decision"]["action"] == "cannot_decide"
    assert blocked["decision"]["reason"].endswith(
        "fewer than min_rows=1000 rows in [2026-01-01T00:00:00+00:00, 2026-01-02T00:00:00+00:00): v1 300 rows, v2 (champion) 40 rows"
    )
