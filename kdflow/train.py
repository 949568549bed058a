"""Training loop for teachers (hard labels) and students (stored teacher logits + labels)."""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from kdflow.checkpoint import Checkpoints, rng_state, set_rng_state
from kdflow.config import TrainConfig
from kdflow.device import fits_on_device, model_device, on_device, resident_bytes, score_logits
from kdflow.losses import distillation_loss
from kdflow.models import raw_logits
from kdflow.stream import ArraySource, Batch, StreamingSource
from kdflow.weighted_losses import weighted_distillation_loss

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    """Per-epoch history (list of metric dicts), the best epoch and its validation accuracy."""

    history: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int = 0
    best_val_accuracy: float = 0.0
    steps: int = 0
    resumed_from_epoch: int = 0  # the checkpointed epoch this training continued from (0: started fresh)
    hard_examples: dict[str, Any] | None = None  # the emphasised rows (HardExampleSelection.as_dict), when enabled


def seed_everything(seed: int) -> None:
    """Seed torch and numpy so a run is repeatable on the same machine."""
    torch.manual_seed(seed)
    np.random.seed(seed % (2**32))


def scaled_lr(cfg: TrainConfig) -> float:
    """The learning rate used at ``cfg.batch_size``: ``lr`` for ``lr_scaling: none``; ``lr * batch_size /
    base_batch_size`` for ``linear`` (Goyal et al. 2017, with the configured warmup); ``lr * sqrt(batch_size /
    base_batch_size)`` for ``sqrt``."""
    ratio = cfg.batch_size / cfg.base_batch_size
    if cfg.lr_scaling == "linear":
        return cfg.lr * ratio
    if cfg.lr_scaling == "sqrt":
        return cfg.lr * math.sqrt(ratio)
    return cfg.lr


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """AdamW / Adam / SGD (Nesterov momentum) with the configured (:func:`scaled_lr`) learning rate and weight
    decay."""
    params = [p for p in model.parameters() if p.requires_grad]
    lr = scaled_lr(cfg)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(params, lr=lr, momentum=cfg.momentum, nesterov=True, weight_decay=cfg.weight_decay)


