"""Drift statistics (exact values), reference profiles and the retrain decision: numpy only, no Prefect/MLflow.

The synthetic world is a Gaussian mixture whose exact Bayes posterior is the "student": its probabilities are
calibrated by construction, so the CBPE estimate matches accuracy on undrifted data."""

from __future__ import annotations

import json
import math
from datetime import datetime, timedelta, timezone

import numpy as np
import pytest
from scipy.special import softmax
from scipy.stats import false_discovery_control

from kdflow.config import DriftConfig
from kdflow.drift import (
    SIGNALS,
    Decision,
    DriftCheck,
    WindowData,
    check_window,
    correct_pvalues,
    decide,
    estimate_accuracy,
    feature_tests,
    flip_rate,
    psi,
    psi_binned,
)
from kdflow.generators import mnist1d_arrays
from kdflow.profile import FEATURE_SUMMARIES, ReferenceProfile, build_profile, entropy, summarize_features

C, D = 4, 20
MEANS = 2.4 * np.eye(C, D)  # class means; pairwise distance 3.4 -> Bayes accuracy about 0.9
CFG = DriftConfig()
NOW = datetime(2025, 6, 1, 2, 0, tzinfo=timezone.utc)


def gaussian_world(n: int, seed: int, priors: list[float] | None = None, noise: float = 1.0):
    """x ~ N(MEANS[y], noise^2 I), y ~ priors (uniform by default)."""
    rng = np.random.default_rng(seed)
    y = rng.choice(C, size=n, p=priors)
    return MEANS[y] + noise * rng.standard_normal((n, D)), y


def bayes_logits(x: np.ndarray) -> np.ndarray:
    """log posterior (up to a constant) under uniform priors and unit noise: the calibrated student and teacher."""
    return -0.5 * ((x[:, None, :] - MEANS[None]) ** 2).sum(-1)


def window(n: int, seed: int, **kwargs) -> WindowData:
    """A fully labeled, fully shadow-scored window of the Gaussian world."""
    x, y = gaussian_world(n, seed, **kwargs)
    z = bayes_logits(x)
    return WindowData(probs=softmax(z, axis=1), x=x, labels=y, teacher_logits=z)


@pytest.fixture(scope="module")
def profile() -> ReferenceProfile:
    x, y = gaussian_world(4000, seed=0)
    z = bayes_logits(x)
    return build_profile(softmax(z, axis=1), x, labels=y, teacher_logits=z, n_bins=CFG.psi_bins)


@pytest.fixture(scope="module")
def checks(profile):
    """One clean, one prior-shifted and one too-small check, reused by the decision tests."""
    return {
        "clean": check_window(profile, window(1000, seed=1), CFG),
        "drift": check_window(profile, window(1000, seed=2, priors=[0.7, 0.1, 0.1, 0.1]), CFG),
        "small": check_window(profile, window(50, seed=3), CFG),
    }


# ------------------------------------------------------------------------------------------- exact math
def test_psi_exact_values():
    assert psi([0.2, 0.3, 0.5], [0.2, 0.3, 0.5]) == 0.0
    # (0.25 - 0.5) ln(0.25/0.5) + (0.75 - 0.5) ln(0.75/0.5) = 0.25 ln 2 + 0.25 ln 1.5 = 0.25 ln 3
    assert psi([0.5, 0.5], [0.25, 0.75]) == pytest.approx(0.25 * math.log(3), abs=1e-12)
    assert psi([0.5, 0.5], [25, 75]) == pytest.approx(0.25 * math.log(3), abs=1e-12)  # counts
    # 0.1 ln(0.3/0.2) + 0 + (-0.1) ln(0.4/0.5) = 0.1 ln(1.875)
    assert psi([0.2, 0.3, 0.5], [0.3, 0.3, 0.4]) == pytest.approx(0.1 * math.log(1.875), abs=1e-12)
    # an empty bin is clipped at eps
    assert psi([0.5, 0.5], [1, 0]) == pytest.approx(0.5 * math.log(2) + (1e-4 - 0.5) * math.log(1e-4 / 0.5))


