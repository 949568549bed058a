"""Training checkpoints: exact round trip, untrusted checkpoints ignored, bit-identical resume, and a real
``kdflow teacher train`` process killed with SIGKILL and re-run."""

from __future__ import annotations

import json
import logging
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from kdflow.checkpoint import Checkpoints, rng_state, set_rng_state, training_key
from kdflow.config import ModelSpec, TrainConfig
from kdflow.models import build_model
from kdflow.store import LocalStore, S3Store
from kdflow.stream import ArraySource
from kdflow.train import TIMINGS, fit, make_optimizer, seed_everything
from tests.conftest import make_bucket, write_yaml

KEY = "teacher-" + "a" * 32
OTHER_KEY = "teacher-" + "b" * 32
SPEC = ModelSpec(arch="mlp", args={"width": 32, "depth": 2, "dropout": 0.2})  # dropout: the global RNG matters


def _data(n: int = 240, seed: int = 7) -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(3, 10)) * 2
    y = rng.integers(0, 3, size=n)
    x = (centers[y] + rng.normal(size=(n, 10))).astype(np.float32)
    return x[:180], y[:180], x[180:], y[180:]


CFG = TrainConfig(
    epochs=6, batch_size=32, lr=0.01, early_stopping_patience=4, schedule={"warmup_steps": 5, "min_lr_ratio": 0.1}
)


def _model(seed: int = 0) -> torch.nn.Module:
    seed_everything(seed)
    return build_model(SPEC.arch, SPEC.args, (10,), 3)


def _train(ckpt: Checkpoints | None, on_epoch=None, seed: int = 0, cfg: TrainConfig = CFG):
    x, y, xv, yv = _data()
    model = _model(seed)
    result = fit(model, ArraySource(x, y), xv, yv, cfg, on_epoch=on_epoch, progress=False, checkpoints=ckpt)
    return model, result


