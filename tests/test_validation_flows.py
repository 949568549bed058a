"""The bad-input battery through the REAL distill flow: each case stops at validation with its message, and
no teacher call (no logit store), no training step (no ``student_loss``) and no model version happen."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd
import pytest

from kdflow.data import DataError
from kdflow.validation import DataValidationError
from mlflow import MlflowClient
from tests.conftest import write_yaml

pytestmark = pytest.mark.slow


def run_distill(cfg: dict, tmp_path: Path) -> dict:
    from flows.distill import distill_flow

    return distill_flow(str(write_yaml(tmp_path / "distill.yaml", cfg)))


def flow_run(cfg: dict) -> Any:
    """The MLflow run the flow created for this test's student (names are unique per test)."""
    client = MlflowClient()
    experiment = client.get_experiment_by_name(cfg["registry"]["experiment"])
    [run] = client.search_runs(
        [experiment.experiment_id], f"params.`registry.student_name` = '{cfg['registry']['student_name']}'"
    )
    return run


def artifacts(run_id: str, path: str = "validation") -> set[str]:
    return {a.path for a in MlflowClient().list_artifacts(run_id, path)}


def assert_nothing_ran(cfg: dict) -> Any:
    """No model version, no logit store, no training step; the run is FAILED and carries the report."""
    name = cfg["registry"]["student_name"]
    assert MlflowClient().search_model_versions(f"name='{name}'") == []
    assert not Path(cfg["store"]["root"]).exists()
    run = flow_run(cfg)
    assert MlflowClient().get_metric_history(run.info.run_id, "student_loss") == []
    assert run.info.status == "FAILED" and run.data.metrics["validation_passed"] == 0.0
    assert {"validation/summary.json", "validation/report.md", "validation/report.html"} <= artifacts(run.info.run_id)
    return run


def mutate_x(df: pd.DataFrame, row: int, value: Any) -> pd.DataFrame:
    x = list(df["x"])
    x[row] = value
    return df.assign(x=x)


def nan_at(df):
    return mutate_x(df, 3, np.r_[np.float32(np.nan), df["x"][3][1:]].astype(np.float32))


def inf_at(df):
    return mutate_x(df, 3, np.r_[df["x"][3][:-1], np.float32(np.inf)].astype(np.float32))


def label_at(value):
    return lambda df: df.assign(label=[value] + list(df["label"][1:]))


# case -> (how to break train.parquet, expected message regex); ``{f}`` is the broken file's name.
TRAIN_CASES: dict[str, tuple[Callable[[pd.DataFrame], pd.DataFrame], str]] = {
    "nan_feature": (nan_at, r"{f}: 1 row\(s\) with NaN or infinite features in 'x' \(e.g. \['nan'\]\); e.g. ids \[3\]"),
    "inf_feature": (inf_at, r"{f}: 1 row\(s\) with NaN or infinite features in 'x' \(e.g. \['inf'\]\); e.g. ids \[3\]"),
    "missing_feature_column": (
        lambda d: d.drop(columns=["x"]),
        r"{f}: missing feature column 'x'; found columns \['id', 'label'\]",
    ),
    "string_feature": (
        lambda d: d.assign(x=["0.1,0.2"] * len(d)),
        r"{f}: feature column 'x' must hold float arrays, found \['str'\] in 600 row\(s\)",
    ),
    "wrong_array_length": (
        lambda d: mutate_x(d, 7, np.zeros(39, dtype=np.float32)),
        r"{f}: feature column 'x' has arrays of different lengths: expected 40, found \[39\] "
        r"in 1 row\(s\); e.g. ids \[7\]",
    ),
    "label_minus_one": (label_at(-1), r"{f}: 1 label\(s\) outside \[0, 10\), e.g. \[-1\]; e.g. ids \[0\]"),
    "label_equals_C": (label_at(10), r"{f}: 1 label\(s\) outside \[0, 10\), e.g. \[10\]; e.g. ids \[0\]"),
    "float_label": (
        lambda d: d.assign(label=d["label"].astype(float) + 0.5),
        r"{f}: label column 'label' must be integer, found float64",
    ),
    "duplicated_ids": (
        lambda d: d.assign(id=[d["id"][1]] + list(d["id"][1:])),
        r"{f}: id column 'id' has 2 row\(s\) with duplicated id\(s\), e.g. \[1\]",
    ),
    "null_id": (
        lambda d: d.assign(id=[None] + [float(i) for i in d["id"][1:]]),
        r"{f}: id column 'id' has 1 null value\(s\)",
    ),
    "train_missing_a_class": (
        lambda d: d[d["label"] != 7],
        r"{f}: label column 'label' is missing class\(es\) \[7\] of \[0, 10\)",
    ),
}


