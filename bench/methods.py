"""Distillation methods side by side on MNIST-1D, plus one tabular comparison (a benchmark script, not a test).

For each seed ``s`` (default 0, 1, 2), all in a temporary directory (logit store, Parquet splits):

1. Data as ``bench/quality.py`` draws it (:func:`kdflow.generators.mnist1d_arrays`, one generator seed per split):
   train 4,000 labeled (``1000*s+1``), val 1,000 (``+2``), test 1,000 (``+3``), transfer ``--transfer-size``
   unlabeled (``+4``; default 20,000 here, 50,000 in quality.py, to keep the full run near 20 minutes on 2 CPUs).
2. Teacher: the packaged ``mnist1d_teacher.yaml`` model and ``train`` (only ``seed`` overridden) on the labeled
   train split (:func:`kdflow.train.train_classifier`); test accuracy and parameters. Its logits on every split go
   through the fp16 logit store (:func:`kdflow.self_distill.store_generation_logits`, keyed like any teacher's).
3. Students, all of the packaged ``mnist1d_distill.yaml`` student architecture (seeded ``s``):

   - ``hard_packaged``: hard labels with the packaged student ``train`` (15 epochs of 16 steps): quality.py's (a).
   - ``hard_budget``: hard labels, the KD step budget (``train.epochs * ceil((train + transfer rows) / batch)``
     as ``max_steps``), packaged lr, no early stopping (the cosine schedule runs its whole length; the best
     validation epoch is kept).
   - ``hard_tuned``: the same budget, its learning rate chosen on best validation accuracy from ``--hard-lrs``
     (default 0.001, 0.003, 0.01, plus the packaged lr: ``hard_budget`` is that point); never on test.
   - ``kd`` / ``dkd`` / ``dist``: ``train.loss`` kd, dkd, dist, the packaged settings otherwise, each trained as the
     distill flow trains it: :func:`kdflow.student.prepare_student_training` (streamed from the Parquet files and
     the stored logits) and :func:`kdflow.train.fit`.
   - ``tuned``: ``--tune-trials`` (default 8) trials of Optuna TPE on validation accuracy
     (:func:`kdflow.tune.make_objective` over :func:`kdflow.tune.load_tune_data`, an in-memory study from
     :func:`kdflow.tune.open_study`, sampler seed ``s``, ``min(4, trials)`` random startup trials, pruning after 3
     finished trials, the packaged search space and ``sla.max_ece`` constraint, trials kept in the study rather
     than MLflow; ``--tune-subset f``: a stratified fraction of the rows, as ``kdflow tune --subset``); the best
     feasible trial merged over the config (:func:`kdflow.tune.overlay`, :func:`kdflow.tune.merge`) and trained
     as ``kd`` is (streamed; the trials train in memory, as ``kdflow tune`` does). Its wall time includes the
     search.
   - ``born_again_g2``: :func:`kdflow.self_distill.born_again_step` generation 2 from the ``kd`` student.
   - ``online``: :func:`kdflow.mutual.train_online` with the packaged ``mnist1d_online.yaml`` (teacher cnn1d 64
     channels and the student co-trained from the labels only); the co-trained teacher is reported apart.
   - ``hard_examples``: ``kd`` with ``hard_examples.enabled`` (the packaged defaults: top 10% of the transfer rows
     by teacher entropy, oversampled 3x), through ``prepare_student_training`` as the flow does.

   Each reports test accuracy, test ECE (15 bins) at T=1 and after temperature scaling fitted on the validation
   split (:func:`kdflow.calibration.fit_temperature`, :func:`kdflow.calibration.calibration_metrics`), the
   fitted T, best validation accuracy, optimizer steps, parameters and wall time.
4. Moonshot bar (on the means over seeds): a student with <= 10% of the teacher's parameters whose mean test
   accuracy is at or above the teacher's mean; PASS when any method meets it (each method's verdict is listed).
5. Tabular: scikit-learn's bundled ``--table`` (default breast_cancer, named columns at raw scales) written by
   :func:`kdflow.generators.write_sklearn_table` (60/20/20 stratified, split seed ``s``): a kdflow teacher (``mlp``
   width 64, depth 2, dropout 0.1, ``preprocess: robust``; lr 0.003, batch 32, 60 epochs, no early stopping: the
   settings of tests/test_preprocess.py) vs scikit-learn's StandardScaler + LogisticRegression fitted on the
   same train split; test accuracy.

It prints per-method mean +/- sample std (ddof=1) over seeds, per-seed accuracies, wall times, machine and load,
and writes every figure with ``--json``. Exit status 0 whether or not the bar passes (a measurement, not a gate).

Run (from the repository root)::

    .venv/bin/python bench/methods.py --json bench/results/methods.json     # full: about 20-30 min on 2 CPUs
    .venv/bin/python bench/methods.py --quick                               # smoke run: tiny sizes, ~1 min
"""

