"""``kdflow tune``: the search space is checked strictly, a study's trials are nested MLflow runs under the tuning
run, the best settings come back as a partial config that merges into a valid one, infeasible trials are reported,
and workers on a shared PostgreSQL storage add their trials into one study."""

from __future__ import annotations

import uuid

import numpy as np
import optuna
import pytest
import yaml
from typer.testing import CliRunner

from app.cli import app
from kdflow.config import ConfigError, DistillConfig, TuneConfig, load_config, packaged_config
from kdflow.data import Dataset
from kdflow.tune import (
    TrialRuns,
    TuneData,
    apply_overlay,
    check_tune_options,
    make_objective,
    merge,
    open_study,
    run_trials,
    shares,
    storage_url,
    stratified_subset,
    summary,
    trial_train_config,
)
from tests.conftest import PG_HOST, PG_PORT, drop_database, postgres_answers, psql_admin, write_yaml

runner = CliRunner()


@pytest.fixture(autouse=True)
def _isolated_prefect_home(monkeypatch, tmp_path):
    """The CLI sets Prefect's home only if unset: keep it off the working tree in tests."""
    monkeypatch.setenv("PREFECT_HOME", str(tmp_path / "prefect"))


def packaged(**changes) -> dict:
    """The packaged distill config as a dict, with top-level sections replaced by ``changes``."""
    return {**yaml.safe_load(packaged_config("mnist1d_distill.yaml").read_text()), **changes}


@pytest.mark.parametrize(
    ("space", "message"),
    [
        ({"tempreature": {"low": 1, "high": 20}}, "'tempreature' is not a train setting that can be tuned"),
        ({"schedule": {"low": 1, "high": 2}}, "'schedule' is not a train setting that can be tuned"),
        ({"alpha": {"low": 0.9, "high": 0.2}}, "low must be below high, got low=0.9 high=0.2"),
        ({"alpha": {"low": 0.5, "high": 1.5}}, "alpha: 1.5 is not a valid train.alpha"),
        ({"lr": {"low": 0.0, "high": 0.1, "log": True}}, "a log-uniform range needs low > 0"),
        ({"loss": {"choices": ["kd", "ce"]}}, "loss: 'ce' is not a valid train.loss"),
        ({"batch_size": {"low": 16.5, "high": 64}}, "train.batch_size is an integer"),
        ({"alpha": {"low": 0.1, "high": 0.5, "choices": [0.2]}}, "give either choices or low/high"),
    ],
)
def test_a_bad_search_space_is_one_config_error_naming_it(tmp_path, space, message):
    path = write_yaml(tmp_path / "bad.yaml", packaged(tune={"space": space}))
    with pytest.raises(ConfigError, match="tune.space") as err:
        load_config(path, DistillConfig)
    assert message in str(err.value)


def test_the_default_space_covers_the_kd_settings():
    space = TuneConfig().space
    assert set(space) == {"temperature", "alpha", "lr", "weight_decay", "loss"}
    assert (space["temperature"].low, space["temperature"].high, space["temperature"].log) == (1.0, 20.0, True)
    assert (space["alpha"].low, space["alpha"].high, space["alpha"].log) == (0.1, 0.95, False)
    assert space["lr"].log and space["weight_decay"].log and space["loss"].choices == ["kd", "dkd", "dist"]


@pytest.mark.parametrize(
    ("storage", "workers", "subset", "message"),
    [
        ("redis://127.0.0.1/0", 1, None, "unknown storage scheme 'redis'"),
        ("postgresql://u:hunter2@db/optuna", 1, 1.5, "--subset must be a fraction in (0, 1], got 1.5"),
        (None, 2, None, "2 workers need a shared --storage"),
        (None, 1, 0.0, "--subset must be a fraction"),
    ],
)
def test_bad_tune_options_are_refused(storage, workers, subset, message):
    with pytest.raises(ConfigError) as err:
        check_tune_options(storage, workers, subset)
    assert message in str(err.value) and "hunter2" not in str(err.value)
    check_tune_options("postgresql+psycopg2://postgres@127.0.0.1:5432/x", 2, 0.5)  # a valid set passes
    check_tune_options("sqlite:///tmp/optuna.db", 1, None)
    assert storage_url("postgresql://postgres@h:5432/db") == "postgresql+psycopg2://postgres@h:5432/db"
    assert storage_url("sqlite:///x.db") == "sqlite:///x.db"


