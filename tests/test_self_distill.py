"""Born-again self-distillation at the library level (no Prefect, no MLflow): one generation step from a trained
parent through the logit store, the per-generation seed, and which generation is selected."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import yaml

from kdflow.config import DistillConfig, ValidationConfig, packaged_config
from kdflow.data import datasets_from_frames
from kdflow.logits import store_key
from kdflow.models import build_for_training
from kdflow.self_distill import born_again_step, generation_config, generation_ref, select_generation
from kdflow.store import open_store
from kdflow.train import predict_logits, train_classifier
from kdflow.validation import dataset_uris, validate_data


@pytest.fixture(scope="module")
def tiny(tiny_data, tmp_path_factory):
    """The packaged distill config on the tiny MNIST-1D splits (store in tmp), and its validated datasets."""
    raw = yaml.safe_load(packaged_config("mnist1d_distill.yaml").read_text())
    raw["data"].update({k: str(tiny_data[k]) for k in ("train", "val", "test", "transfer")})
    raw["train"].update(epochs=3, early_stopping_patience=None, batch_size=128, schedule={"warmup_steps": 10})
    raw["store"] = {"root": str(tmp_path_factory.mktemp("store")), "rows_per_shard": 512}
    raw["evaluation"] = {"latency_batches": 5, "throughput_batches": 1}
    raw["self_distill"] = {"generations": 2}
    cfg = DistillConfig.model_validate(raw)
    report, frames = validate_data(cfg.data, ValidationConfig(data_docs=False))
    report.raise_for_failures()
    uris = {n: u for n, (u, _) in dataset_uris(cfg.data).items()}
    labeled = {n: flag for n, (_, flag) in dataset_uris(cfg.data).items()}
    return cfg, datasets_from_frames(frames, uris, labeled, cfg.data)


def test_generation_config_gives_each_generation_its_own_seed(tiny):
    cfg, _ = tiny
    assert [generation_config(cfg, g).train.seed for g in (1, 2, 3)] == [cfg.train.seed + k for k in (0, 1, 2)]
    assert generation_config(cfg, 1).model_dump() == cfg.model_dump()  # generation 1 is the normal student
    assert generation_config(cfg, 2).train.model_dump(exclude={"seed"}) == cfg.train.model_dump(exclude={"seed"})
    with pytest.raises(ValueError, match="count from 1"):
        generation_config(cfg, 0)


def test_one_born_again_step_learns_from_the_parents_stored_logits(tiny):
    cfg, datasets = tiny
    cfg = cfg.model_copy(update={"train": cfg.train.model_copy(update={"alpha": 1.0})})  # the parent's logits only
    parent = build_for_training(cfg.student, datasets.train.x, cfg.data.num_classes)
    train_classifier(
        parent, datasets.train.x, datasets.train.y, datasets.val.x, datasets.val.y,
        cfg.train.model_copy(update={"epochs": 4}), progress=False,
    )  # fmt: skip
    ref = generation_ref(cfg.registry.student_name, "7", "run-of-generation-1")
    step = born_again_step(cfg, 2, parent, ref, datasets)

    # Stored through the logit store like a teacher's, keyed by the generation's registered version: not the teacher's.
    keys = {
        n: store_key(ref.name, "7", ds.fingerprint, cfg.store.top_k, cfg.train.teacher_logit_clip)
        for n, ds in datasets.items()
    }
    assert all(step.parent_outputs.store_uris[n].endswith(key) for n, key in keys.items())
    assert all(f"logits/{cfg.registry.student_name}/v7/" in k for k in keys.values())
    assert not any(s.reused for s in step.parent_outputs.stats.values())
    assert step.parent.primary == ref and step.parent.weights == [1.0]
    expected = predict_logits(parent, datasets.val.x)
    assert np.allclose(step.parent.eval_logits["val"], expected, atol=0.05)  # fp16 storage

    # The new generation learned from them alone (alpha 1: no label term): it predicts the parent's classes.
    history = step.training.history
    assert len(history) == cfg.train.epochs and all(h["soft_loss"] > 0 and h["hard_loss"] > 0 for h in history)
    agreement = float((predict_logits(step.model, datasets.val.x).argmax(1) == expected.argmax(1)).mean())
    assert agreement > 0.5  # chance: 0.1
    assert history[-1]["val_kl_to_teacher"] < history[0]["val_kl_to_teacher"]
    assert not open_store(cfg.store.root).list("checkpoints/")  # a finished training deletes its checkpoint

    # Reusable: a second step finds every store complete and recomputes nothing.
    again = born_again_step(cfg, 2, parent, ref, datasets)
    assert all(s.reused for s in again.parent_outputs.stats.values())
    assert again.training.history[-1]["val_accuracy"] == history[-1]["val_accuracy"]  # same seed, same student


def test_generation_one_is_the_distill_flow_not_a_step(tiny):
    cfg, datasets = tiny
    with pytest.raises(ValueError, match="generation 1 learns from the registered teacher"):
        born_again_step(cfg, 1, None, generation_ref("s", "1", None), datasets)


def _gen(number: int, val_accuracy: float) -> SimpleNamespace:
    return SimpleNamespace(number=number, val_accuracy=val_accuracy)


def test_selection_by_validation_prefers_the_earliest_on_a_tie_and_last_takes_the_final_one():
    gens = [_gen(1, 0.90), _gen(2, 0.93), _gen(3, 0.93), _gen(4, 0.91)]
    assert select_generation(gens, "best_val").number == 2
    assert select_generation(gens, "last").number == 4
    assert select_generation(gens[:1], "best_val").number == 1
    with pytest.raises(ValueError, match="no generation"):
        select_generation([], "best_val")
    with pytest.raises(ValueError, match="unknown generation selection 'best'"):
        select_generation(gens, "best")
