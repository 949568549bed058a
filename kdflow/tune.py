"""Bayesian hyper-parameter search for the student: Optuna's TPE sampler (Bergstra et al. 2011) with the median
stopping rule (Golovin et al. 2017) over the ``train.*`` settings of ``tune.space``.

A trial trains the student on the stored teacher logits (no teacher runs here) with its sampled settings, reports
validation accuracy after every epoch to the pruner (a trial below the median of earlier trials at the same epoch
is stopped), then fits the served temperature on validation (Guo et al. 2017) and measures the calibrated ECE.

    objective:   maximize  val_accuracy(student)
    constraint:  ECE_val(softmax(z / T*)) - sla.max_ece <= 0        (Trial.set_constraint; feasible otherwise)

TPE ranks infeasible trials below feasible ones; the best trial is the most accurate feasible one. Its settings
are written as a partial distill config (``train: {...}``) that is merged over the base config.

Several workers (threads, processes or machines) share one study through an RDB storage (``sqlite:///``,
``postgresql://``, ``mysql://``); each runs :func:`run_trials` for its share. Every trial is an MLflow run nested
under the tuning run (tag ``mlflow.parentRunId``).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np
import optuna
import yaml

from kdflow.config import ConfigError, DistillConfig, SearchDimension, TrainConfig, TuneConfig, tune_as_int
from kdflow.data import Dataset
from kdflow.device import resolve_device
from kdflow.ensemble import combine_logits
from kdflow.evaluation import calibrate_student
from kdflow.models import build_for_training
from kdflow.precompute import logit_stores
from kdflow.redact import redact_text
from kdflow.registry import ModelRef
from kdflow.stream import ArraySource
from kdflow.train import fit, seed_everything

STORAGE_SCHEMES = ("sqlite", "postgresql", "mysql")  # Optuna's RDBStorage (SQLAlchemy URLs, drivers with "+")
ECE_CONSTRAINT = "val_ece_over_max"


def check_tune_options(storage: str | None, workers: int, subset: float | None) -> None:
    """Refuse, with one :class:`ConfigError` naming the problem, an unknown storage scheme, several workers on an
    in-memory study (they could not share it) and a subset fraction outside (0, 1]."""
    if storage is not None:
        scheme = urlparse(storage).scheme.split("+")[0]
        if scheme not in STORAGE_SCHEMES:
            raise ConfigError(
                f"--storage {redact_text(storage)}: unknown storage scheme {scheme!r}; expected an Optuna RDB URL "
                f"({', '.join(s + '://' for s in STORAGE_SCHEMES)}), e.g. postgresql://user@host:5432/optuna"
            )
    if workers < 1:
        raise ConfigError(f"--workers must be at least 1, got {workers}")
    if workers > 1 and storage is None:
        raise ConfigError(f"{workers} workers need a shared --storage (an in-memory study serves one worker)")
    if subset is not None and not 0.0 < subset <= 1.0:
        raise ConfigError(f"--subset must be a fraction in (0, 1], got {subset}")


def storage_url(storage: str) -> str:
    """The SQLAlchemy URL Optuna opens: a bare ``postgresql://`` runs on psycopg2 (``postgresql+psycopg2://``), the
    driver kdflow installs - SQLAlchemy 2.1 would pick psycopg 3 (as ``mlflow/start-server.sh`` does)."""
    return (
        "postgresql+psycopg2://" + storage.removeprefix("postgresql://")
        if storage.startswith("postgresql://")
        else storage
    )


def shares(trials: int, workers: int) -> list[int]:
    """``trials`` split over ``workers`` as evenly as possible (the first ones take the remainder)."""
    return [trials // workers + (i < trials % workers) for i in range(workers)]


def stratified_subset(labels: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Sorted row indices of a stratified sample: from each class ``c`` with ``n_c`` rows, ``max(1, round(fraction
    * n_c))`` rows drawn without replacement (seeded), so the class proportions are kept."""
    rng = np.random.default_rng(seed)
    picked = [
        rng.choice(rows, size=max(1, round(fraction * len(rows))), replace=False)
        for rows in (np.flatnonzero(labels == c) for c in np.unique(labels))
    ]
    return np.sort(np.concatenate(picked)) if picked else np.zeros(0, dtype=np.int64)


