"""Where the pipeline's torch work runs: the ``device`` config key resolved to a :class:`torch.device`, teacher
scoring on that device (large batches, pinned host memory, non-blocking copies, optional bf16 autocast checked
against fp32), the rule for keeping training data resident on a GPU, and device-neutral model state.

``device`` is ``auto`` (CUDA when ``torch.cuda.is_available()``, else the CPU), ``cpu``, ``cuda`` or ``cuda:N``.
The string is checked when the config is loaded (:func:`check_device_spec`); whether CUDA is there is checked
where the work runs (:func:`resolve_device`), so a config written for a GPU worker still loads on a CPU-only
machine that only schedules the flow. On the CPU every function here takes the code path kdflow had before
devices existed, so CPU results are unchanged.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from kdflow.config_base import (  # noqa: F401 - re-exported: the device helpers live here
    DEVICE_PATTERN,
    AutocastKind,
    ConfigError,
    check_device_spec,
)

CPU_SCORE_BATCH = 1024  # predict_logits' batch: the CPU path scores exactly as before
CUDA_SCORE_BATCH = 65_536  # one H200 reached 11.4M rows/s fp32 on the demo teacher at this batch (FIELD_NOTES)
RESIDENT_FRACTION = 0.5  # training data is kept on the GPU when it needs at most this share of the free memory


def resolve_device(value: str = "auto", key: str = "device") -> torch.device:
    """The :class:`torch.device` the ``device`` setting ``value`` names on this machine: ``auto`` is CUDA when
    ``torch.cuda.is_available()`` else the CPU. Asking for CUDA where there is none (or for a GPU index past the
    last) is one :class:`ConfigError` naming ``key``, before any torch call fails deep in a stack."""
    check_device_spec(value, key)
    if value == "auto" and not torch.cuda.is_available():
        return torch.device("cpu")
    device = torch.device("cuda" if value == "auto" else value)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(
                f"{key}: {value!r} was asked for but this machine has no usable CUDA device "
                f"(torch {torch.__version__}, CUDA build {torch.version.cuda or 'none'}); use 'auto' or 'cpu'"
            )
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise ConfigError(f"{key}: {value!r} was asked for but this machine has {count} CUDA device(s)")
        if device.index is None:  # "cuda:0", not "cuda": comparable with a tensor's device
            device = torch.device("cuda", torch.cuda.current_device())
    return device


def model_device(model: nn.Module) -> torch.device:
    """The device of ``model``'s first parameter or buffer (the CPU for a module without any)."""
    for tensor in (*model.parameters(), *model.buffers()):
        return tensor.device
    return torch.device("cpu")


@contextlib.contextmanager
def on_device(model: nn.Module, device: torch.device | None) -> Iterator[nn.Module]:
    """``model`` moved to ``device`` for the block and moved back afterwards (a no-op for ``None`` or the
    device it is on), so a caller's model is never left somewhere else."""
    before = model_device(model)
    if device is None or torch.device(device) == before:
        yield model
        return
    model.to(device)
    try:
        yield model
    finally:
        model.to(before)


def autocast_context(device: torch.device, autocast: AutocastKind) -> contextlib.AbstractContextManager:
    """``torch.autocast`` to bfloat16 on ``device`` for ``bf16``; a no-op for ``none``."""
    if autocast == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


