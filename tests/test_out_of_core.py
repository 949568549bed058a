"""Out-of-core precomputation (``data.out_of_core``): datasets validated chunk by chunk straight from their Parquet
files (:func:`kdflow.validation.chunked.validate_out_of_core`), left there as :class:`kdflow.rowgroups.ParquetSplit`
and read shard by shard. The chunked report must be the in-memory report, check for check, and the fingerprint
the in-memory fingerprint, so stores are shared between the two paths."""

from __future__ import annotations

import copy
from pathlib import Path

import boto3
import numpy as np
import pandas as pd
import pytest

from kdflow.config import DataConfig, ValidationConfig
from kdflow.data import datasets_from_frames, to_frame, write_parquet
from kdflow.rowgroups import ParquetSplit
from kdflow.validation import DataValidationError, validate_data
from kdflow.validation.chunked import IdSpill, IdTally, validate_out_of_core
from tests.conftest import make_bucket, write_yaml
from tests.test_validation import BAD_INPUT_IDS, BAD_INPUTS, SIZES, C, frame, scaled

CHUNKED = ValidationConfig(data_docs=False, chunk_rows=10)  # row groups of 7 rows: chunks of 7 rows, ~9 per split


def write_splits(tmp_path: Path, files: dict[str, list[pd.DataFrame]] | None = None, **frames) -> DataConfig:
    """The four splits of tests.test_validation (``frames`` override one), in row groups of 7 rows; a split in
    ``files`` is written as a directory of those files."""
    paths, first = {}, 0
    for seed, (name, n) in enumerate(SIZES.items()):
        df = frames.get(name, frame(n, seed, first, labeled=name != "transfer"))
        first += n
        if files and name in files:
            for i, part in enumerate(files[name]):
                write_parquet(part, tmp_path / name / f"part-{i}.parquet", row_group_size=7)
            paths[name] = str(tmp_path / name)
        else:
            paths[name] = str(write_parquet(df, tmp_path / f"{name}.parquet", row_group_size=7))
    return DataConfig(num_classes=C, **paths)


def checks(report) -> list[tuple]:
    """Every check of a report as comparable tuples (messages included), and every note."""
    out = [
        (c.dataset, c.check, c.column, c.success, c.skipped, c.unexpected_count, c.message, tuple(map(str, c.examples)))
        for d in report.datasets.values()
        for c in d.checks
    ]
    return sorted(out, key=str) + sorted((d.name, tuple(d.notes), d.rows) for d in report.datasets.values())


def both(data: DataConfig, config: ValidationConfig = CHUNKED):
    in_memory, frames = validate_data(data, config)
    chunked, splits = validate_out_of_core(data, config)
    return in_memory, frames, chunked, splits


@pytest.mark.parametrize("mutate,message", BAD_INPUTS, ids=BAD_INPUT_IDS)
def test_each_bad_input_gets_the_in_memory_report_when_validated_in_chunks(tmp_path, mutate, message):
    data = write_splits(tmp_path, train=mutate(frame(60, 0)))
    in_memory, _, chunked, splits = both(data)
    assert not chunked.success and checks(chunked) == checks(in_memory)
    with pytest.raises(DataValidationError, match=message):
        chunked.raise_for_failures()
    assert "train" not in splits  # only a dataset that validated becomes a split


