"""SLA checks on a typed Evaluation and the promotion decision."""

import dataclasses

import pytest

from kdflow.config import SLAConfig
from kdflow.evaluation import Evaluation
from kdflow.sla import check_slas, decide_promotion, sla_exception

EVALUATION = Evaluation(
    student_accuracy=0.95,
    teacher_accuracy=0.97,
    teacher_gap=0.02,
    flip_rate=0.05,
    student_ece=0.02,
    student_ece_uncalibrated=0.05,
    teacher_ece=0.03,
    served_temperature=1.3,
    student_params=3000,
    teacher_params=60000,
    size_ratio=0.05,
    per_class_accuracy={"0": 0.9, "1": 1.0},
    test_rows=100,
    student_latency_p50_ms=0.5,
    student_latency_p95_ms=1.0,
    student_throughput=1e5,
    teacher_latency_p50_ms=1.0,
    teacher_latency_p95_ms=2.0,
    teacher_throughput=2e4,
)
METRICS = EVALUATION.as_dict()


def with_(**changes: float) -> Evaluation:
    return dataclasses.replace(EVALUATION, **changes)


def test_all_pass_and_each_failure_is_named():
    checks = check_slas(
        METRICS,
        SLAConfig(
            min_accuracy=0.9,
            max_teacher_gap=0.03,
            max_ece=0.03,
            max_flip_rate=0.1,
            max_latency_p95_ms=5,
            max_size_ratio=0.1,
        ),
    )
    assert len(checks) == 6 and all(c.passed for c in checks)
    failing = check_slas(with_(student_ece=0.031), SLAConfig(max_ece=0.03))
    assert [c.name for c in failing if not c.passed] == ["max_ece"]
    boundary = check_slas(with_(student_accuracy=0.9), SLAConfig(min_accuracy=0.9))
    assert boundary[0].passed


def test_unset_thresholds_are_skipped():
    sla = SLAConfig(
        min_accuracy=None,
        max_teacher_gap=None,
        max_ece=None,
        max_flip_rate=None,
        max_latency_p95_ms=None,
        max_size_ratio=0.1,
    )
    assert [c.name for c in check_slas(METRICS, sla)] == ["max_size_ratio"]


def test_a_report_section_is_read_as_an_evaluation_and_a_missing_metric_is_named():
    """A report's evaluation read back (the recalibration flow) gives the same checks as the Evaluation."""
    assert check_slas(METRICS, SLAConfig()) == check_slas(EVALUATION, SLAConfig())
    assert Evaluation.from_dict({**METRICS, "extra": 1}) == EVALUATION
    with pytest.raises(KeyError, match="student_ece, student_ece_uncalibrated"):
        Evaluation.from_dict({k: v for k, v in METRICS.items() if not k.startswith("student_ece")})
    # check_slas reads only what the configured SLAs check (a report written by an older kdflow may lack the rest)
    needed = {
        k: METRICS[k]
        for k in ("student_accuracy", "teacher_gap", "student_ece", "flip_rate", "student_latency_p95_ms", "size_ratio")
    }
    assert check_slas(needed, SLAConfig()) == check_slas(EVALUATION, SLAConfig())
    with pytest.raises(KeyError, match="lacks metric.s. student_ece that the SLAs check"):
        check_slas({k: v for k, v in needed.items() if k != "student_ece"}, SLAConfig())


def test_promotion_rules():
    ok = check_slas(METRICS, SLAConfig())
    bad = check_slas(with_(student_accuracy=0.1), SLAConfig())
    assert decide_promotion(ok, 0.95, None, None, 0.005).promote
    assert not decide_promotion(bad, 0.1, None, None, 0.005).promote
    assert decide_promotion(ok, 0.95, "3", 0.954, 0.005).promote
    worse = decide_promotion(ok, 0.95, "3", 0.96, 0.005)
    assert not worse.promote and "worse than champion v3" in worse.reason


def test_a_drift_triggered_candidate_must_beat_the_champion_on_the_recent_traffic():
    """0.961 vs 0.963 on the recent labeled traffic replaced the champion within champion_tolerance: it must not."""
    ok = check_slas(METRICS, SLAConfig())
    worse = decide_promotion(ok, 0.95, "3", 0.95, 0.005, recent=(0.961, 0.963))
    assert not worse.promote and worse.reason == (
        "not better than champion v3 on the recent labeled traffic: accuracy 0.9610 <= 0.9630 + "
        "min_recent_improvement 0 (a retrain must beat the champion there, not merely come within champion_tolerance)"
    )
    assert not decide_promotion(ok, 0.95, "3", 0.95, 0.005, recent=(0.963, 0.963)).promote  # equal is not better
    better = decide_promotion(ok, 0.95, "3", 0.95, 0.005, recent=(0.964, 0.963))
    assert better.promote and better.reason.endswith("better on recent labeled traffic: 0.9640 vs 0.9630")
    assert not decide_promotion(ok, 0.95, "3", 0.95, 0.005, (0.964, 0.963), min_recent_improvement=0.002).promote
    # Better on the recent traffic, a retrain may give up max_forgetting of the old regime's test accuracy (a
    # student of a refreshed teacher: 0.979 vs 0.987 was refused with the tolerance 0.005); without recent traffic
    # the tolerance alone holds.
    assert decide_promotion(ok, 0.979, "3", 0.987, 0.005, (0.80, 0.77), max_forgetting=0.02).promote
    refused = decide_promotion(ok, 0.966, "3", 0.987, 0.005, (0.80, 0.77), max_forgetting=0.02)
    assert not refused.promote and refused.reason == "worse than champion v3: accuracy 0.9660 < 0.9870 - tolerance 0.02"
    assert not decide_promotion(ok, 0.979, "3", 0.987, 0.005, max_forgetting=0.02).promote
    assert SLAConfig().min_recent_improvement == 0.0