def test_the_cli_exits_2_on_bad_input_before_any_work(tmp_path):
    bad_space = write_yaml(tmp_path / "space.yaml", packaged(tune={"space": {"temprature": {"low": 1, "high": 2}}}))
    good = write_yaml(tmp_path / "good.yaml", packaged())
    cases = [
        (["--config", str(bad_space)], "'temprature' is not a train setting"),
        (["--config", str(good), "--storage", "mongodb://h/db"], "unknown storage scheme 'mongodb'"),
        (["--config", str(good), "--workers", "3"], "3 workers need a shared --storage"),
        (["--config", str(good), "--subset", "2"], "--subset must be a fraction"),
    ]
    for args, message in cases:
        result = runner.invoke(app, ["tune", *args])
        assert result.exit_code == 2, (args, result.output)
        assert "error:" in result.output and message in result.output, result.output


def test_stratified_subset_keeps_every_class_in_proportion():
    labels = np.repeat(np.arange(4), [400, 200, 100, 3])
    keep = stratified_subset(labels, 0.2, seed=7)
    assert np.bincount(labels[keep]).tolist() == [80, 40, 20, 1]
    assert len(np.unique(keep)) == len(keep) and np.all(np.diff(keep) > 0)
    assert np.array_equal(keep, stratified_subset(labels, 0.2, seed=7))
    assert not np.array_equal(keep, stratified_subset(labels, 0.2, seed=8))


def test_shares_add_up_and_trial_configs_are_validated():
    assert shares(7, 3) == [3, 2, 2] and shares(2, 3) == [1, 1, 0] and sum(shares(30, 4)) == 30
    base = DistillConfig.model_validate(packaged()).train
    train = trial_train_config(base, {"temperature": 2.5, "loss": "dkd"}, epochs=3)
    assert (train.temperature, train.loss, train.epochs, train.checkpoint_every_epochs) == (2.5, "dkd", 3, None)
    assert train.lr == base.lr
    assert merge({"a": {"b": 1, "c": 2}, "d": 3}, {"a": {"b": 9}}) == {"a": {"b": 9, "c": 2}, "d": 3}


def _toy_data(n_classes: int = 3, seed: int = 0) -> TuneData:
    """Separable 1-D-signal rows with a teacher that knows the labels (its logits are one-hot times 5)."""
    rng = np.random.default_rng(seed)

    def rows(n: int) -> tuple[np.ndarray, np.ndarray]:
        y = rng.integers(0, n_classes, n)
        x = rng.normal(size=(n, 8)).astype(np.float32) + 2.0 * np.eye(n_classes, 8, dtype=np.float32)[y]
        return x, y

    (x, y), (xv, yv) = rows(240), rows(90)
    z, zv = 5.0 * np.eye(n_classes, dtype=np.float32)[y], 5.0 * np.eye(n_classes, dtype=np.float32)[yv]
    val = Dataset("val", "memory://val", np.arange(len(yv)), xv, yv)
    return TuneData(x, y, [z], [1.0], val, [zv], {"train": len(y)})


def test_trials_whose_ece_exceeds_the_sla_are_infeasible_and_reported(tmp_path):
    """Library level, on in-memory rows: an SLA no student can meet (ECE <= 0) makes every trial infeasible."""
    from kdflow import registry
    from mlflow import MlflowClient

    cfg = DistillConfig.model_validate(
        packaged(
            data={**packaged()["data"], "num_classes": 3},
            student={"arch": "mlp", "args": {"width": 16, "depth": 1}},
            train={"epochs": 2, "batch_size": 64, "early_stopping_patience": None, "schedule": {"warmup_steps": 2}},
            sla={"max_ece": 0.0},
            tune={"space": {"lr": {"low": 1e-3, "high": 3e-2, "log": True}}, "startup_trials": 1},
        )
    )
    tracking = f"sqlite:///{tmp_path}/mlflow.db"
    exp = registry.configure(tracking, "tune-infeasible", str(tmp_path / "artifacts"))
    parent = MlflowClient(tracking).create_run(exp, tags={"kdflow.flow": "tune"}).info.run_id
    study = open_study("infeasible", None, cfg.tune)
    ran = run_trials(study, make_objective(cfg, _toy_data(), TrialRuns(tracking, parent, "infeasible")), 3)
    result = summary(study, cfg.sla.max_ece)
    assert ran == [0, 1, 2] and result["states"] == {"COMPLETE": 3}
    assert result["infeasible"] == [0, 1, 2] and result["best"] is None
    assert all(t.constraints["val_ece_over_max"] > 0 and t.user_attrs["feasible"] is False for t in study.trials)
    children = MlflowClient(tracking).search_runs([exp], f"tags.mlflow.parentRunId = '{parent}'")
    assert sorted(r.data.tags["kdflow.feasible"] for r in children) == ["false"] * 3
    assert all(r.info.status == "FINISHED" and "train.lr" in r.data.params for r in children)


