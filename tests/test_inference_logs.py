"""Inference logs (write, read, late labels, faults; local and S3 over HTTP) and simulated drifting traffic."""

from datetime import date, datetime, timedelta, timezone

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from kdflow.data import DataError
from kdflow.inference_logs import InferenceLogError, InferenceLogWriter, list_dates, read_window, write_labels
from kdflow.models import CalibratedClassifier
from kdflow.simulate import DriftSchedule, day_traffic, simulate_traffic
from kdflow.validation import validate_inference_logs
from tests.conftest import make_bucket

DAY = date(2024, 3, 1)


def utc(day: date, hour: int = 0) -> datetime:
    return datetime(day.year, day.month, day.day, hour, tzinfo=timezone.utc)


def tiny_models(seed: int = 0) -> tuple[CalibratedClassifier, torch.nn.Module]:
    torch.manual_seed(seed)
    return CalibratedClassifier(torch.nn.Linear(40, 10), temperature=1.5), torch.nn.Linear(40, 10)


def write_rows(root, days: list[date], n: int = 6, seed: int = 0) -> dict[str, np.ndarray]:
    """n rows per day (hours 0..n-1), every other row shadow-scored, row 0 of each day labeled inline."""
    rng = np.random.default_rng(seed)
    writer = InferenceLogWriter(str(root), "student", 7)
    rows: dict[str, list] = {"x": [], "probs": [], "teacher": [], "labels": [], "ids": []}
    for day in days:
        x = rng.normal(size=(n, 40)).astype(np.float32)
        probs = torch.softmax(torch.from_numpy(rng.normal(size=(n, 10))), 1).numpy().astype(np.float32)
        teacher = rng.normal(size=(n, 10)).astype(np.float32)
        teacher[1::2] = np.nan
        labels = np.full(n, -1)
        labels[0] = 3
        ids = [f"{day}-{i}" for i in range(n)]
        writer.log(x, probs, [utc(day, h) for h in range(n)], request_ids=ids, teacher_logits=teacher, labels=labels)
        for key, value in zip(rows, (x, probs, teacher, labels, ids)):
            rows[key].append(value)
    assert len(writer.flush()) == len(days)
    return {k: np.concatenate(v) for k, v in rows.items()}


def test_round_trip_passes_the_log_suite(tmp_path):
    days = [DAY, DAY + timedelta(days=1)]
    rows = write_rows(tmp_path, days)
    assert list_dates(str(tmp_path)) == days
    window = read_window(str(tmp_path), DAY, DAY + timedelta(days=2))
    assert len(window) == 12 and window.dates == days and window.missing_dates == []
    np.testing.assert_array_equal(window.x, rows["x"])
    np.testing.assert_array_equal(window.probs, rows["probs"])
    np.testing.assert_array_equal(window.shadow_mask, ~np.isnan(rows["teacher"]).any(axis=1))
    np.testing.assert_array_equal(window.teacher_logits, rows["teacher"])
    np.testing.assert_array_equal(window.labels, rows["labels"])
    assert window.label_mask.sum() == 2 and list(window.request_ids) == list(rows["ids"])
    frame = window.frame
    assert str(frame["timestamp"].dtype) == "datetime64[us, UTC]" and set(frame["model_version"]) == {"7"}
    report = validate_inference_logs(frame, num_classes=10, id_column="request_id")
    assert report.success, report.error_message()
    # a datetime window keeps only the rows inside [start, end)
    assert len(read_window(str(tmp_path), utc(DAY, 2), utc(DAY, 4))) == 2