@dataclass
class TuneData:
    """The student's training rows in memory (train, then the unlabeled splits; label -1 when unlabeled), each
    teacher's stored logits for them and for validation, and the teachers' weights. The teachers are combined per
    trial, at the trial's temperature (:func:`kdflow.ensemble.combine_logits`)."""

    x: np.ndarray
    y: np.ndarray
    teacher_logits: list[np.ndarray]
    weights: list[float]
    val: Dataset
    teacher_val_logits: list[np.ndarray]
    rows: dict[str, int]

    def source(self, temperature: float) -> ArraySource:
        """The training rows with the teachers' logits combined at ``temperature``."""
        return ArraySource(self.x, self.y, combine_logits(self.teacher_logits, self.weights, temperature))

    def val_logits(self, temperature: float) -> np.ndarray:
        """The teachers' validation logits combined at ``temperature`` (the validation soft loss)."""
        return combine_logits(self.teacher_val_logits, self.weights, temperature)


def load_tune_data(
    cfg: DistillConfig,
    teachers: Sequence[ModelRef],
    weights: Sequence[float],
    datasets: Mapping[str, Dataset],
    subset: float | None = None,
    seed: int = 0,
) -> TuneData:
    """Read every teacher's stored logits (checksums and provenance verified: :meth:`LogitStore.read_aligned`) for
    the training splits and validation; with ``subset``, keep a stratified fraction of the train rows (by label)
    and of each unlabeled split (by the combined teacher's argmax), seeded."""
    names = ["train"] + [n for n in ("transfer", "recent") if n in datasets]
    stores = [logit_stores(cfg, t, {n: datasets[n] for n in [*names, "val"]}) for t in teachers]

    def read(name: str) -> list[np.ndarray]:
        ds = datasets[name]
        return [st[name].read_aligned(ds.ids, t.version, ds.fingerprint) for t, st in zip(teachers, stores)]

    xs, ys, zs, rows = [], [], [], {}
    for i, name in enumerate(names):
        ds, z = datasets[name], read(name)
        y = ds.y if ds.y is not None and name == "train" else np.full(len(ds), -1, dtype=np.int64)
        keep = np.arange(len(ds))
        if subset is not None and subset < 1.0:
            strata = y if name == "train" else combine_logits(z, weights, 1.0).argmax(1)
            keep = stratified_subset(strata, subset, seed + i)
        xs.append(ds.x[keep])
        ys.append(y[keep])
        zs.append([t[keep] for t in z])
        rows[name] = len(keep)
    return TuneData(
        x=np.concatenate(xs),
        y=np.concatenate(ys),
        teacher_logits=[np.concatenate([z[t] for z in zs]) for t in range(len(teachers))],
        weights=list(weights),
        val=datasets["val"],
        teacher_val_logits=read("val"),
        rows=rows,
    )


def suggest(trial: optuna.Trial, space: Mapping[str, SearchDimension]) -> dict[str, Any]:
    """The trial's value for every setting of ``space``: categorical, integer or float (log-uniform when ``log``)."""
    params: dict[str, Any] = {}
    for name, dim in space.items():
        if dim.choices is not None:
            params[name] = trial.suggest_categorical(name, dim.choices)
        elif tune_as_int(name):
            params[name] = trial.suggest_int(name, int(dim.low), int(dim.high), log=dim.log)
        else:
            params[name] = trial.suggest_float(name, float(dim.low), float(dim.high), log=dim.log)
    return params


def trial_train_config(train: TrainConfig, params: Mapping[str, Any], epochs: int | None) -> TrainConfig:
    """``train`` with the trial's values (validated again), ``epochs`` when given, and no checkpoints (a trial is
    short, and its state must not be resumed by another trial)."""
    update = {**params, "checkpoint_every_epochs": None, **({"epochs": epochs} if epochs else {})}
    return TrainConfig.model_validate({**train.model_dump(), **update})


def open_study(
    name: str, storage: str | optuna.storages.BaseStorage | None, tune: TuneConfig, worker: int = 0
) -> optuna.Study:
    """Create the study ``name`` in ``storage`` or load it if it exists (maximizing validation accuracy), with a TPE
    sampler seeded ``tune.seed + worker`` (workers sharing a study must not draw the same startup trials) and a
    median pruner."""
    sampler = optuna.samplers.TPESampler(n_startup_trials=tune.startup_trials, seed=tune.seed + worker)
    pruner = optuna.pruners.MedianPruner(
        n_startup_trials=tune.pruner_startup_trials, n_warmup_steps=tune.pruner_warmup_epochs
    )
    return optuna.create_study(
        storage=storage, sampler=sampler, pruner=pruner, study_name=name, direction="maximize", load_if_exists=True
    )


