"""Hard examples: teacher entropy from stored logits, selection, oversampling and weighting (exact values)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from kdflow.checkpoint import training_key
from kdflow.config import (
    ConfigError,
    DataConfig,
    DistillConfig,
    HardExamplesConfig,
    ModelSpec,
    TrainConfig,
    load_config,
)
from kdflow.data import to_frame, write_parquet
from kdflow.ensemble import combine_logits
from kdflow.hard_examples import (
    Candidates,
    hard_example_source,
    oversample_indices,
    rare_classes,
    scan_store,
    select_from_stores,
    select_hard_examples,
    teacher_entropy,
    top_fraction,
    train_with_hard_examples,
)
from kdflow.logits import LogitStore, store_key
from kdflow.models import build_model
from kdflow.store import LocalStore
from kdflow.stream import StreamingSource
from tests.conftest import write_yaml


def test_entropy_of_known_logits():
    z = np.array(
        [
            [0.0, 0.0, 0.0, 0.0],  # uniform over 4: ln 4
            [math.log(1.0), math.log(3.0), -1e4, -1e4],  # p = (1/4, 3/4): -(1/4 ln 1/4 + 3/4 ln 3/4)
            [1000.0, 0.0, 0.0, 0.0],  # one-hot up to exp(-1000): 0
            [7.0, 7.0, 7.0, 7.0],  # a shift changes nothing: ln 4
        ]
    )
    h = teacher_entropy(z)
    expected = [math.log(4.0), -(0.25 * math.log(0.25) + 0.75 * math.log(0.75)), 0.0, math.log(4.0)]
    assert h == pytest.approx(expected, abs=1e-12)
    assert h[1] == pytest.approx(0.5623351446188083, abs=1e-12)


def test_rare_classes_are_those_below_the_share_of_train_labels():
    labels = np.array([0] * 50 + [1] * 45 + [2] * 4 + [3] * 1)  # shares .50 .45 .04 .01; class 4 absent
    assert rare_classes(labels, 5, 0.05) == (2, 3, 4)
    assert rare_classes(labels, 5, 0.04) == (3, 4)  # 0.04 is not below 0.04
    with pytest.raises(ValueError, match="train split is empty"):
        rare_classes(np.array([], dtype=int), 5, 0.1)


def test_top_fraction_takes_ceil_of_the_eligible_rows_highest_first_ties_by_index():
    h = np.array([0.1, 0.9, 0.5, 0.9, 0.3, 0.7])
    assert top_fraction(h, 0.5).tolist() == [1, 3, 5]  # ceil(3.0): 0.9 (index 1 before 3), 0.7
    assert top_fraction(h, 0.34).tolist() == [1, 3, 5]  # ceil(2.04) = 3
    assert top_fraction(h, 1 / 6).tolist() == [1]  # 1/6 * 6 rounds to exactly 1
    eligible = np.array([True, False, True, False, True, False])
    assert top_fraction(h, 0.5, eligible).tolist() == [2, 4]  # ceil(1.5) = 2 of rows 0, 2, 4
    assert top_fraction(np.arange(30.0), 0.1).tolist() == [29, 28, 27]  # 0.1 * 30 is 3, not 4
    assert top_fraction(h, 0.5, np.zeros(6, dtype=bool)).tolist() == []


def test_oversample_indices_repeat_each_row_its_factor():
    assert oversample_indices(np.array([1.0, 3.0, 1.0, 2.0])).tolist() == [0, 1, 1, 1, 2, 3, 3]
    with pytest.raises(ValueError, match="whole"):
        oversample_indices(np.array([1.0, 2.5]))


def _candidates() -> dict[str, Candidates]:
    return {
        "transfer": Candidates(np.array([10, 11, 12, 13]), np.array([0.2, 1.5, 0.9, 1.5]), np.array([0, 2, 2, 1])),
        "train": Candidates(np.array([1, 2]), np.array([1.5, 0.1]), np.array([2, 0])),
    }


def test_selection_across_splits_with_factors_and_summary():
    cfg = HardExamplesConfig(enabled=True, fraction=0.5, factor=3)
    sel = select_hard_examples(cfg, _candidates(), None, 3)
    # 6 candidates, ceil(3): entropy 1.5 three times; ties in split order train, transfer then row order
    assert {k: v.tolist() for k, v in sel.selected.items()} == {"train": [1], "transfer": [11, 13]}
    assert sel.selected_rows == 3 and sel.mean_entropy == pytest.approx(1.5) and sel.by_class == {1: 1, 2: 2}
    assert sel.candidate_rows == sel.eligible_rows == 6 and sel.candidate_mean_entropy == pytest.approx(5.7 / 6)
    assert sel.factors("transfer", np.array([13, 10, 11, 99])).tolist() == [3.0, 1.0, 3.0, 1.0]
    assert sel.factors("recent", np.array([13])).tolist() == [1.0]  # ids are per split
    assert sel.extra_rows() == 6  # 3 rows, 2 more copies each
    d = sel.as_dict()
    assert d["by_split"] == {"train": 1, "transfer": 2} and d["mode"] == "oversample" and d["entropy_temperature"] == 1
    assert sel.metrics()["hard_examples_selected_rows"] == 3.0
    weighted = select_hard_examples(cfg.model_copy(update={"mode": "weight", "factor": 2.5}), _candidates(), None, 3)
    assert weighted.extra_rows() == 0 and weighted.factors("train", np.array([1, 2])).tolist() == [2.5, 1.0]


def test_rare_classes_restrict_the_pool():
    train_labels = np.array([0] * 10 + [1] * 9 + [2] * 1)  # class 2 holds 5% of the labels
    cfg = HardExamplesConfig(enabled=True, fraction=0.5, classes="rare", rare_share=0.1)
    sel = select_hard_examples(cfg, _candidates(), train_labels, 3)
    # eligible: class-2 rows train:1 (1.5), transfer:11 (1.5), transfer:12 (0.9); ceil(1.5) = 2 of them
    assert sel.rare_classes == (2,) and sel.eligible_rows == 3
    assert {k: v.tolist() for k, v in sel.selected.items()} == {"train": [1], "transfer": [11]}
    none_rare = select_hard_examples(cfg.model_copy(update={"rare_share": 0.01}), _candidates(), train_labels, 3)
    assert none_rare.selected_rows == 0 and math.isnan(none_rare.mean_entropy)
    assert none_rare.as_dict()["mean_entropy"] is None
    with pytest.raises(ConfigError, match="no candidate rows in the splits"):
        select_hard_examples(cfg, {}, train_labels, 3)


def _store(tmp_path, name, ids, z, version="1", fingerprint="f" * 64):
    ls = LogitStore(LocalStore(tmp_path / "store"), store_key(name, version, fingerprint))
    ls.precompute(
        ids, lambda rows: z[rows], teacher_uri="u", teacher_name=name, teacher_version=version,
        data_fingerprint=fingerprint, dataset="transfer", rows_per_shard=64,
    )  # fmt: skip
    return ls


def test_scan_store_reads_entropy_from_the_stored_fp16_logits_of_every_teacher(tmp_path):
    rng = np.random.default_rng(0)
    ids = np.arange(200, 400)
    z1, z2 = rng.normal(size=(200, 5)) * 3, rng.normal(size=(200, 5)) * 3
    a, b = _store(tmp_path, "a", ids, z1), _store(tmp_path, "b", ids, z2)
    got_ids, h, top = scan_store([a], [1.0])
    stored = z1.astype(np.float16).astype(np.float32)
    assert got_ids.tolist() == ids.tolist() and np.allclose(h, teacher_entropy(stored), atol=1e-12)
    assert top.tolist() == stored.argmax(1).tolist()
    _, h2, _ = scan_store([a, b], [0.25, 0.75])  # the ensemble at T=1: entropy of the mean probability
    mean = combine_logits([stored, z2.astype(np.float16).astype(np.float32)], [0.25, 0.75], 1.0)
    assert np.allclose(h2, teacher_entropy(mean), atol=1e-6)


def test_select_from_stores_uses_labels_on_labeled_splits(tmp_path):
    ids = np.arange(6)
    z = np.zeros((6, 3))
    z[:, 0] = [9.0, 0.0, 9.0, 0.1, 9.0, 0.2]  # rows 1, 3, 5 uncertain; the teacher says class 0 or a tie
    store = _store(tmp_path, "t", ids, z)
    labels = np.array([0, 2, 0, 1, 0, 0])
    cfg = HardExamplesConfig(enabled=True, fraction=0.5, splits=["train"])
    sel = select_from_stores(cfg, {"train": [store]}, [1.0], 3, {"train": (ids[::-1], labels[::-1])})
    assert sel.selected["train"].tolist() == [1, 3, 5] and sel.by_class == {0: 1, 1: 1, 2: 1}  # labels, by id


def test_streaming_source_oversamples_or_weights_the_selected_rows(tmp_path):
    rng = np.random.default_rng(1)
    n = 300
    ids = rng.permutation(np.arange(1000, 1000 + n))
    x = rng.normal(size=(n, 4)).astype(np.float32)
    z = rng.normal(size=(n, 3)).astype(np.float32) * 2
    path = write_parquet(to_frame(ids, x), tmp_path / "transfer.parquet", row_group_size=70)
    store = _store(tmp_path, "t", ids, z)
    data = DataConfig(train="-", val="-", test="-", transfer=str(path), num_classes=3)
    parts = [("transfer", str(path), store, False)]
    cfg = HardExamplesConfig(enabled=True, fraction=0.1, factor=3)
    sel = select_from_stores(cfg, {"transfer": [store]}, [1.0], 3, {})
    assert sel.selected_rows == 30
    chosen = set(sel.selected["transfer"].tolist())
    row_of = {tuple(r): int(i) for r, i in zip(x, ids)}

    src = StreamingSource(parts, data, "1", {"transfer": "f" * 64}, buffer_chunks=2, emphasis=sel)
    assert len(src) == n + 60
    xs, _, _ = zip(*src.batches(32, torch.Generator().manual_seed(0)))
    seen = [row_of[tuple(r)] for r in torch.cat(xs).numpy()]
    counts = {i: seen.count(i) for i in set(seen)}
    assert len(seen) == n + 60 and all(counts[i] == (3 if i in chosen else 1) for i in ids.tolist())

    weighted = select_from_stores(cfg.model_copy(update={"mode": "weight", "factor": 2.5}), {"transfer": [store]}, [1.0], 3, {})  # fmt: skip
    src = StreamingSource(parts, data, "1", {"transfer": "f" * 64}, buffer_chunks=2, emphasis=weighted)
    batches = list(src.batches(32, torch.Generator().manual_seed(0)))
    assert len(src) == n and all(len(b) == 4 for b in batches)
    rows = [row_of[tuple(r)] for r in torch.cat([b[0] for b in batches]).numpy()]
    w = torch.cat([b[3] for b in batches]).numpy()
    assert sorted(rows) == sorted(ids.tolist())
    assert all(wi == (2.5 if i in chosen else 1.0) for i, wi in zip(rows, w))


def test_in_memory_entry_point_trains_kd_with_hard_examples():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(120, 8)).astype(np.float32)
    y = np.where(np.arange(120) < 40, rng.integers(0, 3, 120), -1)
    z = rng.normal(size=(120, 3)).astype(np.float32)
    cfg = HardExamplesConfig(enabled=True, fraction=0.25, factor=2)
    source, sel = hard_example_source(x, y, z, cfg, 3)
    assert sel.selected_rows == 20 and len(source) == 140  # ceil(0.25 * 80 transfer rows), one extra copy each
    assert set(sel.selected["transfer"].tolist()) <= set(range(40, 120))
    weighted, _ = hard_example_source(x, y, z, cfg.model_copy(update={"mode": "weight"}), 3)
    assert len(weighted) == 120 and float(weighted.w.sum()) == 140.0
    train = TrainConfig(epochs=2, batch_size=32, early_stopping_patience=None, checkpoint_every_epochs=None)
    for hard in (cfg, cfg.model_copy(update={"mode": "weight"})):
        model = build_model("mlp", {"width": 16}, (8,), 3)
        result, selection = train_with_hard_examples(model, x, y, z, x[:30], y[:30], train, hard, 3,
                                                     progress=False)  # fmt: skip
        assert result.steps == 2 * math.ceil(len(source if hard.mode == "oversample" else weighted) / 32)
        assert selection.selected_rows == 20 and np.isfinite(result.history[-1]["loss"])


def test_config_validates_mode_factor_and_loss(tmp_path):
    assert HardExamplesConfig().enabled is False and HardExamplesConfig().splits == ["transfer", "recent"]
    with pytest.raises(ValueError, match="whole number of copies in mode oversample, got 2.5"):
        HardExamplesConfig(factor=2.5)
    assert HardExamplesConfig(mode="weight", factor=2.5).factor == 2.5
    base = {
        "data": {"train": "a", "val": "b", "test": "c", "num_classes": 3},
        "teacher_uri": "models:/t@champion",
        "student": {"arch": "mlp"},
        "registry": {"student_name": "s"},
        "train": {"loss": "dist"},
        "hard_examples": {"enabled": True, "mode": "weight"},
    }
    with pytest.raises(ConfigError, match="hard_examples.mode weight needs a per-row loss: train.loss kd or dkd"):
        load_config(write_yaml(tmp_path / "bad.yaml", base), DistillConfig)
    base["hard_examples"]["mode"] = "oversample"
    with pytest.raises(ConfigError, match=r"hard_examples.splits \['transfer', 'recent'\] names no split of this run"):
        load_config(write_yaml(tmp_path / "no_transfer.yaml", base), DistillConfig)
    base["data"]["transfer"] = "d"
    assert load_config(write_yaml(tmp_path / "ok.yaml", base), DistillConfig).hard_examples.mode == "oversample"
    base["data"]["transfer"] = None
    base["hard_examples"]["splits"] = ["train"]
    assert load_config(write_yaml(tmp_path / "train.yaml", base), DistillConfig).hard_examples.splits == ["train"]
    base["hard_examples"]["typo"] = 1
    with pytest.raises(ConfigError, match="hard_examples.typo: Extra inputs"):
        load_config(write_yaml(tmp_path / "typo.yaml", base), DistillConfig)


def test_checkpoint_key_changes_only_when_hard_examples_are_given():
    args = ("student", ModelSpec(arch="mlp"), TrainConfig(), 3, (8,), {"train": "f"})
    plain = training_key(*args)
    assert training_key(*args, extra=None) == plain
    on = training_key(*args, extra={"hard_examples": HardExamplesConfig(enabled=True).model_dump()})
    other = training_key(*args, extra={"hard_examples": HardExamplesConfig(enabled=True, factor=2).model_dump()})
    assert len({plain, on, other}) == 3
