"""Online (mutual) distillation: a teacher and a student learn together from labeled data, for a domain with no
trained teacher yet (Zhang, Xiang, Hospedales & Lu 2018, "Deep Mutual Learning", CVPR).

:func:`mutual_losses` is the loss, :func:`train_mutual` the co-training loop, :func:`train_online` builds both
networks from a config and runs it: the library entry point of ``kdflow distill-online`` (``flows/online.py``),
usable without Prefect or MLflow.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from kdflow.config import DistillConfig, OnlineConfig, TrainConfig
from kdflow.data import Dataset
from kdflow.models import build_for_training
from kdflow.stream import ArraySource
from kdflow.train import TrainResult, make_optimizer, predict_logits, seed_everything, warmup_cosine

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class MutualLoss:
    """Each network's loss and its parts (scalar tensors). ``total`` is what one backward pass minimises."""

    student: torch.Tensor
    teacher: torch.Tensor
    student_ce: torch.Tensor
    teacher_ce: torch.Tensor
    student_kl: torch.Tensor  # KL(p_t || p_s), p_t detached
    teacher_kl: torch.Tensor  # KL(p_s || p_t), p_s detached

    @property
    def total(self) -> torch.Tensor:
        """``L_s + L_t``: the networks share no parameter, so its gradient is each network's own loss gradient."""
        return self.student + self.teacher


def _labeled_ce(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy averaged over the rows with a label (``>= 0``); 0 when the batch has none."""
    n_labeled = (labels >= 0).sum().clamp(min=1)
    return F.cross_entropy(logits, labels, ignore_index=-1, reduction="sum") / n_labeled


def _kl(target_logits: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """``KL(softmax(target) || softmax(logits))`` per row, averaged over the batch (``batchmean``)."""
    return F.kl_div(F.log_softmax(logits, -1), F.log_softmax(target_logits, -1), reduction="batchmean", log_target=True)


def mutual_losses(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor, beta: float
) -> MutualLoss:
    """Deep mutual learning (Zhang et al. 2018), one loss per network, at T = 1, with ``p = softmax(z)``::

        L_s = CE(y, z_s) + beta * KL(p_t || p_s)      p_t detached: only the student learns from this term
        L_t = CE(y, z_t) + beta * KL(p_s || p_t)      p_s detached: only the teacher learns from this term

    ``KL(p || q) = sum_k p_k log(p_k / q_k)``, averaged over the batch; CE over the labeled rows (label ``>= 0``;
    rows labeled ``-1`` enter the KL terms only). Minimising ``total = L_s + L_t`` in one backward pass gives
    each network exactly the gradient of its own loss; per row (a batch of B labeled rows)::

        dL/dz_s = ((p_s - onehot(y)) + beta * (p_s - p_t)) / B
        dL/dz_t = ((p_t - onehot(y)) + beta * (p_t - p_s)) / B

    Why two losses rather than the seed's one combined ``L = CE(s) + CE(t) + beta * KL(s || t)``: with one KL term
    and no detach, the teacher receives that same term's gradient, ``dKL(p_t || p_s)/dz_t,j = p_t,j (r_j -
    E_{p_t}[r])`` with ``r = log(p_t / p_s)``: the reverse, mode-seeking direction for the teacher, whose component
    for class j is proportional to ``p_t,j``, so the term never raises a class the teacher gives ~0 probability
    however much the student puts there. In DML each network instead matches the other's full (mass-covering)
    distribution, as a distilled student matches its teacher (Hinton et al. 2015), through its own KL term toward
    the other's fixed prediction. Zhang et al. update the networks alternately (Algorithm 1), recomputing one's
    prediction after the other's step; here both step on the same forward pass (one forward per network per
    batch), the usual simultaneous form. ``beta`` weights both KL terms (the paper: 1; the seed: 0.1-0.5)."""
    fixed_teacher, fixed_student = teacher_logits.detach(), student_logits.detach()  # each is the other's target
    student_ce, teacher_ce = _labeled_ce(student_logits, labels), _labeled_ce(teacher_logits, labels)
    student_kl, teacher_kl = _kl(fixed_teacher, student_logits), _kl(fixed_student, teacher_logits)
    return MutualLoss(
        student=student_ce + beta * student_kl,
        teacher=teacher_ce + beta * teacher_kl,
        student_ce=student_ce,
        teacher_ce=teacher_ce,
        student_kl=student_kl,
        teacher_kl=teacher_kl,
    )


@dataclass
class MutualResult:
    """Both networks' training results (per-epoch history, best epoch by their own validation accuracy)."""

    student: TrainResult
    teacher: TrainResult


class _Net:
    """One network of the pair: its optimizer, LR schedule, best state and history."""

    def __init__(self, model: nn.Module, cfg: TrainConfig, total_steps: int):
        self.model, self.cfg = model, cfg
        self.opt = make_optimizer(model, cfg)
        warmup = min(cfg.schedule.warmup_steps, total_steps // 2)
        self.sched = torch.optim.lr_scheduler.LambdaLR(
            self.opt, lambda s: warmup_cosine(s, total_steps, warmup, cfg.schedule.min_lr_ratio)
        )
        self.result = TrainResult()
        self.best_state = copy.deepcopy(model.state_dict())

    def step(self) -> None:
        if self.cfg.grad_clip_norm is not None:  # per network: the teacher's gradients never shrink the student's
            nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip_norm)
        self.opt.step()
        self.sched.step()

    def end_epoch(self, metrics: dict[str, float]) -> bool:
        """Record the epoch; keep the weights if validation accuracy improved. Returns whether it improved."""
        self.result.history.append(metrics)
        epoch = int(metrics["epoch"])
        if metrics["val_accuracy"] > self.result.best_val_accuracy or epoch == 1:
            self.result.best_val_accuracy, self.result.best_epoch = metrics["val_accuracy"], epoch
            self.best_state = copy.deepcopy(self.model.state_dict())
            return True
        return False

    def finish(self, steps: int) -> None:
        self.result.steps = steps
        self.model.load_state_dict(self.best_state)
        self.model.eval()


