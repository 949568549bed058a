"""Streaming training input: every row once per epoch, joined by id with its logits, shuffled across shards."""

import threading
import time

import numpy as np
import pytest
import torch
from torch import nn

from kdflow.config import DataConfig, TrainConfig
from kdflow.data import to_frame, write_parquet
from kdflow.logits import LogitStore, LogitStoreError, store_key
from kdflow.store import LocalStore
from kdflow.stream import ArraySource, StreamingSource
from kdflow.train import TIMINGS, fit

N, D, C = 1000, 6, 4


@pytest.fixture
def files(tmp_path):
    rng = np.random.default_rng(0)
    ids = rng.permutation(np.arange(5000, 5000 + N))  # ids in no particular order
    x = rng.normal(size=(N, D)).astype(np.float32)
    y = rng.integers(0, C, size=N)
    z = rng.normal(size=(N, C)).astype(np.float32)
    path = write_parquet(to_frame(ids, x, y), tmp_path / "train.parquet", row_group_size=300)
    ls = stored(LogitStore(LocalStore(tmp_path / "store"), store_key("t", "1", "f" * 64)), ids, z)
    return ids, x, y, z, path, ls


def stored(ls: LogitStore, ids, z, dataset: str = "train", fingerprint: str = "f" * 64) -> LogitStore:
    """``ls`` holding logits ``z`` for ``ids`` (teacher ``t`` version 1) in 256-row shards."""
    ls.precompute(
        ids,
        lambda rows: z[rows],
        teacher_uri="u",
        teacher_name="t",
        teacher_version="1",
        data_fingerprint=fingerprint,
        dataset=dataset,
        rows_per_shard=256,
    )
    return ls


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
    ls = stored(LogitStore(LocalStore(tmp_path / "store"), store_key("t", "1", "e" * 64)), ids, z, "transfer", "e" * 64)
    cfg = DataConfig(train="-", val="-", test="-", transfer=str(folder), num_classes=C)
    src = StreamingSource([("transfer", str(folder), ls, False)], cfg, "1", {"transfer": "e" * 64}, buffer_chunks=2)
    assert len(src) == 700 and len(src.chunks) == 5  # 3 + 2 row groups
    xs, ys, zs = zip(*src.batches(128, torch.Generator().manual_seed(0)))
    xb, zb = torch.cat(xs).numpy(), torch.cat(zs).numpy()
    order = {tuple(row): i for i, row in enumerate(x)}
    idx = np.array([order[tuple(row)] for row in xb])
    assert sorted(idx.tolist()) == list(range(700)) and (torch.cat(ys).numpy() == -1).all()
    assert np.array_equal(zb, z[idx].astype(np.float16).astype(np.float32))


def _epochs(src, epochs=2, batch_size=64):
    gen = torch.Generator().manual_seed(5)
    return [[tuple(t.clone() for t in b) for b in src.batches(batch_size, gen)] for _ in range(epochs)]


def test_prefetching_changes_no_batch(files):
    """Reading ahead on a background thread gives the very batches of reading when due, epoch after epoch."""
    reference = _epochs(source(files, buffer_chunks=1, prefetch=0))
    for prefetch in (1, 3):
        got = _epochs(source(files, buffer_chunks=1, prefetch=prefetch))
        assert len(got) == len(reference)
        for epoch, ref in zip(got, reference):
            assert len(epoch) == len(ref)
            assert all(torch.equal(a, b) for batch, rb in zip(epoch, ref) for a, b in zip(batch, rb))


def _prefetch_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("kdflow-prefetch")]


def test_a_read_ahead_error_is_raised_when_its_buffer_is_due_and_no_thread_is_left(files, tmp_path):
    ids, x, y, z, path, ls = files
    src = source(files, buffer_chunks=1, prefetch=2, shard_cache=1)
    shard = sorted((tmp_path / "store").rglob("shard-*.npz"))[-1]
    shard.write_bytes(b"corrupt")  # a fault we can cause: the last shard fails its checksum when read
    with pytest.raises(LogitStoreError, match="SHA-256"):
        for _ in src.batches(64, torch.Generator().manual_seed(0)):
            pass
    src.close()
    assert _prefetch_threads() == []


def test_stopping_an_epoch_early_leaves_no_read_running_and_close_stops_the_readers(files, monkeypatch):
    src = source(files, buffer_chunks=1, prefetch=2)
    running, read = [0], src._read_chunk

    def counted(*chunk):  # a spy around the real read
        running[0] += 1
        try:
            return read(*chunk)
        finally:
            running[0] -= 1

    monkeypatch.setattr(src, "_read_chunk", counted)
    batches = src.batches(64, torch.Generator().manual_seed(0))
    next(batches)
    assert _prefetch_threads()  # reading ahead while the first buffer is consumed
    batches.close()
    assert running[0] == 0 and src._next is None  # nothing still reading, no next epoch started
    src.close()
    assert _prefetch_threads() == []