def test_a_trial_below_the_median_is_pruned_after_its_first_epoch(tmp_path):
    """Two enqueued trials: a good learning rate, then one too small to learn anything in an epoch; the median pruner
    (one finished trial is enough here) stops the second after epoch 1 and its MLflow run says so."""
    from kdflow import registry
    from mlflow import MlflowClient

    cfg = DistillConfig.model_validate(
        packaged(
            data={**packaged()["data"], "num_classes": 3},
            student={"arch": "mlp", "args": {"width": 16, "depth": 1}},
            train={"epochs": 3, "batch_size": 32, "early_stopping_patience": None, "schedule": {"warmup_steps": 1}},
            sla={"max_ece": None},
            tune={
                "space": {"lr": {"low": 1e-7, "high": 0.1, "log": True}},
                "pruner_startup_trials": 1,
                "pruner_warmup_epochs": 0,
            },
        )
    )
    tracking = f"sqlite:///{tmp_path}/mlflow.db"
    exp = registry.configure(tracking, "tune-pruning", str(tmp_path / "artifacts"))
    parent = MlflowClient(tracking).create_run(exp).info.run_id
    study = open_study("pruning", None, cfg.tune)
    study.enqueue_trial({"lr": 0.05})
    study.enqueue_trial({"lr": 1e-7})
    run_trials(study, make_objective(cfg, _toy_data(), TrialRuns(tracking, parent, "pruning")), 2)
    good, bad = study.trials
    assert good.state == optuna.trial.TrialState.COMPLETE and good.user_attrs["feasible"] is True
    assert bad.state == optuna.trial.TrialState.PRUNED and list(bad.intermediate_values) == [1]
    assert summary(study, None)["best"]["number"] == 0
    runs = {
        r.data.tags["optuna.trial"]: r
        for r in MlflowClient(tracking).search_runs([exp], f"tags.mlflow.parentRunId = '{parent}'")
    }
    assert runs["1"].data.tags["optuna.state"] == "PRUNED" and runs["0"].data.tags["optuna.state"] == "COMPLETE"