def _val_metrics(z: torch.Tensor, other: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
    return {
        "val_accuracy": float((z.argmax(1) == y).float().mean()),
        "val_nll": float(F.cross_entropy(z, y)),
        "val_agreement": float((z.argmax(1) == other.argmax(1)).float().mean()),
    }


def train_mutual(
    student: nn.Module,
    teacher: nn.Module,
    source: ArraySource,
    val: Dataset,
    cfg: TrainConfig,
    beta: float,
    teacher_lr_ratio: float,
    on_epoch: Callable[[str, dict[str, float]], None] | None = None,
) -> MutualResult:
    """Train ``student`` and ``teacher`` together in place on batches from ``source`` with :func:`mutual_losses`.

    Both use ``cfg`` (optimizer, weight decay, batch size, epochs or ``max_steps``, warmup-cosine schedule, gradient
    clipping, per network), the teacher at ``teacher_lr_ratio * cfg.lr``. After every epoch each is scored on
    ``val`` (accuracy, NLL, agreement with the other); each ends at its own best-validation-accuracy weights.
    Training stops early when neither improved for ``cfg.early_stopping_patience`` epochs. ``on_epoch(who,
    metrics)`` is called per network (``who``: ``student`` or ``teacher``). No checkpoints: a killed run restarts."""
    seed_everything(cfg.seed)
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    steps_per_epoch = max(1, math.ceil(len(source) / cfg.batch_size))
    total_steps = cfg.max_steps or cfg.epochs * steps_per_epoch
    nets = {
        "student": _Net(student, cfg, total_steps),
        "teacher": _Net(teacher, cfg.model_copy(update={"lr": cfg.lr * teacher_lr_ratio}), total_steps),
    }
    yv = torch.tensor(np.asarray(val.y), dtype=torch.long)
    gen = torch.Generator().manual_seed(cfg.seed)
    step, stale = 0, 0
    for epoch in range(1, math.ceil(total_steps / steps_per_epoch) + 1):
        t0 = time.perf_counter()
        student.train()
        teacher.train()
        sums = dict.fromkeys(("student", "teacher", "student_ce", "teacher_ce", "student_kl", "teacher_kl"), 0.0)
        batches = 0
        for xb, yb, _ in source.batches(cfg.batch_size, gen):
            if step >= total_steps:
                break
            loss = mutual_losses(student(xb), teacher(xb), yb, beta)
            for net in nets.values():
                net.opt.zero_grad(set_to_none=True)
            loss.total.backward()
            for net in nets.values():
                net.step()
            step, batches = step + 1, batches + 1
            for key in sums:
                sums[key] += float(getattr(loss, key).detach())
        z = {who: torch.from_numpy(predict_logits(net.model, val.x)) for who, net in nets.items()}
        improved = False
        for who, net in nets.items():
            other = "teacher" if who == "student" else "student"
            metrics = {
                "epoch": float(epoch),
                "loss": sums[who] / max(1, batches),
                "hard_loss": sums[f"{who}_ce"] / max(1, batches),
                "soft_loss": sums[f"{who}_kl"] / max(1, batches),
                **_val_metrics(z[who], z[other], yv),
                "lr": float(net.sched.get_last_lr()[0]),
                "epoch_seconds": time.perf_counter() - t0,
            }
            improved = net.end_epoch(metrics) or improved
            if on_epoch:
                on_epoch(who, metrics)
        stale = 0 if improved else stale + 1
        if cfg.early_stopping_patience and stale >= cfg.early_stopping_patience:
            log.info("early stopping at epoch %d: neither network improved for %d epochs", epoch, stale)
            break
        if step >= total_steps:
            break
    for net in nets.values():
        net.finish(step)
    return MutualResult(student=nets["student"].result, teacher=nets["teacher"].result)


@dataclass
class OnlineTraining:
    """The co-trained pair (each at its best validation epoch, in eval mode) and their training results."""

    student: nn.Module
    teacher: nn.Module
    result: MutualResult


def train_online(
    cfg: DistillConfig,
    datasets: Mapping[str, Dataset],
    online: OnlineConfig | None = None,
    on_epoch: Callable[[str, dict[str, float]], None] | None = None,
) -> OnlineTraining:
    """Build ``cfg.student`` and ``online.teacher`` (default ``cfg.online``; each with its input preprocessing
    fitted on the labeled train split, initial weights seeded by ``cfg.train.seed``) and co-train them on that
    split (:func:`train_mutual`, ``online.beta``, ``online.teacher_lr_ratio``), early stopping on ``datasets["val"]``.
    Unlabeled splits (transfer) are not used: DML learns from labels."""
    online = online or cfg.online
    if online is None:
        raise ValueError("online distillation needs cfg.online (the teacher's architecture, beta, teacher_lr_ratio)")
    train = datasets["train"]
    seed_everything(cfg.train.seed)
    student = build_for_training(cfg.student, train.x, cfg.data.num_classes)
    teacher = build_for_training(online.teacher, train.x, cfg.data.num_classes)
    result = train_mutual(
        student, teacher, ArraySource(train.x, train.y), datasets["val"], cfg.train, online.beta,
        online.teacher_lr_ratio, on_epoch,
    )  # fmt: skip
    return OnlineTraining(student, teacher, result)
