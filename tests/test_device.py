"""Devices: the ``device`` key resolved and validated, teacher scoring on a device (bf16 autocast checked
against fp32), training on a device with its input resident, device-neutral models. The CPU tests run
everywhere; the CUDA tests skip visibly without a GPU."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import yaml
from torch import nn

from kdflow.config import (
    ConfigError,
    DistillConfig,
    StoreConfig,
    TeacherConfig,
    TrainConfig,
    load_config,
    packaged_config,
)
from kdflow.data import Dataset, to_frame, write_parquet
from kdflow.device import (
    check_autocast,
    fits_on_device,
    model_device,
    on_device,
    resolve_device,
    score_logits,
)
from kdflow.logits import LogitStore, LogitStoreError, plan_shards, store_key
from kdflow.models import build_model
from kdflow.precompute import check_stored_logits, logit_stores, store_spec
from kdflow.store import LocalStore
from kdflow.stream import ArraySource, StreamingSource
from kdflow.train import TIMINGS, device_source, fit, predict_logits, scaled_lr
from tests.conftest import write_yaml

CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not CUDA, reason="no CUDA device on this machine: the GPU path is not exercised")
N, L, C = 2000, 40, 10


def teacher() -> nn.Module:
    """The packaged demo teacher's architecture (cnn1d), freshly initialised."""
    torch.manual_seed(0)
    spec = load_config(packaged_config("mnist1d_teacher.yaml"), TeacherConfig).model
    return build_model(spec.arch, spec.args, (L,), C).eval()


def data(n: int = N, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, L)).astype(np.float32)
    return x, (x[:, :C].argmax(1)).astype(np.int64)  # learnable labels


def distill_cfg(tmp_path, **over) -> DistillConfig:
    base = load_config(packaged_config("mnist1d_distill.yaml"), DistillConfig).model_dump()
    base["store"] = {**base["store"], "root": str(tmp_path / "store"), **over.pop("store", {})}
    return DistillConfig.model_validate({**base, **over})


# ---- the config key and its resolution (CPU machine) ----


@pytest.mark.parametrize("value", ["auto", "cpu", "cuda", "cuda:0", "cuda:3"])
def test_device_accepts_auto_cpu_cuda_and_an_index(tmp_path, value):
    assert distill_cfg(tmp_path, device=value).device == value


@pytest.mark.parametrize("value", ["gpu", "CUDA", "cuda:", "cuda:x", "mps", ""])
def test_a_bad_device_is_one_config_error_naming_the_key_expected_and_found(tmp_path, value):
    raw = packaged_config("mnist1d_teacher.yaml").read_text() + f"device: {value!r}\n"
    path = tmp_path / "t.yaml"
    path.write_text(raw)
    with pytest.raises(ConfigError, match=r"device: .*expected one of auto, cpu, cuda, cuda:N.*found") as err:
        load_config(path, TeacherConfig)
    assert repr(value) in str(err.value)


def test_the_default_is_auto_and_auto_is_cpu_without_cuda(tmp_path, monkeypatch):
    assert distill_cfg(tmp_path).device == "auto"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu") == resolve_device("cpu")


@pytest.mark.parametrize("value", ["cuda", "cuda:1"])
def test_cuda_asked_for_without_cuda_is_one_clear_error(monkeypatch, value):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # as on a CPU-only machine
    with pytest.raises(ConfigError, match=rf"^device: '{value}' was asked for but this machine has no usable CUDA"):
        resolve_device(value)


def test_store_and_train_settings_are_validated():
    assert StoreConfig().autocast == "none" and StoreConfig().score_batch_size is None
    for bad in ({"autocast": "fp8"}, {"score_batch_size": 0}, {"autocast_tolerance": 0}):
        with pytest.raises(ValueError):
            StoreConfig(**bad)
    with pytest.raises(ValueError):
        TrainConfig(lr_scaling="cubic")


def test_learning_rate_scaling_rule():
    assert scaled_lr(TrainConfig(lr=0.003, batch_size=4096)) == 0.003  # none: as configured
    assert scaled_lr(TrainConfig(lr=0.003, batch_size=4096, lr_scaling="linear")) == pytest.approx(0.048)
    assert scaled_lr(TrainConfig(lr=0.003, batch_size=4096, lr_scaling="sqrt")) == pytest.approx(0.012)
    assert scaled_lr(TrainConfig(lr=0.003, batch_size=256, lr_scaling="linear", base_batch_size=256)) == 0.003


