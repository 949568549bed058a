"""Streaming training input: every row once per epoch, joined by id with its logits, shuffled across shards."""

import numpy as np
import pytest
import torch

from kdflow.config import DataConfig
from kdflow.data import to_frame, write_parquet
from kdflow.logits import LogitStore, LogitStoreError, store_key
from kdflow.store import LocalStore
from kdflow.stream import StreamingSource

N, D, C = 1000, 6, 4


@pytest.fixture
def files(tmp_path):
    rng = np.random.default_rng(0)
    ids = rng.permutation(np.arange(5000, 5000 + N))  # ids in no particular order
    x = rng.normal(size=(N, D)).astype(np.float32)
    y = rng.integers(0, C, size=N)
    z = rng.normal(size=(N, C)).astype(np.float32)
    path = write_parquet(to_frame(ids, x, y), tmp_path / "train.parquet", row_group_size=300)
    ls = LogitStore(LocalStore(tmp_path / "store"), store_key("t", "1", "f" * 64))
    ls.precompute(
        ids,
        lambda rows: z[rows],
        teacher_uri="u",
        teacher_name="t",
        teacher_version="1",
        data_fingerprint="f" * 64,
        dataset="train",
        rows_per_shard=256,
    )
    return ids, x, y, z, path, ls


def source(files, **kw):
    ids, x, y, z, path, ls = files
    cfg = DataConfig(train=str(path), val="-", test="-", num_classes=C)
    return StreamingSource([("train", str(path), ls, True)], cfg, "1", {"train": "f" * 64}, **kw)


def test_every_row_once_per_epoch_with_its_own_logits(files):
    ids, x, y, z, _, _ = files
    src = source(files, buffer_chunks=2)
    assert len(src) == N and len(src.chunks) == 4  # row groups of 300 rows vs shards of 256: not aligned
    xs, ys, zs = zip(*src.batches(64, torch.Generator().manual_seed(0)))
    xb, yb, zb = torch.cat(xs).numpy(), torch.cat(ys).numpy(), torch.cat(zs).numpy()
    assert len(xb) == N
    order = {tuple(row): i for i, row in enumerate(x)}
    idx = np.array([order[tuple(row)] for row in xb])
    assert sorted(idx.tolist()) == list(range(N))
    assert np.array_equal(yb, y[idx]) and np.array_equal(zb, z[idx].astype(np.float16).astype(np.float32))
    assert all(len(b) == 64 for b in xs[:-1])


def test_batches_mix_rows_from_several_shards_and_epochs_differ(files):
    ids, x, *_ = files
    src = source(files, buffer_chunks=2)
    gen = torch.Generator().manual_seed(1)
    first = next(iter(src.batches(100, gen)))[0].numpy()
    positions = [int(np.flatnonzero((x == row).all(1))[0]) for row in first]
    assert len({p // 300 for p in positions}) >= 2  # rows of at least two row groups in one batch
    again = next(iter(src.batches(100, gen)))[0].numpy()
    assert not np.array_equal(first, again)


def test_memory_stays_bounded(files):
    src = source(files, buffer_chunks=1, shard_cache=2)
    for _ in src.batches(32, torch.Generator().manual_seed(0)):
        assert len(src._shards) <= 2


def test_provenance_mismatch_is_refused(files):
    ids, x, y, z, path, ls = files
    cfg = DataConfig(train=str(path), val="-", test="-", num_classes=C)
    with pytest.raises(LogitStoreError, match="does not match teacher version 2"):
        StreamingSource([("train", str(path), ls, True)], cfg, "2", {"train": "f" * 64})


def test_a_split_of_several_files_streams_in_fingerprint_order(tmp_path):
    rng = np.random.default_rng(3)
    ids = np.arange(700)
    x = rng.normal(size=(700, D)).astype(np.float32)
    z = rng.normal(size=(700, C)).astype(np.float32)
    folder = tmp_path / "transfer"
    write_parquet(to_frame(ids[:400], x[:400]), folder / "part-0.parquet", row_group_size=150)
    write_parquet(to_frame(ids[400:], x[400:]), folder / "part-1.parquet", row_group_size=150)
    ls = LogitStore(LocalStore(tmp_path / "store"), store_key("t", "1", "e" * 64))
    ls.precompute(
        ids,
        lambda rows: z[rows],
        teacher_uri="u",
        teacher_name="t",
        teacher_version="1",
        data_fingerprint="e" * 64,
        dataset="transfer",
        rows_per_shard=256,
    )
    cfg = DataConfig(train="-", val="-", test="-", transfer=str(folder), num_classes=C)
    src = StreamingSource([("transfer", str(folder), ls, False)], cfg, "1", {"transfer": "e" * 64}, buffer_chunks=2)
    assert len(src) == 700 and len(src.chunks) == 5  # 3 + 2 row groups
    xs, ys, zs = zip(*src.batches(128, torch.Generator().manual_seed(0)))
    xb, zb = torch.cat(xs).numpy(), torch.cat(zs).numpy()
    order = {tuple(row): i for i, row in enumerate(x)}
    idx = np.array([order[tuple(row)] for row in xb])
    assert sorted(idx.tolist()) == list(range(700)) and (torch.cat(ys).numpy() == -1).all()
    assert np.array_equal(zb, z[idx].astype(np.float16).astype(np.float32))