def test_faults_no_chunk_can_see_alone_are_found_across_chunks(tmp_path):
    """A duplicated id in the first and last chunk, a class present in one chunk only (passes), range outliers
    spread so that one chunk alone exceeds ``range_mostly`` but the dataset does not, and ids shared between
    splits; each must give the in-memory report."""
    train = frame(60, 0)
    train.loc[59, "id"] = 0  # the first row's id, ~8 chunks away
    train["label"] = [2 if i == 30 else i % 2 for i in range(60)]  # class 2 in one row of one chunk
    val = frame(30, 1, 60)
    val.loc[3, "id"] = 11  # an id of train
    data = write_splits(tmp_path, train=train, val=val)
    outliers = ValidationConfig(data_docs=False, chunk_rows=10, range_mostly=0.9, feature_scale=False)  # range only
    test = frame(30, 2, 90)
    x = list(test["x"])
    x[0] = np.r_[100.0, np.zeros(7)].astype(np.float32)  # 1 of the 7 rows of the first chunk: 14% there, 3.3% overall
    write_parquet(test.assign(x=x), data.test, row_group_size=7)
    in_memory, _, chunked, _ = both(data, outliers)
    assert checks(chunked) == checks(in_memory)
    failed = {(c.dataset, c.check): c for c in chunked.failures}
    assert set(failed) == {("train", "id.unique"), ("val", "ids.disjoint")}, chunked.error_message()
    assert failed["train", "id.unique"].unexpected_count == 2
    assert "1 of 30 id(s) in val are also in train" in failed["val", "ids.disjoint"].message
    range_check = next(c for c in chunked.datasets["test"].checks if c.check == "features.range")
    assert range_check.success and range_check.unexpected_count == 1


def test_a_dataset_of_several_files_and_schema_drift_between_them(tmp_path):
    parts = [frame(30, 0, 0), frame(30, 5, 30)]
    data = write_splits(tmp_path, files={"train": parts})
    in_memory, frames, chunked, splits = both(data)
    assert chunked.success and checks(chunked) == checks(in_memory)
    assert len(splits["train"].layout) == 2 and len(splits["train"]) == 60
    drift = [parts[0], parts[1].assign(label=lambda d: d.label.astype(float))]
    data = write_splits(tmp_path / "drift", files={"train": drift})
    in_memory, _, chunked, splits = both(data)
    assert checks(chunked) == checks(in_memory) and "train" not in splits
    assert any(c.check == "schema.drift" for c in chunked.failures)


def test_a_split_without_its_id_column_as_in_memory(tmp_path):
    """No id column: one schema failure, and (as in memory) the split is left out of the shared-id comparison."""
    data = write_splits(tmp_path, val=frame(30, 1, 60).drop(columns=["id"]))
    in_memory, _, chunked, splits = both(data)
    assert checks(chunked) == checks(in_memory) and "val" not in splits
    assert [c.check for c in chunked.failures] == ["schema.columns"]
    assert not any(c.check == "ids.disjoint" for c in chunked.datasets["val"].checks)


def test_scale_check_and_transfer_label_column_as_in_memory(tmp_path):
    transfer = to_frame(np.arange(150, 195), np.random.default_rng(3).normal(size=(45, 8)), np.arange(45) % C)
    data = write_splits(tmp_path, val=scaled(frame(30, 1, 60), 3.0), transfer=transfer)
    in_memory, _, chunked, _ = both(data)
    assert checks(chunked) == checks(in_memory)
    assert {c.dataset for c in chunked.failures} == {"val"}  # on 3x the scale: the range check, then scale
    assert any(c.check == "features.scale" and c.skipped for c in chunked.datasets["val"].checks)


@pytest.mark.parametrize("ids", ["int", "str"])
def test_the_fingerprint_is_the_in_memory_fingerprint(tmp_path, ids):
    frames = {}
    if ids == "str":
        first = 0
        for seed, (name, n) in enumerate(SIZES.items()):
            df = frame(n, seed, first, labeled=name != "transfer")
            frames[name] = df.assign(id=[f"row-{i}" for i in df["id"]])
            first += n
    data = write_splits(tmp_path, **frames)
    in_memory, frames_read, chunked, splits = both(data)
    assert in_memory.success and chunked.success
    labeled = {"train": True, "val": True, "test": True, "transfer": False}
    datasets = datasets_from_frames(frames_read, {n: d.uri for n, d in in_memory.datasets.items()}, labeled, data)
    for name, ds in datasets.items():
        split = splits[name]
        assert isinstance(split, ParquetSplit) and split.fingerprint == ds.fingerprint, name
        assert split.input_shape == ds.input_shape and len(split) == len(ds)
        np.testing.assert_array_equal(split.ids[3:17], ds.ids[3:17])  # crosses row groups
        assert split.ids[-1] == ds.ids[-1] and split.ids[0] == ds.ids[0]
        np.testing.assert_array_equal(split.head(9), ds.head(9))


