"""Evaluation metrics: accuracy, teacher-student agreement, per-class accuracy, latency and size."""

from __future__ import annotations

import time

import numpy as np
import torch
from torch import nn


def accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    """Fraction of rows whose arg-max equals the label."""
    return float((np.asarray(logits).argmax(1) == np.asarray(labels)).mean())


def flip_rate(student_logits: np.ndarray, teacher_logits: np.ndarray) -> float:
    """Fraction of rows where teacher and student predict different classes (labels not needed)."""
    return float((np.asarray(student_logits).argmax(1) != np.asarray(teacher_logits).argmax(1)).mean())


def per_class_accuracy(logits: np.ndarray, labels: np.ndarray, num_classes: int) -> dict[int, float]:
    """Accuracy within each true class; classes absent from ``labels`` map to NaN."""
    pred = np.asarray(logits).argmax(1)
    labels = np.asarray(labels)
    out: dict[int, float] = {}
    for c in range(num_classes):
        mask = labels == c
        out[c] = float((pred[mask] == c).mean()) if mask.any() else float("nan")
    return out


@torch.no_grad()
def latency_ms(model: nn.Module, sample: np.ndarray, batches: int = 200, warmup: int = 10) -> dict[str, float]:
    """p50 / p95 wall time (ms) of one forward at batch size 1, after ``warmup`` untimed calls."""
    model.eval()
    xt = torch.as_tensor(sample[:1], dtype=torch.float32)
    for _ in range(warmup):
        model(xt)
    times = np.empty(batches)
    for i in range(batches):
        t0 = time.perf_counter()
        model(xt)
        times[i] = (time.perf_counter() - t0) * 1e3
    return {"p50": float(np.percentile(times, 50)), "p95": float(np.percentile(times, 95))}


@torch.no_grad()
def throughput(model: nn.Module, x: np.ndarray, batch_size: int = 256, batches: int = 10) -> float:
    """Samples per second at ``batch_size`` (cycling over ``x``), after one untimed batch."""
    model.eval()
    xt = torch.as_tensor(x, dtype=torch.float32)
    reps = -(-batch_size // len(xt))
    batch = xt.repeat(reps, *([1] * (xt.ndim - 1)))[:batch_size]
    model(batch)
    t0 = time.perf_counter()
    for _ in range(batches):
        model(batch)
    return batch_size * batches / (time.perf_counter() - t0)


def profile(
    model: nn.Module, x: np.ndarray, latency_batches: int = 200, batch_size: int = 256, throughput_batches: int = 10
) -> dict[str, float]:
    """Size and speed of ``model``: parameters, batch-1 latency p50/p95 (ms), samples/s at ``batch_size``."""
    lat = latency_ms(model, x, batches=latency_batches)
    return {
        "params": float(sum(p.numel() for p in model.parameters())),
        "latency_p50_ms": lat["p50"],
        "latency_p95_ms": lat["p95"],
        "throughput": throughput(model, x, batch_size=batch_size, batches=throughput_batches),
        "threads": float(torch.get_num_threads()),
    }
