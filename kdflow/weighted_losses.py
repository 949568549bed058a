"""Per-row weighted distillation losses, for hard examples weighted instead of repeated (:mod:`kdflow.hard_examples`).

Every term is a weighted mean over the batch: ``sum_i w_i l_i / sum_i w_i`` (the hard term over labeled rows
only). With whole-number weights this equals the unweighted loss (:mod:`kdflow.losses`) on the batch in which row
``i`` appears ``w_i`` times, so weighting by ``k`` and repeating ``k`` times optimise the same objective in
expectation; with every ``w_i = 1`` it is the unweighted loss. DIST (Huang et al. 2022) compares whole batches (its
intra-class relation spans the rows) and has no per-row form: it is refused here."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from kdflow.losses import _targets, dkd_rows


def _weighted_mean(values: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """``sum_i w_i v_i / sum_i w_i``; 0 when the weights sum to 0 (no row counts)."""
    total = weights.sum()
    return torch.where(total > 0, (weights * values).sum() / total.clamp(min=1e-12), values.new_zeros(()))


def kd_rows(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Per row: ``T^2 * KL(softmax(z_t/T) || softmax(z_s/T))`` (Hinton et al. 2015), shape ``(B,)``; their mean is
    :func:`kdflow.losses.soft_kd_term`."""
    t = float(temperature)
    log_p_student = F.log_softmax(student_logits / t, dim=-1)
    log_p_teacher = F.log_softmax(teacher_logits.to(student_logits.dtype) / t, dim=-1)
    return (log_p_teacher.exp() * (log_p_teacher - log_p_student)).sum(dim=-1) * (t * t)


def weighted_distillation_loss(
    kind: str,
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor | None,
    weights: torch.Tensor,
    temperature: float,
    alpha: float,
    dkd: tuple[float, float] = (1.0, 8.0),
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(total, soft, hard)`` with ``total = alpha * soft + (1 - alpha) * hard`` (``alpha`` weights the SOFT
    term), ``soft = sum_i w_i s_i / sum_i w_i`` of the per-row soft term of ``kind`` (``kd``: :func:`kd_rows`,
    ``dkd``: :func:`dkd_rows`, ``dkd`` = (alpha, beta)) and ``hard = sum_i w_i CE_i / sum_i w_i`` over the labeled
    rows (label ``>= 0``; 0 when there is none)."""
    weights = weights.to(student_logits.dtype)
    if kind == "kd":
        soft_rows = kd_rows(student_logits, teacher_logits, temperature)
    elif kind == "dkd":
        soft_rows = dkd_rows(student_logits, teacher_logits, _targets(labels, teacher_logits), temperature, *dkd)
    else:
        raise ValueError(f"per-row weights need a per-row loss: kd or dkd, got {kind!r}")
    soft = _weighted_mean(soft_rows, weights)
    if labels is None:
        hard = student_logits.new_zeros(())
    else:
        ce = F.cross_entropy(student_logits, labels.clamp(min=0), reduction="none")
        hard = _weighted_mean(ce, weights * (labels >= 0).to(weights.dtype))
    return alpha * soft + (1.0 - alpha) * hard, soft, hard
