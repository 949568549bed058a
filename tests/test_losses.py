"""The KD loss against its closed form, its gradient scaling, and its limits."""

import math

import pytest
import torch
import torch.nn.functional as F

from kdflow.losses import dist_term, distillation_loss, dkd_term, kd_loss, soft_kd_term

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


# ---- DKD (Zhao et al. 2022) and DIST (Huang et al. 2022), against per-row closed forms


def _kl(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    return (p * (p.log() - q.log())).sum()


def test_dkd_matches_its_closed_form_and_decomposes_classic_kd():
    torch.manual_seed(0)
    zs, zt = torch.randn(6, 5, dtype=torch.float64), torch.randn(6, 5, dtype=torch.float64)
    y, t = torch.tensor([0, 4, 2, 2, 1, 3]), 2.0
    ps, pt = torch.softmax(zs / t, 1), torch.softmax(zt / t, 1)
    tckd, nckd = [], []
    for i, c in enumerate(y.tolist()):
        rest = [k for k in range(5) if k != c]
        bt, bs = torch.stack([pt[i, c], 1 - pt[i, c]]), torch.stack([ps[i, c], 1 - ps[i, c]])
        qt, qs = pt[i, rest] / pt[i, rest].sum(), ps[i, rest] / ps[i, rest].sum()
        tckd.append(_kl(bt, bs))
        nckd.append(_kl(qt, qs))
        # KD = TCKD + (1 - p_t^T) * NCKD, the paper's Eq. (1)
        assert float(_kl(pt[i], ps[i])) == pytest.approx(float(tckd[-1] + (1 - pt[i, c]) * nckd[-1]), rel=1e-12)
    expected = t * t * (1.0 * torch.stack(tckd).mean() + 8.0 * torch.stack(nckd).mean())
    assert float(dkd_term(zs, zt, y, t)) == pytest.approx(float(expected), rel=1e-12)
    assert float(dkd_term(zs, zt, y, t, alpha=0.5, beta=2.0)) == pytest.approx(
        float(t * t * (0.5 * torch.stack(tckd).mean() + 2.0 * torch.stack(nckd).mean())), rel=1e-12
    )
    assert float(dkd_term(zt, zt, y, t)) == pytest.approx(0.0, abs=1e-12)


def test_dist_matches_pearson_closed_form_and_is_shift_invariant():
    zs = torch.tensor([[1.0, 0.0, -1.0], [0.5, 0.2, 0.1], [-0.3, 0.8, 0.0]], dtype=torch.float64)
    zt = torch.tensor([[2.0, 1.0, 0.0], [0.0, 0.4, 0.3], [0.1, -0.2, 0.6]], dtype=torch.float64)
    t = 1.0
    ps, pt = torch.softmax(zs / t, 1), torch.softmax(zt / t, 1)

    def pearson(a, b):
        a, b = a - a.mean(), b - b.mean()
        return (a * b).sum() / (a.norm() * b.norm())

    inter = sum(1 - pearson(ps[i], pt[i]) for i in range(3)) / 3
    intra = sum(1 - pearson(ps[:, j], pt[:, j]) for j in range(3)) / 3
    assert float(dist_term(zs, zt, t)) == pytest.approx(float(inter + intra), rel=1e-6)
    assert float(dist_term(zs, zt, t, beta=2.0, gamma=0.0)) == pytest.approx(float(2 * inter), rel=1e-6)
    assert float(dist_term(zs + 3.0, zt, t)) == pytest.approx(float(dist_term(zs, zt, t)), rel=1e-9)
    assert float(dist_term(zt, zt, t)) == pytest.approx(0.0, abs=1e-6)


def test_distillation_loss_kinds_share_the_hard_term_and_alpha():
    labels = torch.tensor([1, -1])
    for kind in ("kd", "dkd", "dist"):
        total, soft, hard = distillation_loss(kind, ZS, ZT, labels, 2.0, 0.3)
        assert float(hard) == pytest.approx(closed_form_ce(ZS[:1], labels[:1]), rel=1e-6)
        assert float(total) == pytest.approx(0.3 * float(soft) + 0.7 * float(hard), rel=1e-6)
    # unlabeled rows take the teacher's argmax as DKD's target class
    _, soft, _ = distillation_loss("dkd", ZS, ZT, labels, 2.0, 0.3)
    targets = torch.tensor([1, int(ZT[1].argmax())])
    assert float(soft) == pytest.approx(float(dkd_term(ZS, ZT, targets, 2.0)), rel=1e-9)
    with pytest.raises(ValueError, match="unknown distillation loss"):
        distillation_loss("fitnet", ZS, ZT, labels, 2.0, 0.3)


@pytest.mark.parametrize("kind", ["kd", "dkd", "dist"])
def test_every_loss_kind_trains_a_student_from_teacher_logits(kind):
    """kdflow.train.fit with train.loss = kind learns separable data from a teacher's logits alone (labels all
    unlabeled: the soft term is the only signal)."""
    import numpy as np

    from kdflow.config import TrainConfig
    from kdflow.models import build_model
    from kdflow.stream import ArraySource
    from kdflow.train import fit, seed_everything

    rng = np.random.default_rng(0)
    centers = rng.normal(size=(3, 8)) * 3
    y = rng.integers(0, 3, size=300)
    x = (centers[y] + rng.normal(size=(300, 8))).astype(np.float32)
    teacher_logits = 4.0 * np.eye(3, dtype=np.float32)[y]  # a confident, correct teacher
    cfg = TrainConfig(loss=kind, epochs=8, batch_size=32, lr=0.01, early_stopping_patience=None, temperature=2.0,
                      alpha=1.0, schedule={"warmup_steps": 5})  # fmt: skip
    seed_everything(0)
    model = build_model("mlp", {"width": 16, "depth": 1}, (8,), 3)
    result = fit(model, ArraySource(x[:240], np.full(240, -1), teacher_logits[:240]), x[240:], y[240:], cfg,
                 progress=False)  # fmt: skip
    assert result.best_val_accuracy >= 0.9
