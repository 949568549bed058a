"""Teacher-logit store benchmark (a benchmark script, not a test): cost and fidelity of precomputing the
teacher's logits once (:class:`kdflow.logits.LogitStore` over a :class:`kdflow.store.LocalStore`) and
streaming them to the student (:class:`kdflow.stream.StreamingSource`), measured side by side in one run.

1. Precomputation throughput: ``LogitStore.precompute`` (dense fp16 shards of 8,192 rows, checksummed,
   fsync'd, manifest last; teacher run with ``predict_logits(..., batch_size=1024)`` per shard) vs the
   teacher's bare forward ``predict_logits(teacher, x, batch_size=1024)`` over the same rows. The demo
   teacher architecture (cnn1d, 64 channels, depth 4, kernel 5) with RANDOM weights on synthetic
   normal-noise rows of MNIST-1D shape (n, 40): throughput does not depend on weights or content.
   One warm-up of each, then 3 interleaved repetitions; medians. Bar: precompute / bare >= 0.9.
   (top-3 precompute throughput is reported too, no bar.)
2. Bytes per sample as stored (ids included): fp32 npz written the same way (np.savez of int64 ids and
   float32 logits per 8,192-row shard), kdflow dense fp16, kdflow top-k; C=10 with k=3 (the teacher's
   logits from 1) and C=100 with k=5 (random normal logits: uncompressed npz size does not depend on values).
3. Student training time per epoch (demo student cnn1d 16 channels depth 3, packaged distill ``train``
   section, ``epochs=2``, no early stopping) on 4k labeled + 50k transfer synthetic rows:
   (a) stored logits streamed from Parquet (row groups of 8,192) + the kdflow store,
   (b) the teacher run online on every batch (``torch.no_grad``),
   (c) hard labels only (random labels on all 54k rows, plain cross-entropy),
   plus (d) stored logits held in memory (``ArraySource`` with logits; splits the cost of (a) into KD loss
   vs streaming). Each is fitted for 2 epochs in each of ``--rounds`` rounds (default 2; the order is
   reversed every other round so a change in background load does not favour one mode); seconds per epoch
   = median of all its ``epoch_seconds`` (round 1 alone and process CPU time are reported too).
   Bar: (a) <= 1.15 x (c).
4. Peak RSS of streamed student training (1 full epoch) at 50k and 500k transfer rows (+4k labeled): the
   parent writes the Parquet files and a dense logit store (random logits) first, then runs the training in
   a fresh interpreter per size, launched through ``/bin/sh`` so that the child's ``ru_maxrss`` does not
   inherit the parent's peak (Linux carries the pre-exec memory high-water mark across ``execve``, and
   Python's subprocess may vfork). The child reports ``ru_maxrss`` right after imports and at the end,
   and ``VmHWM`` as a cross-check. Bar: peak(500k) <= 1.2 x peak(50k).
5. Top-k fidelity on real MNIST-1D (``mnist1d_arrays``: train 4,000 / val 1,000 / test 1,000 / transfer
   50,000, generator seeds ``100*data_seed + 1..4``): the packaged demo teacher (``mnist1d_teacher.yaml``)
   trained once, its logits stored dense and top-3, the packaged demo student distilled from each (streamed)
   for 3 training seeds. Test accuracy per seed, mean +/- sample std (ddof=1), difference of means.
   Bar: |mean(top-3) - mean(dense)| <= 0.005.

Every torch computation uses ``torch.set_num_threads(2)`` (and ``TrainConfig.num_threads=2``);
``--threads`` changes that for what-if runs.

Run (from the repository root)::

    .venv/bin/python bench/logits.py --json bench/results/logits.json          # full: ~9 min on 2 idle CPUs
    .venv/bin/python bench/logits.py --rows 5000 --rss-sizes 5000 50000 \\
        --transfer-size 5000 --seeds 0 --epochs 1 --teacher-epochs 2            # smoke run

The exit status is 0 whether or not the bars pass (it is a measurement, not a gate). Wall-clock figures (1, 3)
are only meaningful on an otherwise idle machine: with other jobs running, 2 torch threads on 2 cores spin-wait
for each other and one epoch can take 10x longer; the load averages are recorded in the JSON.
"""

from __future__ import annotations

import argparse
import datetime as dt
import io
import json
import math
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from _common import cpu_model, load_avg, write_json

from kdflow.config import DataConfig, DistillConfig, TeacherConfig, TrainConfig, load_config, packaged_config
from kdflow.data import Dataset, to_frame, write_parquet
from kdflow.logits import LogitStore, PrecomputeStats, size_bytes, store_key
from kdflow.metrics import accuracy
from kdflow.models import build_model, count_parameters
from kdflow.store import LocalStore
from kdflow.stream import ArraySource, Batch, StreamingSource
from kdflow.train import TrainResult, fit, predict_logits, train_classifier

THREADS = 2
INPUT_SHAPE = (40,)
NUM_CLASSES = 10
TEACHER_ARCH = ("cnn1d", {"channels": 64, "depth": 4, "kernel_size": 5})
PREDICT_BATCH = 1024
ROWS_PER_SHARD = 8192
ROW_GROUP = 8192
LABELED_ROWS = 4000
VAL_ROWS = 1000
TEACHER_NAME = "bench-teacher"
TEACHER_VERSION = "1"

BARS = {
    "precompute_throughput": "precompute / bare-forward throughput >= 0.9",
    "stored_logit_training_time": "stored-logit (streamed) epoch <= 1.15 x hard-label epoch",
    "training_peak_rss": "peak RSS(500k) <= 1.2 x peak RSS(50k)",
    "topk_accuracy": "|mean acc(top-3) - mean acc(dense)| <= 0.005",
}


