"""Temperature scaling, calibration metrics and the maps beyond one temperature against known answers,
torchmetrics and scikit-learn; cross-fitted selection on constructed miscalibration."""

import numpy as np
import pytest
import torch
from torch import nn
from torchmetrics.classification import MulticlassCalibrationError

from kdflow.calibration import (
    IsotonicMap,
    VectorScaling,
    bin_gaps,
    calibration_metrics,
    ece_improvement_confidence,
    expected_calibration_error,
    fit_isotonic,
    fit_temperature,
    fit_vector_scaling,
    nll,
    select_map,
    spread_knots,
    weighted_ece,
)
from kdflow.config import CalibrationConfig
from kdflow.data import Dataset
from kdflow.evaluation import calibrate_student


def synthetic_overconfident(n: int, c: int, true_t: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Labels drawn from softmax(z); the model reports z * true_t, i.e. over-confident by a factor true_t."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, c, generator=g, dtype=torch.float64) * 2.0
    y = torch.multinomial(torch.softmax(z, 1), 1, generator=g).squeeze(1)
    return z * true_t, y


@pytest.mark.parametrize("true_t", [0.7, 1.8, 3.0])
def test_fit_temperature_recovers_known_temperature(true_t):
    logits, labels = synthetic_overconfident(20_000, 10, true_t, seed=1)
    fitted = fit_temperature(logits, labels)
    assert fitted == pytest.approx(true_t, rel=0.05)
    assert nll(logits, labels, fitted) <= nll(logits, labels, 1.0) + 1e-12


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ece_matches_torchmetrics(seed):
    logits, labels = synthetic_overconfident(5_000, 7, 2.0, seed)
    probs = torch.softmax(logits, 1)
    ours = expected_calibration_error(probs, labels, n_bins=15)
    ref = MulticlassCalibrationError(num_classes=7, n_bins=15, norm="l1")(probs.float(), labels)
    assert ours == pytest.approx(float(ref), abs=1e-6)


def test_metrics_on_hand_computed_example():
    # Two rows: confidences 0.9 (correct) and 0.6 (wrong) fall in different bins.
    probs_logits = torch.log(torch.tensor([[0.9, 0.1], [0.6, 0.4]], dtype=torch.float64))
    labels = torch.tensor([0, 1])
    m = calibration_metrics(probs_logits, labels, 1.0, n_bins=10)
    assert m.ece == pytest.approx(0.5 * 0.1 + 0.5 * 0.6)
    assert m.mce == pytest.approx(0.6)
    assert m.accuracy == pytest.approx(0.5)
    assert m.nll == pytest.approx(-(np.log(0.9) + np.log(0.4)) / 2)
    assert m.brier == pytest.approx(((0.1**2 + 0.1**2) + (0.6**2 + 0.6**2)) / 2)


def test_scaling_reduces_ece_of_overconfident_model():
    logits, labels = synthetic_overconfident(10_000, 10, 2.5, seed=3)
    t = fit_temperature(logits, labels)
    assert calibration_metrics(logits, labels, t).ece < 0.5 * calibration_metrics(logits, labels, 1.0).ece


def test_fit_temperature_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="need logits"):
        fit_temperature(np.zeros((3, 2)), np.zeros(4, dtype=int))


def test_weighted_ece_is_the_ece_of_repeated_rows():
    logits, labels = synthetic_overconfident(3_000, 5, 2.0, seed=4)
    probs, y = torch.softmax(logits, 1).numpy(), labels.numpy()
    bins, gaps = bin_gaps(probs, y, 15)
    assert weighted_ece(bins, gaps, np.ones(len(y)), 15) == pytest.approx(expected_calibration_error(probs, y, 15))
    w = np.random.default_rng(0).integers(0, 3, len(y))
    repeated = np.repeat(np.arange(len(y)), w)
    assert weighted_ece(bins, gaps, w, 15) == pytest.approx(
        expected_calibration_error(probs[repeated], y[repeated], 15)
    )
    both = weighted_ece(bins, gaps, np.stack([np.ones(len(y)), w]), 15)
    assert both.shape == (2,) and both[1] == pytest.approx(weighted_ece(bins, gaps, w, 15))