from __future__ import annotations

import argparse
import datetime as dt
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
import optuna
import torch
from _common import cpu_model, load_avg, write_json

from kdflow.calibration import calibration_metrics, fit_temperature
from kdflow.config import (
    CalibrationConfig,
    DataConfig,
    DistillConfig,
    EvaluationConfig,
    FeatureSpec,
    ModelSpec,
    TeacherConfig,
    TrainConfig,
    TuneConfig,
    load_config,
    packaged_config,
)
from kdflow.data import Dataset, dataset_from_frame, read_frame, to_frame, write_parquet
from kdflow.ensemble import TeacherEnsemble
from kdflow.generators import mnist1d_arrays, sklearn_table_columns, write_sklearn_table
from kdflow.metrics import accuracy
from kdflow.models import build_for_training, count_parameters
from kdflow.mutual import train_online
from kdflow.registry import ModelRef
from kdflow.self_distill import born_again_step, generation_ref, store_generation_logits
from kdflow.student import prepare_student_training
from kdflow.train import TrainResult, fit, predict_logits, seed_everything, train_classifier
from kdflow.tune import (
    best_feasible,
    load_tune_data,
    make_objective,
    merge,
    open_study,
    overlay,
    run_trials,
    trial_table,
)

NUM_CLASSES = 10
SIZES = {"train": 4000, "val": 1000, "test": 1000}
SPLIT_SEED = {"train": 1, "val": 2, "test": 3, "transfer": 4}  # generator seed 1000*s + this, as bench/quality.py
STUDENTS = (
    "hard_packaged",
    "hard_budget",
    "hard_tuned",
    "kd",
    "dkd",
    "dist",
    "tuned",
    "born_again_g2",
    "online",
    "hard_examples",
)
TABLE_TEACHER = ModelSpec(arch="mlp", args={"width": 64, "depth": 2, "dropout": 0.1}, preprocess="robust")
TABLE_TRAIN = {
    "lr": 3e-3,
    "batch_size": 32,
    "epochs": 60,
    "early_stopping_patience": None,
    "schedule": {"warmup_steps": 20},
    "checkpoint_every_epochs": None,
}
MOONSHOT_MAX_PARAM_RATIO = 0.10
# A short search: TPE fits its model after 4 random trials (kdflow tune: 10) and the median pruner may stop a trial
# once 3 have finished (kdflow tune: 5); otherwise the packaged tune defaults (space, pruner warm-up, max_ece).
TUNE_STARTUP_TRIALS, TUNE_PRUNER_STARTUP_TRIALS = 4, 3


class _NoTracking:
    """Stands in for :class:`kdflow.tune.TrialRuns`: the bench keeps its trials in the Optuna study, not MLflow."""

    class _Client:
        def set_tag(self, *_: Any) -> None:
            pass

    client = _Client()

    def start(self, trial: Any, params: Any) -> str:
        return f"trial-{trial.number}"

    def metrics(self, run_id: str, values: Any, step: int = 0) -> None:
        pass

    def end(self, run_id: str, state: str, status: str) -> None:
        pass


def mean_std(values: Sequence[float]) -> dict[str, float]:
    """Mean and sample standard deviation (ddof=1; 0.0 for a single value)."""
    vals = [float(v) for v in values]
    return {"mean": statistics.fmean(vals), "std": statistics.stdev(vals) if len(vals) > 1 else 0.0}