# --------------------------------------------------------------------------------------------- helpers
def set_threads() -> None:
    """The one thread setting used everywhere in this benchmark."""
    torch.set_num_threads(THREADS)


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def mean_std(values: Sequence[float]) -> dict[str, float]:
    """Mean and sample standard deviation (ddof=1; 0.0 for a single value)."""
    vals = [float(v) for v in values]
    return {"mean": statistics.fmean(vals), "std": statistics.stdev(vals) if len(vals) > 1 else 0.0}


def fingerprint(ids: np.ndarray, x: np.ndarray, y: np.ndarray | None) -> str:
    """kdflow's dataset fingerprint (what the pipeline keys logit stores by)."""
    return Dataset(name="bench", uri="bench", ids=ids, x=x, y=y).fingerprint


def precompute(
    root: Path,
    split: str,
    ids: np.ndarray,
    fp: str,
    teacher_fn: Callable[[slice], np.ndarray],
    top_k: int | None = None,
) -> tuple[LogitStore, PrecomputeStats]:
    """Write one split's logit store under ``root`` (a LocalStore) with the pipeline's defaults."""
    ls = LogitStore(LocalStore(root), store_key(TEACHER_NAME, TEACHER_VERSION, fp, top_k))
    stats = ls.precompute(
        ids,
        teacher_fn,
        teacher_uri="bench",
        teacher_name=TEACHER_NAME,
        teacher_version=TEACHER_VERSION,
        data_fingerprint=fp,
        dataset=split,
        rows_per_shard=ROWS_PER_SHARD,
        clip_value=50.0,
        top_k=top_k,
    )
    return ls, stats


def teacher_fn_for(teacher: torch.nn.Module, x: np.ndarray) -> Callable[[slice], np.ndarray]:
    return lambda rows: predict_logits(teacher, x[rows], batch_size=PREDICT_BATCH)


def random_logits_fn(num_classes: int, scale: float = 3.0) -> Callable[[slice], np.ndarray]:
    """Deterministic random logits per row range (for sizes/memory, where values do not matter)."""

    def fn(rows: slice) -> np.ndarray:
        rng = np.random.default_rng(rows.start)
        return (scale * rng.standard_normal((rows.stop - rows.start, num_classes))).astype(np.float32)

    return fn