class TrialRuns:
    """Each trial as an MLflow run nested under the tuning run ``parent_run_id`` (same experiment)."""

    def __init__(self, tracking_uri: str, parent_run_id: str, study: str):
        from mlflow import MlflowClient

        self.client = MlflowClient(tracking_uri=tracking_uri)
        self.parent_run_id = parent_run_id
        self.study = study
        self.experiment_id = self.client.get_run(parent_run_id).info.experiment_id

    def start(self, trial: optuna.Trial, params: Mapping[str, Any]) -> str:
        """Create the trial's run (tags ``mlflow.parentRunId``, study and trial number) and log its parameters."""
        from mlflow.entities import Param

        run = self.client.create_run(
            self.experiment_id,
            run_name=f"trial-{trial.number}",
            tags={
                "mlflow.parentRunId": self.parent_run_id,
                "kdflow.flow": "tune-trial",
                "optuna.study": self.study,
                "optuna.trial": str(trial.number),
            },
        )
        self.client.log_batch(run.info.run_id, params=[Param(f"train.{k}", str(v)) for k, v in params.items()])
        return run.info.run_id

    def metrics(self, run_id: str, values: Mapping[str, float], step: int = 0) -> None:
        """Log numeric values (NaN skipped) at ``step``."""
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [Metric(k, float(v), now, step) for k, v in values.items() if v == v]
        self.client.log_batch(run_id, metrics=batch)

    def end(self, run_id: str, state: str, status: str) -> None:
        """Tag the trial's Optuna state and close the run."""
        self.client.set_tag(run_id, "optuna.state", state)
        self.client.set_terminated(run_id, status=status)


def make_objective(
    cfg: DistillConfig, data: TuneData, runs: TrialRuns, log: Callable[[str], None] = lambda _: None
) -> Callable[[optuna.Trial], float]:
    """The objective: train a fresh student (seeded like the distill flow) with the trial's settings, pruned per
    epoch on validation accuracy; then fit the temperature and record the calibrated validation ECE as user attr
    ``val_ece`` and as the constraint ``val_ece - sla.max_ece`` (none when ``sla.max_ece`` is empty). Returns the
    best validation accuracy. Each trial is logged to its own nested MLflow run."""
    max_ece = cfg.sla.max_ece

    def objective(trial: optuna.Trial) -> float:
        params = suggest(trial, cfg.tune.space)
        train = trial_train_config(cfg.train, params, cfg.tune.epochs)
        run_id = runs.start(trial, params)
        state, status = "FAIL", "FAILED"
        try:
            seed_everything(train.seed)
            model = build_for_training(cfg.student, data.x[data.y >= 0], cfg.data.num_classes)  # as distill does

            def on_epoch(m: dict[str, float]) -> None:
                epoch = int(m["epoch"])
                runs.metrics(run_id, {k: v for k, v in m.items() if k != "epoch"}, step=epoch)
                trial.report(m["val_accuracy"], epoch)
                if trial.should_prune():
                    raise optuna.TrialPruned(f"epoch {epoch}: val accuracy {m['val_accuracy']:.4f} below the median")

            result = fit(
                model, data.source(train.temperature), data.val.x, data.val.y, train,
                data.val_logits(train.temperature), on_epoch, progress=False, device=resolve_device(cfg.device),
            )  # fmt: skip
            calibration = calibrate_student(model, data.val, cfg.calibration)  # as the distill flow serves it
            ece, t_star = calibration.after.ece, calibration.temperature
            feasible = max_ece is None or ece <= max_ece
            trial.set_user_attr("val_ece", ece)
            trial.set_user_attr("calibrated_temperature", t_star)
            trial.set_user_attr("best_epoch", result.best_epoch)
            trial.set_user_attr("feasible", feasible)
            if max_ece is not None:
                trial.set_constraint(ECE_CONSTRAINT, ece - max_ece)
            runs.metrics(
                run_id,
                {
                    "best_val_accuracy": result.best_val_accuracy,
                    "best_epoch": result.best_epoch,
                    "val_ece": ece,
                    "calibrated_temperature": t_star,
                    "feasible": float(feasible),
                },
            )
            runs.client.set_tag(run_id, "kdflow.feasible", str(feasible).lower())
            log(
                f"trial {trial.number}: val accuracy {result.best_val_accuracy:.4f}, ECE {ece:.4f}"
                f"{'' if feasible else f' > sla.max_ece {max_ece} (infeasible)'}; {params}"
            )
            state, status = "COMPLETE", "FINISHED"
            return result.best_val_accuracy
        except optuna.TrialPruned as exc:
            log(f"trial {trial.number} pruned: {exc}; {params}")
            state, status = "PRUNED", "FINISHED"
            raise
        finally:
            runs.end(run_id, state, status)

    return objective