def test_the_next_epoch_is_read_during_the_last_buffer_and_used_only_for_its_generator_state(files):
    src = source(files, buffer_chunks=1, prefetch=2)
    gen = torch.Generator().manual_seed(3)
    first = [tuple(t.clone() for t in b) for b in src.batches(64, gen)]
    assert src._next is not None and len(src._next.futures) == 2  # 2 buffers of 1 chunk, for epoch 2
    assert torch.equal(src._next.state, gen.get_state())
    started = list(src._next.futures)
    second = [tuple(t.clone() for t in b) for b in src.batches(64, gen)]
    assert all(f.done() for f in started)
    ref_gen = torch.Generator().manual_seed(3)
    plain = source(files, buffer_chunks=1, prefetch=0)
    for epoch in (first, second):
        expected = list(plain.batches(64, ref_gen))
        assert all(torch.equal(a, b) for batch, eb in zip(epoch, expected) for a, b in zip(batch, eb))
    # another generator state: the reads started for it are dropped, and the batches are that state's own
    other = torch.Generator().manual_seed(99)
    got = list(src.batches(64, other))
    expected = list(source(files, buffer_chunks=1, prefetch=0).batches(64, torch.Generator().manual_seed(99)))
    assert all(torch.equal(a, b) for batch, eb in zip(got, expected) for a, b in zip(batch, eb))
    src.close()


def test_prefetch_must_not_be_negative(files):
    with pytest.raises(ValueError, match="prefetch must be >= 0 and readers >= 1"):
        source(files, prefetch=-1)


def test_streams_from_s3_by_ranged_concurrent_reads_with_no_copy(files, s3_endpoint, monkeypatch):
    """From S3 (moto's server over HTTP, behind a proxy adding 50 ms to each request as a remote store would) the
    batches are those of the local files; the Parquet file is read by ranged GETs of its footer and row groups,
    several at once, never downloaded whole: one epoch fetches the footer's last 64 KiB once and each row group
    once, in shuffled order, with no read-ahead beyond it."""
    import boto3

    from kdflow.store import S3Store, open_store
    from tests.conftest import make_bucket
    from tests.s3_proxy import FaultyS3Proxy

    ids, x, y, z, path, _ = files
    bucket = make_bucket(s3_endpoint, "kdflow-stream")
    boto3.client("s3", endpoint_url=s3_endpoint).upload_file(str(path), bucket, "data/train.parquet")
    key = store_key("t", "1", "f" * 64)
    stored(LogitStore(open_store(f"s3://{bucket}/store", s3_endpoint), key), ids, z)
    whole, ranged, in_flight, most = [], [], [0], [0]
    lock = threading.Lock()
    get, read_range = S3Store.get, S3Store.read_range

    def counted_range(self, key, start, n):  # a spy around the real call (it still goes to the server)
        with lock:
            ranged.append((key, n))
            in_flight[0] += 1
            most[0] = max(most[0], in_flight[0])
        try:
            return read_range(self, key, start, n)
        finally:
            with lock:
                in_flight[0] -= 1

    monkeypatch.setattr(S3Store, "get", lambda self, key: whole.append(key) or get(self, key))
    monkeypatch.setattr(S3Store, "read_range", counted_range)
    uri = f"s3://{bucket}/data/train.parquet"
    cfg = DataConfig(train=uri, val="-", test="-", num_classes=C)
    with FaultyS3Proxy(s3_endpoint, failures=0, latency_s=0.05) as remote_store:
        ls = LogitStore(open_store(f"s3://{bucket}/store", remote_store.url), key)
        remote = StreamingSource(
            [("train", uri, ls, True)], cfg, "1", {"train": "f" * 64}, remote_store.url, buffer_chunks=1, readers=3
        )
        got = _epochs(remote, epochs=1)
        remote.close()
    reference = _epochs(source(files, buffer_chunks=1), epochs=1)
    assert all(torch.equal(a, b) for batch, rb in zip(got[0], reference[0]) for a, b in zip(batch, rb))
    assert not any(k.endswith(".parquet") for k in whole)  # only logit shards are fetched whole
    fetched = sum(n for k, n in ranged if k.endswith("train.parquet"))
    assert 0 < fetched <= path.stat().st_size + 65536
    assert most[0] >= 2  # row groups read concurrently


class _SlowSource(ArraySource):
    """An in-memory source whose every batch takes ``delay`` seconds to arrive (slow storage, simulated)."""

    delay = 0.02

    def batches(self, batch_size, generator):
        for batch in super().batches(batch_size, generator):
            time.sleep(self.delay)
            yield batch


def test_fit_reports_the_time_the_step_waited_for_its_input():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(256, D)).astype(np.float32), rng.integers(0, C, size=256)
    cfg = TrainConfig(epochs=2, batch_size=64, early_stopping_patience=None, checkpoint_every_epochs=None)
    result = fit(nn.Linear(D, C), _SlowSource(x, y), x[:32], y[:32], cfg, progress=False)
    waits = [m["input_wait_seconds"] for m in result.history]
    assert len(waits) == 2 and all(w >= 4 * _SlowSource.delay for w in waits)  # 4 batches per epoch, each late
    assert all(w <= m["epoch_seconds"] for w, m in zip(waits, result.history))
    assert TIMINGS == {"epoch_seconds", "input_wait_seconds"}
