"""SLA checks on a typed Evaluation and the promotion decision."""

import dataclasses

import pytest

from kdflow.config import SLAConfig
from kdflow.evaluation import Evaluation
from kdflow.sla import check_slas, decide_promotion

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