def run_trials(study: optuna.Study, objective: Callable[[optuna.Trial], float], n_trials: int) -> list[int]:
    """Run ``n_trials`` trials of ``study`` here (other workers may run theirs at the same time); the numbers of
    the trials this call ran. A trial that raises anything but a prune stops the worker with that error."""
    ran: list[int] = []
    study.optimize(objective, n_trials=n_trials, callbacks=[lambda _s, t: ran.append(t.number)], gc_after_trial=True)
    return ran


def trial_table(study: optuna.Study) -> list[dict[str, Any]]:
    """Every trial of the study: number, state, value, parameters, validation ECE and feasibility."""
    return [
        {
            "number": t.number,
            "state": t.state.name,
            "value": t.value,
            "params": t.params,
            "val_ece": t.user_attrs.get("val_ece"),
            "feasible": t.user_attrs.get("feasible"),
        }
        for t in study.get_trials(deepcopy=False)
    ]


def best_feasible(study: optuna.Study) -> optuna.trial.FrozenTrial | None:
    """The most accurate complete trial that meets every constraint (Optuna's ``best_trial``); ``None`` if none."""
    try:
        return study.best_trial
    except ValueError:  # no complete trial, or none feasible
        return None


def overlay(trial: optuna.trial.FrozenTrial) -> dict[str, Any]:
    """The best trial's settings as a partial distill config: ``{"train": {...}}``."""
    return {"train": dict(trial.params)}


def write_overlay(path: Path, trial: optuna.trial.FrozenTrial, study: str) -> Path:
    """Write :func:`overlay` as YAML, headed by a comment naming the study, the trial and its figures."""
    path.parent.mkdir(parents=True, exist_ok=True)
    header = (
        f"# kdflow tune: best feasible trial {trial.number} of study {study}: val accuracy {trial.value:.4f}, "
        f"val ECE {trial.user_attrs.get('val_ece', float('nan')):.4f}\n"
        "# Merge over a distill config: these train.* keys replace the config's.\n"
    )
    path.write_text(header + yaml.safe_dump(overlay(trial), sort_keys=True))
    return path


def merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` with ``over`` merged in, mapping by mapping (a value of ``over`` replaces one of ``base``)."""
    out = dict(base)
    for key, value in over.items():
        out[key] = merge(out[key], value) if isinstance(value, Mapping) and isinstance(out.get(key), Mapping) else value
    return out


def apply_overlay(config: str | Path, overlay_path: str | Path) -> DistillConfig:
    """The distill config at ``config`` with the overlay at ``overlay_path`` merged in, validated."""
    base = yaml.safe_load(Path(config).read_text())
    over = yaml.safe_load(Path(overlay_path).read_text())
    if not isinstance(over, dict):
        raise ConfigError(f"{overlay_path}: expected a mapping such as 'train: {{...}}'")
    return DistillConfig.model_validate(merge(base, over))


def summary(study: optuna.Study, max_ece: float | None) -> dict[str, Any]:
    """Counts by state, the infeasible trials, and the best feasible trial (``None`` when there is none)."""
    table = trial_table(study)
    best = best_feasible(study)
    states = [t["state"] for t in table]
    return {
        "study": study.study_name,
        "trials": len(table),
        "states": {s: states.count(s) for s in sorted(set(states))},
        "infeasible": [t["number"] for t in table if t["feasible"] is False],
        "max_ece": max_ece,
        "best": None
        if best is None
        else {
            "number": best.number,
            "value": best.value,
            "params": best.params,
            "val_ece": best.user_attrs.get("val_ece"),
        },
        "table": table,
    }


def write_summary(out_dir: Path, data: dict[str, Any]) -> Path:
    """``trials.json`` in ``out_dir``: the summary with every trial."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "trials.json"
    path.write_text(json.dumps(data, indent=2, default=str))
    return path