def _same_weights(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


class Kill(Exception):
    """Raised from the epoch callback: the training is interrupted right there, like a kill."""


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """The reference: the whole training in one go (checkpointing on, which must not change the result)."""
    store = LocalStore(tmp_path_factory.mktemp("ref-store"))
    model, result = _train(Checkpoints(store, KEY))
    return model.state_dict(), result, store


def test_round_trip_restores_model_optimizer_and_rng_exactly(tmp_path):
    model = _model()
    opt = make_optimizer(model, CFG)
    model(torch.randn(8, 10)).sum().backward()
    opt.step()
    ckpt = Checkpoints(LocalStore(tmp_path), KEY)
    captured = rng_state()
    expected = (torch.rand(4), np.random.rand(4), random.random())
    ckpt.save(3, {"model": model.state_dict(), "optimizer": opt.state_dict(), "rng": captured})

    torch.manual_seed(99), np.random.seed(99), random.seed(99)  # move every RNG on
    state = ckpt.load()
    assert state is not None and state["epoch"] == 3
    set_rng_state(state["rng"])
    assert torch.equal(torch.rand(4), expected[0])
    assert np.array_equal(np.random.rand(4), expected[1]) and random.random() == expected[2]
    assert _same_weights(state["model"], model.state_dict())
    other = make_optimizer(_model(seed=5), CFG)
    other.load_state_dict(state["optimizer"])
    for p_saved, p_now in zip(other.state_dict()["state"].values(), opt.state_dict()["state"].values()):
        assert all(torch.equal(p_saved[k], p_now[k]) for k in p_now)
    assert other.state_dict()["param_groups"] == opt.state_dict()["param_groups"]


def _corrupt(ckpt: Checkpoints, how: str) -> None:
    pointer = json.loads(ckpt.store.get(ckpt.pointer_key))
    obj = pointer["object"]
    data = ckpt.store.get(obj)
    if how == "flipped byte":
        ckpt.store.put(obj, data[:100] + bytes([data[100] ^ 0xFF]) + data[101:])
    elif how == "truncated object":
        ckpt.store.put(obj, data[: len(data) // 2])
    elif how == "pointer not json":
        ckpt.store.put(ckpt.pointer_key, b'{"epoch": 3, "obj')
    elif how == "object missing":
        ckpt.store.delete(obj)
    elif how == "other training":  # a whole, valid checkpoint of another training copied under this key
        other = Checkpoints(ckpt.store, OTHER_KEY)
        other.save(3, {"model": {}})
        ckpt.store.put(ckpt.pointer_key, other.store.get(other.pointer_key))


@pytest.mark.parametrize(
    "how", ["flipped byte", "truncated object", "pointer not json", "object missing", "other training"]
)
def test_corrupt_or_mismatched_checkpoint_is_ignored_with_a_warning(tmp_path, caplog, how):
    ckpt = Checkpoints(LocalStore(tmp_path), KEY)
    ckpt.save(3, {"model": _model().state_dict()})
    _corrupt(ckpt, how)
    with caplog.at_level(logging.WARNING, logger="kdflow.checkpoint"):
        assert ckpt.load() is None
    assert "ignoring the checkpoint" in caplog.text and "training starts fresh" in caplog.text


def test_kill_between_object_and_pointer_keeps_the_previous_checkpoint(tmp_path):
    ckpt = Checkpoints(LocalStore(tmp_path), KEY)
    ckpt.save(1, {"model": _model(1).state_dict()})
    ckpt.store.put(f"{ckpt.prefix}/epoch-00002-000000000000.pt", b"half a checkpo")  # the pointer never moved
    state = ckpt.load()
    assert state is not None and state["epoch"] == 1
    assert _same_weights(state["model"], _model(1).state_dict())


def test_checkpointing_does_not_change_the_result_and_a_finished_training_leaves_none(uninterrupted):
    weights, result, store = uninterrupted
    plain_model, plain = _train(None)
    assert _same_weights(weights, plain_model.state_dict()) and result.resumed_from_epoch == 0
    assert [m["val_accuracy"] for m in result.history] == [m["val_accuracy"] for m in plain.history]
    assert store.list("checkpoints/") == []  # deleted when done: a deliberate re-run trains from the start
    _, again = _train(Checkpoints(store, KEY))
    assert again.resumed_from_epoch == 0 and len(again.history) == CFG.epochs


@pytest.mark.parametrize("backend", ["local", "s3"])
def test_resume_after_a_kill_is_bit_identical_to_an_uninterrupted_run(uninterrupted, tmp_path, request, backend):
    if backend == "s3":
        endpoint = request.getfixturevalue("s3_endpoint")
        store = S3Store(make_bucket(endpoint, "kdflow-ckpt"), "state", endpoint_url=endpoint)
    else:
        store = LocalStore(tmp_path)
    ckpt = Checkpoints(store, KEY)
    seen: list[tuple[int, int | None]] = []

    def kill_at_4(m: dict[str, float]) -> None:
        pointer = ckpt.pointer()
        seen.append((int(m["epoch"]), pointer and pointer["epoch"]))
        if m["epoch"] == 4:
            raise Kill

    with pytest.raises(Kill):
        _train(ckpt, kill_at_4)
    assert seen == [(1, None), (2, 1), (3, 2), (4, 3)]  # saved after each epoch, never mid-epoch

    torch.manual_seed(12345)  # whatever the process did in between
    resumed_epochs: list[int] = []
    model, result = _train(ckpt, lambda m: resumed_epochs.append(int(m["epoch"])), seed=777)
    weights, reference, _ = uninterrupted
    assert result.resumed_from_epoch == 3 and resumed_epochs == [4, 5, 6]
    assert _same_weights(model.state_dict(), weights)
    assert [{k: v for k, v in m.items() if k not in TIMINGS} for m in result.history] == [
        {k: v for k, v in m.items() if k not in TIMINGS} for m in reference.history
    ]
    assert (result.best_epoch, result.best_val_accuracy, result.steps) == (
        reference.best_epoch,
        reference.best_val_accuracy,
        reference.steps,
    )
    assert store.list("checkpoints/") == []


def test_checkpoint_that_does_not_fit_the_model_is_not_loaded(uninterrupted, tmp_path, caplog):
    """A trusted-looking checkpoint (right key, checksum fine) of another architecture: warn, train fresh."""
    ckpt = Checkpoints(LocalStore(tmp_path), KEY)
    wrong = build_model("mlp", {"width": 8, "depth": 1}, (10,), 3)
    x, y, _, _ = _data()
    ckpt.save(
        2,
        {
            "model": wrong.state_dict(),
            "optimizer": make_optimizer(wrong, CFG).state_dict(),
            "scheduler": {},
            "generator": torch.Generator().get_state(),
            "rng": rng_state(),
            "step": 12,
            "best_state": wrong.state_dict(),
            "best_epoch": 1,
            "best_val_accuracy": 0.5,
            "stale": 0,
            "history": [],
            "total_steps": 36,
            "steps_per_epoch": 6,
            "num_rows": len(x),
        },
    )
    with caplog.at_level(logging.WARNING, logger="kdflow.checkpoint"):
        model, result = _train(ckpt)
    assert "does not fit this model" in caplog.text
    assert result.resumed_from_epoch == 0 and _same_weights(model.state_dict(), uninterrupted[0])


def test_checkpoint_of_another_data_size_is_not_loaded(uninterrupted, tmp_path, caplog):
    ckpt = Checkpoints(LocalStore(tmp_path), KEY)
    with pytest.raises(Kill):
        _train(
            ckpt,
            lambda m: (_ for _ in ()).throw(Kill) if m["epoch"] == 3 else None,
            cfg=CFG.model_copy(update={"batch_size": 16}),
        )
    with caplog.at_level(logging.WARNING, logger="kdflow.checkpoint"):
        model, result = _train(ckpt)
    assert "this run has" in caplog.text and result.resumed_from_epoch == 0
    assert _same_weights(model.state_dict(), uninterrupted[0])


def test_checkpoint_interval_and_none_disables(tmp_path):
    every2 = Checkpoints(LocalStore(tmp_path / "a"), KEY, every_epochs=2)
    seen: list[int | None] = []
    _train(every2, lambda m: seen.append((every2.pointer() or {}).get("epoch")))
    assert seen == [None, None, 2, 2, 4, 4]
    off = Checkpoints(LocalStore(tmp_path / "b"), KEY, every_epochs=None)
    listed: list[list[str]] = []
    _train(off, lambda m: listed.append(off.store.list()))
    assert listed == [[]] * CFG.epochs


def test_training_key_names_what_the_training_computes():
    base = dict(
        role="student",
        model=SPEC,
        train=CFG,
        num_classes=3,
        input_shape=(10,),
        fingerprints={"train": "f1", "val": "f2"},
        teachers=[{"name": "t", "version": "1", "weight": 1.0, "logit_keys": {"train": "logits/t/v1/f1"}}],
    )
    key = training_key(**base)
    assert key.startswith("student-") and key == training_key(**base)
    assert training_key(**{**base, "train": CFG.model_copy(update={"checkpoint_every_epochs": 5})}) == key
    changed = [
        {"train": CFG.model_copy(update={"lr": 0.02})},
        {"fingerprints": {"train": "f1", "val": "other"}},
        {"teachers": [{**base["teachers"][0], "version": "2"}]},
        {"model": ModelSpec(arch="mlp", args={"width": 16})},
        {"role": "teacher"},
        {"num_classes": 4},
    ]
    assert len({key, *(training_key(**{**base, **c}) for c in changed)}) == len(changed) + 1


# --- end to end: a real `kdflow teacher train` process, SIGKILLed mid-run and re-run -------------------------------

EPOCHS = 20  # ~0.5 s each at batch 16 here: the kill lands early in the run


def _teacher_cfg(teacher_config: dict, state: Path) -> Path:
    cfg = json.loads(json.dumps(teacher_config))
    cfg["train"].update(
        epochs=EPOCHS, batch_size=16, num_threads=1, early_stopping_patience=None, checkpoint_every_epochs=1
    )
    cfg["mlflow"] = {"tracking_uri": f"sqlite:///{state}/mlflow.db", "artifact_location": str(state / "artifacts")}
    cfg["store"] = {"root": str(state / "store")}
    cfg["registry_name"] = "ckpt-teacher"
    state.mkdir(parents=True, exist_ok=True)
    return write_yaml(state / "teacher.yaml", cfg)


def _start(config: Path, state: Path, log_name: str) -> tuple[subprocess.Popen, Path]:
    env = {**os.environ, "PREFECT_HOME": str(state / "prefect"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    log_path = state / log_name
    with open(log_path, "w") as out:
        proc = subprocess.Popen(
            [str(Path(sys.executable).parent / "kdflow"), "teacher", "train", "--config", str(config)],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            cwd=state,
            start_new_session=True,
        )
    return proc, log_path


def _finish(proc: subprocess.Popen, log_path: Path, timeout: float = 400) -> str:
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    text = log_path.read_text()
    assert proc.returncode == 0, text[-4000:]
    return text


def _final(state: Path) -> tuple[dict, dict]:
    """The registered version's weights and the metrics of the run that registered it (FINISHED)."""
    import mlflow
    from kdflow import registry

    previous = mlflow.get_tracking_uri(), mlflow.get_registry_uri()
    try:
        uri = registry.configure_tracking(f"sqlite:///{state}/mlflow.db")
        weights = registry.load_torch_model(registry.resolve("models:/ckpt-teacher@champion")).state_dict()
        client = mlflow.MlflowClient(uri)
        exp = client.get_experiment_by_name("kdflow-teacher")
        runs = client.search_runs([exp.experiment_id], "attributes.status = 'FINISHED'")
        assert len(runs) == 1
        return weights, runs[0].data.metrics
    finally:
        mlflow.set_tracking_uri(previous[0])
        mlflow.set_registry_uri(previous[1])


@pytest.mark.slow
def test_sigkilled_teacher_training_resumes_and_ends_where_an_uninterrupted_run_does(teacher_config, tmp_path):
    killed_state, clean_state = tmp_path / "killed", tmp_path / "clean"
    started: list[subprocess.Popen] = []
    try:
        _kill_resume_compare(teacher_config, killed_state, clean_state, started)
    finally:
        for proc in started:  # only what this test started, by its process group
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def _kill_resume_compare(
    teacher_config: dict, killed_state: Path, clean_state: Path, started: list[subprocess.Popen]
) -> None:
    config = _teacher_cfg(teacher_config, killed_state)
    store = LocalStore(killed_state / "store")
    # The uninterrupted reference runs alongside (one torch thread each: the result does not depend on the load).
    clean, clean_log = _start(_teacher_cfg(teacher_config, clean_state), clean_state, "run.log")
    proc, log1 = _start(config, killed_state, "run1.log")
    started += [clean, proc]
    seen_epoch, deadline = 0, time.monotonic() + 300
    while seen_epoch < 2:
        assert proc.poll() is None, "the first run ended before a checkpoint of epoch 2:\n" + log1.read_text()[-3000:]
        assert time.monotonic() < deadline, "no checkpoint of epoch >= 2 appeared"
        pointers = [k for k in store.list("checkpoints/") if k.endswith("/latest.json")]
        if pointers:
            try:
                seen_epoch = json.loads(store.get(pointers[0]))["epoch"]
            except (ValueError, KeyError):
                pass
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)  # the whole process group this test started (CLI + its Prefect server)
    proc.wait()
    pointers = [k for k in store.list("checkpoints/") if k.endswith("/latest.json")]
    assert len(pointers) == 1
    killed_at = json.loads(store.get(pointers[0]))["epoch"]
    assert 2 <= seen_epoch <= killed_at < EPOCHS

    proc, log2 = _start(config, killed_state, "run2.log")
    started.append(proc)
    text = _finish(proc, log2)
    assert f"teacher resumed from the checkpoint after epoch {killed_at}" in text
    assert f"teacher epoch {killed_at + 1}:" in text and f"teacher epoch {killed_at}:" not in text
    assert store.list("checkpoints/") == []  # finished: the checkpoint is gone

    clean_text = _finish(clean, clean_log)
    assert "resumed from the checkpoint" not in clean_text and "teacher epoch 1:" in clean_text

    resumed_weights, resumed_metrics = _final(killed_state)
    clean_weights, clean_metrics = _final(clean_state)
    assert resumed_metrics["teacher_resumed_from_epoch"] == killed_at
    assert clean_metrics["teacher_resumed_from_epoch"] == 0
    assert _same_weights(resumed_weights, clean_weights)
    assert resumed_metrics["teacher_best_val_accuracy"] == clean_metrics["teacher_best_val_accuracy"]
    assert resumed_metrics["teacher_test_accuracy"] == clean_metrics["teacher_test_accuracy"]


def test_config_fields_default_to_every_epoch_and_reject_zero(tmp_path):
    from kdflow.config import ConfigError, DistillConfig, TeacherConfig, load_config, packaged_config

    teacher = load_config(packaged_config("mnist1d_teacher.yaml"), TeacherConfig)
    assert teacher.train.checkpoint_every_epochs == 1 and teacher.store.root == ".kdflow/store"
    assert load_config(packaged_config("mnist1d_distill.yaml"), DistillConfig).train.checkpoint_every_epochs == 1
    assert (
        TrainConfig().checkpoint_every_epochs == 1
        and TrainConfig(checkpoint_every_epochs=None).checkpoint_every_epochs is None
    )
    raw = (
        packaged_config("mnist1d_teacher.yaml")
        .read_text()
        .replace("checkpoint_every_epochs: 1", "checkpoint_every_epochs: 0")
    )
    (tmp_path / "t.yaml").write_text(raw)
    with pytest.raises(ConfigError, match=r"train\.checkpoint_every_epochs: Input should be greater than 0"):
        load_config(tmp_path / "t.yaml", TeacherConfig)


def test_student_resume_from_streamed_logits_is_bit_identical(tmp_path):
    """The student path: Parquet row groups joined with stored teacher logits (StreamingSource), KD loss."""
    from kdflow.config import DataConfig
    from kdflow.data import to_frame, write_parquet
    from kdflow.logits import LogitStore, store_key
    from kdflow.stream import StreamingSource

    x, y, xv, yv = _data()
    ids = np.arange(1000, 1000 + len(x))
    z = (np.eye(3)[y] * 4 + np.random.default_rng(1).normal(size=(len(x), 3))).astype(np.float32)
    path = write_parquet(to_frame(ids, x, y), tmp_path / "train.parquet", row_group_size=50)
    ls = LogitStore(LocalStore(tmp_path / "logits"), store_key("t", "1", "f" * 64))
    ls.precompute(
        ids,
        lambda rows: z[rows],
        teacher_uri="u",
        teacher_name="t",
        teacher_version="1",
        data_fingerprint="f" * 64,
        dataset="train",
        rows_per_shard=64,
    )
    data = DataConfig(train=str(path), val="-", test="-", num_classes=3)
    cfg = CFG.model_copy(update={"alpha": 0.7, "temperature": 2.0, "epochs": 4})
    key = "student-" + "c" * 32

    def run(ckpt: Checkpoints, on_epoch=None):
        source = StreamingSource([("train", str(path), ls, True)], data, "1", {"train": "f" * 64}, buffer_chunks=2)
        model = _model()
        try:
            return model, fit(model, source, xv, yv, cfg, on_epoch=on_epoch, progress=False, checkpoints=ckpt)
        finally:
            source.close()

    reference, ref_result = run(Checkpoints(LocalStore(tmp_path / "a"), key))
    ckpt = Checkpoints(LocalStore(tmp_path / "b"), key)
    with pytest.raises(Kill):
        run(ckpt, lambda m: (_ for _ in ()).throw(Kill) if m["epoch"] == 3 else None)
    model, result = run(ckpt)
    assert result.resumed_from_epoch == 2 and ref_result.resumed_from_epoch == 0
    assert ref_result.history[0]["soft_loss"] > 0  # really distilling
    assert _same_weights(model.state_dict(), reference.state_dict())
