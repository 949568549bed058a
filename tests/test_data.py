"""Dataset files: round trip, fingerprints, generators, and one clear error per kind of bad input.

Every file goes the flow's way: read, validated by the GX suites (kdflow.validation, the only place rules on the
data live), then converted by kdflow.data."""

import numpy as np
import pandas as pd
import pytest

from kdflow.config import DataConfig, ValidationConfig
from kdflow.data import DataError, Dataset, dataset_from_frame, read_frame, to_frame, write_parquet
from kdflow.generators import mnist1d_arrays, write_digits, write_mnist1d
from kdflow.validation import read_split, validate_data, validate_splits

CFG = DataConfig(train="-", val="-", test="-", num_classes=3)
FAST = ValidationConfig(data_docs=False)


def frame(n=6, width=4, seed=0):
    rng = np.random.default_rng(seed)
    return to_frame(np.arange(n), rng.normal(size=(n, width)), np.arange(n) % 3)


def load(tmp_path, df, labeled=True, cfg=CFG) -> Dataset:
    """Write ``df``, validate it as the flow does (raising its one DataValidationError), convert it."""
    uri = str(write_parquet(df, tmp_path / "d.parquet"))
    report, frames = validate_splits({"train": read_split("train", uri, labeled)}, cfg, FAST)
    report.raise_for_failures()
    return dataset_from_frame(frames["train"], "train", uri, cfg, labeled)


def load_all(cfg: DataConfig) -> dict[str, Dataset]:
    """Every split of ``cfg``, validated together (cross-split checks included) and converted."""
    report, frames = validate_data(cfg, FAST)
    report.raise_for_failures()
    return {n: dataset_from_frame(f, n, report.datasets[n].uri, cfg, n != "transfer") for n, f in frames.items()}


def test_round_trip_and_fingerprint(tmp_path):
    df = frame()
    ds = load(tmp_path, df)
    assert ds.x.shape == (6, 4) and ds.x.dtype == np.float32 and ds.y.tolist() == [0, 1, 2, 0, 1, 2]
    assert ds.fingerprint == load(tmp_path, df).fingerprint
    df2 = df.copy()
    df2.loc[0, "label"] = 1
    assert load(tmp_path, df2).fingerprint != ds.fingerprint


def test_named_numeric_columns(tmp_path):
    df = pd.DataFrame({"id": [1, 2, 3], "a": [0.1, 0.2, 0.3], "b": [1, 2, 3], "label": [0, 2, 1]})
    cfg = DataConfig(train="-", val="-", test="-", num_classes=3, features={"columns": ["a", "b"]})
    ds = load(tmp_path, df, cfg=cfg)
    assert np.allclose(ds.x, [[0.1, 1.0], [0.2, 2.0], [0.3, 3.0]]) and ds.y.tolist() == [0, 2, 1]


def test_unlabeled_transfer_ignores_label_column(tmp_path):
    df = frame()
    df["label"] = ["garbage"] * len(df)
    assert load(tmp_path, df, labeled=False).y is None


@pytest.mark.parametrize(
    "mutate,message",
    [
        (
            lambda d: d.assign(x=[np.array([np.nan, 0, 0, 0], dtype=np.float32)] + list(d.x[1:])),
            r"1 row\(s\) with NaN or infinite features",
        ),
        (lambda d: d.assign(x=[np.array([np.inf, 0, 0, 0], dtype=np.float32)] + list(d.x[1:])), "NaN or infinite"),
        (lambda d: d.drop(columns=["x"]), "missing feature column 'x'"),
        (lambda d: d.assign(x=["a"] * len(d)), "must hold float arrays"),
        (lambda d: d.assign(x=[np.zeros(3, dtype=np.float32)] + list(d.x[1:])), r"expected 4, found \[3\] in 1 row"),
        (lambda d: d.assign(label=[-1] + list(d.label[1:])), r"1 label\(s\) outside \[0, 3\)"),
        (lambda d: d.assign(label=[3] + list(d.label[1:])), r"outside \[0, 3\), e.g. \[3\]"),
        (lambda d: d.assign(label=d.label.astype(float) + 0.5), "must be integer, found float64"),
        (lambda d: d.assign(id=[0, 0, 1, 2, 3, 4]), r"2 row\(s\) with duplicated id\(s\), e.g. \[0\]"),
        (lambda d: d.assign(id=[None, 1.0, 2.0, 3.0, 4.0, 5.0]), "null value"),
        (lambda d: d.drop(columns=["label"]), "missing label column 'label'"),
    ],
)
def test_bad_input_is_one_clear_error(tmp_path, mutate, message):
    with pytest.raises(DataError, match=message) as exc:
        load(tmp_path, mutate(frame()))
    assert "d.parquet" in str(exc.value) and "1 failed check(s)" in str(exc.value)


def test_a_frame_that_skipped_validation_is_one_clear_error(tmp_path):
    bad = frame().assign(x=[np.zeros(3, dtype=np.float32)] + list(frame().x[1:]))
    with pytest.raises(DataError, match=r"d.parquet: train cannot be converted to arrays .*validate it first"):
        dataset_from_frame(bad, "train", "d.parquet", CFG, labeled=True)


def test_missing_empty_and_corrupt_files(tmp_path):
    with pytest.raises(DataError, match="not found"):
        read_frame(str(tmp_path / "missing.parquet"))
    (tmp_path / "empty.parquet").write_bytes(b"")
    with pytest.raises(DataError, match="file is empty"):
        read_frame(str(tmp_path / "empty.parquet"))
    good = write_parquet(frame(), tmp_path / "good.parquet").read_bytes()
    (tmp_path / "trunc.parquet").write_bytes(good[: len(good) // 2])
    with pytest.raises(DataError, match="not a readable Parquet file"):
        read_frame(str(tmp_path / "trunc.parquet"))


def test_mnist1d_generator_is_offline_and_seeded():
    x1, y1 = mnist1d_arrays(55, seed=3)
    x2, y2 = mnist1d_arrays(55, seed=3)
    x3, _ = mnist1d_arrays(55, seed=4)
    assert x1.shape == (55, 40) and set(np.unique(y1)) <= set(range(10))
    assert np.array_equal(x1, x2) and np.array_equal(y1, y2) and not np.array_equal(x1, x3)


def test_digits_writer(tmp_path):
    paths = write_digits(tmp_path)
    cfg = DataConfig(num_classes=10, features={"shape": [8, 8]}, **{n: str(p) for n, p in paths.items()})
    datasets = load_all(cfg)
    train, val, test, transfer = (datasets[n] for n in ("train", "val", "test", "transfer"))
    assert train.x.shape[1:] == (8, 8) and len(train) + len(test) + len(val) == 1797
    assert not set(train.ids) & set(test.ids) and not set(train.ids) & set(val.ids) and not set(val.ids) & set(test.ids)
    # the transfer set is the train inputs under their own ids (allowed: validation.transfer_overlap_allowed)
    assert transfer.y is None and np.array_equal(transfer.ids, train.ids) and np.array_equal(transfer.x, train.x)


def test_mnist1d_writer_gives_each_split_its_own_ids(tmp_path):
    paths = write_mnist1d(tmp_path, transfer_size=40, sizes={"train": 30, "val": 20, "test": 20})
    ids = {name: pd.read_parquet(path)["id"].to_numpy() for name, path in paths.items()}
    assert {n: len(v) for n, v in ids.items()} == {"train": 30, "val": 20, "test": 20, "transfer": 40}
    everything = np.concatenate(list(ids.values()))
    assert len(np.unique(everything)) == len(everything) == 110