def test_a_strict_improvement_replaces_a_champion_that_already_misses_an_sla():
    sla = SLAConfig(max_ece=0.03)
    candidate = check_slas(with_(student_ece=0.0317), sla)
    champion = check_slas(with_(student_ece=0.0669), sla)
    alert = (
        "SLA alert: promoted as strictly better than a champion that already misses the same SLA(s), still missed: "
        "max_ece 0.0317 (champion 0.0669; needs <= 0.03)"
    )
    assert sla_exception(candidate, champion) == alert
    decision = decide_promotion(candidate, 0.95, "3", 0.95, 0.005, champion_checks=champion)
    assert decision.promote and decision.alert == alert and decision.reason.startswith(alert)
    # Refused: no champion record, a champion that meets the SLA, a candidate no better there, or worse elsewhere.
    assert not decide_promotion(candidate, 0.95, "3", 0.95, 0.005).promote
    assert sla_exception(candidate, check_slas(with_(student_ece=0.02), sla)) is None
    assert sla_exception(candidate, check_slas(with_(student_ece=0.0317), sla)) is None
    slower = check_slas(with_(student_ece=0.0317, student_latency_p95_ms=1.5), sla)  # passes, but worse than 1.0
    assert sla_exception(slower, champion) is None
    assert sla_exception(check_slas(METRICS, sla), champion) is None  # nothing missed: no alert needed
    first = decide_promotion(candidate, 0.95, None, None, 0.005)  # no champion to compare with
    assert not first.promote and first.reason == "SLA gate failed: max_ece"


def test_the_champion_record_an_exception_is_judged_against_and_its_promotion(tmp_path):
    """The champion's accuracy and ECE are measured on the candidate's test split, its other metrics read from its
    registration; a version that misses an SLA is promotable only with the gate's alert tag."""
    import numpy as np
    import torch

    from kdflow import registry
    from kdflow.calibration import calibration_metrics
    from kdflow.data import Dataset
    from kdflow.metrics import accuracy
    from kdflow.models import CalibratedClassifier
    from kdflow.sla import SLA_ALERT_TAG, champion_sla_checks
    from mlflow import MlflowClient

    exp = registry.configure(f"sqlite:///{tmp_path}/mlflow.db", "models", str(tmp_path / "art"))
    torch.manual_seed(0)
    champion = CalibratedClassifier(torch.nn.Linear(4, 3), 1.5)
    rng = np.random.default_rng(0)
    test = Dataset(
        "test", "mem", np.arange(200), rng.standard_normal((200, 4)).astype(np.float32), rng.integers(0, 3, 200)
    )
    recorded = check_slas(with_(student_latency_p95_ms=2.0), SLAConfig())
    versions = []
    for tags in ({"sla_passed": True, "sla_checks": [c.as_dict() for c in recorded]}, {"sla_passed": False}, {}):
        run_id, _ = registry.open_run(exp, None, "v", {})
        _, version, _ = registry.register_run_model(champion, test.x[:2], "s", run_id)
        registry.tag_version("s", version, tags)
        versions.append(version)

    checks = {c.name: c.value for c in champion_sla_checks("s", versions[0], champion, test, SLAConfig())}
    logits = champion.logits(torch.from_numpy(test.x)).detach().numpy()
    assert checks["min_accuracy"] == pytest.approx(accuracy(logits, test.y))
    assert checks["max_ece"] == pytest.approx(calibration_metrics(logits, test.y, 1.5).ece)
    assert checks["max_latency_p95_ms"] == 2.0 and checks["max_size_ratio"] == 0.05  # as recorded
    unrecorded = champion_sla_checks("s", versions[1], champion, test, SLAConfig())
    assert [c.name for c in unrecorded] == ["min_accuracy", "max_ece"]  # nothing else is known of it

    registry.promote("s", versions[0], "first", "test")
    with pytest.raises(registry.RegistryError, match="failed its SLA gate"):
        registry.promote("s", versions[1], "misses an SLA", "test")
    MlflowClient().set_model_version_tag("s", versions[1], SLA_ALERT_TAG, "SLA alert: still missed: max_ece")
    assert registry.promote("s", versions[1], "strictly better", "test").version == versions[1]
    with pytest.raises(registry.RegistryError, match="no SLA record"):
        registry.promote("s", versions[2], "no record", "test")