def with_train(cfg: Any, **update: Any) -> Any:
    """``cfg`` (any config with a ``train`` section) with ``train`` keys replaced, validated again."""
    return cfg.model_copy(update={"train": TrainConfig.model_validate({**cfg.train.model_dump(), **update})})


def kd_step_budget(train: TrainConfig, rows: int) -> int:
    """The optimizer steps a distilled student is given: ``max_steps`` or ``epochs * ceil(rows / batch_size)``."""
    return train.max_steps or train.epochs * math.ceil(rows / train.batch_size)


def score(model: torch.nn.Module, val: Dataset, test: Dataset, cal: CalibrationConfig) -> dict[str, float]:
    """Test accuracy, test ECE at T=1 and at the temperature fitted on validation, that T, parameters."""
    z_val, z_test = predict_logits(model, val.x), predict_logits(model, test.x)
    temp = fit_temperature(z_val, val.y, cal.t_min, cal.t_max, cal.max_iter)
    return {
        "test_accuracy": accuracy(z_test, test.y),
        "ece_t1": calibration_metrics(z_test, test.y, 1.0, n_bins=cal.n_bins).ece,
        "ece_calibrated": calibration_metrics(z_test, test.y, temp, n_bins=cal.n_bins).ece,
        "temperature": temp,
        "params": count_parameters(model),
    }


def training_figures(result: TrainResult) -> dict[str, float]:
    """Best validation accuracy and epoch, epochs run and optimizer steps of one training."""
    return {
        "best_val_accuracy": result.best_val_accuracy,
        "best_epoch": result.best_epoch,
        "epochs_run": len(result.history),
        "steps": result.steps,
    }


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def mnist1d_splits(root: Path, seed: int, sizes: dict[str, int]) -> dict[str, Dataset]:
    """The seed's splits (disjoint ids: train, transfer, val, test) in memory and as Parquet files under ``root``
    (the distill flow streams train and transfer from files)."""
    out, next_id = {}, 0
    for name in ("train", "transfer", "val", "test"):
        x, y = mnist1d_arrays(sizes[name], 1000 * seed + SPLIT_SEED[name])
        ids = np.arange(next_id, next_id + len(x), dtype=np.int64)
        next_id += len(x)
        labels = None if name == "transfer" else y
        path = write_parquet(to_frame(ids, x, labels), root / f"{name}.parquet")
        out[name] = Dataset(name, str(path), ids, x, labels)
    return out


def distil(cfg: DistillConfig, ensemble: TeacherEnsemble, datasets: dict[str, Dataset]) -> tuple[Any, TrainResult]:
    """A fresh student trained as the distill flow's ``train-student`` task trains it (without MLflow)."""
    training = prepare_student_training(cfg, ensemble, datasets)
    try:
        val = datasets["val"]
        result = fit(
            training.model,
            training.source,
            val.x,
            val.y,
            cfg.train,
            ensemble.train_logits["val"],
            progress=False,
            checkpoints=training.checkpoints,
        )
    finally:
        training.source.close()
    if training.hard_examples is not None:
        result.hard_examples = training.hard_examples.as_dict()
    return training.model, result