def test_ece_improvement_confidence_separates_a_real_gain_from_noise():
    logits, labels = synthetic_overconfident(4_000, 10, 2.0, seed=5)  # calibrated at T = 2
    y = labels.numpy()
    at = {t: torch.softmax(logits / t, 1).numpy() for t in (1.0, 2.0, 2.04)}
    assert ece_improvement_confidence(at[1.0], at[2.0], y) == 1.0  # overconfident -> calibrated: every resample
    assert ece_improvement_confidence(at[2.0], at[1.0], y) == 0.0
    assert ece_improvement_confidence(at[2.0], at[2.0], y) == 0.0  # "lower" is strict
    assert 0.05 < ece_improvement_confidence(at[2.04], at[2.0], y) < 0.95  # 2% apart: not distinguishable


# ------------------------------------------------------------------------------------------------ maps
def test_vector_scaling_is_per_class_scale_and_bias_on_logits():
    vs = VectorScaling(torch.tensor([2.0, 1.0]), torch.tensor([0.0, 1.0]))
    out = vs(torch.tensor([[1.0, 1.0], [0.0, 0.0]]))
    expected = torch.softmax(torch.tensor([[2.0, 2.0], [0.0, 1.0]]), dim=1)  # [0.5, 0.5] and softmax([0, 1])
    torch.testing.assert_close(out, expected)
    assert out[0].tolist() == [0.5, 0.5]


def test_isotonic_map_interpolates_its_knots_then_normalises():
    iso = IsotonicMap(
        torch.tensor([[0.0, 0.5, 1.0], [0.2, 0.6, 0.6]]), torch.tensor([[0.0, 0.2, 1.0], [0.1, 0.9, 0.9]])
    )
    z = torch.tensor([[np.log(3.0), 0.0], [0.0, np.log(9.0)]], dtype=torch.float64)  # p = [.75, .25], [.1, .9]
    scores = iso.scores(torch.softmax(z, dim=1))
    # class 0: 0.2 + (0.75 - 0.5) * 1.6 = 0.6 and 0.1 * 0.4 = 0.04; class 1: 0.1 + (0.25 - 0.2) * 2 = 0.2, and
    # 0.9 beyond the last knot (0.6) stays 0.9
    torch.testing.assert_close(scores, torch.tensor([[0.6, 0.2], [0.04, 0.9]], dtype=torch.float64))
    torch.testing.assert_close(iso(z), torch.tensor([[0.75, 0.25], [0.04 / 0.94, 0.9 / 0.94]], dtype=torch.float64))


def test_fit_isotonic_reproduces_scikit_learn_per_class():
    from sklearn.isotonic import IsotonicRegression

    z, y = synthetic_overconfident(3000, 4, 2.0, seed=3)
    p = torch.softmax(z, dim=1).numpy()
    iso = fit_isotonic(z.numpy(), y.numpy(), min_gap=0.0)
    scores = iso.scores(torch.from_numpy(p)).numpy()
    for k in range(4):
        ref = IsotonicRegression(y_min=0, y_max=1, out_of_bounds="clip").fit(p[:, k], (y.numpy() == k) * 1.0)
        np.testing.assert_allclose(scores[:, k], ref.predict(p[:, k]), atol=1e-9)


def test_isotonic_knots_are_spread_so_the_slope_is_bounded():
    x, y = np.array([0.0, 0.001, 0.3, 0.305, 0.9, 0.91]), np.array([0.0, 0.5, 0.5, 0.6, 0.6, 1.0])
    kx, ky = spread_knots(x, y, 0.02)
    np.testing.assert_array_equal(kx, [0.0, 0.3, 0.91])  # 0.001 and 0.305 too close; the last replaces 0.9
    np.testing.assert_array_equal(ky, [0.0, 0.5, 1.0])
    z, labels = synthetic_overconfident(3000, 4, 2.0, seed=3)
    iso = fit_isotonic(z.numpy(), labels.numpy())
    width = iso.knots_x[:, 1:] - iso.knots_x[:, :-1]
    slope = (iso.knots_y[:, 1:] - iso.knots_y[:, :-1])[width > 0] / width[width > 0]
    assert float(slope.max()) <= 1 / 0.02 + 1e-9


