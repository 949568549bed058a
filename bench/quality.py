"""Distillation quality benchmark on MNIST-1D (a benchmark script, not a test).

What it measures, for each seed ``s`` (default 0, 1, 2):

1. Data from :func:`kdflow.generators.mnist1d_arrays`, one generator seed per split:
   train 4,000 labeled (seed ``1000*s+1``), val 1,000 (``1000*s+2``), test 1,000 (``1000*s+3``),
   transfer 50,000 unlabeled (``1000*s+4``).
2. Teacher: the packaged ``mnist1d_teacher.yaml`` model and TrainConfig (only ``seed`` overridden),
   trained on the labeled train split; test accuracy.
3. Student (a), hard labels only: the packaged ``mnist1d_distill.yaml`` student architecture and
   TrainConfig, trained with cross-entropy on the labeled train split (no teacher).
4. Student (b), distilled: same architecture and TrainConfig, trained on train (labeled) + transfer
   (label -1) against teacher logits that go through the real fp16 logit store
   (:class:`kdflow.logits.LogitStore` over a temporary :class:`kdflow.store.LocalStore`).
5. Calibration of (b): temperature fitted on the student's validation logits
   (:func:`kdflow.calibration.fit_temperature`), test ECE (15 bins) at T=1 and at the fitted T.

It reports per seed and mean +/- sample standard deviation (ddof=1) over seeds: teacher, (a) and (b)
test accuracy, the fraction of the (a)-to-teacher gap that (b) recovers, ECE before/after
calibration, parameter counts and ratio, and wall time per stage; then checks these bars
(on the means): teacher >= 0.93, distilled student >= 0.92, recovered >= 70% of the gap,
calibrated ECE <= 0.03, student parameters <= 10% of the teacher's.

Run (from the repository root)::

    .venv/bin/python bench/quality.py --json bench/results/quality.json      # full: ~10-20 min on 2 CPUs
    .venv/bin/python bench/quality.py --seeds 0 --transfer-size 2000          # smoke run

``--student-epochs``, ``--temperature``, ``--alpha``, ``--student-channels`` override the packaged
distillation config for what-if runs; their defaults are the packaged values. The exit status is 0
whether or not the bars pass (it is a measurement, not a gate).
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import math
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from _common import write_json

from kdflow.calibration import calibration_metrics, fit_temperature
from kdflow.config import DistillConfig, TeacherConfig, TrainConfig, load_config, packaged_config
from kdflow.generators import mnist1d_arrays
from kdflow.logits import LogitStore, store_key
from kdflow.metrics import accuracy
from kdflow.models import build_model, count_parameters
from kdflow.store import LocalStore
from kdflow.train import predict_logits, train_classifier

INPUT_SHAPE = (40,)
NUM_CLASSES = 10
TEACHER_NAME = "bench-teacher"

BARS: dict[str, tuple[str, str, float]] = {
    # name: (metric on the means, comparison, threshold)
    "teacher_accuracy": ("teacher_test_accuracy", ">=", 0.93),
    "distilled_student_accuracy": ("student_kd_test_accuracy", ">=", 0.92),
    "gap_recovered": ("gap_recovered_of_means", ">=", 0.70),
    "calibrated_ece": ("student_kd_ece_calibrated", "<=", 0.03),
    "size_ratio": ("param_ratio", "<=", 0.10),
}


def fingerprint(*arrays: np.ndarray) -> str:
    """SHA-256 hex digest over the raw bytes of ``arrays``."""
    h = hashlib.sha256()
    for a in arrays:
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


class Timer:
    """Accumulates named wall-clock stage durations in seconds."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    def run(self, name: str, fn: Callable[[], Any]) -> Any:
        t0 = time.perf_counter()
        out = fn()
        self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - t0
        return out


def stored_logits(
    root: str,
    teacher: torch.nn.Module,
    x: np.ndarray,
    ids: np.ndarray,
    seed: int,
    dataset: str,
    clip: float | None,
    rows_per_shard: int,
) -> np.ndarray:
    """Write the teacher's logits for ``x`` through the fp16 logit store and read them back aligned to ``ids``."""
    fp = fingerprint(x)
    ls = LogitStore(LocalStore(root), store_key(TEACHER_NAME, str(seed), fp))
    ls.precompute(
        ids,
        lambda rows: predict_logits(teacher, x[rows]),
        teacher_uri="bench",
        teacher_name=TEACHER_NAME,
        teacher_version=str(seed),
        data_fingerprint=fp,
        dataset=dataset,
        rows_per_shard=rows_per_shard,
        clip_value=clip,
    )
    return ls.read_aligned(ids, str(seed), fp)