def run_seed(
    seed: int, args: argparse.Namespace, tcfg: TeacherConfig, dcfg: DistillConfig, ocfg: DistillConfig
) -> dict[str, Any]:
    """Every MNIST-1D figure of one seed."""
    sizes = {**SIZES, **{k: getattr(args, f"{k}_size") for k in ("train", "val", "test", "transfer")}}
    started = time.perf_counter()
    methods: dict[str, dict[str, Any]] = {}
    seconds: dict[str, float] = {}
    say = lambda msg: print(f"  seed {seed}: {msg}", flush=True)  # noqa: E731
    with tempfile.TemporaryDirectory(prefix="kdflow-methods-bench-") as tmp:
        root = Path(tmp)
        datasets, seconds["data"] = timed(lambda: mnist1d_splits(root / "data", seed, sizes))
        train, val, test = datasets["train"], datasets["val"], datasets["test"]
        data_cfg = dcfg.data.model_copy(update={n: datasets[n].uri for n in ("train", "val", "test", "transfer")})
        cfg = with_train(dcfg, seed=seed).model_copy(
            update={"data": data_cfg, "store": dcfg.store.model_copy(update={"root": str(root / "store")})}
        )
        cal = cfg.calibration

        # Teacher, its logits through the store.
        seed_everything(seed)
        teacher = build_for_training(tcfg.model, train.x, NUM_CLASSES)
        t_train = tcfg.train.model_copy(update={"seed": seed, "checkpoint_every_epochs": None})
        t_res, seconds["teacher_train"] = timed(
            lambda: train_classifier(teacher, train.x, train.y, val.x, val.y, t_train, progress=False)
        )
        teacher_fig = {**score(teacher, val, test, cal), **training_figures(t_res)}
        say(f"teacher test {teacher_fig['test_accuracy']:.4f} ({seconds['teacher_train']:.0f} s)")
        teacher_ref = ModelRef(f"models:/bench-teacher/{seed}", "bench-teacher", str(seed), None)
        (ensemble, _), seconds["teacher_logits"] = timed(
            lambda: store_generation_logits(cfg, teacher, teacher_ref, datasets)
        )

        def record(name: str, model: torch.nn.Module, result: TrainResult, secs: float, **extra: Any) -> None:
            methods[name] = {**score(model, val, test, cal), **training_figures(result), "seconds": secs, **extra}
            m = methods[name]
            say(
                f"{name:<14} test {m['test_accuracy']:.4f}, ECE T* {m['ece_calibrated']:.4f}, {m['steps']} steps, "
                f"{secs:.0f} s"
            )

        # Hard labels: packaged schedule; KD budget with the packaged lr and a small lr grid chosen on validation.
        def hard(train_cfg: TrainConfig) -> tuple[torch.nn.Module, TrainResult]:
            seed_everything(seed)
            model = build_for_training(cfg.student, train.x, NUM_CLASSES)
            return model, train_classifier(model, train.x, train.y, val.x, val.y, train_cfg, progress=False)

        (model, res), secs = timed(lambda: hard(cfg.train.model_copy(update={"checkpoint_every_epochs": None})))
        record("hard_packaged", model, res, secs)
        budget = kd_step_budget(cfg.train, len(train) + len(datasets["transfer"]))
        grid = []
        for lr in sorted({*args.hard_lrs, cfg.train.lr}):  # the packaged lr is always a grid point: hard_budget
            budget_cfg = with_train(
                cfg, lr=lr, max_steps=budget, early_stopping_patience=None, checkpoint_every_epochs=None
            ).train
            (model, res), secs = timed(lambda: hard(budget_cfg))
            grid.append({"lr": lr, "model": model, "result": res, "seconds": secs})
            if lr == cfg.train.lr:
                record("hard_budget", model, res, secs, lr=lr)
        chosen = max(grid, key=lambda g: g["result"].best_val_accuracy)  # the first of equals: lower lr first
        record(
            "hard_tuned",
            chosen["model"],
            chosen["result"],
            sum(g["seconds"] for g in grid),
            lr=chosen["lr"],
            grid=[{"lr": g["lr"], "best_val_accuracy": g["result"].best_val_accuracy} for g in grid],
        )

        # Distillation losses, as the distill flow trains them.
        gen1 = None
        for loss in ("kd", "dkd", "dist"):
            (model, res), secs = timed(lambda: distil(with_train(cfg, loss=loss), ensemble, datasets))
            record(loss, model, res, secs)
            gen1 = model if loss == "kd" else gen1

        # Tuned: TPE on validation accuracy, then the best feasible settings trained as kd is.
        tune_cfg = TuneConfig(
            trials=args.tune_trials,
            startup_trials=min(TUNE_STARTUP_TRIALS, args.tune_trials),
            pruner_startup_trials=TUNE_PRUNER_STARTUP_TRIALS,
            seed=seed,
            subset=args.tune_subset,
        )
        cfg_t = cfg.model_copy(update={"tune": tune_cfg})

        def tune() -> Any:
            data = load_tune_data(cfg_t, [teacher_ref], [1.0], datasets, tune_cfg.subset, seed)
            study = open_study(f"bench-methods-{seed}", None, tune_cfg)
            run_trials(study, make_objective(cfg_t, data, _NoTracking()), tune_cfg.trials)
            return study

        study, tune_secs = timed(tune)
        best = best_feasible(study)
        trials = trial_table(study)
        if best is None:
            say("tuned: no feasible trial")
            methods["tuned"] = {"skipped": "no feasible trial", "tune_seconds": tune_secs, "trials": trials}
        else:
            tuned_cfg = DistillConfig.model_validate(merge(cfg.model_dump(), overlay(best)))
            (model, res), secs = timed(lambda: distil(tuned_cfg, ensemble, datasets))
            record(
                "tuned",
                model,
                res,
                tune_secs + secs,
                tune_seconds=tune_secs,
                train_seconds=secs,
                params_chosen=best.params,
                trial=best.number,
                trial_val_accuracy=best.value,
                trials=trials,
            )

        # Born-again generation 2 from the kd student (generation 1).
        parent_ref = generation_ref("bench-student", "1", None)
        step, secs = timed(lambda: born_again_step(cfg, 2, gen1, parent_ref, datasets))
        record("born_again_g2", step.model, step.training, secs)

        # Online (mutual) distillation: the packaged online config, co-trained from the labels.
        online_cfg = with_train(ocfg, seed=seed)
        pair, secs = timed(lambda: train_online(online_cfg, datasets))
        co_teacher = {**score(pair.teacher, val, test, cal), **training_figures(pair.result.teacher)}
        record("online", pair.student, pair.result.student, secs, co_teacher=co_teacher)

        # KD with hard examples (the packaged hard_examples defaults), as the distill flow trains it.
        hard_cfg = cfg.model_copy(update={"hard_examples": cfg.hard_examples.model_copy(update={"enabled": True})})
        (model, res), secs = timed(lambda: distil(hard_cfg, ensemble, datasets))
        record("hard_examples", model, res, secs, selection=res.hard_examples)

    seconds["total"] = time.perf_counter() - started
    return {
        "seed": seed,
        "rows": {k: len(v) for k, v in datasets.items()},
        "kd_step_budget": budget,
        "teacher": teacher_fig,
        "methods": methods,
        "seconds": seconds,
    }