# ---- the CPU path is the one kdflow always ran ----


def test_cpu_scoring_is_predict_logits_exactly():
    model, (x, _) = teacher(), data()
    assert np.array_equal(score_logits(model, x, torch.device("cpu")), predict_logits(model, x))
    assert np.array_equal(score_logits(model, x), predict_logits(model, x, 1024))
    assert model_device(model).type == "cpu"


def test_cpu_training_with_an_explicit_device_gives_identical_results():
    x, y = data()
    cfg = TrainConfig(epochs=2, batch_size=128, checkpoint_every_epochs=None)
    results = []
    for device in (None, torch.device("cpu")):
        torch.manual_seed(1)
        model = nn.Sequential(nn.Linear(L, 16), nn.ReLU(), nn.Linear(16, C))
        r = fit(model, ArraySource(x, y), x[:200], y[:200], cfg, progress=False, device=device)
        results.append((r.history, [p.detach().clone() for p in model.parameters()]))
    (h1, p1), (h2, p2) = results
    assert [{k: v for k, v in m.items() if k not in TIMINGS} for m in h1] == [
        {k: v for k, v in m.items() if k not in TIMINGS} for m in h2
    ]
    assert all(torch.equal(a, b) for a, b in zip(p1, p2))


def test_on_device_is_a_no_op_on_the_same_device():
    model = teacher()
    with on_device(model, torch.device("cpu")) as m:
        assert m is model
    assert not fits_on_device(1, torch.device("cpu"))  # on the CPU the data already is in memory


# ---- bf16 autocast checked against fp32 (runs on the CPU's bf16 autocast too) ----


def test_bf16_scores_are_close_to_fp32_and_the_check_measures_it():
    model, (x, _) = teacher(), data(512)
    fp32 = score_logits(model, x, torch.device("cpu"))
    bf16 = score_logits(model, x, torch.device("cpu"), autocast="bf16")
    assert bf16.dtype == np.float32 and not np.array_equal(bf16, fp32)
    check = check_autocast(bf16.astype(np.float16), fp32, "bf16", tolerance=0.02, clip=50.0)
    assert check.passed and 0 < check.max_abs_diff <= 0.02 * max(1.0, check.max_abs_logit)
    tight = check_autocast(bf16, fp32, "bf16", tolerance=1e-6)
    assert not tight.passed and tight.as_dict()["passed"] is False


def precompute_bf16(tmp_path, tolerance: float, top_k: int | None = None):
    cfg = distill_cfg(
        tmp_path, store={"autocast": "bf16", "autocast_tolerance": tolerance, "top_k": top_k, "rows_per_shard": 256}
    )
    x, y = data(600)
    ds = Dataset("train", "-", np.arange(600), x, y)
    key = store_key("t", "1", ds.fingerprint, top_k, cfg.train.teacher_logit_clip, "bf16")
    ls = LogitStore(LocalStore(tmp_path / "store"), key)
    model = teacher()
    stats = ls.precompute(
        ds.ids,
        lambda rows: score_logits(model, x[rows], torch.device("cpu"), autocast="bf16"),
        teacher_uri="models:/t/1", teacher_name="t", teacher_version="1", data_fingerprint=ds.fingerprint,
        dataset="train", rows_per_shard=256, top_k=top_k,
    )  # fmt: skip
    return cfg, ls, ds, model, stats


@pytest.mark.parametrize("top_k", [None, 3])
def test_stored_bf16_logits_are_checked_against_fp32_on_a_sample(tmp_path, top_k):
    cfg, ls, ds, model, _ = precompute_bf16(tmp_path, 0.02, top_k)
    assert key_suffix(ls.key) == "-bf16"
    check = check_stored_logits(cfg, ls, ds, model)
    assert check["autocast"] == "bf16" and check["rows"] == 256 and check["passed"]
    assert 0 < check["max_abs_diff"] <= 0.02 * max(1.0, check["max_abs_logit"])


def key_suffix(key: str) -> str:
    return key[key.rindex("-") :]


