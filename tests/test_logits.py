"""The teacher-logit store: round trip, reuse, resume, integrity, provenance, id join."""

import json

import numpy as np
import pytest

from kdflow.logits import LogitStore, LogitStoreError, store_key
from kdflow.store import LocalStore

N, C = 1000, 5
IDS = np.arange(100, 100 + N)
RNG = np.random.default_rng(0)
LOGITS = RNG.normal(scale=4, size=(N, C)).astype(np.float32)
META = dict(
    teacher_uri="models:/t@champion", teacher_name="t", teacher_version="3", data_fingerprint="f" * 64, dataset="train"
)


class CountingTeacher:
    """Stands in for the teacher forward pass and counts the rows it was asked for."""

    def __init__(self, fail_after_calls: int | None = None):
        self.rows = 0
        self.calls = 0
        self.fail_after_calls = fail_after_calls

    def __call__(self, rows: slice) -> np.ndarray:
        if self.fail_after_calls is not None and self.calls >= self.fail_after_calls:
            raise KeyboardInterrupt("simulated interruption")
        self.calls += 1
        self.rows += rows.stop - rows.start
        return LOGITS[rows]


@pytest.fixture
def ls(tmp_path):
    return LogitStore(LocalStore(tmp_path), store_key("t", "3", "f" * 64))


def test_round_trip_is_fp16_exact_and_manifest_describes_it(ls):
    teacher = CountingTeacher()
    stats = ls.precompute(IDS, teacher, rows_per_shard=300, **META)
    assert (stats.reused, stats.shards_total, stats.rows_computed, teacher.rows) == (False, 4, N, N)
    back = ls.read_aligned(IDS, "3", "f" * 64)
    assert np.array_equal(back, LOGITS.astype(np.float16).astype(np.float32))
    m = ls.require_manifest()
    assert (m.num_rows, m.num_classes, m.dtype, [s.rows for s in m.shards]) == (N, C, "float16", [300, 300, 300, 100])
    assert all(len(s.sha256) == 64 for s in m.shards)


def test_complete_store_is_reused_without_calling_the_teacher(ls):
    ls.precompute(IDS, CountingTeacher(), rows_per_shard=300, **META)
    teacher = CountingTeacher()
    stats = ls.precompute(IDS, teacher, rows_per_shard=300, **META)
    assert stats.reused and teacher.calls == 0


def test_interrupted_run_resumes_with_only_missing_shards(ls):
    with pytest.raises(KeyboardInterrupt):
        ls.precompute(IDS, CountingTeacher(fail_after_calls=2), rows_per_shard=300, **META)
    assert ls.manifest() is None
    with pytest.raises(LogitStoreError, match="no manifest"):
        ls.read_aligned(IDS, "3", "f" * 64)
    teacher = CountingTeacher()
    stats = ls.precompute(IDS, teacher, rows_per_shard=300, **META)
    assert teacher.rows == 400 and stats.shards_computed == 2
    assert np.array_equal(ls.read_aligned(IDS, "3", "f" * 64), LOGITS.astype(np.float16).astype(np.float32))


def test_partially_written_shard_with_bad_checksum_is_recomputed(ls):
    with pytest.raises(KeyboardInterrupt):
        ls.precompute(IDS, CountingTeacher(fail_after_calls=2), rows_per_shard=300, **META)
    path = ls.store.root / ls.key / "shard-00001.npz"
    path.write_bytes(path.read_bytes()[:50])
    teacher = CountingTeacher()
    ls.precompute(IDS, teacher, rows_per_shard=300, **META)
    assert teacher.rows == 700


def test_corrupt_shard_is_named_and_never_read(ls):
    ls.precompute(IDS, CountingTeacher(), rows_per_shard=300, **META)
    path = ls.store.root / ls.key / "shard-00002.npz"
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    path.write_bytes(bytes(raw))
    with pytest.raises(LogitStoreError, match="shard-00002.npz failed its SHA-256 check"):
        ls.read_aligned(IDS, "3", "f" * 64)


def test_manifest_for_other_teacher_or_data_is_rejected(ls):
    ls.precompute(IDS, CountingTeacher(), rows_per_shard=300, **META)
    with pytest.raises(LogitStoreError, match="teacher version 3 .* expected 4"):
        ls.read_aligned(IDS, "4", "f" * 64)
    with pytest.raises(LogitStoreError, match="manifest is for teacher version 3"):
        ls.precompute(IDS, CountingTeacher(), rows_per_shard=300, **{**META, "data_fingerprint": "e" * 64})