def test_fit_vector_scaling_recovers_per_class_scales():
    g = torch.Generator().manual_seed(4)
    z = torch.randn(40_000, 3, generator=g, dtype=torch.float64) * 2.0
    w_true, b_true = (
        torch.tensor([2.5, 0.6, 1.0], dtype=torch.float64),
        torch.tensor([0.5, 0.0, -0.5], dtype=torch.float64),
    )
    y = torch.multinomial(torch.softmax(z * w_true + b_true, 1), 1, generator=g).squeeze(1)
    vs = fit_vector_scaling(z.numpy(), y.numpy())
    # softmax is invariant to a common shift of b: compare bias differences
    np.testing.assert_allclose(vs.weight.numpy(), w_true.numpy(), atol=0.1)
    np.testing.assert_allclose(np.diff(vs.bias.numpy()), np.diff(b_true.numpy()), atol=0.1)


def _step_miscalibrated(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Two classes, logits ``[0, s]``, ``s`` uniform on [-4, 4]; P(y = 1) is 0.2 for ``s < 0`` and 0.8 above:
    a step no temperature or per-class logistic rescaling of ``s`` can fit, but a monotone map can."""
    rng = np.random.default_rng(seed)
    s = rng.uniform(-4, 4, n)
    y = (rng.random(n) < np.where(s < 0, 0.2, 0.8)).astype(np.int64)
    return np.stack([np.zeros(n), s], axis=1), y


def _per_class_miscalibrated(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Three classes whose logits are off by different scales and biases (one temperature cannot fix)."""
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, 3)) * 2.0
    true = z * np.array([3.0, 0.4, 1.0]) + np.array([1.0, 0.0, -1.0])
    p = np.exp(true - true.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    y = (rng.random(n)[:, None] > np.cumsum(p, axis=1)).sum(1)
    return z, y


@pytest.mark.parametrize(
    "make,expected",
    [(_step_miscalibrated, "isotonic"), (_per_class_miscalibrated, "vector"), (synthetic_overconfident, "temperature")],
)
def test_cross_fitted_selection_picks_the_map_that_fixes_the_miscalibration(make, expected):
    if make is synthetic_overconfident:  # one temperature is the whole truth here: nothing beats it
        z, y = (t.numpy() for t in make(4000, 5, 2.0, seed=7))
    else:
        z, y = make(4000, seed=7)
    choice = select_map(z, y, ["vector", "isotonic"], (0.05, 20.0, 200), folds=5, select_by="ece", n_bins=15)
    assert choice.kind == expected, choice.reason
    assert set(choice.out_of_fold) == {"temperature", "vector", "isotonic"}
    if expected != "temperature":
        assert choice.out_of_fold[expected]["ece"] < choice.out_of_fold["temperature"]["ece"]


def test_calibrate_student_serves_the_chosen_map_only_above_the_configured_ece():
    z, y = _step_miscalibrated(4000, seed=7)
    val = Dataset(name="val", uri="mem", ids=np.arange(len(y)), x=z.astype(np.float32), y=y)
    off = calibrate_student(nn.Identity(), val, CalibrationConfig(max_ece_after_temperature=None))
    assert off.map_kind == "temperature" and off.served.calibration_map is None
    cal = calibrate_student(nn.Identity(), val, CalibrationConfig(max_ece_after_temperature=0.01))
    assert cal.map_kind == "isotonic" and "exceeds 0.01" in cal.map_reason and "isotonic" in cal.map_reason
    assert cal.after.ece < cal.after_temperature.ece and cal.as_dict()["map"] == "isotonic"
    assert set(cal.as_dict()["candidates"]) == {"temperature", "vector", "isotonic"}
    with torch.no_grad():
        served = cal.served(torch.from_numpy(val.x)).numpy()
    np.testing.assert_allclose(served, cal.val_probabilities(), atol=1e-7)
    lenient = calibrate_student(nn.Identity(), val, CalibrationConfig(max_ece_after_temperature=0.5))
    assert lenient.map_kind == "temperature" and "within 0.5" in lenient.map_reason