def test_bf16_logits_beyond_the_tolerance_are_refused(tmp_path):
    cfg, ls, ds, model, _ = precompute_bf16(tmp_path, 1e-6)
    with pytest.raises(LogitStoreError, match=r"autocast 'bf16' differ from fp32 by up to .* store.autocast_tol"):
        check_stored_logits(cfg, ls, ds, model)


def test_the_check_is_recorded_in_the_manifest_and_bf16_has_its_own_store_key(tmp_path):
    from kdflow.logits import finalize_shards
    from kdflow.precompute import store_spec

    cfg, ls, ds, model, _ = precompute_bf16(tmp_path, 0.02)
    assert store_key("t", "1", ds.fingerprint) + "-bf16" == ls.key  # fp32 logits are never reused for bf16
    spec = store_spec(cfg, _Ref(), "train", ds)
    assert spec.key == ls.key
    check = check_stored_logits(cfg, ls, ds, model)
    ls.store.delete(f"{ls.key}/manifest.json")
    stats = finalize_shards(ls, spec, plan_shards(ls, spec, ds.ids), [], 0.0, check)
    manifest = ls.require_manifest()
    assert manifest.autocast == "bf16" and manifest.autocast_check == check == stats.autocast_check


class _Ref:
    uri, name, version = "models:/t/1", "t", "1"


# ---- training input resident on a device ----


def stream(tmp_path):
    from kdflow.config import DataConfig

    rng = np.random.default_rng(0)
    ids, x = np.arange(700), rng.normal(size=(700, 6)).astype(np.float32)
    y, z = rng.integers(0, 4, 700), rng.normal(size=(700, 4)).astype(np.float32)
    path = write_parquet(to_frame(ids, x, y), tmp_path / "train.parquet", row_group_size=300)
    ls = LogitStore(LocalStore(tmp_path / "store"), store_key("t", "1", "f" * 64))
    ls.precompute(ids, lambda rows: z[rows], teacher_uri="u", teacher_name="t", teacher_version="1",
                  data_fingerprint="f" * 64, dataset="train", rows_per_shard=256)  # fmt: skip
    cfg = DataConfig(train=str(path), val="-", test="-", num_classes=4)
    return StreamingSource([("train", str(path), ls, True)], cfg, "1", {"train": "f" * 64}), x, y, z


def test_a_stream_read_once_into_arrays_holds_every_row_with_its_logits(tmp_path):
    src, x, y, z = stream(tmp_path)
    arrays = src.to_arrays()
    assert len(arrays) == len(src) == 700 and src.num_classes == arrays.num_classes == 4
    assert np.array_equal(arrays.x.numpy(), x) and np.array_equal(arrays.y.numpy(), y)
    assert np.array_equal(arrays.z.numpy(), z.astype(np.float16).astype(np.float32))
    moved = arrays.to(torch.device("cpu"))
    assert sum(len(b[0]) for b in moved.batches(64, torch.Generator().manual_seed(0))) == 700
    src.close()


# ---- CUDA (skipped visibly without a GPU) ----


@needs_cuda
def test_cuda_precompute_matches_cpu_fp32_and_bf16_is_within_tolerance():
    model, (x, _) = teacher(), data(5000)
    cpu = score_logits(model, x, torch.device("cpu"))
    gpu = score_logits(model, x, resolve_device("cuda"), batch_size=4096)
    assert model_device(model).type == "cpu"  # scored there, moved back
    assert np.abs(gpu - cpu).max() <= 1e-2 * max(1.0, np.abs(cpu).max())  # TF32 convolutions
    bf16 = score_logits(model, x, resolve_device("cuda"), autocast="bf16")
    assert check_autocast(bf16.astype(np.float16), cpu, "bf16", 0.02, 50.0).passed


@needs_cuda
def test_cuda_bf16_store_passes_the_check(tmp_path):
    cfg = distill_cfg(tmp_path, store={"autocast": "bf16"})
    x, y = data(600)
    ds = Dataset("train", "-", np.arange(600), x, y)
    ls = LogitStore(LocalStore(tmp_path / "store"), store_key("t", "1", ds.fingerprint, None, 50.0, "bf16"))
    model = teacher()
    cuda = resolve_device("cuda")
    ls.precompute(ds.ids, lambda rows: score_logits(model, x[rows], cuda, autocast="bf16"), teacher_uri="u",
                  teacher_name="t", teacher_version="1", data_fingerprint=ds.fingerprint, dataset="train")  # fmt: skip
    assert check_stored_logits(cfg, ls, ds, model)["passed"]