@pytest.mark.parametrize("case", list(TRAIN_CASES))
def test_bad_train(case, distill_config, tmp_path, tiny_data):
    mutate, pattern = TRAIN_CASES[case]
    bad = tmp_path / f"train_{case}.parquet"
    mutate(pd.read_parquet(tiny_data["train"])).to_parquet(bad)
    distill_config["data"]["train"] = str(bad)
    distill_config["store"]["root"] = str(tmp_path / "store")
    distill_config["validation"] = {"data_docs": case == "label_minus_one"}  # Data Docs on one failing case
    with pytest.raises(DataValidationError, match=pattern.format(f=bad.name)) as exc:
        run_distill(distill_config, tmp_path)
    message = str(exc.value)
    assert message.startswith(f"data validation failed: 1 failed check(s) in train ({bad})"), message
    assert isinstance(exc.value, DataError)
    run = assert_nothing_ran(distill_config)
    if case == "label_minus_one":
        assert "validation/data_docs" in artifacts(run.info.run_id)


@pytest.mark.parametrize("case", ["empty_file", "truncated_parquet"])
def test_unreadable(case, distill_config, tmp_path, tiny_data):
    bad = tmp_path / f"val_{case}.parquet"
    good = Path(tiny_data["val"]).read_bytes()
    bad.write_bytes(b"" if case == "empty_file" else good[: len(good) // 2])
    distill_config["data"]["val"] = str(bad)
    distill_config["store"]["root"] = str(tmp_path / "store")
    distill_config["validation"] = {"data_docs": False}
    expected = "file is empty (0 bytes)" if case == "empty_file" else "not a readable Parquet file"
    with pytest.raises(DataValidationError, match=re.escape(f"{bad.name}: {expected}")):
        run_distill(distill_config, tmp_path)
    assert_nothing_ran(distill_config)


def test_mixed_schemas(distill_config, tmp_path, tiny_data):
    train = pd.read_parquet(tiny_data["train"])
    parts = tmp_path / "train_parts"
    parts.mkdir()
    train.iloc[:300].to_parquet(parts / "part-0.parquet")
    train.iloc[300:].assign(label=lambda d: d["label"].astype(str)).to_parquet(parts / "part-1.parquet")
    distill_config["data"]["train"] = str(parts)
    distill_config["store"]["root"] = str(tmp_path / "store")
    distill_config["validation"] = {"data_docs": False}
    with pytest.raises(DataValidationError) as exc:
        run_distill(distill_config, tmp_path)
    assert str(exc.value).splitlines()[1:] == [
        f"  - train: {parts / 'part-1.parquet'}: schema drift between the files of train: column 'label' re-typed "
        f"from integer to string (vs {parts / 'part-0.parquet'}) [kdflow.schema.drift(label)]"
    ]
    assert_nothing_ran(distill_config)


def shrink(cfg: dict, tmp_path: Path) -> dict:
    """A few training steps: these cases are about validation passing, not about the student."""
    cfg["train"].update(epochs=1, max_steps=3)
    cfg["store"]["root"] = str(tmp_path / "store")
    cfg["sla"] = {
        k: None
        for k in ("min_accuracy", "max_teacher_gap", "max_ece", "max_flip_rate", "max_latency_p95_ms", "max_size_ratio")
    }
    return cfg


def test_good_data_passes(distill_config, tmp_path):
    report = run_distill(shrink(distill_config, tmp_path), tmp_path)
    run = flow_run(distill_config)
    assert run.info.run_id == report["run_id"] and run.info.status == "FINISHED"
    assert run.data.metrics["validation_passed"] == 1.0 and run.data.metrics["validation_failed_checks"] == 0.0
    found = artifacts(report["run_id"])
    assert {
        "validation/summary.json",
        "validation/gx_results.json",
        "validation/report.html",
        "validation/data_docs",
    } <= found
    local = Path(MlflowClient().download_artifacts(report["run_id"], "validation", str(tmp_path / "dl")))
    summary = json.loads((local / "summary.json").read_text())
    assert summary["success"] and set(summary["datasets"]) == {"train", "val", "test", "transfer"}
    assert (local / "data_docs" / "index.html").is_file()
    assert MlflowClient().get_metric_history(report["run_id"], "student_loss")


def test_transfer_garbage_label(distill_config, tmp_path, tiny_data):
    transfer = pd.read_parquet(tiny_data["transfer"]).assign(label=lambda d: ["garbage"] * len(d))
    transfer.to_parquet(tmp_path / "transfer_garbage.parquet")
    distill_config["data"]["transfer"] = str(tmp_path / "transfer_garbage.parquet")
    distill_config["validation"] = {"data_docs": False}
    report = run_distill(shrink(distill_config, tmp_path), tmp_path)
    assert report["registration"]["version"] == "1"
    assert sum(s["rows_computed"] for s in report["logits"].values()) == 600 + 300 + 300 + 1200
    local = Path(MlflowClient().download_artifacts(report["run_id"], "validation/summary.json", str(tmp_path / "dl")))
    notes = json.loads(local.read_text())["datasets"]["transfer"]["notes"]
    assert "column 'label' ignored: the transfer set is unlabeled" in notes


def test_leaking_test_split(distill_config, tmp_path, tiny_data):
    """30 train rows copied into test (a leak that would inflate every SLA figure): stopped before compute."""
    train, test = pd.read_parquet(tiny_data["train"]), pd.read_parquet(tiny_data["test"])
    leaking = tmp_path / "test_leaking.parquet"
    pd.concat([test, train.iloc[:30]], ignore_index=True).to_parquet(leaking)
    distill_config["data"]["test"] = str(leaking)
    distill_config["store"]["root"] = str(tmp_path / "store")
    distill_config["validation"] = {"data_docs": False}
    with pytest.raises(DataValidationError) as exc:
        run_distill(distill_config, tmp_path)
    assert str(exc.value).splitlines() == [
        f"data validation failed: 1 failed check(s) in test ({leaking})",
        f"  - test: {leaking}: 30 of 330 id(s) in test are also in train ({tiny_data['train']}): splits must not "
        "share ids (a leak that inflates every figure measured on them); e.g. ids [0, 1, 2, 3, 4] "
        "[kdflow.ids.disjoint(id)]",
    ]
    assert_nothing_ran(distill_config)


def test_train_on_a_larger_scale(distill_config, tmp_path, tiny_data):
    """train x10 lies around every other split, so the range check passes it; the scale check stops it."""
    rescaled = tmp_path / "train_x10.parquet"
    train = pd.read_parquet(tiny_data["train"])
    train.assign(x=[(v * 10).astype(np.float32) for v in train["x"]]).to_parquet(rescaled)
    distill_config["data"]["train"] = str(rescaled)
    distill_config["store"]["root"] = str(tmp_path / "store")
    distill_config["validation"] = {"data_docs": False}
    with pytest.raises(DataValidationError) as exc:
        run_distill(distill_config, tmp_path)
    lines = str(exc.value).splitlines()
    assert lines[0].startswith("data validation failed: 3 failed check(s) in val (")
    for line, split, rows in zip(lines[1:], ("val", "test", "transfer"), ("300", "300", "1,200")):
        assert line.startswith(
            f"  - {split}: {tiny_data[split]}: feature scale differs from train's ({rescaled}) "
            f"in 40 of 40 feature(s), compared on {rows} vs 600 sampled row(s): x["
        ), line
        assert line.endswith("; and 35 more [kdflow.features.scale(x)]") and "|ln sd ratio| 2." in line
    assert_nothing_ran(distill_config)