@torch.no_grad()
def score_logits(
    model: nn.Module,
    x: np.ndarray | torch.Tensor,
    device: torch.device | None = None,
    batch_size: int | None = None,
    autocast: AutocastKind = "none",
) -> np.ndarray:
    """Raw float32 logits of ``model`` on ``x`` (numpy), scored on ``device`` in eval mode.

    On the CPU without autocast this is :func:`kdflow.train.predict_logits` at its batch of 1,024: the same
    numbers as before. On CUDA the rows go through pinned host memory with non-blocking copies in batches of
    ``batch_size`` (default 65,536), and the logits come back into a pinned buffer; with ``autocast="bf16"`` the
    forward pass runs under bfloat16 autocast (the result is float32 again)."""
    device = torch.device(device) if device is not None else model_device(model)
    if device.type == "cpu" and autocast == "none":
        from kdflow.train import predict_logits

        return predict_logits(model, x, batch_size or CPU_SCORE_BATCH, device=device)
    from kdflow.models import raw_logits

    batch_size = batch_size or (CUDA_SCORE_BATCH if device.type == "cuda" else CPU_SCORE_BATCH)
    cuda = device.type == "cuda"
    if isinstance(x, np.ndarray) and not x.flags.writeable:
        x = x.copy()
    xt = torch.as_tensor(x, dtype=torch.float32)
    if cuda and not xt.is_pinned():
        xt = xt.pin_memory()
    with on_device(model, device):
        model.eval()
        out: torch.Tensor | None = None
        for i in range(0, len(xt), batch_size):
            xb = xt[i : i + batch_size].to(device, non_blocking=True)
            with autocast_context(device, autocast):
                z = raw_logits(model, xb)
            if out is None:
                out = torch.empty((len(xt), z.shape[1]), dtype=torch.float32, pin_memory=cuda)
            out[i : i + len(z)].copy_(z.float(), non_blocking=cuda)
        if cuda:
            torch.cuda.synchronize(device)
    return out.numpy() if out is not None else np.zeros((0, 0), dtype=np.float32)


@dataclass(frozen=True)
class AutocastCheck:
    """Stored (reduced-precision) logits against fp32 ones on a sample of rows: the largest absolute difference,
    the largest fp32 logit magnitude and the tolerance ``max_abs_diff <= tolerance * max(1, max_abs_logit)``."""

    autocast: str
    rows: int
    max_abs_diff: float
    max_abs_logit: float
    tolerance: float

    @property
    def passed(self) -> bool:
        """Whether the stored logits are within the tolerance."""
        return self.max_abs_diff <= self.tolerance * max(1.0, self.max_abs_logit)

    def as_dict(self) -> dict[str, float | int | str | bool]:
        """For the store manifest and the run."""
        return {
            "autocast": self.autocast,
            "rows": self.rows,
            "max_abs_diff": self.max_abs_diff,
            "max_abs_logit": self.max_abs_logit,
            "tolerance": self.tolerance,
            "passed": self.passed,
        }


def check_autocast(
    stored: np.ndarray, reference: np.ndarray, autocast: str, tolerance: float, clip: float | None = None
) -> AutocastCheck:
    """Compare ``stored`` logits (as read back from the store) with fp32 ``reference`` logits of the same rows
    (clipped to ``±clip`` as the store clips)."""
    ref = np.asarray(reference, dtype=np.float32)
    if clip is not None:
        ref = np.clip(ref, -clip, clip)
    diff = np.abs(np.asarray(stored, dtype=np.float32) - ref)
    return AutocastCheck(
        autocast=autocast,
        rows=int(len(ref)),
        max_abs_diff=float(diff.max()) if diff.size else 0.0,
        max_abs_logit=float(np.abs(ref).max()) if ref.size else 0.0,
        tolerance=float(tolerance),
    )


def resident_bytes(rows: int, row_values: int) -> int:
    """Bytes ``rows`` training rows of ``row_values`` float32 values (features + teacher logits + label) take."""
    return int(rows) * int(row_values) * 4


def fits_on_device(nbytes: int, device: torch.device) -> bool:
    """The residency rule: on CUDA, data of ``nbytes`` is kept on the device when it needs at most
    :data:`RESIDENT_FRACTION` (half) of the device's free memory at the start of training; never on the CPU
    (there it already is in memory)."""
    if device.type != "cuda":
        return False
    free, _ = torch.cuda.mem_get_info(device)
    return nbytes <= RESIDENT_FRACTION * free
