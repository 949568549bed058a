"""SLA checks and the promotion decision."""

import pytest

from kdflow.config import SLAConfig
from kdflow.sla import check_slas, decide_promotion

METRICS = {"student_accuracy": 0.95, "teacher_gap": 0.02, "student_ece": 0.02, "flip_rate": 0.05,
           "student_latency_p95_ms": 1.0, "size_ratio": 0.05}


def test_all_pass_and_each_failure_is_named():
    checks = check_slas(METRICS, SLAConfig(min_accuracy=0.9, max_teacher_gap=0.03, max_ece=0.03, max_flip_rate=0.1,
                                           max_latency_p95_ms=5, max_size_ratio=0.1))
    assert len(checks) == 6 and all(c.passed for c in checks)
    failing = check_slas({**METRICS, "student_ece": 0.031}, SLAConfig(max_ece=0.03))
    assert [c.name for c in failing if not c.passed] == ["max_ece"]
    boundary = check_slas({**METRICS, "student_accuracy": 0.9}, SLAConfig(min_accuracy=0.9))
    assert boundary[0].passed


def test_unset_thresholds_are_skipped():
    sla = SLAConfig(min_accuracy=None, max_teacher_gap=None, max_ece=None, max_flip_rate=None,
                    max_latency_p95_ms=None, max_size_ratio=0.1)
    assert [c.name for c in check_slas(METRICS, sla)] == ["max_size_ratio"]


def test_missing_metric_is_an_error():
    with pytest.raises(KeyError, match="student_ece"):
        check_slas({"student_accuracy": 0.9}, SLAConfig(max_teacher_gap=None))


def test_promotion_rules():
    ok = check_slas(METRICS, SLAConfig())
    bad = check_slas({**METRICS, "student_accuracy": 0.1}, SLAConfig())
    assert decide_promotion(ok, 0.95, None, None, 0.005).promote
    assert not decide_promotion(bad, 0.1, None, None, 0.005).promote
    assert decide_promotion(ok, 0.95, "3", 0.954, 0.005).promote
    worse = decide_promotion(ok, 0.95, "3", 0.96, 0.005)
    assert not worse.promote and "worse than champion v3" in worse.reason