@pytest.mark.slow
def test_three_tiny_trials_end_to_end(distill_config, tmp_path):
    from mlflow import MlflowClient

    distill_config["tune"] = {"epochs": 2, "startup_trials": 2}
    path = write_yaml(tmp_path / "distill.yaml", distill_config)
    result = runner.invoke(app, ["tune", "--config", str(path), "--trials", "3", "--subset", "0.5"])
    assert result.exit_code == 0, result.output
    assert "3 trial(s)" in result.output and "best settings:" in result.output and "apply:" in result.output

    client = MlflowClient(distill_config["mlflow"]["tracking_uri"])
    exp = client.get_experiment_by_name(distill_config["registry"]["experiment"])
    parents = client.search_runs([exp.experiment_id], "tags.`kdflow.flow` = 'tune'", order_by=["start_time DESC"])
    parent = parents[0]
    assert parent.info.status == "FINISHED" and parent.data.metrics["trials"] == 3.0
    children = client.search_runs([exp.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    assert len(children) == 3 and {r.data.tags["optuna.trial"] for r in children} == {"0", "1", "2"}
    for child in children:
        assert {"train.temperature", "train.alpha", "train.lr", "train.weight_decay", "train.loss"} <= set(
            child.data.params
        )
        assert "val_accuracy" in child.data.metrics
    assert sorted(a.path for a in client.list_artifacts(parent.info.run_id, "tune")) == [
        "tune/best.yaml",
        "tune/report.html",
        "tune/trials.json",
    ]

    overlay_path = next(
        line.split(": ", 1)[1] for line in result.output.splitlines() if line.startswith("best settings")
    )
    assert overlay_path.endswith(f"tune/{parent.info.run_id}/best.yaml")
    over = yaml.safe_load(open(overlay_path))
    assert set(over) == {"train"} and set(over["train"]) == {"temperature", "alpha", "lr", "weight_decay", "loss"}
    merged = apply_overlay(path, overlay_path)
    assert merged.train.temperature == over["train"]["temperature"] and merged.train.loss == over["train"]["loss"]
    assert merged.train.epochs == distill_config["train"]["epochs"]  # everything else kept


def _create_database() -> str:
    db = f"kdflow_tune_{uuid.uuid4().hex[:10]}"
    psql_admin(f'CREATE DATABASE "{db}"')
    return db


@pytest.mark.slow
def test_two_workers_share_one_study_on_postgresql(distill_config, tmp_path):
    if not postgres_answers():
        reason = f"PostgreSQL does not answer on {PG_HOST}:{PG_PORT}: shared-study test skipped"
        print(reason)
        pytest.skip(reason)
    from flows.tune import tune_flow

    db = _create_database()
    storage = f"postgresql://postgres@{PG_HOST}:{PG_PORT}/{db}"
    try:
        distill_config["tune"] = {"epochs": 1, "startup_trials": 2}
        path = write_yaml(tmp_path / "distill.yaml", distill_config)
        first = tune_flow(str(path), trials=3, storage=storage, study="shared", subset=0.3, workers=2)
        second = tune_flow(str(path), trials=2, storage=storage, study="shared", subset=0.3, workers=1)
        study = optuna.load_study(study_name="shared", storage=storage_url(storage))
        assert first["trials"] == 3 and second["trials"] == 5 and len(study.trials) == 3 + 2
        assert sorted(t.number for t in study.trials) == [0, 1, 2, 3, 4]
        assert {t.state for t in study.trials} <= {optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED}
    finally:
        drop_database(db)


@pytest.mark.slow
def test_two_tune_processes_share_one_study_on_postgresql(distill_config, state_dir, tmp_path):
    """Two `kdflow tune` processes started together with the same --storage and --study: the trials of both land in
    one study, numbered without a clash. Each process has its own Prefect home and its own copy of the MLflow
    SQLite store (SQLite is the embedded default, not a store for concurrent writers; the study's shared state is
    PostgreSQL's)."""
    import os
    import shutil
    import subprocess
    import sys

    if not postgres_answers():
        reason = f"PostgreSQL does not answer on {PG_HOST}:{PG_PORT}: shared-study test skipped"
        print(reason)
        pytest.skip(reason)
    db = _create_database()
    storage = f"postgresql://postgres@{PG_HOST}:{PG_PORT}/{db}"
    try:
        procs = []
        for i in range(2):
            cfg = {**distill_config, "tune": {"epochs": 1, "startup_trials": 2}}
            shutil.copy(state_dir / "mlflow.db", tmp_path / f"mlflow-{i}.db")
            cfg["mlflow"] = {**cfg["mlflow"], "tracking_uri": f"sqlite:///{tmp_path}/mlflow-{i}.db"}
            cfg["output_dir"] = str(tmp_path / f"reports-{i}")
            path = write_yaml(tmp_path / f"distill-{i}.yaml", cfg)
            env = {**os.environ, "PREFECT_HOME": str(tmp_path / f"prefect-{i}")}
            env.pop("PREFECT_API_URL", None)
            args = ["tune", "--config", str(path), "--trials", "2", "--storage", storage, "--study", "together"]
            procs.append(subprocess.Popen([sys.executable, "-m", "app", *args, "--subset", "0.3"], env=env,
                                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))  # fmt: skip
        outputs = [p.communicate(timeout=600)[0] for p in procs]
        assert [p.returncode for p in procs] == [0, 0], outputs
        study = optuna.load_study(study_name="together", storage=storage_url(storage))
        assert sorted(t.number for t in study.trials) == [0, 1, 2, 3]
        assert {t.state for t in study.trials} <= {optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED}
    finally:
        drop_database(db)