def run_table(name: str, seed: int, epochs_cap: int | None) -> dict[str, Any]:
    """Test accuracy of the kdflow MLP teacher (robust preprocessing) and of StandardScaler + LogisticRegression
    on one seeded split of scikit-learn's table ``name``."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    with tempfile.TemporaryDirectory(prefix="kdflow-methods-table-") as tmp:
        paths = write_sklearn_table(tmp, name, seed=seed)
        frames = {s: read_frame(str(paths[s])) for s in ("train", "val", "test")}
    num_classes = int(frames["train"]["label"].max()) + 1
    data_cfg = DataConfig(
        train=str(paths["train"]),
        val=str(paths["val"]),
        test=str(paths["test"]),
        num_classes=num_classes,
        features=FeatureSpec(columns=sklearn_table_columns(name)),
    )
    train, val, test = (
        dataset_from_frame(frames[s], s, str(paths[s]), data_cfg, True) for s in ("train", "val", "test")
    )
    for ds in (train, val, test):  # pandas hands out read-only arrays; torch warns when it wraps one
        ds.x = np.array(ds.x)
    cfg = TrainConfig.model_validate({**TABLE_TRAIN, "seed": seed})
    if epochs_cap:
        cfg = cfg.model_copy(update={"epochs": min(cfg.epochs, epochs_cap)})
    t0 = time.perf_counter()
    seed_everything(seed)
    teacher = build_for_training(TABLE_TEACHER, train.x, num_classes)
    train_classifier(teacher, train.x, train.y, val.x, val.y, cfg, progress=False)
    teacher_secs = time.perf_counter() - t0
    t0 = time.perf_counter()
    baseline = make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000)).fit(train.x, train.y)
    return {
        "seed": seed,
        "rows": {"train": len(train), "val": len(val), "test": len(test)},
        "teacher_test_accuracy": accuracy(predict_logits(teacher, test.x), test.y),
        "teacher_params": count_parameters(teacher),
        "baseline_test_accuracy": float(baseline.score(test.x, test.y)),
        "seconds": {"teacher": teacher_secs, "baseline": time.perf_counter() - t0},
    }


METRICS = (
    "test_accuracy",
    "ece_calibrated",
    "ece_t1",
    "temperature",
    "best_val_accuracy",
    "steps",
    "seconds",
    "params",
)


def summarize(rows: list[dict[str, Any]], tables: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean +/- sample std over seeds of every figure, the moonshot verdict per method and overall."""
    teacher = {k: mean_std([r["teacher"][k] for r in rows]) for k in ("test_accuracy", "ece_calibrated", "params")}
    co_teacher = mean_std([r["methods"]["online"]["co_teacher"]["test_accuracy"] for r in rows])
    methods: dict[str, Any] = {}
    for name in STUDENTS:
        done = [r["methods"][name] for r in rows if "test_accuracy" in r["methods"][name]]
        if len(done) < len(rows):
            methods[name] = {"skipped_seeds": len(rows) - len(done)}
            continue
        methods[name] = {k: mean_std([m[k] for m in done]) for k in METRICS}
    t_acc, t_params = teacher["test_accuracy"]["mean"], teacher["params"]["mean"]
    verdicts = {}
    for name, m in methods.items():
        if "test_accuracy" not in m:
            continue
        ratio = m["params"]["mean"] / t_params
        acc = m["test_accuracy"]["mean"]
        verdicts[name] = {
            "test_accuracy": acc,
            "gap_to_teacher": acc - t_acc,
            "param_ratio": ratio,
            "meets": bool(acc >= t_acc and ratio <= MOONSHOT_MAX_PARAM_RATIO),
        }
    meeting = [n for n, v in verdicts.items() if v["meets"]]
    table = {k: mean_std([t[k] for t in tables]) for k in ("teacher_test_accuracy", "baseline_test_accuracy")}
    return {
        "teacher": teacher,
        "online_co_teacher_test_accuracy": co_teacher,
        "methods": methods,
        "moonshot": {
            "bar": f"student params <= {MOONSHOT_MAX_PARAM_RATIO:.0%} of the teacher's and mean test "
            "accuracy >= the teacher's mean",
            "teacher_mean": t_acc,
            "per_method": verdicts,
            "methods_meeting": meeting,
            "pass": bool(meeting),
        },
        "table": table,
        "seconds_per_seed": mean_std([r["seconds"]["total"] for r in rows]),
    }


