"""Temperature scaling and calibration metrics against known answers and torchmetrics."""

import numpy as np
import pytest
import torch
from torchmetrics.classification import MulticlassCalibrationError

from kdflow.calibration import (
    bin_gaps,
    calibration_metrics,
    ece_improvement_confidence,
    expected_calibration_error,
    fit_temperature,
    nll,
    weighted_ece,
)


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