def test_ids_are_joined_not_assumed_in_order(ls):
    ls.precompute(IDS, CountingTeacher(), rows_per_shard=300, **META)
    order = np.random.default_rng(1).permutation(N)
    back = ls.read_aligned(IDS[order], "3", "f" * 64)
    assert np.array_equal(back, LOGITS[order].astype(np.float16).astype(np.float32))
    with pytest.raises(LogitStoreError, match="2 dataset id\\(s\\) have no stored logits"):
        ls.read_aligned(np.array([5, 6, 100]), "3", "f" * 64)


def test_out_of_range_logits_are_clipped_and_counted(ls):
    big = LOGITS.copy()
    big[0, 0] = 1e6
    big[1, 1] = -1e6
    stats = ls.precompute(IDS, lambda rows: big[rows], rows_per_shard=300, clip_value=50.0, **META)
    assert stats.clipped_values == 2
    back = ls.read_aligned(IDS, "3", "f" * 64)
    assert back[0, 0] == 50.0 and back[1, 1] == -50.0 and np.isfinite(back).all()
    assert json.loads(ls.store.get(f"{ls.key}/manifest.json"))["clipped_values"] == 2


def test_non_finite_teacher_output_is_refused(ls):
    bad = LOGITS.copy()
    bad[5, 0] = np.nan
    with pytest.raises(LogitStoreError, match="non-finite"):
        ls.precompute(IDS, lambda rows: bad[rows], rows_per_shard=300, **META)


def test_topk_mode_keeps_top_classes_and_spreads_missing_mass(tmp_path):
    from kdflow.logits import topk_to_logprobs

    ls = LogitStore(LocalStore(tmp_path), store_key("t", "3", "f" * 64, top_k=2))
    assert ls.key.endswith("-top2")
    ls.precompute(IDS, CountingTeacher(), rows_per_shard=300, top_k=2, **META)
    m = ls.require_manifest()
    assert (m.mode, m.top_k, m.missing_mass_rule, m.num_classes) == ("topk", 2, "uniform", C)
    back = ls.read_aligned(IDS, "3", "f" * 64)
    probs = np.exp(back)
    assert np.allclose(probs.sum(1), 1.0, atol=2e-3)
    true = np.exp(LOGITS - LOGITS.max(1, keepdims=True))
    true /= true.sum(1, keepdims=True)
    top2 = np.argsort(-true, 1)[:, :2]
    assert np.array_equal(np.argsort(-back, 1, kind="stable")[:, :2], top2)
    assert np.allclose(np.take_along_axis(probs, top2, 1), np.take_along_axis(true, top2, 1), atol=2e-3)
    # Hand example: kept log-probs log(.5), log(.3); the other 3 classes share 0.2 equally.
    full = topk_to_logprobs(np.log([[0.5, 0.3]]), np.array([[4, 1]]), 5)
    assert np.allclose(np.exp(full), [[0.2 / 3, 0.3, 0.2 / 3, 0.2 / 3, 0.5]])


def test_topk_bytes_per_row_are_smaller_for_many_classes(tmp_path):
    from kdflow.logits import size_bytes

    wide = np.random.default_rng(2).normal(size=(N, 100)).astype(np.float32)
    dense = LogitStore(LocalStore(tmp_path), store_key("t", "3", "f" * 64))
    topk = LogitStore(LocalStore(tmp_path), store_key("t", "3", "f" * 64, top_k=5))
    for ls, k in ((dense, None), (topk, 5)):
        ls.precompute(IDS, lambda rows: wide[rows], rows_per_shard=500, top_k=k, **META)
    assert size_bytes(topk) < 0.25 * size_bytes(dense)


def test_topk_must_leave_some_classes_out(ls):
    with pytest.raises(LogitStoreError, match="top_k must be in"):
        ls.precompute(IDS, CountingTeacher(), rows_per_shard=300, top_k=C, **META)


