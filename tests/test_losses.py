"""The KD loss against its closed form, its gradient scaling, and its limits."""

import math

import pytest
import torch
import torch.nn.functional as F

from kdflow.losses import kd_loss, soft_kd_term

ZS = torch.tensor([[2.0, 0.5, -1.0], [0.0, 1.0, 3.0]], dtype=torch.float64)
ZT = torch.tensor([[3.0, 0.0, -2.0], [-1.0, 2.0, 1.0]], dtype=torch.float64)
Y = torch.tensor([0, 2])


def closed_form_soft(zs: torch.Tensor, zt: torch.Tensor, t: float) -> float:
    """T^2 * mean_rows sum_k p_k (log p_k - log q_k), p = softmax(zt/T), q = softmax(zs/T), by hand."""
    total = 0.0
    for s_row, t_row in zip(zs.tolist(), zt.tolist()):
        ps = [math.exp(v / t) for v in t_row]
        qs = [math.exp(v / t) for v in s_row]
        p = [v / sum(ps) for v in ps]
        q = [v / sum(qs) for v in qs]
        total += sum(pk * (math.log(pk) - math.log(qk)) for pk, qk in zip(p, q))
    return t * t * total / len(zs)


def closed_form_ce(zs: torch.Tensor, y: torch.Tensor) -> float:
    rows = zs.tolist()
    return -sum(r[c] - math.log(sum(math.exp(v) for v in r)) for r, c in zip(rows, y.tolist())) / len(rows)


@pytest.mark.parametrize("t", [1.0, 2.0, 4.0, 20.0])
def test_soft_term_equals_closed_form(t):
    assert float(soft_kd_term(ZS, ZT, t)) == pytest.approx(closed_form_soft(ZS, ZT, t), rel=1e-6)


def test_total_is_alpha_weighted_sum():
    total, soft, hard = kd_loss(ZS, ZT, Y, temperature=4.0, alpha=0.7)
    assert float(soft) == pytest.approx(closed_form_soft(ZS, ZT, 4.0), rel=1e-6)
    assert float(hard) == pytest.approx(closed_form_ce(ZS, Y), rel=1e-6)
    assert float(total) == pytest.approx(0.7 * closed_form_soft(ZS, ZT, 4.0) + 0.3 * closed_form_ce(ZS, Y), rel=1e-6)


def test_alpha_limits_reduce_to_pure_losses():
    total1, soft1, _ = kd_loss(ZS, ZT, Y, temperature=3.0, alpha=1.0)
    assert float(total1) == pytest.approx(float(soft1), rel=1e-7)
    total0, _, hard0 = kd_loss(ZS, ZT, Y, temperature=3.0, alpha=0.0)
    assert float(total0) == pytest.approx(float(F.cross_entropy(ZS, Y)), rel=1e-7)
    assert float(hard0) == pytest.approx(closed_form_ce(ZS, Y), rel=1e-6)


def test_soft_gradient_is_t_squared_compensated():
    """d soft / d z_s = T (softmax(z_s/T) - softmax(z_t/T)) / B; for large T this tends to (z_s - z_t)/(C B)
    (centred logits), so its magnitude does NOT shrink as T grows."""
    zs0 = torch.tensor([[1.0, -0.5, 0.2, 0.0]], dtype=torch.float64)
    zt = torch.tensor([[0.3, 0.4, -0.6, 0.1]], dtype=torch.float64)
    norms = {}
    for t in (1.0, 4.0, 20.0, 100.0):
        zs = zs0.clone().requires_grad_(True)
        soft_kd_term(zs, zt, t).backward()
        expected = t * (torch.softmax(zs0 / t, 1) - torch.softmax(zt / t, 1))
        assert torch.allclose(zs.grad, expected, atol=1e-12)
        norms[t] = float(zs.grad.norm())
        # Without the T^2 factor the gradient would be smaller by T^2.
        zs2 = zs0.clone().requires_grad_(True)
        (soft_kd_term(zs2, zt, t) / (t * t)).backward()
        assert float(zs2.grad.norm()) == pytest.approx(norms[t] / (t * t), rel=1e-5)
    limit = float(((zs0 - zs0.mean()) - (zt - zt.mean())).norm() / zs0.shape[1])
    assert norms[100.0] == pytest.approx(limit, rel=0.02)
    assert norms[20.0] > 0.9 * norms[4.0]


def test_unlabeled_rows_only_enter_the_soft_term():
    labels = torch.tensor([-1, 2])
    _, soft, hard = kd_loss(ZS, ZT, labels, temperature=2.0, alpha=0.5)
    assert float(hard) == pytest.approx(closed_form_ce(ZS[1:], labels[1:]), rel=1e-6)
    assert float(soft) == pytest.approx(closed_form_soft(ZS, ZT, 2.0), rel=1e-6)
    _, _, hard_none = kd_loss(ZS, ZT, torch.tensor([-1, -1]), temperature=2.0, alpha=0.5)
    assert float(hard_none) == 0.0


def test_identical_logits_give_zero_soft_loss():
    assert float(soft_kd_term(ZT, ZT, 4.0)) == pytest.approx(0.0, abs=1e-7)
