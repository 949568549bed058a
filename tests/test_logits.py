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
META = dict(teacher_uri="models:/t@champion", teacher_name="t", teacher_version="3", data_fingerprint="f" * 64,
            dataset="train")


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