def test_store_key_names_every_setting_that_changes_stored_values():
    base = store_key("t", "3", "f" * 64)
    assert base == store_key("t", "3", "f" * 64, top_k=None, clip_value=50.0) == f"logits/t/v3/{'f' * 32}-f16-clip50.0"
    variants = [
        store_key("t", "3", "f" * 64, clip_value=20.0),
        store_key("t", "3", "f" * 64, clip_value=None),
        store_key("t", "3", "f" * 64, clip_value=50.000001),
        store_key("t", "3", "f" * 64, top_k=5),
        store_key("t", "3", "f" * 64, top_k=5, clip_value=20.0),
        store_key("t", "4", "f" * 64),
        store_key("t", "3", "e" * 64),
    ]
    assert len({base, *variants}) == 1 + len(variants)
    assert variants[1].endswith("-f16-noclip") and variants[3].endswith("-f16u16-clip50.0-top5")
    assert store_key("t", "3", "f" * 64, clip_value=50) == base  # an int clip is the same setting


def test_changed_teacher_logit_clip_gets_its_own_store_and_recomputes(tmp_path):
    """Two precomputations differing only in the clip: different keys, and the second runs the teacher on every
    row instead of reusing the first one's (differently clipped) logits."""
    from kdflow.logits import StoreSpec

    big = LOGITS * 10  # |logits| up to ~150: both clips bite
    store = LocalStore(tmp_path)
    specs = [StoreSpec(**META, rows_per_shard=300, clip_value=c) for c in (50.0, 20.0)]
    assert specs[0].key != specs[1].key
    backs = []
    for spec in specs:
        teacher = CountingTeacher()
        ls = LogitStore(store, spec.key)
        stats = ls.precompute(
            IDS, lambda rows: (teacher(rows), big[rows])[1], rows_per_shard=300, clip_value=spec.clip_value, **META
        )
        assert not stats.reused and stats.shards_computed == 4 and teacher.rows == N
        backs.append(ls.read_aligned(IDS, "3", "f" * 64))
        assert ls.require_manifest().clip_value == spec.clip_value
    assert np.abs(backs[0]).max() == 50.0 and np.abs(backs[1]).max() == 20.0
    again = CountingTeacher()
    assert LogitStore(store, specs[1].key).precompute(IDS, again, rows_per_shard=300, clip_value=20.0, **META).reused
    assert again.calls == 0


def test_store_with_other_clip_at_the_same_key_is_never_reused(ls):
    """Defence in depth for hand-chosen keys: a complete store with another clip is refused, and shards an
    interrupted run wrote with another clip are recomputed (their marker records the clip)."""
    ls.precompute(IDS, CountingTeacher(), rows_per_shard=300, clip_value=50.0, **META)
    with pytest.raises(LogitStoreError, match="clip 50.0 / top_k None, expected clip 20.0"):
        ls.precompute(IDS, CountingTeacher(), rows_per_shard=300, clip_value=20.0, **META)
    ls.store.delete(f"{ls.key}/manifest.json")  # as if the clip-50 run had been killed before its manifest
    teacher = CountingTeacher()
    stats = ls.precompute(IDS, teacher, rows_per_shard=300, clip_value=20.0, **META)
    assert teacher.rows == N and stats.shards_kept == 0 and stats.shards_computed == 4


def test_flow_store_keys_follow_teacher_logit_clip_and_top_k():
    """The flows' keys (tasks.logits.logit_stores) change with train.teacher_logit_clip and store.top_k."""
    import copy

    import yaml

    from kdflow.config import DistillConfig, packaged_config
    from kdflow.data import Dataset
    from kdflow.registry import ModelRef
    from tasks.logits import logit_stores

    raw = yaml.safe_load(packaged_config("mnist1d_distill.yaml").read_text())
    raw["store"]["root"] = "/nonexistent-never-written"
    teacher = ModelRef(uri="models:/t@champion", name="t", version="3", run_id=None)
    datasets = {"train": Dataset("train", "mem://train", IDS, np.zeros((N, 4), np.float32), np.zeros(N, np.int64))}

    def key(train: dict, store: dict) -> str:
        cfg = copy.deepcopy(raw)
        cfg["train"].update(train)
        cfg["store"].update(store)
        return logit_stores(DistillConfig(**cfg), teacher, datasets)["train"].key

    keys = [
        key({}, {}),
        key({"teacher_logit_clip": 20.0}, {}),
        key({"teacher_logit_clip": None}, {}),
        key({}, {"top_k": 3}),
        key({}, {"rows_per_shard": 100}),
    ]
    assert len(set(keys[:4])) == 4 and keys[4] == keys[0]  # shard size changes the layout, not the values
    assert keys[1].endswith("-f16-clip20.0")
