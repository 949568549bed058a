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


def _targets(labels: torch.Tensor | None, teacher_logits: torch.Tensor) -> torch.Tensor:
    """The target class per row: the label where known (``>= 0``), else the teacher's argmax (transfer rows)."""
    teacher_top = teacher_logits.argmax(dim=-1)
    return teacher_top if labels is None else torch.where(labels >= 0, labels, teacher_top)


def dkd_rows(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    targets: torch.Tensor,
    temperature: float,
    alpha: float = 1.0,
    beta: float = 8.0,
) -> torch.Tensor:
    """Decoupled KD per row, shape ``(B,)``: ``T^2 * (alpha * TCKD_i + beta * NCKD_i)`` (Zhao et al. 2022,
    "Decoupled Knowledge Distillation", CVPR); :func:`dkd_term` is their mean.

    With ``p = softmax(z / T)`` and target class ``t``: TCKD ``= KL([p_t^T, 1 - p_t^T] || [p_t^S, 1 - p_t^S])``
    (the binary target-vs-rest distributions); NCKD ``= KL(q^T || q^S)`` with ``q = softmax`` over the non-target
    logits only (``q_k = p_k / (1 - p_t)``, ``k != t``). Classic KD equals ``TCKD + (1 - p_t^T) * NCKD``; DKD
    frees NCKD from that weight. The paper's defaults: ``alpha = 1``, ``beta = 8``."""
    t = float(temperature)
    zs, zt = student_logits / t, teacher_logits.to(student_logits.dtype) / t
    mask = F.one_hot(targets, zs.shape[-1]).bool()
    ls, lt = F.log_softmax(zs, dim=-1), F.log_softmax(zt, dim=-1)

    # binary target/non-target log-probabilities: log p_t and log(1 - p_t) = logsumexp of the others
    def binary(logp: torch.Tensor) -> torch.Tensor:
        tgt = logp.masked_select(mask).unsqueeze(1)
        rest = logp.masked_fill(mask, float("-inf")).logsumexp(dim=-1, keepdim=True)
        return torch.cat([tgt, rest], dim=1)

    bs, bt = binary(ls), binary(lt)
    tckd = (bt.exp() * (bt - bs)).sum(dim=-1)
    ns = F.log_softmax(zs.masked_fill(mask, float("-inf")), dim=-1)
    nt = F.log_softmax(zt.masked_fill(mask, float("-inf")), dim=-1)
    # KL over non-target classes only (the target entry is -inf in both: excluded, not 0 * inf)
    nckd = (nt.exp() * (nt - ns)).masked_fill(mask, 0.0).sum(dim=-1)
    return (alpha * tckd + beta * nckd) * (t * t)


def dkd_term(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    targets: torch.Tensor,
    temperature: float,
    alpha: float = 1.0,
    beta: float = 8.0,
) -> torch.Tensor:
    """Decoupled KD, batch mean of :func:`dkd_rows` (the formula and its source are there)."""
    return dkd_rows(student_logits, teacher_logits, targets, temperature, alpha, beta).mean()


def _pearson_distance(a: torch.Tensor, b: torch.Tensor, dim: int, eps: float = 1e-8) -> torch.Tensor:
    """``1 - Pearson correlation`` of ``a`` and ``b`` along ``dim``."""
    a = a - a.mean(dim=dim, keepdim=True)
    b = b - b.mean(dim=dim, keepdim=True)
    return 1.0 - (a * b).sum(dim=dim) / (a.norm(dim=dim) * b.norm(dim=dim) + eps)


def dist_term(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    temperature: float,
    beta: float = 1.0,
    gamma: float = 1.0,
) -> torch.Tensor:
    """DIST (Huang et al. 2022, "Knowledge Distillation from A Stronger Teacher", NeurIPS): match relations,
    not values. With ``P = softmax(z / T)`` row-wise over a batch of B rows and C classes:
    ``T^2 * (beta * mean_i d(P^S_i, P^T_i) + gamma * mean_j d(P^S_:j, P^T_:j))``, ``d(u, v) = 1 - pearson(u, v)``:
    the inter-class relation (each row's class ranking) and the intra-class relation (each class's ranking of the
    rows in the batch). Invariant to shifting and positively scaling either side's probabilities."""
    t = float(temperature)
    ps = F.softmax(student_logits / t, dim=-1)
    pt = F.softmax(teacher_logits.to(student_logits.dtype) / t, dim=-1)
    inter = _pearson_distance(ps, pt, dim=1).mean()
    intra = _pearson_distance(ps, pt, dim=0).mean()
    return (beta * inter + gamma * intra) * (t * t)


def distillation_loss(
    kind: str,
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor | None,
    temperature: float,
    alpha: float,
    dkd: tuple[float, float] = (1.0, 8.0),
    dist: tuple[float, float] = (1.0, 1.0),
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(total, soft, hard)`` for ``kind`` ``kd`` (:func:`kd_loss`), ``dkd`` (:func:`dkd_term`, ``dkd`` =
    (alpha, beta)) or ``dist`` (:func:`dist_term`, ``dist`` = (beta, gamma)); always
    ``total = alpha * soft + (1 - alpha) * CE(y, z_s)`` over the labeled rows."""
    if kind == "kd":
        return kd_loss(student_logits, teacher_logits, labels, temperature, alpha)
    if kind == "dkd":
        targets = _targets(labels, teacher_logits)
        soft = dkd_term(student_logits, teacher_logits, targets, temperature, *dkd)
    elif kind == "dist":
        soft = dist_term(student_logits, teacher_logits, temperature, *dist)
    else:
        raise ValueError(f"unknown distillation loss {kind!r}; expected kd, dkd or dist")
    _, _, hard = kd_loss(student_logits, teacher_logits, labels, temperature, 0.0)
    return alpha * soft + (1.0 - alpha) * hard, soft, hard