@needs_cuda
def test_cuda_training_is_resident_learns_and_leaves_a_device_neutral_model(tmp_path):
    x, y = data(4000)
    z = (5 * np.eye(C)[y]).astype(np.float32)  # a teacher that agrees with the labels
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(L, 32), nn.ReLU(), nn.Linear(32, C))
    cfg = TrainConfig(epochs=5, batch_size=512, lr_scaling="linear", checkpoint_every_epochs=None)
    result = fit(model, ArraySource(x, y, z), x[:500], y[:500], cfg, z[:500], progress=False,
                 device=resolve_device("cuda"))  # fmt: skip
    assert model_device(model).type == "cpu" and all(v.device.type == "cpu" for v in model.state_dict().values())
    assert result.best_val_accuracy > 0.3 and len(result.history) == 5
    torch.save(model.state_dict(), tmp_path / "m.pt")  # loads on a CPU-only machine without map_location
    assert all(t.device.type == "cpu" for t in torch.load(tmp_path / "m.pt", weights_only=True).values())


@needs_cuda
def test_cuda_a_streamed_input_that_fits_is_kept_resident_on_the_gpu(tmp_path):
    src, x, y, z = stream(tmp_path)
    cuda = resolve_device("cuda")
    resident = device_source(src, cuda, x.shape[1])
    assert isinstance(resident, ArraySource) and resident.x.device == cuda and resident.z.device == cuda
    batches = list(resident.batches(128, torch.Generator().manual_seed(0)))
    assert sum(len(b[0]) for b in batches) == 700 and batches[0][2].device == cuda
    src.close()


def test_teacher_config_takes_the_same_key(tmp_path):
    raw = yaml.safe_load(packaged_config("mnist1d_teacher.yaml").read_text())
    assert load_config(write_yaml(tmp_path / "t.yaml", {**raw, "device": "cpu"}), TeacherConfig).device == "cpu"


@pytest.mark.parametrize("scored_on", ["cuda:0", "cpu"])
def test_a_split_scored_on_a_gpu_worker_is_checked_even_when_the_flow_runs_on_the_cpu(tmp_path, scored_on):
    """A Dask worker with a GPU scores shards while the flow's own process has none: each shard result says where
    it was scored, and a split with any GPU-scored shard is compared with fp32 CPU logits before its manifest is
    written. With no GPU here the shards are scored on the CPU and *reported* as ``cuda:0`` (the one fault we
    cannot cause on this machine); the comparison itself runs for real."""
    from kdflow.logits import compute_shard
    from kdflow.precompute import finalize_logits, plan_logits

    cfg = distill_cfg(tmp_path, store={"rows_per_shard": 256})
    x, y = data(600)
    datasets = {
        "train": Dataset("train", "-", np.arange(600), x, y),
        "test": Dataset("test", "-", np.arange(64), x[:64], y[:64]),
    }
    model = teacher()
    plan = plan_logits(cfg, _Ref(), datasets)
    stores = logit_stores(cfg, _Ref(), datasets)
    results = [
        (name, compute_shard(stores[name], store_spec(cfg, _Ref(), name, ds), job, ds.ids[job.rows],
                             lambda ds=ds, job=job: score_logits(model, ds.x[job.rows], torch.device("cpu")),
                             scored_on))
        for name, ds in datasets.items()
        for job in plan.splits[name].jobs
    ]  # fmt: skip
    out = finalize_logits(cfg, _Ref(), datasets, plan, results, 0.0, lambda: model)
    assert out.stats["train"].scored_on == {scored_on: 3} and out.stats["test"].scored_on == {scored_on: 1}
    check = out.stats["train"].autocast_check
    if scored_on == "cpu":
        assert check is None and stores["train"].require_manifest().autocast_check is None
    else:
        assert check["passed"] and check["rows"] == 256 and check["autocast"] == "none"
        assert stores["train"].require_manifest().autocast_check == check