def test_correct_pvalues_hand_computed():
    p = [0.01, 0.04, 0.03, 0.005]  # sorted: 0.005, 0.01, 0.03, 0.04
    np.testing.assert_allclose(correct_pvalues(p, "bonferroni"), [0.04, 0.16, 0.12, 0.02])
    # Holm: 4*0.005=0.02, 3*0.01=0.03, 2*0.03=0.06, max(0.06, 1*0.04)=0.06
    np.testing.assert_allclose(correct_pvalues(p, "holm"), [0.03, 0.06, 0.06, 0.02])
    # BH: 0.005*4/1=0.02, 0.01*4/2=0.02, 0.03*4/3=0.04, 0.04*4/4=0.04 (already monotone)
    np.testing.assert_allclose(correct_pvalues(p, "bh"), [0.02, 0.04, 0.04, 0.02])
    # monotonicity and the cap at 1: Holm's running max, BH's running min from the top
    np.testing.assert_allclose(correct_pvalues([0.04, 0.045], "holm"), [0.08, 0.08])
    np.testing.assert_allclose(correct_pvalues([0.04, 0.045], "bh"), [0.045, 0.045])
    np.testing.assert_allclose(correct_pvalues([0.6, 0.7], "bonferroni"), [1.0, 1.0])
    np.testing.assert_allclose(correct_pvalues([0.6, 0.7], "holm"), [1.0, 1.0])
    np.testing.assert_allclose(correct_pvalues([0.6, 0.7], "bh"), [0.7, 0.7])
    random_p = np.random.default_rng(0).uniform(size=50) ** 3
    np.testing.assert_allclose(correct_pvalues(random_p, "bh"), false_discovery_control(random_p, method="bh"))
    with pytest.raises(ValueError, match="unknown"):
        correct_pvalues(p, "sidak")


def test_entropy_and_summaries():
    assert entropy(np.full((3, 7), 1 / 7)) == pytest.approx([math.log(7)] * 3)
    assert entropy(np.eye(5)) == pytest.approx([0.0] * 5)
    s = summarize_features(np.array([[1.0, 3.0, 2.0], [0.0, 0.0, 4.0]]))
    assert set(s) == set(FEATURE_SUMMARIES)
    np.testing.assert_allclose(s["mean_abs_diff"], [1.5, 2.0])
    np.testing.assert_allclose(s["l2_norm"], [math.sqrt(14), 4.0])
    np.testing.assert_allclose(s["max"], [3.0, 4.0])
    assert estimate_accuracy(np.array([[0.9, 0.1], [0.4, 0.6]])) == pytest.approx(0.75)
    assert flip_rate(np.array([[0.9, 0.1], [0.4, 0.6]]), np.array([[2.0, 1.0], [3.0, 1.0]])) == 0.5


# ------------------------------------------------------------------------------------------- the profile
def test_profile_contents_and_round_trip(profile):
    edges = profile.confidence_bins.edges
    assert edges[0] == -math.inf and edges[-1] == math.inf and np.all(np.diff(edges) > 0)
    assert sum(profile.confidence_bins.props) == pytest.approx(1.0)
    assert len(profile.predicted_class_freq) == C and sum(profile.predicted_class_freq) == pytest.approx(1.0)
    assert set(profile.features) == set(FEATURE_SUMMARIES)
    assert all(len(f.samples) == 2000 for f in profile.features.values())  # subsampled from 4000
    assert 0.85 < profile.accuracy < 0.95 and profile.teacher_entropy_bins is not None
    # calibrated by construction: mean confidence tracks accuracy
    assert profile.mean_confidence == pytest.approx(profile.accuracy, abs=0.015)
    # PSI of the reference against its own bins is exactly 0
    x, _ = gaussian_world(4000, seed=0)
    assert psi_binned(edges, profile.confidence_bins.props, softmax(bayes_logits(x), axis=1).max(1)) == 0.0

    text = json.dumps(profile.to_dict(), allow_nan=False)  # strict JSON: no infinities
    assert ReferenceProfile.from_dict(json.loads(text)) == profile
    again = build_profile(softmax(bayes_logits(x), axis=1), x, n_bins=CFG.psi_bins)
    assert again.features["std"].samples == profile.features["std"].samples  # deterministic subsample
    assert again.accuracy is None and again.teacher_entropy_bins is None