def warmup_cosine(step: int, total_steps: int, warmup_steps: int, min_ratio: float) -> float:
    """LR multiplier: linear warmup ``(step+1)/warmup`` then cosine from 1 to ``min_ratio`` at ``total_steps``."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def _restore(
    saved: dict,
    model: nn.Module,
    opt: torch.optim.Optimizer,
    sched: torch.optim.lr_scheduler.LRScheduler,
    gen: torch.Generator,
    checkpoints: Checkpoints,
) -> bool:
    """Load a checkpoint's states into the training objects; on any failure put every one back as it was,
    warn, and return False (the checkpoint is not used)."""
    before = (
        copy.deepcopy(model.state_dict()),
        copy.deepcopy(opt.state_dict()),
        copy.deepcopy(sched.state_dict()),
        gen.get_state(),
        rng_state(),
    )
    try:
        model.load_state_dict(saved["model"])
        opt.load_state_dict(saved["optimizer"])
        sched.load_state_dict(saved["scheduler"])
        gen.set_state(saved["generator"])
        set_rng_state(saved["rng"])
        missing = [
            k for k in ("best_state", "step", "stale", "history", "best_epoch", "best_val_accuracy") if k not in saved
        ]
        if missing:
            raise KeyError(f"the checkpoint lacks {missing}")
        model.load_state_dict(saved["best_state"])  # the best state fits this model too
        model.load_state_dict(saved["model"])
        return True
    except Exception as exc:
        model.load_state_dict(before[0])
        opt.load_state_dict(before[1])
        sched.load_state_dict(before[2])
        gen.set_state(before[3])
        set_rng_state(before[4])
        checkpoints.warn_ignored(f"it does not fit this model and optimizer: {type(exc).__name__}: {exc}")
        return False


@torch.no_grad()
def predict_logits(
    model: nn.Module, x: np.ndarray | torch.Tensor, batch_size: int = 1024, device: torch.device | None = None
) -> np.ndarray:
    """Raw logits of ``model`` (the inner model of a served :class:`CalibratedClassifier`) on ``x``, in eval
    mode, batched, as float32 numpy. With ``device`` the model is scored there (and moved back after); without
    it, on the device it is on. Off the CPU this is :func:`kdflow.device.score_logits` (pinned memory, its own
    large batches): one GPU scoring path for precompute, calibration and validation."""
    where = torch.device(device) if device is not None else model_device(model)
    if where.type != "cpu":
        return score_logits(model, x, where)
    if isinstance(x, np.ndarray) and not x.flags.writeable:  # e.g. pandas' read-only views: torch wants writable
        x = x.copy()
    xt = torch.as_tensor(x, dtype=torch.float32)
    with on_device(model, where):
        model.eval()
        out = [raw_logits(model, xt[i : i + batch_size]) for i in range(0, len(xt), batch_size)]
    return torch.cat(out).numpy() if out else np.zeros((0, 0), dtype=np.float32)


def train_classifier(
    model: nn.Module,
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_val: np.ndarray,
    y_val: np.ndarray,
    cfg: TrainConfig,
    teacher_logits: np.ndarray | None = None,
    teacher_val_logits: np.ndarray | None = None,
    on_epoch: Callable[[dict[str, float]], None] | None = None,
    progress: bool = True,
) -> TrainResult:
    """:func:`fit` on in-memory arrays (``teacher_logits`` aligned with ``x_train``; labels -1 = unlabeled)."""
    if teacher_logits is None and (np.asarray(y_train) < 0).any():
        raise ValueError("hard-label training needs a label on every row")
    source = ArraySource(x_train, y_train, teacher_logits)
    return fit(model, source, x_val, y_val, cfg, teacher_val_logits, on_epoch, progress)


# Per-epoch metrics that are wall-clock times: they differ between identical runs.
TIMINGS = frozenset({"epoch_seconds", "input_wait_seconds"})


def _timed(batches: Iterator[Batch], waited: list[float]) -> Iterator[Batch]:
    """``batches`` unchanged, adding to ``waited[0]`` the seconds spent waiting for each one (the step's input
    wait: reading and joining when the stream is not ahead, indexing otherwise); closed when the caller stops."""
    with contextlib.closing(batches):
        while True:
            t0 = time.perf_counter()
            batch = next(batches, None)
            waited[0] += time.perf_counter() - t0
            if batch is None:
                return
            yield batch


def fit(
    model: nn.Module,
    source: ArraySource | StreamingSource,
    x_val: np.ndarray,
    y_val: np.ndarray,
    cfg: TrainConfig,
    teacher_val_logits: np.ndarray | None = None,
    on_epoch: Callable[[dict[str, float]], None] | None = None,
    progress: bool = True,
    checkpoints: Checkpoints | None = None,
    device: torch.device | None = None,
) -> TrainResult:
    """Train ``model`` in place on batches from ``source`` and leave it at its best-validation-accuracy weights.

    When the source carries teacher logits the loss is :func:`kdflow.losses.distillation_loss` of kind
    ``cfg.loss`` (``kd``, ``dkd`` or ``dist``; ``alpha`` weights the soft term; rows labeled ``-1`` contribute only to the soft term); otherwise plain cross-entropy on the
    labels. Teacher logits are clipped to ``±teacher_logit_clip``. Early stopping watches validation accuracy.
    A source whose batches carry per-row weights (hard examples, :mod:`kdflow.hard_examples`) is trained with
    :func:`kdflow.weighted_losses.weighted_distillation_loss` instead.

    With ``checkpoints``, the full training state (weights, optimizer, LR schedule and step, RNG states, the
    shuffling generator, best state, early-stopping counter, history) is saved after every
    ``checkpoints.every_epochs`` epochs; a trusted checkpoint found at the start is resumed from, so the result
    is bit-identical to an uninterrupted run on the same machine and thread count. ``on_epoch`` is called only
    for epochs trained in this call (the restored ones are in ``result.history``). A finished training deletes
    its checkpoint.

    ``device`` (default: where ``model`` is) is where the training runs; the model ends on the device it started
    on. On a GPU each batch is copied there, or the whole training input is kept there when it fits
    (:func:`device_source`). On the CPU the loop is the one kdflow always ran.
    """
    started_on = model_device(model)
    device = torch.device(device) if device is not None else started_on
    on_cpu = device.type == "cpu"
    seed_everything(cfg.seed)
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    clip = cfg.teacher_logit_clip
    yv = torch.tensor(np.asarray(y_val), dtype=torch.long)
    ztv = torch.as_tensor(teacher_val_logits, dtype=torch.float32) if teacher_val_logits is not None else None

    if not on_cpu:
        model.to(device)
        source = device_source(source, device, int(np.prod(np.shape(x_val)[1:])))
    steps_per_epoch = max(1, math.ceil(len(source) / cfg.batch_size))
    total_steps = cfg.max_steps or cfg.epochs * steps_per_epoch
    epochs = math.ceil(total_steps / steps_per_epoch)
    opt = make_optimizer(model, cfg)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda s: warmup_cosine(
            s, total_steps, min(cfg.schedule.warmup_steps, total_steps // 2), cfg.schedule.min_lr_ratio
        ),
    )
    gen = torch.Generator().manual_seed(cfg.seed)
    result = TrainResult()
    best_state = copy.deepcopy(model.state_dict())
    stale = 0
    step = 0
    start_epoch = 1
    saved = checkpoints.load() if checkpoints is not None else None
    if saved is not None:
        geometry = {"total_steps": total_steps, "steps_per_epoch": steps_per_epoch, "num_rows": len(source)}
        found = {k: saved.get(k) for k in geometry}
        if found != geometry:
            checkpoints.warn_ignored(f"it was written for {found}, this run has {geometry}")
        elif _restore(saved, model, opt, sched, gen, checkpoints):
            best_state, stale, step = saved["best_state"], int(saved["stale"]), int(saved["step"])
            result.history = [dict(m) for m in saved["history"]]
            result.best_epoch, result.best_val_accuracy = int(saved["best_epoch"]), float(saved["best_val_accuracy"])
            result.resumed_from_epoch = int(saved["epoch"])
            start_epoch = result.resumed_from_epoch + 1
            log.info(
                "resuming from the checkpoint after epoch %d (step %d) at %s",
                result.resumed_from_epoch,
                step,
                checkpoints.store.url(checkpoints.prefix),
            )
    bar = tqdm(
        total=total_steps,
        initial=step,
        desc="train",
        unit="step",
        disable=None if progress else True,
        leave=False,
        mininterval=2.0,
    )
    for epoch in range(start_epoch, epochs + 1):
        t0 = time.perf_counter()
        model.train()
        sums = {"loss": 0.0, "soft_loss": 0.0, "hard_loss": 0.0}
        on_device_sums = None if on_cpu else torch.zeros(3, dtype=torch.float64, device=device)
        batches = 0
        waited = [0.0]
        for xb, yb, zb, *weights in _timed(source.batches(cfg.batch_size, gen), waited):
            if step >= total_steps:
                break
            if not on_cpu:  # a no-op for a source already resident on the device
                xb, yb = xb.to(device, non_blocking=True), yb.to(device, non_blocking=True)
                zb = zb.to(device, non_blocking=True) if zb is not None else None
                weights = [w.to(device, non_blocking=True) for w in weights]
            logits = model(xb)
            if zb is not None and clip is not None:
                zb = zb.clamp(-clip, clip)
            if zb is not None and weights:
                loss, soft, hard = weighted_distillation_loss(
                    cfg.loss, logits, zb, yb, weights[0], cfg.temperature, cfg.alpha, (cfg.dkd_alpha, cfg.dkd_beta)
                )
            elif zb is not None:
                loss, soft, hard = distillation_loss(
                    cfg.loss, logits, zb, yb, cfg.temperature, cfg.alpha,
                    (cfg.dkd_alpha, cfg.dkd_beta), (cfg.dist_beta, cfg.dist_gamma),
                )  # fmt: skip
            else:
                loss = hard = F.cross_entropy(logits, yb)
                soft = loss.new_zeros(())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip_norm is not None:
                nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip_norm)
            opt.step()
            sched.step()
            step += 1
            batches += 1
            if on_device_sums is None:
                sums["loss"] += float(loss.detach())
                sums["soft_loss"] += float(soft.detach())
                sums["hard_loss"] += float(hard.detach())
            else:  # no host sync per step
                on_device_sums += torch.stack([loss.detach(), soft.detach(), hard.detach()]).double()
            bar.update(1)
        if on_device_sums is not None:
            sums = dict(zip(sums, on_device_sums.tolist()))
        val_logits = torch.from_numpy(predict_logits(model, x_val))
        metrics = {k: v / max(1, batches) for k, v in sums.items()}
        metrics.update(
            epoch=float(epoch),
            val_accuracy=float((val_logits.argmax(1) == yv).float().mean()),
            val_nll=float(F.cross_entropy(val_logits, yv)),
            lr=float(sched.get_last_lr()[0]),
            epoch_seconds=time.perf_counter() - t0,
            input_wait_seconds=waited[0],
        )
        if ztv is not None:
            metrics["val_kl_to_teacher"] = float(
                F.kl_div(F.log_softmax(val_logits, 1), F.log_softmax(ztv, 1), reduction="batchmean", log_target=True)
            )
        result.history.append(metrics)
        if on_epoch:
            on_epoch(metrics)
        bar.set_postfix(val_acc=f"{metrics['val_accuracy']:.4f}")
        if metrics["val_accuracy"] > result.best_val_accuracy or epoch == 1:
            result.best_val_accuracy, result.best_epoch = metrics["val_accuracy"], epoch
            best_state = copy.deepcopy(model.state_dict())
            stale = 0
        else:
            stale += 1
            if cfg.early_stopping_patience and stale >= cfg.early_stopping_patience:
                log.info("early stopping at epoch %d (best %d)", epoch, result.best_epoch)
                break
        if step >= total_steps:
            break
        if checkpoints is not None and checkpoints.due(epoch):
            state = {
                "model": model.state_dict(),
                "optimizer": opt.state_dict(),
                "scheduler": sched.state_dict(),
                "generator": gen.get_state(),
                "rng": rng_state(),
                "step": step,
                "best_state": best_state,
                "best_epoch": result.best_epoch,
                "best_val_accuracy": result.best_val_accuracy,
                "stale": stale,
                "history": result.history,
                "total_steps": total_steps,
                "steps_per_epoch": steps_per_epoch,
                "num_rows": len(source),
            }
            try:
                checkpoints.save(epoch, state)
            except Exception as exc:  # a checkpoint only protects progress: never fail the training over it
                log.warning(
                    "could not save the checkpoint after epoch %d to %s: %s",
                    epoch,
                    checkpoints.store.url(checkpoints.prefix),
                    exc,
                )
    bar.close()
    result.steps = step
    if checkpoints is not None:
        checkpoints.clear()  # finished: a later deliberate re-run trains from the start
    model.load_state_dict(best_state)
    model.to(started_on)
    model.eval()
    return result


def device_source(
    source: ArraySource | StreamingSource, device: torch.device, row_features: int
) -> ArraySource | StreamingSource:
    """The training input for ``device``: kept resident there (every row, label and teacher logit as one
    :class:`ArraySource` on the device; a stream is read once) when it needs at most half the device's free
    memory (:func:`kdflow.device.fits_on_device`), else ``source`` as it is (each batch is then copied)."""
    nbytes = resident_bytes(len(source), row_features + source.num_classes + 2)
    if not fits_on_device(nbytes, device):
        log.info("training input (%.1f MB) streamed to %s batch by batch", nbytes / 1e6, device)
        return source
    log.info("training input (%.1f MB) kept resident on %s", nbytes / 1e6, device)
    arrays = source if isinstance(source, ArraySource) else source.to_arrays()
    return arrays.to(device)