def run_seed(seed: int, tcfg: TeacherConfig, dcfg: DistillConfig, transfer_size: int) -> dict[str, Any]:
    """Everything measured for one seed."""
    timer = Timer()
    base = 1000 * seed

    def gen() -> dict[str, tuple[np.ndarray, np.ndarray]]:
        return {
            "train": mnist1d_arrays(4000, base + 1),
            "val": mnist1d_arrays(1000, base + 2),
            "test": mnist1d_arrays(1000, base + 3),
            "transfer": mnist1d_arrays(transfer_size, base + 4),
        }

    data = timer.run("data", gen)
    x_tr, y_tr = data["train"]
    x_va, y_va = data["val"]
    x_te, y_te = data["test"]
    x_tf, _ = data["transfer"]

    # Teacher.
    t_train = tcfg.train.model_copy(update={"seed": seed})
    torch.manual_seed(seed)
    teacher = build_model(tcfg.model.arch, dict(tcfg.model.args), INPUT_SHAPE, NUM_CLASSES)
    t_res = timer.run(
        "teacher_train", lambda: train_classifier(teacher, x_tr, y_tr, x_va, y_va, t_train, progress=False)
    )
    teacher_test_logits = predict_logits(teacher, x_te)
    teacher_acc = accuracy(teacher_test_logits, y_te)
    print(f"  seed {seed}: teacher test acc {teacher_acc:.4f} (best epoch {t_res.best_epoch})", flush=True)

    s_train = dcfg.train.model_copy(update={"seed": seed})

    # Student (a): hard labels only.
    torch.manual_seed(seed)
    student_a = build_model(dcfg.student.arch, dict(dcfg.student.args), INPUT_SHAPE, NUM_CLASSES)
    a_res = timer.run(
        "student_hard_train", lambda: train_classifier(student_a, x_tr, y_tr, x_va, y_va, s_train, progress=False)
    )
    a_acc = accuracy(predict_logits(student_a, x_te), y_te)
    print(f"  seed {seed}: student (hard labels) test acc {a_acc:.4f} (best epoch {a_res.best_epoch})", flush=True)

    # Teacher logits through the fp16 logit store.
    x_all = np.concatenate([x_tr, x_tf])
    y_all = np.concatenate([y_tr, np.full(len(x_tf), -1, dtype=np.int64)])
    ids_all = np.arange(len(x_all), dtype=np.int64)
    ids_val = np.arange(len(x_all), len(x_all) + len(x_va), dtype=np.int64)
    clip = dcfg.train.teacher_logit_clip
    rps = dcfg.store.rows_per_shard
    with tempfile.TemporaryDirectory(prefix="kdflow-bench-") as root:

        def logits() -> tuple[np.ndarray, np.ndarray]:
            z = stored_logits(root, teacher, x_all, ids_all, seed, "student-train", clip, rps)
            zv = stored_logits(root, teacher, x_va, ids_val, seed, "val", clip, rps)
            return z, zv

        z_all, z_val = timer.run("teacher_logits", logits)

    # Student (b): distilled on train + transfer.
    torch.manual_seed(seed)
    student_b = build_model(dcfg.student.arch, dict(dcfg.student.args), INPUT_SHAPE, NUM_CLASSES)
    b_res = timer.run(
        "student_kd_train",
        lambda: train_classifier(
            student_b, x_all, y_all, x_va, y_va, s_train, teacher_logits=z_all, teacher_val_logits=z_val, progress=False
        ),
    )
    b_test_logits = predict_logits(student_b, x_te)
    b_acc = accuracy(b_test_logits, y_te)
    print(f"  seed {seed}: student (distilled) test acc {b_acc:.4f} (best epoch {b_res.best_epoch})", flush=True)

    # Calibration of (b).
    cal = dcfg.calibration

    def calibrate() -> tuple[float, float, float]:
        temp = fit_temperature(predict_logits(student_b, x_va), y_va, cal.t_min, cal.t_max, cal.max_iter)
        before = calibration_metrics(b_test_logits, y_te, 1.0, n_bins=cal.n_bins).ece
        after = calibration_metrics(b_test_logits, y_te, temp, n_bins=cal.n_bins).ece
        return temp, before, after

    temp, ece_before, ece_after = timer.run("calibration", calibrate)

    gap = teacher_acc - a_acc
    recovered = (b_acc - a_acc) / gap if gap > 0 else float("nan")
    p_t, p_s = count_parameters(teacher), count_parameters(student_b)
    return {
        "seed": seed,
        "teacher_test_accuracy": teacher_acc,
        "student_hard_test_accuracy": a_acc,
        "student_kd_test_accuracy": b_acc,
        "gap_recovered": recovered,
        "student_kd_ece_uncalibrated": ece_before,
        "student_kd_ece_calibrated": ece_after,
        "fitted_temperature": temp,
        "teacher_test_ece": calibration_metrics(teacher_test_logits, y_te, 1.0, n_bins=cal.n_bins).ece,
        "teacher_params": p_t,
        "student_params": p_s,
        "param_ratio": p_s / p_t,
        "best_epoch": {"teacher": t_res.best_epoch, "student_hard": a_res.best_epoch, "student_kd": b_res.best_epoch},
        "epochs_run": {
            "teacher": len(t_res.history),
            "student_hard": len(a_res.history),
            "student_kd": len(b_res.history),
        },
        "best_val_accuracy": {
            "teacher": t_res.best_val_accuracy,
            "student_hard": a_res.best_val_accuracy,
            "student_kd": b_res.best_val_accuracy,
        },
        "seconds": {**timer.seconds, "total": sum(timer.seconds.values())},
        "rows": {"train": len(x_tr), "val": len(x_va), "test": len(x_te), "transfer": len(x_tf)},
    }


