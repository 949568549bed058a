"""Per-row weighted distillation losses: weight k equals the row repeated k times; weight 1 is the plain loss."""

from __future__ import annotations

import math

import pytest
import torch

from kdflow.losses import distillation_loss, dkd_term, kd_loss, soft_kd_term
from kdflow.weighted_losses import dkd_rows, kd_rows, weighted_distillation_loss

T, ALPHA = 3.0, 0.6


def _batch(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    zs = torch.randn(6, 4, generator=g, dtype=torch.float64)
    zt = torch.randn(6, 4, generator=g, dtype=torch.float64) * 2
    y = torch.tensor([0, -1, 2, -1, 3, 1])  # unlabeled transfer rows are -1
    return zs, zt, y


def test_rows_average_to_the_batch_terms():
    zs, zt, y = _batch()
    assert kd_rows(zs, zt, T).mean().item() == pytest.approx(soft_kd_term(zs, zt, T).item(), abs=1e-12)
    targets = torch.where(y >= 0, y, zt.argmax(1))
    rows = dkd_rows(zs, zt, targets, T, 1.0, 8.0)
    assert rows.mean().item() == pytest.approx(dkd_term(zs, zt, targets, T, 1.0, 8.0).item(), abs=1e-10)


def test_kd_row_of_identical_distributions_is_zero_and_known_value_otherwise():
    zs = torch.tensor([[0.0, 0.0], [0.0, 0.0]], dtype=torch.float64)
    zt = torch.tensor([[0.0, 0.0], [0.0, math.log(3.0)]], dtype=torch.float64)
    # row 2 at T=1: KL((1/4, 3/4) || (1/2, 1/2)) = 1/4 ln(1/2) + 3/4 ln(3/2)
    expected = 0.25 * math.log(0.5) + 0.75 * math.log(1.5)
    assert kd_rows(zs, zt, 1.0).tolist() == pytest.approx([0.0, expected], abs=1e-12)


@pytest.mark.parametrize("kind", ["kd", "dkd"])
def test_unit_weights_are_the_plain_loss(kind):
    zs, zt, y = _batch(1)
    got = weighted_distillation_loss(kind, zs, zt, y, torch.ones(6), T, ALPHA)
    want = distillation_loss(kind, zs, zt, y, T, ALPHA)
    assert [g.item() for g in got] == pytest.approx([w.item() for w in want], abs=1e-10)


@pytest.mark.parametrize("kind", ["kd", "dkd"])
def test_whole_weights_equal_repeating_the_rows(kind):
    zs, zt, y = _batch(2)
    w = torch.tensor([1.0, 3.0, 1.0, 2.0, 1.0, 4.0])
    rep = torch.repeat_interleave(torch.arange(6), w.long())
    got = weighted_distillation_loss(kind, zs, zt, y, w, T, ALPHA)
    want = distillation_loss(kind, zs[rep], zt[rep], y[rep], T, ALPHA)
    assert [g.item() for g in got] == pytest.approx([v.item() for v in want], abs=1e-10)
    # and differs from the unweighted loss (the weights matter)
    assert got[0].item() != pytest.approx(distillation_loss(kind, zs, zt, y, T, ALPHA)[0].item(), abs=1e-6)


def test_hard_term_is_over_labeled_rows_only_and_zero_without_any():
    zs, zt, _ = _batch(3)
    none = torch.full((6,), -1)
    total, soft, hard = weighted_distillation_loss("kd", zs, zt, none, torch.full((6,), 2.0), T, ALPHA)
    assert hard.item() == 0.0 and total.item() == pytest.approx(ALPHA * soft.item(), abs=1e-12)
    assert kd_loss(zs, zt, none, T, ALPHA)[0].item() == pytest.approx(total.item(), abs=1e-12)


def test_dist_has_no_per_row_form():
    zs, zt, y = _batch()
    with pytest.raises(ValueError, match="per-row weights need a per-row loss: kd or dkd, got 'dist'"):
        weighted_distillation_loss("dist", zs, zt, y, torch.ones(6), T, ALPHA)


def test_gradients_flow_to_the_student_logits():
    zs, zt, y = _batch(4)
    zs.requires_grad_(True)
    weighted_distillation_loss("kd", zs, zt, y, torch.tensor([1.0, 2, 1, 1, 3, 1]), T, ALPHA)[0].backward()
    assert zs.grad is not None and torch.isfinite(zs.grad).all() and zs.grad.abs().sum() > 0
