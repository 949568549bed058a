"""The cascade's selective-classification math on hand-checked cases (kdflow.selective)."""

import numpy as np
import pytest

from kdflow.selective import cascade_target, fit_cascade, risk_coverage, route

# 5 rows, confidences 0.9 > 0.8 > 0.7 > 0.6 > 0.5; the student is right on rows 0, 1, 3; the teacher on all.
PROBS = np.array([[0.9, 0.1], [0.8, 0.2], [0.7, 0.3], [0.6, 0.4], [0.5, 0.5]])
LABELS = np.array([0, 0, 1, 0, 1])
TEACHER = LABELS.copy()


def test_risk_coverage_and_aurc_exact():
    coverage, risk, aurc = risk_coverage(PROBS.max(axis=1), PROBS.argmax(axis=1) == LABELS)
    assert coverage.tolist() == [0.2, 0.4, 0.6, 0.8, 1.0]
    np.testing.assert_allclose(risk, [0, 0, 1 / 3, 1 / 4, 2 / 5])
    assert aurc == pytest.approx((0 + 0 + 1 / 3 + 1 / 4 + 2 / 5) / 5)


def test_largest_coverage_meeting_the_target():
    # system accuracy by m (rows the student keeps): m=0..5 -> 1, 1, 1, 0.8, 0.8, 0.6
    fit = fit_cascade(PROBS, TEACHER, LABELS, target_accuracy=0.8)
    assert (fit.coverage, fit.threshold, fit.system_accuracy, fit.target_met) == (0.8, 0.6, 0.8, True)
    assert fit.deferral_rate == pytest.approx(0.2)
    assert route(PROBS.max(axis=1), fit.threshold).tolist() == [False, False, False, False, True]
    strict = fit_cascade(PROBS, TEACHER, LABELS, target_accuracy=0.95)
    assert (strict.coverage, strict.threshold, strict.system_accuracy) == (0.4, 0.8, 1.0)
    assert fit_cascade(PROBS, TEACHER, LABELS, target_accuracy=0.5).threshold == 0.0  # the student alone


def test_target_out_of_reach_takes_the_best_system_accuracy():
    teacher = np.array([1, 1, 0, 1, 0])  # wrong everywhere: deferring only hurts
    fit = fit_cascade(PROBS, teacher, LABELS, target_accuracy=0.99)
    assert not fit.target_met
    assert (fit.coverage, fit.system_accuracy, fit.threshold) == (1.0, 0.6, 0.0)


def test_ties_stay_together_and_full_deferral_threshold_is_above_every_confidence():
    probs = np.array([[0.7, 0.3], [0.7, 0.3], [0.6, 0.4]])
    fit = fit_cascade(probs, np.array([0, 1, 0]), np.array([0, 1, 0]), target_accuracy=1.0)
    # m=1 would split the tie at 0.7: only m in {0, 2, 3} are attainable; m=2 has the student wrong on row 1
    assert fit.coverage == 0.0 and fit.threshold > 0.7
    assert route(probs.max(axis=1), fit.threshold).all()


def test_target_from_teacher_accuracy_and_bad_shapes():
    assert cascade_target(None, 0.005, 0.98) == pytest.approx(0.975)
    assert cascade_target(0.9, 0.005, 0.98) == 0.9
    with pytest.raises(ValueError, match="must match"):
        fit_cascade(PROBS, TEACHER[:3], LABELS, 0.9)