def test_late_labels_are_joined_latest_wins_and_respect_as_of(tmp_path):
    write_rows(tmp_path, [DAY])
    write_labels(str(tmp_path), [f"{DAY}-1", f"{DAY}-2"], [5, 6], at=utc(DAY + timedelta(days=1)))
    write_labels(str(tmp_path), [f"{DAY}-2", f"{DAY}-0"], [8, 9], at=utc(DAY + timedelta(days=2)))
    window = read_window(str(tmp_path), DAY, DAY + timedelta(days=1))
    assert window.labels.tolist() == [9, 5, 8, -1, -1, -1]  # a label file overrides nulls and inline labels
    assert window.frame["label_timestamp"].notna().sum() == 3
    early = read_window(str(tmp_path), DAY, DAY + timedelta(days=1), labels_as_of=utc(DAY + timedelta(days=1), 12))
    assert early.labels.tolist() == [3, 5, 6, -1, -1, -1]


def test_missing_partition_is_an_error_naming_the_date(tmp_path):
    write_rows(tmp_path, [DAY, DAY + timedelta(days=2)])
    with pytest.raises(InferenceLogError, match=r"missing log partition.*date=2024-03-02") as err:
        read_window(str(tmp_path), DAY, DAY + timedelta(days=3))
    assert isinstance(err.value, DataError) and tmp_path.name in str(err.value)
    window = read_window(str(tmp_path), DAY, DAY + timedelta(days=3), require_all_partitions=False)
    assert window.missing_dates == [DAY + timedelta(days=1)] and len(window) == 12


def test_part_without_a_column_or_with_a_wrong_type_names_file_and_column(tmp_path):
    write_rows(tmp_path, [DAY])
    part = tmp_path / f"date={DAY}" / "part-bad.parquet"
    good = pq.read_table(next((tmp_path / f"date={DAY}").glob("part-*.parquet")))
    pq.write_table(good.drop_columns(["probabilities"]), part)
    with pytest.raises(InferenceLogError, match=r"part-bad\.parquet: missing required column 'probabilities'"):
        read_window(str(tmp_path), DAY, DAY + timedelta(days=1))
    pq.write_table(good.set_column(4, "x", pa.array(["a"] * len(good))), part)
    with pytest.raises(InferenceLogError, match=r"part-bad\.parquet: column 'x' must be list<item: float>"):
        read_window(str(tmp_path), DAY, DAY + timedelta(days=1))


def test_simulate_writes_days_and_fractions_deterministically(tmp_path):
    model, teacher = tiny_models()
    kwargs = dict(
        start_date=DAY,
        days=3,
        rows_per_day=200,
        schedule="stable",
        shadow_fraction=0.1,
        label_fraction=0.25,
        teacher=teacher,
        seed=5,
    )
    summary = simulate_traffic(model, "student", 2, str(tmp_path / "a"), **kwargs)
    simulate_traffic(model, "student", 2, str(tmp_path / "b"), **kwargs)
    assert [d["rows"] for d in summary["per_day"]] == [200] * 3 and summary["rows"] == 600
    assert list_dates(str(tmp_path / "a")) == [DAY + timedelta(days=i) for i in range(3)]
    a, b = (read_window(str(tmp_path / r), DAY, DAY + timedelta(days=3)) for r in "ab")
    pd.testing.assert_frame_equal(a.frame, b.frame)
    assert a.shadow_mask.sum() == 60 and a.label_mask.sum() == 150
    delay = (a.frame["label_timestamp"] - a.frame["timestamp"]).dropna()
    assert (delay == pd.Timedelta(days=1)).all()
    np.testing.assert_allclose(a.probs.sum(1), 1, atol=1e-5)
    with torch.no_grad():
        np.testing.assert_allclose(
            a.teacher_logits[a.shadow_mask], teacher(torch.from_numpy(a.x[a.shadow_mask])), atol=1e-5
        )


