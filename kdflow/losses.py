"""Distillation losses (Hinton, Vinyals & Dean 2015, "Distilling the Knowledge in a Neural Network")."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def soft_kd_term(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """``T^2 * KL(softmax(z_t/T) || softmax(z_s/T))`` averaged over the batch (``batchmean``).

    The ``T^2`` factor keeps the gradient w.r.t. the student logits independent of ``T``: the gradient
    of the un-scaled KL is ``(softmax(z_s/T) - softmax(z_t/T)) / (T * B)``, which shrinks as ``T`` grows.
    """
    t = float(temperature)
    log_p_student = F.log_softmax(student_logits / t, dim=-1)
    log_p_teacher = F.log_softmax(teacher_logits.to(student_logits.dtype) / t, dim=-1)
    kl = F.kl_div(log_p_student, log_p_teacher, reduction="batchmean", log_target=True)
    return kl * (t * t)


def kd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor | None,
    temperature: float = 4.0,
    alpha: float = 0.7,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Return ``(total, soft, hard)`` with ``total = alpha * soft + (1 - alpha) * hard``.

    ``soft = T^2 * KL(softmax(z_t/T) || softmax(z_s/T))`` (batchmean) and ``hard = CE(y, z_s)`` at T=1.
    Convention: ``alpha`` weights the SOFT term (torchdistill's ``KDLoss`` uses the opposite).
    ``labels`` may mark unlabeled rows (transfer set) with ``-1``: the soft term averages over every
    row, the hard term over labeled rows only; a batch with no labeled row has ``hard = 0``.
    """
    soft = soft_kd_term(student_logits, teacher_logits, temperature)
    if labels is None:
        hard = student_logits.new_zeros(())
    else:
        # Sum over labeled rows / their count, via ignore_index: the same value as the mean over the labeled
        # subset, without boolean-mask indexing (a gather and a host sync per step, whose backward cost more
        # than the rest of the loss on a small student; see BENCHMARKS.md).
        n_labeled = (labels >= 0).sum().clamp(min=1)
        hard = F.cross_entropy(student_logits, labels, ignore_index=-1, reduction="sum") / n_labeled
    total = alpha * soft + (1.0 - alpha) * hard
    return total, soft, hard