# ---- the per-class SLA (sla.min_class_accuracy)


def test_per_class_sla_passes_and_names_the_worst_class():
    assert SLAConfig().min_class_accuracy is None  # off by default: the six checks above
    checks = check_slas(EVALUATION, SLAConfig(min_class_accuracy=0.85))
    assert checks[-1].as_dict() == {
        "name": "min_class_accuracy",
        "metric": "worst_class_accuracy",
        "value": 0.9,
        "op": ">=",
        "threshold": 0.85,
        "passed": True,
        "detail": "lowest: class 0 0.9000",
    }
    assert check_slas(METRICS, SLAConfig(min_class_accuracy=0.85)) == checks  # a report section reads the same
    assert check_slas(with_(per_class_accuracy={"0": 0.9, "1": 0.9}), SLAConfig(min_class_accuracy=0.9))[-1].passed


def test_per_class_sla_failure_names_each_failing_class_and_its_accuracy():
    per_class = {"0": 0.7, "1": 0.95, "2": 0.65, "3": float("nan"), "10": 0.7}  # class 3: no test rows, not judged
    checks = check_slas(with_(per_class_accuracy=per_class), SLAConfig(min_class_accuracy=0.8))
    check = checks[-1]
    assert not check.passed and check.value == 0.65 and check.metric == "worst_class_accuracy"
    assert check.detail == "3 class(es) below 0.8: class 2 0.6500, class 0 0.7000, class 10 0.7000"
    decision = decide_promotion(checks, 0.95, None, None, 0.005)
    assert not decision.promote and decision.reason == (
        "SLA gate failed: min_class_accuracy (3 class(es) below 0.8: class 2 0.6500, class 0 0.7000, class 10 0.7000)"
    )
    both = check_slas(with_(per_class_accuracy=per_class, student_ece=0.9), SLAConfig(min_class_accuracy=0.8))
    assert decide_promotion(both, 0.95, None, None, 0.005).reason == (
        "SLA gate failed: max_ece, min_class_accuracy (3 class(es) below 0.8: class 2 0.6500, class 0 0.7000, "
        "class 10 0.7000)"
    )


def test_per_class_sla_needs_per_class_figures():
    needs = SLAConfig(min_class_accuracy=0.8)
    with pytest.raises(KeyError, match="lacks metric.s. per_class_accuracy that the SLAs check"):
        check_slas({k: v for k, v in METRICS.items() if k != "per_class_accuracy"}, needs)
    with pytest.raises(KeyError, match="no class with test rows"):
        check_slas(with_(per_class_accuracy={"0": float("nan")}), needs)


def test_per_class_sla_exception_compares_the_worst_classes():
    sla = SLAConfig(min_class_accuracy=0.8)
    candidate = check_slas(with_(per_class_accuracy={"0": 0.75, "1": 0.9}), sla)
    champion = check_slas(with_(per_class_accuracy={"0": 0.9, "1": 0.7}), sla)
    assert sla_exception(candidate, champion) == (
        "SLA alert: promoted as strictly better than a champion that already misses the same SLA(s), still missed: "
        "min_class_accuracy 0.75 (champion 0.7; needs >= 0.8)"
    )
    assert sla_exception(champion, candidate) is None


def test_the_champion_record_includes_its_per_class_accuracy_on_the_same_test_split(tmp_path):
    import numpy as np
    import torch

    from kdflow import registry
    from kdflow.data import Dataset
    from kdflow.metrics import per_class_accuracy
    from kdflow.models import CalibratedClassifier
    from kdflow.sla import champion_sla_checks

    exp = registry.configure(f"sqlite:///{tmp_path}/mlflow.db", "models", str(tmp_path / "art"))
    torch.manual_seed(0)
    champion = CalibratedClassifier(torch.nn.Linear(4, 3), 1.5)
    rng = np.random.default_rng(0)
    test = Dataset(
        "test", "mem", np.arange(200), rng.standard_normal((200, 4)).astype(np.float32), rng.integers(0, 3, 200)
    )
    run_id, _ = registry.open_run(exp, None, "v", {})
    _, version, _ = registry.register_run_model(champion, test.x[:2], "s", run_id)
    checks = champion_sla_checks("s", version, champion, test, SLAConfig(min_class_accuracy=0.5))
    logits = champion.logits(torch.from_numpy(test.x)).detach().numpy()
    worst = min(per_class_accuracy(logits, test.y, 3).values())
    assert [c.name for c in checks] == ["min_accuracy", "max_ece", "min_class_accuracy"]
    assert checks[-1].value == pytest.approx(worst)