def test_drift_schedule_moves_inputs_and_priors(tmp_path):
    spec = tmp_path / "drift.yaml"
    spec.write_text(
        "- {start_day: 0, end_day: 2}\n"
        "- {start_day: 2, end_day: 4, mode: gradual, shear_scale: 3.0}\n"
        "- {start_day: 4, mode: sudden, iid_noise_scale: 0.3, class_priors: [5, 1, 1, 1, 1, 1, 1, 1, 1, 1]}\n"
    )
    schedule = DriftSchedule.load(str(spec))
    assert schedule.at(1)[0]["shear_scale"] == 0.75 and schedule.at(2)[0]["shear_scale"] == pytest.approx(1.875)
    assert schedule.at(9)[0] == {**schedule.at(3)[0], "iid_noise_scale": 0.3} and schedule.at(9)[1][0] == pytest.approx(
        5 / 14
    )
    roughness = {d: np.abs(np.diff(day_traffic(200, d, schedule, seed=0)[0], axis=1)).mean() for d in (0, 5)}
    assert roughness[5] > 1.4 * roughness[0]  # iid noise: neighbouring samples decorrelate
    model, _ = tiny_models()
    summary = simulate_traffic(
        model,
        "student",
        1,
        str(tmp_path / "logs"),
        DAY,
        6,
        150,
        schedule,
        shadow_fraction=0.0,
        label_fraction=1.0,
        seed=0,
    )
    window = read_window(str(tmp_path / "logs"), DAY + timedelta(days=4), DAY + timedelta(days=6))
    assert 0.25 < (window.labels == 0).mean() < 0.45  # class 0 prior 5/14
    assert summary["per_day"][5]["knobs"]["iid_noise_scale"] == 0.3
    today = (window.frame["timestamp"].dt.date == DAY + timedelta(days=5)).to_numpy()  # all rows labeled here
    assert summary["per_day"][5]["accuracy"] == (window.probs[today].argmax(1) == window.labels[today]).mean()
    preset = DriftSchedule.preset("stable-gradual-sudden")
    assert preset.at(39)[0] == preset.at(0)[0] != preset.at(60)[0] and preset.at(80)[0]["max_translation"] == 72
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['noise'\]"):
        DriftSchedule.from_list([{"start_day": 0, "noise": 1.0}])


def test_logs_on_s3_over_http(s3_endpoint):
    root = f"s3://{make_bucket(s3_endpoint, 'kdflow-inference-logs')}/prod/logs"
    model, teacher = tiny_models()
    simulate_traffic(
        model,
        "student",
        3,
        root,
        DAY,
        2,
        100,
        None,
        shadow_fraction=0.2,
        label_fraction=0.5,
        teacher=teacher,
        seed=1,
        endpoint_url=s3_endpoint,
    )
    assert list_dates(root, endpoint_url=s3_endpoint) == [DAY, DAY + timedelta(days=1)]
    window = read_window(root, DAY, DAY + timedelta(days=2), endpoint_url=s3_endpoint)
    assert len(window) == 200 and window.shadow_mask.sum() == 40 and window.label_mask.sum() == 100
    with pytest.raises(InferenceLogError, match=r"s3://kdflow-inference-logs/prod/logs.*date=2024-03-03"):
        read_window(root, DAY, DAY + timedelta(days=3), endpoint_url=s3_endpoint)


def test_labels_arriving_after_as_of_are_ignored_without_error(tmp_path):
    """Every label of the window arrives after ``labels_as_of``: the window reads with no label known."""
    root = str(tmp_path / "logs")
    with InferenceLogWriter(root, "m", "1") as w:
        ids = w.log(
            np.zeros((3, 4), np.float32),
            np.full((3, 2), 0.5, np.float32),
            datetime(2026, 1, 1, 12, tzinfo=timezone.utc),
        )
    write_labels(root, ids, [0, 1, 0], datetime(2026, 1, 2, 6, tzinfo=timezone.utc))
    window = read_window(
        root,
        datetime(2026, 1, 1, tzinfo=timezone.utc),
        datetime(2026, 1, 2, tzinfo=timezone.utc),
        labels_as_of=datetime(2026, 1, 2, tzinfo=timezone.utc),
    )
    assert len(window) == 3 and not window.label_mask.any()
    later = read_window(root, datetime(2026, 1, 1, tzinfo=timezone.utc), datetime(2026, 1, 2, tzinfo=timezone.utc))
    assert dict(zip(later.request_ids, later.labels.tolist())) == dict(zip(ids, [0, 1, 0]))