def demo_teacher(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model(TEACHER_ARCH[0], dict(TEACHER_ARCH[1]), INPUT_SHAPE, NUM_CLASSES).eval()


def student_train_cfg(dcfg: DistillConfig, **update: Any) -> TrainConfig:
    """The packaged distill config's ``train`` section with ``update`` applied and 2 threads."""
    return TrainConfig.model_validate({**dcfg.train.model_dump(), "num_threads": THREADS, **update})


def new_student(dcfg: DistillConfig, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model(dcfg.student.arch, dict(dcfg.student.args), INPUT_SHAPE, NUM_CLASSES)


def data_config(train_path: Path, transfer_path: Path) -> DataConfig:
    return DataConfig(
        train=str(train_path), val="unused", test="unused", transfer=str(transfer_path), num_classes=NUM_CLASSES
    )


def write_split(path: Path, ids: np.ndarray, x: np.ndarray, y: np.ndarray | None) -> Path:
    return write_parquet(to_frame(ids, x, y), path, row_group_size=ROW_GROUP)


class OnlineTeacherSource:
    """Like :class:`ArraySource`, but the teacher runs (no_grad, eval mode) on every batch for its logits."""

    def __init__(self, x: np.ndarray, y: np.ndarray, teacher: torch.nn.Module):
        self.inner = ArraySource(x, y)
        self.teacher = teacher.eval()

    def __len__(self) -> int:
        return len(self.inner)

    def batches(self, batch_size: int, generator: torch.Generator) -> Iterator[Batch]:
        for xb, yb, _ in self.inner.batches(batch_size, generator):
            with torch.no_grad():
                zb = self.teacher(xb)
            yield xb, yb, zb


# ------------------------------------------------------------------------ 1 + 2: throughput and bytes
def bench_precompute(x: np.ndarray, teacher: torch.nn.Module, repeats: int, work: Path) -> dict[str, Any]:
    """Precompute vs bare-forward throughput (interleaved repetitions after one warm-up of each)."""
    n = len(x)
    ids = np.arange(n, dtype=np.int64)
    fp = fingerprint(ids, x, None)
    fn = teacher_fn_for(teacher, x)
    times: dict[str, list[float]] = {"bare": [], "dense": [], "top3": []}
    cpu: dict[str, list[float]] = {k: [] for k in times}
    teacher_inside: dict[str, list[float]] = {"dense": [], "top3": []}

    def run(kind: str, rep: str) -> tuple[float, float, float]:
        inside = [0.0]

        def timed(rows: slice) -> np.ndarray:
            s = time.perf_counter()
            out = fn(rows)
            inside[0] += time.perf_counter() - s
            return out

        c0, t0 = time.process_time(), time.perf_counter()
        if kind == "bare":
            predict_logits(teacher, x, batch_size=PREDICT_BATCH)
        else:
            precompute(work / f"p1-{kind}-{rep}", "bench", ids, fp, timed, 3 if kind == "top3" else None)
        return time.perf_counter() - t0, time.process_time() - c0, inside[0]

    for kind in times:  # warm-up
        run(kind, "warmup")
    for r in range(repeats):
        for kind in times:
            wall, cpu_s, inside_s = run(kind, str(r))
            times[kind].append(wall)
            cpu[kind].append(cpu_s)
            if kind in teacher_inside:
                teacher_inside[kind].append(inside_s)
            print(f"    rep {r} {kind:<5} {wall:.3f} s (process CPU {cpu_s:.3f} s)", flush=True)
    med = {k: median(v) for k, v in times.items()}
    tput = {k: n / v for k, v in med.items()}
    out = {
        "rows": n,
        "teacher": {
            "arch": TEACHER_ARCH[0],
            "args": TEACHER_ARCH[1],
            "weights": "random init",
            "params": count_parameters(teacher),
        },
        "predict_batch_size": PREDICT_BATCH,
        "rows_per_shard": ROWS_PER_SHARD,
        "repeats": repeats,
        "seconds": times,
        "median_seconds": med,
        "samples_per_second": tput,
        "ratio_dense": tput["dense"] / tput["bare"],
        "ratio_top3": tput["top3"] / tput["bare"],
        "process_cpu_seconds": cpu,
        "median_process_cpu_seconds": {k: median(v) for k, v in cpu.items()},
        "ratio_dense_cpu": median(cpu["bare"]) / median(cpu["dense"]),
        "ratio_dense_best": min(times["bare"]) / min(times["dense"]),
        "teacher_seconds_inside_precompute": teacher_inside,
        "median_store_overhead_seconds": {
            k: median([a - b for a, b in zip(times[k], v)]) for k, v in teacher_inside.items()
        },
        "order": "one warm-up of each, then per repetition: bare, dense, top3 (interleaved)",
    }
    return out


def npz_fp32_bytes(ids: np.ndarray, logits: np.ndarray, out: Path) -> int:
    """Bytes of an fp32 store written the same way as kdflow's shards: np.savez(ids, float32 logits) per shard."""
    out.mkdir(parents=True, exist_ok=True)
    total = 0
    for i, start in enumerate(range(0, len(ids), ROWS_PER_SHARD)):
        buf = io.BytesIO()
        np.savez(
            buf,
            ids=ids[start : start + ROWS_PER_SHARD],
            logits=logits[start : start + ROWS_PER_SHARD].astype(np.float32),
        )
        (out / f"shard-{i:05d}.npz").write_bytes(buf.getvalue())
        total += (out / f"shard-{i:05d}.npz").stat().st_size
    return total


def bench_bytes(x: np.ndarray, teacher: torch.nn.Module, work: Path) -> dict[str, Any]:
    """Bytes per sample as stored for C=10 (teacher logits, top-3) and C=100 (random logits, top-5)."""
    n = len(x)
    ids = np.arange(n, dtype=np.int64)
    rows = []
    cases = [
        (10, 3, teacher_fn_for(teacher, x), "demo teacher (random init) on synthetic rows"),
        (100, 5, random_logits_fn(100), "random normal logits (scale 3)"),
    ]
    for c, k, fn, source in cases:
        fp = fingerprint(ids, x, np.full(n, c))  # distinct key per case
        logits = fn(slice(0, n))
        fp32 = npz_fp32_bytes(ids, logits, work / f"p2-fp32-c{c}")
        dense, _ = precompute(work / f"p2-c{c}", "bench", ids, fp, fn, None)
        topk, _ = precompute(work / f"p2-c{c}", "bench", ids, fp, fn, k)
        d_bytes, t_bytes = size_bytes(dense), size_bytes(topk)
        for fmt, b, payload in (
            ("fp32 npz", fp32, 8 + 4 * c),
            ("fp16 dense (kdflow)", d_bytes, 8 + 2 * c),
            (f"top-{k} (kdflow)", t_bytes, 8 + 4 * k),
        ):
            rows.append(
                {
                    "classes": c,
                    "format": fmt,
                    "rows": n,
                    "bytes": b,
                    "bytes_per_sample": b / n,
                    "payload_bytes_per_sample": payload,
                    "vs_fp32": b / fp32,
                    "logits_from": source,
                }
            )
    return {
        "rows": rows,
        "note": "bytes include the int64 id per row (8 B) and npz headers; "
        "payload = ids + values (+ uint16 indices for top-k) without headers",
    }


# -------------------------------------------------------------------------------- 3: time per epoch
def bench_epoch_time(
    rows: int, rounds: int, dcfg: DistillConfig, teacher: torch.nn.Module, work: Path
) -> dict[str, Any]:
    """Seconds per epoch: stored logits streamed / teacher online / hard labels / stored logits in memory."""
    rng = np.random.default_rng(3)
    x_tr = rng.standard_normal((LABELED_ROWS, 40), dtype=np.float32)
    y_tr = rng.integers(0, NUM_CLASSES, LABELED_ROWS)
    x_tf = rng.standard_normal((rows, 40), dtype=np.float32)
    y_tf_random = rng.integers(0, NUM_CLASSES, rows)  # only for the hard-label run
    x_va = rng.standard_normal((VAL_ROWS, 40), dtype=np.float32)
    y_va = rng.integers(0, NUM_CLASSES, VAL_ROWS)
    ids_tr = np.arange(LABELED_ROWS, dtype=np.int64)
    ids_tf = np.arange(LABELED_ROWS, LABELED_ROWS + rows, dtype=np.int64)
    d = work / "p3"
    p_tr = write_split(d / "train.parquet", ids_tr, x_tr, y_tr)
    p_tf = write_split(d / "transfer.parquet", ids_tf, x_tf, None)
    fps = {"train": fingerprint(ids_tr, x_tr, y_tr), "transfer": fingerprint(ids_tf, x_tf, None)}
    stores = {
        "train": precompute(d / "store", "train", ids_tr, fps["train"], teacher_fn_for(teacher, x_tr))[0],
        "transfer": precompute(d / "store", "transfer", ids_tf, fps["transfer"], teacher_fn_for(teacher, x_tf))[0],
    }
    z_va = predict_logits(teacher, x_va)
    x_all = np.concatenate([x_tr, x_tf])
    y_kd = np.concatenate([y_tr, np.full(rows, -1, dtype=np.int64)])
    y_hard = np.concatenate([y_tr, y_tf_random])
    z_all = np.concatenate(
        [
            stores["train"].read_aligned(ids_tr, TEACHER_VERSION, fps["train"]),
            stores["transfer"].read_aligned(ids_tf, TEACHER_VERSION, fps["transfer"]),
        ]
    )
    cfg = student_train_cfg(dcfg, epochs=2, early_stopping_patience=None, seed=0)

    def streamed() -> StreamingSource:
        parts = [("train", str(p_tr), stores["train"], True), ("transfer", str(p_tf), stores["transfer"], False)]
        return StreamingSource(parts, data_config(p_tr, p_tf), TEACHER_VERSION, fps)

    runs: list[tuple[str, str, Callable[[], Any], bool]] = [
        (
            "hard",
            "(c) hard labels, in memory (ArraySource, random labels on all rows)",
            lambda: ArraySource(x_all, y_hard),
            False,
        ),
        ("stored_streamed", "(a) stored logits, streamed (StreamingSource: Parquet + kdflow store)", streamed, True),
        (
            "teacher_online",
            "(b) teacher run online every batch",
            lambda: OnlineTeacherSource(x_all, y_kd, teacher),
            True,
        ),
        (
            "stored_in_memory",
            "(d) stored logits, in memory (ArraySource with logits)",
            lambda: ArraySource(x_all, y_kd, z_all),
            True,
        ),
    ]
    out: dict[str, Any] = {
        "rows": {"labeled": LABELED_ROWS, "transfer": rows, "val": VAL_ROWS},
        "student": dcfg.student.model_dump(),
        "batch_size": cfg.batch_size,
        "epochs": cfg.epochs,
        "rounds": rounds,
        "order": "round 1: c, a, b, d; round 2 reversed; alternating",
        "runs": {name: {"label": label, "fits": []} for name, label, _, _ in runs},
    }
    for r in range(rounds):
        for name, _, make, kd in runs if r % 2 == 0 else runs[::-1]:
            source = make()
            model = new_student(dcfg, 0)
            cpu_marks = [time.process_time()]
            t0 = time.perf_counter()
            res = fit(
                model,
                source,
                x_va,
                y_va,
                cfg,
                teacher_val_logits=z_va if kd else None,
                progress=False,
                on_epoch=lambda m: cpu_marks.append(time.process_time()),
            )
            total = time.perf_counter() - t0
            if hasattr(source, "close"):
                source.close()
            ep = [h["epoch_seconds"] for h in res.history]
            cpu_ep = [b - a for a, b in zip(cpu_marks, cpu_marks[1:])]
            out["runs"][name]["fits"].append(
                {
                    "round": r + 1,
                    "epoch_seconds": ep,
                    "epoch_process_cpu_seconds": cpu_ep,
                    "fit_total_seconds": total,
                    "steps": res.steps,
                    "load_avg_after": load_avg(),
                }
            )
            print(
                f"    round {r + 1} {name:<17} epochs {', '.join(f'{e:.2f}' for e in ep)} s "
                f"(CPU {', '.join(f'{e:.2f}' for e in cpu_ep)} s)",
                flush=True,
            )
    for run in out["runs"].values():
        run["seconds_per_epoch"] = median([e for f in run["fits"] for e in f["epoch_seconds"]])
        run["seconds_per_epoch_round1"] = median(run["fits"][0]["epoch_seconds"])
        run["min_seconds_per_epoch"] = min(e for f in run["fits"] for e in f["epoch_seconds"])
        run["process_cpu_seconds_per_epoch"] = median([e for f in run["fits"] for e in f["epoch_process_cpu_seconds"]])
    base = out["runs"]["hard"]
    for run in out["runs"].values():
        run["vs_hard"] = run["seconds_per_epoch"] / base["seconds_per_epoch"]
        run["vs_hard_round1"] = run["seconds_per_epoch_round1"] / base["seconds_per_epoch_round1"]
        run["vs_hard_cpu"] = run["process_cpu_seconds_per_epoch"] / base["process_cpu_seconds_per_epoch"]
        run["vs_hard_min"] = run["min_seconds_per_epoch"] / base["min_seconds_per_epoch"]
    out["ratio_stored_vs_hard"] = out["runs"]["stored_streamed"]["vs_hard"]
    return out


# ------------------------------------------------------------------------------------- 4: peak RSS
def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return -1


def rss_child(spec_path: Path) -> None:
    """Child process: open the prepared files, train 1 epoch streamed, write peak RSS figures."""
    global THREADS
    baseline = {
        "ru_maxrss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
        "vm_rss_kib": _status_kib("VmRSS"),
        "vm_hwm_kib": _status_kib("VmHWM"),
    }
    spec = json.loads(spec_path.read_text())
    THREADS = spec["threads"]
    set_threads()
    dcfg = load_config(packaged_config("mnist1d_distill.yaml"), DistillConfig)
    stores = {k: LogitStore(LocalStore(v["root"]), v["key"]) for k, v in spec["stores"].items()}
    parts = [("train", spec["train"], stores["train"], True), ("transfer", spec["transfer"], stores["transfer"], False)]
    source = StreamingSource(
        parts, data_config(Path(spec["train"]), Path(spec["transfer"])), TEACHER_VERSION, spec["fingerprints"]
    )
    with np.load(spec["val"]) as val:
        x_va, y_va = val["x"], val["y"]
    cfg = student_train_cfg(dcfg, epochs=1, early_stopping_patience=None, seed=0)
    model = new_student(dcfg, 0)
    t0 = time.perf_counter()
    res: TrainResult = fit(model, source, x_va, y_va, cfg, progress=False)
    seconds = time.perf_counter() - t0
    source.close()
    out = {
        "baseline_after_imports": baseline,
        "end": {
            "ru_maxrss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
            "vm_rss_kib": _status_kib("VmRSS"),
            "vm_hwm_kib": _status_kib("VmHWM"),
        },
        "rows_streamed": len(source),
        "steps": res.steps,
        "train_seconds": seconds,
        "torch_threads": torch.get_num_threads(),
    }
    Path(spec["result"]).write_text(json.dumps(out, indent=2))


def bench_rss(sizes: Sequence[int], work: Path) -> dict[str, Any]:
    """Prepare data on disk per size, then train in a fresh interpreter and read its peak RSS."""
    out: dict[str, Any] = {"sizes": {}}
    for n in sizes:
        d = work / f"p4-{n}"
        rng = np.random.default_rng(4)
        x_tr = rng.standard_normal((LABELED_ROWS, 40), dtype=np.float32)
        y_tr = rng.integers(0, NUM_CLASSES, LABELED_ROWS)
        ids_tr = np.arange(LABELED_ROWS, dtype=np.int64)
        x_tf = rng.standard_normal((n, 40), dtype=np.float32)
        ids_tf = np.arange(LABELED_ROWS, LABELED_ROWS + n, dtype=np.int64)
        p_tr = write_split(d / "train.parquet", ids_tr, x_tr, y_tr)
        p_tf = write_split(d / "transfer.parquet", ids_tf, x_tf, None)
        fps = {"train": fingerprint(ids_tr, x_tr, y_tr), "transfer": fingerprint(ids_tf, x_tf, None)}
        stores = {
            "train": precompute(d / "store", "train", ids_tr, fps["train"], random_logits_fn(NUM_CLASSES))[0],
            "transfer": precompute(d / "store", "transfer", ids_tf, fps["transfer"], random_logits_fn(NUM_CLASSES))[0],
        }
        np.savez(
            d / "val.npz",
            x=rng.standard_normal((VAL_ROWS, 40), dtype=np.float32),
            y=rng.integers(0, NUM_CLASSES, VAL_ROWS),
        )
        del x_tf
        spec = {
            "train": str(p_tr),
            "transfer": str(p_tf),
            "val": str(d / "val.npz"),
            "fingerprints": fps,
            "stores": {k: {"root": str(d / "store"), "key": s.key} for k, s in stores.items()},
            "result": str(d / "result.json"),
            "threads": THREADS,
        }
        (d / "spec.json").write_text(json.dumps(spec))
        # Through /bin/sh (which forks the interpreter; the trailing "exit" stops it from exec'ing directly):
        # the interpreter's ru_maxrss then starts from a small shell, not from this process's peak.
        cmd = [
            "/bin/sh",
            "-c",
            '"$0" "$@"; exit $?',
            sys.executable,
            str(Path(__file__).resolve()),
            "--_rss-child",
            str(d / "spec.json"),
        ]
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, cwd=Path(__file__).resolve().parents[1])
        child = json.loads((d / "result.json").read_text())
        child["wall_seconds"] = time.perf_counter() - t0
        child["transfer_rows"] = n
        child["parquet_bytes"] = p_tr.stat().st_size + p_tf.stat().st_size
        child["store_bytes"] = sum(size_bytes(s) for s in stores.values())
        child["increment_kib"] = child["end"]["ru_maxrss_kib"] - child["baseline_after_imports"]["ru_maxrss_kib"]
        out["sizes"][str(n)] = child
        print(
            f"    {n:>7} transfer rows: baseline {child['baseline_after_imports']['ru_maxrss_kib'] / 1024:.0f} MiB, "
            f"peak {child['end']['ru_maxrss_kib'] / 1024:.0f} MiB (VmHWM {child['end']['vm_hwm_kib'] / 1024:.0f} MiB), "
            f"{child['steps']} steps in {child['train_seconds']:.1f} s",
            flush=True,
        )
        shutil.rmtree(d)  # free the disk now
    lo, hi = str(min(sizes)), str(max(sizes))
    out["ratio_peak"] = out["sizes"][hi]["end"]["ru_maxrss_kib"] / out["sizes"][lo]["end"]["ru_maxrss_kib"]
    out["ratio_vm_hwm"] = out["sizes"][hi]["end"]["vm_hwm_kib"] / out["sizes"][lo]["end"]["vm_hwm_kib"]
    out["compared"] = [int(lo), int(hi)]
    return out


# ------------------------------------------------------------------------------- 5: top-k accuracy
def mnist1d_cached(n: int, seed: int, cache: Path | None) -> tuple[np.ndarray, np.ndarray]:
    from kdflow.generators import mnist1d_arrays

    path = cache / f"mnist1d-{n}-{seed}.npz" if cache else None
    if path is not None and path.is_file():
        with np.load(path) as f:
            return f["x"], f["y"]
    x, y = mnist1d_arrays(n, seed)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez(path, x=x, y=y)
    return x, y


def bench_topk(
    transfer: int,
    seeds: Sequence[int],
    epochs: int | None,
    teacher_epochs: int | None,
    data_seed: int,
    cache: Path | None,
    dcfg: DistillConfig,
    work: Path,
) -> dict[str, Any]:
    """Distil the demo student from dense vs top-3 stored logits of a trained demo teacher, per seed."""
    t0 = time.perf_counter()
    base = 100 * data_seed
    sizes = {"train": LABELED_ROWS, "val": VAL_ROWS, "test": 1000, "transfer": transfer}
    data, ids, next_id = {}, {}, 0
    for offset, (name, n) in enumerate(sizes.items()):
        data[name] = mnist1d_cached(n, base + offset + 1, cache)
        ids[name] = np.arange(next_id, next_id + n, dtype=np.int64)
        next_id += n
    gen_seconds = time.perf_counter() - t0
    print(f"    data generated/loaded in {gen_seconds:.1f} s", flush=True)
    (x_tr, y_tr), (x_va, y_va), (x_te, y_te), (x_tf, _) = (data[k] for k in ("train", "val", "test", "transfer"))

    tcfg = load_config(packaged_config("mnist1d_teacher.yaml"), TeacherConfig)
    t_upd: dict[str, Any] = {"num_threads": THREADS}
    if teacher_epochs:
        t_upd["epochs"] = teacher_epochs
    t_train = TrainConfig.model_validate({**tcfg.train.model_dump(), **t_upd})
    torch.manual_seed(t_train.seed)
    teacher = build_model(tcfg.model.arch, dict(tcfg.model.args), INPUT_SHAPE, NUM_CLASSES)
    t1 = time.perf_counter()
    t_res = train_classifier(teacher, x_tr, y_tr, x_va, y_va, t_train, progress=False)
    teacher_seconds = time.perf_counter() - t1
    teacher_acc = accuracy(predict_logits(teacher, x_te), y_te)
    print(
        f"    teacher: test acc {teacher_acc:.4f} (best epoch {t_res.best_epoch}/{len(t_res.history)}, "
        f"{teacher_seconds:.0f} s)",
        flush=True,
    )

    d = work / "p5"
    p_tr = write_split(d / "train.parquet", ids["train"], x_tr, y_tr)
    p_tf = write_split(d / "transfer.parquet", ids["transfer"], x_tf, None)
    fps = {
        "train": fingerprint(ids["train"], x_tr, y_tr),
        "transfer": fingerprint(ids["transfer"], x_tf, None),
        "val": fingerprint(ids["val"], x_va, y_va),
    }
    xs = {"train": x_tr, "transfer": x_tf, "val": x_va}
    modes = {"dense": None, "top3": 3}
    stores: dict[str, dict[str, LogitStore]] = {}
    for mode, k in modes.items():
        stores[mode] = {
            s: precompute(d / "store", s, ids[s], fps[s], teacher_fn_for(teacher, xs[s]), k)[0]
            for s in ("train", "transfer", "val")
        }
    bytes_per_sample = {
        m: sum(size_bytes(stores[m][s]) for s in ("train", "transfer")) / (LABELED_ROWS + transfer) for m in modes
    }
    z_val = {m: stores[m]["val"].read_aligned(ids["val"], TEACHER_VERSION, fps["val"]) for m in modes}

    # How much of the teacher's distribution top-3 keeps (transfer rows), at T=1 and at the training T.
    temp = dcfg.train.temperature
    z_dense = torch.from_numpy(
        stores["dense"]["transfer"].read_aligned(ids["transfer"], TEACHER_VERSION, fps["transfer"])
    )
    z_top = torch.from_numpy(stores["top3"]["transfer"].read_aligned(ids["transfer"], TEACHER_VERSION, fps["transfer"]))
    p1 = torch.softmax(z_dense, 1)
    kept_mass = float(p1.topk(3, dim=1).values.sum(1).mean())
    lp_d, lp_t = torch.log_softmax(z_dense / temp, 1), torch.log_softmax(z_top / temp, 1)
    kl_t = float((lp_d.exp() * (lp_d - lp_t)).sum(1).mean())

    s_upd: dict[str, Any] = {}
    if epochs:
        s_upd["epochs"] = epochs
    per_seed: list[dict[str, Any]] = []
    for seed in seeds:
        row: dict[str, Any] = {"seed": seed}
        for mode in modes:
            cfg = student_train_cfg(dcfg, seed=seed, **s_upd)
            parts = [
                ("train", str(p_tr), stores[mode]["train"], True),
                ("transfer", str(p_tf), stores[mode]["transfer"], False),
            ]
            source = StreamingSource(parts, data_config(p_tr, p_tf), TEACHER_VERSION, fps)
            model = new_student(dcfg, seed)
            t1 = time.perf_counter()
            res = fit(model, source, x_va, y_va, cfg, teacher_val_logits=z_val[mode], progress=False)
            secs = time.perf_counter() - t1
            source.close()
            acc = accuracy(predict_logits(model, x_te), y_te)
            row[mode] = {
                "test_accuracy": acc,
                "best_epoch": res.best_epoch,
                "epochs_run": len(res.history),
                "best_val_accuracy": res.best_val_accuracy,
                "seconds": secs,
            }
            print(
                f"    seed {seed} {mode:<5}: test acc {acc:.4f} (best epoch {res.best_epoch}/{len(res.history)}, "
                f"{secs:.0f} s)",
                flush=True,
            )
        row["difference_top3_minus_dense"] = row["top3"]["test_accuracy"] - row["dense"]["test_accuracy"]
        per_seed.append(row)
    summary = {m: mean_std([r[m]["test_accuracy"] for r in per_seed]) for m in modes}
    diff = summary["top3"]["mean"] - summary["dense"]["mean"]
    return {
        "rows": sizes,
        "data_seeds": {k: base + i + 1 for i, k in enumerate(sizes)},
        "teacher": {
            "model": tcfg.model.model_dump(),
            "params": count_parameters(teacher),
            "test_accuracy": teacher_acc,
            "best_epoch": t_res.best_epoch,
            "epochs_run": len(t_res.history),
            "train_seconds": teacher_seconds,
            "epochs": t_train.epochs,
            "train_config": t_train.model_dump(),
        },
        "student": {
            "model": dcfg.student.model_dump(),
            "params": count_parameters(new_student(dcfg, 0)),
            "epochs": student_train_cfg(dcfg, **s_upd).epochs,
            "early_stopping_patience": dcfg.train.early_stopping_patience,
            "temperature": temp,
            "train_config": student_train_cfg(dcfg, **s_upd).model_dump(),
        },
        "top3_kept_probability_mass_T1": kept_mass,
        f"kl_dense_to_top3_at_T{temp:g}": kl_t,
        "bytes_per_sample": bytes_per_sample,
        "per_seed": per_seed,
        "summary": summary,
        "difference_of_means": diff,
        "data_seconds": gen_seconds,
        "seconds": time.perf_counter() - t0,
        "std": "sample standard deviation (ddof=1) over seeds",
    }


# ------------------------------------------------------------------------------------------ report
def check_bars(res: dict[str, Any]) -> dict[str, dict[str, Any]]:
    bars: dict[str, dict[str, Any]] = {}

    def add(name: str, value: float, op: str, threshold: float) -> None:
        ok = (value >= threshold) if op == ">=" else (value <= threshold)
        bars[name] = {
            "rule": BARS[name],
            "value": value,
            "op": op,
            "threshold": threshold,
            "pass": bool(ok) and not math.isnan(value),
        }

    if "precompute" in res:
        add("precompute_throughput", res["precompute"]["ratio_dense"], ">=", 0.9)
    if "epoch_time" in res:
        add("stored_logit_training_time", res["epoch_time"]["ratio_stored_vs_hard"], "<=", 1.15)
    if "rss" in res:
        add("training_peak_rss", res["rss"]["ratio_peak"], "<=", 1.2)
    if "topk" in res:
        add("topk_accuracy", abs(res["topk"]["difference_of_means"]), "<=", 0.005)
    return bars


def print_report(res: dict[str, Any], bars: dict[str, dict[str, Any]]) -> None:
    if "precompute" in res:
        p = res["precompute"]
        print(
            f"\n1. Precompute throughput ({p['rows']} rows, batch {p['predict_batch_size']}, median of {p['repeats']}):"
        )
        for k, label in (
            ("bare", "bare forward (predict_logits)"),
            ("dense", "precompute, dense fp16"),
            ("top3", "precompute, top-3"),
        ):
            print(f"   {label:<32} {p['median_seconds'][k]:8.3f} s  {p['samples_per_second'][k]:10.0f} samples/s")
        print(
            f"   ratio dense/bare {p['ratio_dense']:.3f}, top-3/bare {p['ratio_top3']:.3f} "
            f"(process-CPU ratio dense {p['ratio_dense_cpu']:.3f}, best-of-{p['repeats']} ratio "
            f"{p['ratio_dense_best']:.3f}); store overhead (precompute minus teacher "
            f"time inside it): dense {p['median_store_overhead_seconds']['dense']:.3f} s, "
            f"top-3 {p['median_store_overhead_seconds']['top3']:.3f} s"
        )
    if "bytes" in res:
        print("\n2. Bytes per sample as stored (ids included):")
        print(f"   {'C':>4} | {'format':<20} | {'B/sample':>9} | {'payload':>7} | {'vs fp32':>7}")
        for r in res["bytes"]["rows"]:
            print(
                f"   {r['classes']:>4} | {r['format']:<20} | {r['bytes_per_sample']:9.2f} | "
                f"{r['payload_bytes_per_sample']:7d} | {r['vs_fp32']:7.3f}"
            )
    if "epoch_time" in res:
        e = res["epoch_time"]
        print(
            f"\n3. Student seconds per epoch ({e['rows']['labeled']} labeled + {e['rows']['transfer']} transfer rows):"
        )
        print(
            f"   {'':<72} {'s/epoch':>7}  {'x hard':>6} | {'round 1':>7} {'x hard':>6} | {'min':>6} {'x hard':>6} "
            f"| {'CPU s':>6} {'x hard':>6}"
        )
        for r in e["runs"].values():
            print(
                f"   {r['label']:<72} {r['seconds_per_epoch']:7.2f}  {r['vs_hard']:6.2f} | "
                f"{r['seconds_per_epoch_round1']:7.2f} {r['vs_hard_round1']:6.2f} | "
                f"{r['min_seconds_per_epoch']:6.2f} {r['vs_hard_min']:6.2f} | "
                f"{r['process_cpu_seconds_per_epoch']:6.2f} {r['vs_hard_cpu']:6.2f}"
            )
    if "rss" in res:
        print("\n4. Peak RSS of streamed training (fresh interpreter per size):")
        for n, r in res["rss"]["sizes"].items():
            print(
                f"   {int(n):>7} transfer rows: after imports {r['baseline_after_imports']['ru_maxrss_kib'] / 1024:7.1f} MiB,"
                f" peak {r['end']['ru_maxrss_kib'] / 1024:7.1f} MiB (+{r['increment_kib'] / 1024:.1f}),"
                f" VmHWM {r['end']['vm_hwm_kib'] / 1024:7.1f} MiB, {r['steps']} steps"
            )
        print(f"   ratio {res['rss']['ratio_peak']:.3f} (VmHWM ratio {res['rss']['ratio_vm_hwm']:.3f})")
    if "topk" in res:
        t = res["topk"]
        print(f"\n5. MNIST-1D distillation, dense vs top-3 (teacher test acc {t['teacher']['test_accuracy']:.4f}):")
        for r in t["per_seed"]:
            print(
                f"   seed {r['seed']}: dense {r['dense']['test_accuracy']:.4f}  top-3 {r['top3']['test_accuracy']:.4f}"
                f"  diff {r['difference_top3_minus_dense']:+.4f}"
            )
        for m in ("dense", "top3"):
            print(
                f"   {m:<5} mean {t['summary'][m]['mean']:.4f} +/- {t['summary'][m]['std']:.4f}, "
                f"{t['bytes_per_sample'][m]:.2f} B/sample"
            )
        print(f"   difference of means (top-3 - dense) {t['difference_of_means']:+.4f}")
    print("\nBars:")
    for name, b in bars.items():
        print(f"  {'PASS' if b['pass'] else 'FAIL'}  {b['rule']:<58} value {b['value']:.4f}")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--json", type=Path, default=None, help="write every figure as JSON to this path")
    p.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    p.add_argument("--parts", type=int, nargs="+", default=[1, 2, 3, 4, 5], help="which measurements (default all)")
    p.add_argument("--rows", type=int, default=50_000, help="synthetic rows for 1-3 (default 50000)")
    p.add_argument("--repeats", type=int, default=3, help="repetitions for 1 (default 3)")
    p.add_argument(
        "--rounds",
        type=int,
        default=2,
        help="rounds of the 2-epoch fits for 3, order reversed every other round (default 2)",
    )
    p.add_argument("--rss-sizes", type=int, nargs="+", default=[50_000, 500_000], help="transfer rows for 4")
    p.add_argument("--transfer-size", type=int, default=50_000, help="MNIST-1D transfer rows for 5 (default 50000)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="student training seeds for 5")
    p.add_argument("--epochs", type=int, default=None, help="override the distill config's student epochs (5)")
    p.add_argument("--teacher-epochs", type=int, default=None, help="override the teacher config's epochs (5)")
    p.add_argument("--data-seed", type=int, default=0, help="MNIST-1D generator base seed for 5")
    p.add_argument("--cache-dir", type=Path, default=None, help="cache generated MNIST-1D arrays here (.npz)")
    p.add_argument("--work-dir", type=Path, default=None, help="scratch directory (default: a temp dir)")
    p.add_argument("--_rss-child", dest="rss_child", type=Path, default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    global THREADS
    args = parse_args(argv)
    if args.rss_child is not None:
        rss_child(args.rss_child)
        return 0
    THREADS = args.threads
    set_threads()
    dcfg = load_config(packaged_config("mnist1d_distill.yaml"), DistillConfig)
    started = dt.datetime.now(dt.timezone.utc)
    t0 = time.perf_counter()
    machine = {
        "nproc": len(os.sched_getaffinity(0)),
        "cpu_count": os.cpu_count(),
        "cpu_model": cpu_model(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "load_avg_start": load_avg(),
    }
    print(
        f"kdflow logit-store bench: parts {args.parts}, torch {torch.__version__}, {machine['nproc']} CPUs "
        f"({machine['cpu_model']}), {torch.get_num_threads()} torch threads, load avg {machine['load_avg_start']}",
        flush=True,
    )
    res: dict[str, Any] = {}
    loads: dict[str, list[float]] = {}
    seconds: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="kdflow-bench-logits-", dir=args.work_dir) as tmp:
        work = Path(tmp)
        x = np.random.default_rng(0).standard_normal((args.rows, 40), dtype=np.float32)
        teacher = demo_teacher()

        def stage(part: int, name: str, fn: Callable[[], Any]) -> None:
            if part not in args.parts:
                return
            print(f"\n[{part}] {name} ...", flush=True)
            s = time.perf_counter()
            out = fn()
            seconds[name] = time.perf_counter() - s
            res[name] = out
            loads[name] = load_avg()
            print(f"    done in {seconds[name]:.1f} s (load avg {loads[name]})", flush=True)

        stage(1, "precompute", lambda: bench_precompute(x, teacher, args.repeats, work))
        stage(2, "bytes", lambda: bench_bytes(x, teacher, work))
        stage(3, "epoch_time", lambda: bench_epoch_time(args.rows, args.rounds, dcfg, teacher, work))
        stage(4, "rss", lambda: bench_rss(args.rss_sizes, work))
        stage(
            5,
            "topk",
            lambda: bench_topk(
                args.transfer_size,
                args.seeds,
                args.epochs,
                args.teacher_epochs,
                args.data_seed,
                args.cache_dir,
                dcfg,
                work,
            ),
        )
    bars = check_bars(res)
    total = time.perf_counter() - t0
    machine["load_avg_end"] = load_avg()
    print_report(res, bars)
    print(
        f"\nTotal wall time: {total:.1f} s; load avg start {machine['load_avg_start']}, end {machine['load_avg_end']}"
    )
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        defaults = parse_args([])
        overrides = {
            k: v
            for k, v in vars(args).items()
            if k not in ("json", "rss_child", "cache_dir", "work_dir") and v != getattr(defaults, k)
        }
        payload = {
            "benchmark": "kdflow teacher-logit store",
            "started_utc": started.isoformat(timespec="seconds"),
            "command": " ".join([Path(sys.executable).name, *sys.argv]),
            "machine": machine,
            "overrides": overrides,
            "results": res,
            "stage_seconds": seconds,
            "load_avg_after_stage": loads,
            "bars": bars,
            "all_bars_pass": all(b["pass"] for b in bars.values()),
            "total_seconds": total,
        }
        write_json(args.json, payload)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