def test_id_spill_finds_duplicates_and_shared_ids_bucket_by_bucket(tmp_path):
    a, b = IdSpill(tmp_path / "a", buckets=4), IdSpill(tmp_path / "b", buckets=4)
    a.add(np.array([5, 1, 9, 1]))
    a.add(np.array([9.0, 12.0]))  # integral floats (a null made the column float) are integer ids
    a.add(np.array(["x", "y", "x"]))
    b.add(np.array([12, 7, 5, 100]))
    b.add(np.array(["y", "z"]))
    assert a.tally(limit=5) == IdTally(6, [1, 1, 9, 9, "x"], 6)  # rows 1,1 9,9 x,x: an id per row; 6 distinct
    assert b.tally(limit=5).unique == 6
    assert a.shared(b, limit=5) == (3, [5, 12, "y"])
    assert a.shared(b, limit=2)[0] == 3 and len(a.shared(b, limit=2)[1]) == 2
    assert len(a.names()) <= 8  # at most one file per bucket and kind


def out_of_core_config(cfg: dict, tmp_path: Path, name: str, **store) -> Path:
    cfg = copy.deepcopy(cfg)
    cfg["data"]["out_of_core"] = True
    cfg["validation"] = {"chunk_rows": 500, "data_docs": False}
    cfg["store"] = {**cfg["store"], **store}
    return write_yaml(tmp_path / f"{name}.yaml", cfg)


def test_precompute_flow_out_of_core_from_s3_stores_what_an_in_memory_run_reuses(
    distill_config, tmp_path, tiny_data, s3_endpoint
):
    """The precompute flow with ``data.out_of_core`` on S3 data: every shard task reads its own rows from the
    Parquet row groups; an in-memory run of the same config then finds every store complete (same fingerprints)
    and loads no teacher."""
    from flows.logits import precompute_flow

    bucket = make_bucket(s3_endpoint, "kdflow-out-of-core")
    s3 = boto3.client("s3", endpoint_url=s3_endpoint)
    for split, path in tiny_data.items():
        table = pd.read_parquet(path)
        local = write_parquet(table, tmp_path / "data" / f"{split}.parquet", row_group_size=100)
        s3.upload_file(str(local), bucket, f"data/{split}.parquet")
    cfg = copy.deepcopy(distill_config)
    cfg["data"].update({split: f"s3://{bucket}/data/{split}.parquet" for split in tiny_data})
    store = {"root": f"s3://{bucket}/store", "endpoint_url": s3_endpoint, "rows_per_shard": 256}
    out = precompute_flow(str(out_of_core_config(cfg, tmp_path, "ooc", **store)))
    assert all(not st["reused"] and st["shards_computed"] == st["shards_total"] for st in out["stats"].values())
    again = copy.deepcopy(cfg)
    again["store"] = {**cfg["store"], **store}
    in_memory = precompute_flow(str(write_yaml(tmp_path / "in-memory.yaml", again)))
    assert in_memory["stores"] == out["stores"]
    assert all(st["reused"] for st in in_memory["stats"].values()) and not in_memory["teacher_loaded"]


def test_precompute_flow_out_of_core_stops_on_bad_data_before_any_store(distill_config, tmp_path, tiny_data):
    from flows.logits import precompute_flow

    parts = tmp_path / "transfer"
    transfer = pd.read_parquet(tiny_data["transfer"])
    write_parquet(transfer, parts / "a.parquet", row_group_size=100)
    write_parquet(transfer.iloc[:5], parts / "b.parquet", row_group_size=100)  # five ids again, in another file
    cfg = copy.deepcopy(distill_config)
    cfg["data"]["transfer"] = str(parts)
    store = tmp_path / "store"
    with pytest.raises(DataValidationError, match=r"transfer: .*id column 'id' has 10 row\(s\) with duplicated id"):
        precompute_flow(str(out_of_core_config(cfg, tmp_path, "bad", root=str(store))))
    assert not store.exists() or not any(store.rglob("manifest.json"))
