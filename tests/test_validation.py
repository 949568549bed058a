"""Data validation (kdflow.validation) on small synthetic frames: one message per kind of bad input, schema
drift, sampled ranges, reports, inference logs, teacher logits and the ``kdflow validate`` command."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from app.cli import app
from kdflow.config import ConfigError, DataConfig, DistillConfig, FeatureSpec, ValidationConfig, load_config
from kdflow.data import DataError, to_frame, write_parquet
from kdflow.generators import write_digits
from kdflow.validation import (
    DataValidationError,
    FeatureMoments,
    FeatureRanges,
    deterministic_sample,
    expand_uri,
    read_split,
    scale_differences,
    validate_data,
    validate_inference_logs,
    validate_splits,
    validate_teacher_logits,
)
from tests.conftest import make_bucket, write_yaml

C, WIDTH = 3, 8
FAST = ValidationConfig(data_docs=False)
SIZES = {"train": 60, "val": 30, "test": 30, "transfer": 45}


def frame(n: int, seed: int, first_id: int = 0, labeled: bool = True) -> pd.DataFrame:
    """``n`` rows of WIDTH standard-normal features, ids from ``first_id``, every class present."""
    rng = np.random.default_rng(seed)
    return to_frame(
        np.arange(first_id, first_id + n), rng.normal(size=(n, WIDTH)), np.arange(n) % C if labeled else None
    )


def write_all(tmp_path: Path, **frames: pd.DataFrame) -> DataConfig:
    """Write the four splits (overridden by ``frames``) and return a DataConfig naming them."""
    paths, first = {}, 0
    for seed, (name, n) in enumerate(SIZES.items()):
        df = frames.get(name, frame(n, seed, first, labeled=name != "transfer"))
        first += n
        paths[name] = str(write_parquet(df, tmp_path / f"{name}.parquet"))
    return DataConfig(num_classes=C, **paths)


def train_only(tmp_path: Path, df: pd.DataFrame, config: ValidationConfig = FAST, data: DataConfig | None = None):
    """Validate just a train file (the cheapest GX run): the report."""
    uri = str(write_parquet(df, tmp_path / "train.parquet"))
    data = data or DataConfig(train=uri, val="-", test="-", num_classes=C)
    report, _ = validate_splits({"train": read_split("train", uri, True)}, data, config)
    return report


def with_row(df: pd.DataFrame, row: int, value) -> pd.DataFrame:
    x = list(df["x"])
    x[row] = value
    return df.assign(x=x)


def nan_row(d):
    return with_row(d, 2, np.r_[np.nan, np.zeros(WIDTH - 1)].astype(np.float32))


def inf_row(d):
    return with_row(d, 2, np.r_[np.zeros(WIDTH - 1), -np.inf].astype(np.float32))


# Each bad input, and the one message it gets (tests/test_out_of_core.py checks the chunked validator with them).
BAD_INPUTS = [
    (nan_row, r"train.parquet: 1 row\(s\) with NaN or infinite features in 'x' \(e.g. \['nan'\]\); e.g. ids \[2\]"),
    (inf_row, r"1 row\(s\) with NaN or infinite features in 'x' \(e.g. \['-inf'\]\); e.g. ids \[2\]"),
    (lambda d: d.drop(columns=["x"]), r"missing feature column 'x'; found columns \['id', 'label'\]"),
    (
        lambda d: d.assign(x=["a"] * len(d)),
        r"feature column 'x' must hold float arrays, found \['str'\] in 60 row\(s\)",
    ),
    (
        lambda d: with_row(d, 4, np.zeros(3, dtype=np.float32)),
        r"arrays of different lengths: expected 8, found \[3\] in 1 row\(s\); e.g. ids \[4\]",
    ),
    (
        lambda d: d.assign(label=[-1] + list(d.label[1:])),
        r"1 label\(s\) outside \[0, 3\), e.g. \[-1\]; e.g. ids \[0\]",
    ),
    (lambda d: d.assign(label=[3] + list(d.label[1:])), r"1 label\(s\) outside \[0, 3\), e.g. \[3\]"),
    (lambda d: d.assign(label=d.label.astype(float) + 0.5), "label column 'label' must be integer, found float64"),
    (
        lambda d: d.assign(id=[0, 0] + list(d.id[2:])),
        r"id column 'id' has 2 row\(s\) with duplicated id\(s\), e.g. \[0\]",
    ),
    (lambda d: d.assign(id=[None] + [float(i) for i in d.id[1:]]), r"id column 'id' has 1 null value\(s\)"),
    (lambda d: d.drop(columns=["label"]), "missing label column 'label'"),
    (lambda d: d.assign(label=d.label.where(d.label != 2, 0)), r"missing class\(es\) \[2\] of \[0, 3\)"),
    (lambda d: d.iloc[:0], r"0 row\(s\), expected at least 1"),
]
BAD_INPUT_IDS = [
    "nan",
    "inf",
    "missing_feature",
    "string_feature",
    "wrong_length",
    "label_minus_one",
    "label_C",
    "float_label",
    "duplicated_ids",
    "null_id",
    "missing_label",
    "missing_class",
    "no_rows",
]


@pytest.mark.parametrize("mutate,message", BAD_INPUTS, ids=BAD_INPUT_IDS)
def test_each_bad_input_is_one_failure_with_its_message(tmp_path, mutate, message):
    report = train_only(tmp_path, mutate(frame(60, 0)))
    assert not report.success and len(report.failures) == 1, report.error_message()
    with pytest.raises(DataValidationError, match=message) as exc:
        report.raise_for_failures()
    assert isinstance(exc.value, DataError) and exc.value.report is report
    assert str(exc.value).startswith("data validation failed: 1 failed check(s) in train (")


def test_named_numeric_columns(tmp_path):
    data = DataConfig(train="-", val="-", test="-", num_classes=C, features={"columns": ["a", "b"]})
    good = pd.DataFrame({"id": range(6), "a": np.linspace(0, 1, 6), "b": range(6), "label": [0, 1, 2] * 2})
    assert train_only(tmp_path, good, data=data).success
    bad = good.assign(a=["p", "q", "r", "s", "t", "u"], b=[0, np.inf, 2, 3, 4, 5])
    message = train_only(tmp_path, bad, data=data).error_message()
    assert "feature column(s) must be numeric, found {'a': 'str'}" in message
    assert "1 row(s) with NaN or infinite features in 'b' (e.g. ['inf']); e.g. ids [1]" in message
    assert message.count("\n  - ") == 2


def test_all_datasets_pass_and_every_failure_lands_in_one_error(tmp_path):
    data = write_all(tmp_path)
    report, frames = validate_data(data, FAST)
    assert report.success and set(frames) == {"train", "val", "test", "transfer"}
    assert [len(frames[n]) for n in SIZES] == list(SIZES.values())
    bad = write_all(
        tmp_path,
        val=frame(30, 1, 60).assign(label=[7] + [0, 1, 2] * 9 + [0, 1]),
        transfer=nan_row(frame(45, 3, 120, labeled=False)),
    )
    report, _ = validate_data(bad, FAST)
    message = report.error_message()
    assert message.startswith("data validation failed: 2 failed check(s) in val (") and "transfer (" in message
    assert "val.parquet: 1 label(s) outside [0, 3), e.g. [7]; e.g. ids [60]" in message
    assert "transfer.parquet: 1 row(s) with NaN or infinite features in 'x'" in message


def test_unreadable_files_keep_kdflow_data_messages_and_join_the_report(tmp_path):
    data = write_all(tmp_path)
    Path(data.val).write_bytes(b"")
    good = Path(data.test).read_bytes()
    Path(data.test).write_bytes(good[: len(good) // 2])
    report, frames = validate_data(data.model_copy(update={"transfer": str(tmp_path / "nope.parquet")}), FAST)
    message = report.error_message()
    assert "val.parquet: file is empty (0 bytes)" in message
    assert "test.parquet: not a readable Parquet file" in message
    assert "dataset file not found or unreadable" in message and "nope.parquet" in message
    assert set(frames) == {"train"} and report.datasets["train"].success


def test_transfer_label_column_is_ignored_not_fatal(tmp_path):
    garbage = frame(45, 3, 120, labeled=False).assign(label=["garbage"] * 45)
    report, frames = validate_data(write_all(tmp_path, transfer=garbage), FAST)
    assert report.success and "label" not in frames["transfer"].columns
    assert any("'label' ignored" in n for n in report.datasets["transfer"].notes)


def test_mixed_schemas_across_two_files_of_one_dataset(tmp_path):
    data = write_all(tmp_path)
    parts = tmp_path / "train_parts"
    write_parquet(frame(30, 0, 0), parts / "part-0.parquet")
    write_parquet(frame(30, 5, 30).assign(label=lambda d: d.label.astype(float)), parts / "part-1.parquet")
    report, frames = validate_data(data.model_copy(update={"train": str(parts)}), FAST)
    assert [c.message for c in report.failures] == [
        f"{parts / 'part-1.parquet'}: schema drift between the files of train: column 'label' re-typed from "
        f"integer to float (vs {parts / 'part-0.parquet'})"
    ]
    assert "train" not in frames


def test_a_directory_or_glob_of_same_schema_files_is_one_dataset(tmp_path):
    data = write_all(tmp_path)
    parts = tmp_path / "parts"
    write_parquet(frame(30, 0, 0), parts / "a.parquet")
    write_parquet(frame(30, 5, 30).assign(label=[-1] + [0, 1, 2] * 9 + [0, 1]), parts / "b.parquet")
    for uri in (str(parts), str(parts / "*.parquet")):
        report, _ = validate_data(data.model_copy(update={"train": uri}), FAST)
        assert report.datasets["train"].files == [str(parts / "a.parquet"), str(parts / "b.parquet")]
        assert report.datasets["train"].rows == 60
        assert "1 label(s) outside [0, 3), e.g. [-1]; e.g. ids ['30 in " in report.error_message()


def test_s3_prefix_lists_its_parquet_files(s3_endpoint, tmp_path):
    import boto3

    bucket = make_bucket(s3_endpoint, "kdflow-validation-glob")
    s3 = boto3.client("s3", endpoint_url=s3_endpoint)
    for key in ("data/train/a.parquet", "data/train/b.parquet", "data/train/notes.txt"):
        s3.put_object(Bucket=bucket, Key=key, Body=b"x")
    expected = [f"s3://{bucket}/data/train/a.parquet", f"s3://{bucket}/data/train/b.parquet"]
    assert expand_uri(f"s3://{bucket}/data/train/", s3_endpoint) == expected
    assert expand_uri(f"s3://{bucket}/data/train/*.parquet", s3_endpoint) == expected


def test_schema_drift_between_datasets_is_named_as_such(tmp_path):
    test = frame(30, 2, 90).assign(site=["a"] * 30)
    val = frame(30, 1, 60)
    val["id"] = val["id"].astype(str)
    report, _ = validate_data(write_all(tmp_path, val=val, test=test), FAST)
    messages = sorted(c.message for c in report.failures)
    assert len(messages) == 2 and all(c.check == "schema.drift" for c in report.failures)
    assert messages[0].endswith(f"schema drift: column 'site' added (test vs train {tmp_path / 'train.parquet'})")
    assert "val.parquet: schema drift: column 'id' re-typed from integer to string" in messages[1]


def test_a_column_failing_in_train_is_not_also_reported_as_drift(tmp_path):
    report, _ = validate_data(write_all(tmp_path, train=frame(60, 0).drop(columns=["x"])), FAST)
    assert [c.check for c in report.failures] == ["schema.columns"]


def test_feature_ranges_are_learned_from_train_and_checked_on_a_deterministic_sample(tmp_path):
    shifted = frame(30, 1, 60)
    shifted["x"] = [v + np.float32(100.0) if i < 10 else v for i, v in enumerate(shifted["x"])]
    data = write_all(tmp_path, val=shifted)
    config = ValidationConfig(data_docs=False, sample_size=20, range_mostly=0.9)
    first, _ = validate_data(data, config)
    again, _ = validate_data(data, config)
    [failure] = first.failures
    assert failure.check == "features.range" and failure.sampled and failure.message == again.failures[0].message
    assert failure.message.startswith(f"{data.val}: ") and "of 20 sampled row(s)" in failure.message
    assert "outside the range learned from train, more than the 10.00% allowed, e.g. ['x[0]=" in failure.message
    assert "feature ranges checked on 20 sampled row(s) (seed 0)" in first.datasets["val"].notes
    [scale] = validate_data(data, config.model_copy(update={"feature_ranges": False}))[0].failures
    assert scale.check == "features.scale" and "x[0]: sd " in scale.message  # then the scale check sees it
    assert validate_data(data, config.model_copy(update={"feature_ranges": False, "feature_scale": False}))[0].success
    assert np.array_equal(deterministic_sample(1000, 10, 3), deterministic_sample(1000, 10, 3))
    assert len(deterministic_sample(5, 10, 0)) == 5


def test_feature_range_margin():
    ranges = FeatureRanges.learn(["a", "b"], np.array([[0.0, 5.0], [1.0, 5.0]]), margin=0.5)
    assert ranges.as_dict() == {"a": [-0.5, 1.5], "b": [2.5, 7.5]}
    assert ranges.status(np.array([[1.4, 5.0], [1.6, 5.0]])).tolist() == ["in range", "a=1.6 > 1.5"]


def test_ids_shared_between_splits_fail_naming_both_splits(tmp_path):
    data = write_all(tmp_path, val=frame(30, 1, 55))  # ids 55..84: 55..59 are also train's
    report, _ = validate_data(data, FAST)
    [failure] = report.failures
    assert (failure.dataset, failure.check, failure.unexpected_count) == ("val", "ids.disjoint", 5)
    assert failure.message == (
        f"{data.val}: 5 of 30 id(s) in val are also in train ({data.train}): splits must not "
        "share ids (a leak that inflates every figure measured on them); "
        "e.g. ids [55, 56, 57, 58, 59]"
    )
    with pytest.raises(DataValidationError, match=r"(?s)1 failed check\(s\) in val .*\[kdflow\.ids\.disjoint\(id\)\]$"):
        report.raise_for_failures()
    same = write_all(tmp_path)
    same = same.model_copy(update={"test": same.val})  # one file as val and as test
    [failure] = validate_data(same, FAST)[0].failures
    assert failure.dataset == "test" and f"30 of 30 id(s) in test are also in val ({same.val})" in failure.message
    assert validate_data(same, FAST.model_copy(update={"disjoint_ids": False}))[0].success


def test_the_transfer_set_may_share_ids_with_train_only_by_default(tmp_path):
    train_inputs = frame(60, 0).drop(columns=["label"])  # the training inputs as the transfer set (Hinton et al.)
    data = write_all(tmp_path, transfer=train_inputs)
    assert validate_data(data, FAST)[0].success
    [failure] = validate_data(data, FAST.model_copy(update={"transfer_overlap_allowed": []}))[0].failures
    assert failure.dataset == "transfer" and "60 of 60 id(s) in transfer are also in train" in failure.message
    data = write_all(tmp_path, transfer=frame(30, 2, 90, labeled=False))  # the test inputs: transductive
    [failure] = validate_data(data, FAST)[0].failures
    assert f"30 of 30 id(s) in transfer are also in test ({data.test})" in failure.message
    assert (
        "validation.transfer_overlap_allowed lists the splits the transfer set may share ids with: now ['train']"
        in failure.message
    )
    assert validate_data(data, FAST.model_copy(update={"transfer_overlap_allowed": ["train", "test"]}))[0].success


def scaled(df: pd.DataFrame, factor: float, feature: int | None = None, shift: float = 0.0) -> pd.DataFrame:
    """Every feature (or just ``feature``) times ``factor`` plus ``shift``."""

    def change(v):
        v = v.copy()
        cols = slice(None) if feature is None else feature
        v[cols] = v[cols] * factor + shift
        return v.astype(np.float32)

    return df.assign(x=[change(v) for v in df["x"]])


SCALE_LINE = r"x\[\d\]: sd \d+\.\d+ vs train \d+\.\d+ \(\|ln sd ratio\| \d\.\d\d, allowed <= \d\.\d\d\)"


def test_a_train_split_on_a_larger_scale_fails_every_split_compared_with_it(tmp_path):
    data = write_all(tmp_path, train=scaled(frame(60, 0), 10.0))
    # The range check alone passes this: every other split lies well inside train's wider range.
    assert validate_data(data, FAST.model_copy(update={"feature_scale": False}))[0].success
    report, _ = validate_data(data, FAST)
    assert [(c.dataset, c.check) for c in report.failures] == [
        ("val", "features.scale"),
        ("test", "features.scale"),
        ("transfer", "features.scale"),
    ]
    val = report.failures[0]
    assert val.message.startswith(
        f"{data.val}: feature scale differs from train's ({data.train}) in 8 of 8 "
        "feature(s), compared on 30 vs 60 sampled row(s): x["
    )
    assert len(re.findall(SCALE_LINE, val.message)) == 5 and val.message.endswith("; and 3 more")
    assert val.examples and all(re.fullmatch(r"x\[\d\]", e) for e in val.examples)


def test_a_split_on_a_smaller_scale_is_one_failure(tmp_path):
    data = write_all(tmp_path, val=scaled(frame(30, 1, 60), 0.1))
    [failure] = validate_data(data, FAST)[0].failures
    assert failure.dataset == "val" and failure.check == "features.scale" and failure.sampled
    assert "in 8 of 8 feature(s)" in failure.message and re.search(SCALE_LINE, failure.message)
    with pytest.raises(DataValidationError, match=r"(?s)in val .*\[kdflow\.features\.scale\(x\)\]$"):
        validate_data(data, FAST)[0].raise_for_failures()


def test_a_mean_shift_in_one_feature_names_that_feature(tmp_path):
    data = write_all(tmp_path, val=scaled(frame(30, 1, 60), 1.0, feature=2, shift=3.0))
    config = FAST.model_copy(update={"feature_ranges": False})
    [failure] = validate_data(data, config)[0].failures
    assert "in 1 of 8 feature(s)" in failure.message and failure.examples == ["x[2]"]
    assert re.search(
        r": x\[2\]: mean \d\.\d+ vs train -?0\.\d+ \(standardized mean difference \d\.\d\d, "
        r"allowed <= 1\.34\)$",
        failure.message,
    ), failure.message


def test_a_split_outside_the_range_is_reported_by_the_range_check_not_twice(tmp_path):
    data = write_all(tmp_path, val=scaled(frame(30, 1, 60), 10.0))
    report, _ = validate_data(data, FAST)
    [failure] = report.failures
    assert failure.check == "features.range"
    [scale] = [c for c in report.datasets["val"].checks if c.check == "features.scale"]
    assert not scale.success and scale.skipped == "superseded by features.range on 'x'"


def test_a_named_column_in_other_units_is_named(tmp_path):
    features = {"columns": ["a", "b"]}

    def named(n, seed, first, b_scale=1.0, labeled=True):
        rng = np.random.default_rng(seed)
        df = pd.DataFrame(
            {"id": np.arange(first, first + n), "a": rng.normal(5, 2, n), "b": rng.normal(0, 1, n) * b_scale}
        )
        return df.assign(label=np.arange(n) % C) if labeled else df

    data = write_all(
        tmp_path,
        train=named(60, 0, 0),
        val=named(30, 1, 60, b_scale=0.05),
        test=named(30, 2, 90),
        transfer=named(45, 3, 120, labeled=False),
    ).model_copy(update={"features": FeatureSpec(**features)})
    [failure] = validate_data(data, FAST)[0].failures
    assert failure.check == "features.scale" and failure.column == "features" and failure.examples == ["b"]
    assert re.search(
        r"in 1 of 2 feature\(s\), compared on 30 vs 60 sampled row\(s\): b: sd 0\.0\d+ vs train "
        r"\d\.\d+ \(\|ln sd ratio\| \d\.\d\d",
        failure.message,
    ), failure.message


def test_scale_limits_widen_with_sampling_noise_and_floor_near_constant_features():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(4000, 1))
    names = ["f"]
    for n, fails in ((10, False), (2000, True)):  # the same 2.5x spread: noise at 10 rows, a fault at 2,000
        train, other = FeatureMoments.of(names, x[:n]), FeatureMoments.of(names, x[n : 2 * n] * 2.5)
        found = scale_differences(train, other, ValidationConfig())
        assert bool(found) == fails
        # two-sided: the same comparison the other way round gives the same verdict
        assert bool(scale_differences(other, train, ValidationConfig())) == fails
    [d] = found
    assert d.log_sd_ratio == pytest.approx(np.log(2.5), abs=0.1) and d.log_sd_limit == pytest.approx(0.693)
    blank = np.zeros((500, 2))
    blank[:, 0] = rng.normal(size=500)
    speck = blank.copy()
    speck[:, 1] = rng.normal(scale=1e-6, size=500)  # a near-constant feature: sd floored at 0.1 x train's RMS sd
    names = ["f", "blank"]
    assert scale_differences(FeatureMoments.of(names, blank), FeatureMoments.of(names, speck), ValidationConfig()) == []
    moved = blank.copy()
    moved[:, 1] = 5.0  # constant in both, but another constant
    [d] = scale_differences(FeatureMoments.of(names, blank), FeatureMoments.of(names, moved), ValidationConfig())
    assert d.feature == "blank" and "mean 5 vs train 0" in d.describe()
    assert FeatureMoments.of(names, blank[:1]) is None


def test_generated_splits_pass_the_cross_split_checks_with_a_wide_margin(tmp_path, tiny_data):
    """The MNIST-1D splits at the tests' sizes (600/300/300/1,200) and the digits splits pass even with every
    scale limit halved; their ids are disjoint (digits' transfer set is the train inputs, allowed)."""
    half = ValidationConfig(data_docs=False, max_mean_shift=0.25, max_log_sd_ratio=0.3465, scale_z=3.0)
    mnist = DataConfig(num_classes=10, **{k: str(v) for k, v in tiny_data.items()})
    digits = DataConfig(num_classes=10, **{k: str(v) for k, v in write_digits(tmp_path).items()})
    for data in (mnist, digits):
        report, _ = validate_data(data, half)
        assert report.success, report.error_message()
        checks = [(c.dataset, c.check) for d in report.datasets.values() for c in d.checks]
        assert {("val", "features.scale"), ("test", "features.scale"), ("transfer", "features.scale")} <= set(checks)
        assert checks.count(("test", "ids.disjoint")) == 2


def test_min_rows_and_required_classes_are_configuration(tmp_path):
    data = write_all(tmp_path, test=frame(30, 2, 90).assign(label=0))
    assert validate_data(data, FAST)[0].success  # test need not hold every class by default
    config = ValidationConfig(data_docs=False, min_rows={"val": 100}, require_all_classes=["train", "val", "test"])
    message = validate_data(data, config)[0].error_message()
    assert "val.parquet: 30 row(s), expected at least 100" in message
    assert "test.parquet: label column 'label' is missing class(es) [1, 2] of [0, 3)" in message


def test_report_files_and_data_docs(tmp_path):
    data = write_all(tmp_path, val=frame(30, 1, 60).assign(label=[5] + [0, 1, 2] * 9 + [0, 1]))
    report, _ = validate_data(data, ValidationConfig(), docs_dir=tmp_path / "site")
    paths = report.write(tmp_path / "out")
    summary = json.loads(paths["summary"].read_text())
    assert summary["success"] is False and summary["datasets"]["train"]["success"] is True
    assert summary["datasets"]["val"]["suite"] == "kdflow-labeled-v1"
    [failed] = [c for c in summary["datasets"]["val"]["checks"] if not c["success"]]
    assert failed["expectation"] == "expect_column_values_to_be_between" and failed["example_ids"] == [60]
    raw = json.loads(paths["gx_results"].read_text())
    assert {r["dataset"] for r in raw} == {"train", "val", "test", "transfer"}
    assert (tmp_path / "out" / "data_docs" / "index.html").is_file()
    assert list((tmp_path / "out" / "data_docs" / "validations").rglob("*.html"))
    html = paths["html"].read_text()
    assert "FAILED" in html and "<script" not in html and "http" not in html
    assert "| val |" in paths["markdown"].read_text()


def logs(n: int = 20, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    p = rng.dirichlet(np.ones(C), size=n)
    return pd.DataFrame(
        {
            "id": np.arange(n),
            "timestamp": pd.date_range("2026-01-01", periods=n, freq="min", tz="UTC"),
            "model_version": "3",
            "x": list(rng.normal(size=(n, WIDTH)).astype(np.float32)),
            "probabilities": list(p.astype(np.float32)),
            "label": pd.array([0, None] * (n // 2), dtype="Int64"),
        }
    )


def test_inference_logs_pass_with_an_optional_label():
    assert validate_inference_logs(logs(), C, config=FAST).success
    assert validate_inference_logs(logs().drop(columns=["label"]), C, config=FAST).success


def test_inference_logs_whose_probabilities_do_not_sum_to_one():
    df = logs()
    df.loc[4, "probabilities"] = np.array([0.5, 0.4, 0.3], dtype=np.float32)
    report = validate_inference_logs(df, C, config=FAST, uri="s3://bucket/logs/day=1.parquet")
    [failure] = report.failures
    assert failure.check == "probabilities.sum"
    assert failure.message == (
        "s3://bucket/logs/day=1.parquet: probabilities column 'probabilities': 1 of 20 row(s) "
        "do not sum to 1 within 0.001, e.g. sums [1.2]; e.g. ids [4]"
    )
    with pytest.raises(DataValidationError, match="do not sum to 1"):
        report.raise_for_failures()
    loose = ValidationConfig(data_docs=False, probability_mostly=0.9)
    assert validate_inference_logs(df, C, config=loose).success


def test_inference_logs_other_faults():
    df = logs()
    df.loc[1, "probabilities"] = np.array([1.0, 0.0], dtype=np.float32)
    df.loc[2, "probabilities"] = np.array([1.5, -0.5, 0.0], dtype=np.float32)
    df["timestamp"] = df["timestamp"].astype(str)
    df.loc[3, "timestamp"] = "yesterday-ish"
    df["label"] = df["label"].astype("Float64")
    df.loc[6, "label"] = 7.0
    df.loc[8, "label"] = 1.5
    df = df.drop(columns=["model_version"])
    message = validate_inference_logs(df, C, config=FAST).error_message()
    assert "probabilities column 'probabilities': expected 3 per row, found [2] in 1 row(s); e.g. ids [1]" in message
    assert "probabilities column 'probabilities': 1 row(s) with values outside [0, 1]; e.g. ids [2]" in message
    assert "timestamp column 'timestamp' has 1 value(s) that are not timestamps; e.g. ids [3]" in message
    assert "missing model version column 'model_version'" in message
    assert "1 label(s) outside [0, 3), e.g. [7.0]; e.g. ids [6]" in message
    assert "label column 'label' has 1 non-integer value(s); e.g. ids [8]" in message


def test_inference_logs_feature_ranges_from_a_reference():
    df = logs(40)
    ranges = FeatureRanges.learn([f"x[{i}]" for i in range(WIDTH)], np.stack(df["x"]), margin=0.1)
    assert validate_inference_logs(df, C, config=FAST, ranges=ranges).success
    drifted = df.assign(x=[v * 10 for v in df["x"]])
    [failure] = validate_inference_logs(drifted, C, config=FAST, ranges=ranges).failures
    assert failure.check == "features.range"


def test_teacher_logits():
    z = np.random.default_rng(0).normal(size=(6, C)).astype(np.float16)
    assert validate_teacher_logits(z, 6, C).success
    z[4, 1] = np.nan
    report = validate_teacher_logits(z, 6, C, uri="s3://b/logits/v1/abc", ids=np.arange(100, 106))
    assert report.error_message().endswith(
        "s3://b/logits/v1/abc: 1 row(s) with NaN or infinite logits, e.g. ids [104] [kdflow.logits.finite]"
    )
    assert "logits of shape (6, 3), expected (7, 3)" in validate_teacher_logits(z, 7, C).error_message()
    assert "expected (6, 4)" in validate_teacher_logits(z, 6, 4).error_message()


def test_validation_config_is_strict(tmp_path):
    raw = {
        "data": {"train": "a", "val": "b", "test": "c", "num_classes": 3},
        "teacher_uri": "models:/t@champion",
        "student": {"arch": "mlp"},
        "registry": {"student_name": "s"},
        "validation": {"sample_sise": 10},
    }
    with pytest.raises(ConfigError, match=r"validation\.sample_sise: Extra inputs"):
        load_config(write_yaml(tmp_path / "c.yaml", raw), DistillConfig)
    raw["validation"] = {"sample_size": 10, "range_mostly": 0.95}
    cfg = load_config(write_yaml(tmp_path / "c.yaml", raw), DistillConfig)
    assert cfg.validation.sample_size == 10 and cfg.validation.require_all_classes == ["train", "val"]


runner = CliRunner()


def cli_config(tmp_path: Path, data: DataConfig) -> Path:
    raw = {
        "data": data.model_dump(),
        "teacher_uri": "models:/t@champion",
        "student": {"arch": "mlp"},
        "registry": {"student_name": "s"},
        "validation": {"data_docs": False},
    }
    return write_yaml(tmp_path / "distill.yaml", raw)


def test_cli_validate_passes_and_fails_with_exit_codes(tmp_path):
    path = cli_config(tmp_path, write_all(tmp_path))
    result = runner.invoke(app, ["validate", "--config", str(path)])
    assert result.exit_code == 0, result.output
    assert "[PASS] transfer" in result.output and "validation passed" in result.output
    write_parquet(frame(30, 2, 90).assign(label=[9] + [0, 1, 2] * 9 + [0, 1]), tmp_path / "test.parquet")
    result = runner.invoke(app, ["validate", "--config", str(path), "--out", str(tmp_path / "report")])
    assert result.exit_code == 2
    assert "[FAIL] test" in result.output and "test.parquet: 1 label(s) outside [0, 3), e.g. [9]" in result.output
    assert (tmp_path / "report" / "summary.json").is_file()
    only = runner.invoke(app, ["validate", "--config", str(path), "--dataset", "val"])
    assert only.exit_code == 0 and "[PASS] val" in only.output and "[PASS] train" not in only.output
    unknown = runner.invoke(app, ["validate", "--config", str(path), "--dataset", "holdout"])
    assert unknown.exit_code == 2 and "unknown dataset 'holdout'" in unknown.output


def test_cli_validate_stops_a_leak_and_a_rescaled_split_with_one_message_each(tmp_path):
    data = write_all(tmp_path)
    leak = runner.invoke(
        app, ["validate", "--config", str(cli_config(tmp_path, data.model_copy(update={"test": data.val})))]
    )
    assert leak.exit_code == 2 and "[FAIL] test" in leak.output and leak.output.count("\n  - ") == 1
    assert f"30 of 30 id(s) in test are also in val ({data.val}): splits must not share ids" in leak.output
    write_parquet(scaled(frame(30, 1, 60), 0.1), tmp_path / "val.parquet")
    small = runner.invoke(app, ["validate", "--config", str(cli_config(tmp_path, data))])
    assert small.exit_code == 2 and "[FAIL] val" in small.output and small.output.count("\n  - ") == 1
    assert f"{data.val}: feature scale differs from train's ({data.train}) in 8 of 8 feature(s)" in small.output
    only = runner.invoke(app, ["validate", "--config", str(cli_config(tmp_path, data)), "--dataset", "test"])
    assert only.exit_code == 0, only.output