def print_report(rows: list[dict[str, Any]], tables: list[dict[str, Any]], summary: dict[str, Any], table: str) -> None:
    """Readable tables on stdout."""
    n = len(rows)
    t = summary["teacher"]
    print(f"\nMNIST-1D, mean +/- sample std (ddof=1) over {n} seed(s); test split, ECE 15 bins")
    print(
        f"  teacher: test {t['test_accuracy']['mean']:.4f} +/- {t['test_accuracy']['std']:.4f}, "
        f"{t['params']['mean']:,.0f} parameters; online co-trained teacher "
        f"{summary['online_co_teacher_test_accuracy']['mean']:.4f} +/- "
        f"{summary['online_co_teacher_test_accuracy']['std']:.4f}"
    )
    cols = ("test acc", 17), ("ECE T*", 17), ("ECE T=1", 7), ("params", 6), ("steps", 6), ("s", 6)
    print(f"  {'method':<14} | " + " | ".join(f"{h:>{w}}" for h, w in cols))
    for name in STUDENTS:
        m = summary["methods"][name]
        if "test_accuracy" not in m:
            print(f"  {name:<14} | skipped on {m['skipped_seeds']} seed(s)")
            continue
        a, e = m["test_accuracy"], m["ece_calibrated"]
        print(
            f"  {name:<14} | {a['mean']:.4f} +/- {a['std']:.4f} | {e['mean']:.4f} +/- {e['std']:.4f} | "
            f"{m['ece_t1']['mean']:7.4f} | {m['params']['mean']:6.0f} | {m['steps']['mean']:6.0f} | "
            f"{m['seconds']['mean']:6.0f}"
        )
    print("\n  per seed test accuracy: seed, teacher, " + ", ".join(STUDENTS))
    for r in rows:
        accs = [f"{r['methods'][k].get('test_accuracy', float('nan')):.4f}" for k in STUDENTS]
        print(f"  {r['seed']}, {r['teacher']['test_accuracy']:.4f}, " + ", ".join(accs))
    print("  hard_tuned lr per seed: " + ", ".join(f"{r['methods']['hard_tuned']['lr']:g}" for r in rows))
    print(
        "  stage seconds per seed: "
        + "; ".join(
            f"{r['seed']}: data {r['seconds']['data']:.0f}, teacher {r['seconds']['teacher_train']:.0f}, "
            f"logits {r['seconds']['teacher_logits']:.0f}, total {r['seconds']['total']:.0f}"
            for r in rows
        )
    )

    moon = summary["moonshot"]
    print(
        f"\nMoonshot ({moon['bar']}; teacher mean {moon['teacher_mean']:.4f}): "
        f"{'PASS' if moon['pass'] else 'FAIL'}" + (f" - {', '.join(moon['methods_meeting'])}" if moon["pass"] else "")
    )
    for name, v in moon["per_method"].items():
        print(
            f"  {'meets' if v['meets'] else '     '} {name:<14} {v['test_accuracy']:.4f} ({v['gap_to_teacher']:+.4f}), "
            f"params {v['param_ratio']:.1%} of the teacher's"
        )

    tb = summary["table"]
    print(f"\nTabular ({table}, test accuracy): kdflow MLP teacher (robust) vs StandardScaler + LogisticRegression")
    for r in tables:
        print(
            f"  seed {r['seed']}: {r['teacher_test_accuracy']:.4f} vs {r['baseline_test_accuracy']:.4f} "
            f"({r['rows']['test']} test rows)"
        )
    print(
        f"  mean: {tb['teacher_test_accuracy']['mean']:.4f} +/- {tb['teacher_test_accuracy']['std']:.4f} vs "
        f"{tb['baseline_test_accuracy']['mean']:.4f} +/- {tb['baseline_test_accuracy']['std']:.4f}"
    )