# ------------------------------------------------------------------------------------------- one window
def test_same_distribution_window_does_not_exceed(profile, checks):
    check = checks["clean"]
    assert check.status == "ok", check.reason
    computed = {name: s for name, s in check.signals.items() if name != "deferral_rate"}
    assert all(s.value is not None and s.exceeded is False for s in computed.values()), check.reason
    assert list(check.signals) == list(SIGNALS)
    deferral = check.signals["deferral_rate"]  # no row records who answered: not computed, and why
    assert (deferral.value, deferral.exceeded) == (None, None) and "no row records answered_by" in deferral.detail
    assert check.signals["flip_rate"].value == 0.0  # teacher and student are the same posterior
    assert check.metrics["accuracy"] == pytest.approx(profile.accuracy - check.signals["accuracy"].value)
    assert json.loads(json.dumps(check.to_dict(), allow_nan=False))["status"] == "ok"


def test_prior_shift_exceeds_psi_predicted_class(checks):
    check = checks["drift"]
    signal = check.signals["psi_predicted_class"]
    assert check.status == "drift" and signal.exceeded and signal.value > CFG.psi_threshold
    assert "psi_predicted_class" in check.reason and not check.signals["accuracy"].exceeded


def test_noisy_features_fire_feature_test(profile):
    check = check_window(profile, window(1000, seed=4, noise=1.3), CFG)
    assert check.signals["features"].exceeded
    drifted = {t.name for t in check.features if t.drifted}
    assert {"std", "l2_norm", "mean_abs_diff"} <= drifted, check.signals["features"].detail


def test_mnist1d_noise_fires_feature_test():
    """MNIST-1D with more i.i.d. noise (a generator knob) against a reference of another seed. Only the inputs
    matter to the feature test; a nearest-centroid classifier supplies the reference probabilities."""
    x_ref, y_ref = mnist1d_arrays(1000, seed=12)
    centroids = np.stack([x_ref[y_ref == c].mean(0) for c in range(10)])
    probs = softmax(-((x_ref[:, None, :] - centroids[None]) ** 2).sum(-1), axis=1)
    ref = build_profile(probs, x_ref, y_ref)
    for seed, noise, fires in ((13, 0.02, False), (14, 0.3, True)):  # 0.02 is the generator's default
        x, _ = mnist1d_arrays(500, seed=seed, iid_noise_scale=noise)
        tests = feature_tests(ref, x, CFG.feature_alpha, CFG.correction)
        assert any(t.drifted for t in tests) is fires, [(t.name, t.adjusted_pvalue) for t in tests]


def test_too_few_rows_cannot_decide(checks):
    check = checks["small"]
    assert check.status == "cannot_decide" and "min_rows=200" in check.reason
    assert all(s.value is None for s in check.signals.values())


def test_partial_labels_and_shadow_rows(profile):
    w = window(400, seed=5)
    labels = w.labels.astype(float)
    labels[30:] = np.nan  # 30 labeled rows < min_labeled_rows
    teacher = w.teacher_logits.copy()
    teacher[60:] = np.nan  # 60 shadow rows
    wrong = np.arange(0, 60, 3)
    teacher[wrong] = np.roll(teacher[wrong], 1, axis=1)  # the teacher disagrees on a third of them
    check = check_window(profile, WindowData(w.probs, w.x, labels, teacher), CFG)
    assert check.n_labeled == 30 and check.n_shadow == 60
    assert check.signals["accuracy"].value is None and "min_labeled_rows=50" in check.signals["accuracy"].detail
    flip = check.signals["flip_rate"]
    assert flip.exceeded and flip.value == pytest.approx(flip_rate(w.probs[:60], teacher[:60]))
    mask = np.zeros(400, dtype=bool)
    mask[:20] = True  # an explicit shadow mask with too few rows
    check = check_window(profile, WindowData(w.probs, w.x, w.labels, w.teacher_logits, shadow_mask=mask), CFG)
    assert check.signals["flip_rate"].value is None and check.n_shadow == 20


def test_concept_drift_is_seen_by_labels_not_by_cbpe(profile):
    w = window(1000, seed=6)
    rng = np.random.default_rng(6)
    changed = rng.uniform(size=1000) < 0.2  # P(y|x) changes for 20% of rows
    w.labels[changed] = (w.labels[changed] + 1) % C
    check = check_window(profile, w, CFG)
    assert check.signals["accuracy"].exceeded and check.signals["accuracy"].value > 0.1
    assert not check.signals["estimated_accuracy"].exceeded  # confidence-based estimate is blind to it