SUMMARY_KEYS = (
    "teacher_test_accuracy",
    "student_hard_test_accuracy",
    "student_kd_test_accuracy",
    "gap_recovered",
    "student_kd_ece_uncalibrated",
    "student_kd_ece_calibrated",
    "fitted_temperature",
    "teacher_test_ece",
    "teacher_params",
    "student_params",
    "param_ratio",
)
STAGES = ("data", "teacher_train", "student_hard_train", "teacher_logits", "student_kd_train", "calibration", "total")


def mean_std(values: Sequence[float]) -> dict[str, float]:
    """Mean and sample standard deviation (ddof=1; 0.0 for a single value)."""
    vals = [float(v) for v in values]
    return {"mean": statistics.fmean(vals), "std": statistics.stdev(vals) if len(vals) > 1 else 0.0}


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean +/- sample std over seeds of every reported figure, plus the gap recovered computed on the means."""
    out: dict[str, Any] = {k: mean_std([r[k] for r in rows]) for k in SUMMARY_KEYS}
    out["seconds"] = {s: mean_std([r["seconds"][s] for r in rows]) for s in STAGES}
    t, a, b = (
        out[k]["mean"] for k in ("teacher_test_accuracy", "student_hard_test_accuracy", "student_kd_test_accuracy")
    )
    out["gap_recovered_of_means"] = (b - a) / (t - a) if t > a else float("nan")
    return out


def check_bars(summary: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """PASS/FAIL of every bar, evaluated on the means."""
    bars = {}
    for name, (metric, op, threshold) in BARS.items():
        v = summary[metric]
        value = v["mean"] if isinstance(v, dict) else v
        ok = (value >= threshold) if op == ">=" else (value <= threshold)
        ok = bool(ok) and not math.isnan(value)
        bars[name] = {"metric": metric, "value": value, "op": op, "threshold": threshold, "pass": ok}
    return bars


def print_report(rows: list[dict[str, Any]], summary: dict[str, Any], bars: dict[str, dict[str, Any]]) -> None:
    """Readable per-seed, summary and bar tables on stdout."""
    cols = [
        ("seed", "seed", "{:d}"),
        ("teacher", "teacher_test_accuracy", "{:.4f}"),
        ("(a) hard", "student_hard_test_accuracy", "{:.4f}"),
        ("(b) KD", "student_kd_test_accuracy", "{:.4f}"),
        ("recovered", "gap_recovered", "{:.1%}"),
        ("ECE T=1", "student_kd_ece_uncalibrated", "{:.4f}"),
        ("ECE T*", "student_kd_ece_calibrated", "{:.4f}"),
        ("T*", "fitted_temperature", "{:.3f}"),
    ]
    print("\nPer seed (test split):")
    print("  " + " | ".join(f"{h:>10}" for h, _, _ in cols))
    for r in rows:
        print("  " + " | ".join(f"{fmt.format(r[k]):>10}" for _, k, fmt in cols))
    print("\n  stage seconds: " + ", ".join(STAGES))
    for r in rows:
        print(f"  seed {r['seed']}: " + ", ".join(f"{r['seconds'][s]:.1f}" for s in STAGES))

    n = len(rows)
    print(f"\nMean +/- sample std (ddof=1) over {n} seed(s):")
    for k in SUMMARY_KEYS:
        m, s = summary[k]["mean"], summary[k]["std"]
        print(f"  {k:<30} {m:12.4f} +/- {s:.4f}")
    print(f"  {'gap_recovered_of_means':<30} {summary['gap_recovered_of_means']:12.4f}")
    for st in STAGES:
        print(f"  {'seconds.' + st:<30} {summary['seconds'][st]['mean']:12.1f} +/- {summary['seconds'][st]['std']:.1f}")

    print("\nBars (on the means):")
    for name, b in bars.items():
        print(
            f"  {'PASS' if b['pass'] else 'FAIL'}  {name:<28} {b['metric']} = {b['value']:.4f} {b['op']} {b['threshold']}"
        )


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="benchmark seeds (default: 0 1 2)")
    p.add_argument("--transfer-size", type=int, default=50_000, help="unlabeled transfer rows per seed (default 50000)")
    p.add_argument("--json", type=Path, default=None, help="write all figures as JSON to this path")
    p.add_argument("--student-epochs", type=int, default=None, help="override the distill config's epochs")
    p.add_argument("--temperature", type=float, default=None, help="override the distill config's KD temperature")
    p.add_argument("--alpha", type=float, default=None, help="override the distill config's soft-term weight")
    p.add_argument("--student-channels", type=int, default=None, help="override the student's cnn1d channels")
    p.add_argument("--teacher-epochs", type=int, default=None, help="override the teacher config's epochs")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.transfer_size < 1:
        raise SystemExit("--transfer-size must be positive")
    tcfg = load_config(packaged_config("mnist1d_teacher.yaml"), TeacherConfig)
    dcfg = load_config(packaged_config("mnist1d_distill.yaml"), DistillConfig)
    overrides: dict[str, Any] = {}
    t_upd = {k: v for k, v in {"epochs": args.teacher_epochs}.items() if v is not None}
    s_upd = {
        k: v
        for k, v in {"epochs": args.student_epochs, "temperature": args.temperature, "alpha": args.alpha}.items()
        if v is not None
    }
    if t_upd:
        tcfg = tcfg.model_copy(update={"train": TrainConfig.model_validate({**tcfg.train.model_dump(), **t_upd})})
        overrides["teacher.train"] = t_upd
    if s_upd:
        dcfg = dcfg.model_copy(update={"train": TrainConfig.model_validate({**dcfg.train.model_dump(), **s_upd})})
        overrides["distill.train"] = s_upd
    if args.student_channels is not None:
        student = dcfg.student.model_copy(update={"args": {**dcfg.student.args, "channels": args.student_channels}})
        dcfg = dcfg.model_copy(update={"student": student})
        overrides["distill.student.args.channels"] = args.student_channels

    started = dt.datetime.now(dt.timezone.utc)
    t0 = time.perf_counter()
    print(
        f"kdflow quality bench: seeds {args.seeds}, transfer {args.transfer_size} rows, torch {torch.__version__}, "
        f"{os.cpu_count()} CPUs, {torch.get_num_threads()} torch threads",
        flush=True,
    )
    if overrides:
        print(f"  overrides (NOT the packaged configs): {overrides}", flush=True)
    rows = []
    for seed in args.seeds:
        rows.append(run_seed(seed, tcfg, dcfg, args.transfer_size))
        print(f"  seed {seed} done in {rows[-1]['seconds']['total']:.1f} s", flush=True)
    summary = summarize(rows)
    bars = check_bars(summary)
    total = time.perf_counter() - t0
    print_report(rows, summary, bars)
    print(f"\nTotal wall time: {total:.1f} s")

    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        payload = {
            "benchmark": "kdflow distillation quality, MNIST-1D",
            "started_utc": started.isoformat(timespec="seconds"),
            "command": " ".join([Path(sys.executable).name, *sys.argv]),
            "machine": {
                "platform": platform.platform(),
                "machine": platform.machine(),
                "cpus": os.cpu_count(),
                "torch": torch.__version__,
                "torch_threads": torch.get_num_threads(),
                "python": platform.python_version(),
            },
            "seeds": args.seeds,
            "transfer_size": args.transfer_size,
            "std": "sample standard deviation (ddof=1) over seeds",
            "overrides": overrides,
            "teacher_config": {"model": tcfg.model.model_dump(), "train": tcfg.train.model_dump()},
            "distill_config": {
                "student": dcfg.student.model_dump(),
                "train": dcfg.train.model_dump(),
                "calibration": dcfg.calibration.model_dump(),
            },
            "per_seed": rows,
            "summary": summary,
            "bars": bars,
            "all_bars_pass": all(b["pass"] for b in bars.values()),
            "total_seconds": total,
        }
        write_json(args.json, payload)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