QUICK = {
    "seeds": ([0, 1, 2], [0]),
    "transfer_size": (20_000, 300),
    "train_size": (4000, 300),
    "val_size": (1000, 200),
    "test_size": (1000, 200),
    "epochs_cap": (None, 2),
    "tune_trials": (8, 2),
    "hard_lrs": ([0.001, 0.003, 0.01], [0.003]),
}  # option: (full default, --quick default)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--seeds", type=int, nargs="+", help="benchmark seeds (default 0 1 2; quick 0)")
    p.add_argument("--transfer-size", type=int, help="unlabeled transfer rows per seed (default 20000; quick 300)")
    p.add_argument("--train-size", type=int, help="labeled train rows (default 4000; quick 300)")
    p.add_argument("--val-size", type=int, help="validation rows (default 1000; quick 200)")
    p.add_argument("--test-size", type=int, help="test rows (default 1000; quick 200)")
    p.add_argument("--epochs-cap", type=int, help="cap every training's epochs (default none; quick 2)")
    p.add_argument("--tune-trials", type=int, help="Optuna trials per seed (default 8; quick 2)")
    p.add_argument("--tune-subset", type=float, default=None, help="tune on this stratified fraction (default all)")
    p.add_argument("--hard-lrs", type=float, nargs="+", help="hard_tuned lr grid (default 0.001 0.003 0.01)")
    p.add_argument("--table", default="breast_cancer", help="scikit-learn table (breast_cancer, wine, digits, iris)")
    p.add_argument("--json", type=Path, default=None, help="write all figures as JSON to this path")
    p.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run (explicit options still win)")
    args = p.parse_args(argv)
    for key, (full, quick) in QUICK.items():
        if getattr(args, key) is None:
            setattr(args, key, quick if args.quick else full)
    sizes = {k: getattr(args, k) for k in ("transfer_size", "train_size", "val_size", "test_size", "tune_trials")}
    bad = [f"--{k.replace('_', '-')} {v}" for k, v in sizes.items() if v < 1]
    if args.epochs_cap is not None and args.epochs_cap < 1:
        bad.append(f"--epochs-cap {args.epochs_cap}")
    if args.tune_subset is not None and not 0.0 < args.tune_subset <= 1.0:
        bad.append(f"--tune-subset {args.tune_subset} (a fraction in (0, 1])")
    if bad:
        p.error("must be positive: " + ", ".join(bad))
    return args


