"""Deep mutual learning: the two losses against their closed form, which network each gradient reaches, and the
co-training loop on separable toy data."""

import math

import numpy as np
import pytest
import torch

from kdflow.config import TrainConfig
from kdflow.data import Dataset
from kdflow.models import build_model
from kdflow.mutual import mutual_losses, train_mutual
from kdflow.stream import ArraySource

# One row, two classes, label 0: p_s = (1/2, 1/2), p_t = (3/4, 1/4).
ZS = torch.tensor([[0.0, 0.0]], dtype=torch.float64)
ZT = torch.tensor([[math.log(3.0), 0.0]], dtype=torch.float64)
Y = torch.tensor([0])
LN2, LN3 = math.log(2.0), math.log(3.0)


@pytest.mark.parametrize("beta", [0.0, 0.1, 0.5, 1.0])
def test_each_loss_equals_its_closed_form(beta):
    loss = mutual_losses(ZS, ZT, Y, beta)
    # CE(s) = -ln 1/2; CE(t) = -ln 3/4; KL(p_t||p_s) = 3/4 ln(3/2) + 1/4 ln(1/2) = 3/4 ln 3 - ln 2;
    # KL(p_s||p_t) = 1/2 ln(2/3) + 1/2 ln 2 = ln 2 - 1/2 ln 3.
    ce_s, ce_t = LN2, math.log(4.0 / 3.0)
    kl_ts, kl_st = 0.75 * LN3 - LN2, LN2 - 0.5 * LN3
    assert float(loss.student_ce) == pytest.approx(ce_s, abs=1e-12)
    assert float(loss.teacher_ce) == pytest.approx(ce_t, abs=1e-12)
    assert float(loss.student_kl) == pytest.approx(kl_ts, abs=1e-12)
    assert float(loss.teacher_kl) == pytest.approx(kl_st, abs=1e-12)
    assert float(loss.student) == pytest.approx(ce_s + beta * kl_ts, abs=1e-12)
    assert float(loss.teacher) == pytest.approx(ce_t + beta * kl_st, abs=1e-12)
    assert float(loss.total) == pytest.approx(ce_s + ce_t + beta * (kl_ts + kl_st), abs=1e-12)


def test_each_network_gets_only_its_own_gradient():
    """dL/dz_s = (p_s - y) + beta (p_s - p_t) and dL/dz_t = (p_t - y) + beta (p_t - p_s): each KL term reaches only
    the network it trains. The seed's single non-detached KL(p_t || p_s) would give the teacher p_t,j (r_j - E[r])
    instead, a different value, which the last assertion shows is not what the teacher receives."""
    beta = 0.3
    zs, zt = ZS.clone().requires_grad_(), ZT.clone().requires_grad_()
    mutual_losses(zs, zt, Y, beta).total.backward()
    p_s, p_t, y = torch.tensor([0.5, 0.5]), torch.tensor([0.75, 0.25]), torch.tensor([1.0, 0.0])
    assert torch.allclose(zs.grad[0].float(), (p_s - y) + beta * (p_s - p_t), atol=1e-12)
    assert torch.allclose(zt.grad[0].float(), (p_t - y) + beta * (p_t - p_s), atol=1e-12)
    r = torch.log(p_t / p_s)
    combined = (p_t - y) + beta * p_t * (r - (p_t * r).sum())
    assert not torch.allclose(zt.grad[0].float(), combined, atol=1e-3)


def test_unlabeled_rows_enter_the_kl_terms_only():
    zs = torch.tensor([[0.0, 0.0], [2.0, -1.0]], dtype=torch.float64)
    zt = torch.tensor([[math.log(3.0), 0.0], [0.0, 1.0]], dtype=torch.float64)
    both = mutual_losses(zs, zt, torch.tensor([0, -1]), 0.5)
    first = mutual_losses(zs[:1], zt[:1], torch.tensor([0]), 0.5)
    assert float(both.student_ce) == pytest.approx(float(first.student_ce), abs=1e-12)
    assert float(both.student_kl) != pytest.approx(float(first.student_kl))  # the unlabeled row counts there
    none = mutual_losses(zs, zt, torch.tensor([-1, -1]), 0.5)
    assert float(none.student_ce) == 0.0 and float(none.teacher_ce) == 0.0


def _toy(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    x = rng.normal(size=(n, 6)).astype(np.float32) + 2.5 * np.eye(3, 6, dtype=np.float32)[y]
    return x, y


def test_co_training_trains_both_at_their_own_learning_rates():
    x, y = _toy(240, 0)
    xv, yv = _toy(120, 1)
    val = Dataset("val", "-", np.arange(len(yv)), xv, yv)
    torch.manual_seed(0)  # the initial weights: independent of the tests that ran before
    student = build_model("mlp", {"width": 8, "depth": 1}, (6,), 3)
    teacher = build_model("mlp", {"width": 32, "depth": 2}, (6,), 3)
    cfg = TrainConfig(epochs=6, batch_size=32, lr=0.01, early_stopping_patience=None, schedule={"warmup_steps": 0})
    seen: list[str] = []
    result = train_mutual(student, teacher, ArraySource(x, y), val, cfg, 0.5, 0.1, lambda who, m: seen.append(who))
    assert seen == ["student", "teacher"] * 6 and result.student.steps == result.teacher.steps == 6 * 8
    for s, t in zip(result.student.history, result.teacher.history):
        assert t["lr"] == pytest.approx(0.1 * s["lr"], rel=1e-9)  # teacher_lr_ratio applied through the schedule
        assert s["val_agreement"] == t["val_agreement"]
    assert result.student.best_val_accuracy > 0.7 and result.teacher.best_val_accuracy > 0.6  # chance: 1/3
    assert not student.training and not teacher.training