def test_late_labels_come_from_the_labeled_window(profile):
    """Labels of today's rows have not arrived: accuracy is computed on the (older) labeled window, every
    other signal on today's rows."""
    today = window(1000, seed=7)
    today.labels[:] = -1
    older = window(1000, seed=8)
    flipped = np.random.default_rng(8).uniform(size=1000) < 0.2
    older.labels[flipped] = (older.labels[flipped] + 1) % C
    alone = check_window(profile, today, CFG)
    assert alone.signals["accuracy"].value is None and alone.n_labeled == 0
    both = check_window(profile, today, CFG, labeled_window=older)
    acc = float((older.probs.argmax(1) == older.labels).mean())
    assert both.signals["accuracy"].value == pytest.approx(profile.accuracy - acc) and both.n_labeled == 1000
    assert both.signals["estimated_accuracy"].value == alone.signals["estimated_accuracy"].value
    assert both.signals["psi_confidence"].value == alone.signals["psi_confidence"].value


# ------------------------------------------------------------------------------------------- decisions
DAY = timedelta(days=1)


def stored(decision: Decision) -> dict:
    """A decision as the flow stores it (decision.json) and hands to the next check."""
    return json.loads(json.dumps(decision.to_dict()))


def test_decide_needs_consecutive_windows(checks):
    drift, clean, small = checks["drift"], checks["clean"], checks["small"]
    first = decide(None, drift, CFG, None, NOW)
    assert first.action == "none" and first.consecutive["psi_predicted_class"] == 1 and "1 of 2" in first.reason
    assert first.since["psi_predicted_class"] == (NOW - DAY).isoformat()  # the start of this check's window
    assert first.episode_start is None  # nothing triggered yet
    assert decide(decide(None, clean, CFG, None, NOW), drift, CFG, None, NOW + DAY).action == "none"
    broken = decide(decide(first, small, CFG, None, NOW + DAY), drift, CFG, None, NOW + 2 * DAY)
    assert broken.action == "none" and broken.consecutive["psi_predicted_class"] == 1  # cannot_decide broke it

    second = decide(stored(first), drift, CFG, None, NOW + DAY)
    assert second.action == "retrain" and second.triggered == ["psi_predicted_class"]
    assert second.consecutive["psi_predicted_class"] == 2 and "psi_predicted_class" in second.reason
    assert f"{CFG.psi_threshold:g}" in second.reason
    assert second.episode_start == NOW - DAY  # where the streak began, one window before this check's
    third = decide(stored(second), drift, CFG, None, NOW + 2 * DAY)
    assert third.consecutive["psi_predicted_class"] == 3 and third.episode_start == NOW - DAY
    assert decide(None, drift, DriftConfig(consecutive_windows=1), None, NOW).action == "retrain"
    assert decide(first, drift, DriftConfig(trigger_on=["accuracy", "flip_rate"]), None, NOW + DAY).action == "none"
    assert decide(first, small, CFG, None, NOW + DAY).action == "cannot_decide"
    # A decision stored before streak starts were recorded still carries its counts; the start is then this window.
    legacy = {k: v for k, v in stored(first).items() if k != "since"}
    carried = decide(legacy, drift, CFG, None, NOW + DAY)
    assert carried.action == "retrain" and carried.episode_start == NOW


def test_decide_cooldown_recalibrates_instead(checks):
    drift = checks["drift"]
    first = decide(None, drift, CFG, None, NOW - DAY)
    recent = NOW - timedelta(days=3)
    held = decide(stored(first), drift, CFG, recent, NOW)
    until = recent + timedelta(days=CFG.cooldown_days)
    assert held.action == "recalibrate" and held.triggered == ["psi_predicted_class"]
    assert "cool-down" in held.reason and until.isoformat() in held.reason
    assert held.cooldown_until == until.isoformat() and held.episode_start == NOW - 2 * DAY
    quiet = decide(stored(first), drift, DriftConfig(recalibrate_during_cooldown=False), recent, NOW)
    assert quiet.action == "none" and quiet.triggered == ["psi_predicted_class"] and "cool-down" in quiet.reason
    assert decide(stored(first), drift, CFG, NOW - timedelta(days=8), NOW).action == "retrain"
    assert Decision.from_dict(stored(held)) == held


def test_drift_check_round_trip(checks):
    for check in checks.values():
        restored = DriftCheck.from_dict(json.loads(json.dumps(check.to_dict(), allow_nan=False)))
        assert restored == check