def capped(cfg: Any, cap: int | None) -> Any:
    """``cfg`` with ``train.epochs`` at most ``cap`` (no cap: unchanged)."""
    return cfg if cap is None else with_train(cfg, epochs=min(cfg.train.epochs, cap))


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # the bench prints its own trial summary
    tcfg = capped(load_config(packaged_config("mnist1d_teacher.yaml"), TeacherConfig), args.epochs_cap)
    small_profile = EvaluationConfig(latency_batches=20, throughput_batches=2)  # the stored logits' profile only
    dcfg = capped(load_config(packaged_config("mnist1d_distill.yaml"), DistillConfig), args.epochs_cap)
    dcfg = with_train(dcfg, checkpoint_every_epochs=None).model_copy(update={"evaluation": small_profile})
    ocfg = capped(load_config(packaged_config("mnist1d_online.yaml"), DistillConfig), args.epochs_cap)

    started = dt.datetime.now(dt.timezone.utc)
    t0 = time.perf_counter()
    load_start = load_avg()
    print(
        f"kdflow methods bench: seeds {args.seeds}, transfer {args.transfer_size} rows, {cpu_model()}, "
        f"{os.cpu_count()} CPUs, {torch.get_num_threads()} torch threads, torch {torch.__version__}, "
        f"load {load_start}",
        flush=True,
    )
    rows = []
    for seed in args.seeds:
        rows.append(run_seed(seed, args, tcfg, dcfg, ocfg))
        print(f"  seed {seed} done in {rows[-1]['seconds']['total']:.0f} s", flush=True)
    tables = [run_table(args.table, seed, args.epochs_cap) for seed in args.seeds]
    summary = summarize(rows, tables)
    total = time.perf_counter() - t0
    print_report(rows, tables, summary, args.table)
    print(f"\nTotal wall time: {total:.0f} s; load average {load_start} at the start, {load_avg()} at the end")

    if args.json is not None:
        write_json(
            args.json,
            {
                "benchmark": "kdflow distillation methods, MNIST-1D; tabular teacher vs logistic regression",
                "started_utc": started.isoformat(timespec="seconds"),
                "command": " ".join([Path(sys.executable).name, *sys.argv]),
                "machine": {
                    "cpu": cpu_model(),
                    "platform": platform.platform(),
                    "cpus": os.cpu_count(),
                    "torch": torch.__version__,
                    "torch_threads": torch.get_num_threads(),
                    "python": platform.python_version(),
                    "load_avg_start": load_start,
                    "load_avg_end": load_avg(),
                },
                "options": {k: v for k, v in vars(args).items() if k != "json"},
                "std": "sample standard deviation (ddof=1) over seeds",
                "teacher_config": {"model": tcfg.model.model_dump(), "train": tcfg.train.model_dump()},
                "distill_config": {
                    "student": dcfg.student.model_dump(),
                    "train": dcfg.train.model_dump(),
                    "hard_examples": dcfg.hard_examples.model_dump(),
                    "tune_space": {k: v.model_dump() for k, v in dcfg.tune.space.items()},
                },
                "online_config": {
                    "online": ocfg.online.model_dump() if ocfg.online else None,
                    "train": ocfg.train.model_dump(),
                },
                "table_teacher": {"model": TABLE_TEACHER.model_dump(), "train": TABLE_TRAIN},
                "per_seed": rows,
                "tabular": tables,
                "summary": summary,
                "total_seconds": total,
            },
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
